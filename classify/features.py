"""Cached embeddings + CirCor labels -> arrays a probe can learn from."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embed.cache import CachedRecording, EmbeddingCache, check_cache_dir, list_caches, read_config
from embed.circor import CirCor


def find_cache(cache_dir: str | Path, spec: str) -> EmbeddingCache:
    """`spec` is an encoder name, or NAME@KEY when several caches exist for that encoder."""
    name, _, key = spec.partition("@")
    check_cache_dir(cache_dir, create=False)
    paths = [p for p in list_caches(cache_dir, name) if not key or p.stem.endswith(key)]
    if not paths:
        raise FileNotFoundError(f"no embedding cache for {spec!r} in {cache_dir}; run "
                                f"`python pipeline.py extract --encoder {name}` first")
    if len(paths) > 1:
        listing = "\n  ".join(f"{name}@{p.stem.split('-')[-1]}: {_config_line(p)}" for p in paths)
        raise ValueError(f"several caches for {name!r} in {cache_dir}; pick one as NAME@KEY:\n  {listing}")
    return EmbeddingCache(cache_dir, name, read_config(paths[0]))


def _config_line(path: Path) -> str:
    config = read_config(path)
    return ", ".join(f"{k}={v}" for k, v in config.items() if k not in ("encoder", "segments"))


@dataclass
class SegmentSet:
    """Segments of a set of patients, with the recording and patient each came from."""
    X: np.ndarray
    y: np.ndarray  # patient murmur label per segment (0 Present, 1 Unknown, 2 Absent)
    recording_ids: np.ndarray
    patient_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


def segment_set(circor: CirCor, embeddings: dict[str, CachedRecording], patient_ids: list[str],
                which: str, labels: dict[str, int] | None = None) -> SegmentSet:
    """Stack the `which` ("train" | "eval") windows of every cached recording of these patients.

    `labels` optionally overrides the target per recording (e.g. murmur-location targets).
    """
    xs, ys, recs, pats = [], [], [], []
    for pid in patient_ids:
        patient = circor.patients[pid]
        for rec in patient.recordings:
            cached = embeddings.get(rec.recording_id)
            if cached is None:
                continue
            x = cached.train() if which == "train" else cached.eval()
            label = labels.get(rec.recording_id, patient.label) if labels else patient.label
            xs.append(x)
            ys.append(np.full(len(x), label))
            recs.append(np.full(len(x), rec.recording_id, dtype=object))
            pats.append(np.full(len(x), pid, dtype=object))
    if not xs:
        raise ValueError("no cached embeddings for these patients")
    return SegmentSet(np.concatenate(xs).astype(np.float32), np.concatenate(ys),
                      np.concatenate(recs), np.concatenate(pats))
