"""Frame-level caches (`extract --frames`): every frame embedding of a recording with its centre time.

A recording is cut into non-overlapping windows that run to its end (the last one zero-padded),
each window goes through `Encoder.frame_embeddings` (the path the clip embeddings take before
pooling), and the windows' frames are joined into one time-ordered sequence. Frame times are the
encoder's own within a window (`Encoder.cache_frame_times`) plus the window's start; frames
centred past the recording's end (the padding) are dropped. With `extract --layers I` the frames
are those of encoder layer I (`Encoder.layer_frames`). `hop_s` averages runs of consecutive
frames (within a window) to bound the disk a cache takes; `dtype` is the stored precision.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from .cache import CachedFrames
from .encoders import Encoder
from .segments import SegmentConfig

FrameDtype = Literal["fp16", "fp32"]
FRAME_DTYPES: dict[str, type] = {"fp16": np.float16, "fp32": np.float32}


@dataclass(frozen=True)
class FrameConfig:
    dtype: FrameDtype = "fp16"
    hop_s: float | None = None  # None: the encoder's own frame hop
    window_s: float = 5.0  # the windows frames are computed in (the clip length the encoder sees)

    def __post_init__(self) -> None:
        if self.dtype not in FRAME_DTYPES:
            raise ValueError(f"frame dtype must be one of {tuple(FRAME_DTYPES)}, got {self.dtype!r}")
        if self.hop_s is not None and not self.hop_s > 0:
            raise ValueError(f"--frame-hop must be a positive number of seconds, got {self.hop_s}")

    def segments(self) -> SegmentConfig:
        """Non-overlapping windows covering the whole recording."""
        return SegmentConfig(self.window_s, self.window_s, None, cover_tail=True)

    def as_dict(self) -> dict:
        return {"dtype": self.dtype, "hop_s": self.hop_s}


class FrameSource:
    """What a frame cache stores of an encoder: the frames of its one chosen layer (`layers`; the
    default, the last, is `frame_embeddings`), as numpy `(batch, frames, dim)`. Layers run at
    different frame rates, so one layer per cache. One silent window, run once, tells the layer's
    frame hop and so how many frames `config.hop_s` averages."""

    def __init__(self, encoder: Encoder, config: FrameConfig) -> None:
        if len(encoder.layers) != 1:
            raise ValueError(f"--frames stores one layer's frames (layers run at different frame rates); "
                             f"got layers {','.join(map(str, encoder.layers))}: pick one with --layers I")
        self.encoder, self.layer = encoder, encoder.layers[0]
        window = int(round(config.window_s * encoder.sample_rate))
        times = encoder.cache_frame_times(self.layer, self(np.zeros((1, window), np.float32)).shape[1], window)
        self.hop_s = float(times[1] - times[0]) if len(times) > 1 else config.window_s
        self.factor = pool_factor(self.hop_s, config.hop_s, encoder.name)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.encoder.layer_frames(batch, [self.layer])[0].cpu().numpy()


def pool_factor(frame_hop_s: float, hop_s: float | None, encoder: str = "") -> int:
    """How many frames `frame_hop_s` apart one stored frame averages to make a hop of `hop_s`."""
    if hop_s is None:
        return 1
    factor = int(round(hop_s / frame_hop_s))
    if factor < 1 or abs(factor * frame_hop_s - hop_s) > 1e-6 + 0.01 * hop_s:
        raise ValueError(f"--frame-hop {hop_s:g} s must be a whole multiple of {encoder}'s frame hop "
                         f"({frame_hop_s:g} s)")
    return factor


def average_runs(values: np.ndarray, factor: int) -> np.ndarray:
    """Means of consecutive runs of `factor` rows (the last run may be shorter)."""
    if factor == 1:
        return values
    edges = np.arange(0, len(values), factor)
    sums = np.add.reduceat(values, edges, axis=0)
    counts = np.diff(np.append(edges, len(values))).reshape(-1, *([1] * (values.ndim - 1)))
    return sums / counts


def join_windows(encoder: Encoder, window_frames: np.ndarray, starts: np.ndarray, n_samples: int,
                 config: FrameConfig, factor: int = 1, layer: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`(n_windows, n_frames, dim)` frames of windows starting at `starts` (samples) -> one
    `(frames, dim)` sequence in the stored dtype, runs of `factor` frames averaged, and its centre
    times in seconds."""
    window = int(round(config.window_s * encoder.sample_rate))
    layer = encoder.n_layers - 1 if layer is None else layer
    within = encoder.cache_frame_times(layer, window_frames.shape[1], window)
    frames = np.concatenate([average_runs(w, factor) for w in window_frames])
    times = np.concatenate([average_runs(start / encoder.sample_rate + within, factor) for start in starts])
    keep = times < n_samples / encoder.sample_rate
    return frames[keep].astype(FRAME_DTYPES[config.dtype]), times[keep].astype(np.float32)


def frames_record(recording_id: str, source: FrameSource, window_frames: np.ndarray, starts: np.ndarray,
                  n_samples: int, config: FrameConfig) -> CachedFrames:
    frames, times = join_windows(source.encoder, window_frames, starts, n_samples, config, source.factor,
                                 source.layer)
    if not np.isfinite(frames).all():
        raise ValueError(f"frame values overflow {config.dtype}" + ("; use --frame-dtype fp32"
                                                                    if config.dtype == "fp16" else ""))
    return CachedFrames(recording_id, frames, times)
