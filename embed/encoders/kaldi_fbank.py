"""Kaldi-compatible log mel filterbank ("fbank") in plain torch, batched.

Follows the algorithm of Kaldi's `compute-fbank-feats` as exposed by
`torchaudio.compliance.kaldi.fbank` (the front end of AST, BEATs and other AudioSet models),
with the options those models use: snip_edges=True, round_to_power_of_two=True,
use_power=True, use_log_fbank=True, use_energy=False, no VTLN. Written here so the project
does not depend on torchaudio.

Per frame: (optional dither) -> subtract the frame's DC mean -> pre-emphasis
(x[i] -= k*x[i-1], with x[-1] := x[0]) -> window (hanning / povey / hamming / rectangular)
-> zero-pad to the next power of two -> power spectrum -> Kaldi mel filters (mel = 1127 ln(1 + f/700),
triangles in the mel domain) -> log with a float32-epsilon floor.
"""
from __future__ import annotations

import math
from typing import Literal, get_args

import torch

Window = Literal["povey", "hanning", "hamming", "rectangular"]
WINDOWS = get_args(Window)


def kaldi_mel(freq: torch.Tensor | float) -> torch.Tensor:
    """Kaldi's mel scale (natural log form of the HTK formula)."""
    return 1127.0 * torch.log1p(torch.as_tensor(freq, dtype=torch.float64) / 700.0)


def kaldi_mel_banks(num_bins: int, padded_window_size: int, sample_rate: float,
                    low_freq: float, high_freq: float) -> torch.Tensor:
    """Triangular Kaldi mel filters as `(num_bins, padded_window_size // 2 + 1)`.

    The Nyquist bin gets zero weight, exactly as Kaldi (it builds num_fft_bins = N/2 columns).
    """
    nyquist = 0.5 * sample_rate
    if high_freq <= 0.0:
        high_freq += nyquist  # Kaldi convention: non-positive high_freq is an offset from Nyquist
    if not (0.0 <= low_freq < high_freq <= nyquist):
        raise ValueError(f"bad mel range low_freq={low_freq}, high_freq={high_freq}, nyquist={nyquist}")
    num_fft_bins = padded_window_size // 2
    bin_width = sample_rate / padded_window_size
    mel_low, mel_high = kaldi_mel(low_freq), kaldi_mel(high_freq)
    delta = (mel_high - mel_low) / (num_bins + 1)
    idx = torch.arange(num_bins, dtype=torch.float64)[:, None]
    left = mel_low + idx * delta
    center = left + delta
    right = center + delta
    mel = kaldi_mel(bin_width * torch.arange(num_fft_bins, dtype=torch.float64))[None, :]
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)
    return torch.nn.functional.pad(banks, (0, 1))  # zero column for the Nyquist bin


def kaldi_window(window: Window, length: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Kaldi's symmetric analysis windows."""
    if window == "hanning":
        return torch.hann_window(length, periodic=False, dtype=torch.float64).to(dtype)
    if window == "povey":
        return torch.hann_window(length, periodic=False, dtype=torch.float64).pow(0.85).to(dtype)
    if window == "hamming":
        return torch.hamming_window(length, periodic=False, alpha=0.54, beta=0.46,
                                    dtype=torch.float64).to(dtype)
    if window == "rectangular":
        return torch.ones(length, dtype=dtype)
    raise ValueError(f"window must be one of {WINDOWS}, got {window!r}")


def kaldi_fbank(waveform: torch.Tensor, sample_rate: float, num_mel_bins: int,
                frame_length_ms: float = 25.0, frame_shift_ms: float = 10.0,
                window: Window = "povey", preemphasis: float = 0.97, remove_dc: bool = True,
                dither: float = 0.0, low_freq: float = 20.0, high_freq: float = 0.0) -> torch.Tensor:
    """`(batch, samples)` waveform -> `(batch, frames, num_mel_bins)` Kaldi log-mel fbank.

    Frames use snip_edges=True: `1 + (samples - win) // shift` frames, none if the input is
    shorter than one window. The waveform is used as given (callers scale it, e.g. BEATs by 2**15).
    The default window is Kaldi's (and torchaudio's) `povey`; AST asks for `hanning` explicitly.
    """
    if waveform.ndim != 2:
        raise ValueError(f"expected (batch, samples), got shape {tuple(waveform.shape)}")
    x = waveform.float()
    win = int(sample_rate * frame_length_ms * 0.001)
    shift = int(sample_rate * frame_shift_ms * 0.001)
    padded = 1 << max(0, math.ceil(math.log2(win)))
    batch = x.shape[0]
    if x.shape[1] < win:
        return x.new_zeros(batch, 0, num_mel_bins)
    # power spectra of 2**15-scaled audio overflow fp16: keep the whole front end in fp32
    with torch.autocast(device_type=x.device.type, enabled=False):
        return _fbank_fp32(x, sample_rate, num_mel_bins, win, shift, padded, window, preemphasis,
                           remove_dc, dither, low_freq, high_freq)


def _fbank_fp32(x: torch.Tensor, sample_rate: float, num_mel_bins: int, win: int, shift: int,
                padded: int, window: Window, preemphasis: float, remove_dc: bool, dither: float,
                low_freq: float, high_freq: float) -> torch.Tensor:
    frames = x.unfold(1, win, shift)  # (B, T, win), a view; the ops below copy
    if dither != 0.0:
        frames = frames + dither * torch.randn_like(frames)
    if remove_dc:
        frames = frames - frames.mean(dim=-1, keepdim=True)
    if preemphasis != 0.0:
        previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
        frames = frames - preemphasis * previous
    frames = frames * kaldi_window(window, win).to(frames.device)
    spectrum = torch.fft.rfft(frames, n=padded, dim=-1).abs().pow(2.0)
    banks = kaldi_mel_banks(num_mel_bins, padded, sample_rate, low_freq, high_freq)
    mel = spectrum @ banks.to(device=frames.device, dtype=spectrum.dtype).T
    return torch.log(mel.clamp(min=torch.finfo(torch.float32).eps))
