"""What `classify/` takes from a dataset: class names, group ids, integer labels and arrays.

`Task.from_dataset` is the only place that reads a dataset object (any `embed.datasets.Dataset`);
everything after it works on these names, ids and arrays.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from classify.evaluation.metrics import Scoring


@dataclass
class Task:
    scoring: Scoring
    group_ids: list[str]  # canonical order
    group_labels: dict[str, int]
    recordings_of: dict[str, list[str]]  # group id -> recording ids
    targets: dict[str, int]  # recording id -> training target (the label scheme applied)
    target_scheme: str = "patient"
    locations: tuple[str, ...] = ()  # location names, when recordings have them
    recording_location: dict[str, str] = field(default_factory=dict)
    covariates: Callable[[np.ndarray], np.ndarray] | None = None  # group ids -> rows (refuses if none)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.scoring.classes

    @property
    def n_classes(self) -> int:
        return len(self.scoring.classes)

    @staticmethod
    def from_dataset(dataset, targets: str = "patient") -> "Task":
        recordings_of: dict[str, list[str]] = {}
        for rec in dataset.recordings():
            recordings_of.setdefault(rec.group_id, []).append(rec.recording_id)
        return Task(
            scoring=Scoring(tuple(dataset.classes), tuple(dataset.metrics),
                            tuple(dataset.class_weights) if dataset.class_weights else None),
            group_ids=list(dataset.group_ids()), group_labels=dataset.group_labels(),
            recordings_of=recordings_of, targets=dataset.recording_labels(targets), target_scheme=targets,
            locations=tuple(dataset.locations),
            recording_location={r.recording_id: r.location for r in dataset.recordings()},
            covariates=dataset.covariates)

    def ids_in(self, split: dict[str, str], part: str) -> list[str]:
        """Groups of `split` in `part` ("train" | "val" | "test"), in canonical order."""
        return [g for g in self.group_ids if split.get(g) == part]

    def labels_of(self, group_ids) -> np.ndarray:
        return np.array([self.group_labels[g] for g in group_ids])

    def all_recordings(self) -> list[str]:
        return [r for g in self.group_ids for r in self.recordings_of.get(g, [])]
