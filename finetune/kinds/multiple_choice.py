"""Multiple choice (C3, CHID): every (context, question + choice) pair is encoded, the pooled
state gives one score per choice, softmax over the choices; accuracy.

Examples may have different numbers of choices (C3 has 2-4); missing ones are masked out.
"""

from __future__ import annotations

import torch

from finetune.kinds.base import classifier, register_kind, sentence_state
from finetune.kinds.classification import SingleLabelKind


@register_kind
class MultipleChoice(SingleLabelKind):
    name = "multiple_choice"
    main_metric = "acc"

    def __init__(self, task, hidden_size, opts):
        super().__init__(task, hidden_size, opts)
        self.head = classifier(hidden_size, 1, opts.dropout)

    def collate(self, features):
        mc, mb = self.opts.max_chars, self.opts.max_chars_b or self.opts.max_chars
        K = max(len(f["choices"]) for f in features)
        a, b = [], []
        valid = torch.zeros((len(features), K), dtype=torch.bool)
        for i, f in enumerate(features):
            for k in range(K):
                ch = f["choices"][k] if k < len(f["choices"]) else ""
                q = f.get("question") or ""
                a.append(f["context"][:mc])
                b.append(((q + " " if q else "") + ch)[:mb])
                valid[i, k] = k < len(f["choices"])
        batch = {"text": a, "text_b": b, "valid": valid, "K": K}
        return self.add_labels(batch, features)

    def forward(self, encoder, batch):
        enc = encoder.encode(batch["text"], batch["text_b"])
        logits = self.head(sentence_state(enc, self.opts.pooling)[0]).view(-1, batch["K"])
        return self.logits_output(logits.masked_fill(~batch["valid"].to(logits.device), -1e4), batch)
