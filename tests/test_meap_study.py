"""The MEAP evidence study (configs/studies/meap.yaml) end to end on tiny saved decoders, and its resume."""

import json

from test_retrieval_cli import TEXT, save_tiny_decoder
from test_shards_helpers import record, write_corpus


def make_run(root, seeds=(0, 1)):
    """runs/t with a corpus (the retrieval and attention filler text) and one ntp / meap export per seed."""
    run = root / "t"
    docs = [record(TEXT[i:] + TEXT[:i]) for i in range(0, len(TEXT), 7)]
    write_corpus(run, docs[: len(docs) // 2], docs[len(docs) // 2:], n_train_shards=1)
    for s in seeds:
        for obj in ("ntp", "meap"):
            d = run / "pretrain" / f"{obj}-s{s}" / "export"
            d.mkdir(parents=True)
            save_tiny_decoder(d, layers=2, hidden=16 + 16 * s)
            meta = json.loads((d / "pretrain_meta.json").read_text())
            meta.update(objective=obj, chars_seen=1000 + s, tokens_seen=900, steps=10,
                        final_eval={"loss": 4.0 + s + (obj == "meap"), "perplexity": 50.0})
            (d / "pretrain_meta.json").write_text(json.dumps(meta))
    return run


OPTIONS = json.dumps({"sft_items": 6, "max_docs": 50,
                      "sft": {"budget": "epochs", "epochs": 1, "batch_size": 4, "min_answer_tokens": 1},
                      "needle": {"context_lengths": [24], "depths": [0.0, 1.0], "n_per_cell": 2},
                      "mdqa": {"n_docs": 2, "doc_tokens": 6, "n_per_position": 2}})


def test_meap_study_end_to_end_and_resume(tmp_path):
    from evaluate.study import load_study, run_study

    run = make_run(tmp_path / "runs")
    over = [f"runs_root={tmp_path / 'runs'}", "run=t", "seeds=[0,1]", f"evaluations.retrieval.options={OPTIONS}",
            "evaluations.attention.seq_len=24", "evaluations.attention.n_seqs=2"]
    cfg = load_study("configs/studies/meap.yaml", over)
    assert [m.dir for m in cfg.models] == [f"{tmp_path / 'runs'}/t/pretrain/ntp-s{{seed}}",
                                           f"{tmp_path / 'runs'}/t/pretrain/meap-s{{seed}}",
                                           f"{tmp_path / 'runs'}/t/pretrain/ntp-s{{seed}}"]
    assert [(m.name, m.random_init, m.twin) for m in cfg.models] == [
        ("ntp", False, "ntp-rand"), ("meap", False, "ntp-rand"), ("ntp-rand", True, "")]
    report = run_study(cfg)
    assert report == run / "studies" / "meap" / "report.md"
    text = report.read_text()
    for section in ("## retrieval", "## attention", "## valid_loss", "SFT budget: epochs (1 passes",
                    "| meap | meap_concat | 24 |", "| ntp | none | 2 |", "![needle_by_depth](needle_by_depth.png)",
                    "Welch's t-test against `ntp`"):
        assert section in text, section
    res = json.loads((run / "studies" / "meap" / "results.json").read_text())["aggregate"]
    ret = res["retrieval"]
    for v in ("none", "ntp", "meap_copy", "meap_concat"):
        for m in ("ntp", "meap"):
            assert ret[m][f"needle_{v}"]["n"] == 2 and ret[m][f"mdqa_tok_{v}"]["n"] == 2
        # the twin runs its twin_variants only: zero-shot and plain NTP SFT
        assert ret["ntp-rand"][f"needle_{v}"]["n"] == (2 if v in ("none", "ntp") else 0)
    # the twin (retrieval only) is the ntp export's config with fresh weights: its SFT starts elsewhere
    assert "ntp-rand" not in res["attention"] and "ntp-rand" not in res["valid_loss"]
    sft = {m: json.loads((run / "eval" / "retrieval" / m / "seed-1.json").read_text())["results"]["sft"]["ntp"]
           for m in ("ntp", "ntp-rand")}
    assert sft["ntp"]["final_loss"] != sft["ntp-rand"]["final_loss"]
    vl = res["valid_loss"]
    assert vl["ntp"]["loss"]["values"] == [4.0, 5.0] and vl["meap"]["loss"]["values"] == [5.0, 6.0]
    assert vl["meap"]["chars_seen"]["values"] == [1000, 1001]  # characters seen per row, per seed
    assert res["attention"]["meap"]["mass_on_masked_clean"]["n"] == 2
    assert (run / "studies" / "meap" / "needle_by_depth.png").stat().st_size > 0
    # resume: a second run reads every stored result back (no file rewritten) and writes the same report
    stored = sorted((run / "eval").rglob("seed-*.json"))
    assert len(stored) == 2 * 2 * 2 + 3 * 2  # attention and valid_loss: ntp, meap; retrieval: + the twin
    before = {p: p.stat().st_mtime_ns for p in stored}
    run_study(load_study("configs/studies/meap.yaml", over))
    assert {p: p.stat().st_mtime_ns for p in stored} == before
    assert report.read_text() == text
    # a re-exported model makes only its own results stale
    w = run / "pretrain" / "meap-s1" / "export" / "model.safetensors"
    w.write_bytes(w.read_bytes())
    run_study(load_study("configs/studies/meap.yaml", over))
    changed = {p for p in stored if p.stat().st_mtime_ns != before[p]}
    assert changed == {run / "eval" / ev / "meap" / "seed-1.json" for ev in ("retrieval", "attention", "valid_loss")}


def test_twin_variants_must_be_variants_of_the_config():
    import pytest

    from evaluate.base import build_evaluation
    from pipeline.errors import UserError

    with pytest.raises(UserError, match="twin_variants: 'meap_x' is not a variant"):
        build_evaluation("retrieval", {"config": "configs/finetune/retrieval-tiny.yaml", "twin_variants": ["none", "meap_x"]})


def test_twin_variants_must_overlap_the_configs_variants():
    """A twin whose variants are all absent from the config would store an empty row: refused."""
    import pytest

    from evaluate.base import build_evaluation
    from pipeline.errors import UserError

    with pytest.raises(UserError, match="none of them is among the config's variants"):
        build_evaluation("retrieval", {"config": "configs/finetune/retrieval-tiny.yaml",
                                       "options": {"variants": ["none", "meap_concat"]}, "twin_variants": ["ntp"]})
    with pytest.raises(UserError, match="none of them"):
        build_evaluation("retrieval", {"config": "configs/finetune/retrieval-tiny.yaml", "twin_variants": []})
    # the default (zero-shot, plain NTP SFT) is fine with a config that has zero-shot only
    build_evaluation("retrieval", {"config": "configs/finetune/retrieval-tiny.yaml", "options": {"variants": ["none"]}})
