"""pretrain.baseline: the unigram (most-frequent-token) baseline of masked-LM accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from pipeline.errors import UserError
from pretrain.baseline import last_valid, main, summary, unigram_accuracy
from pretrain.trainer import Metrics
from test_shards_helpers import built_run
from tokenization.loader import PackedLoader


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return built_run(tmp_path_factory) / "t" / "shards"


def test_unigram_share_equals_most_frequent_maskable_token_of_the_valid_windows(shards):
    share, top, n = unigram_accuracy(shards / "char" / "valid")
    # the positions an MLM may mask: every non-special token of the valid windows, in stored order
    ld = PackedLoader(shards, "char", "valid", 32, 1, shuffle=False)  # batch 1: every window
    batches = [ld.batch(0, i) for i in range(len(ld))]
    toks = np.concatenate([b["input_ids"][~b["special_mask"]] for b in batches])
    counts = np.bincount(toks)
    assert n == toks.size
    assert top == int(counts.argmax()) and share == pytest.approx(counts.max() / toks.size)
    assert 0 < share < 1


def test_summary_reads_the_last_valid_record_and_the_runs_shards(shards, tmp_path):
    run = tmp_path / "mlm"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"run": "t", "runs_root": str(shards.parents[1]),
                                                     "data": {"kind": "char"}}))
    m = Metrics(run, enabled=True, tensorboard=False, resume_step=None)
    m.write({"step": 100, "split": "valid", "accuracy": 0.05, "loss": 7.0}, "valid")
    m.write({"step": 150, "split": "train", "loss": 6.0}, "train")
    m.write({"step": 200, "split": "valid", "accuracy": 0.25, "loss": 5.0}, "valid")
    assert last_valid(run / "metrics.jsonl")["step"] == 200
    share, _, n = unigram_accuracy(shards / "char" / "valid")
    line = summary(run)
    assert "25.0 % at step 200" in line and f"{100 * share:.1f} % of {n:,}" in line


def test_missing_or_truncated_shards_are_one_line_errors(shards, tmp_path, capsys):
    with pytest.raises(UserError, match="token shards not found"):
        unigram_accuracy(tmp_path)
    import shutil

    d = tmp_path / "valid"
    shutil.copytree(shards / "char" / "valid", d)
    ids = sorted(d.glob("*.ids.bin"))[0]
    ids.write_bytes(ids.read_bytes()[:-4])
    with pytest.raises(UserError, match="expected"):
        unigram_accuracy(d)
    assert main([str(tmp_path / "nope")]) == 2
    assert "config.yaml: not found" in capsys.readouterr().err
