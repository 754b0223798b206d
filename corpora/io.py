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
