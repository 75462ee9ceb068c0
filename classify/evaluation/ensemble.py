"""Ensembles of encoders: mean of recording probabilities, or a stacked logistic regression.

Stacking: each encoder's probe gives out-of-fold recording probabilities on the train groups
(group-wise folds, so no patient leaks across folds); a logistic-regression stacker learns
from their logs (plus, optionally, the recording location and the group's covariates, e.g.
demographics); its C and the decision rule are chosen on val; the test split is used once.
"""
from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from classify.evaluation.rules import DecisionName
from classify.evaluation.probe_protocol import EncoderScores, RecordingScores, fit_rule
from classify.estimators.base import full_proba
from classify.evaluation.selection import select_best
from classify.task import Task

STACK_C = (0.01, 0.1, 1.0)


def location_features(task: Task, recording_ids: np.ndarray) -> np.ndarray:
    """One-hot recording location (no columns for datasets without locations)."""
    return np.asarray([[task.recording_location.get(r) == loc for loc in task.locations] for r in recording_ids],
                      dtype=np.float64).reshape(len(recording_ids), len(task.locations))


def _aligned(per_encoder: list[RecordingScores]) -> list[RecordingScores]:
    """Restrict every encoder to the recordings all of them scored, in one order."""
    common = set(per_encoder[0].recording_ids)
    for scores in per_encoder[1:]:
        common &= set(scores.recording_ids)
    order = np.array([r for r in per_encoder[0].recording_ids if r in common])
    return [s.reindex(order) for s in per_encoder]


def mean_scores(per_encoder: list[RecordingScores]) -> RecordingScores:
    aligned = _aligned(per_encoder)
    return RecordingScores(aligned[0].recording_ids, aligned[0].patient_ids,
                           np.mean([s.proba for s in aligned], axis=0))


def stack_features(task: Task, per_encoder: list[RecordingScores], covariates: bool,
                   locations: bool) -> tuple[np.ndarray, RecordingScores]:
    aligned = _aligned(per_encoder)
    parts = [np.log(np.clip(s.proba, 1e-6, 1.0)) for s in aligned]
    base = aligned[0]
    if locations:
        parts.append(location_features(task, base.recording_ids))
    if covariates:
        parts.append(task.covariates(base.patient_ids))
    return np.hstack(parts), base


def stack(task: Task, fitted: list[EncoderScores], *, decision: DecisionName = "any", demographics: bool = False,
          locations: bool = True) -> tuple[RecordingScores, RecordingScores, dict]:
    """Fit the stacker on OOF train scores; return (val scores, test scores, chosen params).
    `demographics`: the stacker also sees the dataset's covariates."""
    if any(f.oof is None for f in fitted):
        raise ValueError("stacking needs out-of-fold scores: fit encoders with oof_folds > 0")
    X_train, train = stack_features(task, [f.oof for f in fitted], demographics, locations)
    X_val, val = stack_features(task, [f.val for f in fitted], demographics, locations)
    X_test, test = stack_features(task, [f.test for f in fitted], demographics, locations)
    y = np.array([task.targets[r] for r in train.recording_ids])
    with threadpool_limits(limits=1, user_api="blas"):
        def val_score(C):
            model = make_pipeline(StandardScaler(), LogisticRegression(C=C, class_weight="balanced", max_iter=5000))
            model.fit(X_train, y)
            scores = RecordingScores(val.recording_ids, val.patient_ids, full_proba(model, X_val, task.n_classes))
            return fit_rule(task, scores, decision)[1], (model, scores)

        C, _, (model, val_scores) = select_best(STACK_C, val_score)
        test_scores = RecordingScores(test.recording_ids, test.patient_ids, full_proba(model, X_test, task.n_classes))
    return val_scores, test_scores, {"C": C}
