"""What an evaluation run gives, for probes and recipes alike: a `SplitResult` per split x seed
(scores and per-patient predictions, one format), built by `patient_result`; and the summary over runs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import pandas as pd

from classify.evaluation.rules import DecisionRule
from classify.task import Task


def proba_columns(classes: Iterable[str]) -> list[str]:
    return [f"p_{c.lower()}" for c in classes]


@dataclass
class SplitResult:
    encoder: str
    probe: str
    split: str
    metrics: dict
    predictions: pd.DataFrame  # patient_id, split, label, prediction, p_<class>...
    params: dict = field(default_factory=dict)
    val_score: float = float("nan")
    val_metric: str = "weighted_accuracy"
    model: object = None  # the fitted probe (single encoders), kept for --save-model
    rule: DecisionRule | None = None  # the fitted decision rule

    def score_row(self) -> dict:
        return {"encoder": self.encoder, "probe": self.probe, "split": self.split, **self.metrics,
                f"val_{self.val_metric}": self.val_score,
                "params": ";".join(f"{k}={v}" for k, v in self.params.items())}


def patient_result(task: Task, encoder: str, probe: str, run_name: str, group_ids, pred: np.ndarray,
                   proba: np.ndarray, params: dict, val_score: float, model: object = None,
                   rule: DecisionRule | None = None, extra_metrics: dict | None = None) -> SplitResult:
    """One run's result: per test patient its call and probabilities beside its label, and the
    scoring's metrics over them (plus `extra_metrics`, e.g. a recipe's inner CV)."""
    labels = task.labels_of(group_ids)
    frame = pd.DataFrame(proba, columns=proba_columns(task.classes))
    frame.insert(0, "patient_id", np.asarray(group_ids))
    frame.insert(1, "split", run_name)
    frame.insert(2, "prediction", pred)
    frame["label"] = labels
    metrics = {**task.scoring.all(labels, np.asarray(pred), proba), **(extra_metrics or {})}
    return SplitResult(encoder, probe, run_name, metrics, frame, params, float(val_score), task.scoring.primary,
                       model, rule)


SCORE_KEYS = ("encoder", "probe", "split", "n_patients", "params")


def metric_columns(scores: pd.DataFrame) -> list[str]:
    """The metric columns of a scores table, in its order."""
    return [c for c in scores.columns if c not in SCORE_KEYS and not c.startswith(("val_", "_"))]


def summary_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over splits per encoder × probe."""
    cols = metric_columns(scores)
    grouped = scores.groupby(["encoder", "probe"], sort=False)[cols]
    mean, std = grouped.mean(), grouped.std(ddof=0)
    table = pd.DataFrame(index=mean.index)
    for col in cols:
        table[col] = [f"{m:.3f} ± {s:.3f}" for m, s in zip(mean[col], std[col])]
    table["splits"] = grouped.size()
    return table.reset_index()
