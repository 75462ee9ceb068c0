"""Fixed-length windows over a recording (the paper's protocol by default).

Training uses 5 s windows every 2.5 s; evaluation uses non-overlapping 5 s windows with the
tail dropped. A recording shorter than one window is zero-padded to one window. Both
segmentations share their window starts where they coincide, so each distinct window is
embedded once and each segmentation is an index into that set.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class SegmentConfig:
    window_s: float = 5.0
    train_stride_s: float = 2.5
    eval_stride_s: float | None = None  # None: non-overlapping (= window_s)
    # evaluation windows run to the end of the recording, the last one zero-padded (frame caches,
    # which keep every frame of a recording)
    cover_tail: bool = False

    def as_dict(self) -> dict:
        out = {k: (v if v is not None else "window") for k, v in asdict(self).items()}
        if not self.cover_tail:  # absent when off, so caches made before the option keep their keys
            del out["cover_tail"]
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


def plan_segments(n_samples: int, sample_rate: int, config: SegmentConfig) -> Segmentation:
    window = int(round(config.window_s * sample_rate))
    train = window_starts(n_samples, window, int(round(config.train_stride_s * sample_rate)))
    eval_stride = config.window_s if config.eval_stride_s is None else config.eval_stride_s
    stride = int(round(eval_stride * sample_rate))
    evals = window_starts(n_samples, window, stride)
    if config.cover_tail and n_samples > evals[-1] + window:  # windows until one reaches the end
        evals = np.arange(0, -(-(n_samples - window) // stride) * stride + 1, stride, dtype=np.int64)
    starts = np.union1d(train, evals)
    return Segmentation(starts, np.searchsorted(starts, train), np.searchsorted(starts, evals))


def cut_windows(samples: np.ndarray, starts: np.ndarray, window: int) -> np.ndarray:
    """`(len(starts), window)` array; windows running past the end are zero-padded."""
    out = np.zeros((len(starts), window), dtype=np.float32)
    for row, start in enumerate(starts):
        piece = samples[start:start + window]
        out[row, :len(piece)] = piece
    return out
