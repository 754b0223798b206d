"""Quality filters that work for Chinese and for alphabetic text.

Each filter is a small object with a ``name`` and ``check(text, lang) -> reason | None``; the
builder runs them in the order of ``FILTER_NAMES`` and writes the first rejection, with the
filter's name and reason, to ``rejected/<name>.jsonl.zst``.

* ``mojibake``   — UTF-8 text that was decoded as GBK/GB18030 (``今天天气`` read as ``浠婂ぉ澶╂皵``,
                   the common Chinese mojibake; it would pass as ``zh``): detected by round trip
                   (ftfy's idea; ftfy itself only knows Latin-script codecs): a run of non-ASCII
                   characters that re-encodes to GB18030 bytes forming valid UTF-8 with CJK
                   characters is mojibake. Rejected when such runs cover more than
                   ``max_gbk_mojibake_share`` of the non-ASCII characters (and at least 4). Real
                   Chinese almost never round-trips (its GB18030 bytes are invalid UTF-8). Not
                   repaired: the decoding may have lost bytes, and the rejected text stays for audit.
* ``language``   — keep only ``filters.keep_langs``.
* ``length``     — ``min_chars`` <= characters <= ``max_chars``.
* ``letters``    — share of letters (CJK characters or alphabetic letters) among non-space
                   characters >= ``min_letter_share`` (rejects tables of numbers, code, symbol soup).
* ``repetition`` — Gopher-style (Rae et al. 2021) repetition checks: share of duplicated lines;
                   share of characters covered by the most frequent n-gram (n in ``top_ngram``);
                   share of characters covered by n-grams that occur more than once (n in
                   ``dup_ngram``). Units are words for alphabetic text and characters for CJK text
                   (Chinese has no spaces); for CJK characters n is multiplied by ``cjk_ngram_scale``
                   (2: a Chinese word is about 1.5-2 characters) and Gopher's word thresholds are
                   reused, which is a choice, not a published value. Docs with fewer than
                   ``repetition_min_units`` units skip the n-gram checks.
* ``garbage``    — U+FFFD share, mojibake sequences (UTF-8 decoded as Latin-1/cp1252 such as
                   "Ã©", "â€™"; GBK/UTF-8 mix-ups such as "锟斤拷", "烫烫烫"), the longest run of
                   symbol characters and the share of symbol characters (Unicode category S*).
"""

from __future__ import annotations

import re
from collections import Counter

from corpora.config import FiltersConfig

FILTER_NAMES = ("mojibake", "language", "length", "letters", "repetition", "garbage")

_LETTER_RE = re.compile(r"[^\W\d_]")
_NONSPACE_RE = re.compile(r"\S")
_WORD_RE = re.compile(r"\w+")
_CJK_RE = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]")
_MOJIBAKE_RE = re.compile(
    "[\u00c2-\u00f4][\u0080-\u00bf\u2018-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a\u20ac\u2122\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc]"
    "|锟斤拷|烫烫烫|屯屯屯|ï»¿"
)
# symbols: Unicode S* categories plus ASCII punctuation that forms "----" / "####" runs
_SYMBOL_RE = re.compile(
    "[" + re.escape("-=_*#~+^|<>/\\@$%&`") + "\u2190-\u2bff\u2500-\u257f\u25a0-\u25ff\u2600-\u27bf\U0001f000-\U0001faff]"
)


def _units(text: str, lang: str):
    """(units, is_cjk): words for alphabetic text, characters (a str without spaces) for CJK text."""
    if lang in ("zh", "yue") or len(_CJK_RE.findall(text[:2000])) > 0.3 * min(len(text), 2000):
        return "".join(text.split()), True
    return _WORD_RE.findall(text), False


class Filter:
    name = ""

    def __init__(self, cfg: FiltersConfig):
        self.cfg = cfg

    def check(self, text: str, lang: str) -> str | None:  # pragma: no cover - interface
        raise NotImplementedError


_NON_ASCII_RUN_RE = re.compile(r"[^\x00-\x7f\ufffd]{2,}")


def gbk_mojibake(text: str, sample: int = 4000) -> tuple[int, int, str]:
    """(mojibake characters, non-ASCII characters, first repaired run) in ``text[:sample]``.

    A run of non-ASCII characters (U+FFFD, left where the wrong decoding failed, ends a run) is
    mojibake when its GB18030 bytes, minus at most 2 leading and 3 trailing bytes of sequences cut
    by the wrong decoding, are valid UTF-8 with at least half CJK characters (at least 2 of them,
    4 when bytes had to be trimmed)."""
    moj = total = 0
    example = ""
    for m in _NON_ASCII_RUN_RE.finditer(text[:sample]):
        run = m.group()
        total += len(run)
        try:
            raw = run.encode("gb18030")
        except UnicodeEncodeError:
            continue
        for lead in range(3):
            part = raw[lead:]
            try:
                fixed, cut = part.decode("utf-8"), 0
            except UnicodeDecodeError as e:
                cut = len(part) - e.start
                if cut > 3:  # invalid before the last 3 bytes: not UTF-8 with this start
                    continue
                fixed = part[: e.start].decode("utf-8")
            cjk = len(_CJK_RE.findall(fixed))
            # a trimmed match needs a longer run: short runs of real text match by chance
            if fixed != run and cjk * 2 >= len(fixed) and cjk >= (2 if lead + cut == 0 else 4):
                moj += len(run)
                example = example or fixed
            break
    return moj, total, example


class MojibakeFilter(Filter):
    name = "mojibake"

    def check(self, text, lang):
        moj, total, example = gbk_mojibake(text)
        if moj >= 4 and moj > self.cfg.max_gbk_mojibake_share * total:
            return (f"UTF-8 decoded as GBK: {moj} of {total} non-ASCII characters round-trip "
                    f"(e.g. {example[:20]!r})")
        return None


class LanguageFilter(Filter):
    name = "language"

    def check(self, text, lang):
        if self.cfg.keep_langs and lang not in self.cfg.keep_langs:
            return f"lang={lang} not in {self.cfg.keep_langs}"
        return None


class LengthFilter(Filter):
    name = "length"

    def check(self, text, lang):
        n = len(text)
        if n < self.cfg.min_chars:
            return f"{n} chars < min_chars={self.cfg.min_chars}"
        if self.cfg.max_chars and n > self.cfg.max_chars:
            return f"{n} chars > max_chars={self.cfg.max_chars}"
        return None


class LetterShareFilter(Filter):
    name = "letters"

    def check(self, text, lang):
        nonspace = _NONSPACE_RE.subn("", text)[1]
        if nonspace == 0:
            return "no visible characters"
        share = _LETTER_RE.subn("", text)[1] / nonspace
        if share < self.cfg.min_letter_share:
            return f"letter share {share:.2f} < {self.cfg.min_letter_share}"
        return None


def _grams(units, n: int) -> list:
    """n-grams of a unit sequence: substrings when the units are the characters of a str."""
    if isinstance(units, str):
        return [units[i:i + n] for i in range(len(units) - n + 1)]
    return [tuple(units[i:i + n]) for i in range(len(units) - n + 1)]


def _chars(units) -> int:
    return len(units) if isinstance(units, str) else sum(map(len, units))


def _top_ngram_frac(units, n: int) -> float:
    """Share (<= 1) of characters covered by the occurrences of the most frequent n-gram (Gopher).

    Overlapping occurrences ("哈哈哈哈" has three "哈哈") cover each character once, so a text made
    of one repeated unit scores 1.0, not count * n / length."""
    grams = _grams(units, n)
    counts = Counter(grams)
    if not counts:
        return 0.0
    gram, count = counts.most_common(1)[0]
    if count < 2:
        return 0.0
    covered = bytearray(len(units))
    ones = b"\x01" * n
    for i, g in enumerate(grams):
        if g == gram:
            covered[i:i + n] = ones
    if isinstance(units, str):
        return covered.count(1) / max(len(units), 1)
    return sum(len(u) for u, c in zip(units, covered) if c) / max(_chars(units), 1)


def _dup_ngram_frac(units, n: int) -> float:
    """Share of characters covered by n-grams that occur more than once (Gopher)."""
    if len(units) < n:
        return 0.0
    grams = _grams(units, n)
    counts = Counter(grams)
    covered = bytearray(len(units))
    ones = b"\x01" * n
    for i, g in enumerate(grams):
        if counts[g] > 1:
            covered[i:i + n] = ones
    if isinstance(units, str):
        return covered.count(1) / max(len(units), 1)
    dup = sum(len(u) for u, c in zip(units, covered) if c)
    return dup / max(_chars(units), 1)


class RepetitionFilter(Filter):
    name = "repetition"

    def check(self, text, lang):
        c = self.cfg
        lines = [ln for ln in text.split("\n") if ln.strip()]
        if len(lines) >= 3:
            frac = 1 - len(set(lines)) / len(lines)
            if frac > c.max_dup_line_frac:
                return f"duplicated lines {frac:.2f} > {c.max_dup_line_frac}"
        units, cjk = _units(text, lang)
        if len(units) < c.repetition_min_units:
            return None
        scale, unit = (c.cjk_ngram_scale, "char") if cjk else (1, "word")
        for n, mx in zip(c.top_ngram, c.top_ngram_max):
            f = _top_ngram_frac(units, n * scale)
            if f > mx:
                return f"top {unit} {n * scale}-gram covers {f:.2f} > {mx}"
        for n, mx in zip(c.dup_ngram, c.dup_ngram_max):
            f = _dup_ngram_frac(units, n * scale)
            if f > mx:
                return f"duplicated {unit} {n * scale}-grams cover {f:.2f} > {mx}"
        return None


class GarbageFilter(Filter):
    name = "garbage"

    def check(self, text, lang):
        c = self.cfg
        n = max(len(text), 1)
        bad = text.count("\ufffd")
        if bad and bad / n > c.max_replacement_share:
            return f"{bad} replacement characters (U+FFFD)"
        moj = _MOJIBAKE_RE.findall(text)
        if len(moj) > c.max_mojibake:
            return f"{len(moj)} mojibake sequences, e.g. {moj[0]!r}"
        best = max((len(m) for m in _SYMBOL_RUN_RE.findall(text)), default=0)
        sym = _SYMBOL_RE.subn("", text)[1]
        if best > c.max_symbol_run:
            return f"symbol run of {best} > {c.max_symbol_run}"
        if sym / n > c.max_symbol_share:
            return f"symbol share {sym / n:.2f} > {c.max_symbol_share}"
        return None


_SYMBOL_RUN_RE = re.compile(_SYMBOL_RE.pattern + "{2,}")

_CLASSES = {cls.name: cls for cls in (MojibakeFilter, LanguageFilter, LengthFilter, LetterShareFilter, RepetitionFilter, GarbageFilter)}


def build_filters(cfg: FiltersConfig) -> list[Filter]:
    return [_CLASSES[name](cfg) for name in FILTER_NAMES if name not in cfg.disabled]


def apply_filters(filters: list[Filter], text: str, lang: str) -> tuple[str, str] | None:
    """(filter name, reason) of the first filter that rejects the document, else None."""
    for f in filters:
        reason = f.check(text, lang)
        if reason is not None:
            return f.name, reason
    return None
