"""A recipe with `selection="val"`: the linear evaluation, as `probe` runs it.

Each member (kind "segments": every cached window a row) is fit on the train patients, its grid
candidate chosen on the val patients by the decision rule's score, and the test patients are
touched once (`classify.evaluation.probe_protocol`). One member is a probe; several are combined
per recording by their mean or by a stacker on their out-of-fold train scores
(`classify.evaluation.ensemble`). The member fits are independent tasks: `classify.recipes.fit.evaluate`
runs them first (here or on Ray) and shares each between the recipes that hold it.
"""
from __future__ import annotations

from classify.evaluation.ensemble import mean_scores, stack
from classify.evaluation.layers import fit_layer_choice
from classify.evaluation.probe_protocol import EncoderScores, fit_encoder, split_result
from classify.evaluation.results import SplitResult
from classify.evaluation.rules import RULES
from classify.evaluation.runs import Run
from classify.recipes.recipe import Member, Recipe
from classify.recipes.sources import WindowEmbeddings
from classify.task import Task


def oof_folds(recipe: Recipe) -> int:
    """Folds of the out-of-fold train scores the recipe needs (0: none): a stacker learns from them,
    and tuned rules are steadier fit on them too."""
    stacked = len(recipe.members) > 1 and recipe.combine == "stack"
    return recipe.folds if stacked or RULES[recipe.decision].tuned else 0


def fit_member(task: Task, member: Member, source: WindowEmbeddings, split: dict[str, str], *, decision: str,
               seed: int, folds: int) -> EncoderScores:
    """One member on one split: its probe's grid on train, chosen on val (`layers` "cv" or
    "weighted": the layers chosen inside train + val first); `folds` > 0 adds out-of-fold train scores."""
    if member.layers in ("cv", "weighted"):
        return fit_layer_choice(task, source.recordings, split, member.probe, layers=member.layers,
                                slices=source.slices, decision=decision, seed=seed, oof_folds=folds)
    return fit_encoder(task, source.recordings, split, member.probe, decision=decision, seed=seed, oof_folds=folds)


def member_key(member: Member, recipe: Recipe, run: Run) -> tuple:
    """Fits with equal keys are the same fit: recipes that hold the same member share it."""
    return (member.name, member.probe, member.layers, member.stats, recipe.decision, run.name, run.seed)


def score_run(task: Task, recipe: Recipe, fitted: list[EncoderScores], run: Run) -> SplitResult:
    """The recipe's result on one run from its members' fits (in member order)."""
    decision = recipe.decision
    if len(fitted) == 1:
        f = fitted[0]
        return split_result(task, recipe.name, recipe.label, run.name, f.val, f.test, decision, f.params, f.oof,
                            model=f.model)
    if recipe.combine == "mean":
        oof = mean_scores([f.oof for f in fitted]) if all(f.oof is not None for f in fitted) else None
        return split_result(task, recipe.name, recipe.label, run.name, mean_scores([f.val for f in fitted]),
                            mean_scores([f.test for f in fitted]), decision, oof=oof)
    val, test, params = stack(task, fitted, decision=decision, demographics=recipe.demographics)
    return split_result(task, recipe.name, recipe.label, run.name, val, test, decision, params)
