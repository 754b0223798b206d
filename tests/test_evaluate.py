"""The evaluation stage's machinery (evaluate/): aggregator and Welch's t, the result store and its
fingerprint, the registry, and a study run end to end (fine-tuning tasks on tiny local data),
including resuming from the store."""

from __future__ import annotations

import json
import math
import os

import pytest
import yaml

from evaluate.aggregate import aggregate, stats, welch
from evaluate.base import build_evaluation, registered
from evaluate.store import ResultStore, fingerprint, settings_of
from pipeline.errors import UserError, main_guard

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_stats_and_welch():
    s = stats([1.0, 2.0, None, float("nan"), 4.0])
    assert s["n"] == 3 and s["mean"] == pytest.approx(7 / 3) and s["std"] == pytest.approx(math.sqrt(7 / 3))
    assert stats([5.0]) == {"values": [5.0], "mean": 5.0, "std": 0.0, "n": 1}
    a, b = [1.0, 2.0, 3.0], [4.0, 5.0, 7.0]
    va, vb = 1.0, 7 / 3  # sample variances
    t = (2.0 - 16 / 3) / math.sqrt(va / 3 + vb / 3)
    df = (va / 3 + vb / 3) ** 2 / ((va / 3) ** 2 / 2 + (vb / 3) ** 2 / 2)
    w = welch(a, b)
    assert w["t"] == pytest.approx(t) and w["df"] == pytest.approx(df) and 0.01 < w["p"] < 0.1
    assert welch([1.0], b)["p"] is None and welch([1.0, 1.0], [2.0, 2.0])["p"] is None
    recs = [{"evaluation": "e", "model": f"m-s{i}", "group": "m", "seed": i, "results": {"x": float(i), "note": "a"}}
            for i in range(3)]
    agg = aggregate(recs)
    assert agg["e"]["m"]["x"]["mean"] == 1.0 and agg["e"]["m"]["seeds"] == [0, 1, 2] and "note" not in agg["e"]["m"]


def test_registry_and_options():
    assert {"probes", "finetune"} <= set(registered())
    with pytest.raises(UserError, match="unknown evaluation 'nope'"):
        build_evaluation("nope", {})
    with pytest.raises(UserError, match="unknown key 'max_trian'"):
        build_evaluation("probes", {"max_trian": 3})
    with pytest.raises(UserError, match="must be an integer"):
        build_evaluation("probes", {"max_train": "x"})


def test_store_fingerprint_goes_stale_on_reexport(tmp_path):
    from finetune.testing import make_checkpoint

    d = make_checkpoint(tmp_path / "m" / "export", ["中国人民很好", "今天天气不错"], seed=0, metrics=False)
    ev = build_evaluation("probes", {"max_train": 3})
    st = settings_of(ev, d)
    assert fingerprint(st) == fingerprint(settings_of(ev, d))
    assert fingerprint(st) != fingerprint(settings_of(build_evaluation("probes", {"max_train": 4}), d))
    # a speed-only setting would be left out; a re-exported model (new weights file) is another model
    w = d / "model.safetensors"
    os.utime(w, ns=(w.stat().st_atime_ns, w.stat().st_mtime_ns + 10**9))
    assert fingerprint(st) != fingerprint(settings_of(ev, d))
    store = ResultStore(tmp_path / "eval")
    rec = store.save("probes", "m", 0, st, {"x": 1.0})
    assert store.load("probes", "m", 0, rec["fingerprint"])["results"] == {"x": 1.0}
    assert store.load("probes", "m", 0, fingerprint(settings_of(ev, d))) is None  # stale
    store.path("probes", "m", 1).write_text("{oops", encoding="utf-8")
    with pytest.raises(UserError, match="seed-1.json: unreadable stored result"):
        store.load("probes", "m", 1)


def test_study_end_to_end_and_resume(tmp_path, monkeypatch):
    from evaluate.__main__ import main
    from finetune.tasks import TaskConfig, load_task
    from finetune.testing import make_checkpoint
    from test_finetune_tasks import WRITERS

    WRITERS["chnsenticorp"](tmp_path / "data" / "chnsenticorp")
    task = dict(name="chnsenticorp", data_dir=str(tmp_path / "data" / "chnsenticorp"), dev_fraction=0.3, max_chars=32)
    t = load_task(TaskConfig(**task))
    model = make_checkpoint(tmp_path / "runs" / "x" / "pretrain" / "mlm" / "export",
                            [e["text"] for e in t.train + t.dev + t.test], seed=0, metrics=False)
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump({"tasks": [task], "lrs": [1e-3], "epochs": [1], "batch_size": 4,
                                                      "eval_batch_size": 8}), encoding="utf-8")
    study = {"name": "tiny", "run": "st", "runs_root": str(tmp_path / "runs"), "seeds": [0, 1], "baseline": "mlm",
             "models": [{"name": "mlm", "dir": str(model)}, {"name": "random", "dir": str(model), "random_init": True}],
             "evaluations": {"finetune": {"config": str(tmp_path / "ft.yaml")}}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(study), encoding="utf-8")
    assert main(["study", str(tmp_path / "tiny.yaml")]) == 0
    out = tmp_path / "runs" / "st" / "studies" / "tiny"
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "| mlm | 2 |" in report and "| random | 2 |" in report and "Welch's t-test against `mlm`" in report
    assert (out / "finetune.png").stat().st_size > 1000
    agg = json.loads((out / "results.json").read_text())["aggregate"]["finetune"]
    stored = [json.loads((tmp_path / "runs" / "st" / "eval" / "finetune" / m / f"seed-{s}.json").read_text())
              for m in ("mlm", "random") for s in (0, 1)]
    assert agg["mlm"]["chnsenticorp"]["values"] == [r["results"]["chnsenticorp"] for r in stored[:2]]
    assert stored[2]["settings"]["random_init"] is True
    # resume: nothing is recomputed while the settings hold; a changed option recomputes
    p = tmp_path / "runs" / "st" / "eval" / "finetune" / "mlm" / "seed-0.json"
    before = p.stat().st_mtime_ns
    assert main(["study", str(tmp_path / "tiny.yaml")]) == 0
    assert p.stat().st_mtime_ns == before
    assert main(["study", str(tmp_path / "tiny.yaml"), "seeds=[0]", "evaluations.finetune.options={lrs: [2.0e-3]}"]) == 0
    assert json.loads(p.read_text())["settings"]["config"]["suite"]["lrs"] == [2e-3]
    # `only` restricts an evaluation to some models; a name that is not a model is a user error
    only = {**study, "name": "only", "only": {"finetune": ["random"]}}
    (tmp_path / "only.yaml").write_text(yaml.safe_dump(only), encoding="utf-8")
    assert main(["study", str(tmp_path / "only.yaml"), "seeds=[0]"]) == 0
    agg = json.loads((tmp_path / "runs" / "st" / "studies" / "only" / "results.json").read_text())["aggregate"]
    assert list(agg["finetune"]) == ["random"]
    (tmp_path / "only.yaml").write_text(yaml.safe_dump({**only, "only": {"finetune": ["nobody"]}}), encoding="utf-8")
    assert main_guard(main)(["study", str(tmp_path / "only.yaml")]) == 2
    # a bad study file: one line naming it, exit 2
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**study, "models": []}), encoding="utf-8")
    assert main_guard(main)(["study", str(tmp_path / "bad.yaml")]) == 2


def test_example_study_config_is_valid():
    """Every study under configs/studies loads and builds its evaluations (nothing is run)."""
    from pathlib import Path

    from evaluate.study import load_study

    root = Path(__file__).resolve().parents[1]
    files = sorted((root / "configs" / "studies").glob("*.yaml"))
    assert files
    for f in files:
        cfg = load_study(f)
        evs = [build_evaluation(n, o) for n, o in cfg.evaluations.items()]
        assert evs and all(ev.metrics for ev in evs)


def test_study_finetune_robustness_conditions(tmp_path):
    """A task's ``perturb`` option in a study's fine-tuning config: ``TASK@MODE@RATE`` and its drop
    are metrics of the study (aggregated over seeds), rate 0 scores as the clean test split."""
    from evaluate.__main__ import main
    from evaluate.base import build_evaluation
    from finetune.tasks import TaskConfig, load_task
    from finetune.testing import make_checkpoint
    from test_finetune_tasks import WRITERS

    WRITERS["chnsenticorp"](tmp_path / "data" / "chnsenticorp")
    task = dict(name="chnsenticorp", data_dir=str(tmp_path / "data" / "chnsenticorp"), dev_fraction=0.3, max_chars=32)
    t = load_task(TaskConfig(**task))
    model = make_checkpoint(tmp_path / "runs" / "x" / "pretrain" / "mlm" / "export",
                            [e["text"] for e in t.train + t.dev + t.test], seed=0, metrics=False)
    task["perturb"] = {"modes": ["random"], "rates": [0, 0.5]}
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump({"tasks": [task], "lrs": [1e-3], "epochs": [1], "batch_size": 4,
                                                      "eval_batch_size": 8}), encoding="utf-8")
    ev = build_evaluation("finetune", {"config": str(tmp_path / "ft.yaml")})
    assert ev.metrics == ("chnsenticorp", "chnsenticorp@random@0", "chnsenticorp@random@0_drop",
                          "chnsenticorp@random@0.5", "chnsenticorp@random@0.5_drop")
    study = {"name": "rob", "run": "st", "runs_root": str(tmp_path / "runs"), "seeds": [0, 1],
             "models": [{"name": "mlm", "dir": str(model)}], "evaluations": {"finetune": {"config": str(tmp_path / "ft.yaml")}}}
    (tmp_path / "rob.yaml").write_text(yaml.safe_dump(study), encoding="utf-8")
    assert main(["study", str(tmp_path / "rob.yaml")]) == 0
    agg = json.loads((tmp_path / "runs" / "st" / "studies" / "rob" / "results.json").read_text())["aggregate"]["finetune"]["mlm"]
    assert agg["chnsenticorp@random@0"]["values"] == agg["chnsenticorp"]["values"]
    assert agg["chnsenticorp@random@0_drop"]["values"] == [0.0, 0.0]
    stored = json.loads((tmp_path / "runs" / "st" / "eval" / "finetune" / "mlm" / "seed-1.json").read_text())["results"]
    assert stored["chnsenticorp@random@0.5_drop"] == stored["chnsenticorp"] - stored["chnsenticorp@random@0.5"]
    assert 0.3 < stored["chnsenticorp@random@0.5_realised_rate"] <= 0.6
    assert "chnsenticorp@random@0.5_drop" in (tmp_path / "runs" / "st" / "studies" / "rob" / "report.md").read_text(encoding="utf-8")


def test_finetune_settings_name_the_resolved_precision(tmp_path, monkeypatch):
    """`mixed_precision: auto` resolves by machine and policy: a stored fp32 result under `auto` is not
    reused once `auto` means bf16 (the fingerprint names the resolved precision when it is not fp32)."""
    import yaml

    import pretrain.config as pc

    (tmp_path / "ft.yaml").write_text(yaml.safe_dump({"tasks": [{"name": "sentiment"}], "mixed_precision": "auto"}),
                                      encoding="utf-8")
    monkeypatch.setattr(pc, "cpu_bf16_features", lambda *a, **k: {"avx512_bf16": True, "amx_bf16": False})
    monkeypatch.setitem(pc.FINETUNE_CPU_AUTO_BF16, "avx512_bf16", False)
    ev = build_evaluation("finetune", {"config": str(tmp_path / "ft.yaml")})
    fp32 = ev.settings()
    assert "precision" not in fp32["suite"]  # fp32: the fingerprints of earlier results hold
    monkeypatch.setitem(pc.FINETUNE_CPU_AUTO_BF16, "avx512_bf16", True)
    bf16 = ev.settings()
    assert bf16["suite"]["precision"] == "bf16" and bf16 != fp32
