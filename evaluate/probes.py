"""Probes of frozen encoders (CLOWER evidence, ``docs/clower.md``): cheap, measurable at tiny scale.

1. **Word-boundary probe.** A linear B/M/E/S classifier on frozen per-character states (last
   layer by default), People's Daily 1998 gold segmentation (:mod:`evaluate.pd1998`, held-out lines
   only): fitted on the ``dev`` lines, scored on the ``test`` lines. Reported: character accuracy
   and word F1 of the decoded segmentation.
2. **Nearest-neighbour word retrieval.** A word's vector is the mean of its characters' states in
   context. Prototypes: the mean vector of each multi-character word type seen at least
   ``min_occurrences`` times in the dev lines (the ``max_types`` most frequent); queries: every
   test-line occurrence of those types; top-1 / top-5 accuracy of cosine nearest prototype.
   With a character vocabulary this is nearly saturated even for a random model (the characters
   identify the word), so a second, harder variant retrieves the word **from context alone**:
   its characters are replaced by the mask token, its vector is the mean state at those
   positions (prototypes: up to ``masked_per_type`` dev occurrences of the ``masked_types`` most
   frequent types; queries: test occurrences). Chance is 1 / ``masked_types``.

The seed seeds the probe's initialisation (L-BFGS from ``torch.manual_seed(seed)``) and, for the
random-init baseline, the fresh weights; seed 0 gives the numbers of the former
``python -m pretrain.probes``. Run: ``python -m evaluate run probes --models DIR ... --run RUN
[--random-init]`` or as an evaluation of a study (``docs/evaluate.md``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from evaluate.base import EvalContext, Evaluation, register
from evaluate.frozen import FrozenEncoder, resolve_export
from evaluate.pd1998 import bmes_tags, load_pd_heldout, spans_from_tags
from pipeline.errors import UserError


def fit_linear_probe(x: torch.Tensor, y: torch.Tensor, n_classes: int, steps: int = 100,
                     weight_decay: float = 1e-4, seed: int = 0) -> torch.nn.Linear:
    """Multinomial logistic regression (full-batch L-BFGS) on standardised features."""
    torch.manual_seed(seed)
    lin = torch.nn.Linear(x.shape[1], n_classes)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=steps, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(x), y) + weight_decay * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lin


def boundary_probe(enc: FrozenEncoder, data: dict[str, list[list[str]]], steps: int, seed: int = 0) -> dict[str, float]:
    feats, labels = {}, {}
    for split in ("dev", "test"):
        feats[split] = torch.cat(enc.char_states(["".join(ws) for ws in data[split]]))
        labels[split] = [bmes_tags(ws) for ws in data[split]]
    mu, sd = feats["dev"].mean(0), feats["dev"].std(0).clamp_min(1e-6)
    lin = fit_linear_probe((feats["dev"] - mu) / sd, torch.tensor(sum(labels["dev"], [])), 4, steps, seed=seed)
    with torch.no_grad():
        pred = lin((feats["test"] - mu) / sd).argmax(-1).tolist()
    gold_flat = sum(labels["test"], [])
    acc = sum(int(p == g) for p, g in zip(pred, gold_flat)) / max(1, len(gold_flat))
    tp = n_pred = n_gold = k = 0
    for tags in labels["test"]:
        ps, gs = spans_from_tags(pred[k:k + len(tags)]), spans_from_tags(tags)
        k += len(tags)
        tp += len(ps & gs)
        n_pred += len(ps)
        n_gold += len(gs)
    prec, rec = tp / max(1, n_pred), tp / max(1, n_gold)
    f1 = 2 * prec * rec / max(1e-12, prec + rec)
    return {"boundary_char_acc": 100 * acc, "boundary_word_f1": 100 * f1,
            "boundary_train_chars": int(feats["dev"].shape[0]), "boundary_test_chars": len(gold_flat)}


def word_vectors(enc: FrozenEncoder, sents: list[list[str]], keep: set[str] | None) -> tuple[list[str], torch.Tensor]:
    states = enc.char_states(["".join(ws) for ws in sents])
    words, vecs = [], []
    for ws, h in zip(sents, states):
        p = 0
        for w in ws:
            if len(w) >= 2 and (keep is None or w in keep):
                words.append(w)
                vecs.append(h[p:p + len(w)].mean(0))
            p += len(w)
    H = states[0].shape[1] if states else 1
    return words, (torch.stack(vecs) if vecs else torch.zeros(0, H))


def _types(data: dict, min_occurrences: int, max_types: int) -> list[str]:
    counts = Counter(w for ws in data["dev"] for w in ws if len(w) >= 2)
    return [w for w, c in counts.most_common() if c >= min_occurrences][:max_types]


def _topk(q: torch.Tensor, proto: torch.Tensor, gold: torch.Tensor, n_types: int) -> tuple[float, float]:
    top = (torch.nn.functional.normalize(q, dim=-1) @ proto.t()).topk(min(5, n_types), dim=-1).indices
    return 100 * (top[:, 0] == gold).float().mean().item(), 100 * (top == gold[:, None]).any(-1).float().mean().item()


def retrieval_probe(enc: FrozenEncoder, data: dict[str, list[list[str]]], min_occurrences: int,
                    max_types: int) -> dict[str, float]:
    types = _types(data, min_occurrences, max_types)
    keep, index = set(types), {w: i for i, w in enumerate(types)}
    dev_words, dev_vecs = word_vectors(enc, data["dev"], keep)
    proto = torch.zeros(len(types), dev_vecs.shape[1])
    proto.index_add_(0, torch.tensor([index[w] for w in dev_words], dtype=torch.long), dev_vecs)
    q_words, q_vecs = word_vectors(enc, data["test"], keep)
    if not q_words:
        raise UserError("no test-line occurrence of a probe word type: too little held-out data")
    top1, top5 = _topk(q_vecs, torch.nn.functional.normalize(proto, dim=-1),
                       torch.tensor([index[w] for w in q_words]), len(types))
    return {"retrieval_top1": top1, "retrieval_top5": top5, "retrieval_types": len(types),
            "retrieval_queries": len(q_words)}


def occurrences(sents: list[list[str]], keep: set[str], per_type: int | None, limit: int) -> list[tuple[str, str, int, int]]:
    """(word, text, start, end) of the occurrences of ``keep`` types, at most ``per_type`` each
    (in order) and ``limit`` in all."""
    seen: Counter = Counter()
    out = []
    for ws in sents:
        text, p = "".join(ws), 0
        for w in ws:
            if w in keep and (per_type is None or seen[w] < per_type):
                seen[w] += 1
                out.append((w, text, p, p + len(w)))
                if len(out) >= limit:
                    return out
            p += len(w)
    return out


def masked_retrieval_probe(enc: FrozenEncoder, data: dict[str, list[list[str]]], min_occurrences: int,
                           max_types: int, per_type: int, max_queries: int) -> dict[str, float]:
    """Word retrieval from context alone: the word's characters are masked, its vector is the mean
    state at the masked positions; prototypes from dev occurrences, queries from test ones."""
    types = _types(data, min_occurrences, max_types)
    index = {w: i for i, w in enumerate(types)}
    dev = occurrences(data["dev"], set(types), per_type, per_type * len(types))
    test = occurrences(data["test"], set(types), None, max_queries)
    if not dev or not test:
        raise UserError("too little held-out data for the masked retrieval probe")
    dv = enc.masked_span_vectors([(t, a, b) for _, t, a, b in dev])
    proto = torch.zeros(len(types), dv.shape[1]).index_add_(0, torch.tensor([index[w] for w, *_ in dev]), dv)
    top1, top5 = _topk(enc.masked_span_vectors([(t, a, b) for _, t, a, b in test]),
                       torch.nn.functional.normalize(proto, dim=-1), torch.tensor([index[w] for w, *_ in test]), len(types))
    return {"masked_retrieval_top1": top1, "masked_retrieval_top5": top5, "masked_retrieval_types": len(types),
            "masked_retrieval_queries": len(test), "masked_retrieval_chance_top1": 100.0 / max(1, len(types))}


@register
class Probes(Evaluation):
    """Boundary probe, word retrieval and masked word retrieval of a frozen encoder export."""

    name = "probes"
    random_init_ok = True
    metrics = ("boundary_char_acc", "boundary_word_f1", "retrieval_top1", "retrieval_top5",
               "masked_retrieval_top1", "masked_retrieval_top5")

    @dataclass
    class Config:
        max_train: int = 2000       # dev lines the probe is fitted on
        max_test: int = 1000        # test lines it is scored on
        max_chars: int = 200        # each line cut at a word boundary to this many characters
        probe_steps: int = 100      # L-BFGS iterations of the boundary probe
        min_occurrences: int = 3    # dev occurrences a word type needs to be a retrieval prototype
        max_types: int = 2000
        layer: int = -1             # hidden layer (-1: last)
        masked_types: int = 200     # word types of the masked retrieval probe
        masked_per_type: int = 10   # dev occurrences per type (its prototype)
        masked_queries: int = 1000  # test occurrences scored

    def __init__(self, cfg, data: dict | None = None):
        super().__init__(cfg)
        self._data = data  # {"dev": [[word, ...], ...], "test": ...}; None: People's Daily held-out lines
        self._custom = data is not None

    def settings(self) -> dict:
        s = super().settings()
        if self._custom:  # lines given by the caller: they are part of what a stored result depends on
            s["data"] = self._data
        return s

    def data(self) -> dict:
        c = self.cfg
        data = self._data if self._data is not None else load_pd_heldout(c.max_chars)
        data = {"dev": data["dev"][:c.max_train], "test": data["test"][:c.max_test]}
        if not data["dev"] or not data["test"]:
            raise UserError("no held-out People's Daily lines found")
        self._data = data
        return data

    def run(self, model_dir: Path, seed: int, ctx: EvalContext) -> dict:
        c, data = self.cfg, self.data()
        enc = FrozenEncoder(resolve_export(model_dir), random_init=ctx.random_init, layer=c.layer,
                            trust_remote_code=ctx.trust_remote_code, seed=seed)
        r = {"train_sents": len(data["dev"]), "test_sents": len(data["test"])}
        r.update(boundary_probe(enc, data, c.probe_steps, seed=seed))
        r.update(retrieval_probe(enc, data, c.min_occurrences, c.max_types))
        r.update(masked_retrieval_probe(enc, data, c.min_occurrences, c.masked_types, c.masked_per_type,
                                        c.masked_queries))
        return r
