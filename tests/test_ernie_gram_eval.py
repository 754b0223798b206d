"""Whole-n-gram recovery scoring (evaluate/ngram_recovery.py) on a hand-built batch with stub models
whose predictions are known, so the exact-match counting is checked, not the models."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from evaluate.ngram_recovery import Contiguous, Explicit

CLS, SEP, PAD, MASK = 2, 3, 0, 4
# [CLS] 10 11 12 | 13 | 14 15 | [SEP] 16 17 ; n-grams 5 (10 11 12), 2 (14 15), 7 (16 17)
IDS = torch.tensor([[CLS, 10, 11, 12, 13, 14, 15, SEP, 16, 17]])
ULEN = torch.tensor([[1, 3, 0, 0, 1, 2, 0, 1, 2, 0]])
UNG = torch.tensor([[-1, 5, -1, -1, -1, 2, -1, -1, 7, -1]])
SPECIAL = torch.isin(IDS, torch.tensor([CLS, SEP, PAD]))
VALID = torch.ones_like(IDS, dtype=torch.bool)
CHOSEN = torch.zeros_like(IDS, dtype=torch.bool)
CHOSEN[0, [1, 4, 8]] = True  # two n-grams and one single token


class StubMLM(torch.nn.Module):
    """Predicts the true token everywhere except at ``wrong`` positions."""

    def __init__(self, wrong):
        super().__init__()
        self.wrong = wrong

    def forward(self, input_ids, attention_mask=None):
        logits = torch.nn.functional.one_hot(IDS, 64).float()
        for p in self.wrong:
            logits[0, p] = torch.nn.functional.one_hot(torch.tensor(9), 64).float()
        return SimpleNamespace(logits=logits)


def contiguous(wrong):
    c = Contiguous.__new__(Contiguous)
    c.model = StubMLM(wrong)
    return c.score(IDS, SPECIAL, VALID, ULEN, UNG, CHOSEN, MASK, PAD, cap=100)


def test_contiguous_exact_match_needs_every_token():
    assert contiguous([]) == {"ngrams": 2, "exact": 2, "tokens": 5, "tokens_ok": 5}
    r = contiguous([2])  # one wrong token inside n-gram 5
    assert r["exact"] == 1 and r["tokens_ok"] == 4
    assert contiguous([4])["exact"] == 2  # the masked single token does not count as an n-gram
    assert contiguous([5])["exact"] == 2  # an unmasked n-gram does not count either


class StubErnie:
    """Stands in for the objective: predicts n-gram ``coarse`` ids per slot order and ``fine`` ids."""

    def __init__(self, coarse, fine, generator=False, on_mask=None, sampled=None):
        self.fine_size, self.n_ngrams, self.query_mode = 64, 10, "ngrams"
        self.cfg = SimpleNamespace(positions="original", explicit=True, generator=generator)
        self._coarse, self._fine, self._on_mask, self._sampled = coarse, fine, on_mask, sampled
        self.inputs = []

    def predict_masked(self, b, slot_input="trained"):
        self.inputs.append(slot_input)
        coarse = torch.full_like(b["main_ids"], -1)
        slots = (b["coarse_labels"] != -100).nonzero(as_tuple=True)
        coarse[slots] = torch.tensor(self._on_mask if slot_input == "mask" else self._coarse)
        fine = torch.full_like(b["query_pos"], -1)
        fine[b["query_valid"]] = torch.tensor(self._fine)
        out = {"coarse": coarse, "fine": fine}
        if self.cfg.generator and slot_input == "trained":
            assert b["sample_u"].shape == b["main_ids"].shape  # uniforms for the generator's sample
            out["sampled"] = torch.full_like(b["main_ids"], -1)
            out["sampled"][slots] = torch.tensor(self._sampled)
        return out


def explicit(coarse, fine, **kw):
    e = Explicit.__new__(Explicit)
    e.obj = StubErnie(coarse, fine, **kw)
    return e.score(IDS, SPECIAL, VALID, ULEN, UNG, CHOSEN, MASK, PAD, cap=10)


def test_explicit_exact_match_by_ngram_id_and_by_queries():
    # slots in order: n-gram 5 (label 64+5), token 13, n-gram 7 (64+7); queries: 10 11 12 16 17
    r = explicit([69, 13, 71], [10, 11, 12, 16, 17])
    assert r == {"ngrams": 2, "exact": 2, "queries_exact": 2, "tokens": 5, "tokens_ok": 5}
    r = explicit([69, 99, 70], [10, 11, 12, 16, 9])
    assert r["exact"] == 1 and r["queries_exact"] == 1 and r["tokens_ok"] == 4


def test_generator_rung_scored_on_its_trained_input_with_bias_reported():
    # the generator rung's main model saw generator samples at the slots, never [MASK]: it is scored
    # on a sample; the [MASK]-input number and the share of samples equal to the original sit beside
    e = Explicit.__new__(Explicit)
    e.obj = StubErnie([69, 13, 71], [10, 11, 12, 16, 17], generator=True, on_mask=[69, 13, 99],
                      sampled=[69, 13, 30])
    r = e.score(IDS, SPECIAL, VALID, ULEN, UNG, CHOSEN, MASK, PAD, cap=10)
    assert e.obj.inputs == ["trained", "mask"]
    assert r["ngrams"] == 2 and r["exact"] == 2 and r["exact_mask_input"] == 1 and r["sample_is_original"] == 1
    # the rungs without a generator are scored on [MASK] once, as trained
    e2 = Explicit.__new__(Explicit)
    e2.obj = StubErnie([69, 13, 71], [10, 11, 12, 16, 17])
    r2 = e2.score(IDS, SPECIAL, VALID, ULEN, UNG, CHOSEN, MASK, PAD, cap=10)
    assert e2.obj.inputs == ["trained"] and "sample_is_original" not in r2


class CountingScorer:
    """Scores every masked n-gram as recovered and records the chosen units it was given."""

    method = "contiguous"
    n_ngrams = None

    def __init__(self):
        self.chosen = []

    def score(self, ids, special, valid, ulen, ung, chosen, mask_id, pad_id, cap):
        from pretrain.objectives.ernie_gram import normalise_units

        self.chosen.append(chosen.clone())
        assert not (chosen & (special | ~valid)).any()  # only real units are masked
        _, ul, _ = normalise_units(ulen, ung, special, valid, cap)
        starts = chosen & (ul >= 2)
        return {"ngrams": int(starts.sum()), "exact": int(starts.sum()) - 1}


def test_evaluation_loop_over_real_shards(tmp_path_factory, monkeypatch):
    """The registered evaluation on shards built by the shard stage: the same units are masked for
    every model at a seed (another seed picks others), and counts are summed over the batches."""
    import evaluate.ngram_recovery as nr
    from evaluate.base import EvalContext, build_evaluation
    from test_shards_helpers import built_run

    shards = built_run(tmp_path_factory) / "t" / "shards"
    scorers = []

    def fake_load(d, trust_remote_code=False):
        scorers.append(CountingScorer())
        return scorers[-1], d

    monkeypatch.setattr(nr, "load_scorer", fake_load)
    ev = build_evaluation("ngram_recovery", {"shards": str(shards), "batches": 3, "batch_size": 2, "seq_len": 32,
                                             "max_ngrams": 10**9, "mask_prob": 0.5})
    r0 = ev.run(tmp_path_factory.mktemp("m"), 0, EvalContext())
    r0b = ev.run(tmp_path_factory.mktemp("m"), 0, EvalContext())
    r1 = ev.run(tmp_path_factory.mktemp("m"), 1, EvalContext())
    assert r0["batches"] == 3 and len(scorers[0].chosen) == 3
    assert all((a == b).all() for a, b in zip(scorers[0].chosen, scorers[1].chosen))
    assert any((a != b).any() for a, b in zip(scorers[0].chosen, scorers[2].chosen))
    assert r0 == r0b and r0["ngrams"] > 3
    assert r0["ngram_exact"] == pytest.approx(100 * (r0["ngrams"] - 3) / r0["ngrams"])  # one miss per batch
