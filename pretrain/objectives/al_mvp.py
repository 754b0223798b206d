"""``al_mvp``: aligned multi-vocabulary pre-training in the style of MVP-BERT's AL-MVP (Zhu, 2021).

**This is a reconstruction, not MVP-BERT.** Only the paper's abstract could be read
(``methods.md`` §2): SGT inputs are efficient; Hi-MVP and AL-MVP help most on span-level tasks;
AL-MVP beats AMBERT and resists adversarial attacks. The designs below are the readings of
``methods.md`` §2.2; every choice the abstract leaves open is an option of the ``Config`` classes
and is listed in ``docs/multivocab.md``. Call the results "MVP-style".

It reads two streams aligned by characters: the ``char`` stream (fine) and the ``sgt`` stream
(coarse), aligned by their *visible* (non-whitespace) character spans
(:func:`tokenization.align.align_tokens`: the char stream folds a dropped ``\n`` into the next
token, the SGT stream keeps it as a token); masking is consistent across them (:func:`pretrain.objectives.multiview.consistent_mask`:
whole SGT words are selected with the engine's whole-word masking, and exactly their characters
are masked in the char view, with the same 80/10/10 action).

``al_mvp`` (aligned), two readings (``reading``):

* ``a`` (**default**): an SGT-input encoder (the stock ``*ForMaskedLM`` of ``model.arch`` over the
  SGT vocabulary: ``BertForMaskedLM``; ``ModernBertForMaskedLM`` in the regime). A
  masked SGT token is predicted in the SGT vocabulary *and* each of its characters in the char
  vocabulary by a character decoder: ``char_head(h_token + offset_embedding[k])`` for the k-th
  char token inside it (a BERT-style head for every arch). Exports that stock model (no custom code) plus
  ``char_decoder.safetensors``; the adapter ``al_mvp_char`` is the stock ``hf`` path whose
  per-character offset embedding starts from the pre-trained one, so span fine-tuning starts from
  a pre-trained character decoder.
* ``b``: AMBERT-like: the char and SGT views through one shared encoder with separate token
  embeddings, MLM on both, plus an alignment loss between each SGT token's state and the mean of
  its characters' states (``align_loss``: InfoNCE over the tokens of the batch, other occurrences
  of the same SGT type left out of the negatives, or cosine).
  Exports ``AmbertForMaskedLM`` (trust_remote_code), adapter ``multivocab_pair``.

Why ``a`` is the default: the issue's common goal is "the efficiency of SGT inputs without losing
character-level precision on span tasks". Reading ``a`` keeps one SGT-length pass at fine-tuning
and inference and ships a stock model; reading ``b`` costs two passes, like AMBERT, and differs
from ``amber`` only by the alignment term, so ``amber`` vs ``al_mvp`` would measure little beyond
that term. ``b`` fits the abstract's "compared with AMBERT" at least as well and is one option
away: ``objective_options.reading=b`` (the evidence recipe trains both).

The two-view helpers (alignment, consistent masking, export plumbing) are in ``multiview.py``;
``hi_mvp.py`` is the hierarchical variant.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.flops import encoder_mlm_flops_per_token
from pretrain.models import body_layers, build_encoder, count_parameters, encoder_body, mlm_head, norm_eps
from pretrain.objectives.base import Objective, ObjectiveContext, register
from pretrain.objectives.multiview import (
    VIEW_PREFIXES, MaskingOptions, MultiVocabExportMixin, ce_sum_count, check_kind, check_positions,
    consistent_mask, flat_targets, gather_flat, group_offsets, mask_or_none, mean_ce, multivocab_config, random_ids,
    stream, validate_masking, vocab_needs_remote_code,
)

CHAR_DECODER_FILE = "char_decoder.safetensors"


def align_infonce(p: torch.Tensor, q: torch.Tensor, type_ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between pooled char states ``p`` and SGT states ``q`` [N, D].

    Anchor ``j``'s positive is ``q_j``; every other ``q_k`` is a negative unless ``type_ids[k] ==
    type_ids[j]`` (another occurrence of the same SGT token type in the batch: a false negative,
    left out as ``clower`` does).
    """
    p, q = F.normalize(p, dim=-1), F.normalize(q, dim=-1)
    sim = p @ q.t() / temperature
    same = type_ids[:, None].to(sim.device) == type_ids[None, :].to(sim.device)
    same.fill_diagonal_(False)
    sim = sim.masked_fill(same, float("-inf"))
    tgt = torch.arange(sim.shape[0], device=sim.device)
    return 0.5 * (F.cross_entropy(sim, tgt) + F.cross_entropy(sim.t(), tgt))


# ---------------------------------------------------------------------------- AL-MVP


class CharDecoder(nn.Module):
    """Predicts the k-th char of a coarse token from the token's state: ``head(h + offset[k])``."""

    def __init__(self, hidden: int, char_vocab: int, max_offset: int, eps: float = 1e-12, init_std: float = 0.02):
        super().__init__()
        from pretrain.remote.modeling_multivocab import MlmHead

        class _C:  # the few config fields MlmHead reads
            hidden_size = hidden
            layer_norm_eps = eps
            initializer_range = init_std

        self.max_offset = max_offset
        self.offset = nn.Embedding(max_offset, hidden)
        nn.init.zeros_(self.offset.weight)  # same start as the fine-tuning suite's offset embedding
        self.head = MlmHead(_C, char_vocab, own_weight=True)

    def states(self, token_states: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return token_states + self.offset(offsets.clamp(0, self.max_offset - 1))

    def forward(self, token_states: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.head(self.states(token_states, offsets))


@register
class AlMvp(MultiVocabExportMixin, Objective):
    name = "al_mvp"
    model_type = "encoder"
    # streams: fine_kind and coarse_kind (MultiVocabExportMixin.streams)
    card_note = ("AL-MVP, a reconstruction from the MVP-BERT abstract (Zhu, 2021): the method section "
                 "was not available, so the aligned multi-vocabulary design is a documented reading.")
    finetune_adapter = "al_mvp_char"  # reading b switches to "multivocab_pair" (see finetune_adapter_name)

    @dataclass
    class Config:
        reading: Literal["a", "b"] = "a"  # see the module docstring; "a" is the default, and why
        fine_kind: str = "char"
        coarse_kind: str = "sgt"
        mask_prob: float = 0.15
        p_mask: float = 0.8
        p_random: float = 0.1
        whole_word: bool = True
        max_ngram: int = 1
        coarse_weight: float = 1.0  # SGT-vocabulary MLM
        char_weight: float = 1.0  # (a) char decoder loss; (b) char-view MLM
        max_offset: int = 32  # (a) offset embeddings (the fine-tuning suite's TextEncoder.max_offset)
        align_loss: Literal["infonce", "cosine", "none"] = "infonce"  # (b)
        align_weight: float = 1.0  # (b)
        temperature: float = 0.1  # (b) InfoNCE
        align_max_tokens: int = 1024  # (b) SGT tokens per batch in the alignment loss (random subset)

        def validate(self) -> None:
            validate_masking(self)
            if self.max_offset < 1 or self.align_max_tokens < 2 or self.temperature <= 0:
                raise ValueError("max_offset >= 1, align_max_tokens >= 2 and temperature > 0 required")

    def __init__(self, cfg: Config, ctx: ObjectiveContext):
        super().__init__(cfg, ctx)
        self.fine_vocab = check_kind(ctx, cfg.fine_kind, "fine_kind", self.name)
        self.coarse_vocab = check_kind(ctx, cfg.coarse_kind, "coarse_kind", self.name)
        cv, fv = self.coarse_vocab, self.fine_vocab
        if cfg.reading == "a":
            self.model = build_encoder(ctx.model, cv.padded_size, pad_id=cv.pad_id)
            h = self.model.config.hidden_size
            self.char_decoder = CharDecoder(h, fv.padded_size, cfg.max_offset, norm_eps(self.model.config),
                                            self.model.config.initializer_range)
        else:
            from pretrain.remote.modeling_multivocab import AmbertConfig, AmbertForMaskedLM

            self.model = AmbertForMaskedLM(multivocab_config(AmbertConfig, ctx, fv, cv))
            self.char_decoder = None
        self._fine_random = random_ids(fv)
        self._coarse_random = random_ids(cv)
        self._masking = MaskingOptions(cfg.mask_prob, cfg.p_mask, cfg.p_random, cfg.whole_word, cfg.max_ngram)
        self._pred_frac = cfg.mask_prob
        self._tmp: Optional[tempfile.TemporaryDirectory] = None

    @property
    def finetune_adapter_name(self) -> str:
        return "al_mvp_char" if self.cfg.reading == "a" else "multivocab_pair"

    # ---- data
    def collate(self, batch, generator):
        fine = stream(batch, self.cfg.fine_kind, self.ctx.primary)
        coarse = stream(batch, self.cfg.coarse_kind, self.ctx.primary)
        limit = self.model.config.max_position_embeddings
        check_positions(coarse["input_ids"].shape[1], limit, f"the '{self.cfg.coarse_kind}' view")
        if self.cfg.reading == "b":
            check_positions(fine["input_ids"].shape[1], limit, f"the '{self.cfg.fine_kind}' view")
        m = consistent_mask(fine, coarse, self.fine_vocab, self.coarse_vocab, generator, self._masking,
                            self._fine_random, self._coarse_random)
        out = {"coarse_input_ids": m["coarse_input"]}
        a = mask_or_none(coarse["attention_mask"])
        if a is not None:
            out["coarse_attention_mask"] = a
        out["coarse_pos"], out["coarse_labels"] = flat_targets(m["coarse_labels"])
        first = m["first"]
        B, S = coarse["input_ids"].shape
        if self.cfg.reading == "a":
            # char targets: every fine token all of whose (visible-span) coarse tokens are selected,
            # read from the first of them; a fine token straddling an unselected coarse token would
            # have its character in the coarse input (label leakage) and is not a target
            sel = m["fine_all"]
            off = group_offsets(first)
            b_idx = torch.arange(first.shape[0]).unsqueeze(1).expand_as(first)
            src = (b_idx * S + first.clamp(min=0))[sel]
            out["char_src"], out["char_off"], out["char_labels"] = src, off[sel], m["fine_labels"][sel]
        else:
            out["input_ids"] = m["fine_input"]
            fa = mask_or_none(fine["attention_mask"])
            if fa is not None:
                out["attention_mask"] = fa
            out["fine_pos"], out["fine_labels"] = flat_targets(m["fine_labels"])
            out["coarse_index"] = first
            # alignment pairs: real SGT tokens that own at least one char token; a random subset
            owned = torch.zeros(B, S + 1, dtype=torch.bool)
            ok = (first >= 0) & ~fine["special_mask"]
            owned.scatter_(1, torch.where(ok, first, torch.full_like(first, S)), ok)
            cand = (owned[:, :S] & ~coarse["special_mask"] & (coarse["attention_mask"] > 0)).reshape(-1)
            idx = cand.nonzero().squeeze(1)
            if idx.numel() > self.cfg.align_max_tokens:
                keep = torch.randperm(idx.numel(), generator=generator)[: self.cfg.align_max_tokens]
                idx = idx[keep.sort().values]
            out["align_idx"] = idx
            # the SGT type of each anchor: other occurrences of the same type are not negatives
            out["align_ids"] = coarse["input_ids"].reshape(-1)[idx]
        self._pred_frac = 0.9 * self._pred_frac + 0.1 * out["coarse_pos"].numel() / max(1, B * S)
        return out

    # ---- model
    def _terms(self, batch):
        if self.cfg.reading == "a":
            h = encoder_body(self.model)(input_ids=batch["coarse_input_ids"],
                                attention_mask=batch.get("coarse_attention_mask")).last_hidden_state
            cl = mlm_head(self.model, gather_flat(h, batch["coarse_pos"]))
            hs = h.reshape(-1, h.shape[-1]).index_select(0, batch["char_src"])
            fl = self.char_decoder(hs, batch["char_off"])
            return fl, batch["char_labels"], cl, None
        from pretrain.remote.modeling_multivocab import pool_groups

        out = self.model.ambert(batch["input_ids"], batch.get("attention_mask"), batch["coarse_input_ids"],
                                batch.get("coarse_attention_mask"))
        fl = self.model.fine_logits(gather_flat(out.last_hidden_state, batch["fine_pos"]))
        cl = self.model.coarse_logits(gather_flat(out.coarse_hidden_state, batch["coarse_pos"]))
        align = None
        if self.cfg.align_loss != "none" and batch["align_idx"].numel() >= 2:
            z = out.coarse_hidden_state
            pooled, _ = pool_groups(out.last_hidden_state, batch["coarse_index"], z.shape[1], "mean")
            p = gather_flat(pooled, batch["align_idx"]).float()
            q = gather_flat(z, batch["align_idx"]).float()
            if self.cfg.align_loss == "cosine":
                align = (1.0 - F.cosine_similarity(p, q, dim=-1)).mean()
            else:
                align = align_infonce(p, q, batch["align_ids"], self.cfg.temperature)
        return fl, batch["fine_labels"], cl, align

    def forward(self, batch):
        fl, flab, cl, align = self._terms(batch)
        char = mean_ce(fl, flab)
        coarse = mean_ce(cl, batch["coarse_labels"])
        loss = self.cfg.coarse_weight * coarse + self.cfg.char_weight * char
        out = {"mlm_sgt": coarse.detach(), "mlm_char": char.detach()}
        if align is not None:
            loss = loss + self.cfg.align_weight * align
            out["align"] = align.detach()
        out["loss"] = loss
        return out

    @torch.no_grad()
    def evaluate(self, batch):
        fl, flab, cl, align = self._terms(batch)
        cs, ca, cn = ce_sum_count(cl, batch["coarse_labels"])
        fs, fa, fn = ce_sum_count(fl, flab)
        out = {"loss": cs, "loss_count": cn, "accuracy": ca, "accuracy_count": cn,
               "char_loss": fs, "char_loss_count": fn, "char_accuracy": fa, "char_accuracy_count": fn}
        if align is not None:
            out["align"] = align
        return out

    # ---- export
    def export(self):
        if self.cfg.reading == "b":
            return super().export()  # MultiVocabExportMixin: the remote modelling code
        return self.model

    def export_files(self) -> list:
        if self.cfg.reading == "b":
            return super().export_files()
        # reading a: a stock BertForMaskedLM (the SGT tokenizer is the primary one when data.kind is
        # the coarse kind) + the pre-trained character decoder
        from safetensors.torch import save_file

        self._tmp = tempfile.TemporaryDirectory(prefix="al-mvp-export-")
        path = Path(self._tmp.name) / CHAR_DECODER_FILE
        sd = {k: v.detach().cpu().contiguous() for k, v in self.char_decoder.state_dict().items()}
        save_file(sd, str(path), metadata={"max_offset": str(self.cfg.max_offset), "fine_kind": self.cfg.fine_kind})
        return [path]

    def export_meta(self) -> dict:
        meta = {"finetune_adapter": self.finetune_adapter_name, "reading": self.cfg.reading,
                "fine_kind": self.cfg.fine_kind, "coarse_kind": self.cfg.coarse_kind, "reconstruction": True}
        if self.cfg.reading == "b":
            meta["trust_remote_code"] = True
            meta["view_tokenizers"] = dict(VIEW_PREFIXES)
        else:
            meta["trust_remote_code"] = vocab_needs_remote_code(self.ctx.vocab.path)
            meta["char_decoder"] = CHAR_DECODER_FILE
        return meta

    def flops_per_token(self) -> float:
        layers, hidden, _, _ = self.ctx.model.dims()
        enc = body_layers(encoder_body(self.model) if self.cfg.reading == "a" else self.model.ambert.bert)
        one = encoder_mlm_flops_per_token(count_parameters(enc), layers, hidden, self.ctx.seq_len,
                                          self.coarse_vocab.padded_size, self._pred_frac)
        return one if self.cfg.reading == "a" else 2.0 * one
