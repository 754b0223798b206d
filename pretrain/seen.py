"""What a pre-training run has actually seen: real tokens and characters, and budgets in characters.

Objectives differ in what one step of ``batch_size`` windows of ``seq_len`` tokens holds: a
two-stream objective trims its windows to boundaries both streams share, an SGT window covers
~17 % more text than a char window, padding fills what trimming removed. ``batch_size × seq_len``
("nominal" tokens) therefore says little; the trainer counts, per optimizer step and summed over
processes, the **real tokens** (attended positions of the primary stream, ``[CLS]``/``[SEP]``
included, padding not) and the **characters** the windows cover (the sum of the primary stream's
``char_len``; aligned extra streams cover the same characters). Both are logged in
``metrics.jsonl`` (``tokens_seen``, ``chars_seen``, plus ``tokens_nominal``), stored in checkpoints
and in the export's ``pretrain_meta.json``.

``train.chars`` budgets a run in characters instead of steps: :func:`steps_for_chars` turns it
into ``train.steps`` from the mean characters per window of the training order's epoch 0 -- every
window of it, or its first ``CPW_WINDOWS`` (65,536; the order is shuffled, so they are a uniform
sample) when the epoch is longer; the same on every process, so all ranks agree -- so objectives
compared at one character budget see the same amount of text. The realised ``chars_seen`` differs
from the budget by the partial last epoch and, on a corpus of more than ``CPW_WINDOWS`` windows, by
the sample's error (logged at the end; under 0.5 % on the demo corpus). (An earlier estimate read
only the first 256 windows: 1-4 % off per seed on the demo corpus, so rows of one study saw
visibly different amounts of text.)
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import numpy as np
import torch

from pipeline.errors import UserError


def batch_counts(batch: dict[str, Any]) -> tuple[int, int]:
    """``(real tokens, characters)`` of one loader batch (primary stream)."""
    ids = batch["input_ids"]
    am = batch.get("attention_mask")
    tokens = int(np.asarray(am).astype(np.int64).sum()) if am is not None else int(np.asarray(ids).size)
    cl = batch.get("char_len")
    chars = int(np.asarray(cl).astype(np.int64).sum()) if cl is not None else 0
    return tokens, chars


class Seen:
    """Running totals: ``add`` every micro-batch of this process, ``end_step`` once per optimizer step
    (sums over processes with ``reduce_sum``), ``state()`` for logs, checkpoints and the export."""

    def __init__(self, state: Optional[dict] = None, nominal_per_step: int = 0):
        state = state or {}
        self.nominal_per_step = int(nominal_per_step)
        if "chars_seen" in state:  # a checkpoint with real counts
            self.tokens, self.chars = int(state["tokens_seen"]), int(state["chars_seen"])
            self.tokens_nominal = int(state.get("tokens_nominal", 0))
        else:  # a fresh run, or an older checkpoint whose tokens_seen was nominal (real counts restart at 0)
            self.tokens, self.chars = 0, 0
            self.tokens_nominal = int(state.get("tokens_seen", 0))
        self._local = [0, 0]

    def add(self, batch: dict[str, Any]) -> None:
        self.add_counts(batch_counts(batch))

    def add_counts(self, counts: tuple[int, int]) -> None:
        """``counts``: :func:`batch_counts` of one micro-batch (computed where the batch is built)."""
        self._local[0] += counts[0]
        self._local[1] += counts[1]

    def end_step(self, reduce_sum: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                 defer: bool = False) -> None:
        """One optimizer step done. ``defer=True`` (several processes) keeps this process's counts
        pending until :meth:`sync`, so the step itself has no cross-process reduce (a host sync)."""
        self.tokens_nominal += self.nominal_per_step
        if not defer:
            self.sync(reduce_sum)

    def sync(self, reduce_sum: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> None:
        """Add the pending counts (summed over processes with ``reduce_sum``) to the totals; every
        process must call it at the same steps (the trainer: log, checkpoint and final steps)."""
        v = torch.tensor(self._local, dtype=torch.float64)
        if reduce_sum is not None:
            v = reduce_sum(v)
        self.tokens += int(round(float(v[0])))
        self.chars += int(round(float(v[1])))
        self._local = [0, 0]

    def state(self) -> dict:
        return {"tokens_seen": self.tokens, "chars_seen": self.chars, "tokens_nominal": self.tokens_nominal}


CPW_WINDOWS = 65_536  # windows read to estimate characters per window (~6 s per 65 k tiny windows)


def chars_per_window(loader, n_windows: int = CPW_WINDOWS) -> float:
    """Mean characters per window over the first ``n_windows`` windows of epoch 0 (global order):
    the exact epoch mean when the epoch has no more windows than that."""
    if hasattr(loader, "window") and hasattr(loader, "epoch_draws"):
        n = min(n_windows, len(loader.epoch_draws(0)[0]))
        if n > 0:
            return sum(batch_counts(loader.window(0, p))[1] for p in range(n)) / n
    total = rows = 0
    for i in range(max(1, min(len(loader), math.ceil(n_windows / max(1, loader.batch_size))))):
        b = loader.batch(0, i)
        total += batch_counts(b)[1]
        rows += int(np.asarray(b["input_ids"]).shape[0])
    return total / max(1, rows)


def steps_for_chars(loader, chars: int, batch_size: int, n_windows: int = CPW_WINDOWS,
                    cpw: float | None = None) -> int:
    """Optimizer steps of ``batch_size`` windows that cover ``chars`` characters (at least 1)."""
    cpw = chars_per_window(loader, n_windows) if cpw is None else cpw
    if cpw <= 0:
        raise UserError("train.chars: the training windows cover no characters (shards without char_len?)")
    return max(1, math.ceil(chars / (cpw * batch_size)))


def apply_char_budget(t, loader, log=None) -> int:
    """Set ``t.steps`` (a ``TrainConfig``) from ``t.chars``; returns the steps."""
    cpw = chars_per_window(loader)
    steps = steps_for_chars(loader, int(t.chars), int(t.batch_size), cpw=cpw)
    if t.warmup_steps > steps:
        raise UserError(f"train.chars={t.chars} gives {steps} steps, fewer than train.warmup_steps={t.warmup_steps}")
    if log is not None:
        log.info("train.chars=%s: %d steps of %d windows (%.2f characters per window: epoch 0, up to %d windows)",
                 f"{t.chars:,}", steps, t.batch_size, cpw, CPW_WINDOWS)
    t.steps = steps
    return steps
