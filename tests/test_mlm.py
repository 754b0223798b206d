"""Whole-word masking statistics and the sparse MLM head."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pretrain.objectives.mlm import whole_word_mask, word_boundaries
from test_pretrain_synth import CLS, MASK, PAD, SEP, VOCAB_SIZE, SyntheticLoader


def _batch(n=256, T=128):
    b = SyntheticLoader(None, "char", "train", T, n, n_docs=2000).batch(0, 0)
    ids = torch.from_numpy(b["input_ids"])
    ids[-3:, -10:] = PAD  # a little padding as at the end of a split
    special = torch.from_numpy(np.isin(ids.numpy(), [PAD, CLS, SEP]))
    return ids, torch.from_numpy(b["word_start"]), special


RANDOM_IDS = torch.arange(5, VOCAB_SIZE)


def _mask(ids, ws, special, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    return whole_word_mask(ids, ws, special, g, mask_id=MASK, random_ids=RANDOM_IDS, **kw)


def _words(ws, special):
    start = word_boundaries(ws.clone(), special)
    return start.long().cumsum(1) - 1, start


def test_rate_whole_words_and_specials():
    ids, ws, special = _batch()
    out, labels = _mask(ids, ws, special)
    sel = labels != -100
    word_id, start = _words(ws, special)
    # specials never selected, never changed
    assert not sel[special].any()
    assert (out[special] == ids[special]).all()
    # labels hold the original ids
    assert (labels[sel] == ids[sel]).all()
    for b in range(ids.shape[0]):
        wid = word_id[b]
        elig_words = torch.unique(wid[start[b] & ~special[b]])
        chosen = torch.unique(wid[sel[b]])
        # whole words: every token of a chosen word is selected
        in_chosen = torch.isin(wid, chosen) & ~special[b]
        assert (sel[b] == in_chosen).all()
        # exactly round(15 % of the eligible words), at least one
        assert len(chosen) == max(1, int(torch.round(torch.tensor(0.15 * len(elig_words))).item()))


def test_80_10_10_per_word():
    ids, ws, special = _batch(512)
    out, labels = _mask(ids, ws, special, seed=3)
    sel = labels != -100
    word_id, _ = _words(ws, special)
    key = (torch.arange(ids.shape[0])[:, None] * ids.shape[1] + word_id)[sel]
    is_mask = (out[sel] == MASK).float()
    same = (out[sel] == ids[sel]).float()
    uniq, inv = torch.unique(key, return_inverse=True)
    n = torch.zeros(len(uniq)).index_add_(0, inv, torch.ones_like(is_mask))
    m = torch.zeros(len(uniq)).index_add_(0, inv, is_mask)
    s = torch.zeros(len(uniq)).index_add_(0, inv, same)
    all_mask = (m == n)
    # the decision is per word: a word is either entirely [MASK] or has no [MASK]
    assert ((m == 0) | all_mask).all()
    frac_mask = all_mask.float().mean().item()
    frac_keep = (s == n).float().mean().item()  # kept (or a random draw equal to the original)
    frac_rand = 1 - frac_mask - frac_keep
    assert abs(frac_mask - 0.8) < 0.03, frac_mask
    assert abs(frac_keep - 0.1) < 0.03, frac_keep
    assert abs(frac_rand - 0.1) < 0.03, frac_rand
    # random replacements never produce special tokens
    assert not torch.isin(out[sel & (out != MASK)], torch.tensor([PAD, 1, CLS, SEP])).any()


def test_ngram_spans_and_determinism():
    ids, ws, special = _batch(128)
    out1, lab1 = _mask(ids, ws, special, seed=5, max_ngram=3)
    out2, lab2 = _mask(ids, ws, special, seed=5, max_ngram=3)
    assert torch.equal(out1, out2) and torch.equal(lab1, lab2)
    sel = lab1 != -100
    assert not sel[special].any()
    word_id, start = _words(ws, special)
    n_elig = (start & ~special).sum().item()
    n_sel_words = sum(len(torch.unique(word_id[b][sel[b]])) for b in range(ids.shape[0]))
    assert 0.10 < n_sel_words / n_elig < 0.17  # about mask_prob (overlapping spans lower it a little)
    # spans: more adjacent selected words than with unigram masking
    _, lab_u = _mask(ids, ws, special, seed=5)
    adj = lambda s: (s[:, 1:] & s[:, :-1] & start[:, 1:]).sum().item()
    assert adj(sel) > adj(lab_u != -100)
    out3, _ = _mask(ids, ws, special, seed=6, max_ngram=3)
    assert not torch.equal(out1, out3)


def test_token_level_option():
    ids, ws, special = _batch(64)
    _, labels = _mask(ids, ws, special, whole_word=False)
    n_tok = (~special).sum(1).double()
    assert torch.equal((labels != -100).sum(1), torch.round(n_tok * 0.15).long().clamp(min=1))


def test_sparse_head_only_at_masked_positions(tmp_path):
    from pretrain.models import ModelConfig
    from pretrain.objectives.base import ObjectiveContext, build_objective
    from pretrain.data import vocab_info
    from test_pretrain_synth import make_vocab

    vdir = make_vocab(tmp_path)
    ctx = ObjectiveContext(model=ModelConfig(hidden_size=32, num_heads=2, intermediate_size=64),
                           vocabs={"char": vocab_info("char", vdir)}, primary="char", seq_len=32)
    obj = build_objective("mlm", {}, ctx)
    raw = SyntheticLoader(None, "char", "train", 32, 4).batch(0, 0)
    batch = obj.collate(raw, torch.Generator().manual_seed(0))
    seen = []
    h = obj.model.cls.predictions.decoder.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    out = obj(batch)
    h.remove()
    assert seen == [(batch["mlm_positions"].numel(), obj.model.config.vocab_size)]
    assert out["loss"].requires_grad and torch.isfinite(out["loss"])
    # same loss as the dense HF head restricted to the masked positions
    labels = torch.full((4 * 32,), -100)
    labels[batch["mlm_positions"]] = batch["mlm_labels"]
    obj.eval()
    dense = obj.model(input_ids=batch["input_ids"], labels=labels.view(4, 32)).loss
    assert torch.allclose(obj(batch)["loss"], dense, atol=1e-5)
    with pytest.raises(Exception):
        build_objective("mlm", {"mask_prob": 2.0}, ctx)
