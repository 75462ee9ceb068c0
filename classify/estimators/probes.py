"""Probes: scikit-learn estimators over frozen embeddings, each with a small search grid.

Classes are imbalanced (most patients have no murmur), so every probe weights samples by
inverse class frequency. Each probe can export its fitted state as plain arrays (`state`) and be
rebuilt from them (`from_state`), so a saved model is data, never code.
"""
from __future__ import annotations

import inspect
import itertools

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.class_weight import compute_sample_weight

from classify.estimators.state_checks import class_indices, linear_width, scaler_width


class _ModelProbe(ClassifierMixin, BaseEstimator):
    """A probe whose fitted `model_` gives the probabilities, columns in `classes_` order."""

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.model_.predict_proba(X)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


class LinearProbe(_ModelProbe):
    """Standardised multinomial logistic regression: the linear evaluation."""

    def __init__(self, C: float = 0.1, max_iter: int = 2000, class_weight: str | None = "balanced") -> None:
        self.C = C
        self.max_iter = max_iter
        self.class_weight = class_weight

    def fit(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> "LinearProbe":
        self.model_ = make_pipeline(StandardScaler(), LogisticRegression(
            C=self.C, max_iter=self.max_iter, class_weight=self.class_weight))
        self.model_.fit(X, y, logisticregression__sample_weight=sample_weight)
        self.classes_ = self.model_.classes_
        self.n_features_in_ = X.shape[1]
        return self

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


class XGBoostProbe(_ModelProbe):
    """Gradient-boosted trees (hist), class-balanced sample weights."""

    def __init__(self, n_estimators: int = 300, max_depth: int = 4, learning_rate: float = 0.05,
                 subsample: float = 0.8, colsample_bytree: float = 0.5, n_jobs: int = 1,
                 random_state: int = 0) -> None:
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.n_jobs = n_jobs
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> "XGBoostProbe":
        from xgboost import XGBClassifier

        self.classes_, y_idx = np.unique(y, return_inverse=True)
        weight = compute_sample_weight("balanced", y_idx) if sample_weight is None else sample_weight
        self.model_ = XGBClassifier(
            n_estimators=self.n_estimators, max_depth=self.max_depth, learning_rate=self.learning_rate,
            subsample=self.subsample, colsample_bytree=self.colsample_bytree, tree_method="hist",
            n_jobs=self.n_jobs, random_state=self.random_state, verbosity=0)
        self.model_.fit(X, y_idx, sample_weight=weight)
        self.n_features_in_ = X.shape[1]
        return self

    def state(self) -> dict[str, np.ndarray]:
        """The booster as XGBoost's own JSON model (bytes), and the class labels."""
        raw = self.model_.get_booster().save_raw("json")
        return {"classes": self.classes_, "booster_json": np.frombuffer(bytes(raw), dtype=np.uint8)}

    @classmethod
    def from_state(cls, params: dict, state: dict[str, np.ndarray]) -> "XGBoostProbe":
        from xgboost import XGBClassifier

        classes = class_indices(state, None)
        raw = state["booster_json"].tobytes()
        learner = booster_params(raw)
        n_outputs = int(learner.get("num_class", 0)) or 2
        if n_outputs != max(len(classes), 2):
            raise ValueError(f"field 'booster_json' models {n_outputs} classes, field 'classes' lists {len(classes)}")
        probe = cls(**params)
        probe.model_ = XGBClassifier(n_jobs=probe.n_jobs)
        probe.model_.load_model(bytearray(raw))
        probe.classes_ = classes
        probe.n_features_in_ = int(learner["num_feature"])
        return probe


def booster_params(raw: bytes) -> dict:
    """The learner parameters of XGBoost's JSON model, refusing NaN or infinite numbers anywhere
    in it (JSON has none; Python's reader would take them)."""
    import json

    def refuse(token: str):
        raise ValueError(f"field 'booster_json' holds a non-finite number ({token})")
    try:
        model = json.loads(raw.decode(), parse_constant=refuse)
        return model["learner"]["learner_model_param"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"field 'booster_json' is not an XGBoost JSON model ({err})") from None


from classify.estimators.mlp import MLPProbe  # noqa: E402  (after the base probes, which it does not need)

PROBES: dict[str, tuple[type, dict[str, list]]] = {
    "linear": (LinearProbe, {"C": [1e-3, 1e-2, 1e-1, 1.0]}),
    "xgboost": (XGBoostProbe, {"max_depth": [3, 6], "n_estimators": [200], "learning_rate": [0.1]}),
    "mlp": (MLPProbe, {"hidden": [256], "dropout": [0.2, 0.5]}),
}


def register_probe(name: str, cls: type, grid: dict[str, list]) -> None:
    PROBES[name] = (cls, grid)


def probe_grid(name: str, seed: int = 0) -> list[BaseEstimator]:
    """Every candidate estimator of the probe's hyper-parameter grid."""
    if name not in PROBES:
        raise KeyError(f"unknown probe {name!r}; available: {', '.join(PROBES)}")
    cls, grid = PROBES[name]
    keys = list(grid)
    base = cls()
    if "random_state" in base.get_params():
        base.set_params(random_state=seed)
    return [clone(base).set_params(**dict(zip(keys, values))) for values in itertools.product(*grid.values())]


def fit_probe(model: BaseEstimator, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None
              ) -> BaseEstimator:
    """Fit, passing patient groups to probes that use them (the MLP's early-stopping hold-out)."""
    if groups is not None and "groups" in inspect.signature(model.fit).parameters:
        return model.fit(X, y, groups=groups)
    return model.fit(X, y)


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
