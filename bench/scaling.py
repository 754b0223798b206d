"""The scaling study of issue 21 (docs/regime.md "Scaling study"): a matrix of pre-training runs.

    .venv/bin/python bench/scaling.py configs/scaling/scaling.yaml [--jobs 2] [--dry-run] [--report-only]
    make study-scaling [SCALING=configs/scaling/mini.yaml]

A study of the evaluate stage compares finished exports; this one also has to make them, so it is
a small driver over the stages' own commands. Each variant (objective/vocabulary, model size,
masking, corpus: a pre-training config plus overrides) is pre-trained once per point of
``points`` (steps of ``batch_size x seq_len`` tokens; every point is a complete run with its own
warm-up and decay, so a point is what a run of that length gives, not a mid-run snapshot), then
fine-tuned with the study's fine-tuning config; the variant's random-init twin is fine-tuned once
(with its first point: random weights do not depend on the steps). Everything resumes: finished
corpora, vocabularies, shards and exports are skipped, an interrupted pre-training resumes from its
checkpoint, a fine-tuning command is not started when every seed it would run is finished with the
current settings (and skips finished seeds itself otherwise). ``--jobs N`` runs N variants at a
time, one torch thread each; ``--only V ...`` runs a subset.

Layout: corpus, vocabularies, shards and pre-training of corpus C in ``runs/PREFIX-C/``, pre-training
``runs/PREFIX-C/pretrain/VARIANT-sSTEPS/``, fine-tuning of a variant in
``runs/PREFIX-ft-VARIANT/finetune/`` (one run folder per variant: the fine-tuning lock is per run),
the report in ``runs/PREFIX/study/``: ``report.md`` (table: valid masked accuracy and loss per point
from each run's ``metrics.jsonl``, the unigram baseline of the corpus's valid split, the fine-tuning
test score per task at the grid point chosen on mean dev (``finetune.stats.select_per_model``) and
the gain over the random-init twin with Welch's p over the seeds), ``results.json``,
``curves.png`` (valid masked accuracy per step of every run) and ``scaling.png`` (final accuracy and
gain against pre-training tokens).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import math
import shlex
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.errors import UserError  # noqa: E402
from pipeline.runs import check_name  # noqa: E402


@dataclass
class Variant:
    name: str                      # row label; with the step count it names the pre-training run
    pretrain: str = ""             # pre-training config (default: the study's)
    corpus: str = ""               # key of `corpora` (default: the study's first)
    overrides: list[str] = field(default_factory=list)  # dotted pre-training overrides
    points: list[int] = field(default_factory=list)     # steps (default: the study's)

    def validate(self) -> None:
        check_name(self.name, "variant name")
        if any(p < 1 for p in self.points):
            raise ValueError(f"variant {self.name}: points must be >= 1 steps")


@dataclass
class ScalingConfig:
    name: str = "scaling"
    prefix: str = "scaling"        # run folders runs/PREFIX-CORPUS/, runs/PREFIX-ft-VARIANT/, runs/PREFIX/
    runs_root: str = "runs"
    corpora: dict[str, str] = field(default_factory=dict)  # name -> corpus config
    corpus_overrides: list[str] = field(default_factory=list)
    tokenization: str = "configs/tokenization/default.yaml"
    tokenization_overrides: list[str] = field(default_factory=lambda: ["kinds=[char,sgt]"])
    pretrain: str = "configs/pretrain/mlm-tiny.yaml"
    pretrain_overrides: list[str] = field(default_factory=list)  # for every run, before the variant's
    points: list[int] = field(default_factory=lambda: [250, 500, 1000, 2000])
    finetune: str = "configs/finetune/lowres.yaml"
    finetune_overrides: list[str] = field(default_factory=list)
    variants: list[Variant] = field(default_factory=list)
    baseline_variant: str = ""     # the plot's reference (default: the first variant)
    jobs: int = 1                  # variants run at once (each process one torch thread)

    def validate(self) -> None:
        check_name(self.name, "study name")
        check_name(self.prefix, "prefix")
        if not self.corpora:
            raise ValueError("corpora: name at least one corpus config")
        for c in self.corpora:
            check_name(c, "corpus name")
        if not self.variants:
            raise ValueError("variants: list at least one")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique, got {names}")
        for v in self.variants:
            if v.corpus and v.corpus not in self.corpora:
                raise ValueError(f"variant {v.name}: corpus '{v.corpus}' is not one of {sorted(self.corpora)}")
        if not self.points or any(p < 1 for p in self.points):
            raise ValueError("points: at least one step count, each >= 1")
        if self.jobs < 1:
            raise ValueError("jobs must be >= 1")


# --------------------------------------------------------------------------------------- plan
@dataclass
class Run:
    variant: str
    corpus: str
    steps: int
    corpus_run: str                # runs/<corpus_run>/ holds corpus, shards and this pre-training
    name: str                      # pre-training run name (VARIANT-sSTEPS)
    ft_run: str                    # fine-tuning run folder
    twin: bool                     # fine-tune the random-init twin with this point
    pretrain_cmd: list[str]
    finetune_cmd: list[str]

    def export(self, root: Path) -> Path:
        return root / self.corpus_run / "pretrain" / self.name / "export"


def corpus_of(cfg: ScalingConfig, v: Variant) -> str:
    return v.corpus or next(iter(cfg.corpora))


def plan(cfg: ScalingConfig, py: str = sys.executable) -> list[Run]:
    runs = []
    for v in cfg.variants:
        corpus = corpus_of(cfg, v)
        crun = f"{cfg.prefix}-{corpus}"
        points = sorted(set(v.points or cfg.points))
        for i, steps in enumerate(points):
            name = f"{v.name}-s{steps}"
            pre = [py, "-m", "pretrain", "--config", v.pretrain or cfg.pretrain, f"runs_root={cfg.runs_root}",
                   f"run={crun}", f"name={name}", *cfg.pretrain_overrides, *v.overrides,
                   f"train.steps={steps}", f"train.save_every={steps}"]
            ft_run = f"{cfg.prefix}-ft-{v.name}"
            export = Path(cfg.runs_root) / crun / "pretrain" / name / "export"
            ft = [py, "-m", "finetune", "--config", cfg.finetune, "--models", f"{name}={export}",
                  f"runs_root={cfg.runs_root}", f"run={ft_run}", *cfg.finetune_overrides,
                  f"random_init_twins={'true' if i == 0 else 'false'}"]
            runs.append(Run(v.name, corpus, steps, crun, name, ft_run, i == 0, pre, ft))
    return runs


def corpus_cmds(cfg: ScalingConfig, corpus: str, py: str = sys.executable) -> list[tuple[Path, list[str]]]:
    """(marker file, command) for the corpus, vocabularies and shards of one corpus (the Makefile's markers)."""
    run = f"{cfg.prefix}-{corpus}"
    r = Path(cfg.runs_root) / run
    common = [f"runs_root={cfg.runs_root}", f"run={run}"]
    return [
        (r / "corpus" / "stats.json",
         [py, "-m", "corpora", "build", "--config", cfg.corpora[corpus], *common, *cfg.corpus_overrides]),
        (r / "vocab" / ".done",
         [py, "-m", "tokenization", "vocab", "--config", cfg.tokenization, *common, *cfg.tokenization_overrides]),
        (r / "shards" / ".done",
         [py, "-m", "tokenization", "shards", "--config", cfg.tokenization, *common, *cfg.tokenization_overrides]),
    ]


# ---------------------------------------------------------------------------------------- run
_print_lock = threading.Lock()


def sh(cmd: list[str], dry: bool, log: Path | None = None) -> None:
    with _print_lock:
        print("+ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    if dry:
        return
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONHASHSEED": "0", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if log is None:
        rc = subprocess.run(cmd, cwd=ROOT, env=env).returncode
    else:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as fh:
            rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        where = f" (log: {log})" if log else ""
        raise UserError(f"step failed with exit code {rc}{where}: {' '.join(cmd[1:6])} ...")


def finetune_done(cfg: ScalingConfig, r: Run, root: Path) -> bool:
    """True when every seed of every task of ``r`` (and its twin) has a ``result.json`` with the
    current settings' fingerprint (``finetune.train.settings_fingerprint``): the fine-tuning command
    would only skip them, after loading the task data."""
    from finetune.config import FinetuneConfig
    from finetune.schema import RunResult
    from finetune.train import settings_fingerprint
    from pipeline.config import load_config

    fcfg = load_config(FinetuneConfig, ROOT / cfg.finetune, list(cfg.finetune_overrides))
    ft = root / r.ft_run / "finetune"
    models = [(r.name, False)] + ([(f"{r.name}-random", True)] if r.twin else [])
    for model, random_init in models:
        for tc in fcfg.tasks:
            fp = settings_fingerprint(tc, fcfg, random_init)
            for seed in fcfg.seeds:
                f = ft / model / tc.name / f"seed-{seed}" / "result.json"
                if not f.is_file() or RunResult.load(f).fingerprint != fp:
                    return False
    return True


def check_inputs(cfg: ScalingConfig) -> None:
    """Before any work: every used corpus config loads and its Debian-package sources are installed
    (``UserError`` with the ``apt-get install`` command otherwise)."""
    from corpora.builtin import DEBIAN, locate
    from corpora.config import CorpusConfig
    from pipeline.config import load_config

    for name in dict.fromkeys(corpus_of(cfg, v) for v in cfg.variants):
        ccfg = load_config(CorpusConfig, ROOT / cfg.corpora[name], cfg.corpus_overrides)
        for src in ccfg.sources:
            if src.type == "builtin" and src.builtin in DEBIAN:
                locate(src.builtin, src.path or None)


def run_study(cfg: ScalingConfig, dry: bool = False, jobs: int | None = None) -> list[Run]:
    root = ROOT / cfg.runs_root if not Path(cfg.runs_root).is_absolute() else Path(cfg.runs_root)
    check_inputs(cfg)
    runs = plan(cfg)
    locks = {c: threading.Lock() for c in cfg.corpora}
    logs = root / cfg.prefix / "logs"
    prepared: set[str] = set()

    def prepare(corpus: str) -> None:
        with locks[corpus]:
            if corpus in prepared:
                return
            prepared.add(corpus)
            for marker, cmd in corpus_cmds(cfg, corpus):
                marker = ROOT / marker if not marker.is_absolute() else marker
                if marker.is_file():
                    continue
                sh(cmd, dry, None if dry else logs / f"corpus-{corpus}.log")
                if not dry and marker.name == ".done":
                    marker.parent.mkdir(parents=True, exist_ok=True)
                    marker.touch()

    def variant(name: str) -> None:
        mine = [r for r in runs if r.variant == name]
        prepare(mine[0].corpus)
        for r in mine:
            if not (r.export(root) / "model.safetensors").is_file():
                sh(r.pretrain_cmd, dry, None if dry else logs / f"{r.name}.log")
            if dry or not finetune_done(cfg, r, root):
                sh(r.finetune_cmd, dry, None if dry else logs / f"{r.name}.finetune.log")

    order = list(dict.fromkeys(r.variant for r in runs))
    n = jobs or cfg.jobs
    if n == 1 or dry:
        for v in order:
            variant(v)
    else:
        with cf.ThreadPoolExecutor(n) as ex:
            for f in cf.as_completed([ex.submit(variant, v) for v in order]):
                f.result()  # the first failure stops the study (finished parts stay)
    return runs


# ------------------------------------------------------------------------------------- report
def valid_curve(run_dir: Path) -> list[dict]:
    from bench.regime_curves import read_valid

    return read_valid(run_dir)


def last_train(run_dir: Path) -> dict:
    p = run_dir / "metrics.jsonl"
    last = {}
    if p.is_file():
        for line in p.read_text(encoding="utf-8").splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if r.get("split") == "train":
                last = r
    return last


def seed_results(ft_dir: Path, model: str, task: str) -> list[dict]:
    from finetune.schema import RunResult

    d = ft_dir / model / task
    return [RunResult.load(p).to_dict() for p in sorted(d.glob("seed-*/result.json"))]


def summarize(cfg: ScalingConfig, runs: list[Run], root: Path) -> dict:
    """Per run: pre-training figures and, per task, the chosen test score of the model and its twin."""
    from finetune.stats import select_per_model, welch_t
    from pretrain.baseline import unigram_accuracy

    twins = {r.variant: f"{r.name}-random" for r in runs if r.twin}
    unigram: dict[tuple[str, str], float | None] = {}
    rows = []
    for r in runs:
        pdir = root / r.corpus_run / "pretrain" / r.name
        curve = valid_curve(pdir)
        last = curve[-1] if curve else {}
        tr = last_train(pdir)
        kind = "char"
        cfg_file = pdir / "config.yaml"
        if cfg_file.is_file():
            import yaml

            kind = (yaml.safe_load(cfg_file.read_text(encoding="utf-8")) or {}).get("data", {}).get("kind", "char")
        key = (r.corpus_run, kind)
        if key not in unigram:
            split = root / r.corpus_run / "shards" / kind / "valid"
            unigram[key] = unigram_accuracy(split)[0] if split.is_dir() else None
        row = {"variant": r.variant, "corpus": r.corpus, "steps": r.steps, "run": str(pdir.relative_to(root)),
               "tokens": tr.get("tokens_seen"), "chars": tr.get("chars_seen"),
               "valid_accuracy": last.get("accuracy") if last.get("step") == r.steps else None,
               "valid_loss": last.get("loss") if last.get("step") == r.steps else None,
               "unigram_accuracy": unigram[key], "tasks": {}}
        ft = root / r.ft_run / "finetune"
        for task in sorted({p.parent.name for p in (ft / r.name).glob("*/seed-*")} if (ft / r.name).is_dir() else []):
            mine, base = seed_results(ft, r.name, task), seed_results(ft, twins[r.variant], task)
            if not mine:
                continue
            sel = select_per_model(mine)
            cell = {"metric": mine[0]["metric"], "test": sel.test, "mean": sum(sel.test) / len(sel.test),
                    "lr": sel.lr, "epochs": sel.epochs}
            if base:
                bsel = select_per_model(base)
                cell["twin_test"] = bsel.test
                cell["twin_mean"] = sum(bsel.test) / len(bsel.test)
                cell["gain"] = cell["mean"] - cell["twin_mean"]
                w = welch_t(sel.test, bsel.test)
                cell["p"] = None if math.isnan(w.p) else w.p
            row["tasks"][task] = cell
        rows.append(row)
    return {"study": asdict(cfg), "rows": rows}


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def markdown(res: dict) -> str:
    rows = res["rows"]
    tasks = sorted({t for r in rows for t in r["tasks"]})
    head = ["variant", "corpus", "steps", "tokens (M)", "valid masked acc %", "unigram %", "valid loss"]
    for t in tasks:
        head += [f"{t} (pre-trained / twin)", f"{t} gain (p)"]
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"`{r['variant']}`", r["corpus"], f"{r['steps']:,}",
                 "-" if r["tokens"] is None else f"{r['tokens'] / 1e6:.2f}", _pct(r["valid_accuracy"]),
                 _pct(r["unigram_accuracy"]), "-" if r["valid_loss"] is None else f"{r['valid_loss']:.3f}"]
        for t in tasks:
            c = r["tasks"].get(t)
            if not c:
                cells += ["-", "-"]
                continue
            twin = f"{c['twin_mean']:.2f}" if "twin_mean" in c else "-"
            cells.append(f"{c['mean']:.2f} / {twin}")
            if "gain" in c:
                p = "" if c.get("p") is None else f" (p={c['p']:.3f})"
                cells.append(f"{c['gain']:+.2f}{p}")
            else:
                cells.append("-")
        md.append("| " + " | ".join(cells) + " |")
    return "\n".join(md)


def plots(res: dict, runs: list[Run], root: Path, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for r in runs:  # every run's own curve (points of a variant overlap early, then part at their decay)
        c = [x for x in valid_curve(root / r.corpus_run / "pretrain" / r.name) if x["step"] > 0]
        if c:
            ax.plot([x["step"] for x in c], [100 * x["accuracy"] for x in c], lw=1, label=r.name)
    ax.set_xlabel("step")
    ax.set_ylabel("valid masked accuracy (%)")
    ax.legend(fontsize=5, ncol=2)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "curves.png", dpi=80)
    plt.close(fig)
    made.append(out / "curves.png")

    tasks = sorted({t for r in res["rows"] for t in r["tasks"]})
    fig, axes = plt.subplots(1, 1 + len(tasks), figsize=(4 * (1 + len(tasks)), 3.4))
    axes = list(axes) if len(tasks) else [axes]
    for v in dict.fromkeys(r["variant"] for r in res["rows"]):
        rs = [r for r in res["rows"] if r["variant"] == v and r["tokens"]]
        xs = [r["tokens"] / 1e6 for r in rs]
        axes[0].plot(xs, [100 * (r["valid_accuracy"] or float("nan")) for r in rs], marker="o", lw=1, label=v)
        for ax, t in zip(axes[1:], tasks):
            ax.plot(xs, [r["tasks"].get(t, {}).get("gain", float("nan")) for r in rs], marker="o", lw=1, label=v)
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    for ax in axes:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    axes[0].set_xlabel("pre-training tokens (M)")
    axes[0].set_ylabel("valid masked accuracy (%)")
    for ax, t in zip(axes[1:], tasks):
        ax.axhline(0, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("pre-training tokens (M)")
        ax.set_ylabel(f"{t}: gain over random init")
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "scaling.png", dpi=80)
    plt.close(fig)
    made.append(out / "scaling.png")
    return made


def report(cfg: ScalingConfig, runs: list[Run]) -> Path:
    from pipeline.runs import atomic_write_json, atomic_write_text

    root = ROOT / cfg.runs_root if not Path(cfg.runs_root).is_absolute() else Path(cfg.runs_root)
    res = summarize(cfg, runs, root)
    out = root / cfg.prefix / "study"
    made = plots(res, runs, root, out)
    table = markdown(res)
    atomic_write_json(out / "results.json", res)
    md = [f"# Scaling study `{cfg.name}`", "",
          "Valid masked accuracy and loss: the last valid record of each run's `metrics.jsonl` (each point a "
          "complete run of that many steps). Unigram: the most frequent token's share of the corpus's valid "
          "split (accuracies of different corpora are on different valid splits). Fine-tuning: test score "
          "(mean over seeds) at the grid point with the best mean dev, for the pre-trained model / its "
          "random-init twin (the same twin for every point of a variant); gain = the difference, p = Welch's "
          "two-sided t over the seeds.", "", table, ""] + [f"![{p.stem}]({p.name})" for p in made]
    atomic_write_text(out / "report.md", "\n".join(md) + "\n")
    print(table)
    print(f"\nreport: {out / 'report.md'}")
    return out / "report.md"


def load(path: str, overrides: list[str] | None = None) -> ScalingConfig:
    from pipeline.config import load_config

    if not Path(path).is_file():
        raise UserError(f"scaling study config not found: {path}")
    return load_config(ScalingConfig, path, overrides)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*", help="dotted key=value overrides of the study config")
    ap.add_argument("--jobs", type=int, default=None, help="variants at a time (default: the config's jobs)")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    ap.add_argument("--report-only", action="store_true", help="only rebuild the report from finished runs")
    ap.add_argument("--only", nargs="+", metavar="VARIANT", help="run (and report) only these variants")
    a = ap.parse_args(argv)
    try:
        cfg = load(a.config, a.overrides)
        if a.only:
            unknown = sorted(set(a.only) - {v.name for v in cfg.variants})
            if unknown:
                raise UserError(f"--only: unknown variant(s) {', '.join(unknown)}; the config has "
                                f"{', '.join(v.name for v in cfg.variants)}")
            cfg.variants = [v for v in cfg.variants if v.name in a.only]
        runs = plan(cfg) if a.report_only else run_study(cfg, dry=a.dry_run, jobs=a.jobs)
        if not a.dry_run:
            report(cfg, runs)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
