"""ERNIE-Gram n-gram lexicon and maximum matching (methods.md §5).

The lexicon holds n-grams (2 <= n <= ``max_n``) of fine-grained token ids of a base vocabulary
(``char`` by default), scored against independence:

* ``tstat`` (default): the t-test of Manning & Schuetze for collocations, generalised to n tokens:
  ``t = (c/N - prod_i p(x_i)) / sqrt((c/N) / N)`` where ``c`` is the n-gram count, ``N`` the
  number of token positions and ``p(x_i)`` the unigram probabilities;
* ``pmi``: ``log(p(g) / prod_i p(x_i))`` (favours rare n-grams; use with a ``min_count``).

The paper says only "T-test"; its exact statistic, the lexicon size and ``max_n`` are not public,
so they are options here. N-grams never contain ``[UNK]``/special tokens, never cross a document
(and, with ``within_words``, never cut a segmented word). The top ``top_k`` by score with count
``>= min_count`` are kept; ties are broken by count, then by the ids, so the lexicon is
deterministic. N-gram ids follow that order (highest score first, *not* most frequent first), so a
cap on the ids (``ernie_gram``'s ``max_ngrams``) keeps the top-scoring n-grams.

Files: ``vocab/ngram/lexicon.tsv`` (``id  n  ids  surface  count  score``) + ``stats.json``.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Iterable

import numpy as np

from pipeline.errors import UserError
from pipeline.runs import atomic_write_text, read_json


class Lexicon:
    """``ngrams[i]`` is the tuple of base-kind token ids of n-gram id ``i``."""

    def __init__(self, ngrams: list[tuple[int, ...]], base_kind: str, max_n: int,
                 counts: list[int] | None = None, scores: list[float] | None = None,
                 surfaces: list[str] | None = None):
        self.ngrams = [tuple(int(x) for x in g) for g in ngrams]
        self.base_kind = base_kind
        self.max_n = int(max_n)
        self.counts = counts or [0] * len(self.ngrams)
        self.scores = scores or [0.0] * len(self.ngrams)
        self.surfaces = surfaces or [""] * len(self.ngrams)
        self._index = {g: i for i, g in enumerate(self.ngrams)}
        # prefixes of every n-gram (length >= 2): max_match only looks further while one matches
        self._prefixes = {g[:k] for g in self.ngrams for k in range(2, len(g) + 1)}

    def __len__(self) -> int:
        return len(self.ngrams)

    def id_of(self, ngram: Iterable[int]) -> int | None:
        return self._index.get(tuple(int(x) for x in ngram))

    def save(self, out_dir: str | Path) -> Path:
        lines = ["id\tn\tids\tsurface\tcount\tscore"]
        for i, g in enumerate(self.ngrams):
            surf = self.surfaces[i].replace("\t", " ").replace("\n", " ")
            lines.append(f"{i}\t{len(g)}\t{' '.join(map(str, g))}\t{surf}\t{self.counts[i]}\t{self.scores[i]:.6g}")
        p = Path(out_dir) / "lexicon.tsv"
        atomic_write_text(p, "\n".join(lines) + "\n")
        return p

    @classmethod
    def load(cls, path: str | Path) -> "Lexicon":
        d = Path(path)
        f = d / "lexicon.tsv"
        if not f.is_file():
            raise UserError(f"no n-gram lexicon at {f}")
        meta = read_json(d / "stats.json") if (d / "stats.json").is_file() else {}
        ngrams, counts, scores, surfaces = [], [], [], []
        for lineno, line in enumerate(f.read_text(encoding="utf-8").splitlines()[1:], 2):
            parts = line.split("\t")
            if len(parts) != 6:
                raise UserError(f"{f}:{lineno}: expected 6 tab-separated fields, got {len(parts)}")
            if int(parts[0]) != len(ngrams):
                raise UserError(f"{f}:{lineno}: ids must be 0, 1, 2, ... in order")
            ngrams.append(tuple(int(x) for x in parts[2].split()))
            surfaces.append(parts[3])
            counts.append(int(parts[4]))
            scores.append(float(parts[5]))
        max_n = int(meta.get("max_n", max((len(g) for g in ngrams), default=2)))
        return cls(ngrams, meta.get("base_kind", "char"), max_n, counts, scores, surfaces)


def max_match(ids: np.ndarray, lexicon: Lexicon, word_start: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Forward maximum matching of a token stream into n-gram units.

    Returns ``unit_len`` (uint8) and ``unit_ngram`` (int32): at the first token of each unit its
    length and lexicon id (``-1`` for a single token); inside a unit ``0`` / ``-1``. With
    ``word_start``, a unit may only start at a word start and must end at a word boundary, so it
    never cuts a segmented word.
    """
    ids_l = np.asarray(ids).tolist()
    n = len(ids_l)
    unit_len = np.zeros(n, np.uint8)
    unit_ngram = np.full(n, -1, np.int32)
    ws = None if word_start is None else np.asarray(word_start).tolist()
    index, prefixes, max_n = lexicon._index, lexicon._prefixes, lexicon.max_n
    i = 0
    while i < n:
        best_len, best_id = 1, -1
        if ws is None or ws[i]:
            k = 2
            while k <= max_n and i + k <= n:
                g = tuple(ids_l[i:i + k])
                if g not in prefixes:
                    break
                j = index.get(g)
                if j is not None and (ws is None or i + k == n or ws[i + k]):
                    best_len, best_id = k, j
                k += 1
        unit_len[i] = best_len
        unit_ngram[i] = best_id
        i += best_len
    return unit_len, unit_ngram


def ngram_starts(bad: np.ndarray, last: np.ndarray, word_start: np.ndarray | None, n: int) -> np.ndarray:
    """Start positions of the valid n-grams of a concatenated stream: no excluded token (``bad``),
    no document end before the n-gram's last token (``last``: True on a document's last token) and,
    with ``word_start`` given, no word start after its first token. The one rule of the counters."""
    m = len(bad)
    if m < n:
        return np.zeros(0, np.int64)
    k_end = m - n + 1
    ok = ~bad[:k_end].copy()
    for k in range(1, n):
        ok &= ~bad[k:k_end + k]
        ok &= ~last[k - 1:k_end + k - 1]  # token k-1 may not end a document
        if word_start is not None:
            ok &= ~word_start[k:k_end + k]
    return np.nonzero(ok)[0]


def count_ngrams(streams: Iterable[tuple[np.ndarray, np.ndarray]], max_n: int, excluded: set[int],
                 within_words: bool = False) -> tuple[list[Counter], Counter, int]:
    """Counts of n-grams (n = 2..max_n) and unigrams over documents ``(ids, word_start)``.

    All documents are concatenated once; an n-gram is valid when none of its tokens is excluded
    and it does not cross a document end (nor, with ``within_words``, a word start). n-grams are
    packed into one int64 key per position and counted with ``np.unique`` (structured rows when
    the key would overflow).
    """
    ids_parts, ws_parts, doc_end = [], [], []
    for ids, ws in streams:
        ids = np.asarray(ids, np.int64)
        if len(ids) == 0:
            continue
        ids_parts.append(ids)
        ws_parts.append(np.asarray(ws, bool))
        end = np.zeros(len(ids), bool)
        end[-1] = True
        doc_end.append(end)
    grams = [Counter() for _ in range(max_n + 1)]
    if not ids_parts:
        return grams, Counter(), 0
    ids = np.concatenate(ids_parts)
    wsa = np.concatenate(ws_parts)
    last = np.concatenate(doc_end)  # True on the last token of each document
    m = len(ids)
    uni = Counter(dict(zip(*[a.tolist() for a in np.unique(ids, return_counts=True)])))
    vmax = int(ids.max()) + 1
    bad = np.zeros(max(vmax, max(excluded, default=0) + 1), bool)
    bad[list(excluded)] = True
    bad = bad[ids]
    for n in range(2, max_n + 1):
        idx = ngram_starts(bad, last, wsa if within_words else None, n)
        if len(idx) == 0:
            continue
        if vmax ** n < 2 ** 62:
            key = np.zeros(len(idx), np.int64)
            for k in range(n):
                key = key * vmax + ids[idx + k]
            u, c = np.unique(key, return_counts=True)
            rows = np.stack([(u // vmax ** (n - 1 - k)) % vmax for k in range(n)], axis=1)
        else:
            rows, c = np.unique(np.stack([ids[idx + k] for k in range(n)], axis=1), axis=0, return_counts=True)
        grams[n] = Counter(dict(zip(map(tuple, rows.tolist()), c.tolist())))
    return grams, uni, m


def score_ngrams(grams: list[Counter], uni: Counter, total: int, score: str, min_count: int, top_k: int
                 ) -> list[tuple[tuple[int, ...], int, float]]:
    if total == 0:
        return []
    logp = {t: math.log(c / total) for t, c in uni.items()}
    cands = []
    for n in range(2, len(grams)):
        for g, c in grams[n].items():
            if c < min_count:
                continue
            lp_ind = sum(logp[t] for t in g)
            p = c / total
            if score == "tstat":
                s = (p - math.exp(lp_ind)) / math.sqrt(p / total)
            elif score == "pmi":
                s = math.log(p) - lp_ind
            else:
                raise UserError(f"ngram.score must be tstat or pmi, got {score!r}")
            cands.append((g, c, s))
    cands.sort(key=lambda x: (-x[2], -x[1], x[0]))
    return cands[:top_k]


def build_lexicon(streams, base_kind: str, max_n: int, top_k: int, min_count: int, score: str,
                  excluded: set[int], id_to_surface, within_words: bool = False) -> Lexicon:
    grams, uni, total = count_ngrams(streams, max_n, excluded, within_words)
    best = score_ngrams(grams, uni, total, score, min_count, top_k)
    ngrams = [g for g, _, _ in best]
    surfaces = [id_to_surface(g) for g in ngrams]
    return Lexicon(ngrams, base_kind, max_n, [c for _, c, _ in best], [s for _, _, s in best], surfaces)


# ---------------------------------------------------------------------------------------------
# streamed counting (the stage's path): per-part count files, reduced one hash bucket at a time
# ---------------------------------------------------------------------------------------------
def _pack(rows: np.ndarray, base: int) -> np.ndarray:
    """One sortable key per n-gram row: an int64 in base ``base`` when it fits, else the row's
    big-endian uint32 bytes (numpy void), so any vocabulary size and ``max_n`` work."""
    n = rows.shape[1]
    if base ** n < 2 ** 63:
        key = np.zeros(len(rows), np.int64)
        for k in range(n):
            key = key * base + rows[:, k]
        return key
    return np.ascontiguousarray(rows.astype(">u4")).view(np.dtype((np.void, 4 * n))).ravel()


def _unpack(keys: np.ndarray, n: int, base: int) -> np.ndarray:
    if keys.dtype == np.int64:
        return np.stack([(keys // base ** (n - 1 - k)) % base for k in range(n)], axis=1).reshape(-1, n)
    return np.ascontiguousarray(keys).view(">u4").reshape(-1, n).astype(np.int64)


def _bucket_of(rows: np.ndarray, buckets: int) -> np.ndarray:
    h = np.zeros(len(rows), np.uint64)
    with np.errstate(over="ignore"):
        for k in range(rows.shape[1]):
            h = h * np.uint64(0x9E3779B97F4A7C15) + rows[:, k].astype(np.uint64)
    return ((h >> np.uint64(33)) % np.uint64(buckets)).astype(np.int64)


def _sum_unique(keys: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(keys) == 0:
        return keys, counts.astype(np.int64)
    u, inv = np.unique(keys, return_inverse=True)
    # float64 sums are exact up to 2**53 (far beyond any count here)
    return u, np.bincount(inv.ravel(), weights=counts, minlength=len(u)).astype(np.int64)


class NgramCounter:
    """n-gram (2..``max_n``) and unigram counts of a stream of documents in bounded memory.

    Documents are buffered up to ``chunk_tokens`` tokens, then counted with the rule of
    :func:`count_ngrams` (no excluded token, no document end inside, with ``within_words`` no
    word start after the first token) and kept as unique keys with counts; the kept keys are
    compacted when they exceed ``max_keys``. Memory: one chunk plus the distinct n-grams of the
    part, never the part's token count. :meth:`save` writes the counts split into hash buckets
    (``.npz``), which :func:`reduce_counts` merges over every part one bucket at a time.
    """

    def __init__(self, max_n: int, excluded: set[int], base: int, within_words: bool = False,
                 chunk_tokens: int = 1 << 21, max_keys: int = 1 << 23):
        self.max_n, self.base, self.within_words = int(max_n), int(base), within_words
        self.bad = np.zeros(self.base, bool)
        ex = [i for i in excluded if 0 <= i < self.base]
        self.bad[ex] = True
        self.chunk_tokens, self.max_keys = chunk_tokens, max_keys
        self.uni = np.zeros(self.base, np.int64)
        self.total = 0
        self.acc: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {n: [] for n in range(2, self.max_n + 1)}
        self._kept = {n: 0 for n in self.acc}
        self._buf: list[tuple[np.ndarray, np.ndarray]] = []
        self._buffered = 0

    def add(self, ids, word_start) -> None:
        ids = np.asarray(ids, np.int64)
        if len(ids) == 0:
            return
        if int(ids.max()) >= self.base or int(ids.min()) < 0:
            raise ValueError(f"token id {int(ids.max())} outside the base vocabulary (size {self.base})")
        self._buf.append((ids, np.asarray(word_start, bool)))
        self._buffered += len(ids)
        if self._buffered >= self.chunk_tokens:
            self._flush()

    def _flush(self) -> None:
        if not self._buf:
            return
        ids = np.concatenate([b[0] for b in self._buf])
        wsa = np.concatenate([b[1] for b in self._buf])
        last = np.zeros(len(ids), bool)
        last[np.cumsum([len(b[0]) for b in self._buf]) - 1] = True
        self._buf, self._buffered = [], 0
        m = len(ids)
        self.uni += np.bincount(ids, minlength=self.base)
        self.total += m
        bad = self.bad[ids]
        for n in range(2, self.max_n + 1):
            idx = ngram_starts(bad, last, wsa if self.within_words else None, n)
            if len(idx) == 0:
                continue
            keys = _pack(np.stack([ids[idx + k] for k in range(n)], axis=1), self.base)
            u, c = np.unique(keys, return_counts=True)
            self.acc[n].append((u, c.astype(np.int64)))
            self._kept[n] += len(u)
            if self._kept[n] > self.max_keys:
                self._compact(n)

    def _compact(self, n: int) -> None:
        if len(self.acc[n]) > 1:
            u, c = _sum_unique(np.concatenate([a[0] for a in self.acc[n]]),
                               np.concatenate([a[1] for a in self.acc[n]]))
            self.acc[n] = [(u, c)]
        self._kept[n] = sum(len(a[0]) for a in self.acc[n])

    def save(self, path: str | Path, buckets: int) -> None:
        """Write the part's counts to ``path`` (``.npz``, atomically): ``uni``, ``total`` and per
        n and bucket ``k{n}_{b}`` (keys) / ``c{n}_{b}`` (counts)."""
        from pipeline.runs import atomic_file

        self._flush()
        arrays = {"uni": self.uni, "total": np.array([self.total], np.int64),
                  "meta": np.array([self.max_n, self.base, buckets], np.int64)}
        for n in range(2, self.max_n + 1):
            self._compact(n)
            if self.acc[n]:
                u, c = self.acc[n][0]
            else:
                u = _pack(np.zeros((0, n), np.int64), self.base)
                c = np.zeros(0, np.int64)
            b = _bucket_of(_unpack(u, n, self.base), buckets) if len(u) else np.zeros(0, np.int64)
            for j in range(buckets):
                sel = b == j
                arrays[f"k{n}_{j}"] = u[sel]
                arrays[f"c{n}_{j}"] = c[sel]
        with atomic_file(path, "wb") as f:
            np.savez(f, **arrays)


def reduce_counts(parts: list[str | Path], score: str, min_count: int, top_k: int
                  ) -> list[tuple[tuple[int, ...], int, float]]:
    """Merge the parts written by :meth:`NgramCounter.save`: unigrams first (the scores need
    them), then each hash bucket on its own (memory ~ distinct n-grams / buckets); only n-grams
    with ``count >= min_count`` are scored and each bucket keeps its best ``top_k``. The same
    ranking as :func:`score_ngrams` over all counts at once."""
    if not parts:
        return []
    uni, total = None, 0
    for p in parts:
        with np.load(p) as z:
            uni = z["uni"].copy() if uni is None else uni + z["uni"]
            total += int(z["total"][0])
            max_n, base, buckets = (int(x) for x in z["meta"])
    uni_c = Counter({i: int(c) for i, c in enumerate(uni.tolist()) if c})
    best: list[tuple[tuple[int, ...], int, float]] = []
    for j in range(buckets):
        grams = [Counter() for _ in range(max_n + 1)]
        for n in range(2, max_n + 1):
            ks, cs = [], []
            for p in parts:
                with np.load(p) as z:
                    ks.append(z[f"k{n}_{j}"])
                    cs.append(z[f"c{n}_{j}"])
            keys, counts = _sum_unique(np.concatenate(ks), np.concatenate(cs))
            keep = counts >= min_count
            rows = _unpack(keys[keep], n, base)
            grams[n] = Counter(dict(zip(map(tuple, rows.tolist()), counts[keep].tolist())))
        best.extend(score_ngrams(grams, uni_c, total, score, min_count, top_k))
        best.sort(key=lambda x: (-x[2], -x[1], x[0]))
        del best[top_k:]
    return best


def lexicon_from_scored(best, base_kind: str, max_n: int, id_to_surface) -> Lexicon:
    ngrams = [g for g, _, _ in best]
    return Lexicon(ngrams, base_kind, max_n, [c for _, c, _ in best], [s for _, _, s in best],
                   [id_to_surface(g) for g in ngrams])
