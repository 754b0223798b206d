"""Offline, script-based language identification: ``zh``, ``yue``, ``en`` or ``other``.

No model is downloaded; the rule reads the characters (thresholds in ``LangIdConfig``):

1. Count letters by script: Han, kana, Hangul, Latin, other alphabetic. No letters -> ``other``.
2. Kana or Hangul at least 10 % of the letters -> ``other`` (Japanese, Korean).
3. Han share of letters >= ``han_min``: ``yue`` if Cantonese marker characters (嘅 咗 喺 哋 冇 唔 係 佢
   啲 嚟 嘢 咁 …, written Cantonese has them and standard written Chinese almost never) reach
   ``yue_min_ratio`` per Han character, else ``zh``. ``係`` inside 關係/关系-type words is not
   counted (it is ordinary Traditional Mandarin there).
4. Latin share >= ``latin_min`` and at least ``en_function_min`` of the words are English function
   words (the, of, and, to, is, ...) -> ``en``; other Latin-script text (German, French, ...) -> ``other``.
5. Anything else -> ``other``.

Known limits: Traditional-script Mandarin is ``zh`` (script is not language); short Cantonese
sentences without a marker are ``zh``; English with few function words (lists, code) is ``other``.
"""

from __future__ import annotations

import re

from corpora.config import LangIdConfig

_DEFAULT = LangIdConfig()
LANGS = ("zh", "yue", "en", "other")

EN_FUNCTION_WORDS = frozenset(
    "the of and to a in is it that for on as with are be this by or an was not from at which can "
    "you if but have has will all its they their he she we his her there been were would should "
    "when what these those than then so no into may also more one other such use used only".split()
)
_WORD_RE = re.compile(r"[A-Za-z]+")
_NOT_MARKER_RE = re.compile("[關关聯联]係|係數|體係")


_HAN_RE = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003ffff]")
_KANA_RE = re.compile("[\u3040-\u30ff\u31f0-\u31ff]")
_HANGUL_RE = re.compile("[\uac00-\ud7af\u1100-\u11ff\u3130-\u318f]")
_LATIN_RE = re.compile("[A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u1e00-\u1eff]")
_LETTER_RE = re.compile(r"[^\W\d_]")


def script_counts(text: str) -> tuple[int, int, int, int, int]:
    """(han, kana, hangul, latin, other_letters) counts of ``text`` (regex counts run in C)."""
    han = _HAN_RE.subn("", text)[1]
    kana = _KANA_RE.subn("", text)[1]
    hangul = _HANGUL_RE.subn("", text)[1]
    latin = _LATIN_RE.subn("", text)[1]
    letters = _LETTER_RE.subn("", text)[1]
    return han, kana, hangul, latin, max(0, letters - han - kana - hangul - latin)


def detect(text: str, cfg: LangIdConfig | None = None) -> str:
    c = cfg or _DEFAULT
    han, kana, hangul, latin, other = script_counts(text)
    letters = han + kana + hangul + latin + other
    if letters == 0:
        return "other"
    if (kana + hangul) >= 0.1 * letters:
        return "other"
    if han >= c.han_min * letters:
        markers = sum(text.count(m) for m in c.yue_markers)
        if "係" in c.yue_markers:
            markers -= len(_NOT_MARKER_RE.findall(text))
        return "yue" if markers > 0 and markers >= c.yue_min_ratio * han else "zh"
    if latin >= c.latin_min * letters:
        words = _WORD_RE.findall(text)
        fw = sum(1 for w in words if w.lower() in EN_FUNCTION_WORDS)
        return "en" if words and fw >= c.en_function_min * len(words) else "other"
    return "other"
