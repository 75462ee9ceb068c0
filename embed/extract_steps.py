"""The steps of an extract run that every backend shares (local threads, `ray_backend`): decode,
resample and plan a recording's windows (`prepare`), feed windows from several recordings through
the encoder in fixed-size batches (`WindowBatcher`), turn a finished recording into a cache entry
(`outcome`) and write entries in shards (`ShardWriter`) into the run's `ExtractReport`.
"""
from __future__ import annotations

import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .audio import AudioError, open_resampled
from .cache import CachedFrames, CachedRecording, DiskFullError, EmbeddingCache
from .datasets.base import Recording
from .encoders import Encoder
from .encoders.transfer import Ready
from .frames import FrameConfig, FrameSource, frames_record
from .problems import Problem
from .segments import SegmentConfig, plan_segments


@dataclass
class Prepared:
    """One recording made ready for the encoder: its windows (or why it has none) and, once
    every window went through the encoder, its embeddings."""
    recording: Recording
    windows: np.ndarray | None
    plan: object = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    embeddings: np.ndarray | None = None
    n_samples: int = 0  # the recording's length at the encoder's rate


@dataclass
class ExtractReport:
    cache_path: Path
    done: int = 0
    skipped: int = 0
    windows: int = 0
    seconds: float = 0.0
    problems: list[Problem] = field(default_factory=list)
    stopped: str | None = None  # why the run could not go on (disk full); what it finished is kept

    def summary(self) -> str:
        rate = self.windows / self.seconds if self.seconds else 0.0
        line = (f"{self.done} recordings embedded ({self.windows} windows, {self.seconds:.1f} s, "
                f"{rate:.1f} windows/s), {self.skipped} already cached, "
                f"{sum(p.severity == 'error' for p in self.problems)} failed, "
                f"{sum(p.severity == 'warning' for p in self.problems)} warnings -> {self.cache_path}")
        return line + (f"\nstopped: {self.stopped}" if self.stopped else "")

    def raise_if_stopped(self) -> None:
        """For callers that need every recording: a run that could not go on (its cache's disk
        is full) raises, named as such, instead of passing on the part it finished."""
        if self.stopped:
            raise DiskFullError(self.cache_path.parent, 0, detail=self.stopped)


def s1_onsets(recording: Recording, sample_rate: int, notes: list[str]) -> np.ndarray | None:
    """S1 onsets (samples) from the recording's segmentation, for windows aligned to heart cycles;
    None (fixed windows, with a note) where it has none or it cannot be read."""
    if getattr(recording, "segmentation_file", None) is None:
        notes.append("no .tsv segmentation: fixed windows instead of windows at S1 onsets")
        return None
    found: list[Problem] = []
    try:
        rows = recording.segmentation(found)
        notes.extend(f"{p.path}: {p.message}" for p in found)
    except (OSError, ValueError) as err:
        notes.append(f"{err}: fixed windows instead of windows at S1 onsets")
        return None
    return np.round(rows[rows[:, 2] == 1, 0] * sample_rate).astype(np.int64)


def prepare(recording: Recording, sample_rate: int, segments: SegmentConfig) -> Prepared:
    """Decode, resample and plan the windows of one recording (never raises: a bad file comes
    back with `error` set)."""
    try:
        # long recordings come back streamed: windows are read and resampled when batched
        audio = open_resampled(recording.wav, sample_rate, expected_rate=recording.expected_rate)
        notes = audio.notes  # the audio may add notes of its own as windows are read
        onsets = s1_onsets(recording, sample_rate, notes) if segments.align == "cycles" else None
        plan = plan_segments(audio.n_samples, sample_rate, segments, onsets)
        window = int(round(segments.window_s * sample_rate))
        return Prepared(recording, audio.windows(plan.starts, window), plan, notes,
                        n_samples=audio.n_samples)
    except AudioError as err:
        return Prepared(recording, None, error=err.problem)
    except Exception as err:  # one bad file must never end a run over thousands
        return Prepared(recording, None, error=f"{type(err).__name__}: {err}")


# batches launched on the device before the oldest one's embeddings are read back: on CUDA the host
# stacks (and pins) the next batch while the device computes; on a CPU each is done when launched
BATCHES_IN_FLIGHT = 2


class WindowBatcher:
    """Feeds the windows of prepared recordings to the encoder, several recordings to a batch,
    and hands each recording back once all its windows are embedded (or it failed).

    Every batch has exactly `batch_size` rows (the last one is zero-padded): some encoders'
    kernels round differently at other batch sizes, and with one batch shape a window's
    embedding depends on the window alone, so resumed runs and the Ray backend's per-actor
    batches equal one uninterrupted local run bit for bit. Up to `BATCHES_IN_FLIGHT` batches are
    launched before the first one's result is read (`Encoder.embed_async`); the order of results
    and of finished recordings is the same as one batch at a time.
    """

    def __init__(self, encoder: Encoder, batch_size: int, frames: FrameSource | None = None) -> None:
        self.encoder, self.batch_size = encoder, max(1, int(batch_size))
        # what each window becomes: its clip embedding, or its frames (read back at once)
        self.launch = (lambda batch: Ready(frames(batch))) if frames is not None else encoder.embed_async
        self.windows = 0  # windows embedded
        self._queue: list[tuple[Prepared, int]] = []  # (prepared, row) windows not yet embedded
        self._pending: deque[tuple[Prepared, int]] = deque()  # (prepared, windows queued up to its last)
        self._in_flight: deque[tuple[list[tuple[Prepared, int]], object]] = deque()  # (items, its HostCopy)
        self._queued = 0
        self._consumed = 0  # windows taken off the queue (embedded or failed), in queue order
        self._outputs: dict[str, np.ndarray] = {}

    def add(self, prep: Prepared) -> list[Prepared]:
        """Queue a recording; returns the recordings completed so far, in order."""
        if prep.windows is not None:
            self._queue.extend((prep, row) for row in range(len(prep.windows)))
            self._queued += len(prep.windows)
        self._pending.append((prep, self._queued))
        return self._drain(force=False)

    def finish(self) -> list[Prepared]:
        """Embed what is left (a last, padded batch) and return the remaining recordings."""
        return self._drain(force=True)

    def _drain(self, force: bool) -> list[Prepared]:
        while len(self._queue) >= self.batch_size or (force and self._queue):
            items, self._queue = self._queue[:self.batch_size], self._queue[self.batch_size:]
            self._submit(items)
        while force and self._in_flight:
            self._collect(*self._in_flight.popleft())
        done = []
        # a recording is complete once every window queued up to its last one is consumed
        while self._pending and self._pending[0][1] <= self._consumed:
            prep, _ = self._pending.popleft()
            embeddings = self._outputs.pop(prep.recording.recording_id, None)
            if prep.error is None:
                prep.embeddings = embeddings
            done.append(prep)
        return done

    def _launch(self, items: list[tuple[Prepared, int]]):
        # streamed windows are read here, so a read failure is handled like an encoder one
        batch = np.stack([prep.windows[row] for prep, row in items])
        if len(batch) < self.batch_size:
            batch = np.concatenate([batch, np.zeros((self.batch_size - len(batch), batch.shape[1]), batch.dtype)])
        return self.launch(batch)

    def _submit(self, items: list[tuple[Prepared, int]]) -> None:
        """Launch a batch; with `BATCHES_IN_FLIGHT` launched, read back the oldest."""
        try:
            pending = self._launch(items)
        except Exception as err:  # noqa: BLE001
            while self._in_flight:  # results are consumed in queue order
                self._collect(*self._in_flight.popleft())
            self._retry(items, err)
            return
        self._in_flight.append((items, pending))
        if len(self._in_flight) >= BATCHES_IN_FLIGHT:
            self._collect(*self._in_flight.popleft())

    def _collect(self, items: list[tuple[Prepared, int]], pending) -> None:
        try:
            embs = pending.result()[:len(items)]
        except Exception as err:  # noqa: BLE001 - e.g. a device error surfacing at the copy back
            self._retry(items, err)
            return
        self._store(items, embs)

    def _retry(self, items: list[tuple[Prepared, int]], err: Exception) -> None:
        """A batch failure should blame only its recordings: rerun them one by one, at once."""
        if len(items) == 1:
            prep = items[0][0]
            prep.error = f"encoder failed: {type(err).__name__}: {err}"
            self._consumed += 1
            return
        for item in items:
            try:
                embs = self._launch([item]).result()[:1]
            except Exception as one:  # noqa: BLE001
                self._retry([item], one)
                continue
            self._store([item], embs)

    def _store(self, items: list[tuple[Prepared, int]], embs: np.ndarray) -> None:
        for (prep, row), emb in zip(items, embs):
            rid = prep.recording.recording_id
            if not np.isfinite(emb).all():  # e.g. NaN weights: never cache what would train on noise
                prep.error = (f"encoder output has NaN/inf (window {row}); not cached. Check the checkpoint "
                              f"({self.encoder.checkpoint or 'built-in weights'}) and --precision")
                continue
            if rid not in self._outputs:
                self._outputs[rid] = np.zeros((len(prep.windows), *emb.shape), np.float32)
            self._outputs[rid][row] = emb
        self.windows += len(items)
        self._consumed += len(items)


def outcome(prep: Prepared, frames: tuple[FrameSource, FrameConfig] | None = None
            ) -> tuple[CachedRecording | CachedFrames | None, list[Problem]]:
    """A completed recording as a cache entry (None when it failed) and its problems-table rows;
    with `frames` (where they come from, the frame options) its windows' frames joined into one sequence."""
    problems = [Problem(str(prep.recording.wav), note, "warning") for note in prep.notes]
    rid, plan = prep.recording.recording_id, prep.plan
    if prep.error is None and frames is not None:
        try:
            return frames_record(rid, frames[0], prep.embeddings, plan.starts, prep.n_samples, frames[1]), problems
        except ValueError as err:
            prep.error = str(err)
    if prep.error is not None:
        return None, problems + [Problem(str(prep.recording.wav), prep.error)]
    return CachedRecording(rid, prep.embeddings, plan.starts, plan.train_index, plan.eval_index), problems


class ShardWriter:
    """Collects finished recordings into the report and the cache, a shard every `flush_every`."""

    def __init__(self, cache: EmbeddingCache, report: ExtractReport, flush_every: int, bar: tqdm) -> None:
        self.cache, self.report, self.flush_every, self.bar = cache, report, flush_every, bar
        self.finished: list[CachedRecording] = []
        self.start = time.perf_counter()

    def add(self, cached: CachedRecording | None, problems: list[Problem]) -> None:
        self.report.problems.extend(problems)
        if cached is not None:
            self.finished.append(cached)
            self.report.done += 1
        self.bar.update(1)
        elapsed = time.perf_counter() - self.start
        self.bar.set_postfix_str(f"{self.report.windows / max(elapsed, 1e-9):.1f} seg/s", refresh=False)
        if len(self.finished) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if self.finished:
            self.cache.write_shard(self.finished)
            self.finished = []

    def close(self) -> None:
        """Whatever finished is kept, even when interrupted."""
        try:
            self.flush()
        except DiskFullError:
            self.report.done -= len(self.finished)  # counted as embedded, but could not be kept
            raise
        finally:
            self.bar.close()
            self.report.seconds = time.perf_counter() - self.start


def progress_bar(encoder: Encoder, total: int, progress: bool) -> tqdm:
    return tqdm(total=total, unit="rec", desc=f"extract {encoder.name}", disable=not progress,
                file=sys.stderr, dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 10.0)
