"""``python -m evaluate``: run registered evaluations of exported models (docs/evaluate.md).

    python -m evaluate list
    python -m evaluate study configs/studies/NAME.yaml [key=value ...] [--force]
    python -m evaluate run EVALUATION --models [LABEL=]DIR ... --run RUN [--seeds 0 1] [--random-init]
                           [--out FILE] [--force] [--trust-remote-code] [--set OPTION=VALUE ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.errors import UserError, main_guard
from pipeline.log import get_logger, print_table

log = get_logger("evaluate")


def _entries(specs: list[str], random_init: bool):
    from evaluate.frozen import model_name
    from evaluate.store import safe_name
    from evaluate.study import ModelEntry

    entries, groups = [], {}
    for s in specs:
        label, sep, d = s.partition("=")
        if not sep:
            label, d = "", s
        if not Path(d).is_dir():
            raise UserError(f"--models {s}: folder not found: {d}")
        name, group = model_name(Path(d))
        if label:
            name = group = label
        e = ModelEntry(safe_name(name), str(d))
        entries.append(e)
        groups[e.name] = group
    if random_init and entries:
        entries.append(ModelEntry("random-init", entries[0].dir, random_init=True))
        groups["random-init"] = "random-init"
    return entries, groups


def cmd_run(a) -> int:
    from evaluate.aggregate import aggregate, fmt
    from evaluate.base import EvalContext, build_evaluation
    from evaluate.store import ResultStore
    from evaluate.study import run_models
    from pipeline.config import apply_overrides
    from pipeline.runs import atomic_write_json, run_path

    ev = build_evaluation(a.evaluation, apply_overrides({}, a.options), where="command line: ")
    entries, groups = _entries(a.models, a.random_init)
    store = ResultStore(Path(a.store) if a.store else run_path(a.runs_root, a.run, "eval"))
    ctx = EvalContext(trust_remote_code=a.trust_remote_code, device=a.device, log=log)
    records = run_models([ev], entries, a.seeds, store, ctx, force=a.force, groups=groups, log=log)
    agg = aggregate(records, {ev.name: list(ev.metrics)})[ev.name]
    if a.out:
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, {"evaluation": ev.name, "settings": ev.settings(),
                                "models": {r["model"]: {"dir": r["dir"], "group": r["group"], "seed": r["seed"],
                                                        **r["results"]} for r in records},
                                "groups": agg})
    rows = [[g, len(row["seeds"])] + [fmt(row[k]) for k in ev.metrics] for g, row in agg.items()]
    print_table(f"{ev.name} (results in {store.root / ev.name})" + (f" -> {a.out}" if a.out else ""),
                ["model", "runs"] + list(ev.metrics), rows)
    return 0


def cmd_study(a) -> int:
    from evaluate.study import load_study, run_study

    cfg = load_study(a.config, a.overrides)
    if a.threads:
        cfg.threads = a.threads
    path = run_study(cfg, source=str(a.config), force=a.force, log=log)
    print(f"report: {path}")
    return 0


def cmd_list(a) -> int:
    from evaluate.base import config_fields, registered

    for name, cls in sorted(registered().items()):
        print(f"{name}: {(cls.__doc__ or '').strip().splitlines()[0]}")
        print(f"    options: {', '.join(config_fields(cls))}")
        print(f"    metrics: {', '.join(cls.metrics) if isinstance(cls.metrics, tuple) else getattr(cls, 'metrics_doc', 'one per configured task')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m evaluate", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="registered evaluations, their options and metrics")
    st = sub.add_parser("study", help="run a study YAML (models x seeds x evaluations) and write its report")
    st.add_argument("config")
    st.add_argument("overrides", nargs="*", help="key=value overrides of the study file")
    st.add_argument("--force", action="store_true", help="recompute stored results even when fresh")
    st.add_argument("--threads", type=int, default=0)
    rn = sub.add_parser("run", help="one evaluation over some models; results go to the store")
    rn.add_argument("evaluation")
    rn.add_argument("--set", dest="options", action="append", default=[], metavar="OPTION=VALUE",
                    help="an option of the evaluation's config (repeatable; `python -m evaluate list` names them)")
    rn.add_argument("--models", nargs="+", required=True,
                    help="export folders (or their pre-training folders), optionally LABEL=DIR")
    rn.add_argument("--run", default=None, help="run whose eval/ folder stores the results (runs/RUN/eval)")
    rn.add_argument("--runs-root", default="runs")
    rn.add_argument("--store", default=None, help="store folder instead of runs/RUN/eval")
    rn.add_argument("--seeds", type=int, nargs="+", default=[0])
    rn.add_argument("--random-init", action="store_true", help="add a randomly initialised copy of the first model")
    rn.add_argument("--out", default=None, help="also write the results and their aggregate to this JSON file")
    rn.add_argument("--force", action="store_true", help="recompute stored results even when fresh")
    rn.add_argument("--device", default="cpu")
    rn.add_argument("--threads", type=int, default=0)
    rn.add_argument("--trust-remote-code", action="store_true",
                    help="let code shipped in the model folders run (read it first; docs/reliability.md)")
    a = ap.parse_args(argv)
    if getattr(a, "threads", 0) and a.cmd == "run":
        import torch

        torch.set_num_threads(a.threads)
    if a.cmd == "run" and not a.run and not a.store:
        raise UserError("python -m evaluate run: give --run RUN (results in runs/RUN/eval) or --store DIR")
    return {"run": cmd_run, "study": cmd_study, "list": cmd_list}[a.cmd](a)


if __name__ == "__main__":
    raise SystemExit(main_guard(main)())
