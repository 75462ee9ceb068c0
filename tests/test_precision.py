"""Precision: the CPU bf16 default, weights cast once for autocast, fp16 numerics on CPU autocast."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from embed.encoders import Encoder, available, create, get_class
from embed.encoders import base, vit


class TinyEncoder(Encoder):
    """A fp32 convolutional front end (autocast off, as the real front ends) and a linear network."""

    sample_rate = 1000
    feature_dim = 8
    needs_checkpoint = False

    def __init__(self, **kwargs) -> None:
        super().__init__(None, **kwargs)
        torch.manual_seed(0)
        self.model = torch.nn.ModuleDict({"front": torch.nn.Conv1d(1, 4, 16, stride=8),
                                          "net": torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.GELU(),
                                                                     torch.nn.Linear(32, 8))})
        self.to_device()

    def frames(self, audio: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=audio.device.type, enabled=False):
            x = self.model["front"](audio[:, None].float()).transpose(1, 2)
        return self.model["net"](x)


@pytest.fixture
def clips() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((3, 400)).astype(np.float32)


@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_weights_cast_once_with_autocast_values(clips, precision, dtype) -> None:
    enc = TinyEncoder(precision=precision)
    first = enc.embed(clips)  # plain autocast: layers cast their weights on the fly
    assert enc.model["net"][0].weight.dtype == dtype and enc.model["net"][2].bias.dtype == dtype
    assert enc.model["front"].weight.dtype == torch.float32  # ran with autocast off: untouched
    np.testing.assert_array_equal(enc.embed(clips), first)
    # switching precision restores the original fp32 weights exactly
    enc.precision = "fp32"
    reference = TinyEncoder(precision="fp32").embed(clips)
    np.testing.assert_array_equal(enc.embed(clips), reference)
    assert enc.model["net"][0].weight.dtype == torch.float32
    assert np.abs(first - reference).max() > 0  # low precision really ran


def test_fp16_on_cpu_autocast_matches_fp32(clips) -> None:
    """The CUDA default (fp16 autocast) runs the same code on a CPU; its numerics stay close."""
    fp32 = TinyEncoder(precision="fp32").embed(clips)
    fp16 = TinyEncoder(precision="fp16").embed(clips)
    cos = (fp16 * fp32).sum(1) / np.linalg.norm(fp16, axis=1) / np.linalg.norm(fp32, axis=1)
    assert cos.min() > 0.999


def test_to_device_batch_is_float32_2d(clips) -> None:
    enc = TinyEncoder()
    x = enc.to_device_batch(clips[0].astype(np.float64))
    assert x.dtype == torch.float32 and x.shape == (1, 400) and x.device.type == "cpu"


def test_default_precision_follows_native_bf16_and_the_encoder(monkeypatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert base.resolve_precision(None, cuda, bf16_safe=False) == "fp16"
    assert base.resolve_precision("fp32", cpu, bf16_safe=True) == "fp32"
    monkeypatch.setattr(base, "native_bf16", lambda: True)
    assert base.resolve_precision(None, cpu, bf16_safe=True) == "bf16"
    assert base.resolve_precision(None, cpu, bf16_safe=False) == "fp32"
    monkeypatch.setattr(base, "native_bf16", lambda: False)
    assert base.resolve_precision(None, cpu, bf16_safe=True) == "fp32"
    with pytest.raises(ValueError, match="precision"):
        base.resolve_precision("int8", cpu)


def test_native_bf16_reads_cpu_flags_and_the_switch(monkeypatch) -> None:
    base.native_bf16.cache_clear()
    monkeypatch.setenv("HEARTPROBE_CPU_BF16", "0")
    assert base.native_bf16() is False
    base.native_bf16.cache_clear()
    monkeypatch.setenv("HEARTPROBE_CPU_BF16", "1")
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        flags = ""
    assert base.native_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)
    base.native_bf16.cache_clear()


def test_precision_is_in_the_cache_key(monkeypatch) -> None:
    monkeypatch.setattr(base, "native_bf16", lambda: True)
    safe = [n for n in available() if get_class(n).bf16_safe and not get_class(n).needs_checkpoint]
    for name in safe:
        assert create(name).describe()["precision"] == "bf16"
        assert create(name, precision="fp32").describe()["precision"] == "fp32"


@pytest.mark.skipif(not vit.fused_cpu_bf16_available(), reason="this CPU has no oneDNN bf16")
def test_fused_cpu_bf16_block_matches_autocast_and_leaves_fp32_alone() -> None:
    torch.manual_seed(0)
    for qkv_bias in (True, False):  # ATST-Frame's blocks have no qkv bias
        block = vit.Block(64, 4, qkv_bias=qkv_bias).eval()
        for p in block.parameters():
            torch.nn.init.normal_(p, std=0.1)
        x = torch.randn(3, 21, 64)
        with torch.inference_mode():
            fp32 = block(x)
            unfused = x + block.attn(block.norm1(x))
            unfused = unfused + block.mlp(block.norm2(unfused))
            assert torch.equal(fp32, unfused)  # fp32 never takes the fused path
            with torch.autocast("cpu", dtype=torch.bfloat16):
                fused = block(x)
                again = block(x[:1])  # another batch size reuses the packed weights
        assert fused.dtype == torch.bfloat16
        cos = torch.nn.functional.cosine_similarity(fused.float().flatten(1), fp32.flatten(1))
        assert cos.min() > 0.999
        assert torch.allclose(again.float(), fused[:1].float(), atol=0.05, rtol=0.02)
        # new weights are repacked, not served stale
        with torch.no_grad():
            block.mlp.fc2.weight.mul_(-1)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            flipped = block(x)
        assert not torch.allclose(flipped.float(), fused.float(), atol=0.1)

