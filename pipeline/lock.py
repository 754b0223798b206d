"""One run of a stage per run folder at a time: an exclusive ``flock`` on a lock file.

    with stage_lock(Path(cfg.runs_root) / cfg.run, "corpus"):
        ...   # a second ``python -m corpora build`` of the same run exits 2 naming this pid

The lock file is ``{run folder}/.locks/{stage}.lock`` and holds the owner's pid (for the message
only: the lock itself is the kernel's ``flock``, released when the process ends in any way,
including ``kill -9``, so a lock is never stale). Lock files are left in place; removing them
would let a third process lock a different file of the same name.

Within one process the lock is re-entrant (a stage that calls another locked function of itself,
or a test that calls ``main`` twice); across processes it is exclusive. A forked child (a worker
pool) closes its inherited copy at once, so workers that outlive a killed holder never keep the
lock. ``flock`` is reliable on local filesystems; on NFS it depends on the server (Linux maps it
to POSIX locks).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from pathlib import Path
from typing import Iterator

from pipeline.errors import UserError

_HELD: dict[str, list] = {}  # lock file (resolved) -> [fd, depth] held by this process


def _close_in_child() -> None:
    """After a fork: drop the child's copies of held lock files (closing is not unlocking: the
    parent's lock stays; the child just no longer keeps it alive if the parent dies)."""
    for fd, _ in _HELD.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


def lock_path(folder: str | Path, stage: str) -> Path:
    if not re.fullmatch(r"[A-Za-z0-9._-]+", stage) or stage in (".", ".."):
        raise ValueError(f"lock stage name '{stage}' must be one path component")
    return Path(folder) / ".locks" / f"{stage}.lock"


def _owner(fd: int) -> str:
    """The pid written by the holder (it may not have written it yet: retry briefly)."""
    for _ in range(20):
        os.lseek(fd, 0, os.SEEK_SET)
        pid = os.read(fd, 64).decode("ascii", errors="replace").strip()
        if pid:
            return pid
        time.sleep(0.05)
    return "unknown"


def acquire(folder: str | Path, stage: str) -> Path:
    """Take the lock of ``stage`` in ``folder`` or raise ``UserError`` naming the holder's pid."""
    path = lock_path(folder, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = str(path.resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        return path
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _owner(fd)
        os.close(fd)
        raise UserError(f"{folder}: another '{stage}' run (pid {pid}) is using this folder "
                        f"(lock {path}); wait for it to finish or stop it, then run again") from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _HELD[key] = [fd, 1]
    return path


def release(folder: str | Path, stage: str) -> None:
    key = str(lock_path(folder, stage).resolve())
    held = _HELD.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] == 0:
        del _HELD[key]
        fd = held[0]
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextlib.contextmanager
def stage_lock(folder: str | Path, stage: str) -> Iterator[Path]:
    """Hold the exclusive lock of ``stage`` in the run folder ``folder`` for the block."""
    path = acquire(folder, stage)
    try:
        yield path
    finally:
        release(folder, stage)
