import numpy as np
import pytest
import soundfile as sf

from embed.audio import AudioError, read_audio, resample


def test_reads_int16_wav_and_reports_fixes(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, np.stack([np.sin(np.arange(8000) / 5)] * 2, axis=1) * 0.5, 8000, subtype="PCM_16")
    audio = read_audio(path)
    assert audio.sample_rate == 8000 and audio.samples.ndim == 1 and audio.samples.dtype == np.float32
    assert any("downmixed" in n for n in audio.notes) and any("8000 Hz" in n for n in audio.notes)


@pytest.mark.parametrize("content,problem", [(b"", "empty"), (b"RIFF\x00\x00not a wav at all", "not readable")])
def test_bad_files_raise_named_errors(tmp_path, content, problem):
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(AudioError, match=problem) as err:
        read_audio(path)
    assert "bad.wav" in str(err.value)


def test_too_short_is_refused(tmp_path):
    path = tmp_path / "s.wav"
    sf.write(path, np.zeros(1000), 4000)
    with pytest.raises(AudioError, match="too short"):
        read_audio(path)


def test_polyphase_resampling_keeps_a_tone():
    t = np.arange(4000) / 4000
    x = np.sin(2 * np.pi * 100 * t).astype(np.float32)
    y = resample(x, 4000, 16000)
    assert len(y) == 16000
    ref = np.sin(2 * np.pi * 100 * np.arange(16000) / 16000)
    assert np.abs(y[200:-200] - ref[200:-200]).max() < 0.01


def test_a_rate_is_noted_only_when_it_is_not_the_datasets_own(tmp_path):
    """PhysioNet 2016 files are 2 kHz: no note for them, a note for the same file read as CirCor."""
    from embed.audio import open_resampled
    path = tmp_path / "a0001.wav"
    sf.write(path, 0.3 * np.sin(np.arange(4000) / 3), 2000, subtype="PCM_16")
    as_physionet = open_resampled(path, 4000, expected_rate=2000)
    as_circor = open_resampled(path, 4000, expected_rate=4000)
    assert not [n for n in as_physionet.notes if "sample rate" in n]
    assert "sample rate 2000 Hz (the data's own rate is 4000 Hz), resampled to 4000 Hz" in as_circor.notes
    np.testing.assert_array_equal(as_physionet.samples, as_circor.samples)
