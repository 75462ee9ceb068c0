"""Cached embeddings + a task's labels -> arrays a probe can learn from."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from embed.cache import CachedRecording, EmbeddingCache, FrameCache, check_cache_dir, list_caches, read_config

from classify.task import Task

Windows = Literal["train", "eval"]


def find_cache(cache_dir: str | Path, spec: str, kind: Literal["", "frames"] = "") -> EmbeddingCache:
    """`spec` is an encoder name (`NAME:TARGET` for one that takes a target, e.g. `hear:MODULE`), or
    NAME@KEY when several caches exist for that encoder; `kind` "frames" finds a frame cache
    (`extract --frames`) instead of a window cache."""
    name, _, key = spec.partition("@")
    check_cache_dir(cache_dir, create=False)
    family = name.partition(":")[0]
    paths = [p for p in list_caches(cache_dir, family, kind) if not key or p.stem.endswith(key)]
    if family != name:  # the caches of this target only (the registry imports torch: only then)
        from embed.encoders import cache_name_matches
        paths = [p for p in paths if cache_name_matches(name, read_config(p))]
    if not paths:
        raise FileNotFoundError(f"no {'frame' if kind else 'embedding'} cache for {spec!r} in {cache_dir}; run "
                                f"`python pipeline.py extract --encoder {name}{' --frames' if kind else ''}` first")
    if len(paths) > 1:
        listing = "\n  ".join(f"{name}@{p.stem.split('-')[-1]}: {_config_line(p)}" for p in paths)
        raise ValueError(f"several {'frame ' if kind else ''}caches for {name!r} in {cache_dir}; pick one as "
                         f"NAME@KEY:\n  {listing}")
    return (FrameCache if kind else EmbeddingCache)(cache_dir, family, read_config(paths[0]))


def _config_line(path: Path) -> str:
    config = read_config(path)
    return ", ".join(f"{k}={v}" for k, v in config.items() if k not in ("encoder", "segments"))


@dataclass
class SegmentSet:
    """Segments of a set of groups, with the recording and group each came from."""
    X: np.ndarray
    y: np.ndarray  # class index per segment
    recording_ids: np.ndarray
    patient_ids: np.ndarray  # group ids

    def __len__(self) -> int:
        return len(self.y)


def segment_set(task: Task, embeddings: dict[str, CachedRecording], group_ids: list[str],
                which: Windows) -> SegmentSet:
    """Stack the `which` windows of every cached recording of these groups.

    "train" windows carry the task's training targets (its label scheme), "eval" windows
    their group's label.
    """
    if which not in ("train", "eval"):
        raise ValueError(f"which must be 'train' or 'eval', got {which!r}")
    xs, ys, recs, pats = [], [], [], []
    for gid in group_ids:
        for rid in task.recordings_of.get(gid, []):
            cached = embeddings.get(rid)
            if cached is None:
                continue
            x = cached.train() if which == "train" else cached.eval()
            label = task.targets[rid] if which == "train" else task.group_labels[gid]
            xs.append(x)
            ys.append(np.full(len(x), label))
            recs.append(np.full(len(x), rid, dtype=object))
            pats.append(np.full(len(x), gid, dtype=object))
    if not xs:
        raise ValueError("no cached embeddings for these groups")
    return SegmentSet(np.concatenate(xs).astype(np.float32), np.concatenate(ys),
                      np.concatenate(recs), np.concatenate(pats))
