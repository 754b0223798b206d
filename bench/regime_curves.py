"""Learning curves of pre-training runs: valid masked accuracy / loss per step, as a table and a plot.

    .venv/bin/python bench/regime_curves.py runs/regime/pretrain/A runs/regime/pretrain/B \
        [--out runs/regime/curves.png] [--every 200]

Reads each run folder's ``metrics.jsonl`` (the trainer's records ``{"step", "split": "valid",
"accuracy", "loss"}``) and its ``config.yaml`` command (if ``RUN/../../logs/NAME.cmd`` exists). Prints
one row per run: valid accuracy at every ``--every`` steps, the final accuracy and loss, and the
first step at which the valid loss fell below the unigram baseline given by ``--unigram-ce``
(7.16 on the demo corpus's valid split, issue 21). Plots accuracy and loss against step into
``--out`` (a small PNG) when given.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def read_valid(run: Path) -> list[dict]:
    p = run / "metrics.jsonl"
    if not p.is_file():
        return []
    out = []
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if r.get("split") == "valid" and isinstance(r.get("accuracy"), (int, float)):
            out.append(r)
    # a resumed run may repeat steps: keep the last record per step
    by_step = {r["step"]: r for r in out}
    return [by_step[s] for s in sorted(by_step)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--every", type=int, default=200)
    ap.add_argument("--unigram-ce", type=float, default=7.16)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--title", default="valid masked accuracy")
    a = ap.parse_args()

    from pipeline.log import print_table

    curves = {r.name: read_valid(r) for r in a.runs}
    steps = sorted({x["step"] for c in curves.values() for x in c if x["step"] and x["step"] % a.every == 0})
    rows = []
    for name, c in curves.items():
        acc = {x["step"]: x["accuracy"] for x in c}
        below = next((x["step"] for x in c if x["loss"] < a.unigram_ce and x["step"] > 0), None)
        last = c[-1] if c else {}
        rows.append([name] + [f"{100 * acc[s]:.1f}" if s in acc else "-" for s in steps]
                    + [str(last.get("step", "-")), f"{100 * last['accuracy']:.2f}" if last else "-",
                       f"{last['loss']:.3f}" if last else "-", str(below) if below is not None else "-"])
    print_table(a.title, ["run"] + [f"acc@{s}" for s in steps] + ["last step", "acc %", "loss", "loss<unigram at"], rows)
    if a.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
        for name, c in curves.items():
            xs = [x["step"] for x in c if x["step"] > 0]
            ax1.plot(xs, [100 * x["accuracy"] for x in c if x["step"] > 0], label=name, lw=1.2)
            ax2.plot(xs, [x["loss"] for x in c if x["step"] > 0], label=name, lw=1.2)
        ax2.axhline(a.unigram_ce, color="grey", ls=":", lw=1, label="unigram CE")
        ax1.set_xlabel("step")
        ax1.set_ylabel("valid masked accuracy (%)")
        ax2.set_xlabel("step")
        ax2.set_ylabel("valid masked CE")
        ax1.legend(fontsize=6)
        fig.suptitle(a.title, fontsize=9)
        fig.tight_layout()
        a.out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(a.out, dpi=70)
        plt.close(fig)
        print(f"plot: {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
