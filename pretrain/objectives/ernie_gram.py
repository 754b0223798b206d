"""ERNIE-Gram: explicitly n-gram masked language modelling (Xiao et al., NAACL 2021).

What ships is the stock ``*ForMaskedLM`` of ``model.arch`` (``BertForMaskedLM``;
``ModernBertForMaskedLM`` in the regime) over the fine-grained vocabulary (the ``char`` kind by
default); the n-gram classifier, the generator and the RTD head exist only during pre-training
(``methods.md`` §5, ``docs/ernie_gram.md``). Every encoder pass goes through
:func:`pretrain.models.run_body`: explicit position ids reach BERT's learned table, RoBERTa-PreLN's
(shifted by ``pad_id + 1``, its numbering) and ModernBERT's rotary embedding (relative positions:
the gap after a collapsed n-gram keeps its meaning); ModernBERT has no segment embeddings, so the
all-zero segment ids are not passed to it. The generator is a narrower body of the same arch. Reconstruction choices that the sources leave open
are options of :class:`ErnieGram.Config`, each documented there.

The three parts, each switchable (the ablation ladder is three configs):

1. **Explicit n-gram MLM** (``explicit``). The shards carry the n-gram units of every window
   (``unit_len`` / ``unit_ngram`` from :func:`tokenization.ngram.max_match`, forward maximum
   matching against the lexicon). ``mask_prob`` of the units of a window are chosen; every chosen
   unit collapses to a single ``[MASK]``, so the sequence shrinks, and is predicted as one class
   over the joint vocabulary ``<V_F, V_N>``: ids ``0 .. V_F-1`` are the fine-grained tokens (the
   model's padded vocabulary), ``V_F + k`` is n-gram ``k`` of the lexicon (capped at
   ``max_ngrams``; n-grams beyond the cap are split into single-token units).
2. **Comprehensive n-gram prediction** (``comprehensive``). One query token per fine-grained token
   of every masked unit (``queries: all``, the paper's figure, default; ``ngrams``: n-grams of
   length >= 2 only) is appended after the collapsed sequence, with the token's original position
   id. A query's input is ``[M_k]`` for the ``k``-th token of its unit (``query_tokens: indexed``,
   the paper's distinct ``[M1], [M2], ...``, default): a small embedding table of the objective's
   own, initialised from ``[MASK]``'s embedding and dropped at export like the n-gram table, so no
   vocabulary changes; ``query_tokens: mask`` gives every query the ``[MASK]`` embedding. A 4-D additive attention mask makes the main sequence attend
   within itself and every query attend to the main sequence and to itself only
   (:func:`allowed_attention`); the queries are classified over ``V_F`` with the BERT MLM head.
   ``transformers`` 5's encoders (BERT, RoBERTa-PreLN, ModernBERT) accept the prepared 4-D float
   mask as-is with SDPA and eager attention (checked in ``tests/test_ernie_gram.py``).
3. **Enhanced n-gram relation modelling** (``generator``). A small BERT (width
   ``generator_width`` of the main model, ``generator_layers`` layers) reads the collapsed
   sequence, its input embeddings are the main model's token / n-gram embeddings (shared
   ELECTRA-style, projected to its width) and its output layer is the main model's joint
   classifier (shared too); it is trained with its own joint-vocabulary loss at the masked slots.
   A sample from it (temperature ``generator_temperature``, drawn by inverse-CDF from uniforms
   that ``collate`` draws from the trainer's generator, so resuming reproduces it) replaces every
   ``[MASK]`` of the main input; the main model recovers the original n-grams (coarse and, with
   ``comprehensive``, fine), and an RTD head scores every main position (a sample equal to the
   original counts as "original", as in ELECTRA).

The collated batch (all torch):

* ``main_ids`` [B, Tc] collapsed sequence (``[MASK]`` at the masked slots), ``main_pos`` [B, Tc]
  original position ids, ``main_valid`` [B, Tc] bool (not padding), ``main_special`` [B, Tc] bool;
* ``coarse_labels`` [B, Tc] joint-vocabulary id at masked slots, -100 elsewhere;
* ``slot_len`` [B, Tc] the length (in fine tokens) of the unit at each masked slot, 0 elsewhere;
* ``query_pos`` [B, Q], ``query_labels`` [B, Q] (-100 on padding), ``query_valid`` [B, Q],
  ``query_slot`` [B, Q] the main-sequence slot of each query's n-gram, ``query_offset`` [B, Q] the
  query token's offset inside its unit (0 for the first token: ``[M1]``);
* ``sample_u`` [B, Tc] uniforms for the generator's sampling.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import UserError
from pretrain.models import (
    body_layers, build_body, build_encoder, encoder_body, input_embeddings, mlm_decoder, mlm_head, mlm_transform,
    new_transform, run_body,
)
from pretrain.objectives.base import Objective, ObjectiveContext, register

IGNORE = -100


# ---------------------------------------------------------------------------------------------
# collate helpers (pure tensor functions, tested on hand-built batches)
# ---------------------------------------------------------------------------------------------
def normalise_units(unit_len: torch.Tensor, unit_ngram: torch.Tensor, special: torch.Tensor,
                    valid: torch.Tensor, max_ngrams: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unit structure with the lexicon cap applied: ``(is_start, ulen, ngram)`` [B, T].

    Specials and padding are single-position units that are never masked. A position that no unit
    covers (inconsistent input) becomes a single-token unit. A unit of length >= 2 whose n-gram id
    is missing (< 0) or not below ``max_ngrams`` is split into single-token units.
    """
    B, T = unit_len.shape
    ar = torch.arange(T, device=unit_len.device).expand(B, T)
    ulen = unit_len.long().clone()
    ngram = unit_ngram.long().clone()
    fixed = special | ~valid
    ulen = torch.where(fixed, torch.ones_like(ulen), ulen)
    ngram = torch.where(fixed, torch.full_like(ngram, -1), ngram)
    is_start = ulen > 0

    def start_of(starts: torch.Tensor) -> torch.Tensor:
        return torch.where(starts, ar, torch.zeros_like(ar)).cummax(dim=1).values

    sp = start_of(is_start)
    orphan = ~is_start & ((ar - sp) >= ulen.gather(1, sp))
    is_start = is_start | orphan
    ulen = torch.where(orphan, torch.ones_like(ulen), ulen)
    ngram = torch.where(orphan, torch.full_like(ngram, -1), ngram)
    # a unit cut short (by the window end, a special or padding: the loader already splits units
    # cut by a window edge, this is a guard) is split into single tokens like a capped-out n-gram
    sp = start_of(is_start)
    members = torch.zeros_like(ulen).scatter_add_(1, sp, torch.ones_like(ulen))
    ngram = torch.where(is_start & (members != ulen), torch.full_like(ngram, -1), ngram)
    # lexicon cap: split n-gram units with no id in the capped lexicon
    split = (ulen >= 2) & ((ngram < 0) | (ngram >= max_ngrams))
    inside_split = split.gather(1, sp)
    is_start = is_start | inside_split
    ulen = torch.where(inside_split, torch.ones_like(ulen), ulen)
    ngram = torch.where(inside_split, torch.full_like(ngram, -1), ngram)
    ulen = torch.where(is_start, ulen, torch.zeros_like(ulen))
    ngram = torch.where(is_start, ngram, torch.full_like(ngram, -1))
    return is_start, ulen, ngram


def choose_units(maskable: torch.Tensor, mask_prob: float, generator: torch.Generator | None) -> torch.Tensor:
    """Bool [B, T]: ``round(mask_prob * n_units)`` (at least 1) unit starts per row, uniformly."""
    B, T = maskable.shape
    scores = torch.rand((B, T), generator=generator, device=maskable.device)
    n = maskable.sum(dim=1)
    k = torch.clamp(torch.round(n.double() * mask_prob).long(), min=1)
    k = torch.where(n > 0, torch.minimum(k, n), torch.zeros_like(k))
    scores = scores.masked_fill(~maskable, 2.0)
    ranks = scores.argsort(dim=1).argsort(dim=1)
    return ranks < k[:, None]


def compact(values: torch.Tensor, keep: torch.Tensor, fill: int | float | bool) -> torch.Tensor:
    """Left-align the kept entries of each row of ``values`` [B, T] into [B, max kept] (``fill`` pads)."""
    B, T = keep.shape
    n = keep.sum(dim=1)
    width = int(n.max().item()) if B else 0
    dest = torch.where(keep, keep.long().cumsum(dim=1) - 1, torch.full_like(n[:, None].expand(B, T), width))
    out = torch.full((B, width + 1), fill, dtype=values.dtype, device=values.device)
    out.scatter_(1, dest, values)
    return out[:, :width]


def collapse(input_ids: torch.Tensor, special: torch.Tensor, valid: torch.Tensor, unit_len: torch.Tensor,
             unit_ngram: torch.Tensor, chosen: torch.Tensor | None, *, mask_id: int, pad_id: int,
             fine_size: int, max_ngrams: int, mask_prob: float, queries: Literal["ngrams", "all", "none"],
             generator: torch.Generator | None, renumber_positions: bool = False) -> dict[str, torch.Tensor]:
    """The collapsed main sequence, its labels and the comprehensive-prediction queries.

    ``chosen`` (bool [B, T], unit starts to mask) is drawn with :func:`choose_units` when None.
    Labels: a masked single token is predicted as its fine id, a masked n-gram ``k`` as
    ``fine_size + k`` (the joint vocabulary).
    """
    B, T = input_ids.shape
    ids = input_ids.long()
    is_start, ulen, ngram = normalise_units(unit_len, unit_ngram, special, valid, max_ngrams)
    maskable = is_start & ~special & valid
    if chosen is None:
        chosen = choose_units(maskable, mask_prob, generator)
    chosen = chosen & maskable
    ar = torch.arange(T, device=ids.device).expand(B, T)
    sp = torch.where(is_start, ar, torch.zeros_like(ar)).cummax(dim=1).values
    in_masked = chosen.gather(1, sp)
    keep = ~(in_masked & ~chosen)
    joint = torch.where(ulen >= 2, fine_size + ngram, ids)
    main_ids = torch.where(chosen, torch.full_like(ids, mask_id), ids)
    pos = ar.clone() if not renumber_positions else (keep.long().cumsum(dim=1) - 1)
    out = {
        "main_ids": compact(main_ids, keep, pad_id),
        "main_pos": compact(pos, keep, 0),
        "main_valid": compact(valid, keep, False),
        "main_special": compact(special | ~valid, keep, True),
        "coarse_labels": compact(torch.where(chosen, joint, torch.full_like(ids, IGNORE)), keep, IGNORE),
        "slot_len": compact(torch.where(chosen, ulen, torch.zeros_like(ulen)), keep, 0),
    }
    if queries == "none":
        q = torch.zeros_like(chosen)
    else:
        q = in_masked if queries == "all" else in_masked & (ulen.gather(1, sp) >= 2)
    qpos = ar
    if renumber_positions:  # a query takes the position of its slot plus its offset in the unit
        qpos = (keep.long().cumsum(dim=1) - 1).gather(1, sp) + (ar - sp)
    out["query_pos"] = compact(qpos, q, 0)
    out["query_labels"] = compact(torch.where(q, ids, torch.full_like(ids, IGNORE)), q, IGNORE)
    out["query_valid"] = compact(q, q, False)
    out["query_slot"] = compact((keep.long().cumsum(dim=1) - 1).gather(1, sp), q, 0)  # its [MASK] slot
    out["query_offset"] = compact(ar - sp, q, 0)  # 0 for a unit's first token ([M1]), 1 for [M2], ...
    return out


def allowed_attention(main_valid: torch.Tensor, query_valid: torch.Tensor) -> torch.Tensor:
    """Bool [B, S, S] (S = Tc + Q), True where row i may attend to key j.

    Main rows see every valid main key; a query row sees every valid main key and itself, never
    another query. Padding rows see the valid main keys (and padded queries themselves), so no row
    is fully masked.
    """
    B, Tc = main_valid.shape
    Q = query_valid.shape[1]
    S = Tc + Q
    keys = torch.cat([main_valid, torch.zeros_like(query_valid)], dim=1)  # [B, S]
    allowed = keys[:, None, :].expand(B, S, S).clone()
    if Q:
        eye = torch.eye(Q, dtype=torch.bool, device=main_valid.device)
        allowed[:, Tc:, Tc:] = eye
    return allowed


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, 1, S, S] float mask for ``BertModel`` (0 where allowed, the dtype's minimum elsewhere)."""
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    neg = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, neg)[:, None]


def sample_inverse_cdf(logits: torch.Tensor, u: torch.Tensor, temperature: float) -> torch.Tensor:
    """One sample per row of ``logits`` [N, V] using uniforms ``u`` [N] (deterministic given ``u``)."""
    if temperature == 1.0:  # log-probabilities or logits: softmax is the same
        probs = torch.softmax(logits.float(), dim=-1)
    else:
        probs = torch.softmax(logits.float() / max(temperature, 1e-6), dim=-1)
    cdf = probs.cumsum(dim=-1)
    cdf = cdf / cdf[:, -1:].clamp_min(1e-12)
    idx = torch.searchsorted(cdf, u.float().clamp(0.0, 1.0 - 1e-7)[:, None].contiguous()).squeeze(1)
    return idx.clamp_(max=logits.shape[1] - 1)


def lexicon_size(ctx: ObjectiveContext, lexicon_dir: str) -> int:
    """Number of n-grams in the lexicon: ``ctx.vocabs['ngram']`` if given, else the lexicon folder
    (``tokenization.ngram.Lexicon.load``; default: ``ngram`` next to the primary vocabulary)."""
    if "ngram" in ctx.vocabs:
        return int(ctx.vocabs["ngram"].size)
    folder = Path(lexicon_dir) if lexicon_dir else Path(ctx.vocab.path).parent / "ngram"
    if (folder / "lexicon.tsv").is_file():
        from tokenization.ngram import Lexicon

        return len(Lexicon.load(folder))
    stats = folder / "stats.json"
    if stats.is_file():
        try:
            meta = json.loads(stats.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise UserError(f"{stats}: not valid JSON ({e})") from None
        if "size" in meta:
            return int(meta["size"])
    raise UserError(
        f"ernie_gram needs the n-gram lexicon: no {folder / 'lexicon.tsv'} (build the 'ngram' vocabulary "
        "kind, or set objective_options.lexicon_dir)"
    )


# ---------------------------------------------------------------------------------------------
# the objective
# ---------------------------------------------------------------------------------------------
class NgramHead(nn.Module):
    """The n-gram half of the joint classifier ``W_N``: n-gram embeddings (also the input
    embeddings of sampled n-grams, tied like BERT's token embeddings) and their bias, plus an
    optional transform of its own. The fine half is the BERT MLM head's tied decoder."""

    def __init__(self, n_ngrams: int, hidden: int, init_std: float, transform: nn.Module | None):
        super().__init__()
        self.emb = nn.Embedding(n_ngrams, hidden)
        nn.init.normal_(self.emb.weight, std=init_std)
        self.bias = nn.Parameter(torch.zeros(n_ngrams))
        self.transform = transform


@register
class ErnieGram(Objective):
    """ERNIE-Gram pre-training of a stock BERT (see the module docstring)."""

    name = "ernie_gram"
    model_type = "encoder"
    card_note = ("ERNIE-Gram-style explicitly n-gram MLM (Xiao et al., 2021); lexicon size, n, "
                 "generator size and loss weights are documented choices (the paper's values "
                 "were not available). Ships a plain encoder (the mlm model).")

    @dataclass
    class Config:
        # share of the n-gram *units* of a window that are masked (the paper: 15 % of boundaries)
        mask_prob: float = 0.15
        # cap on the n-gram lexicon (ids >= cap are split into single tokens); the lexicon is
        # ordered as the vocab stage wrote it (by t-score, highest first), so the cap keeps the top ones
        max_ngrams: int = 30000
        # lexicon folder; default: the ``ngram`` folder next to the primary vocabulary
        lexicon_dir: str = ""
        # the three parts (the ablation ladder: explicit; + comprehensive; + generator)
        explicit: bool = True
        comprehensive: bool = True
        generator: bool = True
        # comprehensive queries for every masked unit ("all", default: the paper's figure has a
        # query for a masked single token too) or only for n-grams of length >= 2 ("ngrams": a
        # masked single token is already a V_F prediction at its slot)
        queries: Literal["ngrams", "all"] = "all"
        # the queries' input tokens: "indexed" (default, the paper) = distinct [M1], [M2], ... by
        # the token's offset in its unit (an embedding table of the objective, offsets beyond
        # query_index_size share the last row); "mask" = the [MASK] embedding for every query
        query_tokens: Literal["indexed", "mask"] = "indexed"
        query_index_size: int = 8
        # position ids of the collapsed main sequence: the original positions (a gap after each
        # collapsed n-gram, queries keep their original positions: default) or renumbered 0..Tc-1
        # (queries then take the slot's position + their offset). [U] in the paper.
        positions: Literal["original", "renumbered"] = "original"
        # the n-gram classifier's hidden transform: the BERT MLM head's (shared, default) or its own
        ngram_transform: Literal["shared", "separate"] = "shared"
        # generator: width as a fraction of the main hidden size, layers (0 = same as the main
        # model), sampling temperature, loss weights (ELECTRA's practice; [U] for ERNIE-Gram)
        generator_width: float = 0.25
        generator_layers: int = 0
        generator_temperature: float = 1.0
        generator_weight: float = 1.0
        rtd_weight: float = 1.0
        coarse_weight: float = 1.0
        fine_weight: float = 1.0

        def validate(self) -> None:
            if not 0.0 < self.mask_prob < 1.0:
                raise ValueError(f"objective_options.mask_prob must be in (0, 1), got {self.mask_prob}")
            if self.max_ngrams < 1:
                raise ValueError("objective_options.max_ngrams must be at least 1")
            if not (self.explicit or self.comprehensive):
                raise ValueError("objective_options: at least one of explicit / comprehensive must be true")
            if not 0.0 < self.generator_width <= 1.0:
                raise ValueError("objective_options.generator_width must be in (0, 1]")
            if self.generator_temperature <= 0:
                raise ValueError("objective_options.generator_temperature must be positive")
            if self.query_index_size < 1:
                raise ValueError("objective_options.query_index_size must be at least 1")

    def __init__(self, cfg: "ErnieGram.Config", ctx: ObjectiveContext):
        super().__init__(cfg, ctx)
        v = ctx.vocab
        self.mask_id, self.pad_id = int(v.mask_id), int(v.pad_id)
        # without the explicit head a masked single token is predicted by its query only
        self.query_mode = "none" if not cfg.comprehensive else ("all" if not cfg.explicit else cfg.queries)
        self.fine_size = v.padded_size
        self.n_ngrams = min(lexicon_size(ctx, cfg.lexicon_dir), cfg.max_ngrams)
        if self.n_ngrams < 1:
            raise UserError("ernie_gram: the n-gram lexicon is empty")
        self.model = build_encoder(ctx.model, self.fine_size, pad_id=self.pad_id)
        c = self.model.config
        hidden = c.hidden_size
        own = new_transform(c) if cfg.ngram_transform == "separate" else None
        self.ngram_head = NgramHead(self.n_ngrams, hidden, c.initializer_range, own)
        if cfg.comprehensive and cfg.query_tokens == "indexed":
            # [M1], [M2], ...: pre-training-only inputs (dropped at export), start as [MASK]
            self.query_emb = nn.Embedding(cfg.query_index_size, hidden)
            with torch.no_grad():
                self.query_emb.weight.copy_(
                    input_embeddings(self.model).weight[self.mask_id].expand(cfg.query_index_size, -1))
        # joint ids the generator never predicts: [PAD]/[CLS]/[SEP]/[MASK] (never masked, so never a
        # label) and the padding rows of the vocabulary; [UNK] stays (a masked unknown token is a label)
        invalid = torch.zeros(self.fine_size + self.n_ngrams, dtype=torch.bool)
        invalid[v.size:self.fine_size] = True
        invalid[sorted({v.pad_id, v.cls_id, v.sep_id, v.mask_id, *v.special_ids} - {v.unk_id})] = True
        self.register_buffer("invalid_bias", torch.zeros(invalid.shape).masked_fill(invalid, -1e4), persistent=False)
        if cfg.generator:
            import dataclasses

            from pretrain.models import norm_eps

            layers, _, main_heads, _ = ctx.model.dims()
            heads = max(1, round(main_heads * cfg.generator_width))
            g_hidden = max(heads, int(round(hidden * cfg.generator_width / heads)) * heads)
            # the generator is an encoder body of the main model's arch (model.arch), narrower
            gmodel = dataclasses.replace(ctx.model, num_layers=cfg.generator_layers or layers, hidden_size=g_hidden,
                                         num_heads=heads, intermediate_size=4 * g_hidden)
            self.gen = build_body(gmodel, 8, pad_id=0)
            # the generator reads the main model's (shared) embeddings through ``gen_in``
            self.gen.set_input_embeddings(None)
            self.gen_in = nn.Linear(hidden, g_hidden, bias=False)
            self.gen_out = nn.Sequential(nn.Linear(g_hidden, hidden), nn.GELU(), nn.LayerNorm(hidden, eps=norm_eps(c)))
            self.rtd_head = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))

    # ---- collate ---------------------------------------------------------------------------
    def collate(self, batch: dict[str, np.ndarray], generator: torch.Generator) -> dict[str, torch.Tensor]:
        for key in ("unit_len", "unit_ngram"):
            if key not in batch:
                raise UserError(
                    f"ernie_gram needs '{key}' in the batch: write the '{self.ctx.primary}' shards with the "
                    "n-gram lexicon (tokenization config) so they carry unit_len / unit_ngram"
                )
        cfg = self.cfg
        ids = torch.from_numpy(np.asarray(batch["input_ids"], dtype=np.int64))
        special = torch.from_numpy(np.asarray(batch["special_mask"], dtype=bool))
        valid = torch.from_numpy(np.asarray(batch["attention_mask"]) != 0)
        out = collapse(
            ids, special, valid, torch.from_numpy(np.asarray(batch["unit_len"], dtype=np.int64)),
            torch.from_numpy(np.asarray(batch["unit_ngram"], dtype=np.int64)), None,
            mask_id=self.mask_id, pad_id=self.pad_id, fine_size=self.fine_size, max_ngrams=self.n_ngrams,
            mask_prob=cfg.mask_prob, queries=self.query_mode,
            generator=generator, renumber_positions=cfg.positions == "renumbered",
        )
        out["sample_u"] = torch.rand(out["main_ids"].shape, generator=generator)
        return out

    # ---- forward ---------------------------------------------------------------------------
    def embed_joint(self, joint_ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings of joint-vocabulary ids (fine tokens or n-grams)."""
        is_ng = joint_ids >= self.fine_size
        fine = input_embeddings(self.model)(torch.where(is_ng, torch.zeros_like(joint_ids), joint_ids))
        if not bool(is_ng.any()):
            return fine
        ng = self.ngram_head.emb((joint_ids - self.fine_size).clamp(min=0))
        return torch.where(is_ng[..., None], ng, fine)

    def query_embeds(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        """Input embeddings [B, Q, H] of the comprehensive-prediction queries (``query_tokens``)."""
        if self.cfg.query_tokens == "indexed":
            return self.query_emb(b["query_offset"].clamp(max=self.cfg.query_index_size - 1))
        return input_embeddings(self.model)(torch.full_like(b["query_pos"], self.mask_id))

    def joint_logits(self, h: torch.Tensor, transform: bool = True) -> torch.Tensor:
        """Logits over ``<V_F, V_N>`` for hidden states ``h`` [N, H]."""
        if transform:
            h = self.ngram_head.transform(h) if self.ngram_head.transform is not None else mlm_transform(self.model, h)
        fine = mlm_decoder(self.model, h)  # tied to the token embeddings
        ngram = F.linear(h, self.ngram_head.emb.weight, self.ngram_head.bias)
        return torch.cat([fine, ngram], dim=-1)

    def _generator(self, b: dict[str, torch.Tensor], slots: torch.Tensor) -> torch.Tensor:
        """Log-probabilities [N, V_F + V_N] of the generator at the masked slots (specials and
        vocabulary padding excluded)."""
        emb = self.gen_in(input_embeddings(self.model)(b["main_ids"]))
        h = run_body(self.gen, inputs_embeds=emb, position_ids=b["main_pos"], attention_mask=b["main_valid"].long())
        logits = self.joint_logits(self.gen_out(h[slots]), transform=False).float()
        return torch.log_softmax(logits + self.invalid_bias, dim=-1)

    def forward(self, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        main_ids, labels = b["main_ids"], b["coarse_labels"]
        slots = labels != IGNORE
        terms: dict[str, torch.Tensor] = {}
        total = main_ids.new_zeros((), dtype=torch.float32)
        joint_in = main_ids
        replaced = None
        if cfg.generator:
            g_logp = self._generator(b, slots)
            g_loss = F.nll_loss(g_logp, labels[slots]) if g_logp.numel() else g_logp.sum()
            terms["generator"] = g_loss
            total = total + cfg.generator_weight * g_loss
            with torch.no_grad():
                sampled = sample_inverse_cdf(g_logp.detach(), b["sample_u"][slots], cfg.generator_temperature)
            joint_in = main_ids.clone()
            joint_in[slots] = sampled
            replaced = torch.zeros_like(slots)
            replaced[slots] = sampled != labels[slots]
        Tc = main_ids.shape[1]
        q_valid = b["query_valid"]
        Q = q_valid.shape[1]
        embeds = self.embed_joint(joint_in)
        if Q:
            embeds = torch.cat([embeds, self.query_embeds(b)], dim=1)
            pos = torch.cat([b["main_pos"], b["query_pos"]], dim=1)
        else:
            pos = b["main_pos"]
        attn = additive_mask(allowed_attention(b["main_valid"], q_valid), embeds.dtype)
        h = run_body(encoder_body(self.model), inputs_embeds=embeds, position_ids=pos, attention_mask=attn)
        main_h = h[:, :Tc]
        if cfg.explicit:
            c_logits = self.joint_logits(main_h[slots])
            c_loss = F.cross_entropy(c_logits.float(), labels[slots]) if c_logits.numel() else c_logits.sum()
            terms["coarse"] = c_loss
            total = total + cfg.coarse_weight * c_loss
        if cfg.comprehensive:
            q_h = h[:, Tc:][q_valid]
            f_logits = mlm_head(self.model, q_h)
            f_loss = F.cross_entropy(f_logits.float(), b["query_labels"][q_valid]) if f_logits.numel() else f_logits.sum()
            terms["fine"] = f_loss
            total = total + cfg.fine_weight * f_loss
        if replaced is not None:
            scored = b["main_valid"] & ~b["main_special"]
            r_logits = self.rtd_head(main_h[scored]).squeeze(-1).float()
            r_loss = F.binary_cross_entropy_with_logits(r_logits, replaced[scored].float())
            terms["rtd"] = r_loss
            total = total + cfg.rtd_weight * r_loss
        return {"loss": total, **{k: v.detach() for k, v in terms.items()}}

    @torch.no_grad()
    def evaluate(self, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The forward terms (``objective`` = their weighted sum), ``loss`` = the summed cross-entropy
        of the explicit head at the masked slots, as in training (of the queries without it), with
        ``loss_count``, so
        the trainer's ``perplexity`` is the explicit head's; and whole-n-gram exact match at the
        masked n-gram slots with the slot input the main model was trained on (``[MASK]``, or the
        generator's sample in the generator rung): ``ngram_exact`` (+ count)."""
        out = {k: v.detach() for k, v in self.forward(b).items()}
        out["objective"] = out.pop("loss")
        pred = self.predict_masked(b, slot_input="trained")
        labels = b["coarse_labels"]
        if self.cfg.explicit:
            slots = labels != IGNORE
            ng = labels >= self.fine_size
            out["ngram_exact"] = (pred["coarse"][ng] == labels[ng]).sum().float()
            out["ngram_exact_count"] = ng.sum().float()
            out["loss"] = out["coarse"] * slots.sum().float()
            out["loss_count"] = slots.sum().float()
        else:
            qv = b["query_valid"]
            out["loss"] = out["fine"] * qv.sum().float()
            out["loss_count"] = qv.sum().float()
        return out

    @torch.no_grad()
    def predict_masked(self, b: dict[str, torch.Tensor],
                       slot_input: Literal["mask", "trained"] = "trained") -> dict[str, torch.Tensor]:
        """Argmax predictions at the masked slots: ``coarse`` [B, Tc] (joint ids, -1 off the slots)
        and, with queries, ``fine`` [B, Q] (fine ids, -1 on padding).

        ``slot_input``: ``trained`` (default) feeds the slots what the main model saw in training --
        ``[MASK]``, or in the generator rung the generator's sample drawn with ``b["sample_u"]``
        (then also ``sampled`` [B, Tc], the joint ids fed, -1 off the slots); ``mask`` feeds
        ``[MASK]`` always (for the generator rung an input it never saw in training)."""
        main_ids, slots = b["main_ids"], b["coarse_labels"] != IGNORE
        Tc, q_valid = main_ids.shape[1], b["query_valid"]
        out: dict[str, torch.Tensor] = {}
        if slot_input == "trained" and self.cfg.generator:
            g_logp = self._generator(b, slots)
            sampled = sample_inverse_cdf(g_logp, b["sample_u"][slots], self.cfg.generator_temperature)
            joint_in = main_ids.clone()
            joint_in[slots] = sampled
            embeds = self.embed_joint(joint_in)
            out["sampled"] = torch.where(slots, joint_in, torch.full_like(joint_in, -1))
        else:
            embeds = input_embeddings(self.model)(main_ids)
        pos = b["main_pos"]
        if q_valid.shape[1]:
            embeds = torch.cat([embeds, self.query_embeds(b)], dim=1)
            pos = torch.cat([pos, b["query_pos"]], dim=1)
        attn = additive_mask(allowed_attention(b["main_valid"], q_valid), embeds.dtype)
        h = run_body(encoder_body(self.model), inputs_embeds=embeds, position_ids=pos, attention_mask=attn)
        coarse = torch.full_like(main_ids, -1)
        if self.cfg.explicit:
            coarse[slots] = self.joint_logits(h[:, :Tc][slots]).argmax(-1)
        fine = torch.full_like(b["query_pos"], -1)
        if q_valid.shape[1]:
            fine[q_valid] = mlm_head(self.model, h[:, Tc:][q_valid]).argmax(-1)
        return {"coarse": coarse, "fine": fine, **out}

    def encode_main(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        """Hidden states of the collapsed main sequence with ``[MASK]`` at the slots (no queries)."""
        attn = b["main_valid"].long()
        return run_body(encoder_body(self.model), input_ids=b["main_ids"], position_ids=b["main_pos"], attention_mask=attn)

    def export(self):
        return self.model

    def predicted_fraction(self) -> float:
        """The masking rate once per enabled vocabulary head (explicit n-gram classifier,
        comprehensive queries, generator): each predicts at the masked units only. An estimate:
        the n-gram heads' joint vocabulary is larger than the primary one, and a unit spans
        several tokens."""
        heads = int(self.cfg.explicit) + int(self.cfg.comprehensive) + int(self.cfg.generator)
        return self.cfg.mask_prob * max(1, heads)

    def flops_per_token(self) -> float:
        n = sum(p.numel() for p in body_layers(encoder_body(self.model)).parameters())
        base = 6.0 * n  # forward + backward of the encoder body per token
        if self.cfg.comprehensive:
            base *= 1.0 + self.cfg.mask_prob  # ~ the appended queries
        if self.cfg.generator:
            base *= 1.0 + self.cfg.generator_width ** 2
        return base
