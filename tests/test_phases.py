"""Phase pooling: each frame goes to the phase interval holding its centre time."""
import numpy as np
import pytest

from classify.features.phases import (BLOCKS, PARTS, folder_intervals, frame_labels, phase_feature_names,
                             phase_feature_size, phase_feature_table, phase_features, tsv_intervals)
from embed.datasets.circor import load_circor, read_tsv
from embed.encoders import create
from embed.extract import extract, open_cache
from embed.frames import FrameConfig
from embed.segments import SegmentConfig


def brute_force_label(t: float, intervals: np.ndarray) -> int:
    hits = [int(lab) for a, b, lab in intervals if a <= t < b]
    return hits[0] if hits else 0


def brute_force_part(t: float, intervals: np.ndarray, label: int, lo: float, hi: float) -> bool:
    return any(a <= t < b and lab == label and lo <= (t - a) / (b - a) < hi for a, b, lab in intervals)


def test_frames_encoding_their_time_are_pooled_by_phase():
    rng = np.random.default_rng(0)
    times = np.sort(rng.uniform(0, 6, 400))
    times[:3] = [1.0, 1.2, 0.999999]  # frames exactly on a boundary belong to the later interval
    times.sort()
    edges = np.array([0.4, 0.5, 0.8, 0.9, 1.2, 1.3, 1.6, 1.7, 2.0])  # S1 sys S2 dia, twice
    intervals = np.array([(a, b, 1 + i % 4) for i, (a, b) in enumerate(zip(edges[:-1], edges[1:]))])
    intervals = np.vstack([intervals, [[2.0, 6.0, 0]]])[::-1]  # unannotated tail; order must not matter
    frames = np.stack([times, times ** 2], axis=1)  # a frame's values say when it is
    vec = phase_features(frames, times, intervals)
    assert vec.shape == (phase_feature_size(2),) == (len(phase_feature_names(2)),)
    labels = np.array([brute_force_label(t, intervals) for t in times])
    np.testing.assert_array_equal(frame_labels(times, intervals), labels)
    block = {name: vec[2 * i:2 * i + 2] for i, name in enumerate(BLOCKS)}
    overall = frames.mean(0)
    np.testing.assert_allclose(block["recording_mean"], overall, rtol=1e-5)
    for name, label, lo, hi in PARTS:
        member = np.array([brute_force_part(t, intervals, label, lo, hi + (hi == 1.0)) for t in times])
        assert member.any()
        np.testing.assert_allclose(block[f"{name}_minus_mean"], frames[member].mean(0) - overall,
                                   rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(block["std_systole"], frames[labels == 2].std(0), rtol=1e-4)
    assert not vec[-len(PARTS):].any()  # no part missing
    assert not np.isin(times[labels == 0], times[labels > 0]).any() and (labels == 0).sum() > 100


def test_missing_phases_are_zeros_with_a_flag():
    times = np.arange(0.005, 1.0, 0.01)
    frames = np.ones((len(times), 3))
    vec = phase_features(frames, times, np.array([[0.0, 0.5, 2.0]]))  # systole only
    block = vec[:-len(PARTS)].reshape(len(BLOCKS), 3)
    assert (block[0] == 1).all() and not block[1:].any()  # parts relative to the recording's mean
    assert vec[-len(PARTS):].tolist() == [1, 1, 0, 0, 0, 1, 1]
    assert phase_features(frames, times, np.zeros((0, 3)))[-len(PARTS):].tolist() == [1] * len(PARTS)
    with pytest.raises(ValueError, match="one time per frame"):
        phase_features(frames, times[:-1], np.zeros((0, 3)))


def test_phase_table_over_real_tsv_files(circor_mini, tmp_path):
    recordings = load_circor(circor_mini).recordings()[:3]
    enc = create("logmel")
    config = FrameConfig("fp32")
    extract(enc, recordings, tmp_path, frames=config, progress=False)
    cache = open_cache(enc, SegmentConfig(), tmp_path, config)
    intervals = tsv_intervals(recordings)
    missing = []
    table = phase_feature_table(cache, {k: v for k, v in intervals.items() if k != recordings[2].recording_id},
                                on_missing=missing.append)
    assert missing == [recordings[2].recording_id] and table[missing[0]][-len(PARTS):].tolist() == [1] * len(PARTS)
    rec = recordings[0]
    cached = cache.read([rec.recording_id])[rec.recording_id]
    tsv = read_tsv(rec.tsv)
    labels = np.array([brute_force_label(t, tsv) for t in cached.times])
    dim = cached.embeddings.shape[1]
    frames = cached.embeddings.astype(np.float32)
    np.testing.assert_allclose(table[rec.recording_id][dim:2 * dim],  # S1 relative to the recording
                               frames[labels == 1].mean(0) - frames.mean(0), rtol=1e-4, atol=1e-4)
    # a segmenter's output folder reads the same way; a bad file is named, not the end of the run
    (tmp_path / "seg").mkdir()
    (tmp_path / "seg" / f"{rec.recording_id}.tsv").write_text(rec.tsv.read_text())
    (tmp_path / "seg" / "bad.tsv").write_text("0\t0\t28")  # as CirCor's 50782_MV_1.tsv
    problems = []
    read = folder_intervals(tmp_path / "seg", problems)
    assert set(read) == {rec.recording_id} and "bad.tsv" in problems[0].path and "unknown state '28'" in problems[0].message
    again = phase_feature_table(cache, read, [rec.recording_id])
    np.testing.assert_array_equal(again[rec.recording_id], table[rec.recording_id])
