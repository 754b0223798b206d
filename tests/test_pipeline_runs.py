"""Crash-safe writes: an interrupted write never replaces the previous complete file/folder."""

import pytest

from pipeline.runs import atomic_dir, atomic_file, atomic_write_json, read_json


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
    assert sorted(p.name for p in d.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
