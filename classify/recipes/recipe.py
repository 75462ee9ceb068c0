"""Recipes: named, committed combinations of feature members, a patient-level model and a rule.

A recipe is data (`Recipe`): which caches it needs (`ExtractSpec`, made by `embed`), which
feature members it builds from them (`Member`), and how it decides. `fit_recipe` fits it on the
groups it is given (train + val of a split: every choice inside, C values and layer groups, is
made by patient-grouped cross-validation there); `evaluate_recipe` runs it on every split x seed
and scores the test groups, which nothing in the fit has seen.

Members of kind "phases" pool frame embeddings by heart-cycle phase. With `test_intervals="segmenter"`
the recordings being predicted get intervals from a `PhaseSegmenter` trained on the training
recordings' frames and `.tsv`s, as new recordings without annotations would. Training recordings
use their `.tsv` intervals (`train_intervals="tsv"`) or, with `train_intervals="segmenter"`, the
intervals of segmenters cross-fitted over the training patients, so stage 1 learns from phases
with the kind of mistakes it meets at test. Segmenters read the first phases member's frames only;
every phases member pools those intervals. Fitted segmenters and their decodes are kept in a
`SegmenterStore` when the source has one (`recipe_job` puts it beside the frame cache).

With `bags` > 1 the probes (stage 1 and the patient model) are fit `bags` times with consecutive
seeds, which draw other inner folds and other trees, and the patient probabilities are averaged;
the segmentation and the decision rule are shared.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field, replace
from typing import Callable, Literal, get_args

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from classify.evaluation.rules import DecisionName, GroupTable, make_rule
from classify.evaluation.probe_protocol import SplitResult, proba_columns
from classify.evaluation.layers import layer_columns
from classify.estimators.stages import (RECORDING_PROBES, MemberScores, PatientModel, RecordingProbeName, RecordingStage,
                            balanced_log_loss, group_folds, patient_features)
from classify.features.phases import phase_features
from classify.estimators.probes import FeatureWidthError, check_width
from classify.estimators.segmenter import PhaseSegmenter
from classify.store.segmenters import Entry, SegmenterStore, frames_fingerprint, inputs_key, key_inputs
from classify.evaluation.selection import select_best
from classify.task import Task

FeatureKind = Literal["windows", "phases"]
Intervals = Literal["tsv", "segmenter"]
CROSSFIT_FOLDS = 3  # segmenters per cross-fit: each fit takes about a minute on the full training set
STATS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mean": lambda e: e.mean(axis=0), "std": lambda e: e.std(axis=0), "max": lambda e: e.max(axis=0)}


@dataclass(frozen=True)
class ExtractSpec:
    """One cache a recipe needs, as `pipeline.py extract` options; `checkpoint` is the official
    weight file's published name, looked up in the recipe command's `--weights` folder."""
    encoder: str
    checkpoint: str | None = None
    layers: str = "last"
    precision: str | None = None  # None: the encoder's default on the device
    frames: bool = False  # a frame cache (`extract --frames`, fp16, the encoder's own hop)

    def __post_init__(self) -> None:
        # a published file name, looked up inside --weights: never a path that could lead out of it
        name = self.checkpoint
        if name is not None and (not isinstance(name, str) or not name or name in (".", "..")
                                 or name.startswith(".") or "/" in name or "\\" in name or "\0" in name):
            raise ValueError(f"the {self.encoder} weight file must be a plain file name inside --weights, "
                             f"got {name!r}")


@dataclass(frozen=True)
class Member:
    """One stage-1 feature block, read from the cache of `recipe.extracts[extract]`.
    `layers`: "all" (every cached layer), "I,J" (those), or "cv" (the best of the last layer and
    all layers by grouped CV); `stats`: statistics of window embeddings over the recording;
    `probe`: the stage-1 model (two members may share a source with different probes)."""
    name: str
    extract: int
    kind: FeatureKind = "windows"
    layers: str = "all"
    stats: tuple[str, ...] = ("mean",)
    probe: RecordingProbeName = "linear"

    def __post_init__(self) -> None:
        if self.probe not in RECORDING_PROBES:
            raise ValueError(f"member {self.name}: unknown stage-1 probe {self.probe!r}; "
                             f"available: {', '.join(RECORDING_PROBES)}")


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    extracts: tuple[ExtractSpec, ...]
    members: tuple[Member, ...]
    targets: str = "location"  # stage-1 recording targets (the dataset's label scheme)
    patient_model: bool = True  # False: mean of the members' recording probabilities per patient
    decision: DecisionName = "cost"
    test_intervals: Intervals = "segmenter"
    train_intervals: Intervals = "tsv"
    folds: int = 5
    bags: int = 1  # fits of the probes averaged, each with its own seed

    def __post_init__(self) -> None:
        if not isinstance(self.bags, int) or self.bags < 1:
            raise ValueError(f"recipe {self.name}: bags must be a whole number >= 1, got {self.bags!r}")
        for name in ("test_intervals", "train_intervals"):
            if getattr(self, name) not in get_args(Intervals):
                raise ValueError(f"recipe {self.name}: {name} must be one of {', '.join(get_args(Intervals))}, "
                                 f"got {getattr(self, name)!r}")

    def with_fields(self, **fields) -> "Recipe":
        """The recipe with some fields changed (ablations); unknown fields are refused by name."""
        known = {f.name for f in dataclasses.fields(self)} - {"name", "extracts", "members"}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"recipe fields {unknown} cannot be set; settable: {', '.join(sorted(known))}")
        return replace(self, **fields)

    def without(self, *member_names: str) -> "Recipe":
        left = tuple(m for m in self.members if m.name not in member_names)
        if not left:
            raise ValueError(f"recipe {self.name}: removing {member_names} leaves no member")
        return replace(self, members=left)


@dataclass
class FeatureBlock:
    """Recording-level features of one member, rows aligned with `recording_ids`; `groups`: named
    column sets a member with layers="cv" chooses from."""
    recording_ids: np.ndarray
    X: np.ndarray
    groups: dict[str, np.ndarray] | None = None

    def rows(self, recording_ids) -> tuple[np.ndarray, np.ndarray]:
        """(mask of the `recording_ids` this block has, their rows)."""
        index = {r: i for i, r in enumerate(self.recording_ids)}
        have = np.array([r in index for r in recording_ids], dtype=bool)
        return have, self.X[[index[r] for r, h in zip(recording_ids, have) if h]].reshape(-1, self.X.shape[1])


@dataclass
class PhaseFrames:
    """A phases member's source: frames with times per recording, and the `.tsv` intervals."""
    frames: dict  # recording id -> embed.cache.CachedFrames
    intervals: dict[str, np.ndarray]
    store: SegmenterStore | None = None  # fitted segmenters and their decodes, kept across runs
    frames_key: str = ""  # the frame cache's key: part of every store entry's key
    progress: bool = False  # a progress bar while a segmenter decodes many recordings
    _tsv_block: FeatureBlock | None = None
    _segmented: tuple | None = None  # (segmenter, {recording id: its intervals})
    _crossfit: dict = field(default_factory=dict)  # training recording ids -> their cross-fitted intervals
    _crossfit_blocks: dict = field(default_factory=dict)  # recording ids -> (segmentation, phase features)
    _fingerprints: dict = field(default_factory=dict)  # recording id -> frames_fingerprint

    def block(self, recording_ids, intervals: dict[str, np.ndarray] | None = None) -> FeatureBlock:
        """Phase features of these recordings (those with frames), from `intervals` (default the
        `.tsv`s, computed once for every recording; a recording without any gets zeros and its
        missing flags)."""
        if intervals is None:
            if self._tsv_block is None:
                self._tsv_block = self.block(list(self.frames), self.intervals)
            return self._tsv_block
        ids = np.array([r for r in recording_ids if r in self.frames])
        rows = [phase_features(self.frames[r].embeddings, self.frames[r].times,
                               intervals.get(r, np.zeros((0, 3)))) for r in ids]
        return FeatureBlock(ids, np.stack(rows) if rows else np.zeros((0, 0)))

    def fingerprint(self, recording_id: str) -> str:
        """The digest of a recording's frames that its decoded intervals in the store are tied to."""
        if recording_id not in self._fingerprints:
            rec = self.frames[recording_id]
            self._fingerprints[recording_id] = frames_fingerprint(rec.embeddings, rec.times)
        return self._fingerprints[recording_id]

    def _decodes(self, entry: Entry | None) -> dict[str, np.ndarray]:
        """An entry's decoded intervals of recordings whose frames are still the ones they were
        decoded from (the others are decoded again)."""
        if entry is None:
            return {}
        fresh = {r: iv for r, iv in entry.decoded.items()
                 if r in self.frames and entry.fingerprints.get(r) == self.fingerprint(r)}
        stale = [r for r in entry.decoded if r in self.frames and r not in fresh]
        if stale:
            warnings.warn(f"segmenter store: {len(stale)} decoded recordings (e.g. {stale[0]}) were decoded from "
                          "other frames than the cache holds now; decoding them again")
        return fresh

    def fit_segmenter(self, recording_ids, seed: int = 0) -> PhaseSegmenter:
        """A segmenter fit on these recordings' frames and `.tsv` intervals, read from the store
        when this fit was made before."""
        ids = [r for r in recording_ids if r in self.frames and r in self.intervals]
        # without the heart-rate adaptation of the durations: the recipe's reported runs were made so,
        # and adapting lowered the inner CV of the cross-fitted recipe (README, Recipes)
        segmenter = PhaseSegmenter(heart_rate=0.0, seed=seed)
        inputs = entry = None
        if self.store is not None:
            inputs = key_inputs(self.frames_key, segmenter.get_params(), ids, [self.intervals[r] for r in ids])
            entry = self.store.load(inputs)
        if entry is not None:
            try:
                segmenter = PhaseSegmenter.from_state(segmenter.get_params(), entry.state)
                if ids and segmenter.n_features_in_ != self.frames[ids[0]].embeddings.shape[1]:
                    raise ValueError(f"it takes frames {segmenter.n_features_in_} wide, the cache's are "
                                     f"{self.frames[ids[0]].embeddings.shape[1]}")
            except (KeyError, TypeError, ValueError) as err:
                self.store.drop(self.store.path(inputs_key(inputs)), f"the stored segmenter cannot be used ({err})")
                segmenter, entry = PhaseSegmenter(heart_rate=0.0, seed=seed), None
        if entry is None:
            segmenter.fit([self.frames[r].embeddings for r in ids], [self.frames[r].times for r in ids],
                          [self.intervals[r] for r in ids])
            if inputs is not None:
                self.store.save(inputs, segmenter.state(), {}, {})
        segmenter.store_inputs_ = inputs
        # its decodes so far (the entry just read, or none): `segmented` need not read the entry again
        self._segmented = (segmenter, self._decodes(entry))
        return segmenter

    def segmented(self, segmenter: PhaseSegmenter, recording_ids) -> dict[str, np.ndarray]:
        """The segmenter's intervals for these recordings, each decoded once per segmenter (the
        evaluation reuses a split's segmenter across seeds; the cross-fit decodes each fold here)
        and kept in the store with it."""
        inputs = getattr(segmenter, "store_inputs_", None) if self.store is not None else None
        if self._segmented is None or self._segmented[0] is not segmenter:
            entry = self.store.load(inputs) if inputs is not None else None
            self._segmented = (segmenter, self._decodes(entry))
        done = self._segmented[1]
        new = [r for r in dict.fromkeys(recording_ids) if r in self.frames and r not in done]
        for r in tqdm(new, desc="segmenter: decoding recordings", leave=False,
                      disable=not self.progress or len(new) < 100):
            done[r] = segmenter.predict(self.frames[r].embeddings, self.frames[r].times)
        if new and inputs is not None:
            self.store.save(inputs, segmenter.state(), done, {r: self.fingerprint(r) for r in done})
        return {r: done[r] for r in recording_ids if r in done}

    def crossfit_intervals(self, recording_ids, patient_of: dict[str, str], folds: int = CROSSFIT_FOLDS
                           ) -> dict[str, np.ndarray]:
        """Intervals of training recordings that no segmenter trained on their own patient gave: per
        patient-grouped fold, a segmenter fit on the other folds' `.tsv`s decodes the fold. Computed
        once per set of recordings (the evaluation reuses them across seeds)."""
        ids = [r for r in recording_ids if r in self.frames]
        key = tuple(ids)
        if key not in self._crossfit:
            groups = np.array([patient_of[r] for r in ids])
            intervals: dict[str, np.ndarray] = {}
            for fit_idx, held_idx in group_folds(np.zeros(len(ids)), groups, folds, seed=0):
                segmenter = self.fit_segmenter([ids[i] for i in fit_idx])
                intervals.update(self.segmented(segmenter, [ids[i] for i in held_idx]))
            self._crossfit[key] = intervals
        return self._crossfit[key]

    def crossfit_block(self, recording_ids, patient_of: dict[str, str],
                       segmentation: PhaseFrames | None = None) -> FeatureBlock:
        """Phase features of training recordings from the cross-fitted intervals that segmenters
        fit on `segmentation`'s frames decode (default: this source's own), once per set of
        recordings. A recipe passes its first phases source, so every phases member pools the
        intervals of one segmentation, in training as at test."""
        segmentation = self if segmentation is None else segmentation
        ids = [r for r in recording_ids if r in self.frames]
        cached = self._crossfit_blocks.get(tuple(ids))
        if cached is None or cached[0] is not segmentation:
            cached = (segmentation, self.block(ids, segmentation.crossfit_intervals(recording_ids, patient_of)))
            self._crossfit_blocks[tuple(ids)] = cached
        return cached[1]


Source = FeatureBlock | PhaseFrames


def segmentation_source(recipe: Recipe, sources: dict[str, Source]) -> PhaseFrames | None:
    """The phases source whose frames the recipe segments (its first phases member's), in training
    and at test; every phases member pools those intervals. None without phases members."""
    return next((sources[m.name] for m in recipe.members if isinstance(sources[m.name], PhaseFrames)), None)


def window_block(embeddings: dict, stats: tuple[str, ...], slices: dict[int, slice]) -> FeatureBlock:
    """Window embeddings per recording (`{rid: CachedRecording}`) -> their statistics; layer groups
    "last" and "all" (each stat's columns) when the cache holds several layers. No recordings (every
    one of a prediction unreadable) give an empty block, as `PhaseFrames.block` does."""
    ids = np.array(sorted(embeddings))
    if not len(ids):
        return FeatureBlock(ids, np.zeros((0, 0), np.float32))
    X = np.stack([np.concatenate([STATS[s](embeddings[r].embeddings) for s in stats]) for r in ids])
    width = X.shape[1] // len(stats)
    last = layer_columns(slices, [max(slices)], width)
    groups = {"last": np.concatenate([last + k * width for k in range(len(stats))]), "all": np.arange(X.shape[1])}
    return FeatureBlock(ids, X, groups if len(slices) > 1 else None)


@dataclass
class RecipePart:
    """The probes of one fit with one seed: a recipe averages `bags` of them."""
    stage1: dict[str, RecordingStage]
    columns: dict[str, np.ndarray | None]  # member -> the feature columns it uses (None: all)
    stage2: PatientModel | None

    def member_scores(self, recipe: Recipe, blocks: dict[str, FeatureBlock], recording_ids) -> list[MemberScores]:
        out = []
        for m in recipe.members:
            have, X = blocks[m.name].rows(recording_ids)
            cols = self.columns[m.name]
            if cols is not None and len(X) and len(cols) and cols.max() >= X.shape[1]:
                raise FeatureWidthError(f"member {m.name} selects column {int(cols.max())} of features "
                                        f"{X.shape[1]} wide")
            X = X if cols is None else X[:, cols]
            if len(X):  # an empty block (no readable recording) has no width to compare
                check_width(self.stage1[m.name], X, f"member {m.name}'s probe")
            proba = self.stage1[m.name].predict_proba(X) if len(X) else np.zeros((0, self.stage1[m.name].n_classes))
            out.append(MemberScores(m.name, np.asarray(recording_ids)[have], proba))
        return out

    def patient_proba(self, task: Task, members: list[MemberScores], group_ids: list[str]) -> np.ndarray:
        if self.stage2 is None:
            return mean_member_proba(members, group_ids, task)
        X = patient_features(members, group_ids, task.recordings_of, task.recording_location, task.locations)
        return self.stage2.predict_proba(X)


@dataclass
class FittedRecipe:
    recipe: Recipe
    parts: list[RecipePart]  # one per bag
    rule: object
    segmenter: PhaseSegmenter | None = None
    cv_metrics: dict = field(default_factory=dict)  # inner CV (fit groups only) of the whole recipe

    def blocks_for(self, sources: dict[str, Source], recording_ids) -> dict[str, FeatureBlock]:
        """Feature blocks of recordings being predicted (phases from the segmenter when the recipe
        says so)."""
        out, segmented = {}, None
        segmentation = segmentation_source(self.recipe, sources)
        if self.segmenter is not None and segmentation is not None:
            segmented = segmentation.segmented(self.segmenter, recording_ids)
        for m in self.recipe.members:
            src = sources[m.name]
            if isinstance(src, PhaseFrames):
                out[m.name] = src.block(recording_ids, segmented)
            else:
                out[m.name] = src
        return out

    def predict_proba(self, task: Task, sources: dict[str, Source], group_ids: list[str]
                      ) -> tuple[np.ndarray, list[MemberScores]]:
        """Patient probabilities, and each member's recording probabilities (means over the bags)."""
        recs = [r for g in group_ids for r in task.recordings_of.get(g, [])]
        with threadpool_limits(limits=1, user_api="blas"):
            blocks = self.blocks_for(sources, recs)
            per_part = [part.member_scores(self.recipe, blocks, recs) for part in self.parts]
            proba = np.mean([part.patient_proba(task, members, group_ids)
                             for part, members in zip(self.parts, per_part)], axis=0)
        members = [MemberScores(m.name, m.recording_ids, np.mean([p[i].proba for p in per_part], axis=0))
                   for i, m in enumerate(per_part[0])]
        return proba, members

    def predict(self, task: Task, sources: dict[str, Source], group_ids: list[str]
                ) -> tuple[np.ndarray, np.ndarray, list[MemberScores]]:
        proba, members = self.predict_proba(task, sources, group_ids)
        return decide(self.rule, group_ids, proba), proba, members


def decide(rule, group_ids, proba: np.ndarray) -> np.ndarray:
    """The rule's call on patient-level probabilities (one row per group)."""
    return rule.predict(GroupTable(np.asarray(group_ids), proba, proba, proba.argmax(axis=1)))


def mean_member_proba(members: list[MemberScores], group_ids: list[str], task: Task) -> np.ndarray:
    """Per group: the mean over members of its mean recording probability (uniform if none)."""
    out = np.zeros((len(group_ids), task.n_classes))
    for m in members:
        index = {r: i for i, r in enumerate(m.recording_ids)}
        for gi, gid in enumerate(group_ids):
            rows = [index[r] for r in task.recordings_of.get(gid, []) if r in index]
            out[gi] += m.proba[rows].mean(axis=0) if rows else 1.0 / task.n_classes
    return out / max(len(members), 1)


def _fit_member(member: Member, block: FeatureBlock, X: np.ndarray, y: np.ndarray, groups: np.ndarray,
                strata: np.ndarray, folds: int, seed: int, n_classes: int
                ) -> tuple[RecordingStage, np.ndarray | None]:
    """Fit one member's probe; with layers="cv", on the column group with the best CV loss."""
    def fit(cols):
        return RECORDING_PROBES[member.probe](folds=folds, seed=seed, n_classes=n_classes).fit(
            X if cols is None else X[:, cols], y, groups, strata)

    if member.layers != "cv" or not block.groups:
        return fit(None), None
    chosen, _, probe = select_best(list(block.groups), lambda name: (
        -balanced_log_loss(y, (p := fit(block.groups[name])).oof_proba_, n_classes), p))
    return probe, block.groups[chosen]


def fit_recipe(task: Task, recipe: Recipe, sources: dict[str, Source], group_ids: list[str],
               seed: int = 0, segmenter: PhaseSegmenter | None = None) -> FittedRecipe:
    """Fit every stage on `group_ids` only (the caller's train + val). `segmenter`: one already
    fit on these groups (the evaluation reuses it across seeds); else fit here when needed."""
    # one BLAS thread: small lbfgs problems run many times slower when BLAS threads oversubscribe
    with threadpool_limits(limits=1, user_api="blas"):
        return _fit_recipe(task, recipe, sources, group_ids, seed, segmenter)


def bag_seeds(seed: int, bags: int) -> range:
    """The seeds of a recipe's bags for run `seed`: runs with different seeds share none."""
    return range(seed * bags, (seed + 1) * bags)


def _fit_recipe(task, recipe, sources, group_ids, seed, segmenter) -> FittedRecipe:
    recs = [r for g in group_ids for r in task.recordings_of.get(g, [])]
    patient_of = {r: g for g in group_ids for r in task.recordings_of.get(g, [])}
    segmentation = segmentation_source(recipe, sources)
    training = [_TrainingRows.of(m, task, recs, patient_of,
                                 _training_block(sources[m.name], recs, patient_of, recipe.train_intervals, segmentation))
                for m in recipe.members]  # the same rows for every bag
    y_groups = task.labels_of(group_ids)
    parts, cv_probas = [], []
    for bag_seed in bag_seeds(seed, recipe.bags):
        part, cv_proba = _fit_part(task, recipe, training, group_ids, y_groups, bag_seed)
        parts.append(part)
        cv_probas.append(cv_proba)
    cv_proba = np.mean(cv_probas, axis=0)  # each bag's out-of-fold probabilities, so still out of fold
    rule = make_rule(recipe.decision, task.scoring.class_weights)
    table = GroupTable(np.asarray(group_ids), cv_proba, cv_proba, cv_proba.argmax(axis=1))
    rule.fit(table, y_groups, task.scoring.selection_key)
    cv_pred = rule.predict(table)
    cv_metrics = {f"cv_{k}": task.scoring.metric(k, y_groups, cv_pred) for k in task.scoring.label_metrics}
    if recipe.test_intervals == "segmenter" and segmentation is not None and segmenter is None:
        segmenter = segmentation.fit_segmenter(recs, seed=0)
    if recipe.test_intervals != "segmenter" or segmentation is None:
        segmenter = None
    return FittedRecipe(recipe, parts, rule, segmenter, cv_metrics)


@dataclass
class _TrainingRows:
    """One member's training recordings: its block, their features, targets, patients and strata."""
    member: Member
    block: FeatureBlock
    X: np.ndarray
    ids: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    strata: np.ndarray

    @classmethod
    def of(cls, member: Member, task: Task, recs: list[str], patient_of: dict[str, str],
           block: FeatureBlock) -> "_TrainingRows":
        have, X = block.rows(recs)
        ids = np.asarray(recs)[have]
        if not len(ids):
            raise ValueError(f"member {member.name}: none of the {len(recs)} training recordings has features")
        groups = np.array([patient_of[r] for r in ids])
        return cls(member, block, X, ids, np.array([task.targets[r] for r in ids]), groups,
                   np.array([task.group_labels[g] for g in groups]))


def _fit_part(task, recipe, training: list[_TrainingRows], group_ids, y_groups: np.ndarray,
              seed) -> tuple[RecipePart, np.ndarray]:
    """Stage 1 and the patient model with one seed, and their out-of-fold patient probabilities."""
    stage1, columns, oof = {}, {}, []
    for t in training:
        probe, cols = _fit_member(t.member, t.block, t.X, t.y, t.groups, t.strata, recipe.folds, seed, task.n_classes)
        stage1[t.member.name], columns[t.member.name] = probe, cols
        oof.append(MemberScores(t.member.name, t.ids, probe.oof_proba_))
    if not recipe.patient_model:
        return RecipePart(stage1, columns, None), mean_member_proba(oof, group_ids, task)
    X2 = patient_features(oof, group_ids, task.recordings_of, task.recording_location, task.locations)
    stage2 = PatientModel(folds=recipe.folds, seed=seed, n_classes=task.n_classes).fit(X2, y_groups)
    return RecipePart(stage1, columns, stage2), stage2.oof_proba_


def _training_block(source: Source, recording_ids: list[str], patient_of: dict[str, str],
                    intervals: Intervals, segmentation: PhaseFrames | None) -> FeatureBlock:
    if not isinstance(source, PhaseFrames):
        return source
    if intervals == "segmenter":
        return source.crossfit_block(recording_ids, patient_of, segmentation)
    return source.block(recording_ids)


def evaluate_recipe(task: Task, recipe: Recipe, sources: dict[str, Source],
                    splits: dict[str, dict[str, str]], seeds: int = 5, first_seed: int = 0,
                    progress: bool = True) -> list[SplitResult]:
    """Every split x seed: fit on train + val, score the test groups once. The segmenter (when the
    recipe uses one) is fit once per split: it has no seed-dependent part worth refitting."""
    results = []
    runs = [(name, split, first_seed + s) for name, split in splits.items() for s in range(seeds)]
    segmenters: dict[str, PhaseSegmenter | None] = {}
    for name, split, seed in tqdm(runs, desc=f"recipe {recipe.name}", disable=not progress):
        fit_ids = [g for g in task.group_ids if split.get(g) in ("train", "val")]
        test_ids = task.ids_in(split, "test")
        fitted = fit_recipe(task, recipe, sources, fit_ids, seed, segmenters.get(name))
        segmenters[name] = fitted.segmenter
        pred, proba, _ = fitted.predict(task, sources, test_ids)
        labels = task.labels_of(test_ids)
        frame = pd.DataFrame(proba, columns=proba_columns(task.classes))
        frame.insert(0, "patient_id", test_ids)
        frame.insert(1, "split", f"{name}@seed{seed}")
        frame.insert(2, "prediction", pred)
        frame["label"] = labels
        metrics = {**task.scoring.all(labels, pred, proba), **fitted.cv_metrics}
        first = fitted.parts[0]  # the first bag's choices (the others are in a saved model)
        params = {m: p.describe() + ("" if first.columns[m] is None else f",cols={len(first.columns[m])}")
                  for m, p in first.stage1.items()}
        if first.stage2 is not None:
            params["patient_C"] = f"{first.stage2.C_:g}"
        if recipe.bags > 1:
            params["bags"] = str(recipe.bags)
        results.append(SplitResult(recipe.name, "recipe", f"{name}@seed{seed}", metrics, frame, params,
                                   fitted.cv_metrics.get(f"cv_{task.scoring.primary}", float("nan")),
                                   task.scoring.primary, fitted, fitted.rule))
    return results
