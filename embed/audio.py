"""Reading and resampling recordings.

`read_audio` never guesses silently: anything it had to fix (another sample rate, stereo,
non-finite samples) comes back as a note, and anything it cannot use raises `AudioError`
naming the file and the problem.

Recordings longer than `LONG_RECORDING_S` are never loaded whole: `open_resampled` scans them in
blocks for the same checks, then reads and resamples each window on demand (`StreamedAudio`),
so memory stays bounded by a block and a batch whatever the length.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from .wavheader import read_wav_header

CIRCOR_SAMPLE_RATE = 4000
# heart sounds are recorded at 1-48 kHz; outside this a header is wrong, and trusting it would
# turn a few kilobytes into hours of windows (1 Hz) or nothing at all (0 Hz)
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1000, 384_000
# what libsndfile raises on unreadable, truncated or non-audio bytes
READ_ERRORS = (sf.LibsndfileError, RuntimeError, TypeError, ValueError)
MIN_DURATION_S = 0.5
LONG_RECORDING_S = 600.0  # longer recordings are streamed in blocks
BLOCK_FRAMES = 1 << 16


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


def audio_duration_s(path: Path | str) -> float | None:
    """The length of a recording in seconds from its header alone (the frames a WAV file really
    holds, where its header claims more), or None when it cannot be opened."""
    header = read_wav_header(path)
    if header is not None and header.sample_rate > 0:
        return min(header.frames_claimed, header.frames_present) / header.sample_rate
    try:
        info = sf.info(str(path))
    except (RuntimeError, OSError, ValueError):  # libsndfile's errors; the recording fails elsewhere, named
        return None
    return info.frames / info.samplerate if info.samplerate > 0 else None


def read_audio(path: Path | str, min_duration_s: float = MIN_DURATION_S,
               expected_rate: int = CIRCOR_SAMPLE_RATE) -> Audio:
    """Read a wav (or any libsndfile format) as float32 mono, validating as it goes."""
    path = Path(path)
    with _open(path) as fh:
        sample_rate = fh.samplerate
        try:
            samples = fh.read(dtype="float32", always_2d=True)
        except READ_ERRORS as err:
            raise AudioError(path, f"not readable audio ({err})") from err
    channels = samples.shape[1]
    samples = samples.mean(axis=1)
    bad = ~np.isfinite(samples)
    if bad.any():
        samples = np.where(bad, 0.0, samples).astype(np.float32)
    stats = AudioStats(int(sample_rate), len(samples), channels, int(bad.sum()),
                       float(np.abs(samples).max()) if len(samples) else 0.0,
                       int(np.count_nonzero(np.abs(samples) >= 0.999)))
    notes, scale = judge(path, stats, min_duration_s, expected_rate=expected_rate)
    notes += header_notes(path)
    if scale != 1.0:
        samples = samples * np.float32(scale)
    return Audio(np.ascontiguousarray(samples, dtype=np.float32), int(sample_rate), notes)


@dataclass
class AudioStats:
    """What the checks need, gathered in one pass (whole file or block by block)."""
    sample_rate: int
    frames: int
    channels: int
    nonfinite: int  # NaN/inf samples after downmixing (set to 0)
    peak: float  # max |sample| after downmixing and zeroing non-finite samples
    full_scale: int  # samples with |x| >= 0.999

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate


def judge(path: Path | str, stats: AudioStats, min_duration_s: float = MIN_DURATION_S,
          rate_out: int | None = None, expected_rate: int = CIRCOR_SAMPLE_RATE) -> tuple[list[str], float]:
    """Notes for what was fixed and the gain to apply; raises AudioError for unusable audio."""
    notes: list[str] = []
    check_sample_rate(path, stats.sample_rate)
    if stats.channels > 1:
        notes.append(f"{stats.channels} channels downmixed to mono")
    if stats.nonfinite:
        if stats.nonfinite >= stats.frames:
            raise AudioError(path, "every sample is NaN or infinite")
        notes.append(f"{stats.nonfinite} NaN/inf samples set to 0")
    if stats.frames < min_duration_s * stats.sample_rate:
        raise AudioError(path, f"too short: {stats.duration_s:.3f} s < {min_duration_s} s")
    scale = 1.0
    if stats.peak == 0.0:
        notes.append("silent (all samples are zero)")
    elif stats.peak > 1.0:
        # float wavs may exceed full scale; rescale rather than clip
        notes.append(f"peak {stats.peak:.2f} > 1, rescaled")
        scale = 1.0 / stats.peak
    elif stats.full_scale > 0.01 * stats.frames:
        notes.append("clipping (over 1% of samples at full scale)")
    if stats.sample_rate != expected_rate:
        note = f"sample rate {stats.sample_rate} Hz (the data's own rate is {expected_rate} Hz)"
        if rate_out is not None and rate_out != stats.sample_rate:
            note += f", resampled to {rate_out} Hz"
        notes.append(note)
    return notes, scale


def check_sample_rate(path: Path | str, rate: int) -> None:
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioError(path, f"implausible sample rate {rate} Hz in the header (expected "
                               f"{MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz); refused")


def header_notes(path: Path) -> list[str]:
    """A WAV header that claims more audio than the file holds (a cut-off copy, say)."""
    header = read_wav_header(path)
    if header is None or header.frames_claimed <= header.frames_present:
        return []
    return [f"header claims {header.frames_claimed} frames, the file holds {header.frames_present} "
            "(truncated?); using what is there"]


def _open(path: Path) -> sf.SoundFile:
    """Open for reading, after the checks that need no decoding (size, sample rate)."""
    try:
        size = path.stat().st_size
    except OSError as err:
        raise AudioError(path, f"cannot open ({err.strerror or err})") from err
    if size == 0:
        raise AudioError(path, "empty file (0 bytes)")
    try:
        fh = sf.SoundFile(str(path))
    except READ_ERRORS as err:
        header = read_wav_header(path)
        if header is not None:  # say what is wrong rather than libsndfile's internal words
            check_sample_rate(path, header.sample_rate)
            if header.channels == 0:
                raise AudioError(path, "header says 0 channels") from err
        raise AudioError(path, f"not readable audio ({err})") from err
    try:
        check_sample_rate(path, fh.samplerate)
    except AudioError:
        fh.close()
        raise
    return fh


def scan_audio(path: Path | str, block_frames: int = BLOCK_FRAMES) -> AudioStats:
    """Stats of a file read block by block (memory: one block)."""
    path = Path(path)
    with _open(path) as fh:
        rate, channels = int(fh.samplerate), int(fh.channels)
        frames = nonfinite = full_scale = 0
        peak = 0.0
        try:
            while True:
                block = fh.read(block_frames, dtype="float32", always_2d=True)
                if not len(block):
                    break
                mono = block.mean(axis=1)
                bad = ~np.isfinite(mono)
                if bad.any():
                    nonfinite += int(bad.sum())
                    mono = np.where(bad, 0.0, mono)
                frames += len(mono)
                peak = max(peak, float(np.abs(mono).max()))
                full_scale += int(np.count_nonzero(np.abs(mono) >= 0.999))
        except READ_ERRORS as err:
            raise AudioError(path, f"not readable audio ({err})") from err
    return AudioStats(rate, frames, channels, nonfinite, peak, full_scale)


class InMemoryAudio:
    """A recording at the encoder rate, held whole (short recordings)."""

    def __init__(self, samples: np.ndarray, notes: list[str]) -> None:
        self.samples = samples
        self.notes = notes

    @property
    def n_samples(self) -> int:
        return len(self.samples)

    def windows(self, starts: np.ndarray, window: int) -> np.ndarray:
        from .segments import cut_windows
        return cut_windows(self.samples, starts, window)


class StreamedAudio:
    """A long recording read and resampled on demand, one span at a time.

    Each span is read from the file with a margin of input samples on both sides, where the
    margin covers the resampling filter and starts on a multiple of the decimation factor, so
    a span equals the same stretch of a whole-file `resample` (up to float rounding).
    """

    def __init__(self, path: Path | str, stats: AudioStats, rate_out: int, scale: float,
                 notes: list[str]) -> None:
        self.path, self.stats, self.rate_out = Path(path), stats, int(rate_out)
        self.scale, self.notes = scale, notes
        ratio = Fraction(self.rate_out, stats.sample_rate)
        self.up, self.down = ratio.numerator, ratio.denominator
        # resample_poly's filter reaches 10 * max(up, down) taps each side at the upsampled rate
        reach = 0 if self.up == self.down == 1 else math.ceil(10 * max(self.up, self.down) / self.up) + 2
        self.margin = math.ceil(reach / self.down) * self.down

    @property
    def n_samples(self) -> int:
        return math.ceil(self.stats.frames * self.up / self.down)

    def span(self, start: int, length: int) -> np.ndarray:
        """Output samples `[start, start + length)` at `rate_out`, zero past the end."""
        first = (start // self.up) * self.down  # input sample aligned with output sample first/down*up
        last = math.ceil((start + length) / self.up) * self.down
        lo, hi = max(0, first - self.margin), min(self.stats.frames, last + self.margin)
        out = np.zeros(length, dtype=np.float32)
        if lo >= hi:
            return out
        try:
            block = sf.read(str(self.path), start=lo, stop=hi, dtype="float32", always_2d=True)[0]
        except READ_ERRORS as err:
            raise AudioError(self.path, f"not readable audio ({err})") from err
        mono = block.mean(axis=1)
        mono = np.where(np.isfinite(mono), mono, 0.0).astype(np.float32) * np.float32(self.scale)
        res = resample(mono, self.stats.sample_rate, self.rate_out)
        offset = start - lo // self.down * self.up
        piece = res[offset:offset + length]
        # the file's end: whole-file resampling yields n_samples, nothing after
        piece = piece[:max(0, min(len(piece), self.n_samples - start))]
        out[:len(piece)] = piece
        return out

    def windows(self, starts: np.ndarray, window: int) -> "LazyWindows":
        return LazyWindows(self, np.asarray(starts), window)


class LazyWindows:
    """Window rows of a StreamedAudio, made when indexed (what extract's batches take)."""

    def __init__(self, audio: StreamedAudio, starts: np.ndarray, window: int) -> None:
        self.audio, self.starts, self.window = audio, starts, window

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, row: int) -> np.ndarray:
        return self.audio.span(int(self.starts[row]), self.window)


def open_resampled(path: Path | str, rate_out: int, *, long_after_s: float = LONG_RECORDING_S,
                   min_duration_s: float = MIN_DURATION_S, expected_rate: int = CIRCOR_SAMPLE_RATE
                   ) -> InMemoryAudio | StreamedAudio:
    """A recording at `rate_out`: whole in memory, or streamed when longer than `long_after_s`.
    A file whose rate is not `expected_rate` (its dataset's) gets a note."""
    path = Path(path)
    with _open(path) as fh:
        frames, rate = fh.frames, fh.samplerate
    if rate > 0 and frames > long_after_s * rate:
        stats = scan_audio(path)
        notes, scale = judge(path, stats, min_duration_s, rate_out, expected_rate)
        notes += header_notes(path)
        notes.append(f"long recording ({stats.duration_s / 60:.1f} min > {long_after_s / 60:g} min): "
                     "read and resampled in blocks")
        return StreamedAudio(path, stats, rate_out, scale, notes)
    audio = read_audio(path, min_duration_s, expected_rate)
    notes = [f"{n}, resampled to {rate_out} Hz" if n.startswith("sample rate") and rate_out != audio.sample_rate
             else n for n in audio.notes]
    return InMemoryAudio(resample(audio.samples, audio.sample_rate, rate_out), notes)


def resample(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Polyphase resampling (scipy's Kaiser-windowed FIR), exact for rational ratios."""
    if rate_in == rate_out:
        return samples.astype(np.float32, copy=False)
    ratio = Fraction(rate_out, rate_in)
    out = resample_poly(samples, ratio.numerator, ratio.denominator, axis=-1)
    return out.astype(np.float32, copy=False)
