"""PANNs CNN14 (AudioSet tagging) at 8, 16 or 32 kHz: `Cnn14_8k`, `Cnn14_16k` (`Cnn14_16k_mAP=0.438.pth`,
the checkpoint EVAR uses) and `Cnn14` (`Cnn14_mAP=0.431.pth`).

Follows the official code, https://github.com/qiuqiangkong/audioset_tagging_cnn (MIT),
`pytorch/models.py` classes `Cnn14`, `Cnn14_16k`, `Cnn14_8k` (one network, three front ends), and its
front end from https://github.com/qiuqiangkong/torchlibrosa (`Spectrogram` = STFT as two Conv1d layers,
`LogmelFilterBank`). Module names match the official ones, so the checkpoint's `model` state dict
(including the STFT kernels `spectrogram_extractor.stft.conv_*` and the mel matrix
`logmel_extractor.melW`) loads strictly and is what the front end actually uses.

Variant: read from the shape of the STFT kernels (n_fft 256 / 512 / 1024, one per variant); a file
name that says `_8k` or `_16k` must agree. The variants' parameters (the official asserts / README):
8 kHz n_fft 256 hop 80 mel 50-4000 Hz; 16 kHz n_fft 512 hop 160 mel 50-8000 Hz; 32 kHz n_fft 1024
hop 320 mel 50-14000 Hz; all 64 mel bands. The variant is part of `config()` (the cache key).

Front end: reflect-padded centred frames of n_fft (periodic Hann), power spectrum, 64 Slaney mel bands
(librosa), `10 log10(max(x, 1e-10))` (ref 1, amin 1e-10, no top_db), then the `bn0` BatchNorm over mel
bands.

Features: frames are the last conv block's map averaged over frequency (2048-d, one per 32 hops =
0.32 s at every rate). The official `embedding` is `relu(fc1(max_t + mean_t))` of those frames; with
the default `layer="fc1"` the pooled frames go through `fc1` + ReLU (`head`), so the default "meanmax"
pooling gives exactly the official 2048-d embedding. `layer="conv"` returns the pooled conv frames
instead. Inputs of any length are processed whole, as the official `inference.py` does.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import Encoder
from .checkpoint import CheckpointError, extract_state_dict, load_checkpoint, load_strict, numpy_globals
from .frontend import mel_filterbank
from .registry import register

N_MELS, F_MIN, N_CLASSES = 64, 50.0, 527
STFT_KEY = "spectrogram_extractor.stft.conv_real.weight"
Variant = Literal["8k", "16k", "32k"]


@dataclass(frozen=True)
class FrontEnd:
    sample_rate: int
    n_fft: int
    hop: int
    f_max: float


VARIANTS: dict[str, FrontEnd] = {"8k": FrontEnd(8000, 256, 80, 4000.0), "16k": FrontEnd(16000, 512, 160, 8000.0),
                                 "32k": FrontEnd(32000, 1024, 320, 14000.0)}


def dft_kernels(n_fft: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Windowed DFT rows as Conv1d weights `(n_fft//2 + 1, 1, n_fft)`, as torchlibrosa builds them."""
    n = torch.arange(n_fft, dtype=torch.float64)
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
    angle = -2 * np.pi * k[:, None] * n[None, :] / n_fft
    return (torch.cos(angle) * window).float()[:, None], (torch.sin(angle) * window).float()[:, None]


class STFT(nn.Module):
    def __init__(self, fe: FrontEnd) -> None:
        super().__init__()
        real, imag = dft_kernels(fe.n_fft)
        self.conv_real = nn.Conv1d(1, fe.n_fft // 2 + 1, fe.n_fft, stride=fe.hop, bias=False)
        self.conv_imag = nn.Conv1d(1, fe.n_fft // 2 + 1, fe.n_fft, stride=fe.hop, bias=False)
        with torch.no_grad():
            self.conv_real.weight.copy_(real)
            self.conv_imag.weight.copy_(imag)


class Spectrogram(nn.Module):
    """torchlibrosa's `Spectrogram`: power STFT as two Conv1d layers (the kernels are checkpoint tensors)."""

    def __init__(self, fe: FrontEnd) -> None:
        super().__init__()
        self.pad = fe.n_fft // 2
        self.stft = STFT(fe)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, samples) -> power spectrogram (B, frames, n_fft//2 + 1)."""
        x = F.pad(audio[:, None], (self.pad, self.pad), mode="reflect")
        real, imag = self.stft.conv_real(x), self.stft.conv_imag(x)
        return (real ** 2 + imag ** 2).transpose(1, 2)


class LogmelFilterBank(nn.Module):
    """torchlibrosa's `LogmelFilterBank`: mel matrix `melW` (a checkpoint tensor), then dB."""

    def __init__(self, fe: FrontEnd) -> None:
        super().__init__()
        self.melW = nn.Parameter(mel_filterbank(fe.sample_rate, fe.n_fft, N_MELS, F_MIN, fe.f_max, htk=False,
                                                slaney_norm=True))

    def forward(self, power: torch.Tensor) -> torch.Tensor:
        return 10.0 * torch.log10(torch.clamp(power @ self.melW, min=1e-10))  # ref 1.0 adds nothing


class ConvBlock(nn.Module):
    """PANNs' block of two 3x3 convolutions with batch norms, then pooling (`pool`: CNN14 averages,
    aiSFX takes the maximum); parameter names as in the official checkpoints."""

    def __init__(self, c_in: int, c_out: int, pool: Literal["avg", "max"] = "avg") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.pool = F.avg_pool2d if pool == "avg" else F.max_pool2d

    def forward(self, x: torch.Tensor, pool_size: int) -> torch.Tensor:
        x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return self.pool(x, pool_size) if pool_size > 1 else x


class Cnn14(nn.Module):
    """Official Cnn14 layout; `forward` returns the frequency-averaged last conv map (B, T', 2048)."""

    def __init__(self, variant: Variant = "32k") -> None:
        super().__init__()
        fe = VARIANTS[variant]
        self.spectrogram_extractor = Spectrogram(fe)
        self.logmel_extractor = LogmelFilterBank(fe)
        self.bn0 = nn.BatchNorm2d(N_MELS)
        widths = (1, 64, 128, 256, 512, 1024, 2048)
        for i in range(6):
            setattr(self, f"conv_block{i + 1}", ConvBlock(widths[i], widths[i + 1]))
        self.fc1 = nn.Linear(2048, 2048)
        self.fc_audioset = nn.Linear(2048, N_CLASSES)

    def logmel(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, samples) -> log-mel in dB (B, T, 64), before `bn0`."""
        with torch.autocast(device_type=audio.device.type, enabled=False):  # front end in fp32
            return self.logmel_extractor(self.spectrogram_extractor(audio.float()))

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        x = self.logmel(audio)
        with torch.autocast(device_type=audio.device.type, enabled=False):
            x = self.bn0(x.transpose(1, 2)[..., None]).squeeze(-1).transpose(1, 2)[:, None]  # BN per mel band
        for i in range(1, 7):
            x = getattr(self, f"conv_block{i}")(x, 2 if i < 6 else 1)
        return x.mean(dim=3).transpose(1, 2)  # (B, T', 2048)

    def clip_outputs(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Official clip head: (embedding, logits) from frames pooled as max + mean over time."""
        embedding = F.relu(self.fc1(frames.amax(dim=1) + frames.mean(dim=1)))
        return embedding, self.fc_audioset(embedding)


def detect_variant(state: dict, source) -> str:
    """The variant whose STFT kernels have the checkpoint's n_fft; a file name saying another one is an error."""
    by_fft = {fe.n_fft: name for name, fe in VARIANTS.items()}
    kernel = state.get(STFT_KEY)
    n_fft = int(kernel.shape[-1]) if kernel is not None and hasattr(kernel, "shape") else None
    if n_fft is not None and n_fft not in by_fft:
        raise CheckpointError(f"{source}: {STFT_KEY} has n_fft {n_fft}; PANNs CNN14 comes with "
                              f"{', '.join(f'{n} ({v})' for n, v in by_fft.items())}")
    m = re.search(r"_(8k|16k)(?![0-9a-z])", str(getattr(source, "name", source)).lower())
    named = m.group(1) if m else None
    variant = by_fft[n_fft] if n_fft is not None else (named or "32k")  # no kernels: load_strict names them
    if named is not None and named != variant:
        raise CheckpointError(f"{source}: the file name says {named} but the STFT kernels (n_fft {n_fft}) are "
                              f"those of the {variant} model")
    return variant


@register("cnn14")
class Cnn14Encoder(Encoder):
    sample_rate = 32000  # set from the checkpoint: 8000, 16000 or 32000
    feature_dim = 2048
    frame_hop_s = 0.32  # 32 STFT hops at every rate
    frame_offset_s = 15.5 * 0.01  # frame j pools centred STFT frames 32 j .. 32 j + 31
    default_pooling = "meanmax"
    needs_checkpoint = True
    weight_file = "Cnn14_16k_mAP=0.438.pth"  # the 16 kHz release (the 8 and 32 kHz files load too)
    front_end = ("model.spectrogram_extractor", "model.logmel_extractor")
    # layers: conv blocks 1-5; block 6 is the embedding (layer 5, through fc1 unless layer='conv')
    layer_modules = tuple(f"conv_block{i}" for i in range(1, 6))

    def __init__(self, checkpoint=None, *, layer: Literal["fc1", "conv"] = "fc1", **kwargs) -> None:
        super().__init__(checkpoint, **kwargs)
        if layer not in ("fc1", "conv"):
            raise ValueError(f"layer must be 'fc1' or 'conv', got {layer!r}")
        if layer == "fc1" and self.pooling == "meanstd":
            raise ValueError("pooling 'meanstd' gives 4096-d, which fc1 cannot take; use layer='conv'")
        self.layer = layer
        # {'model': state_dict, 'iteration': int, 'sampler': numpy arrays} as saved by pytorch/main.py
        raw = load_checkpoint(self.checkpoint, allowed_globals=numpy_globals(), trust_checkpoint=self.trust_checkpoint)
        state = extract_state_dict(raw, keys=("model", "state_dict"))
        self.variant = detect_variant(state, self.checkpoint)
        fe = VARIANTS[self.variant]
        self.sample_rate = fe.sample_rate
        self.frame_hop_s = 32 * fe.hop / fe.sample_rate
        self.frame_offset_s = 15.5 * fe.hop / fe.sample_rate
        self.model = Cnn14(self.variant)
        load_strict(self.model, state, self.checkpoint)
        self.to_device()

    def frames(self, audio: torch.Tensor) -> torch.Tensor:
        return self.model(audio)

    def block_dims(self) -> tuple[int, ...]:
        return (64, 128, 256, 512, 1024)

    def block_frames(self, index: int, output: torch.Tensor) -> torch.Tensor:
        return output.float().mean(dim=3).transpose(1, 2)  # (B, C, time, mel) -> (B, time, C)

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled clip vector -> the official embedding `relu(fc1(.))` (layer 'fc1'), or itself ('conv')."""
        return pooled if self.layer == "conv" else F.relu(self.model.fc1(pooled))

    @torch.inference_mode()
    def tag(self, audio: np.ndarray | torch.Tensor) -> torch.Tensor:
        """AudioSet logits `(B, 527)`; the official `clipwise_output` is their sigmoid."""
        return self.model.clip_outputs(self.frame_embeddings(audio))[1]

    def config(self) -> dict:
        return {"layer": self.layer, "frontend": f"logmel64_{self.variant}_v1"}
