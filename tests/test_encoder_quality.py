"""`quality` encoder: rhythm, noise and clipping features on synthetic signals and real CirCor."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from embed.audio import open_resampled
from embed.cache import read_config
from embed.encoders import create
from embed.encoders.quality import FEATURE_NAMES
from embed.datasets.circor import load_circor
from embed.extract import extract, open_cache
from embed.segments import SegmentConfig

RATE = 4000
SECONDS = 5.0


def beat_train(bpm: float, rate: int = RATE, seconds: float = SECONDS, s2_after_s: float = 0.28,
               seed: int = 0) -> np.ndarray:
    """S1 (50-60 Hz burst) and a softer S2 every 60/bpm s, slight amplitude variation, faint noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    x = np.zeros_like(t)
    for onset in np.arange(0.1, seconds, 60.0 / bpm):
        for delay, freq, amp in ((0.0, 55.0, 1.0), (s2_after_s, 70.0, 0.6)):
            tt = t - onset - delay
            burst = (tt >= 0) & (tt < 0.08)
            x[burst] += amp * rng.uniform(0.8, 1.0) * np.sin(2 * np.pi * freq * tt[burst]) * np.hanning(burst.sum())
    return (0.4 * x + 0.002 * rng.standard_normal(t.size)).astype(np.float32)


def features(*windows: np.ndarray) -> list[dict[str, float]]:
    enc = create("quality")
    out = enc.embed(np.stack(windows))
    assert out.shape == (len(windows), len(FEATURE_NAMES)) and enc.feature_names == FEATURE_NAMES
    return [dict(zip(FEATURE_NAMES, map(float, row))) for row in out]


@pytest.mark.parametrize("bpm", [62.0, 95.0, 140.0])
def test_beat_train_is_periodic_at_its_rate(bpm: float) -> None:
    (f,) = features(beat_train(bpm, s2_after_s=min(0.3, 0.4 * 60 / bpm)))
    assert f["periodicity"] > 0.8 and f["harmonic_consistency"] > 0.7
    assert abs(f["heart_rate_bpm"] - bpm) <= 0.05 * bpm, f["heart_rate_bpm"]
    assert f["beat_interval_cv"] < 0.1
    assert f["full_scale_fraction"] == 0.0 and f["flat_top_fraction"] < 1e-3


def test_white_noise_is_aperiodic_and_flat() -> None:
    noise = 0.1 * np.random.default_rng(1).standard_normal(int(SECONDS * RATE)).astype(np.float32)
    beats, white = features(beat_train(80.0), noise)
    assert white["periodicity"] < 0.4 < beats["periodicity"]
    assert white["spectral_flatness"] > 0.8 > 0.1 > beats["spectral_flatness"]
    assert white["high_band_ratio_db"] > 0 > beats["high_band_ratio_db"]
    assert white["zero_crossing_rate"] > beats["zero_crossing_rate"]


def test_clipping_is_counted_at_full_scale_and_below_it() -> None:
    clean = beat_train(80.0)
    loud = clean / np.abs(clean).max() * 3.0
    at_full_scale, below = np.clip(loud, -1, 1), np.clip(loud, -0.5, 0.5)
    f_clean, f_full, f_below = features(clean, at_full_scale, below)
    assert f_full["full_scale_fraction"] > 0.01 and f_full["flat_top_fraction"] > 0.01
    assert f_below["full_scale_fraction"] == 0.0 and f_below["flat_top_fraction"] > 0.01
    assert f_clean["full_scale_fraction"] == 0.0 and f_clean["flat_top_fraction"] < 1e-3
    assert f_full["crest_factor_db"] < f_clean["crest_factor_db"]


def test_silence_and_constant_input_give_the_documented_finite_values() -> None:
    n = int(SECONDS * RATE)
    silence, constant = features(np.zeros(n, np.float32), np.full(n, 0.3, np.float32))
    for f in (silence, constant):
        assert all(np.isfinite(v) for v in f.values())
        assert f["periodicity"] == f["heart_rate_bpm"] == f["harmonic_consistency"] == 0.0
        assert f["beat_interval_cv"] == 1.0 and f["silent_fraction"] == 1.0
        assert f["level_db"] == -120.0 and f["zero_crossing_rate"] == 0.0 and f["spectral_flatness"] == 0.0
    assert silence["flat_top_fraction"] == 0.0 and constant["flat_top_fraction"] == 1.0
    short = create("quality").embed(np.stack([beat_train(80.0, seconds=0.3)]))  # no room for a period
    assert np.isfinite(short).all() and short[0, FEATURE_NAMES.index("periodicity")] == 0.0


def test_two_khz_recording_gives_the_same_rhythm_after_resampling(tmp_path) -> None:
    """PhysioNet 2016 is 2 kHz: extract resamples it to the encoder's 4 kHz; bands stay below 1 kHz."""
    path = tmp_path / "a0001.wav"
    sf.write(path, beat_train(75.0, rate=2000), 2000, subtype="PCM_16")
    audio = open_resampled(path, RATE)
    (f,) = features(audio.windows(np.array([0]), int(SECONDS * RATE))[0])
    assert abs(f["heart_rate_bpm"] - 75.0) <= 0.05 * 75.0 and f["periodicity"] > 0.8


def test_extract_and_cache_on_circor_mini(circor_mini, tmp_path) -> None:
    recordings = load_circor(circor_mini).recordings()[:30]
    report = extract(create("quality"), recordings, tmp_path, batch_size=32, progress=False)
    assert report.done == len(recordings)
    cached = open_cache(create("quality"), SegmentConfig(), tmp_path).read()
    assert sorted(cached) == sorted(r.recording_id for r in recordings)
    windows = np.concatenate([rec.eval() for rec in cached.values()])
    assert windows.shape[1] == len(FEATURE_NAMES) and np.isfinite(windows).all()
    rate = windows[:, FEATURE_NAMES.index("heart_rate_bpm")]
    periodicity = windows[:, FEATURE_NAMES.index("periodicity")]
    # real heart sounds: most windows show a rhythm, at a child's or adult's heart rate
    print(f"median periodicity {np.median(periodicity):.2f}, heart rate {np.median(rate[periodicity > 0.3]):.0f} bpm")
    assert np.median(periodicity) > 0.3 and 60 <= np.median(rate[periodicity > 0.3]) <= 160
    # the cache names the features, so reports can label its columns
    assert read_config(next(tmp_path.glob("quality-*.h5")))["cfg_features"].split(",") == list(FEATURE_NAMES)
