"""Fitted segmenters and the intervals they decoded, kept on disk in the cache folder.

A recipe's segmenters (the cross-fit's three per training set, one per split for the test
recordings) take minutes to fit and decode, and every run of the same split fits the same ones
again. An entry is keyed by everything its segmenter depends on: the frame cache's key, the
segmenter's parameters, its training recordings in order and their intervals. So a rerun, an
ablation or the other split scheme's overlapping fits read the entry instead of refitting; a
changed `.tsv` or frame cache gives a new key. Entries are `.npz` files of plain arrays read
without pickle (loading one never executes code).

An entry is trusted only as far as it proves itself: it holds the inputs of its key, compared with
the caller's (an entry copied or swapped under another key is not read); a digest over all its
arrays (a file edited or cut short is not read); and, per decoded recording, a fingerprint of the
frames it was decoded from (intervals decoded from frames that have since changed are decoded
again). An entry that fails is dropped with a warning and recomputed. Temporary files left by a
writer that was killed are removed when the store is next opened.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embed.atomic import atomic_path

_STATE = "state/"
_TMP = re.compile(r"^\..+\.npz\.(\d+)\.tmp$")  # `.KEY.npz.PID.tmp`, one writer per process


def key_inputs(frames_key: str, params: dict, recording_ids: list[str], intervals: list[np.ndarray]) -> dict:
    """Everything a segmenter fit depends on, as plain JSON (the intervals as their digest)."""
    digest = hashlib.sha256()
    for iv in intervals:
        digest.update(np.ascontiguousarray(iv, dtype=np.float64).tobytes())
        digest.update(b"|")
    return json.loads(json.dumps({"frames_key": frames_key, "params": params, "recording_ids": list(recording_ids),
                                  "intervals_sha256": digest.hexdigest()}, sort_keys=True, default=str))


def inputs_key(inputs: dict) -> str:
    """The entry name of a segmenter fit from these `key_inputs`."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:32]


def frames_fingerprint(embeddings: np.ndarray, times: np.ndarray) -> str:
    """A short digest of one recording's frames and their times."""
    digest = hashlib.blake2b(digest_size=16)
    for array in (embeddings, times):
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


@dataclass
class Entry:
    """A fitted segmenter's state, the intervals it decoded, and the frames each was decoded from."""
    state: dict[str, np.ndarray]
    decoded: dict[str, np.ndarray]
    fingerprints: dict[str, str]


def _digest(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


class SegmenterStore:
    """`folder/KEY.npz`: one fitted segmenter's state and the intervals it decoded so far."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._remove_orphans()

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.npz"

    def _remove_orphans(self) -> None:
        """Temporary files whose writing process is gone (killed mid-write) never become entries."""
        if not self.folder.is_dir():
            return
        for tmp in self.folder.glob(".*.tmp"):
            match = _TMP.match(tmp.name)
            if match and not _alive(int(match[1])):
                with contextlib.suppress(OSError):
                    tmp.unlink()

    def drop(self, path: Path, why: str) -> None:
        warnings.warn(f"{path}: {why}; the entry is dropped and the segmenter fitted again")
        with contextlib.suppress(OSError):
            path.unlink()

    def load(self, inputs: dict) -> Entry | None:
        """The entry of `inputs` (`key_inputs`), or None when there is none that proves to be it:
        one that is unreadable, edited or made from other inputs is dropped with a warning."""
        path = self.path(inputs_key(inputs))
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            check = str(arrays.pop("check"))
            stored_inputs = json.loads(str(arrays["inputs"]))
            state = {k[len(_STATE):]: v for k, v in arrays.items() if k.startswith(_STATE)}
            ids, offsets, rows, prints = arrays["ids"], arrays["offsets"], arrays["intervals"], arrays["fingerprints"]
            if len(offsets) != len(ids) + 1 or len(prints) != len(ids) or rows.ndim != 2 or rows.shape[1] != 3 \
                    or offsets[-1] != len(rows) or np.any(np.diff(offsets) < 0):
                raise ValueError("its interval table is inconsistent")
            if not state:
                raise ValueError("it holds no segmenter state")
        except Exception as err:  # a truncated, foreign or older file: recompute, keep the run going
            self.drop(path, f"unreadable segmenter entry ({err})")
            return None
        if check != _digest(arrays):
            self.drop(path, "the segmenter entry's arrays do not match its digest (edited or damaged)")
            return None
        if stored_inputs != inputs:
            self.drop(path, "the segmenter entry was made from other inputs than its key's (another frame "
                             "cache, parameters, recordings or intervals)")
            return None
        decoded = {str(r): rows[offsets[i]:offsets[i + 1]] for i, r in enumerate(ids)}
        return Entry(state, decoded, {str(r): str(p) for r, p in zip(ids, prints)})

    def save(self, inputs: dict, state: dict[str, np.ndarray], decoded: dict[str, np.ndarray],
             fingerprints: dict[str, str]) -> None:
        """Write the entry whole (a temporary file renamed over it: a reader never sees half of one).
        The store only saves time, so a failed write (a full disk, a read-only cache) is reported and
        the run goes on."""
        ids = list(decoded)
        rows = [np.asarray(decoded[r], dtype=np.float64).reshape(-1, 3) for r in ids]
        offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
        arrays = {f"{_STATE}{k}": np.asarray(v) for k, v in state.items()}
        arrays.update(ids=np.asarray(ids, dtype=str), offsets=offsets,
                      intervals=np.concatenate(rows) if rows else np.zeros((0, 3)),
                      fingerprints=np.asarray([fingerprints[r] for r in ids], dtype=str),
                      inputs=np.asarray(json.dumps(inputs, sort_keys=True)))
        arrays["check"] = np.asarray(_digest(arrays))
        path = self.path(inputs_key(inputs))
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
        except OSError as err:
            warnings.warn(f"{path}: could not keep the segmenter entry ({err}); the run goes on without it")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True
