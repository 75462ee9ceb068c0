"""Crash-safe cache: kill -9 a real `pipeline.py extract` mid-write and rerun; two runs on one
cache; configuration mismatches never reused; download's zip-slip and checksum checks."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

import pipeline
from embed.cache import EmbeddingCache
from embed.datasets.circor import load_circor
from embed.checksum import file_sha256
from embed.datasets.download import DownloadError, safe_extract, verify_checksums
from embed.encoders import create
from embed.extract import extract, open_cache
from embed.segments import SegmentConfig
from embed.datasets.synthetic import make_dataset

REPO = Path(__file__).resolve().parents[1]
SLOW = ["--batch-size", "1", "--flush-every", "1", "--workers", "1"]  # one shard per recording


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("crash") / "data", n_patients=24, seed=2)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> dict:
    """An uninterrupted run: what every recovered cache must equal, exactly."""
    circor = load_circor(data)
    report = extract(create("logmel"), circor.recordings(), tmp_path_factory.mktemp("ref"), progress=False)
    cache = EmbeddingCache(report.cache_path.parent, "logmel", _config(report.cache_path))
    return cache.read()


def _config(path: Path) -> dict:
    with h5py.File(path, "r") as fh:
        return json.loads(fh.attrs["config"])


def _start(data: Path, cache: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "pipeline.py"), "extract", "--data", str(data),
                             "--cache", str(cache), *extra], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, timeout: float, poll: float = 0.002) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll)
    return False


def _assert_equals_reference(cache_dir: Path, reference: dict) -> None:
    mains = list(cache_dir.glob("logmel-*.h5"))
    assert len(mains) == 1
    assert not list(cache_dir.glob("*.parts")), "shards left after a finished run"
    assert not list(cache_dir.rglob("*.tmp")), "temporary files left after a finished run"
    with h5py.File(mains[0], "r") as fh:  # readable, one group per recording (no duplicates possible)
        ids = list(fh["recordings"].keys())
    assert sorted(ids) == sorted(reference) and len(ids) == len(set(ids))
    got = EmbeddingCache(cache_dir, "logmel", _config(mains[0])).read()
    for rid, ref in reference.items():
        np.testing.assert_array_equal(got[rid].embeddings, ref.embeddings, err_msg=rid)
        np.testing.assert_array_equal(got[rid].eval_index, ref.eval_index)


def test_kill_9_mid_write_then_rerun_completes(data, reference, tmp_path):
    cache = tmp_path / "cache"
    proc = _start(data, cache, *SLOW)
    try:
        parts = lambda: list(cache.glob("*.parts/part-*.h5"))  # noqa: E731
        assert _wait_for(lambda: len(parts()) >= 5 or proc.poll() is not None, 60), "no shard appeared"
        assert proc.poll() is None, "extract finished before it could be killed; make the setup slower"
        # aim for the moment a shard is being written (its temporary file exists)
        mid_write = _wait_for(lambda: any(cache.glob("*.parts/.*.tmp")), 3.0, poll=0.0005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    shards = parts()
    assert 0 < len(shards) < len(reference)
    for shard in shards:  # every shard on disk is whole and readable
        with h5py.File(shard, "r") as fh:
            assert len(fh["recordings"]) == 1
    done_before = len(EmbeddingCache(cache, "logmel", _config(shards[0])).read())
    print(f"killed after {done_before} recordings; mid-write: {mid_write}")

    assert pipeline.main(["extract", "--data", str(data), "--cache", str(cache), "--workers", "1"]) == 0
    _assert_equals_reference(cache, reference)


def test_crash_during_consolidation_leaves_no_duplicates(data, reference, tmp_path):
    """State after a kill between writing the merged file and deleting the shards."""
    cache = tmp_path / "cache"
    assert pipeline.main(["extract", "--data", str(data), "--cache", str(cache)]) == 0
    main = next(cache.glob("logmel-*.h5"))
    parts = cache / f"{main.stem}.parts"
    parts.mkdir()
    shutil.copy(main, parts / "part-00000000000000000001-deadbeef.h5")  # every recording twice
    (parts / ".part-x.h5.0123.tmp").write_bytes(b"\x89HDF half written")  # a torn temporary file
    (cache / f".{main.name}.abcd.tmp").write_bytes(b"half")
    assert pipeline.main(["extract", "--data", str(data), "--cache", str(cache)]) == 0
    _assert_equals_reference(cache, reference)


def test_second_extract_fails_clearly_or_waits(data, reference, tmp_path):
    """While the cache's lock is held (here by this test, as another extract run would hold it), a
    second run is refused at once, or with --lock-timeout waits and then does the work. Holding the
    lock here instead of racing a first extract run keeps the test independent of machine speed."""
    cache = tmp_path / "cache"
    holder = open_cache(create("logmel"), SegmentConfig(), cache)  # the key the command computes
    holder.lock()
    lines: list[str] = []
    try:
        refused = _start(data, cache, "--lock-timeout", "0")
        _, err = refused.communicate(timeout=120)
        assert refused.returncode == 2
        assert "another extract run holds this cache" in err and "--lock-timeout" in err
        assert f"(pid {os.getpid()}" in err
        waiter = _start(data, cache, "--lock-timeout", "300")
        reader = threading.Thread(target=lambda: lines.extend(waiter.stderr), daemon=True)
        reader.start()
        assert _wait_for(lambda: any("waiting up to 300 s" in line for line in lines), 120, 0.05)
        assert waiter.poll() is None  # still waiting: nothing embedded while the lock is held
    finally:
        holder.unlock()
    try:
        wait_out = waiter.stdout.read()
        waiter.wait(timeout=300)
    finally:
        if waiter.poll() is None:
            waiter.kill()
    reader.join(timeout=10)
    assert waiter.returncode == 0, "".join(lines)
    assert f"{len(reference)} recordings embedded" in wait_out


def test_every_entry_records_its_configuration_and_mismatches_are_refused(data, tmp_path):
    circor = load_circor(data)
    recordings = circor.recordings()[:4]
    enc = create("logmel")
    report = extract(enc, recordings, tmp_path, progress=False)
    config = _config(report.cache_path)
    assert config["encoder"] == "logmel" and "checkpoint_sha256" in config and config["cfg_n_mels"] == 40
    assert config["segments"] == {"window_s": 5.0, "train_stride_s": 2.5, "eval_stride_s": "window"}

    # another pooling / another segmentation / another checkpoint -> another key, nothing reused
    for other, segs in ((create("logmel", pooling="mean"), SegmentConfig()),
                        (enc, SegmentConfig(train_stride_s=1.0))):
        assert open_cache(other, segs, tmp_path).key != open_cache(enc, SegmentConfig(), tmp_path).key
        rep = extract(other, recordings, tmp_path, segs, progress=False)
        assert rep.skipped == 0 and rep.done == 4
    fake_ckpt = tmp_path / "weights.pt"
    fake_ckpt.write_bytes(b"weights v1")
    enc.checkpoint = fake_ckpt
    key1 = open_cache(enc, SegmentConfig(), tmp_path).key
    fake_ckpt.write_bytes(b"weights v2")
    assert open_cache(enc, SegmentConfig(), tmp_path).key != key1
    enc.checkpoint = None

    # a file under the right name but made with another configuration is refused, not reused
    with h5py.File(report.cache_path, "r+") as fh:
        fh.attrs["config"] = json.dumps({**config, "cfg_n_mels": 64}, sort_keys=True)
    with pytest.raises(RuntimeError, match="another configuration; refusing to reuse it"):
        extract(enc, recordings, tmp_path, progress=False)


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    return path


@pytest.mark.parametrize("evil", ["../escape.txt", "a/../../escape.txt", "/abs/escape.txt"])
def test_zip_slip_is_refused_before_anything_is_written(tmp_path, evil):
    archive = _zip(tmp_path / "evil.zip", {"ok/training_data.csv": b"x", evil: b"pwned"})
    dest = tmp_path / "dest" / "inner"
    with pytest.raises(DownloadError, match="would be written outside"):
        safe_extract(archive, dest)
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "dest" / "escape.txt").exists()
    assert not (dest / "ok").exists()  # checked before extracting anything


def test_corrupt_zip_and_checksum_failures_are_reported(tmp_path):
    archive = _zip(tmp_path / "good.zip", {"d/a.txt": b"alpha" * 100})
    raw = bytearray(archive.read_bytes())
    raw[raw.index(b"alpha")] ^= 0xFF  # flip a byte of the stored member: CRC mismatch
    (tmp_path / "bad.zip").write_bytes(bytes(raw))
    with pytest.raises(DownloadError, match="corrupt member d/a.txt"):
        safe_extract(tmp_path / "bad.zip", tmp_path / "out1")
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(DownloadError, match="not a valid zip"):
        safe_extract(tmp_path / "junk.zip", tmp_path / "out2")

    root = tmp_path / "release"
    root.mkdir()
    (root / "a.txt").write_bytes(b"alpha")
    (root / "b.txt").write_bytes(b"beta")
    (root / "SHA256SUMS.txt").write_text(f"{file_sha256(root / 'a.txt')} a.txt\n{file_sha256(root / 'b.txt')} b.txt\n"
                                         f"{'0' * 64} c.txt\n")
    assert verify_checksums(root) == ([f"{root / 'c.txt'}: missing"], 3)
    (root / "b.txt").write_bytes(b"betA")  # same size, other content
    problems, n = verify_checksums(root)
    assert n == 3 and f"{root / 'b.txt'}: checksum mismatch" in problems
