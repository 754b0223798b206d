"""``python -m pretrain --config configs/pretrain/NAME.yaml [--dry-run] [key=value ...]``.

The same command runs on one process and under ``accelerate launch -m pretrain ...`` on many.
Re-running it resumes from ``runs/RUN/pretrain/NAME/checkpoints/latest``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipeline.cli import add_config_args  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.errors import main_guard  # noqa: E402
from pipeline.log import print_table  # noqa: E402


def memory_estimate(obj, micro: int, seq_len: int, bytes_per_value: int) -> dict[str, float]:
    """Bytes of one micro-batch's training state for objective ``obj`` (built, not trained).

    ``state``: fp32 weights + gradients + AdamW moments (16 bytes a parameter); ``activations`` /
    ``activations_fused``: :func:`pretrain.flops.activation_bytes` with and without the s×s attention
    matrices; ``logits``: fp32 logits over the primary vocabulary at the fraction of positions the
    objective declares (``Objective.predicted_fraction``)."""
    from pretrain.flops import activation_bytes, logits_bytes
    from pretrain.models import count_parameters

    layers, hidden, heads, _ = obj.ctx.model.dims()
    return {
        "state": 16.0 * count_parameters(obj),
        "activations": activation_bytes(micro, seq_len, hidden, layers, heads, bytes_per_value),
        "activations_fused": activation_bytes(micro, seq_len, hidden, layers, heads, bytes_per_value,
                                              attention_matrix=False),
        "logits": logits_bytes(micro, seq_len, obj.ctx.vocab.padded_size, obj.predicted_fraction()),
    }


def dry_run(cfg) -> int:
    import torch

    from pretrain.config import resolve_batch
    from pretrain.data import build_context, shards_root
    from pretrain.models import count_parameters
    from pretrain.objectives.base import build_objective
    from pretrain.trainer import world_size_hint

    t = cfg.train
    world = world_size_hint()
    micro, accum = resolve_batch(t, world)
    ctx = build_context(cfg)
    torch.manual_seed(t.seed)
    obj = build_objective(cfg.objective, cfg.objective_options, ctx)
    n = count_parameters(obj)
    n_export = count_parameters(obj.export())
    layers, hidden, heads, _ = cfg.model.dims()
    tps = t.batch_size * cfg.data.seq_len
    fpt = obj.flops_per_token()
    total_tokens = tps * t.steps
    gpu = torch.cuda.is_available()
    act_bytes = 2 if gpu and t.mixed_precision in ("auto", "bf16", "fp16") else 4
    mem = memory_estimate(obj, micro, cfg.data.seq_len, act_bytes)
    state, act, act_fused, logits = mem["state"], mem["activations"], mem["activations_fused"], mem["logits"]
    shards = shards_root(cfg) / cfg.data.kind
    rows = [
        ["objective", f"{cfg.objective} ({obj.model_type})"],
        ["output", f"{cfg.runs_root}/{cfg.run}/pretrain/{cfg.out_name}"],
        ["vocabulary", f"{ctx.vocab.kind}: {ctx.vocab.size:,} (padded {ctx.vocab.padded_size:,})"],
        ["parameters (trained / exported)", f"{n:,} / {n_export:,}"],
        ["model", f"{layers} layers, hidden {hidden}, {heads} heads"],
        ["processes x micro-batch x accumulation", f"{world} x {micro} x {accum} = {t.batch_size} windows"],
        ["tokens per step", f"{tps:,}"],
        ["steps", f"{t.steps:,}"],
        ["total tokens", f"{total_tokens:,}"],
        ["FLOPs per token (training)", f"{fpt:.3e}" if fpt else "unknown"],
        ["total FLOPs", f"{fpt * total_tokens:.3e}" if fpt else "unknown"],
        ["memory: weights+grads+AdamW", f"{state / 2**30:.2f} GiB"],
        ["predicted positions (logits)", f"{obj.predicted_fraction():.0%} of each window"],
        ["memory: activations per micro-batch (est.)",
         f"{(act + logits) / 2**30:.2f} GiB with s×s attention matrices (eager); "
         f"{(act_fused + logits) / 2**30:.2f} GiB with fused SDPA/flash"],
        ["shards", f"{shards} ({'present' if shards.is_dir() else 'missing: run make shards'})"],
    ]
    print_table(f"pretrain dry run: {cfg.out_name}", ["item", "value"], rows)
    return 0


@main_guard
def main(argv: list[str] | None = None) -> int:
    from pretrain.config import PretrainConfig

    parser = argparse.ArgumentParser(prog="python -m pretrain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--dry-run", action="store_true",
                        help="print parameter count, tokens per step, total tokens, FLOPs and a memory estimate; exit")
    args = parser.parse_args(argv)
    cfg = load_config(PretrainConfig, args.config, args.overrides)
    stem = os.path.basename(args.config).rsplit(".", 1)[0].rsplit("-", 1)[0]
    # NAME-sSEED is the Makefile's seeded pre-training (pretrain-seeds: one run per seed of a study)
    if stem != cfg.out_name and not re.fullmatch(re.escape(stem) + r"-s\d+", cfg.out_name):
        from pipeline.log import get_logger

        get_logger("pretrain").warning(
            "%s: outputs go to pretrain/%s but the Makefile expects pretrain/%s (set name: %s)",
            args.config, cfg.out_name, stem, stem)
    if args.dry_run:
        return dry_run(cfg)
    from pretrain.trainer import end_processes, train

    if os.environ.get("RANK", "0") != "0":  # under accelerate/torchrun, rank 0 holds the lock for all
        code = train(cfg).exit_code
    else:
        from pathlib import Path

        from pipeline.lock import stage_lock

        with stage_lock(Path(cfg.runs_root) / cfg.run, f"pretrain-{cfg.out_name}"):  # one training per folder
            code = train(cfg).exit_code
    end_processes(code)  # every process returned from train(): end the process group, then (launched) the process
    return code


if __name__ == "__main__":
    sys.exit(main())
