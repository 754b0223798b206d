"""Alignment of two token streams by cumulative characters (tokenization/align.py)."""

from __future__ import annotations

import numpy as np
import pytest

from tokenization.align import (boundaries, char_to_token, common_boundaries, map_spans, token_spans,
                                tokens_in_chars)
from test_shards_helpers import HARD, built_run, real_texts


def test_map_spans_small_cases():
    # text "abcdef": a = per character, b = "ab" "cde" "f"
    a = np.array([1, 1, 1, 1, 1, 1])
    b = np.array([2, 3, 1])
    assert map_spans(a, b).tolist() == [[0, 2], [2, 5], [5, 6]]
    assert map_spans(b, a).tolist() == [[0, 1], [0, 1], [1, 2], [1, 2], [1, 2], [2, 3]]
    assert char_to_token(b).tolist() == [0, 0, 1, 1, 1, 2]
    assert common_boundaries(a, b).tolist() == [0, 2, 5, 6]
    # crossing boundaries: a = "abc" "def", b = "ab" "cd" "ef"
    a2, b2 = np.array([3, 3]), np.array([2, 2, 2])
    assert map_spans(a2, b2).tolist() == [[0, 1], [0, 2], [1, 2]]
    assert common_boundaries(a2, b2).tolist() == [0, 6]
    assert tokens_in_chars(b2, 2, 4) == (1, 2)


def test_zero_length_tokens_belong_to_the_character_before():
    # a byte-fallback style stream: the 2nd character is 3 tokens (1, 0, 0)
    a = np.array([1, 1, 0, 0, 1])
    b = np.array([2, 1])
    spans = map_spans(a, b)
    assert spans.tolist() == [[0, 4], [4, 5]]
    assert char_to_token(a).tolist() == [0, 1, 4]
    start, end = token_spans(a)
    assert start.tolist() == [0, 1, 2, 2, 2] and end.tolist() == [1, 2, 2, 2, 3]
    assert boundaries(a).tolist() == [0, 1, 2, 3]
    # a zero-length token of b gets an empty range
    assert map_spans(np.array([1, 1]), np.array([1, 0, 1])).tolist() == [[0, 1], [1, 1], [1, 2]]


def test_different_texts_are_refused():
    with pytest.raises(ValueError):
        map_spans(np.array([1, 2]), np.array([4]))


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    from tokenization.vocab import load_token_encoder

    root = built_run(tmp_path_factory)
    return {k: load_token_encoder(root / "t" / "vocab" / k) for k in ("char", "sgt")}


def test_alignment_on_real_text_with_latin_and_digits(encoders):
    from tokenization.segment import Segmenter

    seg = Segmenter()
    pd, rev = real_texts(60, 60)
    texts = pd[:40] + [r for r in rev if any(c.isascii() and c.isalnum() for c in r)][:20] + HARD
    assert any(any(c.isdigit() for c in t) for t in texts) and any(any(c.isalpha() and c.isascii() for c in t) for t in texts)
    n_multi = 0
    for text in texts:
        words = seg.cut(text)
        c_ids, c_cl, c_ws = encoders["char"].encode_words(words)
        s_ids, s_cl, s_ws = encoders["sgt"].encode_words(words)
        assert int(c_cl.sum()) == int(s_cl.sum()) == len(text)
        spans = map_spans(c_cl, s_cl)  # for every sgt token, its char-kind tokens
        cs, ce = token_spans(c_cl)
        ss, se = token_spans(s_cl)
        for k in range(len(s_ids)):
            lo, hi = spans[k]
            if se[k] == ss[k]:
                assert lo == hi
                continue
            # the char tokens cover the sgt token's characters, and none is superfluous
            assert cs[lo] <= ss[k] and ce[hi - 1] >= se[k]
            assert ce[lo] > ss[k] and cs[hi - 1] < se[k]
            n_multi += int(hi - lo > 1)
        # at common boundaries both streams cover the same text
        cb = common_boundaries(c_cl, s_cl)
        for c0, c1 in zip(cb[:-1].tolist(), cb[1:].tolist()):
            i0, i1 = tokens_in_chars(c_cl, c0, c1)
            j0, j1 = tokens_in_chars(s_cl, c0, c1)
            assert int(c_cl[i0:i1].sum()) == int(s_cl[j0:j1].sum()) == c1 - c0
        # char -> token index agrees with the spans
        c2t = char_to_token(s_cl)
        assert len(c2t) == len(text)
        for k in range(len(s_ids)):
            assert (c2t[ss[k]:se[k]] == k).all()
    assert n_multi > 100  # SGT tokens spanning several char tokens were exercised


# ---- alignment by visible (non-whitespace) character spans --------------------------------------
def test_newline_before_cjk_word_aligns_by_visible_characters():
    from tokenization.align import align_tokens, owner_range

    # text "好\n喜欢": the char stream drops "\n" and folds it into "喜" (char_len 2, 1 visible);
    # the SGT stream keeps "\n" as a token of its own (no visible character)
    f_cl, f_vis = np.array([[1, 2, 1]]), np.array([[1, 1, 1]])
    c_cl, c_vis = np.array([[1, 1, 2]]), np.array([[1, 0, 2]])
    first, last = align_tokens(f_cl, c_cl, f_vis, c_vis)
    assert first.tolist() == [[0, 2, 2]] and last.tolist() == [[0, 2, 2]]
    # every SGT token that shows a character gets at least one char token; "\n" gets none
    assert owner_range(first, last, 3).tolist() == [[1, 0, 2]]
    # by raw char_len spans (no visible lengths) "喜" would be read from the "\n" token
    assert align_tokens(f_cl, c_cl)[0].tolist() == [[0, 1, 2]]


def test_latin_straddle_aligns_to_every_overlapping_token():
    from tokenization.align import align_tokens, owner_range

    # text "x\nplaying": char "x" "play" "##ing" (newline folded into "play"), SGT "x" "\n" "pla" "ying"
    f_cl, f_vis = np.array([[1, 5, 3]]), np.array([[1, 4, 3]])
    c_cl, c_vis = np.array([[1, 1, 3, 4]]), np.array([[1, 0, 3, 4]])
    first, last = align_tokens(f_cl, c_cl, f_vis, c_vis)
    assert first.tolist() == [[0, 2, 3]] and last.tolist() == [[0, 3, 3]]
    assert owner_range(first, last, 4).tolist() == [[1, 0, 1, 2]]
    # an [UNK] char token (unknown visible length, -1) after a newline is still not tied to "\n"
    first, _ = align_tokens(np.array([[2]]), np.array([[1, 1]]), np.array([[-1]]), np.array([[0, -1]]))
    assert first.tolist() == [[1]]


def test_visible_lengths_of_a_vocabulary(encoders, tmp_path_factory):
    from tokenization.align import load_visible_lengths, visible_lengths

    toks = ["[PAD]", "[UNK]", "[CLS]", "\n", "\u2581", "\u2581喜欢", "##ing", "喜欢", "##", "a\u2581b"]
    assert visible_lengths(toks, special_ids=[0, 2], unknown_ids=[1]).tolist() == [0, -1, 0, 0, 0, 2, 3, 2, 2, 2]
    root = built_run(tmp_path_factory)
    enc = encoders["char"]
    vis = load_visible_lengths(root / "t" / "vocab" / "char")
    assert vis[enc.unk_id] == -1 and all(vis[i] == 0 for k, i in enc.special_ids.items() if k != "unk")
    words = ["喜欢", "\n", "我们", " ", "的", "。", "\n\n", "好"]
    ids, cl, _ = enc.encode_words(words)
    assert enc.unk_id not in ids.tolist()
    # the visible characters of a text are exactly its non-whitespace characters, at the token ends
    assert vis[ids].tolist() == [1, 1, 1, 1, 1, 1, 1] and cl.tolist() == [1, 1, 2, 1, 2, 1, 3]
    sgt = load_visible_lengths(root / "t" / "vocab" / "sgt")
    assert sgt[encoders["sgt"].encode_words(["喜欢"])[0]].sum() == 2
