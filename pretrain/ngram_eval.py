"""Whole-n-gram recovery on held-out text (ERNIE-Gram evidence, ``docs/ernie_gram.md``).

On the ``valid`` windows of the char shards (which carry the n-gram units of
:func:`tokenization.ngram.max_match`), ``mask_prob`` of the units of every window are chosen
with a fixed seed -- the *same* units for every model -- and every chosen unit is masked. A
masked n-gram (unit of >= 2 tokens) counts as recovered only if it is predicted exactly:

* ``explicit`` (an ``ernie_gram`` pre-training folder with the explicit head): the n-gram is
  collapsed to one ``[MASK]`` and the argmax over the joint vocabulary must be its n-gram id; with
  comprehensive queries the fine-grained queries are scored too (``queries``: every token right).
  The slot input is what the main model was trained on: ``[MASK]``, or in the generator rung
  (``generator: true``) the generator's sample (drawn from its distribution at ``[MASK]`` input
  with uniforms from a fixed seed), since that rung's main model never sees ``[MASK]`` at a slot.
  Such a sample is sometimes the original n-gram itself, which the main model then only has to
  keep: ``sample_is_original`` (% of masked n-grams) is reported beside the number, and so is
  ``ngram_exact_mask_input``, the rung scored on ``[MASK]`` input (an input it never saw: biased
  low);
* ``contiguous`` (any encoder export with an MLM head, e.g. ``mlm``): all its tokens are
  ``[MASK]`` in place and the argmax at every position must be the right token.

The explicit head needs the objective's heads, which the export drops, so an ``ernie_gram``
folder is read from its pre-training folder: ``config.yaml`` + ``checkpoints/latest``.

``python -m pretrain.ngram_eval --models DIR [DIR ...] --out FILE [--batches 20] [--shards ROOT]``
(``DIR``: ``runs/RUN/pretrain/NAME``). Writes ``FILE`` (JSON, per model and grouped by name with
mean/std over seeds) and prints a table.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import UserError, main_guard
from pipeline.log import get_logger, print_table
from pipeline.runs import atomic_write_json
from pretrain.objectives.ernie_gram import IGNORE, choose_units, collapse, normalise_units

log = get_logger("ngram_eval")


class Contiguous:
    """An encoder export's MLM head, all tokens of a masked n-gram ``[MASK]`` in place."""

    method = "contiguous"

    def __init__(self, export: Path, trust_remote_code: bool = False):
        from pretrain.exports import load_export

        self.model = load_export(export, task="masked_lm", tokenizer=False, model_type="encoder",
                                 trust_remote_code=trust_remote_code).model
        self.model.eval()
        self.n_ngrams = None

    @torch.no_grad()
    def score(self, ids, special, valid, ulen, ung, chosen, mask_id: int, pad_id: int, cap: int) -> dict[str, int]:
        B, T = ids.shape
        is_start, ul, _ = normalise_units(ulen, ung, special, valid, cap)
        ar = torch.arange(T).expand(B, T)
        sp = torch.where(is_start, ar, torch.zeros_like(ar)).cummax(dim=1).values
        in_masked = chosen.gather(1, sp)
        in_ngram = in_masked & (ul.gather(1, sp) >= 2)
        x = torch.where(in_masked, torch.full_like(ids, mask_id), ids)
        logits = self.model(input_ids=x, attention_mask=valid.long()).logits
        ok = logits.argmax(-1) == ids
        # a unit is exact when no token of it is wrong: count wrong tokens per unit start
        wrong = torch.zeros(B, T, dtype=torch.long).scatter_add_(1, sp, (in_ngram & ~ok).long())
        starts = chosen & (ul >= 2)
        return {"ngrams": int(starts.sum()), "exact": int((starts & (wrong == 0)).sum()),
                "tokens": int(in_ngram.sum()), "tokens_ok": int((in_ngram & ok).sum())}


class Explicit:
    """An ``ernie_gram`` objective rebuilt from its pre-training folder with its latest checkpoint."""

    method = "explicit"

    def __init__(self, run_dir: Path):
        from safetensors.torch import load_model

        from pipeline.config import load_config
        from pretrain.checkpoint import Checkpointer
        from pretrain.config import PretrainConfig
        from pretrain.data import build_context
        from pretrain.objectives.base import build_objective

        cfg = load_config(PretrainConfig, run_dir / "config.yaml", [])
        latest = Checkpointer(run_dir / "checkpoints").latest()
        if latest is None or not (latest / "model.safetensors").is_file():
            raise UserError(f"{run_dir}: no checkpoint with the n-gram head (checkpoints/latest/model.safetensors)")
        self.obj = build_objective(cfg.objective, cfg.objective_options, build_context(cfg))
        if not self.obj.cfg.explicit:
            raise UserError(f"{run_dir}: this ernie_gram run has no explicit n-gram head (explicit: false)")
        missing, unexpected = load_model(self.obj, str(latest / "model.safetensors"), strict=False)
        if missing or unexpected:
            raise UserError(f"{latest}: checkpoint does not match its config (missing {missing[:3]}, unexpected {unexpected[:3]})")
        self.obj.eval()
        self.n_ngrams = self.obj.n_ngrams
        self.sample_gen = torch.Generator().manual_seed(0)  # the generator rung's sampling uniforms

    @torch.no_grad()
    def score(self, ids, special, valid, ulen, ung, chosen, mask_id: int, pad_id: int, cap: int) -> dict[str, int]:
        o = self.obj
        b = collapse(ids, special, valid, ulen, ung, chosen, mask_id=mask_id, pad_id=pad_id, fine_size=o.fine_size,
                     max_ngrams=cap, mask_prob=0.15, queries=o.query_mode, generator=None,
                     renumber_positions=o.cfg.positions == "renumbered")
        labels = b["coarse_labels"]
        ng = (labels != IGNORE) & (b["slot_len"] >= 2)
        if getattr(o.cfg, "generator", False):
            g = getattr(self, "sample_gen", None) or torch.Generator().manual_seed(0)
            b["sample_u"] = torch.rand(b["main_ids"].shape, generator=g)
        pred = o.predict_masked(b, slot_input="trained")
        res = {"ngrams": int(ng.sum()), "exact": int((ng & (pred["coarse"] == labels)).sum())}
        if "sampled" in pred:  # generator rung: the input it was trained on, plus the biased [MASK] number
            res["sample_is_original"] = int((ng & (pred["sampled"] == labels)).sum())
            on_mask = o.predict_masked(b, slot_input="mask")
            res["exact_mask_input"] = int((ng & (on_mask["coarse"] == labels)).sum())
        qv = b["query_valid"]
        if qv.shape[1] and o.query_mode != "none":
            okq = (pred["fine"] == b["query_labels"]) | ~qv
            wrong = torch.zeros(labels.shape, dtype=torch.long).scatter_add_(1, b["query_slot"], (~okq).long())
            res["queries_exact"] = int((ng & (wrong == 0)).sum())
            qng = qv & (b["slot_len"].gather(1, b["query_slot"]) >= 2)
            res["tokens"] = int(qng.sum())
            res["tokens_ok"] = int((qng & okq).sum())
        return res


def load_scorer(d: str | Path, trust_remote_code: bool = False):
    d = Path(d)
    if (d / "config.yaml").is_file() and (d / "checkpoints").is_dir():
        try:
            import yaml

            objective = (yaml.safe_load((d / "config.yaml").read_text(encoding="utf-8")) or {}).get("objective")
        except Exception as e:  # noqa: BLE001 - reported as a user error
            raise UserError(f"{d / 'config.yaml'}: cannot read ({e})") from None
        if objective == "ernie_gram":
            return Explicit(d), d
    exp = d / "export" if (d / "export" / "config.json").is_file() else d
    if not (exp / "config.json").is_file():
        raise UserError(f"{d}: neither an ernie_gram pre-training folder nor an encoder export")
    return Contiguous(exp, trust_remote_code), exp


def names_of(d: Path) -> tuple[str, str]:
    parts = d.resolve().parts
    if parts[-1] == "export":
        parts = parts[:-1]
    if len(parts) >= 3 and parts[-2] == "pretrain":
        return f"{parts[-3]}/{parts[-1]}", parts[-1]
    return str(d), d.name


def evaluate_models(models: list[str], shards: str | None, *, batches: int, batch_size: int, seq_len: int | None,
                    mask_prob: float, max_ngrams: int, seed: int, kind: str = "char",
                    trust_remote_code: bool = False) -> dict:
    scorers = []
    for m in models:
        sc, d = load_scorer(m, trust_remote_code)
        scorers.append((*names_of(d), sc, Path(m)))
    caps = [sc.n_ngrams for _, _, sc, _ in scorers if sc.n_ngrams] + [max_ngrams]
    cap = min(caps)
    first = scorers[0][3]
    first_cfg = {}
    if (first / "config.yaml").is_file():
        import yaml

        first_cfg = yaml.safe_load((first / "config.yaml").read_text(encoding="utf-8")) or {}
    data_cfg = first_cfg.get("data") or {}
    if shards is None:  # the first model's own shards (its resolved config), else runs/RUN/shards
        if data_cfg.get("shards_root"):
            shards = str(data_cfg["shards_root"])
        else:
            run_root = first.parent.parent if first.parent.name == "pretrain" else first.parent.parent.parent
            shards = str(run_root / "shards")
    if seq_len is None:
        seq_len = int(data_cfg.get("seq_len", 128))
    from tokenization.loader import PackedLoader

    loader = PackedLoader(shards, kind, "valid", seq_len or 128, batch_size, seed=seed, shuffle=False)
    meta = loader.vocab_meta.get("special_tokens", {})
    mask_id, pad_id = int(meta.get("mask", 4)), int(meta.get("pad", 0))
    totals: dict[str, dict[str, int]] = {name: defaultdict(int) for name, _, _, _ in scorers}
    n = min(batches, len(loader))
    if n < 1:
        raise UserError(f"{shards}/{kind}/valid: no validation batch of {batch_size} windows")
    for i in range(n):
        b = loader.batch(0, i)
        if "unit_len" not in b:
            raise UserError(f"{shards}/{kind}: the shards carry no n-gram units (build them with the 'ngram' kind)")
        ids = torch.from_numpy(np.asarray(b["input_ids"], dtype=np.int64))
        special = torch.from_numpy(np.asarray(b["special_mask"], dtype=bool))
        valid = torch.from_numpy(np.asarray(b["attention_mask"]) != 0)
        ulen = torch.from_numpy(np.asarray(b["unit_len"], dtype=np.int64))
        ung = torch.from_numpy(np.asarray(b["unit_ngram"], dtype=np.int64))
        is_start, _, _ = normalise_units(ulen, ung, special, valid, cap)
        chosen = choose_units(is_start & ~special & valid, mask_prob, torch.Generator().manual_seed(seed * 100003 + i))
        for name, _, sc, _ in scorers:
            for k, v in sc.score(ids, special, valid, ulen, ung, chosen, mask_id, pad_id, cap).items():
                totals[name][k] += v
    results, groups = {}, defaultdict(list)
    for name, group, sc, _ in scorers:
        t = totals[name]
        r = {"method": sc.method, "group": group, "ngrams": t["ngrams"],
             "ngram_exact": 100.0 * t["exact"] / max(1, t["ngrams"])}
        if "queries_exact" in t:
            r["queries_exact"] = 100.0 * t["queries_exact"] / max(1, t["ngrams"])
        if "sample_is_original" in t:
            r["slot_input"] = "generator_sample"
            r["sample_is_original"] = 100.0 * t["sample_is_original"] / max(1, t["ngrams"])
            r["ngram_exact_mask_input"] = 100.0 * t["exact_mask_input"] / max(1, t["ngrams"])
        elif sc.method == "explicit":
            r["slot_input"] = "mask"
        if t.get("tokens"):
            r["token_acc"] = 100.0 * t["tokens_ok"] / t["tokens"]
        results[name] = r
        groups[group].append(name)
    summary = {}
    for g, names in groups.items():
        vals = [results[x]["ngram_exact"] for x in names]
        summary[g] = {"n": len(names), "method": results[names[0]]["method"], "ngram_exact": {
            "mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "values": vals}}
    return {"data": {"shards": str(shards), "kind": kind, "split": "valid", "batches": n, "batch_size": batch_size,
                     "mask_prob": mask_prob, "lexicon_cap": cap, "seed": seed},
            "models": results, "groups": summary}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pretrain.ngram_eval", description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", required=True, help="pre-training folders runs/RUN/pretrain/NAME")
    ap.add_argument("--out", required=True)
    ap.add_argument("--shards", default=None, help="shards root (default: runs/RUN/shards of the first model)")
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=None)
    ap.add_argument("--mask-prob", type=float, default=0.15)
    ap.add_argument("--max-ngrams", type=int, default=10**9, help="lexicon cap (default: the smallest model's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--trust-remote-code", action="store_true",
                    help="let code shipped in the model folders run (read it first; docs/reliability.md)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    res = evaluate_models(a.models, a.shards, batches=a.batches, batch_size=a.batch_size, seq_len=a.seq_len,
                          mask_prob=a.mask_prob, max_ngrams=a.max_ngrams, seed=a.seed,
                          trust_remote_code=a.trust_remote_code)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, res)
    rows = [[name, r["method"], r.get("slot_input", "mask"), r["ngrams"], f"{r['ngram_exact']:.2f}",
             f"{r.get('sample_is_original', float('nan')):.2f}", f"{r.get('ngram_exact_mask_input', float('nan')):.2f}",
             f"{r.get('queries_exact', float('nan')):.2f}", f"{r.get('token_acc', float('nan')):.2f}"]
            for name, r in res["models"].items()]
    print_table(f"whole-n-gram recovery on {res['data']['shards']} valid -> {out}",
                ["model", "method", "slot input", "n-grams", "exact %", "sample = original %",
                 "exact on [MASK] %", "queries exact %", "token acc %"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main_guard(main)())
