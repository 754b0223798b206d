"""The evaluation contract and registry (mirrors ``pretrain/objectives/base.py``).

An evaluation judges one model folder for one seed and returns a flat-ish JSON-able dict of
results. It has a ``name`` (the registry key, also the folder of its results in the store), a
``Config`` dataclass of options (checked like an objective's options: unknown keys are a user
error naming them) and ``run(model_dir, seed, ctx)``. Nothing else: storing, fingerprinting,
aggregating over seeds and writing reports belong to :mod:`evaluate.store`,
:mod:`evaluate.aggregate` and :mod:`evaluate.report`.

Models are loaded only through :func:`pretrain.exports.load_export`; ``ctx.trust_remote_code`` is
the user's ``--trust-remote-code`` consent, passed through unchanged.

``metrics``: the keys of the result dict that are numbers worth a mean ± std over seeds (the
aggregator and the report use them; other keys are kept in the stored file as they are).
``unfingerprinted``: config fields that only change speed or presentation, so a stored result
stays valid when they change (see :func:`evaluate.store.fingerprint`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pipeline.errors import UserError
from pipeline.registry import register_in


@dataclass
class EvalContext:
    """How to run (never what is measured): device, threads, the user's consent to run shipped code,
    and whether the model is the randomly initialised copy of its folder (a baseline)."""

    trust_remote_code: bool = False
    device: str = "cpu"
    random_init: bool = False
    log: Any = None
    work_dir: Any = None  # a folder of this (evaluation, model, seed) for resumable partial work (set by the store)


class Evaluation:
    """Base class. Subclasses set ``name``, ``Config`` and ``metrics`` and implement ``run``."""

    name: ClassVar[str] = ""
    metrics: ClassVar[tuple[str, ...]] = ()
    unfingerprinted: ClassVar[tuple[str, ...]] = ()
    random_init_ok: ClassVar[bool] = False  # whether ``ctx.random_init`` (a fresh-weights baseline) is supported

    @dataclass
    class Config:
        pass

    def __init__(self, cfg: Any):
        self.cfg = cfg

    def run(self, model_dir: Path, seed: int, ctx: EvalContext) -> dict:
        """Results of ``model_dir`` (an export folder) for ``seed``; every metric a float."""
        raise NotImplementedError

    def prepare(self, model_dirs: list[Path]) -> None:
        """Called once with every model folder of a run or study before any result is computed:
        settings that depend on all models together (a common lexicon cap, the first model's data)
        are resolved here, so they enter the fingerprint. Default: nothing."""

    def report_lines(self, records: list[dict], out_dir: Path) -> list[str]:
        """Markdown lines a report adds under this evaluation's table (tables or plots beyond the
        metrics' mean ± std, e.g. accuracy by depth), plots written into ``out_dir``. ``records``:
        this evaluation's stored records. Default: none."""
        return []

    def settings(self) -> dict:
        """The config as a dict (what the store fingerprints, minus ``unfingerprinted``)."""
        return dataclasses.asdict(self.cfg)

    def finalize(self, records: list[dict]) -> list[dict]:
        """Called by a study with every stored record of this evaluation (all models and seeds)
        before they are aggregated; returns the records to aggregate. Default: unchanged. (The
        ``finetune`` evaluation selects one grid point per model here under ``grid_selection:
        per_model``.)"""
        return records


_REGISTRY: dict[str, type[Evaluation]] = {}
MODULES = ("evaluate.probes", "evaluate.ngram_recovery", "evaluate.attention", "evaluate.finetune_tasks",
           "evaluate.retrieval", "evaluate.valid_loss")  # importing these fills the registry


def register(cls: type[Evaluation]) -> type[Evaluation]:
    return register_in(_REGISTRY, cls, "evaluation")


def _load_all() -> None:
    import importlib

    for m in MODULES:
        importlib.import_module(m)


def get_evaluation(name: str) -> type[Evaluation]:
    _load_all()
    if name not in _REGISTRY:
        raise UserError(f"unknown evaluation '{name}'. Known evaluations: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def registered() -> dict[str, type[Evaluation]]:
    _load_all()
    return dict(_REGISTRY)


def build_evaluation(name: str, options: dict | None, where: str = "") -> Evaluation:
    """Instantiate evaluation ``name`` with ``options`` checked against its ``Config`` dataclass."""
    from pipeline.config import _build

    cls = get_evaluation(name)
    label = f"{where}evaluation '{name}' options" if where else f"evaluation '{name}' options"
    cfg = _build(cls.Config, dict(options or {}), label, prefix="")
    return cls(cfg)


def config_fields(cls: type[Evaluation]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls.Config)]
