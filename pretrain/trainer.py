"""One training loop for every objective (it never looks at an objective's name).

Reading order: ``train()`` builds the pieces (accelerator, objective, loaders, optimizer, schedule,
checkpointer, metrics), resumes from ``checkpoints/latest`` when there is one, then runs the loop:

    for each optimizer step:
        for each micro-step (gradient accumulation):
            batch = loader.batch(epoch, index)        # index = step * accum + micro, per rank
            batch = objective.collate(batch, generator(seed, step, micro, rank))
            loss  = model(batch)["loss"]; backward
        clip, optimizer step, schedule step
        log / evaluate / checkpoint; stop cleanly on SIGTERM or Ctrl-C

The two batch lines run ``train.prefetch`` micro-batches ahead in a background thread
(``pretrain/prefetch.py``); the ranks agree on a stop every ``train.stop_sync_every`` steps and at
log / eval / checkpoint steps, not at every step.

The learning-rate schedule is a function of the optimizer step only (``lr_factor``), whatever the
number of processes and accumulation steps. Masking randomness comes only from the per-micro-step
generator, dropout from the saved global RNG state, data from the loader position, so a resumed run
reproduces an uninterrupted one exactly (on CPU).
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from pipeline.config import config_to_dict, save_config
from pipeline.errors import UserError
from pipeline.log import get_logger, print_table, progress
from pipeline.runs import atomic_write_json
from pretrain.checkpoint import (Checkpointer, InterruptToAbort, Interrupted, NonFiniteGuard, SignalHandlers,
                                 apply_schedule, check_schedule, clean_stale, schedule_params)
from pretrain.config import PretrainConfig, TrainConfig, resolve_batch
from pretrain.data import build_context, build_loader
from pretrain.parallel import configure_deepspeed, configure_fsdp, engine_grad_norm
from pretrain.flops import gpu_peak_flops, mfu
from pretrain.models import count_parameters
from pretrain.objectives.base import build_objective
from pretrain.prefetch import BatchStream, StopSync
from pretrain.seen import Seen, apply_char_budget, batch_counts

log = get_logger("pretrain")

# exit codes after a clean stop (checkpoint saved): the conventional 128 + signal number
EXIT_SIGINT, EXIT_SIGTERM = 130, 143


# ---- schedule ------------------------------------------------------------------------------------
def lr_factor(step: int, t: TrainConfig) -> float:
    """Multiplier of ``t.lr`` for optimizer step ``step`` (0-based): linear warmup to 1 over
    ``warmup_steps`` steps, then linear/cosine decay to ``min_lr_ratio`` at ``steps``."""
    if t.warmup_steps and step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    if t.schedule == "constant":
        return 1.0
    span = max(1, t.steps - t.warmup_steps)
    progress_ = min(1.0, (step - t.warmup_steps) / span)
    if t.schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress_))
    else:
        decay = 1.0 - progress_
    return t.min_lr_ratio + (1.0 - t.min_lr_ratio) * decay


def make_optimizer(module: torch.nn.Module, t: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms and other 1-d parameters; fused on CUDA by default."""
    decay, no_decay, seen = [], [], set()
    for p in module.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = t.fused_adamw == "on" or (t.fused_adamw == "auto" and device.type == "cuda")
    kw = {"fused": True} if fused else {"foreach": device.type == "cuda"}
    return torch.optim.AdamW(groups, lr=t.lr, betas=tuple(t.betas), eps=t.eps, **kw)


def generator_for(*parts: int) -> torch.Generator:
    """A CPU generator seeded from a tuple such as (seed, step, micro, rank)."""
    s = int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1, np.uint64)[0])
    g = torch.Generator()
    g.manual_seed(s & 0x7FFF_FFFF_FFFF_FFFF)
    return g


EVAL_STREAM = 1 << 30  # step component of the eval generators' seed: never a training step


def pin_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """Page-locked copies of a batch's tensors (CUDA runs: the copy to the GPU can then overlap)."""
    return {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    nb = device.type == "cuda"
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            out[k] = (v.pin_memory() if nb else v).to(device, non_blocking=nb)
        else:
            out[k] = v
    return out


# ---- metrics -----------------------------------------------------------------------------------
class Metrics:
    """``metrics.jsonl`` (one JSON object per log/eval event) + tensorboard, main process only."""

    def __init__(self, out: Path, enabled: bool, tensorboard: bool, resume_step: int | None):
        self.path = out / "metrics.jsonl"
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        if resume_step is not None and self.path.is_file():
            # drop records written after the checkpoint we resume from: they are recomputed
            keep = []
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line).get("step", 0) <= resume_step:
                        keep.append(line)
                except json.JSONDecodeError:
                    continue
            self.path.write_text("".join(l + "\n" for l in keep), encoding="utf-8")
        elif resume_step is None and self.path.is_file():
            self.path.unlink()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                # events at steps >= purge_step are dropped; the records of the resume step itself are
                # kept in metrics.jsonl and never rewritten, so keep them in tensorboard too
                self.tb = SummaryWriter(str(out / "tb"), purge_step=None if resume_step is None else resume_step + 1)
            except ImportError:  # tensorboard not installed: jsonl only
                log.warning("tensorboard is not installed; writing metrics.jsonl only")

    def write(self, record: dict[str, Any], prefix: str) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        if self.tb is not None:
            step = record["step"]
            for k, v in record.items():
                if k not in ("step", "split", "time") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# ---- signals -----------------------------------------------------------------------------------
class StopFlag(SignalHandlers):
    """Set by SIGTERM / SIGINT (Ctrl-C); the loop saves a checkpoint and exits at the next step."""

    def __init__(self):
        self.signum: int | None = None
        self._old = {}

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:  # second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self.signum = signum


# ---- the run -----------------------------------------------------------------------------------
@dataclass
class RunResult:
    exit_code: int = 0
    step: int = 0
    out_dir: Path | None = None
    final_eval: dict[str, float] = field(default_factory=dict)
    export_dir: Path | None = None


def make_accelerator(t: TrainConfig, grad_accum: int):
    from accelerate import Accelerator

    from pretrain.config import resolve_mixed_precision

    mp: str | None = resolve_mixed_precision(t.mixed_precision)  # auto: bf16 on a GPU (CPU: pretrain.config.CPU_AUTO_BF16)
    # without a GPU, say so: accelerate then sets up several CPU processes (gloo) under torchrun /
    # `accelerate launch --multi_gpu` instead of silently running each process alone
    cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    from accelerate.utils import DistributedDataParallelKwargs

    handlers = [DistributedDataParallelKwargs(find_unused_parameters=t.find_unused_parameters)]
    _allow_new_precision(mp)
    return Accelerator(mixed_precision=mp, gradient_accumulation_steps=grad_accum, cpu=cpu,
                       step_scheduler_with_optimizer=False, kwargs_handlers=handlers)


def _allow_new_precision(mp: str | None) -> None:
    """Let one process train runs of different precisions one after another (a study, a test suite,
    ``bench/gpu_check.py``): accelerate keeps one process-wide ``AcceleratorState`` and refuses an
    ``Accelerator`` whose ``mixed_precision`` differs from the first one's. In a single, non-launched
    process nothing else hangs on that state, so it is reset; a launched (distributed) process keeps
    its state (its precision comes from the launcher or the first run)."""
    from accelerate.state import AcceleratorState

    if mp is None or not AcceleratorState._shared_state or os.environ.get("WORLD_SIZE", "1") != "1":
        return
    if getattr(AcceleratorState(), "mixed_precision", mp) != mp:
        AcceleratorState._reset_state(reset_partial_state=False)


def end_processes(exit_code: int | None = None) -> None:
    """End a launched run's process group: each process waits for the others, then destroys it.

    Called by the entry points (``python -m pretrain``, scripts under ``accelerate launch`` /
    ``torchrun``) once ``train()`` has returned, never inside ``train()``: a launched process may call
    ``train()`` again (``bench/gpu_check.py --fsdp-child``). Without it each process drops its gloo /
    NCCL connections in the interpreter's exit, in any order, while the other may still be finishing
    its last collective; on a loaded machine a process then aborted at exit and the launcher reported a
    failed run (the intermittent failures of the two-process CPU tests). The barrier also keeps a
    process that stops (exit 143) from exiting while another is still returning from ``train()``: the
    launcher answers the first non-zero exit by sending SIGTERM to the others. Nothing to do in one process.

    ``exit_code``: also end the process, with that code, right after the group (entry points only).
    Even with the group destroyed, a loaded machine still saw a launched CPU process abort in the
    interpreter's finalisation now and then ("terminate called without an active exception": a gloo
    thread object destroyed while joinable), turning a finished run into a failed one. Everything the
    run writes is already on disk (atomic writes, checkpoints, metrics), so a launched process flushes
    its logs and streams and leaves with ``os._exit``, skipping that finalisation. One process (no
    group, or a group of one) returns normally.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    many = dist.get_world_size() > 1
    dist.barrier()
    dist.destroy_process_group()
    if exit_code is not None and many:
        import logging
        import sys

        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(exit_code)


def world_size_hint() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def train(cfg: PretrainConfig, *, loader_factory: Callable | None = None, stop_at_step: int | None = None,
          do_export: bool = True) -> RunResult:
    """Train (or resume) ``cfg``; export at the end. ``stop_at_step`` simulates a SIGTERM after that
    optimizer step (tests); ``loader_factory`` replaces ``PackedLoader`` (same signature)."""
    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    micro, accum = resolve_batch(t, world_size_hint())
    acc = make_accelerator(t, accum)
    world, rank = acc.num_processes, acc.process_index
    micro, accum = resolve_batch(t, world)
    if accum != acc.gradient_accumulation_steps:
        raise UserError(f"WORLD_SIZE={world_size_hint()} but accelerate reports {world} processes")
    is_main = acc.is_main_process
    out = Path(cfg.runs_root, cfg.run, "pretrain", cfg.out_name)
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        clean_stale(out)  # temporaries of an interrupted run (.tmp-step-*, .latest.*.tmp, .export.*.tmp)
        save_config(cfg, out / "config.yaml")

    # ---- pieces --------------------------------------------------------------------------------
    ctx = build_context(cfg)
    torch.manual_seed(t.seed)  # identical initial weights on every rank
    objective = build_objective(cfg.objective, cfg.objective_options, ctx)
    if t.compile:  # in place (state-dict keys unchanged); the objective's forward is what runs each step
        objective.compile()
    train_loader = build_loader(cfg, "train", micro, rank, world, loader_factory)
    valid_loader = build_loader(cfg, "valid", micro, rank, world, loader_factory)
    n_train = len(train_loader)
    if t.chars:  # a budget in characters seen: derive train.steps (pretrain/seen.py)
        apply_char_budget(t, train_loader, log if is_main else None)
    optimizer = make_optimizer(objective, t, acc.device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, t))
    ds = getattr(acc.state, "deepspeed_plugin", None)
    if ds is not None:  # no dataloader goes through prepare(): micro-batch and clipping go into its config
        configure_deepspeed(ds, micro, t.clip)
    if getattr(acc.state, "fsdp_plugin", None) is not None:  # wrap only the layer classes this model has
        configure_fsdp(acc.state.fsdp_plugin, objective)
    model, optimizer = acc.prepare(objective, optimizer)
    obj = acc.unwrap_model(model)
    scaler = getattr(acc, "scaler", None)
    ckpt = Checkpointer(out / "checkpoints", acc, t.keep_last)
    n_params = count_parameters(obj)
    tokens_per_step = t.batch_size * cfg.data.seq_len
    peak = gpu_peak_flops() if acc.device.type == "cuda" else None

    # ---- resume --------------------------------------------------------------------------------
    start_step, train_seconds = 0, 0.0
    seen = Seen(None, tokens_per_step)  # real tokens / characters seen (pretrain/seen.py)
    schedule_history: list[dict] = []  # schedules replaced by train.extend, with the step they ended at
    eval_pending = False  # an evaluation due at the checkpoint's step was skipped by a stop
    latest = ckpt.resume_point()  # verified against its manifest; falls back to the previous intact one
    if latest is not None:
        state = ckpt.load(latest, obj, optimizer, scheduler, scaler)
        start_step = int(state["step"])
        seen = Seen(state, tokens_per_step)
        train_seconds = float(state.get("train_seconds", 0.0))
        schedule_history = list(state.get("schedule_history", []))
        if check_schedule(state, t, latest):  # train.extend=true and another schedule
            apply_schedule(optimizer, scheduler, t, lr_factor)
            schedule_history.append({"until_step": start_step, **state["schedule"]})
        eval_pending = bool(state.get("eval_pending")) and bool(t.eval_every) and start_step < t.steps
        if state.get("world_size", world) != world or state.get("batch_size", t.batch_size) != t.batch_size:
            log.warning("resuming with a different number of processes or batch size than the checkpoint; "
                        "the data order and schedule continue by optimizer step")
        if is_main:
            log.info("resuming from %s (step %d of %d)", latest, start_step, t.steps)
    else:
        torch.manual_seed(t.seed + 1 + rank)  # dropout streams differ between ranks
    if start_step >= t.steps and do_export and (out / "export" / "model.safetensors").is_file():
        if is_main:
            log.info("%s is complete (%d steps); nothing to do", out, start_step)
        return RunResult(0, start_step, out, export_dir=out / "export")

    metrics = Metrics(out, is_main, t.tensorboard, start_step if latest is not None else None)
    if is_main:
        log.info("%s: %s parameters, %d process(es) x micro-batch %d x accumulation %d = %d windows x %d tokens "
                 "per step, %d steps", cfg.objective, f"{n_params:,}", world, micro, accum, t.batch_size,
                 cfg.data.seq_len, t.steps)

    def sum_seen() -> None:  # every process calls it at the same steps
        if world > 1:
            seen.sync(lambda v: acc.reduce(v.to(acc.device), reduction="sum").cpu())

    def state_dict(step: int, eval_pending: bool = False) -> dict:
        sum_seen()
        consumed = step * accum
        return {"step": step, "epoch": consumed // n_train, "index": consumed % n_train,
                "micro_batches_per_rank": consumed, **seen.state(), "train_seconds": train_seconds,
                "world_size": world, "batch_size": t.batch_size, "seq_len": cfg.data.seq_len,
                "objective": cfg.objective, "schedule": schedule_params(t), "schedule_history": schedule_history,
                "eval_pending": eval_pending}

    def evaluate(step: int) -> dict[str, float]:
        if valid_loader is None:
            return {}
        model.eval()
        sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), dtype=torch.float64))
        # eval_batches counts micro-batches over all processes, so the evaluated windows do not depend
        # on the number of processes (rank r reads global slots i * world + r)
        n_batches = min(max(1, t.eval_batches // world), len(valid_loader))
        with torch.no_grad():
            for i in range(n_batches):
                b = obj.eval_collate(valid_loader.batch(0, i), generator_for(t.seed, EVAL_STREAM, i, rank))
                with acc.autocast():
                    r = obj.evaluate(to_device(b, acc.device))
                for k, v in r.items():
                    sums[k] += v.detach().double().cpu()
        keys = sorted(sums)
        vec = torch.stack([sums[k] for k in keys] + [torch.tensor(float(n_batches), dtype=torch.float64)])
        if world > 1:
            vec = acc.reduce(vec.to(acc.device), reduction="sum").cpu()
        tot = dict(zip(keys, vec[:-1].tolist()))
        nb = max(1.0, float(vec[-1]))
        res = {}
        for k in keys:
            if k.endswith("_count"):
                continue
            c = tot.get(f"{k}_count")
            res[k] = tot[k] / c if c else (tot[k] / nb if c is None else float("nan"))
        if "loss" in res and "perplexity" not in res:
            res["perplexity"] = math.exp(min(res["loss"], 50.0))
        model.train()
        if is_main:
            metrics.write({"step": step, "split": "valid", **res, "time": time.time()}, "eval")
        return res

    # ---- loop ----------------------------------------------------------------------------------
    result = RunResult(0, start_step, out)
    step = start_step
    model.train()
    bar = progress(total=t.steps, desc=f"pretrain {cfg.out_name}", unit="step", initial=start_step) if is_main else None
    last_eval: dict[str, float] = {}
    win_sums: dict[str, torch.Tensor] = {}
    win_steps, win_data, win_start = 0, 0.0, time.perf_counter()
    grad_norm = torch.zeros(())
    guard = NonFiniteGuard(t.max_nonfinite_steps, acc.device)
    if start_step == 0 and t.eval_every:
        evaluate(0)  # the starting point of the validation curve
    elif eval_pending:  # the evaluation a stop skipped at this step (same model, same eval batches)
        last_eval = evaluate(start_step)

    def make_batch(s: int, k: int) -> tuple[dict[str, Any], tuple[int, int]]:  # a pure function of the position
        raw = train_loader.batch(*divmod(s * accum + k, n_train))
        b = obj.collate(raw, generator_for(t.seed, s, k, rank))
        return (pin_batch(b) if acc.device.type == "cuda" else b), batch_counts(raw)  # counts: pretrain/seen.py

    stop_sync = StopSync(t.stop_sync_every, world, lambda local: acc.reduce(
        torch.tensor(float(local), device=acc.device), reduction="sum").item() > 0)
    with BatchStream(make_batch, start_step, t.steps, accum, t.prefetch) as stream, StopFlag() as stop:
        while step < t.steps:
            for k in range(accum):
                td = time.perf_counter()
                b, counts = stream.get(step, k)
                seen.add_counts(counts)
                batch = to_device(b, acc.device)
                win_data += time.perf_counter() - td
                with acc.accumulate(model):
                    outs = model(batch)
                    guard.observe(outs["loss"])
                    acc.backward(outs["loss"])
                    if acc.sync_gradients:
                        if ds is not None:  # DeepSpeed clipped inside its engine (gradient_clipping)
                            gn = engine_grad_norm(acc)
                        else:
                            gn = acc.clip_grad_norm_(model.parameters(), t.clip if t.clip > 0 else float("inf"))
                        if gn is not None:
                            grad_norm = gn.detach() if isinstance(gn, torch.Tensor) else torch.tensor(float(gn))
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                for name, v in outs.items():
                    v = v.detach().float() / accum
                    win_sums[name] = win_sums[name] + v if name in win_sums else v
            lr_now = scheduler.get_last_lr()[0]
            scheduler.step()
            step += 1
            guard.end_step(step)
            win_steps += 1
            seen.end_step(defer=world > 1)  # several processes: summed only at log / checkpoint / final steps
            if bar is not None:
                bar.update(1)

            if step % t.log_every == 0 or step == t.steps:
                guard.check(acc, step, ckpt)  # stops after train.max_nonfinite_steps non-finite steps
                sum_seen()
                names = sorted(win_sums)
                vec = torch.stack([win_sums[n] for n in names]) / win_steps
                if world > 1:
                    vec = acc.reduce(vec, reduction="mean")
                vals = dict(zip(names, vec.tolist()))
                elapsed = time.perf_counter() - win_start
                train_seconds += elapsed
                tps = tokens_per_step * win_steps / max(elapsed, 1e-9)
                rec = {"step": step, "split": "train", **vals, "lr": lr_now, "grad_norm": float(grad_norm),
                       "tokens_per_s": tps, "data_wait": win_data / max(elapsed, 1e-9),
                       **seen.state(), "epoch": (step * accum) // n_train, "time": time.time()}
                m = mfu(obj.flops_per_token(), tps, world, peak)
                if m is not None:
                    rec["mfu"] = m
                if is_main:
                    metrics.write(rec, "train")
                    if bar is not None:
                        bar.set_postfix(loss=f"{vals.get('loss', float('nan')):.4f}", tok_s=f"{tps:,.0f}")
                    if bar is None or bar.disable:
                        log.info("step %d/%d loss %.4f lr %.2e %s tok/s data-wait %.1f%%", step, t.steps,
                                 vals.get("loss", float("nan")), lr_now, f"{tps:,.0f}", 100 * rec["data_wait"])
                win_sums, win_steps, win_data = {}, 0, 0.0
                win_start = time.perf_counter()

            if stop_at_step is not None and step == stop_at_step:
                stop.signum = signal.SIGTERM
            # the ranks agree on a stop only at sync points (an all-reduce + .item() syncs the device)
            stopping = stop_sync(step, stop.signum is not None, forced=step % t.log_every == 0 or step == t.steps
                                 or bool(t.eval_every and step % t.eval_every == 0)
                                 or bool(t.save_every and step % t.save_every == 0))
            paused = time.perf_counter()
            eval_due = bool(t.eval_every) and step % t.eval_every == 0 and step < t.steps
            if eval_due and not stopping:
                last_eval = evaluate(step)
                if is_main and last_eval:
                    log.info("step %d eval %s", step, _fmt_eval(last_eval))
            if stopping or (t.save_every and step % t.save_every == 0) or step == t.steps:
                if guard.check(acc, step, ckpt):  # never a checkpoint right after a non-finite loss
                    ckpt.save(step, obj, optimizer, scheduler, state_dict(step, eval_due and stopping), scaler)
                elif is_main:
                    log.warning("step %d: the loss is NaN/inf; no checkpoint written (%s)", step,
                                ckpt.describe_intact())
            win_start += time.perf_counter() - paused  # eval / checkpoint time is not step time
            if stopping:
                if bar is not None:
                    bar.close()
                metrics.close()
                if is_main:
                    log.info("stopped at step %d; checkpoint saved, run the same command to resume", step)
                result.step = step
                result.exit_code = EXIT_SIGINT if stop.signum == signal.SIGINT else EXIT_SIGTERM
                return result
    if bar is not None:
        bar.close()

    # ---- the end: final eval + export --------------------------------------------------------------
    # SIGTERM / Ctrl-C from here on abandon the export (its temporary folder is removed, the final
    # checkpoint is saved): exit 143 / 130, and the same command exports later
    try:
        with InterruptToAbort():
            final = evaluate(step)
            result.step, result.final_eval = step, final
            if is_main and final:
                log.info("final eval (step %d): %s", step, _fmt_eval(final))
            if not guard.check(acc, step, ckpt) or not math.isfinite(final.get("loss", 0.0)):
                raise UserError(f"step {step}: the training or validation loss is NaN/inf; not exporting a broken "
                                f"model ({ckpt.describe_intact()}; it may hold the same weights)")
            sum_seen()
            if do_export:
                _export(cfg, acc, model, obj, ctx, out, metrics, result, final,
                        {"steps": step, **seen.state(), "train_seconds": round(train_seconds, 2)},
                        n_params)
    except Interrupted as e:
        metrics.close()
        if is_main:
            log.warning("stopped during the final evaluation/export at step %d; no export written, the final "
                        "checkpoint is saved: run the same command to export", step)
        result.export_dir = None
        result.exit_code = EXIT_SIGINT if e.signum == signal.SIGINT else EXIT_SIGTERM
        return result
    except OSError as e:  # a full disk / permissions while exporting (the export's temp folder is gone)
        metrics.close()
        raise UserError(ckpt.export_failed(e, out / "export")) from None
    metrics.close()
    return result


def _export(cfg, acc, model, obj, ctx, out: Path, metrics: Metrics, result: RunResult, final: dict,
            progress_meta: dict, n_params: int) -> None:
    from accelerate.utils import DistributedType

    full_sd = None
    if acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        full_sd = acc.get_state_dict(model)
    if acc.is_main_process:
        from pretrain.export import save_export

        step, tokens_seen, chars_seen, train_seconds = (progress_meta[k] for k in
                                                        ("steps", "tokens_seen", "chars_seen", "train_seconds"))
        meta = {**progress_meta, "final_eval": final, "name": cfg.out_name, "seq_len": cfg.data.seq_len,
                "parameters": n_params, "config": config_to_dict(cfg)}
        result.export_dir = save_export(obj, out / "export", ctx, meta, state_dict=full_sd)
        atomic_write_json(out / "summary.json", {k: v for k, v in meta.items() if k != "config"})
        hist = [r for r in _read_jsonl(metrics.path) if r.get("split") == "valid"]
        keys = [k for k in ("loss", "accuracy", "perplexity") if k in final] or sorted(final)
        rows = [[r["step"]] + [r.get(k, float("nan")) for k in keys] for r in hist]
        print_table(f"pretrain {cfg.out_name}: {step} steps, {tokens_seen:,} tokens, {chars_seen:,} chars, "
                    f"{train_seconds:.0f} s -> {out / 'export'}", ["step"] + [f"valid {k}" for k in keys], rows)
    acc.wait_for_everyone()


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _fmt_eval(res: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.4f}" for k, v in res.items())
