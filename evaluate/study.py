"""Studies: models x seeds x evaluations as one YAML file, run through the result store.

``python -m evaluate study configs/studies/NAME.yaml [key=value ...]`` runs every (evaluation,
model, seed) whose stored result is missing or stale (:mod:`evaluate.store`), then writes
``runs/RUN/studies/NAME/report.md`` + one plot per evaluation + ``results.json`` (the aggregate).
Stopping and re-running resumes: finished results are read back, not recomputed.

A model's ``dir`` may contain ``{seed}`` (one pre-training per seed: ``runs/demo-s{seed}/pretrain/
mlm/export``); otherwise every seed evaluates the same folder and the seed only drives the
evaluation's own randomness (probe initialisation, random-init weights, fine-tuning order).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from evaluate.aggregate import aggregate
from evaluate.base import EvalContext, build_evaluation
from evaluate.report import write_report
from evaluate.store import ResultStore
from pipeline.errors import UserError
from pipeline.runs import atomic_write_json, check_name, run_path


@dataclass
class ModelEntry:
    name: str                    # label in the store and the report (one path component)
    dir: str                     # export folder (or its pre-training folder); may contain {seed}, {run}, {runs_root}
    random_init: bool = False    # the folder's config with fresh weights (a baseline)

    def validate(self) -> None:
        check_name(self.name, "model name")

    def folder(self, seed: int) -> Path:
        """The folder for ``seed`` (an export, or a pre-training folder for evaluations that read one)."""
        d = Path(self.dir.replace("{seed}", str(seed)))
        if not d.is_dir():
            raise UserError(f"model '{self.name}': folder not found: {d}")
        return d


@dataclass
class StudyConfig:
    name: str = "study"
    run: str = "demo"            # results in runs_root/run/eval, the report in runs_root/run/studies/name
    runs_root: str = "runs"
    seeds: list[int] = field(default_factory=lambda: [0])
    models: list[ModelEntry] = field(default_factory=list)
    evaluations: dict[str, dict] = field(default_factory=dict)  # name -> options of its Config
    only: dict[str, list[str]] = field(default_factory=dict)     # evaluation -> the models it runs on (default: all)
    baseline: str = ""           # model the significance test compares every other model against
    device: str = "cpu"
    threads: int = 0             # torch threads (0: leave torch's default)
    trust_remote_code: bool = False  # consent to run code shipped in the model folders (docs/reliability.md)

    def validate(self) -> None:
        check_name(self.name, "study name")
        for m in self.models:  # {run} / {runs_root}: one study file for any run (make study-meap RUN=...)
            m.dir = m.dir.replace("{runs_root}", self.runs_root).replace("{run}", self.run)
        if not self.models:
            raise ValueError("a study needs at least one model (models: [{name: ..., dir: ...}])")
        if not self.evaluations:
            raise ValueError("a study needs at least one evaluation (evaluations: {probes: {}})")
        if not self.seeds:
            raise ValueError("a study needs at least one seed")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        if self.baseline and self.baseline not in names:
            raise ValueError(f"baseline '{self.baseline}' is not one of the models {names}")
        for ev, ms in self.only.items():
            if ev not in self.evaluations:
                raise ValueError(f"only: '{ev}' is not one of the evaluations {sorted(self.evaluations)}")
            bad = [m for m in ms if m not in names]
            if bad:
                raise ValueError(f"only.{ev}: '{bad[0]}' is not one of the models {names}")


def run_models(evaluations: list, models: list[ModelEntry], seeds: list[int], store: ResultStore,
               ctx: EvalContext, force: bool = False, groups: dict[str, str] | None = None, log=None) -> list[dict]:
    """Every (evaluation, model, seed) through the store; returns the records in that order."""
    records = []
    for ev in evaluations:
        ev.prepare([m.folder(s) for m in models for s in seeds])
        for m in models:
            for seed in seeds:
                c = dataclasses.replace(ctx, random_init=m.random_init)
                rec, computed = store.run(ev, m.name, m.folder(seed), seed, c, force=force,
                                          group=(groups or {}).get(m.name))
                if log is not None:
                    log.info("%s %s seed %d: %s", ev.name, m.name, seed, "computed" if computed else "stored, fresh")
                records.append(rec)
    return records


def run_study(cfg: StudyConfig, source: str = "study", force: bool = False, log=None) -> Path:
    """Run ``cfg``; returns the path of its report."""
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    evs = [build_evaluation(n, o, where=f"{source}: ") for n, o in cfg.evaluations.items()]
    store = ResultStore(run_path(cfg.runs_root, cfg.run, "eval"))
    ctx = EvalContext(trust_remote_code=cfg.trust_remote_code, device=cfg.device, log=log)
    records = []
    for ev in evs:
        picked = cfg.only.get(ev.name)
        models = [m for m in cfg.models if picked is None or m.name in picked]
        records += run_models([ev], models, cfg.seeds, store, ctx, force=force, log=log)
    metrics = {ev.name: list(ev.metrics) for ev in evs}
    agg = aggregate(records, metrics)
    out = run_path(cfg.runs_root, cfg.run, "studies", cfg.name)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", {"study": dataclasses.asdict(cfg), "aggregate": agg,
                                             "records": [str(store.path(r["evaluation"], r["model"], r["seed"]))
                                                         for r in records]})
    notes = [f"Study `{cfg.name}` ({source}): {len(cfg.models)} models x {len(cfg.seeds)} seeds "
             f"({', '.join(map(str, cfg.seeds))}) x {len(evs)} evaluations; mean ± sample std over seeds.",
             "Models: " + "; ".join(f"`{m.name}` = `{m.dir}`" + (" (random init)" if m.random_init else "")
                                    for m in cfg.models)]
    extra = {ev.name: ev.report_lines([r for r in records if r["evaluation"] == ev.name], out) for ev in evs}
    return write_report(f"Study: {cfg.name}", agg, metrics, out, baseline=cfg.baseline or None, notes=notes,
                        extra=extra)


def load_study(path: str | Path, overrides: list[str] | None = None) -> StudyConfig:
    from pipeline.config import load_config

    if not Path(path).is_file():
        raise UserError(f"study file not found: {path}")
    return load_config(StudyConfig, path, overrides)
