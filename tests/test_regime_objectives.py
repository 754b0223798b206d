"""Every encoder objective in the regime (issue 21 step 3): ``model.arch`` builds the encoders (and
the extra encoders) of the two-stream / multi-view objectives, a short pre-training on real shards
runs with a finite loss, and the export loads with :func:`pretrain.exports.load_export`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from pipeline.config import load_config
from pretrain.config import PretrainConfig
from pretrain.exports import load_export
from pretrain.trainer import train

from test_shards_helpers import corpus_docs, tok_config, write_corpus

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["model.hidden_size=32", "model.num_heads=2", "model.intermediate_size=64", "data.seq_len=64",
         "train.batch_size=4", "train.warmup_steps=0", "train.log_every=1", "train.eval_every=0",
         "train.eval_batches=1", "train.save_every=0", "train.tensorboard=false", "train.prefetch=0"]
# config stem -> whether the export needs the remote modelling code
ROWS = {"mlm_sgt": False, "amber": True, "hi_mvp": True, "al_mvp": False, "al_mvp_b": True, "clower": False,
        "ernie_gram_explicit": False, "ernie_gram_comprehensive": False, "ernie_gram_full": False}

_RUN: dict = {}


@pytest.fixture(scope="module")
def regime_run(tmp_path_factory):
    """``runs_root`` of a small real run ``t`` with the char, sgt, word and ngram kinds (the stages'
    own ``main_vocab`` / ``main_shards``)."""
    if "root" in _RUN:
        return _RUN["root"]
    from tokenization.shards import main_shards
    from tokenization.vocab_build import main_vocab

    root = tmp_path_factory.mktemp("regime_run")
    tr, va = corpus_docs()
    write_corpus(root / "t", tr, va)
    cfg = tok_config(root, "t", "kinds=[char,sgt,word,ngram]", "word.min_count=2")
    main_vocab(cfg)
    main_shards(cfg)
    _RUN["root"] = root
    return root


def _cfg(root: Path, stem: str, *extra: str) -> PretrainConfig:
    return load_config(PretrainConfig, ROOT / "configs" / "pretrain" / f"{stem}-tiny.yaml",
                       [f"runs_root={root}", "run=t", "name=" + "_".join([stem] + [e.split("=")[-1] for e in extra])]
                       + SMALL + list(extra))


@pytest.mark.slow
@pytest.mark.parametrize("stem", list(ROWS))
def test_objective_trains_in_modernbert_and_exports(regime_run, stem):
    cfg = _cfg(regime_run, stem, "train.steps=2")
    assert cfg.model.arch == "modernbert"  # the tiny configs are in the regime (configs/pretrain/mlm-tiny.yaml)
    r = train(cfg)
    assert r.exit_code == 0 and r.step == 2
    recs = [json.loads(x) for x in (r.out_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in recs if x["split"] == "train"]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    meta = json.loads((r.export_dir / "pretrain_meta.json").read_text())
    assert meta["chars_seen"] > 0
    ex = load_export(r.export_dir, trust_remote_code=ROWS[stem], tokenizer=False)
    conf = ex.model.config
    if ROWS[stem]:  # the multi-view models: their inner encoders are ModernBERT bodies
        assert conf.encoder_arch == "modernbert"
        inner = [type(m).__name__ for m in ex.model.modules()]
        assert "ModernBertModel" in inner and "BertModel" not in inner
    else:  # a stock ModernBERT export
        assert conf.model_type == "modernbert"
        ids = torch.tensor([[2, 7, 8, 9, 3]])
        with torch.no_grad():
            h = ex.model(input_ids=ids).last_hidden_state
        assert h.shape == (1, 5, 32) and torch.isfinite(h).all()


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["bert", "roberta_prelayernorm"])
def test_multiview_and_ernie_other_archs(regime_run, arch):
    """The same objectives build and take a step with the other two archs (the full generator rung of
    ERNIE-Gram and the two-view AMBERT, whose encoders all follow ``model.arch``)."""
    for stem in ("ernie_gram_full", "amber", "hi_mvp"):
        cfg = _cfg(regime_run, stem, "train.steps=1", f"model.arch={arch}")
        r = train(cfg)
        assert r.exit_code == 0
        ex = load_export(r.export_dir, trust_remote_code=ROWS[stem], tokenizer=False)
        want = {"bert": "BertModel", "roberta_prelayernorm": "RobertaPreLayerNormModel"}[arch]
        assert want in [type(m).__name__ for m in ex.model.modules()]


def test_ernie_gram_generator_and_positions_follow_arch():
    """ERNIE-Gram's generator is a body of ``model.arch``; explicit (gapped) position ids reach
    ModernBERT's rotary embedding: shifting every position by a constant leaves its states unchanged
    (relative positions), while a gap changes them."""
    from pretrain.models import ModelConfig, build_body, run_body

    cfg = ModelConfig(arch="modernbert", hidden_size=32, num_heads=2, intermediate_size=64, dropout=0.0)
    body = build_body(cfg, 64).eval()
    assert type(body).__name__ == "ModernBertModel"
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    pos = torch.arange(5)[None]
    with torch.no_grad():
        a = run_body(body, input_ids=ids, position_ids=pos)
        b = run_body(body, input_ids=ids, position_ids=pos + 7)
        c = run_body(body, input_ids=ids, position_ids=torch.tensor([[0, 1, 40, 41, 42]]))
    shift, gap = (a - b).abs().max().item(), (a - c).abs().max().item()
    assert shift < 1e-5 and gap > 100 * max(shift, 1e-7)
    rob = build_body(ModelConfig(arch="roberta_prelayernorm", hidden_size=32, num_heads=2, intermediate_size=64,
                                 dropout=0.0), 64, pad_id=0).eval()
    with torch.no_grad():  # explicit 0-based positions = RoBERTa's own numbering (from pad_id + 1)
        assert torch.allclose(run_body(rob, input_ids=ids, position_ids=pos), rob(input_ids=ids).last_hidden_state,
                              atol=1e-6)
