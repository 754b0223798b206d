"""``PackedLoader``: fixed-length packed windows over token shards, by a deterministic index.

Contract: ``docs/contracts.md`` ("Token shards") and the batch contract in
``pretrain/objectives/base.py`` (this module returns plain numpy dicts with those keys and does not
import ``pretrain``).

How windows are made
--------------------
Documents are grouped (one group ``all`` without mixing; one group per ``(lang, source)`` with
mixing). A group's *stream* is its non-empty documents in stored order (shard order, then document
order), each followed by ``[SEP]``. The stream is cut into consecutive windows of ``seq_len - 1``
tokens; a window is ``[CLS]`` + those tokens, ``[PAD]`` on the right only where a group is shorter
than a window or for the last partial window when ``drop_last`` is false (the default for
``shuffle=False``, so validation covers every token). Windows never mix groups when mixing is on.

Order and seeking
-----------------
Epoch ``e`` draws ``k_g`` windows from each group ``g``: ``k_g = W_g`` (its window count) without
mixing, else ``k_g = round(p_g * W)`` with ``p_g`` from :func:`group_probabilities` and ``W`` the
total window count (largest-remainder rounding, so ``sum k_g == W``). Group ``g``'s draws are
positions ``[e*k_g, (e+1)*k_g)`` of an endless sequence made of *passes* over its windows, each
pass a fresh seeded permutation ("epoch-wise interleaving": every window of a group is seen once
before any is repeated; an up-weighted group cycles through more passes, a down-weighted one
takes fewer windows per epoch and continues where it stopped next epoch). The draws of all groups
are then shuffled by a seeded permutation of the epoch. ``shuffle=False`` keeps stored order.

The epoch's draw table is built once per epoch (vectorised, O(windows)); after that
``batch(epoch, index)`` is O(1) in ``index``: rank ``r`` of ``world_size`` takes draws
``r, r + world_size, ...``, and batch ``i`` is the ``i``-th run of ``batch_size`` of them, so ranks
are disjoint and ``len(loader)`` is the same on every rank. Dataloader workers split batch indices
(``iter_from(..., worker=w, num_workers=n)`` yields the batches with ``index % n == w``).

Aligned extra streams
---------------------
With ``extra_kinds=("sgt",)`` every window is trimmed to character offsets where all streams have a
token boundary (:mod:`tokenization.align`), the extra stream's tokens over exactly those characters
are returned as ``sgt.input_ids`` etc. (``[CLS]`` first, the same ``[SEP]`` structure, ``[PAD]`` on
the right up to ``extra_seq_len``); if an extra stream needs more tokens than that, the window is
cut earlier at a common boundary. ``extra_seq_len`` defaults to ``"auto"``: sized from the two
streams' tokens per character (:meth:`PackedLoader.auto_extra_len`, ``extra_len_margin`` 1.25),
so a finer extra stream (char under SGT windows) no longer cuts most windows short. The primary window is padded on the right by
what trimming removed.

Aligned batches also carry ``vis_len`` (int16, per stream, ``KIND.vis_len`` for extras): the
token's non-whitespace characters, looked up per id in the vocabulary
(:func:`tokenization.align.load_visible_lengths`; -1 for ``[UNK]``, 0 for specials and padding).
A token's *visible span* is the last ``vis_len`` characters of its ``char_len`` span; the
objectives align the streams by those spans (:func:`tokenization.align.align_tokens`), because
the char stream folds dropped whitespace (``\n``) into the next token while SGT/word keep it.

Other conventions: specials have ``char_len`` 0 and ``word_start`` 1; the first token of a window
that starts inside a word gets ``word_start`` 1 (the cut word counts as a word); ``unit_len`` /
``unit_ngram`` (when the shards have them) are 1 / -1 on specials and padding, and a unit cut by a
window edge becomes single tokens.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import threading
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from pipeline.errors import UserError
from tokenization.schema import ShardMeta, VocabStats
from tokenization.shards_config import MixingConfig

_BLOCK = 1024  # tokens per block of the char-offset index used for aligned extra streams


class ShardsNotFound(UserError, FileNotFoundError):
    """The requested shards do not exist (a UserError for the CLI, FileNotFoundError for callers)."""


# ---------------------------------------------------------------------------------------------
# mixing
# ---------------------------------------------------------------------------------------------
def mixing_config(mixing: Any) -> MixingConfig | None:
    """``None``, a :class:`MixingConfig`, a nested dict (its fields) or a flat ``dict[str, float]``.

    Flat form (what ``pretrain``'s ``data.mixing`` holds): ``alpha``, ``source_alpha`` and weights
    keyed ``lang:XX`` / ``source:YY`` (a bare key is a language), e.g.
    ``{"alpha": 0.3, "yue": 2.0, "source:pd1998": 0.5}``.
    """
    if mixing is None or isinstance(mixing, MixingConfig):
        return mixing
    if not isinstance(mixing, dict):
        raise UserError(f"mixing must be a mapping or null, got {mixing!r}")
    if any(isinstance(v, dict) for v in mixing.values()) or "unit" in mixing:
        fields = {f.name for f in dataclasses.fields(MixingConfig)}
        unknown = [k for k in mixing if k not in fields]
        if unknown:
            raise UserError(f"mixing: unknown key '{unknown[0]}'; valid: {', '.join(sorted(fields))}")
        cfg = MixingConfig(**mixing)
    else:
        cfg = MixingConfig()
        for k, v in mixing.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise UserError(f"mixing.{k} must be a number, got {v!r}")
            if k in ("alpha", "source_alpha"):
                setattr(cfg, k, float(v))
            elif k.startswith("source:"):
                cfg.source_weights[k[7:]] = float(v)
            else:
                cfg.lang_weights[k[5:] if k.startswith("lang:") else k] = float(v)
    try:
        cfg.validate()
    except ValueError as e:
        raise UserError(str(e)) from None
    return cfg


def group_probabilities(keys: Sequence[tuple[str, str]], counts: Sequence[dict], mixing: MixingConfig,
                        strict: bool = True) -> np.ndarray:
    """Sampling probability of each ``(lang, source)`` group.

    ``p(lang) ∝ w_lang * n_lang ** alpha``; ``p(source | lang) ∝ w_source * n_source ** source_alpha``
    (``n`` in ``mixing.unit``: chars, tokens or docs); ``p = p(lang) * p(source | lang)``.
    Weights for a language or source that does not occur are an error with ``strict`` (a typo
    would otherwise silently do nothing); the shard stage's summary table passes ``strict=False``
    because one config serves both splits.
    """
    langs = sorted({k[0] for k in keys})
    sources = sorted({k[1] for k in keys})
    for name, table, known in (("lang_weights", mixing.lang_weights, langs), ("source_weights", mixing.source_weights, sources)):
        unknown = [k for k in table if k not in known]
        if unknown and strict:
            raise UserError(f"mixing.{name}: no documents with {name[:-8]} {unknown[0]!r}; present: {', '.join(known)}")
    n = np.array([float(c[mixing.unit]) for c in counts])
    lang_of = np.array([langs.index(k[0]) for k in keys])
    n_lang = np.bincount(lang_of, weights=n, minlength=len(langs))
    w_lang = np.array([mixing.lang_weights.get(l, 1.0) for l in langs])
    p_lang = np.where(n_lang > 0, w_lang * np.power(n_lang, mixing.alpha, where=n_lang > 0, out=np.zeros_like(n_lang)), 0.0)
    if p_lang.sum() <= 0:
        raise UserError("mixing: every language has weight 0 (or no data)")
    p_lang = p_lang / p_lang.sum()
    w_src = np.array([mixing.source_weights.get(k[1], 1.0) for k in keys])
    s = np.where(n > 0, w_src * np.power(n, mixing.source_alpha, where=n > 0, out=np.zeros_like(n)), 0.0)
    s_lang = np.bincount(lang_of, weights=s, minlength=len(langs))
    cond = np.divide(s, s_lang[lang_of], out=np.zeros_like(s), where=s_lang[lang_of] > 0)
    p = p_lang[lang_of] * cond
    return p / p.sum()


def _largest_remainder(p: np.ndarray, total: int) -> np.ndarray:
    raw = p * total
    k = np.floor(raw).astype(np.int64)
    rest = total - int(k.sum())
    if rest > 0:
        order = np.argsort(-(raw - k), kind="stable")
        k[order[:rest]] += 1
    return k


def _perm(n: int, *key: int) -> np.ndarray:
    return np.random.default_rng(np.random.SeedSequence([int(x) for x in key])).permutation(n)


# ---------------------------------------------------------------------------------------------
# one shard of one kind, opened lazily; a bounded LRU of open shards
# ---------------------------------------------------------------------------------------------
class _OpenShards:
    """Bounded LRU of the shards whose memory maps are open (one per loader, shared by its kinds).

    An open shard holds one memory map (and, on Linux, one file descriptor) per stream plus its
    document offsets; opening the ``capacity + 1``-th shard closes the least recently used one, so
    any number of shards loads under ``ulimit -n`` and ``vm.max_map_count``. Thread-safe (the
    trainer's prefetch thread renders batches).
    """

    def __init__(self, capacity: int):
        if not isinstance(capacity, (int, np.integer)) or isinstance(capacity, bool) or capacity < 1:
            raise UserError(f"max_open_shards must be an integer >= 1, got {capacity!r}")
        self.capacity = int(capacity)
        self._lru: OrderedDict[int, _Shard] = OrderedDict()
        self._lock = threading.Lock()
        self.opened = 0  # shards opened so far (a re-open after eviction counts again)

    def touch(self, shard: "_Shard") -> None:
        key = id(shard)
        with self._lock:
            if key in self._lru:
                self._lru.move_to_end(key)
                return
            self._lru[key] = shard
            self.opened += 1
            while len(self._lru) > self.capacity:
                _, old = self._lru.popitem(last=False)
                old._close()

    def __len__(self) -> int:
        return len(self._lru)


class _Shard:
    """One shard of one kind: streams memory-mapped on first use, closed again by the LRU.
    Small while closed (slots, the kind's stream table shared), so 10^4-10^5 of them cost little."""

    __slots__ = ("dir", "name", "streams", "_lru", "_arr", "_offsets", "_bcum", "_blocks", "_docmeta", "__weakref__")

    def __init__(self, split_dir: Path, name: str, streams: dict, lru: _OpenShards | None = None):
        self.dir = split_dir
        self.name = name
        self.streams = streams  # {stream: np.dtype}, one dict per kind
        self._lru = lru if lru is not None else _OpenShards(1 << 30)
        self._close()

    def _close(self) -> None:
        self._arr: dict[str, np.ndarray] | None = None
        self._offsets: np.ndarray | None = None
        self._bcum: np.ndarray | None = None
        self._blocks: dict[int, np.ndarray] = {}
        self._docmeta: list[dict] | None = None

    def _open(self) -> dict[str, np.ndarray]:
        offsets = np.load(self.dir / f"{self.name}.docs.npy")
        n_tokens = int(offsets[-1])
        arr: dict[str, np.ndarray] = {}
        for s, dt in self.streams.items():
            p = self.dir / f"{self.name}.{s}.bin"
            if not p.is_file():
                raise ShardsNotFound(f"shard stream missing: {p}")
            if p.stat().st_size != n_tokens * dt.itemsize:
                raise UserError(f"{p}: size {p.stat().st_size} does not match {n_tokens} tokens of {dt} "
                                f"(an incomplete shard: re-run `python -m tokenization shards`)")
            # a plain ndarray view of the map: slicing a np.memmap subclass costs Python-level hooks
            arr[s] = np.memmap(p, dtype=dt, mode="r").view(np.ndarray) if n_tokens else np.zeros(0, dt)
        self._offsets, self._arr = offsets, arr
        return arr

    @property
    def arr(self) -> dict[str, np.ndarray]:
        a = self._arr
        if a is None:
            a = self._open()
        self._lru.touch(self)
        return a

    @property
    def offsets(self) -> np.ndarray:
        o = self._offsets
        if o is None:
            self.arr  # noqa: B018 - opens the shard
            o = self._offsets
        return o

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    def docmeta(self) -> list[dict]:
        if self._docmeta is None:
            dm = _read_docmeta(self.dir, self.name)
            if len(dm) != len(self.offsets) - 1:
                raise UserError(f"{self.dir / f'{self.name}.docmeta.jsonl'}: {len(dm)} records for "
                                f"{len(self.offsets) - 1} documents")
            self._docmeta = dm
        return self._docmeta

    # char offsets in shard coordinates (sum of char_len before a token), O(_BLOCK) per call
    def bcum(self) -> np.ndarray:
        if self._bcum is None:
            cl = self.arr["char_len"]
            nb = (self.n_tokens + _BLOCK - 1) // _BLOCK
            sums = np.add.reduceat(np.asarray(cl, dtype=np.int64), np.arange(nb) * _BLOCK) if nb else np.zeros(0, np.int64)
            self._bcum = np.concatenate([[0], np.cumsum(sums)]).astype(np.int64)
        return self._bcum

    def _block_ends(self, k: int) -> np.ndarray:
        """Shard-coordinate end offsets of the tokens of block ``k`` (small LRU-free cache)."""
        e = self._blocks.get(k)
        if e is None:
            if len(self._blocks) >= 512:
                self._blocks.clear()
            lo = k * _BLOCK
            e = self._blocks[k] = int(self.bcum()[k]) + np.cumsum(self.arr["char_len"][lo:lo + _BLOCK], dtype=np.int64)
        return e

    def char_at(self, t: int) -> int:
        """Characters before token ``t`` (= end of token ``t - 1``)."""
        if t <= 0:
            return 0
        k, r = divmod(t - 1, _BLOCK)
        return int(self._block_ends(k)[r])

    def token_at(self, c: int) -> int:
        """First token whose end is past character ``c`` (the token covering ``c``)."""
        b = self.bcum()
        k = int(np.searchsorted(b, c, side="right")) - 1
        if k >= len(b) - 1:
            return self.n_tokens
        return k * _BLOCK + int(np.searchsorted(self._block_ends(k), c, side="right"))


class _ShardTable(Sequence):
    """The shards of one kind by position. A :class:`_Shard` object exists only while something holds
    it (the LRU holds the open ones), so a closed shard costs its name and nothing else."""

    def __init__(self, split_dir: Path, names: list[str], dtypes: dict, lru: _OpenShards | None):
        self._dir, self._names, self._dtypes, self._lru = split_dir, names, dtypes, lru
        self._live: weakref.WeakValueDictionary[int, _Shard] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._names)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        i = int(i)
        if i < 0:
            i += len(self._names)
        if not 0 <= i < len(self._names):
            raise IndexError(f"shard {i} out of range [0, {len(self._names)})")
        with self._lock:
            sh = self._live.get(i)
            if sh is None:
                sh = self._live[i] = _Shard(self._dir, self._names[i], self._dtypes, self._lru)
            return sh


class _KindData:
    """All shards of one kind and split."""

    def __init__(self, shards_root: Path, kind: str, split: str, lru: _OpenShards | None = None):
        self.kind = kind
        self.dir = Path(shards_root) / kind / split
        meta_p = self.dir / "meta.json"
        if not meta_p.is_file():
            raise ShardsNotFound(f"token shards not found: {meta_p} (run `python -m tokenization shards`)")
        self.meta = ShardMeta.load(meta_p).to_dict()  # typed check (tokenization/schema.py), read as a dict
        self.streams = self.meta["streams"]
        self.shards = _ShardTable(self.dir, [s["name"] for s in self.meta["shards"]],
                                  {k: np.dtype(v) for k, v in self.streams.items()}, lru)
        sp = self.meta.get("special_tokens") or {}
        self.pad, self.cls, self.sep = int(sp.get("pad", 0)), int(sp.get("cls", 2)), int(sp.get("sep", 3))
        self.has_units = "unit_len" in self.streams
        self.vocab_meta = self._vocab_meta()
        self._vis: np.ndarray | None | bool = False  # not loaded yet

    def vis_table(self) -> np.ndarray | None:
        """Visible (non-whitespace) characters per token id (:func:`tokenization.align.load_visible_lengths`),
        or None when the vocabulary folder is not next to the shards (alignment then uses whole spans)."""
        if self._vis is False:
            from tokenization.align import load_visible_lengths

            vd = self.meta.get("vocab_dir")
            try:
                self._vis = load_visible_lengths(self.dir / vd) if vd else None
            except (OSError, ValueError):
                self._vis = None
            if self._vis is None:
                from pipeline.log import get_logger

                get_logger("tokenization").warning(
                    f"{self.dir}: vocabulary folder not found; '{self.kind}' tokens are aligned by whole "
                    f"char_len spans (whitespace folded into the next token is not told apart)")
        return self._vis

    def _vocab_meta(self) -> dict:
        live = (self.dir / self.meta.get("vocab_dir", "") / "stats.json")
        if self.meta.get("vocab_dir") and live.is_file():
            try:
                return VocabStats.load(live).to_dict()
            except (OSError, UserError):
                pass
        return dict(self.meta.get("vocab_meta") or {})


# ---------------------------------------------------------------------------------------------
def rank_slice(index: int, batch_size: int, rank: int, world_size: int) -> slice:
    """The positions in an epoch's global draw order of batch ``index`` of ``rank``: draws
    ``r, r + world_size, ...`` of the ``index``-th run of ``batch_size * world_size`` draws (row ``j``
    is global position ``rank + world_size * (batch_size * index + j)``)."""
    start = (index * batch_size) * world_size + rank
    return slice(start, start + batch_size * world_size, world_size)


# the document index and epoch orders, built once on disk and memory-mapped by every rank
# ---------------------------------------------------------------------------------------------
INDEX_VERSION = 1
_DOC_ARRAYS = ("doc_shard", "doc_start", "doc_len", "doc_chars", "doc_char_start", "shard_doc_base",
               "all_vdoc", "all_vcum", "ls_vdoc", "ls_vcum", "ls_bounds")


def _read_docmeta(split_dir: Path, name: str) -> list[dict]:
    with open(split_dir / f"{name}.docmeta.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def index_fingerprint(split_dir: Path, shard_names: Sequence[str]) -> str:
    """What the document index depends on: ``meta.json`` and each shard's offsets and docmeta files
    (size and modification time), so rewritten shards get a new index."""
    h = hashlib.sha1(f"docindex-v{INDEX_VERSION}\n".encode())
    h.update((split_dir / "meta.json").read_bytes())
    for name in shard_names:
        for suffix in ("docs.npy", "docmeta.jsonl"):
            p = split_dir / f"{name}.{suffix}"
            try:
                st = p.stat()
            except FileNotFoundError:
                raise ShardsNotFound(f"shard file missing: {p} (re-run `python -m tokenization shards`)") from None
            h.update(f"{name}.{suffix}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def build_doc_index(split_dir: Path, shard_names: Sequence[str], streams: dict) -> tuple[dict[str, np.ndarray], dict]:
    """Per-document arrays of a split (all shards, stored order) and the two groupings' streams.

    Arrays: ``doc_shard`` (int32), ``doc_start`` / ``doc_len`` (token offset in its shard, tokens),
    ``doc_chars`` / ``doc_char_start`` (characters, shard-coordinate start), ``shard_doc_base``
    (first global document of each shard, ``n_shards + 1``), and for the grouping ``all`` (no
    mixing) and ``ls`` (one group per ``(lang, source)``, sorted): ``*_vdoc`` (the non-empty
    documents in group-major stored order) and ``*_vcum`` (cumulative lengths, each document
    followed by ``[SEP]``); ``ls_bounds`` (first ``vdoc`` position of each group, ``G + 1``).
    Info: the group keys and per-group counts. Reads each shard's offsets and docmeta once, one
    shard at a time; needs O(documents) memory in the one process that builds it.
    """
    dts = {s: np.dtype(dt) for s, dt in streams.items()}
    n_per, starts, lens, chars, gids = [], [], [], [], []
    pair_id: dict[tuple[str, str], int] = {}
    for name in shard_names:
        off = np.load(split_dir / f"{name}.docs.npy")
        n, n_tok = len(off) - 1, int(off[-1])
        for s, dt in dts.items():
            p = split_dir / f"{name}.{s}.bin"
            if not p.is_file():
                raise ShardsNotFound(f"shard stream missing: {p}")
            if p.stat().st_size != n_tok * dt.itemsize:
                raise UserError(f"{p}: size {p.stat().st_size} does not match {n_tok} tokens of {dt} "
                                f"(an incomplete shard: re-run `python -m tokenization shards`)")
        dm = _read_docmeta(split_dir, name)
        if len(dm) != n:
            raise UserError(f"{split_dir / f'{name}.docmeta.jsonl'}: {len(dm)} records for {n} documents")
        n_per.append(n)
        starts.append(off[:-1].astype(np.int64))
        lens.append(np.diff(off).astype(np.int64))
        chars.append(np.fromiter((m["n_chars"] for m in dm), dtype=np.int64, count=n))
        gids.append(np.fromiter((pair_id.setdefault((str(m.get("lang")), str(m.get("source"))), len(pair_id))
                                 for m in dm), dtype=np.int64, count=n))

    def cat(parts: list, dt) -> np.ndarray:
        return np.concatenate(parts).astype(dt) if parts else np.zeros(0, dt)

    n_per_a = np.asarray(n_per, dtype=np.int64)
    doc_len, doc_chars = cat(lens, np.int64), cat(chars, np.int64)
    keys = sorted(pair_id)
    rank = np.zeros(len(keys), dtype=np.int64)
    for i, k in enumerate(keys):
        rank[pair_id[k]] = i
    gid = rank[cat(gids, np.int64)] if len(doc_len) else np.zeros(0, np.int64)
    shard_doc_base = np.concatenate([[0], np.cumsum(n_per_a)]).astype(np.int64)
    # shard-coordinate char start of each document (identical for every kind)
    cum = np.cumsum(doc_chars) - doc_chars
    doc_char_start = cum - np.repeat(cum[shard_doc_base[:-1][n_per_a > 0]], n_per_a[n_per_a > 0]) if len(cum) else cum
    keep = doc_len > 0
    out = {"doc_shard": np.repeat(np.arange(len(n_per), dtype=np.int32), n_per_a), "doc_start": cat(starts, np.int64),
           "doc_len": doc_len, "doc_chars": doc_chars, "doc_char_start": doc_char_start.astype(np.int64),
           "shard_doc_base": shard_doc_base}
    for tag, g in (("all", np.zeros(len(doc_len), np.int64)), ("ls", gid)):
        order = np.argsort(g, kind="stable")
        order = order[keep[order]]
        out[f"{tag}_vdoc"] = order.astype(np.int64)
        out[f"{tag}_vcum"] = np.concatenate([[0], np.cumsum(doc_len[order] + 1)]).astype(np.int64)
    vg = gid[out["ls_vdoc"]]
    out["ls_bounds"] = np.searchsorted(vg, np.arange(len(keys) + 1), side="left").astype(np.int64)
    docs = np.bincount(gid, minlength=len(keys))
    toks = np.bincount(gid, weights=doc_len, minlength=len(keys))
    chs = np.bincount(gid, weights=doc_chars, minlength=len(keys))
    info = {"version": INDEX_VERSION, "n_docs": int(len(doc_len)), "n_tokens": int(doc_len.sum()),
            "n_chars": int(doc_chars.sum()), "keys": [list(k) for k in keys],
            "counts": [{"docs": int(a), "tokens": int(b), "chars": int(c)} for a, b, c in zip(docs, toks, chs)]}
    return out, info


def _load_npy(p: Path) -> np.ndarray:
    try:
        return np.load(p, mmap_mode="r").view(np.ndarray)
    except ValueError:  # an empty array cannot be mapped
        return np.load(p)


class IndexStore:
    """One split's on-disk index: ``ROOT/FINGERPRINT/docs/*.npy`` (+ ``info.json``) and
    ``ROOT/FINGERPRINT/epochs/KEY/EPOCH.npy`` (``(2, draws)`` int64: group, window).

    Whoever needs an entry first builds it under an exclusive lock (``ROOT/.lock``: the other ranks
    wait, then map the result), writes it under a temporary name and renames it into place, so a
    reader never sees half an entry. Indexes of other fingerprints (older shards) are removed when
    a new one is built; epoch tables more than one epoch behind the newest built are removed too.
    """

    def __init__(self, root: Path, fingerprint: str):
        self.root = Path(root)
        self.fingerprint = fingerprint
        self.dir = self.root / fingerprint
        self.built: list[str] = []  # entries this process built (the rest were reused)

    @contextlib.contextmanager
    def _locked(self):
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            except OSError:  # a file system without locks: concurrent builders write identical bytes
                pass
            try:
                yield
            finally:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_UN)
                except OSError:
                    pass

    def docs(self, build) -> tuple[dict[str, np.ndarray], dict]:
        d = self.dir / "docs"
        if not (d / "info.json").is_file():
            with self._locked():
                if not (d / "info.json").is_file():
                    arrays, info = build()
                    tmp = self.dir / f".docs.tmp-{os.getpid()}-{threading.get_ident()}"
                    shutil.rmtree(tmp, ignore_errors=True)
                    tmp.mkdir(parents=True)
                    for k, a in arrays.items():
                        np.save(tmp / f"{k}.npy", a)
                    (tmp / "info.json").write_text(json.dumps({**info, "fingerprint": self.fingerprint}), encoding="utf-8")
                    shutil.rmtree(d, ignore_errors=True)
                    os.rename(tmp, d)
                    self.built.append("docs")
                    for old in self.root.iterdir():  # indexes of shards that no longer exist
                        if old.is_dir() and old.name != self.fingerprint:
                            shutil.rmtree(old, ignore_errors=True)
        info = json.loads((d / "info.json").read_text(encoding="utf-8"))
        return {k: _load_npy(d / f"{k}.npy") for k in _DOC_ARRAYS}, info

    def epoch(self, key: str, epoch: int, build) -> tuple[np.ndarray, np.ndarray]:
        d = self.dir / "epochs" / key
        p = d / f"{epoch}.npy"
        try:
            return self._epoch(d, p, epoch, build)
        except OSError as e:  # e.g. a read-only index folder holding only the document index
            from pipeline.log import get_logger

            get_logger("tokenization").warning(f"epoch {epoch} order kept in memory: cannot write {p} ({e})")
            return build()

    def _epoch(self, d: Path, p: Path, epoch: int, build) -> tuple[np.ndarray, np.ndarray]:
        if not p.is_file():
            with self._locked():
                if not p.is_file():
                    g, w = build()
                    d.mkdir(parents=True, exist_ok=True)
                    tmp = d / f".{epoch}.tmp-{os.getpid()}-{threading.get_ident()}.npy"
                    np.save(tmp, np.stack([np.asarray(g, np.int64), np.asarray(w, np.int64)]) if len(g)
                            else np.zeros((2, 0), np.int64))
                    os.replace(tmp, p)
                    self.built.append(f"epoch {epoch}")
                    for old in d.glob("*.npy"):
                        if old.stem.isdigit() and int(old.stem) < epoch - 1:
                            old.unlink(missing_ok=True)
        a = _load_npy(p)
        return a[0], a[1]


# ---------------------------------------------------------------------------------------------
# the loader
# ---------------------------------------------------------------------------------------------
class PackedLoader:
    """Deterministic packed windows: ``batch(epoch, index)`` is O(1) in ``index``.

    ``PackedLoader(shards_root, kind, split, seq_len, batch_size, seed=0, rank=0, world_size=1,
    extra_kinds=(), shuffle=True, mixing=None)``; extra keyword options: ``extra_seq_len`` (int,
    ``"auto"`` or ``{kind: int | "auto"}``; default ``"auto"``, see :meth:`auto_extra_len`),
    ``extra_len_margin`` (1.25) and ``drop_last`` (default ``shuffle``).
    """

    def auto_extra_len(self, kind: str) -> int:
        """Window length of an extra stream sized to cover the primary window's text.

        ``ceil((seq_len - 1) * r * extra_len_margin) + 1`` with ``r`` = the extra stream's tokens
        per character over the primary's (both measured on this split's shards, ``meta.json``).
        The margin absorbs windows denser than the average (Latin text in an SGT stream, ...);
        a window whose extra stream still needs more tokens is cut earlier at a common boundary.
        """
        def tpc(kd: _KindData) -> float:
            n_t = sum(int(s.get("n_tokens", 0)) for s in kd.meta["shards"])
            n_c = sum(int(s.get("n_chars", 0)) for s in kd.meta["shards"])
            return n_t / n_c if n_c else 0.0

        a, b = tpc(self.data), tpc(self.extras[kind])
        if a <= 0 or b <= 0:
            return self.seq_len
        return int(np.ceil((self.seq_len - 1) * b / a * self.extra_len_margin)) + 1

    def __init__(self, shards_root: str | Path, kind: str, split: str, seq_len: int, batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, extra_kinds: Sequence[str] = (), shuffle: bool = True,
                 mixing: Any = None, extra_seq_len: int | str | dict | None = None, drop_last: bool | None = None,
                 extra_len_margin: float = 1.25, max_open_shards: int = 64, index: str = "disk",
                 index_dir: str | Path | None = None):
        if seq_len < 2:
            raise UserError(f"seq_len must be >= 2, got {seq_len}")
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise UserError(f"rank {rank} is not in [0, world_size={world_size})")
        self.shards_root = Path(shards_root)
        self.kind, self.split = kind, split
        self.seq_len, self.batch_size = int(seq_len), int(batch_size)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.shuffle = bool(shuffle)
        self.drop_last = self.shuffle if drop_last is None else bool(drop_last)
        self.mixing = mixing_config(mixing)
        self.extra_kinds = tuple(k for k in extra_kinds if k != kind)
        if index not in ("disk", "memory"):
            raise UserError(f"index must be 'disk' or 'memory', got {index!r}")
        self.open_shards = _OpenShards(max_open_shards)
        self.data = _KindData(self.shards_root, kind, split, self.open_shards)
        self.vocab_meta = self.data.vocab_meta
        self.extras = {k: _KindData(self.shards_root, k, split, self.open_shards) for k in self.extra_kinds}
        self.extra_len_margin = float(extra_len_margin)
        if self.extra_len_margin <= 0:
            raise UserError(f"extra_len_margin must be > 0, got {extra_len_margin}")
        self.extra_len = {}
        for k in self.extra_kinds:
            v = extra_seq_len.get(k, "auto") if isinstance(extra_seq_len, dict) else extra_seq_len
            if v is None or v == "auto":
                v = self.auto_extra_len(k)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 2:
                raise UserError(f"extra_seq_len for '{k}' must be 'auto' or an integer >= 2, got {v!r}")
            self.extra_len[k] = int(v)
        self._check_extras()
        self.index_store = self._index_store(index, index_dir)
        self._build_index()
        self._epochs: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    # -- index ---------------------------------------------------------------------------------
    def _check_extras(self) -> None:
        a = self.data.meta["shards"]
        for k, ed in self.extras.items():
            b = ed.meta["shards"]
            same = len(a) == len(b) and all(x["name"] == y["name"] and x["n_docs"] == y["n_docs"] and x["n_chars"] == y["n_chars"]
                                            for x, y in zip(a, b))
            if not same:
                raise UserError(f"shards of '{self.kind}' ({self.data.dir}) and '{k}' ({ed.dir}) do not hold the same "
                                f"documents; rebuild them from the same corpus (make shards)")

    def _index_store(self, index: str, index_dir: str | Path | None) -> IndexStore | None:
        """The on-disk index (``index="disk"``, default ``SPLIT_DIR/.index``), or None to build it in
        memory (``index="memory"``, or a folder that cannot be written: a warning, same batches)."""
        if index == "memory":
            return None
        names = [s["name"] for s in self.data.meta["shards"]]
        fp = index_fingerprint(self.data.dir, names)
        root = Path(index_dir) / self.kind / self.split if index_dir else self.data.dir / ".index"
        try:
            root.mkdir(parents=True, exist_ok=True)
            if not os.access(root, os.W_OK) and not (root / fp / "docs" / "info.json").is_file():
                raise PermissionError(f"{root} is not writable")
        except OSError as e:
            from pipeline.log import get_logger

            get_logger("tokenization").warning(f"loader index kept in memory: cannot write {root} ({e}); "
                                               f"set index_dir to a writable folder")
            return None
        return IndexStore(root, fp)

    def _doc_index(self) -> tuple[dict[str, np.ndarray], dict]:
        names = [s["name"] for s in self.data.meta["shards"]]

        def build():
            return build_doc_index(self.data.dir, names, self.data.streams)

        if self.index_store is None:
            return build()
        return self.index_store.docs(build)

    def _build_index(self) -> None:
        L = self.seq_len - 1
        self._L = L
        ix, info = self._doc_index()
        self.doc_shard, self.doc_start, self.doc_len = ix["doc_shard"], ix["doc_start"], ix["doc_len"]
        self.doc_chars, self.doc_char_start = ix["doc_chars"], ix["doc_char_start"]
        self._sdb = ix["shard_doc_base"]
        need_meta = self.mixing is not None or bool(self.extras)
        if self.mixing is None:
            keys = [("*", "*")]
            counts = [{"docs": int(info["n_docs"]), "tokens": int(info["n_tokens"]),
                       "chars": int(info["n_chars"]) if need_meta else None}]
            self.vdoc, self.vcum = ix["all_vdoc"], ix["all_vcum"]
            bounds = np.array([0, len(self.vdoc)], dtype=np.int64)
        else:
            keys = [tuple(k) for k in info["keys"]]
            counts = [dict(c) for c in info["counts"]]
            self.vdoc, self.vcum = ix["ls_vdoc"], ix["ls_vcum"]
            bounds = np.asarray(ix["ls_bounds"], dtype=np.int64)
        self.group_keys = keys
        self.group_counts = counts
        G = len(keys)
        self.g_start = np.asarray(self.vcum[bounds[:G]], dtype=np.int64)
        self.g_end = np.asarray(self.vcum[bounds[1:G + 1]], dtype=np.int64)
        glen = self.g_end - self.g_start
        if self.drop_last:
            W = glen // L
            W = np.where((W == 0) & (glen > 0), 1, W)  # a group shorter than one window: one padded window
        else:
            W = (glen + L - 1) // L
        self.g_windows = W.astype(np.int64)
        if self.mixing is None:
            self.g_probs = np.ones(G)
            self.g_draws = self.g_windows.copy()
        else:
            # a weight for a language/source the split lacks is a typo on the training split, but
            # normal on a small validation split (one mixing config serves both)
            self.g_probs = group_probabilities(keys, counts, self.mixing, strict=self.split == "train")
            active = self.g_probs > 0
            total = int(self.g_windows[active].sum())
            self.g_draws = _largest_remainder(self.g_probs, total)
            self.g_draws[self.g_windows == 0] = 0
        self.n_draws = int(self.g_draws.sum())
        self.n_batches = (self.n_draws // self.world_size) // self.batch_size
        self._epoch_key = hashlib.sha1(json.dumps(
            [INDEX_VERSION, self.seed, self.shuffle, self.g_draws.tolist(), self.g_windows.tolist()]).encode()).hexdigest()[:16]

    def __len__(self) -> int:
        return self.n_batches

    @property
    def windows_per_epoch(self) -> int:
        return self.n_draws

    def epoch_draws(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """``(group, window)`` of every draw of ``epoch`` in order (all ranks), cached; memory-mapped
        from the on-disk index (built there by the first process that needs it) unless ``index="memory"``."""
        hit = self._epochs.get(epoch)
        if hit is not None:
            self._epochs.move_to_end(epoch)
            return hit
        if self.index_store is None:
            g_arr, w_arr = self._make_epoch(epoch)
        else:
            g_arr, w_arr = self.index_store.epoch(self._epoch_key, epoch, lambda: self._make_epoch(epoch))
        self._epochs[epoch] = (g_arr, w_arr)
        while len(self._epochs) > 2:
            self._epochs.popitem(last=False)
        return g_arr, w_arr

    def _make_epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        gs, ws = [], []
        for g, (k, W) in enumerate(zip(self.g_draws.tolist(), self.g_windows.tolist())):
            if k == 0:
                continue
            idx = np.arange(epoch * k, (epoch + 1) * k, dtype=np.int64)
            passes, pos = idx // W, idx % W
            if self.shuffle:
                win = np.empty_like(pos)
                for p in np.unique(passes).tolist():
                    m = passes == p
                    win[m] = _perm(W, self.seed, 0x5A1E, g, p)[pos[m]]
            else:
                win = pos
            gs.append(np.full(k, g, dtype=np.int64))
            ws.append(win)
        g_arr = np.concatenate(gs) if gs else np.zeros(0, np.int64)
        w_arr = np.concatenate(ws) if ws else np.zeros(0, np.int64)
        if self.shuffle and len(gs) > 1:
            p = _perm(len(g_arr), self.seed, 0xE90C, epoch)
            g_arr, w_arr = g_arr[p], w_arr[p]
        return g_arr, w_arr

    def batch_draws(self, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < self.n_batches:
            raise IndexError(f"batch index {index} out of range [0, {self.n_batches})")
        g, w = self.epoch_draws(epoch)
        sl = rank_slice(index, self.batch_size, self.rank, self.world_size)
        return g[sl], w[sl]

    # -- public API ----------------------------------------------------------------------------
    def batch(self, epoch: int, index: int) -> dict[str, np.ndarray]:
        """Batch ``index`` of ``epoch`` for this rank (deterministic, O(1) in ``index``)."""
        g, w = self.batch_draws(epoch, index)
        return self.render(g, w)

    def window(self, epoch: int, position: int) -> dict[str, np.ndarray]:
        """The ``position``-th window of ``epoch`` in the global order (all ranks), batch of one."""
        g, w = self.epoch_draws(epoch)
        if not 0 <= position < len(g):
            raise IndexError(f"window position {position} out of range [0, {len(g)})")
        return self.render(g[position:position + 1], w[position:position + 1])

    def iter_from(self, epoch: int = 0, index: int = 0, worker: int = 0, num_workers: int = 1
                  ) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
        """``(epoch, index, batch)`` from the given position forever, epoch after epoch.

        With ``num_workers > 1`` only the indices ``i % num_workers == worker`` are yielded, so
        dataloader workers share the batches of a rank without overlap.
        """
        if self.n_batches == 0:
            raise UserError(f"{self.data.dir}: too little data for one batch of {self.batch_size} windows of "
                            f"{self.seq_len} tokens on {self.world_size} rank(s)")
        while True:
            while index < self.n_batches:
                if index % num_workers == worker:
                    yield epoch, index, self.batch(epoch, index)
                index += 1
            epoch, index = epoch + 1, 0

    def __iter__(self):
        for _, _, b in self.iter_from(0, 0):
            yield b

    def describe(self) -> list[dict]:
        """Per group: documents, tokens, characters, windows, probability, draws per epoch."""
        return [{"lang": k[0], "source": k[1], **c, "windows": int(W), "p": float(p), "draws": int(d)}
                for k, c, W, p, d in zip(self.group_keys, self.group_counts, self.g_windows, self.g_probs, self.g_draws)]

    # -- rendering -----------------------------------------------------------------------------
    def _spans(self, g: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        vs = self.g_start[g] + w * self._L
        ve = np.minimum(vs + self._L, self.g_end[g])
        return vs, ve

    def render(self, g: np.ndarray, w: np.ndarray) -> dict[str, np.ndarray]:
        if self.extras:
            return self._render_aligned(g, w)
        return self._render_fast(g, w)

    def _render_fast(self, g: np.ndarray, w: np.ndarray) -> dict[str, np.ndarray]:
        d = self.data
        B, T, L = len(g), self.seq_len, self._L
        vs, ve = self._spans(g, w)
        pos = vs[:, None] + np.arange(L, dtype=np.int64)[None, :]
        valid = pos < ve[:, None]
        j = np.searchsorted(self.vcum, pos, side="right") - 1
        j = np.clip(j, 0, max(len(self.vdoc) - 1, 0))
        doc = self.vdoc[j] if len(self.vdoc) else np.zeros_like(j)
        off = pos - self.vcum[j]
        is_sep = valid & (off >= self.doc_len[doc])
        is_tok = valid & ~is_sep
        shard = self.doc_shard[doc]
        local = self.doc_start[doc] + off
        keys = ["ids", "char_len", "word_start"] + (["unit_len", "unit_ngram"] if d.has_units else [])
        vals = {k: np.zeros((B, L), dtype=np.int64) for k in keys}
        flat = np.flatnonzero(is_tok)
        if flat.size:
            ts, tl = shard.ravel()[flat], local.ravel()[flat]
            if len(d.shards) == 1:
                arr = d.shards[0].arr
                for k in keys:
                    vals[k].ravel()[flat] = arr[k][tl]
            else:
                for s in np.unique(ts).tolist():
                    m = ts == s
                    arr, sel, idx = d.shards[s].arr, flat[m], tl[m]
                    for k in keys:
                        vals[k].ravel()[sel] = arr[k][idx]
        out = self._assemble(vals, is_tok, is_sep, valid, d, T)
        # document of each position within its window: 0 for [CLS] and the first (possibly cut)
        # document, +1 after each [SEP] (a [SEP] belongs to the document it ends); padding keeps the
        # last value. For document-masked attention (pretrain objectives ntp/meap, doc_mask).
        seg = np.zeros((B, T), dtype=np.int32)
        seg[:, 1:] = np.where(valid, j - j[:, :1], 0)
        seg[:, 1:] = np.maximum.accumulate(seg[:, 1:], axis=1)
        out["segment_ids"] = seg
        return out

    def _assemble(self, vals: dict, is_tok: np.ndarray, is_sep: np.ndarray, valid: np.ndarray, d: _KindData, T: int,
                  cut_start: np.ndarray | None = None) -> dict[str, np.ndarray]:
        B = is_tok.shape[0]
        out_ids = np.full((B, T), d.pad, dtype=np.int64)
        out_ids[:, 0] = d.cls
        body = np.where(is_tok, vals["ids"], np.where(is_sep, d.sep, d.pad))
        out_ids[:, 1:] = body
        special = np.ones((B, T), dtype=bool)
        special[:, 1:] = ~is_tok
        attn = np.ones((B, T), dtype=np.int64)
        attn[:, 1:] = valid
        char_len = np.zeros((B, T), dtype=np.int16)
        char_len[:, 1:] = np.where(is_tok, vals["char_len"], 0)
        ws = np.ones((B, T), dtype=bool)
        ws[:, 1:] = np.where(is_tok, vals["word_start"] > 0, True)
        # the first token of a window that starts inside a word begins a (cut) word
        if cut_start is None:
            ws[:, 1] = True
        else:
            ws[np.arange(B), cut_start] = True
        out = {"input_ids": out_ids, "word_start": ws, "char_len": char_len, "special_mask": special,
               "attention_mask": attn}
        if d.has_units:
            ul = np.ones((B, T), dtype=np.int16)
            un = np.full((B, T), -1, dtype=np.int32)
            ul[:, 1:] = np.where(is_tok, vals["unit_len"], 1)
            un[:, 1:] = np.where(is_tok, vals["unit_ngram"], -1)
            out["unit_len"], out["unit_ngram"] = fix_cut_units(ul, un, special)
        return out

    # -- aligned extra streams (per window: a few segments, O(_BLOCK) work each) ----------------
    def _segments(self, vs: int, ve: int) -> list[list]:
        """Items of one window: ``["seg", doc, t0, t1, sep_after]`` (primary token offsets in the doc)."""
        items = []
        j0 = int(np.searchsorted(self.vcum, vs, side="right")) - 1
        j1 = int(np.searchsorted(self.vcum, ve - 1, side="right")) - 1
        for j in range(j0, j1 + 1):
            a = max(vs, int(self.vcum[j])) - int(self.vcum[j])
            b = min(ve, int(self.vcum[j + 1])) - int(self.vcum[j])
            doc = int(self.vdoc[j])
            n = int(self.doc_len[doc])
            items.append(["seg", doc, min(a, n), min(b, n), b > n])
        return items

    def _streams(self) -> list[_KindData]:
        return [self.data] + [self.extras[k] for k in self.extra_kinds]

    def _doc_char_range(self, kd: _KindData, doc: int, t0: int, t1: int) -> tuple[int, int]:
        sh = kd.shards[int(self.doc_shard[doc])]
        base = int(self.doc_start[doc])
        c_doc = int(self.doc_char_start[doc])
        return sh.char_at(base + t0) - c_doc, sh.char_at(base + t1) - c_doc

    def _tok_range(self, kd: _KindData, doc: int, c0: int, c1: int) -> tuple[int, int]:
        """Shard token range of stream ``kd`` covering document ``doc``'s characters ``[c0, c1)``."""
        sh = kd.shards[int(self.doc_shard[doc])]
        cs = int(self.doc_char_start[doc])
        if kd is self.data:
            lo, n = int(self.doc_start[doc]), int(self.doc_len[doc])
        else:
            lo = int(sh.offsets[self._local_doc(doc)])
            n = int(sh.offsets[self._local_doc(doc) + 1]) - lo
        if c1 <= c0:
            return lo, lo
        if c0 <= 0 and c1 >= int(self.doc_chars[doc]):
            return lo, lo + n
        t0 = lo if c0 <= 0 else sh.token_at(cs + c0)
        t1 = lo + n if c1 >= int(self.doc_chars[doc]) else sh.token_at(cs + c1)
        return t0, t1

    def _local_doc(self, doc: int) -> int:
        s = int(self.doc_shard[doc])
        return doc - self._shard_doc_base[s]

    @property
    def _shard_doc_base(self) -> np.ndarray:
        return self._sdb

    def _is_boundary(self, kd: _KindData, doc: int, c: int) -> tuple[bool, int, int]:
        """Whether doc-local char ``c`` is a token boundary of ``kd``; plus the covering token's span."""
        if c <= 0 or c >= int(self.doc_chars[doc]):
            return True, c, c
        sh = kd.shards[int(self.doc_shard[doc])]
        cs = int(self.doc_char_start[doc])
        t = sh.token_at(cs + c)
        start = sh.char_at(t) - cs
        end = start + int(sh.arr["char_len"][t])
        return start == c, start, end

    def _common_boundary(self, doc: int, c: int, after: bool) -> int:
        """The nearest token start common to all streams at or after (``after``) / at or before ``c``."""
        streams = self._streams()
        while True:
            moved = False
            for kd in streams:
                ok, start, end = self._is_boundary(kd, doc, c)
                if not ok:
                    c, moved = (end if after else start), True
            if not moved:
                return c

    def _align_window(self, vs: int, ve: int) -> list[list]:
        """Items ``["seg", doc, c0, c1, sep_after]`` in doc-local characters, common to all streams."""
        items = []
        segs = self._segments(vs, ve)
        for k, (_, doc, t0, t1, sep) in enumerate(segs):
            n = int(self.doc_len[doc])
            if t0 >= t1:
                c0 = c1 = int(self.doc_chars[doc]) if t0 >= n else 0
            else:
                c0, c1 = self._doc_char_range(self.data, doc, t0, t1)
                if t0 > 0:
                    c0 = self._common_boundary(doc, c0, after=True)
                if t1 < n:
                    c1 = self._common_boundary(doc, c1, after=False)
                    sep = False
                if c1 < c0:
                    c1 = c0
            items.append(["seg", doc, c0, c1, sep])
        # extra streams longer than their window: cut at an earlier common boundary
        for kd in self._streams()[1:]:
            budget = self.extra_len[kd.kind] - 1
            used = 0
            for k, it in enumerate(items):
                _, doc, c0, c1, sep = it
                t0, t1 = self._tok_range(kd, doc, c0, c1)
                if used + (t1 - t0) + sep <= budget:
                    used += (t1 - t0) + sep
                    continue
                room = budget - used
                if t1 - t0 <= room:  # only the [SEP] does not fit
                    it[4] = False
                else:
                    sh = kd.shards[int(self.doc_shard[doc])]
                    c_lim = sh.char_at(t0 + room) - int(self.doc_char_start[doc])
                    it[3] = max(c0, self._common_boundary(doc, c_lim, after=False))
                    it[4] = False
                del items[k + 1:]
                break
        return items

    def _render_aligned(self, g: np.ndarray, w: np.ndarray) -> dict[str, np.ndarray]:
        vs, ve = self._spans(g, w)
        B = len(g)
        rows = [self._align_window(int(a), int(b)) for a, b in zip(vs.tolist(), ve.tolist())]
        out: dict[str, np.ndarray] = {}
        for kd in self._streams():
            T = self.seq_len if kd is self.data else self.extra_len[kd.kind]
            L = T - 1
            keys = ["ids", "char_len", "word_start"] + (["unit_len", "unit_ngram"] if kd.has_units else [])
            vals = {k: np.zeros((B, L), dtype=np.int64) for k in keys}
            is_tok = np.zeros((B, L), dtype=bool)
            is_sep = np.zeros((B, L), dtype=bool)
            cut_start = np.ones(B, dtype=np.int64)
            for r, items in enumerate(rows):
                p = 0
                for i, (_, doc, c0, c1, sep) in enumerate(items):
                    t0, t1 = self._tok_range(kd, doc, c0, c1)
                    n = t1 - t0
                    if n > 0:
                        sh = kd.shards[int(self.doc_shard[doc])]
                        for k in keys:
                            vals[k][r, p:p + n] = sh.arr[k][t0:t1]
                        is_tok[r, p:p + n] = True
                        if i == 0:
                            cut_start[r] = p + 1
                        p += n
                    if sep:
                        is_sep[r, p] = True
                        p += 1
                if p > L:  # pragma: no cover - guarded by the budget logic
                    raise AssertionError("aligned window overflow")
            valid = is_tok | is_sep
            # positions after the aligned content are padding (attention 0)
            res = self._assemble(vals, is_tok, is_sep, valid, kd, T, cut_start=cut_start)
            vis = kd.vis_table()
            if vis is not None:
                ids = np.clip(vals["ids"], 0, len(vis) - 1)
                v = np.zeros((B, T), dtype=np.int16)
                v[:, 1:] = np.where(is_tok, vis[ids], 0)
                res["vis_len"] = v
            if kd is self.data:
                out.update(res)
            else:
                out.update({f"{kd.kind}.{k}": v for k, v in res.items()})
        return out

    def window_items(self, epoch: int, position: int) -> list[dict]:
        """What window ``position`` of ``epoch`` holds: documents and character ranges (for inspect)."""
        g, w = self.epoch_draws(epoch)
        vs, ve = self._spans(g[position:position + 1], w[position:position + 1])
        vs, ve = int(vs[0]), int(ve[0])
        if self.extras:
            items = self._align_window(vs, ve)
        else:
            items = []
            for _, doc, t0, t1, sep in self._segments(vs, ve):
                items.append(["tok", doc, t0, t1, sep])
        out = []
        for kind_, doc, a, b, sep in items:
            s = int(self.doc_shard[doc])
            sh = self.data.shards[s]
            local = doc - int(self._shard_doc_base[s])
            meta = sh.docmeta()[local]
            out.append({"shard": sh.name, "doc": local, "id": meta.get("id"), "lang": meta.get("lang"),
                        "source": meta.get("source"), ("chars" if kind_ == "seg" else "tokens"): [a, b], "sep": bool(sep)})
        return out


def fix_cut_units(unit_len: np.ndarray, unit_ngram: np.ndarray, special: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Make units that a window edge (or a special token) cuts into single tokens (vectorised).

    A unit starting at ``i`` with length ``n`` is kept when the next unit start (or special token,
    or the row end) is exactly ``i + n``; every position of any other unit becomes ``1 / -1``.
    """
    B, T = unit_len.shape
    start = (unit_len > 0) | special
    idx = np.broadcast_to(np.arange(T), (B, T))
    # next start strictly after each position
    nxt = np.where(start, idx, T)
    nxt_after = np.minimum.accumulate(nxt[:, ::-1], axis=1)[:, ::-1]
    nxt_after = np.concatenate([nxt_after[:, 1:], np.full((B, 1), T)], axis=1)
    run = nxt_after - idx
    ok_start = start & (run == np.where(special, 1, unit_len.astype(np.int64)))
    # each position's owning start
    owner = np.maximum.accumulate(np.where(start, idx, -1), axis=1)
    owner_ok = np.take_along_axis(ok_start, np.maximum(owner, 0), axis=1) & (owner >= 0)
    ul = np.where(owner_ok, unit_len, 1).astype(np.int16)
    un = np.where(owner_ok, unit_ngram, -1).astype(np.int32)
    ul[special] = 1
    un[special] = -1
    return ul, un
