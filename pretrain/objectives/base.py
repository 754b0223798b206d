"""The objective contract and registry.

An objective owns its masking (``collate``), its extra heads and its loss (``forward``), and what
ships (``export``); nothing else. The trainer never looks at an objective's name: it asks the
registry for the class named by ``objective: NAME`` in the pre-training config, builds it with an
:class:`ObjectiveContext`, and then only calls the methods below.

Batch contract (what the loader hands to ``collate``), all numpy arrays with a leading batch axis:

* ``input_ids``   int64 [B, T]  primary stream (the stream named by ``data.kind``); position 0 is
  ``[CLS]``; documents inside a packed window are separated by ``[SEP]``; ``[PAD]`` only where a
  split is shorter than a window.
* ``word_start``  bool  [B, T]  1 where a token begins a segmented word (specials count as starts).
* ``char_len``    int16 [B, T]  characters covered by each token (0 for specials).
* ``special_mask`` bool [B, T]  ``[CLS]``/``[SEP]``/``[PAD]`` positions (never masked, never targets).
* ``attention_mask`` int64 [B, T]  1 for real tokens, 0 for padding.
* For objectives that read a second stream (``streams``), the same keys prefixed with the
  stream's kind and a dot (``sgt.input_ids`` [B, T2], ...), covering exactly the same characters as
  the primary window, padded on the right with the second vocabulary's ``[PAD]``. With extra
  streams the loader also gives ``vis_len`` / ``KIND.vis_len`` int16: each token's non-whitespace
  characters (the multi-vocabulary objectives align streams by these visible spans,
  ``tokenization/align.py``).

``collate`` must be vectorised torch (no Python loop over tokens) and draw all randomness from the
``generator`` it is given, which the trainer seeds from (seed, step, rank), so resuming reproduces
the masks exactly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from pipeline.errors import UserError
from pipeline.registry import register_in


@dataclass
class VocabInfo:
    """What an objective needs to know about one vocabulary (from its tokenizer folder)."""

    kind: str
    path: str
    size: int  # number of entries in the tokenizer (before padding to a multiple of 64)
    pad_id: int
    unk_id: int
    cls_id: int
    sep_id: int
    mask_id: int
    special_ids: tuple[int, ...] = ()

    @property
    def padded_size(self) -> int:
        return pad_vocab(self.size)


def pad_vocab(n: int, multiple: int = 64) -> int:
    return ((n + multiple - 1) // multiple) * multiple


@dataclass
class ObjectiveContext:
    """Everything an objective is built from: model settings, vocabularies, window length."""

    model: Any  # pretrain.models.ModelConfig
    vocabs: dict[str, VocabInfo]  # by kind; ``primary`` names the one in ``input_ids``
    primary: str
    seq_len: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def vocab(self) -> VocabInfo:
        return self.vocabs[self.primary]


class Objective(nn.Module):
    """Base class. Subclasses set ``name``, ``Config`` (a dataclass of options) and ``model_type``."""

    name: ClassVar[str] = ""
    model_type: ClassVar[str] = "encoder"  # "encoder" (BERT family) or "decoder" (Llama family)
    extra_streams: ClassVar[tuple[str, ...]] = ()  # additional shard kinds read aligned by characters
    # how finetune.encoders loads the export ("hf" = stock AutoModel); written to pretrain_meta.json
    finetune_adapter: ClassVar[str] = "hf"
    # what the objective is, with the honesty notes the model card must carry (the "Objective"
    # section of pretrain/model_card.py, looked up by the export meta's objective name)
    card_note: ClassVar[str] = ""

    @dataclass
    class Config:
        pass

    def __init__(self, cfg: Any, ctx: ObjectiveContext):
        super().__init__()
        self.cfg = cfg
        self.ctx = ctx

    @classmethod
    def streams(cls, cfg: Any) -> tuple[str, ...]:
        """The vocabulary kinds (shard streams) the objective reads, given its options ``cfg`` (an
        instance of its ``Config``). The primary kind (``data.kind``) may be among them; every other
        one is loaded aligned by characters next to the primary stream, together with the config's
        ``data.extra_kinds`` (:func:`pretrain.data.stream_kinds`), so configs need not repeat them.
        Default: ``extra_streams``."""
        return tuple(cls.extra_streams)

    def predicted_fraction(self) -> float:
        """Fraction of the primary window's positions at which the objective computes vocabulary
        logits in one training step (the dry run's logits-memory estimate, ``python -m pretrain
        --dry-run``). Default 1.0: every position, as next-token prediction does; masked objectives
        return their masking rate."""
        return 1.0

    def collate(self, batch: dict[str, np.ndarray], generator: torch.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Return ``{"loss": total, <term>: value, ...}``; every value a scalar tensor."""
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Validation metrics on one collated batch (default: the forward losses).

        Returned values are *sums* with a matching ``<name>_count`` key where a mean over tokens
        is wanted, or plain scalars averaged over batches otherwise.
        """
        return {k: v.detach() for k, v in self.forward(batch).items()}

    def eval_collate(self, batch: dict[str, np.ndarray], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Collate for validation (default: same as training; decoders with input noise override)."""
        return self.collate(batch, generator)

    def export(self):
        """The ``transformers.PreTrainedModel`` that ships (backbone + LM head)."""
        raise NotImplementedError

    def export_files(self) -> list:
        """Extra files (``pathlib.Path``) copied next to the exported weights: the modelling code of an
        export that needs ``trust_remote_code`` (its config carries ``auto_map``). Default: none."""
        return []

    def export_meta(self) -> dict:
        """Extra fields merged into ``pretrain_meta.json`` (e.g. ``{"trust_remote_code": True}``)."""
        return {}

    def flops_per_token(self) -> float:
        """Training FLOPs per input token (for MFU); subclasses refine. 0 means unknown."""
        return 0.0


_REGISTRY: dict[str, type[Objective]] = {}


def register(cls: type[Objective]) -> type[Objective]:
    return register_in(_REGISTRY, cls, "objective")


def get_objective(name: str) -> type[Objective]:
    from pretrain import objectives  # noqa: F401  (imports every objective module, filling the registry)

    if name not in _REGISTRY:
        raise UserError(f"unknown objective '{name}'. Known objectives: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def registered() -> dict[str, type[Objective]]:
    from pretrain import objectives  # noqa: F401

    return dict(_REGISTRY)


def objective_config(name: str, options: dict | None) -> Any:
    """Objective ``name``'s ``Config`` built from ``options`` (checked: unknown keys, types, ``validate``)."""
    from pipeline.config import _build

    cls = get_objective(name)
    return _build(cls.Config, dict(options or {}), f"objective '{name}' options", prefix="objective_options.")


def build_objective(name: str, options: dict | None, ctx: ObjectiveContext) -> Objective:
    """Instantiate objective ``name`` with ``options`` checked against its ``Config`` dataclass."""
    return get_objective(name)(objective_config(name, options), ctx)


def config_fields(cls: type[Objective]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls.Config)]
