"""Token shards: one memory-mapped stream set per corpus shard and vocabulary kind.

``python -m tokenization shards --config configs/tokenization/default.yaml run=demo`` calls
:func:`main_shards`. Layout (``docs/contracts.md``, "Token shards")::

    runs/RUN/shards/KIND/{train,valid}/
        NNNNN.ids.bin          uint16 when the vocabulary has <= 65536 entries, else uint32
        NNNNN.char_len.bin     uint8   characters covered by each token (contract convention)
        NNNNN.word_start.bin   uint8   1 on the first token of each segmented word
        NNNNN.unit_len.bin     uint8   } only for the n-gram lexicon's base kind:
        NNNNN.unit_ngram.bin   int32   } tokenization.ngram.max_match units
        NNNNN.docmeta.jsonl    {"id", "lang", "source", "n_chars"} per document
        NNNNN.docs.npy         int64 token offsets of the documents (n_docs + 1)
        meta.json              written last: format version, vocab hash, dtype, counts, groups

How it runs:

* One task per corpus shard; a task reads the segmentation cache once
  (:func:`tokenization.segcache.iter_segmented`, which segments the shard now if the cache is
  missing) and writes that shard for every kind, encoding ``batch_docs`` documents per
  ``encode_batch`` call and appending to the stream files as it goes (memory stays bounded by one
  batch). Tasks run on the stage's datatrove executor (``executor:``; ``shards.workers`` > 1
  overrides its ``workers``), with completion markers under ``shards/.tasks/SPLIT-HASH/``; a
  shard's bytes depend only on its corpus shard and the vocabulary, so the output is identical
  for any number of workers.
* Atomic: every file is written under a temporary name and renamed; ``docs.npy`` is renamed last
  and marks the shard complete; ``meta.json`` is written after all shards of a split.
* Restart: the split folder holds ``.job.json`` (fingerprint: format, vocabulary hash, lexicon
  hash, segmenter fingerprint, corpus shard names/sizes/sha1) while a job is under way. A re-run
  with the same fingerprint keeps every complete shard and rewrites the others; a different
  fingerprint (new vocabulary, new corpus) clears the folder first. A finished split whose
  ``meta.json`` carries the same fingerprint is skipped.
* Documents are stored without special tokens; empty documents are stored (zero tokens) and
  counted; a document whose ``char_len`` does not sum to its length is an encoder bug and stops
  the job with the shard and record named.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from pipeline.errors import UserError
from pipeline.log import get_logger, print_table
from pipeline.runs import atomic_write_json, read_json
from tokenization.tasks import run_tasks
from tokenization.schema import ShardMeta, VocabStats

log = get_logger("tokenization")

FORMAT_VERSION = 1
STREAMS = ("ids", "char_len", "word_start", "unit_len", "unit_ngram")
STREAM_DTYPES = {"char_len": np.uint8, "word_start": np.uint8, "unit_len": np.uint8, "unit_ngram": np.int32}
# rename order: streams first, docmeta, then docs.npy (the completeness marker)
_TMP_TAG = ".tmp"


def ids_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def shard_name(index: int) -> str:
    return f"{index:05d}"


def stream_path(split_dir: Path, name: str, stream: str) -> Path:
    return split_dir / f"{name}.{stream}.bin"


# ---------------------------------------------------------------------------------------------
# hashing / fingerprints
# ---------------------------------------------------------------------------------------------
def _sha1_file(path: Path, h=None) -> str:
    h = h or hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def vocab_hash(vocab_dir: str | Path) -> str:
    """sha1 over the tokenizer files of a vocabulary folder (``stats.json`` excluded: metrics)."""
    d = Path(vocab_dir)
    h = hashlib.sha1()
    for p in sorted(d.rglob("*")):
        if p.is_file() and p.name != "stats.json" and not p.name.startswith(".") and "__pycache__" not in p.parts:
            h.update(str(p.relative_to(d)).encode())
            _sha1_file(p, h)
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# one shard of one kind
# ---------------------------------------------------------------------------------------------
class ShardWriter:
    """Streams one shard's files under temporary names; :meth:`commit` renames them into place."""

    def __init__(self, split_dir: Path, name: str, id_dtype: np.dtype, units: bool):
        self.dir = split_dir
        self.name = name
        self.id_dtype = np.dtype(id_dtype)
        self.streams = ["ids", "char_len", "word_start"] + (["unit_len", "unit_ngram"] if units else [])
        self.final = {s: stream_path(split_dir, name, s) for s in self.streams}
        self.final["docmeta"] = split_dir / f"{name}.docmeta.jsonl"
        self.final["docs"] = split_dir / f"{name}.docs.npy"
        tag = f".{os.getpid()}{_TMP_TAG}"
        self.tmp = {k: p.with_name(f".{p.name}{tag}") for k, p in self.final.items()}
        self.files = {k: open(self.tmp[k], "wb") for k in self.streams + ["docmeta"]}
        self.offsets = [0]
        self.n_tokens = 0
        self.max_id = -1

    def append(self, docs: list[dict], ids: np.ndarray, char_len: np.ndarray, word_start: np.ndarray,
               counts: np.ndarray, unit_len: np.ndarray | None = None, unit_ngram: np.ndarray | None = None) -> None:
        """Append a batch of documents: flat token arrays plus the token count of each document."""
        if not docs:
            return
        ends = self.n_tokens + np.cumsum(np.asarray(counts, dtype=np.int64))
        self.offsets.extend(ends.tolist())
        self.n_tokens = int(ends[-1])
        ids = np.asarray(ids)
        if ids.size:
            m = int(ids.max())
            if m > self.max_id:
                self.max_id = m
            if int(ids.min()) < 0 or m > np.iinfo(self.id_dtype).max:
                raise RuntimeError(f"token id out of range for {self.id_dtype}: {m}")
            if int(np.asarray(char_len).max()) > 255:
                raise RuntimeError("a token covers more than 255 characters (the encoder must split it)")
        self.files["ids"].write(ids.astype(self.id_dtype, copy=False).tobytes())
        self.files["char_len"].write(np.asarray(char_len).astype(np.uint8, copy=False).tobytes())
        self.files["word_start"].write(np.asarray(word_start).astype(np.uint8, copy=False).tobytes())
        if "unit_len" in self.files:
            self.files["unit_len"].write(np.asarray(unit_len).astype(np.uint8, copy=False).tobytes())
            self.files["unit_ngram"].write(np.asarray(unit_ngram).astype(np.int32, copy=False).tobytes())
        self.files["docmeta"].write("".join(
            json.dumps({"id": d.get("id"), "lang": d.get("lang"), "source": d.get("source"),
                        "n_chars": len(d["text"])}, ensure_ascii=False) + "\n" for d in docs).encode("utf-8"))

    def commit(self) -> None:
        for f in self.files.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()
        with open(self.tmp["docs"], "wb") as f:
            np.save(f, np.asarray(self.offsets, dtype=np.int64))
            f.flush()
            os.fsync(f.fileno())
        for k in self.streams + ["docmeta", "docs"]:  # docs.npy last: the completeness marker
            os.replace(self.tmp[k], self.final[k])

    def abort(self) -> None:
        for f in self.files.values():
            if not f.closed:
                f.close()
        for p in self.tmp.values():
            if p.exists():
                p.unlink()


def shard_complete(split_dir: Path, name: str, id_dtype: np.dtype, units: bool) -> dict | None:
    """Counts of a complete shard (all files present with consistent sizes), else ``None``."""
    docs_p = split_dir / f"{name}.docs.npy"
    meta_p = split_dir / f"{name}.docmeta.jsonl"
    if not (docs_p.is_file() and meta_p.is_file()):
        return None
    try:
        offsets = np.load(docs_p)
    except (OSError, ValueError):
        return None
    n_tok = int(offsets[-1]) if len(offsets) else -1
    streams = ["ids", "char_len", "word_start"] + (["unit_len", "unit_ngram"] if units else [])
    for s in streams:
        p = stream_path(split_dir, name, s)
        item = np.dtype(id_dtype).itemsize if s == "ids" else np.dtype(STREAM_DTYPES[s]).itemsize
        if not p.is_file() or p.stat().st_size != n_tok * item:
            return None
    return {"n_docs": len(offsets) - 1, "n_tokens": n_tok}


# ---------------------------------------------------------------------------------------------
# memoised encoding (exact): the shard path's speed-up
# ---------------------------------------------------------------------------------------------
# BERT's normaliser puts spaces around these characters (tokenizers' ``is_chinese_char``), so each
# is a pre-token of its own whatever surrounds it.
_CJK = ("\u4e00-\u9fff\u3400-\u4dbf\U00020000-\U0002a6df\U0002a700-\U0002b73f\U0002b740-\U0002b81f"
        "\U0002b920-\U0002ceaf\uf900-\ufaff\U0002f800-\U0002fa1f")
_CHAR_PIECES = re.compile(f"[{_CJK}]|[^{_CJK}]+")
_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
               (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


class _Grow:
    """Append-only int64 columns with amortised growth."""

    def __init__(self, cols: int, cap: int = 1 << 16):
        self.a = np.zeros((cols, cap), dtype=np.int64)
        self.n = 0

    def extend(self, *cols: np.ndarray) -> None:
        k = len(cols[0])
        if self.n + k > self.a.shape[1]:
            b = np.zeros((self.a.shape[0], max(2 * self.a.shape[1], self.n + k)), dtype=np.int64)
            b[:, :self.n] = self.a[:, :self.n]
            self.a = b
        for i, c in enumerate(cols):
            self.a[i, self.n:self.n + k] = c
        self.n += k


class MemoEncoder:
    """The same output as the pipeline's encoder, encoding each distinct *piece* of text once.

    A piece is a stretch of text whose tokens do not depend on what surrounds it:

    * ``sgt`` / ``word``: the units the encoder feeds to its model (segmented words with a
      single space attached, :func:`tokenization.vocab.attach_spaces`), which it encodes one by
      one (pre-tokenized input);
    * ``char`` (BERT): every CJK character (BERT isolates them before WordPiece) and every run of
      other characters between two of them.

    New pieces of a batch go through the encoder's ``tokenizers`` model in one call; known ones
    are a dict lookup; a batch is then assembled with vectorised numpy (token ids, raw character
    offsets shifted to the document, the ``char_len`` convention of ``tokenization.vocab._finish``
    applied to whole documents, so characters a tokenizer drops still go to the next token).
    Encoders of other types pass through unchanged. The shard writer checks the first batch of
    every shard against the plain encoder and falls back to it on any difference.
    """

    MAX_PIECES = 1_000_000  # the cache restarts beyond this (memory bound; output unaffected)

    def __init__(self, enc):
        self.enc = enc
        self.kind = getattr(enc, "kind", "")
        self.vocab_size = getattr(enc, "vocab_size", 0)
        self.special_ids = getattr(enc, "special_ids", {"unk": 1})
        self.mode = {"CharEncoder": "char", "SegmentedEncoder": "units", "WordEncoder": "word"}.get(type(enc).__name__)
        self._reset()

    @property
    def supported(self) -> bool:
        return self.mode is not None

    def _reset(self) -> None:
        self.index: dict[str, int] = {}
        self.p_off: list[int] = []
        self.p_len: list[int] = []
        self.tok = _Grow(4)  # ids, start, end, word_start (raw, relative to the piece)
        self._arr = None
        self.cp_piece = np.full(0x110000, -1, dtype=np.int64) if self.mode == "char" else None

    def _pieces(self, words: list[str]) -> list[str]:
        if self.mode == "char":
            return _CHAR_PIECES.findall("".join(words))
        from tokenization.vocab import attach_spaces

        return attach_spaces(words) if " " in words else words  # it only changes lone " " words

    def _add(self, new: list[str]) -> None:
        """Encode new pieces (one call into the tokenizer) and append them to the cache."""
        if len(self.index) + len(new) > self.MAX_PIECES:
            self._reset()
        chain = itertools.chain.from_iterable
        if self.mode == "char":
            encs = self.enc.tk.encode_batch(new, add_special_tokens=False)
            cnt = np.fromiter((len(e.ids) for e in encs), dtype=np.int64, count=len(new))
            ids = np.fromiter(chain(e.ids for e in encs), dtype=np.int64, count=int(cnt.sum()))
            off = np.fromiter(chain(chain(e.offsets for e in encs)), dtype=np.int64, count=2 * int(cnt.sum())).reshape(-1, 2)
            ws = np.zeros(len(ids), np.int64)
        elif self.mode == "units":
            # pre-tokenized units are encoded independently: the new ones go in as one input
            parts = []
            for c in range(0, len(new), 8192):
                chunk = new[c:c + 8192]
                e = self.enc.tk.encode(chunk, is_pretokenized=True, add_special_tokens=False)
                wid = np.asarray([-1 if w is None else w for w in e.word_ids], dtype=np.int64)
                if len(wid) and ((wid < 0).any() or (np.diff(wid) < 0).any()):
                    raise RuntimeError("sgt tokenizer: tokens outside or out of order of the input words")
                parts.append((np.asarray(e.ids, dtype=np.int64), np.asarray(e.offsets, dtype=np.int64).reshape(-1, 2),
                              np.bincount(wid, minlength=len(chunk)).astype(np.int64) if len(wid) else np.zeros(len(chunk), np.int64)))
            ids = np.concatenate([x[0] for x in parts])
            off = np.concatenate([x[1] for x in parts])
            cnt = np.concatenate([x[2] for x in parts])
            ws = np.zeros(len(ids), np.int64)
            firsts = (np.cumsum(cnt) - cnt)[cnt > 0]
            ws[firsts] = 1
        else:  # word: the encoder's own per-unit output (no dropped characters)
            outs = self.enc.encode_batch([[p] for p in new])
            cnt = np.array([len(o[0]) for o in outs], dtype=np.int64)
            ids = np.concatenate([np.asarray(o[0], np.int64) for o in outs])
            cl = [np.asarray(o[1], np.int64) for o in outs]
            end = np.concatenate([np.cumsum(c) for c in cl])
            off = np.stack([end - np.concatenate(cl), end], axis=1)
            ws = np.concatenate([np.asarray(o[2], np.int64) for o in outs])
        n0, k0 = self.tok.n, len(self.p_off)
        self.tok.extend(ids, off[:, 0], off[:, 1], ws)
        self.p_off.extend((n0 + np.cumsum(cnt) - cnt).tolist())
        self.p_len.extend(cnt.tolist())
        self.index.update(zip(new, range(k0, k0 + len(new))))
        self._arr = None

    def _char_pieces(self, docs: list[list[str]], base: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pieces of a batch for the char kind, vectorised: CJK characters through a code point
        table, runs of other characters (cut at document starts) through the dict."""
        text = "".join(itertools.chain.from_iterable(docs))
        cp = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        N = len(cp)
        if N == 0:
            z = np.zeros(0, np.int64)
            return z, z, z
        cjk = np.zeros(N, dtype=bool)
        for lo, hi in _CJK_RANGES:
            cjk |= (cp >= lo) & (cp <= hi)
        docstart = np.zeros(N + 1, dtype=bool)
        docstart[base[:-1]] = True
        other = ~cjk
        rs = np.flatnonzero(other & (np.concatenate([[True], cjk[:-1]]) | docstart[:-1]))
        re_ = np.flatnonzero(other & (np.concatenate([cjk[1:], [True]]) | docstart[1:])) + 1
        runs = [text[a:b] for a, b in zip(rs.tolist(), re_.tolist())]
        idx = list(map(self.index.get, runs))
        if None in idx:
            self._add(list(dict.fromkeys(r for r, i in zip(runs, idx) if i is None)))
            idx = list(map(self.index.get, runs))
        cpos = np.flatnonzero(cjk)
        ccp = cp[cpos]
        pc = self.cp_piece[ccp]
        if (pc < 0).any():
            new = np.unique(ccp[pc < 0])
            self._add([chr(int(c)) for c in new])
            self.cp_piece[new] = [self.index[chr(int(c))] for c in new]
            pc = self.cp_piece[ccp]
        starts = np.concatenate([cpos, rs])
        P = np.concatenate([pc, np.asarray(idx, dtype=np.int64)])
        order = np.argsort(starts, kind="stable")
        p_start = starts[order]
        return P[order], p_start, np.searchsorted(base, p_start, side="right") - 1

    def encode_flat(self, docs: list[list[str]], n_chars: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(ids int64, char_len uint8, word_start uint8, tokens per document)`` of a batch."""
        from tokenization.vocab import _finish

        if self.mode is None:
            out = self.enc.encode_batch(docs)
            counts = np.array([len(o[0]) for o in out], dtype=np.int64)
            cat = (lambda k, dt: np.concatenate([np.asarray(o[k], dt) for o in out]) if out else np.zeros(0, dt))
            return cat(0, np.int64), cat(1, np.uint8), cat(2, np.uint8), counts
        n_docs = len(docs)
        if n_chars is None:
            n_chars = np.fromiter((sum(map(len, w)) for w in docs), dtype=np.int64, count=n_docs)
        base = np.concatenate([[0], np.cumsum(n_chars)])  # document starts in batch coordinates
        if self.mode == "char":
            P, p_start, doc_of_piece = self._char_pieces(docs, base)
        else:
            pieces = [self._pieces(w) for w in docs]
            flat = list(itertools.chain.from_iterable(pieces))
            idx = list(map(self.index.get, flat))
            if None in idx:
                self._add(list(dict.fromkeys(p for p, i in zip(flat, idx) if i is None)))
                idx = list(map(self.index.get, flat))
            P = np.asarray(idx, dtype=np.int64)
            plen_chars = np.fromiter(map(len, flat), dtype=np.int64, count=len(flat))
            p_start = np.concatenate([[0], np.cumsum(plen_chars)[:-1]]) if len(flat) else np.zeros(0, np.int64)
            doc_of_piece = np.repeat(np.arange(n_docs), np.fromiter(map(len, pieces), dtype=np.int64, count=n_docs))
        if self._arr is None:
            self._arr = (np.asarray(self.p_off, np.int64), np.asarray(self.p_len, np.int64), self.tok.a[:, :self.tok.n])
        p_off, p_len, tok = self._arr
        counts = p_len[P] if len(P) else np.zeros(0, np.int64)
        total = int(counts.sum())
        first = np.concatenate([[0], np.cumsum(counts)[:-1]]) if len(counts) else counts
        pos = np.repeat(p_off[P] - first, counts) + np.arange(total, dtype=np.int64)
        shift = np.repeat(p_start, counts)
        ids = tok[0, pos]
        start = tok[1, pos] + shift
        end = tok[2, pos] + shift
        doc_tokens = np.bincount(doc_of_piece, weights=counts, minlength=n_docs).astype(np.int64)
        tok_doc_start = np.concatenate([[0], np.cumsum(doc_tokens)])
        has = doc_tokens > 0
        last = tok_doc_start[1:][has] - 1
        ge = np.maximum.accumulate(end) if total else end
        ge[last] = base[1:][has]  # the last token of a document takes its trailing characters
        cl = np.diff(ge, prepend=0)
        if self.mode == "char":
            wends = np.cumsum(np.fromiter(map(len, itertools.chain.from_iterable(docs)), dtype=np.int64))
            widx = np.searchsorted(wends, start, side="right")
            ws = np.ones(total, np.uint8)
            ws[1:] = widx[1:] != widx[:-1]
        else:
            ws = (tok[3, pos] > 0).astype(np.uint8)
        ws[tok_doc_start[:-1][has]] = 1
        # rare cases follow the encoder's own rule document by document: a text with no token, a
        # token over 255 characters (tokenization.vocab._finish)
        special = (doc_tokens == 0) & (n_chars > 0)
        if total and cl.max() > 255:
            over = np.flatnonzero(cl > 255)
            special[np.searchsorted(tok_doc_start, over, side="right") - 1] = True
        if special.any():
            unk = self.special_ids.get("unk", 1)
            parts_i, parts_c, parts_w = [], [], []
            for d in range(n_docs):
                a, b = tok_doc_start[d], tok_doc_start[d + 1]
                ii, cc, ww = ids[a:b], cl[a:b], ws[a:b]
                if special[d]:
                    ii, cc, ww = _finish(ii, np.cumsum(cc), ww, int(n_chars[d]), unk, f"{self.kind} encoder")
                    doc_tokens[d] = len(ii)
                parts_i.append(ii), parts_c.append(cc), parts_w.append(ww)
            ids, cl, ws = np.concatenate(parts_i), np.concatenate(parts_c), np.concatenate(parts_w)
        return ids.astype(np.int64), cl.astype(np.uint8), ws.astype(np.uint8), doc_tokens

    def encode_batch(self, docs: list[list[str]]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        ids, cl, ws, counts = self.encode_flat(docs)
        cut = np.cumsum(counts)[:-1]
        return list(zip(np.split(ids, cut), np.split(cl, cut), np.split(ws, cut)))

    def encode_words(self, words: list[str]):
        return self.encode_batch([words])[0]


# ---------------------------------------------------------------------------------------------
# the per-corpus-shard task (runs in worker processes)
# ---------------------------------------------------------------------------------------------
@dataclass
class KindSpec:
    kind: str
    vocab_dir: str
    out_dir: str  # the split folder
    id_dtype: str
    units: bool  # write max_match units (the lexicon's base kind)


@dataclass
class ShardTask:
    run_dir: str
    split: str
    index: int
    kinds: list[KindSpec]
    batch_docs: int
    lexicon_dir: str | None
    segmenter: Any  # tokenization.segment.Segmenter (pickles cheaply) or None


_ENCODERS: dict[str, Any] = {}
_LEXICONS: dict[str, Any] = {}


def _encoder(vocab_dir: str):
    enc = _ENCODERS.get(vocab_dir)
    if enc is None:
        from tokenization.vocab import load_token_encoder

        enc = _ENCODERS[vocab_dir] = load_token_encoder(vocab_dir)
    return enc


def _lexicon(lexicon_dir: str):
    lex = _LEXICONS.get(lexicon_dir)
    if lex is None:
        from tokenization.ngram import Lexicon

        lex = _LEXICONS[lexicon_dir] = Lexicon.load(lexicon_dir)
        # units never cut a segmented word when the lexicon was built that way (ngram.within_words)
        stats = VocabStats.load_if_present(lexicon_dir)
        lex.within_words = bool(stats.get("within_words", False)) if stats is not None else False
    return lex


def _batched(it: Iterable, n: int) -> Iterator[list]:
    buf = []
    for x in it:
        buf.append(x)
        if len(buf) >= n:
            yield buf
            buf = []
    if buf:
        yield buf


def _plain_flat(enc, words_list: list[list[str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    out = enc.encode_batch(words_list)
    counts = np.array([len(o[0]) for o in out], dtype=np.int64)
    if not out:
        return np.zeros(0, np.int64), np.zeros(0, np.uint8), np.zeros(0, np.uint8), counts
    return (np.concatenate([np.asarray(o[0], np.int64) for o in out]),
            np.concatenate([np.asarray(o[1]).astype(np.int64) for o in out]),
            np.concatenate([np.asarray(o[2]).astype(np.uint8) for o in out]), counts)


def write_docs(docs_words: Iterable[tuple[dict, list[str]]], kinds: list[KindSpec], name: str, *,
               batch_docs: int = 256, lexicon=None, encoders: dict[str, Any] | None = None,
               source: str = "", memo: bool = True) -> dict:
    """Encode ``(doc, words)`` pairs with every kind's encoder and write shard ``name``.

    The core of the shard path (also what ``bench/bench_shards.py`` times). ``memo`` wraps the
    encoders in :class:`MemoEncoder` (same output; the first batch of the shard is checked against
    the plain encoder, which takes over on any difference). Returns per-kind counts and
    per-group (lang, source) counts. ``source`` names the corpus shard in errors.
    """
    writers: dict[str, ShardWriter] = {}
    stats: dict[str, dict] = {}
    try:
        for ks in kinds:
            Path(ks.out_dir).mkdir(parents=True, exist_ok=True)
            writers[ks.kind] = ShardWriter(Path(ks.out_dir), name, np.dtype(ks.id_dtype), ks.units)
            stats[ks.kind] = {"n_docs": 0, "n_tokens": 0, "n_chars": 0, "n_empty_docs": 0, "n_unk": 0,
                              "groups": Counter(), "group_tokens": Counter(), "group_docs": Counter()}
        plain = {ks.kind: (encoders or {}).get(ks.kind) or _encoder(ks.vocab_dir) for ks in kinds}
        encs: dict[str, Any] = {}
        for k, e in plain.items():
            m = _memo(e) if memo else None
            encs[k] = m if m is not None and m.supported else e
        checked: set[str] = set()
        record = 0
        for batch in _batched(docs_words, batch_docs):
            docs = []
            words_list = []
            for doc, words in batch:
                record += 1
                text = doc.get("text") if isinstance(doc, dict) else None
                if not isinstance(text, str):
                    raise UserError(f"{source}: record {record} has no string 'text' field")
                docs.append(doc)
                words_list.append(words)
            first_record = record - len(batch) + 1
            n_chars = np.fromiter((len(d["text"]) for d in docs), dtype=np.int64, count=len(docs))
            groups = [(str(d.get("lang")), str(d.get("source"))) for d in docs]
            for ks in kinds:
                enc = encs[ks.kind]
                if isinstance(enc, MemoEncoder):
                    ids, cl, ws, counts = enc.encode_flat(words_list, n_chars)
                    if ks.kind not in checked:  # spot check: the first documents of the shard
                        checked.add(ks.kind)
                        k = min(len(docs), _CHECK_DOCS)
                        nt = int(counts[:k].sum())
                        ref = _plain_flat(plain[ks.kind], words_list[:k])
                        if not all(np.array_equal(x, y) for x, y in zip((ids[:nt], cl[:nt], ws[:nt], counts[:k]), ref)):
                            log.warning("%s: memoised '%s' encoding differs from the encoder's; using the plain "
                                        "encoder for this shard", source, ks.kind)
                            encs[ks.kind] = plain[ks.kind]
                            ids, cl, ws, counts = _plain_flat(plain[ks.kind], words_list)
                else:
                    ids, cl, ws, counts = _plain_flat(enc, words_list)
                doc_of_tok = np.repeat(np.arange(len(docs)), counts)
                sums = np.bincount(doc_of_tok, weights=cl, minlength=len(docs)).astype(np.int64)
                bad = np.nonzero(sums != n_chars)[0]
                if len(bad):
                    j = int(bad[0])
                    raise RuntimeError(
                        f"{source}: record {first_record + j}: the '{ks.kind}' encoder's char_len sums to "
                        f"{sums[j]} for a text of {n_chars[j]} characters (contract: char_len.sum() == len(text))")
                ul = un = None
                if ks.units:
                    from tokenization.ngram import max_match

                    within = bool(getattr(lexicon, "within_words", False))
                    cut = np.cumsum(counts)[:-1]
                    pairs = [max_match(i, lexicon, w if within else None)
                             for i, w in zip(np.split(ids, cut), np.split(ws, cut))]
                    ul = np.concatenate([p[0] for p in pairs]) if pairs else np.zeros(0, np.uint8)
                    un = np.concatenate([p[1] for p in pairs]) if pairs else np.zeros(0, np.int32)
                writers[ks.kind].append(docs, ids, cl, ws, counts, ul, un)
                st = stats[ks.kind]
                sp = getattr(plain[ks.kind], "special_ids", None)
                unk = sp.get("unk", 1) if isinstance(sp, dict) else 1
                st["n_unk"] += int(np.count_nonzero(ids == unk))
                for g, nc, nt in zip(groups, n_chars.tolist(), counts.tolist()):
                    st["groups"][g] += nc
                    st["group_tokens"][g] += nt
                    st["group_docs"][g] += 1
                st["n_empty_docs"] += int(np.count_nonzero(n_chars == 0))
                st["n_docs"] += len(docs)
                st["n_tokens"] += int(counts.sum())
                st["n_chars"] += int(n_chars.sum())
        for ks in kinds:
            writers[ks.kind].commit()
            stats[ks.kind]["max_id"] = writers[ks.kind].max_id
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    for st in stats.values():  # JSON-friendly group tables
        st["groups"] = [[g[0], g[1], st["group_docs"][g], c, st["group_tokens"][g]] for g, c in sorted(st["groups"].items())]
        del st["group_tokens"], st["group_docs"]
    return stats


_MEMOS: dict[int, MemoEncoder] = {}
_CHECK_DOCS = 64


def _memo(enc) -> MemoEncoder:
    """One memo per encoder object per process (its cache carries over from shard to shard)."""
    m = _MEMOS.get(id(enc))
    if m is None or m.enc is not enc:
        m = _MEMOS[id(enc)] = MemoEncoder(enc)
    return m


def run_task(task: ShardTask) -> dict:
    """Write corpus shard ``task.index`` of ``task.split`` for every kind in ``task.kinds``."""
    from tokenization.segcache import corpus_shard_path, iter_segmented

    t0 = time.perf_counter()
    lexicon = _lexicon(task.lexicon_dir) if task.lexicon_dir and any(k.units for k in task.kinds) else None
    src = corpus_shard_path(task.run_dir, task.split, task.index)
    stats = write_docs(iter_segmented(task.run_dir, task.split, task.index, task.segmenter), task.kinds,
                       shard_name(task.index), batch_docs=task.batch_docs, lexicon=lexicon, source=str(src))
    return {"index": task.index, "split": task.split, "stats": stats, "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------------
# a split of every kind: fingerprints, restart, parallel tasks, meta.json
# ---------------------------------------------------------------------------------------------
def _clear_split_dir(d: Path) -> None:
    if not d.is_dir():
        return
    for p in d.iterdir():
        if p.is_file() and (p.name[:5].isdigit() or p.name == "meta.json" or p.name.endswith(_TMP_TAG)):
            p.unlink()


def _remove_tmp(d: Path) -> None:
    if d.is_dir():
        for p in d.iterdir():
            if p.name.startswith(".") and p.name.endswith(_TMP_TAG):
                p.unlink()


def prepare_split_dir(split_dir: Path, fingerprint: dict) -> str:
    """Decide between ``"done"`` (meta.json matches), ``"resume"`` and ``"fresh"`` (cleared)."""
    split_dir.mkdir(parents=True, exist_ok=True)
    meta_p, job_p = split_dir / "meta.json", split_dir / ".job.json"
    if meta_p.is_file():
        try:
            if read_json(meta_p).get("job") == fingerprint:
                return "done"
        except (OSError, ValueError):
            pass
        meta_p.unlink()  # stale: never leave a meta.json describing other files
    _remove_tmp(split_dir)
    if job_p.is_file():
        try:
            if read_json(job_p) == fingerprint:
                return "resume"
        except (OSError, ValueError):
            pass
    _clear_split_dir(split_dir)
    atomic_write_json(job_p, fingerprint)
    return "fresh"


def mixing_table(groups: dict[tuple[str, str], dict], mixing) -> list[dict]:
    """Sampling probability per (lang, source) group; see :class:`MixingConfig` for the rule."""
    from tokenization.loader import group_probabilities

    keys = sorted(groups)
    try:
        probs = group_probabilities(keys, [groups[k] for k in keys], mixing, strict=False)
    except UserError as e:  # e.g. every language weighted 0: the loader will say so; keep the counts
        log.warning("mixing table: %s", e)
        probs = [None] * len(keys)
    total = sum(groups[k][mixing.unit] for k in keys) or 1
    return [{"lang": k[0], "source": k[1], **groups[k], "natural": groups[k][mixing.unit] / total,
             "mixed": None if p is None else float(p)}
            for k, p in zip(keys, probs)]


def write_split_meta(split_dir: Path, kind: str, split: str, spec: KindSpec, vocab_meta: dict, fingerprint: dict,
                     results: list[dict], units_info: dict | None, mixing) -> dict:
    shards, groups = [], {}
    tot = Counter()
    for r in sorted(results, key=lambda r: r["index"]):
        st = r["stats"][kind]
        shards.append({"name": shard_name(r["index"]), "corpus_shard": f"shard-{r['index']:05d}.jsonl.zst",
                       **{k: st[k] for k in ("n_docs", "n_tokens", "n_chars", "n_empty_docs", "n_unk")}})
        for k in ("n_docs", "n_tokens", "n_chars", "n_empty_docs", "n_unk"):
            tot[k] += st[k]
        for lang, source, nd, nc, nt in st["groups"]:
            g = groups.setdefault((lang, source), {"docs": 0, "chars": 0, "tokens": 0})
            g["docs"] += nd
            g["chars"] += nc
            g["tokens"] += nt
    from pipeline.config import config_to_dict

    meta = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "split": split,
        "dtype": spec.id_dtype,
        "streams": {"ids": spec.id_dtype, "char_len": "uint8", "word_start": "uint8",
                    **({"unit_len": "uint8", "unit_ngram": "int32"} if spec.units else {})},
        "vocab_dir": os.path.relpath(spec.vocab_dir, split_dir),
        "vocab_hash": fingerprint["vocab_hash"],
        "vocab_size": int(vocab_meta["size"]),
        "special_tokens": vocab_meta.get("special_tokens", {}),
        "vocab_meta": vocab_meta,
        "units": units_info,
        "n_shards": len(shards),
        **{k: int(tot[k]) for k in ("n_docs", "n_tokens", "n_chars", "n_empty_docs", "n_unk")},
        "tokens_per_char": tot["n_tokens"] / tot["n_chars"] if tot["n_chars"] else 0.0,
        "shards": shards,
        "groups": [{"lang": k[0], "source": k[1], **v} for k, v in sorted(groups.items())],
        "mixing": {"config": config_to_dict(mixing), "table": mixing_table(groups, mixing) if groups else []},
        "job": fingerprint,
    }
    ShardMeta.from_dict(meta).save(split_dir)  # meta.json, last: the split is complete
    job_p = split_dir / ".job.json"
    if job_p.exists():
        job_p.unlink()
    return meta


def _resolve_kinds(cfg) -> tuple[list[str], str | None, Path | None]:
    """(kinds to write, kind that gets n-gram units, lexicon folder)."""
    vroot = Path(cfg.runs_root, cfg.run, "vocab")
    sc = cfg.shards
    if sc.kinds:
        kinds = list(sc.kinds)
    else:
        kinds = list(getattr(cfg, "kinds", []) or [])  # what the stage config builds
        if not kinds and vroot.is_dir():
            kinds = sorted(p.name for p in vroot.iterdir() if (p / "stats.json").is_file())
    units_kind, lex_dir = None, None
    if "ngram" in kinds:
        kinds = [k for k in kinds if k != "ngram"]
        lex_dir = vroot / "ngram"
        if sc.units:
            if not (lex_dir / "stats.json").is_file():
                raise UserError(f"n-gram lexicon not found: {lex_dir / 'stats.json'} (run `python -m tokenization vocab` "
                                f"with 'ngram' in kinds)")
            units_kind = str(VocabStats.load(lex_dir).base_kind or getattr(getattr(cfg, "ngram", None), "base_kind", "char"))
            if units_kind not in kinds:
                kinds.append(units_kind)
    for k in kinds:
        if not (vroot / k / "stats.json").is_file():
            raise UserError(f"vocabulary '{k}' not found: {vroot / k / 'stats.json'} (run `python -m tokenization vocab`)")
    if not kinds:
        raise UserError(f"no vocabulary kinds to write: set shards.kinds or build vocabularies under {vroot}")
    return kinds, units_kind, lex_dir if units_kind else None


def main_shards(cfg) -> int:
    """Write the token shards of every requested kind and split (the ``shards`` subcommand)."""
    from corpora.io import list_shards
    from tokenization.segcache import shard_index
    from tokenization.vocab import load_vocab_meta

    sc = cfg.shards
    run_dir = Path(cfg.runs_root, cfg.run)
    corpus_dir = run_dir / "corpus"
    if not (corpus_dir / "stats.json").is_file() and not list_shards(corpus_dir, "train"):
        raise UserError(f"corpus not found under {corpus_dir} (run `python -m corpora build` / make corpus)")
    kinds, units_kind, lex_dir = _resolve_kinds(cfg)
    segmenter = None
    if getattr(cfg, "segmenter", None) is not None:
        from tokenization.segment import from_config

        segmenter = from_config(cfg.segmenter)
    vroot = run_dir / "vocab"
    vmeta = {k: load_vocab_meta(vroot / k) for k in kinds}
    vhash = {k: vocab_hash(vroot / k) for k in kinds}
    units_info = None
    if units_kind:
        lex_meta = VocabStats.load(lex_dir).to_dict()
        units_info = {"lexicon_dir": os.path.relpath(lex_dir, run_dir / "shards"), "lexicon_hash": vocab_hash(lex_dir),
                      "base_kind": units_kind, "max_n": lex_meta.get("max_n"),
                      "within_words": bool(lex_meta.get("within_words", False)), "n_ngrams": lex_meta.get("size")}
    executor = _shards_executor(cfg)
    rows, mix_rows = [], []
    for split in sc.splits:
        cshards = list_shards(corpus_dir, split)
        if not cshards:
            log.warning("no corpus shards for split '%s' under %s: skipped", split, corpus_dir / split)
            continue
        corpus_fp = [[p.name, p.stat().st_size, _sha1_file(p)] for p in cshards]
        specs, todo_by_kind, fps = {}, {}, {}
        for k in kinds:
            split_dir = run_dir / "shards" / k / split
            units = k == units_kind
            specs[k] = KindSpec(k, str(vroot / k), str(split_dir), ids_dtype(int(vmeta[k]["size"])).name, units)
            fps[k] = {"format_version": FORMAT_VERSION, "vocab_hash": vhash[k], "dtype": specs[k].id_dtype,
                      "units": units_info["lexicon_hash"] if units else None,
                      "segmenter": segmenter.fingerprint() if segmenter is not None else None,
                      "corpus": corpus_fp}
            state = prepare_split_dir(split_dir, fps[k])
            missing = [shard_index(p) for p in cshards
                       if shard_complete(split_dir, shard_name(shard_index(p)), np.dtype(specs[k].id_dtype), units) is None]
            if state == "done" and missing:  # files removed since: finish them like an interrupted job
                (split_dir / "meta.json").unlink()
                atomic_write_json(split_dir / ".job.json", fps[k])
                state = "resume"
            for i in missing:
                todo_by_kind.setdefault(i, []).append(k)
            log.info("shards %s/%s: %s (%d of %d shard(s) complete)", k, split, state,
                     len(cshards) - len(missing), len(cshards))
        # one executor task per corpus shard (rank r = the r-th shard); a task writes only the
        # kinds whose shard is missing, and has nothing to do when none is
        indices = [shard_index(p) for p in cshards]
        by_rank = [ShardTask(str(run_dir), split, i, [specs[k] for k in todo_by_kind[i]], sc.batch_docs,
                             str(lex_dir) if lex_dir else None, segmenter) if i in todo_by_kind else None
                   for i in indices]
        logging_dir = _task_dir(run_dir / "shards", split, fps)
        t0 = time.perf_counter()
        run_tasks(executor, _shard_task, (by_rank, str(logging_dir / "results")), len(by_rank), logging_dir,
                  [t is None for t in by_rank], job_name=f"shards-{split}")
        results = _task_results(logging_dir / "results", by_rank)
        seconds = time.perf_counter() - t0
        written_chars = sum(max((st["n_chars"] for st in r["stats"].values()), default=0) for r in results)
        for k in kinds:
            split_dir = Path(specs[k].out_dir)
            meta_p = split_dir / "meta.json"
            if meta_p.is_file() and not any(k in ks for ks in todo_by_kind.values()):
                meta = ShardMeta.load(meta_p).to_dict()
            else:
                # counts of shards kept from an interrupted run are recomputed from their files
                all_results = _collect_results(split_dir, k, cshards, results, specs[k])
                meta = write_split_meta(split_dir, k, split, specs[k], vmeta[k], fps[k], all_results,
                                        units_info if specs[k].units else None, sc.mixing)
            rows.append([k, split, meta["n_shards"], meta["n_docs"], meta["n_tokens"], meta["n_chars"],
                         round(meta["tokens_per_char"], 4), meta["dtype"], "units" if meta.get("units") else "",
                         round(seconds, 2), (written_chars / seconds) if seconds > 0 and written_chars else float("nan")])
            if split == "train" and k == kinds[0]:
                mix_rows = [[m["lang"], m["source"], m["docs"], m["chars"], m["tokens"], round(100 * m["natural"], 2),
                             round(100 * m["mixed"], 2) if m["mixed"] is not None else float("nan")]
                            for m in meta["mixing"]["table"]]
    print_table("Token shards", ["kind", "split", "shards", "docs", "tokens", "chars", "tok/char", "dtype", "extra",
                                 "seconds", "chars/s"], rows)
    if mix_rows:
        m = sc.mixing
        print_table(f"Mixing (alpha={m.alpha}, source_alpha={m.source_alpha}, unit={m.unit}; applied by the loader "
                    f"with mixing=...)", ["lang", "source", "docs", "chars", "tokens", "natural %", "mixed %"], mix_rows)
    return 0


def _collect_results(split_dir: Path, kind: str, cshards: list[Path], results: list[dict], spec: KindSpec) -> list[dict]:
    """Per-shard stats for ``meta.json``: fresh results, or recounted from a kept shard's files."""
    from tokenization.segcache import shard_index

    fresh = {r["index"]: r for r in results if kind in r["stats"]}
    out = []
    unk = 1
    for p in cshards:
        i = shard_index(p)
        if i in fresh:
            out.append(fresh[i])
            continue
        out.append({"index": i, "stats": {kind: recount_shard(split_dir, shard_name(i), np.dtype(spec.id_dtype), unk)}})
    return out


def recount_shard(split_dir: Path, name: str, id_dtype: np.dtype, unk_id: int = 1) -> dict:
    offsets = np.load(split_dir / f"{name}.docs.npy")
    ids = np.memmap(stream_path(split_dir, name, "ids"), dtype=id_dtype, mode="r") if offsets[-1] else np.zeros(0, id_dtype)
    groups = Counter()
    gtok = Counter()
    gdocs = Counter()
    n_chars = n_empty = 0
    lens = np.diff(offsets)
    with open(split_dir / f"{name}.docmeta.jsonl", encoding="utf-8") as f:
        for line, nt in zip(f, lens.tolist()):
            d = json.loads(line)
            g = (str(d.get("lang")), str(d.get("source")))
            groups[g] += d["n_chars"]
            gtok[g] += nt
            gdocs[g] += 1
            n_chars += d["n_chars"]
            n_empty += d["n_chars"] == 0
    return {"n_docs": len(offsets) - 1, "n_tokens": int(offsets[-1]), "n_chars": n_chars, "n_empty_docs": n_empty,
            "n_unk": int(np.count_nonzero(np.asarray(ids) == unk_id)),
            "groups": [[g[0], g[1], gdocs[g], c, gtok[g]] for g, c in sorted(groups.items())]}


def _shards_executor(cfg):
    """The ``executor`` block of the stage config; ``shards.workers`` > 1 (the old key) wins."""
    import dataclasses

    from pipeline.executors import ExecutorConfig

    ex = getattr(cfg, "executor", None) or ExecutorConfig()
    return dataclasses.replace(ex, workers=int(cfg.shards.workers)) if cfg.shards.workers > 1 else ex


def _task_dir(shards_root: Path, split: str, fps: dict) -> Path:
    """``shards/.tasks/SPLIT-HASH/``: datatrove's logs and completion markers for this job (the
    hash covers every kind's fingerprint, so a new vocabulary or corpus starts with no marker)."""
    key = hashlib.sha1(json.dumps(fps, sort_keys=True).encode()).hexdigest()[:12]
    root = shards_root / ".tasks"
    if root.is_dir():
        import shutil

        for old in root.glob(f"{split}-*"):
            if old.name != f"{split}-{key}":
                shutil.rmtree(old, ignore_errors=True)
    return root / f"{split}-{key}"


def _shard_task(rank: int, by_rank: list, results_dir: str) -> None:
    """Executor task ``rank``: write corpus shard ``by_rank[rank]`` for its missing kinds; its
    counts go to ``results_dir/NNNNN.json`` for ``meta.json``."""
    task = by_rank[rank]
    if task is None:
        return
    r = run_task(task)
    Path(results_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(results_dir) / f"{rank:05d}.json", r)


def _task_results(results_dir: Path, by_rank: list) -> list[dict]:
    """The counts of the tasks of this launch (shards kept from an earlier one are recounted)."""
    out = []
    for rank, task in enumerate(by_rank):
        p = results_dir / f"{rank:05d}.json"
        if task is not None and p.is_file():
            r = read_json(p)
            if r.get("index") == task.index and set(r["stats"]) >= {k.kind for k in task.kinds}:
                out.append(r)
    return sorted(out, key=lambda r: r["index"])
