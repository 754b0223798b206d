"""Text encoders for fine-tuning: any exported checkpoint -> per-character states.

The contract (``docs/contracts.md`` "Fine-tuning"): ``load_encoder(model_dir, random_init=False)``
reads ``pretrain_meta.json`` and builds the adapter named by ``finetune_adapter`` (default
``"hf"``, a stock ``AutoModel``). A :class:`TextEncoder` turns texts into an
:class:`EncodedBatch`: a pooled vector per example and one state per *character*. Each
character takes the final state of the token covering it plus a learned embedding of its offset
inside that token (zero at initialisation, so a char tokenizer starts exactly at its token
states), which makes every task head and metric character-level for every tokenizer.

Objectives whose export needs its own code path subclass :class:`TextEncoder` and register it::

    @register_encoder("multivocab")
    class MultiVocabEncoder(TextEncoder):
        @classmethod
        def from_pretrained(cls, model_dir, meta, random_init=False, **options): ...
        def encode(self, texts_a, texts_b=None, max_chars=None) -> EncodedBatch: ...

Helpers reusable by adapters: :func:`build_pair_inputs` (ids + where every character sits in the
packed sequence) and :meth:`TextEncoder.gather_chars`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional, Sequence

import numpy as np
import torch
from torch import nn

from finetune import charmap
from pipeline.errors import UserError
from pretrain.exports import META_FILE, ExportMeta, load_export, special_id
# modules of other engineers that may register adapters; imported lazily, absent ones are skipped
ADAPTER_MODULES = ("finetune.adapters_multivocab", "finetune.decoder_sft",
                   "finetune.retrieval")


@dataclass
class EncodedBatch:
    pooled: torch.Tensor                      # [B, H]
    char_states_a: torch.Tensor               # [B, Ca, H]
    char_mask_a: torch.Tensor                 # bool [B, Ca]
    char_states_b: Optional[torch.Tensor] = None  # [B, Cb, H] when texts_b was given
    char_mask_b: Optional[torch.Tensor] = None
    # two-view encoders (AMBERT): the pooled state of each view, e.g. (fine [CLS], coarse [CLS]);
    # ``pooled`` is then their concatenation
    pooled_views: Optional[tuple] = None


class TextEncoder(nn.Module):
    """Base class of every fine-tuning encoder (see the module docstring)."""

    adapter_name: ClassVar[str] = ""
    max_offset: ClassVar[int] = 32  # offsets inside a token beyond this share one embedding
    pooled_view_sizes: tuple[int, ...] = ()  # widths of EncodedBatch.pooled_views (two-view encoders)

    def __init__(self, hidden_size: int, model_dir: str | Path | None = None, meta: dict | None = None):
        super().__init__()
        self.hidden_size = hidden_size
        self.model_dir = str(model_dir) if model_dir is not None else None
        self.meta = meta.to_dict() if isinstance(meta, ExportMeta) else dict(meta or {})
        # offset of a character inside its token; zero-init so char tokenizers start unchanged
        self.char_offset_emb = nn.Embedding(self.max_offset, hidden_size)
        nn.init.zeros_(self.char_offset_emb.weight)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, meta: dict, random_init: bool = False, **options) -> "TextEncoder":
        raise NotImplementedError

    def encode(self, texts_a: Sequence[str], texts_b: Sequence[str] | None = None,
               max_chars: int | None = None) -> EncodedBatch:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def gather_chars(self, token_states: torch.Tensor, positions: torch.Tensor, offsets: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:
        """Per-character states: ``token_states[b, positions[b, c]] + offset_emb(offsets[b, c])``."""
        idx = positions.clamp(min=0).unsqueeze(-1).expand(-1, -1, token_states.size(-1))
        states = token_states.gather(1, idx)
        states = states + self.char_offset_emb(offsets.clamp(0, self.max_offset - 1))
        return states * mask.unsqueeze(-1).to(states.dtype)


# ---- registry ------------------------------------------------------------------------------------

_ENCODERS: dict[str, type[TextEncoder]] = {}


def register_encoder(name: str) -> Callable[[type[TextEncoder]], type[TextEncoder]]:
    """Class decorator: make ``finetune_adapter: NAME`` in ``pretrain_meta.json`` load this class."""

    def deco(cls: type[TextEncoder]) -> type[TextEncoder]:
        if name in _ENCODERS and _ENCODERS[name] is not cls:
            raise ValueError(f"fine-tuning adapter '{name}' registered twice")
        cls.adapter_name = name
        _ENCODERS[name] = cls
        return cls

    return deco


def _import_adapters() -> None:
    for mod in ADAPTER_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:  # the module exists but one of its imports is missing: a real error
                raise


def registered_encoders() -> dict[str, type[TextEncoder]]:
    _import_adapters()
    return dict(_ENCODERS)


def read_pretrain_meta(model_dir: str | Path) -> ExportMeta:
    """``pretrain_meta.json`` of an export (the defaults for a plain HF folder without one)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UserError(f"model folder not found: {model_dir}")
    if not (model_dir / "config.json").is_file():
        raise UserError(f"{model_dir}: not a Hugging Face model folder (no config.json)")
    return ExportMeta.load(model_dir)


def load_encoder(model_dir: str | Path, random_init: bool = False, **options: Any) -> TextEncoder:
    """Build the encoder named by ``pretrain_meta.json["finetune_adapter"]`` (default ``"hf"``).

    ``random_init=True`` gives the random-init twin: same config and tokenizer, fresh weights
    (drawn from torch's current RNG state, so seed it first).
    ``trust_remote_code=True`` (an option; the CLIs' ``--trust-remote-code``) lets code shipped in
    the folder run; without it such a folder is refused (``pretrain.exports.check_folder``).
    """
    meta = read_pretrain_meta(model_dir)
    name = meta.adapter
    encoders = registered_encoders()
    if name not in encoders:
        raise UserError(f"{Path(model_dir) / META_FILE}: unknown finetune_adapter '{name}'. "
                        f"Known: {', '.join(sorted(encoders))}")
    return encoders[name].from_pretrained(model_dir, meta, random_init=random_init, **options)


# ---- the stock adapter ---------------------------------------------------------------------------


@dataclass
class PackedInputs:
    input_ids: torch.Tensor       # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    token_type_ids: torch.Tensor  # [B, T]
    last_index: torch.Tensor      # [B] index of the last real token (pooling for decoders)
    pos_a: torch.Tensor           # [B, Ca] index in the packed sequence of each character's token
    off_a: torch.Tensor
    mask_a: torch.Tensor          # bool [B, Ca]
    pos_b: Optional[torch.Tensor] = None
    off_b: Optional[torch.Tensor] = None
    mask_b: Optional[torch.Tensor] = None
    n_cut_chars: int = 0          # characters whose token did not fit into max_tokens


def _char_tensors(aligns: list[charmap.Alignment], starts: list[int], keep: list[int]):
    B = len(aligns)
    C = max([a.n_chars for a in aligns] + [1])
    pos = np.zeros((B, C), dtype=np.int64)
    off = np.zeros((B, C), dtype=np.int64)
    mask = np.zeros((B, C), dtype=bool)
    cut = 0
    for i, a in enumerate(aligns):
        n = a.n_chars
        if n == 0:
            continue
        if len(a.ids) == 0:  # nothing tokenized (e.g. only spaces): characters read the first special token
            pos[i, :n] = 0
            mask[i, :n] = True
            continue
        ok = a.char_to_token < keep[i]
        pos[i, :n] = np.where(ok, starts[i] + a.char_to_token, 0)
        off[i, :n] = a.char_offset
        mask[i, :n] = ok
        cut += int((~ok).sum())
    return torch.from_numpy(pos), torch.from_numpy(off), torch.from_numpy(mask), cut


def build_pair_inputs(aligns_a: list[charmap.Alignment], aligns_b: list[charmap.Alignment] | None,
                      cls_id: int | None, sep_id: int | None, pad_id: int, max_tokens: int) -> PackedInputs:
    """``[CLS] a [SEP] (b [SEP])`` per example, right-padded, plus each character's position.

    ``cls_id``/``sep_id`` may be None (a tokenizer without them): then they are left out. When the
    token budget is exceeded, ``b`` is cut first, then ``a``; characters whose token was cut get
    mask 0 and are counted in ``n_cut_chars`` (truncate by ``max_chars`` to avoid it).
    """
    head = [cls_id] if cls_id is not None else []
    sep = [sep_id] if sep_id is not None else []
    rows, types, starts_a, keep_a, starts_b, keep_b = [], [], [], [], [], []
    for i, a in enumerate(aligns_a):
        b = aligns_b[i] if aligns_b is not None else None
        budget = max_tokens - len(head) - len(sep) - (len(sep) if b is not None else 0)
        la, lb = len(a.ids), (len(b.ids) if b is not None else 0)
        if la + lb > budget:
            lb = max(0, min(lb, budget - la)) if b is not None else 0
            la = min(la, budget - lb)
        ids = head + a.ids[:la] + sep
        tt = [0] * len(ids)
        starts_a.append(len(head))
        keep_a.append(la)
        if b is not None:
            starts_b.append(len(ids))
            keep_b.append(lb)
            ids = ids + b.ids[:lb] + sep
            tt = tt + [1] * (lb + len(sep))
        rows.append(ids)
        types.append(tt)
    T = max(max(len(r) for r in rows), 1)
    B = len(rows)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    attn = torch.zeros((B, T), dtype=torch.long)
    ttype = torch.zeros((B, T), dtype=torch.long)
    for i, (r, t) in enumerate(zip(rows, types)):
        input_ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        attn[i, :len(r)] = 1
        ttype[i, :len(t)] = torch.tensor(t, dtype=torch.long)
    last = torch.tensor([max(len(r) - 1, 0) for r in rows], dtype=torch.long)
    pos_a, off_a, mask_a, cut = _char_tensors(aligns_a, starts_a, keep_a)
    out = PackedInputs(input_ids, attn, ttype, last, pos_a, off_a, mask_a, n_cut_chars=cut)
    if aligns_b is not None:
        out.pos_b, out.off_b, out.mask_b, cut_b = _char_tensors(aligns_b, starts_b, keep_b)
        out.n_cut_chars += cut_b
    return out


_special_id = special_id  # the adapters' name for pretrain.exports.special_id


@register_encoder("hf")
class HFTextEncoder(TextEncoder):
    """A stock ``AutoModel`` body (BERT-family encoder or Llama-family decoder) + its tokenizer.

    Pooling: the ``[CLS]`` state for encoders; the last real token's state for decoders (whose
    first token sees nothing else). Pairs are packed as ``[CLS] a [SEP] b [SEP]`` with segment ids
    when the model has token types.
    """

    def __init__(self, backbone: nn.Module, tokenizer, model_dir: str | Path | None = None, meta: dict | None = None,
                 alignment: str = "auto"):
        hidden = backbone.config.hidden_size
        super().__init__(hidden, model_dir, meta)
        self.backbone = backbone
        self.tokenizer = tokenizer
        cfg = backbone.config
        self.is_decoder = (self.meta.get("model_type") == "decoder") or bool(getattr(cfg, "is_decoder", False)) \
            or cfg.model_type in ("llama", "gpt2", "mistral", "qwen2", "qwen3")
        self.use_token_types = getattr(cfg, "type_vocab_size", 0) > 1
        self.max_tokens = int(getattr(cfg, "max_position_embeddings", 512) or 512)
        if "roberta" in cfg.model_type:  # RoBERTa numbers positions from pad_token_id + 1
            self.max_tokens -= int(cfg.pad_token_id or 0) + 1
        self.cls_id = _special_id(tokenizer, self.meta, "cls")
        self.sep_id = _special_id(tokenizer, self.meta, "sep")
        pad = _special_id(tokenizer, self.meta, "pad")
        self.pad_id = pad if pad is not None else 0
        self.alignment = alignment if alignment != "auto" else ("offsets" if charmap.supports_offsets(tokenizer) else "words")
        self.n_cut_chars = 0  # characters lost to the token budget so far (reported by the trainer)

    @classmethod
    def from_pretrained(cls, model_dir, meta, random_init=False, alignment: str = "auto",
                        trust_remote_code: bool = False, **options):
        ex = load_export(model_dir, task="base", trust_remote_code=trust_remote_code, random_init=random_init)
        return cls(ex.model, ex.tokenizer, model_dir, meta, alignment=alignment)

    def align(self, texts: Sequence[str]) -> list[charmap.Alignment]:
        return charmap.align(self.tokenizer, texts, self.alignment)

    def encode(self, texts_a, texts_b=None, max_chars=None) -> EncodedBatch:
        if max_chars is not None:
            texts_a = [t[:max_chars] for t in texts_a]
            texts_b = [t[:max_chars] for t in texts_b] if texts_b is not None else None
        al_a = self.align(texts_a)
        al_b = self.align(texts_b) if texts_b is not None else None
        p = build_pair_inputs(al_a, al_b, self.cls_id, self.sep_id, self.pad_id, self.max_tokens)
        self.n_cut_chars += p.n_cut_chars
        dev = self.device
        kwargs = dict(input_ids=p.input_ids.to(dev), attention_mask=p.attention_mask.to(dev))
        if self.use_token_types:
            kwargs["token_type_ids"] = p.token_type_ids.to(dev)
        hidden = self.backbone(**kwargs).last_hidden_state
        if self.is_decoder:
            pooled = hidden[torch.arange(hidden.size(0), device=dev), p.last_index.to(dev)]
        else:
            pooled = hidden[:, 0]
        ca = self.gather_chars(hidden, p.pos_a.to(dev), p.off_a.to(dev), p.mask_a.to(dev))
        out = EncodedBatch(pooled, ca, p.mask_a.to(dev))
        if al_b is not None:
            out.char_states_b = self.gather_chars(hidden, p.pos_b.to(dev), p.off_b.to(dev), p.mask_b.to(dev))
            out.char_mask_b = p.mask_b.to(dev)
        return out
