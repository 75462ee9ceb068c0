"""Run an encoder over every recording's windows and fill the cache.

Decoding and resampling run in a thread pool ahead of the encoder, windows from several
recordings share a batch, and finished recordings are flushed to the cache in shards, so a
bad recording or an interruption loses nothing already computed. The steps themselves live in
`extract_steps`, shared with `ray_backend`.
"""
from __future__ import annotations

import sys
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from tqdm import tqdm

from .audio import open_resampled
from .cache import DiskFullError, EmbeddingCache, FrameCache, check_recording_id
from .checksum import file_sha256
from .datasets.base import Recording
from .encoders import Encoder
from .encoders.base import CPU_BATCH_CANDIDATES
from .extract_steps import ExtractReport, Prepared, ShardWriter, WindowBatcher, outcome, prepare, progress_bar
from .frames import FrameConfig, FrameSource
from .problems import Problem
from .segments import SegmentConfig

# without --batch-size, a CPU job of this many recordings or more first times the candidate batch
# sizes (about 10 s at most) and keeps the fastest
TIME_BATCH_SIZES_FROM = 256

if TYPE_CHECKING:
    from .ray_backend import RayOptions


def cache_config(encoder: Encoder, segments: SegmentConfig) -> dict:
    """Everything that changes the embeddings; the cache key is its hash."""
    return {
        **encoder.describe(),
        "checkpoint_sha256": file_sha256(encoder.checkpoint) if encoder.checkpoint else None,
        "segments": segments.as_dict(),
    }


def open_cache(encoder: Encoder, segments: SegmentConfig, cache_dir: str | Path,
               frames: FrameConfig | None = None) -> EmbeddingCache:
    """The window cache, or with `frames` the frame cache (its own key: frame options, covering windows)."""
    if frames is None:
        return EmbeddingCache(cache_dir, encoder.name, cache_config(encoder, segments))
    return FrameCache(cache_dir, encoder.name, {**cache_config(encoder, frames.segments()),
                                                "frames": frames.as_dict()})


def fit_normalisation(encoder: Encoder, recordings: list[Recording], progress: bool = True
                      ) -> tuple[float, float]:
    """Fit an encoder's input statistics (BYOL-A's log-mel mean/std) on `recordings`, as its authors
    do on the downstream training data. Unreadable recordings are skipped; extract reports them."""
    if not hasattr(encoder, "fit_normalisation"):
        raise ValueError(f"encoder {encoder.name!r} has no statistics to fit; drop --fit-normalisation")

    def waves():
        for rec in tqdm(recordings, desc=f"normalisation {encoder.name}", unit="rec", disable=not progress,
                        file=sys.stderr, mininterval=0.5 if sys.stderr.isatty() else 10.0):
            try:
                audio = open_resampled(rec.wav, encoder.sample_rate)
                # the first two minutes are plenty for two scalars and keep memory bounded
                yield audio.windows(np.array([0]), min(audio.n_samples, 120 * encoder.sample_rate))[0]
            except Exception:  # noqa: BLE001 - a bad file is extract's problem to report
                continue
    return encoder.fit_normalisation(waves())


def extract(
    encoder: Encoder,
    recordings: list[Recording],
    cache_dir: str | Path,
    segments: SegmentConfig = SegmentConfig(),
    batch_size: int | None = None,
    flush_every: int = 64,
    workers: int = 2,
    lock_timeout_s: float = 0.0,
    progress: bool = True,
    backend: Literal["local", "ray"] = "local",
    ray: "RayOptions | None" = None,
    frames: FrameConfig | None = None,
) -> ExtractReport:
    """Embed the recordings not cached yet. `backend="ray"` runs decoding and the encoder on a
    Ray cluster (`ray`: its address and actor pool); the cache is written here either way.
    `frames`: cache every frame with its time (a frame cache) instead of window embeddings."""
    if backend not in ("local", "ray"):
        raise ValueError(f"backend must be 'local' or 'ray', got {backend!r}")
    if frames is not None and backend != "local":
        raise ValueError("frame caches (--frames) are made with the local backend only")
    # a layer choice or hop that does not fit the encoder fails here, before any work
    source = FrameSource(encoder, frames) if frames is not None else None
    cache = open_cache(encoder, segments, cache_dir, frames)
    report = ExtractReport(cache.path)
    recordings = usable_recordings(recordings, report.problems)
    cache.lock(lock_timeout_s)
    try:
        cache.clean_partial()
        for path, what in cache.salvage():
            report.problems.append(Problem(str(path), what, "warning"))
        have = cache.recording_ids()
        todo = [r for r in recordings if r.recording_id not in have]
        report.skipped = len(recordings) - len(todo)
        if todo:
            if not batch_size:
                timed = len(todo) >= TIME_BATCH_SIZES_FROM and encoder.device.type == "cpu"
                batch_size = encoder.auto_batch_size(segments.window_s, timed=timed)
                if progress and timed:
                    print(f"batch size {batch_size} (the fastest of {CPU_BATCH_CANDIDATES}, timed)", file=sys.stderr)
        if todo and backend == "ray":
            from .ray_backend import RayOptions, extract_on_ray
            extract_on_ray(encoder, todo, cache, segments, batch_size, flush_every, progress, report,
                           ray or RayOptions())
        elif todo:
            _run(encoder, todo, cache, frames.segments() if frames else segments, batch_size, flush_every,
                 workers, progress, report, frames, source)
        cache.consolidate()
    except DiskFullError as err:
        kept = [f.name for f in (cache.path, cache.parts_dir) if f.exists()]
        report.stopped = (f"{err.strerror}. The recordings finished before are kept ({' and '.join(kept) or 'none'}"
                          "; probe reads them as they are); free some space and rerun the same command: "
                          "it goes on from there")
    finally:
        cache.unlock()
    return report


def usable_recordings(recordings: list[Recording], problems: list[Problem]) -> list[Recording]:
    """Drop (and name) recordings whose id cannot name a cache entry and repeats of an id already
    seen: a `..wav` line, one recording listed twice or by two patients must not stop the others."""
    seen: dict[str, Recording] = {}
    for rec in recordings:
        try:
            check_recording_id(rec.recording_id)
        except ValueError as err:
            problems.append(Problem(str(rec.wav), f"{err}; skipped"))
            continue
        if rec.recording_id in seen:
            first = seen[rec.recording_id]
            problems.append(Problem(str(rec.wav), f"recording {rec.recording_id} already listed for patient "
                                                  f"{first.patient_id}; this entry (patient {rec.patient_id}) skipped"))
            continue
        seen[rec.recording_id] = rec
    return list(seen.values())


def _run(encoder, todo, cache, segments, batch_size, flush_every, workers, progress, report, frames=None,
         source=None) -> None:
    batcher = WindowBatcher(encoder, batch_size, source)
    writer = ShardWriter(cache, report, flush_every, progress_bar(encoder, len(todo), progress))

    def complete(done: list[Prepared]) -> None:
        report.windows = batcher.windows
        for prep in done:
            writer.add(*outcome(prep, (source, frames) if frames else None))

    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures: deque[Future] = deque()
            lookahead = max(4, 2 * workers)
            it = iter(todo)
            for rec in it:
                futures.append(pool.submit(prepare, rec, encoder.sample_rate, segments))
                if len(futures) >= lookahead:
                    break
            while futures:
                prep = futures.popleft().result()
                nxt = next(it, None)
                if nxt is not None:
                    futures.append(pool.submit(prepare, nxt, encoder.sample_rate, segments))
                complete(batcher.add(prep))
            complete(batcher.finish())
    finally:
        writer.close()
