"""Annotation (.tsv) files are checked once, where the dataset reads them: unusable files are
refused and named, plausible-but-off ones are kept with a note, and nothing a file claims sizes
the memory used after it."""
import numpy as np
import pytest

from classify.features.phases import tsv_intervals
from classify.estimators.segmenter import PhaseSegmenter
from embed.audio import audio_duration_s
from embed.datasets.circor import load_circor
from embed.datasets.synthetic import make_dataset
from embed.intervals import MIN_ROWS, read_intervals_file


@pytest.fixture()
def dataset(tmp_path):
    return load_circor(make_dataset(tmp_path / "data", n_patients=3, seed=4))


def rewrite(recording, text: str) -> None:
    recording.tsv.write_text(text)


def test_a_clean_file_reads_as_it_is_with_no_note(dataset):
    rec = dataset.recordings()[0]
    problems = []
    rows = rec.segmentation(problems)
    assert problems == [] and len(rows) and rows[:, 1].max() <= audio_duration_s(rec.wav) + 1e-9


def test_times_far_past_the_end_are_clipped_with_a_note_and_bound_memory(dataset):
    rec = dataset.recordings()[0]
    duration = audio_duration_s(rec.wav)
    rows = rec.segmentation()
    last = rows[-1]
    text = "".join(f"{a}\t{b}\t{int(c)}\n" for a, b, c in rows[:-1])
    rewrite(rec, text + f"{last[0]}\t1e9\t{int(last[2])}\n2e9\t3e9\t1\n")
    problems = []
    clipped = rec.segmentation(problems)
    assert clipped[:, 1].max() == pytest.approx(duration) and len(clipped) == len(rows)
    (note,) = problems
    assert note.severity == "warning" and note.path == str(rec.tsv)
    assert "2 intervals run past the recording's end" in note.message and "1 starting after it dropped" in note.message
    # the segmenter fit on such intervals sizes its duration model by the recording, not the file
    frames = np.random.default_rng(0).normal(size=(int(duration / 0.02), 4))
    times = np.arange(len(frames)) * 0.02 + 0.01
    segmenter = PhaseSegmenter(heart_rate=0.0).fit([frames], [times], [clipped])
    assert max(len(d) for d in segmenter.log_duration_) <= duration / segmenter.grid_hop_ * 1.2 + 2


def test_rows_out_of_order_are_kept_sorted_with_a_note(dataset):
    rec = dataset.recordings()[0]
    rows = rec.segmentation()
    shuffled = np.concatenate([rows[len(rows) // 2:], rows[:len(rows) // 2]])
    rewrite(rec, "".join(f"{a}\t{b}\t{int(c)}\n" for a, b, c in shuffled))
    problems = []
    read = rec.segmentation(problems)
    np.testing.assert_array_equal(read, shuffled)  # as written; the pooling orders them by start
    (note,) = problems
    assert note.severity == "warning" and "start before the one above them ends" in note.message
    assert "used sorted by start" in note.message


@pytest.mark.parametrize("text, message", [
    ("0\t0.1\t7\n", "unknown state '7'"),
    ("0\t0.1\t2.5\n", "unknown state '2.5'"),
    ("0\t0.1\tS1\n", "not numbers"),
    ("-1\t0.1\t1\n", "times must be finite, from 0"),
    ("0.5\t0.1\t1\n", "end after they start"),
    ("0\tnan\t1\n", "times must be finite"),
    ("0 0.1\n", "expected 'start end label'"),
])
def test_unusable_files_are_refused_and_named_in_the_problems(dataset, text, message):
    rec = dataset.recordings()[0]
    rewrite(rec, "0\t0.05\t1\n" + text)
    problems = []
    intervals = tsv_intervals(dataset.recordings(), problems)
    assert rec.recording_id not in intervals and len(intervals) == len(dataset.recordings()) - 1
    (problem,) = problems
    assert problem.path == str(rec.tsv) and problem.severity == "error"
    assert message in problem.message and problem.message.startswith("line 2")


def test_a_binary_file_is_refused_and_named(dataset):
    rec = dataset.recordings()[0]
    rec.tsv.write_bytes(bytes(range(256)) * 4)
    problems = []
    assert rec.recording_id not in tsv_intervals(dataset.recordings(), problems)
    assert [p.path for p in problems] == [str(rec.tsv)]


def test_a_file_with_more_rows_than_the_recording_can_hold_is_refused_while_reading(tmp_path):
    path = tmp_path / "1_AV.tsv"
    with open(path, "w") as fh:
        fh.writelines(f"{i * 1e-4:.4f}\t{(i + 1) * 1e-4:.4f}\t1\n" for i in range(MIN_ROWS + 5))
    with pytest.raises(ValueError, match=rf"1_AV.tsv:{MIN_ROWS + 1}: more than {MIN_ROWS} intervals for a recording"):
        read_intervals_file(path, duration_s=2.0)
    assert len(read_intervals_file(path)) == MIN_ROWS + 5  # without a known length there is no such bound
