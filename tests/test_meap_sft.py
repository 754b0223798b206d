"""Decoder SFT rows: plain NTP, MEAP official separate masked copy, MEAP paper concatenation."""

import random

import pytest
import torch

from finetune.decoder_sft import (
    IGNORE, SftConfig, build_rows, choose_mask_positions, pad_rows, sft_rows, train_sft,
)

CLS, SEP, MASK = 2, 3, 4
PROMPT = [CLS, 10, 11, 12]
ANSWER = [20, 21, 22, 23, 24, 25]
X = -100


def t(x):
    return torch.tensor(x, dtype=torch.long)


def test_ntp_row_exact():
    (r,) = build_rows(PROMPT, ANSWER, "ntp", eos_id=SEP, mask_id=MASK, min_answer_tokens=0)
    assert r.input_ids == [2, 10, 11, 12, 20, 21, 22, 23, 24, 25, 3]
    assert r.labels == [X, X, X, X, 20, 21, 22, 23, 24, 25, 3]


def test_meap_copy_exact():
    rows = build_rows(PROMPT, ANSWER, "meap_copy", eos_id=SEP, mask_id=MASK, min_answer_tokens=4, positions=[1, 4])
    b = pad_rows(rows, pad_id=0)
    assert torch.equal(b["input_ids"], t([[2, 10, 11, 12, 20, 21, 22, 23, 24, 25, 3],
                                          [2, 10, 11, 12, 20, 4, 22, 23, 4, 25, 3]]))
    assert torch.equal(b["labels"], t([[X, X, X, X, 20, 21, 22, 23, 24, 25, 3],
                                       [X, X, X, X, X, 21, X, X, 24, X, X]]))
    assert torch.equal(b["attention_mask"], torch.ones(2, 11, dtype=torch.long))


def test_meap_concat_exact():
    (r,) = build_rows(PROMPT, ANSWER, "meap_concat", eos_id=SEP, mask_id=MASK, min_answer_tokens=4, positions=[1, 4])
    assert r.input_ids == [2, 10, 11, 12, 20, 21, 22, 23, 24, 25, 3] + [2, 10, 11, 12, 20, 4, 22, 23, 4, 25, 3]
    assert r.labels == [X, X, X, X, 20, 21, 22, 23, 24, 25, 3] + [X, X, X, X, X, 21, X, X, 24, X, X]
    (ra,) = build_rows(PROMPT, ANSWER, "meap_concat", eos_id=SEP, mask_id=MASK, min_answer_tokens=4,
                       positions=[1, 4], concat_copy_labels="answer")
    assert ra.input_ids == r.input_ids
    assert ra.labels == [X, X, X, X, 20, 21, 22, 23, 24, 25, 3] * 2


@pytest.mark.parametrize("variant", ["meap_copy", "meap_concat"])
def test_threshold_short_answers_plain_ntp(variant):
    rows = build_rows(PROMPT, ANSWER, variant, eos_id=SEP, mask_id=MASK, min_answer_tokens=6)
    (ntp,) = build_rows(PROMPT, ANSWER, "ntp", eos_id=SEP, mask_id=MASK)
    assert len(rows) == 1 and rows[0] == ntp


def test_padding_and_random_positions():
    rows = build_rows(PROMPT, ANSWER, "meap_copy", eos_id=SEP, mask_id=MASK, min_answer_tokens=0,
                      mask_ratio=0.1, rng=random.Random(0))
    assert sum(i == MASK for i in rows[1].input_ids) == 1  # max(1, int(6 * 0.1))
    assert all(lab != MASK for r in rows for lab in r.labels)
    short = build_rows(PROMPT, ANSWER[:2], "ntp", eos_id=SEP, mask_id=MASK)[0]
    b = pad_rows([rows[0], short], pad_id=0)
    assert torch.equal(b["input_ids"][1], t([2, 10, 11, 12, 20, 21, 3, 0, 0, 0, 0]))
    assert torch.equal(b["labels"][1], t([X, X, X, X, 20, 21, 3, X, X, X, X]))
    assert torch.equal(b["attention_mask"][1], t([1] * 7 + [0] * 4))
    assert choose_mask_positions(20, 0.25, random.Random(1)) == sorted(set(choose_mask_positions(20, 0.25, random.Random(1))))
    assert len(choose_mask_positions(20, 0.25, random.Random(1))) == 5
    with pytest.raises(ValueError):
        build_rows(PROMPT, ANSWER, "meap_copy", eos_id=SEP, mask_id=MASK, min_answer_tokens=0, positions=[6])


def test_train_sft_runs_and_learns():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=32, max_position_embeddings=64, pad_token_id=0))
    cfg = SftConfig(steps=10, batch_size=4, lr=1e-2, min_answer_tokens=2, mask_ratio=0.3)
    pairs = [([CLS, 10 + i % 5, 11], [20 + i % 5, 30, 31, 32]) for i in range(8)]
    for variant in ("ntp", "meap_copy", "meap_concat"):
        rows = sft_rows(pairs, variant, cfg, eos_id=SEP, mask_id=MASK, seed=0)
        assert len(rows) == (16 if variant == "meap_copy" else 8)
    rows = sft_rows(pairs, "meap_concat", cfg, eos_id=SEP, mask_id=MASK, seed=0)
    before = model(**pad_rows(rows, 0)).loss.item()
    summary = train_sft(model, rows, cfg, pad_id=0, seed=0)
    after = model(**pad_rows(rows, 0)).loss.item()
    assert summary["steps"] == 10 and after < before
