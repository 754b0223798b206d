"""Crash-safe writes: an interrupted write never replaces the previous complete file/folder."""

import re
from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_config
from pipeline.errors import UserError
from pipeline.runs import DIR_MARKER, atomic_dir, atomic_file, atomic_write_json, check_name, read_json, run_path


def test_atomic_file_keeps_old_on_error(tmp_path):
    p = tmp_path / "x.json"
    atomic_write_json(p, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_file(p, "w") as f:
            f.write('{"v": 2')
            raise RuntimeError("crash midway")
    assert read_json(p) == {"v": 1}
    assert [q.name for q in tmp_path.iterdir()] == ["x.json"]


def test_atomic_dir_replaces_whole(tmp_path):
    d = tmp_path / "out"
    with atomic_dir(d) as t:
        (t / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(d) as t:
            (t / "a").write_text("2")
            raise RuntimeError("crash")
    assert (d / "a").read_text() == "1"
    with atomic_dir(d) as t:
        (t / "b").write_text("3")
    assert sorted(p.name for p in d.iterdir()) == [DIR_MARKER, "b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_dir_never_replaces_a_folder_it_did_not_create(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep")
    with pytest.raises(UserError, match=r"victim: exists and was not written by the pipeline"):
        with atomic_dir(victim) as t:
            (t / "a").write_text("1")
    assert (victim / "precious.txt").read_text() == "keep" and sorted(p.name for p in victim.iterdir()) == ["precious.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim"]  # no temporary folder left
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UserError, match="not a folder the pipeline wrote"):
        with atomic_dir(f):
            pass
    assert f.read_text() == "x"
    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_dir(empty) as t:  # an empty folder holds nothing to lose
        (t / "a").write_text("1")
    assert (empty / "a").read_text() == "1"


@pytest.mark.parametrize("bad", ["../../victim", "/abs/path", "a/b", "..", ".", "", "名字", "a b"])
def test_names_are_one_path_component(bad):
    with pytest.raises(UserError, match="not a valid name"):
        check_name(bad)
    with pytest.raises(UserError):
        run_path("runs", bad, "corpus")
    with pytest.raises(UserError):
        run_path("runs", "demo", bad) if bad else check_name(bad)
    assert run_path("runs", "demo-1.v2_x", "pretrain", "mlm") == Path("runs/demo-1.v2_x/pretrain/mlm")


@pytest.mark.parametrize("key", ["run", "name"])
@pytest.mark.parametrize("bad", ["../../victim", "/tmp/elsewhere", "x/../../y", ".."])
def test_config_refuses_escaping_names(key, bad):
    from pretrain.config import PretrainConfig

    with pytest.raises(ConfigError, match=rf"key '{key}': '{re.escape(bad)}' is not a valid name"):
        load_config(PretrainConfig, None, [f"{key}={bad}"])


def test_nested_names_checked_and_defaults_allowed():
    from tokenization.config import TokenizationConfig
    from finetune.config import FinetuneConfig

    with pytest.raises(ConfigError, match=r"key 'tasks\[0\]\.name'"):
        load_config(FinetuneConfig, None, ["tasks=[{name: ../x}]"])
    assert load_config(TokenizationConfig, None, ["run=ok_run"]).run == "ok_run"
    assert load_config(FinetuneConfig).run == "demo"


def test_finetune_run_escape_leaves_victim_intact(tmp_path, capsys):
    """``run=../../victim`` once replaced an existing folder; now the CLI stops at the config."""
    from finetune.__main__ import main

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep")
    runs = tmp_path / "a" / "b" / "runs"
    cfg = tmp_path / "ft.yaml"
    cfg.write_text(f"runs_root: {runs}\n", encoding="utf-8")
    rc = main(["--config", str(cfg), "--models", str(tmp_path), "run=../../../victim"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "not a valid name" in err[0]
    assert sorted(p.name for p in victim.iterdir()) == ["precious.txt"] and not runs.exists()


def test_finetune_model_name_must_be_a_name(tmp_path, capsys):
    from finetune.__main__ import main
    from finetune.testing import make_checkpoint

    d = make_checkpoint(tmp_path / "m", ["北京"], metrics=False)
    cfg = tmp_path / "ft.yaml"
    cfg.write_text(f"runs_root: {tmp_path / 'runs'}\n", encoding="utf-8")
    rc = main(["--config", str(cfg), "--models", f"../../x={d}", "--dry-run"])
    err = capsys.readouterr().err
    assert rc == 2 and "model name '../../x' is not a valid name" in err
