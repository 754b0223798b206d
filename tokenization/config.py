"""One config for the whole tokenization stage (``vocab`` and ``shards`` read the same file).

Example (``configs/tokenization/default.yaml``)::

    run: demo
    workers: 1
    segmenter: {backend: rjieba, hmm: false, user_dict: null}
    kinds: [char, sgt, word, ngram]
    char: {vocab_size: 8000, lowercase: true}
    sgt: {learner: spm_bpe, vocab_size: 8000, min_char_count: 2}
    word: {min_count: 3, max_size: 20000}
    ngram: {base_kind: char, max_n: 3, top_k: 5000, min_count: 5, score: tstat}
    metrics: {pd_lines: 2000, ner_sentences: 1000}
    shards: {...}       # tokenization/shards_config.py
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

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


@dataclass
class MetricsConfig:
    pd_lines: int = 2000        # held-out People's Daily test lines for boundary metrics (0 = skip)
    ner_sentences: int = 2000   # MSRA NER test sentences for entity-boundary metric (0 = skip)
    bpe_baseline: bool = True   # train a plain BPE on unsegmented text as the comparison row


@dataclass
class TokenizationConfig:
    run: str = "demo"
    runs_root: str = "runs"
    workers: int = 1
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    kinds: list[str] = field(default_factory=lambda: ["char", "sgt"])
    char: CharConfig = field(default_factory=CharConfig)
    sgt: SgtConfig = field(default_factory=SgtConfig)
    word: WordConfig = field(default_factory=WordConfig)
    ngram: NgramConfig = field(default_factory=NgramConfig)
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

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_root) / self.run

    @property
    def vocab_root(self) -> Path:
        return self.run_dir / "vocab"
