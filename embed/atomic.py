"""Writing output files whole or not at all: a temporary sibling is written, synced and renamed
over the target (a rename is atomic), so a kill, a crash or a full disk never leaves an empty or
half-written file that looks like a result. A full disk is named as such."""
from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Iterator


class OutputDiskFullError(OSError):
    """No room left to write an output file; nothing was written in its place."""


def is_disk_full(err: BaseException) -> bool:
    """An error that says the device has no space left (errno, or only the message, as libhdf5's)."""
    return getattr(err, "errno", None) == errno.ENOSPC or "No space left" in str(err)


def temporary_name(path: Path) -> Path:
    """The sibling a process writes before renaming: hidden, and unique to the process."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """`with atomic_path(p) as tmp:` write the file at `tmp`; on leaving, it replaces `p` whole.
    On any error `p` is left as it was and the temporary file is removed."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        if is_disk_full(err):
            raise OutputDiskFullError(errno.ENOSPC, f"{path}: the disk is full; nothing was written there "
                                                   f"({err.strerror or err})") from err
        raise
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())
