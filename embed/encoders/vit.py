"""Transformer building blocks with timm's parameter names, shared by the ViT encoders
(AST, M2D, ATST-Frame), so their official state dicts load key for key.

Under bf16 autocast on a CPU with oneDNN bf16, a block runs a fused path instead: the residual
stream in bf16, oneDNN linear kernels with the GELU and the residual additions fused in, weights
cast and packed once. Autocast's own path re-casts the fp32 residual stream at every linear layer
and runs GELU and the additions as separate passes over memory; on 2 CPU cores this made M2D 1.25-1.34x
faster (docs/speed.md, "Where the time goes"). fp32 and CUDA runs never take it."""
from __future__ import annotations

import functools

import torch
from torch import nn

# names the fused CPU bf16 kernels in cache keys: bump when their numerics change
FUSED_CPU_BF16 = "onednn-fused-v1"


@functools.cache  # a property of the torch build and the CPU; asked on every block call
def fused_cpu_bf16_available() -> bool:
    """oneDNN is built in and has bf16 kernels for this CPU (native bf16, or AVX-512 emulating it)."""
    try:
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without the oneDNN ops
        return False


def _fused_cpu_bf16_on(x: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16 and fused_cpu_bf16_available())


class _PackedWeights:
    """bf16 copies of a block's weights, the linear ones in oneDNN's packed layout. Kept outside the
    module's parameters (state dicts unchanged); remade when a weight changes; a copied or pickled
    block starts without them (packed oneDNN tensors have no storage to copy)."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.weights: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def __deepcopy__(self, memo) -> "_PackedWeights":
        return _PackedWeights()

    def __getstate__(self) -> dict:
        return {"key": None, "weights": {}}

    def get(self, block: "Block", rows: int) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        params = list(block.parameters())
        key = tuple((p.data_ptr(), p._version) for p in params)
        if key != self.key:
            def bf16(t: torch.Tensor | None) -> torch.Tensor | None:
                return None if t is None else t.detach().to(torch.bfloat16)

            def packed(lin: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
                return torch.ops.mkldnn._reorder_linear_weight(bf16(lin.weight), rows), bf16(lin.bias)

            self.weights = {"qkv": packed(block.attn.qkv), "proj": packed(block.attn.proj),
                            "fc1": packed(block.mlp.fc1), "fc2": packed(block.mlp.fc2),
                            "norm1": (bf16(block.norm1.weight), bf16(block.norm1.bias)),
                            "norm2": (bf16(block.norm2.weight), bf16(block.norm2.bias))}
            self.key = key
        return self.weights


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        x = nn.functional.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)

        self._packed = _PackedWeights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _fused_cpu_bf16_on(x):
            return self._forward_fused_cpu_bf16(x)
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))

    def _forward_fused_cpu_bf16(self, x: torch.Tensor) -> torch.Tensor:
        """The same block in bf16 with oneDNN's fused kernels (see the module docstring)."""
        linear = torch.ops.mkldnn._linear_pointwise
        b, n, d = x.shape
        heads = self.attn.heads
        w = self._packed.get(self, b * n)
        with torch.autocast(device_type="cpu", enabled=False):
            x = x.to(torch.bfloat16)
            h = nn.functional.layer_norm(x, (d,), *w["norm1"], self.norm1.eps)
            qkv = linear(h, *w["qkv"], "none", [], "").reshape(b, n, 3, heads, d // heads)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)
            # explicit attention: for the short sequences here it beat the flash kernel on CPU
            attn = torch.softmax((q * (d // heads) ** -0.5) @ k.transpose(-1, -2), dim=-1) @ v
            x = linear.binary(attn.transpose(1, 2).reshape(b, n, d), x, *w["proj"], "add")
            h = nn.functional.layer_norm(x, (d,), *w["norm2"], self.norm2.eps)
            h = linear(h, *w["fc1"], "gelu", [], "none")
            return linear.binary(h, x, *w["fc2"], "add")
