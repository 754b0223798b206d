"""Executors of the data stages: datatrove's local, Slurm or Ray executor from one config block.

Every data stage (corpus build, segmentation, vocabulary counts, sharding) that runs as a set of
independent tasks builds its executor here, so one ``executor:`` block in a stage config moves the
same work from a laptop to a cluster::

    executor:
      kind: local            # local | slurm | ray
      workers: 2             # tasks running at once (local, ray); -1: all at once
      slurm: {partition: cpu, time: "04:00:00", cpus_per_task: 4, mem_per_cpu_gb: 2}
      ray: {address: auto, cpus_per_task: 1, mem_per_cpu_gb: 2}

datatrove writes a completion marker per task under the executor's logging folder
(``LOGGING/completions/NNNNN``) and skips completed tasks when the same pipeline is launched again
(``skip_completed``), so a killed stage resumes by task. The local executor is the embedded
default: it needs no service and is what the demo and the tests use. ``slurm`` submits an sbatch
array (the call returns once submitted); ``ray`` connects to ``ray.address`` (``auto``: a running
cluster; empty: start a local one) and blocks until the tasks finish.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KINDS = ("local", "slurm", "ray")


@dataclass
class SlurmOptions:
    partition: str = ""                 # required for kind: slurm
    time: str = "04:00:00"              # per task (sbatch --time)
    cpus_per_task: int = 1
    mem_per_cpu_gb: int = 2
    qos: str = "normal"
    venv_path: str = ""                 # activated in each job (default: the current interpreter's venv)
    env_command: str = ""               # shell line run before each task (module load ...)
    sbatch_args: dict[str, Any] = field(default_factory=dict)  # extra #SBATCH keys
    slurm_logs_folder: str = ""         # default: LOGGING/slurm_logs


@dataclass
class RayOptions:
    address: str = ""                   # "" starts a local Ray instance; "auto" joins a running cluster
    cpus_per_task: int = 1
    mem_per_cpu_gb: float = 2.0


@dataclass
class ExecutorConfig:
    kind: str = "local"                 # local | slurm | ray
    workers: int = 1                    # tasks run at once (local, ray); -1: as many as tasks
    start_method: str = "forkserver"    # local: multiprocessing start method (spawn, fork, forkserver)
    skip_completed: bool = True         # resume: tasks with a completion marker are not run again
    slurm: SlurmOptions = field(default_factory=SlurmOptions)
    ray: RayOptions = field(default_factory=RayOptions)

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"executor.kind must be one of {', '.join(KINDS)}, got '{self.kind}'")
        if self.workers == 0 or self.workers < -1:
            raise ValueError(f"executor.workers must be >= 1 or -1 (all tasks at once), got {self.workers}")
        if self.kind == "slurm" and not self.slurm.partition:
            raise ValueError("executor.kind: slurm needs executor.slurm.partition")
        if self.start_method not in ("spawn", "fork", "forkserver"):
            raise ValueError(f"executor.start_method must be spawn, fork or forkserver, got '{self.start_method}'")


def build_executor(cfg: ExecutorConfig, pipeline: list, logging_dir: str | Path, *, tasks: int,
                   job_name: str = "zh-pretrain", depends=None):
    """The datatrove executor of ``cfg`` for ``pipeline`` split into ``tasks`` tasks.

    ``logging_dir`` holds datatrove's logs, stats and completion markers (keep it inside the run
    folder: it is what makes a stage resumable). ``depends`` is an executor of the same kind that
    must finish first (Slurm: a job dependency; local and Ray: run before this one).
    """
    cfg.validate()
    if tasks < 1:
        raise ValueError(f"an executor needs at least one task, got {tasks}")
    logging_dir = str(logging_dir)
    workers = cfg.workers if cfg.workers == -1 else min(cfg.workers, tasks)
    if cfg.kind == "local":
        from datatrove.executor import LocalPipelineExecutor

        return LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=workers, logging_dir=logging_dir,
                                     depends=depends, skip_completed=cfg.skip_completed,
                                     start_method=cfg.start_method)
    if cfg.kind == "slurm":
        import sys

        from datatrove.executor import SlurmPipelineExecutor

        s = cfg.slurm
        venv = s.venv_path or (sys.prefix if sys.prefix != sys.base_prefix else None)
        return SlurmPipelineExecutor(pipeline=pipeline, tasks=tasks, time=s.time, partition=s.partition,
                                     cpus_per_task=s.cpus_per_task, mem_per_cpu_gb=s.mem_per_cpu_gb,
                                     workers=cfg.workers, job_name=job_name, qos=s.qos,
                                     env_command=s.env_command or None, venv_path=venv,
                                     sbatch_args=dict(s.sbatch_args) or None, depends=depends,
                                     logging_dir=logging_dir, skip_completed=cfg.skip_completed,
                                     slurm_logs_folder=s.slurm_logs_folder or None)
    from datatrove.executor.ray import RayPipelineExecutor

    _ray_init(cfg.ray)
    r = cfg.ray
    return RayPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=workers, depends=depends,
                               skip_completed=cfg.skip_completed, logging_dir=logging_dir,
                               cpus_per_task=r.cpus_per_task, mem_per_cpu_gb=r.mem_per_cpu_gb)


def _ray_init(opts: RayOptions) -> None:
    """Join (``address``) or start a Ray instance once per process; a clear error without ``ray``."""
    try:
        import ray
    except ImportError as e:  # ray is an optional, large dependency
        from pipeline.errors import UserError

        raise UserError("executor.kind: ray needs the ray package (pip install 'ray>=2.40')") from e
    if not ray.is_initialized():
        ray.init(address=opts.address or None, include_dashboard=False, log_to_driver=False,
                 ignore_reinit_error=True)


def completed_tasks(logging_dir: str | Path) -> set[int]:
    """Ranks with a datatrove completion marker under ``logging_dir`` (what a resume will skip)."""
    d = Path(logging_dir) / "completions"
    return {int(p.name) for p in d.iterdir() if p.name.isdigit()} if d.is_dir() else set()
