"""Align two token streams of the same text by cumulative characters.

Every shard stream stores ``char_len`` per token with the convention of ``docs/contracts.md``: a
token covers the characters from the end of the previous token to its own end, so
``char_len.sum() == len(text)``. Token ``i`` therefore covers the half-open character span
``[start_i, end_i)`` with ``end = cumsum(char_len)`` and ``start = end - char_len``. A token with
``char_len == 0`` (e.g. a byte-fallback continuation) covers no character and belongs to the
character before it; it never starts a span.

Functions (all vectorised numpy):

* :func:`token_spans` -- ``(start, end)`` character offsets of every token;
* :func:`char_to_token` -- for every character, the index of the token covering it;
* :func:`map_spans` -- for every token of stream ``b``, the ``[start, end)`` range of tokens of
  stream ``a`` that overlap its characters (e.g. the characters of an SGT token, or the SGT token
  of every character);
* :func:`boundaries` / :func:`common_boundaries` -- character offsets where a stream (both
  streams) has a token boundary; windows of two streams are cut there so they cover exactly the
  same characters;
* :func:`tokens_in_chars` -- the token range of a stream that covers a character range cut at
  its boundaries.
"""

from __future__ import annotations

import numpy as np

__all__ = ["token_spans", "char_to_token", "map_spans", "boundaries", "common_boundaries",
           "tokens_in_chars", "check_same_text"]


def _ends(char_len: np.ndarray) -> np.ndarray:
    return np.cumsum(np.asarray(char_len, dtype=np.int64))


def token_spans(char_len: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(start, end)`` int64 character offsets of each token (``end - start == char_len``)."""
    end = _ends(char_len)
    return end - np.asarray(char_len, dtype=np.int64), end


def char_to_token(char_len: np.ndarray) -> np.ndarray:
    """int64 ``[n_chars]``: the token covering each character (zero-length tokens cover none)."""
    cl = np.asarray(char_len, dtype=np.int64)
    return np.repeat(np.arange(len(cl), dtype=np.int64), cl)


def check_same_text(char_len_a: np.ndarray, char_len_b: np.ndarray) -> int:
    """Both streams must cover the same number of characters; returns it."""
    na, nb = int(np.asarray(char_len_a, dtype=np.int64).sum()), int(np.asarray(char_len_b, dtype=np.int64).sum())
    if na != nb:
        raise ValueError(f"streams cover different texts: {na} vs {nb} characters")
    return na


def map_spans(char_len_a: np.ndarray, char_len_b: np.ndarray) -> np.ndarray:
    """For each token of ``b``, the ``[start, end)`` range of ``a``'s tokens overlapping it.

    Returns int64 ``[n_b, 2]``. A token of ``a`` overlaps ``b``'s span ``[s, e)`` when it covers
    at least one of its characters; zero-length tokens of ``a`` attached to a covered character
    are included (they belong to it). A zero-length token of ``b`` gets the empty range at the
    position after the token covering its character.
    """
    check_same_text(char_len_a, char_len_b)
    a_start, a_end = token_spans(char_len_a)
    b_start, b_end = token_spans(char_len_b)
    # a token of a overlaps b's span [s, e) when it covers a character in it; a zero-length
    # token "covers" the character before it (offset end - 1). Both keys are non-decreasing.
    a_key = np.where(a_end > a_start, a_start, a_end - 1)
    lo = np.searchsorted(a_end, b_start, side="right")
    hi = np.searchsorted(a_key, b_end, side="left")
    hi = np.where(b_end == b_start, lo, np.maximum(hi, lo))
    return np.stack([lo, hi], axis=1)


def boundaries(char_len: np.ndarray) -> np.ndarray:
    """Sorted unique character offsets at which a token boundary lies (0 and the total included)."""
    return np.unique(np.concatenate([[0], _ends(char_len)]))


def common_boundaries(char_len_a: np.ndarray, char_len_b: np.ndarray) -> np.ndarray:
    """Character offsets where both streams have a token boundary (always includes 0 and the end)."""
    check_same_text(char_len_a, char_len_b)
    return np.intersect1d(boundaries(char_len_a), boundaries(char_len_b), assume_unique=True)


def tokens_in_chars(char_len: np.ndarray, c0: int, c1: int) -> tuple[int, int]:
    """Token range ``[i, j)`` whose characters lie in ``[c0, c1)`` (a token belongs to the range
    of its end, so ``c0``/``c1`` should be boundaries of the stream for an exact cover)."""
    end = _ends(char_len)
    return int(np.searchsorted(end, c0, side="right")), int(np.searchsorted(end, c1, side="right"))
