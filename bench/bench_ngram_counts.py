"""Benchmark: peak memory of the n-gram lexicon's counts, in-RAM (old) vs streamed (the stage's path).

    .venv/bin/python bench/bench_ngram_counts.py [--tokens 1000000,10000000] [--part-tokens 1000000]

Synthetic token streams (Zipf-distributed ids over an 8,000-entry vocabulary, documents of 50-350
tokens, fixed seed) stand in for the char ids of a train split. For each size, in fresh processes:

* ``old``: ``tokenization.ngram.count_ngrams`` + ``score_ngrams`` over every document at once
  (what ``vocab`` did before: all training token ids concatenated in RAM);
* ``streamed``: one ``NgramCounter`` per part of ``--part-tokens`` tokens (one executor task per
  corpus shard in the stage), saved in 16 hash buckets, then ``reduce_counts``.

Both build the same top-5,000 lexicon (checked: same n-grams, counts and scores). Printed: the
peak RSS (``VmHWM``) of each process and the ratio streamed / old; and, for each path, the growth
of its peak from the smallest to the largest size (the in-RAM path grows with the token count; the
streamed one with the distinct n-grams only). Writes ``runs/bench/ngram_counts.json``. Never run
by the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import hashlib, json, sys, tempfile
from pathlib import Path
import numpy as np
sys.path.insert(0, sys.argv[1])
from tokenization.ngram import NgramCounter, count_ngrams, reduce_counts, score_ngrams
mode, total, part_tokens = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
V, MAX_N, TOP_K, MIN_COUNT = 8000, 3, 5000, 5
excluded = {0, 1, 2, 3, 4}

def part_docs(p, n_tokens):
    rng = np.random.default_rng(1000 + p)
    done = 0
    while done < n_tokens:
        n = int(min(rng.integers(50, 350), n_tokens - done))
        ids = np.minimum(rng.zipf(1.2, n), V) - 1
        done += n
        yield ids, np.ones(n, np.uint8)

n_parts = max(1, total // part_tokens)
if mode == "old":
    streams = (d for p in range(n_parts) for d in part_docs(p, part_tokens))
    grams, uni, m = count_ngrams(streams, MAX_N, excluded)
    best = score_ngrams(grams, uni, m, "tstat", MIN_COUNT, TOP_K)
else:
    tmp = Path(tempfile.mkdtemp())
    parts = []
    for p in range(n_parts):
        c = NgramCounter(MAX_N, excluded, V)
        for ids, ws in part_docs(p, part_tokens):
            c.add(ids, ws)
        parts.append(tmp / f"part-{p:05d}.npz")
        c.save(parts[-1], 16)
        del c
    best = reduce_counts(parts, "tstat", MIN_COUNT, TOP_K)
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
digest = hashlib.sha1(json.dumps([[list(g), c, s] for g, c, s in best]).encode()).hexdigest()
print(json.dumps({"peak_rss_mb": hwm / 1024, "lexicon_sha1": digest, "n": len(best)}))
"""


def _run(mode: str, tokens: int, part_tokens: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", _CHILD, str(ROOT), mode, str(tokens), str(part_tokens)],
                         check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", default="1000000,10000000")
    ap.add_argument("--part-tokens", type=int, default=1_000_000)
    ap.add_argument("--out", default="runs/bench/ngram_counts.json")
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.tokens.split(",")]
    rows = []
    for n in sizes:
        old = _run("old", n, args.part_tokens)
        new = _run("streamed", n, args.part_tokens)
        same = old["lexicon_sha1"] == new["lexicon_sha1"]
        rows.append({"tokens": n, "old_peak_rss_mb": round(old["peak_rss_mb"], 1),
                     "streamed_peak_rss_mb": round(new["peak_rss_mb"], 1),
                     "ratio": round(new["peak_rss_mb"] / old["peak_rss_mb"], 3), "same_lexicon": same})
        print(f"{n:>12,} tokens  old {old['peak_rss_mb']:8.1f} MB  streamed {new['peak_rss_mb']:8.1f} MB  "
              f"streamed/old {new['peak_rss_mb'] / old['peak_rss_mb']:.3f}  same lexicon: {same}")
    if len(rows) > 1:
        g_old = rows[-1]["old_peak_rss_mb"] / rows[0]["old_peak_rss_mb"]
        g_new = rows[-1]["streamed_peak_rss_mb"] / rows[0]["streamed_peak_rss_mb"]
        print(f"peak growth {sizes[0]:,} -> {sizes[-1]:,} tokens: old x{g_old:.2f}, streamed x{g_new:.2f}")
    last = rows[-1]
    mach = f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()}"
    rec = {"metric": "ngram_counts_peak_rss", "value": last["streamed_peak_rss_mb"], "unit": "MB",
           "baseline": last["old_peak_rss_mb"], "ratio": last["ratio"], "rows": rows, "machine": mach,
           "command": "python bench/bench_ngram_counts.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=out.parent, delete=False) as f:
        json.dump(rec, f, indent=2)
    os.replace(f.name, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
