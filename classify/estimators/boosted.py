"""Gradient-boosted trees (XGBoost, hist) over frozen embeddings, class-balanced sample weights."""
from __future__ import annotations

import numpy as np
from sklearn.utils.class_weight import compute_sample_weight

from classify.estimators.base import ModelProbe
from classify.estimators.state_checks import class_indices


class XGBoostProbe(ModelProbe):
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

    def fit(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None,
            sample_weight: np.ndarray | None = None) -> "XGBoostProbe":
        """`groups` is taken for the common signature and not used (no inner hold-out)."""
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

    def describe(self) -> str:
        return f"xgboost={self.n_estimators}x{self.max_depth}"

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
