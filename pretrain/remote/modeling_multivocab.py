"""Multi-vocabulary encoders: AMBERT's two-view shared encoder and the hierarchical Hi-MVP encoder.

Self-contained (``torch`` + ``transformers`` only): this file is copied into every export that uses
it, and ``config.json["auto_map"]`` points at the classes below, so an export loads with
``AutoModel.from_pretrained(dir, trust_remote_code=True)`` anywhere.

Two views of the same text, aligned by characters:

* the *fine* view (``input_ids``): the char vocabulary (one token per CJK character);
* the *coarse* view (``coarse_input_ids``): word or SGT tokens, each covering a contiguous span of
  characters. ``coarse_index[b, i]`` gives, for fine token ``i``, the coarse token that contains its
  first character (``-1`` for none); specials map to the coarse special of the same rank.

``AmbertModel`` (Zhang & Li, AMBERT, as published): one BERT encoder whose Transformer layers are
shared by both views, with a separate token-embedding table per view (position, segment embeddings
and the embedding LayerNorm are shared: the paper says only that each view has its own token
embeddings). Both views are encoded, one pass each.

``HiMvpModel`` (a *reconstruction* of MVP-BERT's Hi-MVP from its abstract; see docs/multivocab.md):
the lower ``lower_layers`` layers run on the char sequence; the char states are pooled (mean or
first) into one vector per coarse token; the upper layers run on the shorter coarse sequence. Each
char also gets a fused state, ``LayerNorm(lower_char_state + W @ upper_state[its coarse token])``,
the character decoder used for span tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig
from transformers.modeling_outputs import ModelOutput
from transformers.models.bert.modeling_bert import BertModel, BertPreTrainedModel

try:  # transformers 5 configs are strict dataclasses
    from huggingface_hub.dataclasses import strict
except ImportError:  # pragma: no cover
    def strict(cls):
        return cls


# ------------------------------------------------------------------ configs


@strict
class AmbertConfig(BertConfig):
    """BERT config plus the coarse view's vocabulary."""

    model_type = "zh_ambert"

    coarse_vocab_size: int = 64
    coarse_pad_token_id: int = 0
    fine_kind: str = "char"
    coarse_kind: str = "word"
    # the encoder's architecture (model.arch of the pre-training run): "bert" (the BERT fields of
    # this config), or "roberta_prelayernorm" / "modernbert" with that model's own config in
    # ``encoder_config`` (a dict, as its ``to_dict()``)
    encoder_arch: str = "bert"
    encoder_config: Optional[dict] = None


@strict
class HiMvpConfig(BertConfig):
    """BERT config split into ``lower_layers`` char layers and the rest as coarse (SGT) layers."""

    model_type = "zh_hi_mvp"

    coarse_vocab_size: int = 64
    coarse_pad_token_id: int = 0
    lower_layers: int = 1
    pooling: str = "mean"  # "mean" | "first": char states -> one vector per coarse token
    char_head_on: str = "fused"  # "fused" | "lower": which char states the char MLM head reads
    fine_kind: str = "char"
    coarse_kind: str = "sgt"
    encoder_arch: str = "bert"  # as AmbertConfig: the architecture of both levels' encoders
    encoder_config: Optional[dict] = None


ENCODER_ARCHS = ("bert", "roberta_prelayernorm", "modernbert")


def _sub_config(config: BertConfig, layers: Optional[slice] = None, **changes):
    """The config of one inner encoder: ``encoder_arch``'s config with ``changes``; ``layers`` picks
    those of the full stack's layers (ModernBERT's per-layer ``layer_types``)."""
    arch = getattr(config, "encoder_arch", "bert") or "bert"
    if arch not in ENCODER_ARCHS:
        raise ValueError(f"encoder_arch must be one of {', '.join(ENCODER_ARCHS)}, got {arch!r}")
    if arch == "bert":
        d = {k: getattr(config, k) for k in (
            "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
            "type_vocab_size", "initializer_range", "layer_norm_eps", "pad_token_id")}
        d.update(changes)
        sub = BertConfig(**d)
    else:
        from transformers import ModernBertConfig, RobertaPreLayerNormConfig

        cls = ModernBertConfig if arch == "modernbert" else RobertaPreLayerNormConfig
        d = {k: v for k, v in dict(config.encoder_config or {}).items()
             if k not in ("model_type", "transformers_version", "architectures", "auto_map", "_name_or_path")}
        if layers is not None and d.get("layer_types"):
            d["layer_types"] = list(d["layer_types"])[layers]
        if arch == "roberta_prelayernorm" and "pad_token_id" in changes:
            # RoBERTa's position embeddings are numbered from pad_token_id + 1
            d["max_position_embeddings"] = (int(d.get("max_position_embeddings", 514)) - int(d.get("pad_token_id", 0))
                                            + int(changes["pad_token_id"]))
        d.update(changes)
        sub = cls(**d)
    sub._attn_implementation = getattr(config, "_attn_implementation", None) or "sdpa"
    return sub


def _body(sub) -> nn.Module:
    """An encoder body (no pooler) for a sub config of any arch."""
    if sub.model_type == "bert":
        return BertModel(sub, add_pooling_layer=False)
    if sub.model_type == "modernbert":
        from transformers import ModernBertModel

        return ModernBertModel(sub)
    from transformers import RobertaPreLayerNormModel

    return RobertaPreLayerNormModel(sub, add_pooling_layer=False)


def _run(body: nn.Module, token_type_ids=None, **kwargs):
    """``body(**kwargs)``; ``token_type_ids`` only for the archs that have segment embeddings
    (ModernBERT has none: a two-segment input is not distinguished there)."""
    if token_type_ids is not None and body.config.model_type != "modernbert":
        kwargs["token_type_ids"] = token_type_ids
    return body(**kwargs)


# ------------------------------------------------------------------ outputs


@dataclass
class TwoViewOutput(ModelOutput):
    last_hidden_state: Optional[torch.Tensor] = None  # fine view [B, T, H]
    pooler_output: Optional[torch.Tensor] = None  # fine [CLS] state [B, H]
    coarse_hidden_state: Optional[torch.Tensor] = None  # coarse view [B, S, H]
    coarse_pooler_output: Optional[torch.Tensor] = None  # coarse [CLS] state [B, H]


@dataclass
class HiMvpOutput(ModelOutput):
    last_hidden_state: Optional[torch.Tensor] = None  # upper (coarse) states [B, S, H]
    pooler_output: Optional[torch.Tensor] = None  # upper (coarse) [CLS] state [B, H]
    char_hidden_state: Optional[torch.Tensor] = None  # fused per-char-token states [B, T, H]
    lower_hidden_state: Optional[torch.Tensor] = None  # lower char-layer states [B, T, H]


@dataclass
class MultiVocabMLMOutput(ModelOutput):
    loss: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None  # fine-vocabulary logits [B, T, V]
    coarse_logits: Optional[torch.Tensor] = None  # coarse-vocabulary logits [B, S, V2]


# ------------------------------------------------------------------ shared pieces


class MlmHead(nn.Module):
    """BERT's LM head (dense + act + LayerNorm, then a vocabulary projection).

    The projection weight is passed in (tied to an input embedding) or owned (``vocab_size`` given).
    Call it on the gathered masked positions only: the projection is the expensive part.
    """

    def __init__(self, config: BertConfig, vocab_size: int, own_weight: bool = False):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = nn.GELU()
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        self.weight = nn.Parameter(torch.empty(vocab_size, config.hidden_size)) if own_weight else None
        if self.weight is not None:
            nn.init.normal_(self.weight, std=config.initializer_range)

    def forward(self, hidden: torch.Tensor, tied_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        w = self.weight if self.weight is not None else tied_weight
        return F.linear(self.LayerNorm(self.act(self.dense(hidden))), w, self.bias)


def _masked_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1), ignore_index=-100)


def pool_groups(states: torch.Tensor, index: torch.Tensor, n_groups: int, mode: str = "mean"):
    """Pool ``states`` [B, T, H] into ``n_groups`` slots by ``index`` [B, T] (-1 = none).

    Returns (pooled [B, n_groups, H], counts [B, n_groups]); an empty slot pools to zeros.
    """
    B, T, H = states.shape
    slot = torch.where(index >= 0, index, torch.full_like(index, n_groups))  # n_groups = dump slot
    if mode == "first":
        # the first fine token of each group: the smallest position writing to that slot
        pos = torch.arange(T, device=states.device).expand(B, T)
        first = torch.full((B, n_groups + 1), T, dtype=torch.long, device=states.device)
        first = first.scatter_reduce(1, slot, pos, reduce="amin", include_self=True)
        counts = torch.zeros(B, n_groups + 1, dtype=states.dtype, device=states.device)
        counts = counts.scatter_add(1, slot, torch.ones_like(slot, dtype=states.dtype))[:, :n_groups]
        take = first[:, :n_groups].clamp(max=T - 1)
        pooled = states.gather(1, take.unsqueeze(-1).expand(B, n_groups, H))
        pooled = pooled * (counts > 0).unsqueeze(-1).to(states.dtype)
        return pooled, counts
    sums = torch.zeros(B, n_groups + 1, H, dtype=states.dtype, device=states.device)
    sums = sums.scatter_add(1, slot.unsqueeze(-1).expand(B, T, H), states)[:, :n_groups]
    counts = torch.zeros(B, n_groups + 1, dtype=states.dtype, device=states.device)
    counts = counts.scatter_add(1, slot, torch.ones_like(slot, dtype=states.dtype))[:, :n_groups]
    return sums / counts.clamp(min=1).unsqueeze(-1), counts


def broadcast_groups(states: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """For every fine token, the coarse state [B, S, H] of its group (zeros where ``index`` is -1)."""
    B, S, H = states.shape
    g = states.gather(1, index.clamp(min=0).unsqueeze(-1).expand(*index.shape, H))
    return g * (index >= 0).unsqueeze(-1).to(states.dtype)


# ------------------------------------------------------------------ AMBERT


class AmbertPreTrainedModel(BertPreTrainedModel):
    config_class = AmbertConfig
    base_model_prefix = "ambert"

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, MlmHead):
            module.bias.zero_()


class AmbertModel(AmbertPreTrainedModel):
    """Shared Transformer layers, one token-embedding table per view (AMBERT)."""

    def __init__(self, config: AmbertConfig):
        super().__init__(config)
        # no pooler: every parameter takes part in the pre-training loss (DDP without
        # find_unused_parameters); the pooled output is the [CLS] state
        self.bert = _body(_sub_config(config))  # "bert" for every arch (the state-dict names)
        self.coarse_word_embeddings = nn.Embedding(
            config.coarse_vocab_size, config.hidden_size, padding_idx=config.coarse_pad_token_id)
        self.post_init()

    def get_input_embeddings(self):
        return self.bert.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.bert.set_input_embeddings(value)

    def encode_coarse(self, coarse_input_ids, coarse_attention_mask=None, coarse_token_type_ids=None):
        out = _run(self.bert, coarse_token_type_ids, inputs_embeds=self.coarse_word_embeddings(coarse_input_ids),
                   attention_mask=coarse_attention_mask)
        return out.last_hidden_state, out.last_hidden_state[:, 0]

    def forward(self, input_ids=None, attention_mask=None, coarse_input_ids=None, coarse_attention_mask=None,
                token_type_ids=None, coarse_token_type_ids=None, **kwargs) -> TwoViewOutput:
        fine = _run(self.bert, token_type_ids, input_ids=input_ids, attention_mask=attention_mask)
        coarse_h = coarse_p = None
        if coarse_input_ids is not None:
            coarse_h, coarse_p = self.encode_coarse(coarse_input_ids, coarse_attention_mask, coarse_token_type_ids)
        return TwoViewOutput(last_hidden_state=fine.last_hidden_state, pooler_output=fine.last_hidden_state[:, 0],
                             coarse_hidden_state=coarse_h, coarse_pooler_output=coarse_p)


class AmbertForMaskedLM(AmbertPreTrainedModel):
    """AMBERT with its two MLM heads (fine head tied to the char table, coarse head to the word table)."""

    def __init__(self, config: AmbertConfig):
        super().__init__(config)
        self.ambert = AmbertModel(config)
        self.fine_head = MlmHead(config, config.vocab_size)
        self.coarse_head = MlmHead(config, config.coarse_vocab_size)
        self.post_init()

    def fine_logits(self, hidden):
        return self.fine_head(hidden, self.ambert.bert.get_input_embeddings().weight)

    def coarse_logits(self, hidden):
        return self.coarse_head(hidden, self.ambert.coarse_word_embeddings.weight)

    def forward(self, input_ids=None, attention_mask=None, coarse_input_ids=None, coarse_attention_mask=None,
                labels=None, coarse_labels=None, **kwargs) -> MultiVocabMLMOutput:
        out = self.ambert(input_ids, attention_mask, coarse_input_ids, coarse_attention_mask)
        logits = self.fine_logits(out.last_hidden_state)
        coarse_logits = self.coarse_logits(out.coarse_hidden_state) if out.coarse_hidden_state is not None else None
        loss = None
        if labels is not None:
            loss = _masked_ce(logits, labels)
            if coarse_labels is not None and coarse_logits is not None:
                loss = loss + _masked_ce(coarse_logits, coarse_labels)
        return MultiVocabMLMOutput(loss=loss, logits=logits, coarse_logits=coarse_logits)


# ------------------------------------------------------------------ Hi-MVP (reconstruction)


class HiMvpPreTrainedModel(BertPreTrainedModel):
    config_class = HiMvpConfig
    base_model_prefix = "hi_mvp"

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, MlmHead):
            module.bias.zero_()


class HiMvpModel(HiMvpPreTrainedModel):
    """Char layers -> pool per coarse token -> coarse layers; plus a fused per-char state."""

    def __init__(self, config: HiMvpConfig):
        super().__init__(config)
        n_upper = config.num_hidden_layers - config.lower_layers
        if config.lower_layers < 1 or n_upper < 1:
            raise ValueError(f"lower_layers={config.lower_layers} must leave >= 1 layer on each level "
                             f"of a {config.num_hidden_layers}-layer model")
        if config.pooling not in ("mean", "first"):
            raise ValueError(f"pooling must be 'mean' or 'first', got {config.pooling!r}")
        lo = config.lower_layers
        self.char_encoder = _body(_sub_config(config, slice(0, lo), num_hidden_layers=lo))
        # the upper level takes pooled char states as inputs_embeds: its token table is a frozen
        # 1-row stub, and there is no pooler, so every trained parameter takes part in the loss
        self.coarse_encoder = _body(_sub_config(config, slice(lo, None), num_hidden_layers=n_upper, vocab_size=1,
                                                pad_token_id=0))
        self.coarse_encoder.get_input_embeddings().weight.requires_grad_(False)
        self.empty_group = nn.Parameter(torch.zeros(config.hidden_size))  # a coarse token no char maps to
        self.fuse = nn.Linear(config.hidden_size, config.hidden_size)
        self.fuse_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.char_encoder.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.char_encoder.set_input_embeddings(value)

    def forward(self, input_ids=None, attention_mask=None, coarse_index=None, coarse_attention_mask=None,
                token_type_ids=None, coarse_token_type_ids=None, **kwargs) -> HiMvpOutput:
        if coarse_index is None or coarse_attention_mask is None:
            raise ValueError("HiMvpModel needs coarse_index [B, T] and coarse_attention_mask [B, S]")
        lower = _run(self.char_encoder, token_type_ids, input_ids=input_ids,
                     attention_mask=attention_mask).last_hidden_state
        S = coarse_attention_mask.shape[1]
        idx = coarse_index.masked_fill(attention_mask == 0, -1) if attention_mask is not None else coarse_index
        pooled, counts = pool_groups(lower, idx, S, self.config.pooling)
        pooled = pooled + (counts == 0).unsqueeze(-1).to(pooled.dtype) * self.empty_group
        up = _run(self.coarse_encoder, coarse_token_type_ids, inputs_embeds=pooled,
                  attention_mask=coarse_attention_mask)
        upper = up.last_hidden_state
        fused = self.fuse_norm(lower + self.fuse(broadcast_groups(upper, idx)))
        return HiMvpOutput(last_hidden_state=upper, pooler_output=upper[:, 0],
                           char_hidden_state=fused, lower_hidden_state=lower)


class HiMvpForMaskedLM(HiMvpPreTrainedModel):
    """Hi-MVP with a char-vocabulary head (tied to the char table) and a coarse-vocabulary head."""

    def __init__(self, config: HiMvpConfig):
        super().__init__(config)
        self.hi_mvp = HiMvpModel(config)
        self.char_head = MlmHead(config, config.vocab_size)
        self.coarse_head = MlmHead(config, config.coarse_vocab_size, own_weight=True)
        self.post_init()

    def char_logits(self, hidden):
        return self.char_head(hidden, self.hi_mvp.char_encoder.get_input_embeddings().weight)

    def coarse_logits(self, hidden):
        return self.coarse_head(hidden)

    def forward(self, input_ids=None, attention_mask=None, coarse_index=None, coarse_attention_mask=None,
                labels=None, coarse_labels=None, **kwargs) -> MultiVocabMLMOutput:
        out = self.hi_mvp(input_ids, attention_mask, coarse_index, coarse_attention_mask)
        char_states = out.lower_hidden_state if self.config.char_head_on == "lower" else out.char_hidden_state
        logits = self.char_logits(char_states)
        coarse_logits = self.coarse_logits(out.last_hidden_state)
        loss = None
        if labels is not None:
            loss = _masked_ce(logits, labels)
            if coarse_labels is not None:
                loss = loss + _masked_ce(coarse_logits, coarse_labels)
        return MultiVocabMLMOutput(loss=loss, logits=logits, coarse_logits=coarse_logits)


AmbertConfig.register_for_auto_class()
AmbertModel.register_for_auto_class("AutoModel")
AmbertForMaskedLM.register_for_auto_class("AutoModelForMaskedLM")
HiMvpConfig.register_for_auto_class()
HiMvpModel.register_for_auto_class("AutoModel")
HiMvpForMaskedLM.register_for_auto_class("AutoModelForMaskedLM")


def set_auto_map(model: nn.Module) -> None:
    """Point ``config.auto_map`` at this file's classes so a saved folder loads with
    ``AutoConfig`` / ``AutoModel`` / ``AutoModelForMaskedLM`` and ``trust_remote_code=True``."""
    mod = "modeling_multivocab"
    if isinstance(model.config, HiMvpConfig):
        names = ("HiMvpConfig", "HiMvpModel", "HiMvpForMaskedLM")
    elif isinstance(model.config, AmbertConfig):
        names = ("AmbertConfig", "AmbertModel", "AmbertForMaskedLM")
    else:
        raise TypeError(f"not a multi-vocabulary model: {type(model).__name__}")
    model.config.auto_map = {"AutoConfig": f"{mod}.{names[0]}", "AutoModel": f"{mod}.{names[1]}",
                             "AutoModelForMaskedLM": f"{mod}.{names[2]}"}
