"""``mlm``: BERT masked language modelling with whole-word masking from the shards' ``word_start``.

Masking (``whole_word_mask``), vectorised torch over the whole batch, no Python loop per token:

* A *word* starts at every token with ``word_start`` set, at every special token and right after
  one (so a word never spans a ``[SEP]``). Special tokens are never selected.
* ``mask_prob`` (15 %) of the eligible words of each window are selected: exactly
  ``round(mask_prob * n_words)`` per window (at least one), chosen uniformly at random. With
  ``max_ngram > 1`` whole-word n-gram spans are selected instead (n in 1..max_ngram with
  p(n) ∝ 1/n, as ``favor_shorter_ngram`` in the SGT author's code); the number of spans is
  ``round(mask_prob * n_words / E[n])`` so the masked-word rate stays about ``mask_prob``
  (overlapping spans make it slightly lower). A span may continue past a ``[SEP]`` into the next
  document (the ``[SEP]`` itself is never masked). Choice of ours, the paper does not say.
* 80/10/10 is decided **per word**: every token of a selected word becomes ``[MASK]`` (80 %), or a
  random non-special token (10 %), or stays (10 %). This is our choice: the Chinese-BERT-wwm
  release (Google's ``create_pretraining_data.py`` with whole-word masking) and HF's
  ``DataCollatorForWholeWordMask`` choose the words whole but decide 80/10/10 per token.
* Only the selected positions are predicted, and the vocabulary projection runs only there: the
  collate returns flat positions, ``forward`` gathers those hidden states and calls
  ``model.cls(...)`` on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pretrain.flops import encoder_mlm_flops_per_token
from pretrain.models import build_encoder, encoder_body, encoder_layer_parameters, mlm_head
from pretrain.objectives.base import Objective, ObjectiveContext, register


def word_boundaries(word_start: torch.Tensor, special: torch.Tensor) -> torch.Tensor:
    """Word starts: ``word_start`` | specials | the token after a special | position 0."""
    start = word_start | special
    start[:, 1:] |= special[:, :-1]
    start[:, 0] = True
    return start


def whole_word_mask(input_ids: torch.Tensor, word_start: torch.Tensor, special: torch.Tensor,
                    generator: torch.Generator, *, mask_id: int, random_ids: torch.Tensor,
                    mask_prob: float = 0.15, p_mask: float = 0.8, p_random: float = 0.1,
                    max_ngram: int = 1, whole_word: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(masked_input_ids, labels)``; labels are -100 except at selected positions.

    ``input_ids`` int64 [B, T]; ``word_start``/``special`` bool [B, T]; ``random_ids`` int64 [R] (the
    ids a 10 %-random replacement draws from). All randomness comes from ``generator``.
    """
    B, T = input_ids.shape
    special = special.bool()
    if whole_word:
        start = word_boundaries(word_start.bool().clone(), special)
    else:
        start = torch.ones_like(special)
    word_id = start.long().cumsum(1) - 1  # [B, T] index of each token's word (0..T-1)

    # word-level eligibility: a word is eligible when its first token is not special
    dump = torch.full_like(word_id, T)
    col = torch.where(start, word_id, dump)
    elig = torch.zeros(B, T + 1, dtype=torch.bool)
    elig.scatter_(1, col, start & ~special)
    elig = elig[:, :T]
    n_words = elig.sum(1)

    if max_ngram > 1:
        ns = torch.arange(1, max_ngram + 1, dtype=torch.float64)
        pn = (1.0 / ns) / (1.0 / ns).sum()
        mean_n = float((ns * pn).sum())
        k = torch.round(n_words.double() * mask_prob / mean_n).long()
    else:
        k = torch.round(n_words.double() * mask_prob).long()
    k = torch.where(n_words > 0, k.clamp(min=1), k)

    scores = torch.rand(B, T, generator=generator)
    scores = torch.where(elig, scores, torch.full_like(scores, 2.0))
    rank = scores.argsort(1).argsort(1)
    chosen = (rank < k[:, None]) & elig  # [B, W] chosen words (or span starts)

    if max_ngram > 1:
        lengths = torch.multinomial(pn.float(), B * T, replacement=True, generator=generator).view(B, T) + 1
        w = torch.arange(T).expand(B, T)
        delta = torch.zeros(B, T + 1, dtype=torch.long)
        delta.scatter_add_(1, w, chosen.long())
        delta.scatter_add_(1, (w + lengths).clamp(max=T), -chosen.long())
        chosen = (delta.cumsum(1)[:, :T] > 0) & elig

    r = torch.rand(B, T, generator=generator)  # one draw per word: 80/10/10
    to_mask_w = r < p_mask
    to_rand_w = (r >= p_mask) & (r < p_mask + p_random)

    selected = chosen.gather(1, word_id) & ~special
    to_mask = selected & to_mask_w.gather(1, word_id)
    to_rand = selected & to_rand_w.gather(1, word_id)
    rand_tok = random_ids[torch.randint(len(random_ids), (B, T), generator=generator)]

    labels = torch.where(selected, input_ids, torch.full_like(input_ids, -100))
    out = torch.where(to_mask, torch.full_like(input_ids, mask_id), input_ids)
    out = torch.where(to_rand, rand_tok, out)
    return out, labels


@register
class MaskedLM(Objective):
    name = "mlm"
    card_note = ("BERT masked language modelling with whole-word masking over jieba (HMM off) word "
                 "boundaries, 80/10/10 replacement decided per word.")
    model_type = "encoder"

    @dataclass
    class Config:
        mask_prob: float = 0.15  # fraction of (eligible) words selected per window
        p_mask: float = 0.8  # of the selected words: replaced by [MASK]
        p_random: float = 0.1  # ... by random tokens (the rest stays unchanged)
        whole_word: bool = True  # False: plain token-level masking
        max_ngram: int = 1  # > 1: whole-word n-gram span masking, p(n) ∝ 1/n

        def validate(self) -> None:
            if not 0.0 < self.mask_prob < 1.0:
                raise ValueError("mask_prob must be between 0 and 1")
            if self.p_mask < 0 or self.p_random < 0 or self.p_mask + self.p_random > 1.0:
                raise ValueError("p_mask and p_random must be >= 0 and sum to at most 1")
            if self.max_ngram < 1:
                raise ValueError("max_ngram must be at least 1")

    def __init__(self, cfg: Config, ctx: ObjectiveContext):
        super().__init__(cfg, ctx)
        v = ctx.vocab
        self.model = build_encoder(ctx.model, v.padded_size, pad_id=v.pad_id)
        special = set(v.special_ids) | {v.pad_id, v.unk_id, v.cls_id, v.sep_id, v.mask_id}
        ids = torch.arange(v.size)
        keep = torch.ones(v.size, dtype=torch.bool)
        keep[[i for i in special if i < v.size]] = False
        self._random_ids = ids[keep]
        self._pred_frac = cfg.mask_prob  # running fraction of positions sent through the LM head

    def predicted_fraction(self) -> float:
        """The masking rate: the LM head runs only at the selected positions (sparse head)."""
        return self.cfg.mask_prob

    # ---- data ----------------------------------------------------------------------------------
    def collate(self, batch: dict[str, np.ndarray], generator: torch.Generator) -> dict[str, torch.Tensor]:
        ids = torch.from_numpy(np.ascontiguousarray(batch["input_ids"])).long()
        special = torch.from_numpy(np.ascontiguousarray(batch["special_mask"])).bool()
        word_start = torch.from_numpy(np.ascontiguousarray(batch["word_start"])).bool()
        c = self.cfg
        masked, labels = whole_word_mask(
            ids, word_start, special, generator, mask_id=self.ctx.vocab.mask_id, random_ids=self._random_ids,
            mask_prob=c.mask_prob, p_mask=c.p_mask, p_random=c.p_random, max_ngram=c.max_ngram,
            whole_word=c.whole_word,
        )
        flat = labels.view(-1)
        pos = (flat != -100).nonzero().squeeze(1)
        self._pred_frac = 0.9 * self._pred_frac + 0.1 * (pos.numel() / max(1, flat.numel()))
        out = {"input_ids": masked, "mlm_positions": pos, "mlm_labels": flat[pos]}
        am = batch.get("attention_mask")
        if am is not None and not np.all(am):  # all-ones masks are left out (SDPA fast path)
            out["attention_mask"] = torch.from_numpy(np.ascontiguousarray(am)).long()
        return out

    # ---- model ---------------------------------------------------------------------------------
    def _logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        h = encoder_body(self.model)(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"))[0]
        h = h.reshape(-1, h.shape[-1]).index_select(0, batch["mlm_positions"])
        return mlm_head(self.model, h)  # [M, V] only at the masked positions

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self._logits(batch)
        if logits.shape[0] == 0:  # nothing masked (an all-special batch): a zero loss that keeps the graph
            loss = logits.sum() * 0.0
        else:
            loss = F.cross_entropy(logits.float(), batch["mlm_labels"])
        return {"loss": loss, "mlm": loss.detach()}

    @torch.no_grad()
    def evaluate(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self._logits(batch).float()
        labels = batch["mlm_labels"]
        n = torch.tensor(float(labels.numel()), device=logits.device)
        loss = F.cross_entropy(logits, labels, reduction="sum") if labels.numel() else n * 0
        acc = (logits.argmax(-1) == labels).sum().float()
        return {"loss": loss, "loss_count": n, "accuracy": acc, "accuracy_count": n}

    def export(self):
        return self.model

    def flops_per_token(self) -> float:
        layers, hidden, _, _ = self.ctx.model.dims()
        n_body = encoder_layer_parameters(self.model)
        return encoder_mlm_flops_per_token(n_body, layers, hidden, self.ctx.seq_len, self.ctx.vocab.padded_size,
                                           self._pred_frac)
