"""Supervised fine-tuning for decoders: plain NTP SFT and the MEAP SFT variant.

An SFT example is a (prompt ids, answer ids) pair. Three ways to turn it into training rows
(``methods.md`` §6.3):

* ``ntp``: ``[prompt; answer; eos]`` with labels on the answer tokens and ``eos`` only.
* ``meap_copy`` (the official code, ``MEAP-SFT.py``): the ``ntp`` row, **plus**, when the answer
  has more than ``min_answer_tokens`` tokens, a *separate* row ``[prompt; answer'; eos]`` where
  ``max(min_masks, int(len(answer) * mask_ratio))`` answer positions are ``[MASK]`` and the labels
  are set **only** at the masked positions (to the original token; ``eos`` unlabelled).
* ``meap_concat`` (the paper's description, "duplicate the sample, mask only the copy"): one row
  ``[X; X']`` with ``X = [prompt; answer; eos]`` labelled as in ``ntp`` and ``X'`` the masked copy
  labelled at its masked positions (``concat_copy_labels="masked"``) or on all of its answer tokens
  and ``eos`` (``"answer"``). The paper's text was only readable through a secondary summary
  (loss over "answer tokens ∪ masked tokens"); which tokens of the copy carry labels is our choice,
  hence the option. Answers not longer than the threshold give the plain ``ntp`` row.

Labels are unshifted (Hugging Face causal-LM convention: the logits at position ``i - 1`` predict
``labels[i]``), ``-100`` where there is no loss. ``[MASK]`` is never a label.

**When a mask matters.** Because of that shift, the label at answer offset ``p`` is predicted from
the inputs ``< p``: a ``[MASK]`` changes the loss only through the labels *after* it. A masked
copy labelled only at its masked positions with a single mask is therefore plain next-token SFT
(the mask's own label is predicted from the clean token before it). The official code never meets
this case: it masks only answers of more than 50 tokens, so ``int(51 * 0.1) = 5`` masks at least,
and every mask after the first is predicted from a context that holds the earlier ones. Here
``min_masks`` (default 2) is the floor of that count, answers shorter than ``min_masks`` get no
masked row, and :func:`sft_rows` refuses (``UserError``) a configuration in which no labelled
position of any row has a ``[MASK]`` before it (:func:`mask_reach` counts them).

**Truncation.** A row longer than ``max_len`` loses tokens from the left of its prompt (the answer
sits at the end). A ``meap_concat`` row is truncated *per copy*, never as a whole (which would cut
the clean copy's start, needle included, while its answer labels stay): ``concat_truncation:
per_copy`` (default) gives each copy ``max_len`` tokens on its own, so the row may reach
``2 * max_len`` and a copy keeps exactly what the ``ntp`` row keeps; ``half`` gives each copy
``max_len // 2`` so the row fits ``max_len``. Both copies are cut identically either way.

**Budget.** ``budget: epochs`` (default, as the official code, which trains a number of epochs over
the expanded dataset) runs ``ceil(epochs * ceil(rows / batch_size))`` steps, so every original
item's clean row is seen ``epochs`` times whatever the variant (``meap_copy`` has about twice the
rows and therefore about twice the steps; ``meap_concat`` the same steps with rows twice as long).
``budget: steps`` runs exactly ``steps`` optimizer steps for every variant, so ``meap_copy`` sees
each clean answer about half as often as ``ntp``.

**Training.** The rows are the features of the ``decoder_sft`` task kind
(:mod:`finetune.kinds.decoder_sft`, whose collate pads them); :func:`fit_sft` trains them with the
one fine-tuning loop, :func:`finetune.train.fit`: one shuffled pass per epoch (the last batch of an
epoch may be short), AdamW without decay on biases and norms, linear warm-up over ``warmup_ratio``
of the steps then linear decay to 0, gradient clipping.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Iterable, Literal, Sequence

import torch

from pipeline.errors import UserError

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

    budget: Literal["epochs", "steps"] = "epochs"  # see the module docstring
    epochs: float = 3.0  # budget=epochs: passes over the rows built from the original items
    steps: int = 200  # budget=steps: optimizer steps, the same for every variant
    batch_size: int = 8
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    grad_clip: float = 1.0
    mask_ratio: float = 0.1  # official SFT default
    min_masks: int = 2  # at least this many [MASK] per masked answer (official count rule: at least 1)
    min_answer_tokens: int = 50  # MEAP rows only for answers longer than this (official: > 50)
    concat_copy_labels: Literal["masked", "answer"] = "masked"
    concat_truncation: Literal["per_copy", "half"] = "per_copy"
    max_len: int = 1024  # rows are truncated from the left of the prompt to fit (meap_concat: per copy)

    def validate(self) -> None:
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"sft.mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if self.steps < 0 or self.batch_size < 1:
            raise ValueError("sft.steps must be >= 0 and sft.batch_size >= 1")
        if self.epochs < 0:
            raise ValueError(f"sft.epochs must be >= 0, got {self.epochs}")
        if self.min_masks < 1:
            raise ValueError(f"sft.min_masks must be >= 1, got {self.min_masks}")
        if self.max_len < 4:
            raise ValueError(f"sft.max_len must be >= 4, got {self.max_len}")


def choose_mask_positions(n_answer: int, mask_ratio: float, rng: random.Random, min_masks: int = 1) -> list[int]:
    """``max(min_masks, int(n * ratio))`` distinct answer offsets (``min_masks=1``: the official
    count rule), at most ``n``, drawn uniformly, sorted."""
    if n_answer <= 0:
        return []
    num = min(n_answer, max(min_masks, int(n_answer * mask_ratio)))
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


def truncate_row(row: SftRow, max_len: int | None) -> SftRow:
    """Keep the last ``max_len`` positions (the answer sits at the end)."""
    if max_len is None or len(row.input_ids) <= max_len:
        return row
    return SftRow(row.input_ids[-max_len:], row.labels[-max_len:])


def build_rows(prompt: Sequence[int], answer: Sequence[int], variant: str, *, eos_id: int, mask_id: int,
               mask_ratio: float = 0.1, min_answer_tokens: int = 50, rng: random.Random | None = None,
               positions: Sequence[int] | None = None, concat_copy_labels: str = "masked",
               min_masks: int = 2, max_len: int | None = None, concat_truncation: str = "per_copy") -> list[SftRow]:
    """Rows for one (prompt, answer) pair under ``variant``; ``positions`` fixes the masked answer
    offsets (otherwise drawn from ``rng``). ``max_len`` truncates each row from the left; a
    ``meap_concat`` row per copy (``concat_truncation``, see the module docstring)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown SFT variant '{variant}'; valid: {', '.join(VARIANTS)}")
    if concat_truncation not in ("per_copy", "half"):
        raise ValueError(f"unknown concat_truncation '{concat_truncation}'; valid: per_copy, half")
    base = ntp_row(prompt, answer, eos_id)
    long_enough = len(answer) > min_answer_tokens and (positions is not None or len(answer) >= min_masks)
    if variant == "ntp" or not long_enough:
        return [truncate_row(base, max_len)]
    if positions is None:
        positions = choose_mask_positions(len(answer), mask_ratio, rng or random.Random(0), min_masks)
    if variant == "meap_copy":
        return [truncate_row(base, max_len),
                truncate_row(masked_copy_row(prompt, answer, eos_id, mask_id, positions), max_len)]
    copy = masked_copy_row(prompt, answer, eos_id, mask_id, positions,
                           label_all_answer=(concat_copy_labels == "answer"))
    per_copy = None if max_len is None else (max_len if concat_truncation == "per_copy" else max_len // 2)
    base, copy = truncate_row(base, per_copy), truncate_row(copy, per_copy)
    return [SftRow(base.input_ids + copy.input_ids, base.labels + copy.labels)]


def mask_reach(row: SftRow, mask_id: int) -> tuple[int, int]:
    """(labelled positions, labelled positions with a ``[MASK]`` input before them) of one row.

    The label at position ``i`` is predicted from the inputs ``0..i-1``, so a mask influences the
    loss of a labelled position exactly when it sits at a position ``< i``.
    """
    ids = torch.tensor(row.input_ids)
    lab = torch.tensor(row.labels)
    seen = torch.cumsum((ids == mask_id).long(), 0)  # masks at positions <= i
    before = torch.cat([seen.new_zeros(1), seen[:-1]])  # masks at positions < i
    labelled = lab != IGNORE
    return int(labelled.sum()), int((labelled & (before > 0)).sum())


def sft_rows(pairs: Iterable[tuple[Sequence[int], Sequence[int]]], variant: str, cfg: SftConfig, *,
             eos_id: int, mask_id: int, seed: int, stats: dict | None = None) -> list[SftRow]:
    """All rows of ``variant`` for ``pairs``, truncated to ``cfg.max_len``.

    A MEAP variant whose rows give no labelled position a ``[MASK]`` before it is plain ``ntp`` SFT
    under another name: refused with a ``UserError``. ``stats`` (if given) receives ``items``,
    ``rows``, ``masked_rows``, ``labels``, ``labels_after_mask`` and ``truncated``.
    """
    rng = random.Random(seed)
    rows: list[SftRow] = []
    n_items = truncated = 0
    for prompt, answer in pairs:
        n_items += 1
        full = len(prompt) + len(answer) + 1
        built = build_rows(prompt, answer, variant, eos_id=eos_id, mask_id=mask_id, mask_ratio=cfg.mask_ratio,
                           min_answer_tokens=cfg.min_answer_tokens, rng=rng, min_masks=cfg.min_masks,
                           concat_copy_labels=cfg.concat_copy_labels, max_len=cfg.max_len,
                           concat_truncation=cfg.concat_truncation)
        cap = cfg.max_len if variant != "meap_concat" or cfg.concat_truncation == "per_copy" else cfg.max_len // 2
        truncated += full > cap
        rows += built
    labels = reach = masked = 0
    for r in rows:
        n, k = mask_reach(r, mask_id)
        labels += n
        reach += k
        masked += mask_id in r.input_ids
    if stats is not None:
        stats.update(items=n_items, rows=len(rows), masked_rows=masked, labels=labels, labels_after_mask=reach,
                     truncated=truncated)
    if variant != "ntp" and rows and reach == 0:
        raise UserError(
            f"sft: variant {variant} would be plain ntp SFT: of {n_items} items {masked} got a masked answer and no "
            f"labelled position has a [MASK] before it (answers need > sft.min_answer_tokens={cfg.min_answer_tokens} "
            f"and >= sft.min_masks={cfg.min_masks} tokens; use sft.min_masks >= 2, longer answers (facts.value_len, "
            f"facts.value_groups) or sft.concat_copy_labels=answer)")
    return rows


def sft_steps(cfg: SftConfig, n_rows: int) -> int:
    """Optimizer steps for ``n_rows`` rows under ``cfg.budget`` (see the module docstring)."""
    if cfg.budget == "steps":
        return cfg.steps
    if cfg.budget == "epochs":
        return math.ceil(cfg.epochs * math.ceil(n_rows / cfg.batch_size))
    raise ValueError(f"unknown sft.budget '{cfg.budget}'; valid: epochs, steps")


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


def fit_sft(model: torch.nn.Module, rows: Sequence[SftRow], cfg: SftConfig, *, pad_id: int, seed: int,
            device: str | torch.device = "cpu", mask_id: int = -1) -> dict:
    """Fine-tune ``model`` (a causal LM taking ``labels``) on ``rows`` for :func:`sft_steps` steps with
    the one fine-tuning loop (:func:`finetune.train.fit`: its optimizer, weight-decay and schedule
    rules) as the ``decoder_sft`` task kind. Returns the SFT summary (budget, steps, rows, epochs,
    final_loss)."""
    from finetune.kinds.base import KindOptions, get_kind
    from finetune.kinds.decoder_sft import SftTask
    from finetune.train import Finetuner, fit

    steps = sft_steps(cfg, len(rows))
    per_epoch = math.ceil(len(rows) / cfg.batch_size) if rows else 0
    summary = {"budget": cfg.budget, "steps": steps, "rows": len(rows),
               "epochs": round(steps / per_epoch, 4) if per_epoch else 0.0}
    if not rows or steps == 0:
        return {**summary, "steps": 0, "final_loss": None}
    task = SftTask(name="sft", kind="decoder_sft", train=[], dev=[], test=[], sft=cfg, pad_id=pad_id, mask_id=mask_id)
    net = Finetuner(model, get_kind("decoder_sft")(task, 0, KindOptions())).to(device)
    feats = [{"input_ids": r.input_ids, "labels": r.labels} for r in rows]
    out = fit(net, feats, lr=cfg.lr, batch_size=cfg.batch_size, steps=steps, weight_decay=cfg.weight_decay,
              warmup=cfg.warmup_ratio, grad_clip=cfg.grad_clip, seed=seed, desc=f"sft {len(rows)} rows")
    return {**summary, "steps": out["steps"], "final_loss": out["final_loss"]}
