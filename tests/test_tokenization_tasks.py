"""The tokenization stage on datatrove executors: same outputs for 1 and 2 workers, resume by task
after one task fails (completion markers), deterministic vocabulary samples."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline.executors import completed_tasks
from test_shards_helpers import corpus_docs, tok_config, write_corpus

KINDS = "kinds=[char,sgt,word,ngram]"
# the n-gram lexicon on sgt: the char kind's WordPiece trainer (``tokenizers``) breaks ties between
# equally frequent merges in hash-map order, so a few of its non-CJK pieces differ between two
# identical one-worker runs (pre-existing, independent of the executor); the char vocabulary is
# therefore compared by its CJK entries and the char shards are written from the same folder
OPTS = (KINDS, "word.min_count=2", "ngram.base_kind=sgt")


def _vocab_files(vocab_root: Path) -> dict[str, bytes]:
    """Every file of every vocabulary folder except the metrics/timings in stats.json."""
    out = {}
    for kind in ("sgt", "word", "ngram"):
        for p in sorted((vocab_root / kind).iterdir()):
            if p.is_file() and p.name != "stats.json":
                out[f"{kind}/{p.name}"] = p.read_bytes()
    out["char/cjk"] = sorted(t for t in (vocab_root / "char" / "vocab.txt").read_text().split("\n")
                             if len(t) == 1 and "\u4e00" <= t <= "\u9fff")
    return out


def _same_char_vocab(clean: Path, dst: Path) -> None:
    shutil.rmtree(dst / "t" / "vocab" / "char")
    shutil.copytree(clean / "t" / "vocab" / "char", dst / "t" / "vocab" / "char")


def _shard_files(shards_root: Path) -> dict[str, bytes]:
    out = {}
    for p in sorted(shards_root.rglob("*")):
        if p.is_file() and ".tasks" not in p.parts and p.name != "meta.json":
            out[str(p.relative_to(shards_root))] = p.read_bytes()
    return out


def _stats_sizes(vocab_root: Path) -> dict:
    return {k: json.loads((vocab_root / k / "stats.json").read_text())["size"] for k in ("sgt", "word", "ngram")}


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    """A run built with one worker, start to finish (corpus written with the corpus stage's format)."""
    from tokenization.shards import main_shards
    from tokenization.vocab_build import main_vocab

    root = tmp_path_factory.mktemp("tasks_clean")
    train, valid = corpus_docs()
    write_corpus(root / "t", train, valid)
    cfg = tok_config(root, "t", *OPTS)
    assert main_vocab(cfg) == 0 and main_shards(cfg) == 0
    return root


def _fresh_copy(clean: Path, dst: Path) -> None:
    shutil.copytree(clean / "t" / "corpus", dst / "t" / "corpus")


def test_two_workers_write_the_same_vocabularies_and_shards(clean, tmp_path):
    from tokenization.shards import main_shards
    from tokenization.vocab_build import main_vocab

    _fresh_copy(clean, tmp_path)
    cfg = tok_config(tmp_path, "t", *OPTS, "executor.workers=2")
    assert main_vocab(cfg) == 0
    # every stage really ran as 3 tasks (one per train shard) under the executor
    assert completed_tasks(tmp_path / "t" / "seg" / ".tasks" / "train") == {0, 1, 2}
    counts = next((tmp_path / "t" / "vocab" / ".counts").iterdir())
    assert completed_tasks(counts / "tasks") == {0, 1, 2} and len(list(counts.glob("part-*.json.zst"))) == 3
    assert len(list(next((tmp_path / "t" / "vocab" / ".ngram-counts").iterdir()).glob("part-*.npz"))) == 3
    assert _vocab_files(tmp_path / "t" / "vocab") == _vocab_files(clean / "t" / "vocab")
    assert _stats_sizes(tmp_path / "t" / "vocab") == _stats_sizes(clean / "t" / "vocab")
    _same_char_vocab(clean, tmp_path)
    assert main_shards(cfg) == 0
    assert _shard_files(tmp_path / "t" / "shards") == _shard_files(clean / "t" / "shards")
    for kind in ("char", "sgt", "word"):
        a = json.loads((clean / "t" / "shards" / kind / "train" / "meta.json").read_text())
        b = json.loads((tmp_path / "t" / "shards" / kind / "train" / "meta.json").read_text())
        assert a["shards"] == b["shards"] and a["groups"] == b["groups"]


def test_failed_task_resumes_by_task_and_matches_a_clean_run(clean, tmp_path, monkeypatch):
    import tokenization.shards as sh
    import tokenization.vocab_build as vb

    _fresh_copy(clean, tmp_path)
    cfg = tok_config(tmp_path, "t", *OPTS)
    real_count, real_shard = vb._count_task, sh._shard_task

    def failing_count(rank, *args):
        if rank == 1:
            raise RuntimeError("node lost")
        real_count(rank, *args)

    monkeypatch.setattr(vb, "_count_task", failing_count)
    with pytest.raises(RuntimeError, match="node lost"):
        vb.main_vocab(cfg)
    counts = next((tmp_path / "t" / "vocab" / ".counts").iterdir())
    assert completed_tasks(counts / "tasks") == {0}  # task 0 done and marked, 1 failed, 2 never started
    part0 = counts / "part-00000.json.zst"
    mtime = part0.stat().st_mtime_ns
    monkeypatch.setattr(vb, "_count_task", real_count)
    assert vb.main_vocab(cfg) == 0
    assert part0.stat().st_mtime_ns == mtime  # the completed task was not run again
    assert _vocab_files(tmp_path / "t" / "vocab") == _vocab_files(clean / "t" / "vocab")

    _same_char_vocab(clean, tmp_path)

    def failing_shard(rank, *args):
        if rank == 1:
            raise RuntimeError("node lost")
        real_shard(rank, *args)

    monkeypatch.setattr(sh, "_shard_task", failing_shard)
    with pytest.raises(RuntimeError, match="node lost"):
        sh.main_shards(cfg)
    d = tmp_path / "t" / "shards" / "char" / "train"
    assert (d / "00000.docs.npy").exists() and not (d / "00001.docs.npy").exists() and not (d / "meta.json").exists()
    tasks = next(p for p in (tmp_path / "t" / "shards" / ".tasks").iterdir() if p.name.startswith("train-"))
    assert completed_tasks(tasks) == {0}
    kept = {p.name: p.stat().st_mtime_ns for p in d.glob("00000.*")}
    monkeypatch.setattr(sh, "_shard_task", real_shard)
    assert sh.main_shards(cfg) == 0
    assert {p.name: p.stat().st_mtime_ns for p in d.glob("00000.*")} == kept
    assert completed_tasks(tasks) == {0, 1, 2}
    assert _shard_files(tmp_path / "t" / "shards") == _shard_files(clean / "t" / "shards")
    for kind in ("char", "sgt", "word"):
        a = json.loads((clean / "t" / "shards" / kind / "train" / "meta.json").read_text())
        b = json.loads((tmp_path / "t" / "shards" / kind / "train" / "meta.json").read_text())
        assert a["shards"] == b["shards"] and a["groups"] == b["groups"]
    # a marker whose output went missing does not hide the loss: that task runs again
    (d / "00002.docs.npy").unlink()
    assert sh.main_shards(cfg) == 0
    assert (d / "00002.docs.npy").exists() and (d / "meta.json").exists()


def test_vocabulary_sample_is_deterministic_and_bounded(clean, tmp_path):
    from tokenization.config import SampleConfig
    from tokenization.segcache import ensure_segmented
    from tokenization.segment import Segmenter
    from tokenization.vocab_build import count_units, in_sample

    shutil.copytree(clean / "t" / "corpus", tmp_path / "t" / "corpus")
    run = tmp_path / "t"
    s = ensure_segmented(run, "train", Segmenter())
    full_units, full_chars, n_all = count_units(run)
    assert n_all == s.docs
    sample = SampleConfig(max_docs=s.docs // 4, seed=3)
    u1, c1, n1 = count_units(run, sample=sample)
    assert 0.5 * s.docs / 4 < n1 < 1.5 * s.docs / 4  # about max_docs documents
    assert sum(c1.values()) < sum(full_chars.values())
    # same sample again, and with two workers (each task decides alone, by document id)
    from pipeline.executors import ExecutorConfig

    u2, c2, n2 = count_units(run, ExecutorConfig(workers=2), sample)
    assert (u1, c1, n1) == (u2, c2, n2) and list(u1) == list(u2)
    u3, _, n3 = count_units(run, sample=SampleConfig(max_docs=s.docs // 4, seed=4))
    assert u3 != u1  # another seed, another sample
    assert in_sample({"id": "a"}, 1.0, 0) and not in_sample({"id": "a"}, 0.0, 0)
    # the char budget works the same way; max_chars == 0 and max_docs == 0 keep everything
    chars_total = sum(full_chars.values())
    _, cc, _ = count_units(run, sample=SampleConfig(max_chars=chars_total // 3))
    assert sum(cc.values()) < 0.7 * chars_total
    assert count_units(run, sample=SampleConfig())[2] == n_all


def test_bad_sample_option_is_refused():
    from pipeline.config import ConfigError, load_config
    from tokenization.config import TokenizationConfig

    with pytest.raises((ConfigError, ValueError), match="sample"):
        load_config(TokenizationConfig, None, ["sample.max_docs=-1"])
    with pytest.raises((ConfigError, ValueError), match="executor"):
        load_config(TokenizationConfig, None, ["executor.kind=spark"])


def test_sentencepiece_sample_is_seeded(tmp_path):
    """input_sentence_size draws a sample of sentencepiece's input lines: a fixed seed gives the
    same vocabulary every time, and every required character stays in it."""
    from collections import Counter

    from tokenization.vocab import learn_sgt

    train, _ = corpus_docs()
    from tokenization.segment import Segmenter
    from tokenization.vocab import attach_spaces

    seg = Segmenter()
    units, chars = Counter(), Counter()
    for d in train[:300]:
        units.update(attach_spaces(seg.cut(d["text"])))
        chars.update(d["text"])
    opts = {"input_sentence_size": 400, "shuffle_input_sentence": True, "seed": 11, "num_threads": 1}
    a = learn_sgt(units, chars, "spm_bpe", 1500, 2, workdir=tmp_path, spm_options=opts)
    b = learn_sgt(units, chars, "spm_bpe", 1500, 2, workdir=tmp_path, spm_options=opts)
    full = learn_sgt(units, chars, "spm_bpe", 1500, 2, workdir=tmp_path)
    assert a.to_str() == b.to_str()
    assert a.get_vocab() != full.get_vocab()  # 400 of the distinct words: another vocabulary
    va = a.get_vocab()
    assert all(c in va for c, n in chars.items() if n >= 2 and not c.isspace())


@pytest.mark.slow
def test_ray_executor_writes_the_same_shards(clean, tmp_path):
    """The same config through the Ray executor (a local Ray instance, 2 tasks at once) writes
    byte-identical shards and the same meta.json counts."""
    pytest.importorskip("ray")  # an optional dependency (the cluster extra), not a project module
    from tokenization.shards import main_shards

    for part in ("corpus", "seg", "vocab"):
        shutil.copytree(clean / "t" / part, tmp_path / "t" / part)
    cfg = tok_config(tmp_path, "t", *OPTS, "executor.kind=ray", "executor.workers=2")
    assert main_shards(cfg) == 0
    assert _shard_files(tmp_path / "t" / "shards") == _shard_files(clean / "t" / "shards")
    for kind in ("char", "sgt", "word"):
        a = json.loads((clean / "t" / "shards" / kind / "train" / "meta.json").read_text())
        b = json.loads((tmp_path / "t" / "shards" / kind / "train" / "meta.json").read_text())
        assert a["shards"] == b["shards"] and a["groups"] == b["groups"]
    tasks = next(p for p in (tmp_path / "t" / "shards" / ".tasks").iterdir() if p.name.startswith("train-"))
    assert completed_tasks(tasks) == {0, 1, 2}
