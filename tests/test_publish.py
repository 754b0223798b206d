"""Publishing: folder contents, model card front matter vs results.json, push, no network, pickles."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pipeline.errors import UserError
from pretrain.model_card import parse_front_matter
from pretrain.publish import build_folder, find_exports, main, push_folder

def make_run(root: Path, tiny_hf_run: Path) -> Path:
    """A private copy of the shared tiny run (``tests/hf_tiny_run.py``: every file written by the
    stage that owns it); returns the ``mlm`` export."""
    run = root / "runs" / "t"
    shutil.copytree(tiny_hf_run, run, ignore=shutil.ignore_patterns("publish"))
    return run / "pretrain" / "mlm" / "export"


LOAD_AND_RUN = textwrap.dedent("""
    import sys, json, torch
    from transformers import AutoTokenizer, AutoModelForMaskedLM, AutoModelForCausalLM
    folder, kind = sys.argv[1], sys.argv[2]
    tok = AutoTokenizer.from_pretrained(folder)
    cls = AutoModelForMaskedLM if kind == "encoder" else AutoModelForCausalLM
    m = cls.from_pretrained(folder).eval()
    ids = tok("我们在北京学习中文", return_tensors="pt")
    with torch.no_grad():
        print(json.dumps({"ids": ids["input_ids"][0].tolist(), "logits": m(**{k: v for k, v in ids.items() if k != "token_type_ids" or kind == "encoder"}).logits[0, :, :8].tolist()}))
""")


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_published_folder_loads_in_fresh_process(tmp_path, tiny_hf_run, kind):
    export = make_run(tmp_path, tiny_hf_run).parent.parent / ("mlm" if kind == "encoder" else "ntp") / "export"
    out = build_folder(export, tmp_path / "publish" / export.parent.name, "me/tiny")
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "README.md", "pretrain_config.yaml", "corpus_stats.json",
            "vocab_stats.json", "pretrain_meta.json", "tokenizer.json", "vocab.txt"} <= names
    assert not any(n.endswith(".py") for n in names)  # no custom code for stock models
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    r = subprocess.run([sys.executable, "-c", LOAD_AND_RUN, str(out), kind], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    # the same outputs as the model before publishing (on the ids the tokenizer can produce)
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM
    cls = AutoModelForMaskedLM if kind == "encoder" else AutoModelForCausalLM
    ref = cls.from_pretrained(export).eval()
    ids = torch.tensor([got["ids"]])
    with torch.no_grad():
        want = ref(input_ids=ids).logits[0, :, :8]
    assert torch.allclose(torch.tensor(got["logits"]), want, atol=1e-5)


def _card(out: Path):
    from huggingface_hub import ModelCard

    return ModelCard((out / "README.md").read_text(encoding="utf-8"))


def test_model_card_front_matter_matches_results(tmp_path, tiny_hf_run):
    export = make_run(tmp_path, tiny_hf_run)
    out = build_folder(export, tmp_path / "pub", "me/zh-mlm-tiny")
    card = (out / "README.md").read_text(encoding="utf-8")
    fm = parse_front_matter(card)
    for key in ("language", "license", "library_name", "pipeline_tag", "tags", "model-index"):
        assert key in fm
    assert fm["library_name"] == "transformers" and fm["pipeline_tag"] == "fill-mask"
    stats = json.loads((tmp_path / "runs" / "t" / "corpus" / "stats.json").read_text())
    assert set(fm["language"]) == {k for k in stats["by_lang"] if k not in ("other", "und")}
    assert fm["license"] == "other"  # the built-in reviews source is research-use
    assert "research use" in (out / "LICENSE").read_text(encoding="utf-8")
    assert "datasets" not in fm  # no hub dataset among the corpus sources (labels are not dataset ids)
    # the typed model-index, as huggingface_hub parses it back
    data = _card(out).data
    results = json.loads((tmp_path / "runs" / "t" / "finetune" / "report" / "results.json").read_text())
    ev = {e.dataset_name: e for e in data.eval_results}
    assert set(ev) == set(results["models"]["mlm"]["results"])
    want_type = {"classification": "text-classification", "pair_classification": "text-classification",
                 "sequence_labeling": "token-classification", "span_extraction": "question-answering",
                 "multiple_choice": "multiple-choice"}
    want_metric = {"acc": "accuracy", "f1": "f1", "em": "exact_match"}
    for task, e in ev.items():
        info = results["tasks"][task]
        assert e.task_type == want_type[info["kind"]], (task, e.task_type)
        assert e.metric_type == want_metric[info["metric"]]
        assert e.metric_value == pytest.approx(results["models"]["mlm"]["results"][task]["mean"])
    assert ev["tnews"].dataset_type == "clue/clue" and ev["tnews"].dataset_config == "tnews"
    assert ev["sentiment"].dataset_split == "test"
    assert {e.task_type for e in ev.values()} >= {"text-classification", "token-classification", "question-answering"}
    # body: numbers of this run, its own corpus, the pushed repo id, the untrained pooler
    m = results["models"]["mlm"]["results"]["sentiment"]
    assert f"{m['mean']:.2f} ± {m['std']:.2f}" in card and "more information needed" not in card.lower()
    assert "8,192" in card and "| mixed |" in card and "test data (CC0)" in card
    assert f"{stats['totals']['kept_chars']:,} characters" in card
    limits = card.split("## Intended use and limitations")[1]
    assert "1998 news" not in limits and "reviews" in limits  # this corpus's sources, not the demo's
    assert 'pipeline("fill-mask", model="me/zh-mlm-tiny")' in card and "local/" not in card
    assert "pooler" in card and "not trained" in card


def test_card_names_the_local_folder_without_repo_id(tmp_path, tiny_hf_run):
    export = make_run(tmp_path, tiny_hf_run)
    assert main([str(export.parent), "--out", str(tmp_path / "pub")]) == 0
    card = (tmp_path / "pub" / "README.md").read_text(encoding="utf-8")
    assert f'model="{tmp_path / "pub"}"' in card
    assert main([str(export.parent), "--out", str(tmp_path / "pub2"), "--push"]) == 2  # push needs a repo id


def test_pickle_files_are_refused(tmp_path, tiny_hf_run):
    export = make_run(tmp_path, tiny_hf_run)
    torch.save({"x": torch.zeros(1)}, export / "pytorch_model.bin")
    with pytest.raises(UserError, match="pickle"):
        build_folder(export, tmp_path / "pub", "me/x")
    assert not (tmp_path / "pub").exists()


def test_export_meta_is_read_through_its_schema(tmp_path, tiny_hf_run):
    """The publisher reads pretrain_meta.json as pretrain.exports.ExportMeta: a mistyped field is one
    error naming the file (before, the raw mapping went into the card as it was)."""
    import json

    export = make_run(tmp_path, tiny_hf_run)
    meta = json.loads((export / "pretrain_meta.json").read_text(encoding="utf-8"))
    (export / "pretrain_meta.json").write_text(json.dumps({**meta, "steps": "many"}), encoding="utf-8")
    with pytest.raises(UserError, match=r"pretrain_meta.json.*steps"):
        build_folder(export, tmp_path / "pub", "me/x")
    assert not (tmp_path / "pub").exists()


def test_every_export_file_is_published(tmp_path, tiny_hf_run):
    """Second-view tokenizers, shipped code and an SGT user dictionary travel with the model."""
    run = make_run(tmp_path, tiny_hf_run).parent.parent.parent
    for name in ("amber", "mlm_sgt", "al_mvp"):
        export = run / "pretrain" / name / "export"
        if name == "mlm_sgt":  # an SGT vocabulary built with a user dictionary saves it next to its tokenizer
            (export / "user_dict.txt").write_text("北京大学 5 nt\n", encoding="utf-8")
        out = build_folder(export, tmp_path / "pub" / name, "me/x")
        want = {p.name for p in export.iterdir()}
        assert want <= {p.name for p in out.iterdir()}, want - {p.name for p in out.iterdir()}
    assert {"coarse.tokenizer.json", "coarse.tokenization_segmented.py", "fine.tokenizer.json",
            "modeling_multivocab.py"} <= {p.name for p in (tmp_path / "pub" / "amber").iterdir()}
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tmp_path / "pub" / "mlm_sgt"), trust_remote_code=True)
    assert tok._user_dict_file and tok._user_dict_file.endswith("user_dict.txt")
    # al_mvp reading a: the extra weights survive the vocabulary trim of the model's own weights
    from safetensors.torch import load_file

    src = load_file(run / "pretrain" / "al_mvp" / "export" / "char_decoder.safetensors")
    got = load_file(tmp_path / "pub" / "al_mvp" / "char_decoder.safetensors")
    assert src.keys() == got.keys() and all(torch.equal(src[k], got[k]) for k in src)


class FakeHub:
    """Stand-in for ``huggingface_hub.HfApi``: records the calls and the uploaded file list."""

    def __init__(self):
        self.calls = []

    def create_repo(self, **kw):
        self.calls.append(("create_repo", kw))

    def upload_folder(self, **kw):
        files = sorted(p.name for p in Path(kw["folder_path"]).iterdir())
        self.calls.append(("upload_folder", {**kw, "files": files}))
        return type("Info", (), {"commit_url": f"https://hub.example/{kw['repo_id']}/commit/1"})()


def test_push_calls_hub_api_with_folder(tmp_path, tiny_hf_run):
    export = make_run(tmp_path, tiny_hf_run)
    out = build_folder(export, tmp_path / "pub", "me/zh-mlm-tiny")
    hub = FakeHub()
    url = push_folder(out, "me/zh-mlm-tiny", private=True, api=hub)
    assert url.endswith("/commit/1")
    assert hub.calls[0] == ("create_repo", {"repo_id": "me/zh-mlm-tiny", "repo_type": "model", "private": True, "exist_ok": True})
    name, kw = hub.calls[1]
    assert name == "upload_folder" and kw["repo_id"] == "me/zh-mlm-tiny"
    assert "model.safetensors" in kw["files"] and "README.md" in kw["files"]
    assert not any("token" in f.lower() and f != "tokenizer.json" and f != "tokenizer_config.json" for f in kw["files"])


def test_no_network_gives_clear_error_and_keeps_folder(tmp_path, tiny_hf_run, monkeypatch, capsys):
    export = make_run(tmp_path, tiny_hf_run)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_TOKEN", "hf_secret_test_token_value")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    from huggingface_hub import HfApi

    out = build_folder(export, tmp_path / "pub", "me/x")
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(UserError, match="could not push") as e:
        push_folder(out, "me/x", api=HfApi(endpoint="http://127.0.0.1:9"))
    assert "hf_secret_test_token_value" not in str(e.value)
    assert sorted(p.name for p in out.iterdir()) == before
    # the CLI reports it in one line with exit code 2 and never prints the token
    rc = main([str(export.parent), "--repo-id", "me/x", "--push", "--out", str(tmp_path / "pub2")])
    err = capsys.readouterr()
    assert rc == 2 and "could not push" in err.err and "hf_secret" not in err.err + err.out
    assert (tmp_path / "pub2" / "model.safetensors").is_file()


def test_run_folder_publishes_every_model(tmp_path, tiny_hf_run):
    run = make_run(tmp_path, tiny_hf_run).parent.parent.parent
    for d in (run / "pretrain").iterdir():  # keep the test to two models
        if d.name not in ("mlm", "ntp"):
            shutil.rmtree(d)
    assert len(find_exports(run)) == 2
    assert main([str(run), "--repo-id", "me/x"]) == 2  # needs {model}
    assert main([str(run), "--repo-id", "me/{run}-{model}"]) == 0
    assert 'model="me/t-mlm"' in (run / "publish" / "mlm" / "README.md").read_text(encoding="utf-8")
    assert (run / "publish" / "ntp" / "README.md").is_file()


def test_sharded_weights_publish_with_their_index(tmp_path, tiny_hf_run):
    from transformers import AutoModelForMaskedLM

    export = make_run(tmp_path, tiny_hf_run)
    m = AutoModelForMaskedLM.from_pretrained(export)
    (export / "model.safetensors").unlink()
    m.save_pretrained(export, max_shard_size="20KB")  # model-0000k-of-0000n.safetensors + index
    assert (export / "model.safetensors.index.json").is_file()
    out = build_folder(export, tmp_path / "pub", "me/x")
    assert (out / "model.safetensors.index.json").is_file()
    again = AutoModelForMaskedLM.from_pretrained(out)
    for (k, a), (_, b) in zip(m.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a[:b.shape[0]], b), k  # embedding rows past the tokenizer's vocabulary dropped


def test_task_kind_the_card_does_not_know_is_left_out_of_model_index():
    from finetune.report import build_results
    from finetune.schema import FinetuneResults
    from pretrain.model_card import eval_results

    models = [{"name": "m", "dir": "x", "random_init": False}]
    tasks = {"sentiment": {"metric": "acc", "kind": "classification"}, "odd": {"metric": "mse", "kind": "regression"}}
    res = build_results(models, tasks, [1], "m", {("m", "sentiment"): [80.0], ("m", "odd"): [1.0]})
    ev = eval_results(FinetuneResults.from_dict(res), "m")
    assert [(e.dataset_name, e.task_type, e.metric_type) for e in ev] == [("sentiment", "text-classification", "accuracy")]
