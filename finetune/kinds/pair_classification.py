"""Sentence-pair classification (similarity, NLI, ...): ``[CLS] a [SEP] b [SEP]`` -> pooled -> head."""

from __future__ import annotations

from finetune.kinds.base import register_kind
from finetune.kinds.classification import Classification


@register_kind
class PairClassification(Classification):
    name = "pair_classification"
    main_metric = "acc"
    pair = True
