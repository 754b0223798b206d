"""Checkpoints and training runs under faults (issue 16): damaged checkpoints, non-finite losses,
changed schedules, a full disk, stale temporaries, a skipped evaluation, SIGTERM during the export."""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import tempfile
from pathlib import Path

import pytest
import torch

import pretrain.checkpoint as ck
from pipeline.errors import UserError, main_guard
from pretrain.trainer import lr_factor, train
from test_pretrain import read_metrics, state, tiny_cfg
from test_pretrain_synth import SyntheticLoader

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# steps 6, eval and checkpoint every 3 steps, keep_last 2 (tiny_cfg's defaults)


def out_dir(root: Path, objective: str = "mlm") -> Path:
    return root / "runs" / "t" / "pretrain" / objective


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted 6-step run every resumed run must reproduce."""
    root = tmp_path_factory.mktemp("ref")
    r = train(tiny_cfg(root, "mlm"), loader_factory=SyntheticLoader, do_export=False)
    assert r.exit_code == 0 and r.step == 6
    return r.out_dir


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = state(a), state(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# ---- 1. damaged checkpoints ------------------------------------------------------------------------
def _flip(path: Path) -> None:
    """Overwrite 64 bytes in the middle of the file with 0xFF (a float32 NaN pattern), size unchanged."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage,victim", [(_flip, "model.safetensors"), (_truncate, "optimizer.pt"),
                                           (_flip, "rng-0.pt")])
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, reference, damage, victim, caplog):
    cfg = tiny_cfg(tmp_path, "mlm")
    r1 = train(cfg, loader_factory=SyntheticLoader, stop_at_step=5, do_export=False)
    assert r1.exit_code == 143
    root = r1.out_dir / "checkpoints"
    assert (root / "latest").read_text().strip() == "step-5" and (root / "step-3" / ck.MANIFEST).is_file()
    damage(root / "step-5" / victim)

    r2 = train(cfg, loader_factory=SyntheticLoader, do_export=False)  # the same command again
    assert r2.exit_code == 0 and r2.step == 6
    assert "step-5 is damaged" in caplog.text and "previous intact checkpoint step-3" in caplog.text
    assert (root / "damaged-step-5" / victim).is_file()  # kept for inspection, never loaded again
    # resumed from step 3: exactly the uninterrupted run, no NaN
    want = [(x["step"], x["loss"]) for x in read_metrics(reference)]
    got = [(x["step"], x["loss"]) for x in read_metrics(r2.out_dir)]
    assert got == want and all(math.isfinite(loss) for _, loss in got)
    assert same_weights(reference / "checkpoints" / "step-6", root / "step-6")


def test_no_intact_checkpoint_is_one_line_naming_each(tmp_path):
    cfg = tiny_cfg(tmp_path, "mlm")
    train(cfg, loader_factory=SyntheticLoader, stop_at_step=5, do_export=False)
    root = out_dir(tmp_path) / "checkpoints"
    _truncate(root / "step-5" / "model.safetensors")
    _flip(root / "step-3" / "optimizer.pt")
    with pytest.raises(UserError) as e:
        train(cfg, loader_factory=SyntheticLoader, do_export=False)
    msg = str(e.value)
    assert "no intact checkpoint" in msg and "\n" not in msg
    assert "step-5: model.safetensors has" in msg and "step-3: optimizer.pt does not match its sha256" in msg
    assert (root / "step-5").is_dir() and (root / "step-3").is_dir()  # nothing moved when nothing is usable


def test_unverifiable_old_checkpoint_that_is_truncated_is_one_line(tmp_path):
    # a folder written before manifests existed is loaded unverified; a broken file is one line, no traceback
    cfg = tiny_cfg(tmp_path, "mlm")
    train(cfg, loader_factory=SyntheticLoader, stop_at_step=3, do_export=False)
    step3 = out_dir(tmp_path) / "checkpoints" / "step-3"
    (step3 / ck.MANIFEST).unlink()
    _truncate(step3 / "optimizer.pt")
    with pytest.raises(UserError, match=r"optimizer\.pt: unreadable checkpoint file"):
        train(cfg, loader_factory=SyntheticLoader, do_export=False)


def test_manifest_lists_every_file_with_size_and_sha256(tmp_path):
    train(tiny_cfg(tmp_path, "mlm", "train.steps=3"), loader_factory=SyntheticLoader, do_export=False)
    step3 = out_dir(tmp_path) / "checkpoints" / "step-3"
    m = json.loads((step3 / ck.MANIFEST).read_text())
    names = sorted(p.name for p in step3.iterdir() if p.name != ck.MANIFEST)
    assert sorted(m["files"]) == names and "model.safetensors" in names and "state.json" in names
    for name, rec in m["files"].items():
        assert rec["size"] == (step3 / name).stat().st_size and rec["sha256"] == ck.file_sha256(step3 / name)
    assert ck.verify(step3) is None


# ---- 2. non-finite losses ----------------------------------------------------------------------------
def _nan_from_training_step(monkeypatch, first_bad: int) -> None:
    """The objective's training forward returns a NaN loss from its ``first_bad``-th call on (the NaN
    then reaches the weights through backward, as a real divergence does)."""
    import pretrain.trainer as tr

    real_build = tr.build_objective

    def build(*a, **k):
        obj = real_build(*a, **k)
        fwd, calls = obj.forward, {"n": 0}

        def forward(batch):
            outs = fwd(batch)
            if obj.training:
                calls["n"] += 1
                if calls["n"] >= first_bad:
                    outs = {**outs, "loss": outs["loss"] * float("nan")}
            return outs

        obj.forward = forward
        return obj

    monkeypatch.setattr(tr, "build_objective", build)


def test_nonfinite_losses_stop_the_run_without_export(tmp_path, monkeypatch):
    _nan_from_training_step(monkeypatch, first_bad=4)
    cfg = tiny_cfg(tmp_path, "mlm", "train.steps=8", "train.save_every=2", "train.eval_every=0",
                   "train.max_nonfinite_steps=2")
    with pytest.raises(UserError) as e:
        train(cfg, loader_factory=SyntheticLoader)
    msg = str(e.value)
    assert "NaN/inf for 2 consecutive" in msg and "from step 4" in msg and "step-2 is intact" in msg
    out = out_dir(tmp_path)
    assert not (out / "export").exists()
    root = out / "checkpoints"
    # no checkpoint after the first NaN step (step 4 was due): the latest one holds finite weights
    assert (root / "latest").read_text().strip() == "step-2" and not (root / "step-4").exists()
    assert all(torch.isfinite(v).all() for v in state(root / "step-2").values())


def test_nonfinite_loss_refuses_the_export_even_when_the_stop_is_off(tmp_path, monkeypatch):
    _nan_from_training_step(monkeypatch, first_bad=3)
    cfg = tiny_cfg(tmp_path, "mlm", "train.steps=4", "train.save_every=2", "train.eval_every=0",
                   "train.max_nonfinite_steps=0")
    with pytest.raises(UserError, match="not exporting"):
        train(cfg, loader_factory=SyntheticLoader)
    assert not (out_dir(tmp_path) / "export").exists()
    assert (out_dir(tmp_path) / "checkpoints" / "latest").read_text().strip() == "step-2"


# ---- 3. a changed schedule ---------------------------------------------------------------------------
def test_resume_with_another_schedule_is_refused_or_extended(tmp_path):
    cfg = tiny_cfg(tmp_path, "mlm")
    assert train(cfg, loader_factory=SyntheticLoader, stop_at_step=3, do_export=False).exit_code == 143
    for change in (["train.steps=8"], ["train.lr=0.001"], ["train.warmup_steps=1"], ["train.schedule=cosine"]):
        with pytest.raises(UserError) as e:
            train(tiny_cfg(tmp_path, "mlm", *change), loader_factory=SyntheticLoader, do_export=False)
        key = change[0].split("=")[0]
        assert key in str(e.value) and "train.extend=true" in str(e.value) and "\n" not in str(e.value)
    longer = tiny_cfg(tmp_path, "mlm", "train.steps=8", "train.lr=0.002", "train.extend=true")
    r = train(longer, loader_factory=SyntheticLoader, do_export=False)
    assert r.exit_code == 0 and r.step == 8
    recs = {x["step"]: x for x in read_metrics(r.out_dir)}
    # steps 1-3 under the old schedule, 4-8 under the new one (lr of step s = lr * factor(s - 1))
    assert recs[3]["lr"] == pytest.approx(cfg.train.lr * lr_factor(2, cfg.train))
    assert [recs[s]["lr"] for s in range(4, 9)] == pytest.approx(
        [0.002 * lr_factor(s - 1, longer.train) for s in range(4, 9)])
    st = json.loads((r.out_dir / "checkpoints" / "step-8" / "state.json").read_text())
    assert st["schedule"]["steps"] == 8 and st["schedule_history"] == [
        {"until_step": 3, "steps": 6, "lr": 0.003, "warmup_steps": 2, "schedule": "linear", "min_lr_ratio": 0.0}]
    # the same (extended) command again: nothing left to splice, the run is complete
    assert train(longer, loader_factory=SyntheticLoader, do_export=False).step == 8


# ---- 4. a full disk during a checkpoint write ----------------------------------------------------------
@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4106048 vs 4105936"),
])
def test_full_disk_during_a_checkpoint_is_one_line_and_leaves_no_partial_folder(tmp_path, monkeypatch, error):
    real_save = torch.save

    def save(obj, f, *a, **k):
        if "step-4" in str(f) and str(f).endswith("optimizer.pt"):
            raise error
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(ck.torch, "save", save)
    cfg = tiny_cfg(tmp_path, "mlm", "train.steps=4", "train.save_every=2", "train.eval_every=0")
    with pytest.raises(UserError) as e:
        train(cfg, loader_factory=SyntheticLoader)
    msg = str(e.value)
    assert msg.startswith("no space left on device writing checkpoint step-4") and "\n" not in msg
    assert " free, a checkpoint needs about " in msg and "step-2 is intact" in msg
    root = out_dir(tmp_path) / "checkpoints"
    assert not list(root.glob(".tmp-*")) and not (root / "step-4").exists()
    assert (root / "latest").read_text().strip() == "step-2"
    # through a stage's main: exit 2, no traceback
    assert main_guard(lambda: train(cfg, loader_factory=SyntheticLoader))() == 2
    monkeypatch.setattr(ck.torch, "save", real_save)
    r = train(cfg, loader_factory=SyntheticLoader)  # space freed: the same command resumes and finishes
    assert r.exit_code == 0 and r.step == 4 and (r.export_dir / "model.safetensors").is_file()


# ---- 5. smaller ones -------------------------------------------------------------------------------------
def test_an_evaluation_skipped_by_a_stop_is_redone_on_resume(tmp_path, reference):
    cfg = tiny_cfg(tmp_path, "mlm")
    assert train(cfg, loader_factory=SyntheticLoader, stop_at_step=3, do_export=False).exit_code == 143
    out = out_dir(tmp_path)
    assert [x["step"] for x in read_metrics(out, "valid")] == [0]  # the eval due at step 3 was skipped
    r = train(cfg, loader_factory=SyntheticLoader, do_export=False)
    want = [(x["step"], x["loss"], x["accuracy"]) for x in read_metrics(reference, "valid")]
    got = [(x["step"], x["loss"], x["accuracy"]) for x in read_metrics(r.out_dir, "valid")]
    assert got == want and [s for s, *_ in got] == [0, 3, 6]
    # the resumed run is still exact
    assert same_weights(reference / "checkpoints" / "step-6", out / "checkpoints" / "step-6")


def test_stale_temporaries_are_removed_at_start(tmp_path):
    from pipeline.runs import _tmp_sibling

    cfg = tiny_cfg(tmp_path, "mlm", "train.steps=3", "train.eval_every=0")
    train(cfg, loader_factory=SyntheticLoader, stop_at_step=2, do_export=False)
    out = out_dir(tmp_path)
    # what a kill -9 leaves: the pipeline's own temporary names for `latest` and the export folder
    stale_latest = _tmp_sibling(out / "checkpoints" / "latest")
    stale_export = Path(tempfile.mkdtemp(prefix=".export.", suffix=".tmp", dir=out))
    (stale_export / "model.safetensors").write_bytes(b"half")
    stale_ckpt = out / "checkpoints" / ".tmp-step-3"
    stale_ckpt.mkdir()
    r = train(cfg, loader_factory=SyntheticLoader)
    assert r.exit_code == 0 and (r.export_dir / "model.safetensors").is_file()
    assert not stale_latest.exists() and not stale_export.exists() and not stale_ckpt.exists()
    assert not [p.name for p in out.rglob(".*") if p.name.endswith(".tmp") or p.name.startswith(".tmp-")]


def test_sigterm_during_the_final_export_exits_143_without_a_half_export(tmp_path, monkeypatch):
    from pretrain.exports import ExportMeta

    real_save = ExportMeta.save

    def write_then_signal(self, folder, *a, **k):  # in the middle of the export: weights written, meta not yet
        os.kill(os.getpid(), signal.SIGTERM)
        return real_save(self, folder, *a, **k)

    class ReachedDefault(Exception):
        pass

    def fallback(signum, frame):  # what would otherwise handle it (the default kills the process)
        raise ReachedDefault()

    old = signal.signal(signal.SIGTERM, fallback)
    try:
        monkeypatch.setattr(ExportMeta, "save", write_then_signal)
        cfg = tiny_cfg(tmp_path, "mlm", "train.steps=3", "train.eval_every=0")
        r = train(cfg, loader_factory=SyntheticLoader)
    finally:
        signal.signal(signal.SIGTERM, old)
    assert r.exit_code == 143 and r.export_dir is None
    out = out_dir(tmp_path)
    assert not (out / "export").exists() and not list(out.glob(".export.*"))
    assert not (out / "summary.json").exists()
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-3"
    monkeypatch.setattr(ExportMeta, "save", real_save)
    r = train(cfg, loader_factory=SyntheticLoader)  # the same command exports
    assert r.exit_code == 0 and r.step == 3 and (r.export_dir / "pretrain_meta.json").is_file()


# ---- several processes (gloo on CPU) -------------------------------------------------------------------
# Accelerate enables FSDP only with CUDA (on CPU it reports DistributedType.NO even under torchrun), so
# a DDP -> FSDP resume cannot run here; what runs: a world-size change and a fallback agreed by 2 ranks.
# fp32 (as the launcher's --mixed_precision no): the comparison of 2 processes with 1 is at 1e-5
MP_OVERRIDES = ["train.micro_batch_size=4", "train.steps=4", "train.eval_every=2", "train.save_every=2",
                "train.mixed_precision=no"]

MP_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_pretrain import tiny_cfg
from test_pretrain_synth import SyntheticLoader
from pretrain.trainer import end_processes, train
cfg = tiny_cfg(Path({root!r}), "ntp", *{overrides!r})
code = train(cfg, loader_factory=SyntheticLoader, do_export=False, stop_at_step={stop!r}).exit_code
end_processes(code)  # as python -m pretrain does: end the process group, then the process
sys.exit(code)
"""


def _launch2(tmp_path: Path, root: Path, stop: int | None, overrides=MP_OVERRIDES):
    import subprocess
    import sys

    from test_pretrain_multiproc import REPO, TESTS, _free_port

    script = tmp_path / f"run2-{stop}.py"
    script.write_text(MP_SCRIPT.format(tests=str(TESTS), root=str(root), overrides=list(overrides), stop=stop))
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), str(script)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def one_process_ntp(tmp_path_factory):
    root = tmp_path_factory.mktemp("one")
    return train(tiny_cfg(root, "ntp", *MP_OVERRIDES), loader_factory=SyntheticLoader, do_export=False).out_dir


@pytest.mark.slow
def test_two_processes_stop_and_one_process_resumes(tmp_path, one_process_ntp, caplog):
    p = _launch2(tmp_path, tmp_path, stop=2)  # the launcher itself reports a child's 143 as a failure
    assert "stopped at step 2; checkpoint saved" in p.stderr, p.stderr[-3000:]
    assert (out_dir(tmp_path, "ntp") / "checkpoints" / "latest").read_text().strip() == "step-2"
    r = train(tiny_cfg(tmp_path, "ntp", *MP_OVERRIDES), loader_factory=SyntheticLoader, do_export=False)
    assert r.exit_code == 0 and r.step == 4 and "different number of processes" in caplog.text
    a, b = read_metrics(one_process_ntp), read_metrics(r.out_dir)
    assert [x["step"] for x in b] == [1, 2, 3, 4]
    assert [x["loss"] for x in a] == pytest.approx([x["loss"] for x in b], rel=1e-5)
    wa, wb = state(one_process_ntp / "checkpoints" / "step-4"), state(r.out_dir / "checkpoints" / "step-4")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


@pytest.mark.slow
def test_two_processes_agree_on_the_fallback_checkpoint(tmp_path, one_process_ntp):
    p = _launch2(tmp_path, tmp_path, stop=3)
    assert "stopped at step 3; checkpoint saved" in p.stderr, p.stderr[-3000:]
    root = out_dir(tmp_path, "ntp") / "checkpoints"
    assert sorted(x.name for x in root.glob("step-*")) == ["step-2", "step-3"]
    m = json.loads((root / "step-3" / ck.MANIFEST).read_text())
    assert {"rng-0.pt", "rng-1.pt"} <= set(m["files"])  # both ranks' files are covered
    _flip(root / "step-3" / "rng-1.pt")  # rank 1's part: only the main process's check can see it
    p = _launch2(tmp_path, tmp_path, stop=None)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "step-3 is damaged" in p.stderr and (root / "damaged-step-3").is_dir()
    a, b = read_metrics(one_process_ntp), read_metrics(out_dir(tmp_path, "ntp"))
    assert [x["step"] for x in b] == [1, 2, 3, 4]
    assert [x["loss"] for x in a] == pytest.approx([x["loss"] for x in b], rel=1e-5)


def test_full_disk_during_the_export_is_one_line(tmp_path, monkeypatch):
    from pretrain.exports import ExportMeta

    real_save = ExportMeta.save

    def full(self, folder, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ExportMeta, "save", full)
    cfg = tiny_cfg(tmp_path, "mlm", "train.steps=3", "train.eval_every=0")
    with pytest.raises(UserError) as e:
        train(cfg, loader_factory=SyntheticLoader)
    msg = str(e.value)
    assert msg.startswith("no space left on device writing the export") and "\n" not in msg
    assert " free, the weights alone need " in msg and "step-3 is intact" in msg
    out = out_dir(tmp_path)
    assert not (out / "export").exists() and not list(out.glob(".export.*"))
    monkeypatch.setattr(ExportMeta, "save", real_save)
    r = train(cfg, loader_factory=SyntheticLoader)
    assert r.exit_code == 0 and (r.export_dir / "pretrain_meta.json").is_file()


def test_resuming_under_another_kind_of_strategy_is_one_line(tmp_path, monkeypatch):
    # FSDP/DeepSpeed need CUDA under accelerate, so the sharded side is simulated by ck._sharded alone
    cfg = tiny_cfg(tmp_path, "mlm")
    train(cfg, loader_factory=SyntheticLoader, stop_at_step=3, do_export=False)
    monkeypatch.setattr(ck, "_sharded", lambda acc: True)
    with pytest.raises(UserError, match=r"written by a one process or DDP .* run, this run uses "):
        train(cfg, loader_factory=SyntheticLoader, do_export=False)


def test_one_process_trains_runs_of_different_precisions(tmp_path):
    """accelerate keeps one process-wide state and refused a second Accelerator with another
    mixed_precision (a study or the suite trains fp32 and bf16 runs in one process); the trainer
    resets it outside a launched run."""
    a = train(tiny_cfg(tmp_path / "a", "mlm", "train.steps=2", "train.mixed_precision=no"),
              loader_factory=SyntheticLoader, do_export=False)
    b = train(tiny_cfg(tmp_path / "b", "mlm", "train.steps=2", "train.mixed_precision=bf16"),
              loader_factory=SyntheticLoader, do_export=False)
    assert a.step == 2 and b.step == 2
    from accelerate.state import AcceleratorState

    assert AcceleratorState().mixed_precision == "bf16"
