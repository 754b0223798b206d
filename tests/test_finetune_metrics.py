"""Metrics on hand-made predictions: entity F1 edge cases, CWS word F1, CMRC EM/F1, accuracy."""

import pytest

from finetune.metrics import accuracy, entity_prf, span_em_f1, span_scores, tag_scheme


def test_accuracy():
    assert accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 50.0
    assert accuracy([], []) == 0.0


def test_entity_exact_match_bio():
    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    r = entity_prf(gold, gold)
    assert r == {"precision": 100.0, "recall": 100.0, "f1": 100.0}


def test_entity_partial_overlap_counts_as_wrong():
    gold = [["B-PER", "I-PER", "I-PER", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"]]  # shorter span
    r = entity_prf(gold, pred)
    assert r["precision"] == 0.0 and r["recall"] == 0.0 and r["f1"] == 0.0


def test_entity_type_mismatch_counts_as_wrong():
    gold = [["B-PER", "I-PER", "O", "B-LOC", "I-LOC"]]
    pred = [["B-ORG", "I-ORG", "O", "B-LOC", "I-LOC"]]
    r = entity_prf(gold, pred)
    assert r["precision"] == pytest.approx(50.0)
    assert r["recall"] == pytest.approx(50.0)
    assert r["f1"] == pytest.approx(50.0)


def test_entity_empty_predictions():
    gold = [["B-PER", "I-PER", "O"], ["O", "B-LOC", "O"]]
    pred = [["O", "O", "O"], ["O", "O", "O"]]
    r = entity_prf(gold, pred)
    assert r == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_entity_bmes_and_illformed_prediction():
    gold = [["B-LOC", "M-LOC", "E-LOC", "S-PER", "O"]]
    assert tag_scheme(gold[0]) == "BMES"
    # the LOC span is right; the PER single is predicted as an unclosed B- (ill-formed under strict)
    pred = [["B-LOC", "M-LOC", "E-LOC", "B-PER", "O"]]
    r = entity_prf(gold, pred)
    assert r["precision"] == pytest.approx(100.0)  # the ill-formed span is not a predicted entity
    assert r["recall"] == pytest.approx(50.0)


def test_word_segmentation_f1():
    # gold: 中国 | 人民 | 好 ; predicted: 中国人 | 民 | 好
    gold = [["B", "E", "B", "E", "S"]]
    pred = [["B", "M", "E", "S", "S"]]
    r = entity_prf(gold, pred)
    assert r["precision"] == pytest.approx(100 / 3)
    assert r["recall"] == pytest.approx(100 / 3)


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError):
        entity_prf([["O", "O"]], [["O"]])


def test_cmrc_em_f1():
    assert span_em_f1("北京", ["北京"]) == (1.0, 1.0)
    assert span_em_f1("北京。", ["北京"]) == (1.0, 1.0)  # punctuation ignored
    em, f1 = span_em_f1("北京市", ["北京"])
    assert em == 0.0 and f1 == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert span_em_f1("上海", ["北京", "上海"]) == (1.0, 1.0)  # best of several gold answers
    assert span_em_f1("", ["北京"]) == (0.0, 0.0)
    s = span_scores(["北京", "天津"], [["北京"], ["上海"]])
    assert s["em"] == 50.0 and s["f1"] == 50.0
