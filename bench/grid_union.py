"""Per-model lr selection over the UNION of the grids of several stored fine-tuning studies.

    python bench/grid_union.py runs/demo/eval/finetune runs/headline-lr/eval/finetune \
        --models mlm mlm-rand --seeds 0 1 2 --tasks pd_pos pd_cws

A study's ``finetune`` evaluation stores, per (model, seed), every grid point's dev and test score
(``TASK_grid`` in ``runs/RUN/eval/finetune/MODEL/seed-S.json``). When a study's grid turns out too
narrow (the chosen lr at its edge), a second study over more learning rates can be run into another
run folder; this reads both stores, pools each (model, seed, task)'s grid points and repeats the
study's choice on the pooled grid (:func:`finetune.stats.select_per_model`: best mean dev over the
seeds, test read only there), then compares the first model with the others by Welch's t
(:func:`finetune.stats.welch_t`). Prints one line per task and model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finetune.stats import select_per_model, welch_t  # noqa: E402
from pipeline.errors import UserError  # noqa: E402


def stored_grid(store: Path, model: str, seed: int, task: str) -> list[dict]:
    """The ``TASK_grid`` of a stored fine-tuning result (``STORE/MODEL/seed-S.json``); a missing file
    or task is a one-line user error."""
    f = store / model / f"seed-{seed}.json"
    if not f.is_file():
        raise UserError(f"{f}: no stored result (run the study first)")
    res = json.loads(f.read_text(encoding="utf-8"))["results"]
    if f"{task}_grid" not in res:
        raise UserError(f"{f}: no grid for task '{task}'")
    return res[f"{task}_grid"]


def pooled_grid(stores: list[Path], model: str, seed: int, task: str) -> list[dict]:
    grid: dict[tuple, dict] = {}
    for store in stores:
        for g in stored_grid(store, model, seed, task):
            grid.setdefault((float(g["lr"]), int(g["epochs"])), g)  # the first store wins a duplicate point
    return sorted(grid.values(), key=lambda g: (float(g["lr"]), int(g["epochs"])))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stores", nargs="+", type=Path, help="runs/RUN/eval/finetune folders")
    ap.add_argument("--models", nargs="+", required=True, help="the first is compared with the others")
    ap.add_argument("--seeds", nargs="+", type=int, required=True)
    ap.add_argument("--tasks", nargs="+", required=True)
    a = ap.parse_args(argv)
    try:
        for task in a.tasks:
            sel = {m: select_per_model([{"seed": s, "grid": pooled_grid(a.stores, m, s, task)} for s in a.seeds])
                   for m in a.models}
            for m in a.models:
                t = sel[m].test
                line = (f"{task:10s} {m:12s} lr {sel[m].lr:g} (mean dev {sel[m].dev_mean:.2f}) "
                        f"test {statistics.mean(t):.2f} ± {statistics.stdev(t) if len(t) > 1 else 0:.2f}")
                if m != a.models[0]:
                    w = welch_t(sel[a.models[0]].test, t)
                    p = "n/a" if w.p is None else f"{w.p:.3f}"
                    line += f" | {a.models[0]} - {m}: {w.diff:+.2f}, Welch p {p}"
                print(line)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
