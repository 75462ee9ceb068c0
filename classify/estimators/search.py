"""Patient-grouped cross-validation: the one out-of-fold loop and the one grouped-CV meta-estimator.

`cross_fit` is the loop every out-of-fold score comes from (probe OOF scores for stacking and
tuned rules, layer choice, a recipe's recording members and its patient model): per fold, a clone
of the estimator fit on the other folds, for the caller to apply to the held-out fold. `GroupedSearchCV` takes a
base estimator and a grid, as scikit-learn's GridSearchCV does, over folds that never split a
patient; it keeps the chosen candidate's out-of-fold probabilities (`oof_proba_`), which the next
stage learns from, and refits that candidate on every row.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, Literal

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.utils.class_weight import compute_sample_weight

from classify.estimators.base import check_width, fit_probe, full_proba
from classify.estimators.linear import LinearProbe
from classify.estimators.probes import grid_candidates, probe_spec, seeded
from classify.estimators.state_checks import class_indices, positive
from classify.evaluation.selection import select_best

EPS = 1e-4
Fold = tuple[np.ndarray, np.ndarray]
Scoring = Literal["balanced_log_loss", "log_loss"]


def group_folds(y: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> list[Fold]:
    """Patient-grouped, label-stratified folds (a group's rows stay on one side)."""
    splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(y)), y, groups=groups))


def cross_fit(estimator: BaseEstimator, folds: Iterable[Fold], fit_rows: Callable
              ) -> Iterator[tuple[np.ndarray, BaseEstimator]]:
    """(held fold, a clone of `estimator` fit on `fit_rows(fit fold)` = (X, y, groups)) per fold: the
    one out-of-fold loop; the caller applies each model to its own rows of the held fold."""
    for fit_idx, held_idx in folds:
        yield held_idx, fit_probe(clone(estimator), *fit_rows(fit_idx))


def out_of_fold_proba(estimator: BaseEstimator, X: np.ndarray, y: np.ndarray, folds: Iterable[Fold],
                      n_classes: int, groups: np.ndarray | None = None) -> np.ndarray:
    """Probabilities for every row of X from a model that never saw its fold."""
    out = np.zeros((len(X), n_classes))
    rows = (lambda idx: (X[idx], y[idx], None if groups is None else groups[idx]))
    for held_idx, model in cross_fit(estimator, folds, rows):
        out[held_idx] = full_proba(model, X[held_idx], n_classes)
    return out


def clipped(proba: np.ndarray) -> np.ndarray:
    p = np.clip(proba, EPS, 1.0)
    return p / p.sum(axis=1, keepdims=True)


def balanced_log_loss(y: np.ndarray, proba: np.ndarray, n_classes: int) -> float:
    """Log loss with every class weighted equally (minority classes count as much as Absent)."""
    return float(log_loss(y, clipped(proba), sample_weight=compute_sample_weight("balanced", y),
                          labels=range(n_classes)))


def cv_loss(scoring: Scoring, y: np.ndarray, proba: np.ndarray, n_classes: int) -> float:
    if scoring == "balanced_log_loss":
        return balanced_log_loss(y, proba, n_classes)
    return float(log_loss(y, clipped(proba), labels=range(n_classes)))


class GroupedSearchCV(ClassifierMixin, BaseEstimator):
    """The candidate of `grid` on `estimator` with the lowest out-of-fold loss over patient-grouped
    folds (`groups`; stratified by `strata`, default `y`; without groups every row is its own),
    refit on every row. Keeps `best_params_`, `oof_proba_` (the chosen candidate's) and
    `best_estimator_`; `predict_proba` has a column for each of `n_classes`."""

    def __init__(self, estimator: BaseEstimator | None = None, grid: dict[str, list] | None = None, folds: int = 5,
                 seed: int = 0, n_classes: int = 3, scoring: Scoring = "balanced_log_loss") -> None:
        self.estimator = estimator
        self.grid = grid
        self.folds = folds
        self.seed = seed
        self.n_classes = n_classes
        self.scoring = scoring

    def _base(self) -> BaseEstimator:
        return self.estimator

    def _grid(self) -> dict[str, list]:
        return self.grid or {}

    def _scoring(self) -> Scoring:
        return self.scoring

    def fit(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None, strata: np.ndarray | None = None
            ) -> "GroupedSearchCV":
        folds = group_folds(y if strata is None else strata, np.arange(len(y)) if groups is None else groups,
                            self.folds, self.seed)
        grid = self._grid()

        def candidate_loss(candidate):
            oof = out_of_fold_proba(candidate, X, y, folds, self.n_classes, groups)
            return -cv_loss(self._scoring(), y, oof, self.n_classes), oof

        best, _, self.oof_proba_ = select_best(grid_candidates(self._base(), grid), candidate_loss)
        self.best_params_ = {k: best.get_params()[k] for k in grid}
        self.best_estimator_ = fit_probe(clone(best), X, y, groups)
        self.classes_ = np.arange(self.n_classes)
        self.n_features_in_ = X.shape[1]
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        check_width(self, X)
        return full_proba(self.best_estimator_, X, self.n_classes)

    def describe(self) -> str:
        """The fitted model's hyper-parameters, for scores.csv's params column."""
        return self.best_estimator_.describe()

    def state(self) -> dict[str, np.ndarray]:
        return {**{f"best:{k}": np.asarray(v) for k, v in self.best_params_.items()}, **self.best_estimator_.state()}

    def _rebuilt(self, state: dict[str, np.ndarray]) -> "GroupedSearchCV":
        """The fitted search from `state`: its chosen parameters and the chosen model's arrays."""
        class_indices(state, int(positive("parameter n_classes", self.n_classes, integer=True)))
        base = self._base()
        self.best_params_ = {}
        for k in self._grid():
            value = state.get(f"best:{k}")
            if value is None or value.ndim != 0:
                raise ValueError(f"field 'best:{k}' must be one number")
            self.best_params_[k] = positive(f"field 'best:{k}'", value.item()) if k == "C" else value.item()
        params = clone(base).set_params(**self.best_params_).get_params()
        model_state = {k: v for k, v in state.items() if not k.startswith("best:")}
        self.best_estimator_ = type(base).from_state(params, model_state)
        self.classes_ = np.arange(self.n_classes)
        self.n_features_in_ = self.best_estimator_.n_features_in_
        return self


class RecordingStage(GroupedSearchCV):
    """A recipe member's recording model: the registered `probe` with its stage settings, its stage
    grid searched by class-balanced log loss over patient-grouped folds."""

    def __init__(self, probe: str = "linear", folds: int = 5, seed: int = 0, n_classes: int = 3) -> None:
        self.probe = probe
        self.folds = folds
        self.seed = seed
        self.n_classes = n_classes

    def _base(self) -> BaseEstimator:
        spec = probe_spec(self.probe)
        return seeded(spec.cls(**spec.stage_params), self.seed)

    def _grid(self) -> dict[str, list]:
        return probe_spec(self.probe).stage_grid

    def _scoring(self) -> Scoring:
        return "balanced_log_loss"

    @classmethod
    def from_state(cls, params: dict, state: dict[str, np.ndarray]) -> "RecordingStage":
        """A fitted stage from its saved arrays (numbers and XGBoost's JSON: nothing executes on load)."""
        return cls(**params)._rebuilt(state)


class PatientModel(GroupedSearchCV):
    """From patient features to the patient class: a standardised logistic regression, C by the log
    loss of stratified CV over patients; not class-balanced, so the cost rule sees calibrated
    probabilities."""

    def __init__(self, Cs: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1, 0.3), folds: int = 5, seed: int = 0,
                 n_classes: int = 3) -> None:
        self.Cs = Cs
        self.folds = folds
        self.seed = seed
        self.n_classes = n_classes

    def _base(self) -> BaseEstimator:
        return LinearProbe(max_iter=3000, class_weight=None)

    def _grid(self) -> dict[str, list]:
        return {"C": list(self.Cs)}

    def _scoring(self) -> Scoring:
        return "log_loss"

    @property
    def C_(self) -> float:
        return self.best_params_["C"]

    @classmethod
    def from_state(cls, params: dict, state: dict[str, np.ndarray]) -> "PatientModel":
        return cls(**params)._rebuilt(state)
