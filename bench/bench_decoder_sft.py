"""Decoder SFT step time: the LM head at the labelled positions only against the full logits.

A training step of the ``decoder_sft`` task kind (forward, loss, backward, AdamW) on rows of the
shipped retrieval config (``configs/finetune/retrieval-tiny.yaml``: its facts, answers and SFT
variants, one token per character), with a fresh decoder of the preset size (``--size``, vocabulary
``--vocab``: the tiny demo decoder is 8,000). ``labelled``: the kind's training path
(:func:`finetune.kinds.decoder_sft.labelled_loss`); baseline ``full``: the model's own loss over
the full logits (``model(..., labels=...)``), what the kind did before. Same model, same batches;
the two alternate step by step, so drift on a shared machine hits both alike. Also checked: the two
losses on the first batch (they must agree). Ratio = full / labelled median wall time per step.

``python bench/bench_decoder_sft.py [--size tiny] [--vocab 8000] [--steps 20] [--threads 1]``
Writes ``runs/bench/decoder_sft.json`` (metric, value, unit, baseline, ratio, machine, command).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def rows_of(variant: str, vocab: int, n: int, seed: int = 0):
    """SFT rows of ``variant`` built as the retrieval evaluation builds them (shipped tiny config)."""
    from finetune.decoder_sft import sft_rows
    from finetune.retrieval import Encoder, FillerPool, RetrievalConfig, TaskGenerator, train_items
    from pipeline.config import load_config

    cfg = load_config(RetrievalConfig, str(REPO / "configs/finetune/retrieval-tiny.yaml"))
    ids: dict[str, int] = {}
    enc = Encoder(lambda text: [ids.setdefault(c, 5 + len(ids) % (vocab - 5)) for c in text])
    text = (REPO / "README.md").read_text(encoding="utf-8")
    gen = TaskGenerator(enc, FillerPool.from_texts([text], enc), cfg.facts, bos_id=2, sep_id=3)
    items = train_items(gen, cfg, n, seed=seed)
    return cfg.sft, sft_rows([(it.prompt, it.answer) for it in items], variant, cfg.sft, eos_id=3, mask_id=4, seed=seed)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--variants", nargs="+", default=["ntp", "meap_concat"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="runs/bench/decoder_sft.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from finetune.decoder_sft import pad_rows
    from finetune.kinds.decoder_sft import labelled_loss
    from pretrain.models import ModelConfig, build_decoder

    records, lines = [], []
    for variant in args.variants:
        sft, rows = rows_of(variant, args.vocab, 16 * 8)
        batches = [pad_rows(rows[i:i + sft.batch_size], 0) for i in range(0, len(rows), sft.batch_size)]
        torch.manual_seed(0)
        model = build_decoder(ModelConfig(size=args.size, dropout=0.0), args.vocab).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        with torch.no_grad():
            b = batches[0]
            agree = abs(float(labelled_loss(model, **b)) - float(model(**b).loss))
        ways = {"labelled": lambda b: labelled_loss(model, **b), "full": lambda b: model(**b).loss}
        times: dict[str, list[float]] = {k: [] for k in ways}
        for step in range(args.warmup + args.steps):
            for name in (("labelled", "full") if step % 2 == 0 else ("full", "labelled")):
                b = batches[step % len(batches)]
                t0 = time.perf_counter()
                ways[name](b).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                if step >= args.warmup:
                    times[name].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        tokens = sum(int(b["attention_mask"].sum()) for b in batches) / len(batches)
        labels = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches) / len(batches)
        records.append({"metric": f"decoder_sft_step_time_{variant}", "value": med["labelled"], "unit": "s/step",
                        "baseline": med["full"], "ratio": med["full"] / med["labelled"], "loss_abs_diff": agree,
                        "size": args.size, "vocab": args.vocab, "batch": sft.batch_size,
                        "tokens_per_batch": tokens, "labels_per_batch": labels, "steps": args.steps})
        lines.append(f"{variant:12s} labelled {med['labelled'] * 1000:7.1f} ms/step   full {med['full'] * 1000:7.1f} "
                     f"ms/step   speed-up {med['full'] / med['labelled']:.2f}x   ({tokens:.0f} tokens, {labels:.0f} "
                     f"labels per batch; |loss diff| {agree:.1e})")
    from bench.record import describe, write_record

    out = write_record("decoder_sft", records, out=args.out)
    print(f"Decoder SFT step time ({describe()}; {args.size} decoder, vocabulary {args.vocab})")
    print("\n".join(lines))
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
