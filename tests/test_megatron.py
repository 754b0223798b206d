"""Export to Megatron-LM's indexed dataset: read back with a reader written from the format's spec."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from test_shards_helpers import built_run
from tokenization.__main__ import main as tok_main
from tokenization.megatron import export_megatron

CODES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32, 8: np.uint16}


def read_indexed(prefix: Path) -> list[np.ndarray]:
    """The documents of ``PREFIX.bin/.idx`` (MMapIndexedDataset, version 1), from the spec alone."""
    raw = (prefix.with_name(prefix.name + ".idx")).read_bytes()
    assert raw[:9] == b"MMIDIDX\x00\x00"
    version, code, n_seq, n_doc = struct.unpack_from("<QBQQ", raw, 9)
    assert version == 1 and 9 + 8 + 1 + 8 + 8 == 34
    off = 34
    lengths = np.frombuffer(raw, "<i4", n_seq, off)
    pointers = np.frombuffer(raw, "<i8", n_seq, off + 4 * n_seq)
    doc_idx = np.frombuffer(raw, "<i8", n_doc, off + 12 * n_seq)
    assert len(raw) == off + 12 * n_seq + 8 * n_doc  # no sequence modes (not multimodal)
    dt = np.dtype(CODES[code])
    data = np.fromfile(prefix.with_name(prefix.name + ".bin"), dtype=dt)
    assert data.nbytes == int(lengths.sum()) * dt.itemsize
    assert (pointers == np.concatenate([[0], np.cumsum(lengths.astype(np.int64) * dt.itemsize)[:-1]])).all()
    assert doc_idx[0] == 0 and (np.diff(doc_idx) >= 1).all() and doc_idx[-1] == n_seq
    seqs = [data[p // dt.itemsize: p // dt.itemsize + n] for p, n in zip(pointers.tolist(), lengths.tolist())]
    return [np.concatenate(seqs[a:b]) for a, b in zip(doc_idx[:-1].tolist(), doc_idx[1:].tolist())]


def stored_docs(shards: Path, kind: str, split: str) -> list[np.ndarray]:
    d = shards / kind / split
    meta = json.loads((d / "meta.json").read_text())
    out = []
    for s in meta["shards"]:
        off = np.load(d / f"{s['name']}.docs.npy")
        ids = np.fromfile(d / f"{s['name']}.ids.bin", dtype=meta["dtype"])
        out += [ids[a:b] for a, b in zip(off[:-1], off[1:])]
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return built_run(tmp_path_factory) / "t" / "shards"


@pytest.mark.parametrize("kind,split", [("char", "train"), ("sgt", "valid")])
def test_export_reads_back_document_by_document(shards, tmp_path, kind, split):
    s = export_megatron(shards, kind, split, tmp_path)
    docs = read_indexed(tmp_path / f"{kind}_{split}")
    want = [d for d in stored_docs(shards, kind, split) if len(d)]
    sep = json.loads((shards / kind / split / "meta.json").read_text())["special_tokens"]["sep"]
    assert s["skipped_empty_documents"] == 1 and s["eod_id"] == sep  # the corpus has one empty document
    assert len(docs) == len(want) == s["n_documents"]
    for got, ref in zip(docs, want):
        assert got[-1] == sep and np.array_equal(got[:-1], ref)
    assert docs[0].dtype == np.uint16 and s["n_tokens"] == sum(map(len, docs))
    side = json.loads((tmp_path / f"{kind}_{split}.json").read_text())
    assert side["vocab_hash"] and (tmp_path / side["vocab_dir"] / "stats.json").is_file()
    assert not list(tmp_path.glob("*.tmp-*"))


def test_cli_without_eod_and_bad_input(shards, tmp_path, capsys):
    assert tok_main(["export-megatron", "--shards", str(shards), "--kind", "char", "--split", "valid",
                     "--out", str(tmp_path), "--no-eod", "--prefix", "zh"]) == 0
    docs = read_indexed(tmp_path / "zh")
    assert [d.tolist() for d in docs] == [d.tolist() for d in stored_docs(shards, "char", "valid") if len(d)]
    assert "zh.{bin,idx,json}" in capsys.readouterr().out
    assert tok_main(["export-megatron", "--shards", str(tmp_path / "none"), "--kind", "char", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "token shards not found" in err and "Traceback" not in err
