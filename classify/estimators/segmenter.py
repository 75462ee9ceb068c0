"""Heart-cycle segmenter for recordings without a `.tsv`: a frame-level phase probe on frozen frame
embeddings, decoded with a duration model over the cycle S1 -> systole -> S2 -> diastole.

Frames are averaged to the segmenter's own hop (`hop_s`), standardised per recording (stethoscope
gain and noise vary), and stacked with their neighbours at `context_s` offsets; a logistic
regression gives each frame's phase posterior. Decoding is a hidden semi-Markov Viterbi: each
phase lasts a number of frames drawn from its duration distribution (a smoothed histogram of the
training `.tsv` durations, zero beyond `max_quantile` x 1.2), phases follow the cycle order, and
emissions are posteriors divided by the training priors. The first and the last segment may be cut
by the recording's edges, so they are not held to the duration model. Heart rates differ widely
(CirCor holds neonates to adults), so each recording's cycle period is estimated from the
autocorrelation of its S1 posterior, and the duration distributions are a mixture of the
training ones and the training durations relative to the cycle period scaled to that estimate
(weight `heart_rate`; 0.8 was chosen on held-out train+val patients of paper split 1). Labels 0
(unannotated) take no part in training.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from embed.atomic import write_text_atomic
from embed.frames import average_runs

from classify.features.phases import PHASES, frame_labels
from classify.estimators.base import check_width
from classify.estimators.linear import scaler_from_state
from classify.estimators.state_checks import field, linear_width, positive

N_PHASES = len(PHASES)
RATIO_BIN = 0.01  # resolution of phase durations relative to the cycle period
PREVIOUS = np.array([3, 0, 1, 2])  # phase index before each one in the cycle
# grid frames whose features are built at once when decoding (about 17 minutes at the 20 ms hop;
# CirCor's longest recording is far shorter, so its decodes take the one-block path)
DECODE_BLOCK = 50_000


class PhaseSegmenter(BaseEstimator):
    """fit(frames, times, intervals) on lists of recordings; predict(frames, times) -> intervals."""

    def __init__(self, hop_s: float = 0.02, context_s: Sequence[float] = (-0.2, -0.1, -0.04, 0.0, 0.04, 0.1, 0.2),
                 C: float = 0.1, max_frames: int = 150_000, max_quantile: float = 0.995, heart_rate: float = 0.8,
                 seed: int = 0) -> None:
        self.hop_s, self.context_s, self.C = hop_s, context_s, C
        self.max_frames, self.max_quantile, self.heart_rate, self.seed = max_frames, max_quantile, heart_rate, seed

    # -- features ---------------------------------------------------------------------------
    def _grid(self, frames: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frames averaged to the segmenter's hop (`factor_` of the cache's frames), and their times."""
        return (average_runs(np.asarray(frames, np.float32), self.factor_),
                average_runs(np.asarray(times, np.float64), self.factor_))

    def _features(self, frames: np.ndarray) -> np.ndarray:
        return self._context(self._standardised(frames), np.arange(len(frames)))

    @staticmethod
    def _standardised(frames: np.ndarray) -> np.ndarray:
        return (frames - frames.mean(0)) / (frames.std(0) + 1e-3)

    def _context(self, standardised: np.ndarray, index: np.ndarray) -> np.ndarray:
        """Rows `index` of the standardised frames, each stacked with its neighbours at the context
        offsets (clipped at the recording's edges)."""
        shifts = [int(round(c / self.grid_hop_)) for c in self.context_s]
        rows = np.clip(index[:, None] + np.array(shifts)[None], 0, len(standardised) - 1)
        return standardised[rows].reshape(len(index), -1)

    # -- fitting ----------------------------------------------------------------------------
    def _check_params(self) -> None:
        positive("hop_s", self.hop_s)
        positive("C", self.C)
        positive("max_frames", self.max_frames, integer=True)
        if not 0.0 <= self.heart_rate <= 1.0:
            raise ValueError(f"heart_rate is a mixture weight in [0, 1], got {self.heart_rate}")
        if not 0.0 < self.max_quantile <= 1.0:
            raise ValueError(f"max_quantile is a quantile in (0, 1], got {self.max_quantile}")
        if not len(self.context_s) or not np.all(np.isfinite(np.asarray(self.context_s, dtype=np.float64))):
            raise ValueError(f"context_s must be finite offsets in seconds, got {self.context_s}")

    def fit(self, frames: list[np.ndarray], times: list[np.ndarray], intervals: list[np.ndarray]) -> "PhaseSegmenter":
        if not frames:
            raise ValueError("the segmenter needs at least one recording with intervals to train on")
        self._check_params()
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
        # 300 lbfgs iterations stop short of convergence on a full training set; the segmenter was
        # tuned and measured so, and the warning would repeat for every fit of a recipe run
        with threadpool_limits(1), warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.probe_ = LogisticRegression(C=self.C, max_iter=300).fit(self.scaler_.transform(X), y)
        self.log_prior_ = np.log(np.bincount(y, minlength=N_PHASES) / len(y))
        self.log_duration_ = self._durations(intervals)
        self._fit_relative_durations(intervals)
        self.n_features_in_ = frames[0].shape[1]
        return self

    def _fit_relative_durations(self, intervals: list[np.ndarray]) -> None:
        """Per phase, log P(duration / cycle period) in bins of `RATIO_BIN`, and the range of cycle
        periods seen, from recordings whose `.tsv` has at least two S1 onsets."""
        ratios: list[list[float]] = [[] for _ in range(N_PHASES)]
        periods = []
        for iv in intervals:
            period = cycle_period(iv)
            if period is None:
                continue
            periods.append(period)
            for k in range(N_PHASES):
                rows = iv[iv[:, 2] == k + 1]
                ratios[k] += list((rows[:, 1] - rows[:, 0]) / period)
        if not periods or not all(ratios):
            self.period_range_, self.log_ratio_ = None, None
            return
        self.period_range_ = (0.8 * float(np.quantile(periods, 0.005)), 1.2 * float(np.quantile(periods, 0.995)))
        self.log_ratio_ = []
        for values in ratios:
            bins = np.maximum(1, np.round(np.asarray(values) / RATIO_BIN)).astype(int)
            self.log_ratio_.append(smoothed_log_pmf(bins, self.max_quantile, width=2.0))

    def estimate_period(self, log_posterior: np.ndarray) -> float | None:
        """A recording's cycle period (s): the lag, within the periods seen in training, at which the
        S1 posterior best repeats (autocorrelation)."""
        if self.period_range_ is None:
            return None
        s1 = np.exp(log_posterior[:, 0])
        s1 = s1 - s1.mean()
        lo, hi = (int(round(p / self.grid_hop_)) for p in self.period_range_)
        hi = min(hi, len(s1) // 2)
        if hi <= max(lo, 1):
            return None
        spectrum = np.fft.rfft(s1, 2 * len(s1))
        auto = np.fft.irfft(spectrum * np.conj(spectrum))[:len(s1)] / (len(s1) - np.arange(len(s1)))
        return (lo + int(np.argmax(auto[lo:hi + 1]))) * self.grid_hop_

    def recording_durations(self, period: float | None) -> list[np.ndarray]:
        """Duration log-probabilities for one recording: the training distribution mixed with the
        relative durations scaled to the recording's own cycle period, the latter weighted
        `heart_rate` (below 1, a wrong period estimate costs less)."""
        if period is None or self.log_ratio_ is None or self.heart_rate <= 0:
            return self.log_duration_
        out = []
        for log_global, log_ratio in zip(self.log_duration_, self.log_ratio_):
            n = max(len(log_global), int(np.ceil(len(log_ratio) * RATIO_BIN * period / self.grid_hop_)))
            ratio_bin = np.round(np.arange(1, n + 1) * self.grid_hop_ / period / RATIO_BIN).astype(int)
            scaled = np.where((ratio_bin >= 1) & (ratio_bin <= len(log_ratio)),
                              log_ratio[np.clip(ratio_bin, 1, len(log_ratio)) - 1], -np.inf)
            scaled = scaled - np.logaddexp.reduce(scaled)
            padded = np.full(n, log_global.min())
            padded[:len(log_global)] = log_global
            padded = padded - np.logaddexp.reduce(padded)
            with np.errstate(divide="ignore"):
                out.append(np.logaddexp(scaled + np.log(self.heart_rate), padded + np.log1p(-self.heart_rate)))
        return out

    def _durations(self, intervals: list[np.ndarray]) -> list[np.ndarray]:
        """Per phase, log P(duration = d frames) for d = 1..max."""
        out = []
        for label in range(1, N_PHASES + 1):
            d = np.concatenate([iv[iv[:, 2] == label, 1] - iv[iv[:, 2] == label, 0] for iv in intervals])
            d = np.maximum(1, np.round(d / self.grid_hop_)).astype(int)
            out.append(smoothed_log_pmf(d, self.max_quantile, width=1.5))
        return out

    # -- saving -----------------------------------------------------------------------------
    def state(self) -> dict[str, np.ndarray]:
        """The fitted segmenter as plain arrays (saved models hold data, never code)."""
        out = {"factor": np.asarray(self.factor_), "grid_hop": np.asarray(self.grid_hop_),
               "mean": self.scaler_.mean_, "scale": self.scaler_.scale_, "var": self.scaler_.var_,
               "coef": self.probe_.coef_, "intercept": self.probe_.intercept_, "classes": self.probe_.classes_,
               "log_prior": self.log_prior_}
        out.update({f"log_duration_{k}": d for k, d in enumerate(self.log_duration_)})
        if self.log_ratio_ is not None:  # heart-rate adaptation
            out["period_range"] = np.asarray(self.period_range_)
            out.update({f"log_ratio_{k}": r for k, r in enumerate(self.log_ratio_)})
        return out

    @classmethod
    def from_state(cls, params: dict, state: dict[str, np.ndarray]) -> "PhaseSegmenter":
        """Rebuilt from saved arrays, each checked first: finite, shapes that agree, a positive hop."""
        seg = cls(**params)
        seg._check_params()
        width = linear_width(state, N_PHASES)
        if len(state["classes"]) != N_PHASES:
            raise ValueError(f"field 'classes' lists {len(state['classes'])} phases, expected {N_PHASES}")
        if width % len(seg.context_s):
            raise ValueError(f"field 'coef' has {width} columns, not a multiple of the {len(seg.context_s)} "
                             "context offsets")
        if len(field(state, "log_prior", ndim=1)) != N_PHASES:
            raise ValueError(f"field 'log_prior' has {len(state['log_prior'])} entries, expected {N_PHASES}")
        for k in range(N_PHASES):
            if not len(field(state, f"log_duration_{k}", ndim=1)):
                raise ValueError(f"field 'log_duration_{k}' is empty")
            if "period_range" in state and not len(field(state, f"log_ratio_{k}", ndim=1)):
                raise ValueError(f"field 'log_ratio_{k}' is empty")
        if "period_range" in state:
            low, high = (positive(f"field 'period_range'[{i}]", v) for i, v in enumerate(field(state, "period_range")))
            if low > high:
                raise ValueError(f"field 'period_range' = {[low, high]} is not ascending")
        seg.factor_ = int(positive("field 'factor'", state.get("factor"), integer=True))
        seg.grid_hop_ = positive("field 'grid_hop'", state.get("grid_hop"))
        seg.n_features_in_ = width // len(seg.context_s)
        seg.scaler_ = scaler_from_state(state)
        seg.probe_ = LogisticRegression(C=seg.C)
        seg.probe_.coef_, seg.probe_.intercept_ = state["coef"], state["intercept"]
        seg.probe_.classes_, seg.probe_.n_features_in_ = state["classes"], state["coef"].shape[1]
        seg.log_prior_ = state["log_prior"]
        seg.log_duration_ = [state[f"log_duration_{k}"] for k in range(N_PHASES)]
        if "period_range" in state:
            seg.period_range_ = tuple(float(p) for p in state["period_range"])
            seg.log_ratio_ = [state[f"log_ratio_{k}"] for k in range(N_PHASES)]
        else:  # saved without heart-rate adaptation: the training durations alone
            seg.period_range_, seg.log_ratio_ = None, None
        return seg

    # -- prediction -------------------------------------------------------------------------
    def log_posteriors(self, frames: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per frame on the segmenter's grid: log P(phase | frames), and the grid's times."""
        check_width(self, np.asarray(frames), "the segmenter")
        f, t = self._grid(frames, times)
        with threadpool_limits(1):
            if len(f) <= DECODE_BLOCK:
                return self.probe_.predict_log_proba(self.scaler_.transform(self._features(f))), t
            # a long recording: its context features (7 x the frame width, float64) in blocks of rows
            standardised = self._standardised(f)
            out = np.empty((len(f), N_PHASES))
            for start in range(0, len(f), DECODE_BLOCK):
                index = np.arange(start, min(start + DECODE_BLOCK, len(f)))
                out[index] = self.probe_.predict_log_proba(self.scaler_.transform(self._context(standardised, index)))
            return out, t

    def predict_grid(self, frames: np.ndarray, times: np.ndarray, duration_model: bool = True
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Phase labels (1-4) on the segmenter's grid and the grid's times; without the duration
        model each frame takes its most probable phase."""
        logp, t = self.log_posteriors(frames, times)
        if not duration_model:
            return logp.argmax(1) + 1, t
        durations = self.recording_durations(self.estimate_period(logp))
        return viterbi_cycle(logp - self.log_prior_, durations) + 1, t

    def predict(self, frames: np.ndarray, times: np.ndarray, duration_model: bool = True) -> np.ndarray:
        """Intervals `(start_s, end_s, label)` covering the recording, in the `.tsv` form."""
        labels, t = self.predict_grid(frames, times, duration_model)
        return labels_to_intervals(labels, t, self.grid_hop_)


def smoothed_log_pmf(counts: np.ndarray, max_quantile: float, width: float) -> np.ndarray:
    """log P(value = v) for v = 1..limit from integer observations: a histogram smoothed by a
    Gaussian of `width` bins with a small floor, so unseen values stay possible; values past
    1.2 x the `max_quantile` quantile (the limit) are not."""
    longest = max(2, int(np.ceil(1.2 * np.quantile(counts, max_quantile))))
    hist = np.bincount(np.minimum(counts, longest), minlength=longest + 1)[1:].astype(float)
    reach = int(np.ceil(2 * width))
    kernel = np.exp(-0.5 * (np.arange(-reach, reach + 1) / width) ** 2)
    smooth = np.convolve(hist, kernel / kernel.sum(), mode="same") + 1e-3 * hist.max()
    return np.log(smooth / smooth.sum())


def cycle_period(intervals: np.ndarray) -> float | None:
    """Median time between consecutive S1 onsets of a segmentation (gaps over 3 s, where
    annotation stopped, left out); None with fewer than two onsets."""
    onsets = np.sort(intervals[intervals[:, 2] == 1, 0])
    gaps = np.diff(onsets)
    gaps = gaps[(gaps > 0) & (gaps < 3.0)]
    return float(np.median(gaps)) if len(gaps) else None


def viterbi_cycle(log_emission: np.ndarray, log_duration: list[np.ndarray]) -> np.ndarray:
    """Most probable phase (0-3) per frame under the cycle 0 -> 1 -> 2 -> 3 -> 0 with explicit
    durations (`log_duration[k][d - 1]` = log P(phase k lasts d frames)). The segment at each edge
    of the recording may be cut short, so it gets no duration term (only its limit)."""
    T = len(log_emission)
    cum = np.vstack([np.zeros(N_PHASES), np.cumsum(log_emission, axis=0)])
    longest = max(len(d) for d in log_duration)
    duration = np.full((N_PHASES, longest), -np.inf)  # -inf past each phase's limit
    limit = np.full((N_PHASES, longest), -np.inf)  # 0 up to each phase's limit
    for k, d in enumerate(log_duration):
        duration[k, :len(d)], limit[k, :len(d)] = d, 0.0
    best = np.full((T + 1, N_PHASES), -np.inf)
    length = np.zeros((T + 1, N_PHASES), dtype=np.int64)
    steps, phases = np.arange(1, longest + 1), np.arange(N_PHASES)
    for t in range(1, T + 1):  # all phases and durations at once; only time is a Python loop
        n = min(longest, t)
        start = t - steps[:n]
        emission = cum[t][:, None] - cum[start].T  # (phase, duration)
        before = best[start][:, PREVIOUS].T + (limit if t == T else duration)[:, :n]
        score = emission + np.where(start == 0, limit[:, :n], before)
        j = np.argmax(score, axis=1)
        best[t], length[t] = score[phases, j], j + 1
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
    """The `.tsv` format CirCor uses: start, end, label per line (written whole or not at all)."""
    write_text_atomic(path, "".join(f"{a:.3f}\t{b:.3f}\t{int(c)}\n" for a, b, c in intervals))
