"""Ensembles of encoders: mean of recording probabilities, or a stacked logistic regression.

Stacking: each encoder's probe gives out-of-fold recording probabilities on the train patients
(patient-grouped folds, so no patient leaks across folds); a logistic-regression stacker learns
from their logs (plus, optionally, the recording location and patient demographics); its C
and the decision thresholds are chosen on val; the test split is used once, at the end.
"""
from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from embed.datasets.circor import LOCATIONS, CirCor

from .evaluate import EncoderScores, RecordingScores, decide, recording_targets

AGE_GROUPS = ("Neonate", "Infant", "Child", "Adolescent", "Young Adult")
STACK_C = (0.01, 0.1, 1.0)


def demographic_features(circor: CirCor, patient_ids: np.ndarray) -> np.ndarray:
    """Age group one-hot, sex, pregnancy, height, weight (NaN -> 0 plus a missing flag)."""
    rows = []
    for pid in patient_ids:
        p = circor.patients[pid]
        height = p.height if np.isfinite(p.height) else 0.0
        weight = p.weight if np.isfinite(p.weight) else 0.0
        rows.append([p.age == a for a in AGE_GROUPS] + [
            p.sex == "Female", p.pregnant, height / 100.0, weight / 20.0,
            not np.isfinite(p.height), not np.isfinite(p.weight)])
    return np.asarray(rows, dtype=np.float64)


def location_features(circor: CirCor, recording_ids: np.ndarray) -> np.ndarray:
    location = {r.recording_id: r.location for r in circor.recordings()}
    return np.asarray([[location[r] == loc for loc in LOCATIONS] for r in recording_ids], dtype=np.float64)


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


def stack_features(circor: CirCor, per_encoder: list[RecordingScores], demographics: bool,
                   locations: bool) -> tuple[np.ndarray, RecordingScores]:
    aligned = _aligned(per_encoder)
    parts = [np.log(np.clip(s.proba, 1e-6, 1.0)) for s in aligned]
    base = aligned[0]
    if locations:
        parts.append(location_features(circor, base.recording_ids))
    if demographics:
        parts.append(demographic_features(circor, base.patient_ids))
    return np.hstack(parts), base


def stack(circor: CirCor, fitted: list[EncoderScores], *, targets: str = "patient", decision: str = "any",
          demographics: bool = False, locations: bool = True) -> tuple[RecordingScores, RecordingScores, dict]:
    """Fit the stacker on OOF train scores; return (val scores, test scores, chosen params)."""
    if any(f.oof is None for f in fitted):
        raise ValueError("stacking needs out-of-fold scores: fit encoders with oof_folds > 0")
    X_train, train = stack_features(circor, [f.oof for f in fitted], demographics, locations)
    X_val, val = stack_features(circor, [f.val for f in fitted], demographics, locations)
    X_test, test = stack_features(circor, [f.test for f in fitted], demographics, locations)
    labels = recording_targets(circor, targets) or {}
    y = np.array([labels.get(r, circor.patients[p].label) for r, p in zip(train.recording_ids, train.patient_ids)])
    with threadpool_limits(limits=1, user_api="blas"):
        return _select_stacker(circor, X_train, y, X_val, val, X_test, test, decision)


def _select_stacker(circor, X_train, y, X_val, val, X_test, test, decision):
    """Choose the stacker's C on val; score the test recordings once with it."""
    best = None
    for C in STACK_C:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=C, class_weight="balanced", max_iter=5000))
        model.fit(X_train, y)
        val_scores = RecordingScores(val.recording_ids, val.patient_ids, _proba(model, X_val))
        _, score = decide(circor, val_scores, decision)
        if best is None or score > best[0]:
            best = (score, C, model, val_scores)
    _, C, model, val_scores = best
    test_scores = RecordingScores(test.recording_ids, test.patient_ids, _proba(model, X_test))
    return val_scores, test_scores, {"C": C}


def _proba(model, X: np.ndarray) -> np.ndarray:
    out = np.zeros((len(X), 3))
    out[:, model.classes_.astype(int)] = model.predict_proba(X)
    return out
