"""Backbones: stock ``transformers`` models built from a size preset.

Encoders are ``BertForMaskedLM``-compatible, decoders are ``LlamaForCausalLM``; both load back
with ``AutoModelForMaskedLM`` / ``AutoModelForCausalLM`` and no custom code. The vocabulary size
comes from the tokenizer, padded to a multiple of 64 (tensor-core friendly shapes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch

# layers, hidden, heads, ffn
PRESETS: dict[str, tuple[int, int, int, int]] = {
    "tiny": (2, 128, 2, 512),      # the CPU demo
    "small": (4, 256, 4, 1024),
    "base": (12, 768, 12, 3072),   # BERT-base size
    "large": (24, 1024, 16, 4096),
}


@dataclass
class ModelConfig:
    size: Literal["tiny", "small", "base", "large"] = "tiny"
    # explicit values override the preset
    num_layers: Optional[int] = None
    hidden_size: Optional[int] = None
    num_heads: Optional[int] = None
    intermediate_size: Optional[int] = None
    max_position_embeddings: int = 512
    dropout: float = 0.1
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    tie_word_embeddings: bool = True
    rope_theta: float = 10000.0
    num_key_value_heads: Optional[int] = None  # decoders: grouped-query attention

    def dims(self) -> tuple[int, int, int, int]:
        l, h, a, f = PRESETS[self.size]
        return (self.num_layers or l, self.hidden_size or h, self.num_heads or a, self.intermediate_size or f)

    def validate(self) -> None:
        _, h, a, _ = self.dims()
        if h % a:
            raise ValueError(f"model.hidden_size {h} is not divisible by model.num_heads {a}")


def bert_config(cfg: ModelConfig, vocab_size: int, pad_id: int = 0, **extra):
    from transformers import BertConfig

    l, h, a, f = cfg.dims()
    return BertConfig(
        vocab_size=vocab_size, hidden_size=h, num_hidden_layers=l, num_attention_heads=a,
        intermediate_size=f, max_position_embeddings=cfg.max_position_embeddings,
        hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout,
        pad_token_id=pad_id, type_vocab_size=2, tie_word_embeddings=cfg.tie_word_embeddings, **extra,
    )


def llama_config(cfg: ModelConfig, vocab_size: int, pad_id: int = 0, bos_id: int | None = None,
                 eos_id: int | None = None, **extra):
    from transformers import LlamaConfig

    l, h, a, f = cfg.dims()
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=h, num_hidden_layers=l, num_attention_heads=a,
        num_key_value_heads=cfg.num_key_value_heads or a, intermediate_size=f,
        max_position_embeddings=cfg.max_position_embeddings, rope_theta=cfg.rope_theta,
        attention_dropout=0.0, pad_token_id=pad_id, bos_token_id=bos_id, eos_token_id=eos_id,
        tie_word_embeddings=cfg.tie_word_embeddings, **extra,
    )


def build_encoder(cfg: ModelConfig, vocab_size: int, pad_id: int = 0, **extra):
    """A ``BertForMaskedLM`` of the preset size; ``vocab_size`` should already be padded."""
    from transformers import BertForMaskedLM

    conf = bert_config(cfg, vocab_size, pad_id, **extra)
    conf._attn_implementation = cfg.attn_implementation
    return BertForMaskedLM(conf)


def build_decoder(cfg: ModelConfig, vocab_size: int, pad_id: int = 0, bos_id: int | None = None,
                  eos_id: int | None = None, **extra):
    """A ``LlamaForCausalLM`` of the preset size (RMSNorm, SwiGLU, RoPE)."""
    from transformers import LlamaForCausalLM

    conf = llama_config(cfg, vocab_size, pad_id, bos_id, eos_id, **extra)
    conf._attn_implementation = cfg.attn_implementation
    return LlamaForCausalLM(conf)


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    seen = set()
    n = 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        n += p.numel()
    return n
