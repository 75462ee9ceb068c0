"""Segment scores -> recording scores -> group (patient) decisions.

Recording probability = mean of its segments' probabilities. Group decisions are fitted rule
objects (fit / predict / get_params) over a `GroupTable` of per-group statistics; classes are
in priority order, the last one being "nothing found" (CirCor: Present, Unknown, Absent):

- *any* (the paper's rule): the first class that any recording is called;
- *mean*: argmax of the mean recording probabilities;
- *threshold*: the first class whose max recording probability reaches its tuned threshold;
- *weighted*: argmax of the mean probabilities scaled by tuned class weights (the Bayes decision
  for a weighted accuracy when the scales absorb its costs and the class priors);
- *cost*: argmax of the mean probabilities times the scoring's class weights (5/3/1 on CirCor):
  the expected-weighted-accuracy decision when the probabilities are calibrated, nothing tuned.

Tuned rules search a grid for the parameters that maximise the scoring's selection key. A rule
means the same everywhere: *any* and *threshold* call a patient from its recordings, so they need
recording probabilities (`needs_recordings`); given patient probabilities only (a recipe's patient
model: `GroupTable.from_patients`) they refuse rather than fall back to another rule.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from classify.evaluation.selection import select_best

DecisionName = Literal["any", "mean", "threshold", "weighted", "cost"]


def mean_by_group(values: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean rows of `values` per group; returns (group ids in first-seen order, means)."""
    frame = pd.DataFrame(values)
    frame["_g"] = groups
    means = frame.groupby("_g", sort=False).mean()
    return means.index.to_numpy(), means.to_numpy()


@dataclass
class GroupTable:
    """Per group (first-seen order): mean and max recording probabilities, and the first class
    (in priority order) that any of its recordings is called."""
    group_ids: np.ndarray
    mean: np.ndarray  # (n_groups, n_classes)
    max: np.ndarray | None  # (n_groups, n_classes); None: patient probabilities only
    first_call: np.ndarray | None  # (n_groups,); None: patient probabilities only

    @staticmethod
    def from_patients(group_ids, proba: np.ndarray) -> "GroupTable":
        """Patient-level probabilities (one row per group), with no recordings behind them."""
        return GroupTable(np.asarray(group_ids), proba, None, None)

    def recordings_needed(self, rule: str) -> None:
        if self.max is None or self.first_call is None:
            raise ValueError(f"the {rule} rule calls a patient from its recordings' probabilities, and this model "
                             "gives patient probabilities only (a patient model): use mean, weighted or cost")

    @staticmethod
    def from_recordings(recording_proba: np.ndarray, recording_groups: np.ndarray) -> "GroupTable":
        n_classes = recording_proba.shape[1]
        frame = pd.DataFrame(recording_proba, columns=range(n_classes))
        frame["_call"] = recording_proba.argmax(axis=1)
        frame["_g"] = np.asarray(recording_groups)
        grouped = frame.groupby("_g", sort=False)
        mean = grouped[list(range(n_classes))].mean()
        return GroupTable(mean.index.to_numpy(), mean.to_numpy(),
                          grouped[list(range(n_classes))].max().to_numpy(), grouped["_call"].min().to_numpy())


class DecisionRule(BaseEstimator):
    """Base of the group decision rules; `fit` is a no-op for rules with nothing to tune."""
    name: ClassVar[str] = ""
    suffix: ClassVar[str] = ""  # appended to the probe name in tables (every rule has one)
    summary: ClassVar[str] = ""  # one line for the command line's help
    tuned: ClassVar[bool] = False
    needs_recordings: ClassVar[bool] = False  # reads the recordings' max or calls, not only the mean

    def fit(self, table: GroupTable, y: np.ndarray, selection_key=None) -> "DecisionRule":
        return self

    def predict(self, table: GroupTable) -> np.ndarray:
        raise NotImplementedError

    def fitted(self) -> dict:
        """Fitted attributes as JSON-ready lists (what `to_dict` saves besides the params)."""
        return {}

    def to_dict(self) -> dict:
        return {"rule": self.name, "params": self.get_params(), "fitted": self.fitted()}

    def describe(self) -> dict:
        """Fitted values for the params column of scores.csv."""
        return {}


class AnyRule(DecisionRule):
    name, suffix = "any", "+any"
    summary = "the first class any recording is called (the CirCor paper's hierarchy)"
    needs_recordings = True

    def predict(self, table: GroupTable) -> np.ndarray:
        table.recordings_needed(self.name)
        return table.first_call


class MeanRule(DecisionRule):
    name, suffix = "mean", "+mean"
    summary = "argmax of the mean recording probabilities"

    def predict(self, table: GroupTable) -> np.ndarray:
        return table.mean.argmax(axis=1)


class CostRule(DecisionRule):
    name, suffix = "cost", "+cost"
    summary = "argmax of mean probabilities x the scoring's class weights (expected weighted accuracy)"

    def __init__(self, costs: list[float] | None = None) -> None:
        self.costs = costs  # None: equal costs (the mean rule)

    def predict(self, table: GroupTable) -> np.ndarray:
        costs = np.ones(table.mean.shape[1]) if self.costs is None else np.asarray(self.costs, float)
        return (table.mean * costs).argmax(axis=1)


class _TunedRule(DecisionRule):
    """A rule with one parameter per class but the last, chosen on a grid."""
    tuned = True
    grid: ClassVar[np.ndarray] = np.array([])
    default: ClassVar[float] = 0.0
    attribute: ClassVar[str] = ""  # the fitted attribute, e.g. "thresholds_"
    label: ClassVar[str] = ""  # its name in scores.csv's params column

    def _values(self, n_classes: int) -> np.ndarray:
        values = getattr(self, self.attribute, None)
        if values is None:
            values = getattr(self, self.attribute[:-1])
        if values is None:
            values = [self.default] * (n_classes - 1)
        if len(values) != n_classes - 1:
            raise ValueError(f"{self.name} rule has {len(values)} parameters for {n_classes} classes")
        return np.asarray(values, dtype=np.float64)

    def _apply(self, table: GroupTable, values: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict(self, table: GroupTable) -> np.ndarray:
        return self._apply(table, self._values(table.mean.shape[1]))

    def fit(self, table: GroupTable, y: np.ndarray, selection_key=None) -> "_TunedRule":
        """The grid point with the best `selection_key(y, predictions)` (a tuple; first best kept)."""
        best, _, _ = select_best(itertools.product(self.grid, repeat=table.mean.shape[1] - 1),
                                 lambda values: (selection_key(y, self._apply(table, np.asarray(values))), None))
        setattr(self, self.attribute, [float(v) for v in best])
        return self

    def fitted(self) -> dict:
        values = getattr(self, self.attribute, None)
        return {} if values is None else {self.attribute: list(values)}

    def describe(self) -> dict:
        values = getattr(self, self.attribute, None)
        return {} if values is None else {self.label: "/".join(f"{v:.2f}" for v in values)}


class ThresholdRule(_TunedRule):
    name, suffix = "threshold", "+thr"
    summary = "the first class whose highest recording probability reaches its threshold (tuned)"
    grid = np.round(np.arange(0.05, 0.96, 0.05), 2)
    default, attribute, label = 0.5, "thresholds_", "thresholds"
    needs_recordings = True

    def __init__(self, thresholds: list[float] | None = None) -> None:
        self.thresholds = thresholds

    def _apply(self, table: GroupTable, values: np.ndarray) -> np.ndarray:
        table.recordings_needed(self.name)
        n_classes = table.mean.shape[1]
        out = np.full(len(table.mean), n_classes - 1)
        for k in reversed(range(n_classes - 1)):  # the earliest class that passes wins
            out = np.where(table.max[:, k] >= values[k], k, out)
        return out


class WeightedRule(_TunedRule):
    name, suffix = "weighted", "+wgt"
    summary = "argmax of class-weighted mean recording probabilities (weights tuned)"
    # class weights against the last class: e^-1.5 ... e^1.5
    grid = np.round(np.exp(np.linspace(-1.5, 1.5, 13)), 4)
    default, attribute, label = 1.0, "weights_", "class_weights"

    def __init__(self, weights: list[float] | None = None) -> None:
        self.weights = weights

    def _apply(self, table: GroupTable, values: np.ndarray) -> np.ndarray:
        return (table.mean * np.append(values, 1.0)).argmax(axis=1)


RULES: dict[str, type[DecisionRule]] = {}


def register_rule(cls: type[DecisionRule]) -> type[DecisionRule]:
    """Make a rule known by its name everywhere (probe --decision, recipes, saved models)."""
    RULES[cls.name] = cls
    return cls


for _rule in (AnyRule, MeanRule, ThresholdRule, WeightedRule, CostRule):
    register_rule(_rule)


def make_rule(name: str, class_weights: tuple[float, ...] | None = None) -> DecisionRule:
    """A fresh rule; `class_weights` (the scoring's) become the costs of the *cost* rule."""
    if name not in RULES:
        raise ValueError(f"decision must be one of {tuple(RULES)}, got {name!r}")
    rule = RULES[name]()
    if class_weights is not None and "costs" in rule.get_params():
        rule.set_params(costs=[float(w) for w in class_weights])
    return rule


def rule_from_dict(saved: dict) -> DecisionRule:
    """Rebuild a saved rule from plain JSON (names and numbers only)."""
    rule = make_rule(saved["rule"]).set_params(**saved.get("params", {}))
    for attribute, values in saved.get("fitted", {}).items():
        if not (isinstance(rule, _TunedRule) and attribute == rule.attribute):
            raise ValueError(f"unknown fitted attribute {attribute!r} for the {rule.name} rule")
        setattr(rule, attribute, [float(v) for v in values])
    return rule
