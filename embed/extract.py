"""Run an encoder over every recording's windows and fill the cache.

Decoding and resampling run in a thread pool ahead of the encoder, windows from several
recordings share a batch, and finished recordings are flushed to the cache in shards, so a
bad recording or an interruption loses nothing already computed.
"""
from __future__ import annotations

import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .audio import AudioError, open_resampled
from .cache import CachedRecording, DiskFullError, EmbeddingCache, check_recording_id
from .circor import Problem, Recording
from .encoders import Encoder
from .encoders.checkpoint import file_sha256
from .segments import SegmentConfig, plan_segments


def cache_config(encoder: Encoder, segments: SegmentConfig) -> dict:
    """Everything that changes the embeddings; the cache key is its hash."""
    return {
        **encoder.describe(),
        "checkpoint_sha256": file_sha256(encoder.checkpoint) if encoder.checkpoint else None,
        "segments": segments.as_dict(),
    }


def open_cache(encoder: Encoder, segments: SegmentConfig, cache_dir: str | Path) -> EmbeddingCache:
    return EmbeddingCache(cache_dir, encoder.name, cache_config(encoder, segments))


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


@dataclass
class _Prepared:
    recording: Recording
    windows: np.ndarray | None
    plan: object = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None


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


def _prepare(recording: Recording, encoder: Encoder, segments: SegmentConfig) -> _Prepared:
    try:
        # long recordings come back streamed: windows are read and resampled when batched
        audio = open_resampled(recording.wav, encoder.sample_rate)
        plan = plan_segments(audio.n_samples, encoder.sample_rate, segments)
        window = int(round(segments.window_s * encoder.sample_rate))
        return _Prepared(recording, audio.windows(plan.starts, window), plan, audio.notes)
    except AudioError as err:
        return _Prepared(recording, None, error=err.problem)
    except Exception as err:  # one bad file must never end a run over thousands
        return _Prepared(recording, None, error=f"{type(err).__name__}: {err}")


def extract(
    encoder: Encoder,
    recordings: list[Recording],
    cache_dir: str | Path,
    segments: SegmentConfig = SegmentConfig(),
    batch_size: int = 32,
    flush_every: int = 64,
    workers: int = 2,
    lock_timeout_s: float = 0.0,
    progress: bool = True,
) -> ExtractReport:
    cache = open_cache(encoder, segments, cache_dir)
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
            _run(encoder, todo, cache, segments, batch_size, flush_every, workers, progress, report)
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


def _run(encoder, todo, cache, segments, batch_size, flush_every, workers, progress, report) -> None:
    finished: list[CachedRecording] = []
    pending: deque = deque()  # (prepared, filled rows) awaiting embeddings
    queue: list[tuple[_Prepared, int]] = []  # (prepared, row) windows not yet embedded
    outputs: dict[str, np.ndarray] = {}
    consumed = 0  # windows taken off the queue (embedded or failed), in queue order
    start = time.perf_counter()
    bar = tqdm(total=len(todo), unit="rec", desc=f"extract {encoder.name}", disable=not progress,
               file=sys.stderr, dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 10.0)

    def run_batch(items: list[tuple[_Prepared, int]]) -> None:
        try:  # streamed windows are read here, so a read failure is handled like an encoder one
            batch = np.stack([prep.windows[row] for prep, row in items])
            embs = encoder.embed(batch)
        except Exception as err:
            # a batch failure should blame only its recordings: retry them one by one
            if len(items) == 1:
                prep = items[0][0]
                prep.error = f"encoder failed: {type(err).__name__}: {err}"
                return
            for item in items:
                run_batch([item])
            return
        for (prep, row), emb in zip(items, embs):
            rid = prep.recording.recording_id
            if not np.isfinite(emb).all():  # e.g. NaN weights: never cache what would train on noise
                prep.error = (f"encoder output has NaN/inf (window {row}); not cached. Check the checkpoint "
                              f"({encoder.checkpoint or 'built-in weights'}) and --precision")
                continue
            if rid not in outputs:
                outputs[rid] = np.zeros((len(prep.windows), len(emb)), np.float32)
            outputs[rid][row] = emb
        report.windows += len(items)

    def drain(force: bool) -> None:
        nonlocal consumed
        while len(queue) >= batch_size or (force and queue):
            items, queue[:] = queue[:batch_size], queue[batch_size:]
            run_batch(items)
            consumed += len(items)
        # a recording is complete once every window queued up to its last one is consumed
        while pending and pending[0][1] <= consumed:
            prep, _ = pending.popleft()
            complete(prep)

    def complete(prep: _Prepared) -> None:
        rid = prep.recording.recording_id
        for note in prep.notes:
            report.problems.append(Problem(str(prep.recording.wav), note, "warning"))
        if prep.error is not None:
            report.problems.append(Problem(str(prep.recording.wav), prep.error))
            outputs.pop(rid, None)
        else:
            plan = prep.plan
            finished.append(CachedRecording(rid, outputs.pop(rid), plan.starts, plan.train_index,
                                            plan.eval_index))
            report.done += 1
        bar.update(1)
        elapsed = time.perf_counter() - start
        bar.set_postfix_str(f"{report.windows / max(elapsed, 1e-9):.1f} seg/s", refresh=False)
        if len(finished) >= flush_every:
            cache.write_shard(finished)
            finished.clear()

    queued_total = 0
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures: deque[Future] = deque()
            lookahead = max(4, 2 * workers)
            it = iter(todo)
            for rec in it:
                futures.append(pool.submit(_prepare, rec, encoder, segments))
                if len(futures) >= lookahead:
                    break
            while futures:
                prep = futures.popleft().result()
                nxt = next(it, None)
                if nxt is not None:
                    futures.append(pool.submit(_prepare, nxt, encoder, segments))
                if prep.windows is None:
                    pending.append((prep, queued_total))
                else:
                    queue.extend((prep, row) for row in range(len(prep.windows)))
                    queued_total += len(prep.windows)
                    pending.append((prep, queued_total))
                drain(force=False)
            drain(force=True)
    finally:
        bar.close()
        report.seconds = time.perf_counter() - start
        if finished:  # whatever finished is kept even when interrupted
            try:
                cache.write_shard(finished)
            except DiskFullError:
                report.done -= len(finished)  # counted as embedded, but could not be kept
                raise
