"""User-facing errors: a clear one-line message and exit code 2, never a traceback.

Besides ``UserError``, ``main_guard`` turns the operating-system errors that are faults of the
machine rather than bugs (a full disk, a quota, a read-only filesystem, a permission) into one
line and exit 2, wherever in the exception chain they are (``raise X from oserror`` included).
"""

from __future__ import annotations

import errno
import functools
import os
import shutil
import sys
from typing import Callable


class UserError(Exception):
    """A mistake in the user's input (config, path, data). Printed without a traceback."""


_ENVIRONMENT = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _free_space(path: str | None) -> str:
    """``; X free on that filesystem`` for the nearest existing folder of ``path`` ('' if unknown)."""
    if not path:
        return ""
    p = os.path.abspath(path)
    while p and not os.path.exists(p):
        parent = os.path.dirname(p)
        if parent == p:
            return ""
        p = parent
    try:
        return f"; {_human(shutil.disk_usage(p).free)} free on the filesystem of {p}"
    except OSError:
        return ""


def environment_error(exc: BaseException) -> OSError | None:
    """The first full-disk / quota / read-only / permission ``OSError`` in ``exc``'s chain."""
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _ENVIRONMENT:
            return e
        e = e.__cause__ or e.__context__
    return None


def describe_environment_error(e: OSError) -> str:
    """One line: what failed, on which path, and (for a full disk or quota) the free space."""
    what = _ENVIRONMENT[e.errno]
    path = e.filename if isinstance(e.filename, str) else (os.fsdecode(e.filename) if e.filename else None)
    where = f": {path}" + (f" -> {e.filename2}" if e.filename2 else "") if path else ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = _free_space(path) + "; free some space (or point runs_root elsewhere) and run the command again"
    elif e.errno == errno.EROFS:
        hint = "; write the outputs elsewhere (runs_root=...)"
    else:
        hint = "; check the owner and mode of the file and its folder"
    return f"{what}{where}{hint}"


def main_guard(fn: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a stage's ``main``: UserError, a full disk or a permission error -> one line on stderr
    and exit code 2; Ctrl-C -> 130. Every other exception keeps its traceback (a bug)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs) -> int:
        try:
            return int(fn(*args, **kwargs) or 0)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except Exception as e:
            env = environment_error(e)
            if env is None:
                raise
            print(f"error: {describe_environment_error(env)}", file=sys.stderr)
            return 2

    return wrapper
