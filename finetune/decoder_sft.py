"""Supervised fine-tuning for decoders: plain NTP SFT and the MEAP SFT variant.

An SFT example is a (prompt ids, answer ids) pair. Three ways to turn it into training rows
(``methods.md`` §6.3):

* ``ntp``: ``[prompt; answer; eos]`` with labels on the answer tokens and ``eos`` only.
* ``meap_copy`` (the official code, ``MEAP-SFT.py``): the ``ntp`` row, **plus**, when the answer
  has more than ``min_answer_tokens`` tokens, a *separate* row ``[prompt; answer'; eos]`` where
  ``max(1, int(len(answer) * mask_ratio))`` answer positions are ``[MASK]`` and the labels are set
  **only** at the masked positions (to the original token; ``eos`` unlabelled).
* ``meap_concat`` (the paper's description, "duplicate the sample, mask only the copy"): one row
  ``[X; X']`` with ``X = [prompt; answer; eos]`` labelled as in ``ntp`` and ``X'`` the masked copy
  labelled at its masked positions (``concat_copy_labels="masked"``) or on all of its answer tokens
  and ``eos`` (``"answer"``). The paper's text was only readable through a secondary summary
  (loss over "answer tokens ∪ masked tokens"); which tokens of the copy carry labels is our choice,
  hence the option. Answers not longer than the threshold give the plain ``ntp`` row.

Labels are unshifted (Hugging Face causal-LM convention: the logits at position ``i - 1`` predict
``labels[i]``), ``-100`` where there is no loss. ``[MASK]`` is never a label.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Iterable, Literal, Sequence

import torch

IGNORE = -100
Variant = Literal["ntp", "meap_copy", "meap_concat"]
VARIANTS: tuple[str, ...] = ("ntp", "meap_copy", "meap_concat")


@dataclass
class SftRow:
    input_ids: list[int]
    labels: list[int]


@dataclass
class SftConfig:
    """Options of the decoder SFT (``sft:`` in ``configs/finetune/retrieval-*.yaml``)."""

    steps: int = 200
    batch_size: int = 8
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    grad_clip: float = 1.0
    mask_ratio: float = 0.1  # official SFT default
    min_answer_tokens: int = 50  # MEAP rows only for answers longer than this (official: > 50)
    concat_copy_labels: Literal["masked", "answer"] = "masked"
    max_len: int = 1024  # rows are truncated from the left of the prompt to fit

    def validate(self) -> None:
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"sft.mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if self.steps < 0 or self.batch_size < 1:
            raise ValueError("sft.steps must be >= 0 and sft.batch_size >= 1")


def choose_mask_positions(n_answer: int, mask_ratio: float, rng: random.Random) -> list[int]:
    """``max(1, int(n * ratio))`` distinct answer offsets (the official count rule), sorted."""
    if n_answer <= 0:
        return []
    num = min(n_answer, max(1, int(n_answer * mask_ratio)))
    return sorted(rng.sample(range(n_answer), num))


def ntp_row(prompt: Sequence[int], answer: Sequence[int], eos_id: int) -> SftRow:
    ids = list(prompt) + list(answer) + [eos_id]
    labels = [IGNORE] * len(prompt) + list(answer) + [eos_id]
    return SftRow(ids, labels)


def masked_copy_row(prompt: Sequence[int], answer: Sequence[int], eos_id: int, mask_id: int,
                    positions: Sequence[int], label_all_answer: bool = False) -> SftRow:
    """``[prompt; answer with [MASK] at positions; eos]``; labels at the masked positions (or on the
    whole answer + eos when ``label_all_answer``)."""
    ans = list(answer)
    lab = list(answer) if label_all_answer else [IGNORE] * len(ans)
    for p in positions:
        if not 0 <= p < len(ans):
            raise ValueError(f"mask position {p} outside an answer of {len(ans)} tokens")
        lab[p] = ans[p]
        ans[p] = mask_id
    ids = list(prompt) + ans + [eos_id]
    labels = [IGNORE] * len(prompt) + lab + [eos_id if label_all_answer else IGNORE]
    return SftRow(ids, labels)


def build_rows(prompt: Sequence[int], answer: Sequence[int], variant: str, *, eos_id: int, mask_id: int,
               mask_ratio: float = 0.1, min_answer_tokens: int = 50, rng: random.Random | None = None,
               positions: Sequence[int] | None = None, concat_copy_labels: str = "masked") -> list[SftRow]:
    """Rows for one (prompt, answer) pair under ``variant``; ``positions`` fixes the masked answer
    offsets (otherwise drawn from ``rng``)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown SFT variant '{variant}'; valid: {', '.join(VARIANTS)}")
    base = ntp_row(prompt, answer, eos_id)
    if variant == "ntp" or len(answer) <= min_answer_tokens:
        return [base]
    if positions is None:
        positions = choose_mask_positions(len(answer), mask_ratio, rng or random.Random(0))
    if variant == "meap_copy":
        return [base, masked_copy_row(prompt, answer, eos_id, mask_id, positions)]
    copy = masked_copy_row(prompt, answer, eos_id, mask_id, positions,
                           label_all_answer=(concat_copy_labels == "answer"))
    return [SftRow(base.input_ids + copy.input_ids, base.labels + copy.labels)]


def truncate_row(row: SftRow, max_len: int) -> SftRow:
    """Keep the last ``max_len`` positions (the answer sits at the end)."""
    if len(row.input_ids) <= max_len:
        return row
    return SftRow(row.input_ids[-max_len:], row.labels[-max_len:])


def pad_rows(rows: Sequence[SftRow], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row: input_ids, attention_mask, labels (``-100`` on padding)."""
    T = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), T), IGNORE, dtype=torch.long)
    att = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        ids[i, :n] = torch.tensor(r.input_ids, dtype=torch.long)
        labels[i, :n] = torch.tensor(r.labels, dtype=torch.long)
        att[i, :n] = 1
    return {"input_ids": ids, "attention_mask": att, "labels": labels}


def sft_rows(pairs: Iterable[tuple[Sequence[int], Sequence[int]]], variant: str, cfg: SftConfig, *,
             eos_id: int, mask_id: int, seed: int) -> list[SftRow]:
    rng = random.Random(seed)
    rows: list[SftRow] = []
    for prompt, answer in pairs:
        for r in build_rows(prompt, answer, variant, eos_id=eos_id, mask_id=mask_id, mask_ratio=cfg.mask_ratio,
                            min_answer_tokens=cfg.min_answer_tokens, rng=rng,
                            concat_copy_labels=cfg.concat_copy_labels):
            rows.append(truncate_row(r, cfg.max_len))
    return rows


def train_sft(model: torch.nn.Module, rows: Sequence[SftRow], cfg: SftConfig, *, pad_id: int, seed: int,
              device: str | torch.device = "cpu", log=None) -> dict:
    """Fine-tune ``model`` (a causal LM taking ``labels``) on ``rows`` for ``cfg.steps`` steps.

    Batches are drawn without replacement, epoch after epoch, in an order fixed by ``seed``; AdamW
    with linear warm-up and cosine decay; gradient clipping. Returns a small summary dict.
    """
    if not rows or cfg.steps == 0:
        return {"steps": 0, "rows": len(rows), "final_loss": None}
    model.to(device).train()
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    warm = max(1, int(cfg.steps * cfg.warmup_ratio))

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, cfg.steps - warm)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    g = torch.Generator().manual_seed(seed)
    order: list[int] = []
    losses: list[float] = []
    tokens = 0
    for step in range(cfg.steps):
        if len(order) < cfg.batch_size:
            order += torch.randperm(len(rows), generator=g).tolist()
        idx, order = order[:cfg.batch_size], order[cfg.batch_size:]
        batch = {k: v.to(device) for k, v in pad_rows([rows[i] for i in idx], pad_id).items()}
        tokens += int(batch["attention_mask"].sum())
        out = model(**batch)
        out.loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(out.loss.detach()))
        if log is not None and (step + 1) % max(1, cfg.steps // 5) == 0:
            log.info("sft step %d/%d loss %.4f", step + 1, cfg.steps, sum(losses[-10:]) / len(losses[-10:]))
    model.eval()
    return {"steps": cfg.steps, "rows": len(rows), "tokens": tokens,
            "final_loss": sum(losses[-10:]) / len(losses[-10:])}
