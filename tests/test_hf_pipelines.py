"""Published folders work with stock ``transformers`` pipelines, in a fresh process.

Every export kind a run produces (char MLM, SGT MLM, a char decoder, a two-view model) is built by
the stages' own code (``tests/hf_tiny_run.py``), published with ``python -m pretrain.publish``
semantics, then loaded in a subprocess that cannot import this repository:

* char MLM and the decoder: neither the project nor the segmenters (``jieba``, ``rjieba``) are
  importable -- only ``torch`` + ``transformers`` (and their own dependencies);
* SGT MLM and the two-view model: the project is not importable (their tokenizers segment with
  ``rjieba``, shipped code in the folder does the rest).

In the subprocess: ``pipeline("fill-mask")`` returns vocabulary tokens, ``pipeline("text-generation")``
continues the prompt, ``pipeline("feature-extraction")`` runs the two-view model on raw text; 20
mixed strings round-trip through the published tokenizers without ``[UNK]`` for characters the
vocabulary holds after normalisation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import unicodedata
from pathlib import Path

import pytest

from corpora.normalize import _CJK_SPACE_RE, normalize_text
from hf_tiny_run import MIXED
from pretrain.publish import main as publish_main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
PROJECT_MODULES = ["corpora", "tokenization", "pretrain", "finetune", "pipeline", "bench"]
SEGMENTERS = ["jieba", "rjieba"]

# runs in the fresh process: drop the project from sys.path, refuse imports of blocked modules
GUARD = textwrap.dedent("""
    import importlib.abc, json, os, sys
    BLOCKED = set(json.loads(os.environ["HF_TEST_BLOCKED"]))
    REPO = os.environ["HF_TEST_REPO"]
    sys.path[:] = [p for p in sys.path if p and os.path.abspath(p) != REPO and os.path.abspath(p) != os.getcwd()]

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this test (a published model must not need it)")
            return None

    sys.meta_path.insert(0, Block())
    for m in list(sys.modules):
        if m.split(".")[0] in BLOCKED:
            del sys.modules[m]
""")

RUNNER = GUARD + textwrap.dedent("""
    import torch
    from transformers import AutoTokenizer, pipeline

    out = {}
    for name, task, folder, trc in json.loads(sys.argv[1]):
        tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=trc)
        r = {"vocab": sorted(tok.get_vocab()), "unk_id": tok.unk_token_id, "specials": tok.all_special_ids}
        r["roundtrip"] = []
        for s in json.loads(sys.argv[2]):
            ids = tok(s, add_special_tokens=False)["input_ids"]
            r["roundtrip"].append({"text": s, "ids": ids, "tokens": tok.convert_ids_to_tokens(ids),
                                   "decoded": tok.decode(ids)})
        if task == "fill-mask":
            pipe = pipeline("fill-mask", model=folder, trust_remote_code=trc)
            r["fill"] = pipe("我们在北[MASK]学习中文。", top_k=10)
        elif task == "text-generation":
            pipe = pipeline("text-generation", model=folder, trust_remote_code=trc)
            r["prompt_ids"] = tok("我们在北京")["input_ids"]
            r["generated"] = pipe("我们在北京", max_new_tokens=8, do_sample=False)[0]["generated_text"]
        else:
            from transformers import AutoModel

            pipe = pipeline("feature-extraction", model=folder, trust_remote_code=trc)
            feats = pipe("我们在北京学习中文。")
            r["features"] = [len(feats), len(feats[0]), len(feats[0][0])]
            enc = tok("我们在北京学习中文。")
            r["inputs"] = {k: v for k, v in enc.items()}
            r["tokenizer_class"] = type(tok).__name__
            model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
            with torch.no_grad():
                o = model(**tok(["我们在北京学习中文。", "你好"], padding=True, return_tensors="pt"))
            r["batch_states"] = list(o.last_hidden_state.shape)
        out[name] = r
    print("RESULT" + json.dumps(out, ensure_ascii=False))
""")

KINDS = {  # published model -> (pipeline task, trust_remote_code, modules blocked besides the project)
    "mlm": ("fill-mask", False, SEGMENTERS),
    "ntp": ("text-generation", False, SEGMENTERS),
    "mlm_sgt": ("fill-mask", True, []),
    "amber": ("feature-extraction", True, []),
    "hi_mvp": ("feature-extraction", True, []),
    "al_mvp": ("fill-mask", True, []),
}


@pytest.fixture(scope="module")
def published(tiny_hf_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("published")
    assert publish_main([str(tiny_hf_run), "--repo-id", "me/{run}-{model}", "--out", str(out)]) == 0
    return out


def _run_fresh(published: Path, names: list[str], blocked: list[str]) -> dict:
    todo = [[n, KINDS[n][0], str(published / n), KINDS[n][1]] for n in names]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_TEST_REPO=str(REPO),
               HF_TEST_BLOCKED=json.dumps(PROJECT_MODULES + blocked), PYTHONPATH="")
    r = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(todo), json.dumps(MIXED, ensure_ascii=False)],
                       capture_output=True, text=True, env=env, timeout=300, cwd=str(published))
    assert r.returncode == 0, r.stderr[-4000:]
    line = next(x for x in r.stdout.splitlines() if x.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


@pytest.fixture(scope="module")
def results(published):
    out = _run_fresh(published, ["mlm", "ntp"], SEGMENTERS)  # torch + transformers only
    out.update(_run_fresh(published, ["mlm_sgt", "al_mvp", "amber", "hi_mvp"], []))
    return out


def _known(ch: str, vocab: set[str]) -> bool:
    return ch in vocab or f"##{ch}" in vocab or ch.replace(" ", "\u2581") in vocab


@pytest.mark.parametrize("name", list(KINDS))
def test_mixed_strings_round_trip_without_unk(results, name):
    r = results[name]
    vocab = set(r["vocab"])
    covered = 0
    for item in r["roundtrip"]:
        norm = normalize_text(item["text"])
        if all(_known(c, vocab) for c in norm if not c.isspace()):
            covered += 1
            assert r["unk_id"] not in item["ids"], (name, item["text"], item["tokens"])
            dec = item["decoded"]
            if name in ("mlm_sgt", "al_mvp"):
                assert dec == norm, (name, item["text"], dec)  # SGT decoding is exact
            else:  # WordPiece: same characters in order, case kept, CJK joined without spaces
                assert dec.replace(" ", "") == norm.replace(" ", ""), (name, item["text"], dec)
                assert not _CJK_SPACE_RE.search(dec), (name, dec)
    assert covered >= 15, f"{name}: only {covered} of {len(r['roundtrip'])} strings fully in the vocabulary"
    # raw full-width digits are folded, not [UNK]
    fw = next(i for i in r["roundtrip"] if i["text"].startswith("１９９８"))
    assert r["unk_id"] not in fw["ids"][:4]


@pytest.mark.parametrize("name", ["mlm", "mlm_sgt", "al_mvp"])
def test_fill_mask_pipeline_returns_vocabulary_tokens(results, name):
    fill = results[name]["fill"]
    assert len(fill) == 10
    specials = set(results[name]["specials"])
    real = [o for o in fill if o["token"] not in specials]
    assert real, fill  # at least one real token among the top 10 (weights are untrained)
    for o in real:
        assert o["token_str"] and o["sequence"].startswith("我们在北") and o["sequence"].endswith("学习中文。")
        assert unicodedata.normalize("NFC", o["token_str"]).lstrip("#") in o["sequence"].replace(" ", "")


def test_text_generation_continues_the_prompt(results):
    r = results["ntp"]
    assert r["prompt_ids"][0] == 2 and r["prompt_ids"][-1] != 3  # BOS [CLS], no EOS [SEP] after the prompt
    assert r["generated"].startswith("我们在北京") and len(r["generated"]) > len("我们在北京")
    assert " " not in r["generated"][:6]  # CJK joined without spaces


@pytest.mark.parametrize("name", ["amber", "hi_mvp"])
def test_two_view_feature_extraction_from_raw_text(results, published, name):
    """One tokenizer call builds both views; the pipeline and AutoModel run on them."""
    from transformers import AutoTokenizer

    from finetune.adapters_multivocab import load_view_tokenizer

    r = results[name]
    assert r["tokenizer_class"] == "TwoViewTokenizer"
    enc = r["inputs"]
    fine, _ = load_view_tokenizer(published / name, "fine")
    coarse, _ = load_view_tokenizer(published / name, "coarse")
    text = "我们在北京学习中文。"
    assert enc["input_ids"] == fine(text)["input_ids"] and enc["coarse_input_ids"] == coarse(text)["input_ids"]
    n_batch, n_tokens, hidden = r["features"]
    if name == "amber":  # states of the fine view
        assert (n_batch, n_tokens, hidden) == (1, len(enc["input_ids"]), 32)
        assert r["batch_states"][0] == 2
    else:  # hi_mvp: upper (coarse) states; every fine token points into its coarse token
        assert (n_batch, n_tokens, hidden) == (1, len(enc["coarse_input_ids"]), 32)
        idx = enc["coarse_index"]
        assert idx[0] == 0 and idx[-1] == len(enc["coarse_input_ids"]) - 1
        assert all(0 <= i < len(enc["coarse_input_ids"]) for i in idx) and idx == sorted(idx)
        tok = AutoTokenizer.from_pretrained(str(published / name), trust_remote_code=True)
        offsets = coarse(text, return_offsets_mapping=True)["offset_mapping"]
        fine_off = fine(text, return_offsets_mapping=True)["offset_mapping"]
        for j, (a, _) in zip(idx[1:-1], fine_off[1:-1]):
            assert offsets[j][0] <= a < offsets[j][1]
        assert tok(text)["coarse_index"] == idx
        pair = tok(text, "你好")  # the second segment's offsets restart at 0: matched per segment
        assert -1 not in pair["coarse_index"] and pair["coarse_index"] == sorted(pair["coarse_index"])
        assert pair["coarse_index"][-1] == len(pair["coarse_input_ids"]) - 1
        assert len(set(pair["coarse_index"])) == len(pair["coarse_input_ids"])  # every coarse token is used


def test_published_tokenizer_settings(published):
    for name in KINDS:
        cfg = json.loads((published / name / "tokenizer_config.json").read_text(encoding="utf-8"))
        assert cfg["split_special_tokens"] is False, name
    ntp = json.loads((published / "ntp" / "tokenizer.json").read_text(encoding="utf-8"))
    assert [p.get("SpecialToken", p.get("Sequence", {})).get("id") for p in ntp["post_processor"]["single"]] == ["[CLS]", "A"]
    cfg = json.loads((published / "ntp" / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert cfg["bos_token"] == "[CLS]" and cfg["eos_token"] == "[SEP]"


def test_published_folders_are_group_readable(published):
    import stat

    for p in [q for d in published.iterdir() for q in (d, *d.rglob("*"))]:  # (pytest's own tmp folder is 0700)
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode & stat.S_IRGRP, (p, oct(mode))
        if p.is_dir():
            assert mode & stat.S_IXGRP, (p, oct(mode))
    export = Path(json.loads((published / "mlm" / "eval_results.json").read_text())["models"]["mlm"]["dir"])
    for p in [export, *export.iterdir()]:
        assert stat.S_IMODE(p.stat().st_mode) & stat.S_IRGRP, p
