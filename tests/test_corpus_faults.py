"""Damaged and mis-encoded corpus inputs: nothing is lost silently, nothing crashes (issue 16)."""

import gzip

import pytest
import zstandard

from corpora.config import SourceConfig
from corpora.io import iter_shard, write_shard
from corpora.readers import Quarantine, RawDoc, SourceCounters, guess_encoding, read_source
from pipeline.errors import UserError

LINES = [f"第{i}行：气象台预报，明天白天本市晴转多云，最高气温二十二度，空气质量良好。" for i in range(3000)]
DATA = ("\n".join(LINES) + "\n").encode("utf-8")  # ~330 KB: several zstd blocks


def _read(src):
    c = SourceCounters()
    items = list(read_source(src, src.display_name(), 8 << 20, c))
    return [i for i in items if isinstance(i, RawDoc)], [i for i in items if isinstance(i, Quarantine)], c


# ------------------------------------------------------------------------------- truncated .zst
@pytest.mark.parametrize("keep", ["tail_cut", "half", "header_only"])
def test_truncated_zst_is_quarantined_with_the_line_reached(tmp_path, keep):
    full = zstandard.ZstdCompressor(level=3).compress(DATA)
    cut = {"tail_cut": len(full) - 5, "half": len(full) // 2, "header_only": 10}[keep]
    p = tmp_path / "docs.txt.zst"
    p.write_bytes(full[:cut])
    docs, quar, c = _read(SourceConfig(type="text", path=str(p)))
    n = len(docs)
    assert n < len(LINES)
    assert [d.text for d in docs] == LINES[:n]  # the complete lines before the cut are kept, in order
    assert len(quar) == 1 and quar[0].kind == "truncated_file", quar
    assert quar[0].where == f"{p}:{n + 1}"
    assert (f"lines 1-{n} were read" if n else "nothing could be read") in quar[0].reason
    assert c.empty_files == 0  # not "an empty file"


def test_concatenated_zst_frames_are_all_read(tmp_path):
    half = len(LINES) // 2
    a = ("\n".join(LINES[:half]) + "\n").encode()
    b = ("\n".join(LINES[half:]) + "\n").encode()
    p = tmp_path / "two.txt.zst"
    p.write_bytes(zstandard.ZstdCompressor().compress(a) + zstandard.ZstdCompressor().compress(b))
    docs, quar, _ = _read(SourceConfig(type="text", path=str(p)))
    assert [d.text for d in docs] == LINES and quar == []


def test_a_100mb_line_compressed_to_a_few_kb_stays_bounded(tmp_path):
    import tracemalloc

    from corpora.config import CorpusConfig

    p = tmp_path / "huge.txt.zst"
    with open(p, "wb") as f, zstandard.ZstdCompressor().stream_writer(f) as w:
        for _ in range(100):
            w.write(b"y" * (1 << 20))
        w.write(b"\nthe next line\n")
    assert p.stat().st_size < 10_000
    limit = CorpusConfig().max_line_bytes
    tracemalloc.start()
    c = SourceCounters()
    items = list(read_source(SourceConfig(type="text", path=str(p)), "huge", limit, c))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert [getattr(i, "text", None) or i.kind for i in items] == ["line_too_long", "the next line"]
    assert peak < 3 * limit  # the decoder never expands the whole line at once


def test_zst_checksum_mismatch_is_quarantined(tmp_path):
    data = bytearray(zstandard.ZstdCompressor(write_checksum=True).compress(DATA))
    data[-2] ^= 0xFF  # the content checksum is the frame's last 4 bytes
    p = tmp_path / "docs.jsonl.zst"
    p.write_bytes(bytes(data))
    docs, quar, _ = _read(SourceConfig(type="text", path=str(p)))
    assert quar and quar[-1].kind == "corrupt_file" and "checksum" in quar[-1].reason


def test_truncated_gzip_is_quarantined(tmp_path):
    full = gzip.compress(DATA)
    p = tmp_path / "docs.txt.gz"
    p.write_bytes(full[: len(full) - 100])
    docs, quar, _ = _read(SourceConfig(type="text", path=str(p)))
    assert [d.text for d in docs] == LINES[: len(docs)] and len(docs) < len(LINES)
    assert [q.kind for q in quar] == ["truncated_file"] and quar[0].where.endswith(f":{len(docs) + 1}")


def test_corpus_shards_carry_a_checksum_and_damage_is_an_error(tmp_path):
    recs = [{"id": str(i), "text": t, "lang": "zh", "source": "s", "meta": {}} for i, t in enumerate(LINES)]
    p = tmp_path / "shard-00000.jsonl.zst"
    assert write_shard(p, recs) == len(recs)
    raw = p.read_bytes()
    assert zstandard.get_frame_parameters(raw).has_checksum
    assert list(iter_shard(p)) == recs
    p.write_bytes(raw[: len(raw) - 3])
    with pytest.raises(UserError, match=r"shard-00000.jsonl.zst: damaged after line \d+: .*rebuild"):
        list(iter_shard(p))
    bad = bytearray(raw)
    bad[-1] ^= 0xFF
    p.write_bytes(bytes(bad))
    with pytest.raises(UserError, match="checksum"):
        list(iter_shard(p))


# ----------------------------------------------------------------------------------- encodings
TEXT = "\n".join(LINES[:40]) + "\n"
TRAD = TEXT.replace("气象台预报", "氣象臺預報").replace("晴转多云", "晴轉多雲").replace("气温", "氣溫").replace("质量", "質量")


@pytest.mark.parametrize("codec,name,text", [
    ("gb18030", "GB18030", TEXT), ("gbk", "GB18030", TEXT), ("big5", "BIG5", TRAD),
    ("utf-16", "UTF-16LE", TEXT), ("utf-16-be", "UTF-16BE", TEXT), ("utf-16-le", "UTF-16LE", TEXT),
    ("utf-32", "UTF-32LE", TEXT), ("utf-16-le", "UTF-16LE", "plain ASCII text in UTF-16\n" * 50),
])
def test_other_encodings_are_wrong_encoding_with_the_fix(tmp_path, codec, name, text):
    p = tmp_path / "f.txt"
    p.write_bytes(text.encode(codec))
    assert guess_encoding(p.read_bytes()[:8192]) == name
    docs, quar, _ = _read(SourceConfig(type="text", path=str(p)))
    assert docs == [] and len(quar) == 1 and quar[0].kind == "wrong_encoding"
    assert f"iconv -f {name} -t UTF-8" in quar[0].reason and f"encoding: {name.lower()}" in quar[0].reason
    # the suggested option reads the file
    docs, quar, _ = _read(SourceConfig(type="text", path=str(p), encoding=name.lower()))
    assert quar == [] and [d.text for d in docs] == [ln for ln in text.split("\n") if ln]


def test_encoding_option_for_jsonl_and_bad_bytes_stay_line_level(tmp_path):
    import json

    p = tmp_path / "gbk.jsonl"
    p.write_bytes(json.dumps({"text": LINES[0]}, ensure_ascii=False).encode("gbk") + b"\n"
                  + b'{"text": "\xff\xff broken"}\n'
                  + json.dumps({"text": LINES[1]}, ensure_ascii=False).encode("gbk") + b"\n")
    docs, quar, _ = _read(SourceConfig(type="jsonl", path=str(p), encoding="gbk"))
    assert [d.text for d in docs] == LINES[:2]
    assert [q.kind for q in quar] == ["invalid_utf8"] and quar[0].where.endswith("gbk.jsonl:2")
    assert quar[0].reason.startswith("not valid gbk")
    p = tmp_path / "u16.txt"  # an unpaired surrogate (NUL high byte: surrogateescape cannot carry it)
    p.write_bytes("第一行\n".encode("utf-16-le") + b"\x00\xd8" + "坏\n第三行\n".encode("utf-16-le"))
    docs, quar, _ = _read(SourceConfig(type="text", path=str(p), encoding="utf-16-le"))
    assert [d.text for d in docs] == ["第一行", "第三行"]
    assert [q.kind for q in quar] == ["invalid_utf8"] and quar[0].where.endswith("u16.txt:2")


def test_utf8_and_random_bytes_are_not_called_another_encoding(tmp_path):
    import random

    assert guess_encoding(DATA[:8192]) is None
    assert guess_encoding(bytes(random.Random(0).randrange(256) for _ in range(8192))) is None
    with pytest.raises(ValueError, match="encoding 'klingon' unknown"):
        SourceConfig(type="text", path="x", encoding="klingon").validate()
    with pytest.raises(ValueError, match="applies to text and jsonl"):
        SourceConfig(type="parquet", path="x", encoding="gbk").validate()


# ------------------------------------------------------------------------------------- parquet
def test_corrupt_parquet_row_group_is_quarantined_and_the_others_are_read(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "docs.parquet"
    texts = LINES[:30]
    pq.write_table(pa.table({"text": texts}), p, row_group_size=10, compression="snappy")
    col = pq.ParquetFile(p).metadata.row_group(1).column(0)
    start = col.dictionary_page_offset or col.data_page_offset
    raw = bytearray(p.read_bytes())
    raw[start:start + col.total_compressed_size] = b"\xab" * col.total_compressed_size
    p.write_bytes(bytes(raw))
    docs, quar, _ = _read(SourceConfig(type="parquet", path=str(p)))
    assert [d.text for d in docs] == texts[:10] + texts[20:]
    assert [d.where for d in docs][10] == f"{p}:row 21"
    assert len(quar) == 1 and quar[0].kind == "corrupt_file" and quar[0].where == f"{p}:row 11"
    assert "row group 1" in quar[0].reason and "\n" not in quar[0].reason


# ------------------------------------------------------------------------ the build as a whole
def _cfg(tmp_path, run, sources, **over):
    from corpora.config import CorpusConfig
    from pipeline.config import load_config
    import yaml

    p = tmp_path / f"{run}.yaml"
    p.write_text(yaml.safe_dump({"run": run, "runs_root": str(tmp_path / "runs"), "sources": sources, **over},
                                allow_unicode=True), encoding="utf-8")
    return p, load_config(CorpusConfig, p)


def _damaged_inputs(d):
    """A truncated .zst, a GB18030 file and too-short lines: nothing in them is a document."""
    d.mkdir(parents=True, exist_ok=True)
    full = zstandard.ZstdCompressor().compress(DATA)
    (d / "cut.txt.zst").write_bytes(full[:10])
    (d / "gbk.txt").write_bytes(TEXT.encode("gb18030"))
    (d / "short.txt").write_text("太短\n也短\n", encoding="utf-8")


def test_a_build_that_keeps_nothing_exits_2_with_reasons(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from corpora.build import build

    _damaged_inputs(tmp_path / "in")
    good = tmp_path / "good.txt"
    good.write_text("\n".join(LINES[:20]) + "\n", encoding="utf-8")
    src = [{"type": "text", "path": str(tmp_path / "in")}]
    _, cfg = _cfg(tmp_path, "r", [{"type": "text", "path": str(good)}], dedup={"near": False})
    build(cfg)  # a previous complete corpus
    corpus = tmp_path / "runs" / "r" / "corpus"
    before = (corpus / "stats.json").read_bytes()
    p, cfg = _cfg(tmp_path, "r", src)
    with pytest.raises(UserError) as ei:
        build(cfg)
    msg = str(ei.value)
    assert "kept no document of 2 read" in msg and "previous corpus is unchanged" in msg
    assert "reader:truncated_file 1 (first: " in msg and "cut.txt.zst:1" in msg
    assert "reader:wrong_encoding 1 (first: " in msg and "iconv -f GB18030" in msg
    assert "length 2 (first: " in msg and "short.txt:1" in msg
    assert (corpus / "stats.json").read_bytes() == before
    assert sorted(q.name for q in corpus.parent.iterdir()) == [".locks", "corpus"]  # no temporary left
    repo = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "corpora", "build", "--config", str(p)], cwd=repo,
                       capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "PIPELINE_PROGRESS": "0"})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("error:")][0].startswith(f"error: {corpus}: the build kept no")


def test_quarantines_by_kind_in_stats_and_summary(tmp_path):
    from corpora.build import build

    _damaged_inputs(tmp_path / "in")
    good = tmp_path / "in" / "good.txt"
    good.write_text("\n".join(LINES[:20]) + "\n", encoding="utf-8")
    _, cfg = _cfg(tmp_path, "s", [{"type": "text", "path": str(tmp_path / "in")}], dedup={"near": False})
    stats = build(cfg)
    assert stats["quarantined"] == {"truncated_file": 1, "wrong_encoding": 1}
    assert stats["totals"]["kept_docs"] == 20
    summary = (tmp_path / "runs" / "s" / "corpus" / "summary.txt").read_text(encoding="utf-8")
    rows = {ln.split()[0]: ln.split()[-1] for ln in summary.splitlines() if ln.strip().startswith(("reader:", "length"))}
    assert rows == {"reader:truncated_file": "1", "reader:wrong_encoding": "1", "length": "2"}


# ------------------------------------------------------------------- machine faults: one line
def test_main_guard_full_disk_and_permission_are_one_line(tmp_path, capsys):
    import errno

    from pipeline.errors import main_guard

    target = tmp_path / "runs" / "r" / "corpus" / "shard.jsonl.zst"

    @main_guard
    def full():
        try:
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        except OSError as e:
            raise RuntimeError("unexpected pos 4106048 vs 4105936") from e  # what torch.save says

    assert full() == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: no space left on device: {target}; ")
    assert f"free on the filesystem of {tmp_path}" in err[0]

    @main_guard
    def denied():
        raise PermissionError(errno.EACCES, "Permission denied", "/etc/x")

    assert denied() == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: permission denied: /etc/x; check the owner and mode of the file and its folder"]

    @main_guard
    def bug():
        raise FileNotFoundError(errno.ENOENT, "No such file", "x")

    with pytest.raises(FileNotFoundError):  # not a machine fault: the traceback stays
        bug()


def test_corpus_build_on_a_full_disk_exits_2_and_leaves_no_temporary(tmp_path, monkeypatch, capsys):
    import errno

    import corpora.steps
    from corpora.__main__ import main

    def no_space(path, records, level=3):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(corpora.steps, "write_shard", no_space)  # the writer task (in-process: 1 worker)
    good = tmp_path / "good.txt"
    good.write_text("\n".join(LINES[:20]) + "\n", encoding="utf-8")
    p, _ = _cfg(tmp_path, "f", [{"type": "text", "path": str(good)}])
    assert main(["build", "--config", str(p)]) == 2
    err = capsys.readouterr().err
    assert "error: no space left on device: " in err and "00000-00000.jsonl.zst" in err and "Traceback" not in err
    # no corpus and no temporary folder; the work folder stays, so the next build resumes by task
    assert sorted(q.name for q in (tmp_path / "runs" / "f").iterdir()) == [".corpus-work", ".locks"]
    monkeypatch.undo()
    assert main(["build", "--config", str(p)]) == 0
    assert sorted(q.name for q in (tmp_path / "runs" / "f").iterdir()) == [".locks", "corpus"]
