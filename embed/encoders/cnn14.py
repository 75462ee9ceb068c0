"""PANNs CNN14 (AudioSet tagging), e.g. the released `Cnn14_mAP=0.431.pth`.

Follows the official code, https://github.com/qiuqiangkong/audioset_tagging_cnn (MIT),
`pytorch/models.py` class `Cnn14`, and its front end from https://github.com/qiuqiangkong/torchlibrosa
(`Spectrogram` = STFT as two Conv1d layers, `LogmelFilterBank`). Module names match the official ones,
so the checkpoint's `model` state dict (including the STFT kernels `spectrogram_extractor.stft.conv_*`
and the mel matrix `logmel_extractor.melW`) loads strictly and is what the front end actually uses.

Front end: 32 kHz, reflect-padded centred frames of 1024 (periodic Hann), hop 320, power spectrum,
64 Slaney mel bands 50-14000 Hz (librosa), `10 log10(max(x, 1e-10))` (ref 1, amin 1e-10, no top_db),
then the `bn0` BatchNorm over mel bands.

Features: frames are the last conv block's map averaged over frequency (2048-d, one per 32 hops =
0.32 s). The official `embedding` is `relu(fc1(max_t + mean_t))` of those frames; with the default
`layer="fc1"` the pooled frames go through `fc1` + ReLU, so the default "meanmax" pooling gives exactly
the official 2048-d embedding. `layer="conv"` returns the pooled conv frames instead. Inputs of any
length are processed whole, as the official `inference.py` does.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import Encoder, pool
from .checkpoint import extract_state_dict, load_checkpoint, load_strict
from .frontend import mel_filterbank
from .registry import register

SAMPLE_RATE, N_FFT, HOP, N_MELS, F_MIN, F_MAX = 32000, 1024, 320, 64, 50.0, 14000.0
N_CLASSES = 527


def _numpy_globals() -> list:
    """Types needed to unpickle the numpy arrays of the training sampler state saved next to 'model'."""
    core = getattr(np, "_core", None) or np.core
    allowed: list = [np.ndarray, np.dtype, core.multiarray._reconstruct, core.multiarray.scalar,
                     # files written with numpy < 2 name the module numpy.core
                     (core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
                     (core.multiarray.scalar, "numpy.core.multiarray.scalar")]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in ("Int64DType", "Int32DType", "Float64DType", "Float32DType",
                                                 "BoolDType", "UInt8DType") if hasattr(dtypes, n)]
    return allowed


def dft_kernels(n_fft: int = N_FFT) -> tuple[torch.Tensor, torch.Tensor]:
    """Windowed DFT rows as Conv1d weights `(n_fft//2 + 1, 1, n_fft)`, as torchlibrosa builds them."""
    n = torch.arange(n_fft, dtype=torch.float64)
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
    angle = -2 * np.pi * k[:, None] * n[None, :] / n_fft
    return (torch.cos(angle) * window).float()[:, None], (torch.sin(angle) * window).float()[:, None]


class _STFT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        real, imag = dft_kernels()
        self.conv_real = nn.Conv1d(1, N_FFT // 2 + 1, N_FFT, stride=HOP, bias=False)
        self.conv_imag = nn.Conv1d(1, N_FFT // 2 + 1, N_FFT, stride=HOP, bias=False)
        with torch.no_grad():
            self.conv_real.weight.copy_(real)
            self.conv_imag.weight.copy_(imag)


class _Spectrogram(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stft = _STFT()

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, samples) -> power spectrogram (B, frames, n_fft//2 + 1)."""
        x = F.pad(audio[:, None], (N_FFT // 2, N_FFT // 2), mode="reflect")
        real, imag = self.stft.conv_real(x), self.stft.conv_imag(x)
        return (real ** 2 + imag ** 2).transpose(1, 2)


class _LogMel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.melW = nn.Parameter(mel_filterbank(SAMPLE_RATE, N_FFT, N_MELS, F_MIN, F_MAX, htk=False, slaney_norm=True))

    def forward(self, power: torch.Tensor) -> torch.Tensor:
        return 10.0 * torch.log10(torch.clamp(power @ self.melW, min=1e-10))  # ref 1.0 adds nothing


class ConvBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.bn2 = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor, pool_size: int) -> torch.Tensor:
        x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return F.avg_pool2d(x, pool_size) if pool_size > 1 else x


class Cnn14(nn.Module):
    """Official Cnn14 layout; `forward` returns the frequency-averaged last conv map (B, T', 2048)."""

    def __init__(self) -> None:
        super().__init__()
        self.spectrogram_extractor = _Spectrogram()
        self.logmel_extractor = _LogMel()
        self.bn0 = nn.BatchNorm2d(N_MELS)
        widths = (1, 64, 128, 256, 512, 1024, 2048)
        for i in range(6):
            setattr(self, f"conv_block{i + 1}", ConvBlock(widths[i], widths[i + 1]))
        self.fc1 = nn.Linear(2048, 2048)
        self.fc_audioset = nn.Linear(2048, N_CLASSES)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=audio.device.type, enabled=False):  # front end in fp32
            x = self.logmel_extractor(self.spectrogram_extractor(audio.float()))  # (B, T, 64)
            x = self.bn0(x.transpose(1, 2)[..., None]).squeeze(-1).transpose(1, 2)[:, None]  # BN per mel band
        for i in range(1, 7):
            x = getattr(self, f"conv_block{i}")(x, 2 if i < 6 else 1)
        return x.mean(dim=3).transpose(1, 2)  # (B, T', 2048)

    def head(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Official clip head: (embedding, logits) from frames pooled as max + mean over time."""
        embedding = F.relu(self.fc1(frames.amax(dim=1) + frames.mean(dim=1)))
        return embedding, self.fc_audioset(embedding)


@register("cnn14")
class Cnn14Encoder(Encoder):
    sample_rate = SAMPLE_RATE
    feature_dim = 2048
    frame_hop_s = 32 * HOP / SAMPLE_RATE
    default_pooling = "meanmax"
    needs_checkpoint = True
    front_end = ("model.spectrogram_extractor", "model.logmel_extractor")

    def __init__(self, checkpoint=None, *, layer: str = "fc1", **kwargs) -> None:
        super().__init__(checkpoint, **kwargs)
        if layer not in ("fc1", "conv"):
            raise ValueError(f"layer must be 'fc1' or 'conv', got {layer!r}")
        if layer == "fc1" and self.pooling == "meanstd":
            raise ValueError("pooling 'meanstd' gives 4096-d, which fc1 cannot take; use layer='conv'")
        self.layer = layer
        self.model = Cnn14()
        # {'model': state_dict, 'iteration': int, 'sampler': numpy arrays} as saved by pytorch/main.py
        raw = load_checkpoint(self.checkpoint, allowed_globals=_numpy_globals(), trust_checkpoint=self.trust_checkpoint)
        load_strict(self.model, extract_state_dict(raw, keys=("model", "state_dict")), self.checkpoint)
        self.to_device()

    def frames(self, audio: torch.Tensor) -> torch.Tensor:
        return self.model(audio)

    def embed(self, audio: np.ndarray | torch.Tensor) -> np.ndarray:
        if self.layer == "conv":
            return super().embed(audio)
        pooled = pool(self.frame_embeddings(audio), self.pooling)
        with torch.inference_mode():
            return F.relu(self.model.fc1(pooled)).cpu().numpy().astype(np.float32)

    @torch.inference_mode()
    def tag(self, audio: np.ndarray | torch.Tensor) -> torch.Tensor:
        """AudioSet logits `(B, 527)`; the official `clipwise_output` is their sigmoid."""
        return self.model.head(self.frame_embeddings(audio))[1]

    def config(self) -> dict:
        return {"layer": self.layer, "frontend": "logmel64_32k_v1"}
