"""BYOL-A v1/v2 with generated checkpoints in the official layout (the real weights may not be redistributed).

Set HEARTPROBE_BYOLA_D512 to a local copy of AudioNTT2020-BYOLA-64x96d512.pth to also check the real file.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from embed.encoders import create
from embed.encoders.byola import AudioNTT, LogMel
from embed.encoders.checkpoint import CheckpointError

SR = 16000


def tone(freq: float, seconds: float, amp: float = 0.3) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(seconds * SR)) / SR)).astype(np.float32)


def _state(version: int, d: int, seed: int) -> dict:
    torch.manual_seed(seed)
    state = AudioNTT(version, d).state_dict()
    for k, v in state.items():
        if k.endswith("running_mean"):
            v.copy_(0.1 * torch.randn(v.shape))
        elif k.endswith("running_var"):
            v.copy_(0.5 + torch.rand(v.shape))
    return state


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("byola")
    out = {}
    for name, version, d in (("d512", 1, 512), ("d2048", 1, 2048), ("v2", 2, 3072)):
        out[name] = (root / f"{name}.pth", _state(version, d, 0))
        torch.save(out[name][1], out[name][0])  # official files are plain state dicts
    # a training-style file: prefixed encoder plus a projector the loader must ignore
    prefixed = {f"model.{k}": v for k, v in out["v2"][1].items()}
    prefixed["projector.net.0.weight"] = torch.zeros(4, 4)
    torch.save({"state_dict": prefixed}, root / "v2_train.pth")
    out["v2_train"] = (root / "v2_train.pth", out["v2"][1])
    return out


def test_v1_frontend_matches_numpy_reference() -> None:
    x = np.random.default_rng(0).standard_normal(SR + 99).astype(np.float32) * 0.1
    got = LogMel(slaney=False)(torch.tensor(x[None]))[0].numpy()
    y = np.pad(x.astype(np.float64), 512, mode="reflect")
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(1024) / 1024)  # periodic Hann
    power = np.abs(np.fft.rfft(np.stack([y[i:i + 1024] * win for i in range(0, len(y) - 1023, 160)]), axis=1)) ** 2
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731  (HTK, torchaudio's default)
    pts = 700 * (10 ** (np.linspace(mel(60), mel(7800), 66) / 2595) - 1)
    freqs = np.linspace(0, 8000, 513)
    fb = np.stack([np.maximum(0, np.minimum((freqs - pts[i]) / (pts[i + 1] - pts[i]),
                                            (pts[i + 2] - freqs) / (pts[i + 2] - pts[i + 1]))) for i in range(64)])
    ref = np.log(fb @ power.T + np.finfo(np.float32).eps)
    assert got.shape == ref.shape == (64, 1 + (SR + 99) // 160)
    np.testing.assert_allclose(got, ref, atol=2e-3, rtol=1e-4)


@pytest.mark.parametrize("name,registered,dim", [("d512", "byola", 512), ("d2048", "byola", 2048),
                                                 ("v2", "byola2", 3072), ("v2_train", "byola2", 3072)])
def test_loads_strictly_and_detects_d(ckpts, name: str, registered: str, dim: int) -> None:
    enc = create(registered, ckpts[name][0])
    assert enc.feature_dim == enc.embedding_size == dim and enc.config()["d"] == dim
    own = enc.model["net"].state_dict()
    assert set(own) == set(ckpts[name][1]) and all(torch.equal(own[k], ckpts[name][1][k]) for k in own)


def test_broken_checkpoints(ckpts, tmp_path: Path) -> None:
    state = dict(ckpts["d512"][1])
    del state["features.5.running_var"]
    torch.save(state, tmp_path / "a.pth")
    with pytest.raises(CheckpointError, match=r"features\.5\.running_var"):
        create("byola", tmp_path / "a.pth")
    state = dict(ckpts["d512"][1])
    state["fc.3.weight"] = state["fc.3.weight"][:, :100]
    torch.save(state, tmp_path / "b.pth")
    with pytest.raises(CheckpointError, match=r"fc\.3\.weight"):
        create("byola", tmp_path / "b.pth")
    with pytest.raises(CheckpointError, match=r"fc\.3\.weight"):  # v1 file is not a v2 encoder
        create("byola2", ckpts["d512"][0])


@pytest.mark.parametrize("name,registered,hop", [("d512", "byola", 8), ("v2", "byola2", 4)])
def test_embeddings(ckpts, name: str, registered: str, hop: int) -> None:
    enc = create(registered, ckpts[name][0])
    rng = np.random.default_rng(0)
    for seconds in (1.0, 5.0, 3.37):
        x = np.stack([tone(440, seconds), (0.1 * rng.standard_normal(int(seconds * SR))).astype(np.float32)])
        a = enc.embed(x)
        assert a.shape == (2, enc.feature_dim) and np.isfinite(a).all()
        np.testing.assert_array_equal(a, enc.embed(x))
        assert not np.allclose(a[0], a[1])
        frames = enc.frame_embeddings(x).numpy()
        assert frames.shape == (2, (1 + x.shape[1] // 160) // hop, enc.feature_dim)
        np.testing.assert_allclose(a, frames.mean(1) + frames.max(1), rtol=1e-5, atol=1e-5)  # official mean+max
    for pooling, dim in (("mean", enc.feature_dim), ("max", enc.feature_dim), ("meanstd", 2 * enc.feature_dim)):
        enc.pooling = pooling
        assert enc.embed(x).shape == (2, dim) == (2, enc.embedding_size)


def test_normalisation_statistics(ckpts) -> None:
    enc = create("byola", ckpts["d512"][0])
    # the default front end is EVAR's (nnAudio Slaney, as v2), with its published SPCV2 statistics
    assert (enc.config()["norm_mean"], enc.config()["norm_std"]) == pytest.approx((-9.660292, 4.7219563))
    assert enc.config()["frontend"] == "evar"
    readme = create("byola", ckpts["d512"][0], frontend="readme")
    assert readme.norm_stats == pytest.approx((-5.4919195, 5.0389895)) and readme.config()["frontend"] == "readme"
    assert create("byola2", ckpts["v2"][0]).norm_stats == pytest.approx((-9.660292, 4.7219563))
    waves = [tone(200, 1.0), tone(1000, 2.5, amp=0.05)]
    x = np.stack([tone(300, 1.0), tone(2000, 1.0)])
    before, cfg_before = enc.embed(x), enc.config()
    mean, std = enc.fit_normalisation(waves)
    with torch.no_grad():
        values = torch.cat([enc.model["lms"](torch.tensor(w[None])).flatten() for w in waves]).double()
    assert (mean, std) == pytest.approx((values.mean().item(), values.std(unbiased=False).item()), rel=1e-6)
    assert enc.config() != cfg_before and enc.config()["norm_mean"] == mean
    assert not np.allclose(enc.embed(x), before)
    fixed = create("byola", ckpts["d512"][0], norm_stats=(mean, std))
    np.testing.assert_array_equal(fixed.embed(x), enc.embed(x))


REAL_D512 = os.environ.get("HEARTPROBE_BYOLA_D512")


@pytest.mark.skipif(not REAL_D512 or not Path(REAL_D512).is_file(), reason="real BYOL-A d512 not given")
def test_real_d512() -> None:
    enc = create("byola", REAL_D512)
    x = np.stack([tone(440, 2.0), tone(3000, 2.0)])
    e = enc.embed(x)
    assert enc.d == 512 and e.shape == (2, 512) and np.isfinite(e).all() and (e >= 0).all()
    assert not np.allclose(e[0], e[1])


def test_extract_fits_normalisation_on_training_patients_only(ckpts, tmp_path) -> None:
    """`extract --fit-normalisation paper`: statistics from the patients in train of all three paper
    splits (no test patient of any split), recorded in the cache config, so the key changes."""
    import json

    import h5py
    import pipeline
    from embed.audio import open_resampled
    from embed.datasets.circor import load_circor
    from embed.datasets.splits import make_splits, train_in_every_split
    from embed.datasets.synthetic import make_dataset

    synthetic_data = make_dataset(tmp_path / "data", n_patients=16, seed=3)
    circor = load_circor(synthetic_data)
    splits = make_splits(circor, "paper")
    train = train_in_every_split(splits)
    assert train and all(s[p] == "train" for s in splits.values() for p in train)
    assert set(train) < set(circor.patients)

    cache = tmp_path / "cache"
    args = ["extract", "--data", str(synthetic_data), "--encoder", "byola", "--checkpoint", str(ckpts["d512"][0]),
            "--cache", str(cache), "--batch-size", "8", "--window", "1", "--train-stride", "1"]
    assert pipeline.main(args + ["--fit-normalisation", "paper"]) == 0
    # the other front end with its published default statistics: another cache file
    assert pipeline.main(args + ["--encoder-opt", "frontend=readme"]) == 0
    files = sorted(cache.glob("byola-*.h5"))
    assert len(files) == 2
    configs = {c["cfg_frontend"]: c for c in (json.loads(h5py.File(f, "r").attrs["config"]) for f in files)}
    assert set(configs) == {"evar", "readme"}
    assert (configs["readme"]["cfg_norm_mean"], configs["readme"]["cfg_norm_std"]) == (-5.4919195, 5.0389895)
    fitted = (configs["evar"]["cfg_norm_mean"], configs["evar"]["cfg_norm_std"])

    expected = create("byola", ckpts["d512"][0]).fit_normalisation(
        open_resampled(r.wav, SR).samples for r in circor.recordings() if r.patient_id in set(train))
    assert fitted == pytest.approx(expected, rel=1e-6)


# -- official outputs: the authors' code (byol-a README path, EVAR) on a generated checkpoint ------------
# (tests/fixtures/official/make_byola.py made the arrays; the checkpoint is rebuilt here from the spec)

def _outputs(enc, seconds: float) -> dict[str, np.ndarray]:
    """Normalised log-mel (the network input), frame features and clip embedding of the fixture clips."""
    import official
    audio = official.clips(SR, seconds=seconds)
    mean, std = enc.norm_stats
    with torch.inference_mode():
        lms = (enc.model["lms"](torch.from_numpy(audio)) - mean) / std
    return {"frontend": lms.numpy(), "frames": enc.frame_embeddings(audio).numpy(), "clip": enc.embed(audio)}


def _official_encoder(tmp_path: Path, fixture: str, registered: str, **options):
    import official
    path = tmp_path / f"{fixture}.pth"
    torch.save(official.generate_state_dict(official.load_spec(fixture)), path)  # plain state dict, as released
    return create(registered, path, **options)


@pytest.mark.parametrize("fixture,registered,frontend,outputs,seconds", [
    ("byola", "byola", "evar", "outputs_evar", 2.0),
    ("byola", "byola", "readme", "outputs_readme", 2.0),
    ("byola2", "byola2", "evar", "outputs", 1.0)])
def test_matches_official_outputs(tmp_path: Path, fixture: str, registered: str, frontend: str, outputs: str,
                                  seconds: float) -> None:
    import official
    expected = official.load_outputs(fixture, outputs)
    ours = _outputs(_official_encoder(tmp_path, fixture, registered, frontend=frontend), seconds)
    errors = {k: official.relative_error(ours[k], expected[k]) for k in ("frontend", "frames", "clip")}
    print(f"\nrelative error vs official, {registered} {frontend}: "
          + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    assert max(errors.values()) <= 1e-4, errors


def test_readme_and_evar_front_ends_differ(tmp_path: Path) -> None:
    """The option really switches the mel filter bank: each front end misses the other's official output."""
    import official
    for frontend, other in (("evar", "outputs_readme"), ("readme", "outputs_evar")):
        ours = _outputs(_official_encoder(tmp_path, "byola", "byola", frontend=frontend), 2.0)
        expected = official.load_outputs("byola", other)
        assert official.relative_error(ours["frontend"], expected["frontend"]) > 0.1
        assert official.relative_error(ours["frames"], expected["frames"]) > 1e-3
    with pytest.raises(ValueError, match="frontend"):
        _official_encoder(tmp_path, "byola", "byola", frontend="torchaudio")
    with pytest.raises(ValueError, match="v1 only"):
        _official_encoder(tmp_path, "byola2", "byola2", frontend="readme")
