"""AST encoder against a random checkpoint in the layout of `audioset_10_10_0.4593.pth`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import official
from embed.encoders import create, pool
from embed.encoders.checkpoint import CheckpointError

D = 768


def official_state(gen: torch.Generator) -> dict:
    """DataParallel state dict of the official ASTModel (fstride = tstride = 10, 1024 frames)."""
    def r(*shape: int, base: float = 0.0) -> torch.Tensor:
        return base + 0.02 * torch.randn(shape, generator=gen)

    state = {"module.v.cls_token": r(1, 1, D), "module.v.dist_token": r(1, 1, D),
             "module.v.pos_embed": r(1, 1214, D),
             "module.v.patch_embed.proj.weight": r(D, 1, 16, 16), "module.v.patch_embed.proj.bias": r(D)}
    for i in range(12):
        p = f"module.v.blocks.{i}."
        state.update({p + "norm1.weight": r(D, base=1), p + "norm1.bias": r(D),
                      p + "attn.qkv.weight": r(3 * D, D), p + "attn.qkv.bias": r(3 * D),
                      p + "attn.proj.weight": r(D, D), p + "attn.proj.bias": r(D),
                      p + "norm2.weight": r(D, base=1), p + "norm2.bias": r(D),
                      p + "mlp.fc1.weight": r(4 * D, D), p + "mlp.fc1.bias": r(4 * D),
                      p + "mlp.fc2.weight": r(D, 4 * D), p + "mlp.fc2.bias": r(D)})
    state.update({"module.v.norm.weight": r(D, base=1), "module.v.norm.bias": r(D),
                  "module.mlp_head.0.weight": r(D, base=1), "module.mlp_head.0.bias": r(D),
                  "module.mlp_head.1.weight": r(527, D), "module.mlp_head.1.bias": r(527)})
    # DeiT's unused ImageNet heads: official names/shapes, constant values (dropped on load)
    for head in ("head", "head_dist"):
        state[f"module.v.{head}.weight"] = torch.zeros(()).expand(1000, D)
        state[f"module.v.{head}.bias"] = torch.zeros(()).expand(1000)
    return state


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> tuple[Path, dict]:
    state = official_state(torch.Generator().manual_seed(0))
    path = tmp_path_factory.mktemp("ast") / "audioset_10_10_0.4593.pth"
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="module")
def enc_short(ckpt):
    """Same weights, 128-frame chunks (official pos-embed crop) so CPU tests stay fast."""
    return create("ast", ckpt[0], target_length=128)


def test_loads_strictly_and_full_length_embedding(ckpt) -> None:
    path, state = ckpt
    enc = create("ast", path)
    own = enc.model.state_dict()
    assert "v.head.weight" not in own and "mlp_head.1.weight" in own
    assert torch.equal(own["v.pos_embed"], state["module.v.pos_embed"])
    assert enc.feature_dim == 768 and enc.frame_hop_s == pytest.approx(10.24)
    assert enc.config() == {"target_length": 1024, "version": 1}
    audio = torch.randn(1, 16000) * 0.1  # padded to 1024 frames, one official forward
    frames = enc.frame_embeddings(audio)
    assert frames.shape == (1, 1, 768) and torch.isfinite(frames).all()


@pytest.mark.parametrize("seconds,n_frames,batch", [(1.0, 1, 2), (5.0, 4, 1), (3.37, 3, 1)])
def test_embeddings_shape_finite_deterministic(enc_short, seconds: float, n_frames: int, batch: int) -> None:
    rng = np.random.default_rng(1)
    audio = (0.1 * rng.standard_normal((batch, int(seconds * 16000)))).astype(np.float32)
    frames = enc_short.frame_embeddings(audio)
    assert frames.shape == (batch, n_frames, 768)  # one frame per 128-frame chunk
    emb = enc_short.embed(audio)
    assert emb.shape == (batch, 768) and emb.dtype == np.float32 and np.isfinite(emb).all()
    assert np.array_equal(emb, frames.mean(dim=1).numpy())  # second forward pass is bit-identical
    if batch > 1:
        assert not np.allclose(emb[0], emb[1])


def test_pooling_options(enc_short) -> None:
    audio = torch.randn(1, 16000 * 2) * 0.1  # 198 fbank frames -> 2 chunks
    frames = enc_short.frame_embeddings(audio)
    for method, dim in [("max", 768), ("meanmax", 768), ("meanstd", 1536)]:
        enc_short.pooling = method
        try:
            out = enc_short.embed(audio)
        finally:
            enc_short.pooling = "mean"
        assert out.shape == (1, dim)
        np.testing.assert_allclose(out, pool(frames, method).numpy(), rtol=1e-5, atol=1e-6)


def test_frontend_and_positional_embedding(enc_short) -> None:
    model = enc_short.model
    # waveform mean is removed before the fbank, so a DC offset changes nothing
    t = torch.arange(16000) / 16000
    tone = 0.2 * torch.sin(2 * torch.pi * 440 * t)[None]
    torch.testing.assert_close(model.fbank(tone + 0.3), model.fbank(tone), rtol=1e-3, atol=1e-2)
    fb = model.fbank(tone)
    assert fb.shape == (1, 98, 128)
    # 128 frames -> 12 time patches: official centre crop of the 101-column positional grid
    grid = model.v.pos_embed[:, 2:].reshape(1, 12, 101, 768)
    expected = grid[:, :, 44:56].reshape(1, 12 * 12, 768)
    torch.testing.assert_close(model.patch_pos_embed(12), expected)
    torch.testing.assert_close(model.patch_pos_embed(101), model.v.pos_embed[:, 2:])
    assert model.patch_pos_embed(120).shape == (1, 12 * 120, 768)  # longer: bilinear stretch


def test_missing_key_and_shape_mismatch_are_named(ckpt, tmp_path) -> None:
    _, state = ckpt
    # key/shape checks happen before any value is used: constant expanded tensors suffice
    layout = {k: torch.zeros(()).expand(v.shape) for k, v in state.items()}
    missing = dict(layout)
    missing.pop("module.v.blocks.5.attn.proj.bias")
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing keys.*v\.blocks\.5\.attn\.proj\.bias"):
        create("ast", tmp_path / "missing.pth")
    reshaped = dict(layout, **{"module.v.pos_embed": torch.zeros(()).expand(1, 1214 - 12 * 10, D)})
    torch.save(reshaped, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match=r"v\.pos_embed: checkpoint \(1, 1094, 768\)"):
        create("ast", tmp_path / "shape.pth")


def test_matches_official_outputs(tmp_path):
    """Against the authors' code (dataloader fbank, ASTModel with AudioSet weights) on the same
    generated checkpoint and clips (tests/fixtures/official/make_ast.py)."""
    spec = official.load_spec("ast")
    path = tmp_path / "audioset_10_10_0.4593.pth"
    torch.save(official.generate_state_dict(spec), path)
    enc = create("ast", path)
    errors = official.errors_vs_official(enc, "ast", enc.model.fbank)
    print("relative error vs official:", errors)  # shown by pytest -rP
    assert max(errors.values()) <= 1e-4, errors
