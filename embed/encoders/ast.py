"""`ast`: Audio Spectrogram Transformer, AudioSet checkpoint (Gong et al., Interspeech 2021).

Follows the official code, https://github.com/YuanGongND/ast (`src/models/ast_models.py`
for the model, `src/dataloader.py` for the front end), re-written in plain torch:

- Front end: 16 kHz waveform minus its mean, Kaldi fbank (128 mel bins, 25 ms hanning window,
  10 ms shift, dither 0, pre-emphasis 0.97, per-frame DC removal, 20 Hz-Nyquist), zero-padded
  or cut to 1024 frames in the fbank domain, then `(x + 4.2677393) / (4.5689974 * 2)`.
- Model: timm DeiT-base (distilled) with cls + dist tokens, 16x16 patches at stride 10 in both
  axes (12 x 101 patches for 128 x 1024), pos_embed (1, 1214, 768), LayerNorm eps 1e-6.
- Checkpoint `audioset_10_10_0.4593.pth`: a DataParallel state dict ('module.' prefix). We load
  'module.v.*' and 'module.mlp_head.*' strictly and drop 'module.v.head*' / 'module.v.head_dist*'
  (DeiT's ImageNet heads, unused by AST, also dropped by other converters).
- Embedding: the mean of the cls and dist token outputs after the final norm (768-d), the
  representation the AST forward feeds to its classifier and the one EVAR's AST wrapper
  (nttcslab/eval-audio-repr `evar/ar_ast.py`) returns, as a single frame per clip. Inputs longer
  than 1024 frames (10.24 s) are cut into 1024-frame chunks (the last zero-padded like a short
  clip), one frame per chunk, so `frame_hop_s` = 10.24 s; clips up to 10.24 s give exactly the
  official embedding. A `target_length` kwarg changes the frame count per chunk, adapting the
  positional embedding as the official model does (centre crop in time, or bilinear stretch).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .base import Encoder, join_batch_chunks, token_frames
from .checkpoint import extract_state_dict, load_checkpoint, load_strict, strip_prefix
from .kaldi_fbank import kaldi_fbank
from .registry import register
from .vit import Block

AUDIOSET_MEAN, AUDIOSET_STD = -4.2677393, 4.5689974  # official AudioSet fbank statistics
N_MELS, STRIDE, PATCH, DIM = 128, 10, 16, 768
F_DIM, T_DIM = 12, 101  # patch grid of the released checkpoint (128 x 1024 input)
LABELS = 527


class PatchEmbed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, DIM, kernel_size=PATCH, stride=STRIDE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class DeiT(nn.Module):
    """The `v` sub-module of the official ASTModel (distilled DeiT-base, 1-channel patches)."""

    def __init__(self, depth: int = 12, heads: int = 12) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, DIM))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, DIM))
        self.pos_embed = nn.Parameter(torch.zeros(1, 2 + F_DIM * T_DIM, DIM))
        self.blocks = nn.ModuleList(Block(DIM, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(DIM, eps=1e-6)


class ASTModel(nn.Module):
    """Official parameter layout (`v.*`, `mlp_head.*`) plus the fbank front end."""

    def __init__(self, target_length: int = 1024) -> None:
        super().__init__()
        self.target_length = target_length
        self.v = DeiT()
        self.mlp_head = nn.Sequential(nn.LayerNorm(DIM), nn.Linear(DIM, LABELS))  # unused for embeddings

    def patch_pos_embed(self, t_dim: int) -> torch.Tensor:
        """Positional embedding of the patch tokens for `t_dim` time patches (official adaptation)."""
        pos = self.v.pos_embed[:, 2:].transpose(1, 2).reshape(1, DIM, F_DIM, T_DIM)
        if t_dim < T_DIM:
            start = T_DIM // 2 - t_dim // 2
            pos = pos[..., start:start + t_dim]
        elif t_dim > T_DIM:
            pos = nn.functional.interpolate(pos, size=(F_DIM, t_dim), mode="bilinear")
        return pos.reshape(1, DIM, F_DIM * t_dim).transpose(1, 2)

    def fbank(self, audio: torch.Tensor) -> torch.Tensor:
        """Waveforms -> unnormalised Kaldi fbank `(B, frames, 128)`."""
        audio = audio.float()
        audio = audio - audio.mean(dim=1, keepdim=True)
        return kaldi_fbank(audio, 16000, N_MELS, window="hanning", dither=0.0)

    def encode(self, fbank: torch.Tensor) -> torch.Tensor:
        """`(B, target_length, 128)` fbank -> `(B, 768)` mean of the cls and dist tokens."""
        x = (fbank - AUDIOSET_MEAN) / (AUDIOSET_STD * 2)
        tokens = self.v.patch_embed(x.unsqueeze(1).transpose(2, 3))
        t_dim = tokens.shape[1] // F_DIM
        b = tokens.shape[0]
        x = torch.cat([self.v.cls_token.expand(b, -1, -1), self.v.dist_token.expand(b, -1, -1), tokens], dim=1)
        x = x + torch.cat([self.v.pos_embed[:, :2], self.patch_pos_embed(t_dim)], dim=1)
        for block in self.v.blocks:
            x = block(x)
        x = self.v.norm(x)
        return (x[:, 0] + x[:, 1]) / 2

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        fb = self.fbank(audio)
        n = self.target_length
        chunks = max(1, math.ceil(fb.shape[1] / n))
        # zero-pad in the fbank domain before normalising, as the official dataloader does
        fb = nn.functional.pad(fb, (0, 0, 0, chunks * n - fb.shape[1]))
        # chunks are independent clips: run them as one batch
        out = self.encode(fb.reshape(fb.shape[0] * chunks, n, N_MELS))
        return out.reshape(fb.shape[0], chunks, DIM)


@register("ast")
class ASTEncoder(Encoder):
    sample_rate = 16000
    feature_dim = DIM
    frame_hop_s = 10.24
    chunk_frames = True  # one frame per chunk
    default_pooling = "mean"
    needs_checkpoint = True
    weight_file = "audioset_10_10_0.4593.pth"
    front_end = ("model.fbank",)

    def __init__(self, checkpoint=None, *, target_length: int = 1024, **kwargs) -> None:
        super().__init__(checkpoint, **kwargs)
        if target_length < PATCH:
            raise ValueError(f"target_length must be at least {PATCH} frames, got {target_length}")
        self.target_length = target_length
        self.frame_hop_s = target_length * 0.01
        self.model = ASTModel(target_length)
        state = extract_state_dict(load_checkpoint(self.checkpoint, trust_checkpoint=self.trust_checkpoint),
                                   keys=("state_dict", "model"))
        if any(k.startswith("module.") for k in state):  # saved from torch.nn.DataParallel
            state = strip_prefix(state, "module.")
        state = {k: v for k, v in state.items() if not k.startswith(("v.head.", "v.head_dist."))}
        load_strict(self.model, state, self.checkpoint)
        # layers: blocks 0..depth-2 (patch tokens averaged over frequency); the cls/dist embedding is the last
        self.layer_modules = tuple(f"v.blocks.{i}" for i in range(len(self.model.v.blocks) - 1))
        self.to_device()

    def frames(self, audio: torch.Tensor) -> torch.Tensor:
        return self.model(audio)  # kaldi_fbank itself runs in fp32 under autocast

    def block_dims(self) -> tuple[int, ...]:
        return (DIM,) * len(self.layer_modules)

    def block_frames(self, index: int, output: torch.Tensor) -> torch.Tensor:
        return token_frames(output, 2, F_DIM, freq_major=True)

    def join_block_frames(self, index: int, parts: list[torch.Tensor], batch: int) -> torch.Tensor:
        return join_batch_chunks(parts, batch)  # 10.24 s chunks run as one batch

    def config(self) -> dict:
        return {"target_length": self.target_length, "version": 1}
