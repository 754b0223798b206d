"""One training loop for every task kind, plus the per-seed grid and resumable result files.

For a (model, task, seed): every (lr, epochs) grid point trains from the same initial weights
(seeded), evaluates dev ``evals_per_epoch`` times per epoch and keeps the best dev state; the grid
point with the best dev score is that seed's choice and its best state is scored on test.
Results: ``MODEL/TASK/seed-S/grid/lr-LR_ep-E.json`` per grid point, ``seed-S/result.json`` when
the seed is done (written last; a finished seed is skipped on the next run unless its settings
changed).

Robustness conditions (a task's ``perturb`` option, :mod:`finetune.perturb`): the dev-best state of
every grid point is also scored on perturbed copies of the test split; ``result.json`` holds, per
condition ``MODE@RATE``, the chosen point's score, its drop from the clean test score and the
realised perturbation rate. They never influence the choice (dev does).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from finetune.config import FinetuneConfig
from finetune.kinds.base import KindOptions, TaskData, get_kind
from finetune.perturb import perturbed_tests
from finetune.schema import RunResult
from finetune.tasks import TaskConfig
from pipeline.log import get_logger, progress
from pipeline.runs import atomic_write_json, read_json

log = get_logger("finetune")


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Finetuner(nn.Module):
    def __init__(self, encoder, kind):
        super().__init__()
        self.encoder = encoder
        self.kind = kind

    def forward(self, batch):
        return self.kind(self.encoder, batch)


def _batches(items: list, size: int, order: list[int] | None = None):
    idx = order if order is not None else list(range(len(items)))
    for i in range(0, len(idx), size):
        yield [items[j] for j in idx[i:i + size]]


def precision(cfg: FinetuneConfig, device: torch.device) -> str:
    """``"bf16"`` or ``"no"``: ``cfg.mixed_precision`` with ``auto`` resolved for ``device``.

    ``auto`` follows :func:`pretrain.config.resolve_mixed_precision` (bf16 on a GPU with bf16; on a
    CPU as ``pretrain.config.FINETUNE_CPU_AUTO_BF16`` says: fp32, see its comment);
    an ``accelerate launch`` setting does not apply to fine-tuning.
    """
    from pretrain import config as pc

    cuda = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if device.type == "cuda" and cfg.mixed_precision == "bf16" and not cuda:
        return "no"
    return pc.resolve_mixed_precision(cfg.mixed_precision, cuda=cuda, env={},
                                      cpu_policy=pc.FINETUNE_CPU_AUTO_BF16) or "no"


def autocast(device: torch.device, mp: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=(mp == "bf16"))


def _train_step(model: Finetuner, opt, sched, batch: dict, grad_clip: float, mp: str = "no") -> dict:
    """One optimiser step on ``batch`` (gradient clipping when ``grad_clip > 0``); the model's outputs."""
    with autocast(next(model.parameters()).device, mp):
        out = model(batch)
    opt.zero_grad(set_to_none=True)
    out["loss"].backward()
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    sched.step()
    return out


@torch.no_grad()
def evaluate(model: Finetuner, features: list[dict], batch_size: int, mp: str = "no") -> dict[str, float]:
    model.eval()
    preds = []
    dev = next(model.parameters()).device
    for chunk in _batches(features, batch_size):
        batch = model.kind.collate(chunk)
        with autocast(dev, mp):
            out = model(batch)
        preds.extend(model.kind.predict(out, batch))
    return model.kind.score(preds, features)


def _optimizer(model: nn.Module, lr: float, wd: float):
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "LayerNorm" in n or "norm" in n.lower() else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}], lr=lr)


def fit(model: Finetuner, train: list, *, lr: float, batch_size: int, steps: int, weight_decay: float,
        warmup: float, grad_clip: float, mp: str = "no", seed: int = 0, eval_at: set[int] | None = None,
        on_eval=None, desc: str = "fit", frozen: nn.Module | None = None) -> dict:
    """The one fine-tuning loop, for every task kind: ``steps`` optimiser steps over ``train`` (the
    kind's features, batched by ``model.kind.collate``), epoch after epoch in an order drawn from
    ``seed`` (the last batch of an epoch may be short; the loop stops after ``steps`` even inside an
    epoch). AdamW without weight decay on biases and norms (:func:`_optimizer`), linear warm-up over
    ``warmup`` of the steps then linear decay to 0, gradient clipping at ``grad_clip``.
    ``on_eval(epoch, mean train loss since the last call)`` runs after the steps of an epoch that are
    in ``eval_at`` (1-based step numbers within the epoch). Returns ``{"steps", "examples",
    "train_seconds", "final_loss"}`` (``final_loss``: the mean of the last 10 steps' losses).
    ``frozen``: a module kept in eval mode throughout (a linear probe's encoder: no dropout)."""
    opt = _optimizer(model, lr, weight_decay)
    warm = int(warmup * steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / max(1, warm) if s < warm else max(0.0, (steps - s) / max(1, steps - warm)))
    steps_per_epoch = math.ceil(len(train) / batch_size) if train else 0
    gen = torch.Generator().manual_seed(seed)
    done, ep, n_seen, train_time, loss_sum, loss_n, last = 0, 0, 0, 0.0, 0.0, 0, []
    bar = progress(total=steps, desc=desc, unit="step")
    while done < steps and steps_per_epoch:
        order = torch.randperm(len(train), generator=gen).tolist()
        for step, chunk in enumerate(_batches(train, batch_size, order), 1):
            if done == steps:
                break
            model.train()
            if frozen is not None:
                frozen.eval()
            ts = time.time()
            out = _train_step(model, opt, sched, model.kind.collate(chunk), grad_clip, mp)
            train_time += time.time() - ts
            done += 1
            n_seen += len(chunk)
            loss = float(out["loss"].detach())
            loss_sum, loss_n, last = loss_sum + loss, loss_n + 1, (last + [loss])[-10:]
            bar.update(1)
            if on_eval is not None and step in (eval_at or ()):
                on_eval(ep + step / steps_per_epoch, loss_sum / max(1, loss_n))
                loss_sum, loss_n = 0.0, 0
        ep += 1
    bar.close()
    model.eval()
    return {"steps": done, "examples": n_seen, "train_seconds": train_time,
            "final_loss": sum(last) / len(last) if last else None}


def kind_options(cfg: FinetuneConfig, tcfg: TaskConfig, encoder) -> KindOptions:
    """The head options of one task for one encoder (two-view encoders get per-view heads)."""
    return KindOptions(dropout=cfg.dropout, max_chars=tcfg.max_chars, max_chars_b=tcfg.max_chars_b,
                       view_sizes=tuple(getattr(encoder, "pooled_view_sizes", ())) if cfg.view_heads else (),
                       agreement_weight=cfg.agreement_weight, pooling=cfg.pooling)


def freeze(encoder: nn.Module) -> None:
    """A linear probe's encoder: no gradients, always in eval mode (no dropout), so only the head learns."""
    encoder.requires_grad_(False)
    encoder.eval()


def train_grid_point(model_dir: str, random_init: bool, task: TaskData, tcfg: TaskConfig, cfg: FinetuneConfig,
                     lr: float, epochs: int, seed: int, feats: dict[str, list[dict]] | None = None,
                     conditions: dict[str, list[dict]] | None = None, freeze_encoder: bool = False) -> dict:
    """Train one (lr, epochs) point with ``seed``; return dev/test metrics of the best dev state
    (and its main metric on each extra test set of ``conditions``: name -> examples).

    ``freeze_encoder``: a linear probe -- the same loop, but only the task head is trained on the
    frozen encoder's states."""
    device = pick_device(cfg.device)
    mp = precision(cfg, device)
    set_seed(seed)
    kind_cls = get_kind(task.kind)
    encoder = kind_cls.load_backbone(model_dir, random_init, cfg)  # a TextEncoder, or a decoder_sft's causal LM
    kind = kind_cls(task, getattr(encoder, "hidden_size", 0), kind_options(cfg, tcfg, encoder))
    model = Finetuner(encoder, kind).to(device)
    if freeze_encoder:
        freeze(encoder)
    if feats is None:
        feats = {s: kind.features(getattr(task, s), s) for s in ("train", "dev", "test")}
    train = feats["train"]
    bs = tcfg.batch_size or cfg.batch_size
    steps_per_epoch = math.ceil(len(train) / bs)
    eval_at = {max(1, round(steps_per_epoch * (k + 1) / cfg.evals_per_epoch)) for k in range(cfg.evals_per_epoch)}
    best, best_state, best_where, curve = -math.inf, None, None, []
    main = kind.main_metric

    def on_eval(epoch: float, train_loss: float) -> None:
        nonlocal best, best_state, best_where
        dev = evaluate(model, feats["dev"], cfg.eval_batch_size, mp)
        curve.append({"epoch": epoch, "train_loss": train_loss, "dev": dev})
        if dev[main] > best:
            best, best_where = dev[main], epoch
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    t0 = time.time()
    fitted = fit(model, train, lr=lr, batch_size=bs, steps=steps_per_epoch * epochs, weight_decay=cfg.weight_decay,
                 warmup=cfg.warmup, grad_clip=cfg.grad_clip, mp=mp, seed=seed, eval_at=eval_at, on_eval=on_eval,
                 desc=f"{task.name} lr={lr:g} ep={epochs} seed={seed}",
                 frozen=encoder if freeze_encoder else None)
    n_seen, train_time = fitted["examples"], fitted["train_seconds"]
    model.load_state_dict(best_state)
    te = time.time()
    test = evaluate(model, feats["test"], cfg.eval_batch_size, mp)
    test_time = time.time() - te
    cond = {name: evaluate(model, kind.features(exs, "test"), cfg.eval_batch_size, mp)[main]
            for name, exs in (conditions or {}).items()}
    cut = getattr(encoder, "n_cut_chars", 0)
    return {"lr": lr, "epochs": epochs, "seed": seed, "best_epoch": best_where, "dev": best, "dev_metrics": curve[-1]["dev"] if curve else {},
            "test": test[main], "test_metrics": test, "test_conditions": cond, "curve": curve, "train_examples": len(train),
            "train_examples_per_s": n_seen / max(train_time, 1e-9), "eval_examples_per_s": len(feats["test"]) / max(test_time, 1e-9),
            "seconds": time.time() - t0, "chars_cut_by_token_budget": int(cut), "precision": mp,
            "freeze_encoder": freeze_encoder}


def settings_fingerprint(tcfg: TaskConfig, cfg: FinetuneConfig, random_init: bool, freeze_encoder: bool = False) -> str:
    task = asdict(tcfg)
    if task.get("perturb") is None:  # no conditions: results of earlier versions keep their fingerprints
        task.pop("perturb", None)
    keys = {"task": task, "random_init": random_init, **{k: getattr(cfg, k) for k in (
        "lrs", "epochs", "batch_size", "eval_batch_size", "warmup", "weight_decay", "grad_clip", "dropout",
        "evals_per_epoch", "alignment", "view_heads", "agreement_weight")}}
    mp = precision(cfg, pick_device(cfg.device))
    if mp != "no":  # only then: fp32 results of earlier versions keep their fingerprints
        keys["precision"] = mp
    if freeze_encoder:  # likewise: fine-tuned results keep theirs
        keys["freeze_encoder"] = True
    if cfg.pooling != "cls":  # likewise: [CLS]-pooled results keep theirs
        keys["pooling"] = cfg.pooling
    return hashlib.sha1(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]


def condition_scores(point: dict, realised: dict[str, float]) -> dict[str, dict]:
    """Per condition of a grid point: its test score, the drop from the clean test score and the
    realised perturbation rate (``{}`` without conditions)."""
    return {c: {"test": v, "drop": point["test"] - v, "realised_rate": realised.get(c)}
            for c, v in point.get("test_conditions", {}).items()}


def run_seed(out_dir: Path, model_name: str, model_dir: str, random_init: bool, task: TaskData, tcfg: TaskConfig,
             cfg: FinetuneConfig, seed: int, freeze_encoder: bool | None = None) -> dict:
    """All grid points of one seed (each resumable), then ``result.json`` with the dev-best choice.
    ``freeze_encoder``: a linear probe (:func:`train_grid_point`); None: ``cfg.freeze_encoder``."""
    if freeze_encoder is None:
        freeze_encoder = cfg.freeze_encoder
    fp = settings_fingerprint(tcfg, cfg, random_init, freeze_encoder)
    res_path = out_dir / "result.json"
    if res_path.is_file():
        done = RunResult.load(res_path)
        if done.fingerprint == fp:
            log.info("%s / %s / seed %d: done, skipped", model_name, task.name, seed)
            return done.to_dict()
        log.info("%s / %s / seed %d: settings changed, re-running", model_name, task.name, seed)
    grid = []
    kind_cls = get_kind(task.kind)
    perturbed, realised = perturbed_tests(task.test, tcfg.perturb) if tcfg.perturb else ({}, {})
    for lr in (tcfg.lrs or cfg.lrs):
        for ep in (tcfg.epochs or cfg.epochs):
            gp = out_dir / "grid" / f"lr-{lr:g}_ep-{ep}.json"
            if gp.is_file() and read_json(gp).get("fingerprint") == fp:
                grid.append(read_json(gp))
                continue
            r = train_grid_point(model_dir, random_init, task, tcfg, cfg, lr, ep, seed, conditions=perturbed,
                                 freeze_encoder=freeze_encoder)
            r["fingerprint"] = fp
            atomic_write_json(gp, r)
            log.info("%s / %s / seed %d / lr %g ep %d: dev %s %.2f, test %.2f (%.0f s)", model_name, task.name, seed,
                     lr, ep, kind_cls.main_metric, r["dev"], r["test"], r["seconds"])
            grid.append(r)
    chosen = max(grid, key=lambda r: r["dev"])
    result = {"model": model_name, "model_dir": model_dir, "random_init": random_init, "task": task.name,
              "kind": task.kind, "metric": kind_cls.main_metric, "seed": seed, "dev": chosen["dev"],
              "test": chosen["test"], "test_metrics": chosen["test_metrics"],
              "chosen": {"lr": chosen["lr"], "epochs": chosen["epochs"], "best_epoch": chosen["best_epoch"]},
              "grid": [{k: g[k] for k in ("lr", "epochs", "dev", "test", "best_epoch", "seconds")}
                       | ({"test_conditions": g["test_conditions"]} if perturbed else {}) for g in grid],
              "fingerprint": fp}
    if perturbed:
        result["conditions"] = condition_scores(chosen, realised)
    if freeze_encoder:
        result["freeze_encoder"] = True
    RunResult.from_dict(result).save(out_dir)  # result.json
    return result
