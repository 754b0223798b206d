"""Fine-tuning in bf16 against fp32, from the stored results of two studies over the same models.

    python bench/finetune_bf16.py --run h4k                      # mlm / mlm-rand vs their -bf16 rows
    python bench/finetune_bf16.py --run h4k --pairs mlm=mlm-bf16 --seeds 0 1 2 --out docs/x.md

The fp32 rows are the headline study's (``configs/studies/headline.yaml``: fine-tuning
``mixed_precision: auto`` is fp32 on a CPU), the bf16 rows those of
``configs/studies/finetune-bf16.yaml`` (the same models, seeds, tasks and grid with bf16 autocast).
Every grid point (seed, lr) of a (model, task) was trained from the same weights with the same
seed in both precisions, so the comparison is paired. Per (row, task) it prints:

- the study's reading in each precision: test at the per-model dev choice
  (:func:`finetune.stats.select_per_model`), mean ± std over the seeds, the difference and Welch's p;
- the paired test difference bf16 − fp32 over all grid points (mean ± std);
- the final training loss (mean of the last epoch's steps) in each precision and their relative
  difference (the loss-parity reading of issue 21's gate: within 1 %);
- training speed (examples/s) in each precision and the ratio. The two precisions ran in different
  processes, at different times, on shared cores: the ratio is indicative only; ``bench/bench_bf16.py``
  measures the pre-training speed-up in one run.

Reads ``runs/RUN/eval/finetune/MODEL/seed-S.json`` (scores) and the grid files of its work folder
(``seed-S.work/TASK/grid/lr-*.json``: losses and speeds); writes nothing unless ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from finetune.stats import select_per_model, welch_t  # noqa: E402
from grid_union import stored_grid  # noqa: E402
from pipeline.errors import UserError, main_guard  # noqa: E402


def load_points(store: Path, model: str, seed: int, task: str) -> tuple[dict, dict[float, dict]]:
    """The stored seed result's ``TASK_grid`` (scores) as the selection wants it, and the work
    folder's grid files by lr (losses, speeds)."""
    grid = stored_grid(store, model, seed, task)
    files = {}
    for g in sorted((store / model / f"seed-{seed}.work" / task / "grid").glob("lr-*.json")):
        d = json.loads(g.read_text(encoding="utf-8"))
        files[float(d["lr"])] = d
    return {"seed": seed, "grid": grid}, files


def final_loss(point: dict) -> float | None:
    curve = point.get("curve") or []
    return curve[-1].get("train_loss") if curve else None


def ms(xs: list[float]) -> str:
    if not xs:
        return "–"
    return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f}" if len(xs) > 1 else f"{xs[0]:.2f}"


def compare(store: Path, fp32: str, bf16: str, seeds: list[int], tasks: list[str]) -> list[dict]:
    rows = []
    for task in tasks:
        sel, paired, losses, speeds = {}, [], {"fp32": [], "bf16": []}, {"fp32": [], "bf16": []}
        per = {}
        for name, model in (("fp32", fp32), ("bf16", bf16)):
            loaded = [load_points(store, model, s, task) for s in seeds]
            sel[name] = select_per_model([r for r, _ in loaded])
            per[name] = loaded
        for (ra, fa), (rb, fb) in zip(per["fp32"], per["bf16"]):
            ta = {float(g["lr"]): g["test"] for g in ra["grid"]}
            for g in rb["grid"]:
                lr = float(g["lr"])
                if lr in ta:
                    paired.append(g["test"] - ta[lr])
                if lr in fa and lr in fb:
                    la, lb = final_loss(fa[lr]), final_loss(fb[lr])
                    if la is not None and lb is not None:
                        losses["fp32"].append(la)
                        losses["bf16"].append(lb)
                    speeds["fp32"].append(fa[lr]["train_examples_per_s"])
                    speeds["bf16"].append(fb[lr]["train_examples_per_s"])
                    if fb[lr].get("precision") != "bf16" or fa[lr].get("precision", "no") != "no":
                        raise UserError(f"{store}/{bf16} seed {rb['seed']} {task} lr {lr:g}: ran in "
                                        f"{fb[lr].get('precision')!r}, {fp32} in {fa[lr].get('precision')!r}: "
                                        "not a bf16 / fp32 pair")
        w = welch_t(sel["bf16"].test, sel["fp32"].test)
        la, lb = (statistics.mean(losses[k]) if losses[k] else None for k in ("fp32", "bf16"))
        sa, sb = (statistics.median(speeds[k]) if speeds[k] else None for k in ("fp32", "bf16"))
        rows.append({"row": fp32, "task": task, "fp32": sel["fp32"].test, "bf16": sel["bf16"].test,
                     "lr_fp32": sel["fp32"].lr, "lr_bf16": sel["bf16"].lr,
                     "diff": statistics.mean(sel["bf16"].test) - statistics.mean(sel["fp32"].test), "p": w.p,
                     "paired": paired, "loss_fp32": la, "loss_bf16": lb,
                     "loss_rel": (lb - la) / la if la else None, "speed_fp32": sa, "speed_bf16": sb,
                     "speed_ratio": sb / sa if sa and sb else None})
    return rows


def table(rows: list[dict]) -> list[str]:
    out = ["| row | task | fp32 | bf16 | Δ (Welch p) | paired Δ over grid points | final train loss fp32 / bf16 (rel.) "
           "| examples/s fp32 / bf16 (ratio, indicative) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = "–" if r["p"] is None or r["p"] != r["p"] else f"{r['p']:.2f}"
        loss = (f"{r['loss_fp32']:.4f} / {r['loss_bf16']:.4f} ({100 * r['loss_rel']:+.1f} %)"
                if r["loss_rel"] is not None else "–")
        speed = (f"{r['speed_fp32']:.0f} / {r['speed_bf16']:.0f} ({r['speed_ratio']:.2f}×)"
                 if r["speed_ratio"] is not None else "–")
        out.append(f"| `{r['row']}` | `{r['task']}` | {ms(r['fp32'])} | {ms(r['bf16'])} | {r['diff']:+.2f} ({p}) | "
                   f"{ms(r['paired'])} (n={len(r['paired'])}) | {loss} | {speed} |")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--run", required=True, help="run folder of both studies (runs/RUN)")
    ap.add_argument("--runs-root", default="runs")
    ap.add_argument("--pairs", nargs="+", default=["mlm=mlm-bf16", "mlm-rand=mlm-rand-bf16"],
                    help="FP32_MODEL=BF16_MODEL (model names of the two studies)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--tasks", nargs="+", default=["pd_pos", "pd_cws", "sentiment", "msra_ner"])
    ap.add_argument("--out", help="also write the table to this markdown file")
    a = ap.parse_args(argv)
    store = Path(a.runs_root) / a.run / "eval" / "finetune"
    rows = []
    for pair in a.pairs:
        if "=" not in pair:
            raise UserError(f"--pairs: '{pair}' is not FP32_MODEL=BF16_MODEL")
        fp32, bf16 = pair.split("=", 1)
        rows += compare(store, fp32, bf16, a.seeds, a.tasks)
    lines = table(rows)
    allrel = [r["loss_rel"] for r in rows if r["loss_rel"] is not None]
    ratios = [r["speed_ratio"] for r in rows if r["speed_ratio"] is not None]
    if allrel:
        lines.append("")
        lines.append(f"final training loss, bf16 vs fp32: mean relative difference {100 * statistics.mean(allrel):+.2f} %, "
                     f"largest |·| {100 * max(abs(x) for x in allrel):.2f} % over {len(allrel)} (row, task) pairs; "
                     f"median speed ratio {statistics.median(ratios):.2f}× (indicative: separate processes)")
    print("\n".join(lines))
    if a.out:
        Path(a.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main_guard(main)())
