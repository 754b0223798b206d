"""Segmentation cache: bulk, parallel, reused, invalidated by corpus or settings changes."""

from __future__ import annotations

import pytest

from corpora.io import write_shard
from pipeline.errors import UserError
from tokenization.segcache import ensure_segmented, is_fresh, iter_segmented, iter_split, seg_paths
from tokenization.segment import Segmenter

DOCS = ["我来到北京清华大学", "", "Hello world, 2008-6-1 😀", "臺灣繁體中文", "小明硕士毕业于中国科学院计算所"]


def _corpus(run, split, shards):
    for i, texts in enumerate(shards):
        recs = [{"id": f"{i}-{j}", "text": t, "lang": "zh", "source": "test", "meta": {}} for j, t in enumerate(texts)]
        write_shard(run / "corpus" / split / f"shard-{i:05d}.jsonl.zst", recs)


def test_segment_once_and_reuse(tmp_path):
    run = tmp_path / "r"
    _corpus(run, "train", [DOCS, DOCS[::-1], ["只有一篇"]])
    seg = Segmenter()
    s1 = ensure_segmented(run, "train", seg, workers=2)
    assert (s1.shards, s1.segmented, s1.reused) == (3, 3, 0)
    assert s1.docs == 2 * len(DOCS) + 1
    s2 = ensure_segmented(run, "train", seg, workers=2)
    assert (s2.segmented, s2.reused) == (0, 3)
    got = list(iter_segmented(run, "train", 0))
    assert [d["text"] for d, _ in got] == DOCS
    for d, words in got:
        assert "".join(words) == d["text"]
        assert words == seg.cut(d["text"])
    assert got[1][1] == []  # empty document -> empty word list
    assert len(list(iter_split(run, "train"))) == s1.docs


def test_invalidation(tmp_path):
    run = tmp_path / "r"
    _corpus(run, "train", [DOCS, ["第二个分片"]])
    seg = Segmenter()
    ensure_segmented(run, "train", seg)
    # corpus shard 1 changes -> only it is re-segmented
    _corpus(run, "train", [DOCS, ["第二个分片改了"]])
    s = ensure_segmented(run, "train", seg)
    assert (s.segmented, s.reused) == (1, 1)
    # segmenter settings change -> everything is stale
    hmm = Segmenter(hmm=True)
    assert not is_fresh(run, "train", 0, hmm)
    s = ensure_segmented(run, "train", hmm)
    assert s.segmented == 2


def test_stale_cache_is_an_error_without_segmenter(tmp_path):
    run = tmp_path / "r"
    _corpus(run, "train", [DOCS])
    with pytest.raises(UserError, match="missing or stale"):
        list(iter_segmented(run, "train", 0))
    # with a segmenter it segments on demand and caches
    assert len(list(iter_segmented(run, "train", 0, Segmenter()))) == len(DOCS)
    assert all(p.is_file() for p in seg_paths(run, "train", 0))
    with pytest.raises(UserError, match="not found"):
        list(iter_segmented(run, "train", 7, Segmenter()))


def test_interrupted_cache_is_not_used(tmp_path):
    run = tmp_path / "r"
    _corpus(run, "train", [DOCS])
    seg = Segmenter()
    ensure_segmented(run, "train", seg)
    seg_file, meta = seg_paths(run, "train", 0)
    meta.unlink()  # the fingerprint is written last: without it the shard counts as unfinished
    assert not is_fresh(run, "train", 0, seg)
    assert ensure_segmented(run, "train", seg).segmented == 1


def test_bad_record(tmp_path):
    run = tmp_path / "r"
    write_shard(run / "corpus" / "train" / "shard-00000.jsonl.zst", [{"id": "x", "text": 5}])
    with pytest.raises(UserError, match=r"record 1"):
        ensure_segmented(run, "train", Segmenter())
