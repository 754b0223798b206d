"""What every objective declares on the ``Objective`` contract (``pretrain/objectives/base.py``):
its model-card note, the streams it reads and the fraction of positions it predicts, and the
places that read those declarations (model card, stream loading, dry-run memory estimate)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import load_config
from pretrain.config import PretrainConfig
from pretrain.models import ModelConfig
from pretrain.objectives.base import Objective, ObjectiveContext, build_objective, registered
from test_pretrain_synth import make_vocab

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "pretrain"


# ---- card note -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(registered()))
def test_every_objective_declares_its_card_note(name):
    cls = registered()[name]
    assert isinstance(cls.card_note, str) and len(cls.card_note.strip()) > 20, name
    assert cls.card_note != Objective.card_note


def test_model_card_reads_the_note_from_the_objective():
    from pretrain.model_card import objective_note, render_card

    card = render_card(repo_id="x/hi", meta={"objective": "hi_mvp", "model_type": "encoder"}, pretrain_config=None,
                       corpus_stats=None, vocab_stats=None, results=None, model_key=None, n_params=10)
    objective_section = card.split("## Objective", 1)[1].split("##", 1)[0]
    assert registered()["hi_mvp"].card_note in objective_section
    assert "reconstruction" in objective_section
    # a name no objective is registered under (an export of an objective since removed) still gets a line
    assert objective_note("gone") == "Objective `gone`."


# ---- streams -------------------------------------------------------------------------------------
def _cfg(name: str, *overrides: str) -> PretrainConfig:
    return load_config(PretrainConfig, CONFIGS / name, list(overrides))


@pytest.mark.parametrize("config,extra", [
    ("amber-tiny.yaml", ["word"]), ("hi_mvp-tiny.yaml", ["sgt"]), ("al_mvp-tiny.yaml", ["char"]),
    ("clower-tiny.yaml", ["word"]), ("mlm-tiny.yaml", []), ("ntp-tiny.yaml", []),
])
def test_configs_without_explicit_streams_get_the_objectives_streams(config, extra):
    from pretrain.data import stream_kinds

    cfg = _cfg(config)
    assert not cfg.data.extra_kinds  # the configs no longer repeat the objective's streams
    assert stream_kinds(cfg) == extra


def test_streams_follow_the_objective_options_and_explicit_kinds_still_load():
    from pretrain.data import stream_kinds

    assert stream_kinds(_cfg("amber-tiny.yaml", "objective_options.coarse_kind=sgt")) == ["sgt"]
    # AL-MVP reading b on char windows: the SGT view comes from coarse_kind, not from a config entry
    assert stream_kinds(_cfg("al_mvp-tiny.yaml", "objective_options.reading=b", "data.kind=char")) == ["sgt"]
    # explicit extra kinds are kept (first), the objective's are added once
    assert stream_kinds(_cfg("amber-tiny.yaml", "data.extra_kinds=[sgt,word]")) == ["sgt", "word"]
    assert stream_kinds(_cfg("mlm-tiny.yaml", "data.extra_kinds=[sgt]")) == ["sgt"]


def test_build_context_loads_the_declared_streams_vocabularies(tmp_path):
    from pretrain.data import build_context

    for kind in ("char", "word"):
        make_vocab(tmp_path / "vocab", kind)
    ctx = build_context(_cfg("amber-tiny.yaml", f"data.vocab_root={tmp_path / 'vocab'}"))
    assert ctx.primary == "char" and sorted(ctx.vocabs) == ["char", "word"]
    assert build_objective("amber", {}, ctx).coarse_vocab.kind == "word"


# ---- predicted fraction and the dry-run estimate ------------------------------------------------
def _ctx(tmp_path: Path) -> ObjectiveContext:
    from pretrain.data import vocab_info

    vdir = make_vocab(tmp_path)
    return ObjectiveContext(model=ModelConfig(hidden_size=32, num_heads=2, intermediate_size=64),
                            vocabs={"char": vocab_info("char", vdir)}, primary="char", seq_len=32)


def test_dry_run_logits_estimate_follows_the_declared_fraction(tmp_path):
    from pretrain.__main__ import memory_estimate

    ctx = _ctx(tmp_path)
    V = ctx.vocab.padded_size
    low = build_objective("mlm", {"mask_prob": 0.15}, ctx)
    high = build_objective("mlm", {"mask_prob": 0.3}, ctx)
    ntp = build_objective("ntp", {}, ctx)
    assert (low.predicted_fraction(), high.predicted_fraction(), ntp.predicted_fraction()) == (0.15, 0.3, 1.0)
    m_low, m_high, m_ntp = (memory_estimate(o, 4, 32, 4) for o in (low, high, ntp))
    assert m_low["logits"] == pytest.approx(4 * 32 * 0.15 * V * 4)
    assert m_high["logits"] == pytest.approx(2 * m_low["logits"])
    assert m_ntp["logits"] == pytest.approx(4 * 32 * V * 4)
    # the other terms do not depend on the fraction
    assert m_low["activations"] == m_high["activations"] and m_low["state"] == m_high["state"]

    class Half(type(low)):  # an objective that declares a different fraction changes the estimate
        def predicted_fraction(self) -> float:
            return 0.5

    half = Half(low.cfg, ctx)
    assert memory_estimate(half, 4, 32, 4)["logits"] == pytest.approx(4 * 32 * 0.5 * V * 4)


def test_dry_run_prints_the_declared_fraction(tmp_path, capsys):
    from pretrain.__main__ import main

    make_vocab(tmp_path / "vocab")
    args = ["--config", str(CONFIGS / "mlm-tiny.yaml"), f"data.vocab_root={tmp_path / 'vocab'}",
            f"runs_root={tmp_path}", "objective_options.mask_prob=0.25"]
    assert main(args + ["--dry-run"]) == 0
    assert "25% of each window" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(registered()))
def test_every_objective_declares_a_fraction_in_range(name, tmp_path):
    from pretrain.objectives.base import objective_config

    cls = registered()[name]
    cfg = objective_config(name, {})
    assert all(isinstance(k, str) and k for k in cls.streams(cfg))
    if cls.predicted_fraction is Objective.predicted_fraction:
        assert cls.model_type == "decoder", f"{name}: an encoder objective must declare its predicted fraction"
