"""The multi-vocabulary evidence recipe (issue 6): char MLM, SGT MLM, amber, hi_mvp, al_mvp.

For every pre-training seed S (``--seeds``) and every row (``--rows``; default the five of the
issue plus ``al_mvp_b``, AL-MVP reading b):

1. pre-train ``configs/pretrain/<config>-CONFIG.yaml`` with ``train.seed=S`` (and the row's
   overrides) into ``runs/RUN/pretrain/<row>-sS/`` -- every row has the same steps, batch and window
   length in tokens (see the configs);
2. fine-tune every export with the suite (``python -m finetune``, sentiment + MSRA NER; fine-tuning
   seed = S, so each (pre-training, fine-tuning) pair is one seed); for the ``--twin-seeds``
   (default: the first seed) also a random-init twin of every row (same architecture and input,
   random weights: what pre-training adds);
3. the character-perturbation check (``python -m finetune.adversarial``) on sentiment.

Then ``runs/RUN/evidence/multivocab/summary.{json,md}``: per row, mean ± std over seeds of
sentiment accuracy, NER F1, the accuracy drop under each perturbation, tokens per character of the
input stream (``vocab/KIND/stats.json``), and training throughput (tokens/s and characters/s from
each export's ``pretrain_meta.json``). Differences smaller than the larger of the two stds are
marked "within noise". Finished steps are skipped (pre-training resumes; the suite skips done seeds).

``python bench/evidence_multivocab.py --run RUN [--config tiny] [--seeds 1 2 3] [--steps N]
[--finetune-config FILE] [ft.key=value ...]``. Smoke run (one seed, 50 steps, small fine-tuning):
``--smoke``. Needs the char, sgt and word shards (``make shards RUN=RUN``).

``--step-time`` only measures the training-step cost of every row in one process (real loader
batches of the run, same batch and window, 1 thread, rows interleaved round-robin in a rotating
order so drift on a shared machine hits all alike; median of ``--steps`` steps, default 6) and
writes ``runs/RUN/evidence/multivocab/step_time.json`` (ratios against char MLM).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from evidence_common import sh, stats  # noqa: E402

# row -> (config stem, extra overrides, input stream the model reads at fine-tuning)
ROWS = {
    "mlm": ("mlm", [], "char"),
    "mlm_sgt": ("mlm_sgt", [], "sgt"),
    "amber": ("amber", [], "char+word"),
    "hi_mvp": ("hi_mvp", [], "char"),
    "al_mvp": ("al_mvp", [], "sgt"),
    "al_mvp_b": ("al_mvp", ["objective_options.reading=b", "data.kind=char", "data.extra_kinds=[sgt]"], "char+sgt"),
}
SMOKE_PRETRAIN = ["train.batch_size=8", "train.warmup_steps=5", "train.eval_every=25", "train.eval_batches=2",
                  "train.save_every=25", "train.log_every=10"]
SMOKE_FINETUNE = ["tasks=[{name: sentiment, max_train: 300, max_eval: 150, max_chars: 64}, "
                  "{name: msra_ner, max_train: 300, max_eval: 150, max_chars: 48}]", "epochs=[1]",
                  "random_init_twins=false"]


def fmt(s: dict, digits: int = 2) -> str:
    if s["mean"] is None:
        return "-"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}" if s["n"] > 1 else f"{s['mean']:.{digits}f}"


def tokens_per_char(run_dir: Path, kinds: str) -> float | None:
    total = 0.0
    for k in kinds.split("+"):
        f = run_dir / "vocab" / k / "stats.json"
        if not f.is_file():
            return None
        total += float(json.loads(f.read_text(encoding="utf-8")).get("tokens_per_char", 0.0))
    return total


def step_time(run: str, config: str, rows: list[str], steps: int, batch: int = 32) -> dict:
    """Median training-step time per row, interleaved round-robin in one process."""
    import time

    import torch

    sys.path.insert(0, str(ROOT))
    from pipeline.config import load_config
    from pretrain.config import PretrainConfig
    from pretrain.data import build_context, build_loader
    from pretrain.objectives.base import build_objective

    torch.set_num_threads(1)
    objs, cfgs = {}, {}
    for row in rows:
        stem, over, _ = ROWS[row]
        cfg = load_config(PretrainConfig, ROOT / f"configs/pretrain/{stem}-{config}.yaml",
                          [f"run={run}", f"runs_root={ROOT / 'runs'}", *over])
        torch.manual_seed(0)
        ob = build_objective(cfg.objective, cfg.objective_options, build_context(cfg))
        objs[row] = (ob, build_loader(cfg, "train", batch, 0, 1), torch.optim.AdamW(ob.parameters(), lr=1e-4))
        cfgs[row] = cfg
    times = {r: [] for r in rows}
    for step in range(steps + 1):  # step 0 warms up
        k = step % len(rows)
        for row in rows[k:] + rows[:k]:
            ob, ld, opt = objs[row]
            b = ld.batch(0, step)
            t0 = time.perf_counter()
            out = ob(ob.collate(b, torch.Generator().manual_seed(step)))
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()
            if step:
                times[row].append(time.perf_counter() - t0)
    base = statistics.median(times[rows[0]])
    res = {"metric": "train_step_seconds", "unit": "s", "baseline": rows[0], "batch": batch,
           "seq_len": cfgs[rows[0]].data.seq_len, "threads": 1, "steps": steps, "rows": {}}
    for row in rows:
        m = statistics.median(times[row])
        res["rows"][row] = {"value": m, "ratio": m / base, "primary_tokens_per_s": batch * cfgs[row].data.seq_len / m,
                            "primary_kind": cfgs[row].data.kind}
        print(f"{row:9s} step {m * 1000:7.0f} ms  x{m / base:.2f} of {rows[0]}  "
              f"({batch * cfgs[row].data.seq_len / m:,.0f} {cfgs[row].data.kind} tokens/s)", flush=True)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="demo")
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--steps", type=int, default=None, help="override train.steps for every row")
    ap.add_argument("--finetune-config", default=None, help="default configs/finetune/CONFIG.yaml")
    ap.add_argument("--rates", nargs="+", default=["0.1", "0.2"])
    ap.add_argument("--smoke", action="store_true", help="1 seed, 50 steps, small fine-tuning subsets")
    ap.add_argument("--skip-adversarial", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for pre-training (train.threads)")
    ap.add_argument("--twin-seeds", type=int, nargs="*", default=None,
                    help="seeds whose exports also get a random-init twin fine-tuned (the floor; default: the "
                         "first seed; none: no twins)")
    ap.add_argument("--step-time", action="store_true", help="only measure the step time of every row")
    ap.add_argument("overrides", nargs="*", help="key=value for the fine-tuning CLI")
    a = ap.parse_args(argv)
    py = sys.executable
    run_dir = ROOT / "runs" / a.run
    if a.step_time:
        rows = ["mlm"] + [r for r in a.rows if r != "mlm"]
        res = step_time(a.run, a.config, rows, a.steps or 6)
        out = run_dir / "evidence" / "multivocab"
        out.mkdir(parents=True, exist_ok=True)
        (out / "step_time.json").write_text(json.dumps(res, indent=2), encoding="utf-8")
        return 0
    if a.smoke:
        a.seeds, a.steps = a.seeds[:1], a.steps or 50
    ft_cfg = a.finetune_config or f"configs/finetune/{a.config}.yaml"
    ft_over = (SMOKE_FINETUNE if a.smoke else []) + list(a.overrides)

    exports: dict[str, list[tuple[int, Path]]] = {r: [] for r in a.rows}
    for seed in a.seeds:
        for row in a.rows:
            stem, over, _ = ROWS[row]
            name = f"{row}-s{seed}"
            out = run_dir / "pretrain" / name / "export"
            if not (out / "model.safetensors").is_file():
                cmd = [py, "-m", "pretrain", "--config", f"configs/pretrain/{stem}-{a.config}.yaml", f"run={a.run}",
                       f"name={name}", f"train.seed={seed}", *over]
                if a.steps:
                    cmd.append(f"train.steps={a.steps}")
                if a.threads:
                    cmd.append(f"train.threads={a.threads}")
                if a.smoke:
                    cmd += SMOKE_PRETRAIN
                sh(cmd)
            exports[row].append((seed, out))

    # fine-tuning: one suite call per seed, fine-tuning seed = pre-training seed
    for seed in a.seeds:
        models = [f"{row}-s{seed}={p}" for row in a.rows for s, p in exports[row] if s == seed]
        twins = seed in (a.seeds[:1] if a.twin_seeds is None else a.twin_seeds)
        sh([py, "-m", "finetune", "--config", ft_cfg, "--models", *models, f"run={a.run}", f"seeds=[{seed}]",
            *ft_over, f"random_init_twins={'true' if twins else 'false'}"])
    if not a.skip_adversarial:
        models = [f"{row}-s{s}={p}" for row in a.rows for s, p in exports[row]]
        sh([py, "-m", "finetune.adversarial", "--config", ft_cfg, "--models", *models, f"run={a.run}", "seeds=[1]",
            *ft_over, "--rates", *a.rates])

    # ---- summary
    ft_root = run_dir / "finetune"
    adv = {}
    adv_file = ft_root / "adversarial" / "results.json"
    if adv_file.is_file() and not a.skip_adversarial:
        adv = json.loads(adv_file.read_text(encoding="utf-8"))
    summary = {"run": a.run, "config": a.config, "seeds": a.seeds, "smoke": a.smoke, "rows": {}}
    for row in a.rows:
        sent, ner, tps, cps, seen, drops = [], [], [], [], [], {}
        twin_sent, twin_ner = [], []  # random-init twins, where the suite ran them (the floor)
        for seed, p in exports[row]:
            name = f"{row}-s{seed}"
            for task, acc, twin in (("sentiment", sent, twin_sent), ("msra_ner", ner, twin_ner)):
                f = ft_root / name / task / f"seed-{seed}" / "result.json"
                acc.append(json.loads(f.read_text())["test"] if f.is_file() else None)
                f = ft_root / f"{name}-random" / task / f"seed-{seed}" / "result.json"
                twin.append(json.loads(f.read_text())["test"] if f.is_file() else None)
            meta = json.loads((p / "pretrain_meta.json").read_text())
            secs = max(float(meta.get("train_seconds") or 0), 1e-9)
            tps.append(meta["tokens_seen"] / secs)
            tpc = tokens_per_char(run_dir, ROWS[row][2].split("+")[0])
            if "chars_seen" in meta:  # real counts (pretrain/seen.py)
                cps.append(meta["chars_seen"] / secs)
                seen.append(meta["chars_seen"])
            else:
                cps.append(meta["tokens_seen"] / secs / tpc if tpc else None)
            for c, v in (adv.get("models", {}).get(name, {}).get("drop", {}) or {}).items():
                drops.setdefault(c, []).extend(v)
        summary["rows"][row] = {
            "sentiment_acc": stats(sent), "ner_f1": stats(ner),
            "random_init": {"sentiment_acc": stats(twin_sent), "ner_f1": stats(twin_ner)},
            "train_tokens_per_s": stats(tps),
            "train_chars_per_s": stats(cps), "chars_seen": stats(seen), "tokens_per_char": tokens_per_char(run_dir, ROWS[row][2]),
            "input": ROWS[row][2], "adversarial_drop": {c: stats(v) for c, v in drops.items()}}
    # step cost from --step-time (one process, interleaved rows: robust to load from other jobs,
    # unlike the wall-clock throughput of separate pre-training runs)
    st_file = run_dir / "evidence" / "multivocab" / "step_time.json"
    st = json.loads(st_file.read_text(encoding="utf-8")) if st_file.is_file() else {"rows": {}}
    for row, r in summary["rows"].items():
        r["step_cost_vs_char_mlm"] = (st["rows"].get(row) or {}).get("ratio")
    conds = sorted({c for r in summary["rows"].values() for c in r["adversarial_drop"]})
    base = summary["rows"].get("mlm")
    lines = [f"# Multi-vocabulary evidence ({a.config}, run {a.run}, seeds {a.seeds}{', SMOKE' if a.smoke else ''})", "",
             "Mean ± std over seeds (pre-training seed = fine-tuning seed). Tokens/char: input stream(s) "
             "of the model. 'noise' marks a difference to char MLM below the larger std. Step cost: "
             "median step time / char MLM's (`--step-time`, same batch and window, one process). Random init: "
             "the same architecture and input fine-tuned from random weights (n = seeds run).", "",
             "| row | sentiment acc | NER F1 | random init: sentiment / NER | tokens/char | train tok/s | "
             "train char/s | chars seen | step cost | " + " | ".join(f"drop {c}" for c in conds) + " |",
             "|---|---|---|---|---|---|---|---|---|" + "---|" * len(conds)]

    def noise(row, key):
        r, b = summary["rows"][row][key], (base or {}).get(key)
        if row == "mlm" or not b or r["mean"] is None or b["mean"] is None or r["n"] < 2:
            return ""
        return " (noise)" if abs(r["mean"] - b["mean"]) < max(r["std"], b["std"]) else ""

    def twin(r):
        t = r["random_init"]
        if not t["sentiment_acc"]["n"] and not t["ner_f1"]["n"]:
            return "-"
        return f"{fmt(t['sentiment_acc'])} / {fmt(t['ner_f1'])} (n={max(t['sentiment_acc']['n'], t['ner_f1']['n'])})"

    for row, r in summary["rows"].items():
        tpc = f"{r['tokens_per_char']:.3f}" if r["tokens_per_char"] else "-"
        lines.append(f"| {row} | {fmt(r['sentiment_acc'])}{noise(row, 'sentiment_acc')} | {fmt(r['ner_f1'])}"
                     f"{noise(row, 'ner_f1')} | {twin(r)} | {tpc} | {fmt(r['train_tokens_per_s'], 0)} | "
                     f"{fmt(r['train_chars_per_s'], 0)} | {fmt(r['chars_seen'], 0)} | "
                     + (f"{r['step_cost_vs_char_mlm']:.2f}x | " if r["step_cost_vs_char_mlm"] else "- | ")
                     + " | ".join(fmt(r["adversarial_drop"].get(c, {"mean": None})) for c in conds) + " |")
    out = run_dir / "evidence" / "multivocab"
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    (out / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
