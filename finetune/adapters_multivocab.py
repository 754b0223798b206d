"""Fine-tuning adapters for the multi-vocabulary exports (``amber``, ``hi_mvp``, ``al_mvp``).

Each export names its adapter in ``pretrain_meta.json["finetune_adapter"]``; every adapter turns
texts into per-character states (the :class:`finetune.encoders.TextEncoder` contract), so span
tasks with character-level tags (NER) and sentence tasks run through the same suite:

* ``multivocab_pair`` (``amber``; ``al_mvp`` reading b): both views are encoded by the shared
  layers. A character's state is ``[fine state of its char token ; coarse state of its word/SGT
  token] + offset embedding of the character inside the coarse token`` (AMBERT's span-task
  recipe: concatenate each fine token's representation with its coarse token's), so
  ``hidden_size`` is twice the model's. Pooled: ``[fine [CLS] ; coarse [CLS]]``, and each view's
  ``[CLS]`` separately (``pooled_views``), so classification fine-tunes as AMBERT does: a
  classifier per view and one on the concatenation, plus the agreement regulariser
  (``finetune/kinds/classification.py``; ``view_heads`` / ``agreement_weight`` in the config).
* ``hi_mvp``: the hierarchical encoder needs both tokenizations (char ids, and which SGT token
  each char token belongs to). A character's state is the fused character-decoder state of its
  char token (lower char layers + the upper SGT state of its token) + the offset embedding;
  pooled: the upper ``[CLS]`` state.
* ``al_mvp_char`` (``al_mvp`` reading a, a stock SGT ``BertForMaskedLM``): the stock ``hf`` path
  (token state + offset embedding per character), with the offset embedding initialised from the
  pre-trained character decoder (``char_decoder.safetensors``), so span fine-tuning starts from
  the decoder that was trained to read characters out of SGT token states.

The exports carry both views' vocabulary folders as flat files ``fine.<name>`` and
``coarse.<name>`` (``pretrain/objectives/multiview.py``); :func:`load_view_tokenizer` restores them.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from finetune import charmap
from finetune.encoders import (
    EncodedBatch, HFTextEncoder, TextEncoder, _special_id, build_pair_inputs, register_encoder,
)
from pipeline.errors import UserError

VIEW_PREFIXES = {"fine": "fine.", "coarse": "coarse."}  # same as pretrain.objectives.multiview.VIEW_PREFIXES


def load_view_tokenizer(model_dir: str | Path, view: str, trust_remote_code: bool = False):
    """The tokenizer of one view (``fine``/``coarse``) of a multi-vocabulary export, and its stats
    (loaded by ``pretrain.exports.load_tokenizer``: the project's own tokenizer class comes from the
    installed package; other code in the files runs only with ``trust_remote_code``)."""
    from pretrain.exports import load_tokenizer
    from tokenization.schema import VocabStats

    model_dir = Path(model_dir)
    prefix = VIEW_PREFIXES[view]
    files = [p for p in model_dir.iterdir() if p.is_file() and p.name.startswith(prefix)]
    if not files:
        raise UserError(f"{model_dir}: no '{prefix}*' tokenizer files (not a multi-vocabulary export?)")
    with tempfile.TemporaryDirectory(prefix=f"mv-{view}-") as tmp:
        for f in files:
            shutil.copy2(f, Path(tmp) / f.name[len(prefix):])
        stats_p = model_dir / (prefix + "stats.json")  # the view's vocabulary stats (VocabStats)
        stats = VocabStats.load(stats_p).to_dict() if stats_p.is_file() else {}
        tok = load_tokenizer(tmp, trust_remote_code=trust_remote_code, label=f"{model_dir} ({view} view)")
    return tok, stats


def _load_model(model_dir, meta, random_init: bool, trust_remote_code: bool = False):
    from pretrain.exports import load_model

    return load_model(model_dir, task="base", random_init=random_init, trust_remote_code=trust_remote_code)


class _View:
    """One tokenizer with its special ids and alignment method."""

    def __init__(self, tokenizer, stats: dict, alignment: str):
        self.tokenizer = tokenizer
        self.cls_id = _special_id(tokenizer, stats, "cls")
        self.sep_id = _special_id(tokenizer, stats, "sep")
        pad = _special_id(tokenizer, stats, "pad")
        self.pad_id = pad if pad is not None else 0
        self.alignment = alignment if alignment != "auto" else (
            "offsets" if charmap.supports_offsets(tokenizer) else "words")

    def pack(self, texts_a, texts_b, max_tokens):
        al_a = charmap.align(self.tokenizer, texts_a, self.alignment)
        al_b = charmap.align(self.tokenizer, texts_b, self.alignment) if texts_b is not None else None
        packed = build_pair_inputs(al_a, al_b, self.cls_id, self.sep_id, self.pad_id, max_tokens)
        # which characters each token really shows (no whitespace): the alignment of the two views
        packed.vis_a = _visible(al_a, texts_a, packed.pos_a.shape[1])
        packed.vis_b = _visible(al_b, texts_b, packed.pos_b.shape[1]) if al_b is not None else None
        return packed


def _visible(aligns, texts, width: int) -> torch.Tensor:
    out = torch.zeros(len(aligns), width, dtype=torch.bool)
    for i, (al, t) in enumerate(zip(aligns, texts)):
        v = charmap.visible_chars(al, t)
        out[i, :len(v)] = torch.from_numpy(v[:width])
    return out


def _truncate(texts_a, texts_b, max_chars):
    if max_chars is None:
        return list(texts_a), (list(texts_b) if texts_b is not None else None)
    return [t[:max_chars] for t in texts_a], ([t[:max_chars] for t in texts_b] if texts_b is not None else None)


def _gather(states: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    return states.gather(1, pos.clamp(min=0).unsqueeze(-1).expand(-1, -1, states.size(-1)))


def fine_to_coarse_index(fine, coarse) -> torch.Tensor:
    """For every position of the packed fine sequence, the packed coarse position of its token.

    Built from the characters (:func:`tokenization.align.first_last_by_chars`, the alignment the
    pre-training objectives use): char ``c`` sits in fine position ``fine.pos[b, c]`` and coarse
    position ``coarse.pos[b, c]``; a fine token takes the coarse position of its first *visible*
    character (inside the token's own span and not whitespace, ``fine.vis_a`` from
    :meth:`_View.pack`), so whitespace a fine tokenizer drops before a token (a ``\n`` the char
    view folds into the next token, while the SGT view keeps it as a token) never decides it.
    Tokens with no visible character take the coarse position of their first character. Special
    tokens map to the coarse special of the same rank; padding to -1.
    """
    from tokenization.align import first_last_by_chars

    B, T = fine.input_ids.shape
    out = torch.full((B, T + 1), -1, dtype=torch.long)
    for pos_f, off_f, pos_c, mf, mc, vf, vc in (
            (fine.pos_a, fine.off_a, coarse.pos_a, fine.mask_a, coarse.mask_a,
             getattr(fine, "vis_a", None), getattr(coarse, "vis_a", None)),
            (fine.pos_b, fine.off_b, coarse.pos_b, fine.mask_b, coarse.mask_b,
             getattr(fine, "vis_b", None), getattr(coarse, "vis_b", None))):
        if pos_f is None:
            continue
        ok = mf & mc
        vis = ok & (vf if vf is not None else torch.ones_like(ok)) & (vc if vc is not None else torch.ones_like(ok))
        f_own = torch.where(vis, pos_f, torch.full_like(pos_f, -1)).numpy()
        c_own = torch.where(vis, pos_c, torch.full_like(pos_c, -1)).numpy()
        first, _ = first_last_by_chars(f_own, c_own, T)
        first = torch.from_numpy(first)
        got = first >= 0
        out[:, :T] = torch.where(got, first, out[:, :T])
        # tokens without a visible character: the coarse position of their first character
        rest = ok & (off_f == 0) & ~got.gather(1, pos_f.clamp(max=T - 1))
        slot = torch.where(rest, pos_f, torch.full_like(pos_f, T))
        fill = torch.full((B, T + 1), -1, dtype=torch.long)
        fill.scatter_reduce_(1, slot, torch.where(rest, pos_c, torch.full_like(pos_c, -1)), reduce="amax")
        out = torch.where(out < 0, fill, out)
    out = out[:, :T]
    # specials ([CLS]/[SEP]) by rank: they are the attended positions no character maps to
    f_sp = (fine.attention_mask > 0) & (out < 0)
    c_cover = torch.zeros(B, coarse.input_ids.shape[1] + 1, dtype=torch.bool)
    c_cover.scatter_(1, torch.where(coarse.mask_a, coarse.pos_a, torch.full_like(coarse.pos_a, c_cover.shape[1] - 1)),
                     True)
    if coarse.pos_b is not None:
        c_cover.scatter_(1, torch.where(coarse.mask_b, coarse.pos_b,
                                        torch.full_like(coarse.pos_b, c_cover.shape[1] - 1)), True)
    c_sp = (coarse.attention_mask > 0) & ~c_cover[:, :-1]
    for b in range(B):
        fs, cs = f_sp[b].nonzero().squeeze(1), c_sp[b].nonzero().squeeze(1)
        n = min(len(fs), len(cs))
        out[b, fs[:n]] = cs[:n]
    return out


class _TwoViewEncoder(TextEncoder):
    """Shared plumbing of the encoders that read a text through both views (fine and coarse)."""

    def __init__(self, hidden_size: int, model, fine: _View, coarse: _View, model_dir=None, meta=None):
        super().__init__(hidden_size, model_dir, meta)
        self.model = model
        self.fine, self.coarse = fine, coarse
        self.max_tokens = int(getattr(model.config, "max_position_embeddings", 512) or 512)
        self.n_cut_chars = 0

    @classmethod
    def from_pretrained(cls, model_dir, meta, random_init=False, alignment: str = "auto",
                        trust_remote_code: bool = False, **options):
        model = _load_model(model_dir, meta, random_init, trust_remote_code)
        fine = _View(*load_view_tokenizer(model_dir, "fine", trust_remote_code), alignment)
        coarse = _View(*load_view_tokenizer(model_dir, "coarse", trust_remote_code), alignment)
        return cls(model, fine, coarse, model_dir, meta)

    def _pack_views(self, texts_a, texts_b, max_chars):
        """Truncate, then pack with both views: ``(texts_b, fine_packed, coarse_packed)``."""
        texts_a, texts_b = _truncate(texts_a, texts_b, max_chars)
        pf = self.fine.pack(texts_a, texts_b, self.max_tokens)
        pc = self.coarse.pack(texts_a, texts_b, self.max_tokens)
        self.n_cut_chars += max(pf.n_cut_chars, pc.n_cut_chars)
        return texts_b, pf, pc


@register_encoder("multivocab_pair")
class MultiVocabPairEncoder(_TwoViewEncoder):
    """AMBERT-style two-view encoder: per-char state = [fine ; coarse] (+ offset in the coarse token)."""

    def __init__(self, model, fine: _View, coarse: _View, model_dir=None, meta=None):
        super().__init__(2 * model.config.hidden_size, model, fine, coarse, model_dir, meta)
        self.pooled_view_sizes = (model.config.hidden_size, model.config.hidden_size)

    def encode(self, texts_a, texts_b=None, max_chars=None) -> EncodedBatch:
        texts_b, pf, pc = self._pack_views(texts_a, texts_b, max_chars)
        dev = self.device
        out = self.model(input_ids=pf.input_ids.to(dev), attention_mask=pf.attention_mask.to(dev),
                         token_type_ids=pf.token_type_ids.to(dev), coarse_input_ids=pc.input_ids.to(dev),
                         coarse_attention_mask=pc.attention_mask.to(dev),
                         coarse_token_type_ids=pc.token_type_ids.to(dev))
        h, z = out.last_hidden_state, out.coarse_hidden_state
        pooled = torch.cat([h[:, 0], z[:, 0]], dim=-1)

        def chars(pos_f, pos_c, off_c, mf, mc):
            m = (mf & mc).to(dev)
            s = torch.cat([_gather(h, pos_f.to(dev)), _gather(z, pos_c.to(dev))], dim=-1)
            s = s + self.char_offset_emb(off_c.to(dev).clamp(0, self.max_offset - 1))
            return s * m.unsqueeze(-1).to(s.dtype), m

        ca, ma = chars(pf.pos_a, pc.pos_a, pc.off_a, pf.mask_a, pc.mask_a)
        enc = EncodedBatch(pooled, ca, ma, pooled_views=(h[:, 0], z[:, 0]))
        if texts_b is not None:
            enc.char_states_b, enc.char_mask_b = chars(pf.pos_b, pc.pos_b, pc.off_b, pf.mask_b, pc.mask_b)
        return enc


@register_encoder("hi_mvp")
class HiMvpEncoder(_TwoViewEncoder):
    """Hierarchical Hi-MVP encoder (reconstruction): per-char state = fused char-decoder state."""

    def __init__(self, model, fine: _View, coarse: _View, model_dir=None, meta=None):
        super().__init__(model.config.hidden_size, model, fine, coarse, model_dir, meta)

    def encode(self, texts_a, texts_b=None, max_chars=None) -> EncodedBatch:
        texts_b, pf, pc = self._pack_views(texts_a, texts_b, max_chars)
        index = fine_to_coarse_index(pf, pc)
        dev = self.device
        out = self.model(input_ids=pf.input_ids.to(dev), attention_mask=pf.attention_mask.to(dev),
                         token_type_ids=pf.token_type_ids.to(dev), coarse_index=index.to(dev),
                         coarse_attention_mask=pc.attention_mask.to(dev),
                         coarse_token_type_ids=pc.token_type_ids.to(dev))
        states = out.char_hidden_state
        pooled = out.last_hidden_state[:, 0]
        ma = pf.mask_a.to(dev)
        enc = EncodedBatch(pooled, self.gather_chars(states, pf.pos_a.to(dev), pf.off_a.to(dev), ma), ma)
        if texts_b is not None:
            mb = pf.mask_b.to(dev)
            enc.char_states_b = self.gather_chars(states, pf.pos_b.to(dev), pf.off_b.to(dev), mb)
            enc.char_mask_b = mb
        return enc


@register_encoder("al_mvp_char")
class AlMvpCharEncoder(HFTextEncoder):
    """Stock SGT encoder whose per-character offset embedding starts from AL-MVP's char decoder."""

    @classmethod
    def from_pretrained(cls, model_dir, meta, random_init=False, alignment: str = "auto", **options):
        enc = super().from_pretrained(model_dir, meta, random_init=random_init, alignment=alignment, **options)
        if not random_init:
            enc.load_char_decoder(Path(model_dir) / meta.get("char_decoder", "char_decoder.safetensors"))
        return enc

    @torch.no_grad()
    def load_char_decoder(self, path: Path) -> None:
        from safetensors.torch import load_file

        if not path.is_file():
            raise UserError(f"{path}: the AL-MVP character decoder is missing from the export")
        w = load_file(str(path))["offset.weight"]
        if w.shape[1] != self.hidden_size:
            raise UserError(f"{path}: offset embedding width {w.shape[1]} != model width {self.hidden_size}")
        n = min(w.shape[0], self.char_offset_emb.weight.shape[0])
        self.char_offset_emb.weight[:n] = w[:n]
        if n < self.char_offset_emb.weight.shape[0]:  # offsets past the decoder's range share its last row
            self.char_offset_emb.weight[n:] = w[n - 1]
