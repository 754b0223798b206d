"""The MEAP paper's attention diagnostics on one decoder export, masked vs unmasked input.

Windows of ``[CLS]`` + ``seq_len - 1`` tokens of validation text are run twice through the model,
once clean and once with ``mask_ratio`` of the positions replaced by ``[MASK]`` (the ``meap``
objective's per-sequence masking, same positions ``M`` for both passes, drawn from the seed). With
the eager attention weights ``A[layer, head, q, k]`` (causal, so ``k <= q``):

* ``mass_on_masked``: ``sum_{k in M, k <= q} A[q, k]``, averaged over heads and over the queries
  that see at least one position of ``M``. Clean input: the mass the same positions receive when
  they are not masked. The paper reports that MEAP lowers it with masked input (-53 % in their SFT
  analysis): the model learns to ignore ``[MASK]``.
* ``var_unmasked``: the variance of ``A[q, k]`` over the visible unmasked keys ``k`` (``k <= q``,
  ``k not in M``), averaged over heads and queries with at least two such keys. A larger variance
  means sharper attention on the remaining context (+7.8 % in the paper).

Both are reported per layer and averaged over layers, with the relative change masked vs clean
(flat metrics ``mass_on_masked_clean``, ``..._masked``, ``..._change`` and the same for
``var_unmasked``). Run it on an ``ntp`` and on a ``meap`` export to compare models. The paper's
exact averaging (which queries, heads, layers) was not readable; the choices above are ours.

Text: ``text_file`` (one document per line), else the ``split`` of ``corpus_dir``, else the corpus
of the model's own run (``runs/RUN/corpus`` for ``runs/RUN/pretrain/NAME/export``).
``python -m evaluate run attention --run RUN --models runs/RUN/pretrain/meap/export``
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from evaluate.base import EvalContext, Evaluation, register
from pipeline.errors import UserError
from pretrain.objectives.meap import meap_mask


def load_model(model_dir: Path, trust_remote_code: bool = False):
    """``(model, tokenizer, meta dict)`` through ``pretrain.exports.load_export`` (eager attention,
    so the weights are returned; code in the folder runs only with ``trust_remote_code``)."""
    from pretrain.exports import load_export

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise UserError(f"{model_dir}: not a model folder (no config.json)")
    ex = load_export(model_dir, task="causal_lm", model_type="decoder", trust_remote_code=trust_remote_code,
                     attn_implementation="eager")
    ex.tokenizer.model_max_length = 1 << 30  # whole documents are encoded, then cut into windows/fillers
    return ex.model.eval(), ex.tokenizer, ex.meta.to_dict()


def _id(tok, name: str, default: int) -> int:
    v = tok.convert_tokens_to_ids(name)
    return default if v is None else int(v)


def windows(texts: list[str], tok, seq_len: int, n: int, cls_id: int, sep_id: int) -> torch.Tensor:
    """Pack documents (separated by ``[SEP]``) into ``n`` windows of ``[CLS]`` + ``seq_len - 1``."""
    need = n * (seq_len - 1)
    stream: list[int] = []
    for t in texts:
        stream += list(tok(t, add_special_tokens=False)["input_ids"]) + [sep_id]
        if len(stream) >= need:
            break
    if len(stream) < need:
        raise UserError(f"not enough text for {n} windows of {seq_len} tokens ({len(stream)} tokens); "
                        "lower n_seqs or seq_len")
    body = torch.tensor(stream[:need], dtype=torch.long).view(n, seq_len - 1)
    return torch.cat([torch.full((n, 1), cls_id, dtype=torch.long), body], dim=1)


@torch.no_grad()
def diagnostics(model, ids: torch.Tensor, mask: torch.Tensor, mask_id: int, batch_size: int = 8) -> dict:
    """Per-layer ``mass_on_masked`` and ``var_unmasked`` for clean and masked input."""
    B, T = ids.shape
    causal = torch.ones(T, T, dtype=torch.bool).tril()  # [q, k]
    res = {}
    for cond, inp in (("clean", ids), ("masked", ids.masked_fill(mask, mask_id))):
        sums = None
        for b in range(0, B, batch_size):
            x, m = inp[b:b + batch_size], mask[b:b + batch_size]
            att = model(input_ids=x, output_attentions=True).attentions  # L x [b, H, T, T]
            A = torch.stack([a.float() for a in att])  # [L, b, H, T, T]
            km = m[None, :, None, None, :]  # keys in M
            vis_m = causal[None, None, None] & km  # [1, b, 1, T, T]
            vis_u = causal[None, None, None] & ~km
            mass = (A * vis_m).sum(-1)  # [L, b, H, T]
            q_has_m = vis_m.any(-1).expand_as(mass)
            nu = vis_u.sum(-1).float().expand_as(mass)
            mean_u = (A * vis_u).sum(-1) / nu.clamp(min=1)
            var_u = ((A - mean_u[..., None]) ** 2 * vis_u).sum(-1) / nu.clamp(min=1)
            q_var = nu >= 2
            part = torch.stack([(mass * q_has_m).sum((1, 2, 3)), q_has_m.sum((1, 2, 3)).float(),
                                (var_u * q_var).sum((1, 2, 3)), q_var.sum((1, 2, 3)).float()])  # [4, L]
            sums = part if sums is None else sums + part
        res[cond] = {"mass_on_masked": (sums[0] / sums[1].clamp(min=1)).tolist(),
                     "var_unmasked": (sums[2] / sums[3].clamp(min=1)).tolist()}
    out = {"per_layer": res, "mean": {}, "relative_change": {}}
    for metric in ("mass_on_masked", "var_unmasked"):
        c = sum(res["clean"][metric]) / len(res["clean"][metric])
        mm = sum(res["masked"][metric]) / len(res["masked"][metric])
        out["mean"][metric] = {"clean": c, "masked": mm}
        out["relative_change"][metric] = (mm - c) / c if c else None
    return out


@register
class Attention(Evaluation):
    """MEAP attention diagnostics of a decoder export: mass on masked positions, variance elsewhere."""

    name = "attention"
    metrics = ("mass_on_masked_clean", "mass_on_masked_masked", "mass_on_masked_change",
               "var_unmasked_clean", "var_unmasked_masked", "var_unmasked_change")
    unfingerprinted = ("batch_size",)

    @dataclass
    class Config:
        text_file: str = ""     # UTF-8 text, one document per line ("": the corpus)
        corpus_dir: str = ""    # "": runs/RUN/corpus of the model's run
        split: str = "valid"
        n_seqs: int = 32
        seq_len: int = 256
        mask_ratio: float = 0.15
        batch_size: int = 8

        def validate(self) -> None:
            if not 0 < self.mask_ratio < 1:
                raise ValueError("mask_ratio must be in (0, 1)")
            if self.n_seqs < 1 or self.seq_len < 2:
                raise ValueError("n_seqs must be >= 1 and seq_len >= 2")

    def texts(self, model_dir: Path) -> list[str]:
        c = self.cfg
        if c.text_file:
            f = Path(c.text_file)
            if not f.is_file():
                raise UserError(f"text_file {f}: not found")
            return [ln for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()]
        from corpora.io import iter_corpus, list_shards

        parts = Path(model_dir).resolve().parts
        if not c.corpus_dir and not (len(parts) >= 4 and parts[-1] == "export" and parts[-3] == "pretrain"):
            raise UserError(f"{model_dir}: not under runs/RUN/pretrain/NAME/export; give text_file or corpus_dir")
        cdir = Path(c.corpus_dir) if c.corpus_dir else Path(*parts[:-3]) / "corpus"
        if not list_shards(cdir, c.split):
            raise UserError(f"no corpus shards under {cdir / c.split}; give corpus_dir or text_file")
        return [r["text"] for r in iter_corpus(cdir, c.split) if r.get("text")]

    def run(self, model_dir: Path, seed: int, ctx: EvalContext) -> dict:
        c = self.cfg
        from evaluate.frozen import resolve_export

        model_dir = resolve_export(model_dir)
        model, tok, meta = load_model(model_dir, ctx.trust_remote_code)
        cls_id, sep_id, mask_id, pad_id = (_id(tok, "[CLS]", 2), _id(tok, "[SEP]", 3), _id(tok, "[MASK]", 4),
                                           _id(tok, "[PAD]", 0))
        ids = windows(self.texts(model_dir), tok, c.seq_len, c.n_seqs, cls_id, sep_id)
        eligible = ~torch.isin(ids, torch.tensor([cls_id, sep_id, pad_id]))
        eligible[:, -1] = False
        mask = meap_mask(ids, eligible, c.mask_ratio, torch.Generator().manual_seed(seed))
        res = diagnostics(model, ids, mask, mask_id, c.batch_size)
        for m in ("mass_on_masked", "var_unmasked"):
            res[f"{m}_clean"], res[f"{m}_masked"] = res["mean"][m]["clean"], res["mean"][m]["masked"]
            res[f"{m}_change"] = res["relative_change"][m]
        res["objective"] = meta.get("objective")
        return res
