"""PackedLoader: deterministic O(1) seek, ranks, workers, mixing, aligned extra streams, units."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import UserError
from test_shards_helpers import built_run
from tokenization.align import tokens_in_chars
from tokenization.loader import PackedLoader, ShardsNotFound, fix_cut_units, group_probabilities, mixing_config
from tokenization.shards_config import MixingConfig

KEYS = {"input_ids": np.int64, "word_start": np.bool_, "char_len": np.int16, "special_mask": np.bool_,
        "attention_mask": np.int64}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return built_run(tmp_path_factory) / "t" / "shards"


def _doc_streams(shards: Path, kind: str, split: str) -> list[dict]:
    """Every document of a split as arrays, in stored order."""
    d = shards / kind / split
    meta = json.loads((d / "meta.json").read_text())
    docs = []
    for s in meta["shards"]:
        off = np.load(d / f"{s['name']}.docs.npy")
        ids = np.fromfile(d / f"{s['name']}.ids.bin", dtype=meta["dtype"])
        cl = np.fromfile(d / f"{s['name']}.char_len.bin", dtype=np.uint8)
        ws = np.fromfile(d / f"{s['name']}.word_start.bin", dtype=np.uint8)
        dm = [json.loads(x) for x in (d / f"{s['name']}.docmeta.jsonl").read_text().splitlines()]
        for k in range(len(off) - 1):
            a, b = off[k], off[k + 1]
            docs.append({"ids": ids[a:b], "cl": cl[a:b], "ws": ws[a:b], **dm[k]})
    return docs


def test_batch_contract_and_o1_seek_equals_sequential(shards):
    ld = PackedLoader(shards, "char", "train", 32, 4, seed=3)
    assert len(ld) == ld.windows_per_epoch // 4 and ld.vocab_meta["kind"] == "char"
    seq = list(itertools.islice(ld.iter_from(0, 0), len(ld) + 5))  # crosses into epoch 1
    assert [(e, i) for e, i, _ in seq[-6:]] == [(0, len(ld) - 1)] + [(1, i) for i in range(5)]
    fresh = PackedLoader(shards, "char", "train", 32, 4, seed=3)
    for e, i, b in reversed(seq):  # any order, no iteration from the start
        again = fresh.batch(e, i)
        for k in b:
            assert np.array_equal(b[k], again[k])
    b = seq[0][2]
    for k, dt in KEYS.items():
        assert b[k].dtype == dt and b[k].shape == (4, 32)
    assert (b["input_ids"][:, 0] == 2).all() and b["special_mask"][:, 0].all()
    assert set(b) >= {"unit_len", "unit_ngram"}  # char is the lexicon's base kind
    sp = b["special_mask"]
    assert (b["char_len"][sp] == 0).all() and b["word_start"][sp].all()
    # resuming mid-stream gives the same batches
    resumed = list(itertools.islice(fresh.iter_from(0, len(ld) - 1), 3))
    assert [(e, i) for e, i, _ in resumed] == [(0, len(ld) - 1), (1, 0), (1, 1)]
    assert np.array_equal(resumed[1][2]["input_ids"], seq[len(ld)][2]["input_ids"])


def test_windows_in_stored_order_rebuild_the_stream(shards):
    ld = PackedLoader(shards, "sgt", "valid", 24, 1, shuffle=False)
    assert not ld.drop_last
    docs = [d for d in _doc_streams(shards, "sgt", "valid") if len(d["ids"])]
    want_ids = np.concatenate([np.append(d["ids"].astype(np.int64), 3) for d in docs])
    want_cl = np.concatenate([np.append(d["cl"].astype(np.int64), 0) for d in docs])
    got_ids, got_cl = [], []
    for i in range(len(ld)):
        b = ld.batch(0, i)
        n = int(b["attention_mask"][0].sum())
        assert (b["input_ids"][0, n:] == 0).all()  # padding only at the end of the split
        got_ids.append(b["input_ids"][0, 1:n])
        got_cl.append(b["char_len"][0, 1:n])
    assert np.array_equal(np.concatenate(got_ids), want_ids)
    assert np.array_equal(np.concatenate(got_cl), want_cl)
    assert int(np.concatenate(got_cl).sum()) == sum(d["n_chars"] for d in docs)


def test_ranks_are_disjoint_and_cover_the_epoch(shards):
    W = 3
    loaders = [PackedLoader(shards, "char", "train", 32, 4, seed=1, rank=r, world_size=W) for r in range(W)]
    assert len({len(ld) for ld in loaders}) == 1
    n = len(loaders[0])
    g_all, w_all = loaders[0].epoch_draws(2)
    seen = []
    for r, ld in enumerate(loaders):
        for i in range(n):
            g, w = ld.batch_draws(2, i)
            seen.extend(zip(g.tolist(), w.tolist()))
    assert len(seen) == len(set(seen)) == n * 4 * W  # disjoint
    assert set(seen) == set(zip(g_all[:n * 4 * W].tolist(), w_all[:n * 4 * W].tolist()))  # covering
    # batch row j of rank r, batch i is window r + W * (4 * i + j) of the epoch's global order
    for r, ld in enumerate(loaders):
        for i in (0, n - 1):
            b = ld.batch(2, i)
            for j in range(4):
                assert np.array_equal(b["input_ids"][j], ld.window(2, r + W * (4 * i + j))["input_ids"][0])
    # dataloader workers split a rank's batches without overlap
    ld = loaders[1]
    got = [sorted(i for _, i, _ in itertools.islice(ld.iter_from(0, 0, worker=k, num_workers=2), n // 2))
           for k in range(2)]
    assert set(got[0]).isdisjoint(got[1]) and set(got[0]) | set(got[1]) == set(range(2 * (n // 2)))


def test_epoch_order_is_a_seeded_permutation(shards):
    a = PackedLoader(shards, "char", "train", 32, 4, seed=0)
    b = PackedLoader(shards, "char", "train", 32, 4, seed=0)
    c = PackedLoader(shards, "char", "train", 32, 4, seed=1)
    w0, w1 = a.epoch_draws(0)[1], a.epoch_draws(1)[1]
    assert sorted(w0.tolist()) == sorted(w1.tolist()) == list(range(a.windows_per_epoch))
    assert not np.array_equal(w0, w1) and np.array_equal(w0, b.epoch_draws(0)[1])
    assert not np.array_equal(w0, c.epoch_draws(0)[1])
    v = PackedLoader(shards, "char", "train", 32, 4, shuffle=False)
    assert v.epoch_draws(0)[1].tolist() == list(range(v.windows_per_epoch))


def test_mixing_proportions(shards):
    natural = PackedLoader(shards, "char", "train", 64, 8, seed=0, mixing={"alpha": 1.0})
    groups = natural.describe()
    keys = [(g["lang"], g["source"]) for g in groups]
    assert ("en", "hard") in keys and ("zh", "big") in keys
    chars = np.array([g["chars"] for g in groups], dtype=float)
    assert np.allclose([g["p"] for g in groups], chars / chars.sum())
    # alpha = 0: languages equally likely, sources inside a language by size
    flat = PackedLoader(shards, "char", "train", 64, 8, seed=0, mixing={"alpha": 0.0})
    d = {(g["lang"], g["source"]): g for g in flat.describe()}
    assert d[("en", "hard")]["p"] == pytest.approx(0.5)
    zh = [g for k, g in d.items() if k[0] == "zh"]
    assert sum(g["p"] for g in zh) == pytest.approx(0.5)
    assert sum(g["draws"] for g in d.values()) == flat.windows_per_epoch
    assert abs(d[("en", "hard")]["draws"] - 0.5 * flat.windows_per_epoch) <= 1
    # the draws of an epoch follow the probabilities, and windows of a group hold only its documents
    g_arr, _ = flat.epoch_draws(0)
    counts = np.bincount(g_arr, minlength=len(flat.group_keys))
    assert counts.tolist() == [g["draws"] for g in flat.describe()]
    for pos in range(0, flat.windows_per_epoch, 7):
        g = flat.group_keys[int(g_arr[pos])]
        assert {(it["lang"], it["source"]) for it in flat.window_items(0, pos)} == {g}
    # the up-weighted tiny group cycles through its windows; epochs continue where they stopped
    e1 = np.bincount(flat.epoch_draws(1)[0], minlength=len(flat.group_keys))
    assert e1.tolist() == counts.tolist()
    # weights per language and per source; a weight of 0 removes a group
    w = PackedLoader(shards, "char", "train", 64, 8, mixing={"alpha": 1.0, "en": 0.0, "source:big": 0.5})
    dw = {(g["lang"], g["source"]): g for g in w.describe()}
    assert dw[("en", "hard")]["draws"] == 0
    p_big = dw[("zh", "big")]["chars"] * 0.5
    rest = sum(g["chars"] for k, g in dw.items() if k[0] == "zh" and k[1] != "big")
    assert dw[("zh", "big")]["p"] == pytest.approx(p_big / (p_big + rest))
    with pytest.raises(UserError, match="'fr'"):
        PackedLoader(shards, "char", "train", 64, 8, mixing={"fr": 2.0})


def test_mixing_weight_for_a_language_missing_from_valid(shards):
    # the train split has 'en' documents, the small valid split does not: one pretrain config's
    # mixing serves both loaders, so the valid loader must not reject the weight
    mix = {"alpha": 0.5, "en": 2.0, "source:big": 0.5}
    PackedLoader(shards, "char", "train", 16, 2, mixing=mix)
    v = PackedLoader(shards, "char", "valid", 16, 2, mixing=mix)
    assert len(v) > 0 and "en" not in {g["lang"] for g in v.describe()}


def test_group_probabilities_temperature():
    keys = [("zh", "a"), ("zh", "b"), ("en", "c")]
    counts = [{"chars": 600, "tokens": 0, "docs": 0}, {"chars": 300, "tokens": 0, "docs": 0},
              {"chars": 100, "tokens": 0, "docs": 0}]
    p = group_probabilities(keys, counts, MixingConfig(alpha=0.5))
    q_zh, q_en = 900 ** 0.5, 100 ** 0.5
    assert p.tolist() == pytest.approx([q_zh / (q_zh + q_en) * 2 / 3, q_zh / (q_zh + q_en) / 3, q_en / (q_zh + q_en)])
    p2 = group_probabilities(keys, counts, MixingConfig(alpha=1.0, source_alpha=0.0))
    assert p2.tolist() == pytest.approx([0.45, 0.45, 0.1])
    m = mixing_config({"alpha": 0.3, "lang:yue": 2, "source:wiki": 0.5, "en": 1.5})
    assert m.alpha == 0.3 and m.lang_weights == {"yue": 2.0, "en": 1.5} and m.source_weights == {"wiki": 0.5}
    assert mixing_config({"alpha": 0.7, "unit": "tokens"}).unit == "tokens"
    with pytest.raises(UserError):
        mixing_config({"alpha": -1})


def _check_aligned(ld: PackedLoader, shards: Path, b: dict, items_of_row, extra: str) -> None:
    docs = {k: _doc_streams(shards, k, ld.split) for k in (ld.kind, extra)}
    for r, items in enumerate(items_of_row):
        for prefix, kind in (("", ld.kind), (f"{extra}.", extra)):
            ids = b[prefix + "input_ids"][r]
            n = int(b[prefix + "attention_mask"][r].sum())
            assert n <= len(ids) and (ids[n:] == 0).all() and ids[0] == 2
            want = [2]
            for it in items:
                doc = docs[kind][int(it["doc"]) + _doc_base(ld, it["shard"])]
                c0, c1 = it["chars"]
                t0, t1 = tokens_in_chars(doc["cl"], c0, c1)
                assert int(doc["cl"][t0:t1].sum()) == c1 - c0  # a common boundary of both streams
                want += doc["ids"][t0:t1].tolist() + ([3] if it["sep"] else [])
            assert ids[:n].tolist() == want
        assert int(b["char_len"][r].sum()) == int(b[f"{extra}.char_len"][r].sum())


def _doc_base(ld: PackedLoader, shard_name: str) -> int:
    names = [s.name for s in ld.data.shards]
    return int(ld._shard_doc_base[names.index(shard_name)])


def test_extra_stream_covers_exactly_the_same_characters(shards):
    ld = PackedLoader(shards, "char", "train", 48, 6, seed=5, extra_kinds=("sgt",))
    for i in (0, 3, len(ld) - 1):
        b = ld.batch(0, i)
        assert b["sgt.input_ids"].shape == (6, ld.extra_len["sgt"]) and b["sgt.char_len"].dtype == np.int16
        g, w = ld.batch_draws(0, i)
        pos0 = (i * 6)  # world_size 1: the batch's windows are draws [6i, 6i + 6)
        items = [ld.window_items(0, pos0 + r) for r in range(6)]
        _check_aligned(ld, shards, b, items, "sgt")
        # trimming only removes tokens: most of the window is kept
        assert b["attention_mask"].sum() >= 0.8 * b["attention_mask"].size


def test_finer_extra_stream_is_cut_to_its_budget(shards):
    # sgt primary with the longer char stream in the same number of positions
    ld = PackedLoader(shards, "sgt", "valid", 40, 4, shuffle=False, extra_kinds=("char",), extra_seq_len=40)
    for i in range(len(ld)):
        b = ld.batch(0, i)
        items = [ld.window_items(0, i * 4 + r) for r in range(4)]
        _check_aligned(ld, shards, b, items, "char")
    wide = PackedLoader(shards, "sgt", "valid", 40, 4, shuffle=False, extra_kinds=("char",), extra_seq_len=64)
    b = wide.batch(0, 1)
    assert b["char.input_ids"].shape == (4, 64) and b["attention_mask"].sum() > ld.batch(0, 1)["attention_mask"].sum()


def test_extra_stream_is_sized_to_cover_the_primary_window(shards):
    """Default ``extra_seq_len="auto"``: the finer char stream under SGT windows gets room for the
    window's text (tokens per character of both streams), so windows are not cut short."""
    import json

    def tpc(kind):
        m = json.loads((shards / kind / "valid" / "meta.json").read_text(encoding="utf-8"))
        return sum(s["n_tokens"] for s in m["shards"]) / sum(s["n_chars"] for s in m["shards"])

    auto = PackedLoader(shards, "sgt", "valid", 40, 4, shuffle=False, extra_kinds=("char",))
    want = int(np.ceil(39 * tpc("char") / tpc("sgt") * 1.25)) + 1
    assert auto.extra_len["char"] == want > 40
    fixed = PackedLoader(shards, "sgt", "valid", 40, 4, shuffle=False, extra_kinds=("char",), extra_seq_len=40)
    chars = {"auto": 0, "fixed": 0, "primary_only": 0}
    solo = PackedLoader(shards, "sgt", "valid", 40, 4, shuffle=False)
    for i in range(len(auto)):
        a, f = auto.batch(0, i), fixed.batch(0, i)
        assert a["char.input_ids"].shape[1] == want
        assert int(a["char_len"].astype(np.int64).sum()) == int(a["char.char_len"].astype(np.int64).sum())
        chars["auto"] += int(a["char_len"].astype(np.int64).sum())
        chars["fixed"] += int(f["char_len"].astype(np.int64).sum())
        chars["primary_only"] += int(solo.batch(0, i)["char_len"].astype(np.int64).sum())
    # the capped char stream cuts SGT windows short; sized, the pair sees (nearly) the text of the
    # SGT stream alone (only the trimming to common boundaries at window edges remains)
    assert chars["fixed"] < 0.93 * chars["primary_only"]
    assert chars["auto"] >= 0.97 * chars["primary_only"]
    with pytest.raises(UserError):
        PackedLoader(shards, "sgt", "valid", 40, 4, extra_kinds=("char",), extra_seq_len="wide")


def test_windows_inside_the_enormous_document(shards):
    ld = PackedLoader(shards, "char", "train", 128, 4, seed=0, extra_kinds=("sgt",), mixing={"alpha": 1.0})
    big = ld.group_keys.index(("zh", "big"))
    g_arr, _ = ld.epoch_draws(0)
    positions = np.flatnonzero(g_arr == big)[:8].tolist()
    for pos in positions:
        b = ld.window(0, pos)
        items = ld.window_items(0, pos)
        assert len(items) == 1 and items[0]["source"] == "big"
        _check_aligned(ld, shards, b, [items], "sgt")


def test_units_cut_by_window_edges_become_single_tokens(shards):
    ld = PackedLoader(shards, "char", "train", 32, 8, seed=2)
    for i in range(5):
        b = ld.batch(0, i)
        ul, un, sp = b["unit_len"].astype(int), b["unit_ngram"], b["special_mask"]
        assert (ul[sp] == 1).all() and (un[sp] == -1).all()
        for r in range(ul.shape[0]):
            k = 0
            while k < ul.shape[1]:
                n = ul[r, k]
                assert n >= 1, (r, k)  # every position is the start of a complete unit or inside one
                assert not sp[r, k + 1:k + n].any() and k + n <= ul.shape[1]
                assert (ul[r, k + 1:k + n] == 0).all()
                k += n
    ul = np.array([[1, 0, 3, 0, 0, 2, 0, 2]], dtype=np.int16)
    un = np.array([[-1, -1, 7, -1, -1, 5, -1, 9]], dtype=np.int32)
    sp = np.array([[True, False, False, False, False, False, False, False]])
    fl, fn = fix_cut_units(ul, un, sp)
    assert fl.tolist() == [[1, 1, 3, 0, 0, 2, 0, 1]] and fn.tolist() == [[-1, -1, 7, -1, -1, 5, -1, -1]]


def test_missing_shards_and_bad_arguments(shards, tmp_path):
    with pytest.raises(ShardsNotFound):
        PackedLoader(tmp_path, "char", "train", 32, 4)
    with pytest.raises(FileNotFoundError):
        PackedLoader(shards, "word", "train", 32, 4)
    with pytest.raises(UserError):
        PackedLoader(shards, "char", "train", 32, 4, rank=2, world_size=2)
    tiny = PackedLoader(shards, "char", "valid", 32, 100_000)
    assert len(tiny) == 0
    with pytest.raises(UserError, match="too little data"):
        next(tiny.iter_from(0, 0))
