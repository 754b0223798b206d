"""The ``shards`` section of the tokenization stage config (``configs/tokenization/*.yaml``).

Example::

    shards:
      kinds: [char, sgt]        # vocabulary kinds to write; [] = every kind built under vocab/
      splits: [train, valid]
      workers: 1                # worker processes; output is identical for any number
      batch_docs: 256           # documents per encode_batch call (memory / speed trade-off)
      units: true               # n-gram unit streams for the lexicon's base kind when vocab/ngram exists
      mixing:                   # recorded in meta.json and printed; the loader applies it on request
        alpha: 0.3
        source_alpha: 1.0
        unit: chars
        lang_weights: {yue: 2.0}
        source_weights: {}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class MixingConfig:
    """Sampling weights per language and per source (multilingual temperature convention).

    A group is one ``(lang, source)`` pair. The probability of a language is proportional to
    ``w_lang * n_lang ** alpha`` (``alpha`` = 1 keeps natural proportions, 0.3 is XLM-R's choice,
    0.7 mBERT's, 0 is uniform over languages); inside a language, a source gets
    ``w_source * n_source ** source_alpha``. ``n`` counts ``unit`` (characters by default, so the
    mixture is the same whatever vocabulary kind the loader reads). A weight of 0 removes a group.
    """

    alpha: float = 1.0
    source_alpha: float = 1.0
    unit: Literal["chars", "tokens", "docs"] = "chars"
    lang_weights: dict[str, float] = field(default_factory=dict)
    source_weights: dict[str, float] = field(default_factory=dict)

    def validate(self) -> None:
        if self.alpha < 0 or self.source_alpha < 0:
            raise ValueError(f"mixing.alpha and mixing.source_alpha must be >= 0, got {self.alpha}, {self.source_alpha}")
        for name, table in (("lang_weights", self.lang_weights), ("source_weights", self.source_weights)):
            for k, v in table.items():
                if v < 0:
                    raise ValueError(f"mixing.{name}.{k} must be >= 0, got {v}")


@dataclass
class ShardsConfig:
    """Settings of ``python -m tokenization shards`` (see ``docs/shards.md``)."""

    kinds: list[str] = field(default_factory=list)  # [] = every kind with a vocabulary folder
    splits: list[str] = field(default_factory=lambda: ["train", "valid"])
    workers: int = 1
    batch_docs: int = 256
    units: bool = True  # write unit_len / unit_ngram for the n-gram lexicon's base kind
    mixing: MixingConfig = field(default_factory=MixingConfig)

    def validate(self) -> None:
        if self.workers < 1:
            raise ValueError(f"shards.workers must be >= 1, got {self.workers}")
        if self.batch_docs < 1:
            raise ValueError(f"shards.batch_docs must be >= 1, got {self.batch_docs}")
        for s in self.splits:
            if s not in ("train", "valid"):
                raise ValueError(f"shards.splits: unknown split {s!r} (train, valid)")
