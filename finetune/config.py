"""The fine-tuning suite's config (``configs/finetune/*.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from finetune.tasks import TaskConfig


@dataclass
class FinetuneConfig:
    run: str = "demo"
    runs_root: str = "runs"
    tasks: list[TaskConfig] = field(default_factory=lambda: [TaskConfig(name="sentiment"), TaskConfig(name="msra_ner")])
    # grid per model x task (a task may override lrs/epochs/batch_size); best dev point per seed
    lrs: list[float] = field(default_factory=lambda: [1e-4])
    epochs: list[int] = field(default_factory=lambda: [3])
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    batch_size: int = 32
    eval_batch_size: int = 64
    warmup: float = 0.1             # fraction of optimizer steps with linear warm-up, then linear decay
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    dropout: float = 0.1
    evals_per_epoch: int = 1        # dev evaluations per epoch (the best one is kept)
    # which grid point a model is scored at: per_seed = each seed's own dev-best point; per_model = the
    # point with the best mean dev over the seeds (finetune.stats.select_per_model). Test never selects.
    grid_selection: Literal["per_seed", "per_model"] = "per_seed"
    random_init_twins: bool = True  # also fine-tune a randomly initialised twin of every model (the floor)
    # linear probe (finetune.train.freeze): train only the task head on the frozen encoder's states, in the
    # same loop. freeze_encoder: every model is probed instead of fine-tuned; probe_rows: a probe of every
    # model (and twin) next to its fine-tuning. Probe rows are named NAME-probe (twin NAME-probe-random).
    freeze_encoder: bool = False
    probe_rows: bool = False
    baseline: Optional[str] = None  # model name the report's deltas are taken against (default: the first)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: Optional[int] = None   # torch CPU threads (None: torch's default)
    # bf16 autocast: auto = on a GPU with bf16; on a CPU per pretrain.config.FINETUNE_CPU_AUTO_BF16 (fp32: parity shown, no speed-up at tiny size; docs/regime.md)
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"
    alignment: Literal["auto", "offsets", "words"] = "auto"  # token -> character map (finetune.charmap)
    # two-view encoders (amber): AMBERT's classification fine-tuning -- a classifier per view plus one
    # on the concatenation, summed cross-entropies + agreement_weight * ||p_fine - p_coarse||_2
    view_heads: bool = True
    agreement_weight: float = 1.0   # AMBERT's lambda; its value is not in the paper text we read
    # the state sentence-level heads (classification, pairs, multiple choice) read: cls = [CLS] (a
    # decoder's last token), mean = the mean of the character states (finetune.kinds.base.sentence_state)
    pooling: Literal["cls", "mean"] = "cls"
    # run code shipped in the model folders (a .py file or an auto_map other than the project's own
    # classes); without it such folders are refused. --trust-remote-code sets it (docs/reliability.md)
    trust_remote_code: bool = False

    def encoder_options(self) -> dict:
        """Keyword options of ``finetune.encoders.load_encoder`` this config asks for."""
        options: dict = {"trust_remote_code": self.trust_remote_code}
        if self.alignment != "auto":
            options["alignment"] = self.alignment
        return options

    def validate(self) -> None:
        if not self.tasks:
            raise ValueError("'tasks' is empty")
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError("a task is listed twice in 'tasks'")
        if not self.lrs or not self.epochs or not self.seeds:
            raise ValueError("lrs, epochs and seeds must not be empty")
        if any(lr <= 0 for lr in self.lrs) or any(e < 1 for e in self.epochs):
            raise ValueError("learning rates must be > 0 and epochs >= 1")
        if self.batch_size < 1 or self.eval_batch_size < 1 or self.evals_per_epoch < 1:
            raise ValueError("batch sizes and evals_per_epoch must be >= 1")
        if self.agreement_weight < 0:
            raise ValueError("agreement_weight must be >= 0")
        if self.freeze_encoder and self.probe_rows:
            raise ValueError("freeze_encoder already probes every model; probe_rows adds probes to fine-tuned rows: set one")
        if not 0 <= self.warmup < 1:
            raise ValueError("warmup must be in [0, 1)")
