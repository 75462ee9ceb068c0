"""Linear evaluation over patient-level splits.

Per split: every candidate of the probe's grid is fit on the train segments and scored on the
val patients by patient-level weighted accuracy; the best candidate (fit on train only) then
predicts the test patients, which are touched once.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from tqdm import tqdm

from embed.cache import CachedRecording
from embed.circor import CirCor

from .aggregate import aggregate_patients
from .features import SegmentSet, segment_set
from .metrics import all_metrics, weighted_accuracy
from .probes import full_proba, probe_grid


@dataclass
class SplitResult:
    encoder: str
    probe: str
    split: str
    metrics: dict
    predictions: pd.DataFrame  # patient_id, split, label, prediction, p_present, p_unknown, p_absent
    params: dict = field(default_factory=dict)
    val_weighted_accuracy: float = float("nan")

    def score_row(self) -> dict:
        return {"encoder": self.encoder, "probe": self.probe, "split": self.split, **self.metrics,
                "val_weighted_accuracy": self.val_weighted_accuracy,
                "params": ";".join(f"{k}={v}" for k, v in self.params.items())}


def patient_frame(circor: CirCor, segments: SegmentSet, proba: np.ndarray, decision: str = "any",
                  thresholds=None) -> pd.DataFrame:
    patient_of = dict(zip(segments.recording_ids, segments.patient_ids))
    frame = aggregate_patients(proba, segments.recording_ids, patient_of, decision, thresholds)
    frame["label"] = [circor.patients[p].label for p in frame["patient_id"]]
    return frame


def ids_in(split: dict[str, str], part: str, circor: CirCor) -> list[str]:
    return [p for p in circor.patient_ids() if split.get(p) == part]


def evaluate_split(circor: CirCor, embeddings: dict[str, CachedRecording], split: dict[str, str],
                   probe: str, *, encoder: str = "", split_name: str = "", decision: str = "any",
                   seed: int = 0) -> SplitResult:
    train = segment_set(circor, embeddings, ids_in(split, "train", circor), "train")
    val = segment_set(circor, embeddings, ids_in(split, "val", circor), "eval")
    test = segment_set(circor, embeddings, ids_in(split, "test", circor), "eval")
    best, best_score = None, -np.inf
    for candidate in probe_grid(probe, seed):
        candidate.fit(train.X, train.y)
        frame = patient_frame(circor, val, full_proba(candidate, val.X), decision)
        score = weighted_accuracy(frame["label"].to_numpy(), frame["prediction"].to_numpy())
        if score > best_score:
            best, best_score = candidate, score
    frame = patient_frame(circor, test, full_proba(best, test.X), decision)
    metrics = all_metrics(frame["label"].to_numpy(), frame["prediction"].to_numpy(),
                          frame[["p_present", "p_unknown", "p_absent"]].to_numpy())
    frame.insert(1, "split", split_name)
    params = {k: v for k, v in best.get_params().items() if k in _grid_keys(probe)}
    return SplitResult(encoder, probe, split_name, metrics, frame, params, float(best_score))


def _grid_keys(probe: str) -> list[str]:
    from .probes import PROBES
    return list(PROBES[probe][1])


def evaluate(circor: CirCor, embeddings: dict[str, CachedRecording], splits: dict[str, dict[str, str]],
             probe: str, encoder: str, decision: str = "any", seed: int = 0, progress: bool = True
             ) -> list[SplitResult]:
    results = []
    for name, split in tqdm(splits.items(), desc=f"{encoder} × {probe}", disable=not progress, leave=False):
        results.append(evaluate_split(circor, embeddings, split, probe, encoder=encoder, split_name=name,
                                      decision=decision, seed=seed))
    return results


def summary_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over splits per encoder × probe."""
    cols = ["weighted_accuracy", "uar", "recall_present", "recall_unknown", "recall_absent", "auroc"]
    grouped = scores.groupby(["encoder", "probe"], sort=False)[cols]
    mean, std = grouped.mean(), grouped.std(ddof=0)
    table = pd.DataFrame(index=mean.index)
    for col in cols:
        table[col] = [f"{m:.3f} ± {s:.3f}" for m, s in zip(mean[col], std[col])]
    table["splits"] = grouped.size()
    return table.reset_index()
