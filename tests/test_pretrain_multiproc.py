"""Two CPU processes (gloo, through ``accelerate launch``) against one process with the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pretrain.trainer import lr_factor, train
from test_pretrain import read_metrics, state, tiny_cfg
from test_pretrain_synth import SyntheticLoader

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

# Same global batch (8 windows): 1 process x micro 4 x accumulation 2  vs  2 processes x micro 4 x 1.
# ntp with no dropout: no randomness, so the two runs must agree up to float rounding.
# fp32 (as the launcher's --mixed_precision no): the comparison of 2 processes with 1 is at 1e-5
OVERRIDES = ["train.micro_batch_size=4", "train.steps=4", "train.eval_every=2", "train.save_every=2",
             "train.mixed_precision=no"]

SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_pretrain import tiny_cfg
from test_pretrain_synth import SyntheticLoader
from pretrain.trainer import end_processes, train
cfg = tiny_cfg(Path({root!r}), "ntp", *{overrides!r})
code = train(cfg, loader_factory=SyntheticLoader, do_export=False).exit_code
end_processes(code)  # as python -m pretrain does: end the process group, then the process
sys.exit(code)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    one = train(tiny_cfg(tmp_path / "one", "ntp", *OVERRIDES), loader_factory=SyntheticLoader, do_export=False)

    root = tmp_path / "two"
    script = tmp_path / "run2.py"
    script.write_text(SCRIPT.format(tests=str(TESTS), root=str(root), overrides=OVERRIDES))
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), str(script)]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    two = root / "runs" / "t" / "pretrain" / "ntp"

    a, b = read_metrics(one.out_dir), read_metrics(two)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4]
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], rel=1e-5)
    assert [r["grad_norm"] for r in a] == pytest.approx([r["grad_norm"] for r in b], rel=1e-4)
    # the schedule counts optimizer steps, for 1 process x accumulation 2 and for 2 processes alike
    cfg = tiny_cfg(tmp_path / "one", "ntp", *OVERRIDES)
    want = [cfg.train.lr * lr_factor(s, cfg.train) for s in range(4)]
    assert [r["lr"] for r in a] == pytest.approx(want) and [r["lr"] for r in b] == pytest.approx(want)
    for d in (one.out_dir, two):
        sched = torch.load(d / "checkpoints" / "step-4" / "scheduler.pt", weights_only=True)
        assert sched["last_epoch"] == 4
    st1 = json.loads((one.out_dir / "checkpoints" / "step-4" / "state.json").read_text())
    st2 = json.loads((two / "checkpoints" / "step-4" / "state.json").read_text())
    assert (st1["world_size"], st1["micro_batches_per_rank"]) == (1, 8)  # 4 steps x accumulation 2
    assert (st2["world_size"], st2["micro_batches_per_rank"]) == (2, 4)
    assert st1["tokens_nominal"] == st2["tokens_nominal"] == 4 * 8 * 32
    # real tokens and characters, summed over processes: the same windows either way
    assert 0 < st1["tokens_seen"] == st2["tokens_seen"] <= 4 * 8 * 32 and st1["chars_seen"] == st2["chars_seen"] > 0
    assert [r["loss"] for r in read_metrics(one.out_dir, "valid")] == pytest.approx(
        [r["loss"] for r in read_metrics(two, "valid")], rel=1e-5)
    wa, wb = state(one.out_dir / "checkpoints" / "step-4"), state(two / "checkpoints" / "step-4")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)
    # both ranks saved their RNG state
    assert (two / "checkpoints" / "step-4" / "rng-1.pt").is_file()


SIGTERM_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_pretrain import tiny_cfg
from test_pretrain_synth import SyntheticLoader
from pretrain.trainer import train
cfg = tiny_cfg(Path({root!r}), "mlm", "train.steps=100000", "train.save_every=0", "train.eval_every=0")
sys.exit(train(cfg, loader_factory=SyntheticLoader, do_export=False).exit_code)
"""


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    import signal
    import time

    script = tmp_path / "run.py"
    script.write_text(SIGTERM_SCRIPT.format(tests=str(TESTS), root=str(tmp_path)))
    out = tmp_path / "runs" / "t" / "pretrain" / "mlm"
    p = subprocess.Popen([sys.executable, str(script)], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and p.poll() is None:
            if (out / "metrics.jsonl").is_file() and len((out / "metrics.jsonl").read_text().splitlines()) >= 2:
                break
            time.sleep(0.2)
        assert p.poll() is None, p.communicate()[1][-2000:]
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 143, err[-2000:]
    assert "Traceback" not in err and "checkpoint saved" in err
    latest = (out / "checkpoints" / "latest").read_text().strip()
    st = json.loads((out / "checkpoints" / latest / "state.json").read_text())
    assert latest == f"step-{st['step']}" and st["step"] >= 2


def test_python_m_pretrain_ends_the_process_group_after_training(tmp_path, monkeypatch):
    """A launched ``python -m pretrain`` destroys its process group once train() has returned (before the
    exit: processes that tear gloo down in the interpreter's exit, in any order, aborted on a busy machine).
    A one-process gloo group stands for the group the launcher sets up; train() itself is not the subject."""
    import torch.distributed as dist

    import pretrain.trainer as tr
    from pretrain.__main__ import main

    during = []

    def fake_train(cfg, **kw):
        during.append(dist.is_initialized())
        return tr.RunResult(exit_code=143, step=2, out_dir=tmp_path)

    monkeypatch.setattr(tr, "train", fake_train)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        code = main(["--config", str(REPO / "configs" / "pretrain" / "amber-tiny.yaml"), f"runs_root={tmp_path}"])
        assert during == [True]  # the group lives through train()
        assert code == 143 and not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    tr.end_processes()  # no group: nothing to do
