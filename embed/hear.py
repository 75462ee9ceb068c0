"""HEAR 2021 API over every registered encoder.

    from embed import hear
    model = hear.load_model("weights.pt", encoder="mn04")    # a torch.nn.Module
    scene = hear.get_scene_embeddings(audio, model)          # (n_sounds, scene_embedding_size)
    frames, ms = hear.get_timestamp_embeddings(audio, model) # (n_sounds, n_frames, dim), (n_sounds, n_frames)

Each encoder is also a HEAR module of its own, `embed.hear.NAME` (`import embed.hear.mn04`), so the
HEAR tools can name it: `hear-validator embed.hear.mn04 --model efficientat_mn04_as_mAP_432.pt`.
heareval can instead pass `--model-options '{"encoder": "mn04"}'` to `load_model`.

`model.sample_rate` is one of the rates HEAR allows: the encoder's own, or for an encoder at
another rate (CirCor's 4 kHz for `logmel` and `quality`) the lowest HEAR rate above it, the audio
being resampled to the encoder's rate inside, with the resampler `extract` uses. Timestamps are
the encoder's frame centres (`Encoder.frame_times`): one fixed hop per encoder, whatever the
clip's length. The scene embedding is `Encoder.embed`, the vector `extract` caches.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types

import numpy as np
import torch

from .audio import resample
from .encoders import Encoder, available, create, get_class

__path__: list[str] = []  # a package whose submodules are the encoders (`_EncoderModules`)

HEAR_SAMPLE_RATES = (16000, 22050, 32000, 44100, 48000)


def hear_sample_rate(rate: int) -> int:
    """`rate` if HEAR allows it, else the lowest allowed rate above it (the highest below, past 48 kHz)."""
    if rate in HEAR_SAMPLE_RATES:
        return rate
    return next((r for r in HEAR_SAMPLE_RATES if r > rate), HEAR_SAMPLE_RATES[-1])


class HearModel(torch.nn.Module):
    """An encoder as HEAR sees it: `sample_rate`, `scene_embedding_size`, `timestamp_embedding_size`;
    `.to(device)` moves the encoder. The encoder itself is `model.encoder`."""

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder
        if isinstance(encoder.model, torch.nn.Module):
            self.network = encoder.model  # listed as a submodule, so printing the model shows it
        self.sample_rate = hear_sample_rate(encoder.sample_rate)
        self.scene_embedding_size = int(encoder.embedding_size)
        self.timestamp_embedding_size = int(encoder.feature_dim)

    def to(self, *args, **kwargs) -> "HearModel":
        device = torch._C._nn._parse_to(*args, **kwargs)[0]
        if device is not None:
            self.encoder.device = torch.device(device)
            self.encoder.to_device()
        return self

    def encoder_audio(self, audio: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """Audio at `sample_rate` -> at the encoder's rate (unchanged where they are the same)."""
        if self.sample_rate == self.encoder.sample_rate:
            return audio
        samples = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
        return resample(samples.astype(np.float32, copy=False), self.sample_rate, self.encoder.sample_rate)


def load_model(model_file_path: str = "", encoder: str = "logmel", **kwargs) -> HearModel:
    # checked here in the API's own words (the encoder's own checks name the command line's --checkpoint)
    encoder_class = get_class(encoder) if encoder in available() else None
    if encoder_class and encoder_class.needs_checkpoint and not model_file_path:
        raise ValueError(f"encoder {encoder!r} needs model_file_path (its official weight file)")
    if encoder_class and not encoder_class.takes_checkpoint and model_file_path:
        raise ValueError(f"encoder {encoder!r} has no weights; call load_model without model_file_path")
    return HearModel(create(encoder, model_file_path or None, **kwargs))


def get_timestamp_embeddings(audio: torch.Tensor, model: HearModel) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame embeddings and their centre times in milliseconds."""
    frames = model.encoder.frame_embeddings(model.encoder_audio(audio)).cpu().float()
    seconds = audio.shape[-1] / model.sample_rate
    times = model.encoder.frame_times(frames.shape[1], int(round(seconds * model.encoder.sample_rate)))
    keep = times <= seconds  # frames of padding past the clip's end, dropped as the frame caches do
    times = torch.from_numpy(1000.0 * times[keep]).float()
    return frames[:, torch.from_numpy(keep)], times.expand(frames.shape[0], -1).clone()


def get_scene_embeddings(audio: torch.Tensor, model: HearModel) -> torch.Tensor:
    """The clip embedding `extract` caches: `Encoder.embed`, pooling and any head included."""
    return torch.from_numpy(model.encoder.embed(model.encoder_audio(audio)))


def module(encoder: str) -> types.ModuleType:
    """A HEAR module for one encoder: `load_model`, `get_scene_embeddings`, `get_timestamp_embeddings`."""
    if encoder not in available():
        raise KeyError(f"unknown encoder {encoder!r}; available: {', '.join(available())}")
    mod = types.ModuleType(f"{__name__}.{encoder}", f"HEAR module of heartprobe's {encoder!r} encoder")
    mod.load_model = lambda model_file_path="", **kw: load_model(model_file_path, encoder=encoder, **kw)
    mod.get_scene_embeddings = get_scene_embeddings
    mod.get_timestamp_embeddings = get_timestamp_embeddings
    return mod


class _EncoderModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes `import embed.hear.NAME` give `module(NAME)` for every registered encoder."""

    def find_spec(self, fullname, path=None, target=None):
        parent, _, name = fullname.rpartition(".")
        if parent != __name__ or name not in available():
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec):
        return module(spec.name.rpartition(".")[2])

    def exec_module(self, mod) -> None:
        pass


if not any(isinstance(f, _EncoderModules) for f in sys.meta_path):
    sys.meta_path.append(_EncoderModules())
