"""The ``retrieval`` evaluation's part of a report: the SFT budget, accuracy by length and depth
(or gold position) per model group and variant, and the two line plots (mean ± std over seeds,
through :func:`evaluate.aggregate.stats`)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from evaluate.aggregate import stats

TASKS = (("needle", "needle_by_depth.png", "depth of the fact in the context", "tokens"),
         ("mdqa", "mdqa_by_position.png", "position of the gold document", "documents"))


def cells(records: list[dict]) -> dict:
    """``{group: {variant: {task: {"acc"|"tok": {length: {depth: stats}}}}}}`` over the records' seeds."""
    raw: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(
        lambda: defaultdict(list))))))
    for r in records:
        for v, tasks in r["results"].get("cells", {}).items():
            for t, c in tasks.items():
                for key, name in (("by_length", "acc"), ("token_by_length", "tok")):
                    for L, byd in c.get(key, {}).items():
                        for d, x in byd.items():
                            raw[r.get("group") or r["model"]][v][t][name][L][d].append(x)
    return {g: {v: {t: {n: {L: {d: stats(x) for d, x in byd.items()} for L, byd in by.items()}
                        for n, by in tk.items()} for t, tk in vs.items()} for v, vs in gv.items()}
            for g, gv in raw.items()}


def sft_lines(rc, records: list[dict]) -> list[str]:
    runs: dict = defaultdict(list)
    for r in records:
        for v, s in r["results"].get("sft", {}).items():
            runs[(r.get("group") or r["model"], v)].append(s)
    if not runs:
        return []
    s = rc.sft
    head = (f"SFT budget: epochs ({s.epochs:g} passes over the rows built from {rc.sft_items} items, so every item's "
            f"clean answer is seen {s.epochs:g} times in every variant; meap_copy has about twice the rows and "
            "steps, meap_concat rows twice as long)." if s.budget == "epochs" else
            f"SFT budget: steps ({s.steps} optimizer steps for every variant, so meap_copy sees each clean answer "
            "about half as often as ntp).")
    lines = [head, "", "| model | variant | SFT steps | epochs | masked rows | labels after a [MASK] | "
             "truncated items | answer tokens | final loss |", "|---|---|---|---|---|---|---|---|---|"]
    for (g, v), rs in runs.items():
        def m(k):
            return stats(x.get(k) for x in rs)["mean"]

        share = 100.0 * (m("labels_after_mask") or 0) / max(m("labels") or 0, 1e-9)
        loss = m("final_loss")
        lines.append(f"| {g} | {v} | {m('steps'):.0f} | {m('epochs'):.2f} | {m('masked_rows'):.0f} | {share:.1f} % | "
                     f"{m('truncated'):.0f} | {m('answer_tokens_mean'):.1f} | {'-' if loss is None else f'{loss:.4f}'} |")
    return lines + [""]


def plot(agg: dict, task: str, fname: str, xlabel: str, unit: str, out_dir: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({L for gv in agg.values() for vs in gv.values() for L in vs.get(task, {}).get("acc", {})}, key=int)
    if not lengths:
        return None
    fig, axes = plt.subplots(1, len(lengths), figsize=(4.2 * len(lengths), 3.4), squeeze=False)
    for ax, L in zip(axes[0], lengths):
        for g, gv in agg.items():
            for v, vs in gv.items():
                cell = vs.get(task, {}).get("acc", {}).get(L)
                if cell:
                    xs = sorted(cell, key=float)
                    ax.errorbar([float(x) for x in xs], [cell[x]["mean"] for x in xs], yerr=[cell[x]["std"] for x in xs],
                                marker="o", capsize=3, label=g if v == "none" else f"{g} + SFT {v}")
        ax.set(title=f"{task}: {L} {unit}", xlabel=xlabel, ylabel="exact match (%)", ylim=(-2, 102))
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_dir / fname, dpi=110)
    plt.close(fig)
    return out_dir / fname


def report_lines(rc, records: list[dict], out_dir: Path) -> list[str]:
    """Markdown lines (and plots in ``out_dir``) for the ``retrieval`` records of a report."""
    agg = cells(records)
    lines = [f"Items: needle {rc.needle.n_per_cell} per (length, depth), mdqa {rc.mdqa.n_per_position} per gold "
             f"position; scoring {rc.scoring}; `T_tok_V`: answer-token accuracy.", "", *sft_lines(rc, records)]
    for task, fname, xlabel, unit in TASKS:
        rows = [(g, v, vs[task]) for g, gv in agg.items() for v, vs in gv.items() if vs.get(task)]
        if rows:
            cols = sorted({d for _, _, c in rows for byd in c["acc"].values() for d in byd}, key=float)
            lines += [f"{task}: exact match (%) by {'depth' if task == 'needle' else 'gold position'} (mean ± std over "
                      "seeds; answer-token accuracy in brackets)", "",
                      f"| model | variant | {unit} | " + " | ".join(cols) + " |", "|---" * (len(cols) + 3) + "|"]
            for g, v, c in rows:
                for L, byd in sorted(c["acc"].items(), key=lambda kv: int(kv[0])):
                    tok = c.get("tok", {}).get(L, {})
                    lines.append(f"| {g} | {v} | {L} | " + " | ".join(
                        f"{byd[d]['mean']:.1f} ± {byd[d]['std']:.1f} ({tok[d]['mean']:.0f})" if d in byd and d in tok
                        else "-" for d in cols) + " |")
            lines.append("")
        png = plot(agg, task, fname, xlabel, unit, out_dir)
        if png is not None:
            lines += [f"![{png.stem}]({png.name})", ""]
    return lines
