"""The report: ``report/results.json`` (contract shape), ``report/report.md``, PNG plots.

* Table: mean ± std (max) over seeds per model and task, the average over tasks, random-init
  twins as the floor, and the delta of every model's average over the baseline's, marked
  "within seed noise" when ``|delta| <= sqrt(std_model^2 + std_baseline^2)`` (the spread of one
  seed's difference; with one seed the noise is unknown and the note says so).
* Per-task deltas over the baseline and the own random-init twin carry Welch's two-sided p over
  the seeds (``finetune.stats.welch_t``); ``results.json`` has them under ``significance``.
* ``scores.png``: bars per task and model with ±std error bars.
* ``pretrain_loss.png``: pre-training loss curves of the compared models from
  ``MODEL_DIR/../metrics.jsonl`` (train records ``{"step", "split": "train", "loss"}``, eval records
  ``{"step", "split": "valid", "loss"}`` or with ``eval_loss``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from finetune.stats import welch_t
from pipeline.log import format_table, get_logger
from finetune.schema import FinetuneResults
from pipeline.runs import atomic_write_text

log = get_logger("finetune")


def summarize(values: list[float]) -> dict:
    n = len(values)
    mean = sum(values) / n if n else float("nan")
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"values": values, "mean": mean, "std": std, "max": max(values) if values else float("nan")}


def build_results(models: list[dict], tasks: dict[str, dict], seeds: list[int], baseline: str,
                  results: dict[tuple[str, str], list[float]]) -> dict:
    """``models``: [{"name", "dir", "random_init"}]; ``results[(model, task)]``: per-seed values."""
    out = {"baseline": baseline, "seeds": list(seeds), "tasks": tasks, "models": {}}
    for m in models:
        res = {t: summarize(results[(m["name"], t)]) for t in tasks if results.get((m["name"], t))}
        out["models"][m["name"]] = {"dir": m["dir"], "random_init": m["random_init"], "results": res}
        if m.get("freeze_encoder"):  # a linear probe row (finetune.train.freeze)
            out["models"][m["name"]]["freeze_encoder"] = True
    return out


def add_robustness(res: dict, conditions: dict[tuple[str, str], dict[str, dict[str, list[float]]]]) -> dict:
    """``res["robustness"][model][task][condition] = {"test": summary, "drop": summary}`` from
    ``conditions[(model, task)][condition] = {"test": per-seed values, "drop": per-seed values}``."""
    rob: dict = {}
    for (model, task), conds in conditions.items():
        for c, v in conds.items():
            rob.setdefault(model, {}).setdefault(task, {})[c] = {k: summarize(v[k]) for k in ("test", "drop")}
    if rob:
        res["robustness"] = rob
    return res


def robustness_rows(res: dict) -> tuple[list[str], list[list[str]]]:
    """One row per model: clean test and, per (task, condition), score and drop (mean ± std)."""
    rob = res.get("robustness") or {}
    cols = list(dict.fromkeys((t, c) for per in rob.values() for t, cs in per.items() for c in cs))  # config order
    header = ["model"] + [x for t, c in cols for x in (f"{t} clean", f"{t} {c}", f"drop {t} {c}")]
    header = list(dict.fromkeys(header))  # one clean column per task
    rows = []
    for name, per in rob.items():
        cells = {}
        for t, c in cols:
            s = per.get(t, {}).get(c)
            cells[f"{t} clean"] = _cell(res["models"][name]["results"].get(t))
            cells[f"{t} {c}"] = _cell(s["test"]) if s else "-"
            cells[f"drop {t} {c}"] = _cell(s["drop"]) if s else "-"
        rows.append([name] + [cells[h] for h in header[1:]])
    return header, rows


def _avg(model: dict, tasks: list[str]) -> tuple[float, float]:
    """Average over tasks of the means, and the std of the per-seed averages (NaN if incomplete)."""
    r = model["results"]
    if not all(t in r for t in tasks) or not tasks:
        return float("nan"), float("nan")
    n = min(len(r[t]["values"]) for t in tasks)
    per_seed = [sum(r[t]["values"][i] for t in tasks) / len(tasks) for i in range(n)]
    s = summarize(per_seed)
    return sum(r[t]["mean"] for t in tasks) / len(tasks), s["std"]


def _cell(s: dict | None) -> str:
    if not s:
        return "-"
    if len(s["values"]) > 1:
        return f"{s['mean']:.2f} ± {s['std']:.2f} ({s['max']:.2f})"
    return f"{s['mean']:.2f}"


def table_rows(res: dict) -> tuple[list[str], list[list[str]]]:
    tasks = list(res["tasks"])
    header = ["model"] + [f"{t} ({res['tasks'][t]['metric']})" for t in tasks] + ["avg", f"Δ avg vs {res['baseline']}"]
    base = res["models"].get(res["baseline"])
    b_avg, b_std = _avg(base, tasks) if base else (float("nan"), float("nan"))
    rows = []
    for name, m in res["models"].items():
        avg, std = _avg(m, tasks)
        label = name + (" (random init)" if m["random_init"] else "") + (" (frozen encoder)" if m.get("freeze_encoder") else "")
        if name == res["baseline"]:
            delta = "baseline"
        elif math.isnan(avg) or math.isnan(b_avg):
            delta = "-"
        else:
            d = avg - b_avg
            if len(res["seeds"]) < 2:
                note = " (1 seed: noise unknown)"
            else:
                note = " (within seed noise)" if abs(d) <= math.sqrt(std ** 2 + b_std ** 2) else ""
            delta = f"{d:+.2f}{note}"
        avg_cell = "-" if math.isnan(avg) else (f"{avg:.2f} ± {std:.2f}" if len(res["seeds"]) > 1 else f"{avg:.2f}")
        rows.append([label] + [_cell(m["results"].get(t)) for t in tasks] + [avg_cell, delta])
    return header, rows


def _delta(m: dict | None, b: dict | None, n_seeds: int) -> str:
    if not m or not b:
        return "-"
    d = m["mean"] - b["mean"]
    if n_seeds < 2:
        return f"{d:+.2f}"
    cell = f"{d:+.2f}" + (" ~" if abs(d) <= math.sqrt(m["std"] ** 2 + b["std"] ** 2) else "")
    w = welch_t(m["values"], b["values"])
    return cell + ("" if math.isnan(w.p) else f" (p={w.p:.3f})")


def significance(res: dict) -> dict[str, dict[str, dict]]:
    """Welch's t per task of every pre-trained model vs its random-init twin and vs the baseline.

    ``{model: {task: {"vs_random": {diff, t, df, p}, "vs_baseline": {...}}}}`` (entries without two
    seeds on both sides have null t/df/p).
    """
    out: dict[str, dict[str, dict]] = {}
    base = res["models"].get(res["baseline"], {}).get("results", {})
    for name, m in res["models"].items():
        if m["random_init"]:
            continue
        twin = res["models"].get(f"{name}-random", {}).get("results", {})
        per_task = {}
        for t, s in m["results"].items():
            entry = {}
            for key, other in (("vs_random", twin.get(t)), ("vs_baseline", base.get(t) if name != res["baseline"] else None)):
                if other:
                    w = welch_t(s["values"], other["values"])
                    entry[key] = {k: (None if math.isnan(v) else v) for k, v in
                                  (("diff", w.diff), ("t", w.t), ("df", w.df), ("p", w.p))}
            per_task[t] = entry
        out[name] = per_task
    return out


def delta_rows(res: dict) -> tuple[list[str], list[list[str]]]:
    """Per task: Δ over the baseline and Δ over the model's own random-init twin (the floor).

    ``~`` marks a difference within seed noise (|Δ| <= sqrt(std_a^2 + std_b^2)); with two or more
    seeds on both sides the cell also carries Welch's two-sided p over the seeds.
    """
    tasks, n = list(res["tasks"]), len(res["seeds"])
    base = res["models"].get(res["baseline"], {}).get("results", {})
    header = ["model"] + [f"Δ {t} vs {res['baseline']}" for t in tasks] + [f"Δ {t} vs own random init" for t in tasks]
    rows = []
    for name, m in res["models"].items():
        if m["random_init"]:
            continue
        twin = res["models"].get(f"{name}-random", {}).get("results", {})
        vs_base = ["baseline"] * len(tasks) if name == res["baseline"] else [_delta(m["results"].get(t), base.get(t), n) for t in tasks]
        rows.append([name] + vs_base
                    + [_delta(m["results"].get(t), twin.get(t), n) for t in tasks])
    return header, rows


def read_pretrain_curve(model_dir: str) -> tuple[list, list, list, list]:
    """(steps, loss, eval_steps, eval_loss) from ``MODEL_DIR/../metrics.jsonl`` (empty if absent).

    The pre-training trainer writes ``{"step", "split": "train", "loss", ...}`` and, at each
    evaluation, ``{"step", "split": "valid", "loss", ...}``; an ``eval_loss`` field is read too.
    """
    p = Path(model_dir).parent / "metrics.jsonl"
    xs, ys, ex, ey = [], [], [], []
    if not p.is_file():
        return xs, ys, ex, ey
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(r, dict) or not isinstance(r.get("step"), (int, float)):
            continue
        if isinstance(r.get("eval_loss"), (int, float)):
            ex.append(r["step"])
            ey.append(r["eval_loss"])
        elif isinstance(r.get("loss"), (int, float)):
            if r.get("split", "train") == "train":
                xs.append(r["step"])
                ys.append(r["loss"])
            elif r.get("split") in ("valid", "eval", "validation"):
                ex.append(r["step"])
                ey.append(r["loss"])
    return xs, ys, ex, ey


def plot_scores(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, models = list(res["tasks"]), list(res["models"])
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(tasks) * max(1, len(models)) / 2), 4))
    width = 0.8 / max(1, len(models))
    for j, name in enumerate(models):
        m = res["models"][name]
        means = [m["results"].get(t, {}).get("mean", 0.0) for t in tasks]
        stds = [m["results"].get(t, {}).get("std", 0.0) for t in tasks]
        xs = [i + (j - (len(models) - 1) / 2) * width for i in range(len(tasks))]
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=name, hatch="//" if m["random_init"] else None,
               alpha=0.6 if m["random_init"] else 1.0)
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels([f"{t}\n({res['tasks'][t]['metric']})" for t in tasks])
    ax.set_ylabel("score (%), mean ± std over seeds")
    ax.set_title(f"Fine-tuning scores ({len(res['seeds'])} seed{'s' if len(res['seeds']) > 1 else ''})")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_pretrain_loss(res: dict, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = False
    for name, m in res["models"].items():
        if m["random_init"]:
            continue
        xs, ys, ex, ey = read_pretrain_curve(m["dir"])
        if xs:
            line, = ax.plot(xs, ys, label=f"{name} train")
            drawn = True
            if ex:
                ax.plot(ex, ey, "--o", color=line.get_color(), markersize=3, label=f"{name} eval")
        elif ex:
            ax.plot(ex, ey, "--o", markersize=3, label=f"{name} eval")
            drawn = True
    ax.set_xlabel("step")
    ax.set_ylabel("pre-training loss")
    ax.set_title("Pre-training loss of the compared models")
    if drawn:
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "no metrics.jsonl next to the model folders", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return drawn


def write_report(report_dir: Path, res: dict, task_info: dict[str, dict], cfg_text: str) -> str:
    report_dir.mkdir(parents=True, exist_ok=True)
    plot_scores(res, report_dir / "scores.png")
    has_curves = plot_pretrain_loss(res, report_dir / "pretrain_loss.png")
    header, rows = table_rows(res)
    table = format_table(header, rows)
    md = [f"# Fine-tuning report", "",
          f"Seeds: {', '.join(map(str, res['seeds']))}. Cells: mean ± std (max) over seeds of the test score "
          f"(%) at " + ("the grid point with the best mean dev score over the seeds, per model and task (chosen "
                        "on dev only; same grid for every model), and each seed's dev-best checkpoint"
                        if res.get("grid_selection") == "per_model" else
                        "the dev-best grid point and checkpoint of each seed") + ". Random-init twins (same config, fresh weights) "
          f"are the floor. Δ: average over tasks minus the baseline's ({res['baseline']}); 'within seed noise' when "
          f"|Δ| ≤ √(std² + std_baseline²).", "",
          "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    dh, dr = delta_rows(res)
    md += ["", "Per task: Δ of the mean over the baseline and over each model's own random-init twin (the floor)"
           + ("; `~` = within seed noise; p = Welch's two-sided t-test over the seeds (finetune.stats)."
              if len(res["seeds"]) > 1 else "; one seed, so the seed noise is unknown."), "",
           "| " + " | ".join(dh) + " |", "|" + "---|" * len(dh)]
    md += ["| " + " | ".join(r) + " |" for r in dr]
    if res.get("chosen_grid_point"):
        md += ["", "Grid point chosen on dev (lr, epochs) per model and task:", ""]
        for name, per_task in res["chosen_grid_point"].items():
            md.append(f"- `{name}`: " + ", ".join(f"{t}: lr {c['lr']:g}, {c['epochs']} ep (dev {c['dev_mean']:.2f})"
                                                   for t, c in per_task.items()))
    if res.get("robustness"):
        rh, rr = robustness_rows(res)
        md += ["", "Robustness: test score of the same dev-selected checkpoints on perturbed copies of the test "
               "split (condition MODE@RATE, finetune.perturb) and the drop from clean (clean - perturbed, "
               "per seed), mean ± std (max) over seeds:", "",
               "| " + " | ".join(rh) + " |", "|" + "---|" * len(rh)]
        md += ["| " + " | ".join(r) + " |" for r in rr]
    md += ["", "![scores](scores.png)", ""]
    md += ["![pre-training loss](pretrain_loss.png)" if has_curves else "(no pre-training metrics.jsonl found for the pre-trained models)", ""]
    md += ["## Tasks", "", "| task | kind | metric | train / dev / test used (full) | source | split |", "|---|---|---|---|---|---|"]
    for t, meta in res["tasks"].items():
        info = task_info.get(t, {})
        u, f = info.get("sizes_used", {}), info.get("sizes_full", {})
        sizes = f"{u.get('train', '?')} / {u.get('dev', '?')} / {u.get('test', '?')} ({f.get('train', '?')} / {f.get('dev', '?')} / {f.get('test', '?')})"
        md.append(f"| {t} | {meta['kind']} | {meta['metric']} | {sizes} | {info.get('source', '')} | {info.get('split_rule', '')} |")
    md += ["", "## Models", ""]
    for name, m in res["models"].items():
        md.append(f"- `{name}`: `{m['dir']}`{' (random init)' if m['random_init'] else ''}")
    md += ["", "## Config", "", "```yaml", cfg_text.rstrip(), "```", ""]
    atomic_write_text(report_dir / "report.md", "\n".join(md))
    res = {**res, "significance": significance(res)}
    FinetuneResults.from_dict(res).save(report_dir)  # results.json, written last: marks the report complete
    return table


def print_summary(report_dir: str | Path, file=None) -> str:
    """Print a finished report's score table and its Δ table (over the baseline and over each model's
    own random-init twin) from ``report_dir/results.json``; ``make demo`` ends with this."""
    from pipeline.log import print_table

    res = FinetuneResults.load(report_dir).to_dict()
    header, rows = table_rows(res)
    text = print_table(f"Fine-tuning results (test, %), {report_dir}", header, rows, file=file)
    dh, dr = delta_rows(res)
    # one column per (task, vs twin): the gain of pre-training over random init
    keep = [0] + [i for i, h in enumerate(dh) if h.endswith("vs own random init")]
    text += "\n" + print_table("Gain over the random-init twin (Δ test points)", [dh[i] for i in keep],
                               [[r[i] for i in keep] for r in dr], file=file)
    return text


if __name__ == "__main__":
    import sys

    from pipeline.errors import UserError, main_guard

    @main_guard
    def _main(argv: list[str]) -> int:
        if len(argv) != 1:
            raise UserError("usage: python -m finetune.report runs/RUN/finetune/report")
        print_summary(argv[0])
        return 0

    sys.exit(_main(sys.argv[1:]))
