"""Segment once, in bulk, cache per corpus shard.

Layout (``docs/contracts.md``)::

    runs/RUN/seg/{train,valid}/shard-NNNNN.seg.zst    one JSON list of words per line, one line
                                                      per document, same order as the corpus shard
    runs/RUN/seg/{train,valid}/shard-NNNNN.seg.json   fingerprint, written last (= complete)

The fingerprint holds the corpus shard's size and sha1 and the segmenter's fingerprint (backend,
HMM, user dictionary hash, jieba/rjieba versions). A cache file is reused only when all of them
match, so changing the corpus or a segmenter setting re-segments exactly the affected shards.

:func:`ensure_segmented` fills the cache for a split as executor tasks (one corpus shard per task,
``tokenization.tasks``); :func:`iter_segmented` reads one shard back as ``(doc, words)`` pairs. Vocabulary
building, shard writing and objectives all read the cache, so no text is segmented twice.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import zstandard

from corpora.io import iter_shard, list_shards
from pipeline.errors import UserError
from pipeline.log import get_logger
from pipeline.runs import atomic_file, atomic_write_json, read_json
from tokenization.segment import Segmenter

log = get_logger("tokenization")

FORMAT_VERSION = 1
_SHARD_RE = re.compile(r"shard-(\d+)\.jsonl\.zst$")


def shard_index(path: str | Path) -> int:
    m = _SHARD_RE.search(Path(path).name)
    if not m:
        raise UserError(f"not a corpus shard name (expected shard-NNNNN.jsonl.zst): {path}")
    return int(m.group(1))


def corpus_shard_path(run_dir: str | Path, split: str, index: int) -> Path:
    return Path(run_dir) / "corpus" / split / f"shard-{index:05d}.jsonl.zst"


def seg_paths(run_dir: str | Path, split: str, index: int) -> tuple[Path, Path]:
    d = Path(run_dir) / "seg" / split
    return d / f"shard-{index:05d}.seg.zst", d / f"shard-{index:05d}.seg.json"


def _file_sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def shard_fingerprint(corpus_shard: Path, segmenter: Segmenter) -> dict:
    return {
        "format": FORMAT_VERSION,
        "corpus_shard": corpus_shard.name,
        "corpus_size": corpus_shard.stat().st_size,
        "corpus_sha1": _file_sha1(corpus_shard),
        "segmenter": segmenter.fingerprint(),
        "settings": {"backend": segmenter.backend, "hmm": segmenter.hmm, "user_dict": segmenter.user_dict},
    }


def _same(fp_a: dict, fp_b: dict) -> bool:
    keys = ("format", "corpus_size", "corpus_sha1", "segmenter")
    return all(fp_a.get(k) == fp_b.get(k) for k in keys)


def is_fresh(run_dir: str | Path, split: str, index: int, segmenter: Segmenter) -> bool:
    seg, meta = seg_paths(run_dir, split, index)
    if not (seg.is_file() and meta.is_file()):
        return False
    try:
        old = read_json(meta)
    except (OSError, ValueError):
        return False
    return _same(old, shard_fingerprint(corpus_shard_path(run_dir, split, index), segmenter))


def segment_shard(run_dir: str | Path, split: str, index: int, segmenter: Segmenter) -> dict:
    """Segment one corpus shard into the cache; returns its fingerprint + counts."""
    src = corpus_shard_path(run_dir, split, index)
    seg, meta = seg_paths(run_dir, split, index)
    fp = shard_fingerprint(src, segmenter)
    t0 = time.perf_counter()
    n_docs = n_chars = n_words = 0
    cctx = zstandard.ZstdCompressor(level=3)
    buf: list[str] = []
    with atomic_file(seg, "wb") as fh, cctx.stream_writer(fh, closefd=False) as w:
        for lineno, doc in enumerate(iter_shard(src), 1):
            text = doc.get("text")
            if not isinstance(text, str):
                raise UserError(f"{src}: record {lineno} has no string 'text' field")
            words = segmenter.cut(text)
            buf.append(json.dumps(words, ensure_ascii=False))
            if len(buf) >= 512:
                w.write(("\n".join(buf) + "\n").encode("utf-8"))
                buf = []
            n_docs += 1
            n_chars += len(text)
            n_words += len(words)
        if buf:
            w.write(("\n".join(buf) + "\n").encode("utf-8"))
    fp.update(n_docs=n_docs, n_chars=n_chars, n_words=n_words, seconds=round(time.perf_counter() - t0, 3))
    atomic_write_json(meta, fp)  # written last: marks the cache file complete
    return fp


def _segment_task(rank: int, run_dir: str, split: str, indices: list[int], segmenter: Segmenter) -> None:
    """Executor task ``rank``: segment corpus shard ``indices[rank]`` unless its cache is fresh."""
    if not is_fresh(run_dir, split, indices[rank], segmenter):
        segment_shard(run_dir, split, indices[rank], segmenter)


@dataclass
class SegSummary:
    split: str
    shards: int
    segmented: int
    reused: int
    docs: int
    chars: int
    words: int
    seconds: float

    @property
    def chars_per_s(self) -> float:
        return self.chars / self.seconds if self.seconds > 0 else 0.0


def ensure_segmented(run_dir: str | Path, split: str, segmenter: Segmenter, workers: int = 1,
                     executor=None) -> SegSummary:
    """Segment every corpus shard of ``split`` whose cache is missing or stale.

    One executor task per corpus shard (``executor``: a :class:`pipeline.executors.ExecutorConfig`;
    default the local executor with ``workers`` processes); completion markers live in
    ``seg/.tasks/SPLIT/``. Returns counts over the whole split (reused shards included) and the
    time spent segmenting.
    """
    from pipeline.executors import ExecutorConfig
    from tokenization.tasks import run_tasks

    run_dir = Path(run_dir)
    shards = list_shards(run_dir / "corpus", split)
    indices = [shard_index(p) for p in shards]
    done = [is_fresh(run_dir, split, i, segmenter) for i in indices]
    todo = [i for i, d in zip(indices, done) if not d]
    t0 = time.perf_counter()
    if todo:
        (run_dir / "seg" / split).mkdir(parents=True, exist_ok=True)
        cfg = executor if executor is not None else ExecutorConfig(kind="local", workers=max(1, workers))
        run_tasks(cfg, _segment_task, (str(run_dir), split, indices, segmenter), len(indices),
                  run_dir / "seg" / ".tasks" / split, done, job_name=f"segment-{split}")
    seconds = time.perf_counter() - t0
    docs = chars = words = 0
    seg_chars = 0
    for i in indices:
        fp = read_json(seg_paths(run_dir, split, i)[1])
        docs += fp["n_docs"]
        chars += fp["n_chars"]
        words += fp["n_words"]
        if i in todo:
            seg_chars += fp["n_chars"]
    if todo:
        log.info("segmented %s: %d shard(s), %d chars in %.1fs (%.0f chars/s, %s)", split, len(todo), seg_chars,
                 seconds, seg_chars / max(seconds, 1e-9), segmenter)
    return SegSummary(split, len(shards), len(todo), len(shards) - len(todo), docs, chars, words, seconds)


def _iter_seg_file(path: Path) -> Iterator[list[str]]:
    with open(path, "rb") as fh:
        reader = zstandard.ZstdDecompressor().stream_reader(fh)
        for line in io.TextIOWrapper(reader, encoding="utf-8"):
            yield json.loads(line)


def iter_segmented(run_dir: str | Path, split: str, shard_index: int,
                   segmenter: Segmenter | None = None) -> Iterator[tuple[dict, list[str]]]:
    """``(doc, words)`` for every document of corpus shard ``shard_index`` of ``split``.

    The cache must be complete and match the corpus shard (size and sha1). If it is missing or
    stale and ``segmenter`` is given, the shard is segmented now (and cached); otherwise a
    :class:`UserError` says to run ``python -m tokenization vocab`` first. If a segmenter is
    given, its settings must match the cache too.
    """
    run_dir = Path(run_dir)
    src = corpus_shard_path(run_dir, split, shard_index)
    if not src.is_file():
        raise UserError(f"corpus shard not found: {src}")
    seg, meta = seg_paths(run_dir, split, shard_index)
    fresh = False
    if seg.is_file() and meta.is_file():
        old = read_json(meta)
        fresh = old.get("corpus_size") == src.stat().st_size and old.get("corpus_sha1") == _file_sha1(src)
        if fresh and segmenter is not None:
            fresh = old.get("segmenter") == segmenter.fingerprint()
    if not fresh:
        if segmenter is None:
            raise UserError(f"segmentation cache for {src} is missing or stale ({seg}); "
                            f"run `python -m tokenization vocab` (or pass a segmenter)")
        segment_shard(run_dir, split, shard_index, segmenter)
    docs = iter_shard(src)
    for lineno, words in enumerate(_iter_seg_file(seg), 1):
        doc = next(docs, None)
        if doc is None:
            raise UserError(f"{seg}: more lines than documents in {src}; delete the cache and re-run")
        yield doc, words
    if next(docs, None) is not None:
        raise UserError(f"{seg}: fewer lines than documents in {src}; delete the cache and re-run")


def iter_split(run_dir: str | Path, split: str, segmenter: Segmenter | None = None
               ) -> Iterator[tuple[dict, list[str]]]:
    """``iter_segmented`` over every corpus shard of ``split``, in shard order."""
    for p in list_shards(Path(run_dir) / "corpus", split):
        yield from iter_segmented(run_dir, split, shard_index(p), segmenter)
