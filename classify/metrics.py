"""PhysioNet/CinC Challenge 2022 murmur metrics, computed per patient.

Class order is the official one: Present, Unknown, Absent. Weighted accuracy weights correct
Present patients by 5, Unknown by 3 and Absent by 1, relative to the same weights on the
truth counts.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

CLASSES = ("Present", "Unknown", "Absent")
CLASS_WEIGHTS = np.array([5.0, 3.0, 1.0])


def confusion(labels: np.ndarray, predictions: np.ndarray, n_classes: int = 3) -> np.ndarray:
    """`C[i, j]` = patients with true class i predicted as j."""
    labels, predictions = np.asarray(labels, int), np.asarray(predictions, int)
    out = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(out, (labels, predictions), 1)
    return out


def weighted_accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    c = confusion(labels, predictions)
    total = (CLASS_WEIGHTS * c.sum(axis=1)).sum()
    return float((CLASS_WEIGHTS * np.diag(c)).sum() / total) if total else float("nan")


def recalls(labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    c = confusion(labels, predictions)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.diag(c) / c.sum(axis=1)


def uar(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Unweighted average recall over the classes present in `labels`."""
    r = recalls(labels, predictions)
    return float(np.nanmean(r)) if np.isfinite(r).any() else float("nan")


def macro_auroc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean one-vs-rest AUROC over classes that have both positives and negatives."""
    labels = np.asarray(labels, int)
    aucs = []
    for k in range(probabilities.shape[1]):
        positive = labels == k
        if positive.any() and (~positive).any():
            aucs.append(roc_auc_score(positive, probabilities[:, k]))
    return float(np.mean(aucs)) if aucs else float("nan")


def all_metrics(labels: np.ndarray, predictions: np.ndarray, probabilities: np.ndarray | None = None) -> dict:
    r = recalls(labels, predictions)
    out = {
        "weighted_accuracy": weighted_accuracy(labels, predictions),
        "uar": uar(labels, predictions),
        **{f"recall_{name.lower()}": float(v) for name, v in zip(CLASSES, r)},
        "auroc": macro_auroc(labels, probabilities) if probabilities is not None else float("nan"),
        "n_patients": int(len(labels)),
    }
    return out


def bootstrap_ci(labels: np.ndarray, predictions: np.ndarray, metric=weighted_accuracy,
                 n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap interval over patients."""
    rng = np.random.default_rng(seed)
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    n = len(labels)
    stats = [metric(labels[idx], predictions[idx]) for idx in (rng.integers(0, n, n) for _ in range(n_boot))]
    lo, hi = np.nanpercentile(stats, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)
