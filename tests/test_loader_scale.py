"""The loader at scale: lazily opened shards (bounded LRU), the on-disk document index and epoch
orders (built once, reused, rebuilt when the shards change), batches identical to the in-memory path.

Synthetic shards are written with the shard stage's own writer (``ShardWriter`` +
``write_split_meta``); the real ones come from ``test_shards_helpers.built_run``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from test_shards_helpers import built_run
from tokenization.loader import PackedLoader
from tokenization.shards import KindSpec, ShardWriter, shard_name, write_split_meta
from tokenization.shards_config import MixingConfig

ROOT = Path(__file__).resolve().parents[1]


def write_split(shards_root: Path, n_shards: int, docs_per_shard: int = 3, seed: int = 0, kind: str = "char",
                split: str = "train") -> Path:
    """``n_shards`` small shards of random ids (two languages), with the stage's writer and meta."""
    split_dir = shards_root / kind / split
    split_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    results = []
    for i in range(n_shards):
        counts = rng.integers(0 if i % 7 == 3 else 1, 40, size=docs_per_shard)  # a few empty documents
        n = int(counts.sum())
        docs = [{"id": f"{seed}-{i}-{j}", "text": "字" * int(c), "lang": ("zh", "en")[(i + j) % 2], "source": "syn"}
                for j, c in enumerate(counts)]
        w = ShardWriter(split_dir, shard_name(i), np.dtype(np.uint16), units=False)
        w.append(docs, rng.integers(5, 900, n), np.ones(n, np.uint8), (rng.random(n) < 0.6).astype(np.uint8), counts)
        w.commit()
        groups = Counter()
        for d, c in zip(docs, counts):
            g = groups.setdefault((d["lang"], d["source"]), [0, 0, 0])
            g[0], g[1], g[2] = g[0] + 1, g[1] + int(c), g[2] + int(c)
        results.append({"index": i, "stats": {kind: {
            "n_docs": len(docs), "n_tokens": n, "n_chars": n, "n_empty_docs": int((counts == 0).sum()), "n_unk": 0,
            "groups": [(k[0], k[1], *v) for k, v in groups.items()]}}})
    spec = KindSpec(kind=kind, vocab_dir=str(shards_root / "vocab" / kind), out_dir=str(split_dir),
                    id_dtype="uint16", units=False)
    vocab_meta = {"kind": kind, "size": 1000, "special_tokens": {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}}
    write_split_meta(split_dir, kind, split, spec, vocab_meta, {"vocab_hash": "synthetic"}, results, None, MixingConfig())
    return split_dir


def same_batches(a: PackedLoader, b: PackedLoader, positions) -> None:
    assert len(a) == len(b) and a.windows_per_epoch == b.windows_per_epoch
    for e, i in positions:
        x, y = a.batch(e, i), b.batch(e, i)
        assert x.keys() == y.keys()
        for k in x:
            assert np.array_equal(x[k], y[k]), (e, i, k)


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> Path:
    return built_run(tmp_path_factory) / "t" / "shards"


def test_many_shards_load_under_a_low_open_file_limit(tmp_path):
    """300 shards x 3 streams are 900 maps; with ``ulimit -n 128`` the loader still opens and iterates
    (at most ``max_open_shards`` shards open at a time), in a subprocess so the limit stays there."""
    root = tmp_path / "shards"
    write_split(root, 300, docs_per_shard=3)
    script = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        from tokenization.loader import PackedLoader
        ld = PackedLoader({str(root)!r}, "char", "train", 16, 4, seed=1, max_open_shards=8)
        n = 0
        for e, i, b in ld.iter_from(0, 0):
            assert b["input_ids"].shape == (4, 16)
            n += int(b["attention_mask"].sum())
            if e == 1:
                break
        assert len(ld.open_shards) <= 8 and ld.open_shards.opened >= 300, (len(ld.open_shards), ld.open_shards.opened)
        print("OK", len(ld), n)
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    ok, n_batches, n_tok = r.stdout.split()
    assert ok == "OK" and int(n_batches) > 0 and int(n_tok) > 0


def test_disk_index_reused_then_rebuilt_when_shards_change(tmp_path):
    root = tmp_path / "shards"
    split_dir = write_split(root, 12, docs_per_shard=4, seed=1)
    first = PackedLoader(root, "char", "train", 16, 2, seed=0, mixing={"alpha": 0.5})
    first.batch(1, 0)
    assert first.index_store.built == ["docs", "epoch 1"]
    fp = first.index_store.fingerprint
    info = split_dir / ".index" / fp / "docs" / "info.json"
    stamp = info.stat().st_mtime_ns
    again = PackedLoader(root, "char", "train", 16, 2, seed=0, mixing={"alpha": 0.5})
    again.batch(1, 1)
    assert again.index_store.built == []  # the document index and epoch 1 were reused
    same_batches(first, again, [(1, 0), (1, len(again) - 1), (0, 3)])
    assert info.stat().st_mtime_ns == stamp
    # rewrite the split with other documents: a new fingerprint, a fresh index, the old one removed
    write_split(root, 12, docs_per_shard=5, seed=2)
    new = PackedLoader(root, "char", "train", 16, 2, seed=0, mixing={"alpha": 0.5})
    assert new.index_store.fingerprint != fp and new.index_store.built == ["docs"]
    assert not (split_dir / ".index" / fp).exists()
    mem = PackedLoader(root, "char", "train", 16, 2, seed=0, mixing={"alpha": 0.5}, index="memory")
    assert mem.index_store is None
    same_batches(new, mem, [(0, 0), (1, 2), (2, len(mem) - 1)])
    assert int(new.doc_len.sum()) == sum(int(np.load(split_dir / f"{shard_name(i)}.docs.npy")[-1]) for i in range(12))


@pytest.mark.parametrize("opts", [
    dict(kind="char", split="train", seq_len=32, batch_size=4, seed=3),
    dict(kind="char", split="train", seq_len=48, batch_size=3, seed=5, extra_kinds=("sgt",), mixing={"alpha": 0.3}),
    dict(kind="sgt", split="valid", seq_len=40, batch_size=4, shuffle=False, extra_kinds=("char",)),
    dict(kind="char", split="train", seq_len=32, batch_size=2, seed=1, rank=1, world_size=2),
])
def test_disk_index_and_lru_give_the_in_memory_batches(real, tmp_path, opts):
    mem = PackedLoader(real, index="memory", **opts)
    disk = PackedLoader(real, index_dir=tmp_path / "ix", max_open_shards=1, **opts)
    assert disk.index_store is not None and (tmp_path / "ix" / opts["kind"] / opts["split"]).is_dir()
    n = len(mem)
    same_batches(mem, disk, [(0, 0), (0, n - 1), (1, n // 2), (3, 1 % n)])
    assert len(disk.open_shards) == 1  # every kind's shards share the one bound
    assert disk.window_items(1, 2) == mem.window_items(1, 2)
    g0, w0 = mem.epoch_draws(2)
    g1, w1 = disk.epoch_draws(2)
    assert np.array_equal(g0, g1) and np.array_equal(w0, w1)


def test_bad_loader_options(real):
    from pipeline.errors import UserError

    with pytest.raises(UserError, match="max_open_shards"):
        PackedLoader(real, "char", "train", 32, 4, max_open_shards=0)
    with pytest.raises(UserError, match="index must be"):
        PackedLoader(real, "char", "train", 32, 4, index="ram")


def test_pretrain_config_sets_the_bound_and_the_index_folder(real, tmp_path):
    from pipeline.config import ConfigError, load_config
    from pretrain.config import PretrainConfig
    from pretrain.data import build_loader

    cfg = load_config(PretrainConfig, None, [f"data.shards_root={real}", "data.kind=char", "data.seq_len=32",
                                             "data.max_open_shards=2", f"data.index_dir={tmp_path / 'ix'}"])
    ld = build_loader(cfg, "train", 4, 0, 1)
    ld.batch(0, 0)
    assert ld.open_shards.capacity == 2 and (tmp_path / "ix" / "char" / "train" / ld.index_store.fingerprint).is_dir()
    with pytest.raises(ConfigError, match="max_open_shards"):
        load_config(PretrainConfig, None, ["data.max_open_shards=0"])


def test_epoch_order_kept_in_memory_when_the_index_folder_cannot_take_it(real, tmp_path):
    a = PackedLoader(real, "char", "valid", 32, 2, seed=4, index_dir=tmp_path / "ix")
    (a.index_store.dir / "epochs").write_text("not a folder")  # mkdir under it fails
    b = PackedLoader(real, "char", "valid", 32, 2, seed=4, index_dir=tmp_path / "ix")
    mem = PackedLoader(real, "char", "valid", 32, 2, seed=4, index="memory")
    same_batches(mem, b, [(0, 0), (1, len(mem) - 1)])
    assert b.index_store.built == []


def test_ranks_opening_together_build_the_index_once(tmp_path):
    """Four processes (ranks 0-3) open the same new split at once: one builds the document index and
    the epoch order under the lock, the others wait and map them; all see the same global order."""
    root = tmp_path / "shards"
    write_split(root, 40, docs_per_shard=6, seed=5)
    script = textwrap.dedent(f"""
        import json, sys
        from tokenization.loader import PackedLoader
        r = int(sys.argv[1])
        ld = PackedLoader({str(root)!r}, "char", "train", 16, 2, seed=7, rank=r, world_size=4)
        g, w = ld.epoch_draws(0)
        b = ld.batch(0, 0)
        print(json.dumps({{"built": ld.index_store.built, "order": [int(x) for x in w[:50]],
                          "ids": b["input_ids"].tolist()}}))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(r)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(4)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    built = [o["built"] for o in outs]
    assert sum("docs" in b for b in built) == 1 and sum("epoch 0" in b for b in built) == 1, built
    assert all(o["order"] == outs[0]["order"] for o in outs)
    mem = PackedLoader(root, "char", "train", 16, 2, seed=7, rank=2, world_size=4, index="memory")
    assert mem.batch(0, 0)["input_ids"].tolist() == outs[2]["ids"]
