"""Linear evaluation over patient-level splits.

Per split: every candidate of the probe's grid is fit on the train segments and scored on the
val patients by patient-level weighted accuracy; the best candidate (fit on train only) then
predicts the test patients, which are touched once. Optional: out-of-fold recording scores on
the train patients (patient-grouped folds) for stacking, recording-level targets from murmur
locations, and patient decisions whose thresholds or class weights are tuned on val.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.model_selection import StratifiedGroupKFold
from threadpoolctl import threadpool_limits

from embed.cache import CachedRecording
from embed.circor import CirCor

from .aggregate import TUNED_DECISIONS, aggregate_patients, decide_patients, mean_by_group, patient_table
from .features import SegmentSet, segment_set
from .metrics import all_metrics, uar, weighted_accuracy
from .probes import PROBES, fit_probe, full_proba, probe_grid

TARGETS = ("patient", "location")
PROBA_COLUMNS = ["p_present", "p_unknown", "p_absent"]
THRESHOLD_GRID = np.round(np.arange(0.05, 0.96, 0.05), 2)
# class weights of the weighted rule: Present and Unknown scaled by e^-1.5 ... e^1.5 against Absent
WEIGHT_GRID = np.round(np.exp(np.linspace(-1.5, 1.5, 13)), 4)
DECISION_GRIDS = {"threshold": THRESHOLD_GRID, "weighted": WEIGHT_GRID}
DECISION_SUFFIX = {"any": "+any", "mean": "+mean", "threshold": "+thr", "weighted": "+wgt"}


def recording_targets(circor: CirCor, scheme: str = "patient") -> dict[str, int] | None:
    """Per-recording training targets. "location": a Present patient's recordings count as
    murmur recordings only at the locations listed in 'Murmur locations', Absent elsewhere."""
    if scheme == "patient":
        return None
    if scheme != "location":
        raise ValueError(f"targets must be one of {TARGETS}, got {scheme!r}")
    out = {}
    for patient in circor.patients.values():
        for rec in patient.recordings:
            if patient.murmur == "Present":
                out[rec.recording_id] = 0 if rec.location in patient.murmur_locations else 2
            else:
                out[rec.recording_id] = patient.label
    return out


@dataclass
class RecordingScores:
    """Mean segment probabilities per recording."""
    recording_ids: np.ndarray
    patient_ids: np.ndarray
    proba: np.ndarray  # (n_recordings, 3)

    @staticmethod
    def from_segments(segments: SegmentSet, proba: np.ndarray) -> "RecordingScores":
        rec_ids, rec_proba = mean_by_group(proba, segments.recording_ids)
        patient_of = dict(zip(segments.recording_ids, segments.patient_ids))
        return RecordingScores(rec_ids, np.array([patient_of[r] for r in rec_ids]), rec_proba)

    def concat(self, other: "RecordingScores") -> "RecordingScores":
        return RecordingScores(np.concatenate([self.recording_ids, other.recording_ids]),
                               np.concatenate([self.patient_ids, other.patient_ids]),
                               np.concatenate([self.proba, other.proba]))

    def reindex(self, recording_ids: np.ndarray) -> "RecordingScores":
        pos = {r: i for i, r in enumerate(self.recording_ids)}
        idx = np.array([pos[r] for r in recording_ids])
        return RecordingScores(self.recording_ids[idx], self.patient_ids[idx], self.proba[idx])


def patient_frame(circor: CirCor, scores: RecordingScores, decision: str = "any",
                  thresholds: tuple[float, float] | None = None) -> pd.DataFrame:
    frame = aggregate_patients(scores.proba, scores.recording_ids, dict(zip(scores.recording_ids, scores.patient_ids)),
                               decision, thresholds)
    frame["label"] = [circor.patients[p].label for p in frame["patient_id"]]
    return frame


def _score(frame: pd.DataFrame) -> tuple[float, float]:
    labels, preds = frame["label"].to_numpy(), frame["prediction"].to_numpy()
    return weighted_accuracy(labels, preds), uar(labels, preds)


def tune_decision(circor: CirCor, scores: RecordingScores, decision: str = "threshold"
                    ) -> tuple[tuple[float, float], float]:
    """The decision's two parameters (thresholds on the max recording P(Present) / P(Unknown), or
    the weighted rule's class weights) that maximise weighted accuracy on `scores` (ties: UAR)."""
    table = patient_table(scores.proba, scores.recording_ids, dict(zip(scores.recording_ids, scores.patient_ids)))
    labels = np.array([circor.patients[p].label for p in table["patient_id"]])
    grid = DECISION_GRIDS[decision]
    best, best_key = None, (-1.0, -1.0)
    for first in grid:
        for second in grid:
            preds = decide_patients(table, decision, (first, second))
            key = (weighted_accuracy(labels, preds), uar(labels, preds))
            if key > best_key:
                best, best_key = (float(first), float(second)), key
    return best, best_key[0]


def decide(circor: CirCor, val: RecordingScores, decision: str) -> tuple[tuple[float, float] | None, float]:
    """Tuned parameters (for the threshold and weighted rules, on val) and the val weighted accuracy."""
    if decision in TUNED_DECISIONS:
        return tune_decision(circor, val, decision)
    return None, _score(patient_frame(circor, val, decision))[0]


def ids_in(split: dict[str, str], part: str, circor: CirCor) -> list[str]:
    return [p for p in circor.patient_ids() if split.get(p) == part]


@dataclass
class EncoderScores:
    """One encoder's probe on one split: recording scores for val, test and (optionally) OOF train."""
    model: object
    params: dict
    val_weighted_accuracy: float
    val: RecordingScores
    test: RecordingScores
    oof: RecordingScores | None = None


def fit_encoder(circor: CirCor, embeddings: dict[str, CachedRecording], split: dict[str, str], probe: str, *,
                targets: str = "patient", decision: str = "any", seed: int = 0, oof_folds: int = 0
                ) -> EncoderScores:
    # one BLAS thread: the probes' small matrix products run ~10x slower when BLAS threads
    # oversubscribe the cores (measured: lbfgs on 15k x 120 went from 14 s to 1.3 s)
    with threadpool_limits(limits=1, user_api="blas"):
        return _fit_encoder(circor, embeddings, split, probe, targets, decision, seed, oof_folds)


def _fit_encoder(circor, embeddings, split, probe, targets, decision, seed, oof_folds) -> EncoderScores:
    labels = recording_targets(circor, targets)
    train_ids = ids_in(split, "train", circor)
    train = segment_set(circor, embeddings, train_ids, "train", labels)
    val = segment_set(circor, embeddings, ids_in(split, "val", circor), "eval")
    test = segment_set(circor, embeddings, ids_in(split, "test", circor), "eval")
    best, best_score, best_val = None, -np.inf, None
    for candidate in probe_grid(probe, seed):
        fit_probe(candidate, train.X, train.y, train.patient_ids)
        val_scores = RecordingScores.from_segments(val, full_proba(candidate, val.X))
        _, score = decide(circor, val_scores, decision)
        if score > best_score:
            best, best_score, best_val = candidate, score, val_scores
    test_scores = RecordingScores.from_segments(test, full_proba(best, test.X))
    params = {k: v for k, v in best.get_params().items() if k in PROBES[probe][1]}
    oof = out_of_fold(circor, embeddings, train_ids, best, labels, oof_folds, seed) if oof_folds else None
    return EncoderScores(best, params, float(best_score), best_val, test_scores, oof)


def out_of_fold(circor: CirCor, embeddings: dict[str, CachedRecording], patient_ids: list[str], model,
                labels: dict[str, int] | None, folds: int, seed: int) -> RecordingScores:
    """Recording scores for training patients from models that never saw their patient."""
    y = np.array([circor.patients[p].label for p in patient_ids])
    splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    out = None
    for fit_idx, held_idx in splitter.split(np.zeros(len(y)), y, groups=patient_ids):
        fit = segment_set(circor, embeddings, [patient_ids[i] for i in fit_idx], "train", labels)
        held = segment_set(circor, embeddings, [patient_ids[i] for i in held_idx], "eval")
        fold_model = fit_probe(clone(model), fit.X, fit.y, fit.patient_ids)
        scores = RecordingScores.from_segments(held, full_proba(fold_model, held.X))
        out = scores if out is None else out.concat(scores)
    return out


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


def test_result(circor: CirCor, encoder: str, probe: str, split_name: str, val: RecordingScores,
                test: RecordingScores, decision: str, params: dict | None = None,
                oof: RecordingScores | None = None) -> SplitResult:
    """Apply the decision rule to the test recordings and score them.

    Thresholds are tuned on val, or on val plus the out-of-fold train scores when given: 95 val
    patients alone make noisy thresholds, the OOF scores add ~600 patients no model saw.
    """
    thresholds, val_score = decide(circor, val, decision)
    if thresholds is not None and oof is not None:
        thresholds, _ = tune_decision(circor, oof.concat(val), decision)
    frame = patient_frame(circor, test, decision, thresholds)
    metrics = all_metrics(frame["label"].to_numpy(), frame["prediction"].to_numpy(), frame[PROBA_COLUMNS].to_numpy())
    frame.insert(1, "split", split_name)
    params = dict(params or {})
    if thresholds is not None:
        params["thresholds" if decision == "threshold" else "class_weights"] = \
            f"{thresholds[0]:.2f}/{thresholds[1]:.2f}"
    return SplitResult(encoder, probe, split_name, metrics, frame, params, float(val_score))


def variant_name(probe: str, targets: str = "patient", decision: str = "any") -> str:
    """Probe column label: e.g. 'linear+any', 'linear+loc+mean', 'xgboost+loc+thr'."""
    return probe + ("+loc" if targets == "location" else "") + DECISION_SUFFIX[decision]


def evaluate_split(circor: CirCor, embeddings: dict[str, CachedRecording], split: dict[str, str],
                   probe: str, *, encoder: str = "", split_name: str = "", decision: str = "any",
                   targets: str = "patient", seed: int = 0) -> SplitResult:
    fitted = fit_encoder(circor, embeddings, split, probe, targets=targets, decision=decision, seed=seed)
    return test_result(circor, encoder, variant_name(probe, targets, decision), split_name, fitted.val,
                       fitted.test, decision, fitted.params)


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
