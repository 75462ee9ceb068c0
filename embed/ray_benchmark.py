"""Local vs Ray extraction on this machine: where does Ray start to pay?

Each backend embeds the first n/4 and the first n recordings into fresh caches; a line through
the two wall times splits each run into a fixed cost (start-up: actors loading the encoder, the
dataset's first tasks) and a cost per recording. Ray wins once its lower cost per recording
(more workers, more nodes) has paid back its larger fixed cost:
crossover = (fixed_ray - fixed_local) / (per_recording_local - per_recording_ray).
Figures, not assertions: `python pipeline.py benchmark-ray --data D ...` prints them.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .datasets.base import Recording
from .encoders import Encoder
from .extract import extract
from .ray_backend import RayOptions, connect


@dataclass
class Timing:
    label: str  # e.g. "local", "ray, 2 actors"
    recordings: tuple[int, int]
    seconds: tuple[float, float]
    windows: int  # windows embedded in the larger run

    @property
    def per_recording_s(self) -> float:
        (n1, n2), (t1, t2) = self.recordings, self.seconds
        return (t2 - t1) / (n2 - n1)

    @property
    def fixed_s(self) -> float:
        return self.seconds[1] - self.per_recording_s * self.recordings[1]

    def row(self) -> str:
        n, t = self.recordings[1], self.seconds[1]
        return (f"{self.label:15s} {n} recordings in {t:7.1f} s "
                f"({n / t:6.2f} rec/s, {self.windows / t:7.1f} windows/s); "
                f"fixed {self.fixed_s:6.1f} s + {1000 * self.per_recording_s:7.1f} ms/recording")


def crossover(local: Timing, ray: Timing) -> float | None:
    """Recordings from which `ray` finishes first; None when its cost per recording is not lower."""
    gain = local.per_recording_s - ray.per_recording_s
    return max(0.0, (ray.fixed_s - local.fixed_s) / gain) if gain > 0 else None


def _time(encoder: Encoder, recordings: list[Recording], sizes: tuple[int, int], batch_size: int,
          backend: str, label: str, options: RayOptions | None) -> Timing:
    seconds, windows = [], 0
    for n in sizes:
        cache = Path(tempfile.mkdtemp(prefix="heartprobe-bench-"))
        try:
            start = time.perf_counter()
            report = extract(encoder, recordings[:n], cache, batch_size=batch_size,
                             progress=False, backend=backend, ray=options)
            seconds.append(time.perf_counter() - start)
            windows = report.windows
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    return Timing(label, sizes, tuple(seconds), windows)


def compare(encoder: Encoder, recordings: list[Recording], n: int, actors: list[int], batch_size: int = 32,
            address: str | None = None, print_row=print) -> list[Timing]:
    """The local backend, then Ray with each actor count, on the first n/4 and n recordings."""
    sizes = (max(1, n // 4), n)
    if sizes[0] == sizes[1]:
        raise ValueError("benchmark-ray needs at least 2 recordings")
    local = _time(encoder, recordings, sizes, batch_size, "local", "local", None)
    print_row(local.row())
    start = time.perf_counter()
    started = connect(RayOptions(address=address))
    print_row(f"ray connect: {time.perf_counter() - start:.1f} s (once per run, not in the figures below)")
    timings = [local]
    try:
        # untimed: the first dataset also starts the Ray worker processes, once per Ray session
        _time(encoder, recordings, (1, 2), batch_size, "ray", "warm-up", RayOptions(address=address))
        for count in actors:
            timing = _time(encoder, recordings, sizes, batch_size, "ray", f"ray, {count} actor{'s' * (count > 1)}",
                           RayOptions(address=address, actors=count))
            timings.append(timing)
            cross = crossover(local, timing)
            print_row(timing.row() + f"; overhead vs local {1000 * (timing.per_recording_s - local.per_recording_s):+.1f} "
                      f"ms/recording, crossover: " + (f"{cross:.0f} recordings" if cross is not None
                                                      else "none (no lower cost per recording)"))
    finally:
        if started:
            import ray
            ray.shutdown()
    return timings


def benchmark_job(dataset_name: str, data: str | Path, make_encoder, n_recordings: int, actors: list[int],
                  batch_size: int = 32, address: str | None = None) -> list[Timing]:
    """`pipeline.py benchmark-ray`: the first `n_recordings` of the dataset, the encoder from
    `make_encoder()`, then `compare`, each row printed as it is timed."""
    from .datasets import load_dataset
    recordings = load_dataset(dataset_name, data).recordings()[:n_recordings]
    encoder = make_encoder()
    print(f"{encoder.name} ({encoder.precision} on {encoder.device}), batch {batch_size}, "
          f"{len(recordings)} recordings of {data}")
    return compare(encoder, recordings, len(recordings), actors, batch_size, address,
                   print_row=lambda row: print(row, flush=True))
