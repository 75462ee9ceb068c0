"""Group-level splits for any dataset: stratified train/test, stratified k-fold and
leave-one-source-out over group ids, and split tables as CSV. A dataset's own schemes (CirCor's
paper splits) live in its module and are built from these.

Every split maps group (patient) ID -> "train" | "val" | "test".
"""
from __future__ import annotations

import csv
from pathlib import Path

from ..atomic import atomic_path
from .base import Dataset, Splits, group_sort_key

SPLIT_VALUES = ("train", "val", "test")
# a stratum key minus its first COARSE_FROM characters names the coarser stratum that a stratum
# too small to split falls back to (CirCor: outcome bits dropped, murmur kept)
COARSE_FROM = 2


def mergeable_keys(keys: list[str], minimum: int = 2) -> list[str]:
    """Strata too small to split (small subsets only) fall back to their coarser part (`COARSE_FROM`),
    then merge."""
    def rare(ks: list[str]) -> set[str]:
        return {k for k in set(ks) if ks.count(k) < minimum}
    small = rare(keys)
    keys = [k[COARSE_FROM:] if k in small else k for k in keys]
    small = rare(keys)
    keys = ["rare" if k in small else k for k in keys]
    if rare(keys):  # a lone leftover joins the largest stratum
        largest = max(set(keys), key=keys.count)
        keys = [largest if k == "rare" else k for k in keys]
    return keys


def stratified_split(ids: list[str], keys: list[str], test_size: float, seed: int) -> tuple[list, list]:
    """train_test_split stratified by `keys`; on data too small for that, by their coarser part
    (`COARSE_FROM`), then not at all."""
    from sklearn.model_selection import train_test_split  # here: loading a dataset need not load scikit-learn
    for stratify in (mergeable_keys(keys), mergeable_keys([k[COARSE_FROM:] for k in keys]), None):
        try:
            return train_test_split(ids, test_size=test_size, random_state=seed, stratify=stratify)
        except ValueError:
            continue
    raise ValueError(f"cannot split {len(ids)} patients with test_size={test_size}")


def train_in_every_split(splits: dict[str, dict[str, str]]) -> list[str]:
    """Patients that are training data in every split: statistics fit on them leak no test patient."""
    parts = list(splits.values())
    return sorted(p for p in parts[0] if all(split.get(p) == "train" for split in parts)) if parts else []


def kfold_over(ids: list[str], keys: list[str], k: int = 5, seed: int = 0, val_fraction: float = 0.1,
               prefix: str = "fold") -> Splits:
    """Stratified k-fold over `ids`; each fold's training part gives up a stratified val part."""
    keys = mergeable_keys(keys, k)
    from sklearn.model_selection import StratifiedKFold  # here: loading a dataset need not load scikit-learn
    folds = {}
    for i, (train_idx, test_idx) in enumerate(StratifiedKFold(k, shuffle=True, random_state=seed).split(ids, keys), 1):
        train_ids = [ids[j] for j in train_idx]
        train, val = stratified_split(train_ids, [keys[j] for j in train_idx], val_fraction, seed + i)
        split = {p: "train" for p in train}
        split.update({p: "val" for p in val})
        split.update({ids[j]: "test" for j in test_idx})
        folds[f"{prefix}{i}"] = split
    return folds


def leave_one_out_over(ids: list[str], keys: list[str], source: list[str], seed: int = 0,
                       val_fraction: float = 0.1, prefix: str = "test_") -> Splits:
    """One split per source: test on it, train on the others (minus a stratified val part)."""
    out = {}
    for held_out in sorted(set(source)):
        train_ids = [i for i, s in zip(ids, source) if s != held_out]
        train_keys = [k for k, s in zip(keys, source) if s != held_out]
        train, val = stratified_split(train_ids, train_keys, val_fraction, seed)
        split = {p: "train" for p in train}
        split.update({p: "val" for p in val})
        split.update({i: "test" for i, s in zip(ids, source) if s == held_out})
        out[f"{prefix}{held_out}"] = split
    return out


def make_splits(dataset: Dataset, scheme: str = "paper", seed: int = 0, folds: int = 5) -> Splits:
    return dataset.splits(scheme, seed, folds)


def write_splits(splits: Splits, path: str | Path) -> None:
    names = list(splits)
    pids = sorted(next(iter(splits.values())), key=group_sort_key)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["patient_id", *names])
        for pid in pids:
            writer.writerow([pid, *(splits[n].get(pid, "") for n in names)])


def read_splits(path: str | Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        names = [n for n in reader.fieldnames or [] if n != "patient_id"]
        splits: dict[str, dict[str, str]] = {n: {} for n in names}
        for row in reader:
            for n in names:
                if row[n]:
                    if row[n] not in SPLIT_VALUES:
                        raise ValueError(f"{path}: patient {row['patient_id']}: split value {row[n]!r}")
                    splits[n][row["patient_id"]] = row[n]
    return splits
