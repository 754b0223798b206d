"""The tokenization stage's work as tasks of a datatrove executor (``executor:`` in the config).

Segmentation, the vocabulary counts and the shard writer each split their work into tasks, one
per corpus shard of a split (task ``r`` = the ``r``-th shard in name order), and hand them to
:func:`pipeline.executors.build_executor`: the local executor by default, Slurm or Ray from the
same config. A task writes only its own files (atomically, the final name last), so

* tasks never share state and the output does not depend on the number of workers;
* datatrove writes a completion marker per task (``LOGGING/completions/NNNNN``) and a re-launch
  skips completed tasks: a killed stage resumes by task. The stage also checks each task's
  output before launching: a marker whose output is missing or stale (corpus shard or
  vocabulary changed) is removed, so that task runs again.

With ``executor.kind: slurm`` the tasks are submitted as an sbatch array and the command returns:
run the same command again once the jobs have finished; every task is then complete and the stage
goes on to its merge (counts) or ``meta.json`` (shards).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from pipeline.errors import UserError
from pipeline.executors import ExecutorConfig, build_executor, completed_tasks
from pipeline.log import get_logger

log = get_logger("tokenization")


class Submitted(Exception):
    """Tasks were handed to a batch scheduler (Slurm); the stage finishes on the next launch."""


@dataclass
class TaskStep:
    """A datatrove pipeline step: calls ``fn(rank, *args)`` (``fn`` a module-level function, so the
    step pickles for worker processes, Slurm and Ray)."""

    fn: Callable
    args: tuple

    def __repr__(self) -> str:  # datatrove logs the pipeline: the name, not every argument
        return f"TaskStep({self.fn.__module__}.{self.fn.__name__})"

    def __call__(self, data=None, rank: int = 0, world_size: int = 1):
        self.fn(rank, *self.args)


def run_tasks(cfg: ExecutorConfig, fn: Callable, args: tuple, n_tasks: int, logging_dir: str | Path,
              done: Sequence[bool], job_name: str) -> int:
    """Run ``fn(rank, *args)`` for every ``rank < n_tasks`` whose output is not ``done``.

    Returns the number of tasks that ran. Raises :class:`Submitted` after a Slurm submission and
    :class:`UserError` when a task ended without its completion marker.
    """
    logging_dir = Path(logging_dir)
    marks = logging_dir / "completions"
    for r in range(n_tasks):
        if not done[r]:
            (marks / f"{r:05d}").unlink(missing_ok=True)  # stale marker: its output is missing
    todo = [r for r in range(n_tasks) if not done[r]]
    if not todo:
        return 0
    # a task already complete but without a marker (e.g. made before this executor existed) is
    # marked, so only the missing ones run
    marks.mkdir(parents=True, exist_ok=True)
    for r in range(n_tasks):
        if done[r] and not (marks / f"{r:05d}").exists():
            (marks / f"{r:05d}").touch()
    ex = build_executor(cfg, [TaskStep(fn, args)], logging_dir, tasks=n_tasks, job_name=job_name)
    ex.run()
    if cfg.kind == "slurm":
        raise Submitted(f"{job_name}: {len(todo)} task(s) submitted to Slurm (logs: {logging_dir}); run the same "
                        f"command again when they have finished")
    missing = sorted(set(range(n_tasks)) - completed_tasks(logging_dir))
    if missing:
        raise UserError(f"{job_name}: task(s) {missing[:10]} did not complete; see {logging_dir}/logs/")
    return len(todo)

