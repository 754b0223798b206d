"""Readers (text, jsonl, parquet, hf, built-ins; .gz/.zst, folders, globs) and every bad-input case."""

import gzip
import json
import tracemalloc

import pytest
import zstandard

from corpora.config import SourceConfig
from corpora.readers import Quarantine, RawDoc, SourceCounters, read_source
from pipeline.errors import UserError

MB = 1 << 20


def _read(src, max_line_bytes=8 * MB):
    c = SourceCounters()
    items = list(read_source(src, src.display_name(), max_line_bytes, c))
    docs = [i for i in items if isinstance(i, RawDoc)]
    quar = [i for i in items if isinstance(i, Quarantine)]
    return docs, quar, c


# ------------------------------------------------------------------------------------- readers
def test_text_one_doc_per_line(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("第一行文字\n\nsecond line\n", encoding="utf-8")
    docs, quar, c = _read(SourceConfig(type="text", path=str(p)))
    assert [d.text for d in docs] == ["第一行文字", "second line"]
    assert docs[1].where.endswith("a.txt:3") and not quar and c.files == 1


def test_text_blank_line_separated(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("para one\nstill one\n\n\npara two\n", encoding="utf-8")
    docs, _, _ = _read(SourceConfig(type="text", path=str(p), doc_sep="blank"))
    assert [d.text for d in docs] == ["para one\nstill one", "para two"]


def test_compressed_folder_and_glob(tmp_path):
    d = tmp_path / "data"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("plain\n", encoding="utf-8")
    with gzip.open(d / "sub" / "b.txt.gz", "wt", encoding="utf-8") as f:
        f.write("gzipped\n")
    (d / "sub" / "c.txt.zst").write_bytes(zstandard.ZstdCompressor().compress("zstd 压缩\n".encode()))
    (d / ".hidden.txt").write_text("never\n")
    docs, _, c = _read(SourceConfig(type="text", path=str(d)))
    assert [x.text for x in docs] == ["plain", "gzipped", "zstd 压缩"] and c.files == 3
    docs, _, _ = _read(SourceConfig(type="text", glob=str(d / "**" / "*.zst")))
    assert [x.text for x in docs] == ["zstd 压缩"]


def test_jsonl_with_text_field_and_nested_field(tmp_path):
    p = tmp_path / "a.jsonl.gz"
    with gzip.open(p, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"content": "文本一", "x": 1}, ensure_ascii=False) + "\n")
        f.write(json.dumps({"content": "文本二"}, ensure_ascii=False) + "\n")
    docs, _, _ = _read(SourceConfig(type="jsonl", path=str(p), text_field="content"))
    assert [d.text for d in docs] == ["文本一", "文本二"]
    q = tmp_path / "n.jsonl"
    q.write_text(json.dumps({"doc": {"body": "nested"}}) + "\n")
    docs, _, _ = _read(SourceConfig(type="jsonl", path=str(q), text_field="doc.body"))
    assert docs[0].text == "nested"


def test_utf8_bom_and_crlf(tmp_path):
    p = tmp_path / "bom.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps({"text": "first"}).encode() + b"\r\n" + b'{"text": "second"}\r\n')
    docs, quar, _ = _read(SourceConfig(type="jsonl", path=str(p)))
    assert [d.text for d in docs] == ["first", "second"] and not quar


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": ["甲文档", None, "乙文档"], "n": [1, 2, 3]}), p)
    docs, quar, _ = _read(SourceConfig(type="parquet", path=str(p)))
    assert [d.text for d in docs] == ["甲文档", "乙文档"]
    assert [q.kind for q in quar] == ["not_string"] and quar[0].where.endswith("row 2")
    with pytest.raises(UserError, match="no column 'body'.*columns: text, n"):
        _read(SourceConfig(type="parquet", path=str(p), text_field="body"))


def test_hf_datasets_streaming_on_local_files(tmp_path):
    p = tmp_path / "train.jsonl"
    p.write_text("".join(json.dumps({"sentence": f"句子{i}号"}, ensure_ascii=False) + "\n" for i in range(3)),
                 encoding="utf-8")
    src = SourceConfig(type="hf", name="json", data_files=[str(p)], split="train", text_field="sentence")
    docs, _, _ = _read(src)
    assert [d.text for d in docs] == ["句子0号", "句子1号", "句子2号"]
    with pytest.raises(UserError, match="no field 'text'"):
        _read(SourceConfig(type="hf", name="json", data_files=[str(p)]))
    with pytest.raises(UserError, match="cannot load Hugging Face dataset"):
        _read(SourceConfig(type="hf", name="no-such-org/no-such-dataset-xyz"))


@pytest.mark.parametrize("name", ["pd1998", "reviews", "msra", "cantonese", "english"])
def test_builtin_sources(name):
    from corpora.builtin import HELDOUT_TASK, PREP, read_builtin

    c = SourceCounters()
    docs = []
    for d in read_builtin(name, c):
        docs.append(PREP[d.prep](d.text) if d.prep else d.text)
        assert d.heldout_task == HELDOUT_TASK.get(name)
        if len(docs) == 20:
            break
    assert len(docs) == 20 and all(t.strip() for t in docs)
    if name == "pd1998":
        assert docs[0].startswith("迈向充满希望的新世纪") and "/" not in docs[0]
    if name == "msra":
        assert docs[0].startswith("当希望工程救助的百万儿童成长起来") and " " not in docs[0]


def test_bmes_blocks_match_read_msra(tmp_path):
    from corpora.builtin import PREP, _blocks
    from corpora.labelled import read_msra

    p = tmp_path / "ner.txt"
    p.write_bytes("甲 B-PER\r\n乙 E-PER\r\n\r\n丙 O\r\n\r\n\r\n丁 S-LOC\r\n".encode())
    expect = [(s.lineno, s.text) for s in read_msra(p)]
    assert [(start, PREP["bmes"](b)) for start, b in _blocks(p, piece=5)] == expect == [(1, "甲乙"), (4, "丙"), (7, "丁")]


def test_pd1998_tag_stripping():
    from corpora.builtin import PREP

    assert PREP["pd1998"]("迈向/v  充满/v  希望/n  的/u  [中国/ns  政府/n]nt  １/m  张/q  ）/w") == "迈向充满希望的中国政府１张）"


# ------------------------------------------------------------------------------------ bad input
def test_invalid_utf8_line_is_quarantined_with_file_and_line(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_bytes("好的一行\n".encode() + b"caf\xe9 \xff\xfe latin-1\n" + "又一行\n".encode())
    docs, quar, _ = _read(SourceConfig(type="text", path=str(p)))
    assert [d.text for d in docs] == ["好的一行", "又一行"]
    assert len(quar) == 1 and quar[0].kind == "invalid_utf8" and quar[0].where.endswith("bad.txt:2")


def test_nul_bytes_are_quarantined(tmp_path):
    p = tmp_path / "nul.txt"
    p.write_bytes(b"a normal line of text here\nhas a \x00 nul byte inside it\nanother normal line\n")
    docs, quar, _ = _read(SourceConfig(type="text", path=str(p)))
    assert len(docs) == 2 and [q.kind for q in quar] == ["nul_byte"] and quar[0].where.endswith(":2")


def test_binary_file_is_quarantined(tmp_path):
    import random

    p = tmp_path / "image.txt"
    p.write_bytes(bytes(random.Random(0).randrange(256) for _ in range(5000)))
    docs, quar, _ = _read(SourceConfig(type="text", path=str(p)))
    assert docs == [] and len(quar) == 1 and quar[0].kind == "binary_file"
    q = tmp_path / "fake.parquet"
    q.write_bytes(b"not a parquet file at all")
    docs, quar, _ = _read(SourceConfig(type="parquet", path=str(q)))
    assert docs == [] and quar[0].kind == "binary_file"


def test_empty_file_is_counted(tmp_path):
    p = tmp_path / "empty.txt"
    p.write_bytes(b"")
    docs, quar, c = _read(SourceConfig(type="text", path=str(p)))
    assert docs == [] and quar == [] and c.empty_files == 1


def test_long_line_is_quarantined_and_reading_goes_on(tmp_path):
    p = tmp_path / "long.txt"
    p.write_bytes(b"short line\n" + b"x" * 5000 + b"\nafter the long line\n")
    docs, quar, _ = _read(SourceConfig(type="text", path=str(p)), max_line_bytes=1000)
    assert [d.text for d in docs] == ["short line", "after the long line"]
    assert quar[0].kind == "line_too_long" and "5001 bytes" in quar[0].reason and quar[0].where.endswith(":2")
    docs, quar, _ = _read(SourceConfig(type="text", path=str(p), doc_sep="blank"), max_line_bytes=1000)
    assert quar[0].kind == "line_too_long"


def test_real_100mb_line_with_default_limit_stays_bounded(tmp_path):
    from corpora.config import CorpusConfig

    p = tmp_path / "huge.txt"
    with open(p, "wb") as f:
        chunk = b"y" * MB
        for _ in range(100):
            f.write(chunk)
        f.write(b"\nthe next line\n")
    limit = CorpusConfig().max_line_bytes
    tracemalloc.start()
    docs, quar, _ = _read(SourceConfig(type="text", path=str(p)), max_line_bytes=limit)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert [d.text for d in docs] == ["the next line"] and quar[0].kind == "line_too_long"
    assert peak < 3 * limit  # never the whole 100 MB line


def test_missing_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="path not found"):
        _read(SourceConfig(type="text", path=str(tmp_path / "nope.txt")))
    with pytest.raises(UserError, match="matches no file"):
        _read(SourceConfig(type="jsonl", glob=str(tmp_path / "*.jsonl")))


def test_malformed_jsonl_line_is_quarantined(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"text": "good one"}\n{"text": "broken\n[1, 2]\n{"text": 5}\n{"text": "good two"}\n')
    docs, quar, _ = _read(SourceConfig(type="jsonl", path=str(p)))
    assert [d.text for d in docs] == ["good one", "good two"]
    assert [(q.kind, q.where.rsplit(":", 1)[1]) for q in quar] == [
        ("malformed_json", "2"), ("malformed_json", "3"), ("not_string", "4")]


def test_wrong_text_field_is_a_user_error_naming_file_and_line(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"content": "x"}\n')
    with pytest.raises(UserError, match=r"a\.jsonl:1: record has no field 'text' \(fields: content\)"):
        _read(SourceConfig(type="jsonl", path=str(p)))
    q = tmp_path / "b.jsonl"
    q.write_text('{"text": "has it"}\n{"other": "lacks it"}\n')
    docs, quar, _ = _read(SourceConfig(type="jsonl", path=str(q)))
    assert len(docs) == 1 and quar[0].kind == "missing_field"
