"""Any installed HEAR 2021 module as an encoder: `--encoder hear:MODULE [--checkpoint FILE]`.

The module's own three functions do the work: `load_model(FILE)` once, `get_timestamp_embeddings`
gives the frames (the frame caches, the recipes' phase members), `get_scene_embeddings` the clip
embedding of each window (so `--pooling` does not apply). Recordings are resampled to the model's
`sample_rate`. The frame hop and the first frame's centre are read off the module's timestamps for
a silent clip, and its frames keep those times in frame caches. The cache key holds the module's
name, its distribution's version (or, for a module outside any distribution, a digest of its
source file) and the checkpoint's sha256. Importing the module runs its code: name only modules you
installed. Only PyTorch modules (`load_model` returning a `torch.nn.Module`) are run.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from .base import Encoder, HostCopy
from .registry import register

HEAR_FUNCTIONS = ("load_model", "get_timestamp_embeddings", "get_scene_embeddings")
PROBE_SECONDS = 2.0  # the silent clip the timestamps are read from


def import_hear_module(name: str) -> ModuleType:
    try:
        module = importlib.import_module(name)
    except ImportError as err:
        raise ImportError(f"hear:{name}: cannot import the HEAR module {name!r} ({err}); install it first") from None
    missing = [f for f in HEAR_FUNCTIONS if not callable(getattr(module, f, None))]
    if missing:
        raise ValueError(f"hear:{name}: not a HEAR module: it has no {', '.join(missing)}")
    return module


def module_version(module: ModuleType) -> dict:
    """The installed distribution's version, else a digest of the module's source file."""
    top = module.__name__.split(".")[0]
    dists = importlib.metadata.packages_distributions().get(top, [])
    if dists:
        return {"distribution": dists[0], "module_version": importlib.metadata.version(dists[0])}
    source = Path(module.__file__) if getattr(module, "__file__", None) else None
    return {"module_sha256": hashlib.sha256(source.read_bytes()).hexdigest() if source and source.is_file() else None}


@register("hear")
class HearModuleEncoder(Encoder):
    needs_checkpoint = False  # a module may carry its weights; --checkpoint is its model_file_path
    name_option = "module"
    default_pooling = "mean"

    def __init__(self, checkpoint=None, *, module: str | None = None, **kwargs) -> None:
        super().__init__(checkpoint, **kwargs)
        if not module:
            raise ValueError("encoder 'hear' needs the HEAR module to run: --encoder hear:MODULE")
        if kwargs.get("pooling") not in (None, "mean"):
            raise ValueError("hear: the clip embedding is the module's scene embedding; --pooling does not apply")
        self.hear = import_hear_module(module)
        self.module_name = module
        model = self.hear.load_model(str(self.checkpoint)) if self.checkpoint else self.hear.load_model()
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"hear:{module}: load_model returned a {type(model).__name__}, not a torch.nn.Module "
                             "(only PyTorch HEAR modules run here)")
        self.model = model
        self.sample_rate = int(model.sample_rate)
        self.feature_dim = int(model.timestamp_embedding_size)
        self.scene_size = int(model.scene_embedding_size)
        self.version = module_version(self.hear)
        self.to_device()
        self.frame_hop_s, self.frame_offset_s = self._timestamp_grid()

    def _timestamp_grid(self) -> tuple[float, float]:
        silence = torch.zeros(1, int(PROBE_SECONDS * self.sample_rate), device=self.device)
        with torch.inference_mode():
            _, times = self.hear.get_timestamp_embeddings(silence, self.model)
        times = np.asarray(times[0].cpu(), dtype=np.float64) / 1000.0
        if len(times) < 2 or not np.all(np.diff(times) > 0):
            raise ValueError(f"hear:{self.module_name}: its timestamps for a {PROBE_SECONDS:g} s clip are not "
                             "increasing frame centres")
        # to 0.1 us: the module's float32 milliseconds carry no more
        return round(float(np.median(np.diff(times))), 7), round(float(times[0]), 7)

    @property
    def output_size(self) -> int:
        return self.scene_size

    def frames(self, audio: torch.Tensor) -> torch.Tensor:
        embeddings, _ = self.hear.get_timestamp_embeddings(audio, self.model)
        return embeddings

    def cache_frame_times(self, layer: int, n_frames: int, n_samples: int) -> np.ndarray:
        return self.frame_times(n_frames, n_samples)  # the module's own timestamps

    @torch.inference_mode()
    def embed_async(self, audio) -> HostCopy:
        x = self.to_device_batch(audio)
        with self._autocast():
            scene = self.hear.get_scene_embeddings(x, self.model)
        return HostCopy(scene.float())

    def config(self) -> dict:
        return {"module": self.module_name, **self.version, "version": 1}
