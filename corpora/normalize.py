"""Text normalisation, the first per-document step.

``normalize_text(text, cfg=None)`` is the one function every stage uses; the fine-tuning suite
calls it with the defaults to compute the held-out key (``corpora.heldout``), so the defaults are
part of the contract: change them only together with a new held-out salt.

Choices (defaults in ``NormalizeConfig``):

* **NFC, not NFKC.** NFKC folds full-width CJK punctuation (，！？：；（）) into ASCII, which
  changes Chinese prose and the segmenter's behaviour. NFC only unifies canonical equivalents
  (including CJK compatibility ideographs).
* **Full-width ASCII -> half-width**, except the punctuation Chinese prose writes full-width
  (，！？：；（）): ``Ａｂｃ１２３＃`` becomes ``Abc123#``; U+3000 becomes a space.
* **Control and zero-width characters removed**: Unicode Cc (tab becomes a space, newline kept)
  and Cf (ZWSP, ZWJ/ZWNJ, BOM, soft hyphen, bidi marks, word joiner).
* **Whitespace folded**: CRLF -> LF, every Unicode space -> " ", runs of spaces -> one, spaces at
  line ends dropped, three or more newlines -> two (paragraphs survive), text stripped.
* **Spaces between two CJK characters dropped** (residue of word-segmented sources such as CTCPC).
* **Traditional -> Simplified** with OpenCC ``t2s`` only when ``t2s: true``.
"""

from __future__ import annotations

import functools
import re
import unicodedata

from corpora.config import NormalizeConfig

_DEFAULT = NormalizeConfig()

# full-width punctuation that Chinese prose writes full-width: kept as is
KEEP_FULLWIDTH = "，！？：；（）"
_FW_ASCII = {cp: cp - 0xFEE0 for cp in range(0xFF01, 0xFF5F)}
_FW_ASCII[0x3000] = 0x20
_FW_TABLE_ALL = dict(_FW_ASCII)
_FW_TABLE_ASCII = {k: v for k, v in _FW_ASCII.items() if chr(k) not in KEEP_FULLWIDTH}

# Cc except \n and \t; Cf (format: zero-width, BOM, bidi, soft hyphen)
_CTRL_RE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064"
    "\u2066-\u206f\ufeff\ufff9-\ufffb]"
)
_SPACE_RE = re.compile(r"[^\S\n]+")          # any whitespace but newline
_TRAIL_RE = re.compile(r" *\n *")
_NL_RE = re.compile(r"\n{3,}")
# CJK: Han (incl. ext. A and compatibility), kana, CJK and full-width punctuation
_CJK = "\u2e80-\u2fdf\u3000-\u303f\u3040-\u30ff\u3100-\u312f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uff0f\uff1a-\uff20"
_CJK_SPACE_RE = re.compile(rf"(?<=[{_CJK}]) (?=[{_CJK}])")


@functools.lru_cache(maxsize=2)
def _opencc(conf: str):
    import opencc  # imported only when t2s is on

    return opencc.OpenCC(conf)


def normalize_text(text: str, cfg: NormalizeConfig | None = None) -> str:
    """Normalise one document (see the module docstring). ``cfg=None`` means the defaults."""
    c = cfg or _DEFAULT
    if c.unicode_form != "none":
        text = unicodedata.normalize(c.unicode_form, text)
    if c.fullwidth == "ascii":
        text = text.translate(_FW_TABLE_ASCII)
    elif c.fullwidth == "all":
        text = text.translate(_FW_TABLE_ALL)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if c.remove_control:
        text = _CTRL_RE.sub("", text.replace("\t", " "))
    if c.fold_whitespace:
        text = _SPACE_RE.sub(" ", text)
        text = _TRAIL_RE.sub("\n", text)
        text = _NL_RE.sub("\n\n", text).strip()
    if c.cjk_space:
        text = _CJK_SPACE_RE.sub("", text)
    if c.t2s:
        text = _opencc("t2s").convert(text)
    return text
