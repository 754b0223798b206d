"""The shipped model: a Hugging Face folder + tokenizer files + ``pretrain_meta.json``.

``save_export(objective, out_dir, ctx, meta_extra)`` is the one entry point, usable by any
objective. It calls ``objective.export()`` (a ``transformers.PreTrainedModel``), saves it with
safetensors, copies the tokenizer files from the primary vocabulary folder, copies
``objective.export_files()`` (modelling code of exports whose config carries ``auto_map``; they
then need ``trust_remote_code``), and writes ``pretrain_meta.json`` (fields: docs/contracts.md).
The folder is built under a temporary name and renamed into place (``pipeline.runs.atomic_dir``),
so ``export/model.safetensors`` appears only with a complete export.

Reading an export is ``pretrain.exports.load_export`` (model, tokenizer, special ids, typed
``ExportMeta``), which refuses pickles and code the user did not opt into.
"""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import UserError
from pipeline.runs import atomic_dir
from pretrain.exports import ExportMeta, load_export  # noqa: F401  (load_export: the reader side)
from pretrain.objectives.base import Objective, ObjectiveContext

# files of a vocabulary folder that are not part of a tokenizer
_NOT_TOKENIZER = {"stats.json"}


def hardware() -> str:
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        return f"{n}x {torch.cuda.get_device_name()}"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def tokenizer_files(vocab_dir: str | Path) -> list[Path]:
    d = Path(vocab_dir)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.is_file() and p.name not in _NOT_TOKENIZER and not p.name.startswith("."))


def _vocab_trust_remote_code(vocab_dir: str | Path) -> bool:
    from tokenization.schema import VocabStats

    try:
        return VocabStats.load(vocab_dir).trust_remote_code
    except (OSError, UserError):  # no or unreadable stats: the folder is not a pipeline vocabulary
        return False


def make_shareable(folder: str | Path) -> None:
    """Give ``folder`` and everything in it the modes a normal ``mkdir``/``open`` would: directories
    ``0o777``, files ``0o666`` (executables ``0o777``), minus the process umask -- 0755/0644 under
    the usual umask 022. Temporary names (``mkdtemp``/``mkstemp``: 0700/0600) would otherwise make
    an export or published folder unreadable for the rest of the group on a shared machine."""
    mask = os.umask(0)
    os.umask(mask)
    root = Path(folder)
    for p in [root, *root.rglob("*")]:
        if p.is_symlink():
            continue
        if p.is_dir():
            os.chmod(p, 0o777 & ~mask)
        else:
            os.chmod(p, (0o777 if p.stat().st_mode & 0o100 else 0o666) & ~mask)


def save_export(objective: Objective, out_dir: str | Path, ctx: ObjectiveContext,
                meta_extra: dict[str, Any] | None = None, state_dict: dict | None = None) -> Path:
    """Write the export folder; ``state_dict`` (optional) is the *objective's* full state dict, for
    sharded runs (FSDP/DeepSpeed) where the module's own tensors are shards."""
    model = objective.export()
    sd = None
    if state_dict is not None:
        prefix = next((n + "." for n, m in objective.named_modules() if m is model and n), "")
        sd = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    out_dir = Path(out_dir)
    vocab = ctx.vocab
    with atomic_dir(out_dir) as tmp:
        for f in tokenizer_files(vocab.path):
            shutil.copy2(f, tmp / f.name)
        code = [Path(p) for p in objective.export_files()]
        for f in code:
            shutil.copy2(f, tmp / f.name)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Writing model shards" bar for a one-file model
        model.save_pretrained(tmp, safe_serialization=True, state_dict=sd)
        has_auto_map = bool(getattr(model.config, "auto_map", None))
        meta = {
            "objective": objective.name,
            "model_type": objective.model_type,
            "vocab_kind": vocab.kind,
            "vocab_path": str(vocab.path),
            "steps": 0,
            "tokens_seen": 0,
            "trust_remote_code": bool(code) or has_auto_map or _vocab_trust_remote_code(vocab.path),
            "finetune_adapter": objective.finetune_adapter,
            "train_seconds": 0.0,
            "hardware": hardware(),
            "final_eval": {},
        }
        meta.update(objective.export_meta())
        meta.update(meta_extra or {})
        ExportMeta.from_dict(meta).save(tmp)  # typed: pretrain.exports.ExportMeta
        make_shareable(tmp)
    return out_dir
