"""HEAR 2021 API over every registered encoder.

    from embed import hear
    model = hear.load_model("weights.pt", encoder="mn04")
    scene = hear.get_scene_embeddings(audio, model)          # (n_sounds, scene_embedding_size)
    frames, ms = hear.get_timestamp_embeddings(audio, model) # (n_sounds, n_frames, dim), (n_sounds, n_frames)

heareval passes `--model-options '{"encoder": "mn04"}'` to `load_model` as keyword arguments.
`hear.module("mn04")` returns a module-like object with `load_model` bound to one encoder, for
tools that expect one module per model.
"""
from __future__ import annotations

import types

import torch

from .encoders import Encoder, available, create, get_class


def load_model(model_file_path: str = "", encoder: str = "logmel", **kwargs) -> Encoder:
    # checked here in the API's own words (the encoder's own checks name the command line's --checkpoint)
    encoder_class = get_class(encoder) if encoder in available() else None
    if encoder_class and encoder_class.needs_checkpoint and not model_file_path:
        raise ValueError(f"encoder {encoder!r} needs model_file_path (its official weight file)")
    if encoder_class and not encoder_class.takes_checkpoint and model_file_path:
        raise ValueError(f"encoder {encoder!r} has no weights; call load_model without model_file_path")
    model = create(encoder, model_file_path or None, **kwargs)
    # HEAR names the sizes this way
    model.scene_embedding_size = model.embedding_size
    model.timestamp_embedding_size = model.feature_dim
    return model


def get_timestamp_embeddings(audio: torch.Tensor, model: Encoder) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame embeddings and their centre times in milliseconds."""
    frames = model.frame_embeddings(audio).cpu()
    times = torch.from_numpy(1000.0 * model.frame_times(frames.shape[1], audio.shape[-1])).float()
    return frames, times.expand(frames.shape[0], -1).clone()


def get_scene_embeddings(audio: torch.Tensor, model: Encoder) -> torch.Tensor:
    """The clip embedding `extract` caches: `model.embed`, pooling and any head included."""
    return torch.from_numpy(model.embed(audio))


def module(encoder: str) -> types.ModuleType:
    """A HEAR module for one encoder: `load_model`, `get_scene_embeddings`, `get_timestamp_embeddings`."""
    if encoder not in available():
        raise KeyError(f"unknown encoder {encoder!r}; available: {', '.join(available())}")
    mod = types.ModuleType(f"{__name__}.{encoder}")
    mod.load_model = lambda model_file_path="", **kw: load_model(model_file_path, encoder=encoder, **kw)
    mod.get_scene_embeddings = get_scene_embeddings
    mod.get_timestamp_embeddings = get_timestamp_embeddings
    return mod
