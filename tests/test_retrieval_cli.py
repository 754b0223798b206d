"""End to end on a tiny saved decoder: the retrieval evaluation (zero-shot + MEAP SFT) and attention diagnostics."""

import json

import pytest
import torch

TEXT = ("中华人民共和国成立以来各地经济建设取得了巨大成就人民群众的生活水平不断提高"
        "科学技术事业蓬勃发展教育文化卫生事业全面进步山水田木火土石金月日风云雨雪花草竹松梅兰"
        "江河湖海天地春夏秋冬东南西北红黄蓝白黑青龙虎马牛羊鸡狗猫鱼鸟问答文档的密码是多少？：。，0123456789")


def save_tiny_decoder(path, layers=1, hidden=32):
    """A char-level WordLevel tokenizer with the pipeline's specials + a tiny Llama, saved like an export."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from pretrain.exports import ExportMeta

    chars = sorted(set(TEXT))
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(path)
    torch.manual_seed(0)
    conf = LlamaConfig(vocab_size=64 * ((len(vocab) + 63) // 64), hidden_size=hidden, num_hidden_layers=layers,
                       num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=512,
                       pad_token_id=0, bos_token_id=2, eos_token_id=3)
    LlamaForCausalLM(conf).save_pretrained(path)
    ExportMeta(objective="meap", model_type="decoder", trust_remote_code=False, final_eval={"loss": 4.1}).save(path)
    return fast


def test_tokenizer_roundtrip(tmp_path):
    tok = save_tiny_decoder(tmp_path / "m")
    from transformers import AutoTokenizer

    back = AutoTokenizer.from_pretrained(tmp_path / "m")
    ids = back("天地的密码是12", add_special_tokens=False)["input_ids"]
    assert len(ids) == 8 and 1 not in ids and back.convert_tokens_to_ids("[MASK]") == 4


def retrieval_config(tmp_path, text: str, body: str):
    f = tmp_path / "text.txt"
    f.write_text(text, encoding="utf-8")
    cfg = tmp_path / "r.yaml"
    cfg.write_text(f"text_file: {f}\n" + body, encoding="utf-8")
    return cfg


def test_retrieval_evaluation_end_to_end(tmp_path, capsys):
    from evaluate.__main__ import main

    model_dir = tmp_path / "runs" / "t" / "pretrain" / "meap" / "export"
    model_dir.mkdir(parents=True)
    save_tiny_decoder(model_dir)
    cfg = retrieval_config(tmp_path, "\n".join([TEXT[:60], TEXT[20:90], TEXT[40:]]) + "\n", """
variants: [none, meap_copy, meap_concat]
sft_items: 8
sft: {budget: steps, steps: 2, batch_size: 4, min_answer_tokens: 1, mask_ratio: 0.5}
needle: {context_lengths: [24, 40], depths: [0.0, 1.0], n_per_cell: 2}
mdqa: {n_docs: 3, doc_tokens: 6, n_per_position: 2}
""")
    store, out = tmp_path / "eval", tmp_path / "out.json"
    args = ["run", "retrieval", "--store", str(store), "--set", f"config={cfg}", "--out", str(out),
            "--models", f"meap={model_dir}"]
    assert main(args) == 0
    m = json.loads(out.read_text())["models"]["meap"]
    assert {"needle_none", "mdqa_none", "needle_tok_meap_copy", "mdqa_meap_concat"} <= set(m)
    assert set(m["cells"]) == {"none", "meap_copy", "meap_concat"}
    assert set(m["cells"]["none"]["needle"]["by_length"]) == {"24", "40"}
    assert set(m["cells"]["none"]["mdqa"]["by_length"]["3"]) == {"0", "1", "2"}
    assert set(m["cells"]["none"]["needle"]["token_by_length"]) == {"24", "40"}
    sft = m["sft"]["meap_copy"]
    assert sft["steps"] == 2 and sft["rows"] == 16 and sft["budget"] == "steps"
    assert sft["masked_rows"] == 8 and sft["labels_after_mask"] >= 8
    assert "none" not in m["sft"]
    assert "needle_meap_copy" in capsys.readouterr().out
    # resumable: a second run reuses the stored result
    rec = store / "retrieval" / "meap" / "seed-0.json"
    mtime = rec.stat().st_mtime_ns
    assert main(args) == 0
    assert rec.stat().st_mtime_ns == mtime
    # ... but not a stale one: other SFT settings re-run the SFT variants, zero-shot stays reused
    work = store / "retrieval" / "meap" / "seed-0.work"
    none_mtime = (work / "none.json").stat().st_mtime_ns
    assert main(args + ["--set", "options.sft.steps=3"]) == 0
    m = json.loads(out.read_text())["models"]["meap"]
    assert m["sft"]["meap_copy"]["steps"] == 3 and m["sft"]["meap_concat"]["steps"] == 3
    assert (work / "none.json").stat().st_mtime_ns == none_mtime
    assert rec.stat().st_mtime_ns != mtime


def test_retrieval_epoch_budget_and_mask_guard(tmp_path, capsys):
    from evaluate.__main__ import main
    from pipeline.errors import main_guard

    model_dir = tmp_path / "m"
    model_dir.mkdir()
    save_tiny_decoder(model_dir)
    cfg = retrieval_config(tmp_path, TEXT + "\n", """
variants: [ntp, meap_copy]
sft_items: 6
sft: {budget: epochs, epochs: 2, batch_size: 4, min_answer_tokens: 1, mask_ratio: 0.25}
needle: {context_lengths: [24], depths: [0.5], n_per_cell: 2}
mdqa: {enabled: false}
""")
    out = tmp_path / "out.json"
    args = ["run", "retrieval", "--store", str(tmp_path / "eval"), "--set", f"config={cfg}", "--models", f"m={model_dir}"]
    assert main(args + ["--out", str(out)]) == 0
    sft = json.loads(out.read_text())["models"]["m"]["sft"]
    # 2 passes over the rows: 6 rows in batches of 4 = 2 steps a pass; meap_copy 12 rows = 3 steps a pass
    assert (sft["ntp"]["rows"], sft["ntp"]["steps"]) == (6, 4) and (sft["meap_copy"]["rows"], sft["meap_copy"]["steps"]) == (12, 6)
    assert sft["ntp"]["epochs"] == 2 and sft["meap_copy"]["epochs"] == 2
    # one mask per 4-token answer, labelled only at the mask: plain ntp under another name -> refused
    capsys.readouterr()
    assert main_guard(main)(args + ["--set", "options.sft.min_masks=1"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "meap_copy would be plain ntp SFT" in err[0] and "Traceback" not in err[0]


def test_retrieval_user_errors(tmp_path, capsys):
    from evaluate.__main__ import main
    from pipeline.errors import main_guard

    cfg = tmp_path / "r.yaml"
    cfg.write_text("variants: [bogus]\n", encoding="utf-8")
    d = tmp_path / "m"
    d.mkdir()
    save_tiny_decoder(d)
    args = ["run", "retrieval", "--store", str(tmp_path / "eval"), "--models", f"m={d}"]
    assert main_guard(main)(args + ["--set", f"config={cfg}"]) == 2
    assert "bogus" in capsys.readouterr().err
    assert main_guard(main)(args + ["--set", f"config={tmp_path / 'nope.yaml'}"]) == 2
    assert "config file not found" in capsys.readouterr().err
    # a model outside runs/RUN/pretrain/NAME/export and no text_file: no filler text
    cfg.write_text("variants: [none]\n", encoding="utf-8")
    assert main_guard(main)(args + ["--set", f"config={cfg}"]) == 2
    assert "no filler text" in capsys.readouterr().err


def test_attention_diag_uniform_attention_exact(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from evaluate.attention import diagnostics

    conf = LlamaConfig(vocab_size=32, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=32, max_position_embeddings=64)
    conf._attn_implementation = "eager"
    model = LlamaForCausalLM(conf).eval()
    for layer in model.model.layers:  # zero queries -> uniform causal attention
        layer.self_attn.q_proj.weight.data.zero_()
    T = 10
    ids = torch.randint(5, 32, (3, T))
    mask = torch.zeros(3, T, dtype=torch.bool)
    mask[:, [2, 5]] = True
    res = diagnostics(model, ids, mask, mask_id=4, batch_size=2)
    # query q sees q+1 keys uniformly; mass on M = |M ∩ [0, q]| / (q + 1), averaged over q >= 2
    expect = sum((1 if q < 5 else 2) / (q + 1) for q in range(2, T)) / (T - 2)
    for cond in ("clean", "masked"):
        for v in res["per_layer"][cond]["mass_on_masked"]:
            assert v == pytest.approx(expect, rel=1e-5)
        for v in res["per_layer"][cond]["var_unmasked"]:
            assert v == pytest.approx(0.0, abs=1e-10)
    assert res["relative_change"]["mass_on_masked"] == pytest.approx(0.0, abs=1e-5)


def test_attention_diag_cli(tmp_path, capsys):
    from evaluate.__main__ import main
    from pipeline.errors import main_guard

    d = tmp_path / "export"
    d.mkdir()
    save_tiny_decoder(d, layers=2)
    text = tmp_path / "t.txt"
    text.write_text(TEXT + "\n" + TEXT[::-1] + "\n", encoding="utf-8")
    out = tmp_path / "diag.json"
    args = ["run", "attention", "--store", str(tmp_path / "eval"), "--set", f"text_file={text}", "--set", "seq_len=40"]
    assert main(args + ["--set", "n_seqs=4", "--out", str(out), "--models", f"m={d}"]) == 0
    res = json.loads(out.read_text())["models"]["m"]
    assert len(res["per_layer"]["masked"]["mass_on_masked"]) == 2
    assert 0 < res["mean"]["mass_on_masked"]["clean"] < 1
    assert res["mass_on_masked_clean"] == res["mean"]["mass_on_masked"]["clean"]
    assert "mass_on_masked" in capsys.readouterr().out
    assert main_guard(main)(args + ["--set", "n_seqs=400", "--models", f"m={d}"]) == 2
    assert "not enough text" in capsys.readouterr().err
    # no random-init baseline for this evaluation: a user error, not a silently ignored flag
    assert main_guard(main)(args + ["--set", "n_seqs=4", "--random-init", "--models", f"m={d}"]) == 2
