"""The MEAP paper's attention diagnostics on one decoder checkpoint, masked vs unmasked input.

``python -m pretrain.attention_diag MODEL_DIR [--run RUN | --corpus-dir DIR | --text-file FILE]
[--n-seqs 32] [--seq-len 256] [--mask-ratio 0.15] [--seed 0] [--out FILE]``

Windows of ``[CLS]`` + ``seq_len - 1`` tokens of validation text are run twice through the model,
once clean and once with ``mask_ratio`` of the positions replaced by ``[MASK]`` (the ``meap``
objective's per-sequence masking, same positions ``M`` for both passes). With the eager attention
weights ``A[layer, head, q, k]`` (causal, so ``k <= q``):

* ``mass_on_masked``: ``sum_{k in M, k <= q} A[q, k]``, averaged over heads and over the queries
  that see at least one position of ``M``. Clean input: the mass the same positions receive when
  they are not masked. The paper reports that MEAP lowers it with masked input (-53 % in their SFT
  analysis): the model learns to ignore ``[MASK]``.
* ``var_unmasked``: the variance of ``A[q, k]`` over the visible unmasked keys ``k`` (``k <= q``,
  ``k not in M``), averaged over heads and queries with at least two such keys. A larger variance
  means sharper attention on the remaining context (+7.8 % in the paper).

Both are reported per layer and averaged over layers, with the relative change masked vs clean.
Run it on an ``ntp`` and on a ``meap`` checkpoint to compare models. The paper's exact averaging
(which queries, heads, layers) was not readable; the choices above are ours. Output: a JSON file
(default ``MODEL_DIR/../attention_diag.json``) and a table on stdout.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pipeline.errors import UserError, main_guard
from pretrain.objectives.meap import meap_mask


def load_model(model_dir: Path, trust_remote_code: bool = False):
    """``(model, tokenizer, meta dict)`` through ``pretrain.exports.load_export`` (eager attention,
    so the weights are returned; code in the folder runs only with ``trust_remote_code``)."""
    from pretrain.exports import load_export

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
                        "lower --n-seqs or --seq-len")
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


def load_texts(args) -> list[str]:
    if args.text_file:
        f = Path(args.text_file)
        if not f.is_file():
            raise UserError(f"--text-file {f}: not found")
        return [ln for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()]
    from corpora.io import iter_corpus, list_shards

    from pipeline.runs import run_path

    cdir = Path(args.corpus_dir or run_path(args.runs_root, args.run, "corpus"))
    if not list_shards(cdir, args.split):
        raise UserError(f"no corpus shards under {cdir / args.split}; pass --run, --corpus-dir or --text-file")
    return [r["text"] for r in iter_corpus(cdir, args.split) if r.get("text")]


@main_guard
def main(argv: list[str] | None = None) -> int:
    from pipeline.log import print_table
    from pipeline.runs import atomic_write_json

    ap = argparse.ArgumentParser(prog="python -m pretrain.attention_diag", description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir", help="a decoder export folder")
    ap.add_argument("--run", default="demo")
    ap.add_argument("--runs-root", default="runs")
    ap.add_argument("--corpus-dir", default=None, help="default RUNS_ROOT/RUN/corpus")
    ap.add_argument("--split", default="valid")
    ap.add_argument("--text-file", default=None, help="UTF-8 text (one document per line) instead of the corpus")
    ap.add_argument("--n-seqs", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--mask-ratio", type=float, default=0.15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", default=None, help="JSON output (default MODEL_DIR/../attention_diag.json)")
    ap.add_argument("--trust-remote-code", action="store_true",
                    help="let code shipped in the model folder run (read it first; docs/reliability.md)")
    args = ap.parse_args(argv)
    if not 0 < args.mask_ratio < 1:
        raise UserError("--mask-ratio must be in (0, 1)")
    model_dir = Path(args.model_dir)
    model, tok, meta = load_model(model_dir, args.trust_remote_code)
    cls_id, sep_id, mask_id, pad_id = (_id(tok, "[CLS]", 2), _id(tok, "[SEP]", 3), _id(tok, "[MASK]", 4),
                                       _id(tok, "[PAD]", 0))
    ids = windows(load_texts(args), tok, args.seq_len, args.n_seqs, cls_id, sep_id)
    eligible = ~torch.isin(ids, torch.tensor([cls_id, sep_id, pad_id]))
    eligible[:, -1] = False
    g = torch.Generator().manual_seed(args.seed)
    mask = meap_mask(ids, eligible, args.mask_ratio, g)
    res = diagnostics(model, ids, mask, mask_id, args.batch_size)
    res.update({"model": str(model_dir), "objective": meta.get("objective"), "n_seqs": args.n_seqs,
                "seq_len": args.seq_len, "mask_ratio": args.mask_ratio, "seed": args.seed})
    out = Path(args.out) if args.out else model_dir.resolve().parent / "attention_diag.json"
    atomic_write_json(out, res)
    rows = [[m, res["mean"][m]["clean"], res["mean"][m]["masked"],
             100 * res["relative_change"][m] if res["relative_change"][m] is not None else float("nan")]
            for m in ("mass_on_masked", "var_unmasked")]
    print_table(f"attention diagnostics ({meta.get('objective', '?')}) -> {out}",
                ["metric", "clean input", "masked input", "change %"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
