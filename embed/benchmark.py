"""Where the time goes: encoder throughput against the machine's matmul roofline.

Figures, not assertions: `python pipeline.py benchmark --encoder NAME ...` prints, per precision
and batch size, windows/s, x real time, GFLOP per window (torch's flop counter, in fp32), the achieved
GFLOP/s as a share of a matmul roofline measured in the same process at the same precision, the
wall-time split between decode + resample, front end and network, and peak memory. With
`--data`, the windows are real recordings and the split includes their decoding; `--compare`
also times a naive baseline (one recording at a time, fp32, a batch of its own windows, as the
authors' reference code does) against `extract` on the same recordings.
"""
from __future__ import annotations

import functools
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import torch

from .encoders import Encoder
from .encoders.base import Precision
from .segments import SegmentConfig


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _dtype(precision: str) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


@dataclass
class Roofline:
    """Matrix-product GFLOP/s per second of wall time and per second of this process's CPU time
    (the latter barely moves when other jobs share the cores)."""
    wall_gflops: float
    cpu_gflops: float


def matmul_roofline(precision: str, device: torch.device, n: int = 2048, repeats: int = 7,
                    budget_s: float = 1.0) -> Roofline:
    """An `n x n` matrix product at `precision` (median of `repeats`): the ceiling the encoders'
    matrix products can reach on this device, measured in the same process. Where one product
    would take longer than `budget_s` (bf16 emulated on a CPU without it runs ~70x slower than
    fp32: 69 s for one 2048 product), `n` is halved until it fits, from a timed 256 product."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    small = torch.randn(256, 256, generator=gen).to(device, _dtype(precision))
    small @ small
    _sync(device)
    start = time.perf_counter()
    small @ small
    _sync(device)
    estimate = (time.perf_counter() - start) * (n / 256) ** 3
    while n > 256 and estimate > budget_s:
        n, estimate = n // 2, estimate / 8
    a, b = (torch.randn(n, n, generator=gen).to(device, _dtype(precision)) for _ in range(2))
    for _ in range(2):
        a @ b
    walls, cpus = [], []
    for _ in range(repeats):
        _sync(device)
        start, cpu = time.perf_counter(), time.process_time()
        a @ b
        _sync(device)
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    flop = 2 * n ** 3 / 1e9
    return Roofline(flop / float(np.median(walls)), flop / max(float(np.median(cpus)), 1e-9))


def gflop_per_window(encoder: Encoder, windows: np.ndarray) -> float:
    """Floating-point operations of one window (matrix products, convolutions, attention), by
    torch's flop counter over a batch of `windows`, counted once in fp32 with the math attention
    kernel whatever the encoder's precision: the same work on every path. The counter knows no
    formula for some fused kernels the faster paths take (oneDNN's bf16 linear layers, CPU flash
    attention): counted there, M2D bf16 came to ~1 GFLOP per window instead of 28.4."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode
    precision, counter = encoder.precision, FlopCounterMode(display=False)
    encoder.precision = "fp32"  # the next call at `precision` casts the weights again
    try:
        with counter, sdpa_kernel(SDPBackend.MATH):
            encoder.frame_embeddings(windows)
    finally:
        encoder.precision = precision
    return counter.get_total_flops() / len(windows) / 1e9


@contextmanager
def front_end_timer(encoder: Encoder):
    """Accumulates the seconds spent in the encoder's front end (`Encoder.front_end` names the
    modules or methods) while active; yields a one-element list holding the running total."""
    total = [0.0]
    undo: list[Callable[[], None]] = []

    def owner_of(path: str):
        obj = encoder
        *parents, leaf = path.split(".")
        for part in parents:
            obj = getattr(obj, part)
        return obj, leaf

    started: list[float] = []
    depth = [0]  # nested front-end calls are counted once

    def enter(*_):
        if depth[0] == 0:
            _sync(encoder.device)
            started.append(time.perf_counter())
        depth[0] += 1

    def leave(*_):
        depth[0] -= 1
        if depth[0] == 0:
            _sync(encoder.device)
            total[0] += time.perf_counter() - started.pop()

    for path in encoder.front_end:
        owner, leaf = owner_of(path)
        target = getattr(owner, leaf)
        if isinstance(target, torch.nn.Module):
            hooks = (target.register_forward_pre_hook(enter), target.register_forward_hook(leave))
            undo.append(lambda hooks=hooks: [h.remove() for h in hooks])
        else:
            def timed(*args, _target=target, **kwargs):
                enter()
                try:
                    return _target(*args, **kwargs)
                finally:
                    leave()
            before = owner.__dict__.get(leaf)  # an instance attribute already set, if any
            owner.__dict__[leaf] = timed  # an instance attribute shadows the method

            def restore(owner=owner, leaf=leaf, before=before):
                if before is None:
                    owner.__dict__.pop(leaf, None)
                else:
                    owner.__dict__[leaf] = before
            undo.append(restore)
    try:
        yield total
    finally:
        for fn in undo:
            fn()


class PeakMemory:
    """Peak resident memory (CPU, sampled) or peak allocated memory (CUDA) while active, in MiB."""

    def __init__(self, device: torch.device, interval_s: float = 0.005) -> None:
        self.device, self.interval_s, self.peak_mib = device, interval_s, 0.0
        self._stop = threading.Event()

    @staticmethod
    def rss_mib() -> float:
        try:
            pages = int(Path("/proc/self/statm").read_text().split()[1])
        except OSError:
            import resource
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux units, lifetime
        import os
        return pages * os.sysconf("SC_PAGE_SIZE") / 2 ** 20

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_mib = max(self.peak_mib, self.rss_mib())

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak_mib = self.rss_mib()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_mib = torch.cuda.max_memory_allocated(self.device) / 2 ** 20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mib = max(self.peak_mib, self.rss_mib())


@dataclass
class Throughput:
    encoder: str
    device: str
    precision: str
    batch_size: int
    windows: int
    seconds: float  # encoder time (front end + network)
    window_s: float
    front_end_s: float = 0.0
    decode_s_per_window: float | None = None  # decode + resample, when timed on recordings
    gflop_per_window: float | None = None
    roofline: Roofline | None = None
    peak_mib: float | None = None
    cpu_seconds: float | None = None  # this process's CPU time over the timed batches

    @property
    def roofline_gflops(self) -> float | None:
        return None if self.roofline is None else self.roofline.wall_gflops

    @property
    def windows_per_s(self) -> float:
        return self.windows / self.seconds

    @property
    def realtime_factor(self) -> float:
        """Seconds of audio embedded per second of compute."""
        return self.windows_per_s * self.window_s

    @property
    def achieved_gflops(self) -> float | None:
        return None if self.gflop_per_window is None else self.gflop_per_window * self.windows_per_s

    @property
    def roofline_ratio(self) -> float | None:
        if self.achieved_gflops is None or not self.roofline_gflops:
            return None
        return self.achieved_gflops / self.roofline_gflops

    @property
    def cpu_roofline_ratio(self) -> float | None:
        """The same share measured in CPU seconds: GFLOP per CPU-second against the matmul's."""
        if self.gflop_per_window is None or self.roofline is None or not self.cpu_seconds:
            return None
        return self.gflop_per_window * self.windows / self.cpu_seconds / self.roofline.cpu_gflops

    def split(self) -> dict[str, float]:
        """Shares of the sequential wall time per window: decode + resample, front end, network."""
        decode = self.decode_s_per_window or 0.0
        front = self.front_end_s / self.windows
        network = max(self.seconds / self.windows - front, 0.0)
        total = decode + front + network
        return {"decode": decode / total, "front_end": front / total, "network": network / total}

    def as_dict(self) -> dict:
        return {"encoder": self.encoder, "device": self.device, "precision": self.precision,
                "batch_size": self.batch_size, "windows": self.windows, "windows_per_s": self.windows_per_s,
                "x_realtime": self.realtime_factor, "gflop_per_window": self.gflop_per_window,
                "achieved_gflops": self.achieved_gflops, "roofline_gflops": self.roofline_gflops,
                "roofline_ratio": self.roofline_ratio, "cpu_roofline_ratio": self.cpu_roofline_ratio, **{f"share_{k}": v for k, v in self.split().items()},
                "decode_timed": self.decode_s_per_window is not None, "peak_mib": self.peak_mib}

    def row(self) -> str:
        text = (f"{self.encoder:10s} {self.device:6s} {self.precision:5s} batch {self.batch_size:3d}: "
                f"{self.windows_per_s:8.1f} windows/s, {self.realtime_factor:7.0f}x real time")
        if self.gflop_per_window is not None:
            text += f", {self.gflop_per_window:7.3f} GFLOP/window, {self.achieved_gflops:7.1f} GFLOP/s"
            if self.roofline_ratio is not None:
                text += f" = {self.roofline_ratio:.2f} of {self.roofline_gflops:.0f} (matmul roofline)"
            if self.cpu_roofline_ratio is not None and self.device == "cpu":
                text += f" [{self.cpu_roofline_ratio:.2f} by CPU time]"
        split = self.split()
        decode = f"decode {100 * split['decode']:.0f}%" if self.decode_s_per_window is not None else "decode n/a"
        text += f"; {decode}, front end {100 * split['front_end']:.0f}%, network {100 * split['network']:.0f}%"
        if self.peak_mib is not None:
            text += f"; peak {self.peak_mib:.0f} MiB"
        return text


def noise_windows(encoder: Encoder, count: int, window_s: float = 5.0, seed: int = 0) -> np.ndarray:
    n = int(round(window_s * encoder.sample_rate))
    return (0.1 * np.random.default_rng(seed).standard_normal((count, n))).astype(np.float32)


def measure(encoder: Encoder, windows: int = 256, batch_size: int = 32, window_s: float = 5.0,
            warmup: int = 1, seed: int = 0, audio: np.ndarray | None = None,
            decode_s_per_window: float | None = None, flops: bool = True,
            roofline: Roofline | None = None) -> Throughput:
    """Embed `windows` windows in batches after `warmup` untimed batches. `audio`: the windows to
    cycle through (real recordings); noise when None."""
    pool = audio if audio is not None else noise_windows(encoder, batch_size, window_s, seed)
    for _ in range(warmup):  # the first low-precision call also casts the weights
        encoder.embed(pool[np.arange(batch_size) % len(pool)])
    done, offset = 0, 0
    with PeakMemory(encoder.device) as memory, front_end_timer(encoder) as front:
        _sync(encoder.device)
        start, cpu = time.perf_counter(), time.process_time()
        while done < windows:
            size = min(batch_size, windows - done)
            encoder.embed(pool[(offset + np.arange(size)) % len(pool)])
            done, offset = done + size, offset + size
        _sync(encoder.device)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    gflop = gflop_per_window(encoder, pool[:min(2, len(pool))]) if flops else None
    return Throughput(encoder.name, str(encoder.device), encoder.precision, batch_size, done, seconds,
                      window_s, front[0], decode_s_per_window, gflop, roofline, memory.peak_mib, cpu_seconds)


def sample_recordings(data: str | Path, count: int, seed: int = 0, dataset: str = "circor") -> list:
    """A fixed random sample of the dataset's recordings (the same on every run)."""
    from .datasets import load_dataset
    recordings = load_dataset(dataset, data).recordings()
    pick = np.random.default_rng(seed).choice(len(recordings), min(count, len(recordings)), replace=False)
    return [recordings[i] for i in sorted(pick)]


def decode_windows(recordings: list, encoder: Encoder, segments: SegmentConfig = SegmentConfig()
                   ) -> tuple[np.ndarray, float]:
    """Every window `extract` would embed from `recordings`, and the decode + resample seconds
    per window (read, resample and cut, one thread)."""
    from .extract_steps import prepare
    start, out = time.perf_counter(), []
    for rec in recordings:
        prep = prepare(rec, encoder.sample_rate, segments)
        if prep.windows is not None:
            out.extend(prep.windows[i] for i in range(len(prep.windows)))
    if not out:
        raise ValueError("none of the sampled recordings could be read")
    return np.stack(out).astype(np.float32), (time.perf_counter() - start) / len(out)


@dataclass
class Comparison:
    naive_s: float
    pipeline_s: float
    windows: int
    precision: str

    def row(self) -> str:
        return (f"naive (one recording at a time, fp32): {self.windows / self.naive_s:.1f} windows/s; "
                f"extract ({self.precision}, cross-recording batches, decode overlapped): "
                f"{self.windows / self.pipeline_s:.1f} windows/s; speed-up {self.naive_s / self.pipeline_s:.2f}x "
                f"({self.windows} windows, decode included)")


def naive_baseline(encoder: Encoder, recordings: list, segments: SegmentConfig = SegmentConfig()
                   ) -> tuple[float, int]:
    """The reference implementations' way: decode one recording, embed its windows as one batch."""
    from .extract_steps import prepare
    start, windows = time.perf_counter(), 0
    for rec in recordings:
        prep = prepare(rec, encoder.sample_rate, segments)
        if prep.windows is None:
            continue
        batch = np.stack([prep.windows[i] for i in range(len(prep.windows))])
        encoder.embed(batch)
        windows += len(batch)
    _sync(encoder.device)
    return time.perf_counter() - start, windows


def compare(fast: Encoder, naive: Encoder, recordings: list, batch_size: int = 32) -> Comparison:
    """`extract` (threads decode ahead, batches across recordings, `fast`'s precision) against the
    naive loop with `naive` (fp32), on the same recordings, in this process."""
    from .extract import extract
    naive.embed(noise_windows(naive, 1))  # warm both up
    fast.embed(noise_windows(fast, 1))
    naive_s, windows = naive_baseline(naive, recordings)
    with tempfile.TemporaryDirectory(prefix="heartprobe-bench-") as tmp:
        report = extract(fast, recordings, tmp, batch_size=batch_size, progress=False)
    return Comparison(naive_s, report.seconds, windows, fast.precision)


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of `a` with the same row of `b` (embeddings of the same windows)."""
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def parse_batch_sizes(spec: str, encoder: Encoder, window_s: float) -> list[int]:
    """'8,32' or 'auto' (the size `extract` picks for this device)."""
    return [encoder.auto_batch_size(window_s, timed=True) if b == "auto" else int(b) for b in spec.split(",")]


def run_benchmark(make_encoder: Callable[[Precision | None], Encoder],
                  precisions: Sequence[Precision | Literal["auto"]], batch_sizes: str = "32", windows: int = 256,
                  window_s: float = 5.0, data: str | Path | None = None, dataset: str = "circor",
                  recordings: int = 24, seed: int = 0, accuracy_windows: int = 64, compare_naive: bool = False,
                  out: str | Path | None = None,
                  say: Callable[[str], None] = functools.partial(print, flush=True)) -> list[dict]:
    """`pipeline.py benchmark`: per precision (`auto` = the encoder's default; `make_encoder(None)`)
    and batch size, the `measure` row; with `data`, on windows of `recordings` recordings sampled
    from it, each low precision's cosine to fp32 on the first `accuracy_windows` of them and, with
    `compare_naive`, `compare` against a naive fp32 encoder. Each line goes to `say` when measured;
    the rows are returned and, with `out`, written as CSV."""
    say(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
        f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device'}")
    encoders = {p: make_encoder(None if p == "auto" else p) for p in precisions}
    sampled, audio, decode_s = None, None, None
    if data:
        sampled = sample_recordings(data, recordings, seed, dataset)
        audio, decode_s = decode_windows(sampled, next(iter(encoders.values())))
        say(f"{len(sampled)} recordings sampled from {data}: {len(audio)} windows, decode + resample "
            f"{1e3 * decode_s:.2f} ms/window")
    rows, reference = [], None
    for encoder in encoders.values():
        roofline = matmul_roofline(encoder.precision, encoder.device)
        say(f"{encoder.precision} matmul roofline on {encoder.device}: {roofline.wall_gflops:.0f} GFLOP/s "
            f"({roofline.cpu_gflops:.0f} per CPU-second)")
        for batch_size in parse_batch_sizes(batch_sizes, encoder, window_s):
            result = measure(encoder, windows, batch_size, window_s, audio=audio,
                             decode_s_per_window=decode_s, roofline=roofline)
            rows.append(result.as_dict())
            say(result.row())
        if audio is not None:  # agreement with fp32 on the same real windows
            check = audio[:accuracy_windows]
            if encoder.precision == "fp32":
                reference = encoder.embed(check)
            else:
                if reference is None:
                    reference = make_encoder("fp32").embed(check)
                cos = row_cosines(encoder.embed(check), reference)
                say(f"{encoder.precision} vs fp32 on {len(check)} real windows: cosine min {cos.min():.5f}, "
                    f"median {np.median(cos):.5f}")
                rows[-1]["cosine_min_vs_fp32"] = float(cos.min())
        if compare_naive and sampled is not None:
            comparison = compare(encoder, make_encoder("fp32"), sampled, batch_size)
            say(comparison.row())
            rows[-1]["speedup_vs_naive"] = comparison.naive_s / comparison.pipeline_s
    if compare_naive and sampled is None:
        print("--compare needs --data (it times decoding real recordings)", file=sys.stderr)
    if out:
        import pandas as pd
        from .atomic import atomic_path
        with atomic_path(out) as tmp:
            pd.DataFrame(rows).to_csv(tmp, index=False)
        say(f"wrote {out}")
    return rows
