"""The corpus stage on datatrove's executors: task-count determinism, Slurm options, Ray == local."""

import json
from pathlib import Path

import pytest
import yaml

from corpora.build import build, corpus_executors
from corpora.config import CorpusConfig
from corpora.io import iter_corpus
from pipeline.config import load_config

REPO = Path(__file__).resolve().parents[1]
TEXTS = [f"第{i}号通知：气象台预报，明天白天本市晴转多云，最高气温{i % 30}度，空气质量良好，适宜出行。" for i in range(60)]
TEXTS += ["北京市今年将新建和改建一百所幼儿园，增加学位两万个，缓解入园难的问题。"] * 3  # exact duplicates
TEXTS += ["The function returns a new list that contains all the items of the table in order, one per line."]


def _config(tmp_path: Path, run: str, *overrides: str) -> CorpusConfig:
    src = tmp_path / "in.jsonl"
    if not src.exists():
        src.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in TEXTS), encoding="utf-8")
    p = tmp_path / f"{run}.yaml"
    p.write_text(yaml.safe_dump({"run": run, "runs_root": str(tmp_path / "runs"), "tasks": 3, "chunk_docs": 7,
                                 "shard_docs": 10, "sources": [{"type": "jsonl", "path": str(src)}],
                                 "split": {"valid_fraction": 0.2}}), encoding="utf-8")
    return load_config(CorpusConfig, p, list(overrides))


def _bytes(corpus: Path) -> dict:
    out = {str(p.relative_to(corpus)): p.read_bytes() for p in sorted(corpus.rglob("*"))
           if p.is_file() and p.name not in ("stats.json", "summary.txt", "config.yaml")}
    stats = json.loads((corpus / "stats.json").read_text())
    for k in ("timing", "run", "config"):
        stats.pop(k)
    out["stats"] = stats
    return out


def test_tasks_split_the_work_and_the_kept_documents_do_not_depend_on_tasks(tmp_path):
    s1 = build(_config(tmp_path, "t1", "tasks=1"))
    s3 = build(_config(tmp_path, "t3", "tasks=3", "workers=2"))
    assert s1["totals"] == s3["totals"] and s1["totals"]["exact_duplicates"] == 2
    c1, c3 = (tmp_path / "runs" / r / "corpus" for r in ("t1", "t3"))
    for split in ("train", "valid"):
        assert sorted(d["id"] for d in iter_corpus(c1, split)) == sorted(d["id"] for d in iter_corpus(c3, split))
    # tasks=1 keeps the input order; tasks=3 writes task 0's part files first
    assert [d["text"] for d in iter_corpus(c1, "train")] == [t for t in dict.fromkeys(TEXTS)
                                                             if any(d["text"] == t for d in iter_corpus(c1, "train"))]
    assert s3["timing"]["tasks"] == 3 and s3["timing"]["workers"] == 2 and s3["timing"]["executor"] == "local"


def test_slurm_executors_are_built_with_the_config_options(tmp_path):
    cfg = _config(tmp_path, "s", "executor.kind=slurm", "executor.slurm.partition=cpu",
                  "executor.slurm.time=02:00:00", "executor.slurm.cpus_per_task=4", "executor.slurm.qos=low",
                  "executor.workers=8", "tasks=6")
    exes = corpus_executors(cfg)
    assert [n for n, _, _ in exes] == ["read", "buckets", "clusters", "write", "finalize"]
    work = tmp_path / "runs" / "s" / ".corpus-work"
    from corpora.steps import near_config

    assert [t for _, _, t in exes] == [6, near_config(cfg).num_buckets, 1, 6, 1]
    prev = None
    for name, ex, tasks in exes:
        assert type(ex).__name__ == "SlurmPipelineExecutor"
        assert ex.partition == "cpu" and ex.time == "02:00:00" and ex.cpus_per_task == 4 and ex.qos == "low"
        assert ex.world_size == tasks and ex.workers == 8 and ex.job_name == f"corpus-s-{name}"
        assert ex.depends is prev  # chained by job dependencies
        assert Path(ex.logging_dir.path) == work / "logs" / name
        prev = ex
    assert not (tmp_path / "runs" / "s" / "corpus").exists()  # nothing submitted, nothing run


@pytest.mark.slow
def test_ray_executor_writes_the_same_bytes_as_the_local_one(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")  # third-party, optional (cluster extra)
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # Ray's workers import this checkout's corpora
    build(_config(tmp_path, "local", "executor.workers=2"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        stats = build(_config(tmp_path, "ray", "executor.kind=ray", "executor.workers=2"))
    finally:
        ray.shutdown()
    assert stats["timing"]["executor"] == "ray"
    assert _bytes(tmp_path / "runs" / "local" / "corpus") == _bytes(tmp_path / "runs" / "ray" / "corpus")


def test_files_of_a_source_are_split_between_tasks(tmp_path):
    d = tmp_path / "many"
    d.mkdir()
    for i in range(5):  # five files, one with a bad line, and a duplicate across files
        lines = [t for t in TEXTS[i * 12:(i + 1) * 12]] + [TEXTS[0]]
        (d / f"part-{i}.txt").write_bytes(("\n".join(lines) + "\n").encode() + (b"bad \xff line\n" if i == 3 else b""))

    def cfg(run, *over):
        p = tmp_path / f"{run}.yaml"
        p.write_text(yaml.safe_dump({"run": run, "runs_root": str(tmp_path / "runs"), "shard_docs": 10,
                                     "sources": [{"type": "text", "path": str(d)}]}), encoding="utf-8")
        return load_config(CorpusConfig, p, list(over))

    s1 = build(cfg("f1", "tasks=1"))
    s3 = build(cfg("f3", "tasks=3"))
    assert s1["by_source"] == s3["by_source"]
    m = s3["by_source"]["many"]
    assert m["files"] == 5 and m["quarantined"] == {"invalid_utf8": 1} and m["exact_duplicates"] == 5
    c1, c3 = (tmp_path / "runs" / r / "corpus" for r in ("f1", "f3"))
    assert sorted(d["id"] for d in iter_corpus(c1, "train")) == sorted(d["id"] for d in iter_corpus(c3, "train"))
    # the copy kept is the first in (file, line) order, whichever task read it
    from corpora.io import iter_rejected

    where = {d["text"]: d["meta"]["where"] for s in ("train", "valid") for d in iter_corpus(c3, s)}
    assert where[TEXTS[0]].endswith("part-0.txt:1")
    assert {r["where"].rsplit("/", 1)[1] for r in iter_rejected(c3, "exact_dup") if r["text"] == TEXTS[0]} == \
        {f"part-{i}.txt:13" for i in range(5)}
