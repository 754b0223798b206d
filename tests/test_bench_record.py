"""bench/record.py: the one writer of runs/bench/NAME.json and its machine description."""

from __future__ import annotations

import json

import pytest

from bench.record import KEYS, cpu_model, describe, machine, write_record


def test_write_record_shape_and_contract(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rec = {"metric": "m", "value": 2.0, "unit": "x/s", "baseline": 1.0, "ratio": 2.0, "extra": 1}
    path = write_record("demo", rec, argv=["--steps", "2"], note="n")
    assert path.resolve() == (tmp_path / "runs" / "bench" / "demo.json").resolve()
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["bench"] == "demo" and data["records"] == [rec] and data["note"] == "n"
    assert data["command"].startswith("python ") and data["command"].endswith("--steps 2")
    m = data["machine"]
    assert {"cpu", "cores", "avx512_bf16", "amx_bf16", "torch", "transformers", "torch_threads"} <= set(m)
    assert isinstance(m["avx512_bf16"], bool) and m["cores"] >= 1
    for k in KEYS:
        with pytest.raises(ValueError, match=f"lacks {k}"):
            write_record("demo", [rec, {x: v for x, v in rec.items() if x != k}])
    with pytest.raises(ValueError, match="no records"):
        write_record("demo", [])


def test_cpu_model_and_description():
    assert cpu_model("processor : 0\nmodel name\t: Some CPU 9000\nflags : avx\n") == "Some CPU 9000"
    m = {**machine(), "cpu": "X", "cores": 4, "torch_threads": 2, "avx512_bf16": True, "amx_bf16": False,
         "gpu": None, "load_average": 1.0}
    assert describe(m) == "X, 4 cores, 2 torch threads, avx512_bf16, load 1.0"
