"""Synthetic long-context retrieval items for decoders: a needle-in-a-haystack proxy and multi-document QA.

The data and scoring of the ``retrieval`` evaluation (:mod:`evaluate.retrieval`, docs/meap.md);
``configs/finetune/retrieval-{tiny,0.1b}.yaml`` are :class:`RetrievalConfig` files. Tasks,
generated from corpus text (``methods.md`` §6.6 (b); the MEAP paper's NIAH and MDQA in spirit, not
their data):

* ``needle``: a haystack of exactly ``L`` tokens of corpus text (``context_lengths``) with one
  key-value fact (``facts.needle_template``, e.g. ``"{key}的密码是{value}。"``) whose first token
  sits at token ``round(depth * (L - n_fact))`` for each ``depth`` in ``depths``; then the query
  (``facts.query_template``); the answer is the value (``facts.value_groups`` groups of
  ``facts.value_len`` symbols joined by ``facts.value_sep``: a multi-value fact, so that MEAP SFT
  has answers long enough for its masks to reach later labels; see :mod:`finetune.decoder_sft`).
* ``mdqa``: ``n_docs`` corpus passages, each with a header (``文档i：``) and its own fact with a
  distinct key; the query asks for the key of the document at ``gold_position``; accuracy by gold
  position (the "lost in the middle" curve).

Every piece (template literals, key, value) is encoded separately and concatenated, so the answer's
token ids occur verbatim in the context whatever the tokenizer, and an item is re-drawn when its key
ids occur anywhere else in the context (the answer is always recoverable and unique).

Scoring (``scoring``): ``teacher_forced`` (default) runs one forward pass over prompt + answer and
counts an item correct when the arg-max at every answer position is the answer token (``[MASK]``'s
logit excluded); this is *exactly* greedy decoding's exact match, without a decode loop.
``generate`` calls ``model.generate`` (greedy, ``[MASK]`` suppressed) item by item.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Optional, Sequence

import numpy as np
import torch

from finetune.decoder_sft import VARIANTS as SFT_VARIANTS
from finetune.decoder_sft import SftConfig
from pipeline.errors import UserError

# a pool of common characters for keys (any CJK text tokenizer has them)
DEFAULT_KEY_CHARS = "山水田木火土石金月日风云雨雪花草竹松梅兰江河湖海天地春夏秋冬东南西北红黄蓝白黑青龙虎马牛羊鸡狗猫鱼鸟"
DIGITS = "0123456789"


# ---- config -----------------------------------------------------------------------------------
@dataclass
class FactConfig:
    needle_template: str = "{key}的密码是{value}。"
    query_template: str = "问：{key}的密码是多少？答：{key}的密码是"
    doc_header_template: str = "文档{i}："
    key_chars: str = DEFAULT_KEY_CHARS
    key_len: int = 3
    value_chars: str = DIGITS
    value_len: int = 4  # symbols per value group
    value_groups: int = 1  # a multi-value fact: the value is value_groups groups joined by value_sep
    value_sep: str = "-"

    def validate(self) -> None:
        for t, need in ((self.needle_template, ("{key}", "{value}")), (self.query_template, ("{key}",))):
            for n in need:
                if n not in t:
                    raise ValueError(f"facts template {t!r} lacks {n}")
        if "{value}" in self.query_template:
            raise ValueError("facts.query_template must not contain {value}")
        if self.key_len < 1 or self.value_len < 1 or len(set(self.key_chars)) < 2 or len(set(self.value_chars)) < 2:
            raise ValueError("facts.key_len/value_len must be >= 1 and key_chars/value_chars need >= 2 symbols")
        if self.value_groups < 1:
            raise ValueError(f"facts.value_groups must be >= 1, got {self.value_groups}")
        if self.value_groups > 1 and (not self.value_sep or set(self.value_sep) & set(self.value_chars)):
            raise ValueError("facts.value_sep must be non-empty and share no symbol with facts.value_chars")


@dataclass
class NeedleConfig:
    enabled: bool = True
    context_lengths: list[int] = field(default_factory=lambda: [128, 256, 448])
    depths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    n_per_cell: int = 20

    def validate(self) -> None:
        if any(not 0.0 <= d <= 1.0 for d in self.depths):
            raise ValueError("needle.depths must lie in [0, 1]")


@dataclass
class MdqaConfig:
    enabled: bool = True
    n_docs: int = 5
    doc_tokens: int = 64  # corpus tokens per document (plus header and fact)
    gold_positions: Optional[list[int]] = None  # default: every position 0..n_docs-1
    n_per_position: int = 20

    def validate(self) -> None:
        if self.n_docs < 2:
            raise ValueError("mdqa.n_docs must be at least 2")
        for g in self.gold_positions or []:
            if not 0 <= g < self.n_docs:
                raise ValueError(f"mdqa.gold_positions entry {g} outside 0..{self.n_docs - 1}")


@dataclass
class RetrievalConfig:
    corpus_dir: Optional[str] = None  # default: runs/RUN/corpus of the model's run (runs/RUN/pretrain/NAME/export)
    text_file: Optional[str] = None  # a UTF-8 text file (one passage per line) instead of the corpus
    eval_split: str = "valid"
    train_split: str = "train"
    max_docs: int = 2000  # corpus documents read per split for filler text
    seed: int = 1234  # task generation (the evaluation items are the same for every model)
    variants: list[str] = field(default_factory=lambda: ["none"])  # none | ntp | meap_copy | meap_concat
    sft_items: int = 512  # SFT training items (half needle, half mdqa where both are enabled)
    sft: SftConfig = field(default_factory=SftConfig)
    facts: FactConfig = field(default_factory=FactConfig)
    needle: NeedleConfig = field(default_factory=NeedleConfig)
    mdqa: MdqaConfig = field(default_factory=MdqaConfig)
    scoring: Literal["teacher_forced", "generate"] = "teacher_forced"
    batch_size: int = 16  # scoring batch (speed only)

    def validate(self) -> None:
        for v in self.variants:
            if v != "none" and v not in SFT_VARIANTS:
                raise ValueError(f"variants entry '{v}' unknown; valid: none, {', '.join(SFT_VARIANTS)}")
        if not self.variants or len(set(self.variants)) != len(self.variants):
            raise ValueError(f"variants must be non-empty and distinct, got {self.variants}")
        if not self.needle.enabled and not self.mdqa.enabled:
            raise ValueError("needle.enabled and mdqa.enabled are both false: nothing to evaluate")

    @property
    def tasks(self) -> list[str]:
        return [t for t, on in (("needle", self.needle.enabled), ("mdqa", self.mdqa.enabled)) if on]


# ---- items ------------------------------------------------------------------------------------
@dataclass
class Item:
    task: str  # "needle" | "mdqa"
    length: int  # needle: haystack tokens; mdqa: number of documents
    depth: float  # requested depth (mdqa: gold_position / (n_docs - 1))
    position: int  # needle: first token of the fact inside the haystack; mdqa: gold document index
    prompt: list[int]  # [bos] + context + query
    answer: list[int]
    fact_start: int  # index in ``prompt`` of the gold fact's first token
    key: str
    value: str


_FIELD = re.compile(r"(\{key\}|\{value\}|\{i\})")


class Encoder:
    """Encodes template pieces separately (cached), so concatenations are tokenizer-independent."""

    def __init__(self, encode: Callable[[str], list[int]]):
        self._encode = encode
        self._cache: dict[str, list[int]] = {}

    def __call__(self, text: str) -> list[int]:
        if text not in self._cache:
            self._cache[text] = list(self._encode(text)) if text else []
        return self._cache[text]

    def fill(self, template: str, **values: str) -> tuple[list[int], dict[str, int]]:
        """Token ids of ``template`` with fields substituted; also the offset of each field's first token."""
        ids: list[int] = []
        where: dict[str, int] = {}
        for part in _FIELD.split(template):
            m = _FIELD.fullmatch(part)
            if m:
                name = part[1:-1]
                where.setdefault(name, len(ids))
                ids += self(values[name])
            else:
                ids += self(part)
        return ids, where


def find_subseq(hay: Sequence[int], needle: Sequence[int]) -> list[int]:
    """Every start index of ``needle`` in ``hay`` (vectorised sliding-window comparison)."""
    h = np.asarray(hay, dtype=np.int64)
    n = np.asarray(needle, dtype=np.int64)
    if len(n) == 0 or len(n) > len(h):
        return []
    win = np.lib.stride_tricks.sliding_window_view(h, len(n))
    return np.nonzero((win == n).all(axis=1))[0].tolist()


class FillerPool:
    """A flat token stream of corpus text; slices are drawn at random offsets (wrapping around)."""

    def __init__(self, ids: np.ndarray):
        if len(ids) == 0:
            raise UserError("no filler text: the corpus split (or text_file) gave no tokens")
        self.ids = np.asarray(ids, dtype=np.int64)

    @classmethod
    def from_texts(cls, texts: Sequence[str], enc: Callable[[str], list[int]]) -> "FillerPool":
        return cls(np.concatenate([np.asarray(enc(t), dtype=np.int64) for t in texts] or [np.zeros(0, np.int64)]))

    def take(self, n: int, rng: random.Random) -> list[int]:
        if n <= 0:
            return []
        start = rng.randrange(len(self.ids))
        idx = (start + np.arange(n)) % len(self.ids)
        return self.ids[idx].tolist()


class TaskGenerator:
    def __init__(self, enc: Encoder, pool: FillerPool, facts: FactConfig, bos_id: int, sep_id: int):
        self.enc, self.pool, self.f, self.bos, self.sep = enc, pool, facts, bos_id, sep_id

    def _key(self, rng: random.Random, taken: set[str]) -> str:
        for _ in range(1000):
            k = "".join(rng.choice(self.f.key_chars) for _ in range(self.f.key_len))
            if k not in taken:
                taken.add(k)
                return k
        raise UserError("facts.key_chars/key_len leave too few distinct keys for mdqa.n_docs")

    def _value(self, rng: random.Random) -> str:
        groups = ["".join(rng.choice(self.f.value_chars) for _ in range(self.f.value_len))
                  for _ in range(self.f.value_groups)]
        return self.f.value_sep.join(groups)

    def _unique(self, prompt: list[int], key_ids: list[int], fact_key_at: int, query_key_at: int) -> bool:
        """The key occurs exactly at the gold fact and in the query (twice if the query repeats it)."""
        hits = set(find_subseq(prompt, key_ids))
        return fact_key_at in hits and query_key_at in hits and all(
            h in (fact_key_at,) or h >= query_key_at for h in hits)

    def needle(self, length: int, depth: float, rng: random.Random, tries: int = 50) -> Item:
        for _ in range(tries):
            key, value = self._key(rng, set()), self._value(rng)
            fact, fw = self.enc.fill(self.f.needle_template, key=key, value=value)
            if len(fact) >= length:
                raise UserError(f"needle.context_lengths entry {length} is not longer than the fact ({len(fact)} tokens)")
            start = round(depth * (length - len(fact)))
            filler = self.pool.take(length - len(fact), rng)
            context = filler[:start] + fact + filler[start:]
            query, qw = self.enc.fill(self.f.query_template, key=key)
            prompt = [self.bos] + context + query
            key_ids, answer = self.enc(key), self.enc(value)
            q0 = 1 + len(context)
            if self._unique(prompt, key_ids, 1 + start + fw["key"], q0 + qw["key"]):
                return Item("needle", length, float(depth), start, prompt, answer, 1 + start, key, value)
        raise UserError("could not draw a needle item whose key is unique in its context; use longer keys")

    def mdqa(self, n_docs: int, doc_tokens: int, gold: int, rng: random.Random, tries: int = 50) -> Item:
        for _ in range(tries):
            taken: set[str] = set()
            facts = [(self._key(rng, taken), self._value(rng)) for _ in range(n_docs)]
            context: list[int] = []
            gold_start = gold_key_at = -1
            for i, (k, v) in enumerate(facts):
                header, _ = self.enc.fill(self.f.doc_header_template, i=str(i + 1))
                fact, fw = self.enc.fill(self.f.needle_template, key=k, value=v)
                body = self.pool.take(doc_tokens, rng)
                cut = rng.randint(0, doc_tokens)
                doc = header + body[:cut] + fact + body[cut:]
                if i == gold:
                    gold_start = 1 + len(context) + len(header) + cut
                    gold_key_at = gold_start + fw["key"]
                context += doc + ([self.sep] if i < n_docs - 1 else [])
            key, value = facts[gold]
            query, qw = self.enc.fill(self.f.query_template, key=key)
            prompt = [self.bos] + context + [self.sep] + query
            q0 = 1 + len(context) + 1
            if self._unique(prompt, self.enc(key), gold_key_at, q0 + qw["key"]):
                depth = gold / (n_docs - 1)
                return Item("mdqa", n_docs, depth, gold, prompt, self.enc(value), gold_start, key, value)
        raise UserError("could not draw an mdqa item whose keys are unique in its context; use longer keys")


def eval_items(gen: TaskGenerator, cfg: RetrievalConfig, seed: int) -> list[Item]:
    rng = random.Random(seed)
    items: list[Item] = []
    if cfg.needle.enabled:
        for L in cfg.needle.context_lengths:
            for d in cfg.needle.depths:
                items += [gen.needle(L, d, rng) for _ in range(cfg.needle.n_per_cell)]
    if cfg.mdqa.enabled:
        m = cfg.mdqa
        for g in (m.gold_positions if m.gold_positions is not None else range(m.n_docs)):
            items += [gen.mdqa(m.n_docs, m.doc_tokens, g, rng) for _ in range(m.n_per_position)]
    return items


def train_items(gen: TaskGenerator, cfg: RetrievalConfig, n: int, seed: int) -> list[Item]:
    """SFT items: random lengths/depths/gold positions from the configured grid's range."""
    rng = random.Random(seed)
    kinds = [k for k, on in (("needle", cfg.needle.enabled), ("mdqa", cfg.mdqa.enabled)) if on]
    items = []
    for j in range(n):
        if kinds[j % len(kinds)] == "needle":
            items.append(gen.needle(rng.choice(cfg.needle.context_lengths), rng.random(), rng))
        else:
            items.append(gen.mdqa(cfg.mdqa.n_docs, cfg.mdqa.doc_tokens, rng.randrange(cfg.mdqa.n_docs), rng))
    return items


# ---- scoring ----------------------------------------------------------------------------------
@torch.no_grad()
def score_teacher_forced(model, items: Sequence[Item], *, pad_id: int, suppress: Sequence[int] = (),
                         batch_size: int = 16, device="cpu") -> list[dict]:
    """Greedy exact match by one forward pass per batch (see the module docstring)."""
    model.eval()
    out: list[dict] = []
    order = sorted(range(len(items)), key=lambda i: len(items[i].prompt) + len(items[i].answer))
    res: dict[int, dict] = {}
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        seqs = [items[i].prompt + items[i].answer for i in idx]
        T = max(map(len, seqs))
        ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
        att = torch.zeros((len(seqs), T), dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, :len(s)] = torch.tensor(s)
            att[r, :len(s)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=att.to(device)).logits.float()
        if suppress:
            logits[..., list(suppress)] = float("-inf")
        logp = torch.log_softmax(logits, dim=-1)
        for r, i in enumerate(idx):
            it = items[i]
            p0 = len(it.prompt) - 1
            pos = torch.arange(p0, p0 + len(it.answer), device=logits.device)
            gold = torch.tensor(it.answer, device=logits.device)
            pred = logits[r, pos].argmax(-1)
            tok_ok = (pred == gold)
            res[i] = {"correct": bool(tok_ok.all()), "token_acc": float(tok_ok.float().mean()),
                      "logprob": float(logp[r, pos, gold].sum())}
    for i in range(len(items)):
        out.append(res[i])
    return out


@torch.no_grad()
def score_generate(model, items: Sequence[Item], *, suppress: Sequence[int] = (), device="cpu") -> list[dict]:
    """Greedy ``generate`` item by item; exact match of the first ``len(answer)`` new tokens."""
    model.eval()
    out = []
    for it in items:
        ids = torch.tensor([it.prompt], device=device)
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=len(it.answer),
                             min_new_tokens=len(it.answer), do_sample=False,
                             suppress_tokens=list(suppress) or None, pad_token_id=0)
        new = gen[0, len(it.prompt):].tolist()
        ok = [a == b for a, b in zip(new, it.answer)]
        out.append({"correct": len(new) == len(it.answer) and all(ok),
                    "token_acc": sum(ok) / len(it.answer), "generated": new})
    return out


def summarise(items: Sequence[Item], scores: Sequence[dict]) -> dict:
    """Accuracy (%) by task, length and depth; also overall per task."""
    cells: dict[tuple, list[float]] = {}
    tcells: dict[tuple, list[float]] = {}
    for it, s in zip(items, scores):
        key = (it.task, it.length, it.position if it.task == "mdqa" else it.depth)
        cells.setdefault(key, []).append(100.0 * s["correct"])
        tcells.setdefault(key, []).append(100.0 * s["token_acc"])
    out: dict = {}
    for (task, length, d), v in sorted(cells.items()):
        t = out.setdefault(task, {"by_length": {}, "token_by_length": {}, "n": 0})
        t["by_length"].setdefault(str(length), {})[str(d)] = sum(v) / len(v)
        tv = tcells[(task, length, d)]
        t["token_by_length"].setdefault(str(length), {})[str(d)] = sum(tv) / len(tv)
        t["n"] += len(v)
    for task, t in out.items():
        vals = [100.0 * s["correct"] for it, s in zip(items, scores) if it.task == task]
        t["accuracy"] = sum(vals) / len(vals)
        # graded signal for small models: share of answer tokens that are the greedy choice
        tok = [100.0 * s["token_acc"] for it, s in zip(items, scores) if it.task == task]
        t["token_accuracy"] = sum(tok) / len(tok)
    return out


# ---- text ---------------------------------------------------------------------------------------
def load_texts(cfg: RetrievalConfig, split: str, corpus_dir: str | Path | None = None) -> list[str]:
    """Filler passages of ``split``: ``text_file`` (the eval split reads it forwards, the train split
    backwards), else ``corpus_dir`` (``cfg.corpus_dir`` first)."""
    if cfg.text_file:
        f = Path(cfg.text_file)
        if not f.is_file():
            raise UserError(f"text_file not found: {f}")
        lines = [ln.strip() for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if not lines:
            raise UserError(f"{f}: no text lines")
        return lines[: cfg.max_docs] if split == cfg.eval_split else lines[::-1][: cfg.max_docs]
    from corpora.io import iter_corpus, list_shards

    if not (cfg.corpus_dir or corpus_dir):
        raise UserError("retrieval: no filler text: give corpus_dir or text_file (or a model under runs/RUN/pretrain/NAME)")
    cdir = Path(cfg.corpus_dir or corpus_dir)
    if not list_shards(cdir, split):
        raise UserError(f"no corpus shards under {cdir / split} (build the corpus first: make corpus RUN=...)")
    texts = []
    for rec in iter_corpus(cdir, split):
        if rec.get("text"):
            texts.append(rec["text"])
        if len(texts) >= cfg.max_docs:
            break
    return texts
