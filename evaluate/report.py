"""The one report writer: a markdown table per evaluation (mean ± std over seeds, Welch's t of each
model against the study's ``baseline`` model) and one bar plot per evaluation (matplotlib, Agg).
"""

from __future__ import annotations

from pathlib import Path

from evaluate.aggregate import compare, fmt


def _p(x) -> str:
    return "n/a" if x is None else (f"{x:.3f}" if x >= 0.001 else f"{x:.1e}")


def plot(ev: str, agg_ev: dict, metrics: list[str], out_dir: Path) -> Path | None:
    """Bars of each metric's mean per model with ± std error bars -> ``out_dir/<ev>.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models = list(agg_ev)
    metrics = [m for m in metrics if any(agg_ev[x].get(m, {}).get("mean") is not None for x in models)]
    if not models or not metrics:
        return None
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(metrics) * len(models) ** 0.5 + 2), 3.6))
    width = 0.8 / len(models)
    x = np.arange(len(metrics))
    for i, m in enumerate(models):
        means = [agg_ev[m].get(k, {}).get("mean") or 0.0 for k in metrics]
        stds = [agg_ev[m].get(k, {}).get("std") or 0.0 for k in metrics]
        ax.bar(x + i * width - 0.4 + width / 2, means, width, yerr=stds, capsize=2, label=m)
    ax.set_xticks(x)
    ax.set_xticklabels(metrics, rotation=20, ha="right", fontsize=8)
    ax.set_title(f"{ev} (mean ± std over seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{ev}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(title: str, agg: dict, metrics: dict[str, list[str]], out_dir: Path,
                 baseline: str | None = None, notes: list[str] | None = None,
                 extra: dict[str, list[str]] | None = None) -> Path:
    """``out_dir/report.md`` (+ ``out_dir/<evaluation>.png``); returns the report's path. ``extra``:
    evaluation -> markdown lines placed after its table (:meth:`evaluate.base.Evaluation.report_lines`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", ""]
    lines += notes or []
    if notes:
        lines.append("")
    for ev, agg_ev in agg.items():
        keys = metrics.get(ev) or sorted({k for row in agg_ev.values() for k in row if k not in ("seeds", "models")})
        lines += [f"## {ev}", "", "| model | seeds | " + " | ".join(keys) + " |",
                  "|---|---|" + "---|" * len(keys)]
        for model, row in agg_ev.items():
            lines.append(f"| {model} | {len(row['seeds'])} | " + " | ".join(fmt(row.get(k, {})) for k in keys) + " |")
        if baseline and baseline in agg_ev and len(agg_ev) > 1:
            lines += ["", f"Welch's t-test against `{baseline}` (two-sided p-value; n/a: fewer than 2 seeds "
                          "or no variance):", "", "| model | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
            for model in agg_ev:
                if model == baseline:
                    continue
                cells = [_p(compare(agg_ev, model, baseline, k)["p"]) if k in agg_ev[model] and k in agg_ev[baseline]
                         else "n/a" for k in keys]
                lines.append(f"| {model} | " + " | ".join(cells) + " |")
        png = plot(ev, agg_ev, keys, out_dir)
        if png is not None:
            lines += ["", f"![{ev}]({png.name})"]
        lines.append("")
        if (extra or {}).get(ev):
            lines += extra[ev] + [""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
