"""DeepSpeed and FSDP specifics of the trainer (``configs/accelerate/deepspeed_zero2.yaml``, ``fsdp.yaml``).

FSDP: accelerate wraps each module whose class is named in ``fsdp_transformer_layer_cls_to_wrap``
and raises when a named class is absent from the model, so one config naming ``BertLayer`` and
``LlamaDecoderLayer`` would fail for every model. :func:`configure_fsdp` keeps the names present in
the objective, or, with none configured, takes the inner models' ``_no_split_modules`` (the
objective itself is a plain ``nn.Module`` that has none).

DeepSpeed: under DeepSpeed, ``accelerator.clip_grad_norm_`` does nothing and returns ``None``: the engine clips
inside its own step (config key ``gradient_clipping``) and keeps the global gradient norm itself.
So the trainer writes ``train.clip`` into the DeepSpeed config before ``prepare`` and reads the norm
back from the engine for the ``grad_norm`` metric.

Tested here against small stand-ins for the plugin and the engine only (DeepSpeed is not a project
dependency and is not installed on the development machine); untested on a real DeepSpeed engine.
"""

from __future__ import annotations

from typing import Any

import torch


def configure_deepspeed(plugin: Any, micro_batch: int, clip: float) -> dict:
    """Set the micro-batch (no dataloader goes through ``prepare``) and ``gradient_clipping``
    (``train.clip``; 0 disables clipping, DeepSpeed's own meaning of 0) in ``plugin.deepspeed_config``."""
    cfg = plugin.deepspeed_config
    cfg["train_micro_batch_size_per_gpu"] = int(micro_batch)
    cfg["gradient_clipping"] = float(clip) if clip > 0 else 0.0
    return cfg


def engine_grad_norm(accelerator: Any) -> torch.Tensor | None:
    """The global gradient norm of the last DeepSpeed step (before clipping), or ``None`` when the
    accelerator has no DeepSpeed engine or the engine has no norm yet. A tensor is returned as is
    (no host-device synchronisation here; the trainer reads it at log steps)."""
    wrapped = getattr(accelerator, "deepspeed_engine_wrapped", None)
    engine = getattr(wrapped, "engine", None)
    if engine is None or not hasattr(engine, "get_global_grad_norm"):
        return None
    gn = engine.get_global_grad_norm()
    if gn is None:
        return None
    return gn.detach() if isinstance(gn, torch.Tensor) else torch.tensor(float(gn))


def configure_fsdp(plugin: Any, model: torch.nn.Module) -> list[str]:
    """Restrict ``plugin.transformer_cls_names_to_wrap`` to classes present in ``model`` (or take the
    inner transformers models' ``_no_split_modules`` when none is configured); return the names."""
    present = {type(m).__name__ for m in model.modules()}
    names = getattr(plugin, "transformer_cls_names_to_wrap", None)
    if isinstance(names, str):
        names = names.split(",")
    keep = [n.strip() for n in (names or []) if n.strip() in present]
    if not keep:  # none configured, or none of them in this model: the inner models' own choice
        keep = [n for m in model.modules() for n in (getattr(m, "_no_split_modules", None) or []) if n in present]
    keep = list(dict.fromkeys(keep))
    plugin.transformer_cls_names_to_wrap = keep or None
    return keep
