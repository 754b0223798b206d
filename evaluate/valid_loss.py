"""``valid_loss``: the pre-training run's own clean validation loss and what it saw, from its export.

The trainer evaluates the objective's ``eval_collate`` batches of the valid split at the end of
training (clean inputs for ``meap``, plain next-token prediction: comparable with ``ntp``,
docs/meap.md) and records them in ``pretrain_meta.json`` (:class:`pretrain.exports.ExportMeta`):
``final_eval.loss`` and ``final_eval.perplexity``, plus the budget actually consumed
(``steps``, ``tokens_seen``, ``chars_seen``: real tokens and the characters they cover). This
evaluation reads those numbers (it computes nothing; the seed does not change them) so a study can
put them beside the other evaluations and aggregate them over pre-training seeds: equal
``chars_seen`` per row is how a comparison budgeted in characters shows it saw equal text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from evaluate.base import EvalContext, Evaluation, register
from pipeline.errors import UserError


@register
class ValidLoss(Evaluation):
    """Clean validation loss / perplexity and characters seen, as recorded by the pre-training run."""

    name = "valid_loss"
    metrics = ("loss", "perplexity", "chars_seen", "tokens_seen", "steps")

    @dataclass
    class Config:
        pass

    def run(self, model_dir: Path, seed: int, ctx: EvalContext) -> dict:
        from evaluate.frozen import resolve_export
        from pretrain.exports import ExportMeta

        meta = ExportMeta.load(resolve_export(model_dir), missing_ok=False)
        loss = meta.final_eval.get("loss")
        if not isinstance(loss, (int, float)):
            raise UserError(f"{meta.path}: final_eval has no loss (was the run's final evaluation skipped?)")
        ppl = meta.final_eval.get("perplexity")
        return {"loss": float(loss), "perplexity": float(ppl) if isinstance(ppl, (int, float)) else math.exp(loss),
                "chars_seen": meta.chars_seen, "tokens_seen": meta.tokens_seen, "steps": meta.steps,
                "objective": meta.objective}
