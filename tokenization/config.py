"""One config for the whole tokenization stage (``vocab`` and ``shards`` read the same file).

Example (``configs/tokenization/default.yaml``)::

    run: demo
    executor: {kind: local, workers: 1}   # pipeline/executors.py: local | slurm | ray
    segmenter: {backend: rjieba, hmm: false, user_dict: null}
    kinds: [char, sgt, word, ngram]
    char: {vocab_size: 8000, lowercase: true}
    sgt: {learner: spm_bpe, vocab_size: 8000, min_char_count: 2}
    word: {min_count: 3, max_size: 20000}
    ngram: {base_kind: char, max_n: 3, top_k: 5000, min_count: 5, score: tstat}
    sample: {max_docs: 0, max_chars: 0, seed: 0}   # 0 = the whole train split
    metrics: {pd_lines: 2000, ner_sentences: 1000, bpe_baseline: false}
    shards: {...}       # tokenization/shards_config.py
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pipeline.executors import ExecutorConfig
from tokenization.shards_config import ShardsConfig

KINDS = ("char", "sgt", "word", "ngram")


@dataclass
class SegmenterConfig:
    backend: Literal["rjieba", "jieba"] = "rjieba"
    hmm: bool = False
    user_dict: str | None = None  # jieba user dictionary file; forces the jieba backend (see segment.py)


@dataclass
class CharConfig:
    """Google-Chinese-BERT-style vocabulary: every CJK character one token, WordPiece elsewhere."""

    vocab_size: int = 8000      # WordPiece target; every character seen >= min_char_count stays in
    min_char_count: int = 1     # characters rarer than this become [UNK]
    lowercase: bool = True      # Google's Chinese BERT is uncased (accents stripped as well)


@dataclass
class SgtConfig:
    """Segmentation-guided sub-words (methods.md §1)."""

    learner: Literal["spm_bpe", "spm_unigram", "wp", "bpe"] = "spm_bpe"
    vocab_size: int = 8000
    min_char_count: int = 2     # every character seen at least this often stays representable
    max_piece_len: int = 16     # longest sub-word (characters)
    spm_input_words: int = 2_000_000  # distinct words fed to sentencepiece (most frequent first)
    # sentencepiece's own sample of its input lines (distinct words with counts): 0 = every line;
    # otherwise ``input_sentence_size`` lines, drawn at random (``shuffle_input_sentence``) with
    # ``seed`` so the vocabulary is the same on every run
    input_sentence_size: int = 0
    shuffle_input_sentence: bool = True
    seed: int = 0
    num_threads: int = 1        # sentencepiece trainer threads
    # the MVP author's variant: "▁" on every word-initial piece ("▁喜欢" != "喜欢"), so the ids
    # carry the segmentation; false (default): "▁" only marks an attached space (docs/tokenization.md)
    word_start_marker: bool = False


@dataclass
class WordConfig:
    min_count: int = 3          # a word needs this many occurrences in train to get an id
    max_size: int = 30000       # cap on the whole vocabulary (specials + characters + words)
    min_char_count: int = 1     # fallback characters need this many occurrences


@dataclass
class NgramConfig:
    """ERNIE-Gram lexicon (methods.md §5): n-grams of ``base_kind`` tokens, 2 <= n <= max_n."""

    base_kind: Literal["char", "sgt", "word"] = "char"
    max_n: int = 3
    top_k: int = 10000
    min_count: int = 5
    score: Literal["tstat", "pmi"] = "tstat"
    within_words: bool = False  # only n-grams that do not cut a segmented word (max_match word_start too)
    # counts are streamed per train shard into this many hash buckets on disk and reduced one
    # bucket at a time: memory ~ distinct n-grams / buckets, never the token count
    buckets: int = 16


@dataclass
class MetricsConfig:
    pd_lines: int = 2000        # held-out People's Daily test lines for boundary metrics (0 = skip)
    ner_sentences: int = 2000   # MSRA NER test sentences for entity-boundary metric (0 = skip)
    # train a plain BPE on unsegmented raw text as the comparison row of the metrics table; its
    # word table grows with the number of distinct clauses, so it is off except in the demo config
    bpe_baseline: bool = False


@dataclass
class SampleConfig:
    """Deterministic sample of the train split for the vocabulary counts (char, sgt, word).

    A document is kept when a hash of (``seed``, its id) falls under
    ``rate = min(1, max_docs / n_docs, max_chars / n_chars)`` (0 = no limit), so every task
    decides alone, the same documents are kept on every run and for any number of workers, and
    the sample holds about ``max_docs`` documents / ``max_chars`` characters. The n-gram lexicon
    and the shards always read the whole split.
    """

    max_docs: int = 0
    max_chars: int = 0
    seed: int = 0

    @property
    def active(self) -> bool:
        return self.max_docs > 0 or self.max_chars > 0


@dataclass
class TokenizationConfig:
    run: str = "demo"
    runs_root: str = "runs"
    workers: int = 1            # old name of executor.workers for segmentation and counts (if > 1, it wins)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    kinds: list[str] = field(default_factory=lambda: ["char", "sgt"])
    char: CharConfig = field(default_factory=CharConfig)
    sgt: SgtConfig = field(default_factory=SgtConfig)
    word: WordConfig = field(default_factory=WordConfig)
    ngram: NgramConfig = field(default_factory=NgramConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    shards: ShardsConfig = field(default_factory=ShardsConfig)

    def validate(self) -> None:
        for k in self.kinds:
            if k not in KINDS:
                raise ValueError(f"kinds: unknown vocabulary kind {k!r}; valid: {', '.join(KINDS)}")
        if len(set(self.kinds)) != len(self.kinds):
            raise ValueError(f"kinds: duplicate entry in {self.kinds}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        for name, size in (("char", self.char.vocab_size), ("sgt", self.sgt.vocab_size),
                           ("word", self.word.max_size)):
            if size < 16:
                raise ValueError(f"{name} vocabulary size must be >= 16, got {size}")
        if not 2 <= self.ngram.max_n <= 8:
            raise ValueError(f"ngram.max_n must be between 2 and 8, got {self.ngram.max_n}")
        if self.ngram.top_k < 1:
            raise ValueError(f"ngram.top_k must be >= 1, got {self.ngram.top_k}")
        if self.ngram.buckets < 1:
            raise ValueError(f"ngram.buckets must be >= 1, got {self.ngram.buckets}")
        if self.sample.max_docs < 0 or self.sample.max_chars < 0:
            raise ValueError("sample.max_docs and sample.max_chars must be >= 0 (0 = no limit)")
        if self.sgt.input_sentence_size < 0 or self.sgt.num_threads < 1:
            raise ValueError("sgt.input_sentence_size must be >= 0 and sgt.num_threads >= 1")
        self.executor.validate()

    def stage_executor(self, workers: int) -> ExecutorConfig:
        """``executor`` with the old per-stage ``workers`` key applied (it wins when > 1)."""
        import dataclasses

        return dataclasses.replace(self.executor, workers=workers) if workers > 1 else self.executor

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_root) / self.run

    @property
    def vocab_root(self) -> Path:
        return self.run_dir / "vocab"
