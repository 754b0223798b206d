"""Reading and writing corpus shards (``*.jsonl.zst``), the format later stages read."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Iterable, Iterator

import zstandard

from pipeline.runs import atomic_file

SPLITS = ("train", "valid")


def list_shards(corpus_dir: str | Path, split: str) -> list[Path]:
    """Complete shard files of ``split``, sorted (temporary files are never listed)."""
    d = Path(corpus_dir) / split
    return sorted(p for p in d.glob("shard-*.jsonl.zst") if not p.name.startswith("."))


def iter_shard(path: str | Path) -> Iterator[dict]:
    with open(path, "rb") as fh:
        reader = zstandard.ZstdDecompressor().stream_reader(fh)
        for line in io.TextIOWrapper(reader, encoding="utf-8"):
            if line.strip():
                yield json.loads(line)


def iter_corpus(corpus_dir: str | Path, split: str) -> Iterator[dict]:
    for p in list_shards(corpus_dir, split):
        yield from iter_shard(p)


def write_shard(path: str | Path, records: Iterable[dict], level: int = 3) -> int:
    """Write records to ``path`` atomically (temporary name, then rename). Returns the count."""
    n = 0
    with atomic_file(path, "wb") as fh:
        cctx = zstandard.ZstdCompressor(level=level)
        with cctx.stream_writer(fh, closefd=False) as w:
            for r in records:
                w.write((json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8"))
                n += 1
    return n


class RejectedWriter:
    """Streams rejected documents to ``<folder>/<name>.jsonl.zst``, one file per filter/reason.

    Used inside a folder that is published atomically as a whole (the corpus build folder), so
    the files are written directly. Texts are cut to ``keep_chars`` characters (0: no text).
    """

    def __init__(self, folder: str | Path, keep_chars: int = 2000, level: int = 3):
        self.folder = Path(folder)
        self.keep_chars = keep_chars
        self.level = level
        self._files: dict[str, tuple] = {}
        self.counts: dict[str, int] = {}

    def write(self, name: str, record: dict) -> None:
        if name not in self._files:
            self.folder.mkdir(parents=True, exist_ok=True)
            fh = open(self.folder / f"{name}.jsonl.zst", "wb")
            w = zstandard.ZstdCompressor(level=self.level).stream_writer(fh, closefd=True)
            self._files[name] = (fh, w)
            self.counts[name] = 0
        text = record.get("text")
        if isinstance(text, str):
            record = dict(record)
            if self.keep_chars <= 0:
                record.pop("text")
            elif len(text) > self.keep_chars:
                record["text"] = text[: self.keep_chars]
                record["text_truncated_from"] = len(text)
        self._files[name][1].write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        self.counts[name] += 1

    def close(self) -> None:
        for fh, w in self._files.values():
            w.close()
        self._files.clear()


def iter_rejected(corpus_dir: str | Path, name: str) -> Iterator[dict]:
    """Records of ``rejected/<name>.jsonl.zst`` (empty if that file does not exist)."""
    p = Path(corpus_dir) / "rejected" / f"{name}.jsonl.zst"
    if p.exists():
        yield from iter_shard(p)
