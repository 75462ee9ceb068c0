"""`logmel`: handcrafted baseline with no weights, so the tool works with nothing downloaded.

Per frame: log-mel energies at CirCor's native 4 kHz (optionally plus MFCCs); pooled with
mean‖std over the segment, i.e. band statistics.
"""
from __future__ import annotations

import math

import torch

from .base import Encoder
from .frontend import LogMelSpectrogram
from .registry import register


def dct_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """Orthonormal DCT-II as an `(n_in, n_out)` matrix (MFCC from log-mel)."""
    n = torch.arange(n_in, dtype=torch.float64)
    k = torch.arange(n_out, dtype=torch.float64)
    basis = torch.cos(math.pi / n_in * (n[:, None] + 0.5) * k[None, :]) * math.sqrt(2.0 / n_in)
    basis[:, 0] /= math.sqrt(2.0)
    return basis.float()


@register("logmel")
class LogMelEncoder(Encoder):
    sample_rate = 4000
    frame_hop_s = 0.01
    frame_offset_s = 0.0  # centred STFT frames: frame k is centred on sample k * hop
    default_pooling = "meanstd"
    needs_checkpoint = False
    takes_checkpoint = False
    front_end = ("model",)
    bf16_safe = True  # docs/speed.md, bf16 safety: same probe scores as fp32

    def __init__(self, checkpoint=None, *, n_mels: int = 40, n_mfcc: int = 20, mfcc: bool = True,
                 **kwargs) -> None:
        super().__init__(checkpoint, **kwargs)
        self.n_mels, self.n_mfcc, self.use_mfcc = n_mels, n_mfcc, mfcc
        self.feature_dim = n_mels + (n_mfcc if mfcc else 0)
        # 64 ms windows, 10 ms hop, 25 Hz-2 kHz: murmurs sit mostly at 50-600 Hz
        self.model = LogMelSpectrogram(self.sample_rate, n_fft=256, hop_length=40, n_mels=n_mels,
                                       f_min=25.0, f_max=2000.0)
        self.model.register_buffer("dct", dct_matrix(n_mels, n_mfcc), persistent=False)
        self.to_device()

    def frames(self, audio: torch.Tensor) -> torch.Tensor:
        # normalise loudness per segment so stethoscope gain does not dominate
        audio = audio / audio.abs().amax(dim=1, keepdim=True).clamp(min=1e-6)
        logmel = self.model(audio)
        if not self.use_mfcc:
            return logmel
        return torch.cat([logmel, logmel @ self.model.dct], dim=-1)

    def config(self) -> dict:
        return {"n_mels": self.n_mels, "n_mfcc": self.n_mfcc if self.use_mfcc else 0, "version": 1}
