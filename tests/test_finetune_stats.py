"""The fine-tuning protocol's statistics: Welch's t-test and the dev-only grid selection."""

from __future__ import annotations

import math

import pytest

from finetune.report import delta_rows, significance
from finetune.stats import betainc_reg, check_same_grid, select_per_model, t_two_sided_p, welch_t
from test_finetune_train import setup  # noqa: F401  (the checkpoint + task fixture)

# Wikipedia, "Welch's t-test", example 1: Welch t = -2.46, df = 24.9(9), p = 0.021
A1 = [27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7, 21.4]
A2 = [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5, 24.4]


@pytest.mark.parametrize("use_scipy", [True, False])
def test_welch_matches_published_example(use_scipy):
    w = welch_t(A1, A2, use_scipy=use_scipy)
    assert round(w.t, 2) == -2.46 and abs(w.df - 24.99) < 0.01 and round(w.p, 3) == 0.021
    assert math.isclose(w.diff, sum(A1) / 15 - sum(A2) / 15)
    assert welch_t(A2, A1, use_scipy=use_scipy).t == pytest.approx(-w.t)


def test_t_distribution_closed_forms():
    # df = 1 (Cauchy): p = 1 - 2 atan(|t|) / pi; df = 2: p = 1 - |t| / sqrt(2 + t^2)
    for t in (0.3, 1.0, 2.5, 12.0):
        for use_scipy in (True, False):
            assert t_two_sided_p(t, 1, use_scipy) == pytest.approx(1 - 2 * math.atan(t) / math.pi, rel=1e-9)
            assert t_two_sided_p(-t, 2, use_scipy) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)
    assert betainc_reg(1.0, 1.0, 0.37) == pytest.approx(0.37)
    assert betainc_reg(2.0, 3.0, 0.0) == 0.0 and betainc_reg(2.0, 3.0, 1.0) == 1.0
    # I_x(a, 1) = x^a
    assert betainc_reg(3.5, 1.0, 0.6) == pytest.approx(0.6 ** 3.5, rel=1e-10)


def test_welch_small_samples_and_degenerate_cases():
    w = welch_t([70.1, 71.3, 69.8], [65.0, 66.2])
    assert w.p < 0.05 and w.t > 0 and 2 < w.df < 3
    assert math.isnan(welch_t([70.0], [60.0, 61.0]).p)  # one seed: the noise is unknown
    assert welch_t([1.0, 1.0], [1.0, 1.0]).p == 1.0
    assert welch_t([2.0, 2.0], [1.0, 1.0]).p == 0.0
    assert "n.s." in welch_t([1.0, 2.0, 3.0], [1.5, 2.5, 3.5]).describe()


def _seed(seed, points):
    return {"seed": seed, "test": max(points, key=lambda p: p[2])[3],
            "grid": [{"lr": lr, "epochs": ep, "dev": dev, "test": test} for lr, ep, dev, test in points]}


def test_select_per_model_uses_mean_dev_never_test():
    # (lr, epochs, dev, test): seed 1 prefers 1e-3 on dev, seed 2 prefers 3e-4; the mean dev prefers 3e-4.
    # Test scores are highest at 1e-4, which no dev score supports.
    s1 = _seed(1, [(1e-4, 3, 50.0, 99.0), (3e-4, 3, 60.0, 70.0), (1e-3, 3, 61.0, 71.0)])
    s2 = _seed(2, [(1e-4, 3, 52.0, 98.0), (3e-4, 3, 66.0, 72.0), (1e-3, 3, 58.0, 60.0)])
    sel = select_per_model([s1, s2])
    assert (sel.lr, sel.epochs) == (3e-4, 3)
    assert sel.dev == [60.0, 66.0] and sel.test == [70.0, 72.0] and sel.dev_mean == 63.0 and sel.seeds == [1, 2]
    # changing the test scores never changes the choice
    for s in (s1, s2):
        for g in s["grid"]:
            g["test"] = -g["test"]
    assert (select_per_model([s1, s2]).lr, select_per_model([s1, s2]).epochs) == (3e-4, 3)
    # ties keep the first point in grid order
    tie = [_seed(1, [(1e-4, 2, 50.0, 1.0), (1e-4, 4, 50.0, 2.0)])]
    assert select_per_model(tie).epochs == 2
    # only points every seed has compete
    part = [_seed(1, [(1e-4, 3, 50.0, 1.0), (1e-3, 3, 90.0, 2.0)]), _seed(2, [(1e-4, 3, 40.0, 3.0)])]
    assert select_per_model(part).lr == 1e-4
    with pytest.raises(ValueError):
        select_per_model([])


def test_check_same_grid():
    check_same_grid({"mlm": [(1e-4, 3), (3e-4, 3)], "mlm-random": [(3e-4, 3), (1e-4, 3), (1e-4, 3)]})
    with pytest.raises(ValueError, match="same grid"):
        check_same_grid({"mlm": [(1e-4, 3), (3e-4, 3)], "mlm-random": [(1e-4, 3)]})


def _res():
    def cell(vals):
        m = sum(vals) / len(vals)
        sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
        return {"values": vals, "mean": m, "std": sd, "max": max(vals)}

    models = {
        "mlm": {"dir": "a", "random_init": False, "results": {"sentiment": cell([70.1, 71.3, 69.8]), "ner": cell([20.0, 21.0, 22.0])}},
        "mlm-random": {"dir": "a", "random_init": True, "results": {"sentiment": cell([65.0, 66.2, 65.5]), "ner": cell([20.5, 21.5, 19.5])}},
    }
    return {"baseline": "mlm", "seeds": [1, 2, 3], "tasks": {"sentiment": {"metric": "acc"}, "ner": {"metric": "f1"}},
            "models": models}


def test_report_significance_and_delta_cells():
    res = _res()
    sig = significance(res)
    s = sig["mlm"]["sentiment"]["vs_random"]
    want = welch_t([70.1, 71.3, 69.8], [65.0, 66.2, 65.5])
    assert s["p"] == pytest.approx(want.p) and s["p"] < 0.01 and s["diff"] == pytest.approx(4.8333333)
    assert sig["mlm"]["ner"]["vs_random"]["p"] > 0.5
    assert "mlm-random" not in sig and "vs_baseline" not in sig["mlm"]["sentiment"]
    header, rows = delta_rows(res)
    row = dict(zip(header, rows[0]))
    assert row["Δ sentiment vs own random init"].startswith("+4.83") and f"(p={want.p:.3f})" in row["Δ sentiment vs own random init"]
    assert "~" in row["Δ ner vs own random init"]
    assert row["Δ sentiment vs mlm"] == "baseline"  # the baseline is not tested against itself


def test_cli_per_model_selection(setup, tmp_path, capsys):
    """``grid_selection=per_model``: every seed is scored at the grid point with the best mean dev,
    read back from the seeds' own grid records; the report says which point was chosen."""
    import json

    from test_finetune_train import _cli, _suite_config

    root, model, _ = setup
    cfg = _suite_config(tmp_path, root, epochs="[1, 2]", seeds="[1, 2]")
    rc, _, err = _cli(["--config", str(cfg), "--models", f"base={model}", "grid_selection=per_model",
                       "random_init_twins=false"], capsys)
    assert rc == 0, err
    out = tmp_path / "runs" / "t" / "finetune"
    res = json.loads((out / "report" / "results.json").read_text(encoding="utf-8"))
    assert res["grid_selection"] == "per_model"
    seeds = [json.loads((out / "base" / "chnsenticorp" / f"seed-{s}" / "result.json").read_text()) for s in (1, 2)]
    want = select_per_model(seeds)
    chosen = res["chosen_grid_point"]["base"]["chnsenticorp"]
    assert (chosen["lr"], chosen["epochs"]) == (want.lr, want.epochs)
    assert res["models"]["base"]["results"]["chnsenticorp"]["values"] == want.test
    assert "Grid point chosen on dev" in (out / "report" / "report.md").read_text(encoding="utf-8")
