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
    # the fine-tuning adapter of the export (pretrain_meta.json) encodes single texts and pairs
    from finetune.encoders import load_encoder

    enc = load_encoder(r.export_dir, trust_remote_code=ROWS[stem]).eval()
    with torch.no_grad():
        e = enc.encode(["人民日报发表社论", "今天天气很好"], ["我们", "北京大学"], max_chars=32)
    assert e.char_states_a.shape[:2] == (2, 8) and e.char_mask_a.sum().item() == 8 + 6
    assert torch.isfinite(e.pooled).all() and torch.isfinite(e.char_states_b).all()


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["bert", "roberta_prelayernorm"])
def test_multiview_and_ernie_other_archs(regime_run, arch):
    """The same objectives build and take a step with the other two archs (the full generator rung of
    ERNIE-Gram, the two-view models, CLOWER and AL-MVP, whose encoders all follow ``model.arch``)."""
    for stem in ("ernie_gram_full", "amber", "hi_mvp", "clower", "al_mvp", "al_mvp_b"):
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


def _make(work: Path, target: str, *args: str) -> str:
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = ["make", "-f", str(ROOT / "Makefile"), "--no-print-directory", target, f"PY={sys.executable}",
           f"LAUNCH={sys.executable}", f"VENV={work / 'venv'}", *args]
    p = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=1500)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout + p.stderr


@pytest.mark.slow
def test_family_study_through_make_and_resume(regime_run, tmp_path):
    """``make study-multivocab`` on a small real run: pre-trains every (row, seed) at one character
    budget into runs/RUN/pretrain/NAME-sSEED/, runs the study (random-init twins, per-model lr chosen
    on dev, rows table with characters seen and claims); a second call pre-trains and computes
    nothing; after one pre-training is lost, only that row is redone."""
    import os
    import time

    import yaml

    work = tmp_path / "w"
    work.mkdir()
    for name in ("configs", "pyproject.toml"):
        os.symlink(ROOT / name, work / name)
    os.symlink(regime_run, work / "runs")
    (work / "venv").mkdir()
    run = regime_run / "t"
    for f in (run / "corpus" / "stats.json", run / "vocab" / ".done", run / "shards" / ".done",
              work / "venv" / ".installed"):  # the earlier stages are done, in order
        f.touch()
        time.sleep(0.01)
    study = yaml.safe_load((ROOT / "configs" / "studies" / "multivocab.yaml").read_text())
    keep = ("mlm", "amber", "al_mvp", "mlm-rand", "amber-rand")
    study["models"] = [m for m in study["models"] if m["name"] in keep]
    for m in study["models"]:
        if m.get("twin") not in keep:
            m.pop("twin", None)
    study["evaluations"]["finetune"]["options"] = {
        "tasks": [{"name": "pd_pos", "max_train": 24, "max_eval": 24, "max_chars": 32}],
        "lrs": [1.0e-3, 3.0e-3], "epochs": [1], "batch_size": 8}
    (work / "study.yaml").write_text(yaml.safe_dump(study, allow_unicode=True))
    args = ["RUN=t", "SEEDS=0 1", "MULTIVOCAB_ROWS=mlm amber al_mvp", "MULTIVOCAB_STUDY=study.yaml",
            "STUDY_CHARS=600", "SEEDED_ARGS=" + " ".join(SMALL)]
    out = _make(work, "study-multivocab", *args)
    assert out.count("-m pretrain") == 6
    metas = {}
    for n in ("mlm", "amber", "al_mvp"):
        for s in (0, 1):
            m = json.loads((run / "pretrain" / f"{n}-s{s}" / "export" / "pretrain_meta.json").read_text())
            assert m["config"]["train"]["chars"] == 600 and m["config"]["train"]["seed"] == s
            assert m["config"]["model"]["arch"] == "modernbert"
            metas[n, s] = m
    rep = (run / "studies" / "multivocab" / "report.md").read_text()
    res = json.loads((run / "studies" / "multivocab" / "results.json").read_text())
    rows = {r["model"]: r for r in res["rows"]}
    assert rows["mlm"]["chars_seen"]["values"] == [metas["mlm", 0]["chars_seen"], metas["mlm", 1]["chars_seen"]]
    assert rows["amber-rand"]["chars_seen"]["mean"] == 0 and rows["amber"]["chars_seen"]["mean"] >= 600
    assert "characters seen" in rep and "AMBERT (Zhang & Li, 2021)" in rep
    assert "| amber vs amber-rand |" in rep and "| mlm vs mlm-rand |" in rep and "| amber vs mlm |" in rep
    assert "| mlm-rand vs mlm |" not in rep  # twins are compared with their pre-trained row, not the baseline
    ft = res["aggregate"]["finetune"]
    assert set(ft) == set(keep) and all(ft[m]["pd_pos"]["n"] == 2 for m in keep)
    # per-model selection: one lr per model over both seeds
    recs = [json.loads((work / p).read_text()) for p in res["records"]]
    assert recs and all(r["results"].get("pd_pos_grid") for r in recs)
    # resume: nothing to do
    out2 = _make(work, "study-multivocab", *args)
    assert "-m pretrain" not in out2 and "computed" not in out2
    # one pre-training lost its export: only that one is pre-trained again and re-evaluated
    import shutil

    shutil.rmtree(run / "pretrain" / "al_mvp-s1" / "export")
    out3 = _make(work, "study-multivocab", *args)
    assert out3.count("-m pretrain") == 1 and "al_mvp-s1" in out3
    assert (run / "pretrain" / "al_mvp-s1" / "export" / "pretrain_meta.json").is_file()
    # the other family: pre-training folders as dirs (ngram_recovery reads the explicit head from the
    # checkpoint), one shared twin; mlm's pre-trainings are re-used
    ce = yaml.safe_load((ROOT / "configs" / "studies" / "clower_ernie.yaml").read_text())
    ce["models"] = [m for m in ce["models"] if m["name"] in ("mlm", "ernie_gram_explicit", "mlm-rand")]
    ce["evaluations"]["probes"] = {"max_train": 40, "max_test": 30, "probe_steps": 3, "max_types": 30,
                                   "masked_types": 10, "masked_queries": 20}
    ce["evaluations"]["ngram_recovery"]["batches"] = 1
    ce["evaluations"]["finetune"]["options"] = study["evaluations"]["finetune"]["options"]
    ce["only"] = {"ngram_recovery": ["mlm", "ernie_gram_explicit"]}
    (work / "ce.yaml").write_text(yaml.safe_dump(ce, allow_unicode=True))
    out4 = _make(work, "study-clower-ernie", *args[:2], "CLOWER_ERNIE_ROWS=mlm ernie_gram_explicit",
                 "CLOWER_ERNIE_STUDY=ce.yaml", *args[4:])
    assert out4.count("-m pretrain") == 2  # ernie_gram_explicit-s0/s1 only
    # the shared rows (same names and folders as multivocab.yaml): fine-tuned once per run, read back
    for m in ("mlm", "mlm-rand"):
        for s in (0, 1):
            assert f"finetune {m} seed {s}: stored, fresh" in out4
    assert "finetune ernie_gram_explicit seed 0: computed" in out4
    res = json.loads((run / "studies" / "clower_ernie" / "results.json").read_text())
    assert set(res["aggregate"]) == {"probes", "ngram_recovery", "finetune"}
    assert res["aggregate"]["ngram_recovery"]["ernie_gram_explicit"]["ngram_exact"]["n"] == 2
    rep = (run / "studies" / "clower_ernie" / "report.md").read_text()
    assert "| ernie_gram_explicit vs mlm-rand |" in rep and "ERNIE-Gram (Xiao et al., NAACL 2021)" in rep
