"""bench/finetune_bf16.py: bf16 vs fp32 fine-tuning read from two stored studies (paired grid points)."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import finetune_bf16  # noqa: E402

from evaluate.store import ResultStore  # noqa: E402
from pipeline.errors import main_guard  # noqa: E402
from pipeline.runs import atomic_write_json  # noqa: E402


def _save(root: Path, model: str, seed: int, grid, precision: str) -> None:
    """A study's stored seed result (ResultStore.save) and its work folder's grid files (as run_seed writes them)."""
    store = ResultStore(root)
    store.save("finetune", model, seed, {"s": 1},
               {"t": 0.0, "t_grid": [{"lr": lr, "epochs": 10, "dev": d, "test": t} for lr, d, t, _, _ in grid]})
    for lr, d, t, loss, speed in grid:
        atomic_write_json(root / "finetune" / model / f"seed-{seed}.work" / "t" / "grid" / f"lr-{lr:g}_ep-10.json",
                          {"lr": lr, "epochs": 10, "seed": seed, "dev": d, "test": t, "precision": precision,
                           "train_examples_per_s": speed, "curve": [{"epoch": 10.0, "train_loss": loss, "dev": {}}]})


def test_paired_parity_table(tmp_path, capsys):
    eval_root = tmp_path / "runs" / "r" / "eval"
    for s in (0, 1, 2):
        _save(eval_root, "m", s, [(1e-3, 70, 70 + s, 0.50, 100.0), (3e-3, 72, 72 + s, 0.40, 100.0)], "no")
        # bf16: 1e-3 now has the better dev (chosen), its test 1 point up; losses 2 % higher; 1.5x faster
        _save(eval_root, "m-bf16", s, [(1e-3, 73, 71 + s, 0.51, 150.0), (3e-3, 72, 72 + s, 0.408, 150.0)], "bf16")
    assert finetune_bf16.main(["--run", "r", "--runs-root", str(tmp_path / "runs"), "--pairs", "m=m-bf16",
                               "--tasks", "t"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| `m`"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[2] == "73.00 ± 1.00" and cells[3] == "72.00 ± 1.00"  # per-model dev choice: 3e-3 / 1e-3
    assert cells[4].startswith("-1.00")
    assert cells[5] == "0.50 ± 0.55 (n=6)"                          # paired over (seed, lr): +1 and 0
    assert "(+2.0 %)" in cells[6] and "(1.50×)" in cells[7]


def test_a_pair_that_is_not_bf16_against_fp32_is_refused(tmp_path, capsys):
    eval_root = tmp_path / "runs" / "r" / "eval"
    for name in ("m", "m-bf16"):
        _save(eval_root, name, 0, [(1e-3, 70, 70, 0.5, 100.0)], "no")
    assert main_guard(finetune_bf16.main)(["--run", "r", "--runs-root", str(tmp_path / "runs"), "--pairs", "m=m-bf16",
                                           "--seeds", "0", "--tasks", "t"]) == 2
    assert "not a bf16 / fp32 pair" in capsys.readouterr().err
    with pytest.raises(Exception, match="no stored result"):
        finetune_bf16.main(["--run", "r", "--runs-root", str(tmp_path / "runs"), "--pairs", "x=m-bf16",
                            "--seeds", "0", "--tasks", "t"])
