"""`m2d`: Masked Modeling Duo ViT encoder (Niizumi et al., ICASSP 2023 / TASLP 2024).

Re-implements the inference path of the official runtime, https://github.com/nttcslab/m2d
(`examples/portable_m2d.py`, `m2d/runtime_audio.py`), in plain torch:

- Configuration comes from the weight file's parent folder name, as the official loader parses
  it: `m2d_vit_base-80x608p16x16-220930-mr7/checkpoint-300.pth` -> input 80 mels x 608 frames,
  16x16 patches, 16 kHz ("...p32k" selects the 32 kHz front end). `input_size`, `patch_size`
  and `sr` constructor kwargs override it.
- Front end (nnAudio MelSpectrogram in the official code): periodic Hann STFT, n_fft 400,
  hop 160, centre/reflect padding, power 2, 80 Slaney-scale, Slaney-normalised mel bands over
  50-8000 Hz; `log(x + float32 eps)`; normalised with the checkpoint's `norm_stats`
  (the 2022 dataset statistics mean -7.1, std 4.2 when the file predates that field).
- Checkpoint: `ckpt['model']` holds the whole pre-training model; like the official loader we
  keep only the online encoder (cls_token, pos_embed, patch_embed, blocks.N, norm, norm_stats)
  and drop the target encoder (target_blocks/target_norm), decoder, mask token and any other
  non-encoder weight. Training files also pickle `args` (argparse.Namespace), which we allow.
- Features: the spectrogram is cut into chunks of the model's frame length (608 frames here),
  the last one zero-padded to a whole patch (after normalisation, like the official code) and
  run with a correspondingly shortened positional embedding. Per 16-frame time step the
  embeddings of all frequency patches are concatenated (768 x 5 = 3840 for 80 mels), so
  frames are 0.16 s apart; the clip embedding is their time mean (official scene embedding).
"""
from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import torch
from torch import nn

from .base import Encoder, token_frames
from .checkpoint import CheckpointError, extract_state_dict, load_checkpoint, load_strict
from .frontend import LogMelSpectrogram, mel_filterbank
from .registry import register
from .vit import Block

log = logging.getLogger(__name__)

DEFAULT_NORM_STATS = (-7.1, 4.2)  # official statistics for the 2022 releases without `norm_stats`
# front-end settings per sampling rate, as in the official `get_to_melspec`
FRONT_ENDS = {
    "16k": dict(sample_rate=16000, n_fft=400, hop=160, n_mels=80, f_min=50.0, f_max=8000.0),
    "32k": dict(sample_rate=32000, n_fft=800, hop=320, n_mels=80, f_min=50.0, f_max=16000.0),
}
# sub-models of the pre-training checkpoint the encoder does not use
NON_ENCODER_PREFIXES = ("target_blocks.", "target_norm.", "decoder_", "mask_token", "offline_predictor.",
                        "audio_proj.", "text_proj.", "text_encoder.", "module.head.")


def parse_config_name(name: str) -> tuple[list[int], list[int], str]:
    """'m2d_vit_base-80x608p16x16[p16k][-...]' -> ([80, 608], [16, 16], '16k')."""
    try:
        fields = name.split("-")[1].split("p")
        input_size = [int(v) for v in fields[0].split("x")]
        patch_size = [int(v) for v in fields[1].split("x")]
        sr = fields[2] if len(fields) > 2 else "16k"
    except (IndexError, ValueError) as err:
        raise ValueError(f"cannot read an M2D configuration from {name!r}") from err
    if len(input_size) != 2 or len(patch_size) != 2:
        raise ValueError(f"cannot read an M2D configuration from {name!r}")
    return input_size, patch_size, sr


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: list[int], dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, dim, kernel_size=tuple(patch_size), stride=tuple(patch_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, F*T patches, D), frequency-major


class M2DViT(nn.Module):
    """Online encoder of M2D, with the official state-dict names, plus its front end."""

    def __init__(self, input_size: list[int], patch_size: list[int], sr: str, dim: int = 768,
                 depth: int = 12, heads: int = 12) -> None:
        super().__init__()
        self.input_size, self.patch_size = list(input_size), list(patch_size)
        self.grid = (input_size[0] // patch_size[0], input_size[1] // patch_size[1])
        self.patch_embed = PatchEmbed(patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], dim))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.norm_stats = nn.Parameter(torch.tensor(DEFAULT_NORM_STATS), requires_grad=False)
        fe = FRONT_ENDS[sr]
        # nnAudio defaults: periodic Hann, centre + reflect padding, Slaney mel scale and norm
        self.melspec = LogMelSpectrogram(fe["sample_rate"], fe["n_fft"], fe["hop"], fe["n_mels"],
                                         f_min=fe["f_min"], f_max=fe["f_max"], htk=False,
                                         eps=torch.finfo(torch.float32).eps)
        self.melspec.fb = mel_filterbank(fe["sample_rate"], fe["n_fft"], fe["n_mels"], fe["f_min"],
                                         fe["f_max"], htk=False, slaney_norm=True)

    def log_mel(self, audio: torch.Tensor) -> torch.Tensor:
        """Waveforms -> normalised log-mel `(B, 1, mels, frames)`."""
        with torch.autocast(device_type=audio.device.type, enabled=False):  # power spectra overflow fp16
            x = self.melspec(audio.float()).transpose(1, 2)
            return ((x - self.norm_stats[0]) / self.norm_stats[1]).unsqueeze(1)

    def encode_chunk(self, x: torch.Tensor) -> torch.Tensor:
        """`(B, 1, mels, <=unit frames)` -> `(B, time patches, F*D)`."""
        tokens = self.patch_embed(x)
        pos = self.pos_embed[:, 1:]
        t = tokens.shape[1] // self.grid[0]
        if t < self.grid[1]:  # short chunk: keep the positional embedding of its first t columns
            pos = pos.reshape(1, self.grid[0], self.grid[1], -1)[:, :, :t].reshape(1, self.grid[0] * t, -1)
        tokens = tokens + pos
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls, tokens], dim=1)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)[:, 1:]
        b, _, d = x.shape
        return x.reshape(b, self.grid[0], t, d).permute(0, 2, 1, 3).reshape(b, t, self.grid[0] * d)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        x = self.log_mel(audio)
        unit, patch_t = self.input_size[1], self.patch_size[1]
        n_frames = x.shape[-1]
        # zero-pad (normalised domain) so the last chunk is a whole number of patches
        pad = (patch_t - n_frames % unit % patch_t) % patch_t
        x = nn.functional.pad(x, (0, pad))
        chunks = math.ceil(n_frames / unit)
        return torch.cat([self.encode_chunk(x[..., i * unit:(i + 1) * unit]) for i in range(chunks)], dim=1)


def encoder_state(obj: object, model: nn.Module, source: Path) -> dict:
    """The official checkpoint -> the online encoder's state dict (official key handling)."""
    state = extract_state_dict(obj, keys=("model",))
    if any(k.startswith("backbone.") for k in state):  # weights saved from a RuntimeM2D
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    state = {k.replace("module.ar.runtime.backbone.", ""): v for k, v in state.items()}  # EVAR fine-tunes
    state.setdefault("norm_stats", torch.tensor(DEFAULT_NORM_STATS))
    own = set(model.state_dict())
    dropped = [k for k in state if k not in own]
    unknown = [k for k in dropped if not k.startswith(NON_ENCODER_PREFIXES)]
    if unknown:
        # the official loader drops every non-encoder weight; say so when it is not a known part
        log.warning("%s: ignoring %d weights that are not part of the M2D encoder, e.g. %s",
                    source, len(unknown), ", ".join(unknown[:5]))
    if not any(k.startswith("blocks.") for k in state):
        raise CheckpointError(f"{source}: no M2D encoder weights ('blocks.N...') found in the checkpoint")
    return {k: v for k, v in state.items() if k in own}


@register("m2d")
class M2DEncoder(Encoder):
    sample_rate = 16000
    feature_dim = 3840
    frame_hop_s = 0.16
    default_pooling = "mean"
    needs_checkpoint = True
    front_end = ("model.log_mel",)

    def __init__(self, checkpoint=None, *, input_size: list[int] | None = None,
                 patch_size: list[int] | None = None, sr: str | None = None, **kwargs) -> None:
        super().__init__(checkpoint, **kwargs)
        path = self.checkpoint
        if input_size is None or patch_size is None:
            parsed = None
            for name in (path.parent.name, path.stem):  # official order: folder, then file stem
                try:
                    parsed = parse_config_name(name)
                    break
                except ValueError:
                    continue
            if parsed is None:
                raise ValueError(
                    f"{path}: cannot read the M2D configuration from the folder name {path.parent.name!r} "
                    "(expected e.g. 'm2d_vit_base-80x608p16x16-220930-mr7'); keep the official folder "
                    "name or pass input_size=[80, 608], patch_size=[16, 16]")
            input_size = input_size or parsed[0]
            patch_size = patch_size or parsed[1]
            sr = sr or parsed[2]
        sr = sr or "16k"
        if sr not in FRONT_ENDS:
            raise ValueError(f"M2D sampling rate must be one of {sorted(FRONT_ENDS)}, got {sr!r}")
        self.input_size, self.patch_size, self.sr = list(input_size), list(patch_size), sr
        self.sample_rate = FRONT_ENDS[sr]["sample_rate"]
        self.frame_hop_s = patch_size[1] * FRONT_ENDS[sr]["hop"] / self.sample_rate
        # a patch covers centred STFT frames 16 j .. 16 j + 15
        self.frame_offset_s = (patch_size[1] - 1) / 2 * FRONT_ENDS[sr]["hop"] / self.sample_rate
        self.model = M2DViT(self.input_size, self.patch_size, sr)
        self.feature_dim = self.model.grid[0] * 768
        obj = load_checkpoint(path, allowed_globals=(argparse.Namespace,),
                              trust_checkpoint=self.trust_checkpoint)
        load_strict(self.model, encoder_state(obj, self.model, path), path)
        # layers: blocks 0..depth-2 (tokens averaged over frequency); the embedding is layer depth-1
        self.layer_modules = tuple(f"blocks.{i}" for i in range(len(self.model.blocks) - 1))
        self.to_device()

    def frames(self, audio: torch.Tensor) -> torch.Tensor:
        return self.model(audio)

    def block_dims(self) -> tuple[int, ...]:
        return (self.model.cls_token.shape[-1],) * len(self.layer_modules)

    def block_frames(self, index: int, output: torch.Tensor) -> torch.Tensor:
        return token_frames(output, 1, self.model.grid[0], freq_major=True)

    def config(self) -> dict:
        return {"input_size": "x".join(map(str, self.input_size)),
                "patch_size": "x".join(map(str, self.patch_size)), "sr": self.sr, "version": 1}
