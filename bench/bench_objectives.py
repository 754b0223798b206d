"""Step-time cost of ``clower`` and ``ernie_gram`` against ``mlm``, measured in the same process.

Goals: ``clower`` <= 1.3x ``mlm`` (the contrastive term), ``ernie_gram`` with the generator
<= 1.6x ``mlm``. A training step = ``collate`` (numpy batch -> tensors, each objective's masking)
+ forward + backward + AdamW step, on the same backbone size, batch and thread count (bf16
autocast on a GPU, as the trainer does). The objectives run round-robin, step by step, in a
rotating order so drift on a shared machine hits all alike; ratios are median(x) / median(mlm).

The batches are synthetic but shaped like People's Daily text: word lengths 1/2/3/4 characters
with probabilities .40/.48/.08/.04, documents separated by ``[SEP]``, an aligned ``word`` stream
(one token per word) and n-gram units (every multi-character word an n-gram of the lexicon),
so the collate paths do their real work.

``python bench/bench_objectives.py [--size tiny] [--seq-len 128] [--batch 32] [--steps 20] [--threads N]``
Writes ``runs/bench/clower.json`` and ``runs/bench/ernie_gram.json`` (metric, value, unit,
baseline, ratio, machine, command; per-variant figures under ``variants``).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pretrain.models import ModelConfig  # noqa: E402
from pretrain.objectives.base import ObjectiveContext, VocabInfo, build_objective  # noqa: E402

CLS, SEP, PAD = 2, 3, 0
WORD_P = np.array([0.40, 0.48, 0.08, 0.04])

VARIANTS: dict[str, tuple[str, dict]] = {
    "mlm": ("mlm", {}),
    "clower": ("clower", {}),
    "clower_encoder": ("clower", {"word_view": "encoder"}),
    "ernie_gram_explicit": ("ernie_gram", {"comprehensive": False, "generator": False}),
    "ernie_gram_comprehensive": ("ernie_gram", {"generator": False}),
    "ernie_gram_full": ("ernie_gram", {}),
}


def synthetic_batch(B: int, T: int, vocab: int, word_vocab: int, n_ngrams: int,
                    rng: np.random.Generator) -> dict[str, np.ndarray]:
    ids = np.zeros((B, T), np.int64)
    ws = np.zeros((B, T), bool)
    ulen = np.ones((B, T), np.int16)
    ung = np.full((B, T), -1, np.int32)
    w_ids = np.full((B, T), PAD, np.int64)
    w_len = np.zeros((B, T), np.int16)
    w_ws = np.ones((B, T), bool)
    for r in range(B):  # building the fixture, not part of the timed step
        p, q = 1, 1
        ids[r, 0], ws[r, 0], w_ids[r, 0] = CLS, True, CLS
        while p < T:
            if rng.random() < 0.01:  # a document boundary
                ids[r, p], ws[r, p], w_ids[r, q] = SEP, True, SEP
                p, q = p + 1, q + 1
                continue
            n = min(int(rng.choice(4, p=WORD_P)) + 1, T - p)
            ids[r, p:p + n] = rng.integers(5, vocab, n)
            ws[r, p] = True
            ulen[r, p:p + n] = 0
            ulen[r, p] = n
            if n >= 2:
                ung[r, p] = rng.integers(0, n_ngrams)
            w_ids[r, q], w_len[r, q] = rng.integers(5, word_vocab), n
            p, q = p + n, q + 1
    special = np.isin(ids, [CLS, SEP, PAD])
    return {"input_ids": ids, "special_mask": special, "word_start": ws | special,
            "char_len": (~special).astype(np.int16), "attention_mask": np.ones((B, T), np.int64),
            "unit_len": ulen, "unit_ngram": ung, "word.input_ids": w_ids, "word.char_len": w_len,
            "word.word_start": w_ws, "word.attention_mask": (w_ids != PAD).astype(np.int64)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--word-vocab", type=int, default=20000)
    ap.add_argument("--ngrams", type=int, default=5000)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out-dir", default="runs/bench")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    names = [n for n in args.variants.split(",") if n]
    if "mlm" not in names:
        names.insert(0, "mlm")
    model = ModelConfig(size=args.size, max_position_embeddings=max(512, args.seq_len), dropout=0.0)
    vocabs = {
        "char": VocabInfo("char", "", args.vocab, 0, 1, 2, 3, 4),
        "word": VocabInfo("word", "", args.word_vocab, 0, 1, 2, 3, 4),
        "ngram": VocabInfo("ngram", "", args.ngrams, 0, 1, 2, 3, 4),
    }
    ctx = ObjectiveContext(model=model, vocabs=vocabs, primary="char", seq_len=args.seq_len)
    objs = {}
    for name in names:
        obj_name, opts = VARIANTS[name]
        torch.manual_seed(0)
        o = build_objective(obj_name, opts, ctx).to(device).train()
        objs[name] = (o, torch.optim.AdamW(o.parameters(), lr=1e-4))
    rng = np.random.default_rng(0)
    data = [synthetic_batch(args.batch, args.seq_len, args.vocab, args.word_vocab, args.ngrams, rng)
            for _ in range(4)]
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device == "cuda" else contextlib.nullcontext
    step_t: dict[str, list[float]] = {n: [] for n in names}
    coll_t: dict[str, list[float]] = {n: [] for n in names}
    for step in range(args.warmup + args.steps):
        k = step % len(names)
        for name in names[k:] + names[:k]:
            o, opt = objs[name]
            g = torch.Generator().manual_seed(step)
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            b = o.collate(data[step % len(data)], g)
            t1 = time.perf_counter()
            b = {key: x.to(device, non_blocking=True) for key, x in b.items()}
            with autocast():
                loss = o(b)["loss"]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if device == "cuda":
                torch.cuda.synchronize()
            t2 = time.perf_counter()
            if step >= args.warmup:
                step_t[name].append(t2 - t0)
                coll_t[name].append(t1 - t0)
    med = {k: statistics.median(v) for k, v in step_t.items()}
    cmed = {k: statistics.median(v) for k, v in coll_t.items()}
    from bench.record import write_record

    common = {"device": device, "size": args.size, "seq_len": args.seq_len,
              "batch": args.batch, "steps": args.steps, "data": "synthetic (PD-like word lengths)"}
    out_dir = Path(args.out_dir)
    base = med["mlm"]
    print(f"{'variant':26s} {'ms/step':>9s} {'collate ms':>11s} {'x mlm':>7s}")
    for n in names:
        print(f"{n:26s} {med[n] * 1000:9.1f} {cmed[n] * 1000:11.2f} {med[n] / base:7.3f}")
    for family, head, goal in (("clower", "clower", 1.3), ("ernie_gram", "ernie_gram_full", 1.6)):
        fam = [n for n in names if n.startswith(family)]
        if not fam:
            continue
        top = head if head in fam else fam[-1]
        res = {"metric": f"{top}_step_time", "value": med[top], "unit": "s/step", "baseline": base,
               "ratio": med[top] / base, "goal_ratio": goal, **common,
               "variants": {n: {"s_per_step": med[n], "collate_s": cmed[n], "ratio": med[n] / base} for n in fam},
               "mlm": {"s_per_step": base, "collate_s": cmed["mlm"]}}
        f = write_record(family, res, out=out_dir / f"{family}.json")
        print(f"{top}/mlm = {med[top] / base:.3f} (goal <= {goal}) -> {f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
