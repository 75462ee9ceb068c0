"""Bad inputs: a generated corpus with every case of the reliability issue; each must produce
a problem naming its file, good recordings must still be cached, and --strict must fail."""
from __future__ import annotations

import csv
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import pipeline
from embed.audio import open_resampled, read_audio
from embed.cache import EmbeddingCache
from embed.datasets.circor import load_circor
from embed.datasets.synthetic import make_dataset

RATE = 4000


def _tone(seconds: float, rate: int = RATE, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * 60 * t) * (1 + np.sin(2 * np.pi * 1.3 * t))).astype(np.float32)


def _write_long(path: Path, minutes: float, rate: int) -> None:
    """Written block by block so the test itself stays small in memory."""
    with sf.SoundFile(path, "w", rate, 1, "PCM_16") as fh:
        for _ in range(int(minutes * 6)):
            fh.write(_tone(10.0, rate))


# recording-level cases: name -> (writer, severity, problem text expected)
def _empty(p):
    p.write_bytes(b"")


def _truncated_header(p):
    sf.write(p, _tone(3), RATE, subtype="PCM_16")
    p.write_bytes(p.read_bytes()[:30])


def _corrupt_header(p):
    sf.write(p, _tone(3), RATE, subtype="PCM_16")
    data = bytearray(p.read_bytes())
    data[12:36] = b"\xff" * 24  # fmt chunk overwritten
    p.write_bytes(bytes(data))


def _not_audio(p):
    p.write_bytes(b"this is a text file that someone named .wav\n" * 50)


def _rate_8k(p):
    sf.write(p, _tone(8, 8000), 8000, subtype="PCM_16")


def _stereo(p):
    x = _tone(8)
    sf.write(p, np.stack([x, 0.5 * x], axis=1), RATE, subtype="PCM_16")


def _some_nan(p):
    x = _tone(8)
    x[100:110], x[500] = np.nan, np.inf
    sf.write(p, x, RATE, subtype="FLOAT")


def _all_nan(p):
    sf.write(p, np.full(RATE * 3, np.nan, np.float32), RATE, subtype="FLOAT")


def _silence(p):
    sf.write(p, np.zeros(RATE * 8, np.float32), RATE, subtype="PCM_16")


def _clipping(p):
    sf.write(p, np.clip(_tone(8, amp=3.0), -1, 1), RATE, subtype="PCM_16")


def _too_short(p):
    sf.write(p, _tone(0.3), RATE, subtype="PCM_16")


def _long(p):
    _write_long(p, 11, RATE)


RECORDING_CASES = {
    "empty file": (_empty, "error", "empty file"),
    "truncated header": (_truncated_header, "error", "not readable audio"),
    "corrupt header": (_corrupt_header, "error", "not readable audio"),
    "non-audio bytes": (_not_audio, "error", "not readable audio"),
    "8 kHz": (_rate_8k, "warning", "sample rate 8000 Hz (the data's own rate is 4000 Hz), resampled to 4000 Hz"),
    "stereo": (_stereo, "warning", "2 channels downmixed to mono"),
    "some NaN/inf": (_some_nan, "warning", "11 NaN/inf samples set to 0"),
    "all NaN": (_all_nan, "error", "every sample is NaN or infinite"),
    "silence": (_silence, "warning", "silent (all samples are zero)"),
    "clipping": (_clipping, "warning", "clipping (over 1% of samples at full scale)"),
    "shorter than 0.5 s": (_too_short, "error", "too short: 0.300 s < 0.5 s"),
    "longer than 10 min": (_long, "warning", "long recording (11.0 min > 10 min): read and resampled in blocks"),
}


def _edit_txt(txt: Path, old: str, new: str) -> None:
    text = txt.read_text()
    assert old in text
    txt.write_text(text.replace(old, new, 1))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Build the corpus, run `extract` once, return what the tests need."""
    root = make_dataset(tmp_path_factory.mktemp("bad") / "data", n_patients=14, seed=11)
    folder = root / "training_data"
    circor = load_circor(root)
    assert not circor.problems
    pids = circor.patient_ids()
    recs = {pid: [r.recording_id for r in circor.patients[pid].recordings] for pid in pids}
    expected: dict[str, tuple[str, str, str]] = {}  # case -> (file, severity, problem)
    dropped: set[str] = set()  # recording ids that must not be cached

    # -- patient-level cases on patients 0-6 ------------------------------------------------------
    p = pids
    missing = folder / f"{recs[p[0]][1]}.wav"
    missing.unlink()
    dropped.add(recs[p[0]][1])
    expected["missing recording"] = (str(missing), "error", "listed in the patient's .txt but missing; skipped")

    extra = folder / f"{p[1]}_Phc.wav"
    sf.write(extra, _tone(6), RATE, subtype="PCM_16")
    expected["extra recording"] = (str(extra), "warning", "recording not listed in its patient's .txt; ignored")

    (folder / f"{recs[p[2]][0]}.tsv").unlink()
    (folder / f"{recs[p[2]][1]}.hea").unlink()
    expected["missing .tsv"] = (str(folder / f"{recs[p[2]][0]}.tsv"), "warning", "missing (recording kept)")
    expected["missing .hea"] = (str(folder / f"{recs[p[2]][1]}.hea"), "warning", "missing (recording kept)")

    txt = folder / f"{p[3]}.txt"
    txt.write_text("\n".join(line for line in txt.read_text().splitlines() if not line.startswith("#Age:")) + "\n")
    expected["txt field missing"] = (str(txt), "warning", "field '#Age' missing")

    txt = folder / f"{p[4]}.txt"
    sex = circor.patients[p[4]].sex
    _edit_txt(txt, f"#Sex: {sex}", "#Sex: Martian")
    expected["txt unknown value"] = (str(txt), "warning", "unknown value 'Martian' for 'Sex'")

    txt = folder / f"{p[5]}.txt"
    weight = circor.patients[p[5]].fields["Weight"]
    _edit_txt(txt, f"#Weight: {weight}", "#Weight: 99.5")
    expected["csv/txt disagreement"] = (str(txt), "warning",
                                        f"'Weight' is '99.5' here but '{weight}' in training_data.csv")

    csv_path = root / "training_data.csv"
    with open(csv_path, newline="") as fh:
        rows = list(csv.reader(fh))
    dup = next(r for r in rows if r[0] == p[6])
    with open(csv_path, "a", newline="") as fh:
        csv.writer(fh).writerow(dup)
    expected["duplicate ID"] = (str(csv_path), "error", f"duplicate patient ID {p[6]}; first row kept")

    # a murmur label outside the known classes drops the patient and all its recordings
    txt = folder / f"{p[6]}.txt"
    _edit_txt(txt, f"#Murmur: {circor.patients[p[6]].murmur}", "#Murmur: Maybe")
    expected["unknown murmur label"] = (str(txt), "error", "murmur label 'Maybe' is not one of")
    dropped.update(recs[p[6]])

    # -- recording-level cases on patients 7-13, first recordings then second ones --------------
    stems = [recs[pid][i] for i in (0, 1) for pid in p[7:]]
    for (case, (write, severity, problem)), stem in zip(RECORDING_CASES.items(), stems):
        wav = folder / f"{stem}.wav"
        write(wav)
        expected[case] = (str(wav), severity, problem)
        if severity == "error":
            dropped.add(stem)

    cache = root.parent / "cache"
    code = pipeline.main(["extract", "--data", str(root), "--cache", str(cache), "--batch-size", "8"])
    listed = {r for pid in pids for r in recs[pid]}
    return {"root": root, "cache": cache, "code": code, "expected": expected, "good": listed - dropped,
            "dropped": dropped}


def _problem_rows(cache: Path) -> list[dict]:
    with open(cache / "extract-problems.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_every_case_is_reported_with_its_file(corpus):
    rows = _problem_rows(corpus["cache"])
    for case, (file, severity, problem) in corpus["expected"].items():
        hits = [r for r in rows if r["file"] == file and r["problem"].startswith(problem)]
        assert hits, f"{case}: no problem {problem!r} for {file}; got {[r for r in rows if r['file'] == file]}"
        assert hits[0]["severity"] == severity, case
    # errors that come from the audio reader name the reason after the file, nothing else
    assert all(r["file"] and r["problem"] for r in rows)


def test_good_recordings_are_still_cached(corpus):
    assert corpus["code"] == 0  # problems alone do not fail a run without --strict
    cache_file = next(corpus["cache"].glob("logmel-*.h5"))
    import json

    import h5py
    with h5py.File(cache_file, "r") as fh:
        config = json.loads(fh.attrs["config"])
        ids = set(fh["recordings"].keys())
    assert ids == corpus["good"]
    assert not ids & corpus["dropped"]
    cached = EmbeddingCache(corpus["cache"], "logmel", config).read()
    for rid, rec in cached.items():
        assert np.isfinite(rec.embeddings).all(), rid
    # the 11-minute recording got all its windows: 660 s / 2.5 s stride -> 263 training windows
    long_id = Path(corpus["expected"]["longer than 10 min"][0]).stem
    assert len(cached[long_id].train_index) == 263 and len(cached[long_id].eval_index) == 132


def test_strict_turns_problems_into_failure(corpus, capsys):
    code = pipeline.main(["extract", "--data", str(corpus["root"]), "--cache", str(corpus["cache"]), "--strict"])
    out = capsys.readouterr()
    assert code == 1
    assert f"0 already cached" not in out.out and "already cached" in out.out
    # the summary table is printed last, with a header line and the CSV location
    assert "problems (" in out.err and "stage    severity  file" in out.err
    assert "extract-problems.csv" in out.err.strip().splitlines()[-1]


def test_long_recording_is_read_in_bounded_memory(tmp_path):
    """An 11-minute 8 kHz file: streaming keeps the peak far below a whole-file read."""
    path = tmp_path / "1_AV.wav"
    _write_long(path, 11, 8000)
    whole_bytes = 11 * 60 * 4000 * 4  # the recording as float32 at the encoder rate (4 kHz)
    tracemalloc.start()
    try:
        audio = open_resampled(path, 4000)
        from embed.segments import SegmentConfig, plan_segments
        plan = plan_segments(audio.n_samples, 4000, SegmentConfig())
        windows = audio.windows(plan.starts, 20000)
        total = sum(float(windows[i].sum()) for i in range(len(windows)))
        _, streamed_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        read_audio(path)
        _, whole_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert np.isfinite(total) and len(windows) == 263
    assert any("long recording" in n for n in audio.notes)
    assert streamed_peak < whole_bytes / 5, (streamed_peak, whole_bytes)
    assert whole_peak > whole_bytes  # the check can fail: a whole read costs more than the bound


def test_streamed_windows_equal_whole_file_windows(tmp_path):
    """Blockwise resampling is exact: same windows as resampling the whole file at once."""
    rng = np.random.default_rng(0)
    path = tmp_path / "x.wav"
    sf.write(path, rng.uniform(-0.5, 0.5, (44100 * 12, 2)), 44100, subtype="PCM_16")
    whole = open_resampled(path, 16000)
    streamed = open_resampled(path, 16000, long_after_s=5.0)
    assert whole.n_samples == streamed.n_samples
    starts = np.arange(0, whole.n_samples, 7919)
    a, b = whole.windows(starts, 16000 * 5), streamed.windows(starts, 16000 * 5)
    for i in range(len(starts)):
        np.testing.assert_allclose(b[i], a[i], atol=1e-6)
