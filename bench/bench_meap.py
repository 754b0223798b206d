"""Step-time overhead of ``meap`` against ``ntp``, measured in the same process (goal <= 1.02x).

A training step = ``collate`` (numpy batch -> tensors, MEAP's masking included) + forward +
backward + AdamW step, on the same decoder size, the same batch and the same thread count.
The two objectives alternate step by step so drift in the shared machine hits both alike; the
reported ratio is median(meap) / median(ntp) of wall time (``ratio``) and of this process's CPU
time (``process_cpu_ratio``, less sensitive to other jobs on a shared machine). Also reported:
the collate time alone.

``python bench/bench_meap.py [--size tiny] [--seq-len 128] [--batch 16] [--steps 30] [--threads N]``
Writes ``runs/bench/meap.json`` (metric, value, unit, baseline, ratio, machine, command).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pretrain.models import ModelConfig  # noqa: E402
from pretrain.objectives.base import ObjectiveContext, VocabInfo, build_objective  # noqa: E402


def batch(B: int, T: int, vocab: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    ids = rng.integers(5, vocab, size=(B, T)).astype(np.int64)
    ids[:, 0] = 2
    ids[:, T // 3] = 3  # a document boundary
    special = np.isin(ids, [0, 2, 3])
    return {"input_ids": ids, "special_mask": special, "word_start": np.ones((B, T), bool),
            "char_len": (~special).astype(np.int16), "attention_mask": np.ones((B, T), np.int64)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="runs/bench/meap.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = ModelConfig(size=args.size, max_position_embeddings=max(512, args.seq_len), dropout=0.0)
    v = VocabInfo(kind="char", path="", size=args.vocab, pad_id=0, unk_id=1, cls_id=2, sep_id=3, mask_id=4)
    ctx = ObjectiveContext(model=model, vocabs={"char": v}, primary="char", seq_len=args.seq_len)
    objs = {}
    for name in ("ntp", "meap"):
        torch.manual_seed(0)
        o = build_objective(name, {}, ctx).to(device).train()
        objs[name] = (o, torch.optim.AdamW(o.parameters(), lr=1e-4))
    rng = np.random.default_rng(0)
    data = [batch(args.batch, args.seq_len, args.vocab, rng) for _ in range(4)]
    step_t: dict[str, list[float]] = {"ntp": [], "meap": []}
    cpu_t: dict[str, list[float]] = {"ntp": [], "meap": []}
    coll_t: dict[str, list[float]] = {"ntp": [], "meap": []}
    for step in range(args.warmup + args.steps):
        order = ("ntp", "meap") if step % 2 == 0 else ("meap", "ntp")
        for name in order:
            o, opt = objs[name]
            g = torch.Generator().manual_seed(step)
            if device == "cuda":
                torch.cuda.synchronize()
            c0 = time.process_time()
            t0 = time.perf_counter()
            b = o.collate(data[step % len(data)], g)
            t1 = time.perf_counter()
            b = {k: x.to(device) for k, x in b.items()}
            loss = o(b)["loss"]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if device == "cuda":
                torch.cuda.synchronize()
            t2 = time.perf_counter()
            c2 = time.process_time()
            if step >= args.warmup:
                step_t[name].append(t2 - t0)
                cpu_t[name].append(c2 - c0)
                coll_t[name].append(t1 - t0)
    med = {k: statistics.median(v) for k, v in step_t.items()}
    cmed = {k: statistics.median(v) for k, v in coll_t.items()}
    ratio = med["meap"] / med["ntp"]
    cpu_med = {k: statistics.median(v) for k, v in cpu_t.items()}
    cpu_ratio = cpu_med["meap"] / cpu_med["ntp"]
    res = {"metric": "meap_step_time", "value": med["meap"], "unit": "s/step", "baseline": med["ntp"],
           "ratio": ratio, "device": device, "collate_s": cmed, "process_cpu_s": cpu_med, "process_cpu_ratio": cpu_ratio, "size": args.size, "seq_len": args.seq_len, "batch": args.batch,
           "steps": args.steps, "goal_ratio": 1.02}
    from bench.record import write_record

    out = write_record("meap", res, out=args.out)
    print(f"ntp  {med['ntp'] * 1000:8.1f} ms/step (collate {cmed['ntp'] * 1000:.2f} ms)")
    print(f"meap {med['meap'] * 1000:8.1f} ms/step (collate {cmed['meap'] * 1000:.2f} ms)")
    print(f"ratio meap/ntp = {ratio:.3f} wall, {cpu_ratio:.3f} process CPU time (goal <= 1.02) -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
