"""benchmark: flop counts, front-end timing, wall split, real-recording timing, naive comparison."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import torch

from embed import benchmark as bench
from embed.encoders import Encoder, create
from embed.encoders.base import CPU_BATCH_SIZE, batch_size_for_memory
from pipeline import main

SAMPLES, KERNEL, STRIDE = 400, 16, 8
FRAMES = (SAMPLES - KERNEL) // STRIDE + 1


class SmallNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv1d(1, 4, KERNEL, stride=STRIDE)
        self.fc1, self.fc2 = torch.nn.Linear(4, 32), torch.nn.Linear(32, 8)

    def spectrum(self, audio: torch.Tensor) -> torch.Tensor:  # the front end, a method
        return self.conv(audio[:, None]).transpose(1, 2)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(self.spectrum(audio))))


class SmallEncoder(Encoder):
    sample_rate = 80  # 5 s windows of 400 samples
    feature_dim = 8
    needs_checkpoint = False
    front_end = ("model.spectrum",)

    def __init__(self, **kwargs) -> None:
        super().__init__(None, **kwargs)
        self.model = SmallNet()
        self.to_device()

    def frames(self, audio: torch.Tensor) -> torch.Tensor:
        return self.model(audio)


def test_flop_count_is_the_layers_multiply_adds() -> None:
    expected = 2 * FRAMES * (4 * KERNEL + 4 * 32 + 32 * 8)
    enc = SmallEncoder()
    assert bench.gflop_per_window(enc, bench.noise_windows(enc, 3)) == pytest.approx(expected / 1e9)


def test_front_end_timer_times_the_method_and_undoes_itself() -> None:
    enc = SmallEncoder()
    calls = []
    enc.model.spectrum = lambda audio, inner=enc.model.spectrum: calls.append(1) or inner(audio)
    with bench.front_end_timer(enc) as front:
        enc.embed(bench.noise_windows(enc, 2))
    assert front[0] > 0 and calls == [1]
    enc.embed(bench.noise_windows(enc, 2))  # the original (here: the counting wrapper) is back
    assert calls == [1, 1]


def test_front_end_timer_on_a_module_removes_its_hooks() -> None:
    enc = create("logmel")  # front end: the LogMelSpectrogram module
    with bench.front_end_timer(enc) as front:
        enc.embed(bench.noise_windows(enc, 2))
    assert front[0] > 0
    assert not enc.model._forward_hooks and not enc.model._forward_pre_hooks


def test_measure_reports_roofline_share_and_a_split_that_adds_up() -> None:
    enc = SmallEncoder()
    result = bench.measure(enc, windows=10, batch_size=4, roofline=bench.Roofline(100.0, 50.0),
                           decode_s_per_window=1e-3)
    assert result.windows == 10 and result.seconds > 0 and result.front_end_s > 0
    assert result.roofline_ratio == pytest.approx(result.achieved_gflops / 100.0)
    assert result.achieved_gflops == pytest.approx(result.gflop_per_window * 10 / result.seconds)
    assert result.cpu_roofline_ratio == pytest.approx(result.gflop_per_window * 10 / result.cpu_seconds / 50.0)
    split = result.split()
    assert sum(split.values()) == pytest.approx(1.0) and min(split.values()) > 0
    assert result.peak_mib > 0 and "of 100 (matmul roofline)" in result.row()
    roofline = bench.matmul_roofline("fp32", torch.device("cpu"), n=128, repeats=3)
    assert roofline.wall_gflops > 0 and roofline.cpu_gflops > 0


def test_real_recordings_decode_and_naive_comparison(circor_mini) -> None:
    enc = create("logmel")
    recordings = bench.sample_recordings(circor_mini, 3, seed=0)
    assert recordings == bench.sample_recordings(circor_mini, 3, seed=0)  # a fixed sample
    windows, decode_s = bench.decode_windows(recordings, enc)
    assert windows.shape[1] == 5 * enc.sample_rate and decode_s > 0
    naive_s, n = bench.naive_baseline(create("logmel"), recordings)
    assert n == len(windows) and naive_s > 0
    comparison = bench.compare(enc, create("logmel"), recordings, batch_size=8)
    assert comparison.windows == len(windows) and "speed-up" in comparison.row()


def test_benchmark_command_on_real_data_writes_rows(circor_mini, tmp_path, capsys) -> None:
    out = tmp_path / "bench.csv"
    assert main(["benchmark", "--encoder", "logmel", "--precision", "fp32,bf16", "--batch-size", "4",
                 "--windows", "8", "--data", str(circor_mini), "--recordings", "2", "--compare",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "bf16 vs fp32 on" in text and text.count("speed-up") == 2
    rows = pd.read_csv(out)
    assert list(rows["precision"]) == ["fp32", "bf16"] and rows["decode_timed"].all()
    assert rows["cosine_min_vs_fp32"].iloc[1] > 0.999 and (rows["speedup_vs_naive"] > 0).all()
    assert np.allclose(rows[["share_decode", "share_front_end", "share_network"]].sum(axis=1), 1.0)


def test_batch_size_for_the_device() -> None:
    assert create("logmel").auto_batch_size() == CPU_BATCH_SIZE
    assert batch_size_for_memory(8e9, 50e6) == 64  # 4e9 / 50e6 = 80 -> 64
    assert batch_size_for_memory(80e9, 1e6) == 512  # capped
    assert batch_size_for_memory(1e6, 50e6) == 8  # floor


def test_timed_cpu_batch_size_picks_the_fastest_candidate(monkeypatch) -> None:
    from embed.encoders import base

    enc = create("logmel")
    calls = []

    def embed(batch):  # a fake cost: 8 windows per batch are cheapest per window
        calls.append(len(batch))
        time.sleep(0.002 * abs(len(batch) - 8) + 0.001 * len(batch))
        return np.zeros((len(batch), 1), np.float32)

    monkeypatch.setattr(enc, "embed", embed)
    assert enc.auto_batch_size(timed=True) == 8
    assert sorted(set(calls)) == sorted(base.CPU_BATCH_CANDIDATES)
    calls.clear()
    assert enc.auto_batch_size() == CPU_BATCH_SIZE and not calls  # short jobs time nothing


def test_timed_cpu_batch_size_stops_at_its_time_budget(monkeypatch) -> None:
    enc = create("logmel")
    calls = []

    def embed(batch):
        calls.append(len(batch))
        time.sleep(0.01)
        return np.zeros((len(batch), 1), np.float32)

    monkeypatch.setattr(enc, "embed", embed)
    assert enc.fastest_cpu_batch_size(budget_s=0.0) == 2 and set(calls) == {2}  # the first is always timed


def test_vit_work_is_counted_once_in_fp32_whatever_the_precision(tmp_path) -> None:
    """ATST-Frame (the shared ViT block) on generated checkpoints of one and two blocks: the count
    is the same at fp32 and bf16, and the second block adds exactly its linear layers and its
    attention (q k^T and its product with v), which the CPU flash kernel would hide."""
    from test_encoder_atst import lightning_checkpoint
    dim = 384
    paths = {}
    for depth in (1, 2):
        paths[depth] = tmp_path / f"atst{depth}.ckpt"
        torch.save(lightning_checkpoint(seed=0, dim=dim, depth=depth), paths[depth])
    fp32 = create("atst_frame", paths[2], n_blocks=1, precision="fp32")
    bf16 = create("atst_frame", paths[2], n_blocks=1, precision="bf16")
    windows = bench.noise_windows(fp32, 2)
    tokens = []
    hook = fp32.model.encoder.blocks[0].register_forward_pre_hook(lambda _m, args: tokens.append(args[0].shape))
    two_blocks = bench.gflop_per_window(fp32, windows)
    hook.remove()
    assert bench.gflop_per_window(bf16, windows) == pytest.approx(two_blocks, rel=1e-9)
    assert bf16.precision == "bf16"  # restored after counting
    one_block = bench.gflop_per_window(create("atst_frame", paths[1], n_blocks=1, precision="bf16"), windows)
    per_block = sum(2 * b * n * 12 * d * d + 4 * b * n * n * d for b, n, d in tokens) / len(windows) / 1e9
    assert two_blocks - one_block == pytest.approx(per_block, rel=1e-6)
