"""The `extract` command's job: every named encoder over a dataset's recordings into the cache,
one problems table at the end, and an exit code that says whether anything failed."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from .datasets import load_dataset
from .datasets.splits import train_in_every_split
from .extract import extract, fit_normalisation
from .frames import FrameConfig
from .problems import format_table, problem_rows, write_problems_csv
from .segments import SegmentConfig


def run_extract(dataset_name: str, data: str | Path, encoder_names: list[str], make_encoder: Callable,
                cache: str | Path, segments: SegmentConfig, frames: FrameConfig | None = None, *,
                normalisation_splits: str | None = None, batch_size: int | None = None, flush_every: int = 64,
                workers: int = 2, lock_timeout_s: float = 0.0, backend: str = "local", ray=None,
                strict: bool = False) -> int:
    """Extract each encoder (`make_encoder(name)`) over the dataset; prints a summary per encoder and
    the problems table (also written as `cache/extract-problems.csv`). Returns 1 when an encoder
    embedded nothing or the disk filled up, or (`strict`) when anything had a problem; else 0.
    `normalisation_splits`: fit the encoder's input statistics on the patients in train of every
    split of that scheme first (BYOL-A's `--fit-normalisation paper`)."""
    dataset = load_dataset(dataset_name, data)
    recordings = dataset.recordings()
    if frames and segments.align != "fixed":
        raise ValueError("--frames keeps every frame of a recording; --windows cycles does not apply to it")
    if normalisation_splits:
        train = set(train_in_every_split(dataset.splits(normalisation_splits)))
        train_recordings = [r for r in recordings if r.group_id in train]
    rows, failed = [], []
    for name in encoder_names:
        encoder = make_encoder(name)
        if normalisation_splits:
            fitted = fit_normalisation(encoder, train_recordings)
            print(f"{name}: input statistics fit on the {len(train)} patients in train of every "
                  f"{normalisation_splits} split: mean {fitted[0]:.4f}, std {fitted[1]:.4f}")
        layers = ("" if encoder.last_only
                  else f" (layers {','.join(map(str, encoder.layers))} of 0..{encoder.n_layers - 1})")
        print(f"{name}: {encoder.embedding_size}-d{layers}, {encoder.sample_rate} Hz, {encoder.precision} on "
              f"{encoder.device}; {len(recordings)} recordings")
        report = extract(encoder, recordings, cache, segments, batch_size, flush_every=flush_every, workers=workers,
                         lock_timeout_s=lock_timeout_s, backend=backend, ray=ray, frames=frames)
        print(report.summary())
        rows += problem_rows(report.problems, name)
        if report.stopped:
            failed.append(f"{name}: stopped early, disk full")
            break
        if report.done == 0 and report.skipped == 0:
            failed.append(f"{name}: no recording could be embedded")
    rows = problem_rows(dataset.problems, "dataset") + rows
    if rows:  # the summary table, last, and as CSV next to the cache
        print("\n" + format_table(rows), file=sys.stderr)
        try:
            print(f"problems table: {write_problems_csv(rows, Path(cache) / 'extract-problems.csv')}", file=sys.stderr)
        except OSError as err:  # e.g. the disk that just filled up; the table above says it all
            print(f"problems table not written ({err.strerror or err})", file=sys.stderr)
    if failed:
        print(f"error: {'; '.join(failed)} (see above)", file=sys.stderr)
    return 1 if failed or (strict and rows) else 0
