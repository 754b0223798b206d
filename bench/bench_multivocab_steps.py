"""Training-step cost of every multi-vocabulary row against char MLM, in one process.

Real loader batches of a run's shards (``runs/RUN/shards``: char, sgt, word), the rows' own
``configs/pretrain/NAME-CONFIG.yaml`` (the regime: ``model.arch`` of each config), the same batch,
1 torch thread, rows interleaved round-robin in a rotating order so drift on a shared machine hits
all alike; the median of ``--steps`` steps (after one warm-up step) per row and its ratio to the
first row (char MLM, measured in the same run). Writes ``runs/RUN/bench/multivocab_steps.json``.

``python bench/bench_multivocab_steps.py --run demo [--config tiny] [--steps 6] [--batch 32]
[--rows mlm mlm_sgt amber hi_mvp al_mvp al_mvp_b]`` (moved here from the former evidence recipe;
the comparison itself is the study ``configs/studies/multivocab.yaml``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS = ["mlm", "mlm_sgt", "amber", "hi_mvp", "al_mvp", "al_mvp_b"]


def step_time(run: str, config: str, rows: list[str], steps: int, batch: int = 32) -> dict:
    """Median training-step time per row, interleaved round-robin in one process."""
    import torch

    sys.path.insert(0, str(ROOT))
    from pipeline.config import load_config
    from pretrain.config import PretrainConfig
    from pretrain.data import build_context, build_loader
    from pretrain.objectives.base import build_objective

    torch.set_num_threads(1)
    objs, cfgs = {}, {}
    for row in rows:
        cfg = load_config(PretrainConfig, ROOT / f"configs/pretrain/{row}-{config}.yaml",
                          [f"run={run}", f"runs_root={ROOT / 'runs'}"])
        torch.manual_seed(0)
        ob = build_objective(cfg.objective, cfg.objective_options, build_context(cfg))
        objs[row] = (ob, build_loader(cfg, "train", batch, 0, 1), torch.optim.AdamW(ob.parameters(), lr=1e-4))
        cfgs[row] = cfg
    times: dict[str, list[float]] = {r: [] for r in rows}
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
        res["rows"][row] = {"value": m, "ratio": m / base, "arch": cfgs[row].model.arch,
                            "primary_tokens_per_s": batch * cfgs[row].data.seq_len / m, "primary_kind": cfgs[row].data.kind}
        print(f"{row:9s} step {m * 1000:7.0f} ms  x{m / base:.2f} of {rows[0]}  "
              f"({batch * cfgs[row].data.seq_len / m:,.0f} {cfgs[row].data.kind} tokens/s, {cfgs[row].model.arch})",
              flush=True)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="demo")
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--rows", nargs="+", default=ROWS, choices=ROWS)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=32)
    a = ap.parse_args(argv)
    if not (ROOT / "runs" / a.run / "shards").is_dir():
        print(f"error: runs/{a.run}/shards not found (make shards RUN={a.run} first)", file=sys.stderr)
        return 2
    rows = ["mlm"] + [r for r in a.rows if r != "mlm"]
    res = step_time(a.run, a.config, rows, a.steps, a.batch)
    out = ROOT / "runs" / a.run / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "multivocab_steps.json").write_text(json.dumps(res, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
