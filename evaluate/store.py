"""The one result store: ``runs/RUN/eval/<evaluation>/<model>/seed-<n>.json``.

Each file holds one (evaluation, model, seed) result with the settings it was computed under and
their fingerprint::

    {"evaluation": "probes", "model": "mlm", "seed": 0, "dir": "runs/.../export",
     "fingerprint": "3f2a...", "settings": {...}, "results": {...}}

A stored result is reused only when its fingerprint equals the one the current settings give
(:func:`fingerprint`: sha256 of the sorted JSON of the settings, first 16 hex digits). The settings are the evaluation's config
minus its ``unfingerprinted`` keys (speed, presentation), the model folder, whether it is the
random-init baseline, and the size and modification time of the folder's ``config.json`` and
weight files, so re-training a model into the same folder makes its stored results stale.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from pipeline.errors import UserError
from pipeline.runs import atomic_write_json

WEIGHT_SUFFIXES = (".safetensors", ".json")


def fingerprint(settings: dict) -> str:
    """First 16 hex digits of the sha256 of ``settings`` as sorted JSON (non-JSON values as str)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def model_state(model_dir: str | Path) -> dict:
    """``{file: [size, mtime_ns]}`` of the folder's config and weights (what a re-export changes);
    for a pre-training folder also its ``export/`` files and the checkpoint folders' names and times
    (an evaluation that reads the objective from its latest checkpoint)."""
    d = Path(model_dir)
    out: dict = {}
    for sub in (d, d / "export"):
        if sub.is_dir():
            out.update({str(p.relative_to(d)): [p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(sub.iterdir())
                        if p.is_file() and p.suffix in WEIGHT_SUFFIXES})
    ck = d / "checkpoints"
    if ck.is_dir():
        out["checkpoints"] = sorted([p.name, p.stat().st_mtime_ns] for p in ck.iterdir())
    return out


def settings_of(evaluation, model_dir: str | Path, random_init: bool = False) -> dict:
    """What one stored result depends on (see the module docstring)."""
    key = {k: v for k, v in evaluation.settings().items() if k not in evaluation.unfingerprinted}
    return {"evaluation": evaluation.name, "config": key, "dir": str(model_dir), "random_init": bool(random_init),
            "model_state": model_state(model_dir)}


_SAFE = re.compile(r"[^A-Za-z0-9._=+-]+")


def safe_name(name: str) -> str:
    """A model label as one path component (``/`` and other odd characters become ``_``)."""
    s = _SAFE.sub("_", name).strip("._")
    if not s:
        raise UserError(f"model name {name!r} gives an empty folder name")
    return s


class ResultStore:
    """``root`` is ``runs/RUN/eval``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, evaluation: str, model: str, seed: int) -> Path:
        return self.root / evaluation / safe_name(model) / f"seed-{int(seed)}.json"

    def load(self, evaluation: str, model: str, seed: int, fp: str | None = None) -> dict | None:
        """The stored record, or None when there is none or (with ``fp``) it is stale."""
        p = self.path(evaluation, model, seed)
        if not p.is_file():
            return None
        try:
            rec = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{p}: unreadable stored result ({e}); delete it to recompute") from None
        if not isinstance(rec, dict) or "results" not in rec:
            raise UserError(f"{p}: not a stored evaluation result (no 'results'); delete it to recompute")
        if fp is not None and rec.get("fingerprint") != fp:
            return None
        return rec

    def save(self, evaluation: str, model: str, seed: int, settings: dict, results: dict,
             group: str | None = None) -> dict:
        rec = {"evaluation": evaluation, "model": model, "group": group or model, "seed": int(seed),
               "dir": settings.get("dir"),
               "fingerprint": fingerprint(settings), "settings": settings, "results": results}
        p = self.path(evaluation, model, seed)
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(p, rec)
        return rec

    def run(self, evaluation, model: str, model_dir: str | Path, seed: int, ctx, force: bool = False,
            group: str | None = None) -> tuple[dict, bool]:
        """The stored result of (evaluation, model, seed) if fresh, else run it and store it.
        ``group``: the name results are aggregated under (default: ``model``; e.g. one pre-training
        name over several pre-training seeds). Returns ``(record, computed)``."""
        if ctx.random_init and not evaluation.random_init_ok:
            raise UserError(f"evaluation '{evaluation.name}' has no random-init baseline (model '{model}')")
        st = settings_of(evaluation, model_dir, ctx.random_init)
        if not force:
            rec = self.load(evaluation.name, model, seed, fingerprint(st))
            if rec is not None and rec.get("group", model) == (group or model):
                return rec, False
        import dataclasses

        ctx = dataclasses.replace(ctx, work_dir=self.path(evaluation.name, model, seed).with_suffix(".work"))
        results = evaluation.run(Path(model_dir), seed, ctx)
        return self.save(evaluation.name, model, seed, st, results, group), True
