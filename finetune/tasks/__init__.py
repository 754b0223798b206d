"""Task loaders: a name -> a function that returns a :class:`finetune.kinds.base.TaskData`.

Built-in offline tasks (``builtin``): ``sentiment``, ``msra_ner``, ``pd_cws``, ``pd_pos``.
CLUE and common Chinese sets (``clue``): ``afqmc``, ``tnews``, ``iflytek``, ``ocnli``, ``cmnli``,
``cluewsc2020``, ``csl``, ``cmrc2018``, ``chid``, ``c3``, ``chnsenticorp``, ``lcqmc``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Optional

from finetune.kinds.base import TaskData
from finetune.perturb import KINDS as PERTURB_KINDS
from finetune.perturb import PerturbConfig
from pipeline.errors import UserError


@dataclass
class TaskConfig:
    name: str = ""
    data_dir: Optional[str] = None   # CLUE-style tasks: a local folder in the released format
    hub: bool = False                # no data_dir: load through `datasets` from the hub
    hub_id: Optional[str] = None     # hub dataset (default per task, e.g. clue/clue)
    hub_config: Optional[str] = None
    max_train: Optional[int] = None  # subsample the train split (seeded, deterministic)
    max_eval: Optional[int] = None   # subsample dev and test
    max_chars: int = 128             # characters of the (first) text fed to the model
    max_chars_b: Optional[int] = None  # second text / question / choice (default: max_chars)
    dev_fraction: float = 0.1        # CLUE tasks with hidden test labels: dev carved from train by hash
    # optional per-task overrides of the global grid / batch size
    lrs: Optional[list[float]] = None
    epochs: Optional[list[int]] = None
    batch_size: Optional[int] = None
    # robustness conditions: also score the dev-selected state on perturbed copies of the test split
    # (finetune.perturb; e.g. {modes: [pinyin, visual, random], rates: [0.2]}); null: clean test only
    perturb: Optional[PerturbConfig] = None

    def validate(self) -> None:
        if not self.name:
            raise ValueError("every entry of 'tasks' needs a 'name'")
        if self.name not in TASKS:
            raise ValueError(f"unknown task '{self.name}'. Known tasks: {', '.join(sorted(TASKS))}")
        if self.max_chars < 1:
            raise ValueError(f"task {self.name}: max_chars must be >= 1")
        if self.perturb is not None and task_kind(self.name) not in PERTURB_KINDS:
            raise ValueError(f"task {self.name}: perturb applies to {' and '.join(PERTURB_KINDS)} tasks, "
                             f"not {task_kind(self.name)}")


Loader = Callable[[TaskConfig], TaskData]
TASKS: dict[str, tuple[str, Loader]] = {}  # name -> (kind, loader)


def register_task(name: str, kind: str):
    def deco(fn: Loader) -> Loader:
        TASKS[name] = (kind, fn)
        return fn

    return deco


def task_kind(name: str) -> str:
    return TASKS[name][0]


def subsample(items: list, n: Optional[int], seed: int = 0) -> list:
    """A deterministic subsample of ``n`` items, in their original order."""
    if n is None or n >= len(items):
        return items
    keep = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in keep]


def load_task(cfg: TaskConfig) -> TaskData:
    if cfg.name not in TASKS:
        raise UserError(f"unknown task '{cfg.name}'. Known tasks: {', '.join(sorted(TASKS))}")
    kind, fn = TASKS[cfg.name]
    data = fn(cfg)
    data.kind = kind
    data.max_chars = cfg.max_chars
    n_full = {"train": len(data.train), "dev": len(data.dev), "test": len(data.test)}
    data.train = subsample(data.train, cfg.max_train, seed=1)
    data.dev = subsample(data.dev, cfg.max_eval, seed=2)
    data.test = subsample(data.test, cfg.max_eval, seed=3)
    data.info["sizes_full"] = n_full
    data.info["sizes_used"] = {"train": len(data.train), "dev": len(data.dev), "test": len(data.test)}
    for split in ("train", "dev", "test"):
        if not getattr(data, split):
            raise UserError(f"task {cfg.name}: the {split} split is empty ({data.info.get('source', '')})")
    return data


from finetune.tasks import builtin, clue  # noqa: E402,F401  (register the loaders)
