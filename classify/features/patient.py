"""A patient's features for the patient model: its recordings' member probabilities per location."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from classify.estimators.search import EPS


@dataclass
class MemberScores:
    """One stage-1 member's recording probabilities."""
    name: str
    recording_ids: np.ndarray
    proba: np.ndarray  # (n_recordings, n_classes)


def patient_features(members: list[MemberScores], group_ids: list[str], recordings_of: dict[str, list[str]],
                     location_of: dict[str, str], locations: tuple[str, ...]) -> np.ndarray:
    """Rows for `group_ids`: per member, the log probabilities averaged per location (0 where the
    location is missing), their mean and max over the patient's recordings; then one missing flag
    per location. Datasets without locations get the mean and max only."""
    rows = []
    indexes = [{r: i for i, r in enumerate(m.recording_ids)} for m in members]
    for gid in group_ids:
        recs = recordings_of.get(gid, [])
        row = []
        for m, index in zip(members, indexes):
            mine = [r for r in recs if r in index]
            logp = np.log(np.clip(m.proba[[index[r] for r in mine]], EPS, 1.0)) if mine else None
            n = m.proba.shape[1]
            for loc in locations:
                at = [i for i, r in enumerate(mine) if location_of.get(r) == loc]
                row.extend(logp[at].mean(axis=0) if at else np.zeros(n))
            row.extend(logp.mean(axis=0) if mine else np.zeros(n))
            row.extend(logp.max(axis=0) if mine else np.zeros(n))
        row.extend(float(not any(location_of.get(r) == loc for r in recs)) for loc in locations)
        rows.append(row)
    return np.asarray(rows, dtype=np.float64)
