"""Readers: turn a source into a stream of raw documents, in a deterministic order.

Each reader yields :class:`RawDoc` (text + where it came from) or :class:`Quarantine` (a piece
of input that cannot be a document, with the reason). Nothing is dropped silently: the builder
writes every quarantined item to ``rejected/reader.jsonl.zst`` and counts it per reason.

Bad input, and what happens:

* missing path, a glob that matches nothing, an empty folder -> ``UserError`` naming the path;
* a jsonl file whose records lack ``text_field`` (from the first record on) -> ``UserError``
  naming the file, the line and the fields present; a parquet file without the column ->
  ``UserError`` with the columns present;
* invalid UTF-8, NUL bytes, a line longer than ``max_line_bytes``, a malformed JSON line, a record
  whose field is missing later in a file or is not a string -> that line is quarantined;
* a binary file (many control bytes or invalid UTF-8 in its first 8 KiB, or an unreadable
  compressed stream / parquet file) -> the file is quarantined;
* an empty file -> nothing to read; counted as ``empty_files`` and logged.

Long lines are read in bounded pieces: at most ``max_line_bytes`` (+1) bytes of one line are ever
held in memory, so a 100 MB single-line file costs ``max_line_bytes`` of memory, not 100 MB.
Compressed variants: ``.gz`` and ``.zst`` for text and jsonl (parquet compresses internally).
"""

from __future__ import annotations

import glob as globmod
import gzip
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

from pipeline.errors import UserError

from corpora.config import SourceConfig

SNIFF_BYTES = 8192
_SKIP_PIECE = 1 << 20


@dataclass
class RawDoc:
    text: str
    where: str
    heldout_task: Optional[str] = None  # corpora.heldout task of a labelled built-in source
    nbytes: int = 0
    prep: Optional[str] = None  # a corpora.builtin.PREP step the worker applies first (e.g. strip POS tags)


@dataclass
class Quarantine:
    where: str
    kind: str       # short reason key: invalid_utf8, nul_byte, binary_file, line_too_long, ...
    reason: str     # human-readable detail
    preview: str = ""


Item = Union[RawDoc, Quarantine]


class SourceCounters:
    """Per-source reader counters (files read, empty files, bytes)."""

    def __init__(self) -> None:
        self.files = 0
        self.empty_files = 0
        self.bytes = 0


# ---------------------------------------------------------------------------------------- files
def resolve_files(src: SourceConfig, name: str) -> list[Path]:
    """The sorted list of files of a text/jsonl/parquet source (``UserError`` if none)."""
    if src.glob:
        files = sorted(Path(p) for p in globmod.glob(src.glob, recursive=True) if Path(p).is_file())
        if not files:
            raise UserError(f"source '{name}': glob '{src.glob}' matches no file")
        return files
    p = Path(src.path)
    if not p.exists():
        raise UserError(f"source '{name}': path not found: {p}")
    if p.is_dir():
        files = sorted(
            f for f in p.rglob("*")
            if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts)
        )
        if not files:
            raise UserError(f"source '{name}': folder {p} contains no file")
        return files
    return [p]


def open_binary(path: Path) -> io.BufferedIOBase:
    """Open a file for binary reading, decompressing ``.gz`` / ``.zst`` transparently."""
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if suffix in (".zst", ".zstd"):
        import zstandard

        raw = open(path, "rb")
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))
    return open(path, "rb")


def _looks_binary(head: bytes) -> str | None:
    """A reason if the first bytes of a file look binary, else None."""
    if not head:
        return None
    ctrl = sum(1 for b in head if b < 9 or 13 < b < 27 or 27 < b < 32)
    if ctrl > 0.10 * len(head):
        return f"binary file: {ctrl / len(head):.0%} control/NUL bytes in the first {len(head)} bytes"
    text = head.decode("utf-8", errors="replace")
    nrep = text.count("\ufffd")
    if nrep > 0.30 * len(head):  # random bytes: about half invalid; text with a stray Latin-1 byte: few
        return f"binary file: {nrep} invalid UTF-8 sequences in the first {len(head)} bytes"
    return None


def iter_lines(path: Path, max_line_bytes: int, counters: SourceCounters) -> Iterator[tuple[int, Union[str, Quarantine]]]:
    """(line number, decoded line without newline | Quarantine) for every line of a file.

    Memory: at most ``max_line_bytes + 1`` bytes of a line are held; the rest of a longer line is
    read in 1 MiB pieces and discarded.
    """
    where0 = str(path)
    try:
        fh = open_binary(path)
    except OSError as e:
        raise UserError(f"{path}: cannot open: {e}") from None
    counters.files += 1
    with fh:
        try:
            head = fh.peek(SNIFF_BYTES)[:SNIFF_BYTES] if hasattr(fh, "peek") else b""
        except Exception as e:  # corrupt gzip/zstd header
            yield 0, Quarantine(where0, "binary_file", f"unreadable compressed file: {e}")
            return
        if not head:
            counters.empty_files += 1
            return
        reason = _looks_binary(head)
        if reason:
            yield 0, Quarantine(where0, "binary_file", reason, repr(head[:80]))
            return
        lineno = 0
        while True:
            try:
                line = fh.readline(max_line_bytes + 1)
            except Exception as e:  # corrupt compressed stream midway
                yield lineno + 1, Quarantine(f"{path}:{lineno + 1}", "binary_file", f"unreadable from here on: {e}")
                return
            if not line:
                return
            lineno += 1
            counters.bytes += len(line)
            where = f"{path}:{lineno}"
            if len(line) > max_line_bytes and not line.endswith(b"\n"):
                skipped = len(line)
                while True:  # discard the rest of the line in bounded pieces
                    piece = fh.readline(_SKIP_PIECE)
                    skipped += len(piece)
                    counters.bytes += len(piece)
                    if not piece or piece.endswith(b"\n"):
                        break
                yield lineno, Quarantine(where, "line_too_long",
                                         f"line of {skipped} bytes > max_line_bytes={max_line_bytes}",
                                         line[:200].decode("utf-8", errors="replace"))
                continue
            line = line.rstrip(b"\n").rstrip(b"\r")
            if lineno == 1 and line.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte-order mark
                line = line[3:]
            if b"\x00" in line:
                yield lineno, Quarantine(where, "nul_byte", "NUL byte at byte %d" % line.index(b"\x00"),
                                         line[:200].replace(b"\x00", b"\\0").decode("utf-8", errors="replace"))
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as e:
                yield lineno, Quarantine(where, "invalid_utf8", f"invalid UTF-8 at byte {e.start}: {e.reason}",
                                         line[:200].decode("utf-8", errors="replace"))
                continue
            yield lineno, text


# -------------------------------------------------------------------------------------- readers
def read_text(src: SourceConfig, name: str, max_line_bytes: int, counters: SourceCounters) -> Iterator[Item]:
    for path in resolve_files(src, name):
        if src.doc_sep == "line":
            for lineno, x in iter_lines(path, max_line_bytes, counters):
                if isinstance(x, Quarantine):
                    yield x
                elif x.strip():
                    yield RawDoc(x, f"{path}:{lineno}", nbytes=len(x.encode("utf-8")))
            continue
        buf: list[str] = []
        start = size = 0
        skipping = False  # inside a document already quarantined as too long
        for lineno, x in iter_lines(path, max_line_bytes, counters):
            if isinstance(x, Quarantine):
                yield x
                continue
            if not x.strip():  # a blank line ends the document
                if buf:
                    text = "\n".join(buf)
                    yield RawDoc(text, f"{path}:{start}", nbytes=len(text.encode("utf-8")))
                buf, size, skipping = [], 0, False
                continue
            if skipping:
                continue
            if not buf:
                start = lineno
            buf.append(x)
            size += len(x.encode("utf-8")) + 1
            if size > max_line_bytes:
                yield Quarantine(f"{path}:{start}", "line_too_long",
                                 f"document of more than max_line_bytes={max_line_bytes} bytes", buf[0][:200])
                buf, size, skipping = [], 0, True
        if buf:
            text = "\n".join(buf)
            yield RawDoc(text, f"{path}:{start}", nbytes=len(text.encode("utf-8")))


def _get_field(rec: dict, field: str):
    cur = rec
    for part in field.split("."):
        if not isinstance(cur, dict) or part not in cur:
            raise KeyError(part)
        cur = cur[part]
    return cur


def read_jsonl(src: SourceConfig, name: str, max_line_bytes: int, counters: SourceCounters) -> Iterator[Item]:
    for path in resolve_files(src, name):
        seen_field = False
        for lineno, x in iter_lines(path, max_line_bytes, counters):
            if isinstance(x, Quarantine):
                yield x
                continue
            if not x.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(x)
            except json.JSONDecodeError as e:
                yield Quarantine(where, "malformed_json", f"malformed JSON: {e}", x[:200])
                continue
            if not isinstance(rec, dict):
                yield Quarantine(where, "malformed_json", f"a JSON {type(rec).__name__}, not an object", x[:200])
                continue
            try:
                text = _get_field(rec, src.text_field)
            except KeyError:
                if not seen_field:
                    raise UserError(
                        f"{where}: record has no field '{src.text_field}' (fields: {', '.join(sorted(rec)) or 'none'}); "
                        f"set text_field in source '{name}'"
                    ) from None
                yield Quarantine(where, "missing_field", f"no field '{src.text_field}'", x[:200])
                continue
            seen_field = True
            if not isinstance(text, str):
                yield Quarantine(where, "not_string", f"field '{src.text_field}' is {type(text).__name__}, not a string", x[:200])
                continue
            if "\x00" in text:
                yield Quarantine(where, "nul_byte", "NUL character in the text field", text[:200].replace("\x00", "\\0"))
                continue
            if text.strip():
                yield RawDoc(text, where, nbytes=len(text.encode("utf-8")))


def _text_item(text: str, where: str, max_line_bytes: int, counters: SourceCounters) -> Item | None:
    """A record's text field: counted, then a ``RawDoc``, a ``Quarantine`` (too long, NUL) or ``None`` (blank)."""
    nb = len(text.encode("utf-8"))
    counters.bytes += nb
    if nb > max_line_bytes:
        return Quarantine(where, "line_too_long", f"text of {nb} bytes > max_line_bytes={max_line_bytes}", text[:200])
    if "\x00" in text:
        return Quarantine(where, "nul_byte", "NUL character in the text", text[:200].replace("\x00", "\\0"))
    if text.strip():
        return RawDoc(text, where, nbytes=nb)
    return None


def read_parquet(src: SourceConfig, name: str, max_line_bytes: int, counters: SourceCounters) -> Iterator[Item]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    top = src.text_field.split(".")[0]
    for path in resolve_files(src, name):
        if path.suffix.lower() in (".gz", ".zst", ".zstd"):
            raise UserError(f"{path}: parquet files are compressed internally; do not wrap them in .gz/.zst")
        counters.files += 1
        try:
            pf = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as e:
            yield Quarantine(str(path), "binary_file", f"not a readable parquet file: {e}")
            continue
        cols = pf.schema_arrow.names
        if top not in cols:
            raise UserError(f"{path}: no column '{top}' (columns: {', '.join(cols)}); set text_field in source '{name}'")
        if pf.metadata.num_rows == 0:
            counters.empty_files += 1
            continue
        row = 0
        for batch in pf.iter_batches(batch_size=1024, columns=[top]):
            for value in batch.column(0).to_pylist():
                row += 1
                where = f"{path}:row {row}"
                if "." in src.text_field:
                    try:
                        value = _get_field({top: value}, src.text_field)
                    except KeyError:
                        yield Quarantine(where, "missing_field", f"no field '{src.text_field}'")
                        continue
                if value is None:
                    yield Quarantine(where, "not_string", f"'{src.text_field}' is null")
                    continue
                if not isinstance(value, str):
                    yield Quarantine(where, "not_string", f"'{src.text_field}' is {type(value).__name__}, not a string")
                    continue
                item = _text_item(value, where, max_line_bytes, counters)
                if item is not None:
                    yield item


def read_hf(src: SourceConfig, name: str, max_line_bytes: int, counters: SourceCounters) -> Iterator[Item]:
    """A Hugging Face dataset through ``datasets.load_dataset(..., streaming=True)``.

    ``name`` is a hub dataset id, or a packaged builder (``json``, ``parquet``, ``text``) with
    ``data_files`` for local files; with ``HF_DATASETS_OFFLINE=1`` only local data and the cache work.
    """
    import datasets

    kwargs = {"split": src.split, "streaming": True}
    if src.data_files:
        kwargs["data_files"] = list(src.data_files)
    try:
        ds = datasets.load_dataset(src.name, src.config or None, **kwargs)
    except Exception as e:  # the hub is unreachable, the name or split is wrong, ...
        raise UserError(f"source '{name}': cannot load Hugging Face dataset '{src.name}'"
                        f"{' config ' + src.config if src.config else ''} split '{src.split}': "
                        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    counters.files += 1
    seen_field = False
    for i, rec in enumerate(ds):
        where = f"hf:{src.name}:{src.split}:{i}"
        try:
            text = _get_field(rec, src.text_field)
        except KeyError:
            if not seen_field:
                raise UserError(f"{where}: record has no field '{src.text_field}' (fields: {', '.join(sorted(rec))}); "
                                f"set text_field in source '{name}'") from None
            yield Quarantine(where, "missing_field", f"no field '{src.text_field}'")
            continue
        seen_field = True
        if not isinstance(text, str):
            yield Quarantine(where, "not_string", f"field '{src.text_field}' is {type(text).__name__}, not a string")
            continue
        item = _text_item(text, where, max_line_bytes, counters)
        if item is not None:
            yield item


def read_source(src: SourceConfig, name: str, max_line_bytes: int, counters: SourceCounters) -> Iterator[Item]:
    if src.type == "text":
        return read_text(src, name, max_line_bytes, counters)
    if src.type == "jsonl":
        return read_jsonl(src, name, max_line_bytes, counters)
    if src.type == "parquet":
        return read_parquet(src, name, max_line_bytes, counters)
    if src.type == "hf":
        return read_hf(src, name, max_line_bytes, counters)
    from corpora.builtin import read_builtin

    return read_builtin(src.builtin, counters)
