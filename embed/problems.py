"""The end-of-run problems table: one row per problem (stage, severity, file, problem), printed
and written as CSV so a run over thousands of files can be audited afterwards."""
from __future__ import annotations

import csv
from pathlib import Path
from dataclasses import dataclass
from typing import Iterable

from .atomic import atomic_path

COLUMNS = ("stage", "severity", "file", "problem")


MESSAGE_LIMIT = 500


def shorten(text: str, limit: int = 120) -> str:
    """`text` cut to `limit` characters, saying how long it was."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


@dataclass(frozen=True)
class Problem:
    path: str
    message: str
    severity: str = "error"  # "error": the item was dropped; "warning": kept, fixed or noted

    def __post_init__(self) -> None:  # a 50 MB bad line must not be echoed whole anywhere
        object.__setattr__(self, "message", shorten(self.message, MESSAGE_LIMIT))

    def __str__(self) -> str:
        return f"{self.severity}: {self.path}: {self.message}"


def problem_rows(problems: Iterable[Problem], stage: str) -> list[dict[str, str]]:
    """`stage` says where the problem was found: "dataset" for parsing, else the encoder name."""
    return [{"stage": stage, "severity": p.severity, "file": p.path, "problem": p.message} for p in problems]


def format_table(rows: list[dict[str, str]], limit: int = 50, width: int = 60) -> str:
    """A plain-text table, errors first; long file paths keep their tail (the file name)."""
    if not rows:
        return "no problems"
    rows = sorted(rows, key=lambda r: (r["severity"] != "error", r["stage"], r["file"]))
    shown = [{**r, "file": r["file"] if len(r["file"]) <= width else "..." + r["file"][-(width - 3):]}
             for r in rows[:limit]]
    widths = {c: max(len(c), *(len(r[c]) for r in shown)) for c in COLUMNS[:-1]}
    lines = ["  ".join(c.ljust(widths.get(c, 0)) for c in COLUMNS).rstrip()]
    lines += ["  ".join(r[c].ljust(widths.get(c, 0)) for c in COLUMNS).rstrip() for r in shown]
    errors = sum(r["severity"] == "error" for r in rows)
    head = f"{len(rows)} problems ({errors} errors, {len(rows) - errors} warnings)"
    if len(rows) > limit:
        lines.append(f"... {len(rows) - limit} more")
    return head + ":\n" + "\n".join(lines)


def write_problems_csv(rows: list[dict[str, str]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path
