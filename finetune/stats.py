"""Statistics of the fine-tuning protocol: grid selection on dev, and Welch's t-test over seeds.

* :func:`select_per_model` picks one (lr, epochs) grid point per model and task: the one with the
  best **mean dev score over the seeds**; test scores are read only at that point and never
  compared. Every model of a task is trained on the same grid (:func:`check_same_grid`), so
  pre-trained and random-init twins get the same tuning budget.
* :func:`welch_t` compares two models' per-seed test scores without assuming equal variances
  (Welch 1947; the Welch-Satterthwaite degrees of freedom). The two-sided p-value uses
  ``scipy.special.stdtr`` when scipy is installed, else a regularised incomplete beta function
  evaluated by Lentz's continued fraction (Numerical Recipes §6.4); both are tested against
  published values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

GridPoint = tuple[float, int]  # (lr, epochs)


def _mean(x: Sequence[float]) -> float:
    return sum(x) / len(x)


def _var(x: Sequence[float]) -> float:
    m = _mean(x)
    return sum((v - m) ** 2 for v in x) / (len(x) - 1)


# ---- Student's t distribution -------------------------------------------------------------------
def _betacf(a: float, b: float, x: float, eps: float = 1e-14, max_iter: int = 500) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, max_iter + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc_reg(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(ln_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float, use_scipy: bool = True) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` (real, > 0) degrees of freedom."""
    if math.isnan(t) or math.isnan(df):
        return float("nan")
    if math.isinf(t):
        return 0.0
    if use_scipy:
        try:
            from scipy.special import stdtr
        except ImportError:
            pass
        else:
            return float(2.0 * stdtr(df, -abs(t)))
    return betainc_reg(df / 2.0, 0.5, df / (df + t * t))


@dataclass
class WelchResult:
    diff: float  # mean(a) - mean(b)
    t: float
    df: float
    p: float  # two-sided

    def describe(self, alpha: float = 0.05) -> str:
        if math.isnan(self.p):
            return "n/a"
        return f"p={self.p:.3f}" + ("" if self.p < alpha else " (n.s.)")


def welch_t(a: Sequence[float], b: Sequence[float], use_scipy: bool = True) -> WelchResult:
    """Welch's unequal-variance t-test of mean(a) vs mean(b); two-sided p.

    Needs at least two values in each sample (else t, df and p are NaN). Two samples with zero
    variance each give p = 1 when their means are equal and p = 0 otherwise.
    """
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        d = _mean(a) - _mean(b) if na and nb else float("nan")
        return WelchResult(d, float("nan"), float("nan"), float("nan"))
    ma, mb = _mean(a), _mean(b)
    va, vb = _var(a) / na, _var(b) / nb
    diff = ma - mb
    se2 = va + vb
    if se2 == 0.0:
        return WelchResult(diff, 0.0 if diff == 0 else math.copysign(math.inf, diff), float(na + nb - 2),
                           1.0 if diff == 0 else 0.0)
    t = diff / math.sqrt(se2)
    df = se2 ** 2 / ((va ** 2 / (na - 1) if va else 0.0) + (vb ** 2 / (nb - 1) if vb else 0.0))
    return WelchResult(diff, t, df, t_two_sided_p(t, df, use_scipy))


# ---- grid selection on dev ----------------------------------------------------------------------
@dataclass
class Selection:
    lr: float
    epochs: int
    dev_mean: float
    dev: list[float]  # per seed, at the chosen point
    test: list[float]  # per seed, at the chosen point
    seeds: list[int]


def _points(grid: list[dict]) -> list[GridPoint]:
    return [(float(g["lr"]), int(g["epochs"])) for g in grid]


def check_same_grid(grids: dict[str, list[GridPoint]]) -> None:
    """Raise ``ValueError`` unless every model (name -> its grid points) was tuned on the same grid."""
    items = list(grids.items())
    if not items:
        return
    ref_name, ref = items[0]
    for name, pts in items[1:]:
        if sorted(set(pts)) != sorted(set(ref)):
            raise ValueError(f"model {name} was tuned on grid {sorted(set(pts))}, model {ref_name} on "
                             f"{sorted(set(ref))}: the comparison needs the same grid for every model")


def select_per_model(seed_results: list[dict]) -> Selection:
    """One grid point for a (model, task): best mean dev over the seeds; test read there.

    ``seed_results``: the seeds' ``result.json`` dicts (``finetune.train.run_seed``), each with
    ``seed`` and ``grid`` = [{"lr", "epochs", "dev", "test", ...}]. Only grid points present in
    every seed compete; ties keep the first point in grid order (lower lr first as configured).
    Test scores never influence the choice.
    """
    if not seed_results:
        raise ValueError("no seed results to select from")
    per_seed = [{(float(g["lr"]), int(g["epochs"])): g for g in r["grid"]} for r in seed_results]
    order = _points(seed_results[0]["grid"])
    common = [p for p in order if all(p in s for s in per_seed)]
    if not common:
        raise ValueError("the seeds share no grid point")
    best, best_dev = None, -math.inf
    for p in common:
        dev = _mean([s[p]["dev"] for s in per_seed])
        if dev > best_dev:
            best, best_dev = p, dev
    return Selection(lr=best[0], epochs=best[1], dev_mean=best_dev, dev=[s[best]["dev"] for s in per_seed],
                     test=[s[best]["test"] for s in per_seed], seeds=[r.get("seed") for r in seed_results])


def select_per_seed(seed_results: list[dict]) -> list[float]:
    """Each seed's own dev-best point (``result.json``'s ``test``): the suite's default protocol."""
    return [r["test"] for r in seed_results]
