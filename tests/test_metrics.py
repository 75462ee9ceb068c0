import numpy as np
import pytest

from classify.evaluation.rules import GroupTable, make_rule
from classify.evaluation.probe_protocol import RecordingScores, split_result
from classify.evaluation.metrics import Scoring, bootstrap_ci, confusion, macc, macro_auroc, uar, weighted_accuracy
from classify.task import Task

P, U, A = 0, 1, 2
MURMUR = Scoring(("Present", "Unknown", "Absent"), ("weighted_accuracy", "uar"), (5.0, 3.0, 1.0))


def test_weighted_accuracy_by_hand():
    # 2 Present (1 right), 1 Unknown (right), 3 Absent (2 right)
    labels = np.array([P, P, U, A, A, A])
    preds = np.array([P, A, U, A, A, P])
    assert weighted_accuracy(labels, preds) == pytest.approx((5 * 1 + 3 * 1 + 2) / (5 * 2 + 3 * 1 + 3))
    assert uar(labels, preds) == pytest.approx((1 / 2 + 1 + 2 / 3) / 3)
    assert confusion(labels, preds).tolist() == [[1, 0, 1], [0, 1, 0], [1, 0, 2]]


def test_all_absent_predictor_scores_low_weighted_accuracy():
    labels = np.array([P] * 10 + [U] * 4 + [A] * 36)
    preds = np.full(50, A)
    assert weighted_accuracy(labels, preds) == pytest.approx(36 / (50 + 12 + 36))
    m = MURMUR.all(labels, preds)
    assert m["recall_absent"] == 1 and m["recall_present"] == 0 and m["uar"] == pytest.approx(1 / 3)
    assert list(m)[:2] == ["weighted_accuracy", "uar"] and m["n_patients"] == 50


def test_macc_is_mean_of_sensitivity_and_specificity():
    abnormal, normal = 0, 1
    labels = np.array([abnormal] * 4 + [normal] * 6)
    preds = np.array([abnormal, abnormal, abnormal, normal] + [normal] * 3 + [abnormal] * 3)
    assert macc(labels, preds) == pytest.approx((3 / 4 + 3 / 6) / 2)
    scoring = Scoring(("abnormal", "normal"), ("macc", "auroc"))
    m = scoring.all(labels, preds, np.eye(2)[labels])
    assert m["macc"] == pytest.approx(0.625) and m["recall_abnormal"] == 0.75 and m["auroc"] == 1.0
    assert scoring.selection_key(labels, preds) == (pytest.approx(0.625),)
    with pytest.raises(ValueError, match="unknown metrics"):
        Scoring(("a", "b"), ("f1",))


def test_macro_auroc_perfect_and_reversed():
    labels = np.array([P, U, A, A])
    proba = np.eye(3)[labels]
    assert macro_auroc(labels, proba) == 1.0
    assert macro_auroc(labels, 1 - proba) == 0.0


def test_scores_carry_each_class_one_vs_rest_auroc():
    labels = np.array([P, U, U, A, A, A])
    proba = np.array([[.8, .1, .1], [.1, .6, .3], [.1, .2, .7], [.2, .5, .3], [.1, .1, .8], [.1, .1, .8]])
    scoring = Scoring(("Present", "Unknown", "Absent"), ("weighted_accuracy", "uar", "auroc"))
    m = scoring.all(labels, proba.argmax(1), proba)
    # Unknown scores: 0.6 and 0.2 against 0.1, 0.5, 0.1, 0.1 -> 7 of 8 pairs ordered
    assert m["auroc_present"] == 1.0 and m["auroc_unknown"] == pytest.approx(7 / 8)
    assert m["auroc"] == pytest.approx(np.mean([m["auroc_present"], m["auroc_unknown"], m["auroc_absent"]]))
    only_absent = scoring.all(np.array([A, A]), np.array([A, A]), np.eye(3)[[A, A]])
    assert np.isnan(only_absent["auroc_unknown"]) and np.isnan(only_absent["auroc"])


def test_any_rule_is_the_class_hierarchy():
    onehot = np.eye(3)
    for calls, expected in (([A, U, P], P), ([A, U, A], U), ([A, A], A)):
        table = GroupTable.from_recordings(onehot[calls] * 0.8 + 0.05, np.zeros(len(calls)))
        assert make_rule("any").predict(table).tolist() == [expected]


def test_aggregation_segments_to_patients():
    # patient 1: rec a mostly Absent, rec b Present on average -> Present
    proba = np.array([[0.1, 0.1, 0.8], [0.2, 0.1, 0.7], [0.9, 0.0, 0.1], [0.3, 0.2, 0.5]])
    from classify.features.caches import SegmentSet
    segments = SegmentSet(np.zeros((4, 1)), np.zeros(4), np.array(["a", "a", "b", "b"]), np.array(["1"] * 4))
    scores = RecordingScores.from_segments(segments, proba)
    task = Task(MURMUR, ["1"], {"1": P}, {"1": ["a", "b"]}, {"a": P, "b": P})
    frame = split_result(task, "enc", "linear", "s", scores, scores, "any").predictions
    assert frame["prediction"].tolist() == [P] and frame["label"].tolist() == [P]
    assert frame["p_present"].iloc[0] == pytest.approx(np.mean([0.15, 0.6]))
    assert split_result(task, "enc", "linear", "s", scores, scores, "mean").predictions["prediction"].tolist() == [A]
    with pytest.raises(ValueError, match="decision must be one of"):
        make_rule("majority")


def test_bootstrap_ci_brackets_the_estimate():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    preds = np.where(rng.random(200) < 0.7, labels, rng.integers(0, 3, 200))
    lo, hi = bootstrap_ci(labels, preds, n_boot=200)
    assert lo < weighted_accuracy(labels, preds) < hi
