"""Linear evaluation over group-level (patient) splits.

Per split: every candidate of the probe's grid is fit on the train segments and scored on the
val groups by the task's selection metric (CirCor: weighted accuracy); the best candidate (fit on
train only) then predicts the test groups, which are touched once. Optional: out-of-fold
recording scores on the train groups (group-wise folds) for stacking and for steadier tuned
decision rules.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from embed.cache import CachedRecording

from classify.evaluation.rules import DecisionName, DecisionRule, GroupTable, make_rule, mean_by_group
from classify.features.caches import SegmentSet, segment_set
from classify.estimators.base import fit_probe, full_proba
from classify.estimators.probes import PROBES, probe_grid
from classify.estimators.search import cross_fit, group_folds
from classify.evaluation.results import SplitResult, patient_result
from classify.evaluation.selection import select_best
from classify.task import Task


@dataclass
class RecordingScores:
    """Mean segment probabilities per recording."""
    recording_ids: np.ndarray
    patient_ids: np.ndarray  # group ids
    proba: np.ndarray  # (n_recordings, n_classes)

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

    def table(self) -> GroupTable:
        return GroupTable.from_recordings(self.proba, self.patient_ids)


def fit_rule(task: Task, scores: RecordingScores, decision: DecisionName) -> tuple[DecisionRule, float]:
    """The decision rule fit on `scores` (tuned rules search their grid) and its selection score."""
    table = scores.table()
    y = task.labels_of(table.group_ids)
    rule = make_rule(decision, task.scoring.class_weights).fit(table, y, task.scoring.selection_key)
    return rule, task.scoring.selection_key(y, rule.predict(table))[0]


@dataclass
class EncoderScores:
    """One encoder's probe on one split: recording scores for val, test and (optionally) OOF train."""
    model: object
    params: dict
    val_score: float
    val: RecordingScores
    test: RecordingScores
    oof: RecordingScores | None = None


def fit_encoder(task: Task, embeddings: dict[str, CachedRecording], split: dict[str, str], probe: str, *,
                decision: DecisionName = "any", seed: int = 0, oof_folds: int = 0) -> EncoderScores:
    # one BLAS thread: the probes' small matrix products run ~10x slower when BLAS threads
    # oversubscribe the cores (measured: lbfgs on 15k x 120 went from 14 s to 1.3 s)
    with threadpool_limits(limits=1, user_api="blas"):
        return _fit_encoder(task, embeddings, split, probe, decision, seed, oof_folds)


def _fit_encoder(task, embeddings, split, probe, decision, seed, oof_folds) -> EncoderScores:
    train_ids = task.ids_in(split, "train")
    train = segment_set(task, embeddings, train_ids, "train")
    val = segment_set(task, embeddings, task.ids_in(split, "val"), "eval")
    test = segment_set(task, embeddings, task.ids_in(split, "test"), "eval")

    def val_score(candidate):
        fit_probe(candidate, train.X, train.y, train.patient_ids)
        scores = RecordingScores.from_segments(val, full_proba(candidate, val.X, task.n_classes))
        return fit_rule(task, scores, decision)[1], scores

    best, best_score, best_val = select_best(probe_grid(probe, seed), val_score)
    test_scores = RecordingScores.from_segments(test, full_proba(best, test.X, task.n_classes))
    params = {k: v for k, v in best.get_params().items() if k in PROBES[probe].grid}
    oof = out_of_fold(task, embeddings, train_ids, best, oof_folds, seed) if oof_folds else None
    return EncoderScores(best, params, float(best_score), best_val, test_scores, oof)


def out_of_fold(task: Task, embeddings: dict[str, CachedRecording], group_ids: list[str], model,
                folds: int, seed: int) -> RecordingScores:
    """Recording scores for training groups from models that never saw their group."""
    def rows(idx, which):
        return segment_set(task, embeddings, [group_ids[i] for i in idx], which)

    def fit_rows(idx):
        fit = rows(idx, "train")
        return fit.X, fit.y, fit.patient_ids

    out = None
    folds = group_folds(task.labels_of(group_ids), np.asarray(group_ids), folds, seed)
    for held_idx, fold_model in cross_fit(model, folds, fit_rows):
        held = rows(held_idx, "eval")
        scores = RecordingScores.from_segments(held, full_proba(fold_model, held.X, task.n_classes))
        out = scores if out is None else out.concat(scores)
    return out


def split_result(task: Task, encoder: str, probe: str, split_name: str, val: RecordingScores,
                test: RecordingScores, decision: DecisionName, params: dict | None = None,
                oof: RecordingScores | None = None, model: object = None) -> SplitResult:
    """Fit the decision rule, apply it to the test recordings and score them.

    Tuned rules are fit on val, or on val plus the out-of-fold train scores when given: 95 val
    patients alone make noisy thresholds, the OOF scores add ~600 patients no model saw.
    """
    rule, val_score = fit_rule(task, val, decision)
    if rule.tuned and oof is not None:
        rule, _ = fit_rule(task, oof.concat(val), decision)
    table = test.table()
    return patient_result(task, encoder, probe, split_name, table.group_ids, rule.predict(table), table.mean,
                          {**(params or {}), **rule.describe()}, val_score, model, rule)


def variant_name(probe: str, targets: str = "patient", decision: DecisionName = "any") -> str:
    """Probe column label: e.g. 'linear+any', 'linear+loc+mean', 'xgboost+loc+thr'."""
    return probe + ("" if targets == "patient" else f"+{targets[:3]}") + make_rule(decision).suffix
