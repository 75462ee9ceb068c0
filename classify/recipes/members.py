"""Member kinds: how a recipe member turns a cache into recording features, for training and for
prediction. A kind is one class with these methods, registered once in `MEMBER_KINDS`; the recipe
fit, the feature sources and predict ask the member's kind and never test for a kind by name.
"""
from __future__ import annotations

from typing import ClassVar, Iterable, Protocol

import numpy as np

from embed.cache import layer_slices

from classify.evaluation.layers import layer_columns
from classify.recipes.sources import FeatureBlock, PhaseFrames, Source, WindowEmbeddings, window_block
from classify.store.segmenters import SegmenterStore

SEGMENTER_DIR = "segmenters"  # under the cache folder


class Member(Protocol):
    """What a kind reads of a recipe member (`classify.recipes.recipe.Member`)."""
    name: str
    extract: int
    kind: str
    layers: str
    stats: tuple[str, ...]


class MemberKind(Protocol):
    name: ClassVar[str]
    frames: ClassVar[bool]  # reads a frame cache (`extract --frames`), not a window cache
    segmented: ClassVar[bool]  # pools the intervals of the recipe's segmentation
    selection: ClassVar[str]  # the recipe selection that fits it ("cv" or "val": `Recipe.selection`)

    def share_key(self, member: Member) -> tuple:
        """Members with the same key read one source (they differ only in their probe)."""

    def source(self, member: Member, cache, intervals: dict[str, np.ndarray] | None, progress: bool) -> Source:
        """The member's source from its (complete) cache; `intervals`: the recordings' `.tsv` intervals."""

    def training_block(self, source: Source, recording_ids: list[str], patient_of: dict[str, str],
                       intervals: str, segmentation: PhaseFrames | None) -> FeatureBlock:
        """Features of the training recordings (`intervals`: the recipe's train_intervals)."""

    def predict_block(self, source: Source, recording_ids, segmented: dict[str, np.ndarray] | None) -> FeatureBlock:
        """Features of recordings being predicted (`segmented`: the recipe segmenter's intervals)."""

    def recording_ids(self, source: Source) -> Iterable[str]:
        """The recordings the source has features for."""


class WindowsKind:
    """Statistics (`stats`) of a recording's window embeddings; `layers` picks cached layers."""
    name, frames, segmented, selection = "windows", False, False, "cv"

    def share_key(self, member):
        return (member.extract, member.kind, member.stats, member.layers)

    def source(self, member, cache, intervals, progress) -> FeatureBlock:
        slices = layer_slices(cache.config)
        block = window_block(cache.read(), member.stats, slices)
        if member.layers in ("all", "cv") or not len(block.recording_ids):
            return block
        width = block.X.shape[1] // len(member.stats)  # only the columns of layers I,J, for each statistic
        cols = layer_columns(slices, [int(i) for i in member.layers.split(",")], width)
        cols = np.concatenate([cols + k * width for k in range(len(member.stats))])
        return FeatureBlock(block.recording_ids, block.X[:, cols])

    def training_block(self, source, recording_ids, patient_of, intervals, segmentation):
        return source

    def predict_block(self, source, recording_ids, segmented):
        return source

    def recording_ids(self, source):
        return set(source.recording_ids)


class PhasesKind:
    """Frame embeddings pooled per heart-cycle phase (`classify.features.phases`)."""
    name, frames, segmented, selection = "phases", True, True, "cv"

    def share_key(self, member):
        return (member.extract, member.kind)

    def source(self, member, cache, intervals, progress) -> PhaseFrames:
        # segmenters fit on its frames are kept beside the cache
        return PhaseFrames(cache.read(), intervals or {}, SegmenterStore(cache.dir / SEGMENTER_DIR), cache.key,
                           progress)

    def training_block(self, source, recording_ids, patient_of, intervals, segmentation):
        if intervals == "segmenter":
            return source.crossfit_block(recording_ids, patient_of, segmentation)
        return source.block(recording_ids)

    def predict_block(self, source, recording_ids, segmented):
        return source.block(recording_ids, segmented)

    def recording_ids(self, source):
        return source.frames


class SegmentsKind:
    """Every cached window a row of its own, a recording's probabilities the mean over its windows:
    the linear evaluation's member (`classify.recipes.linear`, fit by `selection="val"`). `layers`:
    "all", "I,J" (those cached layers), "cv" or "weighted" (`classify.evaluation.layers`)."""
    name, frames, segmented, selection = "segments", False, False, "val"

    def share_key(self, member):
        return (member.extract, member.kind, member.layers)

    def source(self, member, cache, intervals, progress) -> WindowEmbeddings:
        return WindowEmbeddings.of(cache.read(), layer_slices(cache.config), member.layers)

    def training_block(self, source, recording_ids, patient_of, intervals, segmentation):
        raise TypeError("a segments member is fit by the linear evaluation (selection='val'), not by rows")

    predict_block = training_block

    def recording_ids(self, source):
        return set(source.recordings)


MEMBER_KINDS: dict[str, MemberKind] = {}


def register_member_kind(kind: MemberKind) -> MemberKind:
    MEMBER_KINDS[kind.name] = kind
    return kind


register_member_kind(WindowsKind())
register_member_kind(PhasesKind())
register_member_kind(SegmentsKind())


def kind_of(member: Member) -> MemberKind:
    return MEMBER_KINDS[member.kind]
