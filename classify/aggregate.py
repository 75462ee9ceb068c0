"""Segment scores -> recording scores -> patient decisions.

Recording probability = mean of its segments' probabilities. Patient decision, the paper's
rule: Present if any recording is predicted Present, else Unknown if any is Unknown, else
Absent. Alternatives: argmax of the mean recording probabilities, and a threshold rule that
calls Present / Unknown when the patient's max probability of it exceeds a tuned threshold.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

PRESENT, UNKNOWN, ABSENT = 0, 1, 2
DECISIONS = ("any", "mean", "threshold")


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


def aggregate_patients(segment_proba: np.ndarray, recording_ids: np.ndarray, patient_of: dict[str, str],
                       decision: str = "any", thresholds: tuple[float, float] | None = None
                       ) -> pd.DataFrame:
    """One row per patient: patient_id, prediction, p_present, p_unknown, p_absent.

    Probabilities reported per patient are the mean over its recordings; with the "any" rule
    the p_present column is the max over recordings (what drove the decision).
    """
    rec_ids, rec_proba = mean_by_group(segment_proba, recording_ids)
    patients = np.array([patient_of[r] for r in rec_ids])
    rows = []
    for pid in pd.unique(patients):
        p = rec_proba[patients == pid]
        mean = p.mean(axis=0)
        if decision == "any":
            pred = patient_rule(p.argmax(axis=1))
        elif decision == "mean":
            pred = int(mean.argmax())
        elif decision == "threshold":
            t_present, t_unknown = thresholds if thresholds is not None else (0.5, 0.5)
            pred = PRESENT if p[:, PRESENT].max() >= t_present else (
                UNKNOWN if p[:, UNKNOWN].max() >= t_unknown else ABSENT)
        else:
            raise ValueError(f"decision must be one of {DECISIONS}, got {decision!r}")
        rows.append({"patient_id": pid, "prediction": pred, "p_present": mean[0], "p_unknown": mean[1],
                     "p_absent": mean[2], "max_p_present": p[:, 0].max(), "max_p_unknown": p[:, 1].max()})
    return pd.DataFrame(rows)
