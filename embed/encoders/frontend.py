"""Spectrogram front ends written in plain torch (no torchaudio dependency)."""
from __future__ import annotations

import math

import torch


def hz_to_mel(f: torch.Tensor, htk: bool = True) -> torch.Tensor:
    if htk:
        return 2595.0 * torch.log10(1.0 + f / 700.0)
    # Slaney: linear below 1 kHz, logarithmic above
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27.0
    lin = f / f_sp
    return torch.where(f >= min_log_hz, min_log_hz / f_sp + torch.log(f.clamp(min=1e-10) / min_log_hz) / logstep, lin)


def mel_to_hz(m: torch.Tensor, htk: bool = True) -> torch.Tensor:
    if htk:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return torch.where(m >= min_log_mel, min_log_hz * torch.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0,
                   f_max: float | None = None, htk: bool = True, slaney_norm: bool = False) -> torch.Tensor:
    """Triangular mel filters as a `(n_fft // 2 + 1, n_mels)` matrix (librosa/torchaudio convention)."""
    f_max = sample_rate / 2 if f_max is None else f_max
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    m_pts = torch.linspace(float(hz_to_mel(torch.tensor(f_min, dtype=torch.float64), htk)),
                           float(hz_to_mel(torch.tensor(f_max, dtype=torch.float64), htk)), n_mels + 2,
                           dtype=torch.float64)
    f_pts = mel_to_hz(m_pts, htk)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts[None, :] - freqs[:, None]
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    fb = torch.clamp(torch.minimum(down, up), min=0.0)
    if slaney_norm:
        fb = fb * (2.0 / (f_pts[2:n_mels + 2] - f_pts[:n_mels]))[None, :]
    return fb.float()


class LogMelSpectrogram(torch.nn.Module):
    """Power (or magnitude) STFT -> mel -> log; output `(batch, frames, n_mels)`."""

    def __init__(self, sample_rate: int, n_fft: int, hop_length: int, n_mels: int,
                 win_length: int | None = None, f_min: float = 0.0, f_max: float | None = None,
                 power: float = 2.0, center: bool = True, htk: bool = True, eps: float = 1e-10) -> None:
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length
        self.win_length = win_length or n_fft
        self.power, self.center, self.eps = power, center, eps
        self.register_buffer("window", torch.hann_window(self.win_length), persistent=False)
        self.register_buffer("fb", mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max, htk),
                             persistent=False)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(audio.float(), self.n_fft, self.hop_length, self.win_length, self.window,
                          center=self.center, return_complex=True).abs()
        if self.power != 1.0:
            spec = spec.pow(self.power)
        mel = torch.matmul(spec.transpose(1, 2), self.fb)
        return torch.log(mel + self.eps)
