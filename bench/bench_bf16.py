"""bf16 autocast vs fp32 on this CPU: MLM training-step throughput, measured in the same run.

For each model size (``--sizes``, default tiny and small) and encoder ``--arch``, two identical
models (same seed) train on the same synthetic batches (Zipf-distributed token ids, 15 % of the
positions predicted through the LM head, as the ``mlm`` objective does): one in fp32, one under
``torch.autocast("cpu", dtype=torch.bfloat16)`` (what accelerate's ``mixed_precision=bf16`` does on
a CPU). The two are timed in alternating blocks of ``--block`` steps, so that load from other
processes on a shared machine hits both alike; the figure is the median step time per precision
after ``--warmup`` steps. Also printed: the loss of both after the same steps (parity check) and the
CPU's bf16 features (``pretrain.config.cpu_bf16_features``) and what ``mixed_precision: auto``
resolves to here.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_bf16.py --threads 1

Writes ``runs/bench/bf16.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def make_batches(n: int, batch: int, seq: int, vocab: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    ranks = torch.arange(1, vocab - 4, dtype=torch.float64)
    p = (1.0 / ranks) / (1.0 / ranks).sum()
    out = []
    for _ in range(n):
        ids = torch.multinomial(p, batch * seq, replacement=True, generator=g).view(batch, seq) + 5
        sel = torch.rand(batch, seq, generator=g) < 0.15
        flat = sel.view(-1).nonzero().squeeze(1)
        labels = ids.view(-1)[flat]
        inp = torch.where(sel, torch.full_like(ids, 4), ids)
        out.append({"input_ids": inp, "pos": flat, "labels": labels})
    return out


def step(model, opt, b: dict, bf16: bool) -> float:
    from pretrain.models import encoder_body, mlm_head

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        h = encoder_body(model)(input_ids=b["input_ids"])[0]
        h = h.reshape(-1, h.shape[-1]).index_select(0, b["pos"])
        logits = mlm_head(model, h)
    loss = F.cross_entropy(logits.float(), b["labels"])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return float(loss.detach())


def bench_size(size: str, arch: str, vocab: int, batch: int, seq: int, steps: int, warmup: int, block: int) -> dict:
    from pretrain.models import ModelConfig, build_encoder

    cfg = ModelConfig(size=size, arch=arch, dropout=0.0)
    models, opts = {}, {}
    for prec in ("fp32", "bf16"):
        torch.manual_seed(0)
        models[prec] = build_encoder(cfg, vocab).train()
        opts[prec] = torch.optim.AdamW(models[prec].parameters(), lr=5e-4)
    batches = make_batches(steps, batch, seq, vocab)
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    losses: dict[str, list[float]] = {"fp32": [], "bf16": []}
    i = {"fp32": 0, "bf16": 0}
    order = ("fp32", "bf16")
    while min(i.values()) < steps:
        for prec in order:
            for _ in range(block):
                if i[prec] >= steps:
                    break
                t0 = time.perf_counter()
                losses[prec].append(step(models[prec], opts[prec], batches[i[prec]], prec == "bf16"))
                dt = time.perf_counter() - t0
                if i[prec] >= warmup:
                    times[prec].append(dt)
                i[prec] += 1
        order = order[::-1]  # alternate which precision goes first
    med = {p: statistics.median(t) for p, t in times.items()}
    tok = batch * seq
    return {"size": size, "arch": arch, "steps": steps, "timed_steps": len(times["fp32"]),
            "fp32_tokens_per_s": tok / med["fp32"], "bf16_tokens_per_s": tok / med["bf16"],
            "bf16_speedup": med["fp32"] / med["bf16"],
            "fp32_loss_last": losses["fp32"][-1], "bf16_loss_last": losses["bf16"][-1],
            "loss_rel_diff": abs(losses["bf16"][-1] - losses["fp32"][-1]) / losses["fp32"][-1]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    p.add_argument("--arch", default="bert", choices=["bert", "roberta_prelayernorm", "modernbert"])
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=24, help="steps per precision")
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--block", type=int, default=4, help="steps per alternating block")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="runs/bench/bf16.json")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)

    from bench.record import describe, write_record
    from pipeline.log import print_table
    from pretrain.config import cpu_bf16_features, resolve_mixed_precision

    from pretrain.objectives.base import pad_vocab

    feats = cpu_bf16_features()
    auto = resolve_mixed_precision("auto", cuda=False, env={})
    vocab = pad_vocab(a.vocab_size)
    results = [bench_size(s, a.arch, vocab, a.batch, a.seq, a.steps, a.warmup, a.block) for s in a.sizes]
    rows = [[r["size"], r["arch"], f"{r['fp32_tokens_per_s']:,.0f}", f"{r['bf16_tokens_per_s']:,.0f}",
             f"{r['bf16_speedup']:.2f}x", f"{r['fp32_loss_last']:.4f} / {r['bf16_loss_last']:.4f}"] for r in results]
    print_table(f"bf16 autocast vs fp32, MLM train step, batch {a.batch} x {a.seq} ({describe()}; "
                f"avx512_bf16={feats['avx512_bf16']} amx_bf16={feats['amx_bf16']}; auto -> {auto})",
                ["size", "arch", "fp32 tok/s", "bf16 tok/s", "bf16 / fp32", "loss fp32 / bf16"], rows)
    records = [{"metric": f"bf16_train_tokens_per_s_{r['size']}", "value": r["bf16_tokens_per_s"], "unit": "tokens/s",
                "baseline": r["fp32_tokens_per_s"], "ratio": r["bf16_speedup"], **r} for r in results]
    write_record("bf16", records, out=a.out, auto_resolves_to=auto)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
