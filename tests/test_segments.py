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
