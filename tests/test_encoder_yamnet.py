"""YAMNet from the published yamnet.tflite: loading, front end, tagging sanity, precision.

The weight file is not downloaded here: tests that need it look in $HEARTPROBE_WEIGHTS or in
../shared/weights next to the repo and are skipped when it is absent.
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("tflite")

from embed.encoders import create  # noqa: E402
from embed.encoders.checkpoint import CheckpointError  # noqa: E402
from embed.encoders.yamnet import (  # noqa: E402
    MIN_SAMPLES, N_FFT, PATCH_HOP_SAMPLES, YamnetModel, read_yamnet_tflite, tf_mel_matrix)
from official import clips, errors_against, load_outputs, relative_error  # noqa: E402

SR = 16000


def _weights_dir() -> Path:
    env = os.environ.get("HEARTPROBE_WEIGHTS")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "weights"


TFLITE = _weights_dir() / "yamnet.tflite"
CLASS_MAP = _weights_dir() / "yamnet_class_map.csv"
needs_file = pytest.mark.skipif(not TFLITE.is_file(), reason=f"{TFLITE} not present")


def _signals(seconds: float = 5.0) -> dict[str, np.ndarray]:
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(0)

    def burst(onset: float, freq: float, decay: float) -> np.ndarray:
        tt = t - onset
        return np.where(tt >= 0, np.exp(-np.clip(tt, 0, None) / decay) * np.sin(2 * np.pi * freq * tt), 0.0)

    # lub-dub at 72 bpm: decaying low tones for S1 and S2
    heart = sum(burst(c, 180, 0.03) + 0.6 * burst(c + 0.3, 250, 0.02) for c in np.arange(0.1, seconds, 60 / 72))
    heart = heart + 0.002 * rng.standard_normal(t.size)
    return {
        "sine": (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32),
        "noise": (0.3 * rng.standard_normal(t.size)).astype(np.float32),
        "heart": (0.5 * heart / np.abs(heart).max()).astype(np.float32),
    }


@pytest.fixture(scope="module")
def encoder():
    if not TFLITE.is_file():
        pytest.skip(f"{TFLITE} not present")
    return create("yamnet", TFLITE)


@pytest.fixture(scope="module")
def class_names() -> list[str]:
    if not CLASS_MAP.is_file():
        pytest.skip(f"{CLASS_MAP} not present")
    with open(CLASS_MAP, newline="") as fh:
        return [row[2] for row in list(csv.reader(fh))[1:]]


def test_body_shapes_follow_tf_same_padding() -> None:
    # The .tflite graph goes 96x64 -> 48x32 -> ... -> 3x2 before global pooling.
    model = YamnetModel().eval()
    x = torch.zeros(2, 1, 96, 64)
    sizes = []
    with torch.no_grad():
        for layer in model.layers:
            x = layer(x)
            sizes.append(tuple(x.shape[1:]))
    assert sizes[0] == (32, 48, 32) and sizes[2] == (128, 24, 16) and sizes[-1] == (1024, 3, 2)


def test_tf_mel_matrix_shape_and_dc_bin() -> None:
    mel = tf_mel_matrix()
    assert mel.shape == (N_FFT // 2 + 1, 64)
    assert float(mel[0].abs().sum()) == 0.0  # TF zeroes the DC bin
    freqs = np.linspace(0, SR / 2, N_FFT // 2 + 1)
    occupied = freqs[(mel.sum(1) > 0).numpy()]
    assert occupied.min() > 125 and occupied.max() < 7500


@needs_file
def test_frontend_equals_the_graphs_constants(encoder) -> None:
    fe = encoder.tflite_frontend
    np.testing.assert_array_equal(fe["window"], encoder.model.frontend.window.numpy())
    k, n = np.arange(N_FFT // 2 + 1)[:, None], np.arange(N_FFT)[None]
    half_step = 0.5 / 127 + 1e-6  # int8 rounding of values in [-1, 1]
    assert np.abs(fe["dft_real"] - np.cos(2 * np.pi * k * n / N_FFT)).max() <= half_step
    assert np.abs(fe["dft_imag"] - np.sin(2 * np.pi * k * n / N_FFT)).max() <= half_step
    assert np.abs(fe["mel"].T - tf_mel_matrix().numpy()).max() <= half_step
    np.testing.assert_allclose(fe["mel_bias"], 0.001, rtol=1e-6)


@needs_file
@pytest.mark.parametrize("seconds", [0.5, 1.0, 3.37, 5.0])
def test_shapes_finite_deterministic(encoder, seconds: float) -> None:
    n = int(round(seconds * SR))
    audio = np.random.default_rng(1).standard_normal((2, n)).astype(np.float32) * 0.1
    frames = encoder.frame_embeddings(audio)
    # official pad_waveform: one 0.975 s patch, then a whole number of 0.48 s hops
    patches = 1 + math.ceil(max(n - MIN_SAMPLES, 0) / PATCH_HOP_SAMPLES)
    assert tuple(frames.shape) == (2, patches, 1024)
    assert torch.isfinite(frames).all() and (frames >= 0).all()  # ReLU before pooling
    np.testing.assert_array_equal(encoder.embed(audio), encoder.embed(audio))
    assert not np.allclose(frames[0].numpy(), frames[1].numpy())


@needs_file
@pytest.mark.parametrize("pooling,size", [("mean", 1024), ("max", 1024), ("meanmax", 1024), ("meanstd", 2048)])
def test_pooling(pooling: str, size: int) -> None:
    enc = create("yamnet", TFLITE, pooling=pooling)
    out = enc.embed(np.random.default_rng(2).standard_normal((1, 3 * SR)).astype(np.float32) * 0.1)
    assert out.shape == (1, size) == (1, enc.embedding_size) and np.isfinite(out).all()


@needs_file
def test_tags_make_sense(encoder, class_names) -> None:
    sig = _signals()
    scores = encoder.tag(np.stack(list(sig.values()))).numpy()
    assert scores.shape == (3, 521)
    top = {name: [class_names[i] for i in np.argsort(-s)[:5]] for name, s in zip(sig, scores)}
    assert "Sine wave" in top["sine"], top["sine"]
    assert top["noise"][0] in ("White noise", "Noise", "Static"), top["noise"]
    assert "White noise" in top["noise"][:3]
    heart = class_names.index("Heart sounds, heartbeat")
    assert scores[2, heart] > 0.1 and scores[2, heart] > 10 * max(scores[0, heart], scores[1, heart])
    assert not {"White noise", "Noise", "Static"} & set(top["heart"]), top["heart"]
    emb = encoder.embed(np.stack([sig["noise"], sig["heart"]]))
    cos = float(emb[0] @ emb[1] / np.linalg.norm(emb[0]) / np.linalg.norm(emb[1]))
    assert cos < 0.8


@needs_file
def test_bf16_close_to_fp32(encoder) -> None:
    enc16 = create("yamnet", TFLITE, precision="bf16")
    audio = np.stack(list(_signals().values()))
    a, b = encoder.embed(audio), enc16.embed(audio)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert (cos > 0.99).all(), cos


@needs_file
def test_config_mentions_frontend(encoder) -> None:
    assert encoder.config()["frontend"] == "float-stft" and encoder.frame_hop_s == 0.48


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        read_yamnet_tflite(tmp_path / "nope.tflite")


def test_not_a_tflite_file(tmp_path: Path) -> None:
    bad = tmp_path / "fake.tflite"
    bad.write_bytes(b"\0" * 4096)
    with pytest.raises(CheckpointError, match="not a TF-Lite"):
        read_yamnet_tflite(bad)


@needs_file
def test_truncated_tflite_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "cut.tflite"
    bad.write_bytes(TFLITE.read_bytes()[:200_000])
    with pytest.raises(CheckpointError, match="cut.tflite"):
        create("yamnet", bad)


# -- optional cross-check against the TF-Lite runtime ------------------------------------------

@pytest.fixture(scope="module")
def interpreter():
    """`run(x, reference)`: the TF-Lite runtime on the first 0.975 s of x."""
    litert = pytest.importorskip("ai_edge_litert.interpreter")
    if not TFLITE.is_file():
        pytest.skip(f"{TFLITE} not present")
    interps = {}
    for reference in (False, True):
        kw = ({"experimental_op_resolver_type": litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
              if reference else {})
        interps[reference] = litert.Interpreter(str(TFLITE), **kw)
        interps[reference].allocate_tensors()

    def run(x: np.ndarray, reference: bool) -> dict[str, np.ndarray]:
        interp = interps[reference]
        interp.set_tensor(interp.get_input_details()[0]["index"], x[None, :MIN_SAMPLES])
        interp.invoke()
        out = {tuple(d["shape"]): interp.get_tensor(d["index"]) for d in interp.get_output_details()}
        return {"logmel": out[(96, 64)], "scores": out[(1, 521)][0]}
    return run


def test_runtime_front_end_is_the_parsed_graph(encoder, interpreter) -> None:
    # The runtime's reference hybrid kernels quantize each input row to int8 (symmetric) before
    # the int8 matmuls; emulating that with the constants we parsed must reproduce its log-mel.
    fe = encoder.tflite_frontend

    def rowq(x: np.ndarray) -> np.ndarray:
        s = np.abs(x).max(-1, keepdims=True) / 127
        s[s == 0] = 1
        return np.round(x / s) * s

    for x in _signals(1.0).values():
        frames = np.lib.stride_tricks.sliding_window_view(x[:MIN_SAMPLES], 400)[::160] * fe["window"]
        frames = rowq(np.pad(frames, ((0, 0), (56, 56))))
        mag = np.hypot(frames @ fe["dft_real"].T, frames @ fe["dft_imag"].T)
        logmel = np.log(rowq(mag) @ fe["mel"].T + fe["mel_bias"])
        np.testing.assert_allclose(logmel, interpreter(x, reference=True)["logmel"], atol=1e-3)


def test_scores_agree_with_runtime(encoder, interpreter) -> None:
    # Our float maths avoids the runtime's on-the-fly int8 activation quantization, so we compare
    # on broadband sounds, where that quantization is mild (tones and thumps have near-empty
    # bins whose log-mel it changes by several units); a mis-mapped weight breaks this badly.
    rng = np.random.default_rng(3)
    t = np.arange(MIN_SAMPLES) / SR
    white = rng.standard_normal(MIN_SAMPLES)
    pink = np.fft.irfft(np.fft.rfft(white) / np.sqrt(np.arange(1, MIN_SAMPLES // 2 + 2)), MIN_SAMPLES)
    sounds = {"white": white, "pink": pink, "am": white * (1 + np.sin(2 * np.pi * 3 * t)),
              "chirp": np.sin(2 * np.pi * (200 + 3000 * t) * t) + 0.3 * white}
    for name, x in sounds.items():
        x = (0.5 * x / np.abs(x).max()).astype(np.float32)
        ref = interpreter(x, reference=False)["scores"]
        with torch.inference_mode():
            ours = torch.sigmoid(encoder.model(torch.from_numpy(x[None]))[1])[0, 0].numpy()
        assert np.abs(ours - ref).max() < 0.05, name
        assert ours.argmax() == ref.argmax(), name
        assert np.corrcoef(np.log(ours), np.log(ref))[0, 1] > 0.999, name


# -- the authors' float model (fixture made by tests/fixtures/official/make_yamnet.py) ----------

def test_matches_official_float_model(encoder) -> None:
    """Log-mel patches (features.py), patch embeddings and their mean (yamnet.py, the .tflite's
    weights dequantized) as TensorFlow computes them."""
    audio = clips(SR, seconds=2.0, n=2)
    with torch.inference_mode():
        patches = encoder.model.patches(torch.from_numpy(audio)).numpy()
    errors = errors_against("yamnet", frontend=patches, frames=encoder.frame_embeddings(audio).numpy(),
                            clip=encoder.embed(audio))
    assert max(errors.values()) <= 1e-4, errors
    official = load_outputs("yamnet")
    assert relative_error(official["clip"][0], official["clip"][1]) > 0.05
