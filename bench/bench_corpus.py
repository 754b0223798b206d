"""Benchmark of the corpus stage on datatrove's local executor (run by `make bench`, never by the tests).

1. Speed: the built-in full corpus (configs/corpus/full.yaml, every built-in source without caps)
   with 1 and 2 workers on the local executor, the same ``tasks`` (so the same output): wall
   seconds, CPU seconds of the process tree, and the ratio (baseline: 1 worker). The machine's
   load average is in the "machine" field: on a shared machine the wall-clock ratio is pessimistic.
2. Peak RSS of a build of a corpus and of the same corpus ten times larger, each in its own wrapper
   process (getrusage(RUSAGE_CHILDREN): the largest process of the tree). The corpus is the kept
   text of the demo corpus (configs/corpus/default.yaml) written as jsonl; copy k of the larger one
   maps every CJK ideograph through a fixed permutation seeded by k, so every copy has fresh ids,
   is no near-duplicate of another copy, and keeps the script, length and repetition statistics
   (the deduplication work and its on-disk index grow with the corpus, as they would with new text).
   The larger corpus runs with ten times the tasks (datatrove's unit of memory: documents per task
   stay the same); ``--fixed-tasks`` also measures it with the same tasks.

Prints a table and writes runs/bench/corpus.json (metric, value, unit, baseline, ratio, machine,
command). Options: --config FILE (speed), --repeat N (default 10), --tasks N (default 4),
--skip-speed, --fixed-tasks.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.log import print_table  # noqa: E402
from bench.record import describe, write_record  # noqa: E402


def run_build(config: Path, root: Path, run: str, *overrides: str) -> tuple[dict, int, float, float]:
    """Build in a wrapper process; (stats, peak RSS KiB of the largest process, CPU s of the tree, wall s)."""
    cmd = [sys.executable, "-m", "corpora", "build", "--config", str(config), f"run={run}",
           f"runs_root={root}", *overrides]
    wrapper = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); "
               "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
               "print(u.ru_maxrss, u.ru_utime + u.ru_stime); sys.exit(r.returncode)")
    env = dict(os.environ, PIPELINE_PROGRESS="0", PIPELINE_LOG_LEVEL="WARNING", PYTHONPATH=str(REPO))
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", wrapper, *cmd], cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"build failed: {' '.join(cmd)}\n{out.stderr}")
    stats = json.loads((root / run / "corpus" / "stats.json").read_text())
    rss, cpu = out.stdout.strip().splitlines()[-1].split()
    return stats, int(rss), float(cpu), wall


def _permutation(k: int) -> dict[int, int]:
    import numpy as np

    cjk = np.arange(0x4E00, 0xA000)
    perm = np.random.default_rng(1000 + k).permutation(cjk)
    return dict(zip(cjk.tolist(), perm.tolist()))


def write_corpus(corpus_dir: Path, copies: int, dest: Path) -> int:
    """The kept text of a built corpus as jsonl, ``copies`` times (copy k > 0: ideographs permuted)."""
    from corpora.io import iter_corpus

    texts = [d["text"] for s in ("train", "valid") for d in iter_corpus(corpus_dir, s)]
    n = 0
    with open(dest, "w", encoding="utf-8") as f:
        for k in range(copies):
            table = _permutation(k) if k else None
            for t in texts:
                f.write(json.dumps({"text": t.translate(table) if table else t}, ensure_ascii=False) + "\n")
                n += 1
    return n


def jsonl_config(path: Path, dest: Path) -> Path:
    dest.write_text(yaml.safe_dump({"sources": [{"type": "jsonl", "path": str(path), "label": "bench"}],
                                    "split": {"valid_fraction": 0.01}}), encoding="utf-8")
    return dest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "configs" / "corpus" / "full.yaml"))
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--skip-speed", action="store_true", help="only the memory measurement")
    ap.add_argument("--fixed-tasks", action="store_true", help="also the larger corpus with the same tasks")
    args = ap.parse_args()
    config = Path(args.config)
    records = []

    def rec(metric, value, unit, baseline=None):
        ratio = (value / baseline) if baseline else None
        records.append({"metric": metric, "value": round(value, 4), "unit": unit,
                        "baseline": None if baseline is None else round(baseline, 4),
                        "ratio": None if ratio is None else round(ratio, 3)})

    title = ""
    with tempfile.TemporaryDirectory(prefix="bench-corpus-") as tmp:
        root = Path(tmp)
        if not args.skip_speed:
            t = f"tasks={args.tasks}"
            s1, _, cpu1, wall1 = run_build(config, root, "w1", "workers=1", t)
            s2, _, _, wall2 = run_build(config, root, "w2", "workers=2", t)
            same = all((root / "w1" / "corpus" / p.relative_to(root / "w2" / "corpus")).read_bytes() == p.read_bytes()
                       for p in (root / "w2" / "corpus").rglob("*.jsonl.zst"))
            rec("corpus_build_wall_s_1_worker", wall1, "s")
            rec("corpus_build_wall_s_2_workers", wall2, "s", wall1)
            rec("corpus_speedup_2_workers", wall1 / wall2, "x")
            rec("corpus_build_cpu_s_1_worker", cpu1, "CPU-s")  # (2 workers: forkserver children, not counted)
            rec("corpus_build_mb_per_cpu_s_1_worker", s1["totals"]["input_bytes"] / 1e6 / cpu1, "MB/CPU-s")
            # robust to load: CPU per stage of the 1-worker run (all in one process); the stages of
            # `tasks` tasks (read, write) and of one task per band (buckets) split over 2 workers,
            # the rest (clusters, finalize, start-up) is serial (Amdahl)
            sc = s1["timing"]["stage_cpu_seconds"]
            par = sc.get("read", 0) + sc.get("write", 0) + sc.get("buckets", 0)
            serial = cpu1 - par
            rec("corpus_serial_cpu_share_1_worker", serial / cpu1, "fraction")
            rec("corpus_speedup_bound_2_workers_idle_2_cores", cpu1 / (serial + par / 2), "x")
            rec("corpus_outputs_identical_1_vs_2_workers", float(same), "bool")
            title = (f"config {config.name}: {s1['totals']['input_docs']:,} docs, "
                     f"{s1['totals']['input_bytes'] / 1e6:.1f} MB, tasks={args.tasks}")
        # memory: the demo corpus's kept text x1 and x repeat
        demo = REPO / "configs" / "corpus" / "default.yaml"
        run_build(demo, root, "demo", "workers=1")
        small, big = root / "x1.jsonl", root / f"x{args.repeat}.jsonl"
        n1 = write_corpus(root / "demo" / "corpus", 1, small)
        nk = write_corpus(root / "demo" / "corpus", args.repeat, big)
        c1, ck = jsonl_config(small, root / "x1.yaml"), jsonl_config(big, root / "xk.yaml")
        m1, rss1, _, _ = run_build(c1, root, "x1", "workers=1", f"tasks={args.tasks}")
        mk, rssk, _, _ = run_build(ck, root, "xk", "workers=1", f"tasks={args.tasks * args.repeat}")
        rec("corpus_input_docs_1x", n1, "docs")
        rec(f"corpus_input_docs_{args.repeat}x", nk, "docs", n1)
        rec(f"corpus_kept_docs_{args.repeat}x", mk["totals"]["kept_docs"], "docs", m1["totals"]["kept_docs"])
        rec("corpus_peak_rss_1x", rss1 / 1024, "MiB")
        rec(f"corpus_peak_rss_{args.repeat}x_tasks_x{args.repeat}", rssk / 1024, "MiB", rss1 / 1024)
        if args.fixed_tasks:
            _, rssf, _, _ = run_build(ck, root, "xf", "workers=1", f"tasks={args.tasks}")
            rec(f"corpus_peak_rss_{args.repeat}x_same_tasks", rssf / 1024, "MiB", rss1 / 1024)

    print_table(f"Corpus benchmark ({describe()}; {title})", ["metric", "value", "unit", "baseline", "ratio"],
                [[r["metric"], r["value"], r["unit"], "-" if r["baseline"] is None else r["baseline"],
                  "-" if r["ratio"] is None else r["ratio"]] for r in records])
    print(f"written {write_record('corpus', records)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
