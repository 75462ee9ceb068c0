"""BYOL-A encoders: v1 `AudioNTT2020` ("byola") and v2 `AudioNTT2022` ("byola2").

Follows the official code, https://github.com/nttcslab/byol-a: `byol_a/models.py` (AudioNTT2020,
d = 512/1024/2048, read from the checkpoint), `v2/byol_a2/models.py` (AudioNTT2022Encoder, 3072-d),
`config.yaml` / `v2/config_v2.yaml`, and the README feature-extraction examples. Parameter names
match the official `features.*` / `fc.*`; like the official loaders, any prefix before them (e.g. from
a training checkpoint) is cut off and other modules (projector, predictor) are ignored.

Front end: 16 kHz, STFT n_fft 1024, window 1024 (periodic Hann), hop 160, centred with reflect
padding, power spectrum, 64 mel bands 60-7800 Hz, `log(mel + float32 eps)`, then `(x - mean) / std`
with dataset statistics. Two mel filter banks exist in the authors' code:
- `evar`: nnAudio's MelSpectrogram (Slaney mel scale, Slaney area normalisation). v2 always uses it,
  and so does EVAR (https://github.com/nttcslab/eval-audio-repr, `evar/ar_base.py` ToLogMelSpec), the
  authors' evaluation package, through which the benchmark papers run v1 too. Default for v1.
- `readme`: torchaudio's MelSpectrogram (HTK mel scale, unnormalised triangles), as the byol-a README's
  v1 feature-extraction example. Option `frontend="readme"` of "byola".
The authors compute mean/std on the downstream task's training data; `fit_normalisation` does that.
Without it the defaults are the authors' published SPCV2 values for that front end: (-9.660292,
4.7219563) for `evar` (the v2 README's, from EVAR with this same front end; statistics of the log-mel
values do not depend on the network) and (-5.4919195, 5.0389895) for `readme` (the v1 README's). The
front end and the statistics are part of `config()`, so they change the cache key.

Embedding: frame features (v1: fc output, d-dim; v2: conv features ++ fc output, 3072-d; one frame
per 8 resp. 4 STFT hops) pooled with mean + max over time ("meanmax"), as the official models do.
Inputs of any length are processed whole (the networks are convolutional over time; the official
evaluation sets the unit length to the clip length).
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

import numpy as np
import torch
from torch import nn

from .base import Encoder
from .checkpoint import CheckpointError, extract_state_dict, load_checkpoint, load_strict, require_tensors
from .frontend import mel_filterbank
from .registry import register

SAMPLE_RATE, N_FFT, HOP, N_MELS, F_MIN, F_MAX = 16000, 1024, 160, 64, 60.0, 7800.0
EPS = float(torch.finfo(torch.float32).eps)
Frontend = Literal["evar", "readme"]
# published SPCV2 statistics of each front end's log-mel values (see the module docstring)
NORM_STATS: dict[str, tuple[float, float]] = {"evar": (-9.660292, 4.7219563), "readme": (-5.4919195, 5.0389895)}


class LogMel(nn.Module):
    """(B, samples) -> log-mel (B, 64, frames), unnormalised."""

    def __init__(self, slaney: bool) -> None:
        super().__init__()
        fb = mel_filterbank(SAMPLE_RATE, N_FFT, N_MELS, F_MIN, F_MAX, htk=not slaney, slaney_norm=slaney)
        self.register_buffer("fb", fb.T.contiguous(), persistent=False)
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=audio.device.type, enabled=False):
            spec = torch.stft(audio.float(), N_FFT, HOP, N_FFT, self.window, center=True, pad_mode="reflect",
                              return_complex=True)
            power = spec.real ** 2 + spec.imag ** 2
            return torch.log(self.fb @ power + EPS)


def _conv_stage(c_in: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2, stride=2)]


class AudioNTT(nn.Module):
    """AudioNTT2020 (3 conv stages, fc d->d) or AudioNTT2022 (2 stages, fc 2048 -> d - conv_d, stacked)."""

    def __init__(self, version: int, d: int) -> None:
        super().__init__()
        n_conv = 3 if version == 1 else 2
        layers: list[nn.Module] = []
        for i in range(n_conv):
            layers += _conv_stage(1 if i == 0 else 64)
        self.features = nn.Sequential(*layers)
        conv_d = 64 * (N_MELS // 2 ** n_conv)
        hidden, out = (d, d) if version == 1 else (2048, d - conv_d)
        self.fc = nn.Sequential(nn.Linear(conv_d, hidden), nn.ReLU(), nn.Dropout(0.3), nn.Linear(hidden, out), nn.ReLU())
        self.stack = version == 2

    def forward(self, lms: torch.Tensor) -> torch.Tensor:
        """Normalised log-mel (B, 1, 64, T) -> frame features (B, T', d)."""
        x = self.features(lms).permute(0, 3, 2, 1)  # (B, T', mel, ch)
        x = x.reshape(x.shape[0], x.shape[1], -1)    # mel-major flattening, as the official reshape
        y = self.fc(x)
        return torch.cat([x, y], dim=-1) if self.stack else y


def official_keys(state: dict, source) -> dict:
    """Keep `features.*` / `fc.*` parameters, cutting any prefix before them (the official loaders do too)."""
    out: dict = {}
    for key, value in state.items():
        m = re.search(r"(^|\.)(features|fc)\.", key)
        if m is None:
            continue
        name = key[m.start(2):]
        if name in out:
            raise CheckpointError(f"{source}: several parameters map to {name!r} (e.g. online and target "
                                  "networks); extract the encoder's state dict first")
        out[name] = value
    return out


class _BYOLA(Encoder):
    sample_rate = SAMPLE_RATE
    default_pooling = "meanmax"
    needs_checkpoint = True
    version: int = 1
    front_end = ("model.lms",)

    def __init__(self, checkpoint=None, *, norm_stats: tuple[float, float] | None = None, d: int | None = None,
                 frontend: Frontend = "evar", **kwargs) -> None:
        super().__init__(checkpoint, **kwargs)
        if frontend not in NORM_STATS:
            raise ValueError(f"frontend must be one of {sorted(NORM_STATS)}, got {frontend!r}")
        if self.version == 2 and frontend != "evar":
            raise ValueError("BYOL-A v2 has one front end (nnAudio, Slaney mel); frontend='readme' is v1 only")
        self.frontend = frontend
        state = official_keys(extract_state_dict(load_checkpoint(self.checkpoint, trust_checkpoint=self.trust_checkpoint)),
                              self.checkpoint)
        require_tensors(state, self.checkpoint)
        if d is None:  # v1: d from fc.0 (d x 512); v2: conv 1024 + fc.3 output
            d = self._detect_d(state)
        self.d = d
        self.feature_dim = d
        net = AudioNTT(self.version, d)
        load_strict(net, state, self.checkpoint)
        self.model = nn.ModuleDict({"lms": LogMel(slaney=frontend == "evar"), "net": net})
        # layers: each conv stage (after its max-pool), the MLP's hidden layer, then the embedding
        self.layer_modules = tuple(f"net.features.{4 * i + 3}" for i in range(len(net.features) // 4)) + ("net.fc.1",)
        self.norm_stats = tuple(float(v) for v in (norm_stats or NORM_STATS[frontend]))
        self.to_device()

    def _detect_d(self, state: dict) -> int:
        key = "fc.0.weight" if self.version == 1 else "fc.3.weight"
        if key not in state:
            raise CheckpointError(f"{self.checkpoint}: missing {key!r}, not a BYOL-A v{self.version} encoder")
        return int(state[key].shape[0]) + (0 if self.version == 1 else 64 * (N_MELS // 4))

    @torch.inference_mode()
    def fit_normalisation(self, waveforms: Iterable[np.ndarray | torch.Tensor]) -> tuple[float, float]:
        """Mean/std of the log-mel values over training waveforms (16 kHz), as the authors' calc_norm_stats."""
        total, total_sq, count = 0.0, 0.0, 0
        for wave in waveforms:
            x = torch.as_tensor(wave, dtype=torch.float32).reshape(1, -1).to(self.device)
            lms = self.model["lms"](x).double()
            total += float(lms.sum())
            total_sq += float((lms ** 2).sum())
            count += lms.numel()
        if count == 0:
            raise ValueError("fit_normalisation needs at least one waveform")
        mean = total / count
        self.norm_stats = (mean, float(np.sqrt(max(total_sq / count - mean ** 2, 0.0))))
        return self.norm_stats

    def frames(self, audio: torch.Tensor) -> torch.Tensor:
        mean, std = self.norm_stats
        lms = (self.model["lms"](audio) - mean) / std
        return self.model["net"](lms[:, None])

    def block_dims(self) -> tuple[int, ...]:
        return (64,) * (len(self.layer_modules) - 1) + (self.model["net"].fc[0].out_features,)

    def config(self) -> dict:
        # v2 keeps its historical label so that its existing caches stay valid
        frontend = self.frontend if self.version == 1 else "v1"
        return {"version": self.version, "d": self.d, "norm_mean": self.norm_stats[0],
                "norm_std": self.norm_stats[1], "frontend": frontend}


@register("byola")
class BYOLA(_BYOLA):
    version = 1
    feature_dim = 2048  # set from the checkpoint (512, 1024 or 2048)
    weight_file = "AudioNTT2020-BYOLA-64x96d512.pth"  # the d512 release (the d1024 and d2048 files load too)
    frame_hop_s = 8 * HOP / SAMPLE_RATE


@register("byola2")
class BYOLA2(_BYOLA):
    version = 2
    feature_dim = 3072
    frame_hop_s = 4 * HOP / SAMPLE_RATE
