"""``hi_mvp``: hierarchical multi-vocabulary pre-training in the style of MVP-BERT's Hi-MVP (Zhu, 2021).

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

``hi_mvp`` (hierarchical): the lower ``lower_layers`` layers run on the char sequence; the char
states are pooled (``pooling``: mean or first) into one vector per SGT token; the upper layers run
on the shorter SGT sequence. Two MLM heads: an SGT-vocabulary head on the upper states and a
char-vocabulary head on the char states. ``char_head_on: fused`` (default) reads the fused state
``LayerNorm(lower + W @ upper[its SGT token])``, the same character decoder the span fine-tuning
uses, so that path is pre-trained; ``lower`` reads the lower-layer states only (the literal
reading of §2.2). Export: ``HiMvpForMaskedLM`` with its modelling code (trust_remote_code),
adapter ``hi_mvp``: every character gets the fused state of its char token (+ the offset embedding).

Both levels are encoders of ``model.arch`` (``encoder_arch`` in the export's config; with ModernBERT
the lower level takes the first ``lower_layers`` entries of its per-layer attention types, the upper
level the rest; no segment embeddings there). The heads stay BERT-style for every arch.

The two-view helpers (alignment, consistent masking, export plumbing) are in ``multiview.py``;
``al_mvp.py`` is the aligned variant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch

from pretrain.models import body_layers, count_parameters
from pretrain.objectives.base import Objective, ObjectiveContext, register
from pretrain.objectives.multiview import (
    MaskingOptions, MultiVocabExportMixin, check_kind, flat_targets, gather_flat, mask_or_none, multivocab_config,
    random_ids, validate_masking, view_eval_sums, weighted_view_loss,
)


# ---------------------------------------------------------------------------- Hi-MVP


@register
class HiMvp(MultiVocabExportMixin, Objective):
    name = "hi_mvp"
    model_type = "encoder"
    # streams: fine_kind and coarse_kind (MultiVocabExportMixin.streams)
    card_note = ("Hi-MVP, a reconstruction from the MVP-BERT abstract (Zhu, 2021): the method section "
                 "was not available, so the hierarchical design is a documented reading, not the "
                 "paper's verified architecture.")
    finetune_adapter = "hi_mvp"

    @dataclass
    class Config:
        fine_kind: str = "char"
        coarse_kind: str = "sgt"
        lower_layers: Optional[int] = None  # char-level layers; null = half the layers (at least 1)
        pooling: Literal["mean", "first"] = "mean"  # char states -> one vector per SGT token
        char_head_on: Literal["fused", "lower"] = "fused"  # see the module docstring
        mask_prob: float = 0.15  # fraction of SGT words selected
        p_mask: float = 0.8
        p_random: float = 0.1
        whole_word: bool = True
        max_ngram: int = 1
        fine_weight: float = 1.0  # char-vocabulary MLM
        coarse_weight: float = 1.0  # SGT-vocabulary MLM

        def validate(self) -> None:
            validate_masking(self)
            if self.lower_layers is not None and self.lower_layers < 1:
                raise ValueError("lower_layers must be at least 1")

    def __init__(self, cfg: Config, ctx: ObjectiveContext):
        super().__init__(cfg, ctx)
        from pretrain.remote.modeling_multivocab import HiMvpConfig, HiMvpForMaskedLM

        self.fine_vocab = check_kind(ctx, cfg.fine_kind, "fine_kind", self.name)
        self.coarse_vocab = check_kind(ctx, cfg.coarse_kind, "coarse_kind", self.name)
        n_layers = ctx.model.dims()[0]
        lower = cfg.lower_layers if cfg.lower_layers is not None else max(1, n_layers // 2)
        if lower >= n_layers:
            from pipeline.errors import UserError
            raise UserError(f"hi_mvp: lower_layers={lower} must be below the model's {n_layers} layers")
        conf = multivocab_config(HiMvpConfig, ctx, self.fine_vocab, self.coarse_vocab, lower_layers=lower,
                                 pooling=cfg.pooling, char_head_on=cfg.char_head_on)
        self.model = HiMvpForMaskedLM(conf)
        self._fine_random = random_ids(self.fine_vocab)
        self._coarse_random = random_ids(self.coarse_vocab)
        self._masking = MaskingOptions(cfg.mask_prob, cfg.p_mask, cfg.p_random, cfg.whole_word, cfg.max_ngram)
        self._pred_frac = cfg.mask_prob
        self._coarse_ratio = 0.7  # running SGT/char length ratio (for FLOPs)

    def collate(self, batch, generator):
        fine, coarse, m = self._masked_views(batch, generator)
        out = {"input_ids": m["fine_input"], "coarse_index": m["first"],
               "coarse_attention_mask": coarse["attention_mask"]}
        a = mask_or_none(fine["attention_mask"])
        if a is not None:
            out["attention_mask"] = a
        out["fine_pos"], out["fine_labels"] = flat_targets(m["fine_labels"])
        out["coarse_pos"], out["coarse_labels"] = flat_targets(m["coarse_labels"])
        n_f = max(1, int(fine["attention_mask"].sum()))
        self._coarse_ratio = 0.9 * self._coarse_ratio + 0.1 * float(coarse["attention_mask"].sum()) / n_f
        self._pred_frac = 0.9 * self._pred_frac + 0.1 * out["fine_pos"].numel() / n_f
        return out

    def _heads(self, batch):
        out = self.model.hi_mvp(batch["input_ids"], batch.get("attention_mask"), batch["coarse_index"],
                                batch["coarse_attention_mask"])
        char_states = out.lower_hidden_state if self.cfg.char_head_on == "lower" else out.char_hidden_state
        fl = self.model.char_logits(gather_flat(char_states, batch["fine_pos"]))
        cl = self.model.coarse_logits(gather_flat(out.last_hidden_state, batch["coarse_pos"]))
        return fl, cl

    def forward(self, batch):
        fl, cl = self._heads(batch)
        loss, fine, coarse = weighted_view_loss(fl, cl, batch, self.cfg.fine_weight, self.cfg.coarse_weight)
        if self.cfg.char_head_on == "lower":
            # the fused character decoder is not in this loss; a zero term keeps its parameters in the
            # graph so DDP (no find_unused_parameters) sees a gradient for every parameter
            hm = self.model.hi_mvp
            loss = loss + 0.0 * sum(p.sum() for m in (hm.fuse, hm.fuse_norm) for p in m.parameters())
        return {"loss": loss, "mlm_char": fine.detach(), "mlm_sgt": coarse.detach()}

    @torch.no_grad()
    def evaluate(self, batch):
        fl, cl = self._heads(batch)
        return view_eval_sums(fl, cl, batch)

    # export / export_files: MultiVocabExportMixin
    def export_meta(self) -> dict:
        return {**super().export_meta(), "reconstruction": True}

    def flops_per_token(self) -> float:
        # per char token: lower layers at char length, upper layers at SGT length
        L, hidden, _, _ = self.ctx.model.dims()
        lo = self.model.config.lower_layers
        body = count_parameters(body_layers(self.model.hi_mvp.char_encoder)) + count_parameters(
            body_layers(self.model.hi_mvp.coarse_encoder))
        per_layer = body / L
        T = self.ctx.seq_len
        r = self._coarse_ratio
        return (6.0 * per_layer * (lo + (L - lo) * r) + 12.0 * hidden * T * (lo + (L - lo) * r * r)
                + 6.0 * self._pred_frac * (1 + r) * hidden * (self.fine_vocab.padded_size + hidden))
