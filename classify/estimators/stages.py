"""Two-stage model: recording probes, then a patient-level model over their out-of-fold scores.

Stage 1: one recording probe per feature block (an encoder's window-mean embedding, its
phase-pooled frames, the quality features...), on recordings: `RecordingProbe`, a standardised
logistic regression with C chosen by patient-grouped cross-validation, or `RecordingBoost`,
gradient-boosted trees that catch interactions a linear probe cannot (a raised band *and* a
quiet diastole). Their patient-grouped folds give every training recording an out-of-fold
probability that no model trained on its patient produced.
Stage 2 (`PatientModel`): per patient, each member's probabilities at every auscultation location
(and which locations are missing), their mean and max over the patient's recordings -> a logistic
regression predicting the patient class; decided by expected cost (`CostRule`).

Everything is fit on the groups it is given (train + val of a split); the caller keeps test groups
out. The probabilities are not class-balanced at stage 2, so the cost rule sees calibrated ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.utils.class_weight import compute_sample_weight

from classify.estimators.probes import LinearProbe, XGBoostProbe, check_width
from classify.evaluation.selection import select_best
from classify.estimators.state_checks import class_indices, positive

EPS = 1e-4


def _clipped(proba: np.ndarray) -> np.ndarray:
    p = np.clip(proba, EPS, 1.0)
    return p / p.sum(axis=1, keepdims=True)


def balanced_log_loss(y: np.ndarray, proba: np.ndarray, n_classes: int) -> float:
    """Log loss with every class weighted equally (minority classes count as much as Absent)."""
    return float(log_loss(y, _clipped(proba), sample_weight=compute_sample_weight("balanced", y),
                          labels=range(n_classes)))


def group_folds(y: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Patient-grouped, label-stratified folds (a group's rows stay on one side)."""
    splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(y)), y, groups=groups))


def _logistic(C: float, balanced: bool) -> LinearProbe:
    return LinearProbe(C=C, max_iter=3000, class_weight="balanced" if balanced else None)


def _proba(model, X: np.ndarray, n_classes: int) -> np.ndarray:
    out = np.zeros((len(X), n_classes))
    out[:, np.asarray(model.classes_, int)] = model.predict_proba(X)
    return out


def cross_val_proba(make_model, X: np.ndarray, y: np.ndarray, folds: list, n_classes: int) -> np.ndarray:
    """Out-of-fold probabilities: each row predicted by the model fit without its fold."""
    out = np.zeros((len(X), n_classes))
    for fit_idx, held_idx in folds:
        model = make_model().fit(X[fit_idx], y[fit_idx])
        out[held_idx] = _proba(model, X[held_idx], n_classes)
    return out


class _CrossValidatedLogistic(ClassifierMixin, BaseEstimator):
    """A standardised logistic regression whose C is chosen by the log loss of cross-validation;
    that C's out-of-fold probabilities are kept in `oof_proba_`, the final model is fit on every row."""
    balanced: ClassVar[bool] = False  # class-balanced fit and loss

    def __init__(self, Cs: tuple[float, ...] = (1e-3, 1e-2, 1e-1), folds: int = 5, seed: int = 0,
                 n_classes: int = 3) -> None:
        self.Cs = Cs
        self.folds = folds
        self.seed = seed
        self.n_classes = n_classes

    def _fit(self, X: np.ndarray, y: np.ndarray, folds: list) -> "_CrossValidatedLogistic":
        def cv_loss(C):
            oof = cross_val_proba(lambda: _logistic(C, self.balanced), X, y, folds, self.n_classes)
            loss = (balanced_log_loss(y, oof, self.n_classes) if self.balanced
                    else log_loss(y, _clipped(oof), labels=range(self.n_classes)))
            return -loss, oof

        self.C_, _, self.oof_proba_ = select_best(self.Cs, cv_loss)
        self.model_ = _logistic(self.C_, self.balanced).fit(X, y)
        self.classes_ = np.arange(self.n_classes)
        self.n_features_in_ = X.shape[1]
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        check_width(self, X)
        return _proba(self.model_, X, self.n_classes)

    def describe(self) -> str:
        """The hyper-parameters CV chose, for scores.csv's params column."""
        return f"C={self.C_:g}"

    def state(self) -> dict[str, np.ndarray]:
        return {"C": np.asarray(self.C_), **self.model_.state()}

    @classmethod
    def from_state(cls, params: dict, state: dict[str, np.ndarray]) -> "_CrossValidatedLogistic":
        """A fitted stage from its saved arrays (plain numbers: nothing executes on load)."""
        estimator = cls(**params)
        estimator.C_ = positive("field 'C'", state.get("C"))
        class_indices(state, int(positive("parameter n_classes", estimator.n_classes, integer=True)))
        estimator.model_ = LinearProbe.from_state(
            {"C": estimator.C_, "max_iter": 3000, "class_weight": "balanced" if cls.balanced else None}, state)
        estimator.classes_ = np.arange(estimator.n_classes)
        estimator.n_features_in_ = estimator.model_.n_features_in_
        return estimator


class RecordingProbe(_CrossValidatedLogistic):
    """Stage 1: class-balanced, on recording features, C by patient-grouped CV (`groups`; folds
    stratified by `strata`, e.g. each recording's patient label)."""
    balanced = True

    def fit(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray, strata: np.ndarray | None = None
            ) -> "RecordingProbe":
        return self._fit(X, y, group_folds(y if strata is None else strata, groups, self.folds, self.seed))


class RecordingBoost(ClassifierMixin, BaseEstimator):
    """Stage 1 with gradient-boosted trees (class-balanced sample weights, fixed settings: a grid
    would multiply the recipe's slowest step); out-of-fold probabilities from the same
    patient-grouped folds as `RecordingProbe`."""

    def __init__(self, folds: int = 5, seed: int = 0, n_classes: int = 3, n_estimators: int = 150,
                 max_depth: int = 3, learning_rate: float = 0.1, n_jobs: int | None = None) -> None:
        self.folds = folds
        self.seed = seed
        self.n_classes = n_classes
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.n_jobs = n_jobs

    def _model(self) -> XGBoostProbe:
        return XGBoostProbe(n_estimators=self.n_estimators, max_depth=self.max_depth,
                            learning_rate=self.learning_rate, n_jobs=self.n_jobs, random_state=self.seed)

    def fit(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray, strata: np.ndarray | None = None
            ) -> "RecordingBoost":
        folds = group_folds(y if strata is None else strata, groups, self.folds, self.seed)
        self.oof_proba_ = cross_val_proba(self._model, X, y, folds, self.n_classes)
        self.model_ = self._model().fit(X, y)
        self.classes_ = np.arange(self.n_classes)
        self.n_features_in_ = X.shape[1]
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        check_width(self, X)
        return _proba(self.model_, X, self.n_classes)

    def describe(self) -> str:
        return f"xgboost={self.n_estimators}x{self.max_depth}"

    def state(self) -> dict[str, np.ndarray]:
        return self.model_.state()

    @classmethod
    def from_state(cls, params: dict, state: dict[str, np.ndarray]) -> "RecordingBoost":
        """A fitted stage from its saved arrays (XGBoost's own JSON model: nothing executes on load)."""
        estimator = cls(**params)
        class_indices(state, int(positive("parameter n_classes", estimator.n_classes, integer=True)))
        estimator.model_ = XGBoostProbe.from_state({"n_jobs": estimator.n_jobs}, state)
        estimator.classes_ = np.arange(estimator.n_classes)
        estimator.n_features_in_ = estimator.model_.n_features_in_
        return estimator


RecordingStage = RecordingProbe | RecordingBoost
RecordingProbeName = Literal["linear", "xgboost"]
RECORDING_PROBES: dict[str, type] = {"linear": RecordingProbe, "xgboost": RecordingBoost}


@dataclass
class MemberScores:
    """One stage-1 member's recording probabilities."""
    name: str
    recording_ids: np.ndarray
    proba: np.ndarray  # (n_recordings, n_classes)


def patient_features(members: list[MemberScores], group_ids: list[str], recordings_of: dict[str, list[str]],
                     location_of: dict[str, str], locations: tuple[str, ...]) -> np.ndarray:
    """Rows for `group_ids`: per member, the log probabilities averaged per location (0 where the
    location is missing), their mean and max over the patient's recordings; then one missing flag
    per location. Datasets without locations get the mean and max only."""
    rows = []
    indexes = [{r: i for i, r in enumerate(m.recording_ids)} for m in members]
    for gid in group_ids:
        recs = recordings_of.get(gid, [])
        row = []
        for m, index in zip(members, indexes):
            mine = [r for r in recs if r in index]
            logp = np.log(np.clip(m.proba[[index[r] for r in mine]], EPS, 1.0)) if mine else None
            n = m.proba.shape[1]
            for loc in locations:
                at = [i for i, r in enumerate(mine) if location_of.get(r) == loc]
                row.extend(logp[at].mean(axis=0) if at else np.zeros(n))
            row.extend(logp.mean(axis=0) if mine else np.zeros(n))
            row.extend(logp.max(axis=0) if mine else np.zeros(n))
        row.extend(float(not any(location_of.get(r) == loc for r in recs)) for loc in locations)
        rows.append(row)
    return np.asarray(rows, dtype=np.float64)


class PatientModel(_CrossValidatedLogistic):
    """Stage 2: from patient features to the patient class, C by stratified CV over patients; not
    class-balanced, so the cost rule sees calibrated probabilities."""
    balanced = False

    def __init__(self, Cs: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1, 0.3), folds: int = 5, seed: int = 0,
                 n_classes: int = 3) -> None:
        super().__init__(Cs, folds, seed, n_classes)

    def fit(self, X: np.ndarray, y: np.ndarray) -> "PatientModel":
        return self._fit(X, y, group_folds(y, np.arange(len(y)), self.folds, self.seed))
