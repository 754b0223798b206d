"""Crash-safe training checkpoints.

Layout of ``checkpoints/step-N/``:

* ``model.safetensors``  the objective's full state (backbone + extra heads), tied weights handled
  by ``safetensors.torch.save_model``;
* ``optimizer.pt``, ``scheduler.pt``, ``scaler.pt`` (fp16 only)  ``torch.save`` of state dicts, read
  back with ``torch.load(..., weights_only=True)``;
* ``rng-R.pt``  every RNG of process R (python, numpy, torch CPU, CUDA), as plain tensors/lists;
* ``state.json``  step, loader position, tokens seen, ... ; written last: a folder without it is
  incomplete.

Under FSDP or DeepSpeed the model and optimizer are sharded, so their part is written by
``accelerator.save_state`` into ``accelerate/`` instead of the two files above.

* ``manifest.json``  size and sha256 of every other file of the folder (all ranks' files included);
  written last, after all processes have written their parts.

A checkpoint is built in ``.tmp-step-N`` and renamed into place; then ``latest`` (a one-line text
file naming the folder) is replaced atomically and older folders beyond ``keep_last`` are removed. A
crash at any point leaves the previous checkpoint complete and ``latest`` pointing at it.

Faults (docs/reliability.md):

* resume (``resume_point``) verifies the manifest of the checkpoint ``latest`` names; a folder whose
  files were truncated or overwritten is renamed ``damaged-step-N`` (kept for inspection) and the
  previous intact checkpoint is used, with a warning; if none is intact the run stops with one line
  listing each checkpoint and what is wrong with it. Folders written before manifests existed are
  loaded unverified (with a warning);
* a failed write (full disk, permissions) removes the partial ``.tmp-step-N`` folder and stops with
  one line: the cause (for a full disk: free and needed space) and which checkpoint is intact;
* ``schedule_params`` (steps, lr, warmup, schedule, min lr) are stored in ``state.json``; resuming
  with other values is refused unless ``train.extend=true`` (``check_schedule``);
* ``NonFiniteGuard`` stops a run after ``train.max_nonfinite_steps`` consecutive optimizer steps with
  a non-finite loss, and no checkpoint is written right after such a step;
* ``clean_stale`` removes temporary files an interrupted run left behind (``.tmp-step-*``,
  ``.latest.*.tmp``, ``.export.*.tmp``, ...) when a run starts.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.errors import UserError
from pipeline.log import get_logger
from pipeline.runs import atomic_write_json, atomic_write_text

log = get_logger("pretrain")

STEP_RE = re.compile(r"^step-(\d+)$")
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
DAMAGED_PREFIX = "damaged-"


def _sharded(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator is not None and accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_rest": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, pos, has_gauss, cached = state["numpy_rest"]
    np.random.set_state((name, state["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated / overwritten file of an unverified (pre-manifest) checkpoint
        raise UserError(f"{path}: unreadable checkpoint file ({_one_line(e)})") from None


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


# ---- manifest ------------------------------------------------------------------------------------
def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_manifest(folder: Path, step: int) -> None:
    """Size and sha256 of every file under ``folder`` (written last: it marks the folder complete)."""
    files = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": file_sha256(p)}
             for p in _files(folder)}
    atomic_write_json(folder / MANIFEST, {"format": MANIFEST_FORMAT, "step": step, "files": files})


def verify(folder: Path) -> str | None:
    """``None`` if ``folder`` is an intact checkpoint, else what is wrong (one line). A folder without a
    manifest (written before manifests existed) is accepted with a warning: it cannot be checked."""
    folder = Path(folder)
    try:
        json.loads((folder / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return f"state.json unreadable ({_one_line(e)})"
    mf = folder / MANIFEST
    if not mf.is_file():
        log.warning("%s has no %s (written by an older version): loading it unverified", folder, MANIFEST)
        return None
    try:
        files = json.loads(mf.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{MANIFEST} unreadable ({_one_line(e)})"
    for rel, want in files.items():
        p = folder / rel
        if not p.is_file():
            return f"{rel} is missing"
        size = p.stat().st_size
        if size != want["size"]:
            return f"{rel} has {size} bytes, the manifest says {want['size']} (truncated or overwritten)"
        if file_sha256(p) != want["sha256"]:
            return f"{rel} does not match its sha256 in the manifest (bytes overwritten)"
    return None


def _dir_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def _disk_full(e: BaseException) -> bool:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return True
    # torch.save's zip writer reports a short write as "unexpected pos A vs B" / "PytorchStreamWriter
    # failed writing file", without an errno
    text = str(e)
    return isinstance(e, RuntimeError) and ("unexpected pos" in text or "failed writing file" in text
                                            or "No space left" in text)


# ---- stale temporaries ---------------------------------------------------------------------------
STALE_PATTERNS = {
    "checkpoints": (".tmp-step-*", ".old-step-*", ".latest.*.tmp", ".state.json.*.tmp"),
    ".": (".export.*.tmp", ".export.old.*", ".summary.json.*.tmp", ".config.yaml.*.tmp"),
}


def clean_stale(out: Path) -> list[Path]:
    """Remove the temporary files and folders an interrupted run left in ``out`` (main process, at
    start; the run folder must not be in use by another run). Returns what was removed."""
    removed = []
    for sub, patterns in STALE_PATTERNS.items():
        d = Path(out) / sub
        if not d.is_dir():
            continue
        for pat in patterns:
            for p in d.glob(pat):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                removed.append(p)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted run: %s", len(removed),
                 ", ".join(sorted(p.name for p in removed)[:5]))
    return removed


# ---- schedule ------------------------------------------------------------------------------------
SCHEDULE_KEYS = ("steps", "lr", "warmup_steps", "schedule", "min_lr_ratio")


def schedule_params(t) -> dict[str, Any]:
    """The settings that define the learning-rate schedule (stored in ``state.json``)."""
    return {k: getattr(t, k) for k in SCHEDULE_KEYS}


def check_schedule(state: dict, t, path: Path) -> bool:
    """Compare the schedule a checkpoint was trained with against ``t``. Equal: ``False``. Different:
    ``UserError`` unless ``t.extend`` (then ``True``: the caller switches to the new schedule)."""
    saved = state.get("schedule")
    if not saved:  # written before schedules were stored: nothing to compare
        return False
    now = schedule_params(t)
    diff = [f"train.{k}={saved.get(k)!r} -> {now[k]!r}" for k in SCHEDULE_KEYS if saved.get(k) != now[k]]
    if not diff:
        return False
    if not getattr(t, "extend", False):
        raise UserError(
            f"{path}: this checkpoint was trained with another learning-rate schedule ({', '.join(diff)}); "
            "resuming would splice two schedules. Use the checkpoint's values, or set train.extend=true to "
            "continue under the new schedule (the run then no longer matches a fresh run with these settings)")
    log.warning("train.extend=true: continuing %s under a new schedule (%s); the run no longer matches a "
                "fresh run with these settings", path, ", ".join(diff))
    return True


def apply_schedule(optimizer, scheduler, t, lr_factor) -> None:
    """After loading a checkpoint under ``train.extend``: base lr and current lr from ``t``."""
    step = scheduler.last_epoch
    scheduler.base_lrs = [t.lr for _ in optimizer.param_groups]
    lrs = [t.lr * lr_factor(step, t) for _ in optimizer.param_groups]
    for g, lr in zip(optimizer.param_groups, lrs):
        g["initial_lr"] = t.lr
        g["lr"] = lr
    scheduler._last_lr = lrs


# ---- non-finite losses ---------------------------------------------------------------------------
class NonFiniteGuard:
    """Counts consecutive optimizer steps whose loss is NaN/inf, on the device (no host sync per step);
    ``check`` (at log, checkpoint and final steps, on every process) syncs and stops the run once
    ``limit`` consecutive steps were non-finite. ``limit`` 0 disables the stop (not the checkpoint skip)."""

    def __init__(self, limit: int, device: torch.device):
        self.limit = limit
        # device tensors only, updated without reading them back (no host-device sync per step)
        self.bad = torch.zeros((), dtype=torch.bool, device=device)  # any non-finite micro-step loss this step
        self.streak = torch.zeros((), dtype=torch.int64, device=device)  # consecutive non-finite steps so far
        self.worst = torch.zeros((), dtype=torch.int64, device=device)  # longest streak since the last check
        self.steps = torch.zeros((), dtype=torch.int64, device=device)  # end_step calls so far
        self.first_bad = torch.zeros((), dtype=torch.int64, device=device)  # value of ``steps`` at a streak's start
        self.offset: int | None = None  # optimizer step before the first end_step call

    def observe(self, loss: torch.Tensor) -> None:
        self.bad |= ~torch.isfinite(loss.detach()).all()

    def end_step(self, step: int) -> None:
        """Call after optimizer step ``step`` (1-based)."""
        if self.offset is None:
            self.offset = step - 1
        self.steps += 1
        self.streak = (self.streak + 1) * self.bad
        self.worst = torch.maximum(self.worst, self.streak)
        self.first_bad = torch.where(self.streak == 1, self.steps, self.first_bad)
        self.bad.zero_()

    def check(self, acc, step: int, ckpt: "Checkpointer | None" = None) -> bool:
        """Sync (every process must call it at the same steps); raise ``UserError`` when the limit is
        reached, naming the intact checkpoint of ``ckpt``; return whether the last step's loss was finite
        (a checkpoint is written only then)."""
        vec = torch.stack([self.streak, self.worst, self.first_bad + (self.offset or 0)])
        if acc is not None and acc.num_processes > 1:
            vec = _max_over_processes(acc, vec)
        streak, worst, first = (int(x) for x in vec.tolist())
        self.worst = torch.zeros_like(self.worst)
        if self.limit and worst >= self.limit:
            raise UserError(
                f"step {step}: the training loss was NaN/inf for {worst} consecutive optimizer step(s) (from step "
                f"{first}; train.max_nonfinite_steps={self.limit}); stopping without export; "
                f"{ckpt.describe_intact() if ckpt is not None else 'no checkpoint'}. Lower "
                "train.lr, raise train.warmup_steps or use bf16 instead of fp16, then resume (train.extend=true "
                "if you change the schedule)")
        return streak == 0


def _max_over_processes(acc, vec: torch.Tensor) -> torch.Tensor:
    from accelerate.utils import gather

    return gather(vec.unsqueeze(0)).amax(dim=0)


# ---- signals during the final export ---------------------------------------------------------------
class Interrupted(BaseException):
    """Raised by ``InterruptToAbort`` inside the guarded block (not an ``Exception``: nothing catches it
    by accident, ``finally`` blocks such as ``atomic_dir``'s cleanup still run)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class SignalHandlers:
    """Base of the context managers that handle SIGTERM / SIGINT inside a block with
    :meth:`_handle` and restore the previous handlers on exit (outside the main thread, where
    handlers cannot be set, nothing is installed)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def _handle(self, signum, frame):  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def __enter__(self):
        self._old = {}
        for s in self.SIGNALS:
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        return False


class InterruptToAbort(SignalHandlers):
    """SIGTERM / SIGINT inside the block raise ``Interrupted``: the export in progress is abandoned (its
    temporary folder removed), the caller exits 143 / 130."""

    @staticmethod
    def _handle(signum, frame):
        raise Interrupted(signum)


# ---- the checkpointer ------------------------------------------------------------------------------
class Checkpointer:
    def __init__(self, root: str | Path, accelerator=None, keep_last: int = 2):
        self.root = Path(root)
        self.acc = accelerator
        self.keep_last = keep_last

    # ---- helpers -------------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.acc is None or self.acc.is_main_process

    @property
    def rank(self) -> int:
        return 0 if self.acc is None else self.acc.process_index

    @property
    def _multi(self) -> bool:
        return self.acc is not None and self.acc.num_processes > 1

    def _barrier(self) -> None:
        if self.acc is not None:
            self.acc.wait_for_everyone()

    def _agree(self, err: str | None) -> str | None:
        """A barrier that also shares errors: the first error of any process, or ``None``."""
        if not self._multi:
            return err
        from accelerate.utils import gather_object

        errs = [e for e in gather_object([err]) if e]
        return errs[0] if errs else None

    def _broadcast(self, obj: Any) -> Any:
        if not self._multi:
            return obj
        from accelerate.utils import broadcast_object_list

        box = [obj]
        broadcast_object_list(box, from_process=0)
        return box[0]

    def complete(self) -> list[Path]:
        """Complete checkpoint folders, oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        for p in self.root.iterdir():
            m = STEP_RE.match(p.name)
            if m and p.is_dir() and (p / "state.json").is_file():
                found.append((int(m.group(1)), p))
        return [p for _, p in sorted(found)]

    def _pointer(self) -> Path | None:
        ptr = self.root / "latest"
        if ptr.is_file():
            try:
                p = self.root / ptr.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError):
                return None
            if STEP_RE.match(p.name) and (p / "state.json").is_file():
                return p
        return None

    def latest(self) -> Path | None:
        """The folder ``latest`` names (if complete), else the newest complete folder, else ``None``
        (unverified; ``resume_point`` verifies)."""
        p = self._pointer()
        if p is not None:
            return p
        done = self.complete()
        return done[-1] if done else None

    def describe_intact(self) -> str:
        """One phrase naming the checkpoint a resume would use (for error messages)."""
        p = self.latest()
        return (f"checkpoint {p.name} is intact (checkpoints/latest names it)" if p is not None
                else "no checkpoint has been written yet")

    # ---- resume point ------------------------------------------------------------------------------
    def resume_point(self) -> Path | None:
        """The newest intact checkpoint (verified against its manifest by the main process; every process
        gets the same answer), or ``None`` when there is none. Damaged folders are renamed
        ``damaged-step-N`` with a warning; ``UserError`` when checkpoints exist but none is intact."""
        choice, err = None, None
        if self.is_main:
            try:
                choice = self._choose()
            except UserError as e:
                err = str(e)
        choice, err = self._broadcast((None if choice is None else str(choice), err))
        if err:
            raise UserError(err)
        return None if choice is None else Path(choice)

    def _choose(self) -> Path | None:
        first = self._pointer()
        rest = [p for p in reversed(self.complete()) if p != first]
        candidates = ([first] if first is not None else []) + rest
        damaged: list[tuple[Path, str]] = []
        for p in candidates:
            reason = verify(p)
            if reason is None:
                if damaged:
                    self._quarantine(damaged, p)
                return p
            damaged.append((p, reason))
        if damaged:
            listing = "; ".join(f"{p.name}: {r}" for p, r in damaged)
            raise UserError(f"{self.root}: no intact checkpoint to resume from ({listing}); move the folder away "
                            "to start from scratch")
        return None

    def _quarantine(self, damaged: list[tuple[Path, str]], good: Path) -> None:
        kept = []
        for p, reason in damaged:
            dst = p.with_name(DAMAGED_PREFIX + p.name)
            n = 1
            while dst.exists():
                n += 1
                dst = p.with_name(f"{DAMAGED_PREFIX}{p.name}.{n}")
            os.replace(p, dst)
            kept.append(dst.name)
            log.warning("checkpoint %s is damaged: %s", p, reason)
        atomic_write_text(self.root / "latest", good.name + "\n")
        log.warning("resuming from the previous intact checkpoint %s; the damaged folder(s) are kept as %s "
                    "(delete them when done inspecting)", good.name, ", ".join(kept))

    # ---- save ----------------------------------------------------------------------------------
    def save(self, step: int, objective: torch.nn.Module, optimizer, scheduler, state: dict,
             scaler=None) -> Path:
        """Write ``step-N`` (all processes must call this). ``objective`` is the unwrapped module.
        A failed write removes the partial folder and raises ``UserError`` on every process."""
        final = self.root / f"step-{step}"
        tmp = self.root / f".tmp-step-{step}"
        err = None
        if self.is_main:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                for stale in self.root.glob(".tmp-step-*"):  # left behind by an interrupted write
                    shutil.rmtree(stale, ignore_errors=True)
                tmp.mkdir()
            except OSError as e:
                err = self._write_failed(e, step, tmp)
        self._raise(self._agree(err))
        try:
            if _sharded(self.acc):
                self.acc.save_state(str(tmp / "accelerate"))
            torch.save(rng_state(), tmp / f"rng-{self.rank}.pt")
        except (OSError, RuntimeError) as e:
            err = self._write_failed(e, step, tmp, cleanup=False)
        err = self._agree(err)
        if err is not None:
            if self.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
            raise UserError(err)
        if self.is_main:
            try:
                if not _sharded(self.acc):
                    from safetensors.torch import save_model

                    save_model(objective, str(tmp / "model.safetensors"))
                    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
                torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
                if scaler is not None:
                    torch.save(scaler.state_dict(), tmp / "scaler.pt")
                atomic_write_json(tmp / "state.json", {**state, "step": step})
                write_manifest(tmp, step)  # last: marks completeness
                if final.exists():  # re-saving the same step (e.g. a resumed run stopped again at once)
                    old = self.root / f".old-step-{step}"
                    shutil.rmtree(old, ignore_errors=True)
                    os.replace(final, old)
                    os.replace(tmp, final)
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    os.replace(tmp, final)
                atomic_write_text(self.root / "latest", final.name + "\n")
                self._prune(final)
            except (OSError, RuntimeError) as e:
                if not isinstance(e, OSError) and not _disk_full(e):
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
                err = self._write_failed(e, step, tmp)
        self._raise(self._agree(err))
        return final

    @staticmethod
    def _raise(err: str | None) -> None:
        if err is not None:
            raise UserError(err)

    def _write_failed(self, e: BaseException, step: int, tmp: Path, cleanup: bool = True) -> str:
        """The one-line message for a failed checkpoint write; removes the partial folder (main)."""
        written = _dir_size(tmp)
        try:
            free = shutil.disk_usage(self.root if self.root.is_dir() else self.root.parent).free
        except OSError:
            free = None
        prev = self.latest()
        needed = _dir_size(prev) if prev is not None else 0
        if cleanup and self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        intact = self.describe_intact()
        if _disk_full(e):
            need = (f"a checkpoint needs about {human_bytes(needed)}" if needed
                    else f"{human_bytes(written)} were written before it failed")
            return (f"no space left on device writing checkpoint step-{step} in {self.root} "
                    f"({human_bytes(free) if free is not None else 'unknown'} free, {need}); the partial folder "
                    f"was removed; {intact}: free space and run the same command to resume")
        return (f"cannot write checkpoint step-{step} in {self.root} ({_one_line(e)}); the partial folder was "
                f"removed; {intact}: fix the cause and run the same command to resume")

    def export_failed(self, e: OSError, export_dir: Path) -> str:
        """The one-line message for an export that failed to write (its temporary folder is already
        removed by ``atomic_dir``)."""
        try:
            free = human_bytes(shutil.disk_usage(export_dir.parent).free)
        except OSError:
            free = "unknown"
        prev = self.latest()
        weights = prev / "model.safetensors" if prev is not None else None
        need = (f", the weights alone need {human_bytes(weights.stat().st_size)}"
                if weights is not None and weights.is_file() else "")
        cause = "no space left on device" if _disk_full(e) else f"cannot write ({_one_line(e)})"
        return (f"{cause} writing the export {export_dir} ({free} free{need}); no export was written; "
                f"{self.describe_intact()}: fix the cause and run the same command to export")

    def _prune(self, keep: Path) -> None:
        done = [p for p in self.complete() if p != keep]
        excess = len(done) + 1 - self.keep_last
        for p in done[:max(0, excess)]:
            shutil.rmtree(p, ignore_errors=True)

    # ---- load ----------------------------------------------------------------------------------
    def load(self, path: Path, objective: torch.nn.Module, optimizer, scheduler, scaler=None) -> dict:
        """Restore everything from ``path``; returns the saved ``state`` dict."""
        path = Path(path)
        try:
            state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{path / 'state.json'}: unreadable checkpoint state: {e}") from None
        written_sharded = (path / "accelerate").is_dir()
        if written_sharded != _sharded(self.acc):
            now = str(self.acc.distributed_type).rsplit(".", 1)[-1] if self.acc is not None else "NO"
            was = "FSDP/DeepSpeed (accelerate/ shards)" if written_sharded else \
                "one process or DDP (model.safetensors + optimizer.pt)"
            raise UserError(f"{path}: written by a {was} run, this run uses {now}; a checkpoint resumes only under "
                            "the same kind of strategy (any number of processes under DDP). Resume with the "
                            "original launcher config, or start a new run name")
        if written_sharded:
            self.acc.load_state(str(path / "accelerate"))
        else:
            from safetensors.torch import load_model

            try:
                missing, unexpected = load_model(objective, str(path / "model.safetensors"), strict=False)
            except Exception as e:  # an unverified (pre-manifest) file that is truncated or overwritten
                raise UserError(f"{path / 'model.safetensors'}: unreadable checkpoint file ({_one_line(e)})") from None
            if unexpected or missing:
                raise UserError(
                    f"{path / 'model.safetensors'}: does not match the model built from the config "
                    f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}); "
                    "use another run name or delete the checkpoints"
                )
            optimizer.load_state_dict(_load(path / "optimizer.pt"))
        scheduler.load_state_dict(_load(path / "scheduler.pt"))
        if scaler is not None and (path / "scaler.pt").is_file():
            scaler.load_state_dict(_load(path / "scaler.pt"))
        rng = path / f"rng-{self.rank}.pt"
        if rng.is_file():
            set_rng_state(_load(rng))
        return state
