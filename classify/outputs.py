"""Probe result folders: checked writable before any fitting, one probe run at a time, results
written atomically (temporary file + rename), and a run that did not finish is marked, so an
interrupted run leaves no half-written scores.csv and no earlier one that looks new."""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pandas as pd

from embed.atomic import atomic_path
from embed.filelock import FileLock, LockHeldError

UNFINISHED = "UNFINISHED.txt"


class OutputFolder:
    """`with OutputFolder(out):` around the work that writes `out`'s results."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self._lock = FileLock(self.out / ".probe.lock")

    def __enter__(self) -> "OutputFolder":
        check_writable(self.out)
        try:
            self._lock.acquire(0.0, lambda: f"{self.out}: another probe run (pid {self._lock.holder()}) is writing "
                                            "here; wait for it or pick another --out")
        except LockHeldError as err:
            raise RuntimeError(str(err)) from None
        (self.out / UNFINISHED).write_text(
            f"A probe run started {time.strftime('%Y-%m-%d %H:%M:%S')} (pid {os.getpid()}) has not finished.\n"
            "scores.csv and predictions.csv here, if any, are from an earlier run.\n")
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            (self.out / UNFINISHED).unlink(missing_ok=True)
        self._lock.release()


def check_writable(folder: Path) -> None:
    """Create `folder` and write a file in it now, rather than find out after all the fitting."""
    try:
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(f"{folder}: --out must be a folder, and this is a file")
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except NotADirectoryError:
        raise
    except OSError as err:
        raise PermissionError(f"{folder}: output folder is not writable ({err.strerror or err})") from None


def unfinished_note(folder: str | Path) -> str | None:
    """What a run folder's marker says, when its last probe run did not finish."""
    marker = Path(folder) / UNFINISHED
    return f"{marker}: {marker.read_text().strip()}" if marker.exists() else None


def write_csv_atomic(frame: pd.DataFrame, path: Path, **to_csv) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, **to_csv)
