"""aiSFX against the authors' package (fixtures made by tests/fixtures/official/make_aisfx.py), its
Essentia front end against a per-bin reference, and the released checkpoint's loading rules."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from embed.encoders import create
from embed.encoders.aisfx import HOP, EssentiaLogMel, essentia_mel_bands
from embed.encoders.checkpoint import CheckpointError
from official import clips, errors_against, generate_state_dict, load_outputs, load_spec, relative_error

SR = 44100
# the wheel's models/checkpoint.pth, where someone put it (`pip download --no-deps aisfx`, unzip)
REAL = Path(os.environ.get("HEARTPROBE_AISFX_CHECKPOINT", "/nonexistent"))
needs_real = pytest.mark.skipif(not REAL.is_file(), reason="HEARTPROBE_AISFX_CHECKPOINT not set to the aisfx checkpoint")


def released_layout(spec: dict) -> tuple[dict, dict]:
    """The spec's network as the wheel saves it: (state_dict, {dataset: (numpy index, classes)})."""
    datasets = {name: (np.int64(i), n) for i, (name, n) in enumerate(spec["datasets"].items())}
    return generate_state_dict(spec), datasets


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("aisfx") / "checkpoint.pth"
    torch.save(released_layout(load_spec("aisfx")), path)
    return path


def test_mel_bands_match_per_bin_reference() -> None:
    """Essentia's MelBands rules written out bin by bin (HTK mel, triangles in mel, unit sum)."""
    mel = lambda f: 1127.01048 * np.log(1 + f / 700.0)  # noqa: E731
    edges = 700 * (np.exp(np.linspace(0, mel(22050.0), 98) / 1127.01048) - 1)
    ref = np.zeros((1025, 96))
    for band in range(96):
        lo, c, hi = edges[band:band + 3]
        for k in range(1025):
            f = k * SR / 2048
            if lo <= f < c:
                ref[k, band] = (mel(f) - mel(lo)) / (mel(c) - mel(lo))
            elif c <= f < hi:
                ref[k, band] = (mel(hi) - mel(f)) / (mel(hi) - mel(c))
    ref /= ref.sum(axis=0)
    np.testing.assert_allclose(essentia_mel_bands().numpy(), ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("n", [44100, 88977, 102400, 102399])
def test_frame_count_follows_essentia_framecutter(n: int) -> None:
    # counts Essentia's FrameCutter gave for these lengths (hop 1024, frames until one starts past the end)
    expected = {44100: 45, 88977: 88, 102400: 101, 102399: 101}[n]
    with torch.no_grad():
        assert EssentiaLogMel()(torch.zeros(1, n)).shape == (1, expected, 96)


def test_matches_the_package(generated) -> None:
    enc = create("aisfx", generated)
    audio = clips(**load_spec("aisfx")["clips"])
    with torch.inference_mode():
        frontend = enc.model.front_end(torch.from_numpy(audio)).numpy()
    errors = errors_against("aisfx", frontend=frontend, frames=enc.frame_embeddings(audio).numpy(),
                            clip=enc.embed(audio))
    assert max(errors.values()) <= 1e-5, errors
    official = load_outputs("aisfx")
    # the two clips give different embeddings (2.5 % apart): the comparison is not of constant outputs
    assert relative_error(official["clip"][0], official["clip"][1]) > 0.01


def test_frame_times_are_centred_on_their_spectrogram_frames(generated) -> None:
    enc = create("aisfx", generated)
    times = enc.frame_times(12, 101376)
    # frame j pools spectrogram frames 8j..8j+7, centred on samples 1024 k
    np.testing.assert_allclose(times, (8 * np.arange(12) + 3.5) * HOP / SR)
    assert times[-1] <= 101376 / SR


def test_layers_and_bf16(generated) -> None:
    audio = clips(SR, seconds=3.0)
    enc = create("aisfx", generated, layers="all")
    assert enc.n_layers == 4 and enc.embed(audio).shape == (2, 64 + 128 + 256 + 512)
    fp32 = create("aisfx", generated).embed(audio)
    bf16 = create("aisfx", generated, precision="bf16").embed(audio)
    cos = (fp32 * bf16).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(bf16, axis=1)
    assert cos.min() >= 0.999, cos


def test_refuses_other_files(generated, tmp_path: Path) -> None:
    weights, _ = torch.load(generated, weights_only=False)
    bare = tmp_path / "bare.pth"
    torch.save(weights["embedding_net.conv_block1.conv1.weight"], bare)
    with pytest.raises(CheckpointError, match="bare.pth: expected the aisfx checkpoint"):
        create("aisfx", bare)
    broken = tmp_path / "broken.pth"
    torch.save(({k: v for k, v in weights.items() if "conv_block4.conv2" not in k}, {}), broken)
    with pytest.raises(CheckpointError, match="missing keys.*conv_block4.conv2.weight"):
        create("aisfx", broken)


@needs_real
def test_released_checkpoint_loads_weights_only() -> None:
    enc = create("aisfx", REAL)  # no --trust-checkpoint: numpy integers are all it pickles beside tensors
    out = enc.embed(clips(SR, seconds=2.3))
    assert out.shape == (2, 512) and np.isfinite(out).all() and (out >= 0).all()  # max of ReLU maps
