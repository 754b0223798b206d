"""Sentence classification: the pooled state -> a classification head -> cross-entropy; accuracy.

With a two-view encoder (AMBERT, ``KindOptions.view_sizes``), the loss is AMBERT's:
``-log p(y|r_x0) - log p(y|r_z0) - log p(y|[r_x0; r_z0]) + lambda * ||p_x - p_z||_2``, one classifier
per view and one on the concatenation, the last term an agreement regulariser between the two
views' predicted distributions (mean over the batch). Predictions come from the concatenation's
classifier. Which prediction AMBERT reports, and its lambda, are not in the text we read
(methods.md §3.1): both are our choice (``agreement_weight`` in the fine-tuning config).

The sentence state is ``[CLS]`` by default; ``pooling: mean`` in the fine-tuning config reads the
mean of the character states instead (:func:`finetune.kinds.base.sentence_state`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from finetune.kinds.base import TaskKind, classifier, register_kind, sentence_state
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
        self.view_heads = nn.ModuleList(classifier(w, len(task.labels), opts.dropout) for w in opts.view_sizes)

    def collate(self, features):
        mc, mb = self.opts.max_chars, self.opts.max_chars_b or self.opts.max_chars
        batch = {"text": [f["text"][:mc] for f in features],
                 "text_b": [f["text_b"][:mb] for f in features] if self.pair else None}
        return self.add_labels(batch, features)

    def forward(self, encoder, batch):
        enc = encoder.encode(batch["text"], batch["text_b"])
        pooled, views = sentence_state(enc, self.opts.pooling)
        out = self.logits_output(self.head(pooled), batch)
        if len(self.view_heads) and views is not None and "loss" in out:
            if len(views) != len(self.view_heads):
                raise ValueError(f"encoder gave {len(views)} pooled views, the head expects "
                                 f"{len(self.view_heads)}")
            view_logits = [h(p) for h, p in zip(self.view_heads, views)]
            labels = batch["labels"].to(out["logits"].device)
            out["loss"] = out["loss"] + sum(F.cross_entropy(v, labels) for v in view_logits)
            if len(view_logits) == 2 and self.opts.agreement_weight:
                p, q = (v.softmax(-1) for v in view_logits)
                out["loss"] = out["loss"] + self.opts.agreement_weight * (p - q).norm(dim=-1).mean()
        return out
