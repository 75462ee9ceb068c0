"""`pipeline.py segment`: train the phase segmenter on each split's train+val groups, score its
frame accuracy against the `.tsv` on the split's test groups, and write its intervals.

Frame accuracy counts the frames of the cache (their centre times) that the `.tsv` labels 1-4;
unannotated (label 0) spans are left out. Intervals go to `OUT/intervals/SPLIT/RID.tsv`: for
the test recordings, or with `every_recording` for every recording of the cache (train ones then
come from a segmenter that saw their `.tsv`), so phase features can be made from the segmenter's
intervals instead of the `.tsv` (`classify.features.phases.folder_intervals`).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from tqdm import tqdm

from embed.cache import FrameCache
from embed.problems import Problem

from classify.jobs.outputs import write_csv_atomic
from classify.features.phases import PHASES, frame_labels, tsv_intervals
from classify.estimators.segmenter import PhaseSegmenter, write_intervals


def score_frames(true: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Accuracy, chance and per-phase recall over the frames the truth labels 1-4."""
    keep = true > 0
    true, predicted = true[keep], predicted[keep]
    row = {"frame_accuracy": float(np.mean(true == predicted)) if len(true) else float("nan"),
           "n_frames": int(len(true)),
           # chance: the accuracy of always calling the most common phase
           "most_common_phase_share": float(np.bincount(true).max() / len(true)) if len(true) else float("nan")}
    for label, phase in enumerate(PHASES, start=1):
        mask = true == label
        row[f"recall_{phase}"] = float(np.mean(predicted[mask] == label)) if mask.any() else float("nan")
    return row


def run_segmenter(recordings, groups_of: dict[str, str], splits: dict[str, dict[str, str]], cache: FrameCache,
                  out: str | Path, every_recording: bool = False, seed: int = 0, heart_rate: float = 0.8,
                  progress: bool = True) -> pd.DataFrame:
    """One row per split: frame accuracy with and without the duration model, per-phase recall."""
    out = Path(out)
    problems: list[Problem] = []
    intervals = tsv_intervals(recordings, problems)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    if not intervals:
        raise ValueError("no recording has a .tsv segmentation to train and score the segmenter on")
    frames = cache.read()
    rows = []
    for name, split in splits.items():
        fit_ids = [r for r in intervals if r in frames and split.get(groups_of[r]) in ("train", "val")]
        test_ids = [r for r in intervals if r in frames and split.get(groups_of[r]) == "test"]
        start = time.perf_counter()
        segmenter = PhaseSegmenter(heart_rate=heart_rate, seed=seed).fit([frames[r].embeddings for r in fit_ids],
                                                  [frames[r].times for r in fit_ids], [intervals[r] for r in fit_ids])
        fit_s = time.perf_counter() - start
        folder = out / "intervals" / name
        folder.mkdir(parents=True, exist_ok=True)
        true, with_durations, without = [], [], []
        targets = list(frames) if every_recording else test_ids
        test = set(test_ids)
        for rid in tqdm(targets, desc=f"segment {name}", unit="rec", disable=not progress, file=sys.stderr,
                        mininterval=0.5 if sys.stderr.isatty() else 10.0):
            rec = frames[rid]
            predicted = segmenter.predict(rec.embeddings, rec.times)
            write_intervals(predicted, folder / f"{rid}.tsv")
            if rid in test:
                true.append(frame_labels(rec.times, intervals[rid]))
                with_durations.append(frame_labels(rec.times, predicted))
                without.append(frame_labels(rec.times, segmenter.predict(rec.embeddings, rec.times, False)))
        truth = np.concatenate(true) if true else np.zeros(0, np.int64)
        row = {"split": name, "n_train_recordings": len(fit_ids), "n_test_recordings": len(test_ids),
               **score_frames(truth, np.concatenate(with_durations) if true else truth),
               "frame_accuracy_without_duration_model":
                   score_frames(truth, np.concatenate(without) if true else truth)["frame_accuracy"],
               "fit_seconds": round(fit_s, 1)}
        rows.append(row)
        write_csv_atomic(pd.DataFrame(rows), out / "segment-scores.csv", index=False)  # each split kept as it ends
        print(f"{name}: frame accuracy {row['frame_accuracy']:.3f} (without the duration model "
              f"{row['frame_accuracy_without_duration_model']:.3f}) on {len(test_ids)} test recordings",
              file=sys.stderr)
    return pd.DataFrame(rows)


def segment_job(dataset_name: str, data: str | Path, encoder: str, cache_dir: str | Path, out: str | Path, *,
                splits: str | None = None, seed: int = 0, every_recording: bool = False, heart_rate: float = 0.8,
                say: Callable[[str], None] = print) -> None:
    """`pipeline.py segment`: the dataset's recordings, `splits` and `encoder`'s frame cache ->
    `run_segmenter` into `out`; the table and what was written go to `say`."""
    from embed.datasets import load_dataset

    from classify.features.caches import find_cache
    from classify.jobs.outputs import OutputFolder
    from classify.jobs.probe import load_splits
    with OutputFolder(out):
        dataset = load_dataset(dataset_name, data)
        split_sets = load_splits(dataset, splits or dataset.split_schemes[0], seed)
        cache = find_cache(cache_dir, encoder, "frames")
        recordings = dataset.recordings()
        table = run_segmenter(recordings, {r.recording_id: r.group_id for r in recordings}, split_sets, cache,
                              out, every_recording=every_recording, seed=seed, heart_rate=heart_rate)
    say(table.to_string(index=False))
    say(f"\nwrote {Path(out) / 'segment-scores.csv'} and {Path(out) / 'intervals'}/SPLIT/RID.tsv")
