"""Benchmark of the corpus stage (run by `make bench`, never by the tests).

1. The whole step list on the built-in demo corpus (configs/corpus/default.yaml): MB/s (input
   UTF-8) and documents/s with 1 and 2 workers, and their ratio (baseline: 1 worker); also MB per
   CPU-second with 1 worker (less sensitive to other jobs on the machine; the load average is in
   the "machine" field).
2. Peak RSS of a build of the built-in corpus and of the same corpus repeated ten times (each run
   in its own wrapper process, measured with getrusage(RUSAGE_CHILDREN)); the ratio should stay
   near 1: memory does not grow with the corpus apart from the dedup index.
3. Dedup index size: bytes per document of the exact + MinHash LSH index (``corpora.dedup``),
   measured by inserting N distinct signatures and extrapolated to one million documents.

Prints a table and writes runs/bench/corpus.json (metric, value, unit, baseline, ratio, machine,
command). Options: --repeat N (default 10), --index-docs N (default 100000), --config FILE.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.log import print_table  # noqa: E402
from bench.record import describe, write_record  # noqa: E402


def run_build(config: Path, root: Path, run: str, workers: int) -> tuple[dict, int, float]:
    """Build in a wrapper process; returns (stats, peak RSS in KiB, CPU seconds of the process tree)."""
    cmd = [sys.executable, "-m", "corpora", "build", "--config", str(config), f"run={run}",
           f"runs_root={root}", f"workers={workers}"]
    wrapper = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); "
               "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
               "print(u.ru_maxrss, u.ru_utime + u.ru_stime); sys.exit(r.returncode)")
    env = dict(os.environ, PIPELINE_PROGRESS="0", PIPELINE_LOG_LEVEL="WARNING")
    out = subprocess.run([sys.executable, "-c", wrapper, *cmd], cwd=REPO, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"build failed: {' '.join(cmd)}\n{out.stderr}")
    stats = json.loads((root / run / "corpus" / "stats.json").read_text())
    rss, cpu = out.stdout.strip().splitlines()[-1].split()
    return stats, int(rss), float(cpu)


def repeated_config(config: Path, times: int, dest: Path) -> Path:
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    sources = []
    for k in range(times):
        for s in data["sources"]:
            s = dict(s)
            s["label"] = f"{s.get('label') or s.get('builtin') or 'src'}-{k}"
            sources.append(s)
    data["sources"] = sources
    dest.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return dest


def rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def dedup_index_bytes_per_doc(n: int) -> float:
    import gc

    import numpy as np

    from corpora.config import DedupConfig
    from corpora.dedup import Deduplicator

    cfg = DedupConfig()
    rng = np.random.default_rng(0)
    sigs = rng.integers(0, 2**32, size=(n, cfg.num_perm), dtype=np.uint64).astype(np.uint32)
    ids = [f"{x:016x}" for x in rng.integers(0, 2**63, size=n)]
    d = Deduplicator(cfg)
    d.check(ids[0], sigs[0].tobytes())  # imports and first allocations before the baseline
    gc.collect()
    before = rss_kib()
    for i in range(1, n):
        d.check(ids[i], sigs[i].tobytes())
    gc.collect()
    after = rss_kib()
    del sigs  # (allocated before the baseline)
    return (after - before) * 1024 / (n - 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "configs" / "corpus" / "default.yaml"))
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--index-docs", type=int, default=100_000)
    args = ap.parse_args()
    config = Path(args.config)
    records = []

    def rec(metric, value, unit, baseline=None):
        ratio = (value / baseline) if baseline else None
        records.append({"metric": metric, "value": round(value, 4), "unit": unit,
                        "baseline": None if baseline is None else round(baseline, 4),
                        "ratio": None if ratio is None else round(ratio, 3)})

    with tempfile.TemporaryDirectory(prefix="bench-corpus-") as tmp:
        root = Path(tmp)
        s1, rss1, cpu1 = run_build(config, root, "w1", 1)
        s2, _, _ = run_build(config, root, "w2", 2)
        t1, t2 = s1["timing"], s2["timing"]
        # throughput per CPU-second of the whole process (start-up included): robust to a busy machine
        rec("corpus_build_mb_per_cpu_s_1_worker", s1["totals"]["input_bytes"] / 1e6 / cpu1, "MB/CPU-s")
        rec("corpus_build_mb_per_s_1_worker", t1["mb_per_s"], "MB/s")
        rec("corpus_build_mb_per_s_2_workers", t2["mb_per_s"], "MB/s", t1["mb_per_s"])
        rec("corpus_build_docs_per_s_1_worker", t1["docs_per_s"], "docs/s")
        rec("corpus_build_docs_per_s_2_workers", t2["docs_per_s"], "docs/s", t1["docs_per_s"])
        # the parent's serial share bounds the speed-up from workers (Amdahl): 1 / max(share, 1/2)
        share = t2["parent_cpu_seconds"] / cpu1  # serial CPU (2-worker run) / all CPU of the 1-worker run
        rec("corpus_parent_serial_cpu_share", share, "fraction")
        rec("corpus_speedup_bound_2_workers_idle_2_cores", 1 / max(share, 0.5), "x")
        rep_cfg = repeated_config(config, args.repeat, root / "repeated.yaml")
        s10, rss10, _ = run_build(rep_cfg, root, "x10", 1)
        rec("corpus_peak_rss_1x", rss1 / 1024, "MiB")
        rec(f"corpus_peak_rss_{args.repeat}x", rss10 / 1024, "MiB", rss1 / 1024)
        rec(f"corpus_input_docs_{args.repeat}x", s10["totals"]["input_docs"], "docs", s1["totals"]["input_docs"])
    per_doc = dedup_index_bytes_per_doc(args.index_docs)
    rec("dedup_index_bytes_per_doc", per_doc, "bytes/doc")
    rec("dedup_index_per_million_docs", per_doc * 1e6 / 2**20, "MiB/1M docs")

    print_table(f"Corpus benchmark ({describe()}, config {config.name}: "
                f"{s1['totals']['input_docs']:,} docs, {s1['totals']['input_bytes'] / 1e6:.1f} MB)",
                ["metric", "value", "unit", "baseline", "ratio"],
                [[r["metric"], r["value"], r["unit"], "-" if r["baseline"] is None else r["baseline"],
                  "-" if r["ratio"] is None else r["ratio"]] for r in records])
    print(f"written {write_record('corpus', records)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
