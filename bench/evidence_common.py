"""Helpers shared by the evidence recipes (``bench/evidence_*.py``): running a step, mean ± std."""

from __future__ import annotations

import shlex
import statistics
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sh(cmd: list[str], dry: bool = False, cwd: Path | None = ROOT) -> None:
    """Print a step and run it (not with ``dry``); a failed step stops the recipe with its command."""
    print("+ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    if not dry and subprocess.run(cmd, cwd=cwd).returncode != 0:
        raise SystemExit(f"error: step failed (exit code above): {' '.join(cmd[:4])} ...")


def stats(v: list) -> dict:
    """``{"values", "mean", "std", "n"}`` of the values that are not None (sample std; 0 for one)."""
    v = [x for x in v if x is not None]
    if not v:
        return {"values": [], "mean": None, "std": None, "n": 0}
    return {"values": v, "mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0,
            "n": len(v)}
