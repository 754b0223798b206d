"""Export a split's token ids to Megatron-LM's indexed dataset (``.bin`` + ``.idx``).

    python -m tokenization export-megatron --run demo --kind char --split train --out runs/demo/megatron

writes ``OUT/KIND_SPLIT.bin``, ``OUT/KIND_SPLIT.idx`` and ``OUT/KIND_SPLIT.json`` (what was exported,
the vocabulary, the end-of-document id), so the same data trains in Megatron-LM, NeMo or torchtitan
(``--data-path OUT/KIND_SPLIT``). Only the ``ids`` stream is exported: what the single-stream
objectives (``mlm`` without whole-word masking, ``ntp``, ``meap``) read; the aligned streams
(``char_len``, ``word_start``, units, other kinds) have no place in that format.

The format (Megatron-LM ``megatron/core/datasets/indexed_dataset.py``, "MMapIndexedDataset"):

* ``.bin``: the tokens of every sequence, back to back, in the index's dtype;
* ``.idx``, little-endian: the magic ``b"MMIDIDX\\x00\\x00"``, version ``1`` (uint64), the dtype code
  (uint8: 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64, 7 float32, 8 uint16), the number
  of sequences and of document indices (uint64 each), then the sequence lengths (int32), the
  sequence byte offsets into ``.bin`` (int64) and the document indices (int64: ``0`` and the end
  sequence of every document).

One document is one sequence (as Megatron's ``preprocess_data.py`` writes without sentence
splitting), in stored order (shard order, then document order). ``append_eod`` (default on)
appends an end-of-document token to every document, as ``preprocess_data.py --append-eod``
does; its id is ``--eod-id`` or, by default, the vocabulary's ``[SEP]`` (the pipeline's own
document separator, :mod:`tokenization.loader`). Empty documents are skipped and counted.
ids are written as uint16 when the shards hold uint16, else as int32 (Megatron has no uint32).

Memory stays bounded by one shard: tokens are streamed shard by shard, the per-document lengths
go to a temporary file, and the pointers are computed in chunks. Files are written under
temporary names and renamed (``.bin`` first, ``.idx`` last), so a killed export leaves no
half dataset under the final names.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

from pipeline.errors import UserError

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
DTYPE_CODES = {np.dtype(np.uint8): 1, np.dtype(np.int8): 2, np.dtype(np.int16): 3, np.dtype(np.int32): 4,
               np.dtype(np.int64): 5, np.dtype(np.float64): 6, np.dtype(np.float32): 7, np.dtype(np.uint16): 8}
_CHUNK = 1 << 20  # sequences per chunk when writing pointers / document indices


def export_megatron(shards_root: str | Path, kind: str, split: str, out_dir: str | Path, prefix: str | None = None,
                    append_eod: bool = True, eod_id: int | None = None) -> dict:
    """Write ``OUT/PREFIX.{bin,idx,json}`` from the ``ids`` stream of ``SHARDS_ROOT/KIND/SPLIT``; returns
    the summary also written to the ``.json``."""
    split_dir = Path(shards_root) / kind / split
    meta_p = split_dir / "meta.json"
    if not meta_p.is_file():
        raise UserError(f"token shards not found: {meta_p} (run `python -m tokenization shards`)")
    meta = json.loads(meta_p.read_text(encoding="utf-8"))
    src_dt = np.dtype(meta["streams"]["ids"])
    dt = np.dtype(np.uint16) if src_dt == np.uint16 else np.dtype(np.int32)
    sp = meta.get("special_tokens") or {}
    if append_eod and eod_id is None:
        if "sep" not in sp:
            raise UserError(f"{meta_p}: no [SEP] id in special_tokens; pass --eod-id")
        eod_id = int(sp["sep"])
    if append_eod and not 0 <= int(eod_id) <= np.iinfo(dt).max:
        raise UserError(f"--eod-id {eod_id} does not fit the export dtype {dt}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = prefix or f"{kind}_{split}"
    final = {k: out_dir / f"{prefix}.{k}" for k in ("bin", "idx", "json")}
    tag = f".tmp-{os.getpid()}"
    tmp = {k: p.with_name(p.name + tag) for k, p in final.items()}
    lens_tmp = out_dir / f"{prefix}.lengths{tag}"
    n_seq = n_tok = n_empty = 0
    try:
        with open(tmp["bin"], "wb") as fb, open(lens_tmp, "wb") as fl:
            for s in meta["shards"]:
                name = s["name"]
                offsets = np.load(split_dir / f"{name}.docs.npy")
                ids_p = split_dir / f"{name}.ids.bin"
                n = int(offsets[-1])
                if not ids_p.is_file() or ids_p.stat().st_size != n * src_dt.itemsize:
                    raise UserError(f"{ids_p}: missing or not {n} tokens of {src_dt} (an incomplete shard: "
                                    f"re-run `python -m tokenization shards`)")
                ids = np.fromfile(ids_p, dtype=src_dt) if n else np.zeros(0, src_dt)
                if n and int(ids.max()) > np.iinfo(dt).max:
                    raise UserError(f"{ids_p}: token id {int(ids.max())} does not fit {dt}")
                lens = np.diff(offsets).astype(np.int64)
                keep = lens > 0
                n_empty += int((~keep).sum())
                lens = lens[keep]
                if append_eod:
                    # token t of document d moves right by the number of documents before d
                    out = np.empty(n + len(lens), dtype=dt)
                    shift = np.repeat(np.arange(len(lens), dtype=np.int64), lens)
                    out[np.arange(n, dtype=np.int64) + shift] = ids
                    out[np.cumsum(lens) + np.arange(len(lens))] = eod_id
                    lens = lens + 1
                else:
                    out = ids.astype(dt, copy=False)
                if np.any(lens > np.iinfo(np.int32).max):
                    raise UserError(f"{split_dir / name}: a document longer than 2**31 - 1 tokens")
                fb.write(out.tobytes())
                fl.write(lens.astype(np.int32).tobytes())
                n_seq += len(lens)
                n_tok += len(out)
        _write_idx(tmp["idx"], lens_tmp, n_seq, dt)
        summary = {
            "format": "megatron-mmap-indexed-dataset", "version": VERSION, "kind": kind, "split": split,
            "data_path": prefix, "dtype": dt.name, "dtype_code": DTYPE_CODES[dt], "n_sequences": n_seq,
            "n_documents": n_seq, "n_tokens": n_tok, "append_eod": bool(append_eod),
            "eod_id": int(eod_id) if append_eod else None, "skipped_empty_documents": n_empty,
            "vocab_dir": os.path.relpath(split_dir / meta.get("vocab_dir", ""), out_dir) if meta.get("vocab_dir") else None,
            "vocab_hash": meta.get("vocab_hash"), "vocab_size": meta.get("vocab_size"), "special_tokens": sp,
            "source": {"shards": len(meta["shards"]), "n_docs": meta.get("n_docs"), "n_tokens": meta.get("n_tokens")},
        }
        tmp["json"].write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        for k in ("bin", "json", "idx"):  # the index last: a dataset is complete when it exists
            os.replace(tmp[k], final[k])
    finally:
        for p in [*tmp.values(), lens_tmp]:
            if p.exists():
                p.unlink()
    return summary


def _write_idx(path: Path, lens_path: Path, n_seq: int, dt: np.dtype) -> None:
    lengths = np.memmap(lens_path, dtype=np.int32, mode="r") if n_seq else np.zeros(0, np.int32)
    with open(path, "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<Q", VERSION))
        f.write(struct.pack("<B", DTYPE_CODES[dt]))
        f.write(struct.pack("<Q", n_seq))
        f.write(struct.pack("<Q", n_seq + 1))  # document indices: 0 and the end of every document
        for a in range(0, n_seq, _CHUNK):
            f.write(np.asarray(lengths[a:a + _CHUNK], dtype="<i4").tobytes())
        ptr = 0
        for a in range(0, n_seq, _CHUNK):
            nbytes = np.asarray(lengths[a:a + _CHUNK], dtype=np.int64) * dt.itemsize
            starts = ptr + np.concatenate([[0], np.cumsum(nbytes)[:-1]])
            f.write(starts.astype("<i8").tobytes())
            ptr += int(nbytes.sum())
        for a in range(0, n_seq + 1, _CHUNK):
            f.write(np.arange(a, min(a + _CHUNK, n_seq + 1), dtype="<i8").tobytes())
    del lengths


def main_export(args) -> int:
    root = Path(args.shards) if args.shards else Path(args.runs_root, args.run, "shards")
    s = export_megatron(root, args.kind, args.split, args.out, prefix=args.prefix, append_eod=not args.no_eod,
                        eod_id=args.eod_id)
    print(f"{Path(args.out) / s['data_path']}.{{bin,idx,json}}: {s['n_sequences']:,} documents, {s['n_tokens']:,} "
          f"{s['dtype']} tokens" + (f", {s['skipped_empty_documents']} empty skipped" if s["skipped_empty_documents"] else "")
          + f" (Megatron: --data-path {Path(args.out) / s['data_path']})")
    return 0


def add_arguments(p) -> None:
    p.add_argument("--run", default="demo", help="run name (runs/RUN/shards)")
    p.add_argument("--runs-root", default="runs", help="folder holding the runs")
    p.add_argument("--shards", default=None, help="shards root (default RUNS_ROOT/RUN/shards)")
    p.add_argument("--kind", default="char", help="vocabulary kind whose ids are exported")
    p.add_argument("--split", default="train", choices=("train", "valid"))
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--prefix", default=None, help="file name prefix (default KIND_SPLIT)")
    p.add_argument("--eod-id", type=int, default=None, help="end-of-document id (default: the vocabulary's [SEP])")
    p.add_argument("--no-eod", action="store_true", help="do not append an end-of-document token")
