"""One run per run folder and stage: two real processes (pipeline.lock, issue 16)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.errors import UserError
from pipeline.lock import acquire, release, stage_lock

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PIPELINE_PROGRESS="0", OMP_NUM_THREADS="1", PYTHONHASHSEED="0")

HOLD = """
import sys
from pipeline.lock import stage_lock
with stage_lock(sys.argv[1], sys.argv[2]):
    print("held", flush=True)
    sys.stdin.read()   # until the test closes stdin (or kills this process)
"""


class Holder:
    """Another process holding ``stage`` of ``folder`` until released or killed."""

    def __init__(self, folder: Path, stage: str):
        self.p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), stage], cwd=REPO, env=ENV,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.p.stdout.readline().strip() == "held"
        self.pid = self.p.pid

    def release(self) -> None:
        self.p.stdin.close()
        assert self.p.wait(timeout=60) == 0

    def kill(self) -> None:
        self.p.kill()
        self.p.wait(timeout=60)


def _run(*args):
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=600)


def _refused(r, pid: int, stage: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and f"another '{stage}' run (pid {pid})" in err[0], r.stderr
    assert "Traceback" not in r.stderr


def test_second_process_is_refused_with_the_pid_and_a_kill_releases(tmp_path):
    h = Holder(tmp_path, "corpus")
    code = ("import sys; from pipeline.lock import acquire; from pipeline.errors import UserError\n"
            "try:\n    acquire(sys.argv[1], 'corpus')\nexcept UserError as e:\n    print(e); sys.exit(2)")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, env=ENV, capture_output=True, text=True)
    assert r.returncode == 2 and f"(pid {h.pid})" in r.stdout
    assert (tmp_path / ".locks" / "corpus.lock").read_text().strip() == str(h.pid)
    with stage_lock(tmp_path, "vocab"):  # another stage of the same folder is free
        pass
    with pytest.raises(UserError, match=f"pid {h.pid}"):
        acquire(tmp_path, "corpus")
    h.kill()  # SIGKILL: the kernel drops the lock, nothing stale remains
    with stage_lock(tmp_path, "corpus"):
        with stage_lock(tmp_path, "corpus"):  # re-entrant within one process
            pass
        assert (tmp_path / ".locks" / "corpus.lock").read_text().strip() == str(os.getpid())
    release(tmp_path, "corpus")  # releasing a lock not held is a no-op


HOLD_AND_DIE = """
import multiprocessing as mp, os, signal, sys, time
from pipeline.lock import acquire
acquire(sys.argv[1], "corpus")
ctx = mp.get_context("fork")
ready = ctx.Event()
def work(ev):
    ev.set()          # the fork hooks have run: the worker's copy of the lock is closed
    time.sleep(120)
worker = ctx.Process(target=work, args=(ready,))
worker.start()
assert ready.wait(60)
print(worker.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)   # the holder dies; its forked worker lives on
"""


def test_a_forked_worker_that_outlives_the_holder_does_not_keep_the_lock(tmp_path):
    import signal

    p = subprocess.Popen([sys.executable, "-c", HOLD_AND_DIE, str(tmp_path)], cwd=REPO, env=ENV,
                         stdout=subprocess.PIPE, text=True)
    worker = int(p.stdout.readline())
    assert p.wait(timeout=60) == -signal.SIGKILL
    try:
        os.kill(worker, 0)  # still alive
        with stage_lock(tmp_path, "corpus"):
            pass
    finally:
        os.kill(worker, signal.SIGKILL)


def _corpus_config(tmp_path: Path) -> Path:
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": f"第{i}号文件：气象台预报，明天白天本市晴转多云，最高气温二十二度。"},
                                      ensure_ascii=False) + "\n" for i in range(30)), encoding="utf-8")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"run": "r", "runs_root": str(tmp_path / "runs"),
                                   "dedup": {"near": False}, "sources": [{"type": "jsonl", "path": str(src)}]}),
                   encoding="utf-8")
    return cfg


def test_two_corpus_builds_of_one_run(tmp_path):
    cfg = _corpus_config(tmp_path)
    run = tmp_path / "runs" / "r"
    h = Holder(run, "corpus")  # a build in progress
    r = _run("corpora", "build", "--config", str(cfg))
    _refused(r, h.pid, "corpus")
    assert not (run / "corpus").exists()
    h.release()
    r = _run("corpora", "build", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    stats = json.loads((run / "corpus" / "stats.json").read_text())
    assert stats["totals"]["kept_docs"] == 30


@pytest.mark.parametrize("command", ["vocab", "shards"])
def test_tokenization_stages_are_locked(tmp_path, command):
    run = tmp_path / "runs" / "r"
    h = Holder(run, command)
    r = _run("tokenization", command, "--config", "configs/tokenization/default.yaml", "run=r",
             f"runs_root={tmp_path / 'runs'}")
    _refused(r, h.pid, command)
    h.release()


def test_two_trainings_on_one_folder(tmp_path):
    run = tmp_path / "runs" / "r"
    h = Holder(run, "pretrain-mlm")
    r = _run("pretrain", "--config", "configs/pretrain/mlm-tiny.yaml", "run=r", f"runs_root={tmp_path / 'runs'}")
    _refused(r, h.pid, "pretrain-mlm")
    assert not (run / "pretrain").exists()
    h.release()


def test_two_finetuning_suites_on_one_folder(tmp_path):
    from finetune.testing import make_checkpoint
    from test_finetune_tasks import write_chnsenticorp

    write_chnsenticorp(tmp_path / "data" / "chnsenticorp")
    model = make_checkpoint(tmp_path / "m" / "export", ["很好的书", "不好看"], "char")
    cfg = tmp_path / "ft.yaml"
    cfg.write_text(yaml.safe_dump({
        "run": "r", "runs_root": str(tmp_path / "runs"), "device": "cpu", "threads": 1, "seeds": [1],
        "lrs": [1.0e-3], "epochs": [1], "batch_size": 8, "random_init_twins": False,
        "tasks": [{"name": "chnsenticorp", "data_dir": str(tmp_path / "data" / "chnsenticorp"), "max_chars": 32,
                   "max_train": 8}]}), encoding="utf-8")
    run = tmp_path / "runs" / "r"
    h = Holder(run, "finetune")
    r = _run("finetune", "--config", str(cfg), "--models", f"base={model}")
    _refused(r, h.pid, "finetune")
    assert not (run / "finetune" / "base").exists()
    h.release()
