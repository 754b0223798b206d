"""Trainer throughput: this pipeline's MLM trainer vs a Hugging Face ``Trainer`` baseline.

Both train the identical model (``BertForMaskedLM`` built by ``pretrain.models``) on the identical
packed windows with the same batch, optimiser family and precision, in the same process:

* ours: ``pretrain.trainer.train`` with the ``mlm`` objective (whole-word masking vectorised in
  torch, vocabulary projection only at the masked positions);
* baseline: ``transformers.Trainer`` + ``DataCollatorForLanguageModeling`` (token masking in the
  collator, LM head on every position), the stock recipe.

Throughput is tokens/s over the timed steps (the first ``--warmup`` steps are excluded), from step-end
time stamps. Also reported: our data-wait share of step time. With CUDA, the same comparison runs
for BERT-base in bf16 at sequence 128 and 512, with MFU (``pretrain.flops``).

    .venv/bin/python bench/bench_trainer.py                 # CPU: tiny model, vocab 21,128
    .venv/bin/python bench/bench_trainer.py --run demo      # windows and vocabulary of runs/demo

Data: ``--run`` uses that run's char shards and vocabulary; otherwise a synthetic Zipf-distributed
token stream with 1-3-token words (vocabulary size ``--vocab-size``, default 21,128 = bert-base-chinese).
Writes ``runs/bench/trainer.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

CLS, SEP, MASK = 2, 3, 4


class StreamLoader:
    """``PackedLoader`` interface over an in-memory token stream (windows cut in order, shuffled)."""

    def __init__(self, ids: np.ndarray, ws: np.ndarray, seq_len: int, batch_size: int, seed=0, rank=0, world_size=1):
        self.ids, self.ws, self.T, self.B = ids, ws, seq_len, batch_size
        self.n = len(ids) // (seq_len - 1)
        self.order = np.random.default_rng(seed).permutation(self.n)
        self.rank, self.world = rank, world_size

    def __len__(self):
        return self.n // (self.B * self.world)

    def batch(self, epoch: int, index: int) -> dict[str, np.ndarray]:
        slot = index * self.world + self.rank
        win = self.order[slot * self.B:(slot + 1) * self.B]
        L = self.T - 1
        st = win[:, None] * L + np.arange(L)[None]
        ids = np.concatenate([np.full((len(win), 1), CLS), self.ids[st]], 1).astype(np.int64)
        ws = np.concatenate([np.ones((len(win), 1), bool), self.ws[st].astype(bool)], 1)
        special = np.isin(ids, [0, CLS, SEP])
        return {"input_ids": ids, "word_start": ws, "special_mask": special,
                "char_len": (~special).astype(np.int16), "attention_mask": np.ones_like(ids)}


def synthetic_stream(n_tokens: int, vocab: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = (rng.zipf(1.2, n_tokens) % (vocab - 5)) + 5
    ws = rng.random(n_tokens) < 0.6
    ids[rng.random(n_tokens) < 0.01] = SEP  # document ends
    ws[ids == SEP] = True
    return ids.astype(np.int64), ws.astype(np.uint8)


def real_stream(run: str, n_tokens: int) -> tuple[np.ndarray, np.ndarray, int]:
    from tokenization.loader import PackedLoader

    ld = PackedLoader(f"runs/{run}/shards", "char", "train", 129, 64, shuffle=False)
    ids, ws = [], []
    i = 0
    while sum(len(x) for x in ids) < n_tokens and i < len(ld):
        b = ld.batch(0, i)
        ids.append(b["input_ids"][:, 1:].reshape(-1))
        ws.append(b["word_start"][:, 1:].reshape(-1))
        i += 1
    return np.concatenate(ids)[:n_tokens], np.concatenate(ws)[:n_tokens].astype(np.uint8), int(ld.vocab_meta["size"])


def make_tokenizer(vocab: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    v = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    v.update({f"t{i}": i for i in range(5, vocab)})
    tok = Tokenizer(models.WordLevel(v, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


def write_vocab(d: Path, vocab: int) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "stats.json").write_text(json.dumps({
        "kind": "char", "size": vocab, "trust_remote_code": False, "tokens_per_char": 1.0,
        "special_tokens": {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}}))


def rate(times: list[float], warmup: int, tokens_per_step: int) -> float:
    t = times[warmup:]
    return tokens_per_step * (len(t) - 1) / (t[-1] - t[0])


def bench_ours(tmp: Path, model: dict, loader: StreamLoader, batch: int, seq: int, steps: int, warmup: int,
               mp: str) -> dict:
    from pipeline.config import load_config
    from pretrain.config import PretrainConfig
    from pretrain.trainer import train

    ov = [f"runs_root={tmp / 'runs'}", "run=bench", "objective=mlm", f"data.vocab_root={tmp / 'vocab'}",
          f"data.seq_len={seq}", f"train.batch_size={batch}", f"train.steps={steps}", "train.warmup_steps=0",
          "train.log_every=1", "train.eval_every=0", f"train.save_every={steps}", "train.tensorboard=false",
          f"train.mixed_precision={mp}", "train.lr=0.0005"] + [f"model.{k}={v}" for k, v in model.items()]
    cfg = load_config(PretrainConfig, None, ov)
    def factory(root, kind, split, *a, **k):
        if split != "train":
            raise FileNotFoundError(split)  # no valid split: the benchmark does not evaluate
        return loader

    r = train(cfg, loader_factory=factory, do_export=False)
    recs = [json.loads(x) for x in (r.out_dir / "metrics.jsonl").read_text().splitlines()]
    recs = [x for x in recs if x["split"] == "train"]
    times = [x["time"] for x in recs]
    timed = recs[warmup + 1:]
    return {"tokens_per_s": rate(times, warmup, batch * seq),
            "data_wait": float(np.mean([x["data_wait"] for x in timed])),
            "mfu": float(np.mean([x["mfu"] for x in timed])) if timed and "mfu" in timed[0] else None,
            "loss_last": recs[-1]["loss"]}


def bench_hf(tmp: Path, model: dict, loader: StreamLoader, vocab: int, batch: int, seq: int, steps: int,
             warmup: int, mp: str) -> dict:
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments

    from pretrain.models import ModelConfig, build_encoder
    from pretrain.objectives.base import pad_vocab

    torch.manual_seed(0)
    m = build_encoder(ModelConfig(**model), pad_vocab(vocab))
    windows = []
    for i in range(steps):
        windows.extend({"input_ids": row.tolist()} for row in loader.batch(0, i % len(loader))["input_ids"])
    times: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.time())

    args = TrainingArguments(
        output_dir=str(tmp / "hf"), per_device_train_batch_size=batch, max_steps=steps, learning_rate=5e-4,
        warmup_steps=0, weight_decay=0.01, logging_steps=10_000, save_strategy="no", report_to=[],
        dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(), bf16=(mp == "bf16"),
        disable_tqdm=True, seed=0,
    )
    coll = DataCollatorForLanguageModeling(make_tokenizer(vocab), mlm=True, mlm_probability=0.15)
    tr = Trainer(model=m, args=args, train_dataset=windows, data_collator=coll, callbacks=[Stamp()])
    tr.train()
    return {"tokens_per_s": rate(times, warmup, batch * seq)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default=None, help="use runs/RUN/shards/char and its vocabulary (default: synthetic)")
    p.add_argument("--vocab-size", type=int, default=21128)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--gpu-steps", type=int, default=40)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--out", default="runs/bench/trainer.json")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)

    from bench.record import write_record
    from pipeline.log import print_table

    results, rows = [], []
    tmp = Path(tempfile.mkdtemp(prefix="bench_trainer_"))
    try:
        cases = [("cpu-tiny", {"size": "tiny"}, a.batch, a.seq, a.steps, "no")]
        if torch.cuda.is_available():
            cases = [("gpu-base-128", {"size": "base"}, 128, 128, a.gpu_steps, "bf16"),
                     ("gpu-base-512", {"size": "base"}, 32, 512, a.gpu_steps, "bf16")]
        for name, model, batch, seq, steps, mp in cases:
            need = (steps + 2) * batch * (seq - 1) + 1
            if a.run:
                ids, ws, vocab = real_stream(a.run, need)
                data = f"runs/{a.run} char shards"
            else:
                vocab = a.vocab_size
                ids, ws = synthetic_stream(need, vocab)
                data = f"synthetic, vocab {vocab}"
            loader = StreamLoader(ids, ws, seq, batch)
            write_vocab(tmp / name / "vocab" / "char", vocab)
            ours = bench_ours(tmp / name, model, loader, batch, seq, steps, a.warmup, mp)
            hf = bench_hf(tmp / name, model, loader, vocab, batch, seq, steps, a.warmup, mp)
            ratio = ours["tokens_per_s"] / hf["tokens_per_s"]
            rows.append([name, data, f"{batch}x{seq}", ours["tokens_per_s"], hf["tokens_per_s"], ratio,
                         100 * ours["data_wait"], "-" if ours["mfu"] is None else 100 * ours["mfu"]])
            base = {"case": name, "data": data, "batch": batch, "seq_len": seq}
            results.append({**base, "metric": "mlm_train_tokens_per_s", "value": ours["tokens_per_s"], "unit": "tokens/s",
                            "baseline": hf["tokens_per_s"], "baseline_name": "HF Trainer + DataCollatorForLanguageModeling",
                            "ratio": ratio})
            results.append({**base, "metric": "data_wait_share", "value": ours["data_wait"], "unit": "fraction of step time",
                            "baseline": None, "ratio": None})
            if ours["mfu"] is not None:
                results.append({**base, "metric": "mfu", "value": ours["mfu"], "unit": "fraction of dense bf16 peak",
                                "baseline": None, "ratio": None})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_table("trainer benchmark (MLM): this trainer vs HF Trainer, same model/data/batch",
                ["case", "data", "batch", "ours tok/s", "HF tok/s", "ratio", "data-wait %", "MFU %"], rows)
    write_record("trainer", results, out=a.out)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
