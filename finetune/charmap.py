"""Map tokens back to characters, for any tokenizer.

Every metric of the suite is character-level, so each model needs, for every character of its
input text, the token that covers it and the character's offset inside that token. Two ways to
get that:

* ``offsets`` -- the tokenizer's own ``return_offsets_mapping`` (every ``tokenizers``-backed
  tokenizer: char, SGT and word vocabularies saved as ``tokenizer.json``);
* ``words`` -- for tokenizers without offsets (custom Python classes loaded with
  ``trust_remote_code``): segment the text into words (the project's segmenter, jieba semantics),
  encode every word on its own and find each token's characters inside its word by matching the
  token's string. Segmentation-guided (SGT) and word vocabularies never let a token cross a word
  boundary, so per-word encoding gives the same tokens as encoding the whole text; for other
  tokenizers it is still an exact character map of the ids the model is fed.

Characters no token covers (whitespace a tokenizer drops) belong to the *next* token, trailing
ones to the last token -- the ``char_len`` convention of ``docs/contracts.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from pipeline.errors import UserError


@dataclass
class Alignment:
    """Tokens of one text (no special tokens) and where every character of the text went."""

    ids: list[int]
    char_to_token: np.ndarray  # int64 [n_chars]: index into ``ids``; -1 only when there are no tokens
    char_offset: np.ndarray    # int64 [n_chars]: offset of the character inside its token's span
    spans: list[tuple[int, int]]  # character span [start, end) of every token

    @property
    def n_chars(self) -> int:
        return len(self.char_to_token)


def from_spans(n_chars: int, ids: Sequence[int], spans: Sequence[tuple[int, int]]) -> Alignment:
    """Build an :class:`Alignment` from per-token character spans (first token wins on overlap)."""
    c2t = np.full(n_chars, -1, dtype=np.int64)
    off = np.zeros(n_chars, dtype=np.int64)
    for t, (s, e) in enumerate(spans):
        s, e = max(0, int(s)), min(n_chars, int(e))
        if e <= s:
            continue
        seg = c2t[s:e]
        free = seg < 0
        if free.any():
            seg[free] = t
            off[s:e][free] = (np.arange(s, e) - s)[free]
    if len(ids) and (c2t < 0).any():
        # dropped characters: take the next covered character's token (offset 0), else the last token
        nxt = np.full(n_chars, len(ids) - 1, dtype=np.int64)
        cur = len(ids) - 1
        for c in range(n_chars - 1, -1, -1):
            if c2t[c] >= 0:
                cur = c2t[c]
            nxt[c] = cur
        miss = c2t < 0
        c2t[miss] = nxt[miss]
        off[miss] = 0
    return Alignment(list(map(int, ids)), c2t, off, [(int(s), int(e)) for s, e in spans])


def visible_chars(alignment: Alignment, text: str) -> np.ndarray:
    """bool ``[n_chars]``: characters inside their own token's span that are not whitespace.

    Characters a tokenizer drops (whitespace before a token, which :func:`from_spans` hands to the
    next token with offset 0) are False, and so are whitespace characters a tokenizer keeps (an
    SGT ``\n`` or ``▁`` token): two tokenizations of one text are aligned by the visible
    characters only (:func:`tokenization.align.first_last_by_chars`), so a newline never ties a
    fine token to the coarse ``\n`` token.
    """
    n = alignment.n_chars
    out = np.zeros(n, dtype=bool)
    if n == 0 or not alignment.spans:
        return out
    c2t = alignment.char_to_token
    spans = np.asarray(alignment.spans, dtype=np.int64).reshape(-1, 2)
    idx = np.arange(n)
    t = np.clip(c2t, 0, len(spans) - 1)
    out = (c2t >= 0) & (spans[t, 0] <= idx) & (idx < spans[t, 1])
    out &= np.fromiter((not ch.isspace() for ch in text[:n]), dtype=bool, count=min(n, len(text)))
    return out


def supports_offsets(tokenizer) -> bool:
    if not getattr(tokenizer, "is_fast", False):
        return False
    try:
        tokenizer(["a"], add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, ValueError, TypeError):
        return False
    return True


def align_with_offsets(tokenizer, texts: Sequence[str]) -> list[Alignment]:
    enc = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
    return [from_spans(len(t), ids, offs) for t, ids, offs in zip(texts, enc["input_ids"], enc["offset_mapping"])]


def _default_cut() -> Callable[[str], list[str]]:
    try:
        from tokenization.segment import Segmenter  # the project's segmenter (jieba semantics)

        seg = Segmenter(hmm=False)
        return seg.cut
    except ImportError:
        import rjieba

        return lambda text: list(rjieba.cut(text, False))


def _clean_piece(tok: str) -> str:
    for p in ("##", "\u2581", "\u0120"):
        if tok.startswith(p):
            tok = tok[len(p):]
    return tok


def _spans_in_word(word: str, pieces: list[str], unk: str | None) -> list[tuple[int, int]]:
    """Character spans of the tokens of one word, by matching their strings left to right."""
    low = word.lower()
    spans, pos = [], 0
    for i, p in enumerate(pieces):
        p = _clean_piece(p).lower()
        if p and p != (unk or "").lower():
            j = low.find(p, pos)
            if j >= 0:
                # characters skipped before the match (dropped or unknown) go to this token
                spans.append((pos, j + len(p)))
                pos = j + len(p)
                continue
        # no match ([UNK] or a normalised form): cover up to the next piece that matches, or one char
        nxt = None
        for q in pieces[i + 1:]:
            q = _clean_piece(q).lower()
            if q and q != (unk or "").lower():
                k = low.find(q, pos + 1)
                if k >= 0:
                    nxt = k
                break
        end = nxt if nxt is not None else (len(word) if i == len(pieces) - 1 else min(len(word), pos + 1))
        spans.append((pos, max(end, pos)))
        pos = max(end, pos)
    if spans and pos < len(word):  # trailing characters of the word go to its last token
        s, _ = spans[-1]
        spans[-1] = (s, len(word))
    return spans


def align_by_words(tokenizer, texts: Sequence[str], cut: Callable[[str], list[str]] | None = None) -> list[Alignment]:
    cut = cut or _default_cut()
    words_per_text = [[w for w in cut(t) if w] for t in texts]
    for t, ws in zip(texts, words_per_text):
        if "".join(ws) != t:
            raise UserError(f"segmenter output does not concatenate back to the text: {t[:40]!r}")
    flat = [w for ws in words_per_text for w in ws]
    enc = tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
    unk = getattr(tokenizer, "unk_token", None)
    out, k = [], 0
    for t, ws in zip(texts, words_per_text):
        ids, spans, base = [], [], 0
        for w in ws:
            wid = list(enc[k])
            k += 1
            pieces = tokenizer.convert_ids_to_tokens(wid)
            for (s, e), i in zip(_spans_in_word(w, pieces, unk), wid):
                ids.append(i)
                spans.append((base + s, base + e))
            base += len(w)
        out.append(from_spans(len(t), ids, spans))
    return out


def align(tokenizer, texts: Sequence[str], method: str = "auto") -> list[Alignment]:
    """Tokenize ``texts`` and map every character to its token (see the module docstring)."""
    if method == "auto":
        method = "offsets" if supports_offsets(tokenizer) else "words"
    if method == "offsets":
        return align_with_offsets(tokenizer, texts)
    if method == "words":
        return align_by_words(tokenizer, texts)
    raise ValueError(f"unknown alignment method {method!r}")
