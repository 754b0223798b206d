"""Character- and entity-level metrics, identical for every tokenizer (all values in %).

* ``accuracy``;
* ``entity_prf``: exact span + type match, micro P/R/F1 with ``seqeval`` in strict mode (BIO ->
  IOB2, BMES -> IOBES). Word segmentation and joint segmentation+POS are scored the same way, a
  word being an "entity" (type ``W``, or its POS tag), so CWS F1 is the usual word-level F1;
* ``span_em_f1``: the CMRC 2018 evaluation (exact match and character-level F1 against the best
  of the gold answers, after dropping punctuation and whitespace).
"""

from __future__ import annotations

import string
from typing import Sequence

from seqeval.metrics import f1_score, precision_score, recall_score
from seqeval.scheme import IOB2, IOBES


def accuracy(pred: Sequence, gold: Sequence) -> float:
    if not gold:
        return 0.0
    return 100.0 * sum(int(p == g) for p, g in zip(pred, gold)) / len(gold)


def tag_scheme(tags: Sequence[str]) -> str:
    """'BMES' if any tag uses M-/E-/S- prefixes, else 'BIO'."""
    for t in tags:
        if t[:2] in ("M-", "E-", "S-") or t in ("M", "E", "S"):
            return "BMES"
    return "BIO"


def to_seqeval(tags: Sequence[str], scheme: str) -> list[str]:
    """Normalise tags for seqeval: BMES -> IOBES (M->I); bare B/M/E/S (segmentation) get type W."""
    out = []
    for t in tags:
        if t == "O" or not t:
            out.append("O")
            continue
        pre, _, typ = t.partition("-")
        typ = typ or "W"
        if scheme == "BMES" and pre == "M":
            pre = "I"
        out.append(f"{pre}-{typ}")
    return out


def entity_prf(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], scheme: str | None = None) -> dict[str, float]:
    """Micro P/R/F1 (%) over exact (start, end, type) spans; ill-formed predicted spans do not count."""
    if scheme is None:
        scheme = tag_scheme([t for s in gold for t in s])
    g = [to_seqeval(s, scheme) for s in gold]
    p = [to_seqeval(s, scheme) for s in pred]
    for i, (a, b) in enumerate(zip(g, p)):
        if len(a) != len(b):
            raise ValueError(f"sequence {i}: {len(a)} gold tags but {len(b)} predicted")
    sch = IOBES if scheme == "BMES" else IOB2
    kw = dict(mode="strict", scheme=sch, zero_division=0)
    return {"precision": 100.0 * precision_score(g, p, **kw), "recall": 100.0 * recall_score(g, p, **kw),
            "f1": 100.0 * f1_score(g, p, **kw)}


_PUNCT = set(string.punctuation) | set("，。、；：？！“”‘’（）《》〈〉【】『』「」﹃﹄〔〕…—～﹏￥·．・－")


def _norm_answer(s: str) -> str:
    return "".join(ch for ch in s.lower() if ch not in _PUNCT and not ch.isspace())


def _lcs_len(a: str, b: str) -> int:
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    best = 0
    for ca in a:
        cur = [0] * (len(b) + 1)
        for j, cb in enumerate(b, 1):
            if ca == cb:
                cur[j] = prev[j - 1] + 1
                best = max(best, cur[j])
        prev = cur
    return best


def span_em_f1(pred: str, answers: Sequence[str]) -> tuple[float, float]:
    """CMRC 2018 EM and F1 (0..1) of one prediction against its gold answers (best match)."""
    p = _norm_answer(pred)
    em, f1 = 0.0, 0.0
    for a in answers:
        g = _norm_answer(a)
        em = max(em, float(p == g))
        lcs = _lcs_len(p, g)
        if lcs:
            prec, rec = lcs / len(p), lcs / len(g)
            f1 = max(f1, 2 * prec * rec / (prec + rec))
    return em, f1


def span_scores(preds: Sequence[str], answers: Sequence[Sequence[str]]) -> dict[str, float]:
    if not answers:
        return {"em": 0.0, "f1": 0.0}
    ems, f1s = zip(*(span_em_f1(p, a) for p, a in zip(preds, answers)))
    return {"em": 100.0 * sum(ems) / len(ems), "f1": 100.0 * sum(f1s) / len(f1s)}
