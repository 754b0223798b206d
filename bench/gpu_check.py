"""One prepared device check of the GPU path (``bench/gpu_check.sh OUT_DIR`` runs this).

On one CUDA GPU (sized for an H100/H200: about 5 minutes, budget 8), in one run, on synthetic data
(no corpus build; the same windows for every contender):

1. ``mlm-128`` / ``mlm-512``: BERT-base MLM, bf16, sequence 128 (batch 128) and 512 (batch 32),
   vocabulary 21,128: tokens/s and MFU of this trainer vs ``transformers.Trainer`` +
   ``DataCollatorForLanguageModeling`` on the identical model, windows and batch; the trainer's
   data-wait share of step time.
2. ``compile``: the sequence-128 case again with ``train.compile=true`` (on vs off).
3. ``decoder``: the 0.1B decoder of ``configs/pretrain/ntp-0.1b.yaml`` (4096-token windows,
   micro-batch 8), ``meap`` vs ``ntp`` step time, and ``ntp`` with ``doc_mask``.
4. ``fsdp``: ``accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 1``
   trains a few steps of a small MLM, stops with a checkpoint, resumes to the end; compared with an
   uninterrupted FSDP run.

Writes ``OUT_DIR/gpu_check.json`` (every figure, the goals and whether each is met) and
``OUT_DIR/gpu_check.txt`` (the table). Without a CUDA device it exits 1 with one line.
``--dry-run`` needs no GPU: it checks the environment, loads the configs, builds the synthetic
data and prints the plan (tested on CPU by tests/test_gpu_path.py).

Throughput: tokens/s over the logged windows after the first (which holds warm-up and compile),
from the trainer's own records (checkpoint time excluded); for the HF Trainer from CUDA-synchronised
time stamps every ``log_every`` steps, the same windows. HF MFU counts its LM head at every
position (that is the work it does); ours counts the head at the masked positions only.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PYTHONHASHSEED", "0")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import numpy as np  # noqa: E402

GOALS = {"mfu_512": 0.45, "mfu_128": 0.35, "ratio_vs_hf": 1.3, "data_wait": 0.01, "meap_over_ntp": 1.02}
NEEDED = ["torch", "transformers", "accelerate", "tokenizers", "safetensors", "yaml", "numpy", "tqdm"]
MLM_VOCAB, DEC_VOCAB = 21128, 32000


SMALL_DECODER = ["model.num_layers=2", "model.hidden_size=64", "model.num_heads=2", "model.num_key_value_heads=1",
                 "model.intermediate_size=128"]


def plan(a) -> list[dict]:
    """The cases, in order; ``a.smoke`` shrinks every model and batch (CPU test of the driver itself)."""
    s, d = a.steps, a.decoder_steps
    if getattr(a, "smoke", False):
        tiny = {"size": "tiny"}
        cases = [{"part": "mlm-128", "objective": "mlm", "model": tiny, "batch": 4, "seq": 32, "steps": s},
                 {"part": "mlm-512", "objective": "mlm", "model": tiny, "batch": 2, "seq": 64, "steps": s}]
        for name, extra in (("ntp", []), ("meap", []), ("ntp-doc_mask", ["objective_options.doc_mask=true"])):
            obj = name.split("-")[0]
            cases.append({"part": "decoder", "name": name, "objective": obj, "config": f"configs/pretrain/{obj}-0.1b.yaml",
                          "batch": 2, "seq": 64, "steps": d, "extra": ["train.compile=false", "train.micro_batch_size=2",
                                                                        *SMALL_DECODER, *extra]})
        return cases
    cases = [
        {"part": "mlm-128", "objective": "mlm", "model": {"size": "base"}, "batch": 128, "seq": 128, "steps": s},
        {"part": "mlm-512", "objective": "mlm", "model": {"size": "base"}, "batch": 32, "seq": 512, "steps": s},
        {"part": "compile", "objective": "mlm", "model": {"size": "base"}, "batch": 128, "seq": 128, "steps": s,
         "extra": ["train.compile=true"]},
    ]
    for name, extra in (("ntp", []), ("meap", []), ("ntp-doc_mask", ["objective_options.doc_mask=true"])):
        obj = name.split("-")[0]
        cases.append({"part": "decoder", "name": name, "objective": obj, "config": f"configs/pretrain/{obj}-0.1b.yaml",
                      "batch": a.decoder_batch, "seq": 4096, "steps": d,
                      "extra": ["train.compile=false", f"train.micro_batch_size={a.decoder_batch}"] + extra})
    cases.append({"part": "fsdp", "objective": "mlm", "model": {"size": "small"}, "batch": 16, "seq": 128, "steps": 6})
    return cases


# ---- data --------------------------------------------------------------------------------------
def make_loader(case: dict, vocab: int):
    from bench_trainer import StreamLoader, synthetic_stream

    need = (case["steps"] + 2) * case["batch"] * (case["seq"] - 1) + 1
    ids, ws = synthetic_stream(need, vocab)
    return StreamLoader(ids, ws, case["seq"], case["batch"])


def factory_for(loader):
    def factory(root, kind, split, *a, **k):
        if split != "train":
            raise FileNotFoundError(split)  # no valid split: the check does not evaluate
        return loader
    return factory


def write_vocabs(root: Path, vocab: int) -> None:
    from bench_trainer import write_vocab

    for kind in ("char", "sgt"):
        write_vocab(root / kind, vocab)
        stats = json.loads((root / kind / "stats.json").read_text())
        stats["kind"] = kind
        (root / kind / "stats.json").write_text(json.dumps(stats))


def case_config(case: dict, tmp: Path, vocab_root: Path, log_every: int, extra: list[str] = ()):
    from pipeline.config import load_config
    from pretrain.config import PretrainConfig

    ov = [f"runs_root={tmp / 'runs'}", f"run={case['part']}", f"name={case.get('name', case['objective'])}",
          f"data.vocab_root={vocab_root}", f"data.seq_len={case['seq']}", f"train.batch_size={case['batch']}",
          f"train.steps={case['steps']}", "train.warmup_steps=0", f"train.log_every={log_every}",
          "train.eval_every=0", "train.save_every=0", "train.tensorboard=false"]
    if "config" not in case:
        ov += [f"objective={case['objective']}", "train.mixed_precision=auto", "train.lr=0.0005"]
        ov += [f"model.{k}={v}" for k, v in case["model"].items()]
    ov += list(case.get("extra", [])) + list(extra)
    path = REPO / case["config"] if "config" in case else None
    return load_config(PretrainConfig, path, ov)


# ---- contenders ----------------------------------------------------------------------------------
def run_ours(case: dict, tmp: Path, vocab_root: Path, loader, log_every: int) -> dict:
    from pretrain.trainer import train

    cfg = case_config(case, tmp, vocab_root, log_every)
    t0 = time.time()
    r = train(cfg, loader_factory=factory_for(loader), do_export=False)
    recs = [json.loads(x) for x in (r.out_dir / "metrics.jsonl").read_text().splitlines()]
    recs = [x for x in recs if x["split"] == "train"]
    timed = recs[1:] or recs
    tps = float(np.mean([x["tokens_per_s"] for x in timed]))
    return {"tokens_per_s": tps, "step_s": case["batch"] * case["seq"] / tps,
            "data_wait": float(np.mean([x["data_wait"] for x in timed])),
            "mfu": float(np.mean([x["mfu"] for x in timed])) if "mfu" in timed[0] else None,
            "loss_first": recs[0]["loss"], "loss_last": recs[-1]["loss"], "wall_s": time.time() - t0}


def run_hf(case: dict, tmp: Path, loader, vocab: int, log_every: int, workers: int) -> dict:
    import torch
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments

    from bench_trainer import make_tokenizer
    from pretrain.flops import encoder_mlm_flops_per_token, gpu_peak_flops
    from pretrain.models import ModelConfig, build_encoder, count_parameters
    from pretrain.objectives.base import pad_vocab

    torch.manual_seed(0)
    mc = ModelConfig(**case["model"])
    m = build_encoder(mc, pad_vocab(vocab))
    windows = []
    for i in range(case["steps"]):
        windows.extend({"input_ids": row.tolist()} for row in loader.batch(0, i % len(loader))["input_ids"])
    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step % log_every == 0:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                stamps.append(time.perf_counter())

    args = TrainingArguments(
        output_dir=str(tmp / "hf"), per_device_train_batch_size=case["batch"], max_steps=case["steps"],
        learning_rate=5e-4, warmup_steps=0, weight_decay=0.01, logging_steps=10_000, save_strategy="no",
        report_to=[], dataloader_num_workers=workers, bf16=torch.cuda.is_available(), disable_tqdm=True, seed=0,
        use_cpu=not torch.cuda.is_available())
    coll = DataCollatorForLanguageModeling(make_tokenizer(vocab), mlm=True, mlm_probability=0.15)
    t0 = time.time()
    Trainer(model=m, args=args, train_dataset=windows, data_collator=coll, callbacks=[Stamp()]).train()
    tokens = case["batch"] * case["seq"] * log_every
    tps = tokens * (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
    layers, hidden, _, _ = mc.dims()
    fpt = encoder_mlm_flops_per_token(count_parameters(m.bert.encoder), layers, hidden, case["seq"],
                                      pad_vocab(vocab), 1.0)
    peak = gpu_peak_flops()
    return {"tokens_per_s": tps, "mfu": fpt * tps / peak if peak else None, "bf16": torch.cuda.is_available(), "dataloader_workers": workers,
            "wall_s": time.time() - t0}


def run_fsdp(a, tmp: Path) -> dict:
    """``accelerate launch`` (FSDP, 1 process) of this file's ``--fsdp-child``; its JSON line back."""
    out = tmp / "fsdp.json"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "configs" / "accelerate" / "fsdp.yaml"), "--num_processes", "1", str(Path(__file__).resolve()),
           "--fsdp-child", str(tmp / "fsdp"), "--child-out", str(out)]
    t0 = time.time()
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=a.fsdp_timeout)
    res = json.loads(out.read_text()) if out.is_file() else {}
    res.update({"returncode": p.returncode, "wall_s": time.time() - t0, "command": " ".join(cmd[1:])})
    if p.returncode != 0:
        res["stderr_tail"] = p.stderr[-3000:]
    return res


def fsdp_child(root: Path, out: Path) -> int:
    """Inside ``accelerate launch`` with FSDP: uninterrupted run vs stop at 3 + resume to 6."""
    import torch
    from accelerate import PartialState

    case = [c for c in plan(argparse.Namespace(steps=10, decoder_steps=10, decoder_batch=8)) if c["part"] == "fsdp"][0]
    vocab_root = root / "vocab"
    write_vocabs(vocab_root, MLM_VOCAB)
    loader = make_loader(case, MLM_VOCAB)
    from pretrain.trainer import train

    res = {"distributed_type": str(PartialState().distributed_type)}
    full = case_config({**case, "name": "full"}, root, vocab_root, 1, ["train.save_every=3"])
    ra = train(full, loader_factory=factory_for(loader), do_export=False)
    part = case_config({**case, "name": "resumed"}, root, vocab_root, 1, ["train.save_every=3"])
    r1 = train(part, loader_factory=factory_for(loader), stop_at_step=3, do_export=False)
    r2 = train(part, loader_factory=factory_for(loader), do_export=False)

    def losses(d):
        return [json.loads(x)["loss"] for x in (d / "metrics.jsonl").read_text().splitlines()
                if json.loads(x)["split"] == "train"]

    la, lb = losses(ra.out_dir), losses(r2.out_dir)
    res.update({"stop_exit_code": r1.exit_code, "stopped_at": r1.step, "resumed_to": r2.step,
                "checkpoints": sorted(p.name for p in (r2.out_dir / "checkpoints").iterdir()),
                "losses_full": la, "losses_resumed": lb,
                "max_loss_diff": max(abs(x - y) for x, y in zip(la, lb)) if len(la) == len(lb) else None,
                "fsdp_active": "FSDP" in res["distributed_type"],
                "ok": (r1.exit_code == 143 and r1.step == 3 and r2.step == 6 and len(la) == len(lb) == 6
                       and ("FSDP" in res["distributed_type"] or not torch.cuda.is_available())),
                "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None})
    if PartialState().is_main_process:
        out.write_text(json.dumps(res))
    return 0 if res["ok"] else 1


# ---- environment, dry run ------------------------------------------------------------------------
def check_environment() -> dict:
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    env = {"python": platform.python_version(), "missing_modules": missing}
    try:  # the benchmarks' one machine description (bench/record.py), where its imports are there
        from bench.record import machine

        env["machine"] = machine()
    except ImportError:
        pass
    try:
        import torch

        env["torch"] = torch.__version__
        env["cuda"] = torch.cuda.is_available()
        env["device"] = torch.cuda.get_device_name() if env["cuda"] else None
    except ImportError:
        env["cuda"] = False
    for m in ("transformers", "accelerate"):
        try:
            env[m] = __import__(m).__version__
        except ImportError:
            pass
    return env


def dry_run(a) -> int:
    import torch

    env = check_environment()
    print(f"environment: {json.dumps(env)}")
    if env["missing_modules"]:
        print(f"gpu_check: missing Python modules {env['missing_modules']} (carry them as wheels in .whl/)")
        return 2
    import yaml

    for f in ("fsdp.yaml", "single_gpu.yaml"):
        yaml.safe_load((REPO / "configs" / "accelerate" / f).read_text())
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_dry_"))
    try:
        vocab_root = tmp / "vocab"
        write_vocabs(vocab_root, MLM_VOCAB)
        from pretrain.data import build_context
        from pretrain.objectives.base import build_objective

        rows = []
        for case in plan(a):
            cfg = case_config(case, tmp, vocab_root, a.log_every)
            ld = make_loader({**case, "steps": 1}, MLM_VOCAB)
            b = ld.batch(0, 0)
            assert b["input_ids"].shape == (case["batch"], case["seq"]), b["input_ids"].shape
            if case["part"] == "decoder":  # collate one window (the model itself is built on the GPU)
                small = case_config({**case, "batch": 1, "seq": 64}, tmp, vocab_root, a.log_every, SMALL_DECODER)
                obj = build_objective(small.objective, small.objective_options, build_context(small))
                obj.collate(make_loader({**case, "batch": 1, "seq": 64, "steps": 1}, MLM_VOCAB).batch(0, 0),
                            torch.Generator())
            rows.append([case["part"], case.get("name", case["objective"]), f"{case['batch']}x{case['seq']}",
                         case["steps"], cfg.model.size, " ".join(case.get("extra", []))])
        from pipeline.log import print_table

        print_table("gpu_check plan (dry run: nothing trained)", ["part", "run", "batch", "steps", "model", "options"],
                    rows)
        print(f"goals: {json.dumps(GOALS)}")
        print(f"cuda: {'yes, ' + str(env.get('device')) if env['cuda'] else 'no (a real run exits 1 here)'}")
        print("gpu_check dry run: OK")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- the run -------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", nargs="?", help="folder for gpu_check.json and gpu_check.txt")
    p.add_argument("--dry-run", action="store_true", help="check environment and configs, print the plan")
    p.add_argument("--steps", type=int, default=50, help="steps per MLM case (multiple of --log-every)")
    p.add_argument("--decoder-steps", type=int, default=20)
    p.add_argument("--decoder-batch", type=int, default=8)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--hf-workers", type=int, default=4, help="HF Trainer dataloader workers")
    p.add_argument("--budget", type=float, default=400.0,
                   help="seconds; a part not started by then is skipped (the 8-minute limit keeps room for the last)")
    p.add_argument("--fsdp-timeout", type=float, default=240.0)
    p.add_argument("--smoke", action="store_true",
                   help="tiny models and batches, CUDA not required (a test of this driver, not a measurement)")
    p.add_argument("--fsdp-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.fsdp_child:
        return fsdp_child(Path(a.fsdp_child), Path(a.child_out))
    if a.dry_run:
        return dry_run(a)
    if not a.out:
        p.error("the output folder is required (or --dry-run)")
    env = check_environment()
    if not env.get("cuda") and not a.smoke:
        print("gpu_check: no CUDA device visible (torch.cuda.is_available() is False); nothing measured",
              file=sys.stderr)
        return 1
    if env["missing_modules"]:
        print(f"gpu_check: missing Python modules {env['missing_modules']} (carry them as wheels in .whl/)",
              file=sys.stderr)
        return 2

    from pipeline.runs import atomic_write_json

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    report = {"smoke": a.smoke, "environment": env, "command": "bench/gpu_check.sh " + " ".join(sys.argv[1:]), "goals": GOALS,
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "parts": {}, "skipped": []}
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    vocab_root = tmp / "vocab"

    def save():
        report["elapsed_s"] = round(time.time() - t_start, 1)
        atomic_write_json(out / "gpu_check.json", report)

    try:
        for case in plan(a):
            key = case.get("name", case["part"])
            if time.time() - t_start > a.budget:
                report["skipped"].append(key)
                continue
            try:
                if case["part"] == "fsdp":
                    report["parts"]["fsdp"] = run_fsdp(a, tmp)
                    continue
                vocab = DEC_VOCAB if case["part"] == "decoder" else MLM_VOCAB
                write_vocabs(vocab_root / str(vocab), vocab)
                loader = make_loader(case, vocab)
                res = {"case": {k: v for k, v in case.items() if k != "part"},
                       "ours": run_ours(case, tmp, vocab_root / str(vocab), loader, a.log_every)}
                if case["part"].startswith("mlm-"):
                    res["hf"] = run_hf(case, tmp, loader, vocab, a.log_every, a.hf_workers)
                    res["ratio_vs_hf"] = res["ours"]["tokens_per_s"] / res["hf"]["tokens_per_s"]
                report["parts"][key] = res
            except Exception as e:  # one failing part must not lose the others' figures
                report["parts"][key] = {"error": f"{type(e).__name__}: {e}"}
            finally:
                shutil.rmtree(tmp / "runs", ignore_errors=True)
                save()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report["verdict"] = verdict(report["parts"])
    save()
    text = table(report)
    (out / "gpu_check.txt").write_text(text + "\n", encoding="utf-8")
    print(text)
    print(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.txt'}")
    return 0 if not any("error" in v for v in report["parts"].values()) else 3


def verdict(parts: dict) -> dict:
    v = {}

    def get(k, *path):
        d = parts.get(k, {})
        for p in path:
            d = d.get(p) if isinstance(d, dict) else None
        return d

    for seq in (128, 512):
        m = get(f"mlm-{seq}", "ours", "mfu")
        if m is not None:
            v[f"mfu_{seq}"] = {"value": m, "goal": f">= {GOALS[f'mfu_{seq}']}", "met": m >= GOALS[f"mfu_{seq}"]}
        r = get(f"mlm-{seq}", "ratio_vs_hf")
        if r is not None:
            v[f"ratio_vs_hf_{seq}"] = {"value": r, "goal": f">= {GOALS['ratio_vs_hf']}", "met": r >= GOALS["ratio_vs_hf"]}
        w = get(f"mlm-{seq}", "ours", "data_wait")
        if w is not None:
            v[f"data_wait_{seq}"] = {"value": w, "goal": f"< {GOALS['data_wait']}", "met": w < GOALS["data_wait"]}
    n, m = get("ntp", "ours", "step_s"), get("meap", "ours", "step_s")
    if n and m:
        v["meap_over_ntp"] = {"value": m / n, "goal": f"<= {GOALS['meap_over_ntp']}", "met": m / n <= GOALS["meap_over_ntp"]}
    d = get("ntp-doc_mask", "ours", "step_s")
    if n and d:
        v["doc_mask_over_ntp"] = {"value": d / n, "goal": None, "met": None}
    c, o = get("compile", "ours", "tokens_per_s"), get("mlm-128", "ours", "tokens_per_s")
    if c and o:
        v["compile_speedup_128"] = {"value": c / o, "goal": None, "met": None}
    f = parts.get("fsdp")
    if f:
        v["fsdp_save_resume"] = {"value": f.get("max_loss_diff"), "goal": "stop at 3, resume to 6", "met": bool(f.get("ok"))}
    return v


def table(report: dict) -> str:
    from pipeline.log import format_table

    rows = []
    for k, x in report.get("verdict", {}).items():
        val = x["value"]
        rows.append([k, "-" if val is None else f"{val:.4g}", x["goal"] or "", {True: "yes", False: "NO", None: ""}[x["met"]]])
    for k, part in report["parts"].items():
        if "error" in part:
            rows.append([k, "error", part["error"][:80], "NO"])
        elif "ours" in part:
            o = part["ours"]
            rows.append([f"{k} tokens/s", f"{o['tokens_per_s']:,.0f}", "", ""])
            if "hf" in part:
                rows.append([f"{k} HF Trainer tokens/s", f"{part['hf']['tokens_per_s']:,.0f}", "", ""])
    for k in report.get("skipped", []):
        rows.append([k, "skipped (time budget)", "", "NO"])
    env = report["environment"]
    head = (f"gpu_check on {env.get('device')} (torch {env.get('torch')}, transformers {env.get('transformers')}), "
            f"{report.get('elapsed_s', 0):.0f} s")
    return head + "\n" + format_table(["what", "figure", "goal", "met"], rows)


if __name__ == "__main__":
    sys.exit(main())
