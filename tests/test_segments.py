import numpy as np

from embed.segments import SegmentConfig, cut_windows, plan_segments, window_starts


def test_training_and_eval_windows_follow_the_paper():
    plan = plan_segments(13 * 4000, 4000, SegmentConfig())
    starts_s = plan.starts / 4000
    assert (starts_s[plan.train_index] == [0, 2.5, 5, 7.5]).all()
    assert (starts_s[plan.eval_index] == [0, 5]).all()  # tail (10-13 s) dropped
    assert len(plan.starts) == 4  # eval windows reuse training windows


def test_short_recording_is_one_padded_window():
    plan = plan_segments(3 * 16000, 16000, SegmentConfig())
    assert plan.starts.tolist() == [0] and plan.train_index.tolist() == [0] == plan.eval_index.tolist()
    x = np.ones(3 * 16000, np.float32)
    w = cut_windows(x, plan.starts, 5 * 16000)
    assert w.shape == (1, 80000) and w[0, :48000].all() and not w[0, 48000:].any()


def test_configurable_strides():
    plan = plan_segments(10 * 100, 100, SegmentConfig(window_s=2, train_stride_s=1, eval_stride_s=4))
    assert (plan.starts[plan.train_index] / 100).tolist() == list(range(9))
    assert (plan.starts[plan.eval_index] / 100).tolist() == [0, 4, 8]
    assert window_starts(1000, 200, 200).tolist() == [0, 200, 400, 600, 800]


def test_windows_aligned_to_heart_cycles_start_at_s1_onsets():
    onsets = np.array([300, 2600, 5400, 9100, 11900])  # samples at 1 kHz
    plan = plan_segments(13000, 1000, SegmentConfig(align="cycles"), onsets)
    # fixed starts 0, 2.5, 5, 7.5 s (train) and 0, 5 s (eval) move to the next onset where a window
    # fits; 7.5 s has none (a window from 9.1 s would run past the end) and stays
    assert plan.starts[plan.train_index].tolist() == [300, 2600, 5400, 7500]
    assert plan.starts[plan.eval_index].tolist() == [300, 5400]
    # without onsets (no .tsv) the windows stay fixed; fixed alignment keeps the old cache key
    assert plan_segments(13000, 1000, SegmentConfig(align="cycles")).starts.tolist() == [0, 2500, 5000, 7500]
    assert "align" not in SegmentConfig().as_dict() and SegmentConfig(align="cycles").as_dict()["align"] == "cycles"


def test_extract_windows_cycles_reads_the_tsv(synthetic_data, tmp_path):
    from embed.datasets.circor import load_circor
    from embed.encoders import create
    from embed.extract import extract, open_cache
    recs = load_circor(synthetic_data).recordings()[:2]
    recs[1].tsv = None  # a recording without a segmentation keeps fixed windows, with a note
    config = SegmentConfig(align="cycles")
    report = extract(create("logmel"), recs, tmp_path, config, progress=False)
    assert report.done == 2 and ["no .tsv" in p.message for p in report.problems] == [True]
    cached = open_cache(create("logmel"), config, tmp_path).read()
    onsets = [round(a * 4000) for a, _, label in recs[0].segmentation() if label == 1]
    assert set(cached[recs[0].recording_id].starts.tolist()) <= set(onsets)
    assert cached[recs[1].recording_id].starts[:2].tolist() == [0, 10000]
