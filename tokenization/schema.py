"""What the tokenization stage hands on: :class:`VocabStats` (``vocab/KIND/stats.json``) and
:class:`ShardMeta` (``shards/KIND/SPLIT/meta.json``).

``tokenization.vocab_build`` writes every vocabulary's ``stats.json`` with :meth:`VocabStats.save`
(last file of the folder); ``tokenization.shards`` writes each split's ``meta.json`` with
:meth:`ShardMeta.save` (last file of the split). Readers -- the token encoders, the loader, the
pre-training data module, the publisher and the model card -- ``load()`` them. Rules of every
schema (types checked, unknown keys kept in ``extra``, one error line naming the file):
``pipeline.schema``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from pipeline.schema import Record

SPECIAL_KEYS = ("pad", "unk", "cls", "sep", "mask")
SHARD_COUNTS = ("n_docs", "n_tokens", "n_chars", "n_empty_docs", "n_unk")


@dataclass
class VocabStats(Record):
    """``vocab/KIND/stats.json`` (docs/contracts.md "Tokenization"). Required: ``kind`` (``char``,
    ``sgt``, ``word``, ``ngram``), ``size`` and ``special_tokens`` (``pad unk cls sep mask`` ->
    id). Kind-specific settings (``target_size``, ``min_count``, ``by_n``, ...) and the
    gold-data metrics stay in ``extra``; :meth:`get` reads fields and extras alike."""

    FILE = "stats.json"
    OMIT_NONE = True  # a char vocabulary has no "learner": the key is absent, as before the schema

    kind: str
    size: int
    special_tokens: dict
    trust_remote_code: bool = False
    tokenizer_class: Optional[str] = None
    tokens_per_char: Optional[float] = None     # on the valid split (None: not measured yet)
    lowercase: Optional[bool] = None            # char kind
    learner: Optional[str] = None               # sgt kind
    base_kind: Optional[str] = None             # ngram kind: the vocabulary its n-grams are over
    segmenter: Optional[dict] = None            # {"backend", "hmm", "user_dict", "fingerprint"}
    normalizer: Optional[dict] = None           # what the saved tokenizers apply to raw text
    extra: dict = field(default_factory=dict)
    path: Optional[Path] = field(default=None, compare=False)

    def check(self) -> str | None:
        bad = [k for k in SPECIAL_KEYS if not (isinstance(self.special_tokens.get(k), int)
                                               and not isinstance(self.special_tokens.get(k), bool))]
        if bad:
            return f"special_tokens: missing or non-integer {bad}"
        if self.size <= 0:
            return f"size {self.size} is not positive"
        return None


@dataclass
class ShardMeta(Record):
    """``shards/KIND/SPLIT/meta.json`` (docs/shards.md): the streams and their dtypes, the
    vocabulary (relative ``vocab_dir``, its hash and a copy of its stats), per-shard and total
    counts, the (lang, source) groups with the mixing table, and the ``job`` fingerprint that
    decides whether a rerun may skip the split."""

    FILE = "meta.json"

    format_version: int
    kind: str
    split: str
    dtype: str
    streams: dict
    vocab_hash: str
    vocab_size: int
    shards: list
    vocab_dir: str = ""
    special_tokens: dict = field(default_factory=dict)
    vocab_meta: dict = field(default_factory=dict)
    units: Optional[dict] = None
    n_shards: int = 0
    n_docs: int = 0
    n_tokens: int = 0
    n_chars: int = 0
    n_empty_docs: int = 0
    n_unk: int = 0
    tokens_per_char: float = 0.0
    groups: list = field(default_factory=list)
    mixing: dict = field(default_factory=dict)
    job: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    path: Optional[Path] = field(default=None, compare=False)

    def check(self) -> str | None:
        if "ids" not in self.streams:
            return "streams: no 'ids' stream"
        for i, s in enumerate(self.shards):
            if not isinstance(s, dict) or not isinstance(s.get("name"), str):
                return f"shards[{i}]: expected an object with a 'name'"
            bad = [k for k in ("n_tokens", "n_chars") if not isinstance(s.get(k), int)]
            if bad:
                return f"shards[{i}] ({s['name']}): missing or non-integer {bad}"
        if self.n_shards != len(self.shards):
            return f"n_shards is {self.n_shards} but {len(self.shards)} shards are listed"
        return None
