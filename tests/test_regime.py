"""The regime knobs: encoder architectures (Post-LN BERT, Pre-LN RoBERTa, ModernBERT) through the
``mlm`` objective, the trainer's export and the fine-tuning loader; ``mixed_precision: auto``."""

from __future__ import annotations

import pytest
import torch

from pretrain.config import CPU_AUTO_BF16, TrainConfig, cpu_bf16_features, resolve_mixed_precision
from pretrain.models import ModelConfig, build_encoder, encoder_body, mlm_head
from pretrain.trainer import train
from test_pretrain import tiny_cfg
from test_pretrain_synth import SyntheticLoader

ARCHS = {"bert": "BertForMaskedLM", "roberta_prelayernorm": "RobertaPreLayerNormForMaskedLM",
         "modernbert": "ModernBertForMaskedLM"}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_arch_build_forward_save_load(tmp_path, arch):
    from transformers import AutoModel, AutoModelForMaskedLM

    cfg = ModelConfig(arch=arch, hidden_size=32, num_heads=2, intermediate_size=64, dropout=0.0)
    cfg.validate()
    m = build_encoder(cfg, 128, pad_id=0).eval()
    assert type(m).__name__ == ARCHS[arch]
    x = torch.randint(5, 128, (2, 20))
    with torch.no_grad():
        ref = m(input_ids=x).logits
        # the objective's path: body, then the head on selected positions only
        h = encoder_body(m)(input_ids=x)[0].reshape(-1, 32)[torch.tensor([0, 7, 39])]
        assert torch.allclose(mlm_head(m, h), ref.reshape(-1, 128)[torch.tensor([0, 7, 39])], atol=1e-6)
    m.save_pretrained(tmp_path)
    m2 = AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(m2(input_ids=x).logits, ref)
        body = AutoModel.from_pretrained(tmp_path).eval()
        assert body(input_ids=x).last_hidden_state.shape == (2, 20, 32)


def test_arch_config_choices():
    l, h, a, f = ModelConfig(size="tiny", arch="modernbert").dims()
    from pretrain.models import modernbert_config, roberta_prelayernorm_config

    mc = modernbert_config(ModelConfig(size="tiny", arch="modernbert"), 128)
    assert mc.layer_types == ["full_attention"] * l  # global attention in every layer by default
    # GeGLU halves get 2/3 of the FFN width: the FFN keeps the preset's parameter count
    assert abs(2 * mc.intermediate_size + mc.intermediate_size - 2 * f) <= 24
    mc3 = modernbert_config(ModelConfig(size="small", arch="modernbert", modernbert_local_every=3), 128)
    assert mc3.layer_types == ["full_attention", "sliding_attention", "sliding_attention", "full_attention"]
    rc = roberta_prelayernorm_config(ModelConfig(arch="roberta_prelayernorm", max_position_embeddings=128), 128, pad_id=3)
    assert rc.max_position_embeddings == 128 + 3 + 1
    with pytest.raises(ValueError, match="model.arch"):
        ModelConfig(arch="gpt").validate()


@pytest.mark.parametrize("arch", ["roberta_prelayernorm", "modernbert"])
def test_mlm_trains_and_exports_each_arch(tmp_path, arch):
    """The mlm objective trains a Pre-LN encoder; the export loads with AutoModelForMaskedLM and in
    the fine-tuning suite, whose token budget fits the position table (RoBERTa's offset)."""
    import transformers
    from safetensors.torch import load_model

    from finetune.encoders import load_encoder
    from pretrain.data import build_context
    from pretrain.objectives.base import build_objective

    cfg = tiny_cfg(tmp_path, "mlm", f"model.arch={arch}", "train.steps=3", "train.save_every=0", "train.eval_every=0")
    r = train(cfg, loader_factory=SyntheticLoader)
    reloaded = transformers.AutoModelForMaskedLM.from_pretrained(r.export_dir).eval()
    assert type(reloaded).__name__ == ARCHS[arch]
    obj = build_objective("mlm", {}, build_context(cfg))
    load_model(obj, str(r.out_dir / "checkpoints" / "step-3" / "model.safetensors"))
    obj.eval()
    ids = torch.tensor([[2, 5, 6, 7, 8, 9, 3]])
    with torch.no_grad():
        assert torch.allclose(obj.export()(input_ids=ids).logits, reloaded(input_ids=ids).logits, atol=1e-5)
    enc = load_encoder(r.export_dir)
    full = torch.full((1, enc.max_tokens), 7)
    with torch.no_grad():  # the longest input the suite builds runs (RoBERTa: positions from pad_id + 1)
        assert enc.backbone(input_ids=full, attention_mask=torch.ones_like(full)).last_hidden_state.shape[1] == enc.max_tokens


CPUINFO_AMX = "processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n"
CPUINFO_ZEN4 = "processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n"
CPUINFO_NO_BF16 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f\n"


def test_cpu_bf16_features_from_cpuinfo():
    assert cpu_bf16_features(CPUINFO_AMX) == {"avx512_bf16": True, "amx_bf16": True}
    assert cpu_bf16_features(CPUINFO_ZEN4) == {"avx512_bf16": True, "amx_bf16": False}
    assert cpu_bf16_features("flags\t: fpu sse2\n") == {"avx512_bf16": False, "amx_bf16": False}


def test_resolve_mixed_precision_auto():
    amx, zen4 = cpu_bf16_features(CPUINFO_AMX), cpu_bf16_features(CPUINFO_ZEN4)
    plain = cpu_bf16_features(CPUINFO_NO_BF16)
    both = {"amx_bf16": True, "avx512_bf16": True}
    only_amx = {"amx_bf16": True, "avx512_bf16": False}
    # default pre-training policy: the loss-parity gate is passed, so a CPU with a bf16 instruction set
    # gets bf16 and one without stays fp32; the fine-tuning policy is still off
    from pretrain.config import FINETUNE_CPU_AUTO_BF16

    assert all(CPU_AUTO_BF16.values()) and not any(FINETUNE_CPU_AUTO_BF16.values())
    for feats, want in ((amx, "bf16"), (zen4, "bf16"), (plain, "no")):
        assert resolve_mixed_precision("auto", cuda=False, cpu_features=feats, env={}) == want
        assert resolve_mixed_precision("auto", cuda=False, cpu_features=feats, env={},
                                       cpu_policy=FINETUNE_CPU_AUTO_BF16) == "no"
    # a policy that enables an instruction set picks bf16 exactly where the CPU has it
    assert resolve_mixed_precision("auto", cuda=False, cpu_features=zen4, env={}, cpu_policy=both) == "bf16"
    assert resolve_mixed_precision("auto", cuda=False, cpu_features=zen4, env={}, cpu_policy=only_amx) == "no"
    assert resolve_mixed_precision("auto", cuda=False, cpu_features=amx, env={}, cpu_policy=only_amx) == "bf16"
    assert resolve_mixed_precision("auto", cuda=False, cpu_features=plain, env={}, cpu_policy=both) == "no"
    assert resolve_mixed_precision("auto", cuda=True, cpu_features=plain, env={}) == "bf16"
    assert resolve_mixed_precision("auto", cuda=False, cpu_features=amx, env={"ACCELERATE_MIXED_PRECISION": "no"},
                                   cpu_policy=both) is None
    for explicit in ("no", "bf16", "fp16"):
        assert resolve_mixed_precision(explicit, cuda=False, cpu_features=plain, env={}) == explicit


def test_trainer_and_finetune_resolve_auto(monkeypatch):
    """``auto`` reaches the trainer's accelerator and the fine-tuning loop through one policy."""
    import accelerate

    import pretrain.config as pc
    from finetune.config import FinetuneConfig
    from finetune.train import precision
    from pretrain.trainer import make_accelerator

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    # accelerate keeps one process-wide state: record what the trainer asks for instead
    monkeypatch.setattr(accelerate, "Accelerator", lambda **kw: kw)
    cpu = torch.device("cpu")
    monkeypatch.setattr(pc, "cpu_bf16_features", lambda: cpu_bf16_features(CPUINFO_AMX))
    assert precision(FinetuneConfig(mixed_precision="auto"), cpu) == "no"  # fine-tuning policy: fp32 on a CPU
    assert precision(FinetuneConfig(mixed_precision="bf16"), cpu) == "bf16"
    if not torch.cuda.is_available():  # pre-training policy: bf16 on a CPU that has it
        assert make_accelerator(TrainConfig(mixed_precision="auto"), 1)["mixed_precision"] == "bf16"
    monkeypatch.setitem(pc.CPU_AUTO_BF16, "amx_bf16", False)
    monkeypatch.setitem(pc.CPU_AUTO_BF16, "avx512_bf16", False)
    if not torch.cuda.is_available():
        assert make_accelerator(TrainConfig(mixed_precision="auto"), 1)["mixed_precision"] == "no"
    monkeypatch.setitem(pc.FINETUNE_CPU_AUTO_BF16, "amx_bf16", True)
    assert precision(FinetuneConfig(mixed_precision="auto"), cpu) == "bf16"
    monkeypatch.setattr(pc, "cpu_bf16_features", lambda: cpu_bf16_features(CPUINFO_NO_BF16))
    assert precision(FinetuneConfig(mixed_precision="auto"), cpu) == "no"
    assert precision(FinetuneConfig(mixed_precision="no"), cpu) == "no"
