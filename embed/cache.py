"""HDF5 embedding cache: one file per (encoder, checkpoint hash, preprocessing config) key.

Crash safety: finished recordings are written in small shard files, each made under a
temporary name and renamed into place only when complete (rename is atomic), so a kill at any
moment leaves either a whole shard or none. `consolidate` merges shards into the key's one
`.h5` file the same way. Readers see the main file plus any shards. A lock file keeps two
extract runs off the same key.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

CACHE_FORMAT_VERSION = 1


def cache_key(config: dict) -> str:
    blob = json.dumps({"format": CACHE_FORMAT_VERSION, **config}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class CachedRecording:
    recording_id: str
    embeddings: np.ndarray  # (n_windows, D)
    starts: np.ndarray  # window starts in samples at the encoder rate
    train_index: np.ndarray
    eval_index: np.ndarray

    def train(self) -> np.ndarray:
        return self.embeddings[self.train_index]

    def eval(self) -> np.ndarray:
        return self.embeddings[self.eval_index]


class CacheLockedError(RuntimeError):
    pass


class EmbeddingCache:
    """The cache for one key under `cache_dir`."""

    def __init__(self, cache_dir: str | Path, name: str, config: dict) -> None:
        self.dir = Path(cache_dir)
        self.config = config
        self.key = cache_key(config)
        self.stem = f"{name}-{self.key}"
        self.path = self.dir / f"{self.stem}.h5"
        self.parts_dir = self.dir / f"{self.stem}.parts"
        self._lock_fh = None

    # -- locking --------------------------------------------------------------------------
    def lock(self, timeout_s: float = 0.0) -> None:
        """Take the key's lock; wait up to `timeout_s` seconds, then fail clearly."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fh = open(self.dir / f"{self.stem}.lock", "a+")
        deadline = time.monotonic() + timeout_s
        waiting = False
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    fh.close()
                    raise CacheLockedError(
                        f"{self.path}: another extract run holds this cache (lock {fh.name}); "
                        "wait for it or pass --lock-timeout SECONDS") from None
                if not waiting:  # say once why nothing happens
                    waiting = True
                    fh.seek(0)
                    print(f"waiting up to {timeout_s:g} s for the extract run (pid {fh.read().strip() or '?'}) "
                          f"holding {fh.name}", file=sys.stderr, flush=True)
                time.sleep(0.2)
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._lock_fh = fh

    def unlock(self) -> None:
        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    def __enter__(self) -> "EmbeddingCache":
        return self

    def __exit__(self, *exc) -> None:
        self.unlock()

    # -- reading ----------------------------------------------------------------------------
    def _files(self) -> list[Path]:
        files = [self.path] if self.path.exists() else []
        if self.parts_dir.is_dir():
            files += sorted(self.parts_dir.glob("part-*.h5"))
        return files

    def _check_config(self, fh: h5py.File, path: Path) -> None:
        stored = json.loads(fh.attrs.get("config", "{}"))
        if fh.attrs.get("key") != self.key or stored != json.loads(json.dumps(self.config, default=str)):
            raise RuntimeError(f"{path}: cache entry was made with another configuration; "
                               "refusing to reuse it (delete the file to rebuild)")

    def recording_ids(self) -> set[str]:
        ids: set[str] = set()
        for path in self._files():
            with h5py.File(path, "r") as fh:
                self._check_config(fh, path)
                ids.update(fh["recordings"].keys())
        return ids

    def read(self, recording_ids: list[str] | None = None) -> dict[str, CachedRecording]:
        out: dict[str, CachedRecording] = {}
        wanted = None if recording_ids is None else set(recording_ids)
        for path in self._files():
            with h5py.File(path, "r") as fh:
                self._check_config(fh, path)
                for rid, group in fh["recordings"].items():
                    if wanted is not None and rid not in wanted:
                        continue
                    out[rid] = CachedRecording(rid, group["embeddings"][()], group["starts"][()],
                                               group["train_index"][()], group["eval_index"][()])
        return out

    # -- writing ----------------------------------------------------------------------------
    def _write_file(self, target: Path, records: list[CachedRecording]) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            with h5py.File(tmp, "w") as fh:
                fh.attrs["key"] = self.key
                fh.attrs["config"] = json.dumps(self.config, sort_keys=True, default=str)
                fh.attrs["format"] = CACHE_FORMAT_VERSION
                group = fh.create_group("recordings")
                for rec in records:
                    g = group.create_group(rec.recording_id)
                    g.create_dataset("embeddings", data=rec.embeddings.astype(np.float32))
                    g.create_dataset("starts", data=rec.starts.astype(np.int64))
                    g.create_dataset("train_index", data=rec.train_index.astype(np.int64))
                    g.create_dataset("eval_index", data=rec.eval_index.astype(np.int64))
            with open(tmp, "rb") as raw:
                os.fsync(raw.fileno())
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                tmp.unlink()

    def write_shard(self, records: list[CachedRecording]) -> Path:
        """Persist finished recordings at once, atomically."""
        target = self.parts_dir / f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.h5"
        self._write_file(target, records)
        return target

    def consolidate(self) -> None:
        """Merge shards into the main file (atomically), then drop the shards."""
        parts = sorted(self.parts_dir.glob("part-*.h5")) if self.parts_dir.is_dir() else []
        if not parts:
            return
        self._write_file(self.path, list(self.read().values()))
        for part in parts:
            part.unlink()
        for leftover in self.parts_dir.glob(".*.tmp"):
            leftover.unlink()
        try:
            self.parts_dir.rmdir()
        except OSError:
            pass

    def clean_partial(self) -> int:
        """Remove temporary files a killed run left behind; returns how many."""
        n = 0
        for folder in (self.dir, self.parts_dir):
            if folder.is_dir():
                for tmp in folder.glob(f".{self.stem}*.tmp") if folder == self.dir else folder.glob(".*.tmp"):
                    tmp.unlink()
                    n += 1
        return n
