"""`quality`: signal-quality features with no weights (periodicity, noise, clipping), per window.

Aimed at CirCor's Unknown class, whose recordings annotators could not grade: noisy, irregular or
poorly recorded. Each window gives one vector of `FEATURE_NAMES` (the frame axis has length 1, so
every pooling returns the features themselves; `meanstd` adds zeros). Runs at 4 kHz, CirCor's rate;
other data arrives resampled, and every band stays below 1 kHz so that 2 kHz recordings (PhysioNet
2016) measure the same bands. Computed in fp32 whatever the precision asks for.

Features (the heart band is 25-400 Hz, the envelope its 10 ms RMS smoothed over 50 ms):
- periodicity: normalised (unbiased) autocorrelation of the envelope at its strongest peak over
  lags 0.25-2 s (heart rates 30-240 bpm); 1 for a strictly periodic beat train, near 0 for noise.
- heart_rate_bpm: 60 / that lag (parabolic interpolation between lags).
- harmonic_consistency: the autocorrelation at twice that lag (a steady rhythm repeats).
- beat_interval_cv: spread (std / mean) of the intervals between envelope peaks at least 0.7
  of a period apart; 0 for a steady rhythm.
- full_scale_fraction: share of samples at digital full scale (|x| >= 0.999).
- flat_top_fraction: share of samples within 1 % of the window's peak that repeat the previous
  sample (clipping below full scale, e.g. in the analogue chain).
- crest_factor_db, level_db: peak / RMS and RMS (dB full scale) of the window, mean removed.
- spectral_flatness: geometric / arithmetic mean of the Welch power spectrum over 25-1000 Hz
  (near 1 for white noise, small for heart sounds).
- high_band_ratio_db: energy 400-1000 Hz over the heart band (hiss, friction, speech).
- low_band_ratio_db: energy 1-25 Hz over the heart band (handling, breathing, movement).
- envelope_kurtosis_log, spike_kurtosis_log: ln(1 + kurtosis) of the heart-band envelope and of
  the 400-1000 Hz envelope (isolated spikes: rubbing, knocks).
- silent_fraction: share of 10 ms frames 40 dB or more below the window's RMS (drop-outs).
- zero_crossing_rate: sign changes per second.

Silence and constant input give finite values: no rhythm (periodicity, heart rate and harmonic
consistency 0, beat_interval_cv 1), level -120 dB, crest factor, band ratios and kurtosis 0,
spectral flatness 0, silent_fraction 1, zero crossings 0; a constant non-zero input counts as
flat-topped (flat_top_fraction 1). A window too short for two periods at the smallest lag
(< 0.5 s) has no rhythm either; beat_interval_cv is 1 when fewer than three peaks are found.
"""
from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch
from scipy.signal import find_peaks

from .base import Encoder
from .registry import register

FEATURE_NAMES = (
    "periodicity", "heart_rate_bpm", "harmonic_consistency", "beat_interval_cv",
    "full_scale_fraction", "flat_top_fraction", "crest_factor_db", "level_db", "spectral_flatness",
    "high_band_ratio_db", "low_band_ratio_db", "envelope_kurtosis_log", "spike_kurtosis_log",
    "silent_fraction", "zero_crossing_rate",
)

HEART_BAND = (25.0, 400.0)
HIGH_BAND = (400.0, 1000.0)
LOW_BAND = (1.0, 25.0)
ENVELOPE_HOP_S = 0.01
ENVELOPE_SMOOTH = 5  # envelope frames averaged (50 ms): one heart sound lasts about 100 ms
LAGS_S = (0.25, 2.0)
MIN_PEAK_SPACING = 0.7  # of a period: S1 and S2 of one beat are 0.3-0.45 of a period apart
LEVEL_FLOOR_DB = -120.0
RATIO_LIMIT_DB = 80.0
SILENT_BELOW_DB = -40.0
WELCH_N = 256


def _band(spectrum: torch.Tensor, freqs: torch.Tensor, band: tuple[float, float], n: int) -> torch.Tensor:
    mask = ((freqs >= band[0]) & (freqs < band[1])).to(spectrum.real.dtype)
    return torch.fft.irfft(spectrum * mask, n=n)


def _frame_rms(x: torch.Tensor, hop: int) -> torch.Tensor:
    n = x.shape[1] // hop * hop
    return x[:, :n].reshape(x.shape[0], -1, hop).pow(2).mean(-1).sqrt()


def _kurtosis_log(e: torch.Tensor) -> torch.Tensor:
    centred = e - e.mean(1, keepdim=True)
    var = centred.pow(2).mean(1)
    kurt = centred.pow(4).mean(1) / var.pow(2).clamp(min=1e-30)
    return torch.where(var > 1e-20, torch.log1p(kurt), torch.zeros_like(var))


def _ratio_db(num: torch.Tensor, den: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    tiny = 1e-10 * total + 1e-30  # both bands empty: 0 dB
    return (10 * torch.log10((num + tiny) / (den + tiny))).clamp(-RATIO_LIMIT_DB, RATIO_LIMIT_DB)


def rhythm(envelope: torch.Tensor, hop_s: float = ENVELOPE_HOP_S) -> dict[str, torch.Tensor]:
    """Periodicity, heart rate and harmonic consistency of `(batch, frames)` envelopes."""
    b, f = envelope.shape
    zeros = envelope.new_zeros(b)
    k_min, k_max = math.ceil(LAGS_S[0] / hop_s), min(int(LAGS_S[1] / hop_s), f // 2)
    if k_max < k_min + 1:
        return {"periodicity": zeros, "heart_rate_bpm": zeros, "harmonic_consistency": zeros,
                "lag": zeros}
    e = envelope - envelope.mean(1, keepdim=True)
    spec = torch.fft.rfft(e, n=2 * f)
    acf = torch.fft.irfft(spec.real.pow(2) + spec.imag.pow(2), n=2 * f)[:, :f]
    energy = acf[:, :1]
    has_energy = energy[:, 0] > 1e-12 * envelope.pow(2).sum(1).clamp(min=1e-30)
    biased = acf / energy.clamp(min=1e-30)
    overlap = torch.arange(f, 0, -1, dtype=e.dtype) / f
    unbiased = (biased / overlap).clamp(-1.0, 1.0)

    ks = torch.arange(k_min, k_max + 1)
    here, before, after = biased[:, ks], biased[:, ks - 1], biased[:, ks + 1]
    is_peak = (here > before) & (here >= after) & (here > 0)
    # the strongest peak of the biased estimate: among a period's multiples it prefers the shortest
    best = torch.where(is_peak, here, torch.full_like(here, -2.0)).argmax(1)
    found = is_peak.gather(1, best[:, None])[:, 0] & has_energy
    k = ks[best]
    y0, y1, y2 = (biased.gather(1, (k + d)[:, None])[:, 0] for d in (-1, 0, 1))
    curvature = y0 - 2 * y1 + y2
    shift = torch.where(curvature < 0, 0.5 * (y0 - y2) / curvature.clamp(max=-1e-12), zeros).clamp(-0.5, 0.5)
    lag = (k + shift) * hop_s
    periodicity = unbiased.gather(1, k[:, None])[:, 0]
    double = (2 * (k + shift)).round().long()
    harmonic = unbiased.gather(1, double.clamp(max=f - 1)[:, None])[:, 0]
    harmonic = torch.where(double <= int(0.8 * f), harmonic, zeros)
    return {"periodicity": torch.where(found, periodicity, zeros),
            "heart_rate_bpm": torch.where(found, 60.0 / lag.clamp(min=1e-6), zeros),
            "harmonic_consistency": torch.where(found, harmonic, zeros),
            "lag": torch.where(found, lag, zeros)}


def beat_interval_cv(envelope: np.ndarray, lag_s: np.ndarray, hop_s: float = ENVELOPE_HOP_S) -> np.ndarray:
    """std / mean of the intervals between envelope peaks; 1 without a rhythm or three peaks."""
    out = np.ones(len(envelope), np.float32)
    for i, (e, lag) in enumerate(zip(envelope, lag_s)):
        if lag <= 0:
            continue
        spread = float(e.max() - np.median(e))
        if spread <= 0:
            continue
        peaks, _ = find_peaks(e, height=np.median(e) + 0.2 * spread,
                              distance=max(1, int(MIN_PEAK_SPACING * lag / hop_s)))
        if len(peaks) >= 3:
            gaps = np.diff(peaks).astype(np.float64)
            out[i] = gaps.std() / gaps.mean()
    return out


@register("quality")
class QualityEncoder(Encoder):
    sample_rate = 4000
    feature_names: ClassVar[tuple[str, ...]] = FEATURE_NAMES
    feature_dim = len(FEATURE_NAMES)
    frame_hop_s = 5.0  # one vector per window (HEAR timestamps: the window's centre)
    chunk_frames = True
    default_pooling = "mean"
    needs_checkpoint = False
    takes_checkpoint = False
    front_end = ("frames",)

    def __init__(self, checkpoint=None, **kwargs) -> None:
        super().__init__(checkpoint, **kwargs)
        self.to_device()

    def frames(self, audio: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=audio.device.type, enabled=False):
            feats = self.features(audio.float().cpu())
        return torch.stack([feats[n] for n in FEATURE_NAMES], dim=-1)[:, None, :].to(audio.device)

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """`(batch, samples)` fp32 at `sample_rate` -> one `(batch,)` tensor per feature name."""
        b, n = x.shape
        sr, hop = self.sample_rate, int(round(ENVELOPE_HOP_S * self.sample_rate))
        out: dict[str, torch.Tensor] = {}

        peak_raw = x.abs().amax(1)
        out["full_scale_fraction"] = (x.abs() >= 0.999).float().mean(1)
        repeats = (x[:, 1:] - x[:, :-1]).abs() <= 1e-4 * peak_raw[:, None]
        flat = (x[:, 1:].abs() >= 0.99 * peak_raw[:, None]) & repeats
        out["flat_top_fraction"] = torch.where(peak_raw > 0, flat.float().mean(1), torch.zeros_like(peak_raw))

        xc = x - x.mean(1, keepdim=True)
        power = xc.pow(2).mean(1)
        rms = power.sqrt()
        alive = rms > 1e-9
        out["level_db"] = (20 * torch.log10(rms.clamp(min=1e-30))).clamp(min=LEVEL_FLOOR_DB)
        crest = 20 * torch.log10(xc.abs().amax(1).clamp(min=1e-30) / rms.clamp(min=1e-30))
        out["crest_factor_db"] = torch.where(alive, crest, torch.zeros_like(crest))
        positive = xc > 0
        out["zero_crossing_rate"] = (positive[:, 1:] != positive[:, :-1]).float().sum(1) * sr / n

        spectrum = torch.fft.rfft(xc)
        freqs = torch.fft.rfftfreq(n, 1.0 / sr)
        psd = spectrum.real.pow(2) + spectrum.imag.pow(2)
        total = psd.sum(1)

        def band_energy(band):
            return psd[:, (freqs >= band[0]) & (freqs < band[1])].sum(1)

        heart_energy = band_energy(HEART_BAND)
        out["high_band_ratio_db"] = _ratio_db(band_energy(HIGH_BAND), heart_energy, total)
        out["low_band_ratio_db"] = _ratio_db(band_energy(LOW_BAND), heart_energy, total)
        out["spectral_flatness"] = self._flatness(xc)

        frame_rms = _frame_rms(xc, hop)
        silent = frame_rms <= rms[:, None] * 10 ** (SILENT_BELOW_DB / 20)
        out["silent_fraction"] = torch.where(alive, silent.float().mean(1), torch.ones_like(rms))

        envelope = _smooth(_frame_rms(_band(spectrum, freqs, HEART_BAND, n), hop))
        spikes = _frame_rms(_band(spectrum, freqs, HIGH_BAND, n), hop)
        out["envelope_kurtosis_log"] = _kurtosis_log(envelope)
        out["spike_kurtosis_log"] = _kurtosis_log(spikes)
        found = rhythm(envelope)
        lag = found.pop("lag")
        out.update(found)
        out["beat_interval_cv"] = torch.from_numpy(beat_interval_cv(envelope.numpy(), lag.numpy()))
        return out

    def _flatness(self, xc: torch.Tensor) -> torch.Tensor:
        n = min(WELCH_N, xc.shape[1])
        frames = xc.unfold(1, n, n // 2) * torch.hann_window(n, periodic=False, dtype=xc.dtype)
        spec = torch.fft.rfft(frames)
        psd = (spec.real.pow(2) + spec.imag.pow(2)).mean(1)
        freqs = torch.fft.rfftfreq(n, 1.0 / self.sample_rate)
        psd = psd[:, (freqs >= HEART_BAND[0]) & (freqs < HIGH_BAND[1])]
        mean = psd.mean(1)
        geometric = torch.exp(torch.log(psd.clamp(min=1e-30)).mean(1))
        return torch.where(mean > 1e-20, geometric / mean.clamp(min=1e-30), torch.zeros_like(mean))

    def config(self) -> dict:
        return {"features": ",".join(FEATURE_NAMES), "version": 1}


def _smooth(envelope: torch.Tensor) -> torch.Tensor:
    kernel = torch.full((1, 1, ENVELOPE_SMOOTH), 1.0 / ENVELOPE_SMOOTH, dtype=envelope.dtype)
    return torch.nn.functional.conv1d(envelope[:, None], kernel, padding=ENVELOPE_SMOOTH // 2)[:, 0]
