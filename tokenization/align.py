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
  its boundaries;
* visible spans (the alignment the multi-vocabulary objectives, their fine-tuning adapters and the
  loader use; see the section below): :func:`visible_lengths` / :func:`load_visible_lengths`
  (non-whitespace characters per token id), :func:`visible_spans`, :func:`char_owner`,
  :func:`first_last_by_chars`, :func:`align_tokens` (first/last coarse token of every fine
  token), :func:`owner_range` (how many fine tokens reach each coarse token).
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


# ---------------------------------------------------------------------------------------------
# visible spans: the characters a token actually shows (no whitespace)
# ---------------------------------------------------------------------------------------------
# The ``char_len`` spans above fold whitespace a tokenizer drops into the *next* token (the char
# kind drops every space and newline), while the SGT and word kinds keep whitespace as tokens of
# their own (``\n``, ``▁``). Aligning two streams by those raw spans therefore puts the character
# after a newline into the ``\n`` token. The functions below align by *visible* spans instead: a
# token's visible span is the last ``vis_len`` characters of its ``char_len`` span, where
# ``vis_len`` is the number of non-whitespace characters of its surface string (whitespace is
# only ever at the start of a span: dropped before a token, or the ``▁`` of an attached space).
# ``vis_len`` per id comes from the vocabulary (:func:`visible_lengths`); -1 means "unknown"
# (``[UNK]``: the visible span is then the whole ``char_len`` span).

__all__ += ["visible_lengths", "load_visible_lengths", "visible_spans", "char_owner", "owner_range",
            "align_tokens", "first_last_by_chars"]

_WS_MARKS = ("\u2581", "\u0120")  # sentencepiece / byte-level space marks


def _visible_count(surface: str) -> int:
    return sum(1 for ch in surface if not (ch.isspace() or ch in _WS_MARKS))


def visible_lengths(tokens: "list[str | None]", special_ids=(), unknown_ids=(), continuing_prefix: str | None = "##"
                    ) -> np.ndarray:
    """int16 ``[vocab]``: non-whitespace characters of each token's surface string.

    ``continuing_prefix`` (WordPiece ``##``) is stripped first; special ids get 0 (they cover no
    character), ``unknown_ids`` (``[UNK]``) and missing ids -1 (unknown: use the whole span).
    """
    out = np.full(len(tokens), -1, dtype=np.int16)
    for i, t in enumerate(tokens):
        if t is None:
            continue
        if continuing_prefix and t.startswith(continuing_prefix) and len(t) > len(continuing_prefix):
            t = t[len(continuing_prefix):]
        out[i] = min(_visible_count(t), 32767)
    for i in special_ids:
        if 0 <= int(i) < len(out):
            out[int(i)] = 0
    for i in unknown_ids:
        if 0 <= int(i) < len(out):
            out[int(i)] = -1
    return out


_VIS_CACHE: dict[str, np.ndarray] = {}


def load_visible_lengths(vocab_dir) -> np.ndarray:
    """:func:`visible_lengths` of a vocabulary folder (its ``tokenizer.json`` and ``stats.json``).

    Cached per folder. Raises ``FileNotFoundError`` when the folder has no ``tokenizer.json``.
    """
    import json
    from pathlib import Path

    key = str(Path(vocab_dir).resolve())
    if key in _VIS_CACHE:
        return _VIS_CACHE[key]
    p = Path(vocab_dir) / "tokenizer.json"
    if not p.is_file():
        raise FileNotFoundError(f"no tokenizer.json in {vocab_dir}")
    from tokenizers import Tokenizer

    tk = Tokenizer.from_file(str(p))
    vocab = tk.get_vocab(with_added_tokens=True)
    n = max(vocab.values()) + 1 if vocab else 0
    tokens: list = [None] * n
    for t, i in vocab.items():
        tokens[i] = t
    model = json.loads(p.read_text(encoding="utf-8")).get("model") or {}
    prefix = model.get("continuing_subword_prefix") if model.get("type") in ("WordPiece", "BPE") else None
    from tokenization.schema import VocabStats

    stats = VocabStats.load_if_present(vocab_dir)
    sp = stats.special_tokens if stats is not None else {}
    specials = [v for k, v in sp.items() if k != "unk"] or [0, 2, 3, 4]
    unk = [sp.get("unk", 1)]
    specials += [i for t, i in vocab.items() if t in ("[PAD]", "[CLS]", "[SEP]", "[MASK]")]
    out = _VIS_CACHE[key] = visible_lengths(tokens, specials, unk, prefix)
    return out


def visible_spans(char_len: np.ndarray, vis_len: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(start, end)`` of each token's visible characters, along the last axis (batched).

    ``end`` is the cumulative ``char_len``; ``start = end - min(vis_len, char_len)``, or
    ``end - char_len`` where ``vis_len`` is negative (unknown) or not given.
    """
    cl = np.asarray(char_len, dtype=np.int64)
    end = np.cumsum(cl, axis=-1)
    if vis_len is None:
        return end - cl, end
    v = np.asarray(vis_len, dtype=np.int64)
    v = np.where(v < 0, cl, np.minimum(v, cl))
    return end - v, end


def char_owner(start: np.ndarray, end: np.ndarray, n_chars: int | None = None) -> np.ndarray:
    """int64 ``[B, C]``: the token whose span ``[start, end)`` holds each character, -1 for none.

    ``start``/``end`` are ``[B, T]`` (or ``[T]``) non-overlapping spans in token order.
    """
    s2, e2 = np.atleast_2d(np.asarray(start, np.int64)), np.atleast_2d(np.asarray(end, np.int64))
    B, T = s2.shape
    C = int(n_chars if n_chars is not None else (e2.max() if e2.size else 0))
    out = np.full((B, max(C, 0)), -1, dtype=np.int64)
    n = np.clip(np.minimum(e2, C) - s2, 0, None).ravel()
    total = int(n.sum())
    if total:
        flat_t = np.repeat(np.arange(B * T, dtype=np.int64), n)
        first = np.repeat(s2.ravel(), n)
        within = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(n) - n, n)
        out[flat_t // T, first + within] = flat_t % T
    return out if np.ndim(start) > 1 else out[0]


def first_last_by_chars(fine_owner: np.ndarray, coarse_owner: np.ndarray, n_fine: int) -> tuple[np.ndarray, np.ndarray]:
    """For each fine token, the first and last coarse token among the characters both own.

    ``fine_owner`` / ``coarse_owner``: int ``[B, C]`` per character, -1 where a stream shows no
    character there (whitespace, cut text). Coarse owners must be non-decreasing along a row
    (tokens in text order). Returns int64 ``(first, last)`` ``[B, n_fine]``, -1 where a fine token
    shares no character with the coarse stream.
    """
    fo, co = np.atleast_2d(np.asarray(fine_owner, np.int64)), np.atleast_2d(np.asarray(coarse_owner, np.int64))
    B = fo.shape[0]
    ok = (fo >= 0) & (co >= 0) & (fo < n_fine)
    key = (np.arange(B, dtype=np.int64)[:, None] * n_fine + fo)[ok]
    val = co[ok]
    big = np.iinfo(np.int64).max
    first = np.full(B * n_fine, big, dtype=np.int64)
    last = np.full(B * n_fine, -1, dtype=np.int64)
    np.minimum.at(first, key, val)
    np.maximum.at(last, key, val)
    first = np.where(first == big, -1, first).reshape(B, n_fine)
    last = last.reshape(B, n_fine)
    return first, last


def align_tokens(fine_char_len: np.ndarray, coarse_char_len: np.ndarray, fine_vis: np.ndarray | None = None,
                 coarse_vis: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Align two token streams of the same text ``[B, T]`` / ``[B, S]`` by visible characters.

    Returns ``(first, last)`` int64 ``[B, T]``: for each fine token, the first and the last coarse
    token whose visible span shares a character with its visible span (equal when the fine token
    lies inside one coarse token), -1 where none. A fine token with ``char_len == 0`` (a
    byte-fallback continuation) belongs to the character before it: it gets the ``last`` of the
    nearest earlier fine token that covers characters. Specials/padding must have ``char_len`` 0
    and are the caller's to map (they get the value of the token before them, or -1).
    """
    fcl = np.atleast_2d(np.asarray(fine_char_len, np.int64))
    ccl = np.atleast_2d(np.asarray(coarse_char_len, np.int64))
    fs, fe = visible_spans(fcl, None if fine_vis is None else np.atleast_2d(fine_vis))
    cs, ce = visible_spans(ccl, None if coarse_vis is None else np.atleast_2d(coarse_vis))
    C = int(max(fe.max(initial=0), ce.max(initial=0)))
    T = fcl.shape[1]
    first, last = first_last_by_chars(char_owner(fs, fe, C), char_owner(cs, ce, C), T)
    zero = fcl == 0
    if zero.any():
        # zero-length tokens take the alignment of the closest earlier token with characters
        idx = np.where(~zero, np.arange(T)[None, :], -1)
        prev = np.maximum.accumulate(idx, axis=1)
        rows = np.arange(fcl.shape[0])[:, None]
        src = np.maximum(prev, 0)
        first = np.where(zero, np.where(prev >= 0, last[rows, src], -1), first)
        last = np.where(zero, first, last)
    return first, last


def owner_range(first: np.ndarray, last: np.ndarray, n_coarse: int) -> np.ndarray:
    """int64 ``[B, S]``: how many fine tokens have each coarse token in their ``[first, last]`` range."""
    f2, l2 = np.atleast_2d(first), np.atleast_2d(last)
    B = f2.shape[0]
    diff = np.zeros((B, n_coarse + 1), dtype=np.int64)
    ok = f2 >= 0
    rows = np.broadcast_to(np.arange(B)[:, None], f2.shape)
    np.add.at(diff, (rows[ok], f2[ok]), 1)
    np.add.at(diff, (rows[ok], np.minimum(l2[ok], n_coarse - 1) + 1), -1)
    return np.cumsum(diff, axis=1)[:, :n_coarse]
