"""A recipe member's feature source: recording-level features (`FeatureBlock`, e.g. window-embedding
statistics) or frames with times (`PhaseFrames`), pooled per heart-cycle phase over the intervals
of the `.tsv`s or of a `PhaseSegmenter` trained on the training recordings' frames and `.tsv`s,
as new recordings without annotations would get. Fitted segmenters and their decodes are kept in
a `SegmenterStore` when the source has one (`classify.jobs.recipe` puts it beside the frame cache).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from tqdm import tqdm

from classify.estimators.search import group_folds
from classify.estimators.segmenter import PhaseSegmenter
from classify.evaluation.layers import layer_columns, take_layers
from classify.features.phases import phase_features
from classify.store.segmenters import Entry, SegmenterStore, frames_fingerprint, inputs_key, key_inputs

CROSSFIT_FOLDS = 3  # segmenters per cross-fit: each fit takes about a minute on the full training set
STATS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mean": lambda e: e.mean(axis=0), "std": lambda e: e.std(axis=0), "max": lambda e: e.max(axis=0)}


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
        # and adapting lowered the inner CV of the cross-fitted recipe (docs/recipes.md, What did not work or was not tried)
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


@dataclass
class WindowEmbeddings:
    """A segments member's source: every cached recording's windows (`{rid: CachedRecording}`),
    with the cache's layer slices (a member with layers "cv" or "weighted" chooses among them)."""
    recordings: dict
    slices: dict[int, slice]

    @classmethod
    def of(cls, recordings: dict, slices: dict[int, slice], layers: str = "all") -> "WindowEmbeddings":
        """`layers` "I,J": only those cached layers' columns; "all", "cv", "weighted": every column."""
        if layers in ("all", "cv", "weighted"):
            return cls(recordings, slices)
        return cls(take_layers(recordings, slices, [int(i) for i in layers.split(",")]), slices)


Source = FeatureBlock | PhaseFrames | WindowEmbeddings


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


