"""Property-based tests: the parsers and the wav reader never fail with anything but their own
named errors, and valid inputs roundtrip."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embed.audio import AudioError, open_resampled, read_audio
from embed.datasets.circor import CirCor, Problem, load_circor, parse_patient_txt, read_tsv

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# text that looks like a patient file often enough to reach the deeper branches
txt_lines = st.one_of(
    st.text(max_size=40),
    st.builds(lambda a, b, c: f"{a} {b} {c}", st.integers(-3, 99999), st.integers(-3, 8),
              st.sampled_from(["4000", "x", ""])),
    st.builds(lambda loc, n: f"{loc} 1_{loc}.hea 1_{loc}{n}.wav 1_{loc}.tsv",
              st.sampled_from(["AV", "PV", "TV", "MV", "Phc", "XX"]), st.sampled_from(["", "_1", "_2"])),
    st.builds(lambda k, v: f"#{k}: {v}", st.sampled_from(["Murmur", "Age", "Sex", "Outcome", "Campaign", "?"]),
              st.sampled_from(["Present", "Absent", "Unknown", "nan", "Child", "Maybe", ""])),
)
txt_files = st.lists(txt_lines, max_size=12).map("\n".join)


@SETTINGS
@given(txt_files)
def test_parse_patient_txt_only_raises_valueerror(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "1.txt"
        path.write_text(text, errors="surrogatepass")
        problems: list[Problem] = []
        try:
            fields, entries = parse_patient_txt(path, problems)
        except ValueError:
            return
        assert isinstance(fields, dict) and all(len(e) == 2 for e in entries)
        assert all(isinstance(p, Problem) and p.path == str(path) for p in problems)


tsv_cell = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                     st.integers(-2, 6).map(str), st.text(max_size=5))


@SETTINGS
@given(st.lists(st.lists(tsv_cell, min_size=0, max_size=4).map("\t".join), max_size=8).map("\n".join))
def test_read_tsv_only_raises_valueerror(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "1_AV.tsv"
        path.write_text(text, errors="surrogatepass")
        try:
            rows = read_tsv(path)
        except ValueError as err:
            assert str(path) in str(err)
            return
        assert rows.shape[1] == 3 and np.isfinite(rows).all()
        assert set(rows[:, 2].astype(int)) <= {0, 1, 2, 3, 4} and (rows[:, 1] >= rows[:, 0]).all()


@SETTINGS
@given(st.lists(st.tuples(st.floats(0, 100), st.floats(0, 5), st.integers(0, 4)), max_size=20))
def test_read_tsv_roundtrips_valid_rows(rows):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "1_AV.tsv"
        path.write_text("".join(f"{a!r}\t{a + d!r}\t{c}\n" for a, d, c in rows))
        out = read_tsv(path)
        assert out.shape == (len(rows), 3)
        np.testing.assert_array_equal(out[:, 2], [c for _, _, c in rows])
        np.testing.assert_allclose(out[:, 0], [a for a, _, _ in rows])


@SETTINGS
@given(txt=txt_files, csv_bytes=st.binary(max_size=200) | st.just(b"Patient ID,Murmur\n1,Present\n1,Absent\n"),
       wav_bytes=st.binary(max_size=64), tsv=st.text(max_size=30))
def test_load_circor_never_raises_on_garbage(txt, csv_bytes, wav_bytes, tsv):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = root / "training_data"
        folder.mkdir()
        (root / "training_data.csv").write_bytes(csv_bytes)
        (folder / "1.txt").write_text(txt, errors="surrogatepass")
        (folder / "1_AV.wav").write_bytes(wav_bytes)
        (folder / "1_AV.tsv").write_text(tsv, errors="surrogatepass")
        circor = load_circor(root)
        assert isinstance(circor, CirCor)
        assert all(isinstance(p, Problem) for p in circor.problems)
        for patient in circor.patients.values():
            assert patient.recordings and patient.murmur in ("Present", "Unknown", "Absent")


@SETTINGS
@given(st.binary(max_size=300), st.sampled_from([b"", b"RIFF", b"RIFF\x24\x00\x00\x00WAVEfmt ", b"fLaC", b"OggS"]))
def test_read_audio_random_bytes_only_raise_audioerror(data, prefix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.wav"
        path.write_bytes(prefix + data)
        for reader in (read_audio, lambda p: open_resampled(p, 16000, long_after_s=0.0)):
            try:
                audio = reader(path)
            except AudioError as err:
                assert "x.wav" in str(err) and err.problem
                continue
            samples = audio.samples if hasattr(audio, "samples") else audio.windows(np.array([0]), 1600)[0]
            assert np.isfinite(samples).all() and np.abs(samples).max() <= 1.0 + 1e-6


@SETTINGS
@given(rate=st.sampled_from([4000, 8000, 11025, 16000, 22050, 44100]), channels=st.integers(1, 3),
       seconds=st.floats(0.5, 2.0), subtype=st.sampled_from(["PCM_16", "PCM_24", "FLOAT"]),
       seed=st.integers(0, 2**32 - 1))
def test_read_audio_roundtrips_valid_wavs(rate, channels, seconds, subtype, seed):
    rng = np.random.default_rng(seed)
    n = int(seconds * rate) + 1
    data = (rng.uniform(-0.9, 0.9, (n, channels))).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ok.wav"
        sf.write(path, data, rate, subtype=subtype)
        audio = read_audio(path)
        assert audio.sample_rate == rate and audio.samples.shape == (n,)
        tol = {"PCM_16": 2 / 2**15, "PCM_24": 2 / 2**23, "FLOAT": 1e-6}[subtype]
        np.testing.assert_allclose(audio.samples, data.mean(axis=1), atol=tol)
        assert any("downmixed" in note for note in audio.notes) == (channels > 1)
        assert any(f"{rate} Hz" in note for note in audio.notes) == (rate != 4000)
