"""Fitting and evaluating recipes. `fit_recipe` fits a recipe of selection "cv" on the groups it
is given (train + val of a split: every choice inside, C values and layer groups, is made by
patient-grouped cross-validation there); `evaluate` runs recipes of either selection ("val": the
linear evaluation, `classify.recipes.linear`) on every split x seed and scores the test groups,
which nothing in the fit has seen. It is the one evaluation loop: `probe` and `recipe` both run it.

Members of kind "phases" pool frame embeddings by heart-cycle phase. With `test_intervals="segmenter"`
the recordings being predicted get intervals from a `PhaseSegmenter` trained on the training
recordings' frames and `.tsv`s, as new recordings without annotations would. Training recordings
use their `.tsv` intervals (`train_intervals="tsv"`) or, with `train_intervals="segmenter"`, the
intervals of segmenters cross-fitted over the training patients, so stage 1 learns from phases
with the kind of mistakes it meets at test. Segmenters read the first phases member's frames only;
every phases member pools those intervals. Fitted segmenters and their decodes are kept in a
`SegmenterStore` when the source has one (the phases member kind puts it beside the frame cache).

With `bags` > 1 the probes (stage 1 and the patient model) are fit `bags` times with consecutive
seeds, which draw other inner folds and other trees, and the patient probabilities are averaged;
the segmentation and the decision rule are shared.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from threadpoolctl import threadpool_limits

from classify.estimators.base import FeatureWidthError, check_width
from classify.estimators.search import PatientModel, RecordingStage, balanced_log_loss
from classify.estimators.segmenter import PhaseSegmenter
from classify.evaluation.results import SplitResult, patient_result
from classify.evaluation.runs import Run, split_runs
from classify.evaluation.backend import Backend, Shared, run_tasks
from classify.evaluation.rules import GroupTable, make_rule
from classify.evaluation.selection import select_best
from classify.features.patient import MemberScores, patient_features
from classify.recipes import linear
from classify.recipes.members import kind_of
from classify.recipes.recipe import SEGMENTATION_SOURCE, Member, Recipe
from classify.recipes.sources import FeatureBlock, PhaseFrames, Source
from classify.task import Task

if TYPE_CHECKING:
    from embed.ray_backend import RayOptions


def segmentation_source(recipe: Recipe, sources: dict[str, Source]) -> PhaseFrames | None:
    """The phases source whose frames the recipe segments (its `segmentation` cache's, else its first
    phases member's), in training and at test; every phases member pools those intervals. None
    without either."""
    if recipe.segmentation is not None:
        return sources[SEGMENTATION_SOURCE]
    return next((sources[m.name] for m in recipe.members if kind_of(m).segmented), None)


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
    # the out-of-fold patient probabilities behind cv_metrics, rows in `cv_groups` order (what a
    # patient-level ensemble of recipes is selected on); not saved with a model
    cv_groups: list[str] = field(default_factory=list)
    cv_proba: np.ndarray | None = None

    def blocks_for(self, sources: dict[str, Source], recording_ids) -> dict[str, FeatureBlock]:
        """Feature blocks of recordings being predicted (phases from the segmenter when the recipe
        says so)."""
        out, segmented = {}, None
        segmentation = segmentation_source(self.recipe, sources)
        if self.segmenter is not None and segmentation is not None:
            segmented = segmentation.segmented(self.segmenter, recording_ids)
        for m in self.recipe.members:
            out[m.name] = kind_of(m).predict_block(sources[m.name], recording_ids, segmented)
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
        table = patient_table(task, group_ids, proba, None if self.recipe.patient_model else members)
        return self.rule.predict(table), proba, members


def patient_table(task: Task, group_ids: list[str], proba: np.ndarray, members: list[MemberScores] | None
                  ) -> GroupTable:
    """What the decision rule sees: the patient probabilities `proba` as each group's mean; without a
    patient model (`members` given) also the recordings' max and first call, from each recording's
    mean over the members, so *any* and *threshold* mean what they mean for a probe. A patient with
    no scored recording is called the last class ("nothing found")."""
    if members is None:
        return GroupTable.from_patients(group_ids, proba)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for m in members:
        for r, p in zip(m.recording_ids, m.proba):
            sums[r] = sums.get(r, 0.0) + p
            counts[r] = counts.get(r, 0) + 1
    recs = [(r, g) for g in group_ids for r in task.recordings_of.get(g, []) if r in sums]
    by_recording = (GroupTable.from_recordings(np.array([sums[r] / counts[r] for r, _ in recs]),
                                               np.array([g for _, g in recs])) if recs else None)
    row = {} if by_recording is None else {g: i for i, g in enumerate(by_recording.group_ids)}
    n = proba.shape[1]
    high = np.array([by_recording.max[row[g]] if g in row else proba[i] for i, g in enumerate(group_ids)]).reshape(-1, n)
    first = np.array([by_recording.first_call[row[g]] if g in row else n - 1 for g in group_ids], dtype=int)
    return GroupTable(np.asarray(group_ids), proba, high, first)


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
        return RecordingStage(member.probe, folds=folds, seed=seed, n_classes=n_classes).fit(
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
    if recipe.selection != "cv":
        raise ValueError(f"recipe {recipe.name}: a selection='val' recipe is fit split by split (train, then "
                         "val for its choices) by `evaluate`, not on a set of groups; save one with "
                         "`probe --save-model`")
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
                                 kind_of(m).training_block(sources[m.name], recs, patient_of, recipe.train_intervals, segmentation))
                for m in recipe.members]  # the same rows for every bag
    y_groups = task.labels_of(group_ids)
    parts, cv_probas, cv_members = [], [], []
    for bag_seed in bag_seeds(seed, recipe.bags):
        part, cv_proba, oof = _fit_part(task, recipe, training, group_ids, y_groups, bag_seed)
        parts.append(part)
        cv_probas.append(cv_proba)
        cv_members.append(oof)
    cv_proba = np.mean(cv_probas, axis=0)  # each bag's out-of-fold probabilities, so still out of fold
    rule = make_rule(recipe.decision, task.scoring.class_weights)
    members = None if recipe.patient_model else [
        MemberScores(m.name, m.recording_ids, np.mean([bag[i].proba for bag in cv_members], axis=0))
        for i, m in enumerate(cv_members[0])]
    table = patient_table(task, group_ids, cv_proba, members)
    rule.fit(table, y_groups, task.scoring.selection_key)
    cv_pred = rule.predict(table)
    cv_metrics = {f"cv_{k}": task.scoring.metric(k, y_groups, cv_pred) for k in task.scoring.label_metrics}
    if recipe.test_intervals == "segmenter" and segmentation is not None and segmenter is None:
        segmenter = segmentation.fit_segmenter(recs, seed=0)
    if recipe.test_intervals != "segmenter" or segmentation is None:
        segmenter = None
    return FittedRecipe(recipe, parts, rule, segmenter, cv_metrics, list(group_ids), cv_proba)


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
              seed) -> tuple[RecipePart, np.ndarray, list[MemberScores]]:
    """Stage 1 and the patient model with one seed, their out-of-fold patient probabilities and
    the members' out-of-fold recording probabilities."""
    stage1, columns, oof = {}, {}, []
    for t in training:
        probe, cols = _fit_member(t.member, t.block, t.X, t.y, t.groups, t.strata, recipe.folds, seed, task.n_classes)
        stage1[t.member.name], columns[t.member.name] = probe, cols
        oof.append(MemberScores(t.member.name, t.ids, probe.oof_proba_))
    if not recipe.patient_model:
        return RecipePart(stage1, columns, None), mean_member_proba(oof, group_ids, task), oof
    X2 = patient_features(oof, group_ids, task.recordings_of, task.recording_location, task.locations)
    stage2 = PatientModel(folds=recipe.folds, seed=seed, n_classes=task.n_classes).fit(X2, y_groups)
    return RecipePart(stage1, columns, stage2), stage2.oof_proba_, oof


def evaluate(task: Task, recipes: list[Recipe], sources: dict[str, Source], runs: list[Run], *,
             backend: Backend = "local", ray: "RayOptions | None" = None, progress: bool = True,
             desc: str = "fit") -> list[list[SplitResult]]:
    """The one evaluation loop: every recipe on every run, `[recipe][run]`; each run fits on its
    train + val groups and scores its test groups once.

    "val" recipes (the linear evaluation, `classify.recipes.linear`): their members' fits are
    independent tasks, run first, here or on Ray (`backend`), each once however many recipes hold
    it. "cv" recipes fit run by run, here: the runs of a split share its segmenter (fit for its
    first run: it has no seed-dependent part worth refitting)."""
    member_fits = _fit_val_members(task, [r for r in recipes if r.selection == "val"], sources, runs,
                                   backend, ray, progress, desc)
    segmenters: dict[str, PhaseSegmenter | None] = {}
    out = []
    for recipe in recipes:
        if recipe.selection == "val":
            out.append([linear.score_run(task, recipe, [member_fits[linear.member_key(m, recipe, run)]
                                                        for m in recipe.members], run) for run in runs])
            continue

        def score(run: Run, recipe=recipe) -> SplitResult:
            return _score_cv_run(task, recipe, sources, run, segmenters)
        # local: the runs of a split share its segmenter, held here
        out.append(run_tasks(score, [((run,), {}) for run in runs], "local", progress=progress,
                             desc=f"recipe {recipe.name}"))
    return out


def _fit_val_members(task, recipes, sources, runs, backend, ray, progress, desc) -> dict[tuple, object]:
    """member key -> its fit, for every member of the "val" recipes on every run (with the most
    out-of-fold folds any of its recipes asks for)."""
    wanted: dict[tuple, tuple] = {}
    for run in runs:
        for recipe in recipes:
            for m in recipe.members:
                key = linear.member_key(m, recipe, run)
                folds = max(linear.oof_folds(recipe), wanted[key][3] if key in wanted else 0)
                wanted[key] = (m, recipe, run, folds)
    if not wanted:
        return {}
    shared_task = Shared(task)
    shared_sources = {name: Shared(source) for name, source in sources.items()}
    fits = run_tasks(linear.fit_member,
                     [((shared_task, m, shared_sources[m.name], run.split),
                       dict(decision=recipe.decision, seed=run.seed, folds=folds))
                      for m, recipe, run, folds in wanted.values()], backend, ray, progress, desc=desc)
    return dict(zip(wanted, fits))


def _score_cv_run(task: Task, recipe: Recipe, sources: dict[str, Source], run: Run,
                  segmenters: dict[str, PhaseSegmenter | None]) -> SplitResult:
    fit_ids = [g for g in task.group_ids if run.split.get(g) in ("train", "val")]
    test_ids = task.ids_in(run.split, "test")
    fitted = fit_recipe(task, recipe, sources, fit_ids, run.seed, segmenters.get(run.split_name))
    segmenters[run.split_name] = fitted.segmenter
    pred, proba, _ = fitted.predict(task, sources, test_ids)
    first = fitted.parts[0]  # the first bag's choices (the others are in a saved model)
    params = {m: p.describe() + ("" if first.columns[m] is None else f",cols={len(first.columns[m])}")
              for m, p in first.stage1.items()}
    if first.stage2 is not None:
        params["patient_C"] = f"{first.stage2.C_:g}"
    if recipe.bags > 1:
        params["bags"] = str(recipe.bags)
    return patient_result(task, recipe.name, recipe.label, run.name, test_ids, pred, proba, params,
                          fitted.cv_metrics.get(f"cv_{task.scoring.primary}", float("nan")), fitted, fitted.rule,
                          fitted.cv_metrics)


def evaluate_recipe(task: Task, recipe: Recipe, sources: dict[str, Source],
                    splits: dict[str, dict[str, str]], seeds: int = 5, first_seed: int = 0,
                    progress: bool = True) -> list[SplitResult]:
    """One recipe on every split x seed (all seeds of a split together, runs named SPLIT@seedS)."""
    runs = split_runs(splits, seeds, first_seed, seed_major=False, name_seed=True)
    return evaluate(task, [recipe], sources, runs, progress=progress)[0]
