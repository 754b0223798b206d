"""Exact and near-duplicate removal.

* **Exact**: the document id is the first 16 hex digits of sha1(normalised text) (the contract's
  id); a document whose id was seen before is an exact duplicate.
* **Near**: MinHash signatures (datatrove's, ``num_perm`` hashes) over character n-grams
  (``char_ngram``, whitespace removed) for CJK-script documents, where words are not delimited,
  and over word n-grams (``word_ngram``, lower-cased) otherwise.

This module holds the shingles; the decisions are made on disk by datatrove's
multi-stage MinHash (signatures -> buckets -> clusters -> filter) in :mod:`corpora.steps`, which
calls :func:`shingles` so CJK text is shingled by characters (docs/corpora.md).
"""

from __future__ import annotations

import re

from corpora.config import DedupConfig

_WORD_RE = re.compile(r"\w+")
_CJK_RE = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]")


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
