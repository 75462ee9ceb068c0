"""Bootstrap intervals over test patients, and paired differences between two rows of a comparison.

A row (an encoder under a protocol) has one set of predictions per run (split x seed). Its score
is the mean over runs of the metric on each run's test patients. The bootstrap resamples patients:
for each split one set of draws (patient indices, with replacement) is made once and used for
every seed of that split and for every row, so two rows are compared on the same resampled patients
and seeds: the difference's interval is paired. Intervals are percentile intervals of the mean
over runs.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from classify.evaluation.metrics import Scoring, recalls

CI_METRICS = ("weighted_accuracy", "uar", "auroc")  # the metrics given intervals and paired differences


@dataclass(frozen=True)
class RunPredictions:
    """One row's test predictions on one run."""
    run: str  # SPLIT@seedS
    split: str
    patient_ids: np.ndarray
    labels: np.ndarray
    predictions: np.ndarray
    proba: np.ndarray  # (patients, classes)

    def ordered(self, patient_ids: np.ndarray) -> "RunPredictions":
        """The same predictions with rows in `patient_ids` order (which must be this run's patients)."""
        index = {p: i for i, p in enumerate(self.patient_ids)}
        missing = [p for p in patient_ids if p not in index]
        if missing or len(patient_ids) != len(self.patient_ids):
            raise ValueError(f"run {self.run}: the rows compared predict other test patients "
                             f"(e.g. {missing[:3] or sorted(set(self.patient_ids) - set(patient_ids))[:3]})")
        rows = np.array([index[p] for p in patient_ids])
        return RunPredictions(self.run, self.split, np.asarray(patient_ids), self.labels[rows],
                              self.predictions[rows], self.proba[rows])


def bootstrap_draws(test_patients: dict[str, np.ndarray], n_boot: int = 1000, seed: int = 0
                    ) -> dict[str, np.ndarray]:
    """Split -> (n_boot, n) indices into that split's sorted test patients; each split's draws
    come from their own generator, seeded by `seed` and the split's position in sorted order."""
    return {split: np.random.default_rng([seed, i]).integers(0, len(test_patients[split]),
                                                             (n_boot, len(test_patients[split])))
            for i, split in enumerate(sorted(test_patients))}


def rank_aurocs(labels: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """One-vs-rest AUROC per class for many resamples at once: labels (B, n), proba (B, n, K) ->
    (B, K), NaN where a resample has no positive or no negative of the class (Mann-Whitney U with
    ties averaged, which is what `roc_auc_score` gives)."""
    out = np.full(proba.shape[::2], np.nan)
    for k in range(proba.shape[2]):
        positive = labels == k
        n_pos = positive.sum(axis=1)
        n_neg = labels.shape[1] - n_pos
        ranks = rankdata(proba[:, :, k], axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, k] = ((ranks * positive).sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
        out[(n_pos == 0) | (n_neg == 0), k] = np.nan
    return out


def run_metric(scoring: Scoring, metric: str, labels: np.ndarray, predictions: np.ndarray,
               proba: np.ndarray) -> float:
    if metric == "auroc":
        aucs = rank_aurocs(labels[None], proba[None])[0]
        return float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan")
    return scoring.metric(metric, labels, predictions)


def draw_values(scoring: Scoring, metric: str, run: RunPredictions, draws: np.ndarray) -> np.ndarray:
    """The metric of one run on every resample of its test patients (`draws`: (B, n) indices
    into the run's patients in sorted order)."""
    if metric == "auroc":
        aucs = rank_aurocs(run.labels[draws], run.proba[draws])
        with warnings.catch_warnings():  # a resample where no class has both positives and negatives
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(aucs, axis=1)
    return np.array([scoring.metric(metric, run.labels[d], run.predictions[d]) for d in draws])


@dataclass
class RowBootstrap:
    """One row's point estimates (mean over runs) and per-resample means, by metric."""
    point: dict[str, float]
    draws: dict[str, np.ndarray]  # metric -> (B,)
    runs: tuple[str, ...]


def row_bootstrap(scoring: Scoring, runs: list[RunPredictions], draws: dict[str, np.ndarray],
                  metrics: tuple[str, ...] = CI_METRICS) -> RowBootstrap:
    """A row's scores over its runs; `draws` from `bootstrap_draws` over the same test patients."""
    runs = sorted((r.ordered(np.array(sorted(r.patient_ids))) for r in runs), key=lambda r: r.run)
    point, values = {}, {}
    for metric in metrics:
        point[metric] = float(np.mean([run_metric(scoring, metric, r.labels, r.predictions, r.proba) for r in runs]))
        values[metric] = np.mean([draw_values(scoring, metric, r, draws[r.split]) for r in runs], axis=0)
    return RowBootstrap(point, values, tuple(r.run for r in runs))


def interval(values: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if not len(finite):
        return float("nan"), float("nan")
    lo, hi = np.percentile(finite, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def paired_difference(a: RowBootstrap, b: RowBootstrap, metric: str, alpha: float = 0.05
                      ) -> tuple[float, float, float]:
    """(a - b, CI low, CI high) of one metric: the same runs, the same resampled patients."""
    if a.runs != b.runs:
        raise ValueError(f"paired rows need the same runs: {sorted(set(a.runs) ^ set(b.runs))[:4]} differ")
    return (a.point[metric] - b.point[metric], *interval(a.draws[metric] - b.draws[metric], alpha))


def class_recalls(scoring: Scoring, runs: list[RunPredictions]) -> dict[str, float]:
    """Mean over runs of each class's recall."""
    per_run = np.array([recalls(r.labels, r.predictions, len(scoring.classes)) for r in runs])
    return {f"recall_{c.lower()}": float(np.nanmean(per_run[:, k])) for k, c in enumerate(scoring.classes)}
