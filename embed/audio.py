"""Reading and resampling recordings.

`read_audio` never guesses silently: anything it had to fix (another sample rate, stereo,
non-finite samples) comes back as a note, and anything it cannot use raises `AudioError`
naming the file and the problem.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

CIRCOR_SAMPLE_RATE = 4000
MIN_DURATION_S = 0.5


class AudioError(ValueError):
    """A recording that cannot be used; the message names the file and the problem."""

    def __init__(self, path: Path | str, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


@dataclass
class Audio:
    samples: np.ndarray  # float32, mono, in [-1, 1]
    sample_rate: int
    notes: list[str] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


def read_audio(path: Path | str, min_duration_s: float = MIN_DURATION_S) -> Audio:
    """Read a wav (or any libsndfile format) as float32 mono, validating as it goes."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise AudioError(path, f"cannot open ({err.strerror or err})") from err
    if size == 0:
        raise AudioError(path, "empty file (0 bytes)")
    try:
        samples, sample_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise AudioError(path, f"not readable audio ({err})") from err
    notes: list[str] = []
    if samples.shape[1] > 1:
        notes.append(f"{samples.shape[1]} channels downmixed to mono")
    samples = samples.mean(axis=1)
    bad = ~np.isfinite(samples)
    if bad.any():
        if bad.all():
            raise AudioError(path, "every sample is NaN or infinite")
        notes.append(f"{int(bad.sum())} NaN/inf samples set to 0")
        samples = np.where(bad, 0.0, samples).astype(np.float32)
    if len(samples) < min_duration_s * sample_rate:
        raise AudioError(path, f"too short: {len(samples) / sample_rate:.3f} s < {min_duration_s} s")
    peak = float(np.abs(samples).max()) if len(samples) else 0.0
    if peak == 0.0:
        notes.append("silent (all samples are zero)")
    elif peak > 1.0:
        # float wavs may exceed full scale; rescale rather than clip
        notes.append(f"peak {peak:.2f} > 1, rescaled")
        samples = samples / peak
    elif np.mean(np.abs(samples) >= 0.999) > 0.01:
        notes.append("clipping (over 1% of samples at full scale)")
    if sample_rate != CIRCOR_SAMPLE_RATE:
        notes.append(f"sample rate {sample_rate} Hz (CirCor is {CIRCOR_SAMPLE_RATE} Hz)")
    return Audio(np.ascontiguousarray(samples, dtype=np.float32), int(sample_rate), notes)


def resample(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Polyphase resampling (scipy's Kaiser-windowed FIR), exact for rational ratios."""
    if rate_in == rate_out:
        return samples.astype(np.float32, copy=False)
    ratio = Fraction(rate_out, rate_in)
    out = resample_poly(samples, ratio.numerator, ratio.denominator, axis=-1)
    return out.astype(np.float32, copy=False)
