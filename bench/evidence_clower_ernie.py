"""The evidence recipe for ``clower`` (issue 7) and ``ernie_gram`` (issue 8), seeds x objectives.

For every seed: pre-train ``mlm``, ``clower`` and the ERNIE-Gram ladder (``ernie_gram_explicit``,
``ernie_gram_comprehensive``, ``ernie_gram_full``) at equal steps on the shards of one run
(``runs/RUN/{vocab,shards}``; build them with ``make shards RUN=RUN VOCAB_KINDS="char sgt word ngram"``),
each into ``runs/RUN-ev-sSEED/pretrain/NAME/``. Then, over all seeds:

* ``python -m evaluate run probes`` -> ``runs/RUN/evidence/probes.json`` (mlm vs clower, + random init;
  per-model results in the store ``runs/RUN/eval/probes/``)
* ``python -m evaluate run ngram_recovery`` -> ``runs/RUN/evidence/ngram_eval.json`` (explicit head vs contiguous MLM)
* ``python -m finetune``            -> ``runs/RUN-ev/finetune/report/`` (sentiment, NER rows, every model)

A pre-training step is skipped when its export exists (and the trainer resumes an interrupted one);
the probes, the n-gram evaluation and the fine-tuning report run again (fine-tuning resumes per seed).

``python bench/evidence_clower_ernie.py --run demo [--seeds 0 1 2] [--steps 400] [--config tiny]
[--objectives mlm clower ernie_gram_explicit ...] [--no-finetune] [--dry-run]``

Smoke version (one seed, 50 steps): ``--seeds 0 --steps 50 --smoke``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evidence_common import sh as _sh  # noqa: E402


def sh(cmd: list[str], dry: bool) -> None:
    _sh(cmd, dry, cwd=None)  # commands are relative to the caller's directory


OBJECTIVES = ["mlm", "clower", "ernie_gram_explicit", "ernie_gram_comprehensive", "ernie_gram_full"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="demo", help="run whose vocab/ and shards/ are used")
    ap.add_argument("--runs-root", default="runs")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=None, help="override train.steps (equal for every objective)")
    ap.add_argument("--config", default="tiny", help="config size suffix: configs/pretrain/NAME-CONFIG.yaml")
    ap.add_argument("--objectives", nargs="+", default=OBJECTIVES)
    ap.add_argument("--finetune-config", default="configs/finetune/tiny.yaml")
    ap.add_argument("--no-finetune", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="small probe / eval sizes, no fine-tuning")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    a = ap.parse_args()
    py = sys.executable
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = Path(a.runs_root)
    src = root / a.run
    if not a.dry_run and not (src / "shards").is_dir():
        print(f"error: {src / 'shards'} not found (make shards RUN={a.run} first)", file=sys.stderr)
        return 2
    ev = src / "evidence"
    dirs: dict[str, list[Path]] = {o: [] for o in a.objectives}
    for seed in a.seeds:
        run = f"{a.run}-ev-s{seed}"
        for name in a.objectives:
            out = root / run / "pretrain" / name
            dirs[name].append(out)
            if (out / "export" / "model.safetensors").is_file():
                continue
            cmd = [py, "-m", "pretrain", "--config", f"configs/pretrain/{name}-{a.config}.yaml", f"run={run}",
                   f"runs_root={a.runs_root}", f"train.seed={seed}", f"data.shards_root={src / 'shards'}",
                   f"data.vocab_root={src / 'vocab'}", f"train.threads={a.threads}"]
            if a.steps:
                warm = max(1, a.steps // 10)
                cmd += [f"train.steps={a.steps}", f"train.warmup_steps={warm}",
                        f"train.eval_every={max(1, a.steps // 2)}", f"train.save_every={a.steps}"]
            sh(cmd, a.dry_run)
    small = ["--set", "max_train=500", "--set", "max_test=300"] if a.smoke else []
    tag = "-smoke" if a.smoke else ""
    if "clower" in dirs:
        models = [str(d) for n in ("mlm", "clower") if n in dirs for d in dirs[n]]
        sh([py, "-m", "evaluate", "run", "probes", "--random-init", "--threads", str(a.threads), "--run", a.run,
            "--runs-root", str(a.runs_root), "--out", str(ev / f"probes{tag}.json"), *small, "--models", *models], a.dry_run)
    explicit = [d for n in a.objectives if n.startswith("ernie_gram") for d in dirs[n]]
    if explicit:
        models = [str(d) for d in explicit] + [str(d) for d in dirs.get("mlm", [])]
        sh([py, "-m", "evaluate", "run", "ngram_recovery", "--threads", str(a.threads), "--run", a.run,
            "--runs-root", str(a.runs_root), "--out", str(ev / f"ngram_eval{tag}.json"),
            "--set", f"shards={src / 'shards'}", "--set", f"batches={5 if a.smoke else 20}", "--models", *models], a.dry_run)
    if not (a.no_finetune or a.smoke):
        # one report row per pre-training seed: NAME-sSEED=DIR
        exports = [f"{n}-s{seed}={d / 'export'}" for n in a.objectives for seed, d in zip(a.seeds, dirs[n])]
        sh([py, "-m", "finetune", "--config", a.finetune_config, "--models", *exports, f"run={a.run}-ev",
            f"runs_root={a.runs_root}"], a.dry_run)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
