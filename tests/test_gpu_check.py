"""`gpu-check --device cpu`: the GPU check's own code, end to end on a CPU (generated M2D weights in
the official layout, mn04's real weights where ../shared has them), on generated recordings."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from embed.datasets.synthetic import make_dataset
from embed.encoders.transfer import HostCopy, Ready, pins_memory, to_device
from pipeline import main

from test_encoder_efficientat import REAL_MN04


def test_gpu_check_runs_on_a_cpu_end_to_end(tmp_path, capsys) -> None:
    data = make_dataset(tmp_path / "data", n_patients=1, seed=2)  # three recordings of 7-11 s
    out = tmp_path / "check"
    mn04 = ["--mn04", str(REAL_MN04)] if REAL_MN04.is_file() else []
    assert main(["gpu-check", "--device", "cpu", "--data", str(data), "--out", str(out), "--encoders", "m2d,mn04",
                 "--windows", "1", "--recordings", "1", "--extract-recordings", "1", "--batch-size", "1",
                 "--workers", "2", *mn04]) == 0
    ran = ["m2d"] + (["mn04"] if mn04 else [])
    lines = (out / "gpu-check.txt").read_text().splitlines()
    assert [line.split()[0] for line in lines] == ran  # one full extract per encoder (fp32: no native bf16 here)
    assert all("fp32 on cpu: full extract of 1 recordings" in line and "0 failed" in line for line in lines)
    for name in ran:
        rows = pd.read_csv(out / f"benchmark-{name}.csv")
        assert list(rows["precision"]) == ["fp32"] and (rows["windows_per_s"] > 0).all()
        assert rows["decode_timed"].all() and (rows["speedup_vs_naive"] > 0).all()
    assert (out / "weights").is_dir() and not list(out.glob("cache-*"))  # the fresh caches are removed
    if not mn04:
        assert "mn04: skipped" in capsys.readouterr().out


def test_gpu_check_names_what_it_refuses(tmp_path) -> None:
    data = make_dataset(tmp_path / "data", n_patients=1, seed=2)
    assert main(["gpu-check", "--device", "cpu", "--data", str(data), "--encoders", "m2d,ast",
                 "--out", str(tmp_path / "x")]) == 2  # a ValueError naming the encoders it knows
    if not torch.cuda.is_available():
        assert main(["gpu-check", "--data", str(data), "--out", str(tmp_path / "y")]) == 2  # --device cuda


def test_host_copies_are_the_values_on_every_device() -> None:
    x = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    device = torch.device("cpu")
    assert not pins_memory(device) and pins_memory(torch.device("cuda"))
    on_device = to_device(x, device)
    copy = HostCopy(on_device)
    on_device.zero_()  # the copy is its own memory
    np.testing.assert_array_equal(copy.result(), np.arange(12, dtype=np.float32).reshape(3, 4))
    assert Ready(np.ones(2)).result().tolist() == [1.0, 1.0]


class Deferred:
    """A launched batch whose result is read later (as a CUDA copy back would be)."""

    def __init__(self, log: list, index: int, rows: np.ndarray) -> None:
        self.log, self.index, self.rows = log, index, rows

    def result(self) -> np.ndarray:
        self.log.append(("read", self.index))
        return self.rows


class LaunchingEncoder:
    """`embed_async` logs launches and reads; a window whose first sample is -1 fails its batch."""
    checkpoint = None

    def __init__(self) -> None:
        self.log: list = []

    def embed_async(self, batch: np.ndarray) -> Deferred:
        if (batch[:, 0] == -1).any():
            raise RuntimeError("bad window")
        index = sum(kind == "launch" for kind, _ in self.log)
        self.log.append(("launch", index))
        return Deferred(self.log, index, batch[:, :2] * 10)


def test_batches_are_launched_ahead_and_a_failed_one_blames_only_its_window() -> None:
    from embed.datasets.circor import Recording
    from embed.extract_steps import BATCHES_IN_FLIGHT, Prepared, WindowBatcher

    windows = {f"r{i}": np.full((3, 4), i, np.float32) for i in range(4)}
    windows["r2"][1, 0] = -1  # one bad window in recording r2
    encoder = LaunchingEncoder()
    batcher = WindowBatcher(encoder, batch_size=2)
    done = []
    for rid, w in windows.items():
        done += batcher.add(Prepared(Recording(rid, "p", "AV", Path(f"/x/{rid}.wav")), w))
    done += batcher.finish()
    assert [p.recording.recording_id for p in done] == list(windows)  # in order, each once
    assert [p.error is not None for p in done] == [False, False, True, False]
    assert "bad window" in done[2].error
    for prep in done:
        if prep.error is None:
            np.testing.assert_array_equal(prep.embeddings, prep.windows[:, :2] * 10)
    assert BATCHES_IN_FLIGHT == 2 and encoder.log[:3] == [("launch", 0), ("launch", 1), ("read", 0)]
