"""What the fine-tuning stage hands on: :class:`RunResult` (``finetune/MODEL/TASK/seed-S/result.json``,
one per model x task x seed) and :class:`FinetuneResults` (``finetune/report/results.json``).

``finetune.train.run_seed`` writes each ``result.json`` with :meth:`RunResult.save`;
``finetune.report.write_report`` writes ``results.json`` with :meth:`FinetuneResults.save` (last
file of the report). The ``--report-only`` rebuild, the publisher and the model card ``load()``
them. Rules of every schema (types checked, unknown keys kept in ``extra``, one error line naming
the file): ``pipeline.schema``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from pipeline.schema import Record

SUMMARY_KEYS = ("values", "mean", "std", "max")


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@dataclass
class RunResult(Record):
    """One seed of one model on one task: the dev-best grid point (``chosen``), its dev and test
    scores in % (``metric`` is the kind's main metric), every grid point's scores, the chosen
    point's scores under the task's robustness ``conditions`` (drop = test - condition score) and
    the settings ``fingerprint`` that decides whether a rerun may reuse it."""

    FILE = "result.json"
    OMIT_NONE = True  # ``conditions`` only when the task has some

    model: str
    task: str
    kind: str
    metric: str
    seed: int
    dev: float
    test: float
    model_dir: str = ""
    random_init: bool = False
    test_metrics: dict = field(default_factory=dict)
    chosen: dict = field(default_factory=dict)
    grid: list = field(default_factory=list)
    # robustness conditions (a task's ``perturb``): "MODE@RATE" -> {"test", "drop", "realised_rate"}
    conditions: Optional[dict] = None
    fingerprint: str = ""
    extra: dict = field(default_factory=dict)
    path: Optional[Path] = field(default=None, compare=False)


@dataclass
class FinetuneResults(Record):
    """The report's ``results.json`` (docs/contracts.md "Fine-tuning"):

    * ``tasks[task]``: ``{"metric", "kind"}``;
    * ``models[name]``: ``{"dir", "random_init", "results": {task: {"values", "mean", "std", "max"}}}``
      (test scores in %, ``values`` per seed in ``seeds`` order);
    * ``baseline``: the model every delta is measured against;
    * ``robustness[name][task][condition]``: ``{"test": summary, "drop": summary}`` over the seeds
      for a task with robustness conditions (``perturb``; condition ``MODE@RATE``).
    """

    FILE = "results.json"
    OMIT_NONE = True  # ``robustness`` only when a task has conditions

    baseline: str
    seeds: list
    tasks: dict
    models: dict
    robustness: Optional[dict] = None
    extra: dict = field(default_factory=dict)
    path: Optional[Path] = field(default=None, compare=False)

    def check(self) -> str | None:
        for t, info in self.tasks.items():
            if not (isinstance(info, dict) and isinstance(info.get("metric"), str) and isinstance(info.get("kind"), str)):
                return f"tasks['{t}']: expected {{'metric': str, 'kind': str}}"
        for name, m in self.models.items():
            if not (isinstance(m, dict) and isinstance(m.get("results"), dict) and "dir" in m
                    and isinstance(m.get("random_init"), bool)):
                return f"models['{name}']: expected {{'dir', 'random_init': bool, 'results': {{...}}}}"
            for t, s in m["results"].items():
                if not isinstance(s, dict) or not all(k in s for k in SUMMARY_KEYS) \
                        or not all(_num(s[k]) for k in ("mean", "std", "max")) or not isinstance(s["values"], list):
                    return f"models['{name}'].results['{t}']: expected numbers {list(SUMMARY_KEYS)}"
        return None

    def model_key(self, export: Path) -> str | None:
        """The key of the (not random-init) model whose ``dir`` is ``export``, else the key named
        like the export's run folder, else None."""
        for key, m in self.models.items():
            if not m.get("random_init") and m.get("dir") and Path(m["dir"]).resolve() == Path(export).resolve():
                return key
        name = Path(export).parent.name
        return name if name in self.models else None

    def only(self, key: str) -> "FinetuneResults":
        """The same results restricted to one model (what a published folder carries)."""
        return FinetuneResults(baseline=self.baseline, seeds=list(self.seeds), tasks=dict(self.tasks),
                               models={key: self.models[key]}, extra=dict(self.extra))

    def mean(self, model: str, task: str) -> float:
        s = self.models.get(model, {}).get("results", {}).get(task)
        return s["mean"] if s else math.nan
