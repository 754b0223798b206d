"""The scaling study driver (bench/scaling.py): configs, plan, and the report from stage outputs.

Fixtures are written by the stages' own writers (the trainer's ``Metrics``, ``RunResult.save``;
without shards the unigram column is ``-``); the stage commands are replaced by a recorder where the
driver's order and resume logic are tested. The end-to-end miniature (configs/scaling/mini.yaml,
about 10 minutes) is run by hand (docs/regime.md), not here: it builds a corpus and trains.
"""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _driver():
    spec = importlib.util.spec_from_file_location("scaling_driver", REPO / "bench" / "scaling.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve their annotations through it
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", ["scaling.yaml", "mini.yaml"])
def test_study_configs_load_and_cover_the_axes(name):
    sc = _driver()
    cfg = sc.load(str(REPO / "configs" / "scaling" / name))
    runs = sc.plan(cfg, py="python")
    assert runs and all(Path(r.pretrain_cmd[4]).is_file() for r in runs)
    for corpus in cfg.corpora.values():
        assert (REPO / corpus).is_file()
    if name == "scaling.yaml":
        assert len(cfg.points) >= 4 and set(cfg.corpora) == {"demo", "full", "full-plus"}
        joined = [" ".join(r.pretrain_cmd) for r in runs]
        assert any("data.kind=sgt" in j for j in joined) and any("whole_word=true" in j for j in joined)
        assert any("mlm_modern-small.yaml" in j for j in joined)
        tasks = " ".join(cfg.finetune_overrides)
        assert "pd_pos" in tasks and "pd_cws" in tasks


def test_plan_one_complete_run_per_point_and_one_twin_per_variant():
    sc = _driver()
    cfg = sc.ScalingConfig(corpora={"demo": "c.yaml", "full": "f.yaml"}, points=[500, 250],
                           pretrain_overrides=["train.threads=1"],
                           variants=[sc.Variant("a"), sc.Variant("b", corpus="full", overrides=["data.kind=sgt"],
                                                                 points=[100])])
    cfg.validate()
    runs = sc.plan(cfg, py="python")
    assert [(r.variant, r.steps, r.corpus_run, r.name, r.twin) for r in runs] == [
        ("a", 250, "scaling-demo", "a-s250", True), ("a", 500, "scaling-demo", "a-s500", False),
        ("b", 100, "scaling-full", "b-s100", True)]
    pre = runs[2].pretrain_cmd
    # the variant's overrides after the study's, the point's step count last (it wins)
    assert pre[-4:] == ["train.threads=1", "data.kind=sgt", "train.steps=100", "train.save_every=100"]
    assert runs[0].finetune_cmd[-1] == "random_init_twins=true" and runs[1].finetune_cmd[-1] == "random_init_twins=false"
    assert "a-s500=runs/scaling-demo/pretrain/a-s500/export" in runs[1].finetune_cmd
    assert {r.ft_run for r in runs} == {"scaling-ft-a", "scaling-ft-b"}  # one fine-tuning run folder per variant
    with pytest.raises(ValueError, match="corpus 'nope'"):
        sc.ScalingConfig(corpora={"demo": "c.yaml"}, variants=[sc.Variant("a", corpus="nope")]).validate()


def _metrics(run_dir: Path, accs: dict[int, float], steps: int) -> None:
    from pretrain.trainer import Metrics

    run_dir.mkdir(parents=True, exist_ok=True)
    m = Metrics(run_dir, enabled=True, tensorboard=False, resume_step=None)
    for s, acc in accs.items():
        m.write({"step": s, "split": "valid", "accuracy": acc, "loss": 8.0 - 10 * acc}, "valid")
    m.write({"step": steps, "split": "train", "loss": 5.0, "tokens_seen": steps * 4096, "chars_seen": steps * 5000},
            "train")


def _seed(ft: Path, model: str, task: str, seed: int, grid: list[tuple[float, float, float]]) -> None:
    from finetune.schema import RunResult

    best = max(grid, key=lambda g: g[1])
    RunResult.from_dict({"model": model, "task": task, "kind": "sequence_labeling", "metric": "f1", "seed": seed,
                         "dev": best[1], "test": best[2], "random_init": model.endswith("-random"),
                         "grid": [{"lr": lr, "epochs": 10, "dev": d, "test": t, "best_epoch": 10, "seconds": 1.0}
                                  for lr, d, t in grid]}).save(ft / model / task / f"seed-{seed}")


def test_report_from_stage_outputs(tmp_path):
    sc = _driver()
    cfg = sc.ScalingConfig(runs_root=str(tmp_path), corpora={"demo": "c.yaml"}, points=[100, 200],
                           variants=[sc.Variant("a")])
    runs = sc.plan(cfg, py="python")
    _metrics(tmp_path / "scaling-demo/pretrain/a-s100", {50: 0.05, 100: 0.10}, 100)
    _metrics(tmp_path / "scaling-demo/pretrain/a-s200", {100: 0.10, 200: 0.20}, 200)
    ft = tmp_path / "scaling-ft-a" / "finetune"
    # dev picks lr 1e-3 for the model (its test there is lower than at 3e-4: test never selects)
    for seed, off in ((1, 0.0), (2, 1.0)):
        _seed(ft, "a-s100", "pd_pos", seed, [(3e-4, 50 + off, 70 + off), (1e-3, 60 + off, 62 + off)])
        _seed(ft, "a-s100-random", "pd_pos", seed, [(3e-4, 40 + off, 55 + off), (1e-3, 30 + off, 80 + off)])
        _seed(ft, "a-s200", "pd_pos", seed, [(3e-4, 50 + off, 66 + off), (1e-3, 40 + off, 99.0)])
    sc.report(cfg, runs)
    res = json.loads((tmp_path / "scaling/study/results.json").read_text(encoding="utf-8"))
    r100, r200 = res["rows"]
    assert (r100["steps"], r100["valid_accuracy"], r100["tokens"]) == (100, 0.10, 409600)
    assert r200["valid_accuracy"] == 0.20 and r100["unigram_accuracy"] is None
    c = r100["tasks"]["pd_pos"]
    assert (c["lr"], c["test"], c["twin_test"]) == (1e-3, [62.0, 63.0], [55.0, 56.0])
    assert c["gain"] == pytest.approx(7.0) and 0 < c["p"] < 0.05
    assert r200["tasks"]["pd_pos"]["test"] == [66.0, 67.0]
    assert r200["tasks"]["pd_pos"]["gain"] == pytest.approx(11.0)  # the variant's one twin
    md = (tmp_path / "scaling/study/report.md").read_text(encoding="utf-8")
    assert "| `a` | demo | 100 | 0.41 | 10.0 | - | 7.000 | 62.50 / 55.50 | +7.00 (p=" in md
    for png in ("curves.png", "scaling.png"):
        assert (tmp_path / "scaling/study" / png).stat().st_size > 0


def test_missing_debian_package_stops_the_study_before_any_work(tmp_path):
    from pipeline.errors import UserError

    sc = _driver()
    corpus = tmp_path / "c.yaml"
    corpus.write_text(f"sources:\n  - {{type: builtin, builtin: fortunes_zh, path: {tmp_path / 'empty'}}}\n")
    cfg = sc.ScalingConfig(runs_root=str(tmp_path / "runs"), corpora={"plus": str(corpus)}, variants=[sc.Variant("a")])
    with pytest.raises(UserError, match="apt-get install fortunes-zh"):
        sc.run_study(cfg, dry=True)
    assert not (tmp_path / "runs").exists()


def test_parallel_variants_prepare_each_corpus_once_and_keep_their_order(tmp_path, monkeypatch):
    sc = _driver()
    corpus = tmp_path / "c.yaml"
    corpus.write_text("sources:\n  - {type: builtin, builtin: english}\n")
    cfg = sc.ScalingConfig(runs_root=str(tmp_path / "runs"), corpora={"demo": str(corpus)}, points=[10, 20],
                           variants=[sc.Variant("a"), sc.Variant("b"), sc.Variant("c")])
    calls = []

    def fake_sh(cmd, dry, log=None):
        calls.append(cmd)
        if "pretrain" in cmd:  # what the trainer leaves behind
            name = next(c for c in cmd if c.startswith("name=")).split("=", 1)[1]
            export = tmp_path / "runs" / "scaling-demo" / "pretrain" / name / "export"
            export.mkdir(parents=True)
            (export / "model.safetensors").write_bytes(b"")
        if cmd[2] == "corpora":
            (tmp_path / "runs/scaling-demo/corpus").mkdir(parents=True)
            (tmp_path / "runs/scaling-demo/corpus/stats.json").write_text("{}")

    monkeypatch.setattr(sc, "sh", fake_sh)
    sc.run_study(cfg, jobs=3)
    stages = [c[2] + (" " + c[3] if c[2] == "tokenization" else "") for c in calls]
    assert stages[:3] == ["corpora", "tokenization vocab", "tokenization shards"]  # once, before any training
    assert stages.count("corpora") == 1 and stages.count("pretrain") == 6 and stages.count("finetune") == 6
    for v in "abc":
        mine = [c[2] + ":" + next(x for x in c if x.startswith(("name=", f"{v}-s"))) for c in calls
                if any(x.startswith((f"name={v}-s", f"{v}-s")) for x in c)]
        assert [m.split(":")[0] for m in mine] == ["pretrain", "finetune", "pretrain", "finetune"]
    calls.clear()
    sc.run_study(cfg, jobs=3)  # everything exported, no seed finished: only the fine-tuning commands
    assert [c[2] for c in calls] == ["finetune"] * 6

    # finished seeds with the current settings (written as run_seed writes them): nothing is started
    from finetune.config import FinetuneConfig
    from finetune.schema import RunResult
    from finetune.train import settings_fingerprint
    from pipeline.config import load_config

    fcfg = load_config(FinetuneConfig, REPO / cfg.finetune, cfg.finetune_overrides)
    for r in sc.plan(cfg):
        for model, random_init in [(r.name, False)] + ([(r.name + "-random", True)] if r.twin else []):
            for tc in fcfg.tasks:
                for seed in fcfg.seeds:
                    RunResult(model=model, task=tc.name, kind="k", metric="m", seed=seed, dev=1.0, test=1.0,
                              fingerprint=settings_fingerprint(tc, fcfg, random_init)).save(
                        tmp_path / "runs" / r.ft_run / "finetune" / model / tc.name / f"seed-{seed}")
    calls.clear()
    sc.run_study(cfg, jobs=3)
    assert calls == []
    cfg.finetune_overrides = ["epochs=[2]"]  # changed settings: the fine-tuning runs again
    sc.run_study(cfg, jobs=1)
    assert [c[2] for c in calls] == ["finetune"] * 6
