"""Hostile and unlucky inputs on the data -> cache path: each is named as a problem (file and what
is wrong), nothing already computed is lost, and a rerun recovers. All inputs are generated."""
from __future__ import annotations

import csv
import errno
import shutil
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
import torch

import pipeline
from embed import cache as cache_module
from embed.audio import AudioError, open_resampled, read_audio
from embed.cache import EmbeddingCache, list_caches, read_config
from embed.datasets.circor import load_circor
from embed.datasets.synthetic import make_dataset


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("pristine"), n_patients=6, seed=3)


@pytest.fixture
def data(pristine, tmp_path) -> Path:
    """A private copy to damage."""
    return Path(shutil.copytree(pristine, tmp_path / "data"))


def _problems(cache: Path) -> list[dict]:
    with open(cache / "extract-problems.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _cache(cache_dir: Path, encoder: str = "logmel") -> EmbeddingCache:
    [path] = list_caches(cache_dir, encoder)
    return EmbeddingCache(cache_dir, encoder, read_config(path))


def _extract(data: Path, cache: Path, *extra: str) -> int:
    return pipeline.main(["extract", "--data", str(data), "--cache", str(cache), "--flush-every", "4", *extra])


def _txt(data: Path, pid: str) -> Path:
    return data / "training_data" / f"{pid}.txt"


def _add_lines(txt: Path, *lines: str) -> None:
    """Append recording lines after the existing ones and fix the header's count."""
    rows = txt.read_text().splitlines()
    pid, n, rate = rows[0].split()
    n = int(n)
    rows = [f"{pid} {n + len(lines)} {rate}", *rows[1:n + 1], *lines, *rows[n + 1:]]
    txt.write_text("\n".join(rows) + "\n")


# -- item 2: odd names and duplicates -----------------------------------------------------------

def test_odd_names_and_duplicates_are_skipped_and_rerun_works(data, tmp_path, capsys):
    circor = load_circor(data)
    first, second = circor.patient_ids()[:2]
    folder = data / "training_data"
    (folder / "..wav").write_bytes((folder / f"{circor.patients[first].recordings[0].recording_id}.wav").read_bytes())
    own = circor.patients[first].recordings[0]
    _add_lines(_txt(data, first), "AV ..hea ..wav ..tsv", f"{own.location} {own.recording_id}.hea "
               f"{own.recording_id}.wav {own.recording_id}.tsv")  # `..wav` and the same line twice
    _add_lines(_txt(data, second), f"{own.location} x.hea {own.recording_id}.wav x.tsv")  # another's recording

    circor = load_circor(data)
    ids = [r.recording_id for r in circor.recordings()]
    assert len(ids) == len(set(ids)) and "." not in ids
    assert own.recording_id in [r.recording_id for r in circor.patients[first].recordings]
    assert own.recording_id not in [r.recording_id for r in circor.patients[second].recordings]

    cache = tmp_path / "cache"
    assert _extract(data, cache) == 0
    rows = _problems(cache)
    said = {(Path(r["file"]).name, r["problem"].split(";")[0]) for r in rows}
    assert (f"{first}.txt", "recording file name '..wav' is not usable") in said
    assert (f"{first}.txt", f"recording {own.recording_id} listed twice") in said
    assert (f"{second}.txt", f"recording {own.recording_id} is also listed by patient {first}, who keeps it") in said
    assert _cache(cache).recording_ids() == set(ids)
    capsys.readouterr()
    assert _extract(data, cache) == 0  # a rerun neither fails nor redoes anything
    assert "0 recordings embedded" in capsys.readouterr().out


def test_duplicate_recording_ids_reaching_extract_are_skipped(data, tmp_path):
    from embed.encoders import create
    from embed.extract import extract
    recordings = load_circor(data).recordings()[:3]
    odd = type(recordings[0])(".", "1", "AV", recordings[0].wav)
    report = extract(create("logmel"), [*recordings, recordings[0], odd], tmp_path / "cache", progress=False)
    assert report.done == 3
    messages = [p.message for p in report.problems]
    assert any("cannot name a cache entry" in m for m in messages)
    assert any(f"recording {recordings[0].recording_id} already listed" in m for m in messages)


# -- item 4: NaN weights, checksums ----------------------------------------------------------------

def test_nan_weights_are_refused_naming_each_recording(data, tmp_path, capsys):
    from embed.encoders.byola import AudioNTT
    state = AudioNTT(1, 512).state_dict()
    state["fc.0.weight"][0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    for txt in sorted((data / "training_data").glob("*.txt"))[2:]:  # two patients are enough
        txt.unlink()
    cache = tmp_path / "cache"
    assert _extract(data, cache, "--encoder", "byola", "--checkpoint", str(tmp_path / "nan.pth")) == 1
    err = capsys.readouterr().err
    assert "no recording could be embedded" in err
    rows = _problems(cache)
    recordings = load_circor(data).recordings()
    assert {Path(r["file"]).name for r in rows if "NaN/inf" in r["problem"]} == {r.wav.name for r in recordings}
    assert not list_caches(cache, "byola")  # nothing cached that a probe could train on


def test_cache_refuses_non_finite_embeddings_at_write_time(tmp_path):
    cache = EmbeddingCache(tmp_path, "x", {"a": 1})
    rec = cache_module.CachedRecording("r1", np.array([[0.0, np.inf]], np.float32), np.zeros(1), np.zeros(1, int),
                                       np.zeros(1, int))
    with pytest.raises(ValueError, match="recording r1: embeddings contain NaN or inf"):
        cache.write_shard([rec])


def _overwrite_embeddings(path: Path, recording_id: str) -> None:
    with h5py.File(path, "r") as fh:
        offset = fh["recordings"][recording_id]["embeddings"].id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(offset + 8)
        fh.write(b"\x00\x11\x22\x33" * 4)


def test_overwritten_bytes_are_detected_and_extract_rebuilds_them(data, tmp_path, capsys):
    cache_dir = tmp_path / "cache"
    assert _extract(data, cache_dir) == 0
    cache = _cache(cache_dir)
    before = cache.read()
    victim = sorted(before)[2]
    _overwrite_embeddings(cache.path, victim)
    capsys.readouterr()

    assert pipeline.main(["probe", "--data", str(data), "--cache", str(cache_dir), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"{cache.path}: recording {victim} is damaged" in err and "rerun `pipeline.py extract`" in err
    assert not (tmp_path / "run" / "scores.csv").exists()

    assert _extract(data, cache_dir) == 0  # drops the damaged recording and embeds it again
    out = capsys.readouterr().out
    assert "1 recordings embedded" in out
    assert any("1 damaged recordings" in r["problem"] and victim in r["problem"] for r in _problems(cache_dir))
    after = cache.read()
    assert after.keys() == before.keys()
    np.testing.assert_array_equal(after[victim].embeddings, before[victim].embeddings)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_unreadable_cache_file_is_named_and_set_aside(data, tmp_path, capsys, damage):
    cache_dir = tmp_path / "cache"
    assert _extract(data, cache_dir) == 0
    path = _cache(cache_dir).path
    raw = path.read_bytes()
    path.write_bytes(raw[:len(raw) // 2] if damage == "truncated" else b"\x89HDF\r\n\x1a\n" + b"\x07" * 5000)
    capsys.readouterr()
    assert pipeline.main(["probe", "--data", str(data), "--cache", str(cache_dir), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "not a readable cache file" in err and "rerun `pipeline.py extract`" in err

    assert _extract(data, cache_dir) == 0
    assert f"{len(load_circor(data).recordings())} recordings embedded" in capsys.readouterr().out
    [aside] = cache_dir.glob(f"{path.name}.*.damaged")
    assert aside.read_bytes()[:8] == (raw[:8] if damage == "truncated" else b"\x89HDF\r\n\x1a\n")
    assert any("set aside" in r["problem"] for r in _problems(cache_dir))


def test_probe_reads_a_cache_that_has_only_shards(data, tmp_path, capsys):
    cache_dir = tmp_path / "cache"
    assert _extract(data, cache_dir) == 0
    cache = _cache(cache_dir)
    cache.parts_dir.mkdir()
    cache.path.rename(cache.parts_dir / "part-00000000000000000001-abcdef01.h5")  # killed before any merge
    assert pipeline.main(["probe", "--data", str(data), "--cache", str(cache_dir), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "scores.csv").exists()


def test_no_lock_file_stays_after_a_run(data, tmp_path):
    cache_dir = tmp_path / "cache"
    assert _extract(data, cache_dir) == 0
    assert not list(cache_dir.glob("*.lock"))


# -- item 5: disk full -----------------------------------------------------------------------------

def test_disk_full_keeps_finished_shards_and_a_rerun_recovers(data, tmp_path, capsys, monkeypatch):
    n = len(load_circor(data).recordings())
    real_file = h5py.File
    writes = []

    def file_on_a_filling_disk(path, mode="r", *args, **kwargs):
        if mode == "w":
            writes.append(path)
            if len(writes) > 2:  # two shards fit, then the disk is full
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_file(path, mode, *args, **kwargs)
    monkeypatch.setattr(cache_module.h5py, "File", file_on_a_filling_disk)
    cache_dir = tmp_path / "cache"
    assert _extract(data, cache_dir) == 1
    captured = capsys.readouterr()
    assert "no space left on the device" in captured.out and "rerun the same command" in captured.out
    assert "stopped early, disk full" in captured.err
    assert len(_cache(cache_dir).recording_ids()) == 8  # two shards of --flush-every 4
    assert not list(cache_dir.rglob("*.tmp"))

    monkeypatch.setattr(cache_module.h5py, "File", real_file)
    assert _extract(data, cache_dir) == 0
    assert f"{n - 8} recordings embedded" in capsys.readouterr().out
    assert len(_cache(cache_dir).recording_ids()) == n


def test_too_little_free_space_is_refused_before_writing(tmp_path, monkeypatch):
    cache = EmbeddingCache(tmp_path, "x", {"a": 1})
    rec = cache_module.CachedRecording("r1", np.zeros((50, 384), np.float32), np.zeros(50, int),
                                       np.arange(50), np.arange(50))
    monkeypatch.setattr(cache_module.shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**9, 10**9, 1000))
    with pytest.raises(cache_module.DiskFullError, match="no space left on the device"):
        cache.write_shard([rec])
    assert not list(tmp_path.rglob("*.h5")) and not list(tmp_path.rglob("*.tmp"))


# -- item 6 and header oddities: sample rates, frame counts -------------------------------------------

def _wav_with(path: Path, rate_field: int | None = None, data_size: int | None = None) -> Path:
    t = np.arange(4000 * 3) / 4000
    sf.write(path, (0.3 * np.sin(2 * np.pi * 50 * t)).astype(np.float32), 4000, subtype="PCM_16")
    raw = bytearray(path.read_bytes())
    if rate_field is not None:
        raw[24:28] = struct.pack("<I", rate_field)
        raw[28:32] = struct.pack("<I", rate_field * 2)
    if data_size is not None:
        raw[40:44] = struct.pack("<I", data_size)
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("rate", [0, 1, 200, 10_000_000])
def test_implausible_sample_rates_are_refused_naming_the_file(tmp_path, rate):
    path = _wav_with(tmp_path / "odd.wav", rate_field=rate)
    for opener in (lambda: read_audio(path), lambda: open_resampled(path, 16000)):
        with pytest.raises(AudioError, match=f"implausible sample rate {rate} Hz") as err:
            opener()
        assert err.value.path == str(path)


def test_header_claiming_more_frames_than_the_file_holds_is_noted(tmp_path):
    path = _wav_with(tmp_path / "claims.wav", data_size=4000 * 2 * 600)  # says 10 minutes, holds 3 s
    audio = open_resampled(path, 4000)
    assert audio.n_samples == 4000 * 3
    assert any("header claims 2400000 frames, the file holds 12000" in n for n in audio.notes)


def test_bad_rates_in_a_dataset_are_problems_not_crashes(data, tmp_path):
    circor = load_circor(data)
    zero, one = circor.recordings()[:2]
    _wav_with(zero.wav, rate_field=0)
    _wav_with(one.wav, rate_field=1)
    assert _extract(data, tmp_path / "cache") == 0
    said = {Path(r["file"]).name: r["problem"] for r in _problems(tmp_path / "cache")}
    assert said[zero.wav.name].startswith("implausible sample rate 0 Hz")
    assert said[one.wav.name].startswith("implausible sample rate 1 Hz")
    assert len(_cache(tmp_path / "cache").recording_ids()) == len(circor.recordings()) - 2


# -- dataset files --------------------------------------------------------------------------------

def test_unicode_digit_patient_file_is_skipped_not_a_crash(data, tmp_path, capsys):
    first = load_circor(data).patient_ids()[0]
    shutil.copy(_txt(data, first), data / "training_data" / "²³.txt")
    circor = load_circor(data)
    assert any(p.path.endswith("²³.txt") and "not a patient ID" in p.message for p in circor.problems)
    assert pipeline.main(["splits", "--data", str(data), "--out", str(tmp_path / "s.csv")]) == 0


@pytest.mark.parametrize("damage, expected", [
    ("rename", "no 'Patient ID' column"),
    ("quote", "unreadable"),
    ("foreign", "none of its"),
])
def test_csv_that_cannot_be_cross_checked_says_so(data, damage, expected):
    csv_path = data / "training_data.csv"
    text = csv_path.read_text()
    if damage == "rename":
        text = text.replace("Patient ID", "PatientID", 1)
    elif damage == "foreign":  # another dataset's csv
        text = "\n".join(line if n == 0 else "99" + line for n, line in enumerate(text.splitlines())) + "\n"
    else:
        lines = text.splitlines()
        lines[2] = lines[2].replace(",", ',"', 1)  # an opening quote that is never closed
        text = "\n".join(lines) + "\n"
    csv_path.write_text(text)
    circor = load_circor(data)
    [problem] = [p for p in circor.problems if p.path == str(csv_path) and "cross-check" in p.message]
    assert problem.message.startswith(expected) and "cross-check is off" in problem.message


def test_csv_with_a_byte_order_mark_is_still_cross_checked(data):
    csv_path = data / "training_data.csv"
    first = load_circor(data).patient_ids()[0]
    text = csv_path.read_text()
    row = next(line for line in text.splitlines() if line.startswith(first + ","))
    changed = row.replace(",Male,", ",Female,") if ",Male," in row else row.replace(",Female,", ",Male,")
    csv_path.write_bytes(b"\xef\xbb\xbf" + text.replace(row, changed).encode())
    circor = load_circor(data)
    assert not [p for p in circor.problems if p.path == str(csv_path)]
    assert any(p.path.endswith(f"{first}.txt") and "'Sex'" in p.message for p in circor.problems)


def test_huge_bad_first_line_is_not_echoed_whole(data, tmp_path):
    first = load_circor(data).patient_ids()[0]
    txt = _txt(data, first)
    txt.write_text("x" * 200_000 + "\n" + txt.read_text())
    assert _extract(data, tmp_path / "cache") == 0
    [row] = [r for r in _problems(tmp_path / "cache") if r["file"] == str(txt)]
    assert len(row["problem"]) < 300 and "(200000 characters)" in row["problem"]
    assert (tmp_path / "cache" / "extract-problems.csv").stat().st_size < 20_000


def test_cache_path_that_is_a_file_is_named(data, tmp_path, capsys):
    not_a_folder = tmp_path / "cache.txt"
    not_a_folder.write_text("x")
    assert _extract(data, not_a_folder) == 2
    assert f"{not_a_folder}: --cache must be a folder" in capsys.readouterr().err
    assert pipeline.main(["probe", "--data", str(data), "--cache", str(not_a_folder), "--out",
                          str(tmp_path / "r")]) == 2
    assert f"{not_a_folder}: --cache must be a folder" in capsys.readouterr().err


def test_cache_written_without_checksums_gets_them_and_loses_its_nan_recordings(tmp_path):
    """A file as older versions wrote it: no checksums, and NaN embeddings nobody refused."""
    cache = EmbeddingCache(tmp_path, "x", {"a": 1})
    good = np.arange(12, dtype=np.float32).reshape(3, 4)
    with h5py.File(cache.path, "w") as fh:
        fh.attrs["key"], fh.attrs["config"], fh.attrs["format"] = cache.key, '{"a": 1}', 1
        for rid, emb in (("ok", good), ("nan", np.full((3, 4), np.nan, np.float32))):
            g = fh.create_group(f"recordings/{rid}")
            for name, value in (("embeddings", emb), ("starts", np.arange(3)), ("train_index", np.arange(3)),
                                ("eval_index", np.arange(3))):
                g.create_dataset(name, data=value)
    [(path, what)] = cache.salvage()
    assert path == cache.path and "1 damaged recordings (nan)" in what
    with h5py.File(cache.path, "r") as fh:
        assert list(fh["recordings"]) == ["ok"] and fh["recordings/ok/embeddings"].fletcher32
    np.testing.assert_array_equal(cache.read()["ok"].embeddings, good)
    assert cache.salvage() == []


def test_a_really_full_disk_stops_cleanly_and_a_rerun_recovers(data, tmp_path, capsys):
    """The same on a real tiny tmpfs (needs the rights to mount one; skipped elsewhere)."""
    import os
    import subprocess
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        assert _extract(data, disk) == 1
        assert "no space left on the device" in capsys.readouterr().out
        kept = _cache(disk).recording_ids()
        assert kept and not list(disk.rglob("*.tmp"))
        subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)
        assert _extract(data, disk) == 0
        assert len(_cache(disk).recording_ids()) == len(load_circor(data).recordings())
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
