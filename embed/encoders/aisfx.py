"""aiSFX (Ma & Lerch, ISMIR 2022): a 4-block CNN trained on sound-effects libraries, 512-d embeddings.

Follows the authors' package `aisfx` 0.1.2 (PyPI, MIT; https://github.com/alisonbma/aisfx):
`models/cnn2d.py` (`EmbeddingNet('max', 3, 1, 64)` inside `CrossNet`), `inference.py` (44.1 kHz,
2048-sample frames, hop 1024, 96 mel bands 0-22050 Hz) and the Essentia front end of
`spectrogram/spectrogram_essentia.py`, which the paper used: Essentia's `FrameCutter` (frame k
centred on sample k * hop, zero-padded, frames until one starts past the end), symmetric Hann,
magnitude spectrum squared, `MelBands` (HTK mel, triangles in mel, each band's weights summing to
1), `log10(1e4 x + 1)`, then the package's 'original' min-max scaling `x / 9.4578`. Essentia's
`EasyLoader` with its default replay gain (-6 dB) scales by 1, so the waveform goes in as it is.

Weights: the checkpoint the wheel ships, `aisfx/models/checkpoint.pth` (24.9 MB), a tuple
`(state_dict, {dataset: (index, n_classes)})` whose dataset indices are numpy integers; it is read
weights-only with numpy's scalar and dtype types allowed, nothing else. Only `embedding_net.*` is
used: the `fc.*` heads classify the nine training libraries' categories.

Frames: `conv_block4`'s map averaged over frequency, one per 8 spectrogram hops (186 ms); the
official embedding is their maximum over time, so the default "max" pooling of a window equals
`CrossNet.get_embedding` on that window's spectrogram. The package cuts a file into 100-frame
blocks (2.3 s, hop 1.16 s) and embeds each; here a window is processed whole (the network is
fully convolutional), so a 2.3 s window gives exactly the package's block embedding.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import Encoder
from .checkpoint import CheckpointError, load_checkpoint, load_strict, numpy_globals, strip_prefix
from .cnn14 import ConvBlock  # PANNs' block, with max pooling here
from .registry import register

SAMPLE_RATE, N_FFT, HOP, N_MELS = 44100, 2048, 1024, 96
LOG_MAX = 9.457798957824707  # the package's 'original' normalisation: min 0, max over its training spectrograms
WIDTHS = (64, 128, 256, 512)


def htk_mel(f: np.ndarray) -> np.ndarray:
    return 1127.01048 * np.log1p(np.asarray(f, dtype=np.float64) / 700.0)


def essentia_mel_bands(sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS,
                       f_min: float = 0.0, f_max: float = SAMPLE_RATE / 2) -> torch.Tensor:
    """Essentia's `MelBands(warpingFormula='htkMel', weighting='warping', normalize='unit_sum')` as an
    `(n_fft//2 + 1, n_mels)` matrix: triangles in mel between equally spaced mel edges, each
    band's weights divided by their sum."""
    lo, hi = htk_mel(f_min), htk_mel(f_max)
    edges = 700.0 * np.expm1((lo + np.arange(n_mels + 2) * (hi - lo) / (n_mels + 1)) / 1127.01048)
    bins = np.arange(n_fft // 2 + 1) * (sample_rate / n_fft)
    m, e = htk_mel(bins)[:, None], htk_mel(edges)
    left, centre, right = edges[:-2], edges[1:-1], edges[2:]
    rising = (m - e[:-2]) / (e[1:-1] - e[:-2])
    falling = (e[2:] - m) / (e[2:] - e[1:-1])
    f = bins[:, None]
    weights = np.where((f >= left) & (f < centre), rising, np.where((f >= centre) & (f < right), falling, 0.0))
    return torch.from_numpy(weights / weights.sum(axis=0, keepdims=True)).float()


class EssentiaLogMel(nn.Module):
    """Waveform `(B, samples)` at 44.1 kHz -> the package's normalised log-mel `(B, frames, 96)`."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("window", torch.hann_window(N_FFT, periodic=False), persistent=False)
        self.register_buffer("mel", essentia_mel_bands(), persistent=False)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        n = audio.shape[-1]
        n_frames = math.ceil(n / HOP) + 1  # FrameCutter: frames centred on k * hop until one starts past the end
        right = (n_frames - 1) * HOP + N_FFT - N_FFT // 2 - n
        x = F.pad(audio.float(), (N_FFT // 2, right))
        frames = x.unfold(-1, N_FFT, HOP) * self.window
        power = torch.fft.rfft(frames, dim=-1).abs().pow(2)
        return torch.log10(1e4 * (power @ self.mel) + 1.0) / LOG_MAX


class EmbeddingNet(nn.Module):
    """The package's `EmbeddingNet`; `forward` returns the frequency-averaged last map `(B, T/8, 512)`."""

    def __init__(self) -> None:
        super().__init__()
        self.front_end = EssentiaLogMel()
        widths = (1, *WIDTHS)
        for i in range(4):
            setattr(self, f"conv_block{i + 1}", ConvBlock(widths[i], widths[i + 1], pool="max"))

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=audio.device.type, enabled=False):  # front end in fp32
            x = self.front_end(audio)[:, None]  # (B, 1, time, mel)
        for i in range(1, 5):
            x = getattr(self, f"conv_block{i}")(x, 2 if i < 4 else 1)
        return x.mean(dim=3).transpose(1, 2)


@register("aisfx")
class AiSfxEncoder(Encoder):
    sample_rate = SAMPLE_RATE
    feature_dim = 512
    frame_hop_s = 8 * HOP / SAMPLE_RATE  # three 2x2 max pools over 1024-sample hops
    # frame j covers spectrogram frames 8j..8j+7, centred on samples k * hop: its centre is 8j + 3.5 hops
    frame_offset_s = 3.5 * HOP / SAMPLE_RATE
    default_pooling = "max"
    needs_checkpoint = True
    weight_file = "checkpoint.pth"  # as the aisfx wheel ships it (aisfx/models/checkpoint.pth)
    front_end = ("model.front_end",)
    layer_modules = ("conv_block1", "conv_block2", "conv_block3")

    def __init__(self, checkpoint=None, **kwargs) -> None:
        super().__init__(checkpoint, **kwargs)
        raw = load_checkpoint(self.checkpoint, allowed_globals=numpy_globals(),
                              trust_checkpoint=self.trust_checkpoint)
        if not (isinstance(raw, (tuple, list)) and raw and isinstance(raw[0], dict)):
            raise CheckpointError(f"{self.checkpoint}: expected the aisfx checkpoint, a tuple (state_dict, datasets); "
                                  f"got {type(raw).__name__}")
        state = strip_prefix(raw[0], "embedding_net.")
        self.model = EmbeddingNet()
        load_strict(self.model, state, self.checkpoint)
        self.to_device()

    def frames(self, audio: torch.Tensor) -> torch.Tensor:
        return self.model(audio)

    def block_dims(self) -> tuple[int, ...]:
        return WIDTHS[:3]

    def block_frames(self, index: int, output: torch.Tensor) -> torch.Tensor:
        return output.float().mean(dim=3).transpose(1, 2)  # (B, C, time, mel) -> (B, time, C)

    def config(self) -> dict:
        return {"frontend": "essentia_logmel96_v1"}
