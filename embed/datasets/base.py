"""The dataset protocol and its registry.

A dataset declares its class names (in decision priority order: a group is called the first
class any of its recordings is called, so the last class is the "nothing found" one), its
metrics, its recordings (id, group, wav, location, annotations), its label schemes, covariates
and split schemes. `classify/` sees only what these methods return: names, ids, integer labels
and arrays. Adding a dataset is one module that subclasses `Dataset` and registers a loader
with `@register_dataset("name")`; the package imports every dataset module it holds.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, ClassVar, Protocol

import numpy as np

from ..problems import Problem

Splits = dict[str, dict[str, str]]  # split name -> group id -> "train" | "val" | "test"
# attribute name -> (group id -> value, the values in reading order): descriptions of the groups
# for subgroup reports (age, murmur grade, source), never model inputs
GroupAttributes = dict[str, tuple[dict[str, str], tuple[str, ...]]]
NOT_GIVEN = "not given"  # an attribute value the dataset does not give for a group (not "n/a": pandas reads that as NaN)


class Recording(Protocol):
    """What every dataset's recordings carry."""
    recording_id: str
    wav: Path

    @property
    def group_id(self) -> str: ...

    @property
    def location(self) -> str: ...

    @property
    def expected_rate(self) -> int:
        """The dataset's own sample rate: a file at another rate is worth a note."""
        ...


class AnnotatedRecording(Recording, Protocol):
    """A recording that may carry annotated heart-cycle intervals (CirCor's `.tsv`). Readers of the
    intervals use these two members, never the dataset's files or format."""

    @property
    def segmentation_file(self) -> Path | None:
        """The file `segmentation()` reads (for messages); None where the recording has none."""
        ...

    def segmentation(self, problems: list[Problem] | None = None) -> np.ndarray:
        """The intervals as an `(n, 3)` array of (start_s, end_s, label 0-4), checked against the
        recording's length (notes go to `problems`); raises ValueError for a file that cannot be used."""
        ...


class Dataset(ABC):
    """One parsed corpus. Groups are the unit of evaluation (CirCor: patients)."""
    name: ClassVar[str] = ""
    classes: ClassVar[tuple[str, ...]] = ()
    # metric names known to classify/metrics.py; the first chooses hyper-parameters and rules
    metrics: ClassVar[tuple[str, ...]] = ()
    class_weights: ClassVar[tuple[float, ...] | None] = None  # for "weighted_accuracy"
    label_schemes: ClassVar[tuple[str, ...]] = ("patient",)
    split_schemes: ClassVar[tuple[str, ...]] = ()
    locations: ClassVar[tuple[str, ...]] = ()  # recording locations, when the dataset has them
    problems: list[Problem]

    @abstractmethod
    def recordings(self) -> list[Recording]:
        """Every usable recording, grouped by group in `group_ids()` order."""

    @abstractmethod
    def group_ids(self) -> list[str]:
        """Group ids in the dataset's canonical order (splits and tables follow it)."""

    @abstractmethod
    def group_labels(self) -> dict[str, int]:
        """Group id -> index into `classes`."""

    @abstractmethod
    def splits(self, scheme: str, seed: int = 0, folds: int = 5) -> Splits:
        """Group-level splits of a scheme named in `split_schemes`."""

    def recording_labels(self, scheme: str = "patient") -> dict[str, int]:
        """Recording id -> training target; "patient": every recording gets its group's label."""
        if scheme not in self.label_schemes:
            raise ValueError(f"{self.name}: label scheme must be one of {self.label_schemes}, got {scheme!r}")
        labels = self.group_labels()
        return {r.recording_id: labels[r.group_id] for r in self.recordings()}

    def covariates(self, group_ids) -> np.ndarray:
        """One row of numbers per group (e.g. demographics); datasets without any refuse."""
        raise ValueError(f"{self.name} has no covariates")

    def group_attributes(self) -> GroupAttributes:
        """Attributes that describe the groups, for reports broken down by subgroup; none by default."""
        return {}

    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def check_scheme(self, scheme: str) -> None:
        if scheme not in self.split_schemes:
            raise ValueError(f"unknown split scheme {scheme!r} for {self.name} "
                             f"(one of: {', '.join(self.split_schemes)})")


_LOADERS: dict[str, Callable[[str | Path], Dataset]] = {}
_CLASSES: dict[str, type[Dataset]] = {}


def register_dataset(name: str, cls: type[Dataset]) -> Callable:
    """Register `loader(data_dir) -> cls` under `name` (the `--dataset` value)."""
    def add(loader: Callable[[str | Path], Dataset]) -> Callable[[str | Path], Dataset]:
        if name in _LOADERS and _LOADERS[name] is not loader:
            raise ValueError(f"dataset name {name!r} registered twice")
        _LOADERS[name], _CLASSES[name] = loader, cls
        return loader
    return add


def split_schemes() -> dict[str, tuple[str, ...]]:
    """Dataset name -> its split schemes (for help texts and argument checks)."""
    return {name: _CLASSES[name].split_schemes for name in available_datasets()}


def available_datasets() -> list[str]:
    return sorted(_LOADERS)


def load_dataset(name: str, data_dir: str | Path) -> Dataset:
    if name not in _LOADERS:
        raise KeyError(f"unknown dataset {name!r}; available: {', '.join(available_datasets())}")
    return _LOADERS[name](data_dir)


def group_sort_key(group_id: str) -> tuple[int, str]:
    """Numeric ids in numeric order (CirCor), others alphabetically within equal length."""
    return len(group_id), group_id
