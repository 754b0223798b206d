"""``ntp``: next-token prediction for the Llama-family decoder.

Targets: ``labels[t] = input_ids[t + 1]``; the last position has no target. A target is ignored
when it is ``[PAD]`` or any special other than ``[SEP]`` (``[SEP]`` ends a document, so predicting
it teaches the model where documents end, like an EOS). Packed windows attend across document
boundaries and the first token of a document is predicted from ``[SEP]`` + the previous document,
as in GPT-2/nanoGPT packed training (the ``[SEP]`` plays the role of a BOS). Set
``ignore_after_sep: true`` to drop those cross-document targets instead (our choice; documented in
``docs/pretrain.md``). ``[CLS]`` at position 0 acts as BOS.

``doc_mask: true`` (default false) makes a packed window behave like its documents run one by one:
each position attends only to earlier positions of its own document (block-diagonal causal mask,
a 4D boolean mask through SDPA) and positions restart at 0 in every document (``position_ids``, as
in HF's ``DataCollatorWithFlattening``). Documents come from the loader's ``segment_ids`` (or, for
a loader without them, from the ``[SEP]`` that ends each document). The dense mask costs
``B x T x T`` bytes on the device per micro-batch and keeps SDPA off its flash kernel; our choice,
made because it runs with every attention implementation on CPU and GPU (FlexAttention would be
the faster GPU path).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pretrain.flops import decoder_flops_per_token
from pretrain.models import build_decoder, count_parameters
from pretrain.objectives.base import Objective, ObjectiveContext, register


def next_token_labels(ids: torch.Tensor, special: torch.Tensor, sep_id: int,
                      ignore_after_sep: bool = False) -> torch.Tensor:
    labels = torch.full_like(ids, -100)
    tgt = ids[:, 1:]
    keep = ~special[:, 1:] | (tgt == sep_id)
    if ignore_after_sep:
        keep &= ids[:, :-1] != sep_id
    labels[:, :-1] = torch.where(keep, tgt, torch.full_like(tgt, -100))
    return labels


def segments_from_sep(ids: torch.Tensor, sep_id: int) -> torch.Tensor:
    """Document index of each position: +1 after each ``[SEP]`` (the ``[SEP]`` ends its document)."""
    is_sep = (ids == sep_id).long()
    return torch.cumsum(is_sep, dim=1) - is_sep


def positions_in_segment(seg: torch.Tensor) -> torch.Tensor:
    """Position of each token within its document (0 at each document start)."""
    T = seg.shape[1]
    idx = torch.arange(T, device=seg.device).expand_as(seg)
    start = torch.ones_like(seg, dtype=torch.bool)
    start[:, 1:] = seg[:, 1:] != seg[:, :-1]
    first = torch.cummax(torch.where(start, idx, torch.zeros_like(idx)), dim=1).values
    return idx - first


def document_causal_mask(seg: torch.Tensor, attention_mask: torch.Tensor | None = None,
                         additive_dtype: torch.dtype | None = None) -> torch.Tensor:
    """[B, 1, T, T] mask: query ``i`` sees key ``j`` iff ``j <= i``, same document and ``j`` is not
    padding. The diagonal stays visible (a padding row never becomes all-masked, which would give
    NaN). Boolean (True = attend) unless ``additive_dtype`` is given (0 / dtype min, for eager)."""
    T = seg.shape[1]
    causal = torch.ones((T, T), dtype=torch.bool, device=seg.device).tril()
    m = (seg[:, :, None] == seg[:, None, :]) & causal
    if attention_mask is not None:
        m &= attention_mask.bool()[:, None, :]
    m |= torch.eye(T, dtype=torch.bool, device=seg.device)
    m = m[:, None]
    if additive_dtype is None:
        return m
    return torch.zeros(m.shape, dtype=additive_dtype, device=m.device).masked_fill(~m, torch.finfo(additive_dtype).min)


@register
class NextTokenPrediction(Objective):
    name = "ntp"
    card_note = "Plain next-token prediction (causal language modelling) with a Llama-family decoder."
    model_type = "decoder"

    @dataclass
    class Config:
        ignore_after_sep: bool = False  # True: no target for the first token of the next document
        doc_mask: bool = False  # True: attention and positions restricted to each packed document

    def __init__(self, cfg: Config, ctx: ObjectiveContext):
        super().__init__(cfg, ctx)
        v = ctx.vocab
        self.model = build_decoder(ctx.model, v.padded_size, pad_id=v.pad_id, bos_id=v.cls_id, eos_id=v.sep_id)

    def collate(self, batch: dict[str, np.ndarray], generator: torch.Generator) -> dict[str, torch.Tensor]:
        ids = torch.from_numpy(np.ascontiguousarray(batch["input_ids"])).long()
        special = torch.from_numpy(np.ascontiguousarray(batch["special_mask"])).bool()
        out = {"input_ids": ids,
               "labels": next_token_labels(ids, special, self.ctx.vocab.sep_id, self.cfg.ignore_after_sep)}
        am = batch.get("attention_mask")
        if am is not None and not np.all(am):
            out["attention_mask"] = torch.from_numpy(np.ascontiguousarray(am)).long()
        if self.cfg.doc_mask:
            seg = batch.get("segment_ids")
            seg = (torch.from_numpy(np.ascontiguousarray(seg)).long() if seg is not None
                   else segments_from_sep(ids, self.ctx.vocab.sep_id))
            out["segment_ids"], out["position_ids"] = seg, positions_in_segment(seg)
        return out

    def _logits(self, batch):
        seg = batch.get("segment_ids")
        if seg is None:
            h = self.model.model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"))[0]
        else:
            mask = document_causal_mask(seg, batch.get("attention_mask"),
                                        additive_dtype=self._mask_dtype())
            h = self.model.model(input_ids=batch["input_ids"], attention_mask=mask,
                                 position_ids=batch["position_ids"])[0]
        return self.model.lm_head(h)

    def _mask_dtype(self):
        """``None`` (boolean mask) for SDPA / flex; the additive float mask eager attention wants."""
        impl = getattr(self.model.config, "_attn_implementation", "sdpa")
        return self.model.dtype if impl == "eager" else None

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self._logits(batch)
        loss = F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)
        return {"loss": loss, "ntp": loss.detach()}

    @torch.no_grad()
    def evaluate(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self._logits(batch).float().flatten(0, 1)
        labels = batch["labels"].flatten()
        valid = labels != -100
        n = valid.sum().float()
        loss = F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")
        acc = ((logits.argmax(-1) == labels) & valid).sum().float()
        return {"loss": loss, "loss_count": n, "accuracy": acc, "accuracy_count": n}

    def export(self):
        return self.model

    def flops_per_token(self) -> float:
        layers, hidden, _, _ = self.ctx.model.dims()
        return decoder_flops_per_token(count_parameters(self.model), layers, hidden, self.ctx.seq_len)
