"""An exclusive lock file that is removed when released, so no stale `*.lock` stays behind.

Removing a lock file on release races with a process that opened it just before: that process
would lock a file no longer in the folder while a third one creates and locks a new one. So
after taking the lock we check that the path still names the file we locked, and retry if not.
"""
from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path
from typing import Callable


class LockHeldError(RuntimeError):
    pass


class FileLock:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fh = None

    def holder(self) -> str:
        """What the holder wrote into the lock file (its pid), or '?'."""
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"

    def acquire(self, timeout_s: float = 0.0, busy_message: Callable[[], str] | None = None,
                on_wait: Callable[[], None] | None = None) -> None:
        """Take the lock, waiting up to `timeout_s`; then raise LockHeldError(busy_message())."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout_s
        waited = False
        while True:
            fh = open(self.path, "a+")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                fh.close()
                if err.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise LockHeldError(busy_message() if busy_message else f"{self.path} is held") from None
                if not waited and on_wait is not None:
                    on_wait()
                waited = True
                time.sleep(0.2)
                continue
            try:
                same = os.fstat(fh.fileno()).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            fh.close()  # the holder removed it between our open and our lock: start over
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is None:
            return
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        fcntl.flock(self._fh, fcntl.LOCK_UN)
        self._fh.close()
        self._fh = None
