"""The Ray backend on a local Ray instance (2 CPUs, no GPU): embeddings equal the local backend's bit
for bit, bad recordings land in the same problems table, an actor killed mid-run costs nothing, and
probe scores equal the local backend's. Skipped when Ray is not installed (`pip install -e '.[ray]'`).
Ray is slow to start: one instance serves the whole module and every run is kept small."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

ray = pytest.importorskip("ray")

import pipeline  # noqa: E402
from classify.jobs.probe import load_splits, run_probe  # noqa: E402
from embed.cache import EmbeddingCache  # noqa: E402
from classify.task import Task  # noqa: E402
from embed.datasets import load_dataset  # noqa: E402
from embed.datasets.circor import load_circor  # noqa: E402
from embed.encoders import create  # noqa: E402
from embed.encoders.logmel import LogMelEncoder  # noqa: E402
from embed.extract import extract  # noqa: E402
from embed.ray_backend import RayOptions, connect  # noqa: E402
from embed.datasets.synthetic import make_dataset  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CALL = RayOptions(recordings_per_call=3)  # several actor calls even on a few recordings


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    """One local Ray instance for the module; the backends join it instead of starting their own."""
    started = connect(RayOptions(num_cpus=2))
    yield
    if started:
        ray.shutdown()


def _read_cache(cache_dir: Path, name: str) -> dict:
    mains = list(cache_dir.glob(f"{name}-*.h5"))
    assert len(mains) == 1, mains
    assert not list(cache_dir.glob("*.parts")) and not list(cache_dir.rglob("*.tmp"))
    with h5py.File(mains[0], "r") as fh:
        config = json.loads(fh.attrs["config"])
    return EmbeddingCache(cache_dir, name, config).read()


def _assert_same(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for rid, ref in want.items():
        assert got[rid].embeddings.dtype == ref.embeddings.dtype == np.float32
        np.testing.assert_array_equal(got[rid].embeddings, ref.embeddings, err_msg=rid)
        for key in ("starts", "train_index", "eval_index"):
            np.testing.assert_array_equal(getattr(got[rid], key), getattr(ref, key), err_msg=f"{rid} {key}")


def _subset(data: Path, n_patients: int):
    circor = load_circor(data)
    keep = set(sorted(circor.patients)[:n_patients])
    return [r for r in circor.recordings() if r.group_id in keep]


def test_cli_ray_extract_resumes_and_equals_local_with_the_same_problems(tmp_path, capsys):
    """Half the recordings are cached already; `extract --backend ray` (2 actors) adds the rest.
    The cache equals one local run bit for bit and the problems table names the same files."""
    import soundfile as sf
    data = make_dataset(tmp_path / "data", n_patients=6, seed=3)
    recordings = load_circor(data).recordings()
    recordings[1].wav.write_bytes(b"RIFF\x00\x00not a wav file")  # an error: the recording is dropped
    samples, rate = sf.read(recordings[4].wav)
    sf.write(recordings[4].wav, np.repeat(samples, 2), 2 * rate, subtype="PCM_16")  # a warning: 8 kHz
    local = extract(create("logmel"), recordings, tmp_path / "local", batch_size=4, progress=False)
    half = len(recordings) // 2
    extract(create("logmel"), recordings[half:], tmp_path / "ray", batch_size=4, progress=False)
    assert pipeline.main(["extract", "--data", str(data), "--encoder", "logmel", "--cache", str(tmp_path / "ray"),
                          "--batch-size", "4", "--backend", "ray", "--ray-actors", "2"]) == 0
    assert f"{half - 1} recordings embedded" in capsys.readouterr().out
    _assert_same(_read_cache(tmp_path / "ray", "logmel"), _read_cache(tmp_path / "local", "logmel"))
    table = pd.read_csv(tmp_path / "ray" / "extract-problems.csv")
    assert sorted(zip(table["severity"], table["file"], table["problem"])) == sorted(
        (p.severity, p.path, p.message) for p in local.problems)
    assert {(p.severity, Path(p.path).name) for p in local.problems} == {
        ("error", recordings[1].wav.name), ("warning", recordings[4].wav.name)}
    # resumable: a rerun finds everything cached and embeds nothing
    again = extract(create("logmel"), recordings, tmp_path / "ray", batch_size=4, progress=False,
                    backend="ray", ray=CALL)
    assert (again.done, again.skipped) == (0, len(recordings) - 1)


class DyingLogMel(LogMelEncoder):
    """logmel (same cache key) whose process is killed -9 at its third batch, once per marker file."""

    def __init__(self, marker: Path, **kwargs) -> None:
        super().__init__(**kwargs)
        self.marker, self.calls = marker, 0

    def embed_async(self, audio):  # what extract's batches call
        self.calls += 1
        if self.calls == 3 and not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return super().embed_async(audio)


def test_actor_killed_mid_run_loses_nothing_and_duplicates_nothing(synthetic_data, tmp_path):
    import ray.cloudpickle
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors cannot import tests/
    recordings = _subset(synthetic_data, 5)
    extract(create("logmel"), recordings, tmp_path / "ref", batch_size=4, progress=False)
    marker = tmp_path / "killed"
    report = extract(DyingLogMel(marker), recordings, tmp_path / "c", batch_size=4, flush_every=2,
                     progress=False, backend="ray", ray=CALL)
    assert marker.exists(), "the actor was never killed"
    assert int(marker.read_text()) != os.getpid()  # it was an actor process, not this one
    # Ray restarted the actor and retried its call: every recording arrived, each written once
    assert (report.done, report.problems) == (len(recordings), [])
    _assert_same(_read_cache(tmp_path / "c", "logmel"), _read_cache(tmp_path / "ref", "logmel"))
    again = extract(create("logmel"), recordings, tmp_path / "c", progress=False, backend="ray", ray=CALL)
    assert (again.done, again.skipped) == (0, len(recordings))


def test_ray_extract_equals_local_on_circor_mini(circor_mini, tmp_path):
    recordings = load_circor(circor_mini).recordings()[:3]
    extract(create("logmel"), recordings, tmp_path / "local", batch_size=8, progress=False)
    extract(create("logmel"), recordings, tmp_path / "ray", batch_size=8, progress=False, backend="ray", ray=CALL)
    _assert_same(_read_cache(tmp_path / "ray", "logmel"), _read_cache(tmp_path / "local", "logmel"))


def test_ray_extract_equals_local_on_circor_mini_mn04(circor_mini, tmp_path):
    import torch
    weights = circor_mini.parent / "weights" / "efficientat_mn04_as_mAP_432.pt"
    if not weights.exists():
        pytest.skip("../shared/weights/efficientat_mn04_as_mAP_432.pt not present")
    # 3 recordings over 2 actor calls, batches of 8 windows: batch boundaries differ between backends;
    # one torch thread on both sides (oneDNN's sums depend on the thread count)
    recordings = load_circor(circor_mini).recordings()[:3]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        extract(create("mn04", weights), recordings, tmp_path / "local", batch_size=8, progress=False)
    finally:
        torch.set_num_threads(threads)
    extract(create("mn04", weights), recordings, tmp_path / "ray", batch_size=8, progress=False,
            backend="ray", ray=RayOptions(recordings_per_call=2, threads_per_actor=1))
    _assert_same(_read_cache(tmp_path / "ray", "mn04"), _read_cache(tmp_path / "local", "mn04"))


def test_probe_scores_on_ray_equal_local(synthetic_data, tmp_path):
    circor = load_dataset("circor", synthetic_data)
    extract(create("logmel"), circor.recordings(), tmp_path / "cache", progress=False)
    splits = {"split1": load_splits(circor, "paper")["split1"]}  # Ray workers start slowly: 2 fits each
    frames = {}
    for backend in ("local", "ray"):
        run_probe(Task.from_dataset(circor, "patient"), ["logmel"], ["linear", "xgboost"], splits, tmp_path / "cache", tmp_path / backend,
                  progress=False, backend=backend)
        frames[backend] = [pd.read_csv(tmp_path / backend / f) for f in ("scores.csv", "predictions.csv")]
    for got, want in zip(frames["ray"], frames["local"]):
        pd.testing.assert_frame_equal(got, want)
    assert len(frames["ray"][0]) == 2


def test_plain_runs_never_import_ray():
    code = ("import sys, pipeline, classify.jobs.probe, embed.extract, embed.ray_backend, classify.evaluation.backend; "
            "pipeline.build_parser(); assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_without_ray_the_ray_backend_says_how_to_install_it(synthetic_data, tmp_path, monkeypatch):
    from classify.evaluation.backend import run_tasks
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as on a plain install
    recordings = load_circor(synthetic_data).recordings()[:2]
    with pytest.raises(RuntimeError, match=r"pip install -e '\.\[ray\]'"):
        extract(create("logmel"), recordings, tmp_path, progress=False, backend="ray")
    with pytest.raises(RuntimeError, match=r"pip install -e '\.\[ray\]'"):
        run_tasks(max, [((1, 2), {})], backend="ray", progress=False)
    assert run_tasks(max, [((1, 2), {}), ((4, 3), {})], progress=False) == [2, 4]


def test_benchmark_splits_fixed_and_per_recording_cost():
    from embed.ray_benchmark import Timing, crossover
    local = Timing("local", (50, 200), (11.0, 41.0), 1700)  # 0.2 s/recording, 1 s fixed
    ray_fast = Timing("ray", (50, 200), (25.0, 40.0), 1700)  # 0.1 s/recording, 20 s fixed
    assert local.per_recording_s == pytest.approx(0.2) and local.fixed_s == pytest.approx(1.0)
    assert ray_fast.fixed_s == pytest.approx(20.0)
    assert crossover(local, ray_fast) == pytest.approx(190.0)  # 1 + 0.2 n = 20 + 0.1 n
    assert crossover(local, Timing("ray", (50, 200), (30.0, 75.0), 1700)) is None  # never catches up
