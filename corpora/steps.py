"""The corpus stage as datatrove pipeline steps (run by ``corpora.build`` on a datatrove executor).

Four executor stages, each a set of independent tasks with datatrove's completion markers::

    A  read (this task's chunks) -> normalise + held-out drop -> language id -> quality filters
       (BaseFilter, exclusion writers keep filter + reason) -> candidate writer, which also writes
       the MinHash signatures (MinhashDedupSignature with the project's shingles) and the exact
       signature (the document id)                                            [tasks tasks]
    B  MinhashDedupBuckets: duplicate pairs per bucket, near (b buckets) and exact (1)  [b tasks]
    C  clusters: union-find over the pairs; the first document in input order is kept  [1 task]
    W  filter + split + write: exact / near duplicates to rejected/, the rest to train/valid
       part files                                                             [tasks tasks]

Chunk ``k`` of ``chunk_docs`` consecutive input documents (all sources, in config order) belongs
to task ``k % tasks``; every task reads the inputs (reading is cheap, ~1 % of the work) and
processes only its chunks. All state a task writes is under the work folder, keyed by its rank,
and is overwritten when the task runs again, so a killed task simply reruns.

Objects shared by the steps of one task (the counters, the rejected-document writers) are one
:class:`TaskState` referenced by every step: datatrove copies (or pickles) the pipeline per task as
a whole, which keeps the sharing, and :meth:`TaskState.start` resets it at the start of a task.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
from array import array
from collections import deque
from pathlib import Path
from typing import Iterator

import numpy as np
from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupCluster, MinhashDedupSignature
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.utils.binaryio import read_tuples_from_file
from datatrove.io import get_datafolder
from datatrove.utils.hashing import HashConfig, create_hash_func

from pipeline.errors import UserError
from pipeline.log import get_logger

from corpora import heldout
from corpora.builtin import LICENCES, PREP
from corpora.config import CorpusConfig, NormalizeConfig, SourceConfig
from corpora.dedup import shingles
from corpora.filters import build_filters
from corpora.io import RejectedWriter, _compressor, iter_shard, write_shard
from corpora.labelled import Malformed
from corpora.langid import detect
from corpora.normalize import normalize_text
from corpora.readers import Quarantine, SourceCounters, read_source, resolve_files
from corpora.sentences import sentence_spans

log = get_logger("corpora")
HASH = HashConfig(precision=64, hash_fc="xxhash")
EXACT_CONFIG = MinhashConfig(num_buckets=1, hashes_per_bucket=1, hash_config=HASH)
_ID_SHIFT = 4  # exact signature: the 64-bit id >> 4 (datatrove's 64-bit readers stop at 2^61 - 1)


def quiet_datatrove() -> None:
    """datatrove logs every task to stderr (loguru); the stage keeps its own log and progress.
    ``PIPELINE_LOG_LEVEL=DEBUG`` keeps datatrove's console and task logs."""
    if os.environ.get("PIPELINE_LOG_LEVEL", "").upper() != "DEBUG":
        from loguru import logger

        logger.disable("datatrove")


def near_config(cfg: CorpusConfig) -> MinhashConfig:
    """datatrove MinHash config with datasketch's optimal (bands, rows) for the threshold."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=cfg.dedup.threshold, num_perm=cfg.dedup.num_perm)
    return MinhashConfig(num_buckets=lsh.b, hashes_per_bucket=lsh.r, seed=cfg.dedup.seed, hash_config=HASH)


def source_licence(src: SourceConfig) -> str:
    return src.licence or (LICENCES.get(src.builtin, "") if src.type == "builtin" else "") or "unspecified"


def new_source_counts(src: SourceConfig) -> dict:
    return {"type": src.type + (f":{src.builtin}" if src.type == "builtin" else ""), "licence": source_licence(src),
            "files": 0, "empty_files": 0, "input_docs": 0, "input_bytes": 0, "heldout_excluded": 0,
            "quarantined": {}, "rejected": {}, "exact_duplicates": 0, "near_duplicates": 0,
            "kept_docs": 0, "kept_chars": 0, "by_lang": {}}


def _inc(d: dict, key: str, n: int = 1) -> None:
    d[key] = d.get(key, 0) + n


# ------------------------------------------------------------------------------- shared state
class TaskState:
    """Counters and rejected-document writers of one task of one stage (shared by its steps)."""

    def __init__(self, cfg: CorpusConfig, work: str | Path, stage: str):
        self.cfg = cfg
        self.work = str(work)
        self.stage = stage
        self.rank = -1
        self.sources: dict = {}
        self.extra: dict = {}
        self.first: dict = {}
        self._rejects: RejectedWriter | None = None

    def start(self, rank: int) -> None:
        quiet_datatrove()
        self.rank = rank
        self.sources = {s.display_name(): new_source_counts(s) for s in self.cfg.sources}
        self.extra = {}
        self.first = {}
        folder = Path(self.work) / "rejected" / self.stage / f"{rank:05d}"
        shutil.rmtree(folder, ignore_errors=True)  # what a killed run of this task left
        self._rejects = RejectedWriter(folder, keep_chars=self.cfg.write_rejected_text)

    def src(self, name: str) -> dict:
        return self.sources[name]

    def reject(self, name: str, record: dict, example_key: str, example: str) -> None:
        assert self._rejects is not None
        self._rejects.write(name, record)
        self.first.setdefault(example_key, example)

    def save(self) -> None:
        """Close the rejected files and write the counters (``ledger/<stage>/<rank>.json``)."""
        if self._rejects is not None:
            self._rejects.close()
        p = Path(self.work) / "ledger" / self.stage / f"{self.rank:05d}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps({"sources": self.sources, "extra": self.extra, "first": self.first},
                                  ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, p)

    def error(self, message: str) -> None:
        """A ``UserError`` inside a task: recorded for the parent (which raises it), not logged as a crash."""
        p = Path(self.work) / "errors" / f"{self.rank:05d}.txt"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(message, encoding="utf-8")


# ------------------------------------------------------------------------------------- reading
def source_items(src: SourceConfig, name: str, cfg: CorpusConfig, counters: SourceCounters) -> Iterator:
    """Quarantine items and (parts, where) documents of one source, after stride / group / max_docs."""
    group: list[tuple[str, str | None, str | None]] = []
    where = ""
    n_out = 0
    i = -1
    for item in read_source(src, name, cfg.max_line_bytes, counters):
        if isinstance(item, Quarantine):
            yield item
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


_TASKS_STARTED = 0  # test hook CORPORA_FAIL_AFTER_TASKS (per process)
_SHARDS_WRITTEN = 0  # test hook CORPORA_FAIL_AFTER_SHARDS (per process)


def _kill(why: str) -> None:
    """SIGKILL, like a lost node: the whole process group when the build leads one (its
    multiprocessing helpers die with it), else this process."""
    log.error("%s: killing the build (test hook)", why)
    if os.getpgid(0) == os.getpid():
        os.killpg(os.getpid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


class CorpusReader(PipelineStep):
    """The project's readers (quarantine of unreadable input with file and line), this task's chunks."""

    name = "📖 corpus sources"
    type = "📖 - READER"

    def __init__(self, cfg: CorpusConfig, state: TaskState):
        super().__init__()
        self.cfg = cfg
        self.state = state

    def run(self, data=None, rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        global _TASKS_STARTED
        st = self.state
        st.start(rank)
        _TASKS_STARTED += 1
        fail_after = int(os.environ.get("CORPORA_FAIL_AFTER_TASKS", "0") or 0)
        cfg = self.cfg
        c = 0  # documents of chunk-mode sources so far: chunk c // chunk_docs is task (c // chunk_docs) % tasks

        def quarantine(name: str, item: Quarantine) -> None:
            _inc(st.src(name)["quarantined"], item.kind)
            st.reject("reader", {"source": name, "where": item.where, "filter": "reader",
                                 "kind": item.kind, "reason": item.reason, "text": item.preview},
                      f"reader:{item.kind}", f"{item.where}: {item.reason}")
            if item.kind in ("binary_file", "wrong_encoding", "truncated_file", "corrupt_file"):
                log.warning("source '%s': quarantined %s (%s)", name, item.where, item.reason)

        def doc(name: str, item, key: int) -> Document:
            st.src(name)["input_docs"] += 1
            parts, where = item
            return Document(text="", id=str(key), metadata={"parts": parts, "source": name, "where": where, "g": key})

        try:
            for si, src in enumerate(cfg.sources):
                name = src.display_name()
                counts = st.src(name)
                counters = SourceCounters()
                files = resolve_files(src, name) if file_sharded(src) else []
                if len(files) >= world_size:  # file i is read by task i % tasks only
                    for fi, f in enumerate(files):
                        if fi % world_size != rank:
                            continue
                        sub = dataclasses.replace(src, path=str(f), glob="")
                        for n, item in enumerate(source_items(sub, name, cfg, counters)):
                            if isinstance(item, Quarantine):
                                quarantine(name, item)
                                continue
                            yield doc(name, item, (si << 56) | (fi << 32) | n)
                            if fail_after and _TASKS_STARTED > fail_after:
                                _kill(f"CORPORA_FAIL_AFTER_TASKS={fail_after}")
                    counts["files"], counts["empty_files"] = counters.files, counters.empty_files
                else:  # every task reads the source and processes its chunks
                    n = 0
                    for item in source_items(src, name, cfg, counters):
                        mine = (c // cfg.chunk_docs) % world_size == rank
                        if isinstance(item, Quarantine):
                            if mine:
                                quarantine(name, item)
                            continue
                        if mine:
                            yield doc(name, item, (si << 56) | n)
                            if fail_after and _TASKS_STARTED > fail_after:
                                _kill(f"CORPORA_FAIL_AFTER_TASKS={fail_after}")
                        c += 1
                        n += 1
                    if rank == 0:  # every task reads these files: one of them counts them
                        counts["files"], counts["empty_files"] = counters.files, counters.empty_files
                if counters.empty_files:
                    log.warning("source '%s': %d empty file(s)", name, counters.empty_files)
        except UserError as e:
            st.error(str(e))


def file_sharded(src: SourceConfig) -> bool:
    """Files of a text / jsonl / parquet source without stride, group or cap are split between
    tasks file by file (each task reads only its files) when there are at least as many files as
    tasks; other sources are read by every task, which processes its chunks of documents."""
    return src.type in ("text", "jsonl", "parquet") and src.stride == 1 and src.group == 1 and not src.max_docs


class Normalizer(PipelineStep):
    """Prep of labelled built-ins, the held-out drop (default normalisation as the key) and the
    project's normaliser; a document whose parts are all held out is dropped (counted)."""

    name = "✍ normalise + held-out drop"
    type = "✂️ - FORMAT"

    def __init__(self, cfg: CorpusConfig, state: TaskState):
        super().__init__()
        self.cfg = cfg
        self.state = state
        self.default_norm = cfg.normalize == NormalizeConfig()

    def run(self, data, rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        cfg = self.cfg
        for doc in data:
            md = doc.metadata
            counts = self.state.src(md["source"])
            texts = []
            for raw, task, prep in md.pop("parts"):
                if prep:
                    try:
                        raw = PREP[prep](raw)
                    except Malformed as e:  # corpora.labelled's rule: quarantined, with a count
                        _inc(counts["quarantined"], "malformed_record")
                        reason = str(e.args[0])
                        self.state.reject("reader", {"source": md["source"], "where": md["where"], "filter": "reader",
                                                     "kind": "malformed_record", "reason": reason, "text": raw[:80]},
                                          "reader:malformed_record", f"{md['where']}: {reason}")
                        continue
                counts["input_bytes"] += len(raw.encode("utf-8"))
                key = normalize_text(raw)  # the held-out key: default normalisation, always
                if task and cfg.exclude_heldout and heldout.is_heldout(task, key):
                    counts["heldout_excluded"] += 1
                    continue
                texts.append(key if self.default_norm else normalize_text(raw, cfg.normalize))
            if not texts:
                self.stat_update("dropped")
                continue
            doc.text = "\n".join(t for t in texts if t)
            yield doc


class LanguageId(PipelineStep):
    """``corpora.langid.detect`` into ``metadata['lang']``; the id becomes sha1(text)[:16]."""

    name = "🌐 language id"
    type = "🏷 - TAGGER"

    def __init__(self, cfg: CorpusConfig):
        super().__init__()
        self.cfg = cfg

    def run(self, data, rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        for doc in data:
            doc.metadata["lang"] = detect(doc.text, self.cfg.langid)
            doc.id = hashlib.sha1(doc.text.encode("utf-8")).hexdigest()[:16]
            yield doc


class ExclusionWriter:
    """A datatrove exclusion writer (``with writer: writer.write(doc, rank)``) that writes each
    rejected document, with the filter and reason the filter put in its metadata, to
    ``rejected/<filter>.jsonl.zst`` and counts it by source and filter."""

    def __init__(self, state: TaskState):
        self.state = state

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None  # the task's state closes the files once, at the end of the task

    def write(self, doc: Document, rank: int = 0, **kw) -> None:
        md = doc.metadata
        name, reason = md["filter"], md["filter_reason"]
        _inc(self.state.src(md["source"])["rejected"], name)
        self.state.reject(name, {"id": doc.id, "source": md["source"], "lang": md["lang"], "where": md["where"],
                                 "filter": name, "reason": reason, "text": doc.text},
                          name, f"{md['where']}: {reason}")


class QualityFilters(BaseFilter):
    """``corpora.filters`` (in ``FILTER_NAMES`` order, the first that rejects wins) as one datatrove
    filter, with an exclusion writer that keeps the filter and the reason of every rejection."""

    name = "🔻 quality filters"

    def __init__(self, cfg: CorpusConfig, state: TaskState):
        super().__init__(exclusion_writer=ExclusionWriter(state))
        self.filters = build_filters(cfg.filters)

    def filter(self, doc: Document) -> bool:
        text, lang = doc.text, doc.metadata["lang"]
        for f in self.filters:
            reason = f.check(text, lang)
            if reason is not None:
                # not returned as (False, reason): datatrove would keep one stat per distinct reason
                doc.metadata["filter"], doc.metadata["filter_reason"] = f.name, reason
                self.stat_update(f"dropped_{f.name}")
                return False
        return True

    def update_doc_stats(self, document: Document) -> None:
        return None  # datatrove's per-document length stats: not used here


# ------------------------------------------------------------------------ candidates + sigs
def _open_zst(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "wb")
    return fh, _compressor(3).stream_writer(fh, closefd=True)


class CandidateWriter(MinhashDedupSignature):
    """Last step of stage A: writes the documents that passed the filters (``docs/<rank>``), their
    global positions and ids (``ids/<rank>.npy``), the exact signature (the id, sorted, datatrove's
    signature format) and, through datatrove's ``MinhashDedupSignature``, the MinHash signatures
    over the project's shingles (CJK character n-grams, word n-grams otherwise)."""

    name = "🎯 candidates + MinHash signatures"

    def __init__(self, cfg: CorpusConfig, state: TaskState):
        # MinhashDedupSignature.__init__ without its word tokenizer (spaCy): shingles are ours
        PipelineStep.__init__(self)
        self.output_folder = get_datafolder(str(Path(state.work) / "sigs" / "near"))
        self.config = near_config(cfg)
        self.num_hashes = self.config.num_buckets * self.config.hashes_per_bucket
        self._parameters = None
        self._hash_func = create_hash_func(self.config.hash_config)
        self.language = "project shingles"
        self.word_tokenizer = None
        self.skip_existing_sigs = False
        self.cfg = cfg
        self.state = state
        self._lang = "zh"

    def get_shingles(self, text: str) -> np.ndarray:
        sh = set(shingles(text, self._lang, self.cfg.dedup))  # UTF-8 bytes (xxhash takes bytes)
        return np.fromiter((self._hash_func(s) for s in sh), dtype=np.uint64, count=len(sh)).reshape((-1, 1))

    def run(self, data, rank: int = 0, world_size: int = 1):
        st = self.state
        work = Path(st.work)
        gs, ids = array("q"), array("Q")
        fh, w = _open_zst(work / "docs" / f"{rank:05d}.jsonl.zst")

        def tap() -> Iterator[Document]:
            for doc in data:
                md = doc.metadata
                rec = {"id": doc.id, "text": doc.text, "lang": md["lang"], "source": md["source"],
                       "where": md["where"], "sentences": sentence_spans(doc.text)}
                w.write((json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8"))
                gs.append(md["g"])
                ids.append(int(doc.id, 16))
                self._lang = md["lang"]
                yield doc

        if self.cfg.dedup.near:
            super().run(tap(), rank, world_size)
        else:
            deque(tap(), maxlen=0)
        w.close()
        n = len(gs)
        idmap = np.zeros(n, dtype=[("g", "<i8"), ("id", "<u8")])
        idmap["g"] = np.frombuffer(gs, dtype=np.int64) if n else idmap["g"]
        idmap["id"] = np.frombuffer(ids, dtype=np.uint64) if n else idmap["id"]
        _save_npy(work / "ids" / f"{rank:05d}.npy", idmap)
        exact = np.zeros(n, dtype=[("sig", "<u8"), ("doc", "<u4")])
        exact["sig"] = idmap["id"] >> np.uint64(_ID_SHIFT)
        exact["doc"] = np.arange(n, dtype=np.uint32)
        exact.sort(order=["sig", "doc"])
        p = work / "sigs" / "exact" / "bucket_000" / f"{rank:05d}.minhash.sig"
        p.parent.mkdir(parents=True, exist_ok=True)
        _atomic_bytes(p, exact.tobytes())
        st.extra["candidates"] = n
        st.save()


def _atomic_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _save_npy(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, arr)
    os.replace(tmp, path)


class OnRankZero(PipelineStep):
    """Runs ``step`` as a one-task step on rank 0 only (the exact-dedup bucket next to the near ones)."""

    name = "1️⃣ rank 0 only"

    def __init__(self, step: PipelineStep):
        super().__init__()
        self.step = step

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        quiet_datatrove()
        if rank == 0:
            self.step.run(data, 0, 1)


# ------------------------------------------------------------------------------------ clusters
class _IdMaps:
    """(task, local index) -> global position / id, from the memory-mapped ``ids/<task>.npy``."""

    def __init__(self, work: str | Path):
        self.work = Path(work)
        self._maps: dict[int, np.ndarray] = {}

    def get(self, task: int) -> np.ndarray:
        m = self._maps.get(task)
        if m is None:
            m = self._maps[task] = np.load(self.work / "ids" / f"{task:05d}.npy", mmap_mode="r")
        return m


class FirstInOrderCluster(MinhashDedupCluster):
    """datatrove's clustering stage (union-find over the duplicate pairs of every bucket), with the
    first document in input order as the one kept of each cluster (datatrove keeps the root of
    its union by size, which depends on the order pairs are read). Writes, per task,
    ``<task>.remove`` (datatrove's format: sorted uint32 local indices) and ``<task>.dupof``
    (uint32 task, uint32 index of the kept document, for each removed one). Memory: the documents
    that have a duplicate, not the corpus."""

    def __init__(self, input_folder: str, output_folder: str, work: str, config: MinhashConfig):
        super().__init__(input_folder=input_folder, output_folder=output_folder, config=config)
        self.work = work
        self.out_path = output_folder

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        quiet_datatrove()
        maps = _IdMaps(self.work)
        parent: dict[tuple[int, int], tuple[int, int]] = {}

        def order(node: tuple[int, int]) -> int:
            return int(maps.get(node[0])["g"][node[1]])

        def find(x):
            root = x
            while parent.get(root, root) != root:
                root = parent[root]
            while x != root:  # path compression
                parent[x], x = root, parent[x]
            return root

        with self.track_time():
            for dup_file in sorted(self.input_folder.list_files(glob_pattern="*.dups")):
                with self.input_folder.open(dup_file, "rb") as f:
                    for f1, d1, f2, d2 in read_tuples_from_file(f, "4I", lines_to_buffer=1024):
                        a, b = find((f1, d1)), find((f2, d2))
                        parent.setdefault((f1, d1), (f1, d1))
                        parent.setdefault((f2, d2), (f2, d2))
                        if a != b:
                            if order(b) < order(a):
                                a, b = b, a
                            parent[b] = a
            out = Path(self.out_path)
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            removes: dict[int, list] = {}
            for node in sorted(parent):
                root = find(node)
                if root != node:
                    removes.setdefault(node[0], []).append((node[1], root[0], root[1]))
            for task, rows in removes.items():
                arr = np.array(rows, dtype=np.uint32)
                _atomic_bytes(out / f"{task:06d}.remove", arr[:, 0].astype("<u4").tobytes())
                _atomic_bytes(out / f"{task:06d}.dupof", arr[:, 1:].astype("<u4").tobytes())
                self.stat_update("to_remove", value=len(rows))


# -------------------------------------------------------------------------------------- writer
def split_of(doc_id: str, cfg: CorpusConfig) -> str:
    """train / valid by hashing the id: adding documents never moves an existing one."""
    h = hashlib.sha1(f"{cfg.split.salt}:{doc_id}".encode("utf-8")).digest()
    return "valid" if int.from_bytes(h[:8], "big") / 2**64 < cfg.split.valid_fraction else "train"


def _removals(folder: Path, task: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted local indices, (task, index) of the kept document per row) of one task."""
    r, d = folder / f"{task:06d}.remove", folder / f"{task:06d}.dupof"
    if not r.exists():
        return np.zeros(0, dtype=np.uint32), np.zeros((0, 2), dtype=np.uint32)
    return np.fromfile(r, dtype="<u4"), np.fromfile(d, dtype="<u4").reshape(-1, 2)


class CorpusWriter(PipelineStep):
    """Stage W: the candidates of this task minus exact and near duplicates (to ``rejected/``
    with the id of the kept document), split by id hash, written in the project's record format
    to ``parts/<split>/<task>-<n>.jsonl.zst`` (``shard_docs`` documents each)."""

    name = "💽 corpus writer"
    type = "💽 - WRITER"

    def __init__(self, cfg: CorpusConfig, state: TaskState):
        super().__init__()
        self.cfg = cfg
        self.state = state

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        global _SHARDS_WRITTEN
        cfg, st = self.cfg, self.state
        st.start(rank)
        work = Path(st.work)
        fail_after = int(os.environ.get("CORPORA_FAIL_AFTER_SHARDS", "0") or 0)
        ex_idx, ex_of = _removals(work / "dedup" / "exact", rank)
        nr_idx, nr_of = _removals(work / "dedup" / "near", rank)
        maps = _IdMaps(work)
        ie = inr = 0
        buffers: dict[str, list] = {"train": [], "valid": []}
        shards = {"train": 0, "valid": 0}
        docs = {"train": 0, "valid": 0}

        def flush(split: str) -> None:
            global _SHARDS_WRITTEN
            if not buffers[split]:
                return
            write_shard(work / "parts" / split / f"{rank:05d}-{shards[split]:05d}.jsonl.zst", buffers[split])
            buffers[split] = []
            shards[split] += 1
            _SHARDS_WRITTEN += 1
            if fail_after and _SHARDS_WRITTEN >= fail_after:
                _kill(f"CORPORA_FAIL_AFTER_SHARDS={fail_after}")

        with self.track_time():
            for idx, r in enumerate(iter_shard(work / "docs" / f"{rank:05d}.jsonl.zst")):
                counts = st.src(r["source"])
                base = {"id": r["id"], "source": r["source"], "lang": r["lang"], "where": r["where"]}
                kind = of = None
                if ie < len(ex_idx) and ex_idx[ie] == idx:
                    kind, of = "exact_dup", r["id"]
                    ie += 1
                if inr < len(nr_idx) and nr_idx[inr] == idx:
                    if kind is None:
                        t, d = nr_of[inr]
                        kind, of = "near_dup", f"{int(maps.get(int(t))['id'][int(d)]):016x}"
                    inr += 1
                if kind is not None:
                    counts["exact_duplicates" if kind == "exact_dup" else "near_duplicates"] += 1
                    st.reject(kind, {**base, "filter": kind, "reason": f"duplicate of {of}", "dup_of": of,
                                     "text": r["text"]}, kind, f"{r['where']}: duplicate of {of}")
                    self.stat_update(kind)
                    continue
                n = len(r["text"])
                counts["kept_docs"] += 1
                counts["kept_chars"] += n
                lang = counts["by_lang"].setdefault(r["lang"], {"docs": 0, "chars": 0})
                lang["docs"] += 1
                lang["chars"] += n
                split = split_of(r["id"], cfg)
                docs[split] += 1
                buffers[split].append({"id": r["id"], "text": r["text"], "lang": r["lang"], "source": r["source"],
                                       "meta": {"sentences": r["sentences"], "where": r["where"]}})
                if len(buffers[split]) >= cfg.shard_docs:
                    flush(split)
            for split in ("train", "valid"):
                flush(split)
        st.extra["splits"] = {s: {"docs": docs[s], "shards": shards[s]} for s in docs}
        st.save()


class Finalize(PipelineStep):
    """The last one-task stage on Slurm (where the submitting process does not wait): merges the
    tasks' outputs into ``corpus/`` (``corpora.build.finalize``)."""

    name = "🏁 finalize corpus"

    def __init__(self, cfg: CorpusConfig):
        super().__init__()
        self.cfg = cfg

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        from corpora.build import finalize

        finalize(self.cfg, seconds=0.0)
