"""ATST-Frame encoder: a Lightning checkpoint in the layout of the released atstframe_base.ckpt
(random values; student and teacher, projector/predictor heads, Lightning extras), strict
loading of the teacher encoder, shapes, determinism, chunking, pooling, clear errors, and the
front end / patching against straightforward numpy references."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import official
from embed.encoders import create
from embed.encoders.atst import MAX_DB, MIN_DB, ATSTFrontEnd, LinearPatchEmbed
from embed.encoders.checkpoint import CheckpointError

DIM, DEPTH = 768, 12


def encoder_state(g: torch.Generator, dim: int = DIM, depth: int = DEPTH) -> dict[str, torch.Tensor]:
    """FrameAST_base(patch_h=64, patch_w=4) parameter names and shapes."""
    rnd = lambda *shape, std=0.02: torch.randn(*shape, generator=g) * std  # noqa: E731
    s = {"mask_embed": rnd(1, 1, dim), "pos_embed": rnd(1, 251, dim),
         "patch_embed.patch_embed.weight": rnd(dim, 256, std=0.06), "patch_embed.patch_embed.bias": rnd(dim),
         "norm_frame.weight": 1 + rnd(dim), "norm_frame.bias": rnd(dim)}
    for i in range(depth):
        p = f"blocks.{i}."
        for ln in ("norm1", "norm2"):
            s[p + ln + ".weight"], s[p + ln + ".bias"] = 1 + rnd(dim), rnd(dim)
        s[p + "attn.qkv.weight"] = rnd(3 * dim, dim, std=0.05)
        s[p + "attn.proj.weight"], s[p + "attn.proj.bias"] = rnd(dim, dim), rnd(dim)
        s[p + "mlp.fc1.weight"], s[p + "mlp.fc1.bias"] = rnd(4 * dim, dim), rnd(4 * dim)
        s[p + "mlp.fc2.weight"], s[p + "mlp.fc2.bias"] = rnd(dim, 4 * dim), rnd(dim)
    return s


def mlp_state(g: torch.Generator, n_in: int) -> dict[str, torch.Tensor]:
    """byol.build_mlp(2, n_in, 4096, 256, last_bn=False)."""
    return {"0.weight": torch.randn(4096, n_in, generator=g) * 0.02, "1.weight": torch.ones(4096),
            "1.bias": torch.zeros(4096), "1.running_mean": torch.zeros(4096), "1.running_var": torch.ones(4096),
            "1.num_batches_tracked": torch.tensor(398000), "3.weight": torch.randn(256, 4096, generator=g) * 0.02}


def lightning_checkpoint(seed: int = 0, dim: int = DIM, depth: int = DEPTH) -> dict:
    g = torch.Generator().manual_seed(seed)
    teacher = encoder_state(g, dim, depth)
    projector = mlp_state(g, dim)
    state = {}
    # the student has the same layout; sharing storage keeps the test file teacher-sized
    for role in ("student", "teacher"):
        state.update({f"model.{role}.encoder.{k}": v for k, v in teacher.items()})
        state.update({f"model.{role}.projector.{k}": v for k, v in projector.items()})
    state.update({f"model.student.predictor.{k}": v for k, v in mlp_state(g, 256).items()})
    first = state["model.student.encoder.mask_embed"]
    return {
        "epoch": 199, "global_step": 398000, "pytorch-lightning_version": "1.9.0",
        "state_dict": state,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 200, "completed": 199}},
                               "epoch_loop.state_dict": {"_batches_that_stepped": 398000}}},
        "callbacks": {"ModelCheckpoint{'monitor': None, 'mode': 'min', 'every_n_train_steps': 0, "
                      "'every_n_epochs': 20, 'train_time_interval': None}": {
                          "monitor": None, "best_model_score": None, "best_model_path": "/ckpt/checkpoint-epoch=199.ckpt",
                          "current_score": None, "dirpath": "/ckpt", "best_k_models": {},
                          "kth_best_model_path": "", "kth_value": torch.tensor(float("inf")),
                          "last_model_path": "/ckpt/last.ckpt"}},
        "optimizer_states": [{"state": {0: {"step": torch.tensor(398000.0), "exp_avg": torch.zeros_like(first),
                                            "exp_avg_sq": torch.zeros_like(first)}},
                              "param_groups": [{"lr": 1e-6, "betas": (0.9, 0.999), "eps": 1e-6, "weight_decay": 0.4,
                                                "correct_bias": True, "params": [0]}]}],
        "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": {"arch": "base", "learning_rate": 8e-5, "warmup_steps": 19900, "max_steps": 398000,
                             "ema": 0.9996, "symmetric": True, "pos_type": "cut", "avg_blocks": 0,
                             "patch_embed": "Linear", "save_path": "/ckpt", "nproc": 6, "patch_h": 64,
                             "patch_w": 4, "nprompt": 0, "batch_size_per_gpu": 144, "mask_type": "block",
                             "mask_ratio": 0.65, "mask_len": 5, "n_mels": 64, "anchor_len": 10,
                             "aug_tea": False, "aug_stu": True, "subset": 3000000, "spec_h": 64},
    }


@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("atst") / "atstframe_base.ckpt"
    torch.save(lightning_checkpoint(), path)
    return str(path)


@pytest.fixture(scope="module")
def encoder(ckpt_path):
    return create("atst_frame", ckpt_path)


def audio(seconds: float, batch: int = 1, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal((batch, int(round(seconds * 16000))))).astype(np.float32)


def n_tokens(samples: int) -> int:
    mel = samples // 160 + 1
    return sum((min(s + 1001, mel) - s) // 4 for s in range(0, mel, 1001))


@pytest.mark.parametrize("seconds", [1.0, 5.0, 3.37])
def test_frames_shape_finite_deterministic(encoder, seconds):
    batch = 2 if seconds == 1.0 else 1
    x = audio(seconds, batch)
    frames = encoder.frame_embeddings(x)
    assert frames.shape == (batch, n_tokens(x.shape[1]), DIM * DEPTH)
    assert frames.shape[1] == int(seconds * 16000) // 160 // 4  # one frame per 40 ms
    assert torch.isfinite(frames).all()
    if batch == 2:
        assert not torch.allclose(frames[0], frames[1])
    emb = encoder.embed(x)  # second, independent pass
    assert emb.shape == (batch, DIM * DEPTH) and np.isfinite(emb).all()
    np.testing.assert_array_equal(emb, frames.mean(dim=1).numpy())


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A 2-block, 384-d model: same code paths as base, cheap enough for long inputs."""
    path = tmp_path_factory.mktemp("atst_small") / "small.ckpt"
    torch.save(lightning_checkpoint(seed=5, dim=384, depth=2), path)
    return str(path)


def test_long_input_is_chunked_by_ten_seconds(small):
    enc = create("atst_frame", small)
    assert enc.feature_dim == 384 * 2
    x = audio(12.0)
    frames = enc.frame_embeddings(x)
    assert frames.shape == (1, 250 + 50, 384 * 2)  # 1201 mel frames = 1001 + 200
    mel = enc.model.frontend(torch.as_tensor(x))
    with torch.inference_mode():
        first = enc.model.encoder(mel[..., :1001], 2)
        second = enc.model.encoder(mel[..., 1001:], 2)
    torch.testing.assert_close(frames[:, :250], first, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(frames[:, 250:], second, atol=1e-4, rtol=1e-4)


def test_poolings_and_n_blocks(encoder, small):
    x = audio(1.0)
    for pooling, size in {"mean": 9216, "max": 9216, "meanmax": 9216, "meanstd": 18432}.items():
        encoder.pooling = pooling
        assert encoder.embed(x).shape == (1, size) and encoder.embedding_size == size
    encoder.pooling = "mean"
    both, last = create("atst_frame", small), create("atst_frame", small, n_blocks=1)
    assert last.config()["n_blocks"] == 1 and last.feature_dim == 384
    np.testing.assert_allclose(last.embed(x), both.embed(x)[:, -384:], atol=1e-4)
    with pytest.raises(ValueError, match="n_blocks"):
        create("atst_frame", small, n_blocks=3)


def test_missing_and_misshapen_keys(tmp_path):
    ckpt = lightning_checkpoint(dim=384, depth=2)
    del ckpt["state_dict"]["model.teacher.encoder.blocks.1.mlp.fc2.bias"]
    torch.save(ckpt, tmp_path / "missing.ckpt")
    with pytest.raises(CheckpointError, match=r"blocks\.1\.mlp\.fc2\.bias"):
        create("atst_frame", str(tmp_path / "missing.ckpt"))
    ckpt = lightning_checkpoint(dim=384, depth=2)
    ckpt["state_dict"]["model.teacher.encoder.patch_embed.patch_embed.weight"] = torch.zeros(384, 128)
    torch.save(ckpt, tmp_path / "shape.ckpt")
    with pytest.raises(CheckpointError, match=r"patch_embed\.patch_embed\.weight"):
        create("atst_frame", str(tmp_path / "shape.ckpt"))
    ckpt = lightning_checkpoint(dim=384, depth=2)
    ckpt["state_dict"] = {k.replace("model.teacher.", "teacher."): v for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, tmp_path / "prefix.ckpt")
    with pytest.raises(CheckpointError, match="model.teacher.encoder"):
        create("atst_frame", str(tmp_path / "prefix.ckpt"))


def test_untrusted_pickled_object_is_refused(tmp_path):
    ckpt = lightning_checkpoint(dim=384, depth=2)
    ckpt["hyper_parameters"]["path"] = __import__("pathlib").PurePosixPath("/x")
    torch.save(ckpt, tmp_path / "odd.ckpt")
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        create("atst_frame", str(tmp_path / "odd.ckpt"))
    assert create("atst_frame", str(tmp_path / "odd.ckpt"), trust_checkpoint=True).feature_dim == 384 * 2


def reference_frontend(wave: np.ndarray) -> np.ndarray:
    """numpy: centred reflect-padded STFT, periodic Hann, HTK mel 60-7800 Hz, dB, top_db 80, MinMax."""
    n_fft, hop, n_mels, sr = 1024, 160, 64, 16000
    x = np.pad(wave.astype(np.float64), n_fft // 2, mode="reflect")
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    frames = np.stack([x[i * hop: i * hop + n_fft] * win for i in range(1 + (len(x) - n_fft) // hop)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    hz2mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    mel2hz = lambda m: 700 * (10 ** (m / 2595) - 1)  # noqa: E731
    edges = mel2hz(np.linspace(hz2mel(60.0), hz2mel(7800.0), n_mels + 2))
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    fb = np.zeros((n_fft // 2 + 1, n_mels))
    for m in range(n_mels):
        lo, c, hi = edges[m], edges[m + 1], edges[m + 2]
        fb[:, m] = np.clip(np.minimum((freqs - lo) / (c - lo), (hi - freqs) / (hi - c)), 0, None)
    db = 10 * np.log10(np.maximum(power @ fb, 1e-10)).T
    db = np.maximum(db, db.max() - 80.0)
    return (db - MIN_DB) / (MAX_DB - MIN_DB) * 2 - 1


def test_frontend_matches_numpy_reference():
    rng = np.random.default_rng(3)
    t = np.arange(16000 * 2) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 440 * t) + 1e-3 * rng.standard_normal(t.size)).astype(np.float32)
    wave[8000:12000] = 0.0  # silence exercises the 80 dB floor
    got = ATSTFrontEnd()(torch.as_tensor(wave)[None])[0].numpy()
    want = reference_frontend(wave)
    assert got.shape == want.shape == (64, 201)
    np.testing.assert_allclose(got, want, atol=2e-4)


def test_patch_flattening_matches_official_rearrange():
    # einops 'b c (h p1) (w p2) -> b (w h) (p1 p2 c)' with h = c = 1: element (mel p1, frame p2)
    torch.manual_seed(0)
    embed = LinearPatchEmbed(64, 4, 8)
    mel = torch.randn(2, 64, 23)
    got = embed(mel)
    want = torch.empty(2, 5, 8)
    for w in range(5):
        vec = torch.stack([mel[:, p1, w * 4 + p2] for p1 in range(64) for p2 in range(4)], dim=1)
        want[:, w] = embed.patch_embed(vec)
    torch.testing.assert_close(got, want)
    assert math.isclose(embed.patch_w * 0.01, 0.04)


def test_matches_official_outputs(tmp_path):
    """Against the authors' load_model / get_timestamp_embedding / get_scene_embedding on the same
    generated Lightning checkpoint and clips (tests/fixtures/official/make_atst.py)."""
    spec = official.load_spec("atst_frame")
    path = tmp_path / "atstframe_base.ckpt"
    torch.save({"state_dict": official.generate_state_dict(spec), "hyper_parameters": spec["hyper_parameters"],
                "pytorch-lightning_version": "2.1.4", "epoch": 0, "global_step": 0}, path)
    enc = create("atst_frame", path)
    errors = official.errors_vs_official(enc, "atst_frame", enc.model.frontend)
    print("relative error vs official:", errors)  # shown by pytest -rP
    assert max(errors.values()) <= 1e-4, errors
