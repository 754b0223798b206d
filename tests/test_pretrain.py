"""The trainer: schedule, exact resume, crash-safe checkpoints, export round trip, CLI, configs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from pipeline.config import load_config
from pretrain.config import PretrainConfig, TrainConfig, resolve_batch
from pretrain.trainer import lr_factor, train
from test_pretrain_synth import SyntheticLoader, make_vocab

REPO = Path(__file__).resolve().parents[1]


def tiny_cfg(tmp_path: Path, objective: str = "mlm", *overrides: str) -> PretrainConfig:
    vocab = tmp_path / "vocab"
    if not (vocab / "char" / "stats.json").is_file():
        make_vocab(vocab)
    base = [f"runs_root={tmp_path / 'runs'}", "run=t", f"objective={objective}", f"data.vocab_root={vocab}",
            "data.seq_len=32", "model.hidden_size=32", "model.num_heads=2", "model.intermediate_size=64",
            "train.batch_size=8", "train.steps=6", "train.warmup_steps=2", "train.lr=0.003", "train.log_every=1",
            "train.eval_every=3", "train.eval_batches=2", "train.save_every=3", "train.tensorboard=false"]
    return load_config(PretrainConfig, None, base + list(overrides))


def read_metrics(out: Path, split: str = "train") -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def state(obj_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(obj_dir / "model.safetensors"))


# ---- schedule ------------------------------------------------------------------------------------
def test_lr_schedule_shapes():
    t = TrainConfig(steps=10, warmup_steps=2, lr=1.0, schedule="linear", min_lr_ratio=0.1)
    f = [lr_factor(s, t) for s in range(10)]
    assert f[0] == 0.5 and f[1] == 1.0 and f[2] == 1.0
    assert all(a > b for a, b in zip(f[2:], f[3:]))
    assert math.isclose(lr_factor(10, t), 0.1)
    c = TrainConfig(steps=10, warmup_steps=0, schedule="cosine")
    assert lr_factor(0, c) == 1.0 and math.isclose(lr_factor(5, c), 0.5) and lr_factor(10, c) < 1e-12


def test_resolve_batch():
    assert resolve_batch(TrainConfig(batch_size=32), 1) == (32, 1)
    assert resolve_batch(TrainConfig(batch_size=32, micro_batch_size=8), 2) == (8, 2)
    assert resolve_batch(TrainConfig(batch_size=32, grad_accum=4), 2) == (4, 4)
    from pipeline.errors import UserError

    with pytest.raises(UserError):
        resolve_batch(TrainConfig(batch_size=32, micro_batch_size=8, grad_accum=3), 1)


# ---- exact resume --------------------------------------------------------------------------------
@pytest.mark.parametrize("objective", ["mlm"])
def test_exact_resume(tmp_path, objective):
    full = tiny_cfg(tmp_path / "a", objective, "train.micro_batch_size=4")
    ra = train(full, loader_factory=SyntheticLoader, do_export=False)
    part = tiny_cfg(tmp_path / "b", objective, "train.micro_batch_size=4")
    rb1 = train(part, loader_factory=SyntheticLoader, stop_at_step=3, do_export=False)
    assert rb1.exit_code == 143 and rb1.step == 3
    assert (rb1.out_dir / "checkpoints" / "latest").read_text().strip() == "step-3"
    rb2 = train(part, loader_factory=SyntheticLoader, do_export=False)  # the same command again
    assert rb2.exit_code == 0 and rb2.step == 6
    la = [(r["step"], r["loss"], r["grad_norm"]) for r in read_metrics(ra.out_dir)]
    lb = [(r["step"], r["loss"], r["grad_norm"]) for r in read_metrics(rb2.out_dir)]
    assert la == lb and len(la) == 6
    # the final evaluation is identical (the one a stop skipped is redone: test_checkpoint_faults)
    assert read_metrics(ra.out_dir, "valid")[-1]["loss"] == read_metrics(rb2.out_dir, "valid")[-1]["loss"]
    wa, wb = state(ra.out_dir / "checkpoints" / "step-6"), state(rb2.out_dir / "checkpoints" / "step-6")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    oa = torch.load(ra.out_dir / "checkpoints" / "step-6" / "optimizer.pt", weights_only=True)
    ob = torch.load(rb2.out_dir / "checkpoints" / "step-6" / "optimizer.pt", weights_only=True)
    assert all(torch.equal(oa["state"][i]["exp_avg"], ob["state"][i]["exp_avg"]) for i in oa["state"])
    # keep_last=2: step-3 and step-6 remain
    assert sorted(p.name for p in (ra.out_dir / "checkpoints").glob("step-*")) == ["step-3", "step-6"]


# ---- crash-safe checkpoints --------------------------------------------------------------------------
def test_interrupted_checkpoint_write_keeps_previous(tmp_path, monkeypatch):
    import pretrain.checkpoint as ck

    cfg = tiny_cfg(tmp_path, "mlm", "train.steps=4", "train.save_every=2", "train.eval_every=0")
    real_save = torch.save

    class HardKill(BaseException):  # a kill -9 mid-write: no cleanup code runs (a failed write: test_checkpoint_faults)
        pass

    def failing_save(obj, f, *a, **k):
        if "step-4" in str(f) and str(f).endswith("optimizer.pt"):
            raise HardKill()
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(ck.torch, "save", failing_save)
    with pytest.raises(HardKill):
        train(cfg, loader_factory=SyntheticLoader, do_export=False)
    monkeypatch.setattr(ck.torch, "save", real_save)
    root = tmp_path / "runs" / "t" / "pretrain" / "mlm" / "checkpoints"
    assert (root / "latest").read_text().strip() == "step-2"
    assert not (root / "step-4").exists() and (root / ".tmp-step-4").exists()
    c = ck.Checkpointer(root)
    assert c.latest() == root / "step-2"
    # loadable: the same command resumes from step 2 and finishes; the stale temp folder is cleaned
    r = train(cfg, loader_factory=SyntheticLoader, do_export=False)
    assert r.step == 4 and c.latest() == root / "step-4"
    assert not list(root.glob(".tmp-*"))
    assert [x["step"] for x in read_metrics(r.out_dir)] == [1, 2, 3, 4]


# ---- export --------------------------------------------------------------------------------------
@pytest.mark.parametrize("objective,auto", [("mlm", "AutoModelForMaskedLM"), ("ntp", "AutoModelForCausalLM")])
def test_export_round_trip(tmp_path, objective, auto):
    import transformers

    cfg = tiny_cfg(tmp_path, objective, "train.steps=3", "train.save_every=0", "train.eval_every=0")
    r = train(cfg, loader_factory=SyntheticLoader)
    exp = r.export_dir
    meta = json.loads((exp / "pretrain_meta.json").read_text())
    for k in ("objective", "model_type", "vocab_kind", "vocab_path", "steps", "tokens_seen", "trust_remote_code",
              "finetune_adapter", "train_seconds", "hardware", "final_eval"):
        assert k in meta, k
    assert meta["objective"] == objective and meta["steps"] == 3 and meta["finetune_adapter"] == "hf"
    assert meta["trust_remote_code"] is False and "loss" in meta["final_eval"]
    reloaded = getattr(transformers, auto).from_pretrained(exp).eval()
    tok = transformers.AutoTokenizer.from_pretrained(exp)
    ids = torch.tensor([tok("t5 t6 t7 t8 t9")["input_ids"]])
    from safetensors.torch import load_model

    from pretrain.data import build_context
    from pretrain.objectives.base import build_objective

    obj = build_objective(objective, {}, build_context(cfg))
    load_model(obj, str(r.out_dir / "checkpoints" / "step-3" / "model.safetensors"))
    obj.eval()
    with torch.no_grad():
        want = obj.export()(input_ids=ids).logits
        got = reloaded(input_ids=ids).logits
    assert torch.allclose(want, got, atol=1e-5)
    # running the same command again does nothing
    assert train(cfg, loader_factory=SyntheticLoader).step == 3


def test_activation_estimate_terms():
    from pretrain.flops import activation_bytes

    # Korthikanti et al.: s*b*h*(34 + 5*a*s/h) bytes per layer in 16-bit
    s, b, h, L, a = 512, 4, 768, 12, 12
    assert activation_bytes(b, s, h, L, a) == pytest.approx(L * s * b * h * (34 + 5 * a * s / h))
    assert activation_bytes(b, s, h, L, a, attention_matrix=False) == pytest.approx(L * s * b * h * 34)
    assert activation_bytes(b, s, h, L, a, bytes_per_value=4) == pytest.approx(2 * activation_bytes(b, s, h, L, a))


# ---- CLI and configs -----------------------------------------------------------------------------
def test_dry_run_and_user_errors(tmp_path, capsys):
    from pretrain.__main__ import main

    make_vocab(tmp_path / "vocab")
    args = ["--config", str(REPO / "configs/pretrain/mlm-tiny.yaml"), f"data.vocab_root={tmp_path / 'vocab'}",
            f"runs_root={tmp_path}"]
    assert main(args + ["--dry-run"]) == 0
    out = capsys.readouterr().out
    for word in ("parameters", "tokens per step", "total tokens", "FLOPs", "memory"):
        assert word in out
    assert main(args + ["train.stepz=3", "--dry-run"]) == 2
    assert "train.stepz" in capsys.readouterr().err
    assert main(args + ["objective_options.mask_rate=0.2", "--dry-run"]) == 2
    assert main(["--config", str(REPO / "configs/pretrain/mlm-tiny.yaml"), f"runs_root={tmp_path}",
                 f"data.vocab_root={tmp_path / 'nowhere'}"]) == 2
    assert "make vocab" in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "pretrain").glob("*.yaml")), ids=lambda p: p.name)
def test_configs_load(path, tmp_path):
    from pretrain.objectives.base import get_objective

    cfg = load_config(PretrainConfig, path)
    cls = get_objective(cfg.objective)
    from pipeline.config import _build

    _build(cls.Config, dict(cfg.objective_options), str(path))
    stem = path.stem.rsplit("-", 1)[0]
    assert cfg.out_name == stem, f"{path.name}: name must equal the file stem '{stem}' (the Makefile relies on it)"


def test_resume_keeps_the_resume_steps_tensorboard_events(tmp_path):
    # records of the checkpoint's own step stay in metrics.jsonl and are not rewritten after a
    # resume, so tensorboard must not purge them either (purge_step = resume step + 1)
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pretrain.trainer import Metrics

    m = Metrics(tmp_path, True, True, None)
    for s in (1, 2, 3, 4):
        m.write({"step": s, "loss": float(s)}, "train")
    m.write({"step": 6, "loss": 6.0}, "train")  # after the checkpoint: recomputed on resume
    m.close()
    m = Metrics(tmp_path, True, True, 4)
    m.write({"step": 5, "loss": 5.0}, "train")
    m.close()
    ea = EventAccumulator(str(tmp_path / "tb"))
    ea.Reload()
    assert [e.step for e in ea.Scalars("train/loss")] == [1, 2, 3, 4, 5]
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5]


def test_name_warning_spares_seeded_runs(monkeypatch):
    """`make pretrain-seeds` names runs OBJ-sSEED: no 'the Makefile expects' warning for them; a
    stray name still gets it (the warning is what tells a user `make` will not find the export)."""
    import pretrain.__main__ as cli

    seen = []
    monkeypatch.setattr(cli, "dry_run", lambda cfg: 0)
    monkeypatch.setattr("pipeline.log.get_logger", lambda name: type("L", (), {"warning": lambda self, *a: seen.append(a)})())
    assert cli.main(["--config", "configs/pretrain/mlm-tiny.yaml", "--dry-run", "name=mlm-s2"]) == 0
    assert seen == []
    assert cli.main(["--config", "configs/pretrain/mlm-tiny.yaml", "--dry-run", "name=other"]) == 0
    assert len(seen) == 1 and "Makefile expects" in seen[0][0]
