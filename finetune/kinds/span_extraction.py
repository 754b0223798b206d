"""Span extraction (CMRC 2018 format): start/end scores over the context's characters.

Contexts longer than ``max_chars`` are cut into overlapping windows (stride ``max_chars // 2``);
training uses the windows that contain the (first) gold answer, evaluation scores every window
and keeps the best span of an example over all its windows. Answers are at most
``MAX_ANSWER_CHARS`` characters (a choice, as in the CMRC baseline's ``max_answer_length``).
Metric: CMRC 2018 EM (main, as in the CLUE average) and character F1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from finetune.kinds.base import TaskKind, register_kind
from finetune.metrics import span_scores

MAX_ANSWER_CHARS = 64


@register_kind
class SpanExtraction(TaskKind):
    name = "span_extraction"
    main_metric = "em"

    def __init__(self, task, hidden_size, opts):
        super().__init__(task, hidden_size, opts)
        self.head = nn.Sequential(nn.Dropout(opts.dropout), nn.Linear(hidden_size, 2))
        self.n_unanswerable_windows = 0

    def features(self, examples, split):
        n = self.opts.max_chars
        stride = max(1, n // 2)
        out = []
        for i, ex in enumerate(examples):
            ctx = ex["context"]
            ans = ex["answers"][0] if ex.get("answers") else None
            starts = list(range(0, max(len(ctx) - n, 0) + 1, stride))
            if starts[-1] + n < len(ctx):
                starts.append(len(ctx) - n)
            for w0 in starts:
                s = e = -1
                if ans is not None:
                    a0, a1 = ans["start"], ans["start"] + len(ans["text"]) - 1
                    if w0 <= a0 and a1 < w0 + n:
                        s, e = a0 - w0, a1 - w0
                if split == "train" and s < 0:
                    continue
                out.append({"eid": i, "id": ex.get("id", str(i)), "context": ctx[w0:w0 + n], "question": ex["question"],
                            "start": s, "end": e, "answers": [a["text"] for a in ex.get("answers", [])]})
        return out

    def collate(self, features):
        mb = self.opts.max_chars_b or self.opts.max_chars
        batch = {"text": [f["context"] for f in features], "text_b": [f["question"][:mb] for f in features]}
        if all(f["start"] >= 0 for f in features):
            batch["start"] = torch.tensor([f["start"] for f in features], dtype=torch.long)
            batch["end"] = torch.tensor([f["end"] for f in features], dtype=torch.long)
        return batch

    def forward(self, encoder, batch):
        enc = encoder.encode(batch["text"], batch["text_b"])
        logits = self.head(enc.char_states_a).masked_fill(~enc.char_mask_a.unsqueeze(-1), -1e4)  # [B, C, 2]
        out = {"start_logits": logits[..., 0], "end_logits": logits[..., 1]}
        if "start" in batch:
            dev = logits.device
            out["loss"] = 0.5 * (F.cross_entropy(out["start_logits"], batch["start"].to(dev))
                                 + F.cross_entropy(out["end_logits"], batch["end"].to(dev)))
        return out

    def predict(self, outputs, batch):
        s, e = outputs["start_logits"], outputs["end_logits"]
        C = s.size(1)
        scores = s.unsqueeze(2) + e.unsqueeze(1)  # [B, C(start), C(end)]
        i = torch.arange(C, device=s.device)
        band = (i.view(1, -1) >= i.view(-1, 1)) & (i.view(1, -1) - i.view(-1, 1) < MAX_ANSWER_CHARS)
        scores = scores.masked_fill(~band, -1e9).flatten(1)
        best, idx = scores.max(-1)
        out = []
        for b, (v, k) in enumerate(zip(best.tolist(), idx.tolist())):
            st, en = divmod(k, C)
            out.append((v, batch["text"][b][st:en + 1]))
        return out

    def score(self, predictions, features):
        best: dict[int, tuple[float, str]] = {}
        answers: dict[int, list[str]] = {}
        for (v, text), f in zip(predictions, features):
            answers[f["eid"]] = f["answers"]
            if f["eid"] not in best or v > best[f["eid"]][0]:
                best[f["eid"]] = (v, text)
        eids = sorted(best)
        return span_scores([best[i][1] for i in eids], [answers[i] for i in eids])
