"""``python -m finetune --config configs/finetune/NAME.yaml --models DIR [DIR ...] [key=value ...]``

Scores every model folder (an exported checkpoint, ``NAME=DIR`` to name it) and, unless
``random_init_twins: false``, its randomly initialised twin on every configured task, over the
configured seeds and grid; then writes ``runs/RUN/finetune/report/``. Re-running skips what is done.
``--dry-run`` checks the config, the models and the task data and prints the plan.
``--report-only`` rebuilds the report from the finished seeds.
``--trust-remote-code`` lets code shipped in the model folders run (refused otherwise; the project's
own model and tokenizer classes load from the installed package without it).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pipeline.cli import add_config_args
from pipeline.config import dump_config, load_config, save_config
from pipeline.errors import UserError, main_guard
from pipeline.log import get_logger, print_table
from pipeline.runs import check_name, run_path

log = get_logger("finetune")


def model_name(spec: str) -> tuple[str, str]:
    """``NAME=DIR`` or ``DIR`` (named after the folder; ``.../mlm/export`` is ``mlm``)."""
    if "=" in spec and not Path(spec).exists():
        name, _, d = spec.partition("=")
        return name, d
    p = Path(spec.rstrip("/"))
    return (p.parent.name if p.name == "export" else p.name), str(p)


def parse(argv):
    ap = argparse.ArgumentParser(prog="python -m finetune", description=__doc__.split("\n\n")[0])
    add_config_args(ap)
    ap.add_argument("--models", nargs="+", required=True, metavar="DIR", help="exported model folders (NAME=DIR to name one)")
    ap.add_argument("--dry-run", action="store_true", help="check config, models and data; print the plan")
    ap.add_argument("--report-only", action="store_true", help="only rebuild the report from finished seeds")
    ap.add_argument("--trust-remote-code", action="store_true",
                    help="let code shipped in the model folders run (read it first; docs/reliability.md)")
    # argparse puts key=value overrides after --models into --models: split them back out
    args = ap.parse_args(argv)
    over = [m for m in args.models if _is_override(m)]
    args.models = [m for m in args.models if m not in over]
    args.overrides = list(args.overrides) + over
    return args


def _is_override(item: str) -> bool:
    from finetune.config import FinetuneConfig
    import dataclasses

    if "=" not in item or Path(item).exists():
        return False
    key = item.partition("=")[0].split(".")[0]
    return key in {f.name for f in dataclasses.fields(FinetuneConfig)}


@main_guard
def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    from finetune.config import FinetuneConfig
    from finetune.encoders import read_pretrain_meta
    from finetune.kinds.base import get_kind
    from finetune.report import add_robustness, build_results, write_report
    from finetune.schema import RunResult
    from finetune.tasks import load_task
    from finetune.train import condition_scores, run_seed
    from pretrain.exports import check_folder

    cfg = load_config(FinetuneConfig, args.config, args.overrides)
    if args.trust_remote_code:
        cfg.trust_remote_code = True
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    out = run_path(cfg.runs_root, cfg.run, "finetune")
    models = []
    for spec in args.models:
        name, d = model_name(spec)
        check_name(name, f"--models {spec}: model name")  # a folder under {out}; NAME=DIR names it
        meta = read_pretrain_meta(d)  # checks the folder
        check_folder(d, cfg.trust_remote_code)  # pickles, code the user did not opt into: before any work
        if meta.get("model_type") == "decoder" and (meta.get("finetune_adapter") or "hf") == "hf":
            log.info("%s is a decoder: pooled state = last token (causal), character states are left-context only", name)
        settings = [False, True] if cfg.probe_rows else [cfg.freeze_encoder]  # freeze_encoder per row
        for frozen in settings:
            row = f"{name}-probe" if frozen else name
            models.append({"name": row, "dir": d, "random_init": False, "freeze_encoder": frozen})
            if cfg.random_init_twins:
                models.append({"name": f"{row}-random", "dir": d, "random_init": True, "freeze_encoder": frozen})
    names = [m["name"] for m in models]
    if len(set(names)) != len(names):
        raise UserError(f"two models share a name ({', '.join(names)}); name them with NAME=DIR")
    baseline = cfg.baseline or names[0]
    if baseline not in names:
        raise UserError(f"baseline '{baseline}' is not one of the models: {', '.join(names)}")

    tasks, task_meta = {}, {}
    for tc in cfg.tasks:
        t0 = time.time()
        data = load_task(tc)
        tasks[tc.name] = (tc, data)
        task_meta[tc.name] = {"metric": get_kind(data.kind).main_metric, "kind": data.kind}
        log.info("task %s (%s): train %d, dev %d, test %d (loaded in %.1f s)", tc.name, data.kind, len(data.train),
                 len(data.dev), len(data.test), time.time() - t0)
    if args.dry_run:
        grid = len(cfg.lrs) * len(cfg.epochs)
        print_table("fine-tuning plan", ["model", "tasks", "seeds", "grid points", "runs"],
                    [[m["name"], len(tasks), len(cfg.seeds), grid, len(tasks) * len(cfg.seeds) * grid] for m in models])
        return 0
    from pipeline.lock import acquire
    acquire(out.parent, "finetune")  # until the process exits: one fine-tuning run per run folder (exit 2)
    save_config(cfg, out / "config.yaml")

    from finetune.stats import check_same_grid, select_per_model

    results, chosen, robust = {}, {}, {}
    for tname, (tc, data) in tasks.items():
        grids = {}
        for m in models:
            seed_results = []
            for seed in cfg.seeds:
                d = out / m["name"] / tname / f"seed-{seed}"
                if args.report_only:
                    p = d / "result.json"
                    if p.is_file():
                        seed_results.append(RunResult.load(p).to_dict())
                    continue
                seed_results.append(run_seed(d, m["name"], m["dir"], m["random_init"], data, tc, cfg, seed,
                                             freeze_encoder=m["freeze_encoder"]))
            vals = [r["test"] for r in seed_results]
            if seed_results:
                grids[m["name"]] = [(g["lr"], g["epochs"]) for r in seed_results for g in r["grid"]]
            conds = [r.get("conditions", {}) for r in seed_results]  # each seed's dev-best point
            if seed_results and cfg.grid_selection == "per_model":
                sel = select_per_model(seed_results)
                vals = sel.test
                chosen.setdefault(m["name"], {})[tname] = {"lr": sel.lr, "epochs": sel.epochs, "dev_mean": sel.dev_mean}
                conds = [condition_scores(next(g for g in r["grid"] if (g["lr"], g["epochs"]) == (sel.lr, sel.epochs)), {})
                         for r in seed_results]
            if any(conds):
                robust[(m["name"], tname)] = {c: {k: [x[c][k] for x in conds] for k in ("test", "drop")} for c in conds[0]}
            results[(m["name"], tname)] = vals
        try:
            check_same_grid(grids)
        except ValueError as e:
            raise UserError(f"task {tname}: {e}") from None
    res = add_robustness(build_results(models, task_meta, cfg.seeds, baseline, results), robust)
    res["grid_selection"] = cfg.grid_selection
    if chosen:
        res["chosen_grid_point"] = chosen
    write_report(out / "report", res, {t: d.info for t, (_, d) in tasks.items()}, dump_config(cfg))
    from finetune.report import table_rows

    header, rows = table_rows(res)
    print_table(f"Fine-tuning results (test, %) -> {out / 'report'}", header, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
