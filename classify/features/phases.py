"""Heart-cycle phase pooling: frame embeddings + their times + phase intervals -> one vector.

Intervals are rows `(start_s, end_s, label)` in CirCor's `.tsv` form (labels 1 S1, 2 systole,
3 S2, 4 diastole, 0 unannotated), from the dataset's `.tsv` files or a segmenter's output. A frame
belongs to the interval holding its centre time. The vector's layout: `phase_features`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from embed.cache import FrameCache
from embed.intervals import read_intervals_file
from embed.problems import Problem

PHASES = ("S1", "systole", "S2", "diastole")  # .tsv labels 1..4
# (name, .tsv label, start, end as fractions of the interval's own length): murmurs differ in when
# they sound within systole (early, mid, late, holo-) and diastole
PARTS = (("S1", 1, 0.0, 1.0), ("S2", 3, 0.0, 1.0),
         ("systole_early", 2, 0.0, 1 / 3), ("systole_mid", 2, 1 / 3, 2 / 3), ("systole_late", 2, 2 / 3, 1.0),
         ("diastole_early", 4, 0.0, 0.5), ("diastole_late", 4, 0.5, 1.0))
BLOCKS = ("recording_mean", *(f"{name}_minus_mean" for name, *_ in PARTS), "std_systole", "std_diastole")


def frame_labels(times: np.ndarray, intervals: np.ndarray) -> np.ndarray:
    """The `.tsv` label (0-4) of the interval holding each time, half-open `[start, end)`; 0 where
    no interval does."""
    return frame_positions(times, intervals)[0]


def frame_positions(times: np.ndarray, intervals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per time: the label of the interval holding it (0 where none), and where in that interval
    it lies as a fraction of its length (0 at the start; -1 where no interval holds it)."""
    intervals = np.asarray(intervals, dtype=np.float64).reshape(-1, 3)
    times = np.asarray(times, dtype=np.float64)
    if not len(intervals):
        return np.zeros(len(times), np.int64), np.full(len(times), -1.0)
    intervals = intervals[np.argsort(intervals[:, 0], kind="stable")]
    row = np.maximum(np.searchsorted(intervals[:, 0], times, side="right") - 1, 0)
    start, end = intervals[row, 0], intervals[row, 1]
    inside = (times >= start) & (times < end)
    position = np.where(inside, (times - start) / np.maximum(end - start, 1e-9), -1.0)
    return np.where(inside, intervals[row, 2], 0).astype(np.int64), position


def phase_feature_size(dim: int) -> int:
    return len(BLOCKS) * dim + len(PARTS)


def phase_feature_names(dim: int) -> list[str]:
    return [f"{block}[{i}]" for block in BLOCKS for i in range(dim)] + [f"missing_{p[0]}" for p in PARTS]


def phase_features(frames: np.ndarray, times: np.ndarray, intervals: np.ndarray) -> np.ndarray:
    """`(n_frames, dim)` frames, their centre times (s) and phase intervals -> `phase_feature_size(dim)`
    float32 vector: the recording's mean frame; each part's mean frame minus it (S1, S2, systole in
    thirds, diastole in halves: relative to the recording, so stethoscope gain and room noise
    cancel); the standard deviation of systole and of diastole frames (a murmur makes its phase
    vary); one flag per part without frames (its block is zeros)."""
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim != 2 or len(frames) != len(times):
        raise ValueError(f"frames must be (n_frames, dim) with one time per frame, got {frames.shape} "
                         f"and {len(times)} times")
    labels, position = frame_positions(np.asarray(times), intervals)
    dim = frames.shape[1]
    zeros = np.zeros(dim, np.float32)
    overall = frames.mean(axis=0) if len(frames) else zeros
    blocks, missing = [overall], []
    for _, label, start, end in PARTS:
        members = frames[(labels == label) & (position >= start) & ((position < end) | (end == 1.0))]
        missing.append(len(members) == 0)
        blocks.append(members.mean(axis=0) - overall if len(members) else zeros)
    for label in (2, 4):
        members = frames[labels == label]
        blocks.append(members.std(axis=0) if len(members) else zeros)
    return np.concatenate([*blocks, np.asarray(missing, np.float32)]).astype(np.float32)


def read_intervals(paths: Mapping[str, Path], problems: list[Problem] | None = None) -> dict[str, np.ndarray]:
    """Recording id -> intervals read from its interval file (a segmenter's output). A file that
    cannot be used leaves its recording without intervals and is added to `problems`."""
    out = {}
    for rid, path in paths.items():
        try:
            out[rid] = read_intervals_file(path, problems=problems)
        except (OSError, ValueError) as err:
            _refused(problems, path, err)
    return out


def _refused(problems: list[Problem] | None, path, err: Exception) -> None:
    if problems is not None:  # the reader's message starts with the path: keep its line number only
        message = str(err).removeprefix(f"{path}:")
        problems.append(Problem(str(path), f"line {message.strip()}; the recording has no phase intervals"
                                if message != str(err) else f"{err}; the recording has no phase intervals"))


def tsv_intervals(recordings, problems: list[Problem] | None = None) -> dict[str, np.ndarray]:
    """Recording id -> its annotated intervals (the dataset's `segmentation()`, checked against
    the recording's length), for the recordings that have a usable annotation file."""
    out = {}
    for r in recordings:
        if getattr(r, "segmentation_file", None) is None:
            continue
        try:
            out[r.recording_id] = r.segmentation(problems)
        except (OSError, ValueError) as err:
            _refused(problems, r.segmentation_file, err)
    return out


def folder_intervals(folder: str | Path, problems: list[Problem] | None = None) -> dict[str, np.ndarray]:
    """Recording id -> intervals from `FOLDER/RID.tsv` files (a segmenter's output)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no folder of .tsv intervals")
    return read_intervals({path.stem: path for path in sorted(folder.glob("*.tsv"))}, problems)


def phase_feature_table(cache: FrameCache, intervals: Mapping[str, np.ndarray],
                        recording_ids: list[str] | None = None,
                        on_missing: Callable[[str], None] | None = None) -> dict[str, np.ndarray]:
    """Recording id -> phase vector for every recording of a frame cache (or `recording_ids`).
    A recording without intervals gets zeros with every phase flagged missing (and is passed to
    `on_missing`, e.g. to be reported)."""
    out = {}
    for rid, rec in cache.read(recording_ids).items():
        if rid not in intervals and on_missing is not None:
            on_missing(rid)
        out[rid] = phase_features(rec.embeddings, rec.times, intervals.get(rid, np.zeros((0, 3))))
    return out
