"""The one aggregator: mean ± std over seeds and the reports' significance test (Welch's t).

``stats(values)`` gives ``{"values", "mean", "std", "n"}`` (sample standard deviation, 0 for one
value; ``None``/NaN values are dropped). ``welch(a, b)`` is Welch's unequal-variance t-test of two
samples (:func:`finetune.stats.welch_t`), two-sided; with fewer than two values on a
side, or no variance on both, there is no test and the p-value is ``None``.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict


def _clean(values) -> list[float]:
    out = []
    for v in values:
        if v is None or isinstance(v, bool):
            continue
        f = float(v)
        if not math.isnan(f):
            out.append(f)
    return out


def stats(values) -> dict:
    v = _clean(values)
    if not v:
        return {"values": [], "mean": None, "std": None, "n": 0}
    return {"values": v, "mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "n": len(v)}


def welch(a, b) -> dict:
    """``{"t", "p", "df"}`` of Welch's t-test of ``a`` against ``b`` (``None`` where undefined): the
    fine-tuning report's test (:func:`finetune.stats.welch_t`), so studies and reports agree."""
    from finetune.stats import welch_t

    a, b = _clean(a), _clean(b)
    if len(a) < 2 or len(b) < 2 or (statistics.variance(a) == 0 and statistics.variance(b) == 0):
        return {"t": None, "p": None, "df": None}
    r = welch_t(a, b)
    return {"t": float(r.t), "p": float(r.p), "df": float(r.df)}


def fmt(s: dict, digits: int = 2) -> str:
    """``mean ± std`` of a :func:`stats` dict ("n/a" when empty)."""
    if not s or s.get("mean") is None:
        return "n/a"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def aggregate(records: list[dict], metrics: dict[str, tuple[str, ...]] | None = None) -> dict:
    """Stored records (:class:`evaluate.store.ResultStore`) -> ``{evaluation: {group: {"seeds": [...],
    "models": [...], metric: stats}}}`` (a record's ``group`` defaults to its ``model``). ``metrics[evaluation]`` names the keys to aggregate (default: every number in
    the records' results)."""
    grouped: dict = defaultdict(lambda: defaultdict(list))
    for r in records:
        grouped[r["evaluation"]][r.get("group") or r["model"]].append(r)
    out: dict = {}
    for ev, by_model in grouped.items():
        out[ev] = {}
        for model, recs in by_model.items():
            recs = sorted(recs, key=lambda r: r["seed"])
            keys = (metrics or {}).get(ev) or sorted({k for r in recs for k, v in r["results"].items()
                                                     if isinstance(v, (int, float)) and not isinstance(v, bool)})
            row = {"seeds": [r["seed"] for r in recs], "models": [r["model"] for r in recs]}
            for k in keys:
                row[k] = stats(r["results"].get(k) for r in recs)
            out[ev][model] = row
    return out


def compare(agg_ev: dict, a: str, b: str, metric: str) -> dict:
    """Welch's t of ``metric`` between models ``a`` and ``b`` of one evaluation's aggregate."""
    return welch(agg_ev[a][metric]["values"], agg_ev[b][metric]["values"])
