"""ERNIE-Gram objective on hand-built batches (no shards, no lexicon files needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pretrain.models import ModelConfig, count_parameters
from pretrain.objectives.base import ObjectiveContext, VocabInfo, build_objective
from pretrain.objectives.ernie_gram import (
    IGNORE, additive_mask, allowed_attention, collapse, normalise_units, sample_inverse_cdf,
)

CLS, SEP, PAD, MASK = 2, 3, 0, 4
V = 60  # fine vocabulary (padded to 64)


def ctx(n_ngrams: int = 10, **model) -> ObjectiveContext:
    vocabs = {
        "char": VocabInfo("char", "unused", V, 0, 1, 2, 3, 4),
        "ngram": VocabInfo("ngram", "unused", n_ngrams, 0, 1, 2, 3, 4),
    }
    m = ModelConfig(size="tiny", num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64, dropout=0.0, **model)
    return ObjectiveContext(model=m, vocabs=vocabs, primary="char", seq_len=12)


def hand_batch():
    # [CLS] 10 11 12 | 13 | 14 15 | [SEP] 16 17 | [PAD] [PAD]
    # units (max matching): 10 11 12 = n-gram 5; 13 single; 14 15 = n-gram 2; 16 17 = n-gram 7
    ids = np.array([[CLS, 10, 11, 12, 13, 14, 15, SEP, 16, 17, PAD, PAD]])
    unit_len = np.array([[1, 3, 0, 0, 1, 2, 0, 1, 2, 0, 0, 0]], dtype=np.uint8)
    unit_ngram = np.array([[-1, 5, -1, -1, -1, 2, -1, -1, 7, -1, -1, -1]], dtype=np.int32)
    special = np.isin(ids, [CLS, SEP, PAD])
    attn = (ids != PAD).astype(np.int64)
    return {"input_ids": ids, "unit_len": unit_len, "unit_ngram": unit_ngram, "special_mask": special,
            "attention_mask": attn, "word_start": np.ones_like(ids, dtype=bool),
            "char_len": (~special).astype(np.int16)}


def T(x, dtype=torch.long):
    return torch.as_tensor(x, dtype=dtype)


def run_collapse(chosen_positions, queries="ngrams", max_ngrams=10, renumber=False):
    b = hand_batch()
    chosen = torch.zeros(b["input_ids"].shape, dtype=torch.bool)
    chosen[0, chosen_positions] = True
    return collapse(T(b["input_ids"]), T(b["special_mask"], torch.bool), T(b["attention_mask"]) != 0,
                    T(b["unit_len"]), T(b["unit_ngram"]), chosen, mask_id=MASK, pad_id=PAD, fine_size=64,
                    max_ngrams=max_ngrams, mask_prob=0.15, queries=queries, generator=None,
                    renumber_positions=renumber)


def test_max_match_units_with_lexicon():
    """The shards' units come from tokenization.ngram.max_match; check we read them that way."""
    from tokenization import ngram
    lex = _toy_lexicon(ngram, [(10, 11, 12), (14, 15), (10, 11)])
    ulen, ung = ngram.max_match(np.array([10, 11, 12, 13, 14, 15, 10, 11]), lex)
    assert list(ulen) == [3, 0, 0, 1, 2, 0, 2, 0]
    assert list(ung[[0, 3, 4, 6]]) == [lex.id_of((10, 11, 12)), -1, lex.id_of((14, 15)), lex.id_of((10, 11))]
    # and our unit reading of that output
    is_start, ulen2, ung2 = normalise_units(T(np.array([ulen])), T(np.array([ung])), torch.zeros(1, 8, dtype=torch.bool),
                                            torch.ones(1, 8, dtype=torch.bool), max_ngrams=100)
    assert is_start[0].tolist() == [True, False, False, True, True, False, True, False]


def _toy_lexicon(ngram, grams):
    return ngram.Lexicon([tuple(g) for g in grams], "char", max(len(g) for g in grams))


def test_lexicon_size_from_folder(tmp_path):
    from pretrain.objectives.ernie_gram import lexicon_size
    from tokenization import ngram

    lex = _toy_lexicon(ngram, [(10, 11, 12), (14, 15), (10, 11)])
    (tmp_path / "ngram").mkdir()
    lex.save(tmp_path / "ngram")
    c = ctx()
    del c.vocabs["ngram"]
    c.vocabs["char"].path = str(tmp_path / "char")
    assert lexicon_size(c, "") == 3
    obj = build_objective("ernie_gram", {"max_ngrams": 2}, c)
    assert obj.n_ngrams == 2


def test_normalise_units_cap_and_orphans():
    b = hand_batch()
    special = T(b["special_mask"], torch.bool)
    valid = T(b["attention_mask"]) != 0
    is_start, ulen, ung = normalise_units(T(b["unit_len"]), T(b["unit_ngram"]), special, valid, max_ngrams=6)
    # n-gram 7 (16 17) is beyond the cap of 6: split into two single tokens; padding are own units
    assert is_start[0].tolist() == [True, True, False, False, True, True, False, True, True, True, True, True]
    assert ulen[0].tolist() == [1, 3, 0, 0, 1, 2, 0, 1, 1, 1, 1, 1]
    assert ung[0].tolist()[:9] == [-1, 5, -1, -1, -1, 2, -1, -1, -1]


def test_unit_cut_by_special_is_split():
    # a 3-token unit at position 1 whose span runs into a [SEP] at position 2
    ulen = torch.tensor([[1, 3, 1, 0, 1]])
    ung = torch.tensor([[-1, 4, -1, -1, -1]])
    special = torch.tensor([[True, False, True, False, False]])
    is_start, ul, ng = normalise_units(ulen, ung, special, torch.ones(1, 5, dtype=torch.bool), max_ngrams=10)
    assert is_start[0].tolist() == [True] * 5 and ul[0].tolist() == [1] * 5 and ng[0].tolist() == [-1] * 5


def test_collapsed_sequence_positions_and_labels():
    out = run_collapse([1, 8])  # mask the n-gram 10 11 12 and the n-gram 16 17
    assert out["main_ids"][0].tolist() == [CLS, MASK, 13, 14, 15, SEP, MASK, PAD, PAD]
    assert out["main_pos"][0].tolist() == [0, 1, 4, 5, 6, 7, 8, 10, 11]  # original positions kept
    assert out["main_valid"][0].tolist() == [True] * 7 + [False] * 2
    lab = out["coarse_labels"][0].tolist()
    assert lab == [IGNORE, 64 + 5, IGNORE, IGNORE, IGNORE, IGNORE, 64 + 7, IGNORE, IGNORE]  # joint ids
    assert out["slot_len"][0].tolist() == [0, 3, 0, 0, 0, 0, 2, 0, 0]
    # one query per fine token of each masked n-gram, original positions, fine labels
    assert out["query_pos"][0].tolist() == [1, 2, 3, 8, 9]
    assert out["query_labels"][0].tolist() == [10, 11, 12, 16, 17]
    assert out["query_slot"][0].tolist() == [1, 1, 1, 6, 6]
    assert out["query_valid"][0].all()


def test_single_token_label_is_fine_id_and_queries_option():
    out = run_collapse([4])  # the single token 13
    assert out["coarse_labels"][0].tolist()[4] == 13
    assert out["query_valid"].shape[1] == 0  # no queries for a unigram by default
    out = run_collapse([4], queries="all")
    assert out["query_labels"][0].tolist() == [13] and out["query_pos"][0].tolist() == [4]


def test_renumbered_positions():
    out = run_collapse([1], renumber=True)
    assert out["main_pos"][0].tolist()[:8] == [0, 1, 2, 3, 4, 5, 6, 7]
    assert out["query_pos"][0].tolist() == [1, 2, 3]


def test_attention_mask_queries_never_see_queries():
    main_valid = torch.tensor([[True, True, True, False], [True, True, True, True]])
    query_valid = torch.tensor([[True, True, True], [True, False, False]])
    a = allowed_attention(main_valid, query_valid)
    Tc = 4
    assert a.shape == (2, 7, 7)
    # main rows: only valid main keys
    assert a[0, :Tc].tolist() == [[True, True, True, False, False, False, False]] * Tc
    for b in range(2):
        for i in range(3):
            row = a[b, Tc + i]
            assert row[:Tc].tolist() == main_valid[b].tolist()
            assert row[Tc:].tolist() == [j == i for j in range(3)]  # itself, no other query
    m = additive_mask(a, torch.float32)
    assert m.shape == (2, 1, 7, 7) and m[0, 0, 0, 3] == torch.finfo(torch.float32).min and m[0, 0, 0, 0] == 0


def test_bert_accepts_4d_mask_and_queries_are_isolated():
    """Stock BertModel with a custom 4-D mask: SDPA == eager, and changing one query's input moves
    neither the main sequence nor the other queries."""
    from pretrain.models import build_encoder

    torch.manual_seed(0)
    m_sdpa = build_encoder(ModelConfig(num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64,
                                       dropout=0.0, attn_implementation="sdpa"), 64).eval()
    m_eager = build_encoder(ModelConfig(num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64,
                                        dropout=0.0, attn_implementation="eager"), 64).eval()
    m_eager.load_state_dict(m_sdpa.state_dict())
    main_valid = torch.tensor([[True, True, True, True, False]])
    query_valid = torch.tensor([[True, True]])
    mask = additive_mask(allowed_attention(main_valid, query_valid), torch.float32)
    ids = torch.tensor([[2, 10, 4, 11, 0, 4, 4]])
    pos = torch.tensor([[0, 1, 2, 4, 0, 2, 3]])
    tt = torch.zeros_like(ids)
    with torch.no_grad():
        a = m_sdpa.bert(input_ids=ids, attention_mask=mask, position_ids=pos, token_type_ids=tt).last_hidden_state
        e = m_eager.bert(input_ids=ids, attention_mask=mask, position_ids=pos, token_type_ids=tt).last_hidden_state
        ids2 = ids.clone()
        ids2[0, 6] = 30
        a2 = m_sdpa.bert(input_ids=ids2, attention_mask=mask, position_ids=pos, token_type_ids=tt).last_hidden_state
    assert torch.allclose(a[0, :4], e[0, :4], atol=1e-5) and torch.allclose(a[0, 5:], e[0, 5:], atol=1e-5)
    assert torch.equal(a[0, :6], a2[0, :6])
    assert not torch.allclose(a[0, 6], a2[0, 6])


def test_generator_sampling_inverse_cdf():
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.7], [0.5, 0.5, 0.0]]) + 1e-12)
    assert sample_inverse_cdf(logits, torch.tensor([0.05, 0.3]), 1.0).tolist() == [0, 0]
    assert sample_inverse_cdf(logits, torch.tensor([0.25, 0.6]), 1.0).tolist() == [1, 1]
    assert sample_inverse_cdf(logits, torch.tensor([0.95, 0.999]), 1.0).tolist() == [2, 1]
    # temperature -> 0 gives the argmax
    assert sample_inverse_cdf(logits, torch.tensor([0.01, 0.01]), 1e-4).tolist()[0] == 2


def build(arch: str = "bert", **opts):
    return build_objective("ernie_gram", opts, ctx(arch=arch))


@pytest.mark.parametrize("opts", [
    {"comprehensive": False, "generator": False},
    {"generator": False},
    {},
    {"explicit": False, "generator": False},
    {"positions": "renumbered", "ngram_transform": "separate", "queries": "all"},
])
@pytest.mark.parametrize("arch", ["bert", "roberta_prelayernorm", "modernbert"])
def test_forward_backward_every_ablation(opts, arch):
    torch.manual_seed(0)
    obj = build(arch, **opts)
    if opts.get("generator", True):  # the generator is a body of the same arch
        assert type(obj.gen).__name__ == {"bert": "BertModel", "roberta_prelayernorm": "RobertaPreLayerNormModel",
                                          "modernbert": "ModernBertModel"}[arch]
    g = torch.Generator().manual_seed(1)
    b = obj.collate(random_batch(), g)
    out = obj(b)
    assert torch.isfinite(out["loss"])
    expect = {"coarse"} if opts.get("explicit", True) else set()
    if opts.get("comprehensive", True):
        expect.add("fine")
    if opts.get("generator", True):
        expect |= {"generator", "rtd"}
    assert expect <= set(out)
    out["loss"].backward()
    ev = obj.evaluate(b)
    assert torch.isfinite(ev["loss"]) and ev["loss_count"] > 0 and torch.isfinite(ev["objective"])
    if opts.get("explicit", True):
        assert 0 <= ev["ngram_exact"] <= ev["ngram_exact_count"]


def random_batch(seed=0):
    rng = np.random.default_rng(seed)
    B, Tn = 4, 40
    ids = rng.integers(10, 60, size=(B, Tn))
    ids[:, 0] = CLS
    ulen = np.zeros((B, Tn), np.uint8)
    ung = np.full((B, Tn), -1, np.int32)
    for r in range(B):
        p = 1
        while p < Tn:
            n = int(min(rng.integers(1, 4), Tn - p))
            ulen[r, p] = n
            ung[r, p] = int(rng.integers(0, 10)) if n >= 2 else -1
            p += n
    special = ids == CLS
    return {"input_ids": ids, "unit_len": ulen, "unit_ngram": ung, "special_mask": special,
            "attention_mask": np.ones_like(ids)}


def test_collate_deterministic_and_masks_units():
    obj = build()
    batch = random_batch()
    B, Tn = batch["input_ids"].shape
    ulen = batch["unit_len"]
    a = obj.collate(batch, torch.Generator().manual_seed(5))
    b = obj.collate(batch, torch.Generator().manual_seed(5))
    for k in a:
        assert torch.equal(a[k], b[k])
    n_units = (ulen[:, 1:] > 0).sum(1)
    n_masked = (a["coarse_labels"] != IGNORE).sum(1).numpy()
    assert (n_masked == np.maximum(1, np.round(n_units * 0.15))).all()
    # collapsed length = original minus (len-1) per masked unit
    shrink = Tn - a["main_valid"].sum(1)
    assert torch.equal(shrink, (a["slot_len"].clamp(min=1) - 1).sum(1))


def test_missing_units_is_user_error():
    from pipeline.errors import UserError

    obj = build()
    b = hand_batch()
    del b["unit_len"]
    with pytest.raises(UserError, match="unit_len"):
        obj.collate(b, torch.Generator())


def test_export_is_stock_bert_same_size_as_mlm():
    from pretrain.models import build_encoder

    obj = build()
    exp = obj.export()
    assert type(exp).__name__ == "BertForMaskedLM"
    ref = build_encoder(ctx().model, 64)
    assert count_parameters(exp) == count_parameters(ref)
    assert count_parameters(obj) > count_parameters(exp)  # heads + generator are not exported


# ---- issue 14: the paper's query tokens and query set are the defaults --------------------------
def test_defaults_follow_the_paper_queries_for_every_masked_unit():
    obj = build(generator=False)
    assert obj.cfg.queries == "all" and obj.query_mode == "all" and obj.cfg.query_tokens == "indexed"
    b = hand_batch()
    out = obj.collate(b, torch.Generator().manual_seed(0))
    # every masked unit's tokens get a query, single tokens included
    n_tokens = int(out["slot_len"].sum())
    assert int(out["query_valid"].sum()) == n_tokens
    single = run_collapse([4], queries="all")
    assert single["query_valid"].sum() == 1 and single["query_labels"][0, 0] == 13


def test_query_offsets_select_distinct_m_tokens():
    out = run_collapse([1, 5, 8], queries="all")  # n-grams 10 11 12, 14 15, 16 17
    assert out["query_offset"][0].tolist() == [0, 1, 2, 0, 1, 0, 1]
    torch.manual_seed(0)
    obj = build(generator=False)
    b = {**out, "sample_u": torch.zeros(out["main_ids"].shape)}
    q = obj.query_embeds(b)[0]
    mask_row = obj.model.bert.embeddings.word_embeddings.weight[MASK]
    assert torch.allclose(q, mask_row.expand_as(q))  # [M1], [M2], ... start as [MASK]
    with torch.no_grad():
        obj.query_emb.weight[1] += torch.randn(obj.query_emb.weight.shape[1])  # [M2] only
    q2 = obj.query_embeds(b)[0]
    changed = (q2 != q).any(-1).tolist()
    assert changed == [o == 1 for o in out["query_offset"][0].tolist()]
    obj.eval()
    before = obj(b)["fine"]
    with torch.no_grad():
        obj.query_emb.weight[2] += torch.randn(obj.query_emb.weight.shape[1])  # [M3] (a constant would be LayerNormed away)
    assert not torch.equal(before, obj(b)["fine"])
    # query_tokens: mask -> every query reads [MASK]; no table, nothing extra to export
    m = build(generator=False, query_tokens="mask")
    assert not hasattr(m, "query_emb")
    qm = m.query_embeds(b)[0]
    assert torch.equal(qm, m.model.bert.embeddings.word_embeddings.weight[MASK].expand_as(qm))


def test_generator_rung_predicts_on_its_sample_not_on_mask():
    torch.manual_seed(0)
    obj = build()
    obj.eval()
    b = obj.collate(random_batch(), torch.Generator().manual_seed(3))
    slots = b["coarse_labels"] != IGNORE
    pred = obj.predict_masked(b)
    assert "sampled" in pred and bool((pred["sampled"][slots] != MASK).all())
    assert bool((pred["sampled"][~slots] == -1).all())
    on_mask = obj.predict_masked(b, slot_input="mask")
    assert "sampled" not in on_mask
    # the sample is what the main model is fed: the same uniforms give the same sample as training
    with torch.no_grad():
        g = obj._generator(b, slots)
    assert torch.equal(pred["sampled"][slots], sample_inverse_cdf(g, b["sample_u"][slots], 1.0))
