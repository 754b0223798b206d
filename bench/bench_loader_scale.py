"""Benchmark: the pre-training loader's memory per rank with 500 and 5,000 shards.

    .venv/bin/python bench/bench_loader_scale.py [--shards 500,5000] [--docs-per-shard 20] [--batches 200]

Writes synthetic token shards with the shard stage's own writer (``ShardWriter`` +
``write_split_meta``; random ids, two languages, every shard the same size, so 5,000 shards hold
10x the tokens of 500) to a temporary folder. For each set, in fresh processes:

* ``build`` (rank 0): opens the loader, which builds the on-disk document index and epoch 0;
* ``rank``: rank 1 of 8, run under ``ulimit -n 1024`` (``resource.setrlimit``) with the default
  ``max_open_shards`` (64), reads ``--batches`` batches of 8 windows x 512 tokens from the
  memory-mapped index; its peak RSS (``VmHWM`` of ``/proc/self/status``) is the per-rank figure.

The rank's peak RSS for 5,000 shards over 500 is the ratio (goal: within 25 %, i.e. <= 1.25); the
growth over a process that only imported the loader is printed too. The old loader (every stream
of every shard mapped, the index in RAM) failed at about 400 shards under ``ulimit -n 1024``.
Writes ``runs/bench/loader_scale.json`` (``metric, value, unit, baseline, ratio, machine,
command``). Never run by the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

_CHILD = r"""
import json, resource, sys, time
mode, root, batches = sys.argv[1], sys.argv[2], int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_NOFILE, (1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
from tokenization.loader import PackedLoader
def rss():
    # VmHWM: peak RSS of this process image (ru_maxrss would carry the parent's peak across fork+exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
out = {"import_mb": rss()}
t0 = time.perf_counter()
if mode == "import":
    pass
elif mode == "build":
    ld = PackedLoader(root, "char", "train", 512, 8, seed=0, rank=0, world_size=8)
    ld.epoch_draws(0)
    out.update(built=ld.index_store.built, windows=ld.windows_per_epoch, batches=len(ld))
else:
    ld = PackedLoader(root, "char", "train", 512, 8, seed=0, rank=1, world_size=8)
    step = max(1, len(ld) // batches)
    n_tok = 0
    for i in range(0, min(len(ld), batches * step), step):
        n_tok += int(ld.batch(0, i)["attention_mask"].sum())
    out.update(built=ld.index_store.built, tokens_read=n_tok, open_shards=len(ld.open_shards),
               opened=ld.open_shards.opened)
out.update(seconds=time.perf_counter() - t0, peak_mb=rss())
print(json.dumps(out))
"""


def write_split(shards_root: Path, n_shards: int, docs_per_shard: int, seed: int = 0) -> int:
    """Synthetic shards with the stage's writer; returns the token count."""
    from tokenization.shards import KindSpec, ShardWriter, shard_name, write_split_meta
    from tokenization.shards_config import MixingConfig

    split_dir = shards_root / "char" / "train"
    split_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    results, total = [], 0
    for i in range(n_shards):
        counts = rng.integers(50, 350, size=docs_per_shard)
        n = int(counts.sum())
        docs = [{"id": f"{i}-{j}", "text": "字" * int(c), "lang": ("zh", "en")[j % 2], "source": "bench"}
                for j, c in enumerate(counts)]
        w = ShardWriter(split_dir, shard_name(i), np.dtype(np.uint16), units=False)
        w.append(docs, rng.integers(5, 20000, n), np.ones(n, np.uint8), (rng.random(n) < 0.6).astype(np.uint8), counts)
        w.commit()
        groups = {}
        for d, c in zip(docs, counts):
            g = groups.setdefault((d["lang"], d["source"]), [0, 0, 0])
            g[0], g[1], g[2] = g[0] + 1, g[1] + int(c), g[2] + int(c)
        results.append({"index": i, "stats": {"char": {
            "n_docs": len(docs), "n_tokens": n, "n_chars": n, "n_empty_docs": 0, "n_unk": 0,
            "groups": [(k[0], k[1], *v) for k, v in groups.items()]}}})
        total += n
    spec = KindSpec(kind="char", vocab_dir=str(shards_root / "vocab"), out_dir=str(split_dir), id_dtype="uint16", units=False)
    vocab_meta = {"kind": "char", "size": 21128, "special_tokens": {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}}
    write_split_meta(split_dir, "char", "train", spec, vocab_meta, {"vocab_hash": "bench"}, results, None, MixingConfig())
    return total


def child(mode: str, root: Path, batches: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-c", _CHILD, mode, str(root), str(batches)], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"bench_loader_scale: {mode} on {root} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", default="500,5000", help="shard counts to compare (first = baseline)")
    ap.add_argument("--docs-per-shard", type=int, default=20)
    ap.add_argument("--batches", type=int, default=200, help="batches the measured rank reads")
    ap.add_argument("--out", default="runs/bench/loader_scale.json")
    args = ap.parse_args(argv)
    from pipeline.log import print_table
    from bench.record import describe, write_record

    counts = [int(x) for x in args.shards.split(",")]
    mach = describe()
    rows, res = [], []
    with tempfile.TemporaryDirectory(prefix="bench_loader_scale.") as tmp:
        imp = child("import", Path(tmp), 0)
        for n in counts:
            root = Path(tmp) / f"s{n}"
            t0 = time.perf_counter()
            tokens = write_split(root, n, args.docs_per_shard)
            t_write = time.perf_counter() - t0
            b = child("build", root, 0)
            r = child("rank", root, args.batches)
            res.append({"shards": n, "tokens": tokens, "windows": b["windows"], "write_s": t_write,
                        "build_s": b["seconds"], "build_peak_mb": b["peak_mb"], "rank_peak_mb": r["peak_mb"],
                        "rank_over_import_mb": r["peak_mb"] - imp["peak_mb"], "rank_s": r["seconds"],
                        "rank_rebuilt": r["built"], "opened": r["opened"], "open_at_end": r["open_shards"]})
    base = res[0]
    for x in res:
        rows.append([x["shards"], f"{x['tokens']:,}", f"{x['windows']:,}", round(x["build_s"], 2), round(x["build_peak_mb"], 1),
                     round(x["rank_peak_mb"], 1), round(x["rank_over_import_mb"], 1), x["opened"],
                     round(x["rank_peak_mb"] / base["rank_peak_mb"], 3)])
    print_table(f"Loader per-rank memory (rank 1 of 8, ulimit -n 1024, {args.batches} batches of 8 x 512; "
                f"import-only process {imp['peak_mb']:.1f} MB; {mach})",
                ["shards", "tokens", "windows", "index build s", "build peak MB", "rank peak MB",
                 "rank - import MB", "shards opened", "x first"], rows)
    last = res[-1]
    ratio = last["rank_peak_mb"] / base["rank_peak_mb"]
    print(f"goal: per-rank RSS with {last['shards']:,} shards within 25 % of {base['shards']:,} shards; "
          f"ratio {ratio:.3f} ({'met' if ratio <= 1.25 else 'NOT met'}); growth over the import-only process "
          f"{base['rank_over_import_mb']:.1f} -> {last['rank_over_import_mb']:.1f} MB for "
          f"{last['tokens'] / base['tokens']:.0f}x the tokens")
    out = {"metric": f"loader peak RSS per rank, {last['shards']} shards over {base['shards']}",
           "value": last["rank_peak_mb"], "unit": "MB (peak RSS, VmHWM)", "baseline": base["rank_peak_mb"], "ratio": ratio,
           "rows": res}
    write_record("loader_scale", out, out=args.out, argv=argv)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
