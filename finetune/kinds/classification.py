"""Sentence classification: the pooled state -> a classification head -> cross-entropy; accuracy."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from finetune.kinds.base import TaskKind, classifier, register_kind
from finetune.metrics import accuracy


class SingleLabelKind(TaskKind):
    """Shared parts of the kinds with one gold class index per feature (``label``): cross-entropy
    on ``logits``, argmax predictions, accuracy."""

    @staticmethod
    def add_labels(batch: dict, features) -> dict:
        if all(f.get("label") is not None for f in features):
            batch["labels"] = torch.tensor([f["label"] for f in features], dtype=torch.long)
        return batch

    @staticmethod
    def logits_output(logits: torch.Tensor, batch: dict) -> dict:
        out = {"logits": logits}
        if "labels" in batch:
            out["loss"] = F.cross_entropy(logits, batch["labels"].to(logits.device))
        return out

    def predict(self, outputs, batch):
        return outputs["logits"].argmax(-1).tolist()

    def score(self, predictions, features):
        return {"acc": accuracy(predictions, [f["label"] for f in features])}


@register_kind
class Classification(SingleLabelKind):
    name = "classification"
    main_metric = "acc"
    pair = False

    def __init__(self, task, hidden_size, opts):
        super().__init__(task, hidden_size, opts)
        if not task.labels:
            raise ValueError(f"task {task.name}: classification needs a label set")
        self.head = classifier(hidden_size, len(task.labels), opts.dropout)

    def collate(self, features):
        mc, mb = self.opts.max_chars, self.opts.max_chars_b or self.opts.max_chars
        batch = {"text": [f["text"][:mc] for f in features],
                 "text_b": [f["text_b"][:mb] for f in features] if self.pair else None}
        return self.add_labels(batch, features)

    def forward(self, encoder, batch):
        enc = encoder.encode(batch["text"], batch["text_b"])
        return self.logits_output(self.head(enc.pooled), batch)
