"""A tiny run folder made by the stages' own code, for the publishing and pipeline tests.

``tiny_run(root)`` writes ``root/runs/t/`` with

* ``corpus/`` -- :func:`corpora.build.build` over a small JSONL source of mixed text (its own
  ``stats.json``, shards of normalised text);
* ``vocab/{char,sgt}/`` -- :func:`tokenization.vocab_build.main_vocab` (a cased char vocabulary, so
  the decoder keeps case; an SGT vocabulary);
* ``pretrain/NAME/{config.yaml,export/}`` -- the pre-training stage's config writer and
  :func:`pretrain.export.save_export` over freshly initialised tiny models (no training: the tests
  check packaging, not quality): ``mlm`` (char), ``mlm_sgt`` (SGT MLM, custom tokenizer code),
  ``ntp`` (char decoder), ``amber`` and ``hi_mvp`` (two views: char + SGT, custom modelling code),
  ``al_mvp`` (reading a: a stock SGT BERT plus ``char_decoder.safetensors``);
* ``finetune/{config.yaml,report/results.json}`` -- the fine-tuning stage's config and report
  writers (:func:`finetune.report.build_results`, :func:`finetune.report.write_report`), task kinds
  and metrics from the registered task loaders and kinds.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

# 20 mixed strings: Chinese, Cantonese, English, digits, full-width forms, emoji, URLs, tabs, accents
MIXED = [
    "我们在北京大学学习中文，今天天气很好。",
    "佢哋今日唔得閒，話聽日先嚟搵你傾吓。",
    "The model reads Chinese text and predicts the next token.",
    "１９９８年１月１日，人民日报发表新年献词。",
    "价格是１２３４５元，折扣ＡＢＣ活动。",
    "请访问 https://example.com/path?q=中文&lang=zh 获取更多信息。",
    "我爱Python编程，also JavaScript and C++ 😀。",
    "Café naïve résumé über — accents stay.",
    "数字2024年3月15日和电话010-12345678。",
    "制表符\t分隔\t的\t文字。",
    "全角空格　在这里，还有ｅｍａｉｌ：test@example.org。",
    "香港嘅天氣好熱，我哋去飲茶啦！",
    "深度学习模型需要大量的训练数据和计算资源。",
    "GitHub 上有很多开源项目，例如 transformers 和 tokenizers。",
    "他说：“明天见！”然后就走了……",
    "2008年北京奥运会开幕式在国家体育场举行。",
    "emoji 🎉🚀 和符号 #hashtag @user 都要处理。",
    "中华人民共和国成立于1949年10月1日。",
    "Hello, World! 你好，世界！",
    "政府宣布从下个月起调整政策，以支持经济发展。",
]


def _corpus(run_root: Path) -> None:
    from corpora.build import build
    from corpora.config import CorpusConfig
    from pipeline.config import load_config

    src = run_root.parent / "in" / "docs.jsonl"
    src.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "w", encoding="utf-8") as f:
        for i in range(60):  # documents of 4 distinct mixed lines each, numbered so none is a duplicate
            lines = [MIXED[(i * 7 + k) % len(MIXED)] for k in range(4)]
            f.write(json.dumps({"text": f"第{i}篇：" + "\n".join(lines)}, ensure_ascii=False) + "\n")
    cfg_p = run_root.parent / "corpus.yaml"
    cfg_p.write_text(yaml.safe_dump({
        "run": run_root.name, "runs_root": str(run_root.parent), "workers": 1,
        "sources": [{"type": "jsonl", "path": str(src), "label": "mixed", "licence": "test data (CC0)"},
                    {"type": "builtin", "builtin": "reviews", "max_docs": 40, "stride": 7}],
        "dedup": {"near": False}, "split": {"valid_fraction": 0.2},
    }, allow_unicode=True), encoding="utf-8")
    build(load_config(CorpusConfig, cfg_p, []))


def _vocab(run_root: Path) -> None:
    from pipeline.config import load_config
    from tokenization.config import TokenizationConfig
    from tokenization.vocab_build import main_vocab

    cfg = load_config(TokenizationConfig, None, [
        f"runs_root={run_root.parent}", f"run={run_root.name}", "kinds=[char,sgt]", "char.vocab_size=1500",
        "char.lowercase=false", "sgt.vocab_size=900", "sgt.min_char_count=1", "metrics.pd_lines=20",
        "metrics.ner_sentences=20", "metrics.bpe_baseline=false"])
    assert main_vocab(cfg) == 0


MODELS = {  # name -> (config file, overrides)
    "mlm": ("mlm-tiny.yaml", []),
    "mlm_sgt": ("mlm_sgt-tiny.yaml", []),
    "ntp": ("ntp-tiny.yaml", []),
    "amber": ("amber-tiny.yaml", ["objective_options.coarse_kind=sgt", "data.extra_kinds=[sgt]"]),
    "hi_mvp": ("hi_mvp-tiny.yaml", ["model.num_layers=2"]),
    "al_mvp": ("al_mvp-tiny.yaml", []),  # reading a: a stock SGT BERT + char_decoder.safetensors
}


def _pretrain(run_root: Path, name: str) -> Path:
    import torch

    from pipeline.config import load_config, save_config
    from pretrain.config import PretrainConfig
    from pretrain.data import build_context
    from pretrain.export import save_export
    from pretrain.objectives.base import build_objective

    file, extra = MODELS[name]
    cfg = load_config(PretrainConfig, REPO / "configs" / "pretrain" / file, [
        f"runs_root={run_root.parent}", f"run={run_root.name}", f"name={name}", "model.num_layers=1",
        "model.hidden_size=32", "model.num_heads=2", "model.intermediate_size=64", *extra])
    out = run_root / "pretrain" / name
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    ctx = build_context(cfg)
    torch.manual_seed(0)
    obj = build_objective(cfg.objective, cfg.objective_options, ctx).eval()
    return save_export(obj, out / "export", ctx, {"steps": 2, "tokens_seen": 8192, "train_seconds": 1.5,
                                                  "final_eval": {"loss": 7.25}, "name": name})


def _finetune(run_root: Path, exports: dict[str, Path]) -> None:
    from finetune.config import FinetuneConfig
    from finetune.kinds.base import get_kind
    from finetune.report import build_results, write_report
    from finetune.tasks import task_kind
    from pipeline.config import dump_config, load_config, save_config

    out = run_root / "finetune"
    cfg = load_config(FinetuneConfig, None, [f"runs_root={run_root.parent}", f"run={run_root.name}",
                                             "seeds=[1,2]", "tasks=[{name: sentiment}, {name: msra_ner}, "
                                             "{name: tnews, hub: true}, {name: cmrc2018, hub: true}]"])
    save_config(cfg, out / "config.yaml")
    task_meta = {t.name: {"metric": get_kind(task_kind(t.name)).main_metric, "kind": task_kind(t.name)}
                 for t in cfg.tasks}
    models = [{"name": n, "dir": str(d), "random_init": False} for n, d in exports.items()]
    models += [{"name": f"{n}-random", "dir": str(d), "random_init": True} for n, d in exports.items()]
    scores = {(m["name"], t): [50.0 + 2 * i + (j if not m["random_init"] else -5.0) for j in range(2)]
              for i, t in enumerate(task_meta) for m in models}
    res = build_results(models, task_meta, cfg.seeds, models[0]["name"], scores)
    write_report(out / "report", res, {}, dump_config(cfg))


def tiny_run(root: Path, models: tuple[str, ...] = tuple(MODELS)) -> Path:
    """``root/runs/t``: corpus, vocabularies, the exports named in ``models``, a fine-tuning report."""
    run_root = Path(root) / "runs" / "t"
    _corpus(run_root)
    _vocab(run_root)
    exports = {name: _pretrain(run_root, name) for name in models}
    _finetune(run_root, exports)
    return run_root
