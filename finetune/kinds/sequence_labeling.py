"""Sequence labelling (NER with BIO/BMES tags, word segmentation, POS): one tag per character.

The head reads the encoder's per-character states, so the tags and the metric are character-level
for every tokenizer. Long texts are cut into windows of ``max_chars`` characters for the model
and put back together before scoring, so every character of every evaluation text is scored.
Metric: exact-span micro F1 (``finetune.metrics.entity_prf``, seqeval strict).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from finetune.kinds.base import TaskKind, register_kind
from finetune.metrics import entity_prf, tag_scheme


@register_kind
class SequenceLabeling(TaskKind):
    name = "sequence_labeling"
    main_metric = "f1"

    def __init__(self, task, hidden_size, opts):
        super().__init__(task, hidden_size, opts)
        if not task.labels:
            raise ValueError(f"task {task.name}: sequence labelling needs a tag set")
        self.tags = list(task.labels)
        self.tag_id = {t: i for i, t in enumerate(self.tags)}
        self.scheme = tag_scheme(self.tags)
        self.head = nn.Sequential(nn.Dropout(opts.dropout), nn.Linear(hidden_size, len(self.tags)))

    def features(self, examples, split):
        n = self.opts.max_chars
        out = []
        for i, ex in enumerate(examples):
            text, tags = ex["text"], ex["tags"]
            for j, s in enumerate(range(0, max(len(text), 1), n)):
                out.append({"text": text[s:s + n], "tags": tags[s:s + n], "eid": i, "part": j})
        return out

    def collate(self, features):
        texts = [f["text"] for f in features]
        C = max([len(t) for t in texts] + [1])
        labels = torch.full((len(texts), C), -100, dtype=torch.long)
        for i, f in enumerate(features):
            labels[i, :len(f["tags"])] = torch.tensor([self.tag_id[t] for t in f["tags"]], dtype=torch.long)
        return {"text": texts, "labels": labels}

    def forward(self, encoder, batch):
        enc = encoder.encode(batch["text"])
        logits = self.head(enc.char_states_a)  # [B, C, L]
        out = {"logits": logits, "mask": enc.char_mask_a}
        if "labels" in batch:
            labels = batch["labels"].to(logits.device)[:, :logits.size(1)].clone()
            labels[~enc.char_mask_a] = -100
            out["loss"] = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100)
        return out

    def predict(self, outputs, batch):
        ids = outputs["logits"].argmax(-1).tolist()
        return [[self.tags[k] for k in row[:len(t)]] + ["O"] * max(0, len(t) - len(row))
                for row, t in zip(ids, batch["text"])]

    def score(self, predictions, features):
        gold, pred, cur = [], [], None
        for p, f in zip(predictions, features):
            if f["eid"] != cur:
                gold.append([])
                pred.append([])
                cur = f["eid"]
            gold[-1].extend(f["tags"])
            pred[-1].extend(p)
        return entity_prf(gold, pred, self.scheme)
