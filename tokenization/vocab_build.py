"""``python -m tokenization vocab``: segment (cached), build every requested kind, print metrics.

Order: segment train + valid (executor tasks, cached per shard) -> count units and characters
on train (one task per shard writes its part, merged in shard order; optionally on a
deterministic ``sample``) -> build ``char`` / ``sgt`` / ``word`` -> ``ngram`` over its base kind
(streamed per-shard n-gram counts, reduced bucket by bucket) -> metrics on the valid split and
held-out gold data. The tasks run on the config's ``executor`` (``tokenization/tasks.py``). Each kind is written into a temporary folder and renamed
into place with ``stats.json`` written last, so an interrupted build never leaves a folder that
looks finished.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np

from corpora.io import iter_corpus, list_shards
from pipeline.config import save_config
from pipeline.errors import UserError
from pipeline.log import get_logger, print_table
from pipeline.runs import atomic_dir, atomic_file, atomic_write_json, read_json
from tokenization import metrics as M
from tokenization.config import TokenizationConfig
from tokenization.ngram import NgramCounter, lexicon_from_scored, max_match, reduce_counts
from tokenization.schema import VocabStats
from tokenization.segcache import ensure_segmented, iter_split
from tokenization.segment import Segmenter, from_config
from tokenization.shards import _batched
from tokenization.vocab import (SPECIAL_IDS, attach_spaces, build_char, build_word, learn_sgt,
                                load_token_encoder, load_vocab_meta, normalizer_info,
                                save_segmented_folder)

log = get_logger("tokenization")
BATCH = 256


def _batches(it, n=BATCH):
    return _batched(it, n)


def sample_rate(sample, n_docs: int, n_chars: int) -> float:
    """The share of train documents the vocabulary counts keep (1.0: all; see ``SampleConfig``)."""
    rate = 1.0
    if sample is not None and sample.max_docs > 0 and n_docs:
        rate = min(rate, sample.max_docs / n_docs)
    if sample is not None and sample.max_chars > 0 and n_chars:
        rate = min(rate, sample.max_chars / n_chars)
    return rate


def in_sample(doc: dict, rate: float, seed: int) -> bool:
    """Deterministic by (seed, document id): the same documents for any run, task or worker."""
    if rate >= 1.0:
        return True
    key = doc.get("id") or doc.get("text", "")
    h = hashlib.blake2b(f"{seed}\x00{key}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(h, "big") < rate * 2.0 ** 64


def _part_path(parts_dir: Path, rank: int) -> Path:
    return parts_dir / f"part-{rank:05d}.json.zst"


def _count_task(rank: int, run_dir: str, indices: list[int], parts_dir: str, rate: float, seed: int) -> None:
    """Executor task ``rank``: unit and character counts of train shard ``indices[rank]`` (map step).

    Written as ``[[key, count], ...]`` in first-seen order, so merging the parts in shard order
    gives the same counter (ties in ``most_common`` included) as one pass over the whole split."""
    import zstandard

    from tokenization.segcache import iter_segmented
    from tokenization.vocab import attach_spaces

    units: Counter = Counter()
    chars: Counter = Counter()
    n = 0
    for doc, words in iter_segmented(run_dir, "train", indices[rank]):
        if rate < 1.0 and not in_sample(doc, rate, seed):
            continue
        units.update(attach_spaces(words))
        chars.update(doc["text"])
        n += 1
    data = json.dumps({"docs": n, "units": list(units.items()), "chars": list(chars.items())}, ensure_ascii=False)
    with atomic_file(_part_path(Path(parts_dir), rank), "wb") as f:
        f.write(zstandard.ZstdCompressor(level=3).compress(data.encode("utf-8")))


def count_units(run_dir: Path, executor=None, sample=None) -> tuple[Counter, Counter, int]:
    """Unit (word with attached space) and character counts over the segmented train split.

    Map-reduce: one executor task per train shard writes its counts under
    ``vocab/.counts/KEY/`` (KEY: the segmentation caches and the sample settings, so a changed
    corpus or sample counts again); the parts are merged here in shard order. ``sample``
    (``SampleConfig``) keeps a deterministic share of the documents.
    """
    import zstandard

    from pipeline.executors import ExecutorConfig
    from tokenization.segcache import seg_paths, shard_index
    from tokenization.tasks import run_tasks

    run_dir = Path(run_dir)
    indices = [shard_index(p) for p in list_shards(run_dir / "corpus", "train")]
    metas = [read_json(seg_paths(run_dir, "train", i)[1]) for i in indices]
    rate = sample_rate(sample, sum(m["n_docs"] for m in metas), sum(m["n_chars"] for m in metas))
    seed = sample.seed if sample is not None else 0
    key = hashlib.sha1(json.dumps([[m["corpus_shard"], m["corpus_sha1"], m["segmenter"]] for m in metas]
                                  + [rate, seed], sort_keys=True).encode()).hexdigest()[:16]
    root = run_dir / "vocab" / ".counts"
    parts_dir = root / key
    if root.is_dir():  # counts of other inputs are never reused: drop them
        for old in root.iterdir():
            if old.name != key and old.is_dir():
                shutil.rmtree(old)
    parts_dir.mkdir(parents=True, exist_ok=True)
    done = [_part_path(parts_dir, r).is_file() for r in range(len(indices))]
    run_tasks(executor or ExecutorConfig(), _count_task, (str(run_dir), indices, str(parts_dir), rate, seed),
              len(indices), parts_dir / "tasks", done, job_name="vocab-counts")
    units: Counter = Counter()
    chars: Counter = Counter()
    n = 0
    dctx = zstandard.ZstdDecompressor()
    for r in range(len(indices)):  # reduce, in shard order (deterministic)
        with open(_part_path(parts_dir, r), "rb") as f:
            part = json.loads(dctx.decompress(f.read()).decode("utf-8"))
        for k, c in part["units"]:
            units[k] += c
        for k, c in part["chars"]:
            chars[k] += c
        n += part["docs"]
    return units, chars, n


def valid_stats(run_dir: Path, encoder) -> dict:
    st = M.StreamStats(encoder.unk_id)
    for batch in _batches(iter_split(run_dir, "valid")):
        for (doc, _), (ids, cl, _) in zip(batch, encoder.encode_batch([w for _, w in batch])):
            st.add(doc["text"], ids, cl)
    return st.summary()


def gold_metrics(spans, gold, ents) -> dict:
    return {"pd_boundary_violation": M.boundary_violations(gold, spans),
            "ner_entity_violation": M.entity_violations(ents, spans)}


def _finish_kind(tmp: Path, info: dict, run_dir: Path, seg: Segmenter, gold, ents, t0: float) -> dict:
    """Metrics for a built folder (still under its temporary name); writes stats.json last."""
    info.setdefault("special_tokens", SPECIAL_IDS)
    info.setdefault("tokens_per_char", None)
    # a provisional stats.json lets the encoder load the folder; rewritten below
    VocabStats.from_dict(info).save(tmp)
    enc = load_token_encoder(tmp)
    vs = valid_stats(run_dir, enc)
    info.update(tokens_per_char=vs["tokens_per_char"], mean_seq_len=vs["mean_seq_len"], unk_rate=vs["unk_rate"],
                valid=vs)
    info.update(gold_metrics(M.encoder_spans(enc, seg), gold, ents))
    info["build_seconds"] = round(time.perf_counter() - t0, 2)
    VocabStats.from_dict(info).save(tmp)
    return info


def corpus_normalize_config(run_dir: Path) -> dict | None:
    """The corpus stage's ``normalize`` section (from ``corpus/stats.json``), for the saved tokenizers."""
    from corpora.schema import CorpusStats

    stats = CorpusStats.load_if_present(run_dir / "corpus")
    return (stats.normalize or None) if stats is not None else None


def main_vocab(cfg: TokenizationConfig) -> int:
    run_dir = cfg.run_dir
    corpus = run_dir / "corpus"
    if not list_shards(corpus, "train"):
        raise UserError(f"no corpus shards under {corpus}/train; run `make corpus RUN={cfg.run}` first")
    seg = from_config(cfg.segmenter)
    vocab_root = cfg.vocab_root
    vocab_root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, vocab_root / "config.yaml")

    seg_rows = []
    for split in ("train", "valid"):
        s = ensure_segmented(run_dir, split, seg, executor=cfg.stage_executor(cfg.workers))
        seg_rows.append([split, s.shards, s.segmented, s.reused, s.docs, s.chars,
                         f"{s.chars_per_s / 1e6:.2f}M" if s.segmented else "cached"])
    print_table("segmentation", ["split", "shards", "segmented", "reused", "docs", "chars", "chars/s"], seg_rows)

    t = time.perf_counter()
    unit_counts, char_counts, n_docs = count_units(run_dir, cfg.stage_executor(cfg.workers), cfg.sample)
    log.info("counted %d distinct units, %d distinct characters in %d train documents (%.1fs)",
             len(unit_counts), len(char_counts), n_docs, time.perf_counter() - t)
    sample_info = None
    if cfg.sample.active:
        seg_docs = seg_rows[0][4]
        sample_info = {"max_docs": cfg.sample.max_docs, "max_chars": cfg.sample.max_chars, "seed": cfg.sample.seed,
                       "docs": n_docs, "of_docs": seg_docs, "rate": sample_rate(cfg.sample, seg_docs, seg_rows[0][5])}
        log.info("vocabulary counts on a sample: %d of %d train documents (sample.max_docs=%d, max_chars=%d)",
                 n_docs, seg_docs, cfg.sample.max_docs, cfg.sample.max_chars)
    gold = M.pd_gold_test(cfg.metrics.pd_lines)
    ents = M.msra_test_entities(cfg.metrics.ner_sentences)
    norm = corpus_normalize_config(run_dir)
    seg_info = {"backend": seg.backend, "hmm": seg.hmm, "user_dict": bool(seg.user_dict),
                "fingerprint": seg.fingerprint()}

    results: dict[str, dict] = {}
    order = [k for k in ("char", "sgt", "word", "ngram") if k in cfg.kinds]
    for kind in order:
        t0 = time.perf_counter()
        out = vocab_root / kind
        log.info("building %s vocabulary", kind)
        with atomic_dir(out) as tmp:
            if kind == "char":
                c = cfg.char
                info = build_char(_train_texts(corpus, sample_info), tmp, c.vocab_size,
                                  c.lowercase, char_counts, c.min_char_count, normalize=norm)
                info["min_char_count"] = c.min_char_count
            elif kind == "sgt":
                c = cfg.sgt
                tk = learn_sgt(unit_counts, char_counts, c.learner, c.vocab_size, c.min_char_count,
                               c.max_piece_len, c.spm_input_words, workdir=vocab_root,
                               word_start_marker=c.word_start_marker,
                               spm_options={"input_sentence_size": c.input_sentence_size,
                                            "shuffle_input_sentence": c.shuffle_input_sentence,
                                            "seed": c.seed, "num_threads": c.num_threads})
                save_segmented_folder(tk, tmp, seg, word_fallback=False, normalize=norm)
                info = {"kind": "sgt", "size": tk.get_vocab_size(), "trust_remote_code": True,
                        "learner": c.learner, "target_size": c.vocab_size, "min_char_count": c.min_char_count,
                        "word_start_marker": c.word_start_marker,
                        "tokenizer_class": "SegmentedTokenizer"}
            elif kind == "word":
                c = cfg.word
                tk, extra = build_word(unit_counts, char_counts, c.min_count, c.max_size, c.min_char_count)
                save_segmented_folder(tk, tmp, seg, word_fallback=True, normalize=norm)
                info = {"kind": "word", "size": tk.get_vocab_size(), "trust_remote_code": True,
                        "min_count": c.min_count, "max_size": c.max_size, **extra,
                        "tokenizer_class": "SegmentedTokenizer"}
            else:
                info = _build_ngram(cfg, run_dir, tmp)
                info["build_seconds"] = round(time.perf_counter() - t0, 2)
                VocabStats.from_dict(info).save(tmp)
                results[kind] = info
                continue
            info["segmenter"] = seg_info
            info["normalizer"] = normalizer_info(norm)
            info["train_docs"] = n_docs
            if sample_info is not None:
                info["sample"] = sample_info
            results[kind] = _finish_kind(tmp, info, run_dir, seg, gold, ents, t0)

    if cfg.metrics.bpe_baseline and "sgt" in results:
        t0 = time.perf_counter()
        tk = M.train_bpe_raw((d["text"] for d in iter_corpus(corpus, "train")), int(results["sgt"]["size"]),
                             cfg.sgt.max_piece_len)
        spans = M.hf_spans(tk)
        st = M.StreamStats(1)
        for batch in _batches(iter_corpus(corpus, "valid")):
            texts = [d["text"] for d in batch]
            for text, enc in zip(texts, tk.encode_batch(texts, add_special_tokens=False)):
                ends = np.asarray([e for _, e in enc.offsets], np.int64)
                cl = np.diff(np.maximum.accumulate(ends), prepend=0) if len(ends) else np.zeros(0, np.int64)
                if len(cl):
                    cl[-1] += len(text) - ends[-1]
                st.add(text, np.asarray(enc.ids), cl)
        vs = st.summary()
        base = {"kind": "bpe_raw (comparison only)", "size": tk.get_vocab_size(), "tokens_per_char": vs["tokens_per_char"],
                "mean_seq_len": vs["mean_seq_len"], "unk_rate": vs["unk_rate"], "valid": vs,
                **gold_metrics(spans, gold, ents), "build_seconds": round(time.perf_counter() - t0, 2)}
        atomic_write_json(vocab_root / "bpe_raw_baseline.json", base)
        results["bpe_raw"] = base

    _print_metrics(results, gold, ents)
    atomic_write_json(vocab_root / "summary.json", {k: {kk: v for kk, v in r.items() if kk != "valid"}
                                                    for k, r in results.items()})
    return 0


def _train_texts(corpus: Path, sample_info: dict | None):
    """Train texts for the char kind's WordPiece trainer: the same sample as the counts."""
    for d in iter_corpus(corpus, "train"):
        if sample_info is None or in_sample(d, sample_info["rate"], sample_info["seed"]):
            yield d["text"]


def _pct(x):
    return "-" if x is None else f"{100 * x:.2f}"


def _print_metrics(results: dict, gold, ents) -> None:
    rows = []
    for k, r in results.items():
        rows.append([k, r.get("size"), r.get("tokens_per_char"), r.get("mean_seq_len", "-"), _pct(r.get("unk_rate")),
                     _pct(r.get("pd_boundary_violation")), _pct(r.get("ner_entity_violation")),
                     r.get("build_seconds")])
    print_table(f"vocabularies (valid split; gold: {len(gold)} PD test lines, {len(ents)} MSRA test sentences)",
                ["kind", "size", "tokens/char", "mean len", "UNK %", "PD boundary viol. %", "NER entity viol. %",
                 "build s"], rows)
    script_rows = []
    for k, r in results.items():
        for s, v in (r.get("valid") or {}).get("per_script", {}).items():
            script_rows.append([k, s, v["chars"], v["tokens"], v["tokens_per_char"], _pct(v["unk_rate"])])
    if script_rows:
        print_table("per script (valid split)", ["kind", "script", "chars", "tokens", "tokens/char", "UNK %"],
                    script_rows)


def _ngram_task(rank: int, run_dir: str, indices: list[int], base_dir: str, excluded: set[int], max_n: int,
                within_words: bool, buckets: int, parts_dir: str) -> None:
    """Executor task ``rank``: n-gram counts of train shard ``indices[rank]`` in the base kind's ids,
    streamed batch by batch into a bounded :class:`NgramCounter`, saved as one part file."""
    from tokenization.segcache import iter_segmented
    from tokenization.shards import _encoder

    enc = _encoder(base_dir)
    counter = NgramCounter(max_n, excluded, enc.vocab_size, within_words)
    for batch in _batches(iter_segmented(run_dir, "train", indices[rank])):
        docs = [w for _, w in batch]
        if within_words:
            for ids, _, ws in enc.encode_batch(docs):
                counter.add(ids, ws)
        else:  # word starts are not needed: the ids-only path skips offsets
            for ids in enc.ids_batch(docs):
                counter.add(ids, np.zeros(len(ids), np.uint8))
    counter.save(Path(parts_dir) / f"part-{rank:05d}.npz", buckets)


def _ngram_counts(cfg: TokenizationConfig, run_dir: Path, base_dir: Path, excluded: set[int]) -> list:
    """Map: one executor task per train shard writes its n-gram counts (``vocab/.ngram-counts/KEY/``);
    reduce: :func:`tokenization.ngram.reduce_counts`, one hash bucket at a time."""
    from tokenization.segcache import seg_paths, shard_index
    from tokenization.shards import vocab_hash
    from tokenization.tasks import run_tasks

    c = cfg.ngram
    indices = [shard_index(p) for p in list_shards(run_dir / "corpus", "train")]
    metas = [read_json(seg_paths(run_dir, "train", i)[1]) for i in indices]
    key = hashlib.sha1(json.dumps([[m["corpus_shard"], m["corpus_sha1"], m["segmenter"]] for m in metas]
                                  + [vocab_hash(base_dir), c.max_n, c.within_words, c.buckets, sorted(excluded)],
                                  sort_keys=True).encode()).hexdigest()[:16]
    root = run_dir / "vocab" / ".ngram-counts"
    parts_dir = root / key
    if root.is_dir():
        for old in root.iterdir():
            if old.name != key and old.is_dir():
                shutil.rmtree(old)
    parts_dir.mkdir(parents=True, exist_ok=True)
    parts = [parts_dir / f"part-{r:05d}.npz" for r in range(len(indices))]
    run_tasks(cfg.stage_executor(cfg.workers), _ngram_task,
              (str(run_dir), indices, str(base_dir), excluded, c.max_n, c.within_words, c.buckets, str(parts_dir)),
              len(indices), parts_dir / "tasks", [p.is_file() for p in parts], job_name="vocab-ngram-counts")
    return reduce_counts(parts, c.score, c.min_count, c.top_k)


def _build_ngram(cfg: TokenizationConfig, run_dir: Path, tmp: Path) -> dict:
    c = cfg.ngram
    base_dir = cfg.vocab_root / c.base_kind
    if not (base_dir / "stats.json").is_file():
        raise UserError(f"ngram.base_kind={c.base_kind!r}: build that kind first (add it to kinds); "
                        f"no {base_dir}/stats.json")
    enc = load_token_encoder(base_dir)
    base_meta = load_vocab_meta(base_dir)
    excluded = set(enc.special_ids.values())
    for i in range(enc.vocab_size):
        tok = enc.id_to_token(i)
        if tok is None:
            continue
        s = tok[2:] if tok.startswith("##") else tok
        s = s.replace("\u2581", " ")
        if not s.strip() or all(M.char_scripts(ch)[0] in (M.SCRIPTS.index("punct"), M.SCRIPTS.index("space"))
                                for ch in s):
            excluded.add(i)

    def surface(g):
        return "".join((enc.id_to_token(i) or "?").removeprefix("##") for i in g).replace("\u2581", " ")

    lex = lexicon_from_scored(_ngram_counts(cfg, run_dir, base_dir, excluded), c.base_kind, c.max_n, surface)
    lex.save(tmp)
    # the folder also carries the base kind's tokenizer files, so AutoTokenizer loads it as the base
    for f in base_dir.iterdir():
        if f.is_file() and f.name != "stats.json":
            shutil.copyfile(f, tmp / f.name)
    # units per character on valid after maximum matching
    units = chars = 0
    lens = Counter()
    for batch in _batches(iter_split(run_dir, "valid")):
        for (doc, _), (ids, _, ws) in zip(batch, enc.encode_batch([w for _, w in batch])):
            ul, _ = max_match(ids, lex, ws if c.within_words else None)
            units += int((ul > 0).sum())
            chars += len(doc["text"])
            lens.update(ul[ul > 1].tolist())
    by_n = Counter(len(g) for g in lex.ngrams)
    return {"kind": "ngram", "size": len(lex), "base_kind": c.base_kind, "base_size": base_meta["size"],
            "max_n": c.max_n, "top_k": c.top_k, "min_count": c.min_count, "score": c.score,
            "within_words": c.within_words, "by_n": {str(k): v for k, v in sorted(by_n.items())},
            "special_tokens": base_meta["special_tokens"], "trust_remote_code": base_meta["trust_remote_code"],
            "tokens_per_char": round(units / max(1, chars), 4), "units_per_char_valid": round(units / max(1, chars), 4),
            "matched_ngram_units_valid": {str(k): v for k, v in sorted(lens.items())}}
