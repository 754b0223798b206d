"""``amber``: AMBERT (Zhang & Li, ICLR-2021 submission / Findings of ACL 2021), as published.

Two views of the same window, aligned by characters (``methods.md`` §3):

* the *fine* view: the ``char`` stream (one token per CJK character);
* the *coarse* view: the ``word`` stream by default (the paper's Chinese coarse view is words);
  ``coarse_kind: sgt`` uses the SGT stream instead (then say so when comparing with MVP, whose
  AMBERT baseline has a word view).

One encoder (of ``model.arch``: BERT, RoBERTa-PreLN or ModernBERT, recorded as the export's
``encoder_arch``) whose Transformer layers are **shared** by both views, with **separate token
embeddings** (``pretrain/remote/modeling_multivocab.py``: ``AmbertForMaskedLM``). ModernBERT has no
segment embeddings: segment ids are not passed to it. Loss = MLM on
the fine view + MLM on the coarse view, equal weights (``fine_weight``/``coarse_weight``, both 1).
Masking: ``mask_prob`` (15 %) of the coarse tokens are selected (the engine's
:func:`pretrain.objectives.mlm.whole_word_mask` on the coarse stream; with the word view every
token is a word) and, "to retain consistency, the masked coarse-grained tokens are also masked as
fine-grained tokens": every fine token whose characters overlap a selected coarse token is
selected too and gets the same 80/10/10 action as its coarse token. NSP is not used (the paper
uses it only for comparison).

What the paper leaves open (options, see ``docs/multivocab.md``): position, segment embeddings and
the embedding LayerNorm are shared between the views (the paper says only that each view has its
own token embeddings); each view has its own positions 0..m / 0..n.

Export: ``AmbertForMaskedLM`` with its modelling code (``auto_map``; loads with
``trust_remote_code=True``), both views' vocabulary files as ``fine.<name>`` / ``coarse.<name>``; fine-tuning adapter
``multivocab_pair`` (``finetune/adapters_multivocab.py``): each character's state is the
concatenation of its fine-token state and its coarse-token state (the paper's span-task recipe),
the pooled vector the concatenation of both ``[CLS]`` states.

The two-view helpers this objective shares with ``hi_mvp`` and ``al_mvp`` (stream reading,
alignment, consistent masking, export plumbing) live in ``multiview.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pretrain.flops import encoder_mlm_flops_per_token
from pretrain.models import body_layers, count_parameters
from pretrain.objectives.base import Objective, ObjectiveContext, register
from pretrain.objectives.multiview import (
    MaskingOptions, MultiVocabExportMixin, check_kind, flat_targets, gather_flat,
    mask_or_none, multivocab_config, random_ids, validate_masking, view_eval_sums, weighted_view_loss,
)


# ---------------------------------------------------------------------------- the objective


@register
class Ambert(MultiVocabExportMixin, Objective):
    name = "amber"
    model_type = "encoder"
    # streams: fine_kind and coarse_kind (MultiVocabExportMixin.streams)
    card_note = ("AMBERT (Zhang & Li): a fine-grained (character) and a coarse-grained (word/SGT) view "
                 "of the same text through shared Transformer layers with separate embeddings, MLM on "
                 "both views. Implemented from the full paper text.")
    finetune_adapter = "multivocab_pair"

    @dataclass
    class Config:
        fine_kind: str = "char"
        coarse_kind: str = "word"  # the paper: words; "sgt" is our variant (say so when comparing)
        mask_prob: float = 0.15  # fraction of coarse words selected (the paper: 15 % of coarse tokens)
        p_mask: float = 0.8
        p_random: float = 0.1
        whole_word: bool = True  # select whole segmented words of the coarse stream
        max_ngram: int = 1
        fine_weight: float = 1.0  # the paper sums both MLM losses with equal weight
        coarse_weight: float = 1.0

        def validate(self) -> None:
            validate_masking(self)

    def __init__(self, cfg: Config, ctx: ObjectiveContext):
        super().__init__(cfg, ctx)
        from pretrain.remote.modeling_multivocab import AmbertConfig, AmbertForMaskedLM

        self.fine_vocab = check_kind(ctx, cfg.fine_kind, "fine_kind", self.name)
        self.coarse_vocab = check_kind(ctx, cfg.coarse_kind, "coarse_kind", self.name)
        self.model = AmbertForMaskedLM(multivocab_config(AmbertConfig, ctx, self.fine_vocab, self.coarse_vocab))
        self._fine_random = random_ids(self.fine_vocab)
        self._coarse_random = random_ids(self.coarse_vocab)
        self._masking = MaskingOptions(cfg.mask_prob, cfg.p_mask, cfg.p_random, cfg.whole_word, cfg.max_ngram)
        self._pred_frac = cfg.mask_prob

    # ---- data
    def collate(self, batch: dict[str, np.ndarray], generator: torch.Generator) -> dict[str, torch.Tensor]:
        fine, coarse, m = self._masked_views(batch, generator)
        out = {"input_ids": m["fine_input"], "coarse_input_ids": m["coarse_input"]}
        for key, attn in (("attention_mask", fine["attention_mask"]), ("coarse_attention_mask", coarse["attention_mask"])):
            a = mask_or_none(attn)
            if a is not None:
                out[key] = a
        out["fine_pos"], out["fine_labels"] = flat_targets(m["fine_labels"])
        out["coarse_pos"], out["coarse_labels"] = flat_targets(m["coarse_labels"])
        self._pred_frac = 0.9 * self._pred_frac + 0.1 * (out["fine_pos"].numel() / max(1, m["fine_labels"].numel()))
        return out

    # ---- model
    def _heads(self, batch):
        body = self.model.ambert
        out = body(batch["input_ids"], batch.get("attention_mask"), batch["coarse_input_ids"],
                   batch.get("coarse_attention_mask"))
        fl = self.model.fine_logits(gather_flat(out.last_hidden_state, batch["fine_pos"]))
        cl = self.model.coarse_logits(gather_flat(out.coarse_hidden_state, batch["coarse_pos"]))
        return fl, cl, out

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        fl, cl, _ = self._heads(batch)
        loss, fine, coarse = weighted_view_loss(fl, cl, batch, self.cfg.fine_weight, self.cfg.coarse_weight)
        return {"loss": loss, "mlm_fine": fine.detach(), "mlm_coarse": coarse.detach()}

    @torch.no_grad()
    def evaluate(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        fl, cl, _ = self._heads(batch)
        return view_eval_sums(fl, cl, batch)

    # ---- export: MultiVocabExportMixin

    def flops_per_token(self) -> float:
        # two passes through the shared layers per window (fine + coarse), counted per fine token
        layers, hidden, _, _ = self.ctx.model.dims()
        n_body = count_parameters(body_layers(self.model.ambert.bert))
        one = encoder_mlm_flops_per_token(n_body, layers, hidden, self.ctx.seq_len, self.fine_vocab.padded_size,
                                          self._pred_frac)
        return 2.0 * one
