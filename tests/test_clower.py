"""CLOWER objective: the contrastive loss on hand-built vectors, false negatives, alignment,
single-character words, and the export's equality with the mlm baseline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pretrain.models import ModelConfig, count_parameters
from pretrain.objectives.base import ObjectiveContext, VocabInfo, build_objective
from pretrain.objectives.clower import align_to_words, contrastive_loss, pool

CLS, SEP, PAD, MASK = 2, 3, 0, 4


def ctx() -> ObjectiveContext:
    vocabs = {
        "char": VocabInfo("char", "unused", 60, 0, 1, 2, 3, 4),
        "word": VocabInfo("word", "unused", 40, 0, 1, 2, 3, 4),
    }
    m = ModelConfig(size="tiny", num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64, dropout=0.0)
    return ObjectiveContext(model=m, vocabs=vocabs, primary="char", seq_len=10)


def test_loss_known_positives_and_negatives():
    # orthogonal one-hot pairs: cos(c_j, u_j) = 1, cos(c_j, u_k) = 0
    n, tau = 3, 0.5
    c = torch.eye(n)
    u = torch.eye(n) * 2.0  # scale does not matter (cosine)
    ids = torch.tensor([7, 8, 9])
    w = torch.ones(n)
    got = contrastive_loss(c, u, ids, w, tau)
    expect = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + (n - 1)))
    assert got.item() == pytest.approx(expect, rel=1e-6)
    # a hand-computed non-trivial case: c_0 is at 60 degrees from u_0 and at 90 from u_1
    c = torch.tensor([[1.0, math.sqrt(3)], [0.0, 1.0]])
    u = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    got = contrastive_loss(c, u, torch.tensor([1, 2]), torch.ones(2), 1.0)
    l0 = -math.log(math.exp(0.5) / (math.exp(0.5) + math.exp(math.sqrt(3) / 2)))
    l1 = -math.log(math.exp(1.0) / (math.exp(1.0) + math.exp(0.0)))
    assert got.item() == pytest.approx((l0 + l1) / 2, rel=1e-6)


def test_false_negatives_are_masked():
    tau = 0.5
    c = torch.eye(3)
    u = torch.eye(3)
    # words 0 and 2 are the same type: for row 0, u_2 is not a negative (and vice versa)
    got = contrastive_loss(c, u, torch.tensor([5, 6, 5]), torch.ones(3), tau)
    e = math.exp(1 / tau)
    l_dup = -math.log(e / (e + 1))       # rows 0 and 2: one negative left (u_1)
    l_mid = -math.log(e / (e + 2))       # row 1: both others are negatives
    assert got.item() == pytest.approx((2 * l_dup + l_mid) / 3, rel=1e-6)
    # a duplicate that is *identical* to the positive would otherwise add a huge false negative
    u_dup = torch.stack([u[0], u[1], u[0]])
    masked = contrastive_loss(c[[0, 1, 0]], u_dup, torch.tensor([5, 6, 5]), torch.ones(3), tau)
    unmasked = contrastive_loss(c[[0, 1, 0]], u_dup, torch.tensor([5, 6, 7]), torch.ones(3), tau)
    assert masked.item() < unmasked.item()


def test_weights_and_symmetric():
    c = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    u = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    ids = torch.tensor([1, 2])
    per_row = [contrastive_loss(c[[i]], u[[i]], ids[[i]], torch.ones(1), 1.0) for i in range(2)]  # 1 x 1: 0
    assert all(abs(p.item()) < 1e-6 for p in per_row)
    w = torch.tensor([1.0, 0.1])
    logits = torch.nn.functional.normalize(c) @ torch.nn.functional.normalize(u).t()
    rows = -torch.log_softmax(logits, 1).diagonal()
    cols = -torch.log_softmax(logits, 0).diagonal()
    assert contrastive_loss(c, u, ids, w, 1.0).item() == pytest.approx(((rows * w).sum() / w.sum()).item(), rel=1e-6)
    sym = 0.5 * ((rows * w).sum() + (cols * w).sum()) / w.sum()
    assert contrastive_loss(c, u, ids, w, 1.0, symmetric=True).item() == pytest.approx(sym.item(), rel=1e-6)


def test_alignment_and_pooling():
    # chars: [CLS] 中 国 人 ab(2 chars) [SEP] 好 ; words: [CLS] 中国 人ab?? -> use: 中国 | 人 | ab | [SEP] | 好
    char_len = torch.tensor([[0, 1, 1, 1, 2, 0, 1]])
    word_len = torch.tensor([[0, 2, 1, 2, 0, 1, 0]])
    assert align_to_words(char_len, word_len).tolist() == [[-1, 1, 1, 2, 3, -1, 5]]
    states = torch.arange(7 * 2, dtype=torch.float32).view(7, 2)
    tok_pos = torch.tensor([1, 2, 3, 4, 6])
    tok_word = torch.tensor([0, 0, 1, 2, 3])
    assert pool(states, tok_pos, tok_word, 4, "mean").tolist() == [[3.0, 4.0], [6.0, 7.0], [8.0, 9.0], [12.0, 13.0]]
    assert pool(states, tok_pos, tok_word, 4, "max")[0].tolist() == [4.0, 5.0]
    assert pool(states, tok_pos, tok_word, 4, "first")[0].tolist() == [2.0, 3.0]


def hand_batch():
    # [CLS] c c c c [SEP] c c c [PAD] ; words: (2 chars) (1 char) (1 char) [SEP] (3 chars)
    ids = np.array([[CLS, 10, 11, 12, 13, SEP, 14, 15, 16, PAD]] * 2)
    char_len = np.array([[0, 1, 1, 1, 1, 0, 1, 1, 1, 0]] * 2, dtype=np.int16)
    special = np.isin(ids, [CLS, SEP, PAD])
    word_start = np.array([[1, 1, 0, 1, 1, 1, 1, 0, 0, 1]] * 2, dtype=bool)
    w_ids = np.array([[CLS, 20, 21, 22, SEP, 23, PAD], [CLS, 20, 24, 1, SEP, 25, PAD]])  # 1 = [UNK]
    w_len = np.array([[0, 2, 1, 1, 0, 3, 0]] * 2, dtype=np.int16)
    return {"input_ids": ids, "char_len": char_len, "special_mask": special, "word_start": word_start,
            "attention_mask": (ids != PAD).astype(np.int64), "word.input_ids": w_ids, "word.char_len": w_len,
            "word.attention_mask": (w_ids != PAD).astype(np.int64)}


@pytest.mark.parametrize("single,expect_n", [("keep", 7), ("downweight", 7), ("exclude", 4)])
def test_collate_words_and_single_chars(single, expect_n):
    obj = build_objective("clower", {"single_char": single}, ctx())
    b = obj.collate(hand_batch(), torch.Generator().manual_seed(0))
    # row 0: 20 21 22 23 ; row 1: 20 24 25 ([UNK] dropped) -> 7 words, 3 of them single-char in "keep"
    ids = b["cl_word_ids"].tolist()
    if single == "exclude":
        assert ids == [20, 23, 20, 25]
    else:
        assert ids == [20, 21, 22, 23, 20, 24, 25]
        w = b["cl_weight"].tolist()
        single_w = 1.0 if single == "keep" else 0.1
        assert w == pytest.approx([1, single_w, single_w, 1, 1, single_w, 1])
    assert len(ids) == expect_n
    # every word's char tokens are the ones covering its characters
    n_tok = torch.bincount(b["cl_tok_word"], minlength=expect_n).tolist()
    assert n_tok == ([2, 1, 1, 3, 2, 1, 3] if single != "exclude" else [2, 3, 2, 3])


def test_fallback_pieces_excluded():
    b = hand_batch()
    # row 1's last word (3 chars) is unknown to the word vocabulary: spelled as 3 pieces
    b["word.input_ids"] = np.array([[CLS, 20, 21, 22, SEP, 23, PAD, PAD, PAD],
                                    [CLS, 20, 24, 26, SEP, 30, 31, 32, PAD]])
    b["word.char_len"] = np.array([[0, 2, 1, 1, 0, 3, 0, 0, 0], [0, 2, 1, 1, 0, 1, 1, 1, 0]], dtype=np.int16)
    b["word.word_start"] = np.array([[1, 1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 0, 0, 1]], dtype=bool)
    obj = build_objective("clower", {"single_char": "keep"}, ctx())
    out = obj.collate(b, torch.Generator().manual_seed(0))
    assert out["cl_word_ids"].tolist() == [20, 21, 22, 23, 20, 24, 26]
    obj = build_objective("clower", {"single_char": "keep", "fallback_pieces": "keep"}, ctx())
    out = obj.collate(b, torch.Generator().manual_seed(0))
    assert out["cl_word_ids"].tolist() == [20, 21, 22, 23, 20, 24, 26, 30, 31, 32]


@pytest.mark.parametrize("opts", [{}, {"word_view": "encoder", "pooling": "max"},
                                  {"contrast_states": "clean", "projection": "none", "symmetric": False},
                                  {"max_words": 3, "projection": "linear", "pooling": "first"}])
def test_forward_backward(opts):
    torch.manual_seed(0)
    obj = build_objective("clower", opts, ctx())
    b = obj.collate(hand_batch(), torch.Generator().manual_seed(0))
    if "max_words" in opts:
        assert b["cl_word_ids"].numel() == 3
    out = obj(b)
    assert set(out) >= {"loss", "mlm", "contrastive"} and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert obj.word_table.weight.grad is not None and obj.word_table.weight.grad.abs().sum() > 0
    ev = obj.evaluate(b)
    assert torch.isfinite(ev["contrastive"])


def test_export_equals_mlm_baseline():
    c = ctx()
    clower = build_objective("clower", {"word_view": "encoder"}, c)
    mlm = build_objective("mlm", {}, c)
    a, b = clower.export(), mlm.export()
    assert type(a) is type(b)
    assert count_parameters(a) == count_parameters(b)
    assert a.config.to_dict() == b.config.to_dict()
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    assert count_parameters(clower) > count_parameters(a)  # word table + heads stay behind


def test_missing_word_stream_is_user_error():
    from pipeline.errors import UserError

    obj = build_objective("clower", {}, ctx())
    b = hand_batch()
    del b["word.input_ids"]
    with pytest.raises(UserError, match="word"):
        obj.collate(b, torch.Generator())
    c = ctx()
    del c.vocabs["word"]
    with pytest.raises(UserError, match="word"):
        build_objective("clower", {}, c)
