"""finetune.report.print_summary: the score table and the gain over each model's random-init twin."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from finetune.report import build_results, print_summary, write_report

REPO = Path(__file__).resolve().parents[1]


def _report(tmp_path: Path) -> Path:
    tasks = {"pd_pos": {"metric": "f1", "kind": "token"}, "sentiment": {"metric": "acc", "kind": "classification"}}
    models = [{"name": "mlm", "dir": "m", "random_init": False}, {"name": "ntp", "dir": "n", "random_init": False},
              {"name": "mlm-random", "dir": "m", "random_init": True},
              {"name": "ntp-random", "dir": "n", "random_init": True}]
    scores = {("mlm", "pd_pos"): [66.0], ("mlm-random", "pd_pos"): [61.0], ("mlm", "sentiment"): [70.0],
              ("mlm-random", "sentiment"): [73.5], ("ntp", "pd_pos"): [63.0], ("ntp-random", "pd_pos"): [60.0],
              ("ntp", "sentiment"): [71.0], ("ntp-random", "sentiment"): [71.0]}
    res = build_results(models, tasks, [1], "mlm", scores)
    write_report(tmp_path / "report", res, {}, "run: t\n")
    return tmp_path / "report"


def test_summary_prints_the_gain_over_the_own_twin_per_model_and_task(tmp_path, capsys):
    text = print_summary(_report(tmp_path))
    gain = text.split("Gain over the random-init twin")[1]
    lines = {ln.split()[0]: ln for ln in gain.splitlines()[1:] if ln.strip() and not set(ln.strip()) <= set("-| ")}
    assert "Δ pd_pos vs own random init" in gain and "Δ sentiment vs own random init" in gain
    assert "+5.00" in lines["mlm"] and "-3.50" in lines["mlm"]
    assert "+3.00" in lines["ntp"] and "+0.00" in lines["ntp"]
    assert "vs mlm" not in gain  # only the twin columns
    assert capsys.readouterr().out == text + "\n"


def test_cli_prints_the_summary_and_a_missing_report_is_one_line(tmp_path):
    rep = _report(tmp_path)
    r = subprocess.run([sys.executable, "-m", "finetune.report", str(rep)], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and "Gain over the random-init twin" in r.stdout
    r = subprocess.run([sys.executable, "-m", "finetune.report", str(tmp_path / "nope")], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "nope: not found" in r.stderr and "Traceback" not in r.stderr
