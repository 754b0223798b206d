"""Vocabulary kinds, their saved tokenizers, and the pipeline's own encoder.

Every kind is a folder ``runs/RUN/vocab/KIND/`` that ``AutoTokenizer.from_pretrained`` loads, plus
``stats.json`` (written last). Special ids in every kind: ``[PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3
[MASK]=4``.

* ``char`` -- Google-Chinese-BERT style: BERT's WordPiece over ``vocab.txt`` saved as a plain
  ``tokenizer.json`` (``TokenizersBackend``; plus ``vocab.txt``), every CJK character one token,
  WordPiece (``##`` continuations) for other scripts. No custom code.

Every saved tokenizer normalises raw text as the corpus stage did (:func:`corpus_normalizer`).
* ``sgt`` -- segmentation-guided sub-words: jieba words (a single space attached to the next
  word), then a sub-word learner inside each word (sentencepiece BPE/unigram or ``tokenizers``
  WordPiece/BPE), so no piece crosses a word boundary. Characters seen at least
  ``min_char_count`` times are always in the vocabulary. Saved with
  ``tokenization_segmented.py`` (``trust_remote_code=True``), which re-runs the same
  segmentation at encode time.
* ``word`` -- whole words by frequency (``min_count``, ``max_size``), unknown words fall back to
  characters; same remote class.
* ``ngram`` -- see :mod:`tokenization.ngram`.

:func:`load_token_encoder` returns the encoder the shard writer uses; it produces exactly the ids
of the saved tokenizer (tested on the whole valid split) and the ``char_len`` / ``word_start``
streams of ``docs/contracts.md``.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from pipeline.errors import UserError
from pipeline.log import get_logger

log = get_logger("tokenization")

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SPECIAL_IDS = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
REMOTE_FILE = Path(__file__).parent / "remote" / "tokenization_segmented.py"
REMOTE_CLASS = "SegmentedTokenizer"
SPACE_MARK = "\u2581"
MAX_CHAR_LEN = 255


# ---------------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------------
def __getattr__(name: str):
    """``attach_spaces`` lives in ``remote/tokenization_segmented.py`` (the file copied into the
    saved tokenizer folders), imported on first use because that module imports ``transformers``.

    ``attach_spaces(["hello", " ", "world"]) -> ["hello", " world"]``: a lone " " word is merged
    into the following non-whitespace word; other whitespace words stay.
    """
    if name == "attach_spaces":
        from tokenization.remote.tokenization_segmented import attach_spaces

        globals()[name] = attach_spaces  # later look-ups skip this hook
        return attach_spaces
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _finish(ids: np.ndarray, ends: np.ndarray, word_start: np.ndarray, n_chars: int, unk_id: int, where: str,
            monotonic: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Turn token end offsets into the char_len convention; keep every token <= 255 characters.

    Two rare cases keep ``char_len.sum() == len(text)`` at the price of differing from the saved
    tokenizer's ids (documented in docs/tokenization.md): a text that yields no token at all
    (whitespace/control characters only) is stored as ``[UNK]`` token(s); a token that would
    cover more than 255 characters is split: an over-long ``[UNK]`` into several ``[UNK]``s, a
    long run of dropped whitespace before a token into ``[UNK]`` fillers in front of it.
    """
    if len(ids) == 0:
        if n_chars == 0:
            return ids.astype(np.int64), np.zeros(0, np.uint8), np.zeros(0, np.uint8)
        ids = np.array([unk_id], np.int64)
        ends = np.array([n_chars], np.int64)
        word_start = np.ones(1, np.uint8)
    ends = ends.astype(np.int64, copy=False)
    if not monotonic:
        ends = np.maximum.accumulate(ends)
    cl = ends.copy()
    cl[1:] -= ends[:-1]
    cl[-1] += n_chars - ends[-1]
    if cl.max() > MAX_CHAR_LEN:
        ids, cl, word_start = _split_overlong(ids, cl, word_start, unk_id, where)
    return ids.astype(np.int64), cl.astype(np.uint8), word_start.astype(np.uint8)


def _split_overlong(ids, cl, ws, unk_id, where):
    out_i, out_c, out_w = [], [], []
    for t, c, w in zip(ids.tolist(), cl.tolist(), ws.tolist()):
        if c <= MAX_CHAR_LEN:
            out_i.append(t), out_c.append(c), out_w.append(w)
            continue
        k = math.ceil(c / MAX_CHAR_LEN)
        if t == unk_id:  # one [UNK] over many characters -> several [UNK]s
            for j in range(k):
                out_i.append(unk_id)
                out_c.append(min(MAX_CHAR_LEN, c - j * MAX_CHAR_LEN))
                out_w.append(w if j == 0 else 0)
            continue
        # dropped whitespace before a real token: [UNK] fillers, then the token with the rest
        rest = c - (k - 1) * MAX_CHAR_LEN
        for _ in range(k - 1):
            out_i.append(unk_id), out_c.append(MAX_CHAR_LEN), out_w.append(1)
        out_i.append(t), out_c.append(rest), out_w.append(w)
    return np.array(out_i, np.int64), np.array(out_c, np.int64), np.array(out_w, np.uint8)


# ---------------------------------------------------------------------------------------------
# encoders
# ---------------------------------------------------------------------------------------------
class TokenEncoder:
    """``encode_words(words) -> (ids int64, char_len uint8, word_start uint8)`` for one kind."""

    kind: str
    vocab_size: int
    special_ids: dict[str, int]

    def __init__(self, vocab_dir: Path, meta: dict):
        self.vocab_dir = Path(vocab_dir)
        self.meta = meta
        self.kind = meta["kind"]
        self.vocab_size = int(meta["size"])
        self.special_ids = dict(meta.get("special_tokens", SPECIAL_IDS))
        self.unk_id = self.special_ids["unk"]

    def encode_words(self, words: list[str]):
        return self.encode_batch([words])[0]

    def encode_batch(self, docs: list[list[str]]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        raise NotImplementedError

    def ids_batch(self, docs: list[list[str]]) -> list[np.ndarray]:
        """Only the ids (same as ``encode_batch(docs)[i][0]``; faster where the kind allows)."""
        return [x[0] for x in self.encode_batch(docs)]

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def id_to_token(self, i: int) -> str:
        raise NotImplementedError


class _HFEncoder(TokenEncoder):
    def __init__(self, vocab_dir: Path, meta: dict):
        super().__init__(vocab_dir, meta)
        from tokenizers import Tokenizer

        self.tk = Tokenizer.from_file(str(self.vocab_dir / "tokenizer.json"))
        self.tk.encode_special_tokens = True  # literal "[MASK]" in text is text, as split_special_tokens=True
        self.tk.no_truncation()
        self.tk.no_padding()

    def decode(self, ids):
        return self.tk.decode(list(map(int, ids)), skip_special_tokens=False)

    def id_to_token(self, i):
        return self.tk.id_to_token(int(i))


class CharEncoder(_HFEncoder):
    """Runs the saved BERT tokenizer over the whole text; word starts from the segmentation."""

    def ids_batch(self, docs):
        encs = self.tk.encode_batch_fast(["".join(w) for w in docs], add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int64) for e in encs]

    def encode_batch(self, docs):
        texts = ["".join(w) for w in docs]
        encs = self.tk.encode_batch(texts, add_special_tokens=False)  # (encode_batch_fast has no offsets)
        out = []
        for words, text, enc in zip(docs, texts, encs):
            ids = np.asarray(enc.ids, dtype=np.int64)
            if len(ids) == 0:
                out.append(_finish(ids, np.zeros(0), np.zeros(0), len(text), self.unk_id, "char encoder"))
                continue
            off = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
            bounds = np.cumsum([len(w) for w in words])
            widx = np.searchsorted(bounds, off[:, 0], side="right")
            ws = np.ones(len(ids), np.uint8)
            ws[1:] = widx[1:] != widx[:-1]
            out.append(_finish(ids, off[:, 1], ws, len(text), self.unk_id, "char encoder", monotonic=False))
        return out


class SegmentedEncoder(_HFEncoder):
    """SGT: units (words with attached spaces) through the saved ``tokenizer.json``.

    With pre-tokenized input every unit is encoded on its own (the model never sees across a
    unit), so each distinct unit is encoded once and cached: ``tokenizers`` runs only on units
    not seen before, the rest is list concatenation. The AutoTokenizer parity test guards this.
    """

    CACHE_MAX = 2_000_000

    def __init__(self, vocab_dir: Path, meta: dict):
        super().__init__(vocab_dir, meta)
        # units are encoded one by one (pre-tokenized): the saved normaliser would run per unit (and
        # strip an attached space); corpus text is already normalised, so it is off here
        self.tk.normalizer = None
        self._cache: dict[str, tuple[list[int], list[int]]] = {}
        # word-start marker vocabularies: a bare "▁" piece the pre-tokenizer prepended covers no
        # character (tokenizers aligns it with the word's first character; the piece after it has it)
        marked = getattr(self.tk.pre_tokenizer, "prepend_scheme", None) == "always"
        self._mark_id = self.tk.token_to_id(SPACE_MARK) if marked else None

    def _fill(self, units: set[str]) -> None:
        if len(self._cache) + len(units) > self.CACHE_MAX:
            self._cache.clear()
        todo = sorted(units)
        encs = self.tk.encode_batch([[u] for u in todo], is_pretokenized=True, add_special_tokens=False)
        for u, e in zip(todo, encs):
            ends = [b for _, b in e.offsets]
            if self._mark_id is not None and len(e.ids) > 1 and e.ids[0] == self._mark_id and not u.startswith(" "):
                ends[0] = 0
            self._cache[u] = (e.ids, ends)

    def encode_batch(self, docs):
        from tokenization.remote.tokenization_segmented import attach_spaces

        cache = self._cache
        all_units = [attach_spaces(w) for w in docs]
        missing = {u for units in all_units for u in units if u not in cache}
        if missing:
            self._fill(missing)
        out = []
        for units in all_units:
            ids: list[int] = []
            ends: list[int] = []
            ws: list[int] = []
            base = 0
            for u in units:
                i, e = cache[u]
                if i:
                    ids += i
                    ends += [base + x for x in e]
                    ws.append(1)
                    if len(i) > 1:
                        ws += [0] * (len(i) - 1)
                base += len(u)
            out.append(_finish(np.asarray(ids, np.int64), np.asarray(ends, np.int64), np.asarray(ws, np.uint8),
                               base, self.unk_id, "sgt encoder"))
        return out


class WordEncoder(TokenEncoder):
    """Whole words by dictionary lookup; unknown words fall back to characters."""

    def __init__(self, vocab_dir: Path, meta: dict):
        super().__init__(vocab_dir, meta)
        from tokenizers import Tokenizer

        self.tk = Tokenizer.from_file(str(self.vocab_dir / "tokenizer.json"))
        self.vocab = self.tk.get_vocab(with_added_tokens=False)
        self.inv = {i: t for t, i in self.vocab.items()}

    def encode_batch(self, docs):
        from tokenization.remote.tokenization_segmented import attach_spaces

        get, unk = self.vocab.get, self.unk_id
        out = []
        for words in docs:
            ids: list[int] = []
            cl: list[int] = []
            ws: list[int] = []
            for u in attach_spaces(words):
                i = get(u.replace(" ", SPACE_MARK))
                if i is not None:
                    ids.append(i), cl.append(len(u)), ws.append(1)
                else:
                    for k, c in enumerate(u):
                        ids.append(get(c.replace(" ", SPACE_MARK), unk)), cl.append(1), ws.append(k == 0)
            n = sum(cl)
            arr = np.asarray(ids, np.int64)
            out.append(_finish(arr, np.cumsum(np.asarray(cl, np.int64)), np.asarray(ws, np.uint8), n, unk,
                               "word encoder"))
        return out

    def decode(self, ids):
        return "".join(self.inv.get(int(i), "[UNK]") for i in ids).replace(SPACE_MARK, " ")

    def id_to_token(self, i):
        return self.inv.get(int(i))


def load_vocab_meta(path: str | Path) -> dict:
    """The ``stats.json`` of a vocabulary folder (raises UserError if the folder is incomplete)."""
    p = Path(path) / "stats.json"
    if not p.is_file():
        raise UserError(f"not a finished vocabulary folder (no stats.json): {path}")
    from tokenization.schema import VocabStats

    return VocabStats.load(p).to_dict()


def load_token_encoder(vocab_dir: str | Path) -> TokenEncoder:
    """The pipeline's own encoder for a vocabulary folder (char, sgt or word kind)."""
    meta = load_vocab_meta(vocab_dir)
    kind = meta["kind"]
    if kind == "char":
        return CharEncoder(Path(vocab_dir), meta)
    if kind == "sgt":
        return SegmentedEncoder(Path(vocab_dir), meta)
    if kind == "word":
        return WordEncoder(Path(vocab_dir), meta)
    raise UserError(f"{vocab_dir}: kind {kind!r} has no token encoder (n-gram lexicons: tokenization.ngram)")


# ---------------------------------------------------------------------------------------------
# building
# ---------------------------------------------------------------------------------------------
def corpus_normalizer(norm: dict | None = None):
    """A ``tokenizers`` normalizer that does what ``corpora.normalize.normalize_text`` does.

    ``norm`` is the corpus stage's ``normalize`` config section (``runs/RUN/corpus/stats.json``
    ``config.normalize``; ``None`` = the defaults). Saved into every ``tokenizer.json``, so raw text
    at inference (``１９９８年``, tabs, decomposed accents, ideographic spaces) becomes what the
    model saw in training. Each step is a serialisable ``tokenizers`` normalizer (NFC/NFKC,
    ``Replace`` with Oniguruma regexes, ``Strip``), so a published folder needs no custom code;
    ``tests/test_vocab.py`` checks equality with ``normalize_text`` on raw strings. Traditional ->
    Simplified (``t2s: true``) has no serialisable form: it is not applied at inference (a warning
    is logged and the vocabulary's ``stats.json`` records ``normalizer.t2s_at_inference: false``).
    """
    from tokenizers import Regex, normalizers

    from corpora.config import NormalizeConfig
    from corpora.normalize import _CJK, _CTRL_RE, _FW_TABLE_ALL, _FW_TABLE_ASCII

    c = NormalizeConfig(**{k: v for k, v in (norm or {}).items() if k in NormalizeConfig.__dataclass_fields__})
    steps = []
    if c.unicode_form == "NFC":
        steps.append(normalizers.NFC())
    elif c.unicode_form == "NFKC":
        steps.append(normalizers.NFKC())
    table = {"ascii": _FW_TABLE_ASCII, "all": _FW_TABLE_ALL}.get(c.fullwidth, {})
    steps += [normalizers.Replace(chr(a), chr(b)) for a, b in sorted(table.items())]
    steps += [normalizers.Replace("\r\n", "\n"), normalizers.Replace("\r", "\n")]
    if c.remove_control:
        steps += [normalizers.Replace("\t", " "), normalizers.Replace(Regex(_CTRL_RE.pattern), "")]
    if c.fold_whitespace:
        steps += [normalizers.Replace(Regex(r"[^\S\n]+"), " "), normalizers.Replace(Regex(" *\n *"), "\n"),
                  normalizers.Replace(Regex("\n{3,}"), "\n\n"), normalizers.Strip()]
    if c.cjk_space:
        steps.append(normalizers.Replace(Regex(f"(?<=[{_CJK}]) (?=[{_CJK}])"), ""))
    if c.t2s:
        log.warning("corpus normalisation has t2s: true; Traditional -> Simplified has no serialisable "
                    "tokenizer step, so saved tokenizers do not apply it to raw text")
    return normalizers.Sequence(steps)


def normalizer_info(norm: dict | None) -> dict:
    """What the saved tokenizers apply to raw text (recorded in the vocabulary ``stats.json``)."""
    from corpora.config import NormalizeConfig

    c = NormalizeConfig(**{k: v for k, v in (norm or {}).items() if k in NormalizeConfig.__dataclass_fields__})
    d = dict(c.__dict__)
    d["t2s_at_inference"] = False if c.t2s else None
    return d


def cjk_joining_wordpiece_decoder():
    """WordPiece decoding (``##`` joins, BERT clean-up) without the space it puts between two CJK
    characters: ``["我", "们", "hello"]`` -> ``"我们 hello"`` (serialisable, no custom code)."""
    from tokenizers import Regex, decoders

    from corpora.normalize import _CJK

    return decoders.Sequence([decoders.WordPiece(prefix="##", cleanup=True), decoders.Fuse(),
                              decoders.Replace(Regex(f"(?<=[{_CJK}]) (?=[{_CJK}])"), "")])


def _bert_post_processor():
    from tokenizers import processors

    return processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                         special_tokens=[("[CLS]", 2), ("[SEP]", 3)])


def _check_specials(vocab: dict[str, int], where: str) -> None:
    for i, t in enumerate(SPECIALS):
        if vocab.get(t) != i:
            raise RuntimeError(f"{where}: special token {t} has id {vocab.get(t)}, expected {i}")


def canonical_wordpiece_order(vocab: dict[str, int]) -> list[str]:
    """Tokens in a deterministic order: specials first (their fixed ids), then word-initial pieces, then
    ``##`` continuations, each sorted by string.

    The ``tokenizers`` WordPiece trainer breaks frequency ties in hash-map order, so two builds from the
    same corpus can number the same token set differently; ids must not depend on that.
    """
    specials = [t for t, _ in sorted(((t, i) for t, i in vocab.items() if t in SPECIALS), key=lambda x: x[1])]
    rest = sorted((t for t in vocab if t not in SPECIALS), key=lambda t: (t.startswith("##"), t))
    return specials + rest


def build_char(texts: Iterable[str], out_dir: Path, vocab_size: int, lowercase: bool = True,
               char_counts: Counter | None = None, min_char_count: int = 1, normalize: dict | None = None) -> dict:
    """Train a BERT WordPiece vocabulary (CJK characters split, ``##`` continuations) into ``out_dir``.

    The saved tokenizer is BERT's (``BertTokenizer``'s WordPiece over the learned ``vocab.txt``,
    which is saved too), with two changes that ``BertTokenizer`` would undo on load, so it is saved
    as a plain ``tokenizer.json`` (class ``TokenizersBackend``, no custom code): the corpus stage's
    normalisation (:func:`corpus_normalizer` with ``normalize``, the corpus ``normalize`` config)
    runs before ``BertNormalizer``, and decoding joins CJK characters without spaces
    (:func:`cjk_joining_wordpiece_decoder`). The pipeline encoder reads the same ``tokenizer.json``.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertTokenizer, TokenizersBackend

    tk = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                               lowercase=lowercase)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    limit = None
    if char_counts is not None and min_char_count > 1:
        limit = sum(1 for c, n in char_counts.items() if n >= min_char_count and not c.isspace())
    kw = {"limit_alphabet": limit} if limit is not None else {}
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                        continuing_subword_prefix="##", **kw)
    tk.train_from_iterator(texts, trainer)
    vocab = tk.get_vocab()
    _check_specials(vocab, "char vocabulary")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        vf = Path(tmp) / "vocab.txt"
        vf.write_text("".join(t + "\n" for t in canonical_wordpiece_order(vocab)), encoding="utf-8")
        bt = BertTokenizer(vocab=str(vf), do_lower_case=lowercase, tokenize_chinese_chars=True,
                           strip_accents=None, model_max_length=512)
        saved = Tokenizer.from_str(bt.backend_tokenizer.to_str())
        saved.normalizer = normalizers.Sequence([corpus_normalizer(normalize), saved.normalizer])
        saved.decoder = cjk_joining_wordpiece_decoder()
        wrapper = TokenizersBackend(tokenizer_object=saved, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                    sep_token="[SEP]", mask_token="[MASK]", model_max_length=512,
                                    model_input_names=["input_ids", "token_type_ids", "attention_mask"],
                                    clean_up_tokenization_spaces=False, split_special_tokens=True,
                                    do_lower_case=lowercase)
        wrapper.save_pretrained(str(out_dir))
        shutil.copyfile(vf, out_dir / "vocab.txt")
    return {"kind": "char", "size": len(vocab), "trust_remote_code": False, "lowercase": lowercase,
            "tokenizer_class": "TokenizersBackend", "target_size": vocab_size,
            "normalizer": normalizer_info(normalize)}


def _unit_stream(units_counts: Counter, rare: set[str], word_start_marker: bool = False) -> Iterator[tuple[str, int]]:
    """(unit with ▁ for space, count) for training; rare characters cut units apart. With
    ``word_start_marker`` every unit starts with ▁ (the word-start marker of the MVP author's
    vocabulary; a unit with an attached space already does)."""
    for u, c in units_counts.items():
        if u.isspace():
            continue
        u = u.replace(" ", SPACE_MARK)
        if word_start_marker and not u.startswith(SPACE_MARK):
            u = SPACE_MARK + u
        if rare and any(ch in rare for ch in u):
            part = []
            for ch in u:
                if ch in rare:
                    if part:
                        yield "".join(part), c
                    part = []
                else:
                    part.append(ch)
            if part:
                yield "".join(part), c
        else:
            yield u, c


def _merge_counts(pairs: Iterable[tuple[str, int]]) -> Counter:
    out: Counter = Counter()
    for u, c in pairs:
        out[u] += c
    return out


def _segmented_tokenizer_common(tk, word_start_marker: bool = False):
    from tokenizers import decoders, pre_tokenizers

    # with the word-start marker, Metaspace prepends ▁ to every unit (word) that does not start
    # with one, so the first piece of every word is a ▁-piece ("▁喜欢" != "喜欢")
    scheme = "always" if word_start_marker else "never"
    tk.normalizer = None
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE_MARK, prepend_scheme=scheme, split=False)
    if word_start_marker:
        # ▁ is both the marker and an attached space (as in the author's sentencepiece): decoding
        # drops it, so Chinese text decodes exactly and spaces between words are lost
        tk.decoder = decoders.Sequence([decoders.Replace(SPACE_MARK, ""), decoders.Fuse()])
    else:
        tk.decoder = decoders.Metaspace(replacement=SPACE_MARK, prepend_scheme=scheme, split=False)
    tk.post_processor = _bert_post_processor()
    return tk


def _ensure_specials(tk) -> None:
    from tokenizers import AddedToken

    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])


def learn_sgt(unit_counts: Counter, char_counts: Counter, learner: str, vocab_size: int, min_char_count: int = 2,
              max_piece_len: int = 16, spm_input_words: int = 2_000_000, workdir: Path | None = None,
              word_start_marker: bool = False, spm_options: dict | None = None):
    """Learn sub-words inside segmented units; returns a ``tokenizers.Tokenizer`` (pipeline part only).

    ``word_start_marker`` (the MVP author's variant): every word's first piece carries ``▁``, so
    the ids carry the segmentation; whitespace units become ``▁`` + the character (one token).
    ``spm_options`` (sentencepiece learners): ``input_sentence_size`` (0 = every input line),
    ``shuffle_input_sentence``, ``seed``, ``num_threads``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    rare = {c for c, n in char_counts.items() if n < min_char_count}
    counts = _merge_counts(_unit_stream(unit_counts, rare, word_start_marker))
    # characters that must stay representable (whitespace units included, ▁ for the attached space)
    keep_chars = sorted({c for c, n in char_counts.items() if n >= min_char_count and c != " "})
    if char_counts.get(" ", 0) >= min_char_count or word_start_marker:
        keep_chars.append(SPACE_MARK)
    if not counts:
        raise UserError("sgt: the training split has no text to learn sub-words from")
    n_required = len(keep_chars) + len(SPECIALS)
    if vocab_size < n_required:
        log.warning("sgt.vocab_size=%d < %d required characters + specials; using %d", vocab_size,
                    n_required, n_required)
        vocab_size = n_required
    if learner in ("wp", "bpe"):
        def lines():
            buf: list[str] = []
            size = 0
            for u, c in counts.items():
                buf.append((u + " ") * c)
                size += c
                if size >= 4096:
                    yield "".join(buf)
                    buf, size = [], 0
            if buf:
                yield "".join(buf)

        if learner == "wp":
            tk = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="",
                                            max_input_chars_per_word=1000))
            trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                                continuing_subword_prefix="", initial_alphabet=keep_chars)
        else:
            tk = Tokenizer(models.BPE(unk_token="[UNK]"))
            trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                          initial_alphabet=keep_chars, max_token_length=max_piece_len)
        tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tk.train_from_iterator(lines(), trainer)
    elif learner in ("spm_bpe", "spm_unigram"):
        tk = _learn_spm(counts, keep_chars, learner, vocab_size, max_piece_len, spm_input_words, workdir,
                        spm_options)
    else:
        raise UserError(f"sgt.learner: unknown learner {learner!r}")
    if word_start_marker:
        # a whitespace unit ("\n") is marked too: "▁\n" as one token, not "▁" + "\n"
        ws = [SPACE_MARK + c for c in keep_chars if c.isspace() and SPACE_MARK + c not in tk.get_vocab()]
        if ws:
            tk = _append_tokens(tk, ws)
    _segmented_tokenizer_common(tk, word_start_marker)
    _ensure_specials(tk)
    _check_specials(tk.get_vocab(), f"sgt vocabulary ({learner})")
    return tk


def _learn_spm(counts: Counter, keep_chars: list[str], learner: str, vocab_size: int, max_piece_len: int,
               spm_input_words: int, workdir: Path | None, spm_options: dict | None = None):
    import sentencepiece as spm

    opts = {"input_sentence_size": 0, "shuffle_input_sentence": True, "seed": 0, "num_threads": 1,
            **(spm_options or {})}
    from tokenizers import Tokenizer, models

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        tsv = Path(tmp) / "units.tsv"
        with open(tsv, "w", encoding="utf-8") as f:
            for u, c in counts.most_common(spm_input_words):
                if "\t" in u or "\n" in u or "\r" in u:
                    continue
                f.write(f"{u}\t{c}\n")
            # every kept character once more, so it is part of the alphabet even if only seen in
            # units cut away above (whitespace units such as "\n" stay out: they are added below)
            for ch in keep_chars:
                if not ch.isspace() and ch not in ("\t",):
                    f.write(f"{ch}\t1\n")
        prefix = str(Path(tmp) / "m")
        kwargs = dict(
            input=str(tsv), input_format="tsv", model_prefix=prefix, vocab_size=vocab_size,
            model_type="bpe" if learner == "spm_bpe" else "unigram",
            character_coverage=1.0, normalization_rule_name="identity", add_dummy_prefix=False,
            remove_extra_whitespaces=False, split_by_whitespace=True, max_sentencepiece_length=max_piece_len,
            pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, pad_piece="[PAD]", unk_piece="[UNK]",
            control_symbols=["[CLS]", "[SEP]", "[MASK]"], hard_vocab_limit=False,
            num_threads=int(opts["num_threads"]), minloglevel=2, train_extremely_large_corpus=False,
        )
        if opts["input_sentence_size"] > 0:
            # sentencepiece reads a sample of its input lines (its remedy for training memory);
            # a fixed seed makes the sample, hence the vocabulary, the same on every run, and the
            # characters that must stay representable are required whatever the sample holds
            spm.set_random_generator_seed(int(opts["seed"]))
            kwargs.update(input_sentence_size=int(opts["input_sentence_size"]),
                          shuffle_input_sentence=bool(opts["shuffle_input_sentence"]),
                          required_chars="".join(c for c in keep_chars if not c.isspace() and c != SPACE_MARK))
        try:
            spm.SentencePieceTrainer.train(**kwargs)
        except RuntimeError as e:
            raise UserError(f"sentencepiece ({learner}) failed: {e}") from None
        sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
        pieces = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
        if learner == "spm_unigram":
            tk = Tokenizer(models.Unigram(pieces, unk_id=1, byte_fallback=False))
        else:
            from transformers.tokenization_utils_base import generate_merges

            vocab = {p: i for i, (p, _) in enumerate(pieces)}
            merges = generate_merges(vocab, skip_tokens=SPECIALS)
            tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="[UNK]", fuse_unk=False))
    # whitespace characters (e.g. "\n") never reach sentencepiece: add them as single tokens; with
    # a sample, so are the required characters its sample did not hold
    sampled = opts["input_sentence_size"] > 0
    extra = [c for c in keep_chars if (sampled or c.isspace()) and c not in tk.get_vocab()]
    if extra:
        tk = _append_tokens(tk, extra)
    return tk


def _append_tokens(tk, extra: list[str]):
    """Add single-character tokens to a BPE/Unigram/WordPiece model (not as AddedTokens)."""
    from tokenizers import Tokenizer

    data = json.loads(tk.to_str())
    model = data["model"]
    if model["type"] == "Unigram":
        low = min((s for _, s in model["vocab"]), default=0.0) - 1.0
        model["vocab"].extend([[c, low] for c in extra])
    else:
        n = len(model["vocab"])
        for k, c in enumerate(extra):
            model["vocab"][c] = n + k
        if model["type"] == "BPE" and "merges" in model:
            # a two-character token is reachable in BPE only through a merge of its characters
            pair_as_str = bool(model["merges"]) and isinstance(model["merges"][0], str)
            for c in extra:
                if len(c) == 2 and c[0] in model["vocab"] and c[1] in model["vocab"]:
                    model["merges"].append(f"{c[0]} {c[1]}" if pair_as_str else [c[0], c[1]])
    return Tokenizer.from_str(json.dumps(data))


def build_word(unit_counts: Counter, char_counts: Counter, min_count: int, max_size: int,
               min_char_count: int = 1):
    """WordLevel tokenizer: specials, characters (fallback), then words by frequency."""
    from tokenizers import Tokenizer, models

    chars = [c for c, n in char_counts.most_common() if n >= min_char_count and c != " "]
    if char_counts.get(" ", 0) >= min_char_count:
        chars.append(SPACE_MARK)
    vocab: dict[str, int] = {t: i for i, t in enumerate(SPECIALS)}
    for c in chars:
        if len(vocab) >= max_size:
            break
        vocab.setdefault(c, len(vocab))
    n_chars = len(vocab) - len(SPECIALS)
    for u, n in unit_counts.most_common():
        if len(vocab) >= max_size or n < min_count:
            break
        key = u.replace(" ", SPACE_MARK)
        if len(u) >= 2:
            vocab.setdefault(key, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    _segmented_tokenizer_common(tk)
    _ensure_specials(tk)
    _check_specials(tk.get_vocab(), "word vocabulary")
    return tk, {"n_chars": n_chars, "n_words": len(vocab) - len(SPECIALS) - n_chars}


def save_segmented_folder(tk, out_dir: Path, segmenter, word_fallback: bool, normalize: dict | None = None) -> None:
    """Save a ``tokenizers`` model with the remote ``SegmentedTokenizer`` class into ``out_dir``.

    The saved ``tokenizer.json`` carries the corpus stage's normalisation (:func:`corpus_normalizer`
    with ``normalize``), so raw text is segmented and looked up as the corpus stage would have
    written it."""
    from transformers import TokenizersBackend

    out_dir.mkdir(parents=True, exist_ok=True)
    tk.normalizer = corpus_normalizer(normalize)
    wrapper = TokenizersBackend(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                sep_token="[SEP]", mask_token="[MASK]", model_max_length=512,
                                clean_up_tokenization_spaces=False, split_special_tokens=True)
    wrapper.save_pretrained(str(out_dir))
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg.update({
        "tokenizer_class": REMOTE_CLASS,
        "auto_map": {"AutoTokenizer": [None, f"tokenization_segmented.{REMOTE_CLASS}"]},
        "segmenter_backend": segmenter.requested_backend,
        "segmenter_hmm": segmenter.hmm,
        "word_fallback": word_fallback,
        "split_special_tokens": True,
        "clean_up_tokenization_spaces": False,
    })
    cfg_path.write_text(json.dumps(cfg, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    shutil.copyfile(REMOTE_FILE, out_dir / "tokenization_segmented.py")
    if segmenter.user_dict:
        shutil.copyfile(segmenter.user_dict, out_dir / "user_dict.txt")
