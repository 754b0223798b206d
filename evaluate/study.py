"""Studies: models x seeds x evaluations as one YAML file, run through the result store.

``python -m evaluate study configs/studies/NAME.yaml [key=value ...]`` runs every (evaluation,
model, seed) whose stored result is missing or stale (:mod:`evaluate.store`), then writes
``runs/RUN/studies/NAME/report.md`` + one plot per evaluation + ``results.json`` (the aggregate).
Stopping and re-running resumes: finished results are read back, not recomputed.

A model's ``dir`` may contain ``{seed}`` (one pre-training per seed: ``runs/{run}/pretrain/
mlm-s{seed}/export``) and ``{run}`` / ``{runs_root}`` (the study's); without ``{seed}`` every seed
evaluates the same folder and the seed only drives the evaluation's own randomness (probe
initialisation, random-init weights, fine-tuning order).

The report starts with a table of the rows: per model its pre-training (steps, tokens and
**characters seen**, mean over the seeds, from each export's ``pretrain_meta.json``; 0 for a
random-init row) and its ``claims`` (what the row's paper claims, as written in the study file), so a
reader can say per row whether the run shows the claim, is null, or contradicts it.
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
    claims: str = ""             # what the row's paper claims (printed in the report's rows table)
    twin: str = ""               # its random-init twin (a model of the study): the report adds Δ and Welch's p
    run: str = ""                # filled in from the study ({run} / {runs_root} in dir)
    runs_root: str = ""

    def validate(self) -> None:
        check_name(self.name, "model name")

    def folder(self, seed: int) -> Path:
        """The folder for ``seed`` (an export, or a pre-training folder for evaluations that read one)."""
        d = Path(self.dir.replace("{seed}", str(seed)).replace("{run}", self.run or "{run}")
                 .replace("{runs_root}", self.runs_root or "{runs_root}"))
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
        for m in self.models:
            m.run, m.runs_root = self.run, self.runs_root
        for m in self.models:
            if m.twin and m.twin not in names:
                raise ValueError(f"model '{m.name}': twin '{m.twin}' is not one of the models {names}")
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
        records += ev.finalize(run_models([ev], models, cfg.seeds, store, ctx, force=force, log=log))
    metrics = {ev.name: list(ev.metrics) for ev in evs}
    agg = aggregate(records, metrics)
    rows = pretraining_rows(cfg)
    out = run_path(cfg.runs_root, cfg.run, "studies", cfg.name)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", {"study": dataclasses.asdict(cfg), "aggregate": agg, "rows": rows,
                                             "records": [str(store.path(r["evaluation"], r["model"], r["seed"]))
                                                         for r in records]})
    notes = [f"Study `{cfg.name}` ({source}): {len(cfg.models)} models x {len(cfg.seeds)} seeds "
             f"({', '.join(map(str, cfg.seeds))}) x {len(evs)} evaluations; mean ± sample std over seeds.",
             "Models: " + "; ".join(f"`{m.name}` = `{m.dir}`" + (" (random init)" if m.random_init else "")
                                    for m in cfg.models), ""] + rows_table(rows)
    extra_lines = {ev.name: ev.report_lines([r for r in records if r["evaluation"] == ev.name], out) for ev in evs}
    path = write_report(f"Study: {cfg.name}", agg, metrics, out, baseline=cfg.baseline or None, notes=notes,
                        extra=extra_lines)
    extra = comparison_tables(cfg, agg, metrics)
    if extra:
        path.write_text(path.read_text(encoding="utf-8").rstrip("\n") + "\n\n" + "\n".join(extra) + "\n",
                        encoding="utf-8")
    return path


ALPHA = 0.05  # the level at which a difference is called a difference (Welch's two-sided p)


def verdict(diff: float, p: float | None) -> str:
    """``higher`` / ``lower`` when Welch's two-sided p < :data:`ALPHA`, else ``within noise``
    (also when there is no test: fewer than two seeds or no variance)."""
    if p is None or p >= ALPHA:
        return "within noise"
    return "higher" if diff > 0 else "lower"


def pooled_std(a: dict, b: dict) -> float | None:
    """√((s_a² + s_b²) / 2) of two :func:`evaluate.aggregate.stats` dicts (the seed standard deviation
    pooled over both rows, issue 21's yardstick); None without a spread (fewer than 2 seeds, or none)."""
    if a.get("n", 0) < 2 or b.get("n", 0) < 2:
        return None
    sd = ((a["std"] ** 2 + b["std"] ** 2) / 2) ** 0.5
    return sd or None


def _pair_rows(agg_ev: dict, pairs: list[tuple[str, str]], keys: list[str]) -> list[str]:
    from evaluate.aggregate import compare

    rows = []
    for a, b in pairs:
        if a not in agg_ev or b not in agg_ev:
            continue
        cells = []
        for k in keys:
            sa, sb = agg_ev[a].get(k, {}), agg_ev[b].get(k, {})
            if sa.get("mean") is None or sb.get("mean") is None:
                cells.append("n/a")
                continue
            d = sa["mean"] - sb["mean"]
            p = compare(agg_ev, a, b, k)["p"]
            sd = pooled_std(sa, sb)
            in_sd = f"{d / sd:+.1f} sd, " if sd else ""
            cells.append(f"{d:+.2f} ({in_sd}p {'n/a' if p is None else f'{p:.3f}'}, {verdict(d, p)})")
        rows.append(f"| {a} vs {b} | " + " | ".join(cells) + " |")
    return rows


def comparison_tables(cfg: StudyConfig, agg: dict, metrics: dict[str, list[str]]) -> list[str]:
    """Per evaluation: every model against the ``baseline`` and every model with a ``twin`` against
    it (the gain of pre-training): mean difference over the seeds, Welch's two-sided p and a verdict
    (:func:`verdict`: higher / lower at p < 0.05, else within noise), and the difference in pooled
    seed standard deviations (:func:`pooled_std`, "sd"). Markdown lines."""
    lines: list[str] = []
    for ev, agg_ev in agg.items():
        keys = metrics.get(ev) or []
        for title, pairs in (
                ("vs the baseline", [(m.name, cfg.baseline) for m in cfg.models
                                     if cfg.baseline and m.name != cfg.baseline and not m.random_init]),
                ("pre-trained vs random-init twin", [(m.name, m.twin) for m in cfg.models if m.twin])):
            rows = _pair_rows(agg_ev, pairs, keys)
            if rows:
                lines += [f"## {ev}: {title}", "",
                          f"Mean difference over the seeds (in pooled seed standard deviations, sd = √((s₁² + s₂²)/2)), "
                          f"Welch's two-sided p, verdict at p < {ALPHA}:", "",
                          "| model | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)] + rows + [""]
    return lines



def _meta(folder: Path) -> dict | None:
    """The typed ``pretrain_meta.json`` of an export or of its pre-training folder (as a dict)."""
    from dataclasses import asdict

    from pretrain.exports import META_FILE, ExportMeta

    for f in (folder, folder / "export"):
        if (f / META_FILE).is_file():
            return asdict(ExportMeta.load(f, missing_ok=False))
    return None


def pretraining_rows(cfg: StudyConfig) -> list[dict]:
    """Per model: pre-training steps, tokens and characters seen over the seeds (``stats`` dicts,
    from each seed's ``pretrain_meta.json``; a random-init row saw nothing: 0), and its claims."""
    from evaluate.aggregate import stats

    rows = []
    for m in cfg.models:
        got: dict[str, list] = {"steps": [], "tokens_seen": [], "chars_seen": []}
        for seed in cfg.seeds:
            try:
                meta = _meta(m.folder(seed))
            except UserError:
                meta = None
            for k in got:
                got[k].append(0 if m.random_init else (meta or {}).get(k))
        rows.append({"model": m.name, "random_init": m.random_init, "claims": m.claims,
                     **{k: stats(v) for k, v in got.items()}})
    return rows


def rows_table(rows: list[dict]) -> list[str]:
    """The report's rows table (markdown lines)."""
    def num(s: dict) -> str:
        if s.get("mean") is None:
            return "n/a"
        return f"{s['mean']:,.0f}" + (f" ± {s['std']:,.0f}" if s.get("std") else "")

    lines = ["## Rows", "", "| model | pre-training steps | tokens seen | characters seen | paper claims |",
             "|---|---|---|---|---|"]
    for r in rows:
        claims = (r["claims"] or ("random-init twin: what pre-training adds" if r["random_init"] else "")).replace("|", "/")
        lines.append(f"| {r['model']} | {num(r['steps'])} | {num(r['tokens_seen'])} | {num(r['chars_seen'])} | "
                     f"{' '.join(claims.split())} |")
    return lines


def load_study(path: str | Path, overrides: list[str] | None = None) -> StudyConfig:
    from pipeline.config import load_config

    if not Path(path).is_file():
        raise UserError(f"study file not found: {path}")
    return load_config(StudyConfig, path, overrides)
