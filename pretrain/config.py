"""The pre-training stage's config (``configs/pretrain/*.yaml``).

``python -m pretrain --config configs/pretrain/mlm-tiny.yaml run=demo train.steps=100``. Keys are
checked by :func:`pipeline.config.load_config`; ``objective_options`` is checked against the chosen
objective's ``Config`` dataclass when the objective is built.

Batch sizes: ``train.batch_size`` is the *global* batch in windows per optimizer step (all processes,
all accumulation micro-steps). ``micro_batch_size`` is what one process feeds the model at once;
``grad_accum`` is derived as ``batch_size / (micro_batch_size * processes)`` unless given, in which
case the three must agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from pretrain.models import ModelConfig


@dataclass
class DataConfig:
    kind: str = "char"  # primary shard / vocabulary kind (``input_ids``)
    extra_kinds: list[str] = field(default_factory=list)  # more aligned streams; the objective adds the ones it reads (Objective.streams)
    seq_len: int = 128  # window length including the leading [CLS]
    mixing: Optional[dict[str, float]] = None  # per-language / per-source weights, passed to the loader
    shuffle: bool = True
    max_open_shards: int = 64  # shards whose memory maps the loader keeps open at once (LRU)
    index_dir: Optional[str] = None  # loader's on-disk document index; default: next to the shards
    shards_root: Optional[str] = None  # default {runs_root}/{run}/shards
    vocab_root: Optional[str] = None  # default {runs_root}/{run}/vocab

    def validate(self) -> None:
        if self.seq_len < 8:
            raise ValueError(f"data.seq_len must be at least 8, got {self.seq_len}")
        if self.max_open_shards < 1:
            raise ValueError(f"data.max_open_shards must be at least 1, got {self.max_open_shards}")


@dataclass
class TrainConfig:
    batch_size: int = 32  # global windows per optimizer step
    micro_batch_size: Optional[int] = None  # per process per forward; default = batch_size / processes
    grad_accum: Optional[int] = None  # derived when null
    steps: int = 500  # optimizer steps
    # budget in characters seen: when set, train.steps is derived from it (pretrain/seen.py)
    chars: Optional[int] = None
    lr: float = 1e-3
    warmup_steps: int = 50
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    min_lr_ratio: float = 0.0  # decay ends at lr * min_lr_ratio
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    clip: float = 1.0  # max gradient norm; 0 disables clipping
    # auto: bf16 on a GPU that has it, and on a CPU with avx512_bf16/amx_bf16 (CPU_AUTO_BF16: parity gate passed).
    # (YAML reads a bare `no` as false; both mean "no".)
    mixed_precision: Union[Literal["auto", "no", "bf16", "fp16"], bool] = "auto"
    fused_adamw: Literal["auto", "on", "off"] = "auto"
    seed: int = 0
    eval_every: int = 100  # optimizer steps; 0 = only at the end
    eval_batches: int = 20  # micro-batches of the valid split, summed over all processes
    log_every: int = 10
    save_every: int = 200  # checkpoint interval in optimizer steps; 0 = only at the end / on stop
    keep_last: int = 2
    compile: bool = False  # torch.compile the objective (GPU runs)
    tensorboard: bool = True
    threads: Optional[int] = None  # torch intra-op threads on CPU (default: torch's choice)
    find_unused_parameters: bool = False  # DDP: set for objectives whose heads skip some steps
    prefetch: int = 2  # micro-batches built ahead in a background thread; 0 = built in the loop
    stop_sync_every: int = 10  # steps between the ranks' stop-flag all-reduces (also at log/eval/save steps)
    # ---- faults (docs/reliability.md) ----
    # resuming a checkpoint trained with other steps/lr/warmup_steps/schedule/min_lr_ratio is refused
    # unless extend=true: the run then continues under the new schedule and no longer matches a fresh run
    extend: bool = False
    # stop (no export) after this many consecutive optimizer steps with a NaN/inf loss; 0 = never stop
    # (no checkpoint is written right after such a step either way)
    max_nonfinite_steps: int = 3

    def validate(self) -> None:
        for k in ("batch_size", "steps"):
            if getattr(self, k) < 1:
                raise ValueError(f"train.{k} must be at least 1")
        if self.chars is not None and self.chars < 1:
            raise ValueError("train.chars must be at least 1 (or null: budget in steps)")
        if self.warmup_steps < 0 or self.warmup_steps > self.steps:
            raise ValueError(f"train.warmup_steps must be between 0 and train.steps ({self.steps})")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError("train.min_lr_ratio must be between 0 and 1")
        if self.log_every < 1:
            raise ValueError("train.log_every must be at least 1")
        if self.mixed_precision is False:
            self.mixed_precision = "no"
        elif self.mixed_precision is True:
            raise ValueError("train.mixed_precision must be auto, no, bf16 or fp16")
        if self.keep_last < 1:
            raise ValueError("train.keep_last must be at least 1")
        if self.prefetch < 0:
            raise ValueError("train.prefetch must be 0 (synchronous) or more")
        if self.stop_sync_every < 1:
            raise ValueError("train.stop_sync_every must be at least 1")
        if self.max_nonfinite_steps < 0:
            raise ValueError("train.max_nonfinite_steps must be 0 (never stop) or more")


@dataclass
class PretrainConfig:
    run: str = "demo"
    runs_root: str = "runs"
    name: Optional[str] = None  # output folder runs/RUN/pretrain/NAME; default = objective
    objective: str = "mlm"
    objective_options: dict[str, Any] = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        if self.data.seq_len > self.model.max_position_embeddings:
            raise ValueError(
                f"data.seq_len {self.data.seq_len} exceeds model.max_position_embeddings "
                f"{self.model.max_position_embeddings}"
            )

    @property
    def out_name(self) -> str:
        return self.name or self.objective


def cpu_bf16_features(cpuinfo: str | None = None) -> dict[str, bool]:
    """Which bf16 instructions this CPU has: ``{"avx512_bf16": ..., "amx_bf16": ...}``.

    Read from the ``flags`` line of ``/proc/cpuinfo`` (``cpuinfo`` text for tests); where that file
    does not exist, from torch's private ``torch.cpu._is_*_supported`` probes (False if absent).
    """
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            cpuinfo = None
    if cpuinfo is not None:
        flags: set[str] = set()
        for line in cpuinfo.splitlines():
            if line.startswith("flags"):
                flags.update(line.partition(":")[2].split())
        return {"avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags}
    import torch

    def probe(name: str) -> bool:
        fn = getattr(torch.cpu, name, None)
        try:
            return bool(fn()) if fn else False
        except Exception:  # a private probe that changed: treat as absent
            return False

    return {"avx512_bf16": probe("_is_avx512_bf16_supported"), "amx_bf16": probe("_is_amx_tile_supported")}


# Which CPU bf16 instruction sets let ``mixed_precision: auto`` pick bf16 for PRE-TRAINING. Issue 21
# gates this on a loss-parity run (valid loss within 1 % of fp32 over a whole study-length run).
# Measured here (AMD EPYC, avx512_bf16, no AMX; docs/regime.md "bf16 loss parity"): the 1,000-step
# regime run of configs/pretrain/mlm-tiny.yaml over 3 seeds per precision (train.seed 0, 1, 2, one
# thread): mean valid loss bf16 4.854 vs fp32 4.875 (-0.44 %, inside the seeds' spread of 0.10-0.15);
# bench/bench_bf16.py: 1.6x (tiny) / 2.2x (small) faster. The gate is passed, so ``auto`` picks bf16 on
# a CPU with either instruction set (AMX CPUs also have avx512_bf16). Fine-tuning has its own policy
# (:data:`FINETUNE_CPU_AUTO_BF16`).
CPU_AUTO_BF16: dict[str, bool] = {"amx_bf16": True, "avx512_bf16": True}
# The fine-tuning loop's CPU policy: off. The parity run (docs/regime.md "bf16 fine-tuning parity":
# the study regime's models, 3 seeds x 4 tasks) put bf16's test scores within the seed spread of fp32,
# but measured no speed-up for the tiny model's fine-tuning (median 1.02x), so fp32 stays the default;
# ``mixed_precision: bf16`` opts in explicitly.
FINETUNE_CPU_AUTO_BF16: dict[str, bool] = {"amx_bf16": False, "avx512_bf16": False}


def resolve_mixed_precision(mp: str, *, cuda: bool | None = None, cpu_features: dict[str, bool] | None = None,
                            env: dict[str, str] | None = None,
                            cpu_policy: dict[str, bool] | None = None) -> str | None:
    """``mixed_precision`` as accelerate takes it; ``auto`` is resolved here.

    ``auto``: ``None`` when ``accelerate launch`` set ``ACCELERATE_MIXED_PRECISION`` (its choice wins);
    ``bf16`` on a CUDA GPU with bf16; on a CPU ``bf16`` only when it has a bf16 instruction set
    (``cpu_bf16_features``) that ``cpu_policy`` (default :data:`CPU_AUTO_BF16`) enables, else
    ``no``. Explicit values pass through.
    """
    import os

    if mp != "auto":
        return mp
    env = os.environ if env is None else env
    if env.get("ACCELERATE_MIXED_PRECISION"):
        return None
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if cuda:
        return "bf16"
    policy = CPU_AUTO_BF16 if cpu_policy is None else cpu_policy
    if not any(policy.values()):
        return "no"
    feats = cpu_bf16_features() if cpu_features is None else cpu_features
    return "bf16" if any(feats.get(k) and on for k, on in policy.items()) else "no"


def resolve_batch(train: TrainConfig, world_size: int) -> tuple[int, int]:
    """(micro_batch_size, grad_accum) per process such that micro * accum * world == batch_size."""
    from pipeline.errors import UserError

    b = train.batch_size
    if b % world_size:
        raise UserError(f"train.batch_size {b} is not divisible by the number of processes {world_size}")
    per_proc = b // world_size
    micro, accum = train.micro_batch_size, train.grad_accum
    if micro is None and accum is None:
        micro, accum = per_proc, 1
    elif micro is None:
        if per_proc % accum:
            raise UserError(f"train.batch_size {b} / {world_size} processes is not divisible by train.grad_accum {accum}")
        micro = per_proc // accum
    elif accum is None:
        if per_proc % micro:
            raise UserError(
                f"train.batch_size {b} / {world_size} processes = {per_proc} is not divisible by "
                f"train.micro_batch_size {micro}"
            )
        accum = per_proc // micro
    elif micro * accum * world_size != b:
        raise UserError(
            f"train.micro_batch_size {micro} x train.grad_accum {accum} x {world_size} processes != "
            f"train.batch_size {b}"
        )
    if micro < 1 or accum < 1:
        raise UserError("train.micro_batch_size and train.grad_accum must be at least 1")
    return micro, accum
