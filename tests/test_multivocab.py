"""Multi-vocabulary objectives (amber, hi_mvp, al_mvp) on hand-built two-stream batches.

Checks the char<->SGT alignment, the consistent masking (a masked coarse token masks exactly its
characters), the shapes and losses of every head, determinism of the masks, and that a few
optimizer steps on one batch lower every loss.
"""

from __future__ import annotations

import pytest
import torch

from pretrain.objectives.amber import (
    MaskingOptions, align_views, consistent_mask, propagate_mask, stream,
)
from pretrain.objectives.base import build_objective, registered
from pretrain.objectives.mvp import group_offsets
from test_multivocab_data import MASK, context, make_batch, vocab

VARIANTS = [
    ("amber", "char", {"coarse_kind": "sgt"}),
    ("hi_mvp", "char", {}),
    ("hi_mvp", "char", {"char_head_on": "lower", "pooling": "first"}),
    ("al_mvp", "sgt", {}),
    ("al_mvp", "char", {"reading": "b"}),
    ("al_mvp", "char", {"reading": "b", "align_loss": "cosine"}),
]


def _views(seed=0, primary="char"):
    b, truth = make_batch(seed, primary=primary)
    return b, truth, stream(b, "char", primary), stream(b, "sgt", primary)


def test_registered():
    names = registered()
    assert {"amber", "hi_mvp", "al_mvp"} <= set(names)


@pytest.mark.parametrize("primary", ["char", "sgt"])
def test_align_views_nested(primary):
    b, truth, fine, coarse = _views(3, primary)
    first, last = align_views(fine, coarse)
    assert torch.equal(first, last)
    for i, owner in enumerate(truth):
        for ct, st in owner:
            assert int(first[i, ct]) == st
    # specials: [CLS] -> [CLS], k-th [SEP] -> k-th [SEP]; padding -> -1
    fs = fine["special_mask"] & (fine["attention_mask"] > 0)
    for i in range(first.shape[0]):
        mapped = first[i][fs[i]]
        cs = (coarse["special_mask"][i] & (coarse["attention_mask"][i] > 0)).nonzero().squeeze(1)
        assert mapped.tolist() == cs[: len(mapped)].tolist()
        assert (first[i][fine["attention_mask"][i] == 0] == -1).all()


def _row(ids, lens, special):
    T = len(ids)
    return {"input_ids": torch.tensor([ids]), "char_len": torch.tensor([lens]),
            "special_mask": torch.tensor([special]), "attention_mask": torch.ones(1, T, dtype=torch.long),
            "word_start": torch.ones(1, T, dtype=torch.bool)}


def test_align_views_straddling_tokens():
    # text "abcde": fine "abc|de", coarse "ab|cde" -> fine 1 covers coarse 1..2, fine 2 coarse 2
    fine = _row([2, 10, 11, 3], [0, 3, 2, 0], [True, False, False, True])
    coarse = _row([2, 20, 21, 3], [0, 2, 3, 0], [True, False, False, True])
    first, last = align_views(fine, coarse)
    assert first.tolist() == [[0, 1, 2, 3]] and last.tolist() == [[0, 2, 2, 3]]
    sel = torch.tensor([[False, False, True, False]])  # coarse "cde" selected
    assert propagate_mask(sel, first, last).tolist() == [[False, True, True, False]]
    # a zero-length (byte-fallback) fine token belongs to the character before it
    fine = _row([2, 10, 12, 11, 3], [0, 1, 0, 1, 0], [True, False, False, False, True])
    coarse = _row([2, 20, 21, 3], [0, 1, 1, 0], [True, False, False, True])
    first, _ = align_views(fine, coarse)
    assert first.tolist() == [[0, 1, 1, 2, 3]]


def _char_sets(labels, char_len, special):
    """Characters (offsets) covered by the selected tokens of each row."""
    out = []
    ends = char_len.cumsum(1)
    for i in range(labels.shape[0]):
        s = set()
        for t in (labels[i] != -100).nonzero().squeeze(1).tolist():
            assert not special[i, t]
            s.update(range(int(ends[i, t] - char_len[i, t]), int(ends[i, t])))
        out.append(s)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_masked_coarse_token_masks_exactly_its_characters(seed):
    b, _, fine, coarse = _views(seed)
    g = torch.Generator().manual_seed(seed)
    m = consistent_mask(fine, coarse, vocab("char", 100), vocab("sgt", 150), g, MaskingOptions(mask_prob=0.3))
    fc = _char_sets(m["fine_labels"], fine["char_len"], fine["special_mask"])
    cc = _char_sets(m["coarse_labels"], coarse["char_len"], coarse["special_mask"])
    assert fc == cc and any(fc)
    # the 80/10/10 action is the coarse token's: [MASK]ed chars exactly under [MASK]ed coarse tokens
    f_masked = _char_sets(torch.where(m["fine_input"] == MASK, fine["input_ids"], -100), fine["char_len"],
                          fine["special_mask"])
    c_masked = _char_sets(torch.where(m["coarse_input"] == MASK, coarse["input_ids"], -100), coarse["char_len"],
                          coarse["special_mask"])
    assert f_masked == c_masked
    # labels hold the original ids; whole SGT words are selected together
    sel = m["fine_labels"] != -100
    assert torch.equal(m["fine_labels"][sel], fine["input_ids"][sel])
    csel = m["coarse_labels"] != -100
    word_id = (coarse["word_start"] | coarse["special_mask"]).long().cumsum(1)
    for i in range(csel.shape[0]):
        for w in word_id[i][csel[i]].unique().tolist():
            in_word = (word_id[i] == w) & ~coarse["special_mask"][i]
            assert csel[i][in_word].all()


def test_group_offsets():
    first = torch.tensor([[0, 1, 1, 1, 2, -1, 3, 3]])
    assert group_offsets(first).tolist() == [[0, 0, 1, 2, 0, 0, 0, 1]]


@pytest.mark.parametrize("name,primary,opts", VARIANTS)
def test_heads_shapes_and_losses(name, primary, opts):
    torch.manual_seed(0)
    ob = build_objective(name, opts, context(primary=primary))
    b, _ = make_batch(5, primary=primary)
    cb = ob.collate(b, torch.Generator().manual_seed(0))
    cb2 = ob.collate(b, torch.Generator().manual_seed(0))
    for k in cb:  # masks come only from the generator
        assert torch.equal(cb[k], cb2[k]), k
    out = ob(cb)
    assert torch.isfinite(out["loss"]) and out["loss"] > 0
    terms = {k for k in out if k != "loss"}
    assert {"mlm_char", "mlm_sgt"} <= terms or {"mlm_fine", "mlm_coarse"} <= terms
    if opts.get("reading") == "b":
        assert "align" in terms
    out["loss"].backward()
    grads = {n for n, p in ob.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads, "no gradient"
    # DDP runs without find_unused_parameters: no trainable parameter may sit outside the loss
    missing = [n for n, p in ob.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    # head shapes: one row per target, the vocabulary of the head
    n_f = int((cb.get("fine_labels", cb.get("char_labels"))).numel())
    n_c = int(cb["coarse_labels"].numel())
    assert n_f > 0 and n_c > 0
    if name == "al_mvp" and opts.get("reading", "a") == "a":
        fl, flab, cl, _ = ob._terms(cb)
        assert fl.shape == (n_f, 128) and cl.shape == (n_c, 192)  # char 100 -> 128, sgt 150 -> 192
        assert any(n.startswith("char_decoder") for n in grads)
    elif name == "al_mvp":
        fl, flab, cl, _ = ob._terms(cb)
        assert fl.shape == (n_f, 128) and cl.shape == (n_c, 192)
    else:
        fl, cl = ob._heads(cb)[:2]
        assert fl.shape == (n_f, 128) and cl.shape == (n_c, 192)
    ev = ob.evaluate(cb)
    assert float(ev["loss_count"]) > 0 and torch.isfinite(ev["loss"])


@pytest.mark.parametrize("name,primary,opts", [VARIANTS[0], VARIANTS[1], VARIANTS[3], VARIANTS[4]])
def test_losses_fall_on_one_batch(name, primary, opts):
    torch.manual_seed(0)
    ob = build_objective(name, opts, context(primary=primary))
    b, _ = make_batch(7, primary=primary)
    cb = ob.collate(b, torch.Generator().manual_seed(1))
    opt = torch.optim.AdamW(ob.parameters(), lr=1e-2)
    first = None
    for _ in range(8):
        out = ob(cb)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = first if first is not None else {k: float(v.detach()) for k, v in out.items()}
    last = {k: float(v.detach()) for k, v in ob(cb).items()}
    for k in first:
        assert last[k] < first[k], (k, first[k], last[k])


def test_hi_mvp_layer_split_and_errors():
    from pipeline.errors import UserError

    ob = build_objective("hi_mvp", {}, context(layers=4))
    assert ob.model.config.lower_layers == 2
    assert len(ob.model.hi_mvp.char_encoder.encoder.layer) == 2
    assert len(ob.model.hi_mvp.coarse_encoder.encoder.layer) == 2
    with pytest.raises(UserError):
        build_objective("hi_mvp", {"lower_layers": 2}, context(layers=2))
    with pytest.raises(UserError, match="extra_kinds"):
        build_objective("amber", {}, context())  # the word stream is not loaded


def test_missing_stream_is_a_user_error():
    from pipeline.errors import UserError

    ob = build_objective("hi_mvp", {}, context())
    b, _ = make_batch(0)
    b = {k: v for k, v in b.items() if not k.startswith("sgt.")}
    with pytest.raises(UserError, match="sgt"):
        ob.collate(b, torch.Generator().manual_seed(0))

