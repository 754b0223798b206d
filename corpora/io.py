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
_READ = 1 << 16   # compressed bytes read from the file at a time
_FEED = 64        # ... and fed to the decoder at a time: one feed expands to at most ~2 MiB (RLE blocks)
_OUT = 1 << 20    # decoded bytes produced per refill (then the reader consumes them)


class TruncatedStream(EOFError):
    """A compressed stream ends inside a frame: the file was cut (a copy or download stopped)."""


class CorruptStream(OSError):
    """Compressed bytes that do not decode (damaged data, a checksum mismatch, not zstd)."""


class RefillReader(io.RawIOBase):
    """A raw, read-only stream that serves bytes a subclass decodes piece by piece into ``_buf``
    (:meth:`_refill`); wrap in ``io.BufferedReader``. Closing it closes the underlying ``_raw``."""

    _raw: io.IOBase
    _buf: bytes = b""   # decoded bytes (those from ``_pos`` on not handed out yet)
    _pos: int = 0

    def readable(self) -> bool:
        return True

    def _refill(self) -> bool:
        """Decode the next piece into ``_buf`` (may be empty) and reset ``_pos``; False at the end."""
        raise NotImplementedError

    def readinto(self, b) -> int:
        while self._pos >= len(self._buf):
            if not self._refill():
                return 0
        n = min(len(b), len(self._buf) - self._pos)
        b[:n] = self._buf[self._pos:self._pos + n]
        self._pos += n
        return n

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


class ZstdReader(RefillReader):
    """Raw, read-only decompressed view of a zstd file; wrap in ``io.BufferedReader``.

    Raises :class:`TruncatedStream` when the file ends inside a frame and :class:`CorruptStream`
    when libzstd rejects the data (including a content-checksum mismatch). Reads across frames.
    Memory stays bounded for any compression ratio: input is fed in small pieces and at most
    about ``_OUT`` decoded bytes (plus one piece's output) are held, so a 100 MB line that
    compresses to a few KB is still read in bounded pieces.
    """

    def __init__(self, raw, name: str = ""):
        self._raw = raw
        self.name = name
        self._dctx = zstandard.ZstdDecompressor()
        self._dobj = None           # decompressor of the current frame (None between frames)
        self._pending = b""         # compressed bytes read but not fed yet
        self._off = 0
        self._buf = b""             # decoded bytes not handed out yet
        self._pos = 0
        self.compressed_read = 0

    def _feed(self, data: bytes) -> list[bytes]:
        out = []
        while data:
            if self._dobj is None:
                self._dobj = self._dctx.decompressobj()
            try:
                out.append(self._dobj.decompress(data))
            except zstandard.ZstdError as e:
                at = self.compressed_read - len(self._pending) + self._off
                raise CorruptStream(f"corrupt zstd data near compressed byte {at}: {e}") from None
            if self._dobj.eof:
                data = self._dobj.unused_data
                self._dobj = None
            else:
                data = b""
        return out

    def _refill(self) -> bool:
        """Decode the next piece into ``_buf``; False at the end of a complete stream."""
        if self._off >= len(self._pending):
            self._pending = self._raw.read(_READ)
            self._off = 0
            if not self._pending:
                if self._dobj is not None:
                    raise TruncatedStream(
                        f"the zstd stream ends inside a frame after {self.compressed_read} compressed bytes")
                return False
            self.compressed_read += len(self._pending)
        out: list[bytes] = []
        size = 0
        while self._off < len(self._pending) and size < _OUT:
            piece = self._pending[self._off:self._off + _FEED]
            self._off += len(piece)
            for o in self._feed(piece):
                out.append(o)
                size += len(o)
        self._buf = b"".join(out)
        self._pos = 0
        return True


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
