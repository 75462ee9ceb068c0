"""The heart-cycle segmenter: duration-model decoding and accuracy on synthetic beats."""
import numpy as np
import pandas as pd
import pytest

import pipeline
from classify.features.caches import find_cache
from classify.features.phases import frame_labels, tsv_intervals
from classify.estimators.segmenter import PhaseSegmenter, cycle_period, labels_to_intervals, viterbi_cycle
from embed.datasets.circor import load_circor, read_tsv
from embed.encoders import create
from embed.extract import extract
from embed.frames import FrameConfig


def test_viterbi_keeps_the_cycle_order_and_the_duration_limits():
    rng = np.random.default_rng(0)
    truth = np.concatenate([np.full(n, k) for _ in range(6) for k, n in enumerate((5, 10, 4, 20))])[7:]
    # noisy emissions: the right phase is only a little more likely, and often not the most likely
    log_emission = rng.normal(0, 1.0, (len(truth), 4))
    log_emission[np.arange(len(truth)), truth] += 1.0
    durations = [np.log(np.bincount([n], minlength=n + 3)[1:] + 1e-4) for n in (5, 10, 4, 20)]
    decoded = viterbi_cycle(log_emission, durations)
    assert (decoded == truth).mean() > 0.9 > (log_emission.argmax(1) == truth).mean()
    runs = labels_to_intervals(decoded + 1, np.arange(len(decoded)) + 0.5, 1.0)
    assert set(np.diff(runs[:, 2]) % 4) == {1}  # S1 -> systole -> S2 -> diastole -> S1 ...
    inner = runs[1:-1]  # the edge segments may be cut by the recording's ends
    assert all(inner[inner[:, 2] == k + 1, 1].__sub__(inner[inner[:, 2] == k + 1, 0]).max() <= n + 2
               for k, n in enumerate((5, 10, 4, 20)))


@pytest.fixture(scope="module")
def synthetic_frames(synthetic_data, tmp_path_factory):
    cache_dir = tmp_path_factory.mktemp("frames")
    dataset = load_circor(synthetic_data)
    recordings = dataset.recordings()[:40]
    extract(create("logmel"), recordings, cache_dir, frames=FrameConfig(), progress=False)
    return recordings, cache_dir


def test_segmenter_beats_chance_on_synthetic_beats(synthetic_frames):
    recordings, cache_dir = synthetic_frames
    frames = find_cache(cache_dir, "logmel", "frames").read()
    intervals = tsv_intervals(recordings)
    patients = sorted({r.patient_id for r in recordings})
    fit = [r.recording_id for r in recordings if r.patient_id in patients[:len(patients) // 2]]
    test = [r.recording_id for r in recordings if r.patient_id not in patients[:len(patients) // 2]]
    segmenter = PhaseSegmenter(max_frames=20_000).fit([frames[r].embeddings for r in fit],
                                                      [frames[r].times for r in fit], [intervals[r] for r in fit])
    correct = total = 0
    counts = np.zeros(5)
    period_errors = []
    for rid in test:
        estimate = segmenter.estimate_period(segmenter.log_posteriors(frames[rid].embeddings, frames[rid].times)[0])
        period_errors.append(abs(estimate / cycle_period(intervals[rid]) - 1))
        true = frame_labels(frames[rid].times, intervals[rid])
        predicted = frame_labels(frames[rid].times, segmenter.predict(frames[rid].embeddings, frames[rid].times))
        correct += (predicted == true)[true > 0].sum()
        total += (true > 0).sum()
        counts += np.bincount(true, minlength=5)
    chance = counts[1:].max() / counts[1:].sum()  # always the most common phase (diastole)
    assert correct / total > 0.8 > chance + 0.2
    assert np.mean(np.array(period_errors) < 0.1) > 0.8  # heart rate read off the S1 posterior
    # saved as plain arrays and loaded back, it segments the same way (heart-rate model included)
    again = PhaseSegmenter.from_state(segmenter.get_params(), segmenter.state())
    rid = test[0]
    np.testing.assert_array_equal(again.predict(frames[rid].embeddings, frames[rid].times),
                                  segmenter.predict(frames[rid].embeddings, frames[rid].times))
    assert again.log_ratio_ is not None


def test_segment_command_scores_test_groups_and_writes_tsv(synthetic_data, synthetic_frames, tmp_path, capsys):
    recordings, cache_dir = synthetic_frames
    splits = tmp_path / "splits.csv"
    pids = sorted({r.patient_id for r in load_circor(synthetic_data).recordings()}, key=int)
    test = set(pids[::3])
    pd.DataFrame({"patient_id": pids, "split1": ["test" if p in test else "train" for p in pids]}
                 ).to_csv(splits, index=False)
    out = tmp_path / "seg"
    assert pipeline.main(["segment", "--data", str(synthetic_data), "--cache", str(cache_dir),
                          "--splits", str(splits), "--out", str(out)]) == 0
    scores = pd.read_csv(out / "segment-scores.csv")
    cached = {r.recording_id for r in recordings}
    n_test = sum(r.patient_id in test for r in load_circor(synthetic_data).recordings() if r.recording_id in cached)
    assert scores["n_test_recordings"].tolist() == [n_test]
    assert scores["frame_accuracy"][0] > 0.8 > scores["most_common_phase_share"][0] + 0.2
    written = sorted(p.stem for p in (out / "intervals" / "split1").glob("*.tsv"))
    assert len(written) == n_test and set(read_tsv(out / "intervals" / "split1" / f"{written[0]}.tsv")[:, 2]) \
        <= {1, 2, 3, 4}
