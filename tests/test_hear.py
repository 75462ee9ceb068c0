"""The HEAR 2021 API (`embed/hear.py`), and the HEAR project's own validator run on it."""
from __future__ import annotations

import importlib
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from embed import hear
from official import load_spec
from test_encoder_aisfx import released_layout as aisfx_released_layout
from test_encoder_efficientat import REAL_MN04

REPO = Path(__file__).resolve().parents[1]


def test_hear_api_shapes_and_consistency():
    model = hear.load_model(encoder="logmel")
    assert isinstance(model, torch.nn.Module)
    # logmel works at CirCor's 4 kHz; HEAR hands it 16 kHz audio, resampled inside
    assert model.sample_rate == 16000 and model.encoder.sample_rate == 4000
    assert model.scene_embedding_size == 120 and model.timestamp_embedding_size == 60
    audio = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 16000 * 3)).astype(np.float32))
    frames, times = hear.get_timestamp_embeddings(audio, model)
    assert frames.shape == (2, 301, 60) and times.shape == frames.shape[:2]
    np.testing.assert_allclose(times[0].numpy(), 10.0 * np.arange(301), atol=1e-3)  # centred STFT frames
    scene = hear.get_scene_embeddings(audio, model)
    assert scene.shape == (2, 120) and scene.dtype == torch.float32
    at_4k = hear.resample(audio.numpy(), 16000, 4000)
    np.testing.assert_allclose(scene.numpy(), model.encoder.embed(at_4k), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rate, expected", [(4000, 16000), (16000, 16000), (32000, 32000), (44100, 44100),
                                            (24000, 32000), (96000, 48000)])
def test_hear_sample_rate(rate: int, expected: int) -> None:
    assert hear.hear_sample_rate(rate) == expected


def test_module_per_encoder():
    mod = hear.module("logmel")
    assert mod.load_model().encoder.name == "logmel"
    with pytest.raises(KeyError, match="unknown encoder"):
        hear.module("nope")
    imported = importlib.import_module("embed.hear.quality")  # what `hear-validator embed.hear.quality` does
    assert imported.load_model().encoder.name == "quality"
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("embed.hear.nope")


def test_to_moves_the_encoder():
    model = hear.load_model(encoder="logmel")
    assert model.to("cpu") is model and model.encoder.device == torch.device("cpu")


# -- hear-validator itself: `pip install --ignore-requires-python -e ".[hearvalidator]"` ----------
needs_validator = pytest.mark.skipif(
    shutil.which("hear-validator") is None or importlib.util.find_spec("tensorflow") is None,
    reason='hear-validator not installed (pip install --ignore-requires-python -e ".[hearvalidator]")')


def validate(module: str, weights: Path | None = None) -> str:
    cmd = ["hear-validator", module, *(["--model", str(weights)] if weights else []), "--device", "cpu"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""})
    print(f"\n$ {' '.join(cmd)}\n{done.stdout}", file=sys.stderr)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Looks good!" in done.stdout
    return done.stdout


@needs_validator
def test_hear_validator_accepts_logmel():
    out = validate("embed.hear.logmel")
    assert "Model sample rate is: 16000" in out


@needs_validator
def test_hear_validator_accepts_a_generated_checkpoint(tmp_path: Path):
    path = tmp_path / "checkpoint.pth"
    torch.save(aisfx_released_layout(load_spec("aisfx")), path)
    out = validate("embed.hear.aisfx", path)
    assert "Model sample rate is: 44100" in out and "scene_embedding_size: 512" in out


@needs_validator
@pytest.mark.skipif(not REAL_MN04.is_file(), reason="real mn04 checkpoint not on this machine")
def test_hear_validator_accepts_real_mn04():
    out = validate("embed.hear.mn04", REAL_MN04)
    assert "Model sample rate is: 32000" in out and "Max timestamp 960.0ms" in out
