import numpy as np
import pytest

from classify.aggregate import aggregate_patients, patient_rule
from classify.metrics import all_metrics, bootstrap_ci, confusion, macro_auroc, uar, weighted_accuracy

P, U, A = 0, 1, 2


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
    m = all_metrics(labels, preds)
    assert m["recall_absent"] == 1 and m["recall_present"] == 0 and m["uar"] == pytest.approx(1 / 3)


def test_macro_auroc_perfect_and_reversed():
    labels = np.array([P, U, A, A])
    proba = np.eye(3)[labels]
    assert macro_auroc(labels, proba) == 1.0
    assert macro_auroc(labels, 1 - proba) == 0.0


def test_patient_rule_hierarchy():
    assert patient_rule(np.array([A, U, P])) == P
    assert patient_rule(np.array([A, U, A])) == U
    assert patient_rule(np.array([A, A])) == A


def test_aggregation_segments_to_patients():
    # patient 1: rec a mostly Absent, rec b Present on average -> Present
    proba = np.array([[0.1, 0.1, 0.8], [0.2, 0.1, 0.7], [0.9, 0.0, 0.1], [0.3, 0.2, 0.5]])
    recs = np.array(["a", "a", "b", "b"])
    frame = aggregate_patients(proba, recs, {"a": "1", "b": "1"}, "any")
    assert frame["prediction"].tolist() == [P]
    assert frame["p_present"].iloc[0] == pytest.approx(np.mean([0.15, 0.6]))
    assert aggregate_patients(proba, recs, {"a": "1", "b": "1"}, "mean")["prediction"].tolist() == [A]


def test_bootstrap_ci_brackets_the_estimate():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    preds = np.where(rng.random(200) < 0.7, labels, rng.integers(0, 3, 200))
    lo, hi = bootstrap_ci(labels, preds, n_boot=200)
    assert lo < weighted_accuracy(labels, preds) < hi
