"""The encoder protocol every model implements (HEAR-like).

An encoder turns a batch of equal-length waveforms at its own `sample_rate` into frame
features `(batch, frames, dim)`; the base class handles devices, precision, batching and
pooling, so a new encoder only writes `__init__` (build + load weights) and `frames`.

`embed` is the one way from audio to a clip embedding (extract, predict, benchmark and the HEAR
API all call it; extract through `embed_async`, the same with the copy back to the host not yet
awaited): frames -> pooling -> `head`. A model that adds layers after pooling (CNN14's
fc1 + ReLU) overrides `head`, never `embed`.

Layers: an encoder with blocks names them in `layer_modules` (qualified submodule names of
`model`, network order) and their frame dimensions in `block_dims`; layer i < n-1 is block i's
output as frames (`block_frames`: conv maps averaged over frequency, transformer tokens without
class tokens averaged over frequency patches), pooled, no head; the last layer, n-1, is the
encoder's own embedding. `layers=` picks which the embedding holds (concatenated in network
order), all captured with forward hooks during one forward pass.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from pathlib import Path
from typing import ClassVar, Literal, Sequence, Union

import numpy as np
import torch

from .transfer import HostCopy, to_device
from .vit import FUSED_CPU_BF16, Block, fused_cpu_bf16_available

POOLINGS = ("mean", "max", "meanmax", "meanstd")
LayerSpec = Union[Literal["last", "all"], str, Sequence[int], None]
PRECISIONS = ("fp32", "fp16", "bf16")
Precision = Literal["fp32", "fp16", "bf16"]


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device} asked for, but torch sees no CUDA device")
    return torch.device(device)


@functools.lru_cache(maxsize=1)
def native_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products natively (AVX512-BF16 or AMX-BF16).

    `HEARTPROBE_CPU_BF16=0` turns the bf16 default off (the tests pin fp32 this way)."""
    if os.environ.get("HEARTPROBE_CPU_BF16", "1") == "0":
        return False
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags")).split()
    except (OSError, StopIteration):  # not Linux/x86: no way to tell, keep fp32
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str | None, device: torch.device, bf16_safe: bool = False) -> Precision:
    """The default: fp16 autocast on CUDA; on a CPU, bf16 where it computes bf16 natively and the
    encoder is `bf16_safe`, fp32 otherwise."""
    if precision in (None, "auto"):
        if device.type == "cuda":
            return "fp16"
        return "bf16" if bf16_safe and native_bf16() else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


CPU_BATCH_SIZE = 32  # windows per batch on a CPU when nothing is timed
# tried by `fastest_cpu_batch_size`: on 2 cores the CNNs ran 1.5-1.7x faster at 4 than at 32
# (activations that stay in cache), M2D alike at every size (docs/speed.md, Defaults)
CPU_BATCH_CANDIDATES = (2, 4, 8, 16, 32)


def batch_size_for_memory(free_bytes: float, bytes_per_window: float, fraction: float = 0.5,
                          cap: int = 512, floor: int = 8) -> int:
    """The largest power of two of windows whose activations fit in `fraction` of free memory."""
    fits = int(free_bytes * fraction / max(bytes_per_window, 1.0))
    return max(floor, min(cap, 2 ** int(math.log2(fits)) if fits >= 1 else floor))


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


def resolve_layers(spec: LayerSpec, n_layers: int, encoder: str = "") -> tuple[int, ...]:
    """`last`, `all`, `i,j,...` (negative counts from the end) or a sequence of indices -> the sorted
    layer indices in 0..n_layers-1. An encoder without blocks has one layer: `all` is that layer."""
    if spec is None or spec == "last":
        return (n_layers - 1,)
    if spec == "all":
        return tuple(range(n_layers))
    try:
        items = [int(v) for v in spec.split(",") if v.strip()] if isinstance(spec, str) else [int(v) for v in spec]
    except ValueError:
        raise ValueError(f"layers must be 'last', 'all' or comma-separated integers, got {spec!r}") from None
    bad = [i for i in items if not -n_layers <= i < n_layers]
    if bad or not items:
        raise ValueError(f"layers {spec!r}: encoder {encoder!r} has layers 0..{n_layers - 1} "
                         f"({n_layers - 1} blocks + its embedding); {bad or 'none given'} out of range")
    return tuple(sorted({i % n_layers for i in items}))


def token_frames(tokens: torch.Tensor, n_prefix: int, n_freq: int, freq_major: bool) -> torch.Tensor:
    """Transformer tokens `(B, n_prefix + patches, D)` -> frames `(B, time patches, D)`: class /
    distillation / prompt tokens dropped, patches averaged over frequency. `freq_major`: patches
    ordered frequency row by row (ViT over a (mel, time) image), else time step by time step."""
    x = tokens[:, n_prefix:].float()
    b, n, d = x.shape
    if freq_major:
        return x.reshape(b, n_freq, n // n_freq, d).mean(dim=1)
    return x.reshape(b, n // n_freq, n_freq, d).mean(dim=2)


def join_batch_chunks(parts: list[torch.Tensor], batch: int) -> torch.Tensor:
    """Block outputs of inputs cut into pieces stacked along the batch (patches, frames, chunks;
    sample-major), as `(pieces, dim)` or `(pieces, frames, dim)` -> `(batch, frames, dim)`."""
    x = torch.cat(parts, dim=0)
    return x.reshape(batch, -1, x.shape[-1])


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
    # centre of the first frame in seconds; None: half a hop (frames tiling the clip from its start)
    frame_offset_s: ClassVar[float | None] = None
    # each frame stands for a whole chunk of `frame_hop_s` (AST's 10.24 s, quality's window): its
    # time is the centre of the chunk's audio, so a last chunk cut by the clip's end is centred on its part
    chunk_frames: ClassVar[bool] = False
    default_pooling: ClassVar[str] = "mean"
    needs_checkpoint: ClassVar[bool] = True
    takes_checkpoint: ClassVar[bool] = True  # False: no weights at all, so --checkpoint is refused
    # the official weight file's published name, which a weights folder holds it under (`compare --weights`)
    weight_file: ClassVar[str | None] = None
    # the option a registry name `NAME:TARGET` sets (`hear:MODULE` sets `module`); None: none
    name_option: ClassVar[str | None] = None
    # submodules of `model` (qualified names) that run in fp32 when the precision is bf16: layers
    # whose bf16 rounding (8-bit mantissa) the rest of the network amplifies past the 0.999 cosine
    # to fp32 that reduced precision must keep (fp16's 11 bits need none of this)
    bf16_fp32_modules: ClassVar[tuple[str, ...]] = ()
    # bf16 embeddings within cosine 0.999 of fp32 on CirCor windows and probe scores within noise
    # (docs/speed.md, "bf16 safety"): bf16 is then the default on CPUs with native bf16
    bf16_safe: ClassVar[bool] = False
    # attribute paths (from the encoder) of the modules or methods computing the front end, so
    # `benchmark` can split front end from network time
    front_end: ClassVar[tuple[str, ...]] = ()
    # submodules of `model` (qualified names, network order) whose outputs are layers 0..n-2; the
    # last layer is the embedding itself. `block_dims` gives their frame dimensions
    layer_modules: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        *,
        pooling: str | None = None,
        device: str = "cpu",
        precision: str | None = None,
        trust_checkpoint: bool = False,
        layers: LayerSpec = None,
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
        self.precision = resolve_precision(precision, self.device, self.bf16_safe)
        self.trust_checkpoint = trust_checkpoint
        self.layer_spec = layers  # resolved lazily: some encoders learn their depth from the checkpoint
        self.model: torch.nn.Module | None = None
        self._cast_dtype: torch.dtype | None = None  # low dtype the layers' weights were cast to
        self._fp32_weights: dict = {}  # (module, name) -> the original parameter, to undo the cast

    # -- to implement -------------------------------------------------------------------
    def frames(self, audio: torch.Tensor) -> torch.Tensor:
        """`(batch, samples)` float waveforms on `self.device` -> `(batch, frames, feature_dim)`."""
        raise NotImplementedError

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        """Layers the model applies after pooling, `(batch, pooled_dim) -> (batch, embedding_size)`;
        runs under the same precision as `frames`. Identity unless a model has such layers."""
        return pooled

    def block_dims(self) -> tuple[int, ...]:
        """Frame dimension of each block in `layer_modules` (as `block_frames` returns it)."""
        if self.layer_modules:
            raise NotImplementedError(f"{type(self).__name__} names layer_modules but not their block_dims")
        return ()

    def block_frames(self, index: int, output) -> torch.Tensor:
        """One call's output of block `index` -> frames `(batch, frames, dim)`. Default: a conv map
        `(B, C, F, T)` averaged over frequency, or `(B, T, D)` as it is."""
        if output.ndim == 4:
            return output.float().mean(dim=2).transpose(1, 2)
        if output.ndim == 3:
            return output.float()
        raise ValueError(f"{self.name}: block {self.layer_modules[index]} gave a {output.ndim}-d output; "
                         "override block_frames")

    def join_block_frames(self, index: int, parts: list[torch.Tensor], batch: int) -> torch.Tensor:
        """A block called several times in one forward pass (inputs cut into chunks along time):
        the chunks' frames in order. Encoders chunking along the batch override this."""
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def config(self) -> dict:
        """Everything besides the checkpoint that changes the embeddings (goes into the cache key)."""
        return {}

    # -- shared machinery -----------------------------------------------------------------
    @property
    def output_size(self) -> int:
        """Size of the encoder's own embedding (the last layer)."""
        return self.feature_dim * (2 if self.pooling == "meanstd" else 1)

    @property
    def n_layers(self) -> int:
        return len(self.layer_modules) + 1

    @property
    def layers(self) -> tuple[int, ...]:
        return resolve_layers(self.layer_spec, self.n_layers, self.name)

    @property
    def last_only(self) -> bool:
        return self.layers == (self.n_layers - 1,)

    def layer_dims(self) -> tuple[int, ...]:
        """Pooled size of every layer, 0..n_layers-1."""
        per_frame = 2 if self.pooling == "meanstd" else 1
        return tuple(d * per_frame for d in self.block_dims()) + (self.output_size,)

    @property
    def embedding_size(self) -> int:
        dims = self.layer_dims()
        return sum(dims[i] for i in self.layers)

    def to_device(self) -> "Encoder":
        if self.model is not None:
            self.model.eval().to(self.device)
            for p in self.model.parameters():
                p.requires_grad_(False)
            for name in self.bf16_fp32_modules:
                _fp32_under_bf16(self.model.get_submodule(name))
        # the depth is known now: refuse a layer choice outside it here, not mid-run
        resolve_layers(self.layer_spec, self.n_layers, self.name)
        return self

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _low_dtype(self) -> torch.dtype | None:
        return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision)

    def _run_casting_weights(self, x: torch.Tensor) -> torch.Tensor:
        """`frames` under autocast; the first call also finds the linear and convolution layers that
        autocast runs in low precision and casts their weights once, so later calls do not recast
        them on every batch (autocast does not cache casts of frozen weights). The values are the
        ones autocast would compute; layers that run with autocast disabled (fp32 front ends) stay."""
        dtype, seen = self._low_dtype(), {}

        def record(module, _inputs):
            enabled = torch.is_autocast_enabled(self.device.type)
            seen[module] = seen.get(module, True) and enabled

        layers = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)
        hooks = [m.register_forward_pre_hook(record) for m in self.model.modules() if isinstance(m, layers)]
        try:
            with self._autocast():
                out = self.frames(x)
        finally:
            for hook in hooks:
                hook.remove()
        for module, autocast_on in seen.items():
            if autocast_on and type(module) in layers:  # exact types: subclasses may use weights otherwise
                for name, param in list(module.named_parameters(recurse=False)):
                    self._fp32_weights[module, name] = param
                    setattr(module, name, torch.nn.Parameter(param.detach().to(dtype), requires_grad=False))
        self._cast_dtype = dtype
        return out

    def _restore_weights(self) -> None:
        for (module, name), param in self._fp32_weights.items():
            setattr(module, name, param)
        self._fp32_weights, self._cast_dtype = {}, None

    def to_device_batch(self, audio: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Float32 `(batch, samples)` on the device; on CUDA through pinned memory, copied without
        blocking so the host can go on preparing the next batch (`transfer.to_device`)."""
        x = torch.as_tensor(audio, dtype=torch.float32)
        if x.ndim == 1:
            x = x[None]
        return to_device(x, self.device)

    @torch.inference_mode()
    def frame_embeddings(self, audio: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = self.to_device_batch(audio)
        if self._cast_dtype is not None and self._cast_dtype != self._low_dtype():  # precision changed
            self._restore_weights()
        if self._cast_dtype is None and self._low_dtype() is not None and self.model is not None:
            return self._run_casting_weights(x).float()
        with self._autocast():
            out = self.frames(x)
        return out.float()

    def frame_times(self, n_frames: int, n_samples: int) -> np.ndarray:
        """Centre times in seconds, from the clip's start, of the `n_frames` frames that
        `frame_embeddings` returns for a clip of `n_samples`: the first at `frame_offset_s` (half a
        hop unless an encoder says otherwise), then one every `frame_hop_s`, the same grid whatever
        the clip's length (HEAR's timestamps). Frames of padding may be centred past the clip's end;
        the frame caches and the HEAR timestamps drop them."""
        if self.chunk_frames:
            starts = np.arange(n_frames) * self.frame_hop_s
            return starts + np.clip(n_samples / self.sample_rate - starts, 0.0, self.frame_hop_s) / 2
        offset = self.frame_hop_s / 2 if self.frame_offset_s is None else self.frame_offset_s
        return offset + np.arange(n_frames) * self.frame_hop_s

    def cache_frame_times(self, layer: int, n_frames: int, n_samples: int) -> np.ndarray:
        """Centre times of layer `layer`'s frames in one window of a frame cache: the embedding's on
        the `frame_hop_s` grid from half a hop, spread evenly over the window where they do not fit
        in it; a block's (its own, finer frame rate) spread evenly. The committed recipes' results
        were measured on these times. They differ from the HEAR grid (`frame_times`) by up to half
        a hop (logmel: 5 ms), and moving the caches to it changes every phase-pooled result, so it
        waits for a rerun of those results (docs/ and the issue tracker say so)."""
        duration = n_samples / self.sample_rate
        if layer == self.n_layers - 1:
            times = (np.arange(n_frames) + 0.5) * self.frame_hop_s
            if not n_frames or times[-1] <= duration:
                return times
        return (np.arange(n_frames) + 0.5) * (duration / max(n_frames, 1))

    def auto_batch_size(self, window_s: float = 5.0, probe: int = 8, timed: bool = False) -> int:
        """Batch size for this device: on a CPU, the fastest of `CPU_BATCH_CANDIDATES` when `timed`
        (worth it on long jobs), 32 otherwise; on CUDA, from the memory one window takes (measured
        on `probe` silent windows) and the memory free now."""
        if self.device.type != "cuda":
            return self.fastest_cpu_batch_size(window_s) if timed else CPU_BATCH_SIZE
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        self.embed(np.zeros((probe, int(round(window_s * self.sample_rate))), np.float32))
        per_window = (torch.cuda.max_memory_allocated(self.device) - before) / probe
        free, _ = torch.cuda.mem_get_info(self.device)
        return batch_size_for_memory(free, per_window)

    def fastest_cpu_batch_size(self, window_s: float = 5.0, repeats: int = 2, budget_s: float = 10.0) -> int:
        """The candidate batch size with the most windows/s on noise windows (best of `repeats`
        timed batches after one untimed), smallest first. Tuning stops once it has taken
        `budget_s`: a network that slow is bound by its arithmetic, where batch size hardly matters."""
        noise = np.random.default_rng(0).standard_normal(
            (max(CPU_BATCH_CANDIDATES), int(round(window_s * self.sample_rate)))).astype(np.float32) * 0.1
        speed, start = {}, time.perf_counter()
        for size in CPU_BATCH_CANDIDATES:
            if speed and time.perf_counter() - start > budget_s:
                break
            self.embed(noise[:size])
            best = math.inf
            for _ in range(repeats):
                tic = time.perf_counter()
                self.embed(noise[:size])
                best = min(best, time.perf_counter() - tic)
            speed[size] = size / best
        return max(speed, key=speed.get)

    @torch.inference_mode()
    def layer_frames(self, audio: np.ndarray | torch.Tensor, layers: Sequence[int]) -> list[torch.Tensor]:
        """Frames `(batch, frames, dim)` of each of `layers`, from one forward pass: blocks are caught
        by forward hooks, the last layer is `frame_embeddings` itself (its `head` not applied)."""
        layers = list(layers)
        last = self.n_layers - 1
        wanted = sorted({i for i in layers if i != last})
        if any(not 0 <= i <= last for i in layers):
            raise ValueError(f"{self.name}: layers {layers} outside 0..{last}")
        parts: dict[int, list[torch.Tensor]] = {i: [] for i in wanted}

        def catcher(index: int):
            def hook(_module, _inputs, output):
                parts[index].append(self.block_frames(index, output))
            return hook

        hooks = [self.model.get_submodule(self.layer_modules[i]).register_forward_hook(catcher(i)) for i in wanted]
        try:
            final = self.frame_embeddings(audio)
        finally:
            for hook in hooks:
                hook.remove()
        batch = final.shape[0]
        caught = {}
        for i in wanted:
            if not parts[i]:
                raise RuntimeError(f"{self.name}: block {self.layer_modules[i]} did not run in the forward pass")
            caught[i] = self.join_block_frames(i, parts[i], batch).float()
        return [final if i == last else caught[i] for i in layers]

    def embed(self, audio: np.ndarray | torch.Tensor) -> np.ndarray:
        """`(batch, samples)` -> `(batch, embedding_size)` float32 numpy: frames, pooled, then `head`;
        with `layers`, each layer pooled (the last one also through `head`), concatenated."""
        return self.embed_async(audio).result()

    @torch.inference_mode()
    def embed_async(self, audio: np.ndarray | torch.Tensor) -> HostCopy:
        """`embed` with the copy back to the host started, not awaited (`.result()` awaits it): on
        CUDA the host can stack the next batch while the device works on this one."""
        if self.last_only:
            pooled = pool(self.frame_embeddings(audio), self.pooling)
            with self._autocast():
                out = self.head(pooled)
            return HostCopy(out.float())
        layers, last = self.layers, self.n_layers - 1
        pooled = []
        for index, frames in zip(layers, self.layer_frames(audio, layers)):
            vector = pool(frames, self.pooling)
            if index == last:
                with self._autocast():
                    vector = self.head(vector).float()
            pooled.append(vector)
        return HostCopy(torch.cat(pooled, dim=-1).float())

    def runs_fused_cpu_bf16(self) -> bool:
        """Whether its transformer blocks take the fused CPU bf16 path (`vit.py`), whose numerics
        differ slightly from autocast's, so caches made either way keep apart."""
        return (self.precision == "bf16" and self.device.type == "cpu" and self.model is not None
                and fused_cpu_bf16_available() and any(isinstance(m, Block) for m in self.model.modules()))

    def describe(self) -> dict:
        return {
            "encoder": self.name,
            "sample_rate": self.sample_rate,
            "pooling": self.pooling,
            "precision": self.precision,
            **({"bf16_fp32_modules": list(self.bf16_fp32_modules)}
               if self.precision == "bf16" and self.bf16_fp32_modules else {}),
            **({"cpu_bf16_kernels": FUSED_CPU_BF16} if self.runs_fused_cpu_bf16() else {}),
            # only when other than the embedding alone, so caches made before layers existed keep their key
            **({} if self.last_only else {"layers": list(self.layers), "n_layers": self.n_layers,
                                          "layer_dims": [self.layer_dims()[i] for i in self.layers]}),
            **{f"cfg_{k}": v for k, v in self.config().items()},
        }
