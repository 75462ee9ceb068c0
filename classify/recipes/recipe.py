"""A recipe as data: which caches it needs (`ExtractSpec`, made by `embed`), which feature members
it builds from them (`Member`, of a registered kind: `classify.recipes.members`), and how it
decides (a patient model or not, a decision rule). The committed ones are TOML files
(`classify.recipes.book`); `classify.recipes.fit` fits and evaluates them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import Literal, get_args

from classify.estimators.probes import PROBES
from classify.evaluation.rules import RULES, DecisionName
from classify.recipes.members import MEMBER_KINDS

Intervals = Literal["tsv", "segmenter"]
# how a recipe makes its choices: "cv" by patient-grouped CV inside train + val (the recipe
# protocol); "val" the linear evaluation, each member's grid fit on train and the candidate and
# the rule chosen on val (what `probe` runs: a probe is a one-member "val" recipe)
Selection = Literal["cv", "val"]
Combine = Literal["mean", "stack"]
SEGMENTATION_SOURCE = "@segmentation"  # the recipe's segmentation frames among its sources, when set apart


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
    kind: str = "windows"  # a registered member kind (`classify.recipes.members`)
    layers: str = "all"
    stats: tuple[str, ...] = ("mean",)
    probe: str = "linear"  # a registered probe (`classify.estimators.probes`)

    def __post_init__(self) -> None:
        if self.kind not in MEMBER_KINDS:
            raise ValueError(f"member {self.name}: unknown kind {self.kind!r}; available: {', '.join(MEMBER_KINDS)}")
        if self.probe not in PROBES:
            raise ValueError(f"member {self.name}: unknown stage-1 probe {self.probe!r}; "
                             f"available: {', '.join(PROBES)}")


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
    # the frame cache (an index into `extracts`) the recipe segments; None: its first phases
    # member's. Set, it lets phases members of any encoder pool the intervals of one segmentation
    # (e.g. log-mel's) without that cache being a feature member itself
    segmentation: int | None = None
    selection: Selection = "cv"
    # "val" recipes of several members: the mean of their recording probabilities, or a stacker
    # fit on their out-of-fold train scores (`demographics`: it also sees the dataset's covariates)
    combine: Combine = "mean"
    demographics: bool = False
    label: str = "recipe"  # the recipe's `probe` column in scores.csv

    def __post_init__(self) -> None:
        self._check_selection()
        if not isinstance(self.bags, int) or self.bags < 1:
            raise ValueError(f"recipe {self.name}: bags must be a whole number >= 1, got {self.bags!r}")
        if self.decision not in RULES:
            raise ValueError(f"recipe {self.name}: decision must be one of {', '.join(RULES)}, got {self.decision!r}")
        if self.patient_model and RULES[self.decision].needs_recordings:
            raise ValueError(f"recipe {self.name}: the {self.decision} rule calls a patient from its recordings, and "
                             "a patient model gives patient probabilities: use mean, weighted or cost, or set "
                             "patient_model=False")
        if self.segmentation is not None and not (
                isinstance(self.segmentation, int) and 0 <= self.segmentation < len(self.extracts)
                and self.extracts[self.segmentation].frames):
            raise ValueError(f"recipe {self.name}: segmentation must name one of its frame caches "
                             f"(an index into extracts), got {self.segmentation!r}")
        if SEGMENTATION_SOURCE in {m.name for m in self.members}:
            raise ValueError(f"recipe {self.name}: {SEGMENTATION_SOURCE!r} is not a member name")
        for name in ("test_intervals", "train_intervals"):
            if getattr(self, name) not in get_args(Intervals):
                raise ValueError(f"recipe {self.name}: {name} must be one of {', '.join(get_args(Intervals))}, "
                                 f"got {getattr(self, name)!r}")

    def _check_selection(self) -> None:
        if self.selection not in get_args(Selection):
            raise ValueError(f"recipe {self.name}: selection must be one of {', '.join(get_args(Selection))}, "
                             f"got {self.selection!r}")
        if self.combine not in get_args(Combine):
            raise ValueError(f"recipe {self.name}: combine must be one of {', '.join(get_args(Combine))}, "
                             f"got {self.combine!r}")
        by_val = {m.name for m in self.members if MEMBER_KINDS[m.kind].selection == "val"}
        if self.selection == "val":
            if self.patient_model:
                raise ValueError(f"recipe {self.name}: selection='val' chooses on the val patients and has no "
                                 "patient model; set patient_model=False")
            if len(by_val) < len(self.members):
                raise ValueError(f"recipe {self.name}: selection='val' fits members of kind "
                                 f"{', '.join(k for k, v in MEMBER_KINDS.items() if v.selection == 'val')} only")
        elif by_val:
            raise ValueError(f"recipe {self.name}: member(s) {', '.join(sorted(by_val))} are fit by the linear "
                             "evaluation; set selection='val' (and patient_model=False)")
        elif self.combine != "mean" or self.demographics:
            raise ValueError(f"recipe {self.name}: combine and demographics belong to selection='val' recipes; "
                             "a 'cv' recipe combines its members with its patient model")

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


