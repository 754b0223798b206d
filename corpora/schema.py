"""What the corpus stage hands on: ``runs/RUN/corpus/stats.json`` as :class:`CorpusStats`.

``corpora.build`` writes it with :meth:`CorpusStats.save` (last file of a build: it marks the
corpus complete); the tokenization stage (normalisation settings), the publisher and the model
card read it with :meth:`CorpusStats.load`. Rules of every schema (types checked, unknown keys
kept in ``extra``, one error line naming the file): ``pipeline.schema``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from pipeline.schema import Record

SOURCE_KEYS = ("type", "licence", "input_docs", "kept_docs", "kept_chars", "quarantined", "rejected", "by_lang")
TOTAL_KEYS = ("input_docs", "input_bytes", "heldout_excluded", "exact_duplicates", "near_duplicates",
              "kept_docs", "kept_chars")


@dataclass
class CorpusStats(Record):
    """``corpus/stats.json`` (docs/contracts.md "Corpus").

    * ``totals``: ``input_docs input_bytes heldout_excluded exact_duplicates near_duplicates
      kept_docs kept_chars`` over all sources;
    * ``by_source[name]``: ``type`` (``local``, ``hf``, ``builtin:pd1998``, ...), ``licence``, the
      same counters as ``totals`` plus ``files empty_files``, ``quarantined`` and ``rejected``
      (reason -> documents) and its own ``by_lang``;
    * ``by_lang[lang]``: ``{"docs", "chars"}`` of the kept documents;
    * ``config``: the resolved corpus config (``config["normalize"]`` is what the tokenizers must
      apply to raw text, :attr:`normalize`);
    * ``langid``: the language identifier used (``method``, ``model``, ``licence``);
    * ``timing``: the only run-dependent figures (seconds, workers, throughput).
    """

    FILE = "stats.json"

    format_version: int
    run: str
    totals: dict
    splits: dict
    by_lang: dict
    by_source: dict
    rejected: dict = field(default_factory=dict)
    quarantined: dict = field(default_factory=dict)
    duplicates: dict = field(default_factory=dict)
    heldout_excluded: dict = field(default_factory=dict)
    licences: dict = field(default_factory=dict)
    dedup_index_docs: int = 0
    langid: dict = field(default_factory=dict)  # method, model file + sha1, licence note (corpora/langid.py)
    config: dict = field(default_factory=dict)
    timing: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    path: Optional[Path] = field(default=None, compare=False)

    def check(self) -> str | None:
        missing = [k for k in TOTAL_KEYS if not isinstance(self.totals.get(k), int)]
        if missing:
            return f"totals: missing or non-integer {missing}"
        for name, s in self.by_source.items():
            if not isinstance(s, dict):
                return f"by_source['{name}']: expected an object"
            miss = [k for k in SOURCE_KEYS if k not in s]
            if miss:
                return f"by_source['{name}']: missing {miss}"
        for lang, v in self.by_lang.items():
            if not (isinstance(v, dict) and isinstance(v.get("docs"), int) and isinstance(v.get("chars"), int)):
                return f"by_lang['{lang}']: expected {{'docs': int, 'chars': int}}"
        return None

    @property
    def normalize(self) -> dict | None:
        """The ``normalize`` section of the corpus config (None in a build without one)."""
        n = self.config.get("normalize")
        return n if isinstance(n, dict) else None

    @property
    def source_licences(self) -> dict[str, str]:
        """source -> licence note (``licences`` and each source's own ``licence``)."""
        out = {k: str(v) for k, v in self.licences.items()}
        for name, s in self.by_source.items():
            if s.get("licence"):
                out.setdefault(name, str(s["licence"]))
        return out

    @property
    def languages(self) -> list[str]:
        """Languages of the kept text (``other``/``und`` left out)."""
        return sorted(k for k in self.by_lang if k not in ("other", "und"))

    @property
    def hub_datasets(self) -> list[str]:
        """Hub dataset ids of the ``hf`` sources of the corpus config."""
        srcs = self.config.get("sources") or []
        return sorted({s["name"] for s in srcs if isinstance(s, dict) and s.get("type") == "hf" and s.get("name")})
