"""Logging and progress, one convention for all stages.

* ``get_logger(name)``: concise ``HH:MM:SS stage: message`` lines on stderr.
* ``progress(...)``: a tqdm bar with rate and ETA (disabled when stderr is not a terminal unless
  ``PIPELINE_PROGRESS=1``; CI logs stay readable).
* ``print_table(title, header, rows)``: the summary printed at the end of a stage.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Iterable, Sequence

from tqdm.auto import tqdm

_CONFIGURED = False


def get_logger(name: str) -> logging.Logger:
    global _CONFIGURED
    if not _CONFIGURED:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"))
        root = logging.getLogger("pipeline")
        root.addHandler(handler)
        root.setLevel(os.environ.get("PIPELINE_LOG_LEVEL", "INFO"))
        root.propagate = False
        _CONFIGURED = True
    return logging.getLogger(f"pipeline.{name}")


def progress_enabled() -> bool:
    env = os.environ.get("PIPELINE_PROGRESS")
    if env is not None:
        return env not in ("0", "false", "no", "")
    return sys.stderr.isatty()


def progress(iterable: Iterable | None = None, *, total: float | None = None, desc: str = "",
             unit: str = "it", unit_scale: bool = False, **kw) -> tqdm:
    """A progress bar with rate and ETA; a no-op wrapper when progress output is disabled."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, unit_scale=unit_scale,
                disable=not progress_enabled(), dynamic_ncols=True, mininterval=0.5, **kw)


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in header]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(_width(row[i]) for row in cells) for i in range(len(header))]
    lines = []
    for j, row in enumerate(cells):
        lines.append("  ".join(c + " " * (widths[i] - _width(c)) for i, c in enumerate(row)).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]], file=None) -> str:
    text = f"{title}\n{format_table(header, rows)}"
    print(text, file=file or sys.stdout, flush=True)
    return text


def _fmt(c: object) -> str:
    if isinstance(c, float):
        if c != c:
            return "-"
        if abs(c) >= 1000:
            return f"{c:,.0f}"
        return f"{c:.4g}"
    if isinstance(c, int) and not isinstance(c, bool):
        return f"{c:,}"
    return str(c)


def _width(s: str) -> int:
    """Display width: CJK characters take two columns."""
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in s)
