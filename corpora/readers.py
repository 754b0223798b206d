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
  parquet file) -> the file is quarantined (``binary_file``);
* text in another encoding (a UTF-16/32 byte-order mark or NUL pattern; GB18030/GBK or Big5 that
  decodes cleanly into common Chinese characters) -> the file is quarantined as ``wrong_encoding``
  with the fix (``iconv -f ENC -t UTF-8``, or ``encoding: ENC`` on the source, which reads it);
* a compressed file that ends inside a frame (cut copy/download) -> quarantined as ``truncated_file``
  from the line reached on (the complete lines before are kept); corrupt compressed data or a
  zstd/gzip checksum mismatch -> ``corrupt_file`` from the line reached on;
* a parquet row group that does not decode -> ``corrupt_file`` from the row reached in that row
  group; the rows of the other row groups are read;
* an empty file -> nothing to read; counted as ``empty_files`` and logged.

Long lines are read in bounded pieces: at most ``max_line_bytes`` (+1) bytes of one line are ever
held in memory, so a 100 MB single-line file costs ``max_line_bytes`` of memory, not 100 MB.
Compressed variants: ``.gz`` and ``.zst`` for text and jsonl (parquet compresses internally).
"""

from __future__ import annotations

import codecs
import glob as globmod
import gzip
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

from pipeline.errors import UserError

from corpora.config import SourceConfig
from corpora.io import RefillReader, open_zstd, stream_errors

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
    """Open a file for binary reading, decompressing ``.gz`` / ``.zst`` transparently.

    A damaged ``.zst`` raises ``corpora.io.TruncatedStream`` / ``CorruptStream`` while it is read
    (``zstandard``'s own stream reader would end quietly at the cut)."""
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if suffix in (".zst", ".zstd"):
        return open_zstd(path)
    return open(path, "rb")


def _undecodable(e: UnicodeError) -> tuple[str, int]:
    """Decode error handler: each undecodable byte becomes a 0xFF byte in the UTF-8 output."""
    if not isinstance(e, UnicodeDecodeError):
        raise e
    return "\udcff" * (e.end - e.start), e.end


codecs.register_error("corpora.undecodable", _undecodable)


class _Transcoder(RefillReader):
    """Decodes a byte stream in ``encoding`` and re-encodes it as UTF-8, incrementally.

    Undecodable bytes become invalid UTF-8 (0xFF), so the line they are in is quarantined as
    ``invalid_utf8`` like any other bad line."""

    def __init__(self, raw: io.BufferedIOBase, encoding: str):
        self._raw = raw
        self._dec = codecs.getincrementaldecoder(encoding)(errors="corpora.undecodable")
        self._buf = b""
        self._pos = 0
        self._eof = False

    def _refill(self) -> bool:
        if self._eof:
            return False
        chunk = self._raw.read(1 << 16)
        self._eof = not chunk
        self._buf = self._dec.decode(chunk, final=self._eof).encode("utf-8", errors="surrogateescape")
        self._pos = 0
        return True


def open_text_bytes(path: Path, encoding: str = "utf-8") -> io.BufferedIOBase:
    """``open_binary``, transcoded to UTF-8 when the source declares another ``encoding``."""
    fh = open_binary(path)
    if codecs.lookup(encoding).name == "utf-8":
        return fh
    return io.BufferedReader(_Transcoder(fh, encoding))


# The most frequent Chinese characters (simplified and traditional forms): text decoded with the
# right codec is full of them, text decoded with a wrong one almost never.
_COMMON_HAN = set(
    "的一是不了在人有我他这个们中来上大为和国地到以说时要就出会可也你对生能而子那得于着下自之年过发后"
    "作里用道行所然家种事成方多经么去法学如都同现当没动面起看定天分还进好小部其些主样理心她本前开但因"
    "只从想实日军者意无力它与长把机十民第公此已工使情明性知全三又关点正业外将两高间由问很最重并物手应"
    "战向头文体政美相见被利什二等产或新己制身果加西月话合回特代内信表化老给世位次度门任常先海通教儿原"
    "東声提立及比员解水名真论处走义各入几口认条平系气题活更别打女变四神总何电数安少报才结反受目太量再"
    "這個們國來說時為會對發後裡過還進樣現當沒動從開實義長體經學問點頭關業將兩間們與無種見還爲號東電話"
)
_CANDIDATES = (("GB18030", 1), ("BIG5", 1), ("UTF-16LE", 2), ("UTF-16BE", 2))


def _common_share(text: str) -> float:
    """Share of the non-ASCII characters of ``text`` that are frequent Chinese characters."""
    non_ascii = [c for c in text if ord(c) > 127]
    return sum(c in _COMMON_HAN for c in non_ascii) / len(non_ascii) if non_ascii else 0.0


def _decode_head(head: bytes, encoding: str, unit: int = 1) -> str | None:
    """``head`` decoded strictly, allowing a character cut at the end of the sniffed bytes."""
    head = head[: len(head) - len(head) % unit]
    for cut in range(0, 4, unit):
        try:
            return head[: len(head) - cut].decode(encoding)
        except UnicodeDecodeError:
            continue
    return None


def guess_encoding(head: bytes) -> str | None:
    """The encoding of a file's first bytes when it is text but not UTF-8, else None.

    UTF-32/16 by byte-order mark, or by NUL bytes in every 4th/2nd position; otherwise GB18030
    (a superset of GBK and GB2312), Big5 or BOM-less UTF-16, when the head decodes strictly and at
    least 15 % of its non-ASCII characters (more than as UTF-8) are among the most frequent Chinese
    characters (a heuristic: Shift-JIS, EUC-KR and other codecs are not recognised).
    iconv names are returned (``UTF-16LE``, ``GB18030``, ``BIG5``)."""
    boms = [(codecs.BOM_UTF32_LE, "UTF-32LE"), (codecs.BOM_UTF32_BE, "UTF-32BE"),
            (codecs.BOM_UTF16_LE, "UTF-16LE"), (codecs.BOM_UTF16_BE, "UTF-16BE")]
    for bom, name in boms:
        if head.startswith(bom):
            return name
    if len(head) >= 8 and head.count(0) > len(head) // 8:
        def zero_share(i: int, step: int) -> float:
            part = head[i::step]
            return part.count(0) / max(len(part), 1)

        for name, unit, zeros in (("UTF-32LE", 4, (2, 3)), ("UTF-32BE", 4, (0, 1)),
                                  ("UTF-16LE", 2, (1,)), ("UTF-16BE", 2, (0,))):
            if all(zero_share(i, unit) > 0.9 for i in zeros) or (unit == 2 and zero_share(zeros[0], 2) > 0.3):
                text = _decode_head(head, name.lower(), unit)
                if text is not None and "\x00" not in text:
                    return name
    utf8 = _common_share(head.decode("utf-8", errors="replace"))
    best, best_share = None, max(0.15, utf8)
    for enc, unit in _CANDIDATES:
        text = _decode_head(head, enc.lower(), unit)
        if text is not None:
            share = _common_share(text)
            if share > best_share:
                best, best_share = enc, share
    return best


def _is_utf8(head: bytes) -> bool:
    return _decode_head(head, "utf-8") is not None


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


def iter_lines(path: Path, max_line_bytes: int, counters: SourceCounters,
               encoding: str = "utf-8") -> Iterator[tuple[int, Union[str, Quarantine]]]:
    """(line number, decoded line without newline | Quarantine) for every line of a file.

    Memory: at most ``max_line_bytes + 1`` bytes of a line are held; the rest of a longer line is
    read in 1 MiB pieces and discarded. ``encoding``: the file's encoding (transcoded to UTF-8).
    """
    where0 = str(path)
    try:
        fh = open_text_bytes(path, encoding)
    except OSError as e:
        raise UserError(f"{path}: cannot open: {e}") from None
    counters.files += 1
    transcoded = codecs.lookup(encoding).name != "utf-8"
    with fh:
        try:
            head = fh.peek(SNIFF_BYTES)[:SNIFF_BYTES] if hasattr(fh, "peek") else b""
        except Exception as e:  # not gzip/zstd, corrupt first block, or a file cut before its first block
            yield 0, _damaged(path, 1, e)
            return
        if not head:
            counters.empty_files += 1
            return
        enc = None if transcoded or (_is_utf8(head) and b"\x00" not in head) else guess_encoding(head)
        if enc:
            yield 0, Quarantine(where0, "wrong_encoding",
                                f"text in {enc}, not UTF-8: convert it (iconv -f {enc} -t UTF-8 FILE > FILE.utf8) "
                                f"or set encoding: {enc.lower()} on the source",
                                repr(head[:80]))
            return
        reason = _looks_binary(head)
        if reason:
            yield 0, Quarantine(where0, "binary_file", reason, repr(head[:80]))
            return
        lineno = 0
        while True:
            try:
                line = fh.readline(max_line_bytes + 1)
            except (*stream_errors(), OSError) as e:  # truncated or corrupt compressed stream midway
                yield lineno + 1, _damaged(path, lineno + 1, e)
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
                yield lineno, Quarantine(where, "invalid_utf8", f"not valid {encoding} at character {e.start}"
                                         if transcoded else f"invalid UTF-8 at byte {e.start}: {e.reason}",
                                         line[:200].decode("utf-8", errors="replace"))
                continue
            yield lineno, text


def _damaged(path: Path, line: int, e: BaseException) -> Quarantine:
    """The quarantine of a compressed file that stops decoding before line ``line``."""
    kept = f"lines 1-{line - 1} were read" if line > 1 else "nothing could be read"
    if isinstance(e, EOFError):  # corpora.io.TruncatedStream, gzip's "ended before the end-of-stream marker"
        return Quarantine(f"{path}:{line}", "truncated_file",
                          f"truncated compressed file: {e}; {kept}, the rest is lost: copy or download it again")
    return Quarantine(f"{path}:{line}", "corrupt_file", f"corrupt compressed file: {e}; {kept}")


# -------------------------------------------------------------------------------------- readers
def read_text(src: SourceConfig, name: str, max_line_bytes: int, counters: SourceCounters) -> Iterator[Item]:
    for path in resolve_files(src, name):
        if src.doc_sep == "line":
            for lineno, x in iter_lines(path, max_line_bytes, counters, src.encoding):
                if isinstance(x, Quarantine):
                    yield x
                elif x.strip():
                    yield RawDoc(x, f"{path}:{lineno}", nbytes=len(x.encode("utf-8")))
            continue
        buf: list[str] = []
        start = size = 0
        skipping = False  # inside a document already quarantined as too long
        for lineno, x in iter_lines(path, max_line_bytes, counters, src.encoding):
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
        for lineno, x in iter_lines(path, max_line_bytes, counters, src.encoding):
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
        for rg in range(pf.num_row_groups):
            start = row
            try:
                for batch in pf.iter_batches(batch_size=1024, columns=[top], row_groups=[rg]):
                    for value in batch.column(0).to_pylist():
                        row += 1
                        item = _parquet_item(value, f"{path}:row {row}", src, top, max_line_bytes, counters)
                        if item is not None:
                            yield item
            except (pa.ArrowException, OSError) as e:  # a corrupt page: this row group stops decoding
                n = pf.metadata.row_group(rg).num_rows
                yield Quarantine(f"{path}:row {row + 1}", "corrupt_file",
                                 f"row group {rg} does not decode from row {row + 1} on ({row - start} of its {n} rows "
                                 f"read, the other row groups are read): {type(e).__name__}: {' '.join(str(e).split())[:200]}")
                row = start + n


def _parquet_item(value, where: str, src: SourceConfig, top: str, max_line_bytes: int,
                  counters: SourceCounters) -> Item | None:
    if "." in src.text_field:
        try:
            value = _get_field({top: value}, src.text_field)
        except KeyError:
            return Quarantine(where, "missing_field", f"no field '{src.text_field}'")
    if value is None:
        return Quarantine(where, "not_string", f"'{src.text_field}' is null")
    if not isinstance(value, str):
        return Quarantine(where, "not_string", f"'{src.text_field}' is {type(value).__name__}, not a string")
    return _text_item(value, where, max_line_bytes, counters)


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

    return read_builtin(src.builtin, counters, root=src.path or None)  # path: where a Debian package was unpacked
