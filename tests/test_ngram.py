"""ERNIE-Gram lexicon: t-test / PMI scoring, save/load, forward maximum matching."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import UserError
from tokenization.ngram import Lexicon, build_lexicon, count_ngrams, max_match, score_ngrams


def _lex():
    return Lexicon([(10, 11), (10, 11, 12), (20, 21), (12, 13)], "char", 3)


def test_max_match_forward_longest():
    ids = np.array([10, 11, 12, 13, 20, 21, 5, 10, 11])
    ul, ug = max_match(ids, _lex())
    assert ul.tolist() == [3, 0, 0, 1, 2, 0, 1, 2, 0]
    assert ug.tolist() == [1, -1, -1, -1, 2, -1, -1, 0, -1]
    assert ul.dtype == np.uint8 and ug.dtype == np.int32
    assert int(ul.sum()) == len(ids)


def test_max_match_respects_word_boundaries():
    ids = np.array([10, 11, 12, 13])
    ws = np.array([1, 0, 1, 0])  # words: (10 11) (12 13)
    ul, ug = max_match(ids, _lex(), ws)
    assert ul.tolist() == [2, 0, 2, 0] and ug.tolist() == [0, -1, 3, -1]
    ws2 = np.array([1, 1, 0, 0])  # 10 | 11 12 13: no unit may start inside or cut a word
    ul, _ = max_match(ids, _lex(), ws2)
    assert ul.tolist() == [1, 1, 1, 1]


def test_max_match_edge_cases():
    ul, ug = max_match(np.array([], np.int64), _lex())
    assert len(ul) == len(ug) == 0
    ul, ug = max_match(np.array([10]), _lex())
    assert ul.tolist() == [1] and ug.tolist() == [-1]


def test_tstat_prefers_collocations_and_pmi_option():
    rng = np.random.default_rng(0)
    docs = []
    for _ in range(200):
        x = rng.integers(30, 60, size=40)
        x[5], x[6] = 7, 8  # 7 8 always together: a collocation
        docs.append((x, np.ones(len(x), np.uint8)))
    grams, uni, total = count_ngrams(docs, 3, excluded={0, 1, 2, 3, 4})
    best = score_ngrams(grams, uni, total, "tstat", min_count=5, top_k=5)
    assert best[0][0] == (7, 8)
    pmi = score_ngrams(grams[:3], uni, total, "pmi", min_count=5, top_k=5)  # bigrams only
    assert pmi[0][0] == (7, 8)
    with pytest.raises(UserError):
        score_ngrams(grams, uni, total, "chi2", 1, 5)


def test_ngrams_skip_excluded_and_document_ends():
    docs = [(np.array([7, 8]), np.array([1, 1])), (np.array([9, 7]), np.array([1, 1])),
            (np.array([7, 1, 8]), np.array([1, 1, 1]))]
    grams, _, _ = count_ngrams(docs, 3, excluded={1})
    assert grams[2] == {(7, 8): 1, (9, 7): 1}  # no (8, 9) across documents, nothing with [UNK]
    grams, _, _ = count_ngrams([(np.array([7, 8, 9]), np.array([1, 0, 1]))], 3, set(), within_words=True)
    assert set(grams[2]) == {(7, 8)} and not grams[3]


def test_save_load_roundtrip(tmp_path):
    docs = [(np.array([7, 8, 9, 7, 8, 9]), np.ones(6, np.uint8))] * 5
    lex = build_lexicon(docs, "char", 3, 10, 2, "tstat", {0, 1}, lambda g: "".join(chr(0x4E00 + i) for i in g))
    lex.save(tmp_path)
    back = Lexicon.load(tmp_path)
    assert back.ngrams == lex.ngrams and back.max_n == 3 and back.base_kind == "char"
    for i, g in enumerate(lex.ngrams):
        assert back.id_of(g) == i
    assert back.id_of((1, 2, 3)) is None
    (tmp_path / "lexicon.tsv").write_text("id\tn\tids\tsurface\tcount\tscore\n0\t2\t7 8\n", encoding="utf-8")
    with pytest.raises(UserError, match="lexicon.tsv:2"):
        Lexicon.load(tmp_path)


def _random_docs(rng, n_docs, vocab, zipf=1.3):
    docs = []
    for _ in range(n_docs):
        n = int(rng.integers(0, 40))
        ids = np.minimum(rng.zipf(zipf, n), len(vocab)) - 1
        docs.append((vocab[ids], (rng.random(n) < 0.6).astype(np.uint8)))
    return docs


@pytest.mark.parametrize("within_words, base, max_n", [(False, 64, 3), (True, 64, 4), (False, 70_000, 4)])
def test_streamed_counts_give_the_in_memory_lexicon(tmp_path, within_words, base, max_n):
    """Parts counted in small chunks, saved in hash buckets and reduced bucket by bucket give the
    same lexicon (n-grams, counts, scores, order) as counting every token at once. base 70,000
    with n = 4 takes the byte-key path (70,000**4 > 2**63)."""
    from tokenization.ngram import NgramCounter, lexicon_from_scored, reduce_counts

    rng = np.random.default_rng(7)
    vocab = np.arange(base - 40, base) if base > 1000 else np.arange(base)
    docs = _random_docs(rng, 600, vocab)
    excluded = {int(vocab[3]), int(vocab[17])}
    surface = lambda g: " ".join(map(str, g))  # noqa: E731
    for score, min_count in (("tstat", 2), ("pmi", 3)):
        ref = build_lexicon(iter(docs), "char", max_n, 150, min_count, score, excluded, surface, within_words)
        parts = []
        for k, part in enumerate((docs[:250], docs[250:251], docs[251:])):  # three tasks
            c = NgramCounter(max_n, excluded, base, within_words, chunk_tokens=97, max_keys=50)
            for ids, ws in part:
                c.add(ids, ws)
            parts.append(tmp_path / f"{score}-{k}.npz")
            c.save(parts[-1], buckets=5)
        got = lexicon_from_scored(reduce_counts(parts, score, min_count, 150), "char", max_n, surface)
        assert len(ref) == 150
        assert got.ngrams == ref.ngrams and got.counts == ref.counts and got.scores == ref.scores
        assert got.surfaces == ref.surfaces
