"""The GPU path, tested on CPU: background batch prefetch, stop-flag sync points, DeepSpeed clipping
and grad norm, document-masked attention for packed decoder windows, the device check's dry run."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pretrain.prefetch import BatchStream, StopSync
from pretrain.trainer import train
from test_pretrain import read_metrics, state, tiny_cfg
from test_pretrain_synth import SyntheticLoader

REPO = Path(__file__).resolve().parents[1]


# ---- 1. prefetch -------------------------------------------------------------------------------
def test_batch_stream_order_errors_and_close():
    made = []

    def make(s, k):
        made.append((s, k))
        return (s, k)

    with BatchStream(make, 2, 5, 2, depth=3) as bs:
        assert [bs.get(s, k) for s in range(2, 5) for k in range(2)] == [(s, k) for s in range(2, 5) for k in range(2)]
    assert made == [(s, k) for s in range(2, 5) for k in range(2)]  # nothing built past the end
    with pytest.raises(RuntimeError, match="out of order"):
        BatchStream(make, 0, 3, 1, depth=0).get(1, 0)

    def boom(s, k):
        if s == 1:
            raise ValueError("bad record at step 1")
        return s

    bs = BatchStream(boom, 0, 4, 1, depth=2)
    assert bs.get(0, 0) == 0
    with pytest.raises(ValueError, match="bad record"):
        bs.get(1, 0)
    bs.close()
    # close() while the producer waits on a full queue: the thread ends
    bs = BatchStream(lambda s, k: s, 0, 10_000, 1, depth=1)
    time.sleep(0.05)
    bs.close()
    assert not any(th.name == "batch-prefetch" and th.is_alive() for th in threading.enumerate())


def test_prefetch_gives_identical_training(tmp_path):
    runs = {}
    for p in (0, 3):
        cfg = tiny_cfg(tmp_path / f"p{p}", "mlm", "train.micro_batch_size=4", f"train.prefetch={p}")
        runs[p] = train(cfg, loader_factory=SyntheticLoader, do_export=False)
    la, lb = (read_metrics(runs[p].out_dir) for p in (0, 3))
    assert [(r["loss"], r["grad_norm"]) for r in la] == [(r["loss"], r["grad_norm"]) for r in lb] and len(la) == 6
    assert all("data_wait" in r for r in lb)
    wa, wb = (state(runs[p].out_dir / "checkpoints" / "step-6") for p in (0, 3))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("objective", ["meap"])
def test_exact_resume_with_prefetch(tmp_path, objective):
    """N/2 + N/2 steps with prefetch on (batches built ahead of the stop are dropped) = N steps synchronously."""
    ref = train(tiny_cfg(tmp_path / "a", objective, "train.micro_batch_size=4", "train.prefetch=0"),
                loader_factory=SyntheticLoader, do_export=False)
    part = tiny_cfg(tmp_path / "b", objective, "train.micro_batch_size=4", "train.prefetch=4")
    r1 = train(part, loader_factory=SyntheticLoader, stop_at_step=3, do_export=False)
    assert r1.exit_code == 143 and r1.step == 3
    r2 = train(part, loader_factory=SyntheticLoader, do_export=False)
    assert r2.step == 6
    key = [(r["step"], r["loss"], r["grad_norm"]) for r in read_metrics(ref.out_dir)]
    assert key == [(r["step"], r["loss"], r["grad_norm"]) for r in read_metrics(r2.out_dir)]
    wa, wb = state(ref.out_dir / "checkpoints" / "step-6"), state(r2.out_dir / "checkpoints" / "step-6")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


# ---- 2. stop-flag sync ---------------------------------------------------------------------------
def test_stop_sync_points():
    calls = []
    ss = StopSync(4, 2, lambda local: calls.append(local) or local)
    got = [ss(s, s == 6, forced=s in (5, 9)) for s in range(1, 13)]
    assert calls == [False, False, False, False, False]  # steps 4, 5, 8, 9, 12; stop asked at 6 only
    assert ss.syncs == 5 and not any(got)
    ss = StopSync(4, 2, lambda local: local)
    assert [s for s in range(1, 13) if ss(s, s >= 6)] == [8, 12]  # a request waits for the next sync point
    one = StopSync(4, 1, lambda local: pytest.fail("one process reduces nothing"))
    assert one(3, True) is True and one.syncs == 0


def _counting_stop_sync(monkeypatch, made):
    import pretrain.trainer as tr

    def factory(every, world, reduce):  # as if 2 processes: a reduce that counts its calls
        ss = StopSync(every, 2, lambda local: local)
        made.append(ss)
        return ss

    monkeypatch.setattr(tr, "StopSync", factory)


def test_trainer_syncs_the_stop_flag_only_at_sync_points(tmp_path, monkeypatch):
    made: list[StopSync] = []
    _counting_stop_sync(monkeypatch, made)
    opts = ("train.steps=12", "train.log_every=5", "train.eval_every=0", "train.save_every=0",
            "train.stop_sync_every=4", "train.warmup_steps=0")
    r = train(tiny_cfg(tmp_path / "a", "mlm", *opts), loader_factory=SyntheticLoader, do_export=False)
    assert r.step == 12 and made[-1].syncs == 5  # steps 4, 5 (log), 8, 10 (log), 12 (last): not 12 syncs
    # a stop asked after step 6 is honoured at the next sync point (8), with a checkpoint there
    r = train(tiny_cfg(tmp_path / "b", "mlm", *opts), loader_factory=SyntheticLoader, stop_at_step=6,
              do_export=False)
    assert r.exit_code == 143 and r.step == 8 and made[-1].syncs == 3
    assert (r.out_dir / "checkpoints" / "latest").read_text().strip() == "step-8"


STOP_SCRIPT = """
import os, sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_pretrain import tiny_cfg
from test_pretrain_synth import SyntheticLoader
from pretrain.trainer import end_processes, train
cfg = tiny_cfg(Path({root!r}), "ntp", "train.micro_batch_size=4", "train.steps=12", "train.log_every=100",
               "train.eval_every=0", "train.save_every=0", "train.stop_sync_every=4")
stop = 5 if os.environ.get("RANK", "0") == "0" else None  # only rank 0 is asked to stop
r = train(cfg, loader_factory=SyntheticLoader, stop_at_step=stop, do_export=False)
print(f"rank {{os.environ.get('RANK')}} returned at step {{r.step}} with {{r.exit_code}}", file=sys.stderr, flush=True)
end_processes(r.exit_code)  # as python -m pretrain does: end the process group, then the process
sys.exit(r.exit_code)
"""


@pytest.mark.slow
def test_stop_on_one_rank_stops_both_at_the_next_sync_point(tmp_path):
    """2 CPU processes (gloo): rank 0 asks to stop after step 5; the all-reduce at step 8 (the next
    multiple of stop_sync_every) stops both ranks there, with one checkpoint."""
    import socket

    script = tmp_path / "run.py"
    script.write_text(STOP_SCRIPT.format(tests=str(REPO / "tests"), root=str(tmp_path)))
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(port), str(script)]
    p = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"),
                       capture_output=True, text=True, timeout=300)
    # (the launcher reports the non-zero exit code 143 of a clean stop as a failure: not checked)
    for rank in (0, 1):
        assert f"rank {rank} returned at step 8 with 143" in p.stderr, p.stderr[-3000:]
    out = tmp_path / "runs" / "t" / "pretrain" / "ntp" / "checkpoints"
    assert (out / "latest").read_text().strip() == "step-8"
    assert sorted(x.name for x in out.glob("step-*")) == ["step-8"]


# ---- 3. DeepSpeed --------------------------------------------------------------------------------
def test_deepspeed_clip_and_grad_norm_plumbing():
    """Stand-ins for accelerate's DeepSpeedPlugin and engine (DeepSpeed is not installed here)."""
    from pretrain.parallel import configure_deepspeed, engine_grad_norm

    plugin = SimpleNamespace(deepspeed_config={"zero_optimization": {"stage": 2}, "gradient_clipping": "auto"})
    cfg = configure_deepspeed(plugin, 8, 0.5)
    assert cfg["gradient_clipping"] == 0.5 and cfg["train_micro_batch_size_per_gpu"] == 8
    assert configure_deepspeed(plugin, 8, 0.0)["gradient_clipping"] == 0.0

    class Engine:
        def __init__(self, v):
            self.v = v

        def get_global_grad_norm(self):
            return self.v

    acc = SimpleNamespace(deepspeed_engine_wrapped=SimpleNamespace(engine=Engine(torch.tensor(2.5))))
    assert float(engine_grad_norm(acc)) == 2.5
    acc.deepspeed_engine_wrapped.engine = Engine(1.25)
    assert float(engine_grad_norm(acc)) == 1.25
    acc.deepspeed_engine_wrapped.engine = Engine(None)
    assert engine_grad_norm(acc) is None
    assert engine_grad_norm(SimpleNamespace()) is None
    text = (REPO / "configs" / "accelerate" / "deepspeed_zero2.yaml").read_text()
    assert "train.clip" in text


# ---- 4. document-masked attention ------------------------------------------------------------------
def _decoder(tmp_path, objective, *opts):
    from pretrain.data import build_context
    from pretrain.objectives.base import build_objective

    cfg = tiny_cfg(tmp_path, objective, "model.dropout=0.0", *opts)
    torch.manual_seed(0)
    return build_objective(objective, cfg.objective_options, build_context(cfg)).eval()


def _packed_batch(obj):
    v = obj.ctx.vocab
    cls, sep, pad = v.cls_id, v.sep_id, v.pad_id
    rows = [[cls, 11, 12, 13, sep, 14, 15, sep, 16, 17, 18, 19, 20, 21],  # 3 documents, the last cut
            [cls, 22, 23, sep, 24, 25, 26, 27, sep, 28, sep, pad, pad, pad]]  # 3 documents + padding
    ids = np.array(rows, dtype=np.int64)
    special = np.isin(ids, [cls, sep, pad])
    return {"input_ids": ids, "special_mask": special, "attention_mask": (ids != pad).astype(np.int64),
            "word_start": np.ones_like(special), "char_len": (~special).astype(np.int16)}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_doc_mask_logits_equal_per_document_forward(tmp_path, attn):
    obj = _decoder(tmp_path, "ntp", "objective_options.doc_mask=true", f"model.attn_implementation={attn}")
    raw = _packed_batch(obj)
    b = obj.collate(raw, torch.Generator())
    assert b["segment_ids"].tolist()[0] == [0] * 5 + [1] * 3 + [2] * 6
    assert b["position_ids"].tolist()[1][:11] == [0, 1, 2, 3, 0, 1, 2, 3, 4, 0, 1]
    with torch.no_grad():
        packed = obj._logits(b)
        plain = obj._logits({k: v for k, v in b.items() if k not in ("segment_ids", "position_ids")})
        for r in range(2):
            valid = raw["attention_mask"][r].astype(bool)
            seg = b["segment_ids"][r]
            crossed = False
            for d in seg[torch.from_numpy(valid)].unique().tolist():
                sel = (seg == d) & torch.from_numpy(valid)
                alone = obj.model(input_ids=b["input_ids"][r][sel][None]).logits[0]
                torch.testing.assert_close(packed[r][sel], alone, atol=1e-5, rtol=1e-5)
                crossed |= d > 0 and not torch.allclose(plain[r][sel], alone, atol=1e-4)
            assert crossed  # without the mask the later documents do see the earlier ones
    assert torch.isfinite(packed).all()


def test_doc_mask_meap_and_loader_segments(tmp_path, tmp_path_factory):
    """meap inherits the mask (masking happens after the segments are read from the clean ids);
    the loader's ``segment_ids`` are the documents of its windows."""
    from test_shards_helpers import built_run
    from tokenization.loader import PackedLoader

    obj = _decoder(tmp_path, "meap", "objective_options.doc_mask=true", "objective_options.mask_specials=true",
                   "objective_options.mask_ratio=0.5")
    raw = _packed_batch(obj)
    b = obj.collate(raw, torch.Generator().manual_seed(1))
    ntp = _decoder(tmp_path, "ntp", "objective_options.doc_mask=true").collate(raw, torch.Generator())
    assert torch.equal(b["segment_ids"], ntp["segment_ids"]) and b["meap_mask"].any()
    out = obj(b)
    assert torch.isfinite(out["loss"])

    from pretrain.objectives.ntp import segments_from_sep

    shards = built_run(tmp_path_factory) / "t" / "shards"
    ld = PackedLoader(shards, "char", "train", 48, 4, seed=1)
    sep = int(ld.vocab_meta["special_tokens"]["sep"])
    for i in range(min(3, len(ld))):
        w = ld.batch(0, i)
        assert w["segment_ids"].dtype == np.int32
        ids = torch.from_numpy(w["input_ids"])
        valid = torch.from_numpy(w["attention_mask"]).bool()
        want = segments_from_sep(ids, sep)
        assert torch.equal(torch.from_numpy(w["segment_ids"]).long()[valid], want[valid])
    assert any(ld.batch(0, i)["segment_ids"].max() > 0 for i in range(len(ld)))


def test_fsdp_wraps_only_layer_classes_the_model_has(tmp_path):
    """configs/accelerate/fsdp.yaml names BertLayer and LlamaDecoderLayer; accelerate raises for a
    named class the model lacks, so the trainer keeps the names present in the objective."""
    import yaml

    from pretrain.parallel import configure_fsdp

    names = yaml.safe_load((REPO / "configs" / "accelerate" / "fsdp.yaml").read_text())["fsdp_config"][
        "fsdp_transformer_layer_cls_to_wrap"]
    enc = _decoder(tmp_path / "e", "mlm")
    dec = _decoder(tmp_path / "d", "ntp")
    plugin = SimpleNamespace(transformer_cls_names_to_wrap=names)
    assert configure_fsdp(plugin, enc) == ["BertLayer"] and plugin.transformer_cls_names_to_wrap == ["BertLayer"]
    plugin = SimpleNamespace(transformer_cls_names_to_wrap=names.split(","))
    assert configure_fsdp(plugin, dec) == ["LlamaDecoderLayer"]
    plugin = SimpleNamespace(transformer_cls_names_to_wrap=None)  # none configured: the models' own
    assert "LlamaDecoderLayer" in configure_fsdp(plugin, dec)


# ---- 5. the device check ---------------------------------------------------------------------------
def _env():
    return {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}


def test_gpu_check_dry_run_and_no_cuda_exit(tmp_path):
    p = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--dry-run"], cwd=REPO, env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "gpu_check dry run: OK" in p.stdout and "mlm-512" in p.stdout and "ntp-doc_mask" in p.stdout
    if not torch.cuda.is_available():
        p = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), str(tmp_path / "out")], cwd=REPO,
                           env=_env(), capture_output=True, text=True, timeout=300)
        assert p.returncode == 1 and "no CUDA device" in p.stderr and not (tmp_path / "out").exists()


def test_gpu_check_smoke_writes_json_and_table(tmp_path):
    """The driver end to end with tiny models on CPU (its --smoke mode): every part but compile and
    FSDP runs, figures and verdict land in the JSON and the table."""
    import json

    sys.path.insert(0, str(REPO / "bench"))
    import gpu_check

    rc = gpu_check.main([str(tmp_path), "--smoke", "--steps", "2", "--decoder-steps", "2", "--log-every", "1",
                         "--hf-workers", "0"])
    assert rc == 0
    rep = json.loads((tmp_path / "gpu_check.json").read_text())
    assert set(rep["parts"]) == {"mlm-128", "mlm-512", "ntp", "meap", "ntp-doc_mask"}
    assert rep["parts"]["mlm-128"]["hf"]["tokens_per_s"] > 0 and rep["parts"]["mlm-128"]["ratio_vs_hf"] > 0
    assert {"meap_over_ntp", "ratio_vs_hf_128", "data_wait_512"} <= set(rep["verdict"])
    assert "meap_over_ntp" in (tmp_path / "gpu_check.txt").read_text()
