"""``ntp``: next-token prediction for the Llama-family decoder.

Targets: ``labels[t] = input_ids[t + 1]``; the last position has no target. A target is ignored
when it is ``[PAD]`` or any special other than ``[SEP]`` (``[SEP]`` ends a document, so predicting
it teaches the model where documents end, like an EOS). Packed windows attend across document
boundaries and the first token of a document is predicted from ``[SEP]`` + the previous document,
as in GPT-2/nanoGPT packed training (the ``[SEP]`` plays the role of a BOS). Set
``ignore_after_sep: true`` to drop those cross-document targets instead (our choice; documented in
``docs/pretrain.md``). ``[CLS]`` at position 0 acts as BOS.
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


@register
class NextTokenPrediction(Objective):
    name = "ntp"
    model_type = "decoder"

    @dataclass
    class Config:
        ignore_after_sep: bool = False  # True: no target for the first token of the next document

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
        return out

    def _logits(self, batch):
        h = self.model.model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"))[0]
        return self.model.lm_head(h)

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
