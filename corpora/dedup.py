"""Exact and near-duplicate removal.

* **Exact**: the document id is the first 16 hex digits of sha1(normalised text) (the contract's
  id); a document whose id was seen before is an exact duplicate. Index: a Python ``set`` of
  64-bit ints.
* **Near**: MinHash signatures (``datasketch.MinHash``, ``num_perm`` permutations, 32-bit values)
  over character n-grams (``char_ngram``, whitespace removed) for CJK-script documents, where words
  are not delimited, and over word n-grams (``word_ngram``, lower-cased) otherwise. Candidates
  come from LSH banding with the (bands, rows) that ``datasketch.MinHashLSH`` chooses for
  ``threshold`` (``CompactLSH``, or ``MinHashLSH`` itself with ``lsh_index: datasketch``); a
  candidate counts only if the estimated Jaccard similarity of the two signatures really reaches
  ``threshold`` (LSH buckets also return false positives). The first document in input order is kept.

Signatures are computed in the workers (``signature``); all keep/drop decisions are made by one
:class:`Deduplicator` in the parent process in input order, so the result does not depend on the
number of workers. The index grows with the number of kept documents; ``docs/corpora.md`` gives
its measured size per million documents.
"""

from __future__ import annotations

import functools
import re

import numpy as np

from corpora.config import DedupConfig

_WORD_RE = re.compile(r"\w+")
_CJK_RE = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]")
SCHEME = "affine32"


@functools.lru_cache(maxsize=4)
def _template(num_perm: int, seed: int):
    from datasketch import MinHash

    return MinHash(num_perm=num_perm, seed=seed, scheme=SCHEME)


def shingle_strings(text: str, lang: str, cfg: DedupConfig) -> list[str]:
    """The shingles of a document: ``char_ngram`` characters (whitespace removed) of CJK-script
    text, ``word_ngram`` lower-cased words otherwise (a text shorter than n is one shingle)."""
    if lang in ("zh", "yue") or len(_CJK_RE.findall(text[:1000])) > 0.3 * min(len(text), 1000):
        s = "".join(text.split())
        n = cfg.char_ngram
        if len(s) <= n:
            return [s]
        return [s[i:i + n] for i in range(len(s) - n + 1)]
    words = [w.lower() for w in _WORD_RE.findall(text)] or [text]
    n = cfg.word_ngram
    if len(words) <= n:
        return [" ".join(words)]
    return [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]


def shingles(text: str, lang: str, cfg: DedupConfig) -> list[bytes]:
    return [s.encode("utf-8") for s in shingle_strings(text, lang, cfg)]


def signature(text: str, lang: str, cfg: DedupConfig) -> bytes:
    """MinHash signature of a document: ``num_perm`` uint32 values as bytes."""
    from datasketch import MinHash

    t = _template(cfg.num_perm, cfg.seed)
    m = MinHash(num_perm=cfg.num_perm, seed=cfg.seed, permutations=t.permutations, scheme=SCHEME)
    m.update_batch(set(shingles(text, lang, cfg)))
    return m.hashvalues.astype(np.uint32).tobytes()


class CompactLSH:
    """MinHash LSH banding with datasketch's (b, r) for the threshold, in compact form.

    ``datasketch.MinHashLSH`` keeps, per document, a list of band byte-strings plus one Python
    ``set`` per band bucket (about 3 KB per document, measured); this index keeps one dict per band
    mapping a 64-bit band hash to the first document index (a list only when a bucket is shared),
    about 0.4 KB per document. Candidates are the same as MinHashLSH's up to 64-bit hash collisions,
    and every candidate is verified on the signatures anyway.
    """

    def __init__(self, b: int, r: int):
        self.b, self.r = b, r
        self.tables: list[dict] = [dict() for _ in range(b)]
        rng = np.random.default_rng(12345)
        self._mul = rng.integers(1, 2**63, size=r, dtype=np.uint64) | np.uint64(1)

    def _keys(self, hv: np.ndarray) -> list[int]:
        bands = hv[: self.b * self.r].reshape(self.b, self.r).astype(np.uint64)
        return (bands * self._mul).sum(axis=1, dtype=np.uint64).tolist()  # wraps mod 2^64, silently

    def query(self, hv: np.ndarray) -> set[int]:
        out: set[int] = set()
        for table, k in zip(self.tables, self._keys(hv)):
            v = table.get(k)
            if v is None:
                continue
            if isinstance(v, list):
                out.update(v)
            else:
                out.add(v)
        return out

    def insert(self, idx: int, hv: np.ndarray) -> None:
        for table, k in zip(self.tables, self._keys(hv)):
            v = table.get(k)
            if v is None:
                table[k] = idx
            elif isinstance(v, list):
                v.append(idx)
            else:
                table[k] = [v, idx]


class Deduplicator:
    """Exact + near-duplicate index; ``check(id, sig)`` returns ``(kind, dup_of)`` or None."""

    def __init__(self, cfg: DedupConfig):
        self.cfg = cfg
        self.exact: set[int] = set()
        self.lsh = None
        self.n = 0
        if cfg.near:
            from datasketch import MinHashLSH

            self.lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)
            if cfg.lsh_index == "compact":
                self.lsh = CompactLSH(self.lsh.b, self.lsh.r)
            # signatures kept for verification, truncated to their low 16 bits: two different
            # minima agree by chance with probability 2^-16, a negligible bias on the estimate
            self.sigs = np.zeros((1024, cfg.num_perm), dtype=np.uint16)
            self.ids = np.zeros(1024, dtype=np.uint64)

    def check(self, doc_id: str, sig: bytes | None) -> tuple[str, str] | None:
        key = int(doc_id, 16)
        if self.cfg.exact:
            if key in self.exact:
                return "exact_dup", doc_id
            self.exact.add(key)
        if self.lsh is None or sig is None:
            return None
        hv = np.frombuffer(sig, dtype=np.uint32)
        if isinstance(self.lsh, CompactLSH):
            m = hv
        else:
            from datasketch import MinHash

            t = _template(self.cfg.num_perm, self.cfg.seed)
            m = MinHash(num_perm=self.cfg.num_perm, seed=self.cfg.seed, hashvalues=hv,
                        permutations=t.permutations, scheme=SCHEME)
        cands = self.lsh.query(m)
        if cands:
            idx = np.array(sorted(cands), dtype=np.int64)
            sim = (self.sigs[idx] == hv.astype(np.uint16)).mean(axis=1)
            hit = np.nonzero(sim >= self.cfg.threshold)[0]
            if hit.size:
                return "near_dup", f"{int(self.ids[idx[hit[0]]]):016x}"
        if self.n == len(self.ids):  # grow the signature store
            self.sigs = np.concatenate([self.sigs, np.zeros_like(self.sigs)])
            self.ids = np.concatenate([self.ids, np.zeros_like(self.ids)])
        self.sigs[self.n] = hv.astype(np.uint16)  # low 16 bits
        self.ids[self.n] = key
        if isinstance(self.lsh, CompactLSH):
            self.lsh.insert(self.n, hv)
        else:
            self.lsh.insert(self.n, m, check_duplication=False)
        self.n += 1
        return None
