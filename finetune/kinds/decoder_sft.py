"""``decoder_sft``: supervised fine-tuning of a causal LM on (prompt ids, answer ids) examples.

The one task kind whose backbone is a decoder with its own LM head (``encoder`` in the loop's
``Finetuner`` is the causal LM; the kind adds no parameters). Its collate turns examples into the
rows of one SFT variant (:mod:`finetune.decoder_sft`): ``ntp``, ``meap_copy`` (a separate masked
copy) or ``meap_concat`` (``[X; X']``), truncated, checked by the mask-reach guard and padded.
Trained by the one loop (:func:`finetune.train.fit`) through :func:`finetune.decoder_sft.fit_sft`.

Example records: ``{"prompt": [int], "answer": [int]}`` (token ids; the prompt starts with the
bos id, ``eos`` is appended). ``features(examples, split)`` -> rows ``{"input_ids", "labels"}``
(the counts of :func:`finetune.decoder_sft.sft_rows` in ``self.row_stats[split]``). Metric:
``token_acc``, the share of labelled positions whose arg-max (``[MASK]`` excluded) is the label.
In training a Llama-type model's loss is computed with the LM head at the labelled positions only
(:func:`labelled_loss`: the same loss, a fraction of the head's cost).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from finetune.decoder_sft import IGNORE, SftConfig, SftRow, pad_rows, sft_rows
from finetune.kinds.base import TaskData, TaskKind, register_kind

# causal LMs whose logits are exactly ``lm_head(decoder(...).last_hidden_state)`` (no soft-capping,
# scaling or split head), so the labelled-positions loss equals the model's own
LABELLED_HEAD_TYPES = ("llama",)


def labelled_head_ok(model) -> bool:
    """Whether :func:`labelled_loss` equals the model's own loss: a ``transformers`` Llama class (a
    remote-code class that only reports ``model_type: llama`` may have its own forward or loss)."""
    from transformers import LlamaForCausalLM

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return (model_type in LABELLED_HEAD_TYPES and type(model) is LlamaForCausalLM
            and model.get_output_embeddings() is not None)


def labelled_loss(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The causal-LM loss of ``model(input_ids, attention_mask, labels=labels).loss`` (mean cross-entropy of
    the labels at ``i`` given the logits at ``i - 1``, ``IGNORE`` left out), with the LM head applied
    only at the positions that predict a label. SFT rows label their answers (about a tenth of the
    positions here) and the vocabulary-sized head is the largest matrix of a small decoder, so
    training is about 2.7-2.9x faster on the tiny decoder (``bench/bench_decoder_sft.py``); evaluation keeps the full logits (``predict``)."""
    hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    target = labels[:, 1:]
    keep = target != IGNORE
    logits = model.get_output_embeddings()(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits.float(), target[keep])


@dataclass
class SftTask(TaskData):
    """A decoder SFT task: ``TaskData`` plus the variant, its options and the special ids."""

    variant: str = "ntp"  # ntp | meap_copy | meap_concat
    sft: SftConfig = field(default_factory=SftConfig)
    eos_id: int = 3
    mask_id: int = -1  # -1: the tokenizer has none (ntp only)
    pad_id: int = 0
    seed: int = 0  # mask positions


@register_kind
class DecoderSft(TaskKind):
    name = "decoder_sft"
    main_metric = "token_acc"

    def __init__(self, task: SftTask, hidden_size: int, opts):
        super().__init__(task, hidden_size, opts)
        self.row_stats: dict[str, dict] = {}

    @classmethod
    def load_backbone(cls, model_dir: str, random_init: bool, cfg) -> torch.nn.Module:
        from pretrain.exports import load_export

        return load_export(model_dir, task="causal_lm", random_init=random_init, tokenizer=False,
                           trust_remote_code=cfg.trust_remote_code, model_type="decoder").model

    def features(self, examples: list[dict], split: str) -> list[dict]:
        t: SftTask = self.task  # type: ignore[assignment]
        stats: dict = {}
        rows = sft_rows([(e["prompt"], e["answer"]) for e in examples], t.variant, t.sft, eos_id=t.eos_id,
                        mask_id=t.mask_id, seed=t.seed, stats=stats)
        self.row_stats[split] = stats
        return [{"input_ids": r.input_ids, "labels": r.labels} for r in rows]

    def collate(self, features: list[dict]) -> dict:
        return pad_rows([SftRow(f["input_ids"], f["labels"]) for f in features], self.task.pad_id)

    def forward(self, encoder, batch: dict) -> dict[str, torch.Tensor]:
        dev = next(encoder.parameters()).device
        b = {k: batch[k].to(dev) for k in ("input_ids", "attention_mask", "labels")}
        if encoder.training and labelled_head_ok(encoder):
            return {"loss": labelled_loss(encoder, **b), "logits": None}
        out = encoder(**b)
        return {"loss": out.loss, "logits": getattr(out, "logits", None)}

    def predict(self, outputs: dict[str, torch.Tensor], batch: dict) -> list:
        """Per row ``(correct, labelled)``: labels at ``i`` are predicted by the logits at ``i - 1``."""
        logits = outputs["logits"][:, :-1].float()
        if self.task.mask_id >= 0:
            logits[..., self.task.mask_id] = float("-inf")
        labels = batch["labels"][:, 1:].to(logits.device)
        hit = (logits.argmax(-1) == labels) & (labels != IGNORE)
        return list(zip(hit.sum(1).tolist(), (labels != IGNORE).sum(1).tolist()))

    def score(self, predictions: list, features: list[dict]) -> dict[str, float]:
        ok, n = sum(p[0] for p in predictions), sum(p[1] for p in predictions)
        return {"token_acc": 100.0 * ok / max(n, 1)}
