"""The one writer of benchmark records (``runs/bench/NAME.json``) and the one machine description.

Every ``bench/bench_*.py`` ends with :func:`write_record`::

    write_record("segment", {"metric": "segment_chars_per_s_per_core", "value": fast, "unit": "chars/s/core",
                             "baseline": ref, "ratio": fast / ref, "hmm": False})

The file (written atomically, so a stopped benchmark never leaves half a record)::

    {"bench": NAME, "command": "python bench/bench_x.py ...", "machine": machine(),
     "records": [{"metric", "value", "unit", "baseline", "ratio", ...}, ...], ...extra top-level fields}

``baseline`` is the figure of the baseline measured in the same run (``null`` where a figure has
none) and ``ratio`` is ``value / baseline`` unless the benchmark says otherwise in its docstring;
a record missing one of the five keys is refused (ValueError), so every file can be compared over
time the same way (docs/design: "Performance habits").
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

KEYS = ("metric", "value", "unit", "baseline", "ratio")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's ``model name`` from ``/proc/cpuinfo`` (else ``platform.processor()`` or the architecture)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            cpuinfo = ""
    for line in cpuinfo.splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def machine() -> dict:
    """Where a figure was measured: CPU model, bf16 instruction flags, cores, load, torch threads and
    GPU (where torch is importable), Python, torch and transformers versions."""
    from pretrain.config import cpu_bf16_features

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    out = {"cpu": cpu_model(), "arch": platform.machine(), "cores": os.cpu_count(), **cpu_bf16_features(),
           "load_average": None if load is None else round(load, 2), "python": platform.python_version(),
           "torch": _version("torch"), "transformers": _version("transformers"), "torch_threads": None, "gpu": None}
    try:
        import torch
    except ImportError:
        return out
    out["torch_threads"] = torch.get_num_threads()
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name()
    return out


def describe(m: dict | None = None) -> str:
    """One line of :func:`machine` for a table title."""
    m = m or machine()
    bf16 = [k for k in ("avx512_bf16", "amx_bf16") if m.get(k)]
    parts = [m["cpu"], f"{m['cores']} cores"]
    if m.get("torch_threads"):
        parts.append(f"{m['torch_threads']} torch threads")
    if bf16:
        parts.append("+".join(bf16))
    if m.get("gpu"):
        parts.append(m["gpu"])
    if m.get("load_average") is not None:
        parts.append(f"load {m['load_average']:.1f}")
    return ", ".join(parts)


def ratio(value: float | None, baseline: float | None) -> float | None:
    """``value / baseline`` (None without a baseline)."""
    return None if value is None or not baseline else value / baseline


def command(argv: list[str] | None = None) -> str:
    """The command line that reproduces the run (``argv``: the arguments a ``main(argv)`` got)."""
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(REPO)
    except ValueError:
        pass
    args = sys.argv[1:] if argv is None else list(argv)
    return " ".join(["python", str(script), *args])


def write_record(name: str, records: dict | list[dict], *, out: str | Path | None = None,
                 argv: list[str] | None = None, **fields) -> Path:
    """Write ``runs/bench/NAME.json`` (or ``out``) atomically and return its path (see the module doc)."""
    from pipeline.runs import atomic_write_json

    recs = [records] if isinstance(records, dict) else list(records)
    if not recs:
        raise ValueError(f"bench {name}: no records to write")
    for i, r in enumerate(recs):
        missing = [k for k in KEYS if k not in r]
        if missing:
            raise ValueError(f"bench {name}: record {i} ({r.get('metric', '?')}) lacks {', '.join(missing)}")
    path = Path(out) if out is not None else Path("runs") / "bench" / f"{name}.json"
    atomic_write_json(path, {"bench": name, "command": command(argv), "machine": machine(), "records": recs, **fields})
    return path
