"""Reading and writing corpus shards (``*.jsonl.zst``), the format later stages read.

zstd streams are read with :class:`ZstdReader`, which, unlike ``zstandard``'s ``stream_reader``,
never ends quietly on a damaged file: a stream that stops inside a frame (a truncated file)
raises :class:`TruncatedStream`, corrupt bytes raise :class:`CorruptStream` (and, for frames
written with a content checksum, a mismatch is detected by libzstd at the end of the frame).
Concatenated frames (``zstd -T``, ``cat a.zst b.zst``) are read across. Every ``.jsonl.zst``
this stage writes carries a content checksum (``write_checksum=True``).
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from pathlib import Path
from typing import Iterable, Iterator

import zstandard

from pipeline.errors import UserError
from pipeline.runs import atomic_file

SPLITS = ("train", "valid")
_IN_CHUNK = 1 << 14  # compressed bytes fed per step (bounds the output of one step on real text)


class TruncatedStream(EOFError):
    """A compressed stream ends inside a frame: the file was cut (a copy or download stopped)."""


class CorruptStream(OSError):
    """Compressed bytes that do not decode (damaged data, a checksum mismatch, not zstd)."""


class ZstdReader(io.RawIOBase):
    """Raw, read-only decompressed view of a zstd file; wrap in ``io.BufferedReader``.

    Raises :class:`TruncatedStream` when the file ends inside a frame and :class:`CorruptStream`
    when libzstd rejects the data (including a content-checksum mismatch). Reads across frames.
    """

    def __init__(self, raw, name: str = ""):
        self._raw = raw
        self.name = name
        self._dctx = zstandard.ZstdDecompressor()
        self._dobj = None           # decompressor of the current frame (None between frames)
        self._buf = b""
        self._pos = 0
        self.compressed_read = 0

    def readable(self) -> bool:
        return True

    def _feed(self, data: bytes) -> None:
        while data:
            if self._dobj is None:
                self._dobj = self._dctx.decompressobj()
            try:
                out = self._dobj.decompress(data)
            except zstandard.ZstdError as e:
                raise CorruptStream(f"corrupt zstd data near compressed byte {self.compressed_read}: {e}") from None
            if out:
                self._buf = self._buf[self._pos:] + out if self._pos < len(self._buf) else out
                self._pos = 0
            if self._dobj.eof:
                data = self._dobj.unused_data
                self._dobj = None
            else:
                data = b""

    def readinto(self, b) -> int:
        while self._pos >= len(self._buf):
            chunk = self._raw.read(_IN_CHUNK)
            if not chunk:
                if self._dobj is not None:
                    raise TruncatedStream(
                        f"the zstd stream ends inside a frame after {self.compressed_read} compressed bytes")
                return 0
            self.compressed_read += len(chunk)
            self._feed(chunk)
        n = min(len(b), len(self._buf) - self._pos)
        b[:n] = self._buf[self._pos:self._pos + n]
        self._pos += n
        return n

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


def open_zstd(path: str | Path) -> io.BufferedReader:
    """A buffered, decompressed reader of a ``.zst`` file (see :class:`ZstdReader`)."""
    return io.BufferedReader(ZstdReader(open(path, "rb"), str(path)))


def stream_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean a compressed input is damaged (zstd, gzip)."""
    return (TruncatedStream, CorruptStream, EOFError, gzip.BadGzipFile, zlib.error)


def list_shards(corpus_dir: str | Path, split: str) -> list[Path]:
    """Complete shard files of ``split``, sorted (temporary files are never listed)."""
    d = Path(corpus_dir) / split
    return sorted(p for p in d.glob("shard-*.jsonl.zst") if not p.name.startswith("."))


def iter_shard(path: str | Path) -> Iterator[dict]:
    """Records of a ``.jsonl.zst`` file this stage wrote.

    A truncated or corrupt file (checksum mismatch) is a ``UserError`` naming the file and the
    last line read, never a shorter corpus.
    """
    lineno = 0
    with open_zstd(path) as fh:
        try:
            for line in io.TextIOWrapper(fh, encoding="utf-8"):
                lineno += 1
                if line.strip():
                    yield json.loads(line)
        except (TruncatedStream, CorruptStream) as e:
            raise UserError(f"{path}: damaged after line {lineno}: {e}; rebuild it "
                            "(python -m corpora build ...)") from None


def iter_corpus(corpus_dir: str | Path, split: str) -> Iterator[dict]:
    for p in list_shards(corpus_dir, split):
        yield from iter_shard(p)


def _compressor(level: int) -> zstandard.ZstdCompressor:
    return zstandard.ZstdCompressor(level=level, write_checksum=True)


def write_shard(path: str | Path, records: Iterable[dict], level: int = 3) -> int:
    """Write records to ``path`` atomically (temporary name, then rename). Returns the count.

    The zstd frame carries a content checksum, verified whenever the shard is read."""
    n = 0
    with atomic_file(path, "wb") as fh:
        with _compressor(level).stream_writer(fh, closefd=False) as w:
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
            w = _compressor(self.level).stream_writer(fh, closefd=True)
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
