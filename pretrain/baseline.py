"""The unigram baseline of masked-LM accuracy, next to a run's valid masked accuracy.

A masked-LM that has learnt only token frequencies predicts the most frequent token at every masked
position; its expected masked accuracy is that token's share of the split's document tokens (the
positions the MLM objectives may mask: everything but ``[CLS]``/``[SEP]``/``[PAD]``, which the
packed loader adds around documents and never stores in the shards). Counted from the token shards
of the same split the trainer evaluates on, so the two numbers are comparable:

    python -m pretrain.baseline runs/RUN/pretrain/mlm      # reads its metrics.jsonl + config.yaml

prints the last valid masked accuracy and the unigram baseline (``make demo`` ends with this line).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from pipeline.errors import UserError, main_guard


def unigram_accuracy(split_dir: str | Path) -> tuple[float, int, int]:
    """``(share, token_id, n_tokens)``: the most frequent token id of a shard split (e.g.
    ``runs/RUN/shards/char/valid``) and its share of the split's tokens."""
    from tokenization.schema import ShardMeta
    from tokenization.shards import stream_path

    d = Path(split_dir)
    meta_p = d / "meta.json"
    if not meta_p.is_file():
        raise UserError(f"{meta_p}: token shards not found (run `python -m tokenization shards`)")
    meta = ShardMeta.load(meta_p).to_dict()
    counts = np.zeros(int(meta["vocab_size"]), dtype=np.int64)
    for s in meta["shards"]:
        p = stream_path(d, s["name"], "ids")
        ids = np.fromfile(p, dtype=meta["dtype"]) if p.is_file() else None
        if ids is None or ids.size != int(s["n_tokens"]):
            raise UserError(f"{p}: expected {s['n_tokens']} tokens as listed in {meta_p}, "
                            f"found {'no file' if ids is None else ids.size}")
        counts += np.bincount(ids.astype(np.int64), minlength=counts.size)[: counts.size]
    n = int(counts.sum())
    if n == 0:
        raise UserError(f"{d}: the split has no tokens")
    top = int(counts.argmax())
    return float(counts[top]) / n, top, n


def last_valid(metrics_path: str | Path) -> dict:
    """The last ``split == "valid"`` record of a run's ``metrics.jsonl``."""
    p = Path(metrics_path)
    if not p.is_file():
        raise UserError(f"{p}: not found (pre-train first)")
    last = None
    with open(p, encoding="utf-8") as f:
        for ln, line in enumerate(f, 1):
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{p}:{ln}: not JSON ({e.msg})") from None
            if r.get("split") == "valid" and "accuracy" in r:
                last = r
    if last is None:
        raise UserError(f"{p}: no valid record with an accuracy")
    return last


def summary(run_dir: str | Path) -> str:
    """One line: a pre-training run's last valid masked accuracy and the unigram baseline."""
    import yaml

    rd = Path(run_dir)
    cfg_p = rd / "config.yaml"
    if not cfg_p.is_file():
        raise UserError(f"{cfg_p}: not found (pre-train first)")
    cfg = yaml.safe_load(cfg_p.read_text(encoding="utf-8")) or {}
    data = cfg.get("data") or {}
    shards = Path(data.get("shards_root") or Path(cfg.get("runs_root", "runs")) / str(cfg.get("run")) / "shards")
    split_dir = shards / str(data.get("kind", "char")) / "valid"
    share, _, n = unigram_accuracy(split_dir)
    r = last_valid(rd / "metrics.jsonl")
    return (f"{rd.name}: valid masked accuracy {100 * r['accuracy']:.1f} % at step {r['step']} "
            f"(unigram baseline: most frequent token {100 * share:.1f} % of {n:,} valid tokens)")


@main_guard
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pretrain.baseline", description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="pre-training run folders (runs/RUN/pretrain/NAME)")
    a = ap.parse_args(argv)
    for rd in a.runs:
        print(summary(rd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
