"""The whole step list: outputs and contract, worker-count invariance, restart, held-out, CLI."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from corpora.build import build
from corpora.config import CorpusConfig
from corpora.io import iter_corpus, iter_rejected, list_shards
from pipeline.config import load_config

REPO = Path(__file__).resolve().parents[1]

ZH = [
    "中国人民银行今天宣布，从下个月起下调存款准备金率零点五个百分点，以支持实体经济发展。",
    "北京市今年将新建和改建一百所幼儿园，增加学位两万个，缓解入园难的问题。",
    "气象台预报，明天白天本市晴转多云，最高气温二十二度，空气质量良好。",
    "这本书的内容非常丰富，讲解也很清楚，适合初学者阅读，推荐大家购买。",
    "由于连日降雨，部分山区道路出现塌方，交通部门正在组织力量抢修。",
]
YUE = ["佢哋今日唔得閒，話聽日先嚟搵你傾吓啲嘢。", "我哋喺度等咗你成個鐘，你做咩咁遲先到啊？"]
EN = [
    "The function returns a new list that contains all the items of the table in order.",
    "When the interpreter starts, it reads the configuration file and sets up the search path.",
]
LONG = ("国务院有关部门负责人表示，此举将释放长期资金约一万亿元，降低金融机构资金成本。"
        "分析人士认为，这一政策有利于稳定市场预期，增强银行服务小微企业和民营企业的能力，"
        "同时也向市场传递了货币政策保持稳健、灵活适度的信号，预计后续还会有配套措施陆续出台。")


def _write_inputs(d: Path, n_extra: int = 40) -> None:
    d.mkdir(parents=True, exist_ok=True)
    recs = [{"text": t} for t in ZH + YUE + EN]
    recs += [{"text": ZH[0]}, {"text": LONG}, {"text": LONG.replace("一万亿元", "一万亿圆")}]  # exact + near dup
    recs += [{"text": "太短"}, {"text": "Der Hund schläft im Garten und träumt von Knochen."},
             {"text": EN[0] + " Caf\u00c3\u00a9 na\u00c3\u00afve \u00e2\u20ac\u0153quoted\u00e2\u20ac\u009d \u00c3\u00bcber"}]
    recs += [{"text": f"第{i}号文件：{ZH[i % 5][:-1]}，编号{i * 7919}。"} for i in range(n_extra)]
    with open(d / "docs.jsonl", "w", encoding="utf-8") as f:
        for r in recs:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.write("{not json\n")
    (d / "lines.txt").write_bytes(("\n".join(EN + YUE) + "\n").encode() + b"bad \xff\xfe utf8 line\n")


def _config(tmp_path: Path, run="t", **over) -> Path:
    data = {
        "run": run, "runs_root": str(tmp_path / "runs"), "workers": 1, "shard_docs": 7, "chunk_docs": 5,
        "sources": [
            {"type": "jsonl", "path": str(tmp_path / "in" / "docs.jsonl"), "label": "mixed", "licence": "test data"},
            {"type": "text", "path": str(tmp_path / "in" / "lines.txt")},
            {"type": "builtin", "builtin": "reviews", "max_docs": 40, "stride": 7},
        ],
        "split": {"valid_fraction": 0.2},
    }
    data.update(over)
    p = tmp_path / f"{run}.yaml"
    p.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return p


def _build(tmp_path, run="t", overrides=(), **over):
    cfg = load_config(CorpusConfig, _config(tmp_path, run, **over), list(overrides))
    return build(cfg), tmp_path / "runs" / run / "corpus"


def _snapshot(corpus: Path) -> dict:
    """Every output file's content (decompressed), stats without run-dependent keys."""
    out = {}
    for p in sorted(corpus.rglob("*.jsonl.zst")):
        from corpora.io import iter_shard

        out[str(p.relative_to(corpus))] = list(iter_shard(p))
    stats = json.loads((corpus / "stats.json").read_text())
    stats.pop("timing")
    stats.pop("run")
    stats["config"].pop("workers")
    stats["config"].pop("run")
    out["stats"] = stats
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("build")
    _write_inputs(tmp / "in")
    stats, corpus = _build(tmp)
    return tmp, stats, corpus


def test_outputs_follow_the_contract(built):
    tmp, stats, corpus = built
    assert (corpus / "stats.json").is_file() and (corpus / "summary.txt").is_file()
    assert yaml.safe_load((corpus / "config.yaml").read_text())["run"] == "t"
    docs = list(iter_corpus(corpus, "train")) + list(iter_corpus(corpus, "valid"))
    assert len(docs) == stats["totals"]["kept_docs"] > 0
    assert len(list_shards(corpus, "train")) == stats["splits"]["train"]["shards"] >= 2
    for d in docs:
        assert set(d) == {"id", "text", "lang", "source", "meta"}
        assert d["id"] == hashlib.sha1(d["text"].encode()).hexdigest()[:16]
        assert d["lang"] in ("zh", "yue", "en")
        spans = d["meta"]["sentences"]
        assert spans and all(0 <= a < b <= len(d["text"]) for a, b in spans)
    assert {d["lang"] for d in docs} == {"zh", "yue", "en"}
    assert len({d["id"] for d in docs}) == len(docs)


def test_stats_count_everything(built):
    tmp, stats, corpus = built
    m = stats["by_source"]["mixed"]
    assert m["licence"] == "test data" and m["exact_duplicates"] >= 1 and m["near_duplicates"] >= 1
    assert any("一万亿圆" in r["text"] for r in iter_rejected(corpus, "near_dup"))
    assert m["quarantined"] == {"malformed_json": 1}
    assert stats["by_source"]["lines"]["quarantined"] == {"invalid_utf8": 1}
    assert m["rejected"]["length"] == 1 and m["rejected"]["language"] == 1 and m["rejected"]["garbage"] == 1
    assert "research use" in stats["licences"]["reviews"]
    for name, s in stats["by_source"].items():  # every input document is accounted for
        out = (s["kept_docs"] + sum(s["rejected"].values()) + s["exact_duplicates"] + s["near_duplicates"])
        assert s["input_docs"] - s["heldout_excluded"] <= out <= s["input_docs"]
    assert sum(v["docs"] for v in stats["by_lang"].values()) == stats["totals"]["kept_docs"]


def test_rejected_files_name_filter_and_reason(built):
    tmp, stats, corpus = built
    for name in ("length", "language", "garbage", "exact_dup", "near_dup", "reader"):
        recs = list(iter_rejected(corpus, name))
        assert recs, name
        assert all(r["filter"] == name and r["reason"] for r in recs)
    reader = list(iter_rejected(corpus, "reader"))
    assert {r["kind"] for r in reader} == {"malformed_json", "invalid_utf8"}
    # the first document of a near-duplicate cluster in input order is kept; dup_of names it
    kept = {d["id"]: d["text"] for s in ("train", "valid") for d in iter_corpus(corpus, s)}
    near = [r for r in iter_rejected(corpus, "near_dup") if "一万亿圆" in r["text"]]
    assert len(near) == 1 and kept[near[0]["dup_of"]] == LONG
    assert all(":" in r["where"] for r in reader)


def test_heldout_text_never_reaches_the_corpus(built):
    from corpora import heldout
    from corpora.builtin import read_builtin
    from corpora.normalize import normalize_text
    from corpora.readers import SourceCounters

    tmp, stats, corpus = built
    assert stats["heldout_excluded"]["reviews"] > 0
    kept = {d["text"] for d in iter_corpus(corpus, "train")} | {d["text"] for d in iter_corpus(corpus, "valid")}
    n = 0
    for d in read_builtin("reviews", SourceCounters()):
        key = normalize_text(d.text)
        if heldout.is_heldout("sentiment", key):
            assert key not in kept
            n += 1
        if n > 50:
            break


def test_output_identical_for_any_worker_count(built, tmp_path):
    tmp, stats, corpus = built
    _build(tmp, run="w2", workers=2)
    assert _snapshot(corpus) == _snapshot(tmp / "runs" / "w2" / "corpus")


def test_split_never_moves_when_documents_are_added(built):
    tmp, stats, corpus = built
    before = {d["id"]: s for s in ("train", "valid") for d in iter_corpus(corpus, s)}
    more = tmp / "more"
    more.mkdir(exist_ok=True)
    (more / "new.txt").write_text("\n".join(f"新增加的第{i}篇文档，内容与原有文档完全不同，编号{i * 31}。"
                                            for i in range(30)), encoding="utf-8")
    cfg = yaml.safe_load(_config(tmp).read_text())
    cfg["sources"].append({"type": "text", "path": str(more / "new.txt")})
    _, grown = _build(tmp, run="grown", sources=cfg["sources"])
    after = {d["id"]: s for s in ("train", "valid") for d in iter_corpus(grown, s)}
    assert set(before) <= set(after)
    assert all(after[i] == s for i, s in before.items())


def _cli(args, env=None, cwd=REPO):
    e = dict(os.environ, PIPELINE_PROGRESS="0")
    e.update(env or {})
    # own session: the kill hooks take the build's helper processes (multiprocessing manager) along
    return subprocess.run([sys.executable, "-m", "corpora", *args], cwd=cwd, env=e, capture_output=True, text=True,
                          timeout=300, start_new_session=True)


def _bytes(corpus: Path) -> dict:
    """Every output file's bytes; stats.json without its run-dependent keys."""
    out = {str(p.relative_to(corpus)): p.read_bytes() for p in sorted(corpus.rglob("*"))
           if p.is_file() and p.name not in ("stats.json", "summary.txt", "config.yaml")}
    stats = json.loads((corpus / "stats.json").read_text())
    for k in ("timing", "run"):
        stats.pop(k)
    stats["config"].pop("run")
    out["stats"] = stats
    return out


@pytest.mark.parametrize("hook", [("CORPORA_FAIL_AFTER_TASKS", "2", "read"), ("CORPORA_FAIL_AFTER_SHARDS", "2", "write")])
def test_a_killed_build_resumes_by_task_with_identical_output(tmp_path, hook):
    from pipeline.executors import completed_tasks

    var, n, stage = hook
    _write_inputs(tmp_path / "in")
    cfg = _config(tmp_path, "k")
    corpus = tmp_path / "runs" / "k" / "corpus"
    work = tmp_path / "runs" / "k" / ".corpus-work"
    r = _cli(["build", "--config", str(cfg)], env={var: n})
    assert r.returncode == -9, r.stderr
    assert not corpus.exists()  # nothing half-built is ever at the final path
    done = completed_tasks(work / "logs" / stage)
    if stage == "read":
        assert done == {0, 1}  # two tasks finished before the kill, the third was running
    else:
        assert completed_tasks(work / "logs" / "read") == {0, 1, 2, 3} and len(done) < 4
    r = _cli(["build", "--config", str(cfg)])
    assert r.returncode == 0, r.stderr
    assert "resuming the interrupted build" in r.stderr
    assert sorted(p.name for p in corpus.parent.iterdir()) == [".locks", "corpus"]  # work folder removed
    _build(tmp_path, run="clean")
    a = _bytes(corpus)
    assert a == _bytes(tmp_path / "runs" / "clean" / "corpus")
    # a killed rebuild leaves the previous complete corpus untouched
    r = _cli(["build", "--config", str(cfg)], env={"CORPORA_FAIL_AFTER_SHARDS": "1"})
    assert r.returncode == -9 and (corpus / "stats.json").is_file() and _bytes(corpus) == a


def test_a_changed_config_does_not_resume_stale_work(tmp_path):
    _write_inputs(tmp_path / "in")
    cfg = _config(tmp_path, "c")
    r = _cli(["build", "--config", str(cfg)], env={"CORPORA_FAIL_AFTER_TASKS": "1"})
    assert r.returncode == -9
    r = _cli(["build", "--config", str(cfg), "filters.min_chars=20"])
    assert r.returncode == 0, r.stderr
    assert "resuming" not in r.stderr and "starting over" in r.stderr
    _build(tmp_path, run="c2", overrides=["filters.min_chars=20"])
    assert _bytes(tmp_path / "runs" / "c" / "corpus") == _bytes(tmp_path / "runs" / "c2" / "corpus")


def test_cli_help_and_user_errors(tmp_path):
    r = _cli(["--help"])
    assert r.returncode == 0 and "build" in r.stdout and "sources" in r.stdout
    r = _cli(["build", "--help"])
    assert r.returncode == 0 and "text_field" in r.stdout and "valid_fraction" in r.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"runs_root": str(tmp_path), "sources": [{"type": "text", "path": str(tmp_path / "nope.txt")}]}))
    r = _cli(["build", "--config", str(bad)])
    assert r.returncode == 2 and "path not found" in r.stderr and "Traceback" not in r.stderr
    r = _cli(["build", "--config", str(bad), "filters.min_charz=3"])
    assert r.returncode == 2 and "unknown key 'filters.min_charz'" in r.stderr
    jl = tmp_path / "a.jsonl"
    jl.write_text('{"body": "x"}\n')
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(yaml.safe_dump({"runs_root": str(tmp_path), "sources": [{"type": "jsonl", "path": str(jl)}]}))
    r = _cli(["build", "--config", str(wrong)])
    assert r.returncode == 2 and "a.jsonl:1" in r.stderr and "no field 'text'" in r.stderr
    assert "Traceback" not in r.stderr


def test_shipped_configs_load():
    for name in ("default", "full"):
        cfg = load_config(CorpusConfig, REPO / "configs" / "corpus" / f"{name}.yaml")
        assert {s.builtin for s in cfg.sources} >= {"pd1998", "cantonese", "english"}
    r = _cli(["build", "--config", "configs/corpus/default.yaml", "--dry-run"])
    assert r.returncode == 0 and "pd1998" in r.stdout
