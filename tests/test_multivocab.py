"""Multi-vocabulary objectives (amber, hi_mvp, al_mvp) on hand-built two-stream batches.

Checks the char<->SGT alignment, the consistent masking (a masked coarse token masks exactly its
characters), the shapes and losses of every head, determinism of the masks, and that a few
optimizer steps on one batch lower every loss.
"""

from __future__ import annotations

import pytest
import torch

from pretrain.objectives.base import build_objective, registered
from pretrain.objectives.multiview import (
    MaskingOptions, align_views, consistent_mask, group_offsets, propagate_mask, stream,
)
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



# ---- alignment after whitespace (visible character spans), leakage, AL-MVP (b) negatives ----------
# text "好\n喜欢我\nplaying xy": the char stream drops the newlines and folds them into the next
# token; the SGT stream keeps "\n" as a token; "xy" is one char token over two one-char SGT words.
_C = dict(ids=[2, 10, 11, 12, 13, 14, 15, 16, 3], cl=[0, 1, 2, 1, 1, 5, 3, 3, 0], vis=[0, 1, 1, 1, 1, 4, 3, 2, 0])
_S = dict(ids=[2, 20, 21, 22, 23, 21, 24, 25, 26, 27, 3], cl=[0, 1, 1, 2, 1, 1, 3, 4, 2, 1, 0],
          vis=[0, 1, 0, 2, 1, 0, 3, 4, 1, 1, 0], ws=[1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1])
_FIRST = [0, 1, 3, 3, 4, 6, 7, 8, 10]  # coarse token of each char token's first visible character
_LAST = [0, 1, 3, 3, 4, 7, 7, 9, 10]


def _ws_batch(primary: str, B: int = 3):
    import numpy as np

    def one(d, ws=None):
        T = len(d["ids"])
        sp = np.array([i in (2, 3) for i in d["ids"]])
        return {"input_ids": np.tile(np.array(d["ids"]), (B, 1)), "char_len": np.tile(np.array(d["cl"], np.int16), (B, 1)),
                "vis_len": np.tile(np.array(d["vis"], np.int16), (B, 1)), "special_mask": np.tile(sp, (B, 1)),
                "attention_mask": np.ones((B, T), np.int64),
                "word_start": np.tile(np.array(ws if ws is not None else [1] * T, bool), (B, 1))}

    c, s = one(_C), one(_S, _S["ws"])
    prim, other, okind = (c, s, "sgt") if primary == "char" else (s, c, "char")
    batch = dict(prim)
    batch.update({f"{okind}.{k}": v for k, v in other.items()})
    return batch


def test_align_views_by_visible_characters_after_newline():
    b = _ws_batch("char")
    fine, coarse = stream(b, "char", "char"), stream(b, "sgt", "char")
    first, last = align_views(fine, coarse)
    assert first[0].tolist() == _FIRST and last[0].tolist() == _LAST
    # hi_mvp: every SGT token that shows a character is some char token's group, except "y",
    # whose character sits in the char token "xy" of the word before (one char token, one group)
    owned = set(first[0].tolist())
    shows = [k for k in range(len(_S["ids"])) if _S["vis"][k] > 0]
    assert [k for k in shows if k not in owned] == [9]


@pytest.mark.parametrize("seed", range(6))
def test_al_mvp_a_char_targets_are_read_from_their_own_masked_token(seed):
    ctx = context(primary="sgt", char_size=40, sgt_size=40)
    ob = build_objective("al_mvp", {"mask_prob": 0.5}, ctx)
    b = _ws_batch("sgt", B=4)
    out = ob.collate(b, torch.Generator().manual_seed(seed))
    S = len(_S["ids"])
    sel = torch.zeros(4 * S, dtype=torch.bool)
    sel[out["coarse_pos"]] = True
    sel = sel.view(4, S)
    pos_of = {cid: k for k, cid in enumerate(_C["ids"])}
    n = 0
    for src, lab in zip(out["char_src"].tolist(), out["char_labels"].tolist()):
        r, s = divmod(src, S)
        k = pos_of[lab]
        assert s == _FIRST[k]  # read from the SGT token that holds its first character
        # no leakage: every SGT token holding one of its characters is selected
        assert sel[r, _FIRST[k]:_LAST[k] + 1].all()
        n += 1
    assert n > 0


def test_al_mvp_b_same_type_is_not_a_negative():
    from pretrain.objectives.al_mvp import align_infonce

    torch.manual_seed(0)
    p, q = torch.randn(4, 8), torch.randn(4, 8)
    types = torch.tensor([7, 9, 7, 5])
    got = align_infonce(p, q, types, 0.1)
    pn, qn = torch.nn.functional.normalize(p, dim=-1), torch.nn.functional.normalize(q, dim=-1)
    sim = pn @ qn.t() / 0.1

    def ce(m):
        tot = 0.0
        for j in range(4):
            keep = [k for k in range(4) if k == j or types[k] != types[j]]
            tot += -(m[j, j] - torch.logsumexp(m[j, keep], 0))
        return tot / 4

    assert torch.allclose(got, 0.5 * (ce(sim) + ce(sim.t())), atol=1e-5)
    # with distinct types it is the plain symmetric InfoNCE
    tgt = torch.arange(4)
    plain = 0.5 * (torch.nn.functional.cross_entropy(sim, tgt) + torch.nn.functional.cross_entropy(sim.t(), tgt))
    assert torch.allclose(align_infonce(p, q, torch.arange(4), 0.1), plain, atol=1e-5)
    assert not torch.allclose(got, plain)
    # the collated batch names each anchor's SGT type
    ctx = context(primary="char", char_size=40, sgt_size=40)
    ob = build_objective("al_mvp", {"reading": "b"}, ctx)
    b = _ws_batch("char")
    out = ob.collate(b, torch.Generator().manual_seed(0))
    assert torch.equal(out["align_ids"], torch.from_numpy(b["sgt.input_ids"]).reshape(-1)[out["align_idx"]])
    assert (out["align_ids"] == 21).sum() == 0  # "\n" shows no character: never an anchor


@pytest.fixture(scope="module")
def newline_run(tmp_path_factory):
    """A small real run (char + SGT vocabularies and shards) whose documents have newlines."""
    from test_shards_helpers import real_texts, record, tok_config, write_corpus
    from tokenization.shards import main_shards
    from tokenization.vocab_build import main_vocab

    pd, rev = real_texts(200, 120)
    docs = ["\n".join(pd[i:i + 4]) + "\n" for i in range(0, 160, 4)]
    docs += ["\n\n".join(rev[i:i + 3]) for i in range(0, 100, 3)]
    docs += ["第一行\n  第二行 with Latin words running\n结束", "喜欢\nplaying football\n和游泳"] * 5
    root = tmp_path_factory.mktemp("nl_run")
    from corpora.normalize import normalize_text

    recs = [record(normalize_text(t)) for t in docs]  # corpus shards hold normalised text
    write_corpus(root / "t", recs, recs[::5])
    cfg = tok_config(root, "t", "kinds=[char,sgt]")
    main_vocab(cfg)
    main_shards(cfg)
    return root / "t"


def _surfaces(vocab_dir):
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(vocab_dir / "tokenizer.json")).get_vocab()
    out = [""] * (max(vocab.values()) + 1)
    for t, i in vocab.items():
        t = t[2:] if t.startswith("##") and len(t) > 2 else t
        out[i] = "".join(c for c in t if not (c.isspace() or c == "\u2581")).lower()
    for i in range(5):
        out[i] = ""
    return out


def _real_ctx(run, primary):
    from tokenization.vocab import load_vocab_meta

    sizes = {k: int(load_vocab_meta(run / "vocab" / k)["size"]) for k in ("char", "sgt")}
    return context(primary=primary, char_size=sizes["char"], sgt_size=sizes["sgt"], seq_len=64)


def test_real_windows_with_newlines_hi_mvp_every_cjk_sgt_token_has_characters(newline_run):
    from tokenization.loader import PackedLoader

    surf = _surfaces(newline_run / "vocab" / "sgt")
    ld = PackedLoader(newline_run / "shards", "char", "train", 64, 8, seed=0, extra_kinds=("sgt",))
    n_nl = n_checked = 0
    for i in range(min(6, len(ld))):
        b = ld.batch(0, i)
        assert "vis_len" in b and "sgt.vis_len" in b
        first, _ = align_views(stream(b, "char", "char"), stream(b, "sgt", "char"))
        ids = b["sgt.input_ids"]
        real = (b["sgt.attention_mask"] > 0) & ~b["sgt.special_mask"]
        for r in range(ids.shape[0]):
            owned = set(first[r].tolist())
            for s in real[r].nonzero()[0].tolist():
                text = surf[ids[r, s]]
                n_nl += int(b["sgt.vis_len"][r, s] == 0 and ids[r, s] > 4)
                if text and all("\u4e00" <= ch <= "\u9fff" for ch in text):  # CJK: one char token a character
                    n_checked += 1
                    assert s in owned, f"SGT token {text!r} got no character"
    assert n_nl > 10 and n_checked > 500  # newlines (SGT tokens with no visible character) were there


def test_real_windows_with_newlines_al_mvp_a_has_no_label_leakage(newline_run):
    from tokenization.loader import PackedLoader

    surf = {k: _surfaces(newline_run / "vocab" / k) for k in ("char", "sgt")}
    ob = build_objective("al_mvp", {"mask_prob": 0.3}, _real_ctx(newline_run, "sgt"))
    ld = PackedLoader(newline_run / "shards", "sgt", "train", 64, 8, seed=0, extra_kinds=("char",))
    g = torch.Generator().manual_seed(0)
    n = 0
    for i in range(min(6, len(ld))):
        b = ld.batch(0, i)
        out = ob.collate(b, g)
        ids = b["input_ids"]
        S = ids.shape[1]
        sel = torch.zeros(ids.size, dtype=torch.bool)
        sel[out["coarse_pos"]] = True
        sel = sel.view(ids.shape)
        for src, lab in zip(out["char_src"].tolist(), out["char_labels"].tolist()):
            r, s = divmod(src, S)
            c = surf["char"][lab]
            if not c or ids[r, s] == 1:
                continue
            # the target's string starts inside the SGT token it is read from, and every SGT token
            # it spans is selected: its character is nowhere visible in the coarse input
            toks = ids[r, s:s + 8].tolist()
            run_on = "".join(surf["sgt"][x] for x in toks)
            off = run_on.find(c)
            assert 0 <= off < len(surf["sgt"][toks[0]]), (c, [surf["sgt"][x] for x in toks])
            pos = 0
            for k, x in enumerate(toks):
                if pos < off + len(c) and pos + len(surf["sgt"][x]) > off:
                    assert sel[r, s + k], (c, [surf["sgt"][x] for x in toks])
                pos += len(surf["sgt"][x])
            n += 1
    assert n > 100
