"""The encoder protocol every model implements (HEAR-like).

An encoder turns a batch of equal-length waveforms at its own `sample_rate` into frame
features `(batch, frames, dim)`; the base class handles devices, precision, batching and
pooling, so a new encoder only writes `__init__` (build + load weights) and `frames`.

`embed` is the one way from audio to a clip embedding (extract, predict, benchmark and the HEAR
API all call it): frames -> pooling -> `head`. A model that adds layers after pooling (CNN14's
fc1 + ReLU) overrides `head`, never `embed`.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

POOLINGS = ("mean", "max", "meanmax", "meanstd")
PRECISIONS = ("fp32", "fp16", "bf16")


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device} asked for, but torch sees no CUDA device")
    return torch.device(device)


def resolve_precision(precision: str | None, device: torch.device) -> str:
    """fp16 autocast by default on CUDA, fp32 on CPU."""
    if precision in (None, "auto"):
        return "fp16" if device.type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def pool(frames: torch.Tensor, method: str) -> torch.Tensor:
    """Pool `(batch, frames, dim)` over time. `meanmax` is EVAR's mean + max sum."""
    if method == "mean":
        return frames.mean(dim=1)
    if method == "max":
        return frames.amax(dim=1)
    if method == "meanmax":
        return frames.mean(dim=1) + frames.amax(dim=1)
    if method == "meanstd":
        std = frames.std(dim=1, unbiased=False) if frames.shape[1] > 1 else torch.zeros_like(frames[:, 0])
        return torch.cat([frames.mean(dim=1), std], dim=-1)
    raise ValueError(f"pooling must be one of {POOLINGS}, got {method!r}")


def _fp32_under_bf16(module: torch.nn.Module) -> None:
    """Make `module` run in fp32 whenever it is called under bf16 autocast (any other precision:
    unchanged). Checked at call time, so a precision changed after loading is honoured."""
    if getattr(module, "_fp32_under_bf16", False):
        return
    forward = module.forward

    def run(x: torch.Tensor, *args, **kwargs):
        kind = x.device.type
        if torch.is_autocast_enabled(kind) and torch.get_autocast_dtype(kind) == torch.bfloat16:
            with torch.autocast(device_type=kind, enabled=False):
                return forward(x.float(), *args, **kwargs)
        return forward(x, *args, **kwargs)

    module.forward = run
    module._fp32_under_bf16 = True


class Encoder:
    """Base class for frozen audio encoders.

    Subclasses set the class attributes, build `self.model` in `__init__` (calling
    `super().__init__` first) and implement `frames`.
    """

    name: ClassVar[str] = ""
    sample_rate: ClassVar[int] = 16000
    feature_dim: ClassVar[int] = 0  # per-frame dimension before pooling
    frame_hop_s: ClassVar[float] = 0.01  # seconds between frame centres, for timestamps
    default_pooling: ClassVar[str] = "mean"
    needs_checkpoint: ClassVar[bool] = True
    takes_checkpoint: ClassVar[bool] = True  # False: no weights at all, so --checkpoint is refused
    # submodules of `model` (qualified names) that run in fp32 when the precision is bf16: layers
    # whose bf16 rounding (8-bit mantissa) the rest of the network amplifies past the 0.999 cosine
    # to fp32 that reduced precision must keep (fp16's 11 bits need none of this)
    bf16_fp32_modules: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        *,
        pooling: str | None = None,
        device: str = "cpu",
        precision: str | None = None,
        trust_checkpoint: bool = False,
    ) -> None:
        if self.needs_checkpoint and checkpoint is None:
            raise ValueError(f"encoder {self.name!r} needs --checkpoint PATH (its official weight file)")
        if not self.takes_checkpoint and checkpoint is not None:
            raise ValueError(f"encoder {self.name!r} has no weights; drop --checkpoint {checkpoint}")
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.pooling = pooling or self.default_pooling
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.trust_checkpoint = trust_checkpoint
        self.model: torch.nn.Module | None = None

    # -- to implement -------------------------------------------------------------------
    def frames(self, audio: torch.Tensor) -> torch.Tensor:
        """`(batch, samples)` float waveforms on `self.device` -> `(batch, frames, feature_dim)`."""
        raise NotImplementedError

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        """Layers the model applies after pooling, `(batch, pooled_dim) -> (batch, embedding_size)`;
        runs under the same precision as `frames`. Identity unless a model has such layers."""
        return pooled

    def config(self) -> dict:
        """Everything besides the checkpoint that changes the embeddings (goes into the cache key)."""
        return {}

    # -- shared machinery -----------------------------------------------------------------
    @property
    def embedding_size(self) -> int:
        return self.feature_dim * (2 if self.pooling == "meanstd" else 1)

    def to_device(self) -> "Encoder":
        if self.model is not None:
            self.model.eval().to(self.device)
            for p in self.model.parameters():
                p.requires_grad_(False)
            for name in self.bf16_fp32_modules:
                _fp32_under_bf16(self.model.get_submodule(name))
        return self

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    @torch.inference_mode()
    def frame_embeddings(self, audio: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(audio, dtype=torch.float32)
        if x.ndim == 1:
            x = x[None]
        x = x.to(self.device, non_blocking=True)
        with self._autocast():
            out = self.frames(x)
        return out.float()

    @torch.inference_mode()
    def embed(self, audio: np.ndarray | torch.Tensor) -> np.ndarray:
        """`(batch, samples)` -> `(batch, embedding_size)` float32 numpy: frames, pooled, then `head`."""
        pooled = pool(self.frame_embeddings(audio), self.pooling)
        with self._autocast():
            out = self.head(pooled)
        return out.float().cpu().numpy()

    def describe(self) -> dict:
        return {
            "encoder": self.name,
            "sample_rate": self.sample_rate,
            "pooling": self.pooling,
            "precision": self.precision,
            **({"bf16_fp32_modules": list(self.bf16_fp32_modules)}
               if self.precision == "bf16" and self.bf16_fp32_modules else {}),
            **{f"cfg_{k}": v for k, v in self.config().items()},
        }
