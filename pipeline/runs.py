"""Run folders and crash-safe writes.

Every output a later stage reads is written to a temporary name in the same folder and renamed
into place (``os.replace`` is atomic on one filesystem), so an interrupted run never leaves a
half-written file under the final name. Folders are published the same way (``atomic_dir``).

Names that become folders (``run``, ``name``, model names) are one path component
(``[A-Za-z0-9._-]+``, not ``.``/``..``; :func:`check_name`), so no name leaves ``runs_root``.
``atomic_dir`` writes a marker file (``.pipeline-dir``) into every folder it creates and replaces
only such folders (or empty ones): a folder the pipeline did not write is never removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from pipeline.errors import UserError

RUNS_ROOT = Path(os.environ.get("PIPELINE_RUNS", "runs"))
NAME_RE = re.compile(r"[A-Za-z0-9._-]+")
DIR_MARKER = ".pipeline-dir"  # written by atomic_dir into every folder it creates


def check_name(value: object, what: str = "name") -> str:
    """``value`` if it is one path component (``[A-Za-z0-9._-]+``, not ``.``/``..``), else a
    :class:`UserError` naming ``what``."""
    if not isinstance(value, str) or not NAME_RE.fullmatch(value) or value in (".", ".."):
        raise UserError(f"{what} {value!r} is not a valid name: use one path component of letters, digits, "
                        "'.', '_' and '-' (not '.' or '..'; no '/')")
    return value


def run_path(runs_root: str | Path, run: str, *parts: str) -> Path:
    """``runs_root/run/part/...`` with ``run`` and every part checked by :func:`check_name`."""
    check_name(run, "run")
    for p in parts:
        check_name(p, "folder name")
    return Path(runs_root, run, *parts)


def run_dir(name: str, *parts: str, root: str | Path | None = None) -> Path:
    """``runs/NAME/part/...`` (created)."""
    p = run_path(root if root is not None else RUNS_ROOT, name, *parts)
    p.mkdir(parents=True, exist_ok=True)
    return p


def _tmp_sibling(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=indent, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary sibling for writing; rename onto ``path`` only if the block succeeds."""
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Build a folder under a temporary name; on success replace ``path`` with it.

    If ``path`` exists it is moved aside first and removed after the rename, so at every instant
    either the old or the new complete folder is at ``path`` (or, between two renames, neither,
    which readers treat as "not there" rather than "half there"). The new folder carries the
    marker ``.pipeline-dir``; an existing ``path`` is replaced only if it carries the marker too
    (or is an empty folder), so a folder the pipeline did not create is never removed.
    """
    path = Path(path)
    _check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        (tmp / DIR_MARKER).write_text("written by the pipeline (pipeline.runs.atomic_dir); it may replace "
                                      "this folder\n", encoding="utf-8")
        yield tmp
        old = None
        _check_replaceable(path)  # again: something may have appeared meanwhile
        if path.exists():
            old = path.with_name(f".{path.name}.old.{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _check_replaceable(path: Path) -> None:
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise UserError(f"{path}: exists and is not a folder the pipeline wrote; refusing to replace it "
                        "(move it away or choose another run/name)")
    if path.is_dir() and not (path / DIR_MARKER).is_file() and any(path.iterdir()):
        raise UserError(f"{path}: exists and was not written by the pipeline (no {DIR_MARKER} file); refusing "
                        "to replace it (move it away or choose another run/name)")


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
