"""Token shard writer: format, dtypes, determinism across workers, restart, bad input, inspect."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import UserError
from test_shards_helpers import built_run, record, tok_config, write_corpus


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return built_run(tmp_path_factory)


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file() and p.name != "meta.json"}


def _clone_run(src_root: Path, dst_root: Path, run: str = "t", with_seg: bool = True) -> None:
    for part in ("corpus", "vocab") + (("seg",) if with_seg else ()):
        shutil.copytree(src_root / "t" / part, dst_root / run / part)


def test_format_and_dtypes(root):
    from tokenization.ngram import Lexicon, max_match
    from tokenization.segcache import iter_segmented
    from tokenization.vocab import load_token_encoder

    run = root / "t"
    for kind in ("char", "sgt"):
        d = run / "shards" / kind / "valid"
        meta = json.loads((d / "meta.json").read_text())
        assert meta["format_version"] == 1 and meta["kind"] == kind and meta["dtype"] == "uint16"
        assert meta["vocab_size"] <= 65536 and len(meta["vocab_hash"]) == 16
        assert meta["n_tokens"] == sum(s["n_tokens"] for s in meta["shards"])
        assert (meta["units"] is not None) == (kind == "char")  # ngram lexicon built on char
        offsets = np.load(d / "00000.docs.npy")
        assert offsets.dtype == np.int64 and offsets[0] == 0 and (np.diff(offsets) >= 0).all()
        n = int(offsets[-1])
        assert (d / "00000.ids.bin").stat().st_size == 2 * n
        assert (d / "00000.char_len.bin").stat().st_size == n
        assert (d / "00000.word_start.bin").stat().st_size == n
        if kind == "char":
            assert (d / "00000.unit_len.bin").stat().st_size == n
            assert (d / "00000.unit_ngram.bin").stat().st_size == 4 * n
        else:
            assert not (d / "00000.unit_len.bin").exists()
        ids = np.fromfile(d / "00000.ids.bin", dtype=np.uint16)
        cl = np.fromfile(d / "00000.char_len.bin", dtype=np.uint8)
        ws = np.fromfile(d / "00000.word_start.bin", dtype=np.uint8)
        docmeta = [json.loads(x) for x in (d / "00000.docmeta.jsonl").read_text().splitlines()]
        assert len(docmeta) == len(offsets) - 1 == meta["n_docs"]
        enc = load_token_encoder(run / "vocab" / kind)
        lex = Lexicon.load(run / "vocab" / "ngram") if kind == "char" else None
        for k, (doc, words) in enumerate(iter_segmented(run, "valid", 0)):
            a, b = offsets[k], offsets[k + 1]
            e_ids, e_cl, e_ws = enc.encode_words(words)
            assert ids[a:b].tolist() == e_ids.tolist(), doc["id"]  # the pipeline's own ids, no specials
            assert cl[a:b].tolist() == e_cl.tolist() and int(cl[a:b].sum()) == len(doc["text"])
            assert ws[a:b].tolist() == e_ws.tolist()
            assert docmeta[k] == {"id": doc["id"], "lang": doc["lang"], "source": doc["source"], "n_chars": len(doc["text"])}
            if lex is not None:
                ul = np.fromfile(d / "00000.unit_len.bin", dtype=np.uint8)[a:b]
                un = np.fromfile(d / "00000.unit_ngram.bin", dtype=np.int32)[a:b]
                e_ul, e_un = max_match(e_ids, lex, None)
                assert ul.tolist() == e_ul.tolist() and un.tolist() == e_un.tolist()
        assert not list(d.glob(".*tmp")) and not (d / ".job.json").exists()


def test_bad_input_is_stored_or_reported(root):
    run = root / "t"
    tr = json.loads((run / "shards" / "char" / "train" / "meta.json").read_text())
    va = json.loads((run / "shards" / "char" / "valid" / "meta.json").read_text())
    # empty documents are stored (zero tokens) and counted, never dropped
    assert tr["n_empty_docs"] == 1 and va["n_empty_docs"] == 1
    assert tr["n_docs"] == 629
    # the enormous document is stored whole
    big = [g for g in tr["groups"] if g["source"] == "big"][0]
    assert big["docs"] == 1 and big["chars"] > 40_000 and big["tokens"] > 40_000
    # characters outside the vocabulary become [UNK] and are counted
    assert va["n_unk"] > 0
    for kind in ("char", "sgt"):
        m = json.loads((run / "shards" / kind / "valid" / "meta.json").read_text())
        assert m["n_chars"] == va["n_chars"]  # every character of mixed-script / Traditional text is covered


def test_ids_dtype_and_uint32_path(tmp_path):
    from tokenization.shards import KindSpec, ids_dtype, write_docs

    assert ids_dtype(21128) == np.uint16 and ids_dtype(65536) == np.uint16 and ids_dtype(65537) == np.uint32

    class BigEncoder:  # a stand-in for a vocabulary of 100 k entries
        special_ids = {"unk": 1}

        def encode_batch(self, docs):
            out = []
            for words in docs:
                n = sum(len(w) for w in words)
                out.append((np.arange(n, dtype=np.int64) + 70_000, np.ones(n, np.uint8), np.ones(n, np.uint8)))
            return out

    spec = KindSpec("big", str(tmp_path), str(tmp_path / "out"), "uint32", False)
    docs = [(record("一二三"), ["一二", "三"]), (record(""), [])]
    stats = write_docs(iter(docs), [spec], "00000", encoders={"big": BigEncoder()})
    assert stats["big"]["n_tokens"] == 3 and stats["big"]["max_id"] == 70_002
    ids = np.fromfile(tmp_path / "out" / "00000.ids.bin", dtype=np.uint32)
    assert ids.tolist() == [70_000, 70_001, 70_002]
    assert np.load(tmp_path / "out" / "00000.docs.npy").tolist() == [0, 3, 3]


def test_encoder_breaking_the_char_len_contract_stops_the_job(tmp_path):
    from tokenization.shards import KindSpec, write_docs

    class Lossy:
        special_ids = {"unk": 1}

        def encode_batch(self, docs):
            return [(np.array([5], np.int64), np.array([1], np.uint8), np.array([1], np.uint8)) for _ in docs]

    spec = KindSpec("x", str(tmp_path), str(tmp_path / "out"), "uint16", False)
    with pytest.raises(RuntimeError, match="record 1"):
        write_docs(iter([(record("三个字"), ["三个字"])]), [spec], "00000", encoders={"x": Lossy()}, source="s.jsonl")
    assert not list((tmp_path / "out").iterdir())  # nothing left behind


def test_record_without_text_names_file_and_record(root, tmp_path):
    from tokenization.shards import main_shards

    bad = [record("正常的文本。"), {"id": "x", "lang": "zh", "source": "pd", "meta": {}}]
    write_corpus(tmp_path / "bad", bad, [record("验证。")], n_train_shards=1)
    shutil.copytree(root / "t" / "vocab", tmp_path / "bad" / "vocab")
    cfg = tok_config(tmp_path, "bad")
    with pytest.raises(UserError, match=r"shard-00000\.jsonl\.zst.*record 2"):
        main_shards(cfg)


def test_same_bytes_for_any_number_of_workers(root, tmp_path):
    from tokenization.shards import main_shards

    _clone_run(root, tmp_path)
    cfg = tok_config(tmp_path, "t", "shards.workers=2", "shards.splits=[train]")
    main_shards(cfg)
    for kind in ("char", "sgt"):
        a = root / "t" / "shards" / kind / "train"
        b = tmp_path / "t" / "shards" / kind / "train"
        assert _files(a) == _files(b)
        ma, mb = json.loads((a / "meta.json").read_text()), json.loads((b / "meta.json").read_text())
        assert ma["shards"] == mb["shards"] and ma["groups"] == mb["groups"]


def test_restart_after_interruption_keeps_complete_shards(root, tmp_path, monkeypatch):
    import tokenization.shards as sh

    _clone_run(root, tmp_path)
    cfg = tok_config(tmp_path, "t", "shards.splits=[train]")
    calls = {"n": 0}
    real_commit = sh.ShardWriter.commit

    def flaky_commit(self):
        calls["n"] += 1
        if calls["n"] == 3:  # shard 00000 done for char and sgt; die while committing shard 00001
            raise KeyboardInterrupt
        real_commit(self)

    monkeypatch.setattr(sh.ShardWriter, "commit", flaky_commit)
    with pytest.raises(KeyboardInterrupt):
        sh.main_shards(cfg)
    monkeypatch.setattr(sh.ShardWriter, "commit", real_commit)
    d = tmp_path / "t" / "shards" / "char" / "train"
    assert not (d / "meta.json").exists() and (d / ".job.json").exists()
    assert (d / "00000.docs.npy").exists() and not (d / "00001.docs.npy").exists()
    assert not list(d.glob(".*.tmp"))  # the interrupted shard's temporary files were removed
    # what a hard kill leaves behind: a temporary file and a final-named file without docs.npy
    (d / ".00002.ids.bin.999.tmp").write_bytes(b"junk")
    (d / "00002.ids.bin").write_bytes(b"\x01\x02\x03")
    kept = {p.name: p.stat().st_mtime_ns for p in d.glob("00000.*")}
    sh.main_shards(cfg)
    assert {p.name: p.stat().st_mtime_ns for p in d.glob("00000.*")} == kept  # complete shard not rewritten
    assert not list(d.glob(".*tmp")) and not (d / ".job.json").exists()
    for kind in ("char", "sgt"):
        ref = root / "t" / "shards" / kind / "train"
        got = tmp_path / "t" / "shards" / kind / "train"
        assert _files(ref) == _files(got)
        assert json.loads((ref / "meta.json").read_text())["shards"] == json.loads((got / "meta.json").read_text())["shards"]
    # a finished split is skipped; a changed vocabulary rewrites it
    before = (d / "00001.ids.bin").stat().st_mtime_ns
    sh.main_shards(cfg)
    assert (d / "00001.ids.bin").stat().st_mtime_ns == before
    (d / "00002.docs.npy").unlink()  # a finished split that lost a file is completed again
    sh.main_shards(cfg)
    assert (d / "00002.docs.npy").exists() and (d / "meta.json").exists()
    assert (d / "00001.ids.bin").stat().st_mtime_ns == before
    with open(tmp_path / "t" / "vocab" / "char" / "tokenizer_config.json", "a") as f:
        f.write("\n")
    sh.main_shards(cfg)
    assert (d / "00001.ids.bin").stat().st_mtime_ns != before


def test_inspect_prints_both_streams_side_by_side(root, capsys):
    from tokenization.inspect import main_inspect

    rc = main_inspect(["--runs-root", str(root), "--run", "t", "--kind", "char", "--extra", "sgt",
                       "--split", "valid", "--window", "1", "--seq-len", "48"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "window 1 of" in out and "lang=zh" in out
    assert "char (" in out and "sgt (" in out and "[CLS]" in out
    assert "|" in out  # word starts are marked
    table = out.split("\n\n", 1)[1].splitlines()
    assert table[0].split()[:3] == ["chars", "char", "sgt"]
    assert any(len(r.split()) >= 3 and "-" in r.split()[0] for r in table[2:])
    rc = main_inspect(["--runs-root", str(root), "--run", "t", "--window", "999999"])
    assert rc == 2 and "out of range" in capsys.readouterr().err


def test_cli_inspect_subcommand(root):
    r = subprocess.run([sys.executable, "-m", "tokenization", "inspect", "--runs-root", str(root), "--run", "t",
                        "--kind", "sgt", "--extra", "char", "--split", "train", "--window", "0", "--seq-len", "32"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "sgt (" in r.stdout and "char (" in r.stdout


def test_memoised_encoding_equals_the_encoder(root):
    """The shard path's MemoEncoder gives the encoder's exact output (hard cases, OOV, whitespace)."""
    from tokenization.segcache import iter_split
    from tokenization.shards import MemoEncoder
    from tokenization.vocab import load_token_encoder

    run = root / "t"
    extra = [["  ", "前导", "空格"], ["尾部", "空格", " ", " "], ["\n"], ["Ａ", "ＢＣ", "臺", "\u0301", "x"],
             ["tab", "\t", "和", "\u200b", "零宽"], ["a" * 300], [" " * 3, "中"]]
    for kind in ("char", "sgt"):
        enc = load_token_encoder(run / "vocab" / kind)
        memo = MemoEncoder(enc)
        assert memo.supported
        for split in ("train", "valid"):
            words = [w for _, w in iter_split(run, split)]
            for i in range(0, len(words), 64):
                batch = words[i:i + 64]
                got = memo.encode_batch(batch)  # the second pass is all cache hits
                for g, e in zip(got, enc.encode_batch(batch)):
                    assert all(np.array_equal(x, y) for x, y in zip(g, e))
        for w in extra:
            try:
                want = enc.encode_words(w)
            except UserError:
                with pytest.raises(UserError):
                    memo.encode_words(w)
                continue
            got = memo.encode_words(w)
            assert all(np.array_equal(x, y) for x, y in zip(got, want)), (kind, w)
