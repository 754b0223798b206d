"""Publishing: folder contents, model card front matter vs results.json, push, no network, pickles."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pipeline.errors import UserError
from pretrain.model_card import parse_front_matter
from pretrain.publish import build_folder, find_exports, main, push_folder

CHARS = list("的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长知民样现分将外但身些与高意进把法此实回二理美点月明其种声全工己话儿者向情部正名定女问力机给等几很业最间新什打便位因重被走电四第门相次东政海口使教西再平真听世气信北少关并内加化由却代军产入先山五太水万市眼体别处总才场师书比住员九笑性通目华报立马命张活难神数件安表原车白应路期叫死常提感金何更反合放做系计或司利受光王果亲界及今京务制解各任至清物台象记边共风战干接它许八特觉望直服毛林题建南度统色字请交爱让认算论百吃义科怎元社术结六功指思非流每青管夫连远资队跟带花快条院变联言权往展该领传近留红治决周保达办运武半候七必城父强步完革深区即求品士转量空甚众技轻程告江语英基派满式李息写呢识极令黄德收脸钱党倒未持取设始版双历越史商千片容研像找友孩站广改议形委早房音火际则首单据导影失拿网香似斯专石若兵弟谁校读志飞观争究包组造落视济喜离虽坏兴")


def _tokenizer(tmp: Path):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + CHARS)}
    tk = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(handle_chinese_chars=True, lowercase=False)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def make_run(root: Path, kind: str = "encoder", name: str = "mlm") -> Path:
    from pretrain.models import ModelConfig, build_decoder, build_encoder

    torch.manual_seed(0)
    cfg = ModelConfig(size="tiny", hidden_size=32, num_heads=2, intermediate_size=64, num_layers=1)
    model = build_encoder(cfg, 448) if kind == "encoder" else build_decoder(cfg, 448, bos_id=2, eos_id=3)
    export = root / "pretrain" / name / "export"
    export.mkdir(parents=True)
    model.save_pretrained(export)
    _tokenizer(root).save_pretrained(export)
    meta = {"objective": name, "model_type": kind, "vocab_kind": "char", "vocab_path": str(root / "vocab" / "char"),
            "steps": 100, "tokens_seen": 409600, "trust_remote_code": False, "finetune_adapter": "hf",
            "train_seconds": 93.5, "hardware": "cpu x2", "final_eval": {"loss": 4.25}}
    (export / "pretrain_meta.json").write_text(json.dumps(meta))
    (root / "pretrain" / name / "config.yaml").write_text(
        f"objective: {name}\nmodel:\n  size: tiny\ndata:\n  seq_len: 128\ntrain:\n  batch_size: 32\n  lr: 0.001\n")
    (root / "vocab" / "char").mkdir(parents=True, exist_ok=True)
    (root / "vocab" / "char" / "stats.json").write_text(json.dumps({"kind": "char", "size": 448, "tokens_per_char": 0.98}))
    (root / "corpus").mkdir(exist_ok=True)
    (root / "corpus" / "stats.json").write_text(json.dumps({
        "languages": {"zh": {"docs": 10, "chars": 900}, "yue": {"docs": 3, "chars": 60}, "en": {"docs": 2, "chars": 80}},
        "sources": {"pd1998": {"docs": 10, "chars": 900, "licence": "research use (PKU)"},
                    "cantonese": {"docs": 3, "chars": 60, "licence": "CC0"}},
    }))
    rep = root / "finetune" / "report"
    rep.mkdir(parents=True, exist_ok=True)
    (rep / "results.json").write_text(json.dumps({
        "baseline": name, "seeds": [1, 2, 3],
        "tasks": {"sentiment": {"metric": "accuracy", "kind": "sentence"}, "msra_ner": {"metric": "f1", "kind": "tagging"}},
        "models": {name: {"dir": str(export), "random_init": False, "results": {
            "sentiment": {"values": [80.0, 82.0, 81.0], "mean": 81.0, "std": 1.0, "max": 82.0},
            "msra_ner": {"values": [50.0, 52.0, 51.0], "mean": 51.0, "std": 1.0, "max": 52.0}}},
            f"{name} (random init)": {"dir": str(export), "random_init": True, "results": {
                "sentiment": {"values": [60.0, 61.0, 62.0], "mean": 61.0, "std": 1.0, "max": 62.0}}}},
    }))
    return export


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
def test_published_folder_loads_in_fresh_process(tmp_path, kind):
    export = make_run(tmp_path, kind, "mlm" if kind == "encoder" else "ntp")
    out = build_folder(export, tmp_path / "publish" / export.parent.name, "me/tiny")
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "README.md", "pretrain_config.yaml", "corpus_stats.json",
            "vocab_stats.json", "pretrain_meta.json", "tokenizer.json"} <= names
    assert not any(n.endswith(".py") for n in names)  # no custom code for stock models
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    r = subprocess.run([sys.executable, "-c", LOAD_AND_RUN, str(out), kind], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    # the same outputs as the model before publishing
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM
    cls = AutoModelForMaskedLM if kind == "encoder" else AutoModelForCausalLM
    ref = cls.from_pretrained(export).eval()
    ids = torch.tensor([got["ids"]])
    with torch.no_grad():
        want = ref(input_ids=ids).logits[0, :, :8]
    assert torch.allclose(torch.tensor(got["logits"]), want, atol=1e-5)


def test_model_card_front_matter_matches_results(tmp_path):
    export = make_run(tmp_path)
    out = build_folder(export, tmp_path / "pub", "me/zh-mlm-tiny")
    card = (out / "README.md").read_text(encoding="utf-8")
    fm = parse_front_matter(card)
    for key in ("language", "license", "library_name", "pipeline_tag", "tags", "datasets", "model-index"):
        assert key in fm
    assert fm["library_name"] == "transformers" and fm["pipeline_tag"] == "fill-mask"
    assert set(fm["language"]) == {"en", "yue", "zh"}
    assert fm["license"] == "other"  # research-use corpus source
    assert "research use (PKU)" in (out / "LICENSE").read_text(encoding="utf-8")
    results = json.loads((tmp_path / "finetune" / "report" / "results.json").read_text())
    got = {r["task"]["name"]: r["metrics"][0]["value"] for r in fm["model-index"][0]["results"]}
    want = {t: v["mean"] for t, v in results["models"]["mlm"]["results"].items()}
    assert got == want
    assert "81.00 ± 1.00" in card and "more information needed" not in card.lower()
    assert "409,600" in card and "pd1998" in card and "research use (PKU)" in card


def test_pickle_files_are_refused(tmp_path):
    export = make_run(tmp_path)
    torch.save({"x": torch.zeros(1)}, export / "pytorch_model.bin")
    with pytest.raises(UserError, match="pickle"):
        build_folder(export, tmp_path / "pub", "me/x")
    assert not (tmp_path / "pub").exists()


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


def test_push_calls_hub_api_with_folder(tmp_path):
    export = make_run(tmp_path)
    out = build_folder(export, tmp_path / "pub", "me/zh-mlm-tiny")
    hub = FakeHub()
    url = push_folder(out, "me/zh-mlm-tiny", private=True, api=hub)
    assert url.endswith("/commit/1")
    assert hub.calls[0] == ("create_repo", {"repo_id": "me/zh-mlm-tiny", "repo_type": "model", "private": True, "exist_ok": True})
    name, kw = hub.calls[1]
    assert name == "upload_folder" and kw["repo_id"] == "me/zh-mlm-tiny"
    assert "model.safetensors" in kw["files"] and "README.md" in kw["files"]
    assert not any("token" in f.lower() and f != "tokenizer.json" and f != "tokenizer_config.json" for f in kw["files"])


def test_no_network_gives_clear_error_and_keeps_folder(tmp_path, monkeypatch, capsys):
    export = make_run(tmp_path)
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
    rc = main([str(tmp_path / "pretrain" / "mlm"), "--repo-id", "me/x", "--push", "--out", str(tmp_path / "pub2")])
    err = capsys.readouterr()
    assert rc == 2 and "could not push" in err.err and "hf_secret" not in err.err + err.out
    assert (tmp_path / "pub2" / "model.safetensors").is_file()


def test_run_folder_publishes_every_model(tmp_path):
    make_run(tmp_path, "encoder", "mlm")
    (tmp_path / "pretrain" / "ntp").mkdir()  # a second model in the same run
    export2 = tmp_path / "pretrain" / "ntp" / "export"
    import shutil
    shutil.copytree(tmp_path / "pretrain" / "mlm" / "export", export2)
    assert len(find_exports(tmp_path)) == 2
    assert main([str(tmp_path), "--repo-id", "me/x"]) == 2  # needs {model}
    assert main([str(tmp_path), "--repo-id", "me/{run}-{model}"]) == 0
    assert (tmp_path / "publish" / "mlm" / "README.md").is_file()
    assert (tmp_path / "publish" / "ntp" / "README.md").is_file()


def test_card_reads_the_corpus_stage_stats_layout(tmp_path):
    """The corpus stage writes by_lang / by_source with kept_docs / kept_chars."""
    export = make_run(tmp_path)
    (tmp_path / "corpus" / "stats.json").write_text(json.dumps({
        "by_lang": {"zh": {"docs": 7, "chars": 700}, "en": {"docs": 2, "chars": 90}},
        "by_source": {"pd1998": {"kept_docs": 7, "kept_chars": 700, "licence": "research use only"},
                      "english": {"kept_docs": 2, "kept_chars": 90, "licence": "PSF"}},
        "licences": {"pd1998": "research use only", "english": "PSF"},
    }))
    out = build_folder(export, tmp_path / "pub", "me/x")
    card = (out / "README.md").read_text(encoding="utf-8")
    fm = parse_front_matter(card)
    assert fm["language"] == ["en", "zh"] and fm["datasets"] == ["english", "pd1998"]
    assert "| pd1998 | 7 | 700 | research use only |" in card
    assert "| zh | 7 | 700 |" in card


def test_sharded_weights_publish_with_their_index(tmp_path):
    from transformers import AutoModelForMaskedLM

    export = make_run(tmp_path)
    m = AutoModelForMaskedLM.from_pretrained(export)
    (export / "model.safetensors").unlink()
    m.save_pretrained(export, max_shard_size="20KB")  # model-0000k-of-0000n.safetensors + index
    assert (export / "model.safetensors.index.json").is_file()
    out = build_folder(export, tmp_path / "pub", "me/x")
    assert (out / "model.safetensors.index.json").is_file()
    again = AutoModelForMaskedLM.from_pretrained(out)
    for (k, a), (_, b) in zip(m.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
