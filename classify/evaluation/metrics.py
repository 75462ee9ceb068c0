"""Group-level (patient) metrics, and the scoring a dataset declares.

PhysioNet/CinC 2022 murmur: weighted accuracy weights correct Present patients by 5, Unknown by
3 and Absent by 1 (class order Present, Unknown, Absent), relative to the same weights on the
truth counts; plus UAR. PhysioNet/CinC 2016: MAcc = (sensitivity + specificity) / 2, which is the
UAR over its two classes. AUROC: mean one-vs-rest over classes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score

CLASS_WEIGHTS = np.array([5.0, 3.0, 1.0])  # PhysioNet 2022 murmur weights (Present, Unknown, Absent)


def confusion(labels: np.ndarray, predictions: np.ndarray, n_classes: int | None = None) -> np.ndarray:
    """`C[i, j]` = patients with true class i predicted as j."""
    labels, predictions = np.asarray(labels, int), np.asarray(predictions, int)
    if n_classes is None:
        n_classes = int(max(labels.max(initial=0), predictions.max(initial=0))) + 1
    out = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(out, (labels, predictions), 1)
    return out


def weighted_accuracy(labels: np.ndarray, predictions: np.ndarray, weights=CLASS_WEIGHTS) -> float:
    weights = np.asarray(weights, dtype=np.float64)
    c = confusion(labels, predictions, len(weights))
    total = (weights * c.sum(axis=1)).sum()
    return float((weights * np.diag(c)).sum() / total) if total else float("nan")


def recalls(labels: np.ndarray, predictions: np.ndarray, n_classes: int | None = None) -> np.ndarray:
    c = confusion(labels, predictions, n_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.diag(c) / c.sum(axis=1)


def uar(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Unweighted average recall over the classes present in `labels`."""
    r = recalls(labels, predictions)
    return float(np.nanmean(r)) if np.isfinite(r).any() else float("nan")


def macc(labels: np.ndarray, predictions: np.ndarray) -> float:
    """PhysioNet 2016 challenge score (Se + Sp) / 2 for classes (abnormal, normal)."""
    r = recalls(labels, predictions, 2)
    return float(r.mean())


def class_aurocs(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """One-vs-rest AUROC of each class's probability (NaN for a class without positives or negatives)."""
    labels = np.asarray(labels, int)
    aucs = np.full(probabilities.shape[1], np.nan)
    for k in range(probabilities.shape[1]):
        positive = labels == k
        if positive.any() and (~positive).any():
            aucs[k] = roc_auc_score(positive, probabilities[:, k])
    return aucs


def macro_auroc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean one-vs-rest AUROC over classes that have both positives and negatives."""
    aucs = class_aurocs(labels, probabilities)
    return float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan")


LABEL_METRICS = {"weighted_accuracy": weighted_accuracy, "uar": uar, "macc": macc}


@dataclass(frozen=True)
class Scoring:
    """A dataset's classes and metrics. The label-based metrics, in the declared order, form
    the key that chooses hyper-parameters and tunes decision rules (ties go to the next one)."""
    classes: tuple[str, ...]
    metrics: tuple[str, ...]
    class_weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        unknown = [m for m in self.metrics if m not in LABEL_METRICS and m != "auroc"]
        if unknown or not self.label_metrics:
            raise ValueError(f"unknown metrics {unknown} (known: {', '.join(LABEL_METRICS)}, auroc)")

    @property
    def label_metrics(self) -> tuple[str, ...]:
        return tuple(m for m in self.metrics if m in LABEL_METRICS)

    @property
    def primary(self) -> str:
        return self.label_metrics[0]

    def metric(self, name: str, labels: np.ndarray, predictions: np.ndarray) -> float:
        if name == "weighted_accuracy" and self.class_weights is not None:
            return weighted_accuracy(labels, predictions, self.class_weights)
        return LABEL_METRICS[name](labels, predictions)

    def selection_key(self, labels: np.ndarray, predictions: np.ndarray) -> tuple[float, ...]:
        return tuple(self.metric(m, labels, predictions) for m in self.label_metrics)

    def all(self, labels: np.ndarray, predictions: np.ndarray, probabilities: np.ndarray | None = None) -> dict:
        """The metric columns of scores.csv: label metrics, recall per class, AUROC (macro),
        n_patients, then each class's one-vs-rest AUROC (`auroc_unknown`: Unknown against the rest)."""
        r = recalls(labels, predictions, len(self.classes))
        aucs = (class_aurocs(labels, probabilities) if probabilities is not None
                else np.full(len(self.classes), np.nan))
        return {
            **{m: self.metric(m, labels, predictions) for m in self.label_metrics},
            **{f"recall_{name.lower()}": float(v) for name, v in zip(self.classes, r)},
            "auroc": float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan"),
            "n_patients": int(len(labels)),
            **{f"auroc_{name.lower()}": float(v) for name, v in zip(self.classes, aucs)},
        }


def bootstrap_ci(labels: np.ndarray, predictions: np.ndarray, metric=weighted_accuracy,
                 n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap interval over patients."""
    rng = np.random.default_rng(seed)
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    n = len(labels)
    stats = [metric(labels[idx], predictions[idx]) for idx in (rng.integers(0, n, n) for _ in range(n_boot))]
    lo, hi = np.nanpercentile(stats, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)
