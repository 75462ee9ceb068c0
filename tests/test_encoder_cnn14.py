"""PANNs CNN14 with a generated checkpoint in the official layout of `Cnn14_mAP=0.431.pth`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from embed.encoders import create
from embed.encoders.checkpoint import CheckpointError
from embed.encoders.cnn14 import VARIANTS, Cnn14, LogmelFilterBank, Spectrogram

SR = 32000


def ref_librosa_mel(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """librosa.filters.mel defaults (Slaney mel scale, Slaney area norm), written out in numpy, (n_fft//2+1, n_mels)."""
    def hz2mel(f):
        f = np.asarray(f, dtype=np.float64)
        return np.where(f >= 1000, 15 + np.log(np.maximum(f, 1e-10) / 1000) / (np.log(6.4) / 27), 3 * f / 200)

    def mel2hz(m):
        return np.where(m >= 15, 1000 * np.exp(np.log(6.4) / 27 * (m - 15)), 200 * m / 3)

    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    pts = mel2hz(np.linspace(hz2mel(fmin), hz2mel(fmax), n_mels + 2))
    w = np.zeros((n_mels, freqs.size))
    for i in range(n_mels):
        lower = (freqs - pts[i]) / (pts[i + 1] - pts[i])
        upper = (pts[i + 2] - freqs) / (pts[i + 2] - pts[i + 1])
        w[i] = np.maximum(0, np.minimum(lower, upper)) * 2 / (pts[i + 2] - pts[i])
    return w.T


def tone(freq: float, seconds: float, amp: float = 0.3) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(seconds * SR)) / SR)).astype(np.float32)


def test_frontend_defaults_match_torchlibrosa_conventions() -> None:
    model = Cnn14()
    np.testing.assert_allclose(model.logmel_extractor.melW.detach().numpy(),
                               ref_librosa_mel(SR, 1024, 64, 50, 14000), rtol=1e-4, atol=1e-7)
    x = torch.randn(2, SR + 77)
    with torch.no_grad():
        got = model.spectrogram_extractor(x)
    spec = torch.stft(x, 1024, 320, window=torch.hann_window(1024), center=True, pad_mode="reflect",
                      return_complex=True)
    np.testing.assert_allclose(got.numpy(), spec.abs().pow(2).transpose(1, 2).numpy(), rtol=1e-3, atol=1e-2)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> tuple[Path, dict]:
    torch.manual_seed(0)
    model = Cnn14()
    state = model.state_dict()
    gen = torch.Generator().manual_seed(1)
    for k, v in state.items():
        if k.endswith("running_mean"):
            v.copy_(0.1 * torch.randn(v.shape, generator=gen))
        elif k.endswith("running_var"):
            v.copy_(0.5 + torch.rand(v.shape, generator=gen))
        elif k.endswith("bias"):
            v.copy_(0.01 * torch.randn(v.shape, generator=gen))
    state["bn0.running_mean"].fill_(-30.0)  # dB-scale statistics as in the trained bn0
    state["bn0.running_var"].fill_(400.0)
    # pytorch/main.py saves {'iteration', 'model', 'sampler'}; the sampler state holds numpy arrays
    sampler = {"indexes_per_class": [np.arange(i, i + 3) for i in range(527)],
               "queue": list(range(527)), "pointers_of_classes": [0] * 527}
    path = tmp_path_factory.mktemp("cnn14") / "Cnn14_mAP=0.431.pth"
    torch.save({"iteration": 660000, "model": state, "sampler": sampler}, path)
    return path, state


@pytest.fixture(scope="module")
def encoder(ckpt):
    return create("cnn14", ckpt[0])


def test_loads_strictly_with_numpy_sampler_state(encoder, ckpt) -> None:
    own = encoder.model.state_dict()
    assert set(own) == set(ckpt[1]) and len(own) == 2 + 1 + 5 + 6 * 12 + 4
    assert torch.equal(own["spectrogram_extractor.stft.conv_real.weight"],
                       ckpt[1]["spectrogram_extractor.stft.conv_real.weight"])
    assert torch.equal(own["fc1.weight"], ckpt[1]["fc1.weight"])


def test_broken_checkpoints_are_rejected(ckpt, tmp_path: Path) -> None:
    state = dict(ckpt[1])
    del state["conv_block3.bn2.running_var"]
    torch.save({"model": state}, tmp_path / "a.pth")
    with pytest.raises(CheckpointError, match=r"conv_block3\.bn2\.running_var"):
        create("cnn14", tmp_path / "a.pth")
    state = dict(ckpt[1])
    state["logmel_extractor.melW"] = torch.zeros(513, 128)
    torch.save({"model": state}, tmp_path / "b.pth")
    with pytest.raises(CheckpointError, match=r"logmel_extractor\.melW"):
        create("cnn14", tmp_path / "b.pth")


def test_embeddings_shape_determinism_and_official_head(encoder) -> None:
    rng = np.random.default_rng(0)
    for seconds in (1.0, 3.37):
        x = np.stack([tone(440, seconds), (0.1 * rng.standard_normal(int(seconds * SR))).astype(np.float32)])
        a = encoder.embed(x)
        assert a.shape == (2, 2048) and np.isfinite(a).all() and (a >= 0).all()
        np.testing.assert_array_equal(a, encoder.embed(x))
        assert not np.allclose(a[0], a[1])
        frames = encoder.frame_embeddings(x)
        t = 1 + x.shape[1] // 320
        for _ in range(5):
            t //= 2  # avg_pool2d(2) floors
        assert frames.shape == (2, t, 2048)
        with torch.inference_mode():
            emb, logits = encoder.model.clip_outputs(frames)
        np.testing.assert_allclose(a, emb.numpy(), rtol=1e-5, atol=1e-6)  # default == official 'embedding'
        assert encoder.tag(x).shape == (2, 527)
    x5 = (0.1 * rng.standard_normal((1, 5 * SR))).astype(np.float32)
    e5 = encoder.embed(x5)
    assert e5.shape == (1, 2048) and np.isfinite(e5).all()
    np.testing.assert_array_equal(e5, encoder.embed(x5))


def test_pooling_and_layer_options(encoder, ckpt) -> None:
    x = np.stack([tone(300, 1.0), tone(5000, 1.0)])
    official = encoder.embed(x)
    frames = encoder.frame_embeddings(x).numpy()
    try:
        encoder.layer, encoder.pooling = "conv", "meanstd"
        out = encoder.embed(x)
        assert out.shape == (2, 4096) == (2, encoder.embedding_size) and np.isfinite(out).all()
        np.testing.assert_allclose(out[:, :2048], frames.mean(1), rtol=1e-5, atol=1e-6)
        encoder.pooling = "max"
        np.testing.assert_allclose(encoder.embed(x), frames.max(1), rtol=1e-6)
        encoder.layer, encoder.pooling = "fc1", "mean"
        fc_mean = encoder.embed(x)
        assert fc_mean.shape == (2, 2048) and not np.allclose(fc_mean, official)
    finally:
        encoder.layer, encoder.pooling = "fc1", "meanmax"
    with pytest.raises(ValueError, match="meanstd"):
        create("cnn14", ckpt[0], pooling="meanstd")
    with pytest.raises(ValueError, match="layer"):
        create("cnn14", ckpt[0], layer="fc2")


# -- official outputs: PANNs' Cnn14 / Cnn14_16k / Cnn14_8k on a generated network ------------------------
# (tests/fixtures/official/make_cnn14.py made the arrays; the network is rebuilt here from the spec)
VARIANT_FILES = [("8k", 8000, "panns.pth"),  # a neutral name: the tensors decide
                 ("16k", 16000, "Cnn14_16k_mAP=0.438.pth"),
                 ("32k", 32000, "Cnn14_mAP=0.431.pth")]


@pytest.fixture(scope="module")
def official_network() -> dict:
    import official
    return official.generate_state_dict(official.load_spec("cnn14"))


def _save_official(network: dict, variant: str, path: Path) -> Path:
    # The spec holds the network. The STFT kernels and mel matrix of every real checkpoint are
    # torchlibrosa's deterministic ones; here our own front-end modules build them, so the front-end
    # comparison checks that they equal torchlibrosa's.
    fe = VARIANTS[variant]
    front = {**{f"spectrogram_extractor.{k}": v for k, v in Spectrogram(fe).state_dict().items()},
             **{f"logmel_extractor.{k}": v for k, v in LogmelFilterBank(fe).state_dict().items()}}
    torch.save({"iteration": 0, "model": {**front, **network}}, path)
    return path


def _frames_and_clip(enc, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One `embed` call, also keeping the frames it pooled (one forward pass instead of two)."""
    seen = []
    frames = enc.frames
    enc.frames = lambda x: seen.append(frames(x)) or seen[-1]
    try:
        clip = enc.embed(audio)
    finally:
        del enc.frames
    return seen[0].float().numpy(), clip


@pytest.mark.parametrize("variant,rate,filename", VARIANT_FILES)
def test_matches_official_outputs(official_network, tmp_path: Path, variant: str, rate: int, filename: str) -> None:
    import official
    enc = create("cnn14", _save_official(official_network, variant, tmp_path / filename))
    assert (enc.variant, enc.sample_rate, enc.frame_hop_s) == (variant, rate, pytest.approx(0.32))
    assert enc.config()["frontend"] == f"logmel64_{variant}_v1"
    audio = official.clips(rate, seconds=1.0)
    with torch.inference_mode():
        logmel = enc.model.logmel(torch.from_numpy(audio)).numpy()
    frames, clip = _frames_and_clip(enc, audio)
    expected = official.load_outputs("cnn14", f"outputs_{variant}")
    errors = {"frontend": official.relative_error(logmel, expected["frontend"]),
              "frames": official.relative_error(frames, expected["frames"]),
              "clip": official.relative_error(clip, expected["clip"])}
    print(f"\nrelative error vs official, cnn14 {variant}: " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    assert max(errors.values()) <= 1e-4, errors


def test_variant_name_disagreement_and_unknown_n_fft(tmp_path: Path) -> None:
    # the variant is decided before the network is built: one STFT kernel is enough to check the errors
    def kernel(n_fft: int) -> dict:
        return {"model": {"spectrogram_extractor.stft.conv_real.weight": torch.zeros(n_fft // 2 + 1, 1, n_fft)}}
    torch.save(kernel(1024), tmp_path / "Cnn14_16k_mAP=0.438.pth")
    with pytest.raises(CheckpointError, match="file name says 16k.*n_fft 1024.*32k"):
        create("cnn14", tmp_path / "Cnn14_16k_mAP=0.438.pth")
    torch.save(kernel(128), tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="n_fft 128"):
        create("cnn14", tmp_path / "odd.pth")
    torch.save({"model": {}}, tmp_path / "Cnn14_8k.pth")  # no kernels: the name's model, whose keys are listed
    with pytest.raises(CheckpointError, match=r"missing keys \(84\)"):
        create("cnn14", tmp_path / "Cnn14_8k.pth")
