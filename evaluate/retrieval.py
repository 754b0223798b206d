"""``retrieval``: synthetic needle / multi-document QA retrieval of a decoder, zero-shot and after SFT.

The items and their scoring are :mod:`finetune.retrieval` (a ``RetrievalConfig`` file such as
``configs/finetune/retrieval-tiny.yaml``, named by ``config``; ``options`` overrides its keys).
For one model and one seed, every entry of the config's ``variants`` is evaluated on the same items
(drawn from the eval split with the config's ``seed``): ``none`` is the pre-trained model as it is;
a study's ``random_init: true`` row (the random-init twin) is the export's config with fresh weights
drawn from the seed, the same draw for every variant, and runs only ``twin_variants`` (default zero-shot
and plain NTP SFT: the floor of what pre-training adds);
``ntp``, ``meap_copy`` and ``meap_concat`` first fine-tune a fresh copy of it on ``sft_items`` items
of the train split (the ``decoder_sft`` task kind trained by the one fine-tuning loop,
:func:`finetune.decoder_sft.fit_sft`), with the run's seed for the items, mask positions and order.

Metrics per variant ``V`` and task ``T`` (``needle``, ``mdqa``): ``T_V`` (exact match, %) and
``T_tok_V`` (answer-token accuracy, %). The result also holds the accuracy by length and depth /
gold position (``cells``) and each SFT's summary (``sft``: steps, rows, masked rows, labels after a
mask, truncated items); the report adds the SFT budget table, the needle table by depth and the
plots ``needle_by_depth.png`` and ``mdqa_by_position.png``. Variants finished before a stop are
kept in the store's work folder (resumable by variant).

Filler text: ``text_file``, ``corpus_dir``, else the corpus of the model's run (``runs/RUN/corpus``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evaluate.base import EvalContext, Evaluation, register
from evaluate.retrieval_report import report_lines
from pipeline.errors import UserError


def load_decoder(model_dir: Path, device: str, trust_remote_code: bool, random_init: bool = False):
    """``(model, encode, ids)`` of a causal-LM export through ``pretrain.exports.load_export``;
    ``ids``: pad, bos (``[CLS]``), eos (``[SEP]``) and mask (-1: none) by the vocabulary contract.
    ``random_init``: the export's config and tokenizer with fresh weights (from torch's RNG state)."""
    from pretrain.exports import load_export, special_id

    ex = load_export(model_dir, task="causal_lm", trust_remote_code=trust_remote_code, model_type="decoder",
                     random_init=random_init)
    tok = ex.tokenizer
    tok.model_max_length = 1 << 30  # whole documents are encoded, then cut into fillers
    meta = ex.meta.to_dict()

    def sid(name: str, default: int) -> int:
        v = special_id(tok, meta, name)
        return default if v is None or (v == tok.unk_token_id and name != "unk") else v

    ids = {"pad": sid("pad", 0), "bos": sid("cls", 2), "eos": sid("sep", 3), "mask": sid("mask", -1)}
    return ex.model.to(device).eval(), (lambda text: list(tok(text, add_special_tokens=False)["input_ids"])), ids


def corpus_of(model_dir: Path) -> Path | None:
    """``runs/RUN/corpus`` for ``runs/RUN/pretrain/NAME/export`` (None for other folders)."""
    parts = Path(model_dir).resolve().parts
    return Path(*parts[:-3]) / "corpus" if len(parts) >= 4 and parts[-3] == "pretrain" else None


@register
class Retrieval(Evaluation):
    """Synthetic needle / MDQA retrieval of a decoder, zero-shot and after NTP / MEAP SFT (docs/meap.md)."""

    name = "retrieval"
    random_init_ok = True  # the random-init twin: the export's config with fresh weights drawn from the seed
    metrics_doc = "T_V (exact match) and T_tok_V (answer-token accuracy) per task T and variant V of the config"

    @dataclass
    class Config:
        config: str = "configs/finetune/retrieval-tiny.yaml"  # a RetrievalConfig file
        options: dict[str, Any] = field(default_factory=dict)  # overrides of its keys ({"sft": {"epochs": 2}})
        # the variants a random-init row (a study's twin) runs, of the config's: the floor zero-shot and
        # after plain NTP SFT; MEAP SFT of fresh weights answers no question of the study and costs two
        # thirds of it
        twin_variants: list[str] = field(default_factory=lambda: ["none", "ntp"])

    def __init__(self, cfg):
        super().__init__(cfg)
        from finetune.retrieval import RetrievalConfig
        from pipeline.config import load_config

        if not Path(cfg.config).is_file():
            raise UserError(f"evaluation 'retrieval': config file not found: {cfg.config}")
        self.rc = load_config(RetrievalConfig, cfg.config, [f"{k}={json.dumps(v)}" for k, v in _flat(cfg.options)])
        from finetune.retrieval import SFT_VARIANTS

        bad = [v for v in cfg.twin_variants if v != "none" and v not in SFT_VARIANTS]
        if bad:
            raise UserError(f"evaluation 'retrieval': twin_variants: '{bad[0]}' is not a variant "
                            f"(none, {', '.join(SFT_VARIANTS)})")
        if not [v for v in cfg.twin_variants if v in self.rc.variants]:
            raise UserError(f"evaluation 'retrieval': twin_variants {list(cfg.twin_variants)}: none of them is "
                            f"among the config's variants {list(self.rc.variants)}, so a random-init twin "
                            "would run nothing")

    @property
    def metrics(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(f"{t}{kind}_{v}" for v in self.rc.variants for kind in ("", "_tok") for t in self.rc.tasks)

    def settings(self) -> dict:
        from dataclasses import asdict

        rc = asdict(self.rc)
        rc.pop("batch_size")  # speed only
        return {"retrieval": rc, "twin_variants": list(self.cfg.twin_variants)}

    def run(self, model_dir: Path, seed: int, ctx: EvalContext) -> dict:
        from evaluate.frozen import resolve_export
        from evaluate.store import fingerprint, model_state
        from pipeline.runs import atomic_write_json, read_json

        model_dir = resolve_export(model_dir)
        out: dict = {"cells": {}, "sft": {}}
        for v in (self.rc.variants if not ctx.random_init else [v for v in self.rc.variants if v in self.cfg.twin_variants]):
            drop = ("variants",) + (("sft", "sft_items", "train_split") if v == "none" else ())  # zero-shot: no SFT
            st = {k: x for k, x in self.settings()["retrieval"].items() if k not in drop}
            fp = fingerprint({"settings": st, "variant": v, "seed": seed, "dir": str(model_dir),
                              "model_state": model_state(model_dir)} | ({"random_init": True} if ctx.random_init else {}))
            part = Path(ctx.work_dir) / f"{v}.json" if ctx.work_dir is not None else None
            if part is not None and part.is_file() and read_json(part).get("fingerprint") == fp:
                r = read_json(part)["result"]
            else:
                r = self.variant(model_dir, v, seed, ctx)
                if part is not None:
                    atomic_write_json(part, {"fingerprint": fp, "result": r})
            for t, summ in r["tasks"].items():
                out[f"{t}_{v}"], out[f"{t}_tok_{v}"] = summ["accuracy"], summ["token_accuracy"]
            out["cells"][v] = {t: {k: summ[k] for k in ("by_length", "token_by_length", "n")}
                               for t, summ in r["tasks"].items()}
            if r["sft"] is not None:
                out["sft"][v] = r["sft"]
        return out

    def variant(self, model_dir: Path, variant: str, seed: int, ctx: EvalContext) -> dict:
        """``{"tasks": summarise(...), "sft": summary or None}`` of one variant (a fresh model load)."""
        import torch

        from finetune.decoder_sft import fit_sft, sft_rows
        from finetune.retrieval import (Encoder, FillerPool, TaskGenerator, eval_items, load_texts,
                                        score_generate, score_teacher_forced, summarise, train_items)

        rc = self.rc
        device = "cuda" if ctx.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
        if ctx.random_init:
            torch.manual_seed(seed)  # the twin's fresh weights: one draw per seed, the same for every variant
        model, encode, ids = load_decoder(model_dir, device, ctx.trust_remote_code, random_init=ctx.random_init)
        enc, corpus = Encoder(encode), corpus_of(model_dir)

        def generator(split: str) -> TaskGenerator:
            return TaskGenerator(enc, FillerPool.from_texts(load_texts(rc, split, corpus), enc), rc.facts,
                                 ids["bos"], ids["eos"])

        items = eval_items(generator(rc.eval_split), rc, rc.seed)
        sft = None
        if variant != "none":
            if ids["mask"] < 0 and variant != "ntp":
                raise UserError(f"{model_dir}: the tokenizer has no [MASK] token; MEAP SFT needs one")
            torch.manual_seed(seed)
            tr = train_items(generator(rc.train_split), rc, rc.sft_items, seed=10_000 + seed)
            stats: dict = {}
            rows = sft_rows([(it.prompt, it.answer) for it in tr], variant, rc.sft, eos_id=ids["eos"],
                            mask_id=ids["mask"], seed=seed, stats=stats)
            sft = fit_sft(model, rows, rc.sft, pad_id=ids["pad"], seed=seed, device=device, mask_id=ids["mask"])
            sft.update({k: v for k, v in stats.items() if k != "rows"},
                       answer_tokens_mean=sum(len(it.answer) for it in tr) / len(tr))
            if ctx.log is not None:
                ctx.log.info("retrieval %s: SFT %s, %d steps, final loss %s", model_dir, variant, sft["steps"],
                             sft["final_loss"])
        suppress = [ids["mask"]] if ids["mask"] >= 0 else []
        if rc.scoring == "generate":
            scores = score_generate(model, items, suppress=suppress, device=device)
        else:
            scores = score_teacher_forced(model, items, pad_id=ids["pad"], suppress=suppress,
                                          batch_size=rc.batch_size, device=device)
        return {"tasks": summarise(items, scores), "sft": sft}

    def report_lines(self, records: list[dict], out_dir: Path) -> list[str]:
        return report_lines(self.rc, records, out_dir)


def _flat(d: dict, prefix: str = ""):
    """``{"sft": {"epochs": 2}}`` -> ``("sft.epochs", 2)``: overrides that keep the file's other keys."""
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v
