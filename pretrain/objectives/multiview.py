"""The two-view toolkit shared by the multi-vocabulary objectives (``amber``, ``hi_mvp``, ``al_mvp``).

Not an objective (it registers nothing): reading a stream out of the batch (:func:`stream`), the
fine<->coarse alignment on torch tensors (:func:`align_views`, :func:`group_offsets`), the
consistent masking of both views (:func:`consistent_mask`: whole coarse words are selected with
the engine's whole-word masking and exactly their characters are masked in the fine view, with
the same 80/10/10 action), the two views' losses and evaluation sums, config checks, the sizing of
the two-view model configs (:func:`multivocab_config`) and the export plumbing
(:class:`MultiVocabExportMixin`: the remote modelling file ``pretrain/remote/modeling_multivocab.py``
and both views' vocabulary files as ``fine.<name>`` / ``coarse.<name>``).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.errors import UserError
from pretrain.objectives.base import ObjectiveContext, VocabInfo
from pretrain.objectives.mlm import whole_word_mask

REMOTE_DIR = Path(__file__).resolve().parent.parent / "remote"
REMOTE_FILE = REMOTE_DIR / "modeling_multivocab.py"
# inside an export, both views' vocabulary folders are copied flat as fine.<name> / coarse.<name>
VIEW_PREFIXES = {"fine": "fine.", "coarse": "coarse."}

_KEYS = ("input_ids", "word_start", "char_len", "special_mask", "attention_mask")


# ---------------------------------------------------------------------------- batch helpers


def stream(batch: dict[str, np.ndarray], kind: str, primary: str) -> dict[str, torch.Tensor]:
    """The five contract arrays of stream ``kind`` as torch tensors (keys without the prefix)."""
    prefix = "" if kind == primary else f"{kind}."
    out = {}
    for k in _KEYS:
        a = batch.get(prefix + k)
        if a is None:
            if k == "attention_mask":
                a = np.ones_like(batch[prefix + "input_ids"])
            else:
                raise UserError(f"the batch has no '{prefix + k}': stream '{kind}' is not loaded "
                                f"(add it to data.extra_kinds or make it data.kind)")
        out[k] = torch.from_numpy(np.ascontiguousarray(a))
    res = {"input_ids": out["input_ids"].long(), "word_start": out["word_start"].bool(),
           "char_len": out["char_len"].long(), "special_mask": out["special_mask"].bool(),
           "attention_mask": out["attention_mask"].long()}
    vis = batch.get(prefix + "vis_len")  # visible (non-whitespace) characters per token, from the loader
    if vis is not None:
        res["vis_len"] = torch.from_numpy(np.ascontiguousarray(vis)).long()
    return res


def align_views(fine: dict[str, torch.Tensor], coarse: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """For every fine token, the first and the last coarse token sharing a visible character with it.

    Alignment by character spans of the non-whitespace characters
    (:func:`tokenization.align.align_tokens`): a token's visible span is the last ``vis_len``
    characters of its ``char_len`` span (``vis_len`` from the loader; without it the whole span),
    so whitespace the fine stream folds into the next token (the char kind drops ``\n``) never
    ties that token to the coarse stream's ``\n`` token. Returns ``(first, last)`` int64 [B, T];
    -1 where there is none (padding, or characters the coarse window does not cover). A
    zero-length non-special fine token belongs to the character before it. Special tokens
    (``[CLS]``/``[SEP]``, which cover no character) map to the coarse special of the same rank in
    the window. When the two tokenizations nest (every fine token inside one coarse token, the
    char/SGT/word case for CJK text), ``first == last``.
    """
    from tokenization.align import align_tokens

    B, T = fine["char_len"].shape
    S = coarse["char_len"].shape[1]
    f_sp = fine["special_mask"] & (fine["attention_mask"] > 0)
    c_sp = coarse["special_mask"] & (coarse["attention_mask"] > 0)
    f_real = (fine["attention_mask"] > 0) & ~fine["special_mask"]
    c_real = (coarse["attention_mask"] > 0) & ~coarse["special_mask"]
    f_len = torch.where(f_real, fine["char_len"], torch.zeros_like(fine["char_len"]))
    c_len = torch.where(c_real, coarse["char_len"], torch.zeros_like(coarse["char_len"]))
    fv, cv = fine.get("vis_len"), coarse.get("vis_len")
    f_np, l_np = align_tokens(f_len.numpy(), c_len.numpy(), None if fv is None else fv.numpy(),
                              None if cv is None else cv.numpy())
    first, last = torch.from_numpy(f_np), torch.from_numpy(l_np)
    ok = f_real & (first >= 0) & (first < S)
    first = torch.where(ok, first, torch.full_like(first, -1))
    last = torch.where(ok, last.clamp(max=S - 1), torch.full_like(last, -1))
    # specials by rank
    c_rank = c_sp.long().cumsum(1) - 1
    table = torch.full((B, S + 1), -1, dtype=torch.long)
    slot = torch.where(c_sp, c_rank, torch.full_like(c_rank, S))
    table.scatter_(1, slot, torch.arange(S).expand(B, S).contiguous())
    table[:, S] = -1
    f_rank = (f_sp.long().cumsum(1) - 1).clamp(min=0, max=S)
    sp_map = table.gather(1, f_rank)
    first = torch.where(f_sp, sp_map, first)
    last = torch.where(f_sp, sp_map, last)
    return first, last


def propagate_mask(selected_coarse: torch.Tensor, first: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """bool [B, T]: fine tokens that overlap at least one selected coarse token."""
    B, S = selected_coarse.shape
    cum = torch.zeros(B, S + 1, dtype=torch.long)
    cum[:, 1:] = selected_coarse.long().cumsum(1)
    ok = first >= 0
    f = first.clamp(min=0)
    l = last.clamp(min=0)
    n = cum.gather(1, l + 1) - cum.gather(1, f)
    return ok & (n > 0)


def group_offsets(first: torch.Tensor) -> torch.Tensor:
    """Offset of each fine token inside its coarse token (0 for the first one), from ``first`` [B, T]."""
    B, T = first.shape
    pos = torch.arange(T).expand(B, T)
    n = max(T, int(first.max()) + 1 if first.numel() else 0)  # coarse indices may exceed the fine length
    slot = torch.where(first >= 0, first, torch.full_like(first, n))
    start = torch.full((B, n + 1), T, dtype=torch.long).scatter_reduce(1, slot, pos, reduce="amin", include_self=True)
    off = pos - start.gather(1, slot)
    return torch.where(first >= 0, off, torch.zeros_like(off))


def random_ids(v: VocabInfo) -> torch.Tensor:
    """Non-special ids of a vocabulary (what a 10 %-random replacement draws from)."""
    special = set(v.special_ids) | {v.pad_id, v.unk_id, v.cls_id, v.sep_id, v.mask_id}
    keep = torch.ones(v.size, dtype=torch.bool)
    keep[[i for i in special if i < v.size]] = False
    return torch.arange(v.size)[keep]


@dataclass
class MaskingOptions:
    mask_prob: float = 0.15
    p_mask: float = 0.8
    p_random: float = 0.1
    whole_word: bool = True
    max_ngram: int = 1


def consistent_mask(fine: dict[str, torch.Tensor], coarse: dict[str, torch.Tensor], fine_vocab: VocabInfo,
                    coarse_vocab: VocabInfo, generator: torch.Generator, opt: MaskingOptions,
                    fine_random: Optional[torch.Tensor] = None, coarse_random: Optional[torch.Tensor] = None
                    ) -> dict[str, torch.Tensor]:
    """Select coarse tokens with the engine's whole-word masking, then mask exactly their characters.

    Returns ``fine_input``, ``fine_labels`` [B, T] and ``coarse_input``, ``coarse_labels`` [B, S]
    (labels -100 where not selected), plus the alignment ``first``/``last`` [B, T] and
    ``fine_all`` (bool [B, T]: selected fine tokens all of whose coarse tokens are selected -- the
    char targets that can be read from coarse states without their character showing in the
    coarse input). The 80/10/10
    action is the coarse token's: a fine token of a ``[MASK]``-ed coarse token becomes ``[MASK]``,
    of a randomised one a random fine token, of a kept one stays.
    """
    fine_random = random_ids(fine_vocab) if fine_random is None else fine_random
    coarse_random = random_ids(coarse_vocab) if coarse_random is None else coarse_random
    c_ids = coarse["input_ids"]
    c_special = coarse["special_mask"] | (coarse["attention_mask"] == 0)
    c_in, c_labels = whole_word_mask(
        c_ids, coarse["word_start"], c_special, generator, mask_id=coarse_vocab.mask_id, random_ids=coarse_random,
        mask_prob=opt.mask_prob, p_mask=opt.p_mask, p_random=opt.p_random, max_ngram=opt.max_ngram,
        whole_word=opt.whole_word)
    sel_c = c_labels != -100
    act_mask_c = sel_c & (c_in == coarse_vocab.mask_id)
    act_rand_c = sel_c & ~act_mask_c & (c_in != c_ids)
    first, last = align_views(fine, coarse)
    f_ids = fine["input_ids"]
    sel_f = propagate_mask(sel_c, first, last) & ~fine["special_mask"] & (fine["attention_mask"] > 0)
    f0, f1 = first.clamp(min=0), last.clamp(min=0)
    use_first = sel_c.gather(1, f0)  # a fine token straddling two coarse tokens takes a selected one's action
    act_mask_f = sel_f & torch.where(use_first, act_mask_c.gather(1, f0), act_mask_c.gather(1, f1))
    act_rand_f = sel_f & torch.where(use_first, act_rand_c.gather(1, f0), act_rand_c.gather(1, f1))
    rand_f = fine_random[torch.randint(len(fine_random), f_ids.shape, generator=generator)]
    f_in = torch.where(act_mask_f, torch.full_like(f_ids, fine_vocab.mask_id), f_ids)
    f_in = torch.where(act_rand_f, rand_f, f_in)
    f_labels = torch.where(sel_f, f_ids, torch.full_like(f_ids, -100))
    # fine tokens *every* coarse token of which is selected: their characters are nowhere left
    # visible in the coarse input (a straddling fine token with an unselected neighbour is not)
    S = sel_c.shape[1]
    cum = torch.zeros(sel_c.shape[0], S + 1, dtype=torch.long)
    cum[:, 1:] = sel_c.long().cumsum(1)
    n_sel = cum.gather(1, f1 + 1) - cum.gather(1, f0)
    fine_all = sel_f & (first >= 0) & (n_sel == (f1 - f0 + 1))
    return {"fine_input": f_in, "fine_labels": f_labels, "coarse_input": c_in, "coarse_labels": c_labels,
            "first": first, "last": last, "fine_all": fine_all}


def flat_targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat positions, labels there) of the selected tokens."""
    flat = labels.reshape(-1)
    pos = (flat != -100).nonzero().squeeze(1)
    return pos, flat[pos]


def gather_flat(h: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    return h.reshape(-1, h.shape[-1]).index_select(0, pos)


def ce_sum_count(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss sum, correct count, n) for evaluation."""
    n = torch.tensor(float(labels.numel()), device=logits.device)
    if labels.numel() == 0:
        return n * 0, n * 0, n
    logits = logits.float()
    return F.cross_entropy(logits, labels, reduction="sum"), (logits.argmax(-1) == labels).sum().float(), n


def mean_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if labels.numel() == 0:  # nothing selected: a zero that keeps the graph
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), labels)


def weighted_view_loss(fine_logits: torch.Tensor, coarse_logits: torch.Tensor, batch: dict[str, torch.Tensor],
                       fine_weight: float, coarse_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(fine_weight * fine + coarse_weight * coarse, fine, coarse)``: the two views' mean MLM losses."""
    fine = mean_ce(fine_logits, batch["fine_labels"])
    coarse = mean_ce(coarse_logits, batch["coarse_labels"])
    return fine_weight * fine + coarse_weight * coarse, fine, coarse


def view_eval_sums(fine_logits: torch.Tensor, coarse_logits: torch.Tensor,
                   batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Evaluation sums and counts: ``loss``/``accuracy`` on the fine view, ``coarse_*`` on the coarse one."""
    fs, fa, fn = ce_sum_count(fine_logits, batch["fine_labels"])
    cs, ca, cn = ce_sum_count(coarse_logits, batch["coarse_labels"])
    return {"loss": fs, "loss_count": fn, "accuracy": fa, "accuracy_count": fn,
            "coarse_loss": cs, "coarse_loss_count": cn, "coarse_accuracy": ca, "coarse_accuracy_count": cn}


def validate_masking(c) -> None:
    """Checks shared by the two-view objectives' configs (``mask_prob``, ``p_mask``/``p_random``, kinds)."""
    if not 0.0 < c.mask_prob < 1.0:
        raise ValueError("mask_prob must be between 0 and 1")
    if c.p_mask < 0 or c.p_random < 0 or c.p_mask + c.p_random > 1.0:
        raise ValueError("p_mask and p_random must be >= 0 and sum to at most 1")
    if c.fine_kind == c.coarse_kind:
        raise ValueError("fine_kind and coarse_kind must differ")


def check_kind(ctx: ObjectiveContext, kind: str, option: str, objective: str) -> VocabInfo:
    if kind not in ctx.vocabs:
        raise UserError(
            f"objective '{objective}': {option}='{kind}' but no '{kind}' stream is loaded; "
            f"set data.kind or data.extra_kinds to include '{kind}' (loaded: {', '.join(ctx.vocabs)})")
    return ctx.vocabs[kind]


def check_positions(length: int, limit: int, what: str) -> None:
    if length > limit:
        raise UserError(f"{what} is {length} tokens long, more than model.max_position_embeddings={limit}; "
                        f"lower data.seq_len or raise model.max_position_embeddings")


def mask_or_none(attn: torch.Tensor) -> Optional[torch.Tensor]:
    return None if bool((attn > 0).all()) else attn


def prefixed_vocab_files(vocab_path: str, tmp: Path, prefix: str) -> list[Path]:
    """A vocabulary folder's files copied to ``tmp`` as ``<prefix><name>`` (``save_export`` copies
    flat files next to the weights); :func:`finetune.adapters_multivocab.load_view_tokenizer`
    undoes the renaming."""
    src = Path(vocab_path)
    if not src.is_dir():
        raise UserError(f"vocabulary folder not found: {src}")
    out = []
    for f in sorted(src.iterdir()):
        if f.is_file() and not f.name.startswith("."):
            dst = tmp / f"{prefix}{f.name}"
            shutil.copy2(f, dst)
            out.append(dst)
    return out


def vocab_needs_remote_code(vocab_path: str) -> bool:
    """``stats.json["trust_remote_code"]`` of a vocabulary folder (False when absent)."""
    import json

    f = Path(vocab_path) / "stats.json"
    try:
        return bool(json.loads(f.read_text(encoding="utf-8")).get("trust_remote_code", False))
    except (OSError, ValueError):
        return False


def multivocab_config(cls, ctx: ObjectiveContext, fine: VocabInfo, coarse: VocabInfo, **extra):
    """An ``AmbertConfig``/``HiMvpConfig`` sized by the run's model preset; its inner encoders are of
    ``model.arch`` (``encoder_arch``; for an arch other than ``bert`` the encoder's own config goes
    in ``encoder_config``, built by :func:`pretrain.models.encoder_config` over the fine vocabulary).
    The MLM heads stay BERT-style (dense + GELU + LayerNorm + tied projection) for every arch."""
    from pretrain.models import encoder_config

    l, h, a, f = ctx.model.dims()
    m = ctx.model
    arch = getattr(m, "arch", "bert")
    if arch != "bert":
        enc = encoder_config(m, fine.padded_size, pad_id=fine.pad_id).to_dict()
        extra = {"encoder_arch": arch, "encoder_config": {k: v for k, v in enc.items()
                                                          if k not in ("transformers_version", "model_type")}, **extra}
    conf = cls(vocab_size=fine.padded_size, hidden_size=h, num_hidden_layers=l, num_attention_heads=a,
               intermediate_size=f, max_position_embeddings=m.max_position_embeddings,
               hidden_dropout_prob=m.dropout, attention_probs_dropout_prob=m.dropout, pad_token_id=fine.pad_id,
               type_vocab_size=2, coarse_vocab_size=coarse.padded_size, coarse_pad_token_id=coarse.pad_id,
               fine_kind=fine.kind, coarse_kind=coarse.kind, **extra)
    conf._attn_implementation = m.attn_implementation
    return conf


class MultiVocabExportMixin:
    """Shared plumbing of the two-view objectives: their streams (both views' kinds), predicted
    fraction, consistent masking of both views; export (remote code file, both views' tokenizers,
    meta)."""

    _export_tmp: Optional[tempfile.TemporaryDirectory] = None

    @classmethod
    def streams(cls, cfg) -> tuple[str, ...]:
        """Both views' kinds (``fine_kind``, ``coarse_kind``): the one that is not ``data.kind`` is
        loaded aligned by characters without a ``data.extra_kinds`` entry."""
        return (cfg.fine_kind, cfg.coarse_kind)

    def predicted_fraction(self) -> float:
        """The masking rate (``mask_prob``): both views predict only the selected tokens."""
        return self.cfg.mask_prob

    def _masked_views(self, batch: dict[str, np.ndarray], generator: torch.Generator):
        """Both views of ``batch`` (checked against the position limit), masked consistently:
        ``(fine, coarse, consistent_mask(...))``."""
        fine = stream(batch, self.cfg.fine_kind, self.ctx.primary)
        coarse = stream(batch, self.cfg.coarse_kind, self.ctx.primary)
        limit = self.model.config.max_position_embeddings
        check_positions(fine["input_ids"].shape[1], limit, f"the '{self.cfg.fine_kind}' view")
        check_positions(coarse["input_ids"].shape[1], limit, f"the '{self.cfg.coarse_kind}' view")
        m = consistent_mask(fine, coarse, self.fine_vocab, self.coarse_vocab, generator, self._masking,
                            self._fine_random, self._coarse_random)
        return fine, coarse, m

    def _export_extras(self) -> list:
        # export_files() returns flat files copied next to the weights: the modelling code and both
        # views' vocabulary files (prefixed, so they do not clash with the primary tokenizer's)
        self._export_tmp = tempfile.TemporaryDirectory(prefix="mv-export-")
        tmp = Path(self._export_tmp.name)
        return ([REMOTE_FILE] + prefixed_vocab_files(self.fine_vocab.path, tmp, VIEW_PREFIXES["fine"])
                + prefixed_vocab_files(self.coarse_vocab.path, tmp, VIEW_PREFIXES["coarse"]))

    def export(self):
        from pretrain.remote.modeling_multivocab import set_auto_map

        set_auto_map(self.model)
        return self.model

    def export_files(self) -> list:
        return self._export_extras()

    def export_meta(self) -> dict:
        return {"trust_remote_code": True, "finetune_adapter": self.finetune_adapter,
                "fine_kind": self.cfg.fine_kind, "coarse_kind": self.cfg.coarse_kind,
                "view_tokenizers": dict(VIEW_PREFIXES)}
