"""Fine-tuning suite: scores exported checkpoints (and random-init twins) on downstream tasks over
several seeds and writes one report. ``python -m finetune --help``; see ``docs/finetune.md``."""
