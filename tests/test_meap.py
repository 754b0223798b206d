"""The ``meap`` objective: masking share, clean targets, unmasked evaluation, official mode, export."""

import json

import numpy as np
import pytest
import torch

from pretrain.models import ModelConfig
from pretrain.objectives.base import ObjectiveContext, VocabInfo, build_objective, get_objective
from pretrain.objectives.meap import OFFICIAL_SEED_CYCLE, Meap, meap_mask, official_positions
from pretrain.objectives.ntp import next_token_labels

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4


def ctx(seq_len=24):
    model = ModelConfig(size="tiny", num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64,
                        max_position_embeddings=64)
    v = VocabInfo(kind="char", path="", size=60, pad_id=PAD, unk_id=UNK, cls_id=CLS, sep_id=SEP, mask_id=MASK)
    return ObjectiveContext(model=model, vocabs={"char": v}, primary="char", seq_len=seq_len)


def make_batch(B=4, T=24, seed=0):
    """[CLS] doc [SEP] doc ..., the last row padded."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, 60, size=(B, T)).astype(np.int64)
    ids[:, 0] = CLS
    ids[:, 9] = SEP
    ids[-1, 18:] = PAD
    special = np.isin(ids, [CLS, SEP, PAD])
    word_start = (rng.random((B, T)) < 0.5) | special
    att = (ids != PAD).astype(np.int64)
    return {"input_ids": ids, "special_mask": special, "word_start": word_start,
            "char_len": (~special).astype(np.int16), "attention_mask": att}


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_registered_and_options_checked():
    assert get_objective("meap") is Meap
    obj = build_objective("meap", {"mask_ratio": 0.1, "masking": "official"}, ctx())
    assert obj.cfg.mask_ratio == 0.1 and obj.model_type == "decoder"
    from pipeline.errors import UserError

    with pytest.raises(UserError):
        build_objective("meap", {"mask_ratio": 1.5}, ctx())
    with pytest.raises(UserError):
        build_objective("meap", {"mask_rate": 0.1}, ctx())


def test_share_exact_per_sequence_and_fresh():
    obj = build_objective("meap", {"mask_ratio": 0.15}, ctx())
    b = make_batch(B=6)
    out = obj.collate(b, gen(1))
    m = out["meap_mask"]
    clean = torch.from_numpy(b["input_ids"])
    special = torch.from_numpy(b["special_mask"])
    elig = ~special
    elig[:, -1] = False  # exclude_last
    n = elig.sum(1)
    expect = torch.clamp((n.double() * 0.15).floor().long(), min=1)
    assert torch.equal(m.sum(1), expect)
    assert not (m & ~elig).any()  # never specials, padding or the last position
    assert torch.equal(out["input_ids"], torch.where(m, torch.full_like(clean, MASK), clean))
    rows = {tuple(r.nonzero().flatten().tolist()) for r in m[:5]}
    assert len(rows) > 1  # fresh positions per sequence
    # reproducible from the generator alone
    assert torch.equal(obj.collate(b, gen(1))["meap_mask"], m)
    assert not torch.equal(obj.collate(b, gen(2))["meap_mask"], m)


def test_share_over_many_rows():
    T = 200
    ids = torch.randint(5, 60, (64, T))
    elig = torch.ones(64, T, dtype=torch.bool)
    m = meap_mask(ids, elig, 0.15, gen(0))
    assert (m.sum(1) == 30).all()
    mb = meap_mask(ids, elig, 0.15, gen(0), count="bernoulli")
    assert abs(mb.float().mean().item() - 0.15) < 0.01
    # a row without eligible positions gets no mask
    elig[0] = False
    assert meap_mask(ids, elig, 0.15, gen(0))[0].sum() == 0


def test_targets_are_clean_and_never_mask():
    obj = build_objective("meap", {"mask_ratio": 0.3}, ctx())
    b = make_batch()
    b["input_ids"][1, 5] = MASK  # a literal [MASK] in the text must not become a target
    b["special_mask"][1, 5] = False
    out = obj.collate(b, gen(3))
    clean = torch.from_numpy(b["input_ids"])
    expect = next_token_labels(clean, torch.from_numpy(b["special_mask"]), SEP)
    expect = expect.masked_fill(expect == MASK, -100)
    assert torch.equal(out["labels"], expect)
    assert not (out["labels"] == MASK).any()
    # the label at every masked position's predecessor is the clean token hidden by the mask
    m = out["meap_mask"]
    bi, ti = (m & (clean != MASK)).nonzero(as_tuple=True)
    assert len(bi) > 3
    assert torch.equal(out["labels"][bi, ti - 1], clean[bi, ti])
    assert (out["input_ids"][bi, ti] == MASK).all()
    # loss on every non-special target (nothing dropped at masked positions)
    assert (out["labels"] != -100).sum() == (expect != -100).sum()


def test_eval_collate_is_unmasked_and_equals_ntp():
    obj = build_objective("meap", {}, ctx())
    ntp = build_objective("ntp", {}, ctx())
    b = make_batch()
    ev = obj.eval_collate(b, gen(0))
    assert torch.equal(ev["input_ids"], torch.from_numpy(b["input_ids"]))
    assert not (ev["input_ids"] == MASK).any() and "meap_mask" not in ev
    ref = ntp.collate(b, gen(0))
    assert ev.keys() == ref.keys() and all(torch.equal(ev[k], ref[k]) for k in ref)


def test_official_mode_batch_shared_51_patterns():
    obj = build_objective("meap", {"mask_ratio": 0.15, "masking": "official", "mask_specials": True}, ctx(24))
    b = make_batch(B=3)
    b["input_ids"][-1, 18:] = 7  # no padding: the official mode then masks identical columns
    b["special_mask"][-1, 18:] = False
    m = obj.collate(b, gen(5))["meap_mask"]
    assert (m == m[0:1]).all()  # same positions for the whole batch
    pos = m[0].nonzero().flatten().tolist()
    assert len(pos) == int(24 * 0.15) and max(pos) < 23
    assert any(pos == official_positions(c, 24, 0.15) for c in range(OFFICIAL_SEED_CYCLE))
    # only 51 distinct patterns, ever
    seen = {tuple(obj.collate(b, gen(s))["meap_mask"][0].nonzero().flatten().tolist()) for s in range(300)}
    assert len(seen) <= OFFICIAL_SEED_CYCLE
    # same as the official code: random.seed(50 + c) ; random.sample(range(0, T-1), int(T*ratio))
    import random

    random.seed(50 + 7)
    assert official_positions(7, 24, 0.15) == sorted(random.sample(range(0, 23), 3))
    # counter mode cycles like the official step counter
    objc = build_objective("meap", {"masking": "official", "official_cycle": "counter", "mask_specials": True}, ctx(24))
    first = [objc.collate(b, gen(0))["meap_mask"][0].nonzero().flatten().tolist() for _ in range(52)]
    assert first[0] == official_positions(0, 24, 0.15) and first[51] == first[0]


def test_word_unit_masks_whole_words():
    obj = build_objective("meap", {"mask_ratio": 0.3, "unit": "word"}, ctx())
    b = make_batch(B=4)
    out = obj.collate(b, gen(0))
    m = out["meap_mask"]
    ws = torch.from_numpy(b["word_start"])
    special = torch.from_numpy(b["special_mask"])
    assert m.any() and not (m & special).any()
    # inside a word (not a word start) the mask equals the previous token's mask, unless the word
    # is cut by the never-masked last position
    T = m.shape[1]
    cont = ~ws[:, 1:T - 1] & ~special[:, 1:T - 1] & ~special[:, 0:T - 2]  # t = 1..T-2 continues a word
    assert cont.any()
    assert torch.equal(m[:, 1:T - 1][cont], m[:, 0:T - 2][cont])
    assert not m[:, T - 1].any()
    assert torch.equal(out["input_ids"][m], torch.full((int(m.sum()),), MASK))


def test_forward_backward_and_evaluate():
    torch.manual_seed(0)
    obj = build_objective("meap", {}, ctx())
    b = make_batch()
    tr = obj.collate(b, gen(0))
    out = obj(tr)
    assert torch.isfinite(out["loss"]) and 0 < float(out["mask_share"]) < 0.3
    out["loss"].backward()
    assert obj.model.model.embed_tokens.weight.grad is not None
    ev = obj.evaluate(obj.eval_collate(b, gen(0)))
    assert ev["loss_count"] == (tr["labels"] != -100).sum()


def test_export_suppresses_mask_in_generation(tmp_path):
    torch.manual_seed(0)
    obj = build_objective("meap", {}, ctx())
    model = obj.export()
    assert MASK in model.generation_config.suppress_tokens
    assert obj.export_meta()["meap"]["mask_ratio"] == 0.15
    assert [MASK] in model.generation_config.bad_words_ids
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "generation_config.json").read_text())
    assert MASK in saved["suppress_tokens"]
    from transformers import AutoModelForCausalLM

    back = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    bonus = torch.zeros(back.config.vocab_size)
    bonus[MASK] = 1e4  # make [MASK] the arg-max everywhere: generation must still avoid it
    back.lm_head.register_forward_hook(lambda mod, inp, out: out + bonus)
    ids = torch.tensor([[CLS, 10, 11, 12]])
    with torch.no_grad():
        assert back(ids).logits[0, -1].argmax() == MASK
        g = back.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False)
    assert MASK not in g[0, 4:].tolist() and g.shape[1] == 9
