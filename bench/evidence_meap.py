"""The MEAP evidence recipe: ``ntp`` vs ``meap`` at equal steps and tokens, several seeds.

For every seed S (``--seeds``):

1. pre-train ``meap`` with ``configs/pretrain/meap-CONFIG.yaml`` and ``ntp`` with the same file and
   ``objective=ntp 'objective_options={}'`` (so only the objective differs), ``train.seed=S``, into
   ``runs/RUN/pretrain/{ntp,meap}-sS/``;
2. the retrieval evaluation (``python -m finetune.retrieval``) on all of them, zero-shot and after
   each SFT variant of the retrieval config;
3. the attention diagnostics (``python -m evaluate run attention``) on the first seed's checkpoints.

Then ``runs/RUN/evidence/meap/``: ``summary.json`` (clean validation loss/perplexity from each
export's ``pretrain_meta.json``, retrieval accuracy, attention diagnostics; mean ± std over
pre-training seeds), ``summary.md`` and ``needle_by_depth.png`` (ntp vs meap, mean ± std over seeds).
Every step is skipped when its output exists (pre-training resumes), so re-running continues.

``python bench/evidence_meap.py --run RUN [--config tiny] [--seeds 0 1 2] [--steps N]
[--retrieval-config FILE] [key=value ...]`` (extra ``key=value`` go to the retrieval CLI). A smoke
run: ``--seeds 0 --steps 50 --retrieval-config configs/finetune/retrieval-tiny.yaml seeds=[0]
sft.budget=steps sft.steps=20``. The shards (``make shards RUN=RUN``) must exist.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from evidence_common import sh, stats  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="demo")
    ap.add_argument("--runs-root", default="runs")
    ap.add_argument("--config", default="tiny", help="configs/pretrain/meap-CONFIG.yaml (tiny or 0.1b)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=None, help="override train.steps (smoke runs)")
    ap.add_argument("--retrieval-config", default="configs/finetune/retrieval-tiny.yaml")
    ap.add_argument("--diag-seq-len", type=int, default=128, help="window length of the attention diagnostics")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for pre-training (train.threads)")
    ap.add_argument("--launch", default=sys.executable, help="the python (or 'accelerate launch') for pre-training")
    ap.add_argument("overrides", nargs="*", help="key=value overrides for the retrieval CLI")
    args = ap.parse_args()
    py = sys.executable
    run_dir = Path(args.runs_root, args.run)
    exports: dict[str, list[Path]] = {"ntp": [], "meap": []}
    for seed in args.seeds:
        for obj in ("ntp", "meap"):
            name = f"{obj}-s{seed}"
            export = run_dir / "pretrain" / name / "export"
            exports[obj].append(export)
            if (export / "model.safetensors").is_file():
                continue
            # one config file for both, the objective swapped: identical model, data, steps, schedule
            cmd = args.launch.split() + ["-m", "pretrain", "--config", f"configs/pretrain/meap-{args.config}.yaml",
                                         f"run={args.run}", f"runs_root={args.runs_root}", f"name={name}",
                                         f"train.seed={seed}"]
            if obj == "ntp":
                cmd += ["objective=ntp", "objective_options={}"]
            if args.threads:
                cmd.append(f"train.threads={args.threads}")
            if args.steps:
                cmd += [f"train.steps={args.steps}", f"train.warmup_steps={max(1, args.steps // 10)}",
                        f"train.eval_every=0", f"train.save_every={args.steps}"]
            sh(cmd)
    models = [str(p) for pair in zip(exports["ntp"], exports["meap"]) for p in pair]
    sh([py, "-m", "finetune.retrieval", "--config", args.retrieval_config, f"run={args.run}",
        f"runs_root={args.runs_root}", *args.overrides, "--models", *models])
    out = run_dir / "evidence" / "meap"
    out.mkdir(parents=True, exist_ok=True)
    diag = {}
    for obj in ("ntp", "meap"):
        f = out / f"attention_diag-{obj}.json"
        if not f.is_file():
            sh([py, "-m", "evaluate", "run", "attention", "--run", args.run, "--runs-root", args.runs_root,
                "--set", f"seq_len={args.diag_seq_len}", "--set", "n_seqs=32", "--out", str(f),
                "--models", f"{obj}={exports[obj][0]}"])
        diag[obj] = json.loads(f.read_text(encoding="utf-8"))["models"][obj]

    res = json.loads((run_dir / "finetune" / "retrieval" / "results.json").read_text(encoding="utf-8"))["models"]
    summary: dict = {"seeds": args.seeds, "config": args.config, "steps": {}, "clean_valid": {}, "retrieval": {},
                     "attention": {o: {"mean": d["mean"], "relative_change": d["relative_change"]} for o, d in diag.items()}}
    for obj in ("ntp", "meap"):
        losses, steps = [], []
        for e in exports[obj]:
            meta = json.loads((e / "pretrain_meta.json").read_text(encoding="utf-8"))
            losses.append((meta.get("final_eval") or {}).get("loss"))
            steps.append(meta.get("steps"))
        summary["steps"][obj] = steps
        summary["clean_valid"][obj] = {"loss": stats(losses),
                                       "perplexity": stats([math.exp(x) for x in losses if x is not None])}
        per_variant: dict = {}
        for e in exports[obj]:
            name = e.parent.name
            for variant, mv in res.get(name, {}).items():
                for task, t in mv["tasks"].items():
                    dst = per_variant.setdefault(variant, {}).setdefault(task, {"accuracy": [], "token_accuracy": [],
                                                                                "cells": {}, "token_cells": {}})
                    dst["accuracy"].append(t["accuracy"]["mean"])
                    dst["token_accuracy"].append(t.get("token_accuracy", {}).get("mean"))
                    for key, cells in (("by_length", "cells"), ("token_by_length", "token_cells")):
                        for L, byd in t.get(key, {}).items():
                            for d, s in byd.items():
                                dst[cells].setdefault(f"{L}|{d}", []).append(s["mean"])
        summary["retrieval"][obj] = {v: {task: {"accuracy": stats(t["accuracy"]),
                                                "token_accuracy": stats(t["token_accuracy"]),
                                                "cells": {k: stats(x) for k, x in t["cells"].items()},
                                                "token_cells": {k: stats(x) for k, x in t["token_cells"].items()}}
                                         for task, t in tasks.items()} for v, tasks in per_variant.items()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    write_md(summary, out)
    plot(summary, out)
    print((out / "summary.md").read_text(encoding="utf-8"))
    return 0


def _ms(s: dict, fmt: str = "{:.2f}") -> str:
    return "-" if s.get("mean") is None else (fmt + " ± " + fmt).format(s["mean"], s["std"])


def write_md(s: dict, out: Path) -> None:
    lines = [f"# MEAP evidence: ntp vs meap ({s['config']}, seeds {s['seeds']}, steps {s['steps']})", "",
             "| objective | clean valid loss | clean valid ppl |", "| --- | --- | --- |"]
    for o in ("ntp", "meap"):
        cv = s["clean_valid"][o]
        lines.append(f"| {o} | {_ms(cv['loss'], '{:.4f}')} | {_ms(cv['perplexity'])} |")
    lines += ["", "Retrieval accuracy (%), mean ± std over pre-training seeds:", "",
              "| objective | variant | needle | mdqa | needle token acc. | mdqa token acc. |",
              "| --- | --- | --- | --- | --- | --- |"]
    for o in ("ntp", "meap"):
        for v, tasks in s["retrieval"][o].items():
            cells = [_ms(tasks.get(t, {}).get(k, {}), "{:.1f}") for k in ("accuracy", "token_accuracy")
                     for t in ("needle", "mdqa")]
            lines.append(f"| {o} | {v} | " + " | ".join(cells) + " |")
    lines += ["", "Attention diagnostics (seed 0 checkpoints; masked vs clean input):", "",
              "| objective | mass on masked: clean → masked | change | var over unmasked: clean → masked | change |",
              "| --- | --- | --- | --- | --- |"]
    for o, d in s["attention"].items():
        m, r = d["mean"], d["relative_change"]
        lines.append(f"| {o} | {m['mass_on_masked']['clean']:.4f} → {m['mass_on_masked']['masked']:.4f} | "
                     f"{100 * (r['mass_on_masked'] or 0):+.1f} % | {m['var_unmasked']['clean']:.3g} → "
                     f"{m['var_unmasked']['masked']:.3g} | {100 * (r['var_unmasked'] or 0):+.1f} % |")
    lines += ["", "![needle by depth](needle_by_depth.png)", "",
              "![needle answer-token accuracy by depth](needle_token_by_depth.png)"]
    (out / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def plot(s: dict, out: Path) -> None:
    """``needle_by_depth.png`` (exact match) and ``needle_token_by_depth.png`` (answer-token accuracy)."""
    for cells_key, fname, ylabel in (("cells", "needle_by_depth.png", "exact match (%)"),
                                     ("token_cells", "needle_token_by_depth.png", "answer-token accuracy (%)")):
        _plot_one(s, out, cells_key, fname, ylabel)


def _plot_one(s: dict, out: Path, cells_key: str, fname: str, ylabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = sorted({v for o in ("ntp", "meap") for v in s["retrieval"][o]}, key=lambda v: (v != "none", v))
    lengths = sorted({k.split("|")[0] for o in ("ntp", "meap") for v in s["retrieval"][o].values()
                      for k in v.get("needle", {}).get(cells_key, {})}, key=int)
    if not variants or not lengths:
        return
    fig, axes = plt.subplots(len(variants), len(lengths), figsize=(4 * len(lengths), 3 * len(variants)), squeeze=False)
    for i, v in enumerate(variants):
        for j, L in enumerate(lengths):
            ax = axes[i][j]
            for o in ("ntp", "meap"):
                cells = s["retrieval"][o].get(v, {}).get("needle", {}).get(cells_key, {})
                xs = sorted((k for k in cells if k.split("|")[0] == L), key=lambda k: float(k.split("|")[1]))
                ax.errorbar([float(k.split("|")[1]) for k in xs], [cells[k]["mean"] for k in xs],
                            yerr=[cells[k]["std"] for k in xs], marker="o", capsize=3, label=o)
            ax.set_title(f"{'zero-shot' if v == 'none' else 'SFT ' + v}, {L} tokens", fontsize=9)
            ax.set_ylim(-2, 102)
            ax.set_xlabel("depth")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / fname, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
