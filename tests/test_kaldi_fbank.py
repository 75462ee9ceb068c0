"""kaldi_fbank against a straightforward per-frame numpy reference of Kaldi's algorithm."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from embed.encoders.kaldi_fbank import kaldi_fbank, kaldi_mel_banks


def ref_fbank(wave: np.ndarray, sr: int, n_mels: int, window: str = "hanning", preemph: float = 0.97,
              remove_dc: bool = True, low: float = 20.0, high: float = 0.0,
              frame_ms: float = 25.0, shift_ms: float = 10.0) -> np.ndarray:
    """Loop-per-frame Kaldi fbank in float64 numpy (snip_edges, power spectrum, log)."""
    win = int(sr * frame_ms / 1000)
    shift = int(sr * shift_ms / 1000)
    nfft = 1
    while nfft < win:
        nfft *= 2
    n = np.arange(win)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * n / (win - 1))
    w = {"hanning": hann, "povey": hann ** 0.85, "rectangular": np.ones(win),
         "hamming": 0.54 - 0.46 * np.cos(2 * np.pi * n / (win - 1))}[window]
    # mel filters, written independently of the module under test
    mel = lambda f: 1127.0 * np.log(1.0 + f / 700.0)  # noqa: E731
    if high <= 0:
        high = sr / 2 + high
    ml, mh = mel(low), mel(high)
    d = (mh - ml) / (n_mels + 1)
    fb = np.zeros((n_mels, nfft // 2 + 1))
    for m in range(n_mels):
        left, centre, right = ml + m * d, ml + (m + 1) * d, ml + (m + 2) * d
        for k in range(nfft // 2):
            f = mel(k * sr / nfft)
            if left < f < right:
                fb[m, k] = (f - left) / (centre - left) if f <= centre else (right - f) / (right - centre)
    out = []
    for t in range(1 + (len(wave) - win) // shift):
        fr = wave[t * shift: t * shift + win].astype(np.float64).copy()
        if remove_dc:
            fr -= fr.mean()
        if preemph:
            for i in range(win - 1, 0, -1):
                fr[i] -= preemph * fr[i - 1]
            fr[0] -= preemph * fr[0]
        fr *= w
        power = np.abs(np.fft.rfft(np.concatenate([fr, np.zeros(nfft - win)]))) ** 2
        out.append(np.log(np.maximum(fb @ power, np.finfo(np.float32).eps)))
    return np.array(out)


@pytest.mark.parametrize("window", ["hanning", "povey"])
def test_matches_numpy_reference(window: str) -> None:
    rng = np.random.default_rng(0)
    t = np.arange(16000 + 337) / 16000
    wave = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)
    ref = ref_fbank(wave, 16000, 128, window=window)
    got = kaldi_fbank(torch.tensor(wave[None], dtype=torch.float32), 16000, 128, window=window)
    assert got.shape == (1, 1 + (wave.size - 400) // 160, 128) == (1, *ref.shape)
    np.testing.assert_allclose(got[0].numpy(), ref, atol=2e-3, rtol=1e-4)


def test_scaled_audio_other_options_and_batch() -> None:
    rng = np.random.default_rng(1)
    waves = rng.standard_normal((2, 8000)) * 2 ** 14  # BEATs-style int16-range input
    got = kaldi_fbank(torch.tensor(waves, dtype=torch.float32), 16000, 80, window="hamming",
                      preemphasis=0.0, remove_dc=False, low_freq=50, high_freq=-400)
    for b in range(2):
        ref = ref_fbank(waves[b], 16000, 80, window="hamming", preemph=0.0, remove_dc=False,
                        low=50, high=-400)
        np.testing.assert_allclose(got[b].numpy(), ref, atol=2e-3, rtol=1e-4)


def test_silence_hits_epsilon_floor_and_short_input() -> None:
    got = kaldi_fbank(torch.zeros(1, 1000), 16000, 64)
    assert torch.allclose(got, torch.full_like(got, math.log(torch.finfo(torch.float32).eps)))
    assert kaldi_fbank(torch.zeros(3, 399), 16000, 64).shape == (3, 0, 64)


def test_mel_banks_shape_and_nyquist_column() -> None:
    banks = kaldi_mel_banks(128, 512, 16000, 20.0, 0.0)
    assert banks.shape == (128, 257)
    assert torch.all(banks[:, -1] == 0)
    # 128 bins on a 512-point FFT: a few low bins catch no FFT bin at all, as in Kaldi itself
    assert torch.all(banks[64:].sum(dim=1) > 0) and (banks.sum(dim=1) == 0).sum() < 10
    with pytest.raises(ValueError):
        kaldi_mel_banks(10, 512, 16000, 9000.0, 0.0)
