"""bench/grid_union.py: per-model lr choice on the pooled grids of two stored studies (dev only)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import grid_union  # noqa: E402

from evaluate.store import ResultStore  # noqa: E402


def _save(root: Path, model: str, seed: int, grid: list[tuple[float, float, float]]) -> None:
    ResultStore(root).save("finetune", model, seed, {"s": 1},
                           {"t": 0.0, "t_grid": [{"lr": lr, "epochs": 10, "dev": d, "test": t} for lr, d, t in grid]})


def test_pooled_grid_choice_and_welch(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    for s in (0, 1, 2):
        # study a: lrs 1e-3 / 3e-3; study b: 1e-2, where the twin's dev is best (its test too)
        _save(a, "pre", s, [(1e-3, 70, 70 + s), (3e-3, 72, 72 + s)])
        _save(b, "pre", s, [(1e-2, 71, 90)])                 # best test, worse dev: never chosen
        _save(a, "rand", s, [(1e-3, 60, 60), (3e-3, 65, 65 + s)])
        _save(b, "rand", s, [(1e-2, 69, 71 + s)])
    assert grid_union.main([str(a / "finetune"), str(b / "finetune"), "--models", "pre", "rand",
                            "--seeds", "0", "1", "2", "--tasks", "t"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "lr 0.003" in out[0] and "test 73.00" in out[0]   # dev-best, not the test-best 1e-2
    assert "lr 0.01" in out[1] and "test 72.00" in out[1] and "+1.00" in out[1]


def test_missing_store_is_one_line(tmp_path, capsys):
    assert grid_union.main([str(tmp_path), "--models", "x", "--seeds", "0", "--tasks", "t"]) == 2
    assert "no stored result" in capsys.readouterr().err
