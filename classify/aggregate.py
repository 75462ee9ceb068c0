"""Segment scores -> recording scores -> patient decisions.

Recording probability = mean of its segments' probabilities. Patient decision, the paper's
rule: Present if any recording is predicted Present, else Unknown if any is Unknown, else
Absent. Alternatives: argmax of the mean recording probabilities; a threshold rule that
calls Present / Unknown when the patient's max probability of it exceeds a tuned threshold; and
a weighted rule, argmax of the mean probabilities scaled by tuned class weights (the Bayes
decision for weighted accuracy when the scales absorb its 5/3/1 costs and the class priors).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

PRESENT, UNKNOWN, ABSENT = 0, 1, 2
DECISIONS = ("any", "mean", "threshold", "weighted")
TUNED_DECISIONS = ("threshold", "weighted")


def mean_by_group(values: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean rows of `values` per group; returns (group ids in first-seen order, means)."""
    frame = pd.DataFrame(values)
    frame["_g"] = groups
    means = frame.groupby("_g", sort=False).mean()
    return means.index.to_numpy(), means.to_numpy()


def patient_rule(recording_classes: np.ndarray) -> int:
    """The paper's hierarchy: Present > Unknown > Absent."""
    if (recording_classes == PRESENT).any():
        return PRESENT
    if (recording_classes == UNKNOWN).any():
        return UNKNOWN
    return ABSENT


def patient_table(recording_proba: np.ndarray, recording_ids: np.ndarray, patient_of: dict[str, str]
                  ) -> pd.DataFrame:
    """Per patient: mean and max recording probabilities, and which classes any recording predicts."""
    frame = pd.DataFrame(recording_proba, columns=["p_present", "p_unknown", "p_absent"])
    frame["patient_id"] = [patient_of[r] for r in recording_ids]
    calls = recording_proba.argmax(axis=1)
    frame["any_present"], frame["any_unknown"] = calls == PRESENT, calls == UNKNOWN
    grouped = frame.groupby("patient_id", sort=False)
    table = grouped[["p_present", "p_unknown", "p_absent"]].mean()
    table["max_p_present"] = grouped["p_present"].max()
    table["max_p_unknown"] = grouped["p_unknown"].max()
    table["any_present"] = grouped["any_present"].any()
    table["any_unknown"] = grouped["any_unknown"].any()
    return table.reset_index()


def decide_patients(table: pd.DataFrame, decision: str = "any",
                    thresholds: tuple[float, float] | None = None) -> np.ndarray:
    """Patient classes from `patient_table`. `thresholds`: the tuned pair of the threshold rule
    (Present, Unknown thresholds) or of the weighted rule (Present, Unknown class weights)."""
    if decision == "any":
        present, unknown = table["any_present"].to_numpy(), table["any_unknown"].to_numpy()
    elif decision == "mean":
        return table[["p_present", "p_unknown", "p_absent"]].to_numpy().argmax(axis=1)
    elif decision == "threshold":
        t_present, t_unknown = thresholds if thresholds is not None else (0.5, 0.5)
        present = table["max_p_present"].to_numpy() >= t_present
        unknown = table["max_p_unknown"].to_numpy() >= t_unknown
    elif decision == "weighted":
        s_present, s_unknown = thresholds if thresholds is not None else (1.0, 1.0)
        proba = table[["p_present", "p_unknown", "p_absent"]].to_numpy()
        return (proba * np.array([s_present, s_unknown, 1.0])).argmax(axis=1)
    else:
        raise ValueError(f"decision must be one of {DECISIONS}, got {decision!r}")
    return np.where(present, PRESENT, np.where(unknown, UNKNOWN, ABSENT))


def aggregate_patients(segment_proba: np.ndarray, recording_ids: np.ndarray, patient_of: dict[str, str],
                       decision: str = "any", thresholds: tuple[float, float] | None = None
                       ) -> pd.DataFrame:
    """One row per patient: patient_id, prediction, p_present, p_unknown, p_absent (means over
    its recordings), max_p_present, max_p_unknown (what the threshold rule looks at)."""
    rec_ids, rec_proba = mean_by_group(segment_proba, recording_ids)
    table = patient_table(rec_proba, rec_ids, patient_of)
    table.insert(1, "prediction", decide_patients(table, decision, thresholds))
    return table.drop(columns=["any_present", "any_unknown"])
