"""CLOWER-style contrastive learning over word and character representations (Chen et al.,
COLING 2022), reconstructed: only the abstract is verified (``methods.md`` §4), so every choice
below is ours and an option of :class:`Clower.Config` (``docs/clower.md``).

A character BERT is trained with the engine's whole-word MLM (this class *is* the ``mlm``
objective, subclassed) plus an InfoNCE term that pulls each word's pooled character
representation towards a word-level representation of the same word:

* **Words.** The loader's aligned ``word`` stream (``word.input_ids`` / ``word.char_len``, one
  token per segmented word) defines them: every character token is assigned, by cumulative
  character offsets (:func:`align_to_words`, the convention of ``tokenization/align.py`` done
  batched in torch), to the word token that covers its last character. Special, ``[UNK]`` and
  padding word tokens, words no character token maps to, and (``fallback_pieces``) the character
  pieces the word vocabulary spells unknown words with are skipped.
* **Char side.** ``c_j = pool(H[chars of word j])`` (``pooling``: mean / max / first) over the
  hidden states of the MLM forward (``contrast_states: masked``, no extra pass) or of a second,
  unmasked forward (``clean``), then a projection head (``projection``).
* **Word side.** ``u_j`` from a word-embedding table over the ``word`` vocabulary
  (``word_view: table``) or from the *same* encoder run over the word sequence with that table as
  its input embeddings (``word_view: encoder``, AMBERT-like weight sharing), then its own
  projection head.
* **Loss.** ``L_cl = sum_j w_j * -log softmax_k(cos(c_j, u_k) / temperature)[j] / sum_j w_j`` over
  the in-batch words (optionally symmetric, u -> c too). Another occurrence of the same word type
  is not a negative (masked out of the denominator). Single-character words are kept,
  down-weighted (``single_char_weight``) or excluded (``single_char``). At most ``max_words``
  words per batch take part (a uniform sample; the similarity matrix is ``max_words``^2).
* ``loss = L_mlm + weight * L_cl``.

What ships is exactly the ``mlm`` baseline's model (the ``*ForMaskedLM`` of ``model.arch``:
``BertForMaskedLM``, ``ModernBertForMaskedLM`` in the regime): the word table and the projection
heads are dropped, nothing changes at fine-tuning or inference. The encoder passes (and
``word_view: encoder``'s weight-shared pass over the word sequence) go through
:func:`pretrain.models.run_body`, so every arch works; ModernBERT gets no segment ids (it has none).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import UserError
from pretrain.models import encoder_body, mlm_head, run_body
from pretrain.objectives.base import ObjectiveContext, register
from pretrain.objectives.mlm import MaskedLM

WORD_KIND = "word"


def align_to_words(char_len: torch.Tensor, word_char_len: torch.Tensor, vis_len: torch.Tensor | None = None,
                   word_vis_len: torch.Tensor | None = None) -> torch.Tensor:
    """For each primary token [B, T], the index of the word token [B, T2] covering its last
    visible character, or -1 for tokens that cover no character.

    The alignment is :func:`tokenization.align.align_tokens` (visible character spans: the last
    ``vis_len`` characters of each ``char_len`` span; whitespace the char stream folds into the
    next token is not matched to the word stream's whitespace tokens).
    """
    from tokenization.align import align_tokens

    _, last = align_tokens(char_len.long().numpy(), word_char_len.long().numpy(),
                           None if vis_len is None else vis_len.numpy(),
                           None if word_vis_len is None else word_vis_len.numpy())
    j = torch.from_numpy(last)
    return torch.where(char_len > 0, j, torch.full_like(j, -1))


def contrastive_loss(c: torch.Tensor, u: torch.Tensor, word_ids: torch.Tensor, weights: torch.Tensor,
                     temperature: float, symmetric: bool = False) -> torch.Tensor:
    """Weighted InfoNCE between char-side ``c`` [N, D] and word-side ``u`` [N, D] vectors.

    Row ``j``'s positive is ``u_j``; every other ``u_k`` is a negative unless ``word_ids[k] ==
    word_ids[j]`` (the same word type elsewhere in the batch: a false negative, left out).
    """
    if c.shape[0] == 0 or float(weights.sum()) <= 0:
        return (c.sum() + u.sum()) * 0.0
    c = F.normalize(c.float(), dim=-1)
    u = F.normalize(u.float(), dim=-1)
    logits = c @ u.t() / temperature
    same = word_ids[:, None] == word_ids[None, :]
    same.fill_diagonal_(False)
    logits = logits.masked_fill(same, float("-inf"))
    target = torch.arange(c.shape[0], device=c.device)
    w = weights.float()
    loss = (F.cross_entropy(logits, target, reduction="none") * w).sum() / w.sum()
    if symmetric:
        loss_t = (F.cross_entropy(logits.t(), target, reduction="none") * w).sum() / w.sum()
        loss = 0.5 * (loss + loss_t)
    return loss


def pool(states: torch.Tensor, tok_pos: torch.Tensor, tok_word: torch.Tensor, n_words: int,
         how: Literal["mean", "max", "first"]) -> torch.Tensor:
    """Pool flat token states ``states`` [B*T, H] at ``tok_pos`` [M] into ``n_words`` vectors by ``tok_word`` [M]."""
    x = states.index_select(0, tok_pos)
    H = states.shape[-1]
    if how == "mean":
        out = x.new_zeros(n_words, H).index_add_(0, tok_word, x)
        cnt = torch.bincount(tok_word, minlength=n_words).clamp(min=1).to(x.dtype)
        return out / cnt[:, None]
    if how == "max":
        out = x.new_full((n_words, H), float("-inf"))
        return out.scatter_reduce(0, tok_word[:, None].expand(-1, H), x, reduce="amax", include_self=True)
    first = torch.full((n_words,), states.shape[0], dtype=torch.long, device=states.device)
    first = first.scatter_reduce(0, tok_word, tok_pos, reduce="amin", include_self=True)
    return states.index_select(0, first)


def projection(kind: str, hidden: int, dim: int) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    if kind == "linear":
        return nn.Linear(hidden, dim)
    return nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, dim))


@register
class Clower(MaskedLM):
    """Whole-word MLM + word/char contrastive term; exports the plain char encoder (the mlm model)."""

    name = "clower"
    model_type = "encoder"
    extra_streams = (WORD_KIND,)
    card_note = ("CLOWER-style (Chen et al., 2022) word/character contrastive learning added to "
                 "whole-word MLM; a reconstruction from the abstract (word view, temperature and "
                 "weights are documented choices, not the paper's values). Ships a plain char encoder (the mlm model).")

    @dataclass
    class Config(MaskedLM.Config):
        # the contrastive term (defaults: SimCSE-style, NOT the paper's values, which are unknown)
        weight: float = 1.0  # lambda in loss = mlm + lambda * contrastive
        temperature: float = 0.1
        symmetric: bool = True  # add the u -> c direction (CLIP-style)
        pooling: Literal["mean", "max", "first"] = "mean"
        # projection heads on both sides ("mlp": Linear-GELU-Linear; "linear"; "none") and their width
        projection: Literal["mlp", "linear", "none"] = "mlp"
        proj_dim: int = 128  # ignored for "none"
        # where the word-level view comes from: an embedding table over the word vocabulary, or the
        # same (weight-shared) encoder run over the word sequence with that table as its embeddings
        word_view: Literal["table", "encoder"] = "table"
        # char states for the contrast: those of the MLM forward (masked input, no extra cost) or a
        # second forward over the clean input
        contrast_states: Literal["masked", "clean"] = "masked"
        # single-character words: kept (weight 1), down-weighted, or excluded (neither anchor nor negative)
        single_char: Literal["keep", "downweight", "exclude"] = "downweight"
        single_char_weight: float = 0.1
        max_words: int = 1024  # words per batch in the contrastive term (uniform sample above it)
        # pieces of a word the word vocabulary does not know (it falls back to characters; seen
        # through ``word.word_start``): left out ("exclude") or used as words of their own ("keep")
        fallback_pieces: Literal["exclude", "keep"] = "exclude"

        def validate(self) -> None:
            super().validate()
            if self.temperature <= 0:
                raise ValueError("objective_options.temperature must be positive")
            if self.weight < 0:
                raise ValueError("objective_options.weight must be >= 0")
            if self.max_words < 2:
                raise ValueError("objective_options.max_words must be at least 2")
            if not 0.0 <= self.single_char_weight <= 1.0:
                raise ValueError("objective_options.single_char_weight must be in [0, 1]")

    def __init__(self, cfg: "Clower.Config", ctx: ObjectiveContext):
        super().__init__(cfg, ctx)
        if WORD_KIND not in ctx.vocabs:
            raise UserError(
                f"clower needs the '{WORD_KIND}' vocabulary and shards (add '{WORD_KIND}' to the "
                "tokenization config's vocabulary kinds)"
            )
        wv = ctx.vocabs[WORD_KIND]
        self.word_vocab = wv
        hidden = self.model.config.hidden_size
        self.word_table = nn.Embedding(wv.padded_size, hidden, padding_idx=wv.pad_id)
        nn.init.normal_(self.word_table.weight, std=self.model.config.initializer_range)
        dim = hidden if cfg.projection == "none" else cfg.proj_dim
        self.char_proj = projection(cfg.projection, hidden, dim)
        self.word_proj = projection(cfg.projection, hidden, dim)
        bad = torch.zeros(wv.padded_size, dtype=torch.bool)
        bad[sorted({wv.pad_id, wv.unk_id, wv.cls_id, wv.sep_id, wv.mask_id, *wv.special_ids})] = True
        bad[wv.size:] = True
        self._bad_word = bad

    # ---- data ----------------------------------------------------------------------------------
    def collate(self, batch: dict[str, np.ndarray], generator: torch.Generator) -> dict[str, torch.Tensor]:
        key = f"{WORD_KIND}.input_ids"
        if key not in batch or f"{WORD_KIND}.char_len" not in batch:
            raise UserError(f"clower needs the aligned '{WORD_KIND}' stream in the batch ({key}, {WORD_KIND}.char_len)")
        out = super().collate(batch, generator)
        cfg = self.cfg
        char_len = torch.from_numpy(np.ascontiguousarray(batch["char_len"])).long()
        w_ids = torch.from_numpy(np.ascontiguousarray(batch[key])).long()
        w_len = torch.from_numpy(np.ascontiguousarray(batch[f"{WORD_KIND}.char_len"])).long()
        B, T = char_len.shape
        T2 = w_ids.shape[1]
        vis = batch.get("vis_len")
        w_vis = batch.get(f"{WORD_KIND}.vis_len")
        tok_word = align_to_words(char_len, w_len,  # [B, T] word column or -1
                                  None if vis is None else torch.from_numpy(np.ascontiguousarray(vis)),
                                  None if w_vis is None else torch.from_numpy(np.ascontiguousarray(w_vis)))
        flat_word = torch.where(tok_word >= 0, tok_word + torch.arange(B)[:, None] * T2, torch.full_like(tok_word, -1))
        has_char = torch.zeros(B * T2 + 1, dtype=torch.bool)
        has_char[flat_word.view(-1).clamp(min=-1) + 1] = True  # slot 0 collects the -1s
        has_char = has_char[1:].view(B, T2)
        wid = w_ids.clamp(min=0, max=self.word_vocab.padded_size - 1)
        use = has_char & (w_len > 0) & ~self._bad_word[wid]
        ws = batch.get(f"{WORD_KIND}.word_start")
        if ws is not None and cfg.fallback_pieces == "exclude":
            # the word vocabulary spells an unknown word with character pieces: only tokens that
            # are a whole segmented word (a word start followed by a word start) are words here
            ws = torch.from_numpy(np.ascontiguousarray(ws)).bool()
            nxt = torch.cat([ws[:, 1:], torch.ones(B, 1, dtype=torch.bool)], dim=1)
            use &= ws & nxt
        single = w_len == 1
        if cfg.single_char == "exclude":
            use &= ~single
        # at most max_words words: a uniform sample drawn from the trainer's generator
        n_use = int(use.sum())
        if n_use > cfg.max_words:
            scores = torch.rand(B * T2, generator=generator).masked_fill(~use.view(-1), 2.0)
            keep = torch.zeros(B * T2, dtype=torch.bool)
            keep[scores.argsort()[: cfg.max_words]] = True
            use &= keep.view(B, T2)
        word_flat = use.view(-1).nonzero().squeeze(1)  # [N] flat positions in the word stream
        index = torch.full((B * T2,), -1, dtype=torch.long)
        index[word_flat] = torch.arange(word_flat.numel())
        tw = torch.where(flat_word >= 0, index[flat_word.clamp(min=0)], torch.full_like(flat_word, -1)).view(-1)
        tok_pos = (tw >= 0).nonzero().squeeze(1)
        weights = torch.ones(word_flat.numel())
        if cfg.single_char == "downweight":
            weights = torch.where(single.view(-1)[word_flat], torch.full_like(weights, cfg.single_char_weight), weights)
        out.update({
            "cl_tok_pos": tok_pos, "cl_tok_word": tw[tok_pos], "cl_word_ids": w_ids.view(-1)[word_flat],
            "cl_word_pos": word_flat, "cl_weight": weights,
        })
        if cfg.word_view == "encoder":
            out["word_input_ids"] = w_ids
            wam = batch.get(f"{WORD_KIND}.attention_mask")
            out["word_attention_mask"] = (torch.from_numpy(np.ascontiguousarray(wam)).long() if wam is not None
                                          else (w_ids != self.word_vocab.pad_id).long())
        if cfg.contrast_states == "clean":
            out["clean_input_ids"] = torch.from_numpy(np.ascontiguousarray(batch["input_ids"])).long()
        return out

    # ---- model ---------------------------------------------------------------------------------
    def _word_side(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.cfg.word_view == "table":
            return self.word_table(batch["cl_word_ids"])
        w = batch["word_input_ids"]
        h = run_body(encoder_body(self.model), inputs_embeds=self.word_table(w), attention_mask=batch["word_attention_mask"])
        return h.reshape(-1, h.shape[-1]).index_select(0, batch["cl_word_pos"])

    def _terms(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        body = encoder_body(self.model)
        h = body(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"))[0]
        flat = h.reshape(-1, h.shape[-1])
        logits = mlm_head(self.model, flat.index_select(0, batch["mlm_positions"]))
        if "clean_input_ids" in batch:
            hc = body(input_ids=batch["clean_input_ids"], attention_mask=batch.get("attention_mask"))[0]
            flat = hc.reshape(-1, hc.shape[-1])
        n = batch["cl_word_ids"].shape[0]
        c = self.char_proj(pool(flat, batch["cl_tok_pos"], batch["cl_tok_word"], n, self.cfg.pooling))
        u = self.word_proj(self._word_side(batch))
        cl = contrastive_loss(c, u, batch["cl_word_ids"], batch["cl_weight"], self.cfg.temperature, self.cfg.symmetric)
        return logits, cl, c

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits, cl, _ = self._terms(batch)
        mlm = F.cross_entropy(logits.float(), batch["mlm_labels"]) if logits.shape[0] else logits.sum() * 0.0
        loss = mlm + self.cfg.weight * cl
        return {"loss": loss, "mlm": mlm.detach(), "contrastive": cl.detach()}

    @torch.no_grad()
    def evaluate(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits, cl, _ = self._terms(batch)
        logits = logits.float()
        labels = batch["mlm_labels"]
        n = torch.tensor(float(labels.numel()), device=logits.device)
        mlm = F.cross_entropy(logits, labels, reduction="sum") if labels.numel() else n * 0
        acc = (logits.argmax(-1) == labels).sum().float()
        return {"loss": mlm, "loss_count": n, "accuracy": acc, "accuracy_count": n, "contrastive": cl.detach()}

    def flops_per_token(self) -> float:
        base = super().flops_per_token()
        factor = 1.0
        if self.cfg.contrast_states == "clean":
            factor += 1.0
        if self.cfg.word_view == "encoder":
            factor += 0.7  # the word sequence is about 0.6-0.7 x the char sequence
        return base * factor
