"""The task-kind interface: one module per kind owns its head, its collate and its metric.

A kind is an ``nn.Module`` (the head) built for one task and one encoder width. The training
loop (``finetune.train``) only calls the methods below, never a kind's name:

* ``features(examples, split)`` -> the units the model sees (default: the examples themselves;
  span extraction cuts long contexts into windows);
* ``collate(features)`` -> a batch dict (texts stay Python strings, the encoder tokenizes them;
  labels become tensors);
* ``forward(encoder, batch)`` -> ``{"loss": scalar (when the batch has labels), "logits": ...}``;
* ``predict(outputs, batch)`` -> one prediction per feature (plain Python values);
* ``score(predictions, features)`` -> ``{metric: value in %}``; ``main_metric`` names the one used
  for model selection and the report;
* ``load_backbone(model_dir, random_init, cfg)`` (class method) -> the model under the head (default:
  ``finetune.encoders.load_encoder``; ``decoder_sft``: the export's causal LM).

Example records (what a task loader produces) per kind:

* ``classification`` / ``pair_classification``: ``{"text": str, "text_b": str (pairs), "label": int}``
* ``sequence_labeling``: ``{"text": str, "tags": [str per character]}``
* ``span_extraction``: ``{"id": str, "context": str, "question": str, "answers": [{"text": str, "start": int}]}``
* ``multiple_choice``: ``{"context": str, "question": str, "choices": [str], "label": int}``
* ``decoder_sft``: ``{"prompt": [int], "answer": [int]}`` (token ids; see :mod:`finetune.kinds.decoder_sft`)

Register a kind with ``@register_kind``; other modules may add kinds the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from pipeline.errors import UserError
from pipeline.registry import register_in


@dataclass
class TaskData:
    """One task, ready to train: examples per split plus what the head needs to know."""

    name: str
    kind: str
    train: list[dict]
    dev: list[dict]
    test: list[dict]
    labels: list[str] | None = None  # classification labels or sequence tags (None: no label set)
    max_chars: int = 128
    info: dict[str, Any] = field(default_factory=dict)  # provenance: files, hashes, split rule, counts


@dataclass
class KindOptions:
    dropout: float = 0.1
    max_chars: int = 128          # characters of each text fed to the encoder (after truncation)
    max_chars_b: int | None = None  # second text / question (default: max_chars)
    view_sizes: tuple[int, ...] = ()  # per-view pooled widths of a two-view encoder (AMBERT); () = one view
    agreement_weight: float = 1.0     # AMBERT's lambda (classification kinds)
    pooling: str = "cls"              # sentence-level heads: "cls" (first / decoder's last state) or "mean"


class TaskKind(nn.Module):
    name: ClassVar[str] = ""
    main_metric: ClassVar[str] = "acc"

    def __init__(self, task: TaskData, hidden_size: int, opts: KindOptions):
        super().__init__()
        self.task = task
        self.hidden_size = hidden_size
        self.opts = opts

    # -- backbone --
    @classmethod
    def load_backbone(cls, model_dir: str, random_init: bool, cfg) -> nn.Module:
        """The model the kind's head sits on (``cfg``: the suite's ``FinetuneConfig``): a
        :class:`finetune.encoders.TextEncoder` (default; ``decoder_sft`` loads a causal LM)."""
        from finetune.encoders import load_encoder

        return load_encoder(model_dir, random_init=random_init, **cfg.encoder_options())

    # -- data --
    def features(self, examples: list[dict], split: str) -> list[dict]:
        return examples

    def collate(self, features: list[dict]) -> dict:
        raise NotImplementedError

    # -- model --
    def forward(self, encoder, batch: dict) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def predict(self, outputs: dict[str, torch.Tensor], batch: dict) -> list:
        raise NotImplementedError

    # -- metric --
    def score(self, predictions: list, features: list[dict]) -> dict[str, float]:
        raise NotImplementedError


_KINDS: dict[str, type[TaskKind]] = {}


def register_kind(cls: type[TaskKind]) -> type[TaskKind]:
    return register_in(_KINDS, cls, "task kind")


def get_kind(name: str) -> type[TaskKind]:
    from finetune import kinds  # noqa: F401  (imports every kind module)

    if name not in _KINDS:
        raise UserError(f"unknown task kind '{name}'. Known kinds: {', '.join(sorted(_KINDS))}")
    return _KINDS[name]


def registered_kinds() -> dict[str, type[TaskKind]]:
    from finetune import kinds  # noqa: F401

    return dict(_KINDS)


POOLINGS = ("cls", "mean")


def sentence_state(enc, pooling: str = "cls"):
    """The state a sentence-level head reads from an encoded batch: ``"cls"``, the encoder's pooled
    state (``[CLS]``, a decoder's last token; two-view encoders: per view); ``"mean"``, the mean of
    the character states over the real characters of both texts (``char_mask_a`` / ``_b``), split
    into per-view parts when the encoder has views (AMBERT: ``[fine ; coarse]`` per character).
    Returns ``(pooled, views)``; ``views`` is None for a one-view encoder.

    Why ``mean`` exists: MLM never trains ``[CLS]``, and sentiment read from it was worse after
    pre-training than from random init (docs/regime.md); a mean-pooled head reads the states MLM did
    train (measured: it removes most of that deficit, without a gain). Which one a paper's classifier used is that
    paper's choice; ``cls`` stays the default (BERT's)."""
    if pooling == "cls":
        return enc.pooled, enc.pooled_views
    if pooling != "mean":
        raise ValueError(f"unknown pooling '{pooling}' (one of {', '.join(POOLINGS)})")
    states, masks = [enc.char_states_a], [enc.char_mask_a]
    if enc.char_states_b is not None:
        states.append(enc.char_states_b)
        masks.append(enc.char_mask_b)
    s = torch.cat(states, dim=1)
    m = torch.cat(masks, dim=1).to(s.dtype).unsqueeze(-1)
    pooled = (s * m).sum(1) / m.sum(1).clamp(min=1.0)
    sizes = [v.size(-1) for v in enc.pooled_views or ()]
    if not sizes or sum(sizes) != pooled.size(-1):  # one view, or character states not laid out as the
        return pooled, None                          # views' concatenation: only the joint head
    return pooled, tuple(pooled.split(sizes, dim=-1))


def classifier(hidden: int, n_out: int, dropout: float) -> nn.Module:
    """Dropout -> dense -> tanh -> dropout -> linear (the BERT/RoBERTa classification head)."""
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.Tanh(), nn.Dropout(dropout),
                         nn.Linear(hidden, n_out))
