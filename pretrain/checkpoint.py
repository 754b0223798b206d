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

A checkpoint is built in ``.tmp-step-N`` and renamed into place; then ``latest`` (a one-line text
file naming the folder) is replaced atomically and older folders beyond ``keep_last`` are removed. A
crash at any point leaves the previous checkpoint complete and ``latest`` pointing at it.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.errors import UserError
from pipeline.runs import atomic_write_json, atomic_write_text

STEP_RE = re.compile(r"^step-(\d+)$")


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
    return torch.load(path, map_location="cpu", weights_only=True)


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

    def _barrier(self) -> None:
        if self.acc is not None:
            self.acc.wait_for_everyone()

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

    def latest(self) -> Path | None:
        """The folder ``latest`` names (if complete), else the newest complete folder, else ``None``."""
        ptr = self.root / "latest"
        if ptr.is_file():
            p = self.root / ptr.read_text(encoding="utf-8").strip()
            if (p / "state.json").is_file():
                return p
        done = self.complete()
        return done[-1] if done else None

    # ---- save ----------------------------------------------------------------------------------
    def save(self, step: int, objective: torch.nn.Module, optimizer, scheduler, state: dict,
             scaler=None) -> Path:
        """Write ``step-N`` (all processes must call this). ``objective`` is the unwrapped module."""
        final = self.root / f"step-{step}"
        tmp = self.root / f".tmp-step-{step}"
        if self.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in self.root.glob(".tmp-step-*"):  # left behind by an interrupted write
                shutil.rmtree(stale, ignore_errors=True)
            tmp.mkdir()
        self._barrier()
        if _sharded(self.acc):
            self.acc.save_state(str(tmp / "accelerate"))
        torch.save(rng_state(), tmp / f"rng-{self.rank}.pt")
        self._barrier()
        if self.is_main:
            if not _sharded(self.acc):
                from safetensors.torch import save_model

                save_model(objective, str(tmp / "model.safetensors"))
                torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            if scaler is not None:
                torch.save(scaler.state_dict(), tmp / "scaler.pt")
            atomic_write_json(tmp / "state.json", {**state, "step": step})  # last: marks completeness
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
        self._barrier()
        return final

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
        if _sharded(self.acc):
            self.acc.load_state(str(path / "accelerate"))
        else:
            from safetensors.torch import load_model

            missing, unexpected = load_model(objective, str(path / "model.safetensors"), strict=False)
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
