"""M2D encoder against a random checkpoint in the official pre-training layout (ViT-base, 80x608)."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

import official
from embed.encoders import create, pool, vit
from embed.encoders.checkpoint import CheckpointError
from embed.encoders.m2d import parse_config_name

FOLDER = "m2d_vit_base-80x608p16x16-220930-mr7"
D, DEC = 768, 512


def vit_blocks(prefix: str, depth: int, dim: int, gen: torch.Generator) -> dict:
    out = {}
    for i in range(depth):
        p = f"{prefix}{i}."
        shapes = {"norm1.weight": (dim,), "norm1.bias": (dim,), "attn.qkv.weight": (3 * dim, dim),
                  "attn.qkv.bias": (3 * dim,), "attn.proj.weight": (dim, dim), "attn.proj.bias": (dim,),
                  "norm2.weight": (dim,), "norm2.bias": (dim,), "mlp.fc1.weight": (4 * dim, dim),
                  "mlp.fc1.bias": (4 * dim,), "mlp.fc2.weight": (dim, 4 * dim), "mlp.fc2.bias": (dim,)}
        for name, shape in shapes.items():
            base = 1.0 if name.startswith("norm") and name.endswith("weight") else 0.0
            out[p + name] = base + 0.02 * torch.randn(shape, generator=gen)
    return out


def official_state(gen: torch.Generator) -> dict:
    """Online encoder + EMA target encoder + decoder, as saved by M2D pre-training (2022: no norm_stats)."""
    n = 1 + 5 * 38
    enc = {"cls_token": 0.02 * torch.randn(1, 1, D, generator=gen),
           "pos_embed": 0.02 * torch.randn(1, n, D, generator=gen),
           "patch_embed.proj.weight": 0.02 * torch.randn(D, 1, 16, 16, generator=gen),
           "patch_embed.proj.bias": 0.02 * torch.randn(D, generator=gen),
           **vit_blocks("blocks.", 12, D, gen),
           "norm.weight": 1 + 0.02 * torch.randn(D, generator=gen), "norm.bias": 0.02 * torch.randn(D, generator=gen)}
    # decoder and EMA target network: official names and shapes, values irrelevant (they are
    # dropped), so they are stored as expanded constants to keep the test file small and fast
    other = {"mask_token": (1, 1, DEC), "decoder_embed.weight": (DEC, D), "decoder_embed.bias": (DEC,),
             "decoder_pos_embed": (1, n, DEC), "decoder_norm.weight": (DEC,), "decoder_norm.bias": (DEC,),
             "decoder_pred.weight": (D, DEC), "decoder_pred.bias": (D,)}
    other.update({k: tuple(v.shape) for k, v in vit_blocks("decoder_blocks.", 8, DEC, gen).items()})
    other.update({"target_" + k: tuple(v.shape) for k, v in enc.items() if k.startswith(("blocks.", "norm."))})
    return {**enc, **{k: torch.full((), 5.0).expand(shape) for k, shape in other.items()}}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> tuple[Path, dict]:
    gen = torch.Generator().manual_seed(0)
    state = official_state(gen)
    path = tmp_path_factory.mktemp("m2d") / FOLDER / "checkpoint-300.pth"
    path.parent.mkdir()
    torch.save({"model": state, "epoch": 299,
                "args": argparse.Namespace(model="m2d_vit_base", input_size=[80, 608], mask_ratio=0.7)}, path)
    return path, state


@pytest.fixture(scope="module")
def enc(ckpt):
    return create("m2d", ckpt[0])


def test_loads_official_layout_and_config(enc, ckpt) -> None:
    _, state = ckpt
    assert enc.input_size == [80, 608] and enc.patch_size == [16, 16] and enc.sr == "16k"
    assert enc.feature_dim == 3840 and enc.embedding_size == 3840 and enc.frame_hop_s == pytest.approx(0.16)
    own = enc.model.state_dict()
    assert not any(k.startswith(("target_", "decoder_")) for k in own)
    # the online encoder is loaded, not the target network
    assert torch.equal(own["norm.weight"], state["norm.weight"])
    assert torch.equal(own["blocks.3.mlp.fc1.weight"], state["blocks.3.mlp.fc1.weight"])
    assert own["norm_stats"].tolist() == pytest.approx([-7.1, 4.2])  # 2022 file: official default


@pytest.mark.parametrize("seconds,n_frames,batch", [(1.0, 7, 1), (5.0, 32, 2), (3.37, 22, 1)])
def test_embeddings_shape_finite_deterministic(enc, seconds: float, n_frames: int, batch: int) -> None:
    rng = np.random.default_rng(1)
    audio = (0.1 * rng.standard_normal((batch, int(seconds * 16000)))).astype(np.float32)
    frames = enc.frame_embeddings(audio)
    assert frames.shape == (batch, n_frames, 3840)
    emb = enc.embed(audio)
    assert emb.shape == (batch, 3840) and emb.dtype == np.float32 and np.isfinite(emb).all()
    # a second, separate forward pass gives bit-identical results (deterministic)
    assert np.array_equal(emb, frames.mean(dim=1).numpy())
    if batch > 1:
        assert not np.allclose(emb[0], emb[1])  # different inputs, different embeddings


def test_long_input_is_chunked_like_the_official_runtime(enc) -> None:
    audio = torch.randn(1, 7 * 16000) * 0.1  # 701 frames -> chunks of 608 + 93 (padded to 96)
    frames = enc.frame_embeddings(audio)
    assert frames.shape == (1, 38 + 6, 3840)
    with torch.inference_mode():
        lms = enc.model.log_mel(audio)
        first = enc.model.encode_chunk(lms[..., :608])
    torch.testing.assert_close(frames[:, :38], first, rtol=1e-4, atol=1e-4)


def test_pooling_options(enc) -> None:
    audio = torch.randn(1, 16000 * 2) * 0.1
    frames = enc.frame_embeddings(audio)
    for method, dim in [("max", 3840), ("meanmax", 3840), ("meanstd", 7680)]:
        enc.pooling = method
        try:
            out = enc.embed(audio)
        finally:
            enc.pooling = "mean"
        assert out.shape == (1, dim) == (1, enc.feature_dim * (2 if method == "meanstd" else 1))
        np.testing.assert_allclose(out, pool(frames, method).numpy(), rtol=1e-5, atol=1e-6)


def test_frontend_is_normalised_log_mel(enc) -> None:
    t = torch.arange(16000) / 16000
    lms = enc.model.log_mel(torch.sin(2 * torch.pi * 1000 * t)[None])
    assert lms.shape == (1, 1, 80, 101)
    # the 1 kHz tone dominates one Slaney-scale band; the log floor is float32 eps
    assert 25 <= int(lms[0, 0, :, 50].argmax()) <= 35
    silent = enc.model.log_mel(torch.zeros(1, 16000))
    expected = (np.log(np.finfo(np.float32).eps) + 7.1) / 4.2
    np.testing.assert_allclose(silent.numpy(), expected, rtol=1e-5)


def ref_log_mel(wave: np.ndarray) -> np.ndarray:
    """nnAudio MelSpectrogram as used by M2D, in float64 numpy: periodic Hann, centred reflect-padded
    STFT (n_fft 400, hop 160), power 2, librosa Slaney mel (80 bands, 50-8000 Hz, area-normalised)."""
    sr, n_fft, hop, n_mels = 16000, 400, 160, 80

    def hz2mel(f):
        f = np.asarray(f, dtype=np.float64)
        return np.where(f < 1000, f * 3 / 200, 15 + np.log(np.maximum(f, 1e-9) / 1000) * 27 / np.log(6.4))

    def mel2hz(m):
        return np.where(m < 15, m * 200 / 3, 1000 * np.exp((m - 15) * np.log(6.4) / 27))

    edges = mel2hz(np.linspace(hz2mel(50), hz2mel(8000), n_mels + 2))
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    fb = np.zeros((n_mels, freqs.size))
    for m in range(n_mels):
        lo, c, hi = edges[m:m + 3]
        fb[m] = np.maximum(0, np.minimum((freqs - lo) / (c - lo), (hi - freqs) / (hi - c))) * 2 / (hi - lo)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    padded = np.pad(wave, n_fft // 2, mode="reflect")
    frames = [padded[i * hop:i * hop + n_fft] * window for i in range(1 + len(wave) // hop)]
    power = np.abs(np.fft.rfft(np.array(frames), axis=1)) ** 2
    return np.log(power @ fb.T + np.finfo(np.float32).eps).T


def test_log_mel_matches_numpy_reference(enc) -> None:
    rng = np.random.default_rng(3)
    wave = 0.1 * rng.standard_normal(16000 + 123)
    got = enc.model.log_mel(torch.tensor(wave[None], dtype=torch.float32))[0, 0].numpy()
    ref = (ref_log_mel(wave) + 7.1) / 4.2
    assert got.shape == ref.shape == (80, 1 + wave.size // 160)
    np.testing.assert_allclose(got, ref, atol=2e-3)


def encoder_only_copy(state: dict, path: Path, change) -> Path:
    """Encoder-only key layout (official `to_encoder_only_weight.py` format), altered; values are
    expanded constants since the key/shape check happens before any value is used."""
    enc = {k: torch.zeros(()).expand(v.shape) for k, v in state.items()
           if not k.startswith(("target_", "decoder_", "mask_token"))}
    change(enc)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(enc, path)
    return path


def test_missing_key_and_shape_mismatch_are_named(ckpt, tmp_path) -> None:
    _, state = ckpt
    missing = encoder_only_copy(state, tmp_path / FOLDER / "missing.pth",
                                lambda s: s.pop("blocks.11.mlp.fc2.bias"))
    with pytest.raises(CheckpointError, match=r"missing keys.*blocks\.11\.mlp\.fc2\.bias"):
        create("m2d", missing)
    bad_shape = encoder_only_copy(state, tmp_path / FOLDER / "shape.pth",
                                  lambda s: s.__setitem__("pos_embed", torch.zeros(1, 1 + 5 * 63, D)))
    with pytest.raises(CheckpointError, match=r"pos_embed: checkpoint \(1, 316, 768\)"):
        create("m2d", bad_shape)


def test_config_from_kwargs_and_clear_error_without_it(ckpt, tmp_path) -> None:
    path, _ = ckpt
    link = tmp_path / "renamed" / "weights.pth"
    link.parent.mkdir()
    link.symlink_to(path)
    with pytest.raises(ValueError, match="input_size"):
        create("m2d", link)
    enc2 = create("m2d", link, input_size=[80, 608], patch_size=[16, 16])
    assert enc2.embed(torch.zeros(1, 16000)).shape == (1, 3840)
    small = encoder_only_copy(ckpt[1], tmp_path / "renamed2" / "weights.pth", lambda s: None)
    with pytest.raises(CheckpointError, match="pos_embed"):  # wrong size given -> strict shape error
        create("m2d", small, input_size=[80, 1001], patch_size=[16, 16])


def test_parse_config_name() -> None:
    assert parse_config_name("m2d_vit_base-80x1001p16x16-221006-mr7") == ([80, 1001], [16, 16], "16k")
    assert parse_config_name("m2d_as_vit_base-80x1001p16x16p32k-240413") == ([80, 1001], [16, 16], "32k")
    with pytest.raises(ValueError):
        parse_config_name("checkpoint-300")


class Opaque:  # a pickled object the weights-only loader must refuse
    pass


def test_unknown_pickled_object_asks_for_trust(tmp_path) -> None:
    path = tmp_path / FOLDER / "checkpoint-1.pth"
    path.parent.mkdir()
    torch.save({"model": {}, "extra": Opaque()}, path)
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        create("m2d", path)


def test_matches_official_outputs(tmp_path):
    """Against the authors' portable runtime on the same generated checkpoint and clip
    (tests/fixtures/official/make_m2d.py): log-mel, frames (two chunks) and clip embedding."""
    spec = official.load_spec("m2d")
    path = tmp_path / spec["folder"] / spec["file"]
    path.parent.mkdir()
    torch.save({"model": official.generate_state_dict(spec)}, path)
    enc = create("m2d", path)
    errors = official.errors_vs_official(enc, "m2d", enc.model.log_mel)
    print("relative error vs official:", errors)  # shown by pytest -rP
    assert max(errors.values()) <= 1e-4, errors


def test_low_precision_pass_leaves_fp32_unchanged(enc) -> None:
    """bf16 casts the ViT's linear weights once; fp32 embeddings stay those of the plain model."""
    audio = (0.1 * np.random.default_rng(3).standard_normal((2, 32000))).astype(np.float32)
    with torch.inference_mode():
        plain = enc.model(torch.from_numpy(audio)).mean(dim=1).numpy()
    np.testing.assert_allclose(enc.embed(audio), plain, rtol=1e-5, atol=1e-7)
    enc.precision = "bf16"
    try:
        low, again = enc.embed(audio), enc.embed(audio)  # first: plain autocast; then cast weights
    finally:
        enc.precision = "fp32"
    np.testing.assert_array_equal(again, low)
    cos = (low * plain).sum(1) / np.linalg.norm(low, axis=1) / np.linalg.norm(plain, axis=1)
    assert cos.min() > 0.999
    np.testing.assert_allclose(enc.embed(audio), plain, rtol=1e-5, atol=1e-7)


@pytest.mark.skipif(not vit.fused_cpu_bf16_available(), reason="this CPU has no oneDNN bf16")
def test_fused_cpu_bf16_kernels_are_in_the_cache_key_of_transformers_only(ckpt) -> None:
    bf16 = create("m2d", ckpt[0], precision="bf16")
    assert bf16.describe()["cpu_bf16_kernels"] == vit.FUSED_CPU_BF16
    assert "cpu_bf16_kernels" not in create("m2d", ckpt[0], precision="fp32").describe()
    assert "cpu_bf16_kernels" not in create("logmel", precision="bf16").describe()
    audio = np.random.default_rng(0).standard_normal((2, 16000 * 3)).astype(np.float32) * 0.1
    fp32 = create("m2d", ckpt[0], precision="fp32").frame_embeddings(audio)
    cos = torch.nn.functional.cosine_similarity(bf16.frame_embeddings(audio).flatten(1), fp32.flatten(1))
    assert cos.min() > 0.999


@pytest.mark.skipif(not vit.fused_cpu_bf16_available(), reason="this CPU has no oneDNN bf16")
def test_flop_count_is_the_same_on_the_fused_bf16_path(ckpt) -> None:
    from embed.benchmark import gflop_per_window

    audio = np.random.default_rng(1).standard_normal((1, 16000 * 2)).astype(np.float32) * 0.1
    fp32 = gflop_per_window(create("m2d", ckpt[0], precision="fp32"), audio)
    bf16 = gflop_per_window(create("m2d", ckpt[0], precision="bf16"), audio)
    assert fp32 > 1.0 and bf16 == pytest.approx(fp32, rel=1e-6)
