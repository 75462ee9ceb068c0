"""`beats`: BEATs audio transformer (Chen et al. 2022, "BEATs: Audio Pre-Training with
Acoustic Tokenizers").

Official code and weights: https://github.com/microsoft/unilm/tree/master/beats
(BEATs.py, backbone.py, modules.py). This is an independent re-implementation of the
inference path with the same parameter names, so an official file such as
`BEATs_iter3_plus_AS2M.pt` ({'cfg': dict, 'model': state_dict}, fine-tuned files also carry
'label_dict') loads strictly.

Front end (as `BEATs.preprocess`): 16 kHz mono, waveform * 2**15, Kaldi fbank with 128 bins,
25 ms windows every 10 ms, all other options at torchaudio's Kaldi defaults (povey window,
pre-emphasis 0.97, DC removal, no dither, snip edges, 20 Hz..Nyquist), then
(fbank - 15.41663) / (2 * 6.55582).

Model: 16x16 conv patches over (time, mel) -> LayerNorm(512) -> Linear 512->768 -> conv
positional embedding (weight-normed grouped Conv1d, kernel 128) -> 12 post-LN ("deep norm")
transformer layers with a shared T5-style relative position bias gated per layer (gru_rel_pos).
Patches are flattened time-major (8 frequency patches per 16-frame time step), exactly as the
official `extract_features`, which returns (B, T'*8, 768).

Frames: we average the 8 frequency-patch tokens of each time step, giving one 768-d vector per
160 ms (frame_hop_s = 0.16). Pooling over all tokens then equals the usual mean over the
official token sequence. Inputs of any length are processed whole, like the official code (it
neither crops nor chunks; the relative position bias extends to any length); the fbank frames
beyond the last full 16-frame patch are dropped by the strided conv, as in the official code.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import Encoder, token_frames
from .checkpoint import CheckpointError, extract_state_dict, load_checkpoint, load_strict
from .kaldi_fbank import kaldi_fbank
from .registry import register

FBANK_MEAN = 15.41663
FBANK_STD = 6.55582

# BEATsConfig defaults (official BEATs.py); a checkpoint's 'cfg' overrides them.
DEFAULT_CFG: dict = {
    "input_patch_size": -1, "embed_dim": 512, "conv_bias": False,
    "encoder_layers": 12, "encoder_embed_dim": 768, "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12, "activation_fn": "gelu", "layer_norm_first": False,
    "deep_norm": False, "conv_pos": 128, "conv_pos_groups": 16,
    "relative_position_embedding": False, "num_buckets": 320, "max_distance": 1280,
    "gru_rel_pos": False, "finetuned_model": False, "predictor_class": 527,
}


def _activation(name: str):
    if name == "gelu":  # fairseq computes gelu in fp32
        return lambda x: F.gelu(x.float()).type_as(x)
    if name == "relu":
        return F.relu
    raise CheckpointError(f"BEATs activation_fn {name!r} is not supported")


class WeightNormConv1d(nn.Module):
    """Conv1d whose weight is stored as weight_g * weight_v / ||weight_v|| (norm over all dims
    but `dim`), the `torch.nn.utils.weight_norm(dim=2)` layout of the official state dict."""

    def __init__(self, channels: int, kernel: int, groups: int, dim: int = 2) -> None:
        super().__init__()
        self.groups, self.padding, self.dim = groups, kernel // 2, dim
        g_shape = [1, 1, 1]
        g_shape[dim] = kernel
        self.weight_g = nn.Parameter(torch.ones(g_shape))
        self.weight_v = nn.Parameter(torch.randn(channels, channels // groups, kernel) * 0.02)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        other = [d for d in range(3) if d != self.dim]
        v = self.weight_v
        weight = v * (self.weight_g / v.norm(dim=other, keepdim=True))
        return F.conv1d(x, weight.to(x.dtype), self.bias.to(x.dtype), padding=self.padding,
                        groups=self.groups)


def relative_position_buckets(length: int, num_buckets: int, max_distance: int,
                              device: torch.device) -> torch.Tensor:
    """Bidirectional T5 bucketing of key-minus-query offsets, `(length, length)` long."""
    pos = torch.arange(length, device=device)
    rel = pos[None, :] - pos[:, None]
    half = num_buckets // 2
    buckets = (rel > 0).long() * half
    rel = rel.abs()
    max_exact = half // 2
    # log-spaced buckets beyond max_exact; clamp(min=1) only avoids log(0) in unused entries
    far = max_exact + (torch.log(rel.clamp(min=1).float() / max_exact)
                       / math.log(max_distance / max_exact) * (half - max_exact)).long()
    far = far.clamp(max=half - 1)
    return buckets + torch.where(rel < max_exact, rel, far)


class MultiheadAttention(nn.Module):
    def __init__(self, dim: int, heads: int, rel_bias: nn.Embedding | None, gru_rel_pos: bool) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        if rel_bias is not None:
            # one embedding shared by every layer (official code re-points layers 1.. to layer 0's)
            self.relative_attention_bias = rel_bias
        self.gru_rel_pos = gru_rel_pos
        if gru_rel_pos:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, heads, 1, 1))

    def forward(self, x: torch.Tensor, position_bias: torch.Tensor | None) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        mask = None
        if position_bias is not None:  # (heads, n, n)
            mask = position_bias[None].to(q.dtype)
            if self.gru_rel_pos:
                # per-query gate from the unscaled query, as the official gated relative bias
                gates = torch.sigmoid(self.grep_linear(q).view(b, self.heads, n, 2, 4).sum(-1))
                gate_a, gate_b = gates.chunk(2, dim=-1)
                mask = (gate_a * (gate_b * self.grep_a - 1.0) + 2.0).to(q.dtype) * mask
        # the official softmax(q k^T / sqrt(d) + bias), written with max-subtraction and a
        # 1/32 rescale for fp16 safety, is the same function; SDPA is numerically stable too
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: dict, rel_bias: nn.Embedding | None) -> None:
        super().__init__()
        dim = cfg["encoder_embed_dim"]
        if cfg["activation_fn"] == "glu":
            raise CheckpointError("BEATs activation_fn 'glu' is not supported")
        self.self_attn = MultiheadAttention(dim, cfg["encoder_attention_heads"], rel_bias,
                                            bool(cfg["gru_rel_pos"]))
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, cfg["encoder_ffn_embed_dim"])
        self.fc2 = nn.Linear(cfg["encoder_ffn_embed_dim"], dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.act = _activation(cfg["activation_fn"])
        self.pre_norm = bool(cfg["layer_norm_first"])
        self.alpha = math.pow(2 * cfg["encoder_layers"], 0.25) if cfg["deep_norm"] else 1.0

    def forward(self, x: torch.Tensor, position_bias: torch.Tensor | None) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.self_attn(self.self_attn_layer_norm(x), position_bias)
            return x + self.fc2(self.act(self.fc1(self.final_layer_norm(x))))
        x = self.self_attn_layer_norm(x * self.alpha + self.self_attn(x, position_bias))
        return self.final_layer_norm(x * self.alpha + self.fc2(self.act(self.fc1(x))))


class TransformerEncoder(nn.Module):
    def __init__(self, cfg: dict) -> None:
        super().__init__()
        dim = cfg["encoder_embed_dim"]
        self.pos_conv = nn.ModuleList([WeightNormConv1d(dim, cfg["conv_pos"], cfg["conv_pos_groups"])])
        self.pos_conv_trim = 1 if cfg["conv_pos"] % 2 == 0 else 0  # the official SamePad
        self.relative = bool(cfg["relative_position_embedding"])
        self.num_buckets, self.max_distance = cfg["num_buckets"], cfg["max_distance"]
        rel_bias = nn.Embedding(cfg["num_buckets"], cfg["encoder_attention_heads"]) if self.relative else None
        self.layers = nn.ModuleList([EncoderLayer(cfg, rel_bias) for _ in range(cfg["encoder_layers"])])
        self.rel_bias = [rel_bias]  # plain list: not registered a second time
        self.layer_norm_first = bool(cfg["layer_norm_first"])
        self.layer_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.pos_conv[0](x.transpose(1, 2))
        if self.pos_conv_trim:
            conv = conv[..., :-self.pos_conv_trim]
        x = x + F.gelu(conv).transpose(1, 2)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        bias = None
        if self.relative:
            buckets = relative_position_buckets(x.shape[1], self.num_buckets, self.max_distance, x.device)
            bias = self.rel_bias[0](buckets).permute(2, 0, 1)  # (heads, n, n), computed once
        for layer in self.layers:
            x = layer(x, bias)
        return self.layer_norm(x) if self.layer_norm_first else x


class BEATsModel(nn.Module):
    """Fbank front end + BEATs encoder; `forward` gives `(B, T', 768)` time-step embeddings."""

    def __init__(self, cfg: dict) -> None:
        super().__init__()
        patch = cfg["input_patch_size"]
        if patch <= 0:
            raise CheckpointError(f"BEATs cfg input_patch_size={patch} is not a valid patch size")
        self.patch = patch
        self.patch_embedding = nn.Conv2d(1, cfg["embed_dim"], kernel_size=patch, stride=patch,
                                         bias=bool(cfg["conv_bias"]))
        self.layer_norm = nn.LayerNorm(cfg["embed_dim"])
        if cfg["embed_dim"] != cfg["encoder_embed_dim"]:
            self.post_extract_proj = nn.Linear(cfg["embed_dim"], cfg["encoder_embed_dim"])
        else:
            self.post_extract_proj = None
        self.encoder = TransformerEncoder(cfg)
        if cfg["finetuned_model"]:
            # AudioSet head of fine-tuned files: loaded so the file matches strictly, never used
            self.predictor = nn.Linear(cfg["encoder_embed_dim"], cfg["predictor_class"])

    def fbank(self, audio: torch.Tensor) -> torch.Tensor:
        feats = kaldi_fbank(audio.float() * 2 ** 15, 16000, 128, frame_length_ms=25.0, frame_shift_ms=10.0,
                            window="povey")
        return (feats - FBANK_MEAN) / (2 * FBANK_STD)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        feats = self.fbank(audio)
        if feats.shape[1] < self.patch:
            raise ValueError(f"BEATs needs at least {self.patch} fbank frames "
                             f"(~{(self.patch * 10 + 15) / 1000:.3f} s); got {audio.shape[1]} samples")
        x = self.patch_embedding(feats.unsqueeze(1).to(self.patch_embedding.weight.dtype))
        b, c, t, f = x.shape  # time steps x frequency patches
        x = self.layer_norm(x.flatten(2).transpose(1, 2))  # (B, t*f, C), time-major like official
        if self.post_extract_proj is not None:
            x = self.post_extract_proj(x)
        x = self.encoder(x)
        return x.view(b, t, f, -1).mean(dim=2)


@register("beats")
class BEATsEncoder(Encoder):
    sample_rate = 16000
    feature_dim = 768
    frame_hop_s = 0.16  # one 16-frame fbank patch row = 160 ms
    default_pooling = "mean"
    front_end = ("model.fbank",)

    def __init__(self, checkpoint=None, **kwargs) -> None:
        super().__init__(checkpoint, **kwargs)
        # the official file is {'cfg': dict, 'model': state_dict} (+ 'label_dict' when fine-tuned),
        # all plain types: the weights-only loader needs no extra globals
        obj = load_checkpoint(self.checkpoint, trust_checkpoint=self.trust_checkpoint)
        if not isinstance(obj, dict) or "cfg" not in obj or "model" not in obj:
            keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
            raise CheckpointError(f"{self.checkpoint}: not an official BEATs checkpoint "
                                  f"(expected 'cfg' and 'model' entries, found {keys})")
        cfg_in = obj["cfg"]
        if not isinstance(cfg_in, dict):  # tolerate a pickled BEATsConfig when trusted
            cfg_in = dict(vars(cfg_in))
        self.cfg = {**DEFAULT_CFG, **{k: v for k, v in cfg_in.items() if k in DEFAULT_CFG}}
        self.feature_dim = int(self.cfg["encoder_embed_dim"])
        self.model = BEATsModel(self.cfg)
        load_strict(self.model, extract_state_dict(obj["model"]), self.checkpoint)
        # layers: encoder layers 0..depth-2 (tokens averaged over frequency); the embedding is the last
        self.layer_modules = tuple(f"encoder.layers.{i}" for i in range(len(self.model.encoder.layers) - 1))
        self.to_device()

    def frames(self, audio: torch.Tensor) -> torch.Tensor:
        return self.model(audio)

    def block_dims(self) -> tuple[int, ...]:
        return (self.feature_dim,) * len(self.layer_modules)

    def block_frames(self, index: int, output: torch.Tensor) -> torch.Tensor:
        return token_frames(output, 0, 128 // self.model.patch, freq_major=False)  # time-major tokens

    def config(self) -> dict:
        return {"tokens": "mean_over_freq_patches", "layer": "last",
                "finetuned": bool(self.cfg["finetuned_model"]), "version": 2}
