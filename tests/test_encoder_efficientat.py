"""EfficientAT encoders: real mn04 AudioSet checkpoint (when present) and generated mn/dymn checkpoints."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from embed.encoders import create, get_class
from embed.encoders.checkpoint import CheckpointError
from embed.encoders.efficientat import DyMN, MN, MelFrontEnd, kaldi_mel_banks
from official import clips, errors_against, generate_state_dict, load_outputs, load_spec, relative_error

SR = 32000
# Indices in the 527-class AudioSet order of EfficientAT's metadata/class_labels_indices.csv
# (same file as PANNs' metadata/class_labels_indices.csv).
SILENCE, SINE_WAVE, BEEP = 500, 501, 481
NOISE_LIKE = {513: "Noise", 515: "Static", 520: "White noise", 521: "Pink noise"}


def _weights_dir() -> Path | None:
    for cand in (os.environ.get("HEARTPROBE_WEIGHTS"), Path(__file__).resolve().parents[2] / "shared" / "weights"):
        if cand and Path(cand).is_dir():
            return Path(cand)
    return None


REAL_MN04 = (_weights_dir() or Path("/nonexistent")) / "efficientat_mn04_as_mAP_432.pt"
needs_real = pytest.mark.skipif(not REAL_MN04.is_file(), reason="real mn04 checkpoint not on this machine")


def tone(freq: float, seconds: float = 5.0, amp: float = 0.3) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(seconds * SR)) / SR)).astype(np.float32)


# -- front end -----------------------------------------------------------------------------------
def ref_kaldi_banks(n_mels: int, n_fft: int, sr: float, lo: float, hi: float) -> np.ndarray:
    """Per-bin loop over Kaldi's MelBanks (float64), Nyquist column left at zero."""
    mel = lambda f: 1127.0 * np.log(1.0 + f / 700.0)  # noqa: E731
    ml, mh = mel(lo), mel(hi)
    d = (mh - ml) / (n_mels + 1)
    out = np.zeros((n_mels, n_fft // 2 + 1))
    for m in range(n_mels):
        left, centre, right = ml + m * d, ml + (m + 1) * d, ml + (m + 2) * d
        for k in range(n_fft // 2):
            f = mel(k * sr / n_fft)
            if left < f < right:
                out[m, k] = (f - left) / (centre - left) if f <= centre else (right - f) / (right - centre)
    return out


def test_kaldi_mel_banks_match_reference() -> None:
    got = kaldi_mel_banks(128, 1024, 32000, 0.0, 15000.0).numpy()
    np.testing.assert_allclose(got, ref_kaldi_banks(128, 1024, 32000, 0.0, 15000.0), atol=1e-6)
    assert got.shape == (128, 513) and np.all(got[:, -1] == 0)


def test_frontend_matches_numpy_reference() -> None:
    rng = np.random.default_rng(0)
    x = (0.2 * rng.standard_normal(SR + 123)).astype(np.float32)
    got = MelFrontEnd()(torch.tensor(x[None]))[0].numpy()
    # straightforward numpy: pre-emphasis, centred reflect-padded frames, 800-point symmetric Hann
    # centred in 1024, power spectrum, Kaldi mel 0-15 kHz, log(+1e-5), (x + 4.5) / 5
    y = x[1:].astype(np.float64) - 0.97 * x[:-1]
    y = np.pad(y, 512, mode="reflect")
    win = np.zeros(1024)
    win[112:912] = np.hanning(800)
    frames = np.stack([y[i:i + 1024] * win for i in range(0, len(y) - 1024 + 1, 320)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    ref = (np.log(ref_kaldi_banks(128, 1024, 32000, 0, 15000) @ power.T + 1e-5) + 4.5) / 5
    assert got.shape == ref.shape == (128, 1 + (SR + 122) // 320)
    np.testing.assert_allclose(got, ref, atol=2e-4)


# -- architecture --------------------------------------------------------------------------------
@pytest.mark.parametrize("name,dim,hidden", [("mn05", 480, 640), ("mn10", 960, 1280), ("mn20", 1920, 2560),
                                              ("mn40", 3840, 5120), ("dymn04", 384, 512),
                                              ("dymn20", 1920, 2560)])
def test_variant_dimensions(name: str, dim: int, hidden: int) -> None:
    cls = get_class(name)
    net = (DyMN if cls.dynamic else MN)(cls.width)
    assert cls.feature_dim == dim
    assert tuple(net.classifier[2].weight.shape) == (hidden, dim)
    assert tuple(net.classifier[5].weight.shape) == (527, hidden)


def test_dymn04_key_shapes_follow_official_rules() -> None:
    """Shapes derived by hand from models/dymn (width 0.4: 8 channels, context clip(8, 16, 48) = 16)."""
    sd = DyMN(0.4).state_dict()
    assert tuple(sd["in_c.0.weight"].shape) == (8, 1, 3, 3)
    assert "layers.0.exp_conv.weight" not in sd  # expansion 16 -> 16 is an identity
    assert tuple(sd["layers.0.depth_conv.weight"].shape) == (1, 1, 4, 8 * 9)
    assert tuple(sd["layers.0.depth_conv.residuals.0.weight"].shape) == (4, 16)
    assert tuple(sd["layers.0.depth_act.coef_net.0.weight"].shape) == (32, 16)
    assert tuple(sd["layers.0.context_gen.joint_conv.weight"].shape) == (16, 8, 1, 1)
    assert tuple(sd["layers.0.context_gen.conv_f.weight"].shape) == (8, 16, 1, 1)
    # block 1: 8 -> 24 expanded (64 * 0.4 = 25.6 -> 24), context clip(8, 16, 48) = 16
    assert tuple(sd["layers.1.exp_conv.weight"].shape) == (1, 1, 4, 24 * 8)
    assert tuple(sd["layers.14.proj_conv.weight"].shape) == (1, 1, 4, 64 * 384)
    assert torch.equal(sd["layers.3.depth_act.lambdas"], torch.tensor([1.0, 1.0, 0.5, 0.5]))
    assert tuple(sd["out_c.0.weight"].shape) == (384, 64, 1, 1)


# -- generated checkpoints (official layout: a plain state dict) ---------------------------------
def _random_state(net: torch.nn.Module, seed: int, calibration_s: float = 1.0) -> dict:
    """Random weights with BN statistics calibrated on noise, so activations neither vanish nor explode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, v in net.state_dict().items():
            if v.ndim == 4 and v.shape[0] > 1:  # He (fan-in) conv init; Dy-Conv banks keep theirs
                v.copy_(torch.randn(v.shape, generator=gen) * (2.0 / v[0].numel()) ** 0.5)
            elif k.endswith("bias"):
                v.copy_(0.05 * torch.randn(v.shape, generator=gen))
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = 1.0  # running statistics := this batch's statistics
        net.train()
        n = int(calibration_s * SR)
        audio = torch.cat([torch.randn(2, n, generator=gen) * 0.1,
                           torch.tensor(np.stack([tone(440, calibration_s), tone(3000, calibration_s)]))])
        net.feature_map(MelFrontEnd()(audio)[:, None])
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.clamp_(min=0.1)  # no huge gains on channels that happened to be flat
    return net.eval().state_dict()


@pytest.fixture(scope="module", params=["mn05", "dymn04"])
def generated(request, tmp_path_factory) -> tuple[str, Path, dict]:
    name = request.param
    cls = get_class(name)
    torch.manual_seed(0)
    sd = _random_state((DyMN if cls.dynamic else MN)(cls.width), 0)
    path = tmp_path_factory.mktemp(name) / f"{name}_as.pt"
    torch.save(sd, path)
    return name, path, sd


def test_generated_loads_and_rejects_broken(generated, tmp_path: Path) -> None:
    name, path, sd = generated
    enc = create(name, path)
    assert torch.equal(enc.model.net.state_dict()["classifier.5.bias"], sd["classifier.5.bias"])
    key = next(k for k in sd if k.endswith("running_mean"))
    broken = dict(sd)
    del broken[key]
    torch.save(broken, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        create(name, tmp_path / "missing.pt")
    broken = dict(sd)
    broken["classifier.2.weight"] = broken["classifier.2.weight"][:, :-1]
    torch.save(broken, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match=r"classifier\.2\.weight"):
        create(name, tmp_path / "shape.pt")


def test_generated_embeddings(generated) -> None:
    name, path, _ = generated
    enc = create(name, path)
    rng = np.random.default_rng(1)
    for seconds in (1.0, 5.0, 3.37):
        x = np.stack([tone(440, seconds), (0.1 * rng.standard_normal(int(seconds * SR))).astype(np.float32)])
        a, b = enc.embed(x), enc.embed(x)
        assert a.shape == (2, enc.feature_dim) and np.isfinite(a).all()
        np.testing.assert_array_equal(a, b)
        assert not np.allclose(a[0], a[1])
    # batching must not mix samples (DyMN folds the batch into conv groups)
    np.testing.assert_allclose(enc.embed(x[1:]), a[1:], rtol=1e-4, atol=1e-5)
    frames = enc.frame_embeddings(x)
    n_frames = 1 + (x.shape[1] - 2) // 320  # STFT frames after the 2-tap pre-emphasis
    for _ in range(5):
        n_frames = -(-n_frames // 2)  # each stride-2 stage rounds up
    assert frames.shape == (2, n_frames, enc.feature_dim)
    x = x[:, :SR]
    mean = enc.embed(x)
    for pooling, dim in (("max", enc.feature_dim), ("meanmax", enc.feature_dim), ("meanstd", 2 * enc.feature_dim)):
        enc.pooling = pooling
        out = enc.embed(x)
        assert out.shape == (2, dim) == (2, enc.embedding_size) and np.isfinite(out).all()
        if pooling == "meanstd":
            np.testing.assert_allclose(out[:, :enc.feature_dim], mean, rtol=1e-5, atol=1e-6)
            assert (out[:, enc.feature_dim:] >= 0).all() and out[:, enc.feature_dim:].max() > 0
        else:
            assert not np.allclose(out, mean)


# -- the real AudioSet checkpoint -----------------------------------------------------------------
@pytest.fixture(scope="module")
def mn04():
    return create("mn04", REAL_MN04)


def _top(enc, audio: np.ndarray, k: int = 5) -> list[int]:
    return torch.topk(enc.tag(audio)[0], k).indices.tolist()


@needs_real
def test_real_mn04_loads_strictly(mn04) -> None:
    raw = torch.load(REAL_MN04, map_location="cpu", weights_only=True)
    own = mn04.model.net.state_dict()
    assert set(own) == set(raw) and all(torch.equal(own[k], raw[k]) for k in raw)
    assert mn04.feature_dim == 384 and mn04.embedding_size == 384


@needs_real
def test_real_mn04_tags_synthetic_sounds(mn04) -> None:
    sine = _top(mn04, tone(1000))
    assert SINE_WAVE in sine and sine[0] in (SINE_WAVE, BEEP)
    noise = (0.3 * np.random.default_rng(0).standard_normal(5 * SR)).astype(np.float32)
    assert set(_top(mn04, noise, 3)) <= set(NOISE_LIKE) | {SILENCE} and _top(mn04, noise, 1)[0] in NOISE_LIKE
    silence = np.zeros(5 * SR, np.float32)
    assert _top(mn04, silence, 1) == [SILENCE]
    clicks = np.zeros(5 * SR, np.float32)
    clicks[:: SR // 4] = 0.8  # 4 clicks per second
    p_sil = torch.sigmoid(mn04.tag(np.stack([silence, clicks]))[:, SILENCE])
    assert p_sil[0] > 0.3 and p_sil[1] < p_sil[0] / 3


@needs_real
def test_real_mn04_embedding_is_official_pooled_feature(mn04) -> None:
    x = np.stack([tone(440, 3.37), tone(2000, 3.37)])
    with torch.inference_mode():
        fmap = mn04.model(torch.tensor(x))
    np.testing.assert_allclose(mn04.embed(x), fmap.mean(dim=(2, 3)).numpy(), rtol=1e-5, atol=1e-6)
    assert mn04.frame_embeddings(x).shape == (2, 11, 384)  # 337 STFT frames -> 11 after 5 stride-2 stages


@needs_real
def test_real_mn04_bf16_agrees_with_fp32(mn04) -> None:
    rng = np.random.default_rng(3)
    x = np.stack([tone(1000), (0.1 * rng.standard_normal(5 * SR)).astype(np.float32),
                  tone(150) + tone(3000, amp=0.05)])
    a = mn04.embed(x)
    mn04.precision = "bf16"
    try:
        b = mn04.embed(x)
    finally:
        mn04.precision = "fp32"
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99


# -- the authors' code (fixtures made by tests/fixtures/official/make_efficientat.py) ------------
def _compare_with_official(enc, name: str) -> dict[str, float]:
    audio = clips(SR, seconds=2.0, n=2)
    with torch.inference_mode():
        frontend = enc.model.mel(torch.from_numpy(audio)).numpy()
    errors = errors_against(name, frontend=frontend, frames=enc.frame_embeddings(audio).numpy(),
                            clip=enc.embed(audio))
    assert max(errors.values()) <= 1e-4, errors
    # the clips give different embeddings: the comparison is not of two constant outputs
    official = load_outputs(name)
    assert relative_error(official["clip"][0], official["clip"][1]) > 0.05
    return errors


@needs_real
def test_real_mn04_matches_official_code() -> None:
    _compare_with_official(create("mn04", REAL_MN04), "mn04")


def test_generated_dymn04_matches_official_code(tmp_path: Path) -> None:
    path = tmp_path / "dymn04_as.pt"
    torch.save(generate_state_dict(load_spec("dymn04")), path)
    _compare_with_official(create("dymn04", path), "dymn04")
