"""Security of loading model folders (docs/reliability.md "Security").

* a crafted folder whose module writes a marker file on import: every loader refuses it without
  the user's opt-in (the marker never appears), and loads it with ``trust_remote_code=True``;
* the project's own multi-vocabulary and segmented-tokenizer classes load from the installed
  package (no flag, nothing executed from the folder); an edited copy counts as foreign code;
* pickle-suffixed weight files are refused up front with one line.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from finetune.encoders import load_encoder
from finetune.testing import make_checkpoint
from pipeline.errors import UserError
from pretrain.exports import ExportMeta, check_folder, load_export, load_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXTS = ["我们喜欢北京", "天安门很好。", "你们去上海"]

EVIL = '''
import os
from pathlib import Path

Path(os.environ["SECURITY_TEST_MARKER"]).write_text("ran", encoding="utf-8")

from transformers import BertConfig, BertForMaskedLM, BertModel


class EvilConfig(BertConfig):
    model_type = "evil_bert"


class EvilModel(BertModel):
    config_class = EvilConfig


class EvilForMaskedLM(BertForMaskedLM):
    config_class = EvilConfig
'''


def _craft(d: Path, model_type: str = "encoder") -> Path:
    """A tiny exported checkpoint whose config's ``auto_map`` points at its own module, and whose
    metadata claims ``trust_remote_code`` (as an attacker's folder would)."""
    make_checkpoint(d, TEXTS, metrics=False)
    (d / "evil_model.py").write_text(EVIL, encoding="utf-8")
    conf = json.loads((d / "config.json").read_text(encoding="utf-8"))
    conf["auto_map"] = {"AutoConfig": "evil_model.EvilConfig", "AutoModel": "evil_model.EvilModel",
                        "AutoModelForMaskedLM": "evil_model.EvilForMaskedLM"}
    (d / "config.json").write_text(json.dumps(conf), encoding="utf-8")
    meta = ExportMeta.load(d)
    meta.trust_remote_code = True
    meta.model_type = model_type
    meta.save(d)
    return d


@pytest.fixture
def marker(tmp_path, monkeypatch):
    m = tmp_path / "marker"
    monkeypatch.setenv("SECURITY_TEST_MARKER", str(m))
    return m


def _loaders():
    from evaluate.retrieval import load_decoder
    from evaluate.attention import load_model
    from evaluate.ngram_recovery import Contiguous
    from evaluate.frozen import FrozenEncoder

    return {"finetune": lambda d: load_encoder(d), "finetune-random-twin": lambda d: load_encoder(d, random_init=True),
            "retrieval": lambda d: load_decoder(d, "cpu", False), "probes": lambda d: FrozenEncoder(d),
            "ngram_eval": lambda d: Contiguous(d), "attention_diag": lambda d: load_model(d)}


@pytest.mark.parametrize("loader", sorted(_loaders()))
def test_crafted_folder_refused_without_opt_in(tmp_path, marker, loader):
    d = _craft(tmp_path / "evil")
    with pytest.raises(UserError, match=r"ships code that would run on loading \(evil_model\.py\).*--trust-remote-code"):
        _loaders()[loader](d)
    assert not marker.exists()


def test_crafted_folder_loads_with_opt_in(tmp_path, marker):
    d = _craft(tmp_path / "evil_ok")
    enc = load_encoder(d, trust_remote_code=True)
    assert marker.read_text(encoding="utf-8") == "ran"
    assert type(enc.backbone).__name__ == "EvilModel"


def test_finetune_cli_refuses_crafted_folder(tmp_path, marker, capsys):
    from finetune.__main__ import main

    d = _craft(tmp_path / "evil_cli")
    capsys.readouterr()  # the fixture's own output
    cfg = tmp_path / "ft.yaml"
    cfg.write_text(f"run: t\nruns_root: {tmp_path / 'runs'}\n", encoding="utf-8")
    rc = main(["--config", str(cfg), "--models", str(d)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "evil_model.py" in err[0] and "--trust-remote-code" in err[0]
    assert not marker.exists()


def test_tokenizer_auto_map_refused(tmp_path, marker):
    """An ``auto_map`` naming a module the folder does not even ship is named as well."""
    d = make_checkpoint(tmp_path / "tok", TEXTS, metrics=False)
    tc = json.loads((d / "tokenizer_config.json").read_text(encoding="utf-8"))
    tc["auto_map"] = {"AutoTokenizer": [None, "evil_tok.EvilTokenizer"]}
    (d / "tokenizer_config.json").write_text(json.dumps(tc), encoding="utf-8")
    with pytest.raises(UserError, match=r"\(evil_tok\.py\)"):
        load_tokenizer(d)
    with pytest.raises(UserError, match=r"\(evil_tok\.py\)"):
        load_encoder(d)


def test_stray_code_file_refused(tmp_path):
    """A ``.py`` file that no ``auto_map`` names is refused too (the folder ships code)."""
    d = make_checkpoint(tmp_path / "stray", TEXTS, metrics=False)
    (d / "sub").mkdir()
    (d / "sub" / "helper.py").write_text("x = 1\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"sub/helper\.py"):
        check_folder(d)
    assert check_folder(d, trust_remote_code=True).foreign == ["sub/helper.py"]


# ---- the project's own classes --------------------------------------------------------------------


@pytest.fixture(scope="module")
def amber_export(tmp_path_factory):
    """An ``amber`` export written by ``save_export`` (it ships ``modeling_multivocab.py``)."""
    from pretrain.export import save_export
    from pretrain.objectives.base import build_objective
    from test_multivocab_data import context
    from test_multivocab_export import WORDS, _make_vocab

    root = tmp_path_factory.mktemp("sec-vocab")
    _make_vocab(root / "char", "char", sorted(set("".join(WORDS))), ".")
    _make_vocab(root / "sgt", "sgt", WORDS, "我们|喜欢|北京|天安门|.")
    torch.manual_seed(0)
    ctx = context(primary="char", char_size=16, sgt_size=14, paths={"char": str(root / "char"), "sgt": str(root / "sgt")})
    ob = build_objective("amber", {"coarse_kind": "sgt"}, ctx).eval()
    return save_export(ob, root / "amber", ctx, {"steps": 1})


def test_project_multivocab_export_loads_from_the_package(amber_export):
    d = amber_export
    assert json.loads((d / "config.json").read_text())["auto_map"]  # the folder does ship code
    enc = load_encoder(d)  # no flag
    assert type(enc.model).__module__ == "pretrain.remote.modeling_multivocab"
    assert not [m for m in sys.modules if m.startswith("transformers_modules") and "amber" in m]
    ex = load_export(d, task="masked_lm")
    assert type(ex.model).__name__ == "AmbertForMaskedLM" and ex.meta.objective == "amber"
    assert ex.special_ids["cls"] == 2 and ex.meta.extra["view_tokenizers"] == {"fine": "fine.", "coarse": "coarse."}


def test_edited_project_file_is_foreign_code(amber_export, tmp_path, marker):
    d = tmp_path / "amber_edited"
    shutil.copytree(amber_export, d)
    f = d / "modeling_multivocab.py"
    f.write_text(f.read_text(encoding="utf-8") + "\nimport os\nfrom pathlib import Path\n"
                 "Path(os.environ['SECURITY_TEST_MARKER']).write_text('ran')\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"\(modeling_multivocab\.py\)"):
        load_encoder(d)
    assert not marker.exists()
    enc = load_encoder(d, trust_remote_code=True)  # consent: the folder's own copy runs
    assert marker.exists() and type(enc.model).__module__ != "pretrain.remote.modeling_multivocab"


def test_segmented_tokenizer_loads_from_the_package(tmp_path):
    """An SGT vocabulary folder (``tokenization_segmented.py`` + ``auto_map``) loads without the
    flag through the installed class, with the pipeline's own ids."""
    from tokenization.schema import VocabStats
    from tokenization.segment import Segmenter
    from tokenization.vocab import SPECIAL_IDS, attach_spaces, learn_sgt, load_token_encoder, save_segmented_folder

    texts = ["我们喜欢北京天安门。", "北京很好，我们去北京。", "你们喜欢上海吗？", "Hello world 北京"] * 3
    seg = Segmenter()
    units, chars = Counter(), Counter()
    for t in texts:
        units.update(attach_spaces(seg.cut(t)))
        chars.update(t)
    tk = learn_sgt(units, chars, "wp", 120, min_char_count=1)
    d = tmp_path / "sgt"
    save_segmented_folder(tk, d, seg, word_fallback=False)
    VocabStats(kind="sgt", size=tk.get_vocab_size(), special_tokens=SPECIAL_IDS, trust_remote_code=True).save(d)
    tok = load_tokenizer(d)
    assert type(tok).__module__ == "tokenization.remote.tokenization_segmented"
    enc = load_token_encoder(d)
    for t in texts[:4]:
        assert tok(t, add_special_tokens=False)["input_ids"] == enc.encode_words(seg.cut(t))[0].tolist()


# ---- pickles ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("keep_safetensors", [False, True])
def test_pickle_weights_refused_up_front(tmp_path, keep_safetensors):
    from transformers import AutoModelForMaskedLM

    d = make_checkpoint(tmp_path / "pkl", TEXTS, metrics=False)
    # the legacy pickle format of a Hugging Face folder (transformers 5 no longer writes it)
    torch.save(AutoModelForMaskedLM.from_pretrained(d).state_dict(), d / "pytorch_model.bin")
    assert (d / "pytorch_model.bin").is_file()
    if not keep_safetensors:
        (d / "model.safetensors").unlink(missing_ok=True)
    with pytest.raises(UserError, match=r"refusing pickle-based file\(s\) pytorch_model\.bin"):
        load_encoder(d)
    with pytest.raises(UserError, match=r"pytorch_model\.bin"):
        load_export(d, trust_remote_code=True)  # consent to code is not consent to unpickle


def test_export_meta_round_trip_and_types(tmp_path):
    m = ExportMeta(objective="mlm", model_type="encoder", steps=3, extra={"seq_len": 64})
    m.save(tmp_path)
    back = ExportMeta.load(tmp_path)
    assert back == m and back.to_dict()["seq_len"] == 64 and back.adapter == "hf"
    (tmp_path / "pretrain_meta.json").write_text(json.dumps({"steps": "many"}), encoding="utf-8")
    with pytest.raises(UserError, match="field 'steps'"):
        ExportMeta.load(tmp_path)
    assert ExportMeta.load(tmp_path / "nothing").path is None


def _cli(name):
    from pipeline.errors import main_guard

    if name == "attention_diag":
        from evaluate.__main__ import main
        return lambda d, extra, tmp: main_guard(main)(["run", "attention", "--models", str(d), "--store", str(tmp / "store"),
                                                       "--set", f"text_file={tmp / 't.txt'}"] + extra)
    if name == "ngram_eval":
        from evaluate.__main__ import main
        return lambda d, extra, tmp: main_guard(main)(["run", "ngram_recovery", "--models", str(d), "--store",
                                                       str(tmp / "store"), "--set", f"shards={tmp / 'no-shards'}"] + extra)
    from evaluate.__main__ import main

    def run(d, extra, tmp):
        (tmp / "r.yaml").write_text(f"text_file: {tmp / 't.txt'}\n", encoding="utf-8")
        return main_guard(main)(["run", "retrieval", "--models", str(d), "--store", str(tmp / "store"),
                                 "--set", f"config={tmp / 'r.yaml'}"] + extra)
    return run


@pytest.mark.parametrize("name", ["attention_diag", "ngram_eval", "retrieval"])
def test_evaluation_clis_refuse_without_the_flag(tmp_path, marker, capsys, name):
    d = _craft(tmp_path / "evil")
    (tmp_path / "t.txt").write_text("我们喜欢北京\n" * 50, encoding="utf-8")
    capsys.readouterr()  # the fixture's own output
    rc = _cli(name)(d, [], tmp_path)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "(evil_model.py)" in err[0] and not marker.exists()


@pytest.mark.parametrize("name", ["attention_diag", "ngram_eval"])
def test_evaluation_clis_pass_the_flag_on(tmp_path, marker, capsys, name):
    """With ``--trust-remote-code`` the folder's module is imported (the marker appears); the run then
    stops later for its own reasons (no causal-LM class, no shards) with exit code 2."""
    # a folder name of its own: transformers caches an imported folder module by the folder's name
    d = _craft(tmp_path / f"evil_flag_{name}", "decoder" if name == "attention_diag" else "encoder")
    (tmp_path / "t.txt").write_text("我们喜欢北京\n" * 50, encoding="utf-8")
    rc = _cli(name)(d, ["--trust-remote-code"], tmp_path)
    capsys.readouterr()
    assert rc == 2 and marker.exists()
