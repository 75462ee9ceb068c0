"""The dataset commands: `pipeline.py verify` (checksums and parsing) and `pipeline.py splits`
(a split scheme written to a CSV that `probe`, `recipe` and `compare` read)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from embed.datasets import load_dataset
from embed.datasets.download import verify_checksums
from embed.datasets.splits import write_splits


def print_problems(problems, limit: int = 30) -> None:
    """The problems found, on stderr: a count, then the first `limit`."""
    if not problems:
        return
    errors = sum(p.severity == "error" for p in problems)
    print(f"\n{len(problems)} problems ({errors} errors, {len(problems) - errors} warnings):", file=sys.stderr)
    for p in problems[:limit]:
        print(f"  {p}", file=sys.stderr)
    if len(problems) > limit:
        print(f"  ... {len(problems) - limit} more", file=sys.stderr)


def verify_job(dataset_name: str, data: str | Path, say: Callable[[str], None] = print) -> int:
    """Every file against SHA256SUMS.txt, then the dataset parsed; 1 if a file or a record is bad."""
    if not Path(data).is_dir():
        raise FileNotFoundError(f"{data}: data folder not found")
    bad, n = verify_checksums(data)
    say(f"{n - len(bad)}/{n} files match SHA256SUMS.txt")
    for line in bad[:50]:
        print(f"  {line}", file=sys.stderr)
    dataset = load_dataset(dataset_name, data)
    say(f"{len(dataset.group_ids())} patients, {len(dataset.recordings())} recordings parsed")
    print_problems(dataset.problems)
    return 1 if bad or dataset.errors() else 0


def splits_job(dataset_name: str, data: str | Path, out: str | Path, scheme: str | None = None, seed: int = 0,
               folds: int = 5, say: Callable[[str], None] = print) -> None:
    """The dataset's split `scheme` (default its first) written to `out`, with each split's counts."""
    dataset = load_dataset(dataset_name, data)
    splits = dataset.splits(scheme or dataset.split_schemes[0], seed, folds)
    write_splits(splits, out)
    for name, split in splits.items():
        counts = {v: list(split.values()).count(v) for v in ("train", "val", "test")}
        say(f"{name}: {counts}")
    say(f"wrote {out}")
