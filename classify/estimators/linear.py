"""The linear evaluation: a standardised, class-balanced multinomial logistic regression."""
from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from classify.estimators.base import ModelProbe
from classify.estimators.state_checks import linear_width, scaler_width


class LinearProbe(ModelProbe):
    """Standardised multinomial logistic regression: the linear evaluation."""

    def __init__(self, C: float = 0.1, max_iter: int = 2000, class_weight: str | None = "balanced") -> None:
        self.C = C
        self.max_iter = max_iter
        self.class_weight = class_weight

    def fit(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None,
            sample_weight: np.ndarray | None = None) -> "LinearProbe":
        """`groups` is taken for the common signature and not used (no inner hold-out)."""
        self.model_ = make_pipeline(StandardScaler(), LogisticRegression(
            C=self.C, max_iter=self.max_iter, class_weight=self.class_weight))
        self.model_.fit(X, y, logisticregression__sample_weight=sample_weight)
        self.classes_ = self.model_.classes_
        self.n_features_in_ = X.shape[1]
        return self

    def describe(self) -> str:
        """Its hyper-parameters for scores.csv's params column."""
        return f"C={self.C:g}"

    def state(self) -> dict[str, np.ndarray]:
        scaler, logistic = self.model_[0], self.model_[-1]
        return {"classes": self.classes_, "mean": scaler.mean_, "scale": scaler.scale_, "var": scaler.var_,
                "coef": logistic.coef_, "intercept": logistic.intercept_}

    @classmethod
    def from_state(cls, params: dict, state: dict[str, np.ndarray]) -> "LinearProbe":
        """Rebuilt from `state`, every array checked first (`state_checks.linear_width`)."""
        width = linear_width(state)
        probe = cls(**params)
        scaler = scaler_from_state(state)
        logistic = LogisticRegression(C=probe.C, max_iter=probe.max_iter, class_weight=probe.class_weight)
        logistic.coef_, logistic.intercept_ = state["coef"], state["intercept"]
        logistic.classes_, logistic.n_features_in_ = state["classes"], state["coef"].shape[1]
        probe.model_, probe.classes_ = make_pipeline(scaler, logistic), state["classes"]
        probe.n_features_in_ = width
        return probe


def scaler_from_state(state: dict[str, np.ndarray]) -> StandardScaler:
    """A fitted StandardScaler from its saved statistics (checked: finite, one width)."""
    scaler_width(state)
    scaler = StandardScaler()
    scaler.mean_, scaler.scale_, scaler.var_ = state["mean"], state["scale"], state["var"]
    scaler.n_features_in_ = len(state["mean"])
    return scaler
