"""What every estimator here shares: probabilities for every class, and width and groups checks.

Estimators follow scikit-learn (`fit`, `predict_proba`, `get_params`, `classes_`, `n_features_in_`)
and export their fitted state as plain arrays (`state`, `from_state`), so a saved model is data.
"""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin


class ModelProbe(ClassifierMixin, BaseEstimator):
    """A probe whose fitted `model_` gives the probabilities, columns in `classes_` order."""

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.model_.predict_proba(X)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


class FeatureWidthError(ValueError):
    """Features of another width than the model was fitted on (another encoder, layer or version)."""


def check_width(model: BaseEstimator, X: np.ndarray, what: str = "the model") -> None:
    """Refuse features whose width is not the one `model` was fitted on, by name, before
    scikit-learn or torch fail on them deep inside."""
    expected = getattr(model, "n_features_in_", None)
    if expected is not None and X.ndim == 2 and X.shape[1] != expected:
        raise FeatureWidthError(f"{what} was fitted on {expected} features per row and is given {X.shape[1]}")


def full_proba(model: BaseEstimator, X: np.ndarray, n_classes: int) -> np.ndarray:
    """predict_proba with a column for every class, even ones absent from training."""
    check_width(model, X)
    proba = model.predict_proba(X)
    out = np.zeros((len(X), n_classes), dtype=np.float64)
    out[:, np.asarray(model.classes_, int)] = proba
    return out


def fit_probe(model: BaseEstimator, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None
              ) -> BaseEstimator:
    """Fit with the patient of each row: every estimator here takes `fit(X, y, groups=None)`; those
    with an inner split keep patients on one side of it (the MLP's early-stopping hold-out, the
    grouped search's folds), the others ignore it."""
    return model.fit(X, y, groups=groups)
