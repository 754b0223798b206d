"""MEAP: Mask-Enhanced Autoregressive Prediction (Zhuang et al., ICML 2025, arXiv 2502.07490).

Plain next-token prediction on a decoder, except that a small share of the *input* positions is
replaced by ``[MASK]`` during training. The targets stay the clean next tokens at every position;
nothing is dropped from the loss, no head or attention change is involved (``methods.md`` §6.1).
Validation and inference see clean inputs (:meth:`Meap.eval_collate`), ``[MASK]`` is never a
target, and the exported model carries ``generation_config.suppress_tokens=[mask_id]`` (plus
``bad_words_ids``) so ``generate`` never emits it.

Everything else (the backbone, the loss, the export) is the engine's ``ntp`` objective: this class
subclasses it and only adds the input masking.

Options (``objective_options`` in the pre-training config), each a documented reconstruction
choice:

* ``mask_ratio`` (0.15): share of the eligible input positions replaced by ``[MASK]``. The official
  0.3B-1.1B configs use 0.15, the 0.1B config 0.1.
* ``masking`` ("per_sequence"): fresh random positions for every sequence, drawn from the
  trainer's generator (vectorised). ``"official"`` reproduces the official code: the *same*
  positions for the whole batch, ``random.seed(50 + c % 51)`` then
  ``random.sample(range(0, T-1), max(1, int(T * mask_ratio)))``, i.e. only 51 distinct patterns.
  The official code uses the step counter for ``c``; ``collate`` does not see the step, so ``c`` is
  drawn from the trainer's generator (seeded from seed/step/rank): still 51 batch-shared patterns
  and exact on resume, but visited in a random rather than cyclic order (``official_cycle`` =
  "generator"). ``official_cycle: "counter"`` uses a per-process call counter instead (cyclic like
  the official code, but a resumed run restarts the cycle).
* ``count`` ("exact"): ``per_sequence`` masks exactly ``max(1, int(n_eligible * mask_ratio))``
  positions per row (the official count rule applied per row); ``"bernoulli"`` masks each eligible
  position independently with probability ``mask_ratio``.
* ``exclude_last`` (true): never mask the last input position (the official ``range(0, T-1)``).
* ``unit`` ("token"): what is masked. ``"word"`` masks whole segmented words instead (the
  engine's ``mlm.whole_word_mask`` with 100 % ``[MASK]``, ``mask_ratio`` of the words per
  window); an extension of ours for Chinese, not in the paper. Only with ``masking: per_sequence``.
* ``mask_specials`` (false): whether ``[CLS]``/``[SEP]`` may be masked. The official code masks
  packed BOS/EOS separators like any token; we keep document boundaries clean by default because
  the retrieval/QA prompts rely on them. ``[PAD]`` is never masked.
* ``doc_mask``, ``ignore_after_sep``: inherited from ``ntp`` (document-masked attention; the
  documents are read from the clean ids before masking).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from pretrain.objectives.base import register
from pretrain.objectives.mlm import whole_word_mask
from pretrain.objectives.ntp import NextTokenPrediction as _NtpBase

OFFICIAL_SEED_BASE = 50
OFFICIAL_SEED_CYCLE = 51


def official_positions(cycle_index: int, seq_len: int, mask_ratio: float) -> list[int]:
    """The official code's batch-shared positions for one step (``get_cycled_seed`` + ``random.sample``)."""
    rng = random.Random(OFFICIAL_SEED_BASE + cycle_index % OFFICIAL_SEED_CYCLE)
    num = max(1, int(seq_len * mask_ratio))
    num = min(num, seq_len - 1)
    return sorted(rng.sample(range(0, seq_len - 1), num))


def meap_mask(
    input_ids: torch.Tensor,
    eligible: torch.Tensor,
    mask_ratio: float,
    generator: torch.Generator | None,
    *,
    count: Literal["exact", "bernoulli"] = "exact",
) -> torch.Tensor:
    """Bool [B, T]: fresh random positions per row among ``eligible`` (vectorised, no token loop).

    ``exact`` picks ``max(1, int(n_eligible * mask_ratio))`` positions per row (0 for a row with
    no eligible position) by ranking uniform scores; ``bernoulli`` draws each position independently.
    """
    B, T = input_ids.shape
    scores = torch.rand((B, T), generator=generator, device=input_ids.device)
    if count == "bernoulli":
        return (scores < mask_ratio) & eligible
    n_elig = eligible.sum(dim=1)
    k = torch.clamp((n_elig.to(torch.float64) * mask_ratio).floor().to(torch.long), min=1)
    k = torch.where(n_elig > 0, torch.minimum(k, n_elig), torch.zeros_like(k))
    scores = scores.masked_fill(~eligible, 2.0)  # ineligible positions rank last
    ranks = scores.argsort(dim=1).argsort(dim=1)
    return ranks < k[:, None]


@register
class Meap(_NtpBase):
    """``ntp`` + in-place ``[MASK]`` on a share of the input positions (training only)."""

    name = "meap"
    card_note = ("MEAP (Zhuang et al., 2025): a share of input tokens replaced by [MASK], plain "
                 "next-token prediction on clean targets; no architecture change. [MASK] is suppressed "
                 "at generation.")
    model_type = "decoder"

    @dataclass
    class Config(_NtpBase.Config):
        mask_ratio: float = 0.15
        masking: Literal["per_sequence", "official"] = "per_sequence"
        official_cycle: Literal["generator", "counter"] = "generator"
        count: Literal["exact", "bernoulli"] = "exact"
        exclude_last: bool = True
        unit: Literal["token", "word"] = "token"
        mask_specials: bool = False

        def validate(self) -> None:
            parent = getattr(super(), "validate", None)
            if callable(parent):
                parent()
            if not 0.0 < self.mask_ratio < 1.0:
                raise ValueError(f"objective_options.mask_ratio must be in (0, 1), got {self.mask_ratio}")
            if self.unit == "word" and self.masking != "per_sequence":
                raise ValueError("objective_options.unit=word needs masking=per_sequence")

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.mask_id = int(ctx.vocab.mask_id)
        self.pad_id = int(ctx.vocab.pad_id)
        self._calls = 0  # for official_cycle="counter"

    # ---- masking -------------------------------------------------------------------------
    def mask_inputs(self, clean: torch.Tensor, special: torch.Tensor | None,
                    generator: torch.Generator | None,
                    word_start: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (masked input ids, bool mask [B, T]) for clean ids [B, T]."""
        cfg = self.cfg
        B, T = clean.shape
        eligible = clean != self.pad_id
        if not cfg.mask_specials and special is not None:
            eligible &= ~special
        if cfg.unit == "word":
            spec = ~eligible  # never-masked positions act as specials (word boundaries, not selected)
            if cfg.exclude_last:
                spec = spec.clone()
                spec[:, T - 1] = True
            ws = word_start if word_start is not None else torch.ones_like(spec)
            masked, labels = whole_word_mask(clean, ws, spec, generator, mask_id=self.mask_id,
                                             random_ids=torch.tensor([self.mask_id]), mask_prob=cfg.mask_ratio,
                                             p_mask=1.0, p_random=0.0, whole_word=True)
            return masked, labels != -100
        if cfg.masking == "official":
            if cfg.official_cycle == "counter":
                c = self._calls
                self._calls += 1
            else:
                c = int(torch.randint(OFFICIAL_SEED_CYCLE, (1,), generator=generator).item())
            pos = torch.tensor(official_positions(c, T, cfg.mask_ratio), dtype=torch.long, device=clean.device)
            mask = torch.zeros((B, T), dtype=torch.bool, device=clean.device)
            mask[:, pos] = True
            mask &= eligible
        else:
            if cfg.exclude_last:
                eligible[:, T - 1] = False
            mask = meap_mask(clean, eligible, cfg.mask_ratio, generator, count=cfg.count)
        return clean.masked_fill(mask, self.mask_id), mask

    def collate(self, batch: dict[str, np.ndarray], generator: torch.Generator) -> dict[str, torch.Tensor]:
        out = super().collate(batch, generator)
        clean = out["input_ids"]
        special = batch.get("special_mask")
        special_t = torch.as_tensor(np.asarray(special), dtype=torch.bool) if special is not None else None
        if special_t is not None and special_t.shape != clean.shape:
            special_t = None
        ws = batch.get("word_start")
        ws_t = torch.as_tensor(np.asarray(ws), dtype=torch.bool) if ws is not None else None
        masked, mask = self.mask_inputs(clean, special_t, generator, ws_t)
        out["input_ids"] = masked
        out["meap_mask"] = mask
        self._never_target_mask(out)
        return out

    def eval_collate(self, batch: dict[str, np.ndarray], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Validation sees clean inputs: plain ``ntp`` collation."""
        out = super().collate(batch, generator)
        self._never_target_mask(out)
        return out

    def _never_target_mask(self, out: dict[str, torch.Tensor]) -> None:
        labels = out.get("labels")
        if labels is not None:
            out["labels"] = labels.masked_fill(labels == self.mask_id, -100)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        mask = batch.get("meap_mask")
        inner = {k: v for k, v in batch.items() if k != "meap_mask"}
        out = super().forward(inner)
        if mask is not None:
            out["mask_share"] = mask.float().mean().detach()
        return out

    # ---- export ------------------------------------------------------------------------
    def export(self):
        model = super().export()
        suppress_mask_token(model, self.mask_id)
        return model

    def export_meta(self) -> dict:
        meta = dict(super().export_meta())
        c = self.cfg
        meta["meap"] = {"mask_id": self.mask_id, "mask_ratio": c.mask_ratio, "masking": c.masking,
                        "count": c.count, "unit": c.unit, "exclude_last": c.exclude_last,
                        "mask_specials": c.mask_specials, "suppressed_in_generation": [self.mask_id]}
        return meta


def suppress_mask_token(model, mask_id: int) -> None:
    """Exclude ``[MASK]`` from generation: ``suppress_tokens`` and ``bad_words_ids`` in the
    model's ``generation_config`` (saved as ``generation_config.json`` by ``save_pretrained``)."""
    gc = getattr(model, "generation_config", None)
    if gc is None:
        from transformers import GenerationConfig

        gc = GenerationConfig.from_model_config(model.config)
        model.generation_config = gc
    sup = list(gc.suppress_tokens or [])
    if mask_id not in sup:
        sup.append(mask_id)
    gc.suppress_tokens = sup
    bad = [list(b) for b in (gc.bad_words_ids or [])]
    if [mask_id] not in bad:
        bad.append([mask_id])
    gc.bad_words_ids = bad
