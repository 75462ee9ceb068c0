"""Fixed-length windows over a recording (the paper's protocol by default).

Training uses 5 s windows every 2.5 s; evaluation uses non-overlapping 5 s windows with the
tail dropped. With `align="cycles"` each start moves forward to the recording's next S1 onset.
A recording shorter than one window is zero-padded to one window. Both
segmentations share their window starts where they coincide, so each distinct window is
embedded once and each segmentation is an index into that set.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class SegmentConfig:
    window_s: float = 5.0
    train_stride_s: float = 2.5
    eval_stride_s: float | None = None  # None: non-overlapping (= window_s)
    # evaluation windows run to the end of the recording, the last one zero-padded (frame caches,
    # which keep every frame of a recording)
    cover_tail: bool = False
    # "cycles": each window start moves to the next S1 onset of the recording's segmentation
    # (`extract --windows cycles`), so windows begin with a heart cycle; fixed starts where none
    align: Literal["fixed", "cycles"] = "fixed"

    def __post_init__(self) -> None:
        if self.align not in ("fixed", "cycles"):
            raise ValueError(f"window alignment must be 'fixed' or 'cycles', got {self.align!r}")

    def as_dict(self) -> dict:
        out = {k: (v if v is not None else "window") for k, v in asdict(self).items()}
        # options left out while off, so caches made before them keep their keys
        if not self.cover_tail:
            del out["cover_tail"]
        if self.align == "fixed":
            del out["align"]
        return out


def window_starts(n_samples: int, window: int, stride: int) -> np.ndarray:
    """Start samples of full windows; one window at 0 if the signal is shorter than a window."""
    if window <= 0 or stride <= 0:
        raise ValueError("window and stride must be positive")
    if n_samples <= window:
        return np.zeros(1, dtype=np.int64)
    return np.arange(0, n_samples - window + 1, stride, dtype=np.int64)


@dataclass
class Segmentation:
    starts: np.ndarray  # distinct window starts (samples at the encoder rate), sorted
    train_index: np.ndarray  # rows of `starts` used for training
    eval_index: np.ndarray  # rows of `starts` used for evaluation


def snap_to_onsets(starts: np.ndarray, onsets: np.ndarray, n_samples: int, window: int) -> np.ndarray:
    """Each start moved to the first onset at or after it from which a whole window fits (a start
    with no such onset stays); starts that land on the same onset become one."""
    onsets = np.sort(onsets[(onsets >= 0) & (onsets + window <= n_samples)]).astype(np.int64)
    if not len(onsets):
        return starts
    row = np.searchsorted(onsets, starts, side="left")
    return np.unique(np.where(row < len(onsets), onsets[np.minimum(row, len(onsets) - 1)], starts))


def plan_segments(n_samples: int, sample_rate: int, config: SegmentConfig,
                  onsets: np.ndarray | None = None) -> Segmentation:
    """`onsets`: S1 onsets in samples, which windows start at when `config.align` is "cycles"."""
    window = int(round(config.window_s * sample_rate))
    train = window_starts(n_samples, window, int(round(config.train_stride_s * sample_rate)))
    eval_stride = config.window_s if config.eval_stride_s is None else config.eval_stride_s
    stride = int(round(eval_stride * sample_rate))
    evals = window_starts(n_samples, window, stride)
    if config.cover_tail and n_samples > evals[-1] + window:  # windows until one reaches the end
        evals = np.arange(0, -(-(n_samples - window) // stride) * stride + 1, stride, dtype=np.int64)
    if config.align == "cycles" and onsets is not None:
        train, evals = (snap_to_onsets(train, onsets, n_samples, window),
                        snap_to_onsets(evals, onsets, n_samples, window))
    starts = np.union1d(train, evals)
    return Segmentation(starts, np.searchsorted(starts, train), np.searchsorted(starts, evals))


def cut_windows(samples: np.ndarray, starts: np.ndarray, window: int) -> np.ndarray:
    """`(len(starts), window)` array; windows running past the end are zero-padded."""
    out = np.zeros((len(starts), window), dtype=np.float32)
    for row, start in enumerate(starts):
        piece = samples[start:start + window]
        out[row, :len(piece)] = piece
    return out
