"""`atst_frame`: ATST-Frame (Li et al., "Self-supervised Audio Teacher-Student Transformer for
Both Clip-level and Frame-level Tasks", 2023).

Official code and weights: https://github.com/Audio-WestlakeU/audiossl, folder
`audiossl/methods/atstframe/` (embedding.py, audio_transformer.py, model.py) and
`audiossl/modules/transformer.py`. This is an independent re-implementation of the inference
path; the released `atstframe_base.ckpt` is a PyTorch Lightning checkpoint whose
'state_dict' holds student and teacher (`model.student.*`, `model.teacher.*`); as the official
`load_model`, we use the teacher encoder (`model.teacher.encoder.*`, loaded strictly).

Front end (embedding.py): 16 kHz, power mel spectrogram (n_fft 1024, Hann window 1024, hop
160, centred with reflect padding, 64 HTK mels 60-7800 Hz, no filter norm), 10*log10 dB with
an 80 dB floor below each clip's maximum (torchaudio AmplitudeToDB(top_db=80)), then MinMax to
[-1, 1] with the fixed constants min -79.6482, max 50.6842.

Model (FrameAST): 64x4 (mel x frame) patches, i.e. one token per 4 mel frames = 40 ms,
linear patch embedding of the patch flattened mel-major, learned absolute position embedding
cut to the sequence length ("cut"), 12 pre-LN ViT blocks (no qkv bias, LayerNorm eps 1e-6).

Frames (get_timestamp_embedding): the shared final LayerNorm (`norm_frame`) applied to the
output of each of the last `n_blocks` blocks (12 by default, as the official), concatenated:
768 * 12 = 9216-d per 40 ms frame. Long inputs: the mel spectrogram of the whole input is cut
into chunks of 1001 frames (10 s, the length of the position table), each encoded on its own,
and the frames concatenated in time, as the official code; frames left over after the last
full 4-frame patch of a chunk are dropped. Mean pooling of these frames equals the official
scene embedding for inputs up to 10 s.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Encoder
from .checkpoint import CheckpointError, extract_state_dict, load_checkpoint, load_strict, strip_prefix
from .frontend import mel_filterbank
from .registry import register
from .vit import Block

MIN_DB, MAX_DB = -79.6482, 50.6842  # official MinMax constants (embedding.py)
CHUNK_FRAMES = 1001  # 10 s of mel frames: the length the position table was trained for
PREFIX = "model.teacher.encoder."


class ATSTFrontEnd(nn.Module):
    """Waveform `(B, samples)` -> normalised dB mel `(B, 64, frames)`."""

    def __init__(self, n_mels: int = 64) -> None:
        super().__init__()
        self.register_buffer("window", torch.hann_window(1024), persistent=False)
        self.register_buffer("fb", mel_filterbank(16000, 1024, n_mels, 60.0, 7800.0, htk=True),
                             persistent=False)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=audio.device.type, enabled=False):  # dB needs fp32
            spec = torch.stft(audio.float(), 1024, 160, 1024, self.window, center=True,
                              pad_mode="reflect", return_complex=True).abs().pow(2)
            mel = torch.matmul(self.fb.T, spec)  # (B, mels, frames)
            db = 10.0 * torch.log10(mel.clamp(min=1e-10))
            db = torch.maximum(db, db.amax(dim=(1, 2), keepdim=True) - 80.0)
            return (db - MIN_DB) / (MAX_DB - MIN_DB) * 2.0 - 1.0


class LinearPatchEmbed(nn.Module):
    """The official PatchEmbed_v2: a Linear over each (mel, frame) patch flattened mel-major."""

    def __init__(self, patch_h: int, patch_w: int, dim: int) -> None:
        super().__init__()
        self.patch_h, self.patch_w = patch_h, patch_w
        self.patch_embed = nn.Linear(patch_h * patch_w, dim)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        b, h, t = mel.shape
        w = t // self.patch_w
        patches = mel[:, :, : w * self.patch_w].reshape(b, h, w, self.patch_w).permute(0, 2, 1, 3)
        return self.patch_embed(patches.reshape(b, w, h * self.patch_w))


class FrameAST(nn.Module):
    """Teacher encoder of ATST-Frame; parameter names as `FrameAST` in audio_transformer.py."""

    def __init__(self, dim: int, depth: int, heads: int, n_positions: int, patch_h: int = 64,
                 patch_w: int = 4, nprompt: int = 0) -> None:
        super().__init__()
        self.patch_embed = LinearPatchEmbed(patch_h, patch_w, dim)
        self.mask_embed = nn.Parameter(torch.zeros(1, 1, dim))  # training only; kept for strict load
        self.nprompt = nprompt
        if nprompt > 0:
            self.prompt_embed = nn.Parameter(torch.zeros(1, nprompt, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n_positions, dim))
        self.blocks = nn.ModuleList([Block(dim, heads, qkv_bias=False) for _ in range(depth)])
        self.norm_frame = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, mel: torch.Tensor, n_blocks: int) -> torch.Tensor:
        """`(B, 64, frames)` -> `(B, frames // 4, dim * n_blocks)`."""
        x = self.patch_embed(mel)
        x = x + self.pos_embed[:, 1: x.shape[1] + 1]  # slot 0 is an unused cls position
        if self.nprompt > 0:
            x = torch.cat([self.prompt_embed.expand(x.shape[0], -1, -1), x], dim=1)
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i >= len(self.blocks) - n_blocks:
                outputs.append(self.norm_frame(x)[:, self.nprompt:])
        return torch.cat(outputs, dim=-1)


class ATSTFrameModel(nn.Module):
    def __init__(self, encoder: FrameAST, n_blocks: int) -> None:
        super().__init__()
        self.frontend = ATSTFrontEnd()
        self.encoder = encoder
        self.n_blocks = n_blocks

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        mel = self.frontend(audio)  # whole input first, so the 80 dB floor is per clip
        patch_w = self.encoder.patch_embed.patch_w
        chunks = []
        for start in range(0, mel.shape[-1], CHUNK_FRAMES):
            chunk = mel[..., start: start + CHUNK_FRAMES]
            if chunk.shape[-1] >= patch_w:  # a shorter tail yields no patch (official: no frames)
                chunks.append(self.encoder(chunk, self.n_blocks))
        return torch.cat(chunks, dim=1)


@register("atst_frame")
class ATSTFrameEncoder(Encoder):
    sample_rate = 16000
    feature_dim = 768 * 12
    frame_hop_s = 0.04  # 4 mel frames of 10 ms per token
    default_pooling = "mean"
    front_end = ("model.frontend",)

    def __init__(self, checkpoint=None, *, n_blocks: int | None = None, **kwargs) -> None:
        super().__init__(checkpoint, **kwargs)
        # A Lightning checkpoint: 'state_dict' plus epoch/global_step/loops/callbacks/
        # optimizer_states/hyper_parameters; all plain containers, numbers, strings and tensors,
        # which the weights-only loader accepts without extra globals.
        obj = load_checkpoint(self.checkpoint, trust_checkpoint=self.trust_checkpoint)
        state = strip_prefix(extract_state_dict(obj, keys=("state_dict",)), PREFIX)
        if "pos_embed" not in state:
            raise CheckpointError(f"{self.checkpoint}: no ATST-Frame teacher encoder found "
                                  f"(expected keys starting with '{PREFIX}', e.g. '{PREFIX}pos_embed')")
        hp = obj.get("hyper_parameters", {}) if isinstance(obj, dict) else {}
        hp = hp if isinstance(hp, dict) else {}
        patch_h, patch_w = int(hp.get("patch_h", 64)), int(hp.get("patch_w", 4))
        if patch_h != 64 or hp.get("pos_type", "cut") != "cut":
            raise CheckpointError(f"{self.checkpoint}: only the released ATST-Frame layout (patch_h=64 "
                                  f"over 64 mels, pos_type='cut') is supported; got patch_h={patch_h}, "
                                  f"pos_type={hp.get('pos_type')!r}")
        dim = int(state["pos_embed"].shape[-1])
        depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
        n_blocks = depth if n_blocks is None else n_blocks  # official: all 12 blocks
        if not 1 <= n_blocks <= depth:
            raise ValueError(f"n_blocks must be in 1..{depth}, got {n_blocks}")
        nprompt = int(state["prompt_embed"].shape[1]) if "prompt_embed" in state else 0
        encoder = FrameAST(dim, depth, heads=dim // 64, n_positions=int(state["pos_embed"].shape[1]),
                           patch_h=patch_h, patch_w=patch_w, nprompt=nprompt)
        load_strict(encoder, state, f"{self.checkpoint} (keys below '{PREFIX}')")
        self.arch = {384: "small", 768: "base"}.get(dim, f"dim{dim}")
        self.n_blocks = n_blocks
        self.feature_dim = dim * n_blocks
        self.model = ATSTFrameModel(encoder, n_blocks)
        # layers: blocks 0..depth-2 through the shared frame norm (as the embedding's own parts); the
        # embedding (the last n_blocks blocks concatenated) is layer depth-1
        self.layer_modules = tuple(f"encoder.blocks.{i}" for i in range(depth - 1))
        self.to_device()

    def frames(self, audio: torch.Tensor) -> torch.Tensor:
        return self.model(audio)

    def block_dims(self) -> tuple[int, ...]:
        return (self.model.encoder.pos_embed.shape[-1],) * len(self.layer_modules)

    def block_frames(self, index: int, output: torch.Tensor) -> torch.Tensor:
        encoder = self.model.encoder  # one frequency patch (64 mels): tokens are frames already
        return encoder.norm_frame(output)[:, encoder.nprompt:].float()

    def config(self) -> dict:
        return {"arch": self.arch, "n_blocks": self.n_blocks, "chunk_frames": CHUNK_FRAMES, "version": 1}
