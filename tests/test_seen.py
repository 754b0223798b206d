"""Real tokens and characters seen (pretrain/seen.py): counts, resume, and a run budgeted in characters."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.config import load_config
from pretrain.config import PretrainConfig
from pretrain.seen import Seen, apply_char_budget, batch_counts, chars_per_window
from pretrain.trainer import train
from test_shards_helpers import built_run
from tokenization.loader import PackedLoader


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return built_run(tmp_path_factory)


def test_counts_are_real_not_nominal(root):
    ld = PackedLoader(root / "t" / "shards", "sgt", "valid", 64, 4, shuffle=False, extra_kinds=("char",))
    b = min((ld.batch(0, i) for i in range(len(ld))), key=lambda x: int(x["attention_mask"].sum()))
    tokens, chars = batch_counts(b)
    assert tokens == int(b["attention_mask"].sum()) < 4 * 64  # trimming / the last window leave padding
    assert chars == int(b["char_len"].astype(np.int64).sum()) == int(b["char.char_len"].astype(np.int64).sum())
    s = Seen(None, nominal_per_step=4 * 64)
    s.add(b)
    s.add(b)
    s.end_step(lambda v: v * 2)  # two processes with the same counts
    assert s.state() == {"tokens_seen": 4 * tokens, "chars_seen": 4 * chars, "tokens_nominal": 4 * 64}
    # resume: real counts continue; an older checkpoint's nominal tokens_seen stays nominal
    assert Seen(s.state(), 256).state() == s.state()
    assert Seen({"tokens_seen": 1000}, 256).state() == {"tokens_seen": 0, "chars_seen": 0, "tokens_nominal": 1000}


def test_char_budget_sets_the_steps(root):
    from pretrain.config import TrainConfig

    ld = PackedLoader(root / "t" / "shards", "char", "train", 64, 8, seed=0)
    cpw = chars_per_window(ld)
    assert 40 < cpw < 90  # ~63 characters per 63-token char window
    t = TrainConfig(batch_size=8, steps=500, warmup_steps=1, chars=20_000)
    steps = apply_char_budget(t, ld)
    assert t.steps == steps == int(np.ceil(20_000 / (cpw * 8)))
    # the estimate is the characters the training order really delivers, within a few percent
    seen = sum(batch_counts(ld.batch(0, i))[1] for i in range(steps))
    assert abs(seen - 20_000) < 0.05 * 20_000
    with pytest.raises(Exception, match="warmup"):
        apply_char_budget(TrainConfig(batch_size=8, steps=500, warmup_steps=400, chars=20_000), ld)


def test_chars_per_window_is_the_epoch_mean_not_a_prefix(root):
    """The budget's estimate reads the whole of epoch 0 (up to CPW_WINDOWS windows). The old one read
    the first 256 windows: on the demo corpus 1-4 % off, so a study's rows saw different text."""
    ld = PackedLoader(root / "t" / "shards", "char", "train", 8, 8, seed=3)  # short windows: many of them
    n = len(ld.epoch_draws(0)[0])
    assert n > 256
    exact = sum(batch_counts(ld.window(0, p))[1] for p in range(n)) / n
    assert chars_per_window(ld) == pytest.approx(exact, rel=1e-12)
    prefix = sum(batch_counts(ld.window(0, p))[1] for p in range(256)) / 256
    assert chars_per_window(ld, 256) == pytest.approx(prefix, rel=1e-12)


@pytest.mark.slow
def test_training_budgeted_in_characters_logs_real_counts(root, tmp_path):
    cfg = load_config(PretrainConfig, None, [
        f"runs_root={root}", "run=t", f"name=chars_{tmp_path.name}", "objective=hi_mvp", "data.kind=char",
        "data.extra_kinds=[sgt]", "data.seq_len=64", "model.hidden_size=32", "model.num_heads=2",
        "model.num_layers=2", "model.intermediate_size=64", "train.batch_size=4", "train.chars=700",
        "train.warmup_steps=1", "train.log_every=1", "train.eval_every=0", "train.save_every=0",
        "train.tensorboard=false"])
    torch.manual_seed(0)
    r = train(cfg)
    assert r.exit_code == 0 and 2 <= r.step <= 5  # ~60 characters per window, 4 windows a step
    recs = [json.loads(x) for x in (r.out_dir / "metrics.jsonl").read_text().splitlines()]
    tr = [x for x in recs if x["split"] == "train"]
    assert [x["step"] for x in tr] == list(range(1, r.step + 1))
    assert all(x["tokens_nominal"] == 4 * 64 * x["step"] for x in tr)
    steps_chars = np.diff([0] + [x["chars_seen"] for x in tr])
    assert (steps_chars > 0).all() and all(0 < x["tokens_seen"] <= x["tokens_nominal"] for x in tr)
    assert 700 <= tr[-1]["chars_seen"] < 700 + 4 * 64 * 2
    meta = json.loads((r.export_dir / "pretrain_meta.json").read_text())
    assert meta["chars_seen"] == tr[-1]["chars_seen"] and meta["tokens_seen"] == tr[-1]["tokens_seen"]
