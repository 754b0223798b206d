"""Fine-tuning tasks as an evaluation of a study: the fine-tuning suite (``finetune.train.run_seed``,
the one loop of ``python -m finetune``) run for one model and one seed.

``config`` names a fine-tuning suite config (``configs/finetune/*.yaml``: its tasks, learning-rate
and epoch grid, batch sizes); ``options`` overrides its keys (``{"lrs": [1e-4], "epochs": [1]}``)
and ``tasks`` picks some of its tasks (empty: all). The study's seed replaces the config's
``seeds``; the study's model entry decides ``random_init`` (its ``random_init_twins`` is not used:
list a ``random_init: true`` model in the study instead). Per task the result holds the test score
of the dev-best grid point under the task's name (the kind's main metric, in %), ``TASK_dev``, and
the chosen grid point. A task with robustness conditions (its ``perturb`` option, finetune.perturb)
adds ``TASK@MODE@RATE`` (the chosen point's score on the perturbed test split) and
``TASK@MODE@RATE_drop`` (clean minus perturbed) per condition, both metrics of the study, and
``TASK@MODE@RATE_realised_rate``. The grid points are resumable: they are kept in the store's work folder of
this (model, seed) and re-used while the settings are unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evaluate.base import EvalContext, Evaluation, register
from pipeline.errors import UserError

# keys of the suite's config that only pick models, runs or machines (not what a result depends on)
NOT_SETTINGS = ("run", "runs_root", "seeds", "random_init_twins", "baseline", "device", "threads", "trust_remote_code",
                "probe_rows")


@register
class FinetuneTasks(Evaluation):
    """Fine-tuning tasks of the suite (python -m finetune), test score of the dev-best grid point."""

    name = "finetune"
    random_init_ok = True

    @dataclass
    class Config:
        config: str = "configs/finetune/tiny.yaml"      # the fine-tuning suite's config
        tasks: list[str] = field(default_factory=list)  # its tasks to run (empty: all)
        options: dict[str, Any] = field(default_factory=dict)  # overrides of that config's keys

    def __init__(self, cfg):
        super().__init__(cfg)
        from finetune.config import FinetuneConfig
        from pipeline.config import load_config

        if not Path(cfg.config).is_file():
            raise UserError(f"evaluation 'finetune': config file not found: {cfg.config}")
        overrides = [f"{k}={json.dumps(v)}" for k, v in cfg.options.items()]
        self.suite = load_config(FinetuneConfig, cfg.config, overrides)
        known = [t.name for t in self.suite.tasks]
        unknown = [t for t in cfg.tasks if t not in known]
        if unknown:
            raise UserError(f"evaluation 'finetune': task '{unknown[0]}' is not in {cfg.config} (it has {', '.join(known)})")
        self.task_cfgs = [t for t in self.suite.tasks if not cfg.tasks or t.name in cfg.tasks]
        self._data: dict = {}

    @property
    def metrics(self) -> tuple[str, ...]:  # type: ignore[override]
        from finetune.perturb import condition_name

        out = []
        for t in self.task_cfgs:
            out.append(t.name)
            for m, r in (t.perturb.conditions() if t.perturb else ()):
                out += [f"{t.name}@{condition_name(m, r)}", f"{t.name}@{condition_name(m, r)}_drop"]
        return tuple(out)

    def settings(self) -> dict:
        from dataclasses import asdict

        suite = {k: v for k, v in asdict(self.suite).items() if k not in NOT_SETTINGS}
        if not suite.get("freeze_encoder"):  # fine-tuned (not probed): stored results keep their fingerprints
            suite.pop("freeze_encoder", None)
        if suite.get("pooling") == "cls":  # the default head: stored results keep their fingerprints
            suite.pop("pooling", None)
        # a task without robustness conditions leaves ``perturb`` out: stored results keep their fingerprints
        suite["tasks"] = [{k: v for k, v in asdict(t).items() if not (k == "perturb" and v is None)} for t in self.task_cfgs]
        # the precision the runs will use, not only the config's word: `auto` resolves by machine and
        # policy (pretrain.config.FINETUNE_CPU_AUTO_BF16), and a stored fp32 result must not stand for a
        # bf16 one. Only when not fp32, so fp32 results keep their fingerprints.
        from finetune.train import pick_device, precision

        resolved = precision(self.suite, pick_device(self.suite.device))
        if resolved != "no":
            suite["precision"] = resolved
        return {"suite": suite}

    def _task(self, tc):
        if tc.name not in self._data:
            from finetune.tasks import load_task

            self._data[tc.name] = load_task(tc)
        return self._data[tc.name]

    def run(self, model_dir: Path, seed: int, ctx: EvalContext) -> dict:
        import dataclasses

        from finetune.train import run_seed
        from pretrain.exports import check_folder

        if ctx.work_dir is None:
            raise ValueError("the finetune evaluation needs a work folder (run it through evaluate.store)")
        from evaluate.frozen import resolve_export

        model_dir = resolve_export(model_dir)
        check_folder(model_dir, ctx.trust_remote_code)  # refused folders fail before any training
        device = ctx.device if ctx.device in ("auto", "cpu", "cuda") else "auto"
        suite = dataclasses.replace(self.suite, trust_remote_code=ctx.trust_remote_code, device=device)
        out: dict = {}
        for tc in self.task_cfgs:
            r = run_seed(Path(ctx.work_dir) / tc.name, Path(model_dir).name, str(model_dir), ctx.random_init,
                         self._task(tc), tc, suite, seed)
            out[tc.name] = r["test"]
            out[f"{tc.name}_dev"] = r["dev"]
            out[f"{tc.name}_chosen"] = r["chosen"]
            out[f"{tc.name}_metric"] = r["metric"]
            for c, v in r.get("conditions", {}).items():
                out[f"{tc.name}@{c}"] = v["test"]
                out[f"{tc.name}@{c}_drop"] = v["drop"]
                out[f"{tc.name}@{c}_realised_rate"] = v["realised_rate"]
            out[f"{tc.name}_grid"] = r["grid"]  # every grid point's dev and test (per-model selection)
        return out

    def finalize(self, records: list[dict]) -> list[dict]:
        """Under the suite's ``grid_selection: per_model`` (``configs/finetune/lowres-study.yaml``):
        one (lr, epochs) point per model and task, the best **mean dev** over that model's seeds
        (:func:`finetune.stats.select_per_model`; test never decides), and each seed's test score
        read there. The records are copies: ``TASK`` becomes that test score, ``TASK_dev`` the dev
        score there, ``TASK_chosen`` the point (with ``"selection": "per_model"``). Records stored
        without a grid (older results) keep their own dev-best point. ``per_seed`` (default):
        unchanged, each seed's dev-best point."""
        if getattr(self.suite, "grid_selection", "per_seed") != "per_model":
            return records
        import copy

        from finetune.stats import select_per_model

        out = [copy.deepcopy(r) for r in records]
        by_model: dict = {}
        for r in out:
            by_model.setdefault(r.get("group") or r["model"], []).append(r)
        for recs in by_model.values():
            for tc in self.task_cfgs:
                key = f"{tc.name}_grid"
                have = [r for r in recs if r["results"].get(key)]
                if not have:
                    continue
                sel = select_per_model([{"seed": r["seed"], "grid": r["results"][key]} for r in have])
                for r, dev, test in zip(have, sel.dev, sel.test):
                    r["results"][tc.name] = test
                    r["results"][f"{tc.name}_dev"] = dev
                    r["results"][f"{tc.name}_chosen"] = {"lr": sel.lr, "epochs": sel.epochs, "selection": "per_model"}
        return out
