"""Result folders and the files written into them.

Probe result folders are checked writable before any fitting, hold one probe run at a time, get
their results written atomically (temporary file + rename), and are marked while a run has not
finished, so an interrupted run leaves no half-written scores.csv and no earlier one that looks new.

Text read from run folders or datasets is untrusted where it is written again: `spreadsheet_safe`
keeps csv cells from being run as formulas, `markdown_text` keeps ids from becoming markup.
"""
from __future__ import annotations

import html
import os
import re
import tempfile
import time
from pathlib import Path

import pandas as pd

from embed.atomic import atomic_path
from embed.filelock import FileLock, LockHeldError

UNFINISHED = "UNFINISHED.txt"


class OutputFolder:
    """`with OutputFolder(out):` around the work that writes `out`'s results.

    `keep`: result files that must not be replaced; a run into a folder that holds any of them is
    refused before anything is written (`probe` passes its results unless --overwrite is given)."""

    def __init__(self, out: str | Path, keep: tuple[str, ...] = ()) -> None:
        self.out = Path(out)
        self.keep = keep
        self._lock = FileLock(self.out / ".probe.lock")

    def __enter__(self) -> "OutputFolder":
        check_writable(self.out)
        try:
            self._lock.acquire(0.0, lambda: f"{self.out}: another probe run (pid {self._lock.holder()}) is writing "
                                            "here; wait for it or pick another --out")
        except LockHeldError as err:
            raise RuntimeError(str(err)) from None
        held = [name for name in self.keep if (self.out / name).exists()]
        if held:  # checked under the lock: no other run can write them in between
            self._lock.release()
            raise FileExistsError(f"{self.out}: holds {' and '.join(held)} of an earlier run; pass --overwrite to "
                                  "replace them, or pick another --out")
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


# a cell starting with one of these is a formula (or its start) to Excel, LibreOffice and Sheets
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_cell(value: object) -> object:
    """Text a spreadsheet would run gets a leading `'`, which makes it plain text there (OWASP's
    advice on CSV injection); everything else is returned as it is."""
    return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


def spreadsheet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of `frame` whose text cells and column names are `spreadsheet_cell`s; numeric
    columns (negative numbers included) are left as they are."""
    out = frame.copy()
    for column in out.columns:
        if not pd.api.types.is_numeric_dtype(out[column]):
            out[column] = out[column].map(spreadsheet_cell)
    out.columns = [spreadsheet_cell(str(c)) for c in out.columns]
    return out


def write_spreadsheet_csv(frame: pd.DataFrame, path: Path, **to_csv) -> None:
    """A csv for people to open in a spreadsheet, written atomically: `spreadsheet_safe` cells, and
    RFC 4180's CRLF line ends, with which every cell holding a CR or LF is quoted (with LF alone, a
    bare CR in a cell would end the row for most readers)."""
    write_csv_atomic(spreadsheet_safe(frame), path, lineterminator="\r\n", **to_csv)


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|~])")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def markdown_text(value: object) -> str:
    """`value` as inert markdown text, for a table cell or a line: HTML (`<script>`) as entities,
    the characters of tables, links, code and emphasis backslash-escaped, line breaks and other
    control characters written as visible escapes (`\\n`), so an id can neither add markup nor
    break a table row."""
    text = _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(str(value), quote=False))
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)
