"""Encoder throughput: windows per second and real-time factor on a fixed batch of 5 s windows.

Figures, not assertions: `python pipeline.py benchmark --encoder NAME ...` prints them so speed
can be compared across devices and precisions without a timed test.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from .encoders import Encoder


@dataclass
class Throughput:
    encoder: str
    device: str
    precision: str
    batch_size: int
    windows: int
    seconds: float
    window_s: float

    @property
    def windows_per_s(self) -> float:
        return self.windows / self.seconds

    @property
    def realtime_factor(self) -> float:
        """Seconds of audio embedded per second of compute."""
        return self.windows_per_s * self.window_s

    def row(self) -> str:
        return (f"{self.encoder:10s} {self.device:6s} {self.precision:5s} batch {self.batch_size:3d}: "
                f"{self.windows_per_s:8.1f} windows/s, {self.realtime_factor:8.0f}x real time "
                f"({self.windows} windows in {self.seconds:.2f} s)")


def measure(encoder: Encoder, windows: int = 256, batch_size: int = 32, window_s: float = 5.0,
            warmup: int = 1, seed: int = 0) -> Throughput:
    """Embed `windows` noise windows in batches after `warmup` untimed batches."""
    n = int(round(window_s * encoder.sample_rate))
    batch = (0.1 * np.random.default_rng(seed).standard_normal((batch_size, n))).astype(np.float32)
    for _ in range(warmup):
        encoder.embed(batch)
    done = 0
    start = time.perf_counter()
    while done < windows:
        encoder.embed(batch[:min(batch_size, windows - done)])
        done += min(batch_size, windows - done)
    if encoder.device.type == "cuda":
        torch.cuda.synchronize(encoder.device)
    return Throughput(encoder.name, str(encoder.device), encoder.precision, batch_size, done,
                      time.perf_counter() - start, window_s)
