"""Whole-n-gram recovery on held-out text (ERNIE-Gram evidence, ``docs/ernie_gram.md``).

On the ``valid`` windows of the char shards (which carry the n-gram units of
:func:`tokenization.ngram.max_match`), ``mask_prob`` of the units of every window are chosen
with a fixed seed -- the *same* units for every model -- and every chosen unit is masked. A
masked n-gram (unit of >= 2 tokens) counts as recovered only if it is predicted exactly:

* ``explicit`` (an ``ernie_gram`` pre-training folder with the explicit head): the n-gram is
  collapsed to one ``[MASK]`` and the argmax over the joint vocabulary must be its n-gram id; with
  comprehensive queries the fine-grained queries are scored too (``queries``: every token right).
  The slot input is what the main model was trained on: ``[MASK]``, or in the generator rung
  (``generator: true``) the generator's sample (drawn from its distribution at ``[MASK]`` input
  with uniforms from a fixed seed), since that rung's main model never sees ``[MASK]`` at a slot.
  Such a sample is sometimes the original n-gram itself, which the main model then only has to
  keep: ``sample_is_original`` (% of masked n-grams) is reported beside the number, and so is
  ``ngram_exact_mask_input``, the rung scored on ``[MASK]`` input (an input it never saw: biased
  low). The objective is asked for its predictions through its method ``predict_masked``;
* ``contiguous`` (any encoder export with an MLM head, e.g. ``mlm``): all its tokens are
  ``[MASK]`` in place and the argmax at every position must be the right token.

The explicit head needs the objective's heads, which the export drops, so an ``ernie_gram``
folder is read from its pre-training folder: ``config.yaml`` + ``checkpoints/latest``.

Settings resolved over all models of a run or study (:meth:`NgramRecovery.prepare`): the lexicon
cap (``max_ngrams: 0``: the smallest explicit model's lexicon), the shards (``shards: ""``: the
first model's ``data.shards_root``, else ``runs/RUN/shards``) and ``seq_len`` (0: the first model's).
The seed picks the masked units (seed 0: the former ``python -m pretrain.ngram_eval`` numbers).
``python -m evaluate run ngram_recovery --run RUN --models runs/RUN/pretrain/NAME ...``
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from evaluate.base import EvalContext, Evaluation, register
from pipeline.errors import UserError
from pretrain.objectives.ernie_gram import IGNORE, choose_units, collapse, normalise_units


class Contiguous:
    """An encoder export's MLM head, all tokens of a masked n-gram ``[MASK]`` in place."""

    method = "contiguous"

    def __init__(self, export: Path, trust_remote_code: bool = False):
        from pretrain.exports import load_export

        self.model = load_export(export, task="masked_lm", tokenizer=False, model_type="encoder",
                                 trust_remote_code=trust_remote_code).model
        self.model.eval()
        self.n_ngrams = None

    @torch.no_grad()
    def score(self, ids, special, valid, ulen, ung, chosen, mask_id: int, pad_id: int, cap: int) -> dict[str, int]:
        B, T = ids.shape
        is_start, ul, _ = normalise_units(ulen, ung, special, valid, cap)
        ar = torch.arange(T).expand(B, T)
        sp = torch.where(is_start, ar, torch.zeros_like(ar)).cummax(dim=1).values
        in_masked = chosen.gather(1, sp)
        in_ngram = in_masked & (ul.gather(1, sp) >= 2)
        x = torch.where(in_masked, torch.full_like(ids, mask_id), ids)
        ok = self.model(input_ids=x, attention_mask=valid.long()).logits.argmax(-1) == ids
        # a unit is exact when no token of it is wrong: count wrong tokens per unit start
        wrong = torch.zeros(B, T, dtype=torch.long).scatter_add_(1, sp, (in_ngram & ~ok).long())
        starts = chosen & (ul >= 2)
        return {"ngrams": int(starts.sum()), "exact": int((starts & (wrong == 0)).sum()),
                "tokens": int(in_ngram.sum()), "tokens_ok": int((in_ngram & ok).sum())}


class Explicit:
    """An ``ernie_gram`` objective rebuilt from its pre-training folder with its latest checkpoint."""

    method = "explicit"

    def __init__(self, run_dir: Path):
        from safetensors.torch import load_model

        from pipeline.config import load_config
        from pretrain.checkpoint import Checkpointer
        from pretrain.config import PretrainConfig
        from pretrain.data import build_context
        from pretrain.objectives.base import build_objective

        cfg = load_config(PretrainConfig, run_dir / "config.yaml", [])
        latest = Checkpointer(run_dir / "checkpoints").latest()
        if latest is None or not (latest / "model.safetensors").is_file():
            raise UserError(f"{run_dir}: no checkpoint with the n-gram head (checkpoints/latest/model.safetensors)")
        self.obj = build_objective(cfg.objective, cfg.objective_options, build_context(cfg))
        if not self.obj.cfg.explicit:
            raise UserError(f"{run_dir}: this ernie_gram run has no explicit n-gram head (explicit: false)")
        missing, unexpected = load_model(self.obj, str(latest / "model.safetensors"), strict=False)
        if missing or unexpected:
            raise UserError(f"{latest}: checkpoint does not match its config (missing {missing[:3]}, unexpected {unexpected[:3]})")
        self.obj.eval()
        self.n_ngrams = self.obj.n_ngrams
        self.sample_gen = torch.Generator().manual_seed(0)  # the generator rung's sampling uniforms

    @torch.no_grad()
    def score(self, ids, special, valid, ulen, ung, chosen, mask_id: int, pad_id: int, cap: int) -> dict[str, int]:
        o = self.obj
        b = collapse(ids, special, valid, ulen, ung, chosen, mask_id=mask_id, pad_id=pad_id, fine_size=o.fine_size,
                     max_ngrams=cap, mask_prob=0.15, queries=o.query_mode, generator=None,
                     renumber_positions=o.cfg.positions == "renumbered")
        labels = b["coarse_labels"]
        ng = (labels != IGNORE) & (b["slot_len"] >= 2)
        if getattr(o.cfg, "generator", False):
            g = getattr(self, "sample_gen", None) or torch.Generator().manual_seed(0)
            b["sample_u"] = torch.rand(b["main_ids"].shape, generator=g)
        pred = o.predict_masked(b, slot_input="trained")
        res = {"ngrams": int(ng.sum()), "exact": int((ng & (pred["coarse"] == labels)).sum())}
        if "sampled" in pred:  # generator rung: the input it was trained on, plus the biased [MASK] number
            res["sample_is_original"] = int((ng & (pred["sampled"] == labels)).sum())
            on_mask = o.predict_masked(b, slot_input="mask")
            res["exact_mask_input"] = int((ng & (on_mask["coarse"] == labels)).sum())
        qv = b["query_valid"]
        if qv.shape[1] and o.query_mode != "none":
            okq = (pred["fine"] == b["query_labels"]) | ~qv
            wrong = torch.zeros(labels.shape, dtype=torch.long).scatter_add_(1, b["query_slot"], (~okq).long())
            res["queries_exact"] = int((ng & (wrong == 0)).sum())
            qng = qv & (b["slot_len"].gather(1, b["query_slot"]) >= 2)
            res["tokens"] = int(qng.sum())
            res["tokens_ok"] = int((qng & okq).sum())
        return res


def _objective(d: Path) -> str | None:
    if not ((d / "config.yaml").is_file() and (d / "checkpoints").is_dir()):
        return None
    import yaml

    try:
        return (yaml.safe_load((d / "config.yaml").read_text(encoding="utf-8")) or {}).get("objective")
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"{d / 'config.yaml'}: cannot read ({e})") from None


def load_scorer(d: str | Path, trust_remote_code: bool = False):
    d = Path(d)
    if _objective(d) == "ernie_gram":
        return Explicit(d), d
    exp = d / "export" if (d / "export" / "config.json").is_file() else d
    if not (exp / "config.json").is_file():
        raise UserError(f"{d}: neither an ernie_gram pre-training folder nor an encoder export")
    return Contiguous(exp, trust_remote_code), exp


@register
class NgramRecovery(Evaluation):
    """Whole-n-gram recovery on the valid char shards (explicit n-gram head vs contiguous MLM)."""

    name = "ngram_recovery"
    metrics = ("ngram_exact", "queries_exact", "token_acc", "sample_is_original", "ngram_exact_mask_input")

    @dataclass
    class Config:
        shards: str = ""          # shards root ("": the first model's data.shards_root, else runs/RUN/shards)
        kind: str = "char"
        batches: int = 20
        batch_size: int = 32
        seq_len: int = 0          # 0: the first model's data.seq_len (else 128)
        mask_prob: float = 0.15
        max_ngrams: int = 0       # lexicon cap (0: the smallest explicit model's lexicon)

    def prepare(self, model_dirs: list[Path]) -> None:
        import yaml

        c, first = self.cfg, Path(model_dirs[0])
        if c.max_ngrams <= 0:
            caps = [Explicit(Path(d)).n_ngrams for d in dict.fromkeys(model_dirs) if _objective(Path(d)) == "ernie_gram"]
            c.max_ngrams = min(caps + [10**9])
        data_cfg = {}
        if (first / "config.yaml").is_file():
            data_cfg = (yaml.safe_load((first / "config.yaml").read_text(encoding="utf-8")) or {}).get("data") or {}
        if not c.shards:  # the first model's own shards (its resolved config), else runs/RUN/shards
            run_root = first.parent.parent if first.parent.name == "pretrain" else first.parent.parent.parent
            c.shards = str(data_cfg.get("shards_root") or run_root / "shards")
        if c.seq_len <= 0:
            c.seq_len = int(data_cfg.get("seq_len", 128))

    def run(self, model_dir: Path, seed: int, ctx: EvalContext) -> dict:
        from tokenization.loader import PackedLoader

        c = self.cfg
        if c.max_ngrams <= 0 or not c.shards or c.seq_len <= 0:
            self.prepare([model_dir])
        sc, _ = load_scorer(model_dir, ctx.trust_remote_code)
        loader = PackedLoader(c.shards, c.kind, "valid", c.seq_len, c.batch_size, seed=seed, shuffle=False)
        meta = loader.vocab_meta.get("special_tokens", {})
        mask_id, pad_id = int(meta.get("mask", 4)), int(meta.get("pad", 0))
        n = min(c.batches, len(loader))
        if n < 1:
            raise UserError(f"{c.shards}/{c.kind}/valid: no validation batch of {c.batch_size} windows")
        t: dict[str, int] = defaultdict(int)
        for i in range(n):
            b = loader.batch(0, i)
            if "unit_len" not in b:
                raise UserError(f"{c.shards}/{c.kind}: the shards carry no n-gram units (build them with the 'ngram' kind)")
            ids = torch.from_numpy(np.asarray(b["input_ids"], dtype=np.int64))
            special = torch.from_numpy(np.asarray(b["special_mask"], dtype=bool))
            valid = torch.from_numpy(np.asarray(b["attention_mask"]) != 0)
            ulen = torch.from_numpy(np.asarray(b["unit_len"], dtype=np.int64))
            ung = torch.from_numpy(np.asarray(b["unit_ngram"], dtype=np.int64))
            is_start, _, _ = normalise_units(ulen, ung, special, valid, c.max_ngrams)
            chosen = choose_units(is_start & ~special & valid, c.mask_prob, torch.Generator().manual_seed(seed * 100003 + i))
            for k, v in sc.score(ids, special, valid, ulen, ung, chosen, mask_id, pad_id, c.max_ngrams).items():
                t[k] += v
        r = {"method": sc.method, "ngrams": t["ngrams"], "batches": n, "ngram_exact": 100.0 * t["exact"] / max(1, t["ngrams"])}
        if "queries_exact" in t:
            r["queries_exact"] = 100.0 * t["queries_exact"] / max(1, t["ngrams"])
        if "sample_is_original" in t:
            r["slot_input"] = "generator_sample"
            r["sample_is_original"] = 100.0 * t["sample_is_original"] / max(1, t["ngrams"])
            r["ngram_exact_mask_input"] = 100.0 * t["exact_mask_input"] / max(1, t["ngrams"])
        elif sc.method == "explicit":
            r["slot_input"] = "mask"
        if t.get("tokens"):
            r["token_acc"] = 100.0 * t["tokens_ok"] / t["tokens"]
        return r
