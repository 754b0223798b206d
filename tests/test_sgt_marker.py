"""The SGT word-start marker option (``sgt.word_start_marker``, the MVP author's variant)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from corpora.normalize import normalize_text
from test_shards_helpers import real_texts
from tokenization.schema import VocabStats
from tokenization.segment import Segmenter
from tokenization.vocab import SPECIAL_IDS, attach_spaces, learn_sgt, load_token_encoder, save_segmented_folder

TEXTS_EXTRA = ["我们喜欢北京。\n他们也喜欢。", "喜欢 Python 和\n\n中文", "  前后有空格  "]


def _build(tmp_path, learner, marker):
    pd, rev = real_texts(300, 100)
    # corpus shards hold the corpus stage's normalised text (the saved tokenizers normalise raw text)
    texts = [normalize_text(t) for t in pd + rev + ["第一行\n第二行\n第三行"] * 3]
    seg = Segmenter()
    units, chars = Counter(), Counter()
    for t in texts:
        units.update(attach_spaces(seg.cut(t)))
        chars.update(t)
    tk = learn_sgt(units, chars, learner, 1500, min_char_count=2, word_start_marker=marker)
    d = tmp_path / f"{learner}-{marker}"
    save_segmented_folder(tk, d, seg, word_fallback=False)
    VocabStats(kind="sgt", size=tk.get_vocab_size(), special_tokens=SPECIAL_IDS, trust_remote_code=True).save(d)
    return d, seg, texts


@pytest.mark.parametrize("learner", ["spm_bpe", "spm_unigram", "wp"])
def test_word_start_marker_marks_every_word(learner, tmp_path):
    from transformers import AutoTokenizer

    d, seg, texts = _build(tmp_path, learner, True)
    enc = load_token_encoder(d)
    tok = AutoTokenizer.from_pretrained(str(d), trust_remote_code=True)
    n_words = 0
    for t in texts[:40] + [normalize_text(t) for t in TEXTS_EXTRA]:
        words = seg.cut(t)
        ids, cl, ws = enc.encode_words(words)
        assert int(cl.astype(np.int64).sum()) == len(t)
        assert tok(t, add_special_tokens=False)["input_ids"] == ids.tolist(), (learner, t)
        pieces = [enc.id_to_token(i) for i in ids]
        for p, w in zip(pieces, ws):
            if p == "[UNK]":
                continue
            # the first piece of every word carries the marker, no other piece does
            assert p.startswith("\u2581") == bool(w), (learner, t, pieces)
            n_words += int(w)
        if 1 not in ids.tolist():  # ▁ is marker and space at once: decoding drops it
            assert tok.decode(ids.tolist()) == t.replace(" ", "")
    assert n_words > 300
    # "▁喜欢" and "喜欢" differ: the ids carry the segmentation
    assert enc.id_to_token(enc.encode_words(["喜欢"])[0][0]).startswith("\u2581")
    # a newline unit is one marked token covering the newline; a bare marker piece (a word whose
    # marked form is not in the vocabulary) covers no character, the piece after it does
    ids, cl, _ = enc.encode_words(["好", "\n", "好"])
    pieces = [enc.id_to_token(i) for i in ids]
    assert "\u2581\n" in pieces and int(cl.sum()) == 3
    assert all((c == 0) == (p == "\u2581") for p, c in zip(pieces, cl.tolist())), (pieces, cl)


def test_default_vocabulary_marks_only_spaces(tmp_path):
    d, seg, _ = _build(tmp_path, "spm_bpe", False)
    enc = load_token_encoder(d)
    pieces = [enc.id_to_token(i) for i in enc.encode_words(seg.cut("我们喜欢北京。\n他们 也喜欢。"))[0]]
    assert not pieces[0].startswith("\u2581") and "".join(pieces).startswith("我们喜欢")
    # the only ▁ is the attached space before "也"
    marked = [p for p in pieces if p.startswith("\u2581")]
    assert len(marked) == 1 and marked[0] in ("\u2581", "\u2581也")
