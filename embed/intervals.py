"""Heart-cycle interval files: rows `start_s end_s label`, the form of CirCor's `.tsv` annotations
and of the segmenter's output (labels 0 unannotated, 1 S1, 2 systole, 3 S2, 4 diastole).

Every interval file is read and checked here, once: a line that is not three numbers, an unknown
label, a non-finite or negative time or an interval that ends before it starts refuses the file
(`ValueError` naming the file and line). What is plausible but off is kept and noted: rows out of
order or overlapping by more than `TOLERANCE_S` (the pooling sorts them by start), and, when the
recording's length is known, times past its end (clipped to it; rows that start after it are
dropped). So what a file claims never sizes anything after it: with the recording's length known,
a file may hold at most `MAX_ROWS_PER_S` rows per second of audio before it is refused.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .problems import Problem, shorten

LABELS = {0: "unannotated", 1: "S1", 2: "systole", 3: "S2", 4: "diastole"}
TOLERANCE_S = 0.1  # CirCor's own files overlap and overrun the audio by up to 12 ms (rounding)
MAX_ROWS_PER_S = 100  # a heart cycle has four phases; 25 cycles a second is far past any heart
MIN_ROWS = 1000


def read_intervals_file(path: str | Path, duration_s: float | None = None,
                        problems: list[Problem] | None = None) -> np.ndarray:
    """The file's intervals as an `(n, 3)` float64 array, checked (see the module's docstring);
    notes for what was kept but is off go to `problems` as warnings."""
    path = Path(path)
    limit = max(MIN_ROWS, int(MAX_ROWS_PER_S * duration_s)) if duration_s is not None else None
    rows = []
    with open(path) as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            if limit is not None and len(rows) >= limit:
                raise ValueError(f"{path}:{n}: more than {limit} intervals for a recording of {duration_s:.1f} s")
            rows.append(_row(path, n, line))
    intervals = np.asarray(rows, dtype=np.float64).reshape(-1, 3)
    notes = _order_notes(intervals)
    if duration_s is not None:
        intervals, note = clip_to(intervals, duration_s)
        notes += [note] if note else []
    if problems is not None:
        problems.extend(Problem(str(path), note, "warning") for note in notes)
    return intervals


def _row(path: Path, n: int, line: str) -> tuple[float, float, int]:
    parts = line.split()
    if len(parts) != 3:
        raise ValueError(f"{path}:{n}: expected 'start end label', got {_echo(line)}")
    try:
        start, end, label_f = float(parts[0]), float(parts[1]), float(parts[2])
    except ValueError:
        raise ValueError(f"{path}:{n}: not numbers: {_echo(line)}") from None
    label = int(label_f) if math.isfinite(label_f) and label_f == int(label_f) else -1
    if label not in LABELS:
        raise ValueError(f"{path}:{n}: unknown state {parts[2]!r} (expected one of "
                         f"{', '.join(f'{k} {v}' for k, v in LABELS.items())}): {_echo(line)}")
    if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end < start:
        raise ValueError(f"{path}:{n}: bad segment {_echo(line)} (times must be finite, from 0, and end "
                         "after they start)")
    return start, end, label


def _echo(line: str) -> str:
    return repr(shorten(line.strip(), 120))


def _order_notes(intervals: np.ndarray) -> list[str]:
    """Where rows start before the row above them ends (beyond rounding)."""
    if len(intervals) < 2:
        return []
    early = intervals[1:, 0] < intervals[:-1, 1] - TOLERANCE_S
    if not early.any():
        return []
    first = int(np.flatnonzero(early)[0]) + 1
    return [f"{int(early.sum())} intervals start before the one above them ends (first: row {first + 1} at "
            f"{intervals[first, 0]:.3f} s, the row above ends at {intervals[first - 1, 1]:.3f} s); used sorted by start"]


def clip_to(intervals: np.ndarray, duration_s: float) -> tuple[np.ndarray, str | None]:
    """Intervals that run past the recording's end by more than rounding are clipped to it, and
    those that start after it dropped; the note says so (None when nothing changed)."""
    past = intervals[:, 1] > duration_s + TOLERANCE_S
    if not past.any():
        return intervals, None
    furthest = float(intervals[:, 1].max())
    kept = intervals[intervals[:, 0] < duration_s].copy()
    kept[:, 1] = np.minimum(kept[:, 1], max(duration_s, 0.0))
    dropped = len(intervals) - len(kept)
    return kept, (f"{int(past.sum())} intervals run past the recording's end ({duration_s:.3f} s), up to "
                  f"{furthest:.3f} s: clipped to it" + (f", {dropped} starting after it dropped" if dropped else ""))
