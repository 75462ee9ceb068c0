"""PhysioNet/CinC Challenge 2016: normal / abnormal heart-sound recordings (2 kHz).

Layout: `DIR/training-a` ... `DIR/training-f`, each holding `NAME.wav` and `REFERENCE.csv`
with lines `NAME,1` (abnormal) or `NAME,-1` (normal). `DIR` may also be one `training-x`
folder. The sets carry no subject ids, so every recording is its own group; its source is
the set it came from. Parsing never stops at a bad line or file: each problem is recorded.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from ..problems import Problem
from .base import Dataset, GroupAttributes, Splits, register_dataset

CLASSES = ("abnormal", "normal")  # REFERENCE.csv: 1 abnormal, -1 normal
REFERENCE_LABELS = {"1": 0, "-1": 1}
SET_PREFIX = "training-"


@dataclass
class Recording:
    recording_id: str  # e.g. "a0001"
    source: str  # "training-a" ... "training-f"
    wav: Path
    label: int
    location: str = ""  # the challenge does not publish auscultation locations
    expected_rate: ClassVar[int] = 2000

    @property
    def group_id(self) -> str:
        return self.recording_id


@dataclass
class PhysioNet2016(Dataset):
    root: Path
    by_id: dict[str, Recording]
    problems: list[Problem] = field(default_factory=list)

    name = "physionet2016"
    classes = CLASSES
    metrics = ("macc", "auroc")  # the challenge score (Se + Sp) / 2, plus AUROC
    split_schemes = ("kfold", "source")

    def recordings(self) -> list[Recording]:
        return [self.by_id[r] for r in self.group_ids()]

    def group_ids(self) -> list[str]:
        return sorted(self.by_id)

    def group_labels(self) -> dict[str, int]:
        return {rid: r.label for rid, r in self.by_id.items()}

    def group_attributes(self) -> GroupAttributes:
        """The set each recording came from (the sets were recorded by different groups and devices)."""
        sources = {rid: r.source for rid, r in self.by_id.items()}
        return {"source": (sources, tuple(sorted(set(sources.values()))))}

    def splits(self, scheme: str = "kfold", seed: int = 0, folds: int = 5) -> Splits:
        """"kfold": stratified by label (and set) over recordings; "source": leave one set out."""
        from .splits import kfold_over, leave_one_out_over
        self.check_scheme(scheme)
        ids = self.group_ids()
        keys = [f"{self.by_id[r].label}{self.by_id[r].source[-1]}" for r in ids]
        if scheme == "kfold":
            return kfold_over(ids, keys, folds, seed)
        return leave_one_out_over(ids, keys, [self.by_id[r].source for r in ids], seed)


def _set_folders(data_dir: Path) -> list[Path]:
    if (data_dir / "REFERENCE.csv").exists():
        return [data_dir]
    folders = sorted(p for p in data_dir.glob(f"{SET_PREFIX}*") if p.is_dir())
    if not folders:
        raise FileNotFoundError(f"{data_dir}: no PhysioNet 2016 data here (expected training-a ... "
                                "training-f folders, each with REFERENCE.csv)")
    return folders


@register_dataset("physionet2016", PhysioNet2016)
def load_physionet2016(data_dir: str | Path) -> PhysioNet2016:
    """Parse every set's REFERENCE.csv; every inconsistency goes into `.problems`."""
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: data folder not found")
    problems: list[Problem] = []
    by_id: dict[str, Recording] = {}
    for folder in _set_folders(root):
        reference = folder / "REFERENCE.csv"
        if not reference.exists():
            problems.append(Problem(str(reference), "missing; set skipped"))
            continue
        listed = set()
        try:
            rows = list(csv.reader(reference.read_text(encoding="utf-8-sig", errors="replace").splitlines()))
        except csv.Error as err:
            problems.append(Problem(str(reference), f"unreadable ({err}); set skipped"))
            continue
        for n, row in enumerate(rows, 1):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2 or row[1].strip() not in REFERENCE_LABELS:
                problems.append(Problem(f"{reference}:{n}", f"expected 'NAME,1' or 'NAME,-1', got {','.join(row)[:80]!r}"))
                continue
            name = row[0].strip()
            wav = folder / f"{name}.wav"
            if not name or Path(name).name != name or name.startswith("."):
                problems.append(Problem(f"{reference}:{n}", f"bad recording name {name[:80]!r}; skipped"))
            elif name in by_id:
                problems.append(Problem(f"{reference}:{n}", f"recording {name} listed twice; first kept", "warning"))
            elif not wav.exists():
                problems.append(Problem(str(wav), "listed in REFERENCE.csv but missing; skipped"))
            else:
                by_id[name] = Recording(name, folder.name, wav, REFERENCE_LABELS[row[1].strip()])
            listed.add(name)
        for wav in sorted(folder.glob("*.wav")):
            if wav.stem not in listed:
                problems.append(Problem(str(wav), "not in REFERENCE.csv; ignored", "warning"))
    return PhysioNet2016(root, by_id, problems)
