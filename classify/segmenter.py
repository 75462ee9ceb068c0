"""Heart-cycle segmenter for recordings without a `.tsv`: a frame-level phase probe on frozen frame
embeddings, decoded with a duration model over the cycle S1 -> systole -> S2 -> diastole.

Frames are averaged to the segmenter's own hop (`hop_s`), standardised per recording (stethoscope
gain and noise vary), and stacked with their neighbours at `context_s` offsets; a logistic
regression gives each frame's phase posterior. Decoding is a hidden semi-Markov Viterbi: each
phase lasts a number of frames drawn from its duration distribution (a smoothed histogram of the
training `.tsv` durations, zero beyond `max_quantile` x 1.2), phases follow the cycle order, and
emissions are posteriors divided by the training priors. The first and the last segment may be cut
by the recording's edges, so they are not held to the duration model. Labels 0 (unannotated)
take no part in training.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from embed.frames import average_runs

from .phases import PHASES, frame_labels
from .probes import scaler_from_state

N_PHASES = len(PHASES)
PREVIOUS = np.array([3, 0, 1, 2])  # phase index before each one in the cycle


class PhaseSegmenter(BaseEstimator):
    """fit(frames, times, intervals) on lists of recordings; predict(frames, times) -> intervals."""

    def __init__(self, hop_s: float = 0.02, context_s: Sequence[float] = (-0.2, -0.1, -0.04, 0.0, 0.04, 0.1, 0.2),
                 C: float = 0.1, max_frames: int = 150_000, max_quantile: float = 0.995, seed: int = 0) -> None:
        self.hop_s, self.context_s, self.C = hop_s, context_s, C
        self.max_frames, self.max_quantile, self.seed = max_frames, max_quantile, seed

    # -- features ---------------------------------------------------------------------------
    def _grid(self, frames: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frames averaged to the segmenter's hop (`factor_` of the cache's frames), and their times."""
        return (average_runs(np.asarray(frames, np.float32), self.factor_),
                average_runs(np.asarray(times, np.float64), self.factor_))

    def _features(self, frames: np.ndarray) -> np.ndarray:
        frames = (frames - frames.mean(0)) / (frames.std(0) + 1e-3)
        shifts = [int(round(c / self.grid_hop_)) for c in self.context_s]
        rows = np.clip(np.arange(len(frames))[:, None] + np.array(shifts)[None], 0, len(frames) - 1)
        return frames[rows].reshape(len(frames), -1)

    # -- fitting ----------------------------------------------------------------------------
    def fit(self, frames: list[np.ndarray], times: list[np.ndarray], intervals: list[np.ndarray]) -> "PhaseSegmenter":
        if not frames:
            raise ValueError("the segmenter needs at least one recording with intervals to train on")
        # the cache's frame hop; frames coarser than hop_s are used as they are
        frame_hop = float(np.median(np.concatenate([np.diff(t) for t in times[:50]])))
        self.factor_ = max(1, int(round(self.hop_s / frame_hop)))
        self.grid_hop_ = self.factor_ * frame_hop
        xs, ys = [], []
        rng = np.random.default_rng(self.seed)
        per_recording = -(-2 * self.max_frames // len(frames))  # bounds memory before the final draw
        for f, t, iv in zip(frames, times, intervals):
            f, t = self._grid(f, t)
            labels = frame_labels(t, iv)
            keep = np.flatnonzero(labels > 0)
            if len(keep) > per_recording:
                keep = np.sort(rng.choice(keep, per_recording, replace=False))
            xs.append(self._features(f)[keep])
            ys.append(labels[keep] - 1)
        X, y = np.concatenate(xs), np.concatenate(ys)
        if len(np.unique(y)) < N_PHASES:
            raise ValueError("the training intervals do not hold all four phases (labels 1-4)")
        if len(y) > self.max_frames:
            pick = rng.choice(len(y), self.max_frames, replace=False)
            X, y = X[pick], y[pick]
        self.scaler_ = StandardScaler().fit(X)
        # one BLAS thread: these small products gain nothing from more, and threads that spin-wait
        # for each other made the fit 10-20x slower on a CPU shared with other jobs
        with threadpool_limits(1):
            self.probe_ = LogisticRegression(C=self.C, max_iter=300).fit(self.scaler_.transform(X), y)
        self.log_prior_ = np.log(np.bincount(y, minlength=N_PHASES) / len(y))
        self.log_duration_ = self._durations(intervals)
        return self

    def _durations(self, intervals: list[np.ndarray]) -> list[np.ndarray]:
        """Per phase, log P(duration = d frames) for d = 1..max."""
        out = []
        for label in range(1, N_PHASES + 1):
            d = np.concatenate([iv[iv[:, 2] == label, 1] - iv[iv[:, 2] == label, 0] for iv in intervals])
            d = np.maximum(1, np.round(d / self.grid_hop_)).astype(int)
            longest = max(2, int(np.ceil(1.2 * np.quantile(d, self.max_quantile))))
            hist = np.bincount(np.minimum(d, longest), minlength=longest + 1)[1:].astype(float)
            kernel = np.exp(-0.5 * (np.arange(-3, 4) / 1.5) ** 2)
            smooth = np.convolve(hist, kernel / kernel.sum(), mode="same") + 1e-3 * hist.max()
            out.append(np.log(smooth / smooth.sum()))
        return out

    # -- saving -----------------------------------------------------------------------------
    def state(self) -> dict[str, np.ndarray]:
        """The fitted segmenter as plain arrays (saved models hold data, never code)."""
        out = {"factor": np.asarray(self.factor_), "grid_hop": np.asarray(self.grid_hop_),
               "mean": self.scaler_.mean_, "scale": self.scaler_.scale_, "var": self.scaler_.var_,
               "coef": self.probe_.coef_, "intercept": self.probe_.intercept_, "classes": self.probe_.classes_,
               "log_prior": self.log_prior_}
        out.update({f"log_duration_{k}": d for k, d in enumerate(self.log_duration_)})
        return out

    @classmethod
    def from_state(cls, params: dict, state: dict[str, np.ndarray]) -> "PhaseSegmenter":
        seg = cls(**params)
        seg.factor_, seg.grid_hop_ = int(state["factor"]), float(state["grid_hop"])
        seg.scaler_ = scaler_from_state(state)
        seg.probe_ = LogisticRegression(C=seg.C)
        seg.probe_.coef_, seg.probe_.intercept_ = state["coef"], state["intercept"]
        seg.probe_.classes_, seg.probe_.n_features_in_ = state["classes"], state["coef"].shape[1]
        seg.log_prior_ = state["log_prior"]
        seg.log_duration_ = [state[f"log_duration_{k}"] for k in range(N_PHASES)]
        return seg

    # -- prediction -------------------------------------------------------------------------
    def log_posteriors(self, frames: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per frame on the segmenter's grid: log P(phase | frames), and the grid's times."""
        f, t = self._grid(frames, times)
        with threadpool_limits(1):
            return self.probe_.predict_log_proba(self.scaler_.transform(self._features(f))), t

    def predict_grid(self, frames: np.ndarray, times: np.ndarray, duration_model: bool = True
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Phase labels (1-4) on the segmenter's grid and the grid's times; without the duration
        model each frame takes its most probable phase."""
        logp, t = self.log_posteriors(frames, times)
        if not duration_model:
            return logp.argmax(1) + 1, t
        return viterbi_cycle(logp - self.log_prior_, self.log_duration_) + 1, t

    def predict(self, frames: np.ndarray, times: np.ndarray, duration_model: bool = True) -> np.ndarray:
        """Intervals `(start_s, end_s, label)` covering the recording, in the `.tsv` form."""
        labels, t = self.predict_grid(frames, times, duration_model)
        return labels_to_intervals(labels, t, self.grid_hop_)


def viterbi_cycle(log_emission: np.ndarray, log_duration: list[np.ndarray]) -> np.ndarray:
    """Most probable phase (0-3) per frame under the cycle 0 -> 1 -> 2 -> 3 -> 0 with explicit
    durations (`log_duration[k][d - 1]` = log P(phase k lasts d frames)). The segment at each edge
    of the recording may be cut short, so it gets no duration term (only its limit)."""
    T = len(log_emission)
    cum = np.vstack([np.zeros(N_PHASES), np.cumsum(log_emission, axis=0)])
    best = np.full((T + 1, N_PHASES), -np.inf)
    length = np.zeros((T + 1, N_PHASES), dtype=np.int64)
    for t in range(1, T + 1):
        for k in range(N_PHASES):
            d = np.arange(1, min(len(log_duration[k]), t) + 1)
            start = t - d
            score = cum[t, k] - cum[start, k]
            durations = log_duration[k][:len(d)] if t < T else 0.0
            before = best[start, PREVIOUS[k]] + durations
            score = score + np.where(start == 0, 0.0, before)
            j = int(np.argmax(score))
            best[t, k], length[t, k] = score[j], d[j]
    labels = np.zeros(T, dtype=np.int64)
    t, k = T, int(np.argmax(best[T]))
    while t > 0:
        d = length[t, k]
        labels[t - d:t] = k
        t, k = t - d, int(PREVIOUS[k])
    return labels


def labels_to_intervals(labels: np.ndarray, times: np.ndarray, hop_s: float) -> np.ndarray:
    """Runs of equal labels on a frame grid -> `(start_s, end_s, label)` rows (frame edges half a
    hop either side of the centres)."""
    if not len(labels):
        return np.zeros((0, 3))
    change = np.flatnonzero(np.diff(labels)) + 1
    first, last = np.r_[0, change], np.r_[change - 1, len(labels) - 1]
    return np.column_stack([np.maximum(times[first] - hop_s / 2, 0.0), times[last] + hop_s / 2,
                            labels[first]]).astype(np.float64)


def write_intervals(intervals: np.ndarray, path) -> None:
    """The `.tsv` format CirCor uses: start, end, label per line."""
    with open(path, "w") as fh:
        fh.writelines(f"{a:.3f}\t{b:.3f}\t{int(c)}\n" for a, b, c in intervals)
