"""CLUE tasks and common Chinese sets, from local folders in their released formats or the hub.

Local folders (``data_dir``), file names as released:

* AFQMC, TNEWS, IFLYTEK, OCNLI, CMNLI, CLUEWSC2020, CSL: ``train.json``, ``dev.json`` (JSON lines);
* CMRC2018: ``train.json``, ``dev.json`` (SQuAD-style JSON; ``cmrc2018_train.json`` / ``cmrc2018_dev.json`` also accepted);
* C3: ``d-train.json`` + ``m-train.json``, ``d-dev.json`` + ``m-dev.json`` (or ``train.json``/``dev.json``):
  JSON lists of ``[[context lines], [{"question", "choice", "answer"}], id]``;
* CHID: ``train.json`` + ``train_answer.json``, ``dev.json`` + ``dev_answer.json`` (JSON lines with
  ``candidates`` and ``content`` holding ``#idiomNNNNNN#`` blanks; answers map blank -> candidate index);
* ChnSentiCorp: ``train.tsv``, ``dev.tsv``, ``test.tsv`` (``label<TAB>text_a`` with a header; a
  ``qid`` column is allowed);
* LCQMC: ``train.tsv``/``dev.tsv``/``test.tsv`` (or ``.txt``): ``text_a<TAB>text_b<TAB>label``, header optional.

CLUE test labels are hidden, so for CLUE tasks the official **dev** set is our *test* and our dev
is ``dev_fraction`` of train, carved by a salted hash of the example's text (papers report CLUE
dev; this keeps model selection off it). ChnSentiCorp and LCQMC ship labelled test sets: used as is.

Hub (``hub: true`` and no ``data_dir``): ``datasets.load_dataset(hub_id, hub_config)``, default
``clue/clue`` with the task's config; rows are converted to the released record format and go
through the same checks. Where the hub is not reachable the error says to set ``data_dir``.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Callable, Iterable

from finetune.kinds.base import TaskData
from finetune.tasks import TaskConfig, register_task
from finetune.tasks.common import read_json, read_jsonl, read_lines
from pipeline.errors import UserError

TNEWS_LABELS = ["100", "101", "102", "103", "104", "106", "107", "108", "109", "110", "112", "113", "114", "115", "116"]
NLI_LABELS = ["entailment", "neutral", "contradiction"]
UNLABELLED = {"-", ""}  # NLI items without a gold label (annotators disagreed): skipped and counted


def _carve(task: str, key: str, fraction: float) -> bool:
    h = hashlib.sha1(f"clue-dev-v1:{task}:{key}".encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < fraction


Records = Iterable[tuple[str, dict]]  # (where: "file:line", raw record)


def _find(d: Path, names: list[str]) -> Path | None:
    for n in names:
        if (d / n).is_file():
            return d / n
    return None


def _local_jsonl(d: Path, split: str) -> Records:
    p = _find(d, [f"{split}.json", f"{split}.jsonl"])
    if p is None:
        raise UserError(f"task data file not found: {d / (split + '.json')}")
    return ((f"{p}:{i}", r) for i, r in read_jsonl(p))


def _hub(cfg: TaskConfig, default_config: str | None) -> dict[str, list[tuple[str, dict]]]:
    hub_id = cfg.hub_id or ("clue/clue" if default_config else None)
    name = cfg.hub_config or default_config
    if hub_id is None:
        raise UserError(f"task {cfg.name}: no default hub dataset; set hub_id (or data_dir for a local copy)")
    try:
        import datasets

        dd = datasets.load_dataset(hub_id, name)
    except Exception as e:  # offline, unknown id, ...: say what to do instead
        raise UserError(f"task {cfg.name}: cannot load {hub_id}{'/' + name if name else ''} from the hub "
                        f"({type(e).__name__}: {str(e)[:200]}); set tasks[].data_dir to a local copy") from None
    out = {}
    for split, ds in dd.items():
        names = {}
        for col, feat in ds.features.items():
            if hasattr(feat, "int2str"):
                names[col] = feat
        rows = []
        for i, row in enumerate(ds):
            row = dict(row)
            for col, feat in names.items():
                v = row[col]
                row[col] = feat.int2str(v) if isinstance(v, int) and v >= 0 else ""
            rows.append((f"{hub_id}/{name}[{split}] row {i}", row))
        out[{"validation": "dev"}.get(split, split)] = rows
    return out


def _records(cfg: TaskConfig, hub_config: str | None, local: Callable[[Path, str], Records], splits=("train", "dev")):
    if cfg.data_dir:
        d = Path(cfg.data_dir)
        if not d.is_dir():
            raise UserError(f"task {cfg.name}: data_dir not found: {d}")
        return {s: list(local(d, s)) for s in splits}, str(d)
    if cfg.hub:
        got = _hub(cfg, hub_config)
        missing = [s for s in splits if s not in got]
        if missing:
            raise UserError(f"task {cfg.name}: the hub dataset has no {missing[0]} split")
        return {s: got[s] for s in splits}, f"hub {cfg.hub_id or 'clue/clue'}/{cfg.hub_config or hub_config}"
    raise UserError(f"task {cfg.name}: set tasks[].data_dir to the released files (or hub: true where a hub is reachable)")


def _str(rec: dict, key: str, where: str, allow_empty: bool = False) -> str:
    v = rec.get(key)
    if not isinstance(v, str):
        raise UserError(f"{where}: missing or non-string field '{key}'")
    if not allow_empty and not v.strip():
        raise UserError(f"{where}: empty field '{key}'")
    return v


def _label(rec: dict, key: str, labels: list[str], where: str) -> int | None:
    v = rec.get(key)
    if v is None:
        raise UserError(f"{where}: missing field '{key}'")
    v = str(v).strip()
    if isinstance(rec.get(key), bool):
        v = v.lower()
    if v in UNLABELLED:
        return None
    if v not in labels:
        raise UserError(f"{where}: unknown label {v!r}; expected one of {', '.join(labels[:20])}{' ...' if len(labels) > 20 else ''}")
    return labels.index(v)


def _clue_splits(cfg: TaskConfig, kind: str, labels, records: dict, convert, source: str, text_key) -> TaskData:
    """CLUE: test = official dev; dev = hashed fraction of train."""
    train, dev, test, skipped = [], [], [], 0
    for split, recs in records.items():
        for where, rec in recs:
            ex = convert(rec, where)
            if ex is None:
                skipped += 1
                continue
            if split == "dev":
                test.append(ex)
            elif _carve(cfg.name, text_key(ex), cfg.dev_fraction):
                dev.append(ex)
            else:
                train.append(ex)
    info = {"source": source, "unlabelled_skipped": skipped,
            "split_rule": f"test = official dev; dev = {cfg.dev_fraction:.0%} of train by hash"}
    return TaskData(cfg.name, kind, train, dev, test, labels=labels, info=info)


def _classification_task(name: str, kind: str, labels: list[str], fields: tuple[str, ...], label_key: str = "label",
                         hub_config: str | None = None, build_text: Callable | None = None):
    def convert(rec: dict, where: str) -> dict | None:
        y = _label(rec, label_key, labels, where)
        if y is None:
            return None
        if build_text is not None:
            ex = build_text(rec, where)
        else:
            ex = {"text": _str(rec, fields[0], where)}
            if len(fields) > 1:
                ex["text_b"] = _str(rec, fields[1], where)
        ex["label"] = y
        return ex

    @register_task(name, kind)
    def load(cfg: TaskConfig) -> TaskData:
        records, source = _records(cfg, hub_config or name, _local_jsonl)
        return _clue_splits(cfg, kind, labels, records, convert, source,
                            lambda ex: ex["text"] + "\t" + ex.get("text_b", ""))

    return load


def _wsc_text(rec: dict, where: str) -> dict:
    """CLUEWSC2020: mark the pronoun and the candidate in the text, pair it with the question."""
    text = _str(rec, "text", where)
    t = rec.get("target")
    if not isinstance(t, dict):
        raise UserError(f"{where}: missing field 'target'")
    try:
        s1, s2 = int(t["span1_index"]), int(t["span2_index"])
        w1, w2 = str(t["span1_text"]), str(t["span2_text"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{where}: 'target' needs span1_index, span1_text, span2_index, span2_text") from None
    if text[s1:s1 + len(w1)] != w1 or text[s2:s2 + len(w2)] != w2:
        raise UserError(f"{where}: target spans do not match the text")
    marks = sorted([(s1, len(w1), "_"), (s2, len(w2), "[")], reverse=True)
    for s, n, m in marks:  # insert from the right so earlier indices stay valid
        close = "_" if m == "_" else "]"
        text = text[:s] + m + text[s:s + n] + close + text[s + n:]
    return {"text": text, "text_b": f"{w2}指的是{w1}"}


def _csl_text(rec: dict, where: str) -> dict:
    kw = rec.get("keyword")
    if not isinstance(kw, list) or not kw or not all(isinstance(k, str) and k for k in kw):
        raise UserError(f"{where}: 'keyword' must be a non-empty list of strings")
    return {"text": _str(rec, "abst", where), "text_b": "；".join(kw)}


_classification_task("afqmc", "pair_classification", ["0", "1"], ("sentence1", "sentence2"))
_classification_task("tnews", "classification", TNEWS_LABELS, ("sentence",))
_classification_task("iflytek", "classification", [str(i) for i in range(119)], ("sentence",))
_classification_task("ocnli", "pair_classification", NLI_LABELS, ("sentence1", "sentence2"))
_classification_task("cmnli", "pair_classification", NLI_LABELS, ("sentence1", "sentence2"))
_classification_task("cluewsc2020", "pair_classification", ["false", "true"], (), build_text=_wsc_text)
_classification_task("csl", "pair_classification", ["0", "1"], (), build_text=_csl_text)


# ---- tsv sets with labelled test files (ChnSentiCorp, LCQMC) --------------------------------------

def _tsv(d: Path, split: str, columns: tuple[str, ...], name: str) -> list[tuple[str, dict]]:
    p = _find(d, [f"{split}.tsv", f"{split}.txt"])
    if p is None:
        raise UserError(f"task data file not found: {d / (split + '.tsv')}")
    rows, header = [], None
    for i, line in read_lines(p):
        if not line.strip():
            continue
        cells = line.split("\t")
        if header is None and i == 1 and "label" in cells:
            header = cells
            continue
        cols = header or list(columns)
        if header is None and len(cells) == len(columns) + 1 and columns[0] != "qid":
            cols = ["qid"] + list(columns)
        if len(cells) != len(cols):
            raise UserError(f"{p}:{i}: expected {len(cols)} tab-separated columns ({', '.join(cols)}), got {len(cells)}")
        rows.append((f"{p}:{i}", dict(zip(cols, cells))))
    return rows


def _tsv_task(name: str, kind: str, columns: tuple[str, ...], hub_id: str | None):
    fields = tuple(c for c in columns if c.startswith("text"))

    def convert(rec, where):
        ex = {"text": _str(rec, "text_a", where)}
        if "text_b" in fields:
            ex["text_b"] = _str(rec, "text_b", where)
        y = _label(rec, "label", ["0", "1"], where)
        if y is None:
            raise UserError(f"{where}: missing label")
        ex["label"] = y
        return ex

    @register_task(name, kind)
    def load(cfg: TaskConfig) -> TaskData:
        if cfg.data_dir:
            d = Path(cfg.data_dir)
            if not d.is_dir():
                raise UserError(f"task {cfg.name}: data_dir not found: {d}")
            records = {s: _tsv(d, s, columns, name) for s in ("train", "dev", "test")}
            source = str(d)
        elif cfg.hub:
            if not (cfg.hub_id or hub_id):
                raise UserError(f"task {name}: set hub_id (no default hub copy) or data_dir")
            cfg2 = TaskConfig(**{**cfg.__dict__, "hub_id": cfg.hub_id or hub_id})
            got = _hub(cfg2, None)
            rename = {"text": "text_a", "sentence": "text_a", "sentence1": "text_a", "sentence2": "text_b"}
            records = {s: [(w, {rename.get(k, k): v for k, v in r.items()}) for w, r in got.get(s, [])]
                       for s in ("train", "dev", "test")}
            source = f"hub {cfg2.hub_id}"
        else:
            raise UserError(f"task {name}: set tasks[].data_dir to the released files (or hub: true)")
        splits = {s: [convert(r, w) for w, r in recs] for s, recs in records.items()}
        return TaskData(name, kind, splits["train"], splits["dev"], splits["test"], labels=["0", "1"],
                        info={"source": source, "split_rule": "released train/dev/test"})

    return load


_tsv_task("chnsenticorp", "classification", ("label", "text_a"), None)
_tsv_task("lcqmc", "pair_classification", ("text_a", "text_b", "label"), None)


# ---- CMRC 2018 (span extraction) ---------------------------------------------------------------

def _cmrc_local(d: Path, split: str) -> Records:
    p = _find(d, [f"{split}.json", f"cmrc2018_{split}.json"])
    if p is None:
        raise UserError(f"task data file not found: {d / (split + '.json')}")
    doc = read_json(p)
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise UserError(f"{p}: expected SQuAD-style JSON with a 'data' list")
    for a, art in enumerate(doc["data"]):
        for b, para in enumerate(art.get("paragraphs", []) if isinstance(art, dict) else []):
            ctx = para.get("context")
            for c, qa in enumerate(para.get("qas", [])):
                where = f"{p}: data[{a}].paragraphs[{b}].qas[{c}]"
                ans = qa.get("answers") or []
                yield where, {"id": qa.get("id", where), "context": ctx, "question": qa.get("question"),
                              "answers": {"text": [x.get("text") for x in ans], "answer_start": [x.get("answer_start") for x in ans]}}


def _cmrc_convert(rec: dict, where: str) -> dict:
    ctx, q = _str(rec, "context", where), _str(rec, "question", where)
    a = rec.get("answers") or {}
    texts, starts = list(a.get("text") or []), list(a.get("answer_start") or [])
    if not texts or len(texts) != len(starts):
        raise UserError(f"{where}: no answers (or text/answer_start of different lengths)")
    answers = []
    for t, s in zip(texts, starts):
        if not isinstance(t, str) or not t or not isinstance(s, int):
            raise UserError(f"{where}: malformed answer {t!r} at {s!r}")
        if ctx[s:s + len(t)] != t:  # CMRC has a few off-by-n starts: take the nearest occurrence
            hits = [m.start() for m in re.finditer(re.escape(t), ctx)]
            if not hits:
                raise UserError(f"{where}: answer {t!r} does not occur in the context")
            s = min(hits, key=lambda h: abs(h - s))
        answers.append({"text": t, "start": s})
    return {"id": str(rec.get("id")), "context": ctx, "question": q, "answers": answers}


@register_task("cmrc2018", "span_extraction")
def load_cmrc(cfg: TaskConfig) -> TaskData:
    records, source = _records(cfg, "cmrc2018", _cmrc_local)
    return _clue_splits(cfg, "span_extraction", None, records, _cmrc_convert, source, lambda ex: ex["id"] + ex["question"])


# ---- C3 (multiple choice) ------------------------------------------------------------------------

def _c3_local(d: Path, split: str) -> Records:
    files = [p for p in (d / f"d-{split}.json", d / f"m-{split}.json", d / f"{split}.json") if p.is_file()]
    if not files:
        raise UserError(f"task data file not found: {d / ('d-' + split + '.json')} (or m-{split}.json, {split}.json)")
    for p in files:
        doc = read_json(p)
        if not isinstance(doc, list):
            raise UserError(f"{p}: expected a JSON list of [context, questions, id]")
        for i, item in enumerate(doc):
            where = f"{p}: item {i}"
            if not (isinstance(item, list) and len(item) >= 2 and isinstance(item[0], list) and isinstance(item[1], list)):
                raise UserError(f"{where}: expected [[context lines], [questions], id]")
            for j, q in enumerate(item[1]):
                if not isinstance(q, dict):
                    raise UserError(f"{where}.{j}: expected a question object")
                yield f"{where} question {j}", {"context": item[0], "question": q.get("question"),
                                                "choice": q.get("choice"), "answer": q.get("answer")}


def _c3_convert(rec: dict, where: str) -> dict:
    ctx = rec.get("context")
    if isinstance(ctx, list):
        if not all(isinstance(c, str) for c in ctx):
            raise UserError(f"{where}: context lines must be strings")
        ctx = "".join(ctx)
    if not isinstance(ctx, str) or not ctx.strip():
        raise UserError(f"{where}: empty context")
    q = _str(rec, "question", where)
    ch = rec.get("choice")
    if not isinstance(ch, list) or len(ch) < 2 or not all(isinstance(c, str) and c for c in ch):
        raise UserError(f"{where}: 'choice' must list at least two non-empty strings")
    ans = rec.get("answer")
    if ans not in ch:
        raise UserError(f"{where}: answer {ans!r} is not one of the choices")
    return {"context": ctx, "question": q, "choices": ch, "label": ch.index(ans)}


@register_task("c3", "multiple_choice")
def load_c3(cfg: TaskConfig) -> TaskData:
    records, source = _records(cfg, "c3", _c3_local)
    return _clue_splits(cfg, "multiple_choice", None, records, _c3_convert, source, lambda ex: ex["context"] + ex["question"])


# ---- CHID (idiom cloze as multiple choice) ---------------------------------------------------------

BLANK = re.compile(r"#idiom\d+#")
CHID_CONTEXT = 64  # characters kept on each side of the blank (the PaddleNLP/CLUE baselines use a 64-token window)


def _chid_local(d: Path, split: str) -> Records:
    p, pa = d / f"{split}.json", d / f"{split}_answer.json"
    answers = read_json(pa)
    if not isinstance(answers, dict):
        raise UserError(f"{pa}: expected a JSON object mapping '#idiomNNNNNN#' to a candidate index")
    for i, rec in read_jsonl(p):
        where = f"{p}:{i}"
        contents = rec.get("content")
        if not isinstance(contents, list):
            raise UserError(f"{where}: 'content' must be a list of passages")
        for text in contents:
            if not isinstance(text, str):
                raise UserError(f"{where}: passages must be strings")
            for m in BLANK.finditer(text):
                tag = m.group(0)
                if tag not in answers:
                    raise UserError(f"{where}: blank {tag} has no entry in {pa}")
                yield where, {"content": text, "blank": tag, "candidates": rec.get("candidates"), "answer": answers[tag]}


def _chid_convert(rec: dict, where: str) -> dict:
    text, tag = _str(rec, "content", where), rec.get("blank")
    cands = rec.get("candidates")
    if not isinstance(cands, list) or len(cands) < 2 or not all(isinstance(c, str) and c for c in cands):
        raise UserError(f"{where}: 'candidates' must list the candidate idioms")
    y = rec.get("answer")
    if not isinstance(y, int) or not 0 <= y < len(cands):
        raise UserError(f"{where}: answer index {y!r} out of range for {len(cands)} candidates")
    k = text.find(tag) if tag else -1
    if k < 0:
        raise UserError(f"{where}: blank {tag!r} not found in the passage")
    left = BLANK.sub("", text[:k])[-CHID_CONTEXT:]  # other blanks are removed
    right = BLANK.sub("", text[k + len(tag):])[:CHID_CONTEXT]
    return {"context": left + "□□□□" + right, "question": "", "choices": cands, "label": y}


def _chid_hub_rows(recs):
    """Hub rows: one passage with several blanks and ``answers.candidate_id`` in blank order."""
    for where, rec in recs:
        if "blank" in rec:
            yield where, rec
            continue
        text = rec.get("content")
        ids = ((rec.get("answers") or {}).get("candidate_id")) or []
        if not isinstance(text, str):
            raise UserError(f"{where}: 'content' must be a string")
        blanks = [m.group(0) for m in BLANK.finditer(text)]
        if not blanks:  # hub copy uses "#idiom#" for every blank
            parts = text.split("#idiom#")
            for j in range(len(parts) - 1):
                t = "".join(parts[:j + 1]) + "#idiom0#" + "".join(parts[j + 1:])
                yield where, {"content": t, "blank": "#idiom0#", "candidates": rec.get("candidates"),
                              "answer": ids[j] if j < len(ids) else None}
        else:
            for j, b in enumerate(blanks):
                yield where, {"content": text, "blank": b, "candidates": rec.get("candidates"),
                              "answer": ids[j] if j < len(ids) else None}


@register_task("chid", "multiple_choice")
def load_chid(cfg: TaskConfig) -> TaskData:
    records, source = _records(cfg, "chid", _chid_local)
    records = {s: list(_chid_hub_rows(r)) for s, r in records.items()}
    return _clue_splits(cfg, "multiple_choice", None, records, _chid_convert, source, lambda ex: ex["context"])
