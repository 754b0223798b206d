"""Corpus steps one by one: normalisation, language id, each filter, sentences, dedup, split."""

import pytest

from corpora.config import CorpusConfig, DedupConfig, FiltersConfig, NormalizeConfig, SourceConfig
from corpora.dedup import shingles
from corpora.filters import FILTER_NAMES, apply_filters, build_filters
from corpora.langid import detect
from corpora.normalize import normalize_text
from corpora.sentences import sentence_spans, split_sentences


# ------------------------------------------------------------------------------ normalisation
def test_normalize_fullwidth_ascii_but_keeps_cjk_punctuation():
    assert normalize_text("Ｐｙｔｈｏｎ３．１１，很好！（真的）") == "Python3.11，很好！（真的）"
    assert normalize_text("价格：１２３元；＃１") == "价格：123元；#1"


def test_normalize_removes_control_and_zero_width_and_folds_space():
    raw = "\ufeff今天\u200b天气\u00ad很好\x07。\r\n\r\n\r\n\r\nNext\t\tline   here  \u3000end "
    assert normalize_text(raw) == "今天天气很好。\n\nNext line here end"


def test_normalize_drops_space_between_cjk_only():
    assert normalize_text("佢 哋 去 咗 ， 我 唔 去 Python 3 好") == "佢哋去咗，我唔去 Python 3 好"


def test_normalize_t2s_option_and_idempotent():
    cfg = NormalizeConfig(t2s=True)
    assert normalize_text("這個關係很簡單", cfg) == "这个关系很简单"
    assert normalize_text("這個關係很簡單") == "這個關係很簡單"
    once = normalize_text(" Ａ  ｂ\u200b\n\n\n\n中 文 ")
    assert normalize_text(once) == once


# ----------------------------------------------------------------------------------- language
@pytest.mark.parametrize("text,lang", [
    ("今天天气很好，我们去北京大学参观。", "zh"),
    ("我們的關係很好，這是一個問題。", "zh"),           # 係 inside 關係 is not Cantonese
    ("佢哋喺度食緊飯，你去唔去啊？", "yue"),
    ("我今日冇去返工，因為我病咗。", "yue"),
    ("The function returns a list of the values that are in the table.", "en"),
    ("Der schnelle braune Fuchs springt über den faulen Hund.", "other"),
    ("日本語のテキストです。", "other"),
    ("한국어 텍스트입니다", "other"),
    ("1234 5678 !!! ...", "other"),
])
def test_langid(text, lang):
    assert detect(text) == lang


# ------------------------------------------------------------------------------------ filters
ZH = "中国人民银行今天宣布，从下个月起下调存款准备金率零点五个百分点，以支持实体经济发展。"
EN = "The quick brown fox jumps over the lazy dog, and the dog does not seem to mind at all."


def _only(name, **kw):
    cfg = FiltersConfig(**kw)
    cfg.disabled = [n for n in FILTER_NAMES if n != name]
    return build_filters(cfg)


@pytest.mark.parametrize("name,kept,rejected", [
    ("language", (ZH, "zh"), ("Der Hund schläft.", "other")),
    ("length", (ZH, "zh"), ("太短了", "zh")),
    ("letters", (ZH, "zh"), ("2023-01-01 12:00:00 | 3.14 | 42 | 17.5 | 8", "other")),
    ("repetition", (ZH, "zh"), ("好好学习天天向上" * 20, "zh")),
    ("repetition", (EN, "en"), ("buy now buy now " * 30, "en")),
    ("garbage", (EN, "en"), ("Caf\u00c3\u00a9 na\u00c3\u00afve \u00e2\u20ac\u0153quoted\u00e2\u20ac\u009d "
                             "\u00c3\u00bcber \u00c3\u00a0 la carte", "en")),
    ("garbage", (ZH, "zh"), ("锟斤拷锟斤拷锟斤拷锟斤拷烫烫烫烫烫烫" + ZH, "zh")),
    ("garbage", (ZH, "zh"), (ZH + "**********************************", "zh")),
    ("garbage", (ZH, "zh"), (ZH + "\ufffd\ufffd\ufffd", "zh")),
    ("mojibake", (ZH, "zh"), (ZH.encode("utf-8").decode("gbk", errors="replace"), "zh")),  # UTF-8 read as GBK
    ("mojibake", (ZH, "zh"), ("浠婂ぉ澶╂皵", "zh")),  # 今天天气
])
def test_each_filter_keeps_one_and_rejects_one(name, kept, rejected):
    filters = _only(name)
    assert apply_filters(filters, *kept) is None
    res = apply_filters(filters, *rejected)
    assert res is not None and res[0] == name and res[1]


def test_repetition_duplicate_lines():
    text = "\n".join(["同一行文字重复出现在这里"] * 4 + ["另外一行"])
    assert apply_filters(_only("repetition"), text, "zh")[1].startswith("duplicated lines")


def test_repetition_coverage_is_a_share():
    from corpora.filters import _top_ngram_frac

    assert _top_ngram_frac("哈" * 100, 4) == 1.0  # overlapping occurrences cover each character once
    assert _top_ngram_frac(["ha"] * 100, 2) == 1.0
    assert _top_ngram_frac("abcabcxyz", 3) == 6 / 9
    reason = apply_filters(_only("repetition"), "哈" * 100, "zh")[1]
    assert reason == "top char 4-gram covers 1.00 > 0.2"


def test_mojibake_filter_has_no_false_positive_on_real_chinese():
    from corpora.builtin import read_builtin
    from corpora.filters import gbk_mojibake
    from corpora.readers import SourceCounters
    import itertools

    f = _only("mojibake")
    docs = [d.text for d in itertools.islice(read_builtin("reviews", SourceCounters()), 0, 2000)]
    assert all(apply_filters(f, t, "zh") is None for t in docs)
    bad = [t.encode("utf-8").decode("gbk", errors="replace") for t in docs if len(t) >= 30]
    caught = sum(apply_filters(f, t, "zh") is not None for t in bad)
    assert caught >= 0.9 * len(bad)  # 97 % of all reviews, measured on 30 k
    assert gbk_mojibake("浠婂ぉ澶╂皵寰堝ソ") == (9, 9, "今天天气很好")


def test_unknown_disabled_filter_is_a_config_error():
    from pipeline.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="unknown filter 'nope'"):
        load_config(CorpusConfig, None, ["filters.disabled=[nope]", "sources=[{type: builtin, builtin: english}]"])


# ---------------------------------------------------------------------------------- sentences
def test_sentence_split_chinese_and_western():
    text = "他说：“你好。”然后走了！真的吗？是的……好吧\nHello world. This is it! OK"
    assert split_sentences(text) == ["他说：“你好。”", "然后走了！", "真的吗？", "是的……", "好吧",
                                     "Hello world.", "This is it!", "OK"]
    for a, b in sentence_spans(text):
        assert text[a:b] == text[a:b].strip() and b > a


# -------------------------------------------------------------------------------------- dedup
def test_cjk_shingles_are_character_ngrams():
    cfg = DedupConfig(char_ngram=3)
    assert shingles("今天 天气好", "zh", cfg) == [s.encode() for s in ["今天天", "天天气", "天气好"]]
    assert shingles("the cat sat on", "en", DedupConfig(word_ngram=2))[0] == b"the cat"


# -------------------------------------------------------------------------------------- split
def test_split_is_a_stable_hash_of_the_id():
    from corpora.build import split_of

    cfg = CorpusConfig(sources=[SourceConfig(type="builtin", builtin="english")])
    cfg.split.valid_fraction = 0.2
    ids = [f"{i:016x}" for i in range(2000)]
    first = [split_of(i, cfg) for i in ids]
    assert first == [split_of(i, cfg) for i in ids]
    share = first.count("valid") / len(first)
    assert 0.15 < share < 0.25


