"""Exports of the multi-vocabulary objectives and their fine-tuning adapters.

* round trip: ``save_export`` -> a *fresh* Python process loads the folder with ``AutoModel``
  (``trust_remote_code=True`` where the export needs it) and gives the same outputs;
* adapters: ``finetune.encoders.load_encoder`` picks the adapter named in ``pretrain_meta.json``
  and maps every character to the right token states (tiny word-level tokenizers built here).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pretrain.export import save_export
from pretrain.objectives.base import build_objective
from test_multivocab_data import context

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["我们", "喜欢", "北京", "天安门", "很", "好", "。", "你", "们"]


def _make_vocab(d: Path, kind: str, units: list[str], pattern: str) -> int:
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for u in units:
        vocab.setdefault(u, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(pattern), "isolated")])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    d.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(d)
    from tokenization.schema import VocabStats

    VocabStats(kind=kind, size=len(vocab), special_tokens={"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4},
               tokens_per_char=1.0).save(d)
    return len(vocab)


@pytest.fixture(scope="module")
def vocabs(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocab")
    chars = sorted(set("".join(WORDS)))
    _make_vocab(root / "char", "char", chars, ".")
    _make_vocab(root / "sgt", "sgt", WORDS, "我们|喜欢|北京|天安门|.")
    return {"char": str(root / "char"), "sgt": str(root / "sgt")}


VARIANTS = {
    "amber": ("amber", "char", {"coarse_kind": "sgt"}, "multivocab_pair", True),
    "hi_mvp": ("hi_mvp", "char", {}, "hi_mvp", True),
    "al_mvp_a": ("al_mvp", "sgt", {}, "al_mvp_char", False),
    "al_mvp_b": ("al_mvp", "char", {"reading": "b"}, "multivocab_pair", True),
}

# in-process forward of each export's AutoModel body on fixed inputs
IDS = [[2, 5, 6, 7, 8, 3, 9, 10, 3]]
COARSE_IDS = [[2, 5, 6, 3, 7, 3]]
COARSE_INDEX = [[0, 1, 1, 2, 2, 3, 4, 4, 5]]

LOADER = r"""
import json, sys, torch
from transformers import AutoModel
res = {}
for key, d, trc in json.loads(sys.argv[1]):
    m = AutoModel.from_pretrained(d, trust_remote_code=trc).eval()
    ids = torch.tensor(IDS); cids = torch.tensor(COARSE_IDS)
    with torch.no_grad():
        if type(m).__name__ == "AmbertModel":
            o = m(ids, torch.ones_like(ids), cids, torch.ones_like(cids))
            out = torch.cat([o.last_hidden_state.flatten(), o.coarse_hidden_state.flatten()])
        elif type(m).__name__ == "HiMvpModel":
            o = m(ids, torch.ones_like(ids), torch.tensor(COARSE_INDEX), torch.ones_like(cids))
            out = torch.cat([o.last_hidden_state.flatten(), o.char_hidden_state.flatten()])
        else:
            out = m(cids, torch.ones_like(cids)).last_hidden_state.flatten()
    res[key] = {"cls": type(m).__name__, "out": out.tolist()}
print("RESULT" + json.dumps(res))
"""


def _forward(model) -> torch.Tensor:
    ids, cids = torch.tensor(IDS), torch.tensor(COARSE_IDS)
    with torch.no_grad():
        name = type(model).__name__
        if name == "AmbertForMaskedLM":
            o = model.ambert(ids, torch.ones_like(ids), cids, torch.ones_like(cids))
            return torch.cat([o.last_hidden_state.flatten(), o.coarse_hidden_state.flatten()])
        if name == "HiMvpForMaskedLM":
            o = model.hi_mvp(ids, torch.ones_like(ids), torch.tensor(COARSE_INDEX), torch.ones_like(cids))
            return torch.cat([o.last_hidden_state.flatten(), o.char_hidden_state.flatten()])
        return model.bert(cids, torch.ones_like(cids)).last_hidden_state.flatten()


@pytest.fixture(scope="module")
def exports(vocabs, tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for key, (name, primary, opts, _, _) in VARIANTS.items():
        torch.manual_seed(0)
        ctx = context(primary=primary, char_size=16, sgt_size=14, paths=vocabs)
        ob = build_objective(name, opts, ctx).eval()
        d = save_export(ob, root / key, ctx, {"steps": 3})
        out[key] = (d, _forward(ob.export()))
    return out


def test_export_folders(exports):
    for key, (d, _) in exports.items():
        _, _, _, adapter, trc = VARIANTS[key]
        meta = json.loads((d / "pretrain_meta.json").read_text())
        assert meta["finetune_adapter"] == adapter
        assert meta["trust_remote_code"] is trc
        conf = json.loads((d / "config.json").read_text())
        if trc:
            assert set(conf["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForMaskedLM"}
            assert (d / "modeling_multivocab.py").is_file()
            assert (d / "fine.tokenizer.json").is_file() and (d / "coarse.tokenizer.json").is_file()
        else:  # AL-MVP reading a: a stock BertForMaskedLM plus the character decoder
            assert "auto_map" not in conf and conf["model_type"] == "bert"
            assert (d / "char_decoder.safetensors").is_file()


def test_export_round_trip_in_a_fresh_process(exports):
    todo = [[key, str(d), VARIANTS[key][4]] for key, (d, _) in exports.items()]
    code = f"IDS={IDS}\nCOARSE_IDS={COARSE_IDS}\nCOARSE_INDEX={COARSE_INDEX}\n" + LOADER
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("PYTHONPATH", None)  # the export must load without this repository on the path
    r = subprocess.run([sys.executable, "-c", code, json.dumps(todo)], capture_output=True, text=True,
                       cwd=str(Path(todo[0][1]).parent), env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.split("RESULT", 1)[1])
    expect_cls = {"amber": "AmbertModel", "hi_mvp": "HiMvpModel", "al_mvp_a": "BertModel", "al_mvp_b": "AmbertModel"}
    for key, (_, ref) in exports.items():
        assert res[key]["cls"] == expect_cls[key]
        got = torch.tensor(res[key]["out"])
        assert got.shape == ref.shape
        assert torch.allclose(got, ref, atol=1e-5), key


TEXTS = ["我们喜欢北京。", "你们很好"]


@pytest.mark.parametrize("key", list(VARIANTS))
def test_adapter_char_mapping(exports, key):
    from finetune.encoders import load_encoder

    d, _ = exports[key]
    torch.manual_seed(0)
    enc = load_encoder(d).eval()
    assert enc.adapter_name == VARIANTS[key][3]
    with torch.no_grad():
        out = enc.encode(TEXTS, TEXTS[::-1])
    B = len(TEXTS)
    C = max(len(t) for t in TEXTS)
    assert out.char_states_a.shape == (B, C, enc.hidden_size)
    assert out.pooled.shape == (B, enc.hidden_size)
    assert out.char_mask_a.tolist() == [[c < len(t) for c in range(C)] for t in TEXTS]
    assert out.char_states_b.shape == (B, C, enc.hidden_size)
    s = out.char_states_a[0]
    if key in ("amber", "al_mvp_b"):
        h = enc.hidden_size // 2
        assert h == 32
        # 我们 is one coarse token: its two characters share the coarse half (offset embedding is 0 at init)
        assert torch.allclose(s[0, h:], s[1, h:]) and not torch.allclose(s[1, h:], s[2, h:])
        # ... and have their own char halves
        assert not torch.allclose(s[0, :h], s[1, :h])
        # AMBERT classification: each view's [CLS] separately, the pooled state their concatenation
        assert enc.pooled_view_sizes == (h, h)
        assert torch.equal(torch.cat(out.pooled_views, -1), out.pooled)
    elif key == "al_mvp_a":
        # stock SGT encoder: the two characters of 我们 read the same token state + their offsets
        off = enc.char_offset_emb.weight
        assert torch.allclose(s[1] - s[0], off[1] - off[0], atol=1e-5)
        from safetensors.torch import load_file
        dec = load_file(str(d / "char_decoder.safetensors"))["offset.weight"]
        assert torch.equal(off[: dec.shape[0]], dec)
    else:
        assert enc.hidden_size == 32 and not torch.allclose(s[0], s[1])
    if key not in ("amber", "al_mvp_b"):
        assert enc.pooled_view_sizes == () and out.pooled_views is None


def test_hi_mvp_fine_to_coarse_index(exports):
    from finetune.adapters_multivocab import fine_to_coarse_index
    from finetune.encoders import load_encoder

    enc = load_encoder(exports["hi_mvp"][0])
    pf = enc.fine.pack(["我们喜欢北京。"], ["你们很好"], 64)
    pc = enc.coarse.pack(["我们喜欢北京。"], ["你们很好"], 64)
    # fine:   [CLS] 我 们 喜 欢 北 京 。 [SEP] 你 们 很 好 [SEP]
    # coarse: [CLS] 我们 喜欢 北京 。 [SEP] 你 们 很 好 [SEP]
    idx = fine_to_coarse_index(pf, pc)
    assert idx.tolist() == [[0, 1, 1, 2, 2, 3, 3, 4, 5, 6, 7, 8, 9, 10]]


def test_random_init_twin_loads(exports):
    from finetune.encoders import load_encoder

    for key in ("hi_mvp", "al_mvp_a"):
        enc = load_encoder(exports[key][0], random_init=True)
        out = enc.encode(["我们"])
        assert out.char_states_a.shape[1] == 2
