"""Fitted segmenters and the intervals they decoded, kept on disk in the cache folder.

A recipe's segmenters (the cross-fit's three per training set, one per split for the test
recordings) take minutes to fit and decode, and every run of the same split fits the same ones
again. An entry is keyed by everything its segmenter depends on: the frame cache's key, the
segmenter's parameters, its training recordings in order and their intervals. So a rerun, an
ablation or the other split scheme's overlapping fits read the entry instead of refitting; a
changed `.tsv` or frame cache gives a new key. Entries are `.npz` files of plain arrays read
without pickle (loading one never executes code); an unreadable one is reported and recomputed.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np

_STATE = "state/"


def segmenter_key(frames_key: str, params: dict, recording_ids: list[str],
                  intervals: list[np.ndarray]) -> str:
    """The entry name of a segmenter fit on these recordings' frames (`frames_key`: the frame cache)
    and intervals with these parameters."""
    digest = hashlib.sha256(json.dumps([frames_key, params, list(recording_ids)], sort_keys=True,
                                       default=str).encode())
    for iv in intervals:
        digest.update(np.ascontiguousarray(iv, dtype=np.float64).tobytes())
        digest.update(b"|")
    return digest.hexdigest()[:32]


class SegmenterStore:
    """`folder/KEY.npz`: one fitted segmenter's state and the intervals it decoded so far."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.npz"

    def load(self, key: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None:
        """(segmenter state, {recording id: intervals}) or None when there is no readable entry."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                state = {k[len(_STATE):]: z[k] for k in z.files if k.startswith(_STATE)}
                ids, offsets, rows = z["ids"], z["offsets"], z["intervals"]
            if len(offsets) != len(ids) + 1 or rows.ndim != 2 or rows.shape[1] != 3 or offsets[-1] != len(rows):
                raise ValueError("its interval table is inconsistent")
            if not state:
                raise ValueError("it holds no segmenter state")
        except Exception as err:  # a truncated or foreign file: recompute, keep the run going
            warnings.warn(f"{path}: unreadable segmenter entry ({err}); fitting the segmenter again")
            return None
        decoded = {str(r): rows[offsets[i]:offsets[i + 1]] for i, r in enumerate(ids)}
        return state, decoded

    def save(self, key: str, state: dict[str, np.ndarray], decoded: dict[str, np.ndarray]) -> None:
        """Write the entry whole (a temporary file renamed over it: a reader never sees half of one).
        The store only saves time, so a failed write (a full disk, a read-only cache) is reported and
        the run goes on."""
        ids = list(decoded)
        rows = [np.asarray(decoded[r], dtype=np.float64).reshape(-1, 3) for r in ids]
        offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
        arrays = {f"{_STATE}{k}": np.asarray(v) for k, v in state.items()}
        arrays.update(ids=np.asarray(ids, dtype=str), offsets=offsets,
                      intervals=np.concatenate(rows) if rows else np.zeros((0, 3)))
        path = self.path(key)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # one writer per process: its own name
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
            os.replace(tmp, path)
        except OSError as err:
            warnings.warn(f"{path}: could not keep the segmenter entry ({err}); the run goes on without it")
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
