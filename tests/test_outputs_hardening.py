"""Outputs under bad conditions: a full disk is named and leaves no empty or partial file, output
names never read as options or hidden files, and long recordings are decoded in bounded blocks
with the same result."""
from __future__ import annotations

import errno
import json
import pathlib

import numpy as np
import pytest

import pipeline
from classify.estimators import segmenter as segmenter_module
from classify.jobs.predict import output_names
from classify.estimators.segmenter import PhaseSegmenter, write_intervals
from embed import cache as cache_module
from embed.atomic import OutputDiskFullError, write_text_atomic
from tests.test_predict import trained  # noqa: F401  (the saved probe fixture)


def filling_disk(monkeypatch, after_bytes: int = 10):
    """Path.write_bytes writes `after_bytes` of its data, then fails as a full disk does."""
    real = pathlib.Path.write_bytes

    def write_bytes(self, data):
        real(self, data[:after_bytes])
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(pathlib.Path, "write_bytes", write_bytes)


def test_an_atomic_write_on_a_full_disk_names_it_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "result.json"
    target.write_text("the earlier result")
    filling_disk(monkeypatch)
    with pytest.raises(OutputDiskFullError, match=r"result.json: the disk is full; nothing was written there"):
        write_text_atomic(target, "x" * 100)
    assert target.read_text() == "the earlier result" and sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_predict_on_a_full_disk_leaves_no_empty_json_and_says_the_disk_is_full(trained, tmp_path, monkeypatch,  # noqa: F811
                                                                            capsys):
    circor = trained["circor"]
    rec = circor.recordings()[0]
    out = tmp_path / "pred"
    filling_disk(monkeypatch)
    code = pipeline.main(["predict", "--model", str(trained["model"]), "--input", str(rec.wav), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "the disk is full; nothing was written there" in err
    assert list(out.iterdir()) == []  # no 0-byte PATIENT.json, no temporary file


def test_predict_whose_temporary_cache_fills_the_disk_says_so(trained, tmp_path, monkeypatch, capsys):  # noqa: F811
    real_file = cache_module.h5py.File

    def full(path, mode="r", *args, **kwargs):
        if mode == "w":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_file(path, mode, *args, **kwargs)
    monkeypatch.setattr(cache_module.h5py, "File", full)
    rec = trained["circor"].recordings()[0]
    code = pipeline.main(["predict", "--model", str(trained["model"]), "--input", str(rec.wav),
                          "--out", str(tmp_path / "pred")])
    err = capsys.readouterr().err
    assert code == 2 and "no space left on the device" in err.lower() and "no usable recording" not in err
    assert not (tmp_path / "pred").exists() or list((tmp_path / "pred").iterdir()) == []


def test_segment_interval_files_are_never_left_empty(tmp_path, monkeypatch):
    path = tmp_path / "r.tsv"
    filling_disk(monkeypatch, after_bytes=0)
    with pytest.raises(OutputDiskFullError):
        write_intervals(np.array([[0.0, 0.1, 1.0]]), path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("patient_id", ["-dash", "--help", ".hidden", "-.-x", "..", "-"])
def test_output_names_never_start_with_a_dash_or_a_dot(patient_id):
    name = output_names([patient_id])[patient_id]
    assert not name.startswith(("-", ".")) and name.endswith(".json") and "/" not in name


def test_a_loose_dash_file_is_predicted_into_a_safe_name(trained, tmp_path, capsys):  # noqa: F811
    wav = tmp_path / "-dash.wav"
    wav.write_bytes(trained["circor"].recordings()[0].wav.read_bytes())
    out = tmp_path / "pred"
    assert pipeline.main(["predict", "--model", str(trained["model"]), "--input", str(wav), "--out", str(out)]) == 0
    (written,) = out.iterdir()
    assert not written.name.startswith("-") and json.loads(written.read_text())["patient_id"] == "-dash"


def test_long_recordings_decode_in_blocks_with_the_same_intervals(monkeypatch):
    rng = np.random.default_rng(1)
    times = [np.arange(1500) * 0.01 + 0.005 for _ in range(2)]
    intervals = [np.array([[t, t + 0.1, 1 + k % 4] for k, t in enumerate(np.arange(0, 15.0, 0.1))]) for _ in times]
    frames = [rng.normal(size=(1500, 3)) + (np.floor(t / 0.1) % 4)[:, None] for t in times]
    segmenter = PhaseSegmenter(heart_rate=0.0).fit(frames, times, intervals)
    whole_logp, _ = segmenter.log_posteriors(frames[0], times[0])
    whole = segmenter.predict(frames[0], times[0])
    monkeypatch.setattr(segmenter_module, "DECODE_BLOCK", 97)  # many blocks, one not full
    blocked_logp, _ = segmenter.log_posteriors(frames[0], times[0])
    np.testing.assert_allclose(blocked_logp, whole_logp, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(segmenter.predict(frames[0], times[0]), whole)
