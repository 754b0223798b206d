"""Backbones: stock ``transformers`` models built from a size preset.

Encoders are chosen by ``model.arch`` (default ``bert``): ``BertForMaskedLM`` (Post-LN),
``RobertaPreLayerNormForMaskedLM`` (the same BERT block with the LayerNorm moved before attention
and FFN, plus a final LayerNorm) or ``ModernBertForMaskedLM`` (Pre-LN, RoPE, GeGLU, no biases).
Decoders are ``LlamaForCausalLM``. All load back with ``AutoModelForMaskedLM`` /
``AutoModelForCausalLM`` (and ``AutoModel`` for the body) and no custom code. The vocabulary size
comes from the tokenizer, padded to a multiple of 64 (tensor-core friendly shapes).

Objectives reach the body and the MLM head through :func:`encoder_body`, :func:`run_body` (explicit
position ids, 4-D masks, segment ids only where the arch has them), :func:`input_embeddings`,
:func:`mlm_head` (= :func:`mlm_decoder` of :func:`mlm_transform`) and build extra encoders with
:func:`build_body`, so every encoder objective works with every ``arch``. Choices of ours (docs/regime.md): the ModernBERT encoder attends
globally in every layer (ModernBERT's alternating 128-token local windows are an efficiency device
for long inputs; ``model.modernbert_local_every`` > 1 brings them back), and RoBERTa-PreLN gets
``max_position_embeddings + pad_id + 1`` position slots because RoBERTa numbers positions from
``pad_id + 1``.
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
    # encoders: bert = Post-LN BERT; roberta_prelayernorm = Pre-LN BERT block; modernbert = Pre-LN,
    # RoPE, GeGLU, no biases
    arch: Literal["bert", "roberta_prelayernorm", "modernbert"] = "bert"
    modernbert_local_every: int = 1  # modernbert: 1 = every layer global; n > 1 = global every n-th layer
    modernbert_local_window: int = 128  # modernbert: window of the local layers (tokens)

    def dims(self) -> tuple[int, int, int, int]:
        l, h, a, f = PRESETS[self.size]
        return (self.num_layers or l, self.hidden_size or h, self.num_heads or a, self.intermediate_size or f)

    def validate(self) -> None:
        _, h, a, _ = self.dims()
        if h % a:
            raise ValueError(f"model.hidden_size {h} is not divisible by model.num_heads {a}")
        if self.arch not in ENCODER_ARCHS:
            raise ValueError(f"model.arch must be one of {', '.join(ENCODER_ARCHS)}, got {self.arch!r}")
        if self.modernbert_local_every < 1:
            raise ValueError("model.modernbert_local_every must be at least 1")


def bert_config(cfg: ModelConfig, vocab_size: int, pad_id: int = 0, **extra):
    from transformers import BertConfig

    l, h, a, f = cfg.dims()
    return BertConfig(
        vocab_size=vocab_size, hidden_size=h, num_hidden_layers=l, num_attention_heads=a,
        intermediate_size=f, max_position_embeddings=cfg.max_position_embeddings,
        hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout,
        pad_token_id=pad_id, type_vocab_size=2, tie_word_embeddings=cfg.tie_word_embeddings, **extra,
    )


def roberta_prelayernorm_config(cfg: ModelConfig, vocab_size: int, pad_id: int = 0, **extra):
    from transformers import RobertaPreLayerNormConfig

    l, h, a, f = cfg.dims()
    return RobertaPreLayerNormConfig(
        vocab_size=vocab_size, hidden_size=h, num_hidden_layers=l, num_attention_heads=a,
        intermediate_size=f, max_position_embeddings=cfg.max_position_embeddings + pad_id + 1,
        hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout,
        pad_token_id=pad_id, type_vocab_size=2, tie_word_embeddings=cfg.tie_word_embeddings, **extra,
    )


def modernbert_config(cfg: ModelConfig, vocab_size: int, pad_id: int = 0, **extra):
    from transformers import ModernBertConfig

    l, h, a, f = cfg.dims()
    n = cfg.modernbert_local_every
    layer_types = ["full_attention" if i % n == 0 else "sliding_attention" for i in range(l)]
    # ModernBERT's MLP is GeGLU: Wi projects to 2 x intermediate_size. Keep the preset's FFN parameter
    # count (2 x h x f) by giving each GeGLU half 2/3 of f (rounded to a multiple of 8).
    ffn = max(8, int(round(f * 2 / 3 / 8)) * 8)
    extra.setdefault("cls_token_id", None)
    extra.setdefault("sep_token_id", None)
    extra.setdefault("bos_token_id", None)
    extra.setdefault("eos_token_id", None)
    return ModernBertConfig(
        vocab_size=vocab_size, hidden_size=h, num_hidden_layers=l, num_attention_heads=a,
        intermediate_size=ffn, max_position_embeddings=cfg.max_position_embeddings,
        attention_dropout=cfg.dropout, mlp_dropout=cfg.dropout, embedding_dropout=cfg.dropout,
        layer_types=layer_types, local_attention=cfg.modernbert_local_window, pad_token_id=pad_id,
        tie_word_embeddings=cfg.tie_word_embeddings, **extra,
    )


ENCODER_ARCHS = ("bert", "roberta_prelayernorm", "modernbert")


def encoder_config(cfg: ModelConfig, vocab_size: int, pad_id: int = 0, **extra):
    """The ``transformers`` config of ``cfg.arch``."""
    fn = {"bert": bert_config, "roberta_prelayernorm": roberta_prelayernorm_config,
          "modernbert": modernbert_config}[cfg.arch]
    return fn(cfg, vocab_size, pad_id, **extra)


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
    """A masked-LM encoder of ``cfg.arch`` and the preset size; ``vocab_size`` should already be padded."""
    from transformers import AutoModelForMaskedLM

    conf = encoder_config(cfg, vocab_size, pad_id, **extra)
    conf._attn_implementation = cfg.attn_implementation
    return AutoModelForMaskedLM.from_config(conf)


def encoder_body(model: torch.nn.Module) -> torch.nn.Module:
    """The encoder body (embeddings + layers, no head) of a ``*ForMaskedLM`` of any ``arch``."""
    return getattr(model, model.base_model_prefix)


def mlm_head(model: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Vocabulary logits of the MLM head of a ``*ForMaskedLM`` on ``hidden`` states [..., H]."""
    if hasattr(model, "cls"):  # BertForMaskedLM
        return model.cls(hidden)
    if hasattr(model, "lm_head"):  # RobertaPreLayerNormForMaskedLM
        return model.lm_head(hidden)
    return model.decoder(model.head(hidden))  # ModernBertForMaskedLM


def encoder_layer_parameters(model: torch.nn.Module) -> int:
    """Parameters of the transformer layers (no embeddings, no head): the FLOP model's ``N_body``."""
    return count_parameters(body_layers(encoder_body(model)))


def body_layers(body: torch.nn.Module) -> torch.nn.Module:
    """The transformer layers of an encoder body of any ``arch`` (``BertModel.encoder``,
    ``ModernBertModel.layers``)."""
    return body.encoder if hasattr(body, "encoder") else body.layers


def input_embeddings(model: torch.nn.Module) -> torch.nn.Embedding:
    """The token-embedding table of a ``*ForMaskedLM`` or a body of any ``arch``."""
    return model.get_input_embeddings()


def run_body(body: torch.nn.Module, *, input_ids: Optional[torch.Tensor] = None,
             inputs_embeds: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
             position_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Last hidden states [B, T, H] of an encoder body of any ``arch``, with optional explicit
    ``position_ids`` (0-based, as BERT numbers them) and a 2-D or prepared 4-D ``attention_mask``.

    Per arch: ``bert`` gets all-zero ``token_type_ids`` (one segment); ``roberta_prelayernorm``
    too, and its explicit position ids are shifted by ``pad_token_id + 1`` (RoBERTa numbers
    positions from there); ``modernbert`` has no token-type embeddings and reads positions through
    RoPE (relative: only position *differences* matter, so e.g. ERNIE-Gram's gapped original
    positions keep their meaning).
    """
    kw: dict = {"attention_mask": attention_mask}
    if inputs_embeds is not None:
        kw["inputs_embeds"] = inputs_embeds
        shape, dev = inputs_embeds.shape[:2], inputs_embeds.device
    else:
        kw["input_ids"] = input_ids
        shape, dev = input_ids.shape, input_ids.device
    mt = body.config.model_type
    if mt != "modernbert":
        kw["token_type_ids"] = torch.zeros(shape, dtype=torch.long, device=dev)
    if position_ids is not None:
        if mt == "roberta-prelayernorm":
            position_ids = position_ids + int(body.config.pad_token_id) + 1
        kw["position_ids"] = position_ids
    return body(**kw).last_hidden_state


def mlm_transform(model: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The MLM head's hidden transform (dense + activation + LayerNorm) of a ``*ForMaskedLM`` of any
    ``arch``; :func:`mlm_decoder` of it is :func:`mlm_head`."""
    if hasattr(model, "cls"):  # BertForMaskedLM
        return model.cls.predictions.transform(hidden)
    if hasattr(model, "lm_head"):  # RobertaPreLayerNormForMaskedLM: dense -> gelu -> layer_norm -> decoder
        import torch.nn.functional as F

        h = model.lm_head
        return h.layer_norm(F.gelu(h.dense(hidden)))
    return model.head(hidden)  # ModernBertForMaskedLM


def mlm_decoder(model: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The MLM head's vocabulary projection (tied to the token embeddings, with its bias)."""
    if hasattr(model, "cls"):
        return model.cls.predictions.decoder(hidden)
    if hasattr(model, "lm_head"):
        return model.lm_head.decoder(hidden)
    return model.decoder(hidden)


def new_transform(config) -> torch.nn.Module:
    """A fresh MLM-style hidden transform (dense + GELU + LayerNorm) for ``config``'s width; the
    BERT class for ``bert`` (the state-dict names of earlier exports), a plain stack otherwise."""
    if config.model_type == "bert":
        from transformers.models.bert.modeling_bert import BertPredictionHeadTransform

        return BertPredictionHeadTransform(config)
    eps = getattr(config, "layer_norm_eps", None) or getattr(config, "norm_eps", 1e-12)
    h = config.hidden_size
    return torch.nn.Sequential(torch.nn.Linear(h, h), torch.nn.GELU(), torch.nn.LayerNorm(h, eps=eps))


def norm_eps(config) -> float:
    """LayerNorm epsilon of an encoder config of any ``arch`` (ModernBERT calls it ``norm_eps``)."""
    v = getattr(config, "layer_norm_eps", None)
    return float(v if v is not None else getattr(config, "norm_eps", 1e-12))


def build_body(cfg: ModelConfig, vocab_size: int, pad_id: int = 0, **extra) -> torch.nn.Module:
    """An encoder body (embeddings + layers, no pooler, no head) of ``cfg.arch``: what an objective
    uses for an extra encoder (e.g. ERNIE-Gram's generator)."""
    from transformers import AutoModel

    conf = encoder_config(cfg, vocab_size, pad_id, **extra)
    conf._attn_implementation = cfg.attn_implementation
    if cfg.arch == "modernbert":
        return AutoModel.from_config(conf)
    return AutoModel.from_config(conf, add_pooling_layer=False)


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
