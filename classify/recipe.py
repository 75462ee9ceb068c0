"""Recipes: named, committed combinations of feature members, a patient-level model and a rule.

A recipe is data (`Recipe`): which caches it needs (`ExtractSpec`, made by `embed`), which
feature members it builds from them (`Member`), and how it decides. `fit_recipe` fits it on the
groups it is given (train + val of a split: every choice inside, C values and layer groups, is
made by patient-grouped cross-validation there); `evaluate_recipe` runs it on every split x seed
and scores the test groups, which nothing in the fit has seen.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Literal

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from .aggregate import GroupTable, make_rule
from .evaluate import SplitResult, proba_columns
from .patient_model import MemberScores, PatientModel, RecordingProbe, balanced_log_loss, patient_features
from .selection import select_best
from .task import Task

FeatureKind = Literal["windows", "phases"]


@dataclass(frozen=True)
class ExtractSpec:
    """One cache the recipe needs: `pipeline.py extract` options (the checkpoint by file name)."""
    encoder: str
    checkpoint: str | None = None
    options: tuple[tuple[str, object], ...] = ()  # e.g. (("layers", "all"),)


@dataclass(frozen=True)
class Member:
    """One stage-1 feature block. `source`: the cache's encoder name (NAME@KEY picks one of
    several); `layers`: "last" | "all" | "i,j" | "cv" (the best of `layer_groups` by CV)."""
    name: str
    source: str
    kind: FeatureKind = "windows"
    layers: str = "last"
    stats: tuple[str, ...] = ("mean",)  # statistics of the window embeddings over a recording


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    extracts: tuple[ExtractSpec, ...]
    members: tuple[Member, ...]
    targets: str = "location"  # stage-1 recording targets (the dataset's label scheme)
    patient_model: bool = True  # False: mean of the members' recording probabilities per patient
    decision: str = "cost"
    folds: int = 5

    def without(self, member_names: set[str]) -> "Recipe":
        return replace(self, members=tuple(m for m in self.members if m.name not in member_names))


@dataclass
class FeatureBlock:
    """Recording-level features of one member: rows aligned with `recording_ids`. `groups`: named
    column sets the member may choose from (layers), else None."""
    recording_ids: np.ndarray
    X: np.ndarray
    groups: dict[str, np.ndarray] | None = None

    def rows(self, recording_ids) -> tuple[np.ndarray, np.ndarray]:
        """(mask of `recording_ids` this block has, their rows)."""
        index = {r: i for i, r in enumerate(self.recording_ids)}
        have = np.array([r in index for r in recording_ids], dtype=bool)
        return have, self.X[[index[r] for r, h in zip(recording_ids, have) if h]]


def window_stats(embeddings: np.ndarray, stats: tuple[str, ...]) -> np.ndarray:
    """One recording's window embeddings `(n_windows, D)` -> its statistics, concatenated."""
    funcs: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "mean": lambda e: e.mean(axis=0), "std": lambda e: e.std(axis=0), "max": lambda e: e.max(axis=0)}
    return np.concatenate([funcs[s](embeddings) for s in stats])


@dataclass
class FittedRecipe:
    recipe: Recipe
    stage1: dict[str, RecordingProbe]
    columns: dict[str, np.ndarray | None]  # member -> the feature columns it uses (None: all)
    stage2: PatientModel | None
    rule: object
    cv_metrics: dict = field(default_factory=dict)  # inner CV (train + val only) of the patient model

    def member_scores(self, blocks: dict[str, FeatureBlock], recording_ids) -> list[MemberScores]:
        out = []
        for m in self.recipe.members:
            have, X = blocks[m.name].rows(recording_ids)
            cols = self.columns[m.name]
            X = X if cols is None else X[:, cols]
            out.append(MemberScores(m.name, np.asarray(recording_ids)[have], self.stage1[m.name].predict_proba(X)))
        return out

    def predict_proba(self, task: Task, blocks: dict[str, FeatureBlock], group_ids: list[str]) -> np.ndarray:
        recs = [r for g in group_ids for r in task.recordings_of.get(g, [])]
        members = self.member_scores(blocks, recs)
        if self.stage2 is None:
            return mean_member_proba(members, group_ids, task)
        X = patient_features(members, group_ids, task.recordings_of, task.recording_location, task.locations)
        return self.stage2.predict_proba(X)

    def predict(self, task: Task, blocks: dict[str, FeatureBlock], group_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        proba = self.predict_proba(task, blocks, group_ids)
        return self.rule.predict(GroupTable(np.asarray(group_ids), proba, proba, proba.argmax(axis=1))), proba


def mean_member_proba(members: list[MemberScores], group_ids: list[str], task: Task) -> np.ndarray:
    """Per group: the mean over members of its mean recording probability (uniform if none)."""
    out = np.zeros((len(group_ids), task.n_classes))
    for m in members:
        index = {r: i for i, r in enumerate(m.recording_ids)}
        for gi, gid in enumerate(group_ids):
            rows = [index[r] for r in task.recordings_of.get(gid, []) if r in index]
            out[gi] += m.proba[rows].mean(axis=0) if rows else 1.0 / task.n_classes
    return out / max(len(members), 1)


def _stage1(member: Member, block: FeatureBlock, X: np.ndarray, y: np.ndarray, groups: np.ndarray,
            strata: np.ndarray, recipe: Recipe, seed: int, n_classes: int):
    """Fit one member's probe; with layers="cv", the column group with the best CV loss."""
    def fit(cols):
        probe = RecordingProbe(folds=recipe.folds, seed=seed, n_classes=n_classes)
        probe.fit(X if cols is None else X[:, cols], y, groups, strata)
        return probe

    if member.layers != "cv":
        return fit(None), None
    if not block.groups:
        raise ValueError(f"member {member.name}: layers='cv' needs a cache with several layers")

    def score(name):
        probe = fit(block.groups[name])
        loss = -_balanced_loss(probe.oof_proba_, y, n_classes)
        return loss, probe

    chosen, _, probe = select_best(list(block.groups), score)
    return probe, block.groups[chosen]


def _balanced_loss(proba: np.ndarray, y: np.ndarray, n_classes: int) -> float:
    return balanced_log_loss(y, proba, n_classes)


def fit_recipe(task: Task, recipe: Recipe, blocks: dict[str, FeatureBlock], group_ids: list[str],
               seed: int = 0) -> FittedRecipe:
    """Fit every stage on `group_ids` only (the caller's train + val)."""
    # one BLAS thread: small lbfgs problems run many times slower when BLAS threads oversubscribe
    with threadpool_limits(limits=1, user_api="blas"):
        return _fit_recipe(task, recipe, blocks, group_ids, seed)


def _fit_recipe(task, recipe, blocks, group_ids, seed) -> FittedRecipe:
    recs = [r for g in group_ids for r in task.recordings_of.get(g, [])]
    patient_of = {r: g for g in group_ids for r in task.recordings_of.get(g, [])}
    stage1, columns, oof = {}, {}, []
    for m in recipe.members:
        block = blocks[m.name]
        have, X = block.rows(recs)
        ids = np.asarray(recs)[have]
        y = np.array([task.targets[r] for r in ids])
        groups = np.array([patient_of[r] for r in ids])
        strata = np.array([task.group_labels[g] for g in groups])
        probe, cols = _stage1(m, block, X, y, groups, strata, recipe, seed, task.n_classes)
        stage1[m.name], columns[m.name] = probe, cols
        oof.append(MemberScores(m.name, ids, probe.oof_proba_))
    y_groups = task.labels_of(group_ids)
    rule = make_rule(recipe.decision, task.scoring.class_weights)
    if recipe.patient_model:
        X2 = patient_features(oof, group_ids, task.recordings_of, task.recording_location, task.locations)
        stage2 = PatientModel(folds=recipe.folds, seed=seed, n_classes=task.n_classes).fit(X2, y_groups)
        cv_proba = stage2.oof_proba_
    else:
        stage2, cv_proba = None, mean_member_proba(oof, group_ids, task)
    table = GroupTable(np.asarray(group_ids), cv_proba, cv_proba, cv_proba.argmax(axis=1))
    rule.fit(table, y_groups, task.scoring.selection_key)
    cv_pred = rule.predict(table)
    cv_metrics = {f"cv_{k}": task.scoring.metric(k, y_groups, cv_pred) for k in task.scoring.label_metrics}
    return FittedRecipe(recipe, stage1, columns, stage2, rule, cv_metrics)


def evaluate_recipe(task: Task, recipe: Recipe, blocks: dict[str, FeatureBlock],
                    splits: dict[str, dict[str, str]], seeds: int = 5, first_seed: int = 0,
                    progress: bool = True) -> list[SplitResult]:
    """Every split x seed: fit on train + val, score the test groups once."""
    results = []
    runs = [(name, split, first_seed + s) for name, split in splits.items() for s in range(seeds)]
    for name, split, seed in tqdm(runs, desc=f"recipe {recipe.name}", disable=not progress):
        fit_ids = [g for g in task.group_ids if split.get(g) in ("train", "val")]
        test_ids = task.ids_in(split, "test")
        fitted = fit_recipe(task, recipe, blocks, fit_ids, seed)
        pred, proba = fitted.predict(task, blocks, test_ids)
        labels = task.labels_of(test_ids)
        frame = pd.DataFrame(proba, columns=proba_columns(task.classes))
        frame.insert(0, "patient_id", test_ids)
        frame.insert(1, "split", f"{name}@seed{seed}")
        frame.insert(2, "prediction", pred)
        frame["label"] = labels
        metrics = {**task.scoring.all(labels, pred, proba), **fitted.cv_metrics}
        params = {m: f"C={p.C_:g}" for m, p in fitted.stage1.items()}
        if fitted.stage2 is not None:
            params["patient_C"] = f"{fitted.stage2.C_:g}"
        results.append(SplitResult(recipe.name, "recipe", f"{name}@seed{seed}", metrics, frame, params,
                                   fitted.cv_metrics.get(f"cv_{task.scoring.primary}", float("nan")),
                                   task.scoring.primary, fitted, fitted.rule))
    return results
