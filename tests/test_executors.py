"""pipeline.executors: one config block -> a datatrove executor; tasks resume by completion marker."""

from pathlib import Path

import pytest

from pipeline.executors import ExecutorConfig, build_executor, completed_tasks


def _writer(out: Path):
    def step(data, rank: int = 0, world_size: int = 1):  # datatrove calls a function step like this
        p = out / f"{rank}.txt"
        with open(p, "a", encoding="utf-8") as f:  # appends: a task run twice shows up
            f.write(f"{rank}/{world_size}\n")
        return iter(())
    return step


def test_local_executor_runs_every_task_once_and_resumes(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    cfg = ExecutorConfig(kind="local", workers=1)
    build_executor(cfg, [_writer(out)], tmp_path / "logs", tasks=3).run()
    assert sorted(p.name for p in out.iterdir()) == ["0.txt", "1.txt", "2.txt"]
    assert (out / "2.txt").read_text() == "2/3\n"
    assert completed_tasks(tmp_path / "logs") == {0, 1, 2}
    # a second launch of the same pipeline skips the completed tasks
    (tmp_path / "logs" / "completions" / "00001").unlink()
    build_executor(cfg, [_writer(out)], tmp_path / "logs", tasks=3).run()
    assert (out / "0.txt").read_text() == "0/3\n"
    assert (out / "1.txt").read_text() == "1/3\n1/3\n"


@pytest.mark.parametrize("bad, msg", [
    ({"kind": "spark"}, "executor.kind"),
    ({"workers": 0}, "executor.workers"),
    ({"kind": "slurm"}, "partition"),
])
def test_bad_executor_config_is_refused(bad, msg):
    with pytest.raises(ValueError, match=msg):
        ExecutorConfig(**bad).validate()


def test_slurm_executor_is_built_without_submitting(tmp_path):
    from pipeline.executors import SlurmOptions

    cfg = ExecutorConfig(kind="slurm", slurm=SlurmOptions(partition="cpu", time="01:00:00"))
    ex = build_executor(cfg, [_writer(tmp_path)], tmp_path / "logs", tasks=4, job_name="corpus")
    assert type(ex).__name__ == "SlurmPipelineExecutor"
    assert ex.world_size == 4 and ex.partition == "cpu"
