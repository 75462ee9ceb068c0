"""HDF5 embedding cache: one file per (encoder, checkpoint hash, preprocessing config) key.

Crash safety: finished recordings are written in small shard files, each made under a
temporary name and renamed into place only when complete (rename is atomic), so a kill at any
moment leaves either a whole shard or none. `consolidate` merges shards into the key's one
`.h5` file the same way. Readers see the main file plus any shards. A lock file keeps two
extract runs off the same key. Every dataset carries HDF5 fletcher32 checksums, checked on each
read, so bytes changed on disk are found (`CacheDamagedError`) and `salvage` rebuilds around them.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .atomic import is_disk_full
from .filelock import FileLock, LockHeldError

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

    def arrays(self) -> dict[str, np.ndarray]:
        """The HDF5 datasets one recording is stored as."""
        return {"embeddings": self.embeddings.astype(np.float32), "starts": self.starts.astype(np.int64),
                "train_index": self.train_index.astype(np.int64), "eval_index": self.eval_index.astype(np.int64)}

    @classmethod
    def from_group(cls, rid: str, group: h5py.Group) -> "CachedRecording":
        return cls(rid, group["embeddings"][()], group["starts"][()], group["train_index"][()],
                   group["eval_index"][()])


@dataclass
class CachedFrames:
    """Frame embeddings of a whole recording, in time order, with each frame's centre time."""
    recording_id: str
    embeddings: np.ndarray  # (n_frames, D), stored in the cache's frame dtype (float16 or float32)
    times: np.ndarray  # (n_frames,) seconds from the recording's start

    def arrays(self) -> dict[str, np.ndarray]:
        return {"embeddings": self.embeddings, "times": self.times.astype(np.float32)}

    @classmethod
    def from_group(cls, rid: str, group: h5py.Group) -> "CachedFrames":
        return cls(rid, group["embeddings"][()], group["times"][()])


class CacheLockedError(LockHeldError):
    pass


class CacheDamagedError(RuntimeError):
    """A cache file or recording that fails to read or its checksum; names the file and the way out."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path}: {problem}. Rebuild it: rerun `pipeline.py extract` with the same options; "
                         "it sets damaged files aside and embeds the affected recordings again")


class EmbeddingCache:
    """The cache for one key under `cache_dir`: window embeddings per recording."""
    record: type = CachedRecording
    kind: str = ""  # "" for window embeddings; other kinds go into the file name, NAME-KIND-KEY.h5

    def __init__(self, cache_dir: str | Path, name: str, config: dict) -> None:
        self.dir = Path(cache_dir)
        self.config = config
        self.key = cache_key(config)
        self.stem = f"{name}-{self.kind}-{self.key}" if self.kind else f"{name}-{self.key}"
        self.path = self.dir / f"{self.stem}.h5"
        self.parts_dir = self.dir / f"{self.stem}.parts"
        self._lock: FileLock | None = None

    # -- locking --------------------------------------------------------------------------
    def lock(self, timeout_s: float = 0.0) -> None:
        """Take the key's lock; wait up to `timeout_s` seconds, then fail clearly."""
        check_cache_dir(self.dir)
        lock = FileLock(self.dir / f"{self.stem}.lock")

        def busy() -> str:
            return (f"{self.path}: another extract run holds this cache (pid {lock.holder()}, lock {lock.path}); "
                    "wait for it or pass --lock-timeout SECONDS")

        def waiting() -> None:  # say once why nothing happens
            print(f"waiting up to {timeout_s:g} s for the extract run (pid {lock.holder()}) holding {lock.path}",
                  file=sys.stderr, flush=True)
        try:
            lock.acquire(timeout_s, busy, waiting)
        except LockHeldError as err:
            raise CacheLockedError(str(err)) from None
        self._lock = lock

    def unlock(self) -> None:
        """Release the lock; the lock file goes with it."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

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

    def _open(self, path: Path) -> h5py.File:
        """Open one cache file for reading; a damaged one raises CacheDamagedError naming it."""
        try:
            fh = h5py.File(path, "r")
            fh["recordings"]
            return fh
        except (OSError, KeyError, RuntimeError) as err:
            if "fh" in locals():
                fh.close()
            raise CacheDamagedError(path, f"not a readable cache file ({_short(err)}): truncated or overwritten"
                                    ) from None

    def recording_ids(self) -> set[str]:
        ids: set[str] = set()
        for path in self._files():
            with self._open(path) as fh:
                self._check_config(fh, path)
                ids.update(fh["recordings"].keys())
        return ids

    def read(self, recording_ids: list[str] | None = None) -> dict[str, CachedRecording]:
        out: dict[str, CachedRecording] = {}
        wanted = None if recording_ids is None else set(recording_ids)
        for path in self._files():
            with self._open(path) as fh:
                self._check_config(fh, path)
                for rid, group in fh["recordings"].items():
                    if wanted is not None and rid not in wanted:
                        continue
                    out[rid] = _read_recording(path, rid, group, self.record)
        return out

    def salvage(self) -> list[tuple[Path, str]]:
        """Find damaged cache files and recordings (checksums are checked on every read) and rebuild
        around them: an unreadable file is set aside as `*.damaged`, damaged recordings are dropped
        from their file. Either way extract embeds those recordings again. Returns (file, what was done)."""
        done: list[tuple[Path, str]] = []
        for path in self._files():
            try:
                fh = self._open(path)
            except CacheDamagedError as err:
                aside = path.with_name(f"{path.name}.{time.strftime('%Y%m%dT%H%M%S')}.damaged")
                os.replace(path, aside)
                done.append((path, f"{err.problem}; set aside as {aside.name}, its recordings are embedded again"))
                continue
            with fh:
                self._check_config(fh, path)
                good, bad = [], []
                for rid, group in fh["recordings"].items():
                    try:
                        good.append(_read_recording(path, rid, group, self.record))
                    except CacheDamagedError:
                        bad.append(rid)
                # one write makes a whole file, so its first recording tells
                unchecked = bool(good) and not _has_checksums(next(iter(fh["recordings"].values())))
            if bad:
                self._write_file(path, good)
                done.append((path, f"{len(bad)} damaged recordings ({_short(', '.join(bad))}) failed their "
                                   "checksum or hold NaN/inf; dropped from the file and embedded again"))
            elif unchecked:  # made before checksums were stored: rewritten once, with them
                self._write_file(path, good)
        return done

    # -- writing ----------------------------------------------------------------------------
    def _write_file(self, target: Path, records: list[CachedRecording]) -> None:
        for rec in records:  # last line of defence: never store what a probe cannot use
            check_recording_id(rec.recording_id)
            if not np.isfinite(rec.embeddings).all():
                raise ValueError(f"recording {rec.recording_id}: embeddings contain NaN or inf; refusing to cache them")
        target.parent.mkdir(parents=True, exist_ok=True)
        ensure_free_space(target.parent, estimate_bytes(records))
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            # libver v110: a one-chunk dataset gets a compact index, so checksums cost little room
            with h5py.File(tmp, "w", libver=("v110", "latest")) as fh:
                fh.attrs["key"] = self.key
                fh.attrs["config"] = json.dumps(self.config, sort_keys=True, default=str)
                fh.attrs["format"] = CACHE_FORMAT_VERSION
                group = fh.create_group("recordings")
                for rec in records:
                    g = group.create_group(rec.recording_id)
                    # fletcher32: every chunk carries a checksum that HDF5 checks on each read
                    for name, data in rec.arrays().items():
                        g.create_dataset(name, data=data, fletcher32=True,
                                         chunks=tuple(max(1, n) for n in data.shape))
            with open(tmp, "rb") as raw:
                os.fsync(raw.fileno())
            with h5py.File(tmp, "r") as fh:  # HDF5 may report a failed write only while closing
                if len(fh["recordings"]) != len(records):
                    raise OSError(errno.EIO, f"{tmp}: wrote {len(records)} recordings, "
                                             f"{len(fh['recordings'])} readable back")
            os.replace(tmp, target)
        except Exception as err:
            if _is_disk_full(err, target.parent):
                raise DiskFullError(target.parent, estimate_bytes(records)) from err
            raise
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


class FrameCache(EmbeddingCache):
    """Frame embeddings with their times, one sequence per recording (`extract --frames`), in
    `NAME-frames-KEY.h5`; written, checked and salvaged as the window cache is."""
    record = CachedFrames
    kind = "frames"


def _short(value: object, limit: int = 200) -> str:
    text = str(value).replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def _read_recording(path: Path, rid: str, group: h5py.Group, record: type = CachedRecording):
    try:
        rec = record.from_group(rid, group)
    except (OSError, KeyError, RuntimeError) as err:
        raise CacheDamagedError(path, f"recording {rid} is damaged ({_short(err)})") from None
    if not np.isfinite(rec.embeddings).all():  # written before such values were refused
        raise CacheDamagedError(path, f"recording {rid} has NaN or inf embeddings")
    return rec


def _has_checksums(group: h5py.Group) -> bool:
    return all(ds.fletcher32 for ds in group.values() if isinstance(ds, h5py.Dataset))


def list_caches(cache_dir: str | Path, encoder: str, kind: str = "") -> list[Path]:
    """Main-file paths of every cache key of `encoder` (of one `kind`: "" window embeddings, "frames"),
    also of keys that so far have only shards (an extract stopped before its first consolidation);
    the main file need not exist."""
    cache_dir = Path(cache_dir)
    prefix = f"{encoder}-{kind}-" if kind else f"{encoder}-"
    stems = {p.stem for p in cache_dir.glob(f"{prefix}*.h5")}
    stems |= {p.name[:-len(".parts")] for p in cache_dir.glob(f"{prefix}*.parts")
              if p.is_dir() and any(p.glob("part-*.h5"))}
    return sorted(cache_dir / f"{s}.h5" for s in stems if s[len(prefix):].isalnum())


def read_config(path: Path) -> dict:
    """The configuration stored in a cache: its main file's or, before consolidation, its first shard's."""
    path = Path(path)
    parts = sorted(path.with_suffix(".parts").glob("part-*.h5"))
    source = path if path.exists() else parts[0]
    try:
        with h5py.File(source, "r") as fh:
            return json.loads(fh.attrs["config"])
    except (OSError, KeyError, ValueError) as err:
        raise CacheDamagedError(source, f"not a readable cache file ({_short(err)}): truncated or overwritten"
                                ) from None


def layer_slices(cache: "EmbeddingCache | dict") -> dict[int, slice]:
    """Which columns of a cache's vectors hold which encoder layer, `{layer index: slice}`, from the
    cache's configuration (`extract --layers`; a cache or its config). A cache of the embedding alone
    is one layer: the last, keyed by its index where the configuration records the depth, else -1."""
    config = cache.config if isinstance(cache, EmbeddingCache) else cache
    if "layers" not in config:
        return {int(config["n_layers"]) - 1 if "n_layers" in config else -1: slice(0, None)}
    layers, dims = config["layers"], config["layer_dims"]
    if len(layers) != len(dims):
        raise ValueError(f"cache configuration lists {len(layers)} layers but {len(dims)} layer sizes")
    ends = np.cumsum(dims)
    return {int(layer): slice(int(end - dim), int(end)) for layer, dim, end in zip(layers, dims, ends)}


def check_cache_dir(cache_dir: str | Path, create: bool = True) -> Path:
    """The cache folder (created if missing and `create`); a file in its place is refused by name."""
    cache_dir = Path(cache_dir)
    if cache_dir.exists() and not cache_dir.is_dir():
        raise NotADirectoryError(f"{cache_dir}: --cache must be a folder, and this is a file")
    if create:
        cache_dir.mkdir(parents=True, exist_ok=True)
    return cache_dir


def check_recording_id(recording_id: str) -> None:
    """HDF5 group names: no '/', not '.' or '..', not empty (a file name like `..wav` gives '.')."""
    if not recording_id or "/" in recording_id or recording_id.strip(".") == "" or "\0" in recording_id:
        raise ValueError(f"recording id {recording_id!r} cannot name a cache entry")


# -- disk space -------------------------------------------------------------------------------
class DiskFullError(OSError):
    """Not enough room for a cache file; what was written before stays."""

    def __init__(self, folder: Path, needed: int, detail: str | None = None) -> None:
        free = shutil.disk_usage(folder).free if folder.exists() else 0
        super().__init__(errno.ENOSPC, detail or f"{folder}: no space left on the device for the cache (about "
                                                 f"{needed / 1e6:.1f} MB needed, {free / 1e6:.1f} MB free)")


def estimate_bytes(records: list) -> int:
    """Bytes a cache file of these records takes: the arrays plus HDF5's per-dataset overhead."""
    data = sum(a.nbytes for r in records for a in r.arrays().values())
    return int(data * 1.05) + 8192 * len(records) + (1 << 16)


def ensure_free_space(folder: Path, needed: int) -> None:
    # checked first because libhdf5 handles a full disk badly (errors while closing, even crashes)
    if shutil.disk_usage(folder).free < needed:
        raise DiskFullError(folder, needed)


def _is_disk_full(err: BaseException, folder: Path) -> bool:
    if isinstance(err, DiskFullError):
        return False  # already the clear error
    if is_disk_full(err):
        return True
    try:
        return shutil.disk_usage(folder).free < (1 << 16)
    except OSError:
        return False
