"""CirCor DigiScope v1.0.3: patients, recordings, segmentations, and the problems found on the way.

Layout: `DIR/training_data.csv` and `DIR/training_data/{PID.txt, PID_LOC[_N].{wav,hea,tsv}}`.
`DIR` may also be the `training_data` folder itself. Parsing never stops at a bad patient: each
problem is recorded (file + message) and the patient is kept when it is still usable.
"""
from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..audio import CIRCOR_SAMPLE_RATE, audio_duration_s
from ..intervals import read_intervals_file as read_tsv  # CirCor's .tsv is the interval-file form
from ..problems import Problem, shorten
from .base import NOT_GIVEN, Dataset, GroupAttributes, Splits, register_dataset
from .splits import kfold_over, leave_one_out_over, stratified_split

MURMUR_CLASSES = ("Present", "Unknown", "Absent")  # official PhysioNet 2022 order
OUTCOME_CLASSES = ("Abnormal", "Normal")
LOCATIONS = ("AV", "PV", "TV", "MV", "Phc")
AGE_GROUPS = ("Neonate", "Infant", "Child", "Adolescent", "Young Adult")
# a recording's file name without extension names files and cache entries: not empty, no leading dot
RECORDING_STEM = re.compile(r"[^./\\\x00][^/\\\x00]*")
# PID_LOC[_N]; the PID part is checked against the patient file, so loose names can use it too
RECORDING_NAME = re.compile(rf"^(?P<pid>.+?)_(?P<loc>{'|'.join(LOCATIONS)})(?:_(?P<n>\d+))?$")
TXT_FIELDS = (
    "Age", "Sex", "Height", "Weight", "Pregnancy status", "Murmur", "Murmur locations",
    "Most audible location", "Systolic murmur timing", "Systolic murmur shape",
    "Systolic murmur grading", "Systolic murmur pitch", "Systolic murmur quality",
    "Diastolic murmur timing", "Diastolic murmur shape", "Diastolic murmur grading",
    "Diastolic murmur pitch", "Diastolic murmur quality", "Outcome", "Campaign", "Additional ID",
)
# report attribute -> (header field, its values in reading order; others follow, sorted)
ATTRIBUTE_FIELDS = {
    "age": ("Age", AGE_GROUPS),
    "sex": ("Sex", ("Female", "Male")),
    "pregnancy": ("Pregnancy status", ("True", "False")),
    "campaign": ("Campaign", ("CC2014", "CC2015")),
    "murmur_grade": ("Systolic murmur grading", ("I/VI", "II/VI", "III/VI")),
    "murmur_timing": ("Systolic murmur timing", ("Early-systolic", "Mid-systolic", "Late-systolic", "Holosystolic")),
    "murmur_shape": ("Systolic murmur shape", ("Crescendo", "Decrescendo", "Diamond", "Plateau")),
    "murmur_pitch": ("Systolic murmur pitch", ("Low", "Medium", "High")),
    "most_audible": ("Most audible location", LOCATIONS),
}
KNOWN_VALUES = {
    "Age": set(AGE_GROUPS),
    "Sex": {"Male", "Female"},
    "Pregnancy status": {"True", "False"},
    "Murmur": set(MURMUR_CLASSES),
    "Outcome": set(OUTCOME_CLASSES),
    "Campaign": {"CC2014", "CC2015"},
}


PATIENT_ID = re.compile(r"[0-9]+")  # ASCII digits only: `²³`.isdigit() is True, but int() refuses it


def echo(line: str, limit: int = 120) -> str:
    """A quoted, shortened line of a file for a message."""
    return repr(shorten(line, limit))


@dataclass
class Recording:
    recording_id: str  # e.g. "50782_MV_1"
    patient_id: str
    location: str
    wav: Path
    hea: Path | None = None
    tsv: Path | None = None
    expected_rate: ClassVar[int] = CIRCOR_SAMPLE_RATE

    @property
    def group_id(self) -> str:
        return self.patient_id

    @property
    def segmentation_file(self) -> Path | None:
        """The file `segmentation()` reads; None where the recording has none."""
        return self.tsv

    def segmentation(self, problems: list[Problem] | None = None) -> np.ndarray:
        """The .tsv as an `(n, 3)` array of (start_s, end_s, label 0-4), checked against the
        recording's length (`embed.intervals`; what was clipped or is out of order is noted in
        `problems`). Raises ValueError for a file that cannot be used."""
        if self.tsv is None:
            raise FileNotFoundError(f"{self.wav}: no .tsv segmentation")
        return read_tsv(self.tsv, audio_duration_s(self.wav), problems)


@dataclass
class Patient:
    patient_id: str
    recordings: list[Recording]
    murmur: str
    outcome: str
    campaign: str = ""
    age: str = ""
    sex: str = ""
    height: float = math.nan
    weight: float = math.nan
    pregnant: bool = False
    murmur_locations: tuple[str, ...] = ()
    fields: dict[str, str] = field(default_factory=dict)  # every header field, raw

    @property
    def label(self) -> int:
        return MURMUR_CLASSES.index(self.murmur)


@dataclass
class CirCor(Dataset):
    """The dataset protocol over CirCor: groups are patients, labels the patient's murmur."""
    root: Path
    patients: dict[str, Patient]
    problems: list[Problem] = field(default_factory=list)

    name = "circor"
    classes = MURMUR_CLASSES
    metrics = ("weighted_accuracy", "uar")
    class_weights = (5.0, 3.0, 1.0)  # PhysioNet 2022 murmur weights
    label_schemes = ("patient", "location")
    split_schemes = ("paper", "kfold", "campaign")
    locations = LOCATIONS

    def recordings(self) -> list[Recording]:
        return [r for p in self.patients.values() for r in p.recordings]

    def patient_ids(self) -> list[str]:
        return sorted(self.patients, key=int)

    def group_ids(self) -> list[str]:
        return self.patient_ids()

    def group_labels(self) -> dict[str, int]:
        return {pid: p.label for pid, p in self.patients.items()}

    def recording_labels(self, scheme: str = "patient") -> dict[str, int]:
        """"location": a Present patient's recordings are murmur recordings only at the locations
        listed in 'Murmur locations', Absent elsewhere."""
        if scheme != "location":
            return super().recording_labels(scheme)
        present, absent = MURMUR_CLASSES.index("Present"), MURMUR_CLASSES.index("Absent")
        out = {}
        for patient in self.patients.values():
            for rec in patient.recordings:
                if patient.murmur == "Present":
                    out[rec.recording_id] = present if rec.location in patient.murmur_locations else absent
                else:
                    out[rec.recording_id] = patient.label
        return out

    def covariates(self, group_ids) -> np.ndarray:
        """Age group one-hot, sex, pregnancy, height, weight (NaN -> 0 plus a missing flag)."""
        rows = []
        for pid in group_ids:
            p = self.patients[pid]
            height = p.height if np.isfinite(p.height) else 0.0
            weight = p.weight if np.isfinite(p.weight) else 0.0
            rows.append([p.age == a for a in AGE_GROUPS] + [
                p.sex == "Female", p.pregnant, height / 100.0, weight / 20.0,
                not np.isfinite(p.height), not np.isfinite(p.weight)])
        return np.asarray(rows, dtype=np.float64)

    def group_attributes(self) -> GroupAttributes:
        """The patients' header fields that describe them (age group, sex, pregnancy, campaign, the
        systolic murmur's grade, timing, shape and pitch, the most audible location; `not given`
        where the file gives none, e.g. the systolic fields of a patient without a systolic murmur)
        and how many recordings each has."""
        out: GroupAttributes = {}
        for name, (key, order) in ATTRIBUTE_FIELDS.items():
            values = {pid: p.fields.get(key, "nan") for pid, p in self.patients.items()}
            out[name] = ({pid: NOT_GIVEN if v in ("nan", "") else v for pid, v in values.items()}, order)
        counts = {pid: len(p.recordings) for pid, p in self.patients.items()}
        out["recordings"] = ({pid: str(n) for pid, n in counts.items()},
                             tuple(str(n) for n in sorted(set(counts.values()))))
        return out

    def splits(self, scheme: str = "paper", seed: int = 0, folds: int = 5) -> Splits:
        self.check_scheme(scheme)
        if scheme == "paper":
            return paper_splits(self)
        if scheme == "kfold":
            return kfold_splits(self, folds, seed)
        return campaign_splits(self, seed)


# -- split schemes: the paper's three seeded splits, k-fold, leave-one-campaign-out ---------------
PAPER_SEEDS = (14, 42, 84)


def stratify_key(circor: CirCor, pid: str) -> str:
    """One-hot (Outcome Normal, Abnormal, Murmur Absent, Present, Unknown) as a string, as the paper
    does. The outcome bits come first: dropped (`splits.COARSE_FROM`), the murmur part is left, which
    strata too small to split (small subsets only; never on the full CirCor) fall back to."""
    p = circor.patients[pid]
    bits = [p.outcome == "Normal", p.outcome == "Abnormal",
            p.murmur == "Absent", p.murmur == "Present", p.murmur == "Unknown"]
    return "".join(str(int(b)) for b in bits)


def paper_split(circor: CirCor, seed: int) -> dict[str, str]:
    """75 % train+val / 25 % test, then 10 % of the whole for val (patients sorted by ID)."""
    pids = circor.patient_ids()
    keys = {p: stratify_key(circor, p) for p in pids}
    trainval, test = stratified_split(pids, [keys[p] for p in pids], 0.25, seed)
    train, val = stratified_split(trainval, [keys[p] for p in trainval], 0.1 / 0.75, seed + 1)
    out = {p: "train" for p in train}
    out.update({p: "val" for p in val})
    out.update({p: "test" for p in test})
    return out


def paper_splits(circor: CirCor) -> Splits:
    return {f"split{i}": paper_split(circor, seed) for i, seed in enumerate(PAPER_SEEDS, 1)}


def kfold_splits(circor: CirCor, k: int = 5, seed: int = 0, val_fraction: float = 0.1) -> Splits:
    """Stratified k-fold over patients (strata: outcome and murmur)."""
    pids = circor.patient_ids()
    return kfold_over(pids, [stratify_key(circor, p) for p in pids], k, seed, val_fraction)


def campaign_splits(circor: CirCor, seed: int = 0, val_fraction: float = 0.1) -> Splits:
    """Leave-one-campaign-out: train on one campaign (minus a val part), test on the other."""
    pids = circor.patient_ids()
    return leave_one_out_over(pids, [stratify_key(circor, p) for p in pids],
                              [circor.patients[p].campaign for p in pids], seed, val_fraction)


def _float(value: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def find_root(data_dir: str | Path) -> tuple[Path, Path]:
    """Return (dataset root holding training_data.csv or None, folder holding the .txt files)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir}: data folder not found")
    if (data_dir / "training_data").is_dir():
        return data_dir, data_dir / "training_data"
    if any(data_dir.glob("*.txt")):
        return data_dir.parent if (data_dir.parent / "training_data.csv").exists() else data_dir, data_dir
    raise FileNotFoundError(
        f"{data_dir}: no CirCor data here (expected training_data.csv and a training_data/ folder)")


def parse_patient_txt(path: Path, problems: list[Problem]) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Header fields and (location, recording stem) pairs of one `PID.txt`."""
    text = path.read_text(errors="replace").replace("\r", "")
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines:
        raise ValueError("empty patient file")
    head = lines[0].split()
    if len(head) < 3 or not PATIENT_ID.fullmatch(head[0]) or not PATIENT_ID.fullmatch(head[1]):
        raise ValueError(f"first line should be 'PID N_RECORDINGS SAMPLE_RATE', got {echo(lines[0])}")
    pid, n_rec = head[0], int(head[1])
    if pid != path.stem:
        problems.append(Problem(str(path), f"patient ID {pid} in the file differs from the file name"))
    entries = []
    for line in lines[1:n_rec + 1]:
        parts = line.split()
        if line.startswith("#") or len(parts) < 3:
            problems.append(Problem(str(path), f"recording line malformed: {echo(line)}", "warning"))
            continue
        stem = Path(parts[2]).stem
        if not RECORDING_STEM.fullmatch(stem):  # `..wav` gives '.', which cannot name anything
            problems.append(Problem(str(path), f"recording file name {echo(parts[2])} is not usable; line skipped"))
            continue
        if any(stem == seen for _, seen in entries):
            problems.append(Problem(str(path), f"recording {stem} listed twice; the repeat skipped", "warning"))
            continue
        entries.append((parts[0], stem))
    if len(entries) != n_rec:
        problems.append(Problem(str(path), f"header says {n_rec} recordings, {len(entries)} listed", "warning"))
    fields = {}
    for line in lines:
        if line.startswith("#") and ":" in line:
            key, value = line[1:].split(":", 1)
            fields[key.strip()] = value.strip()
    return fields, entries


def read_patient_folder(folder: Path, problems: list[Problem]) -> dict[str, list[Recording]] | None:
    """New patients in CirCor's layout, for prediction: patient id -> the recordings its `PID.txt`
    lists (no labels needed; `.hea` and `.tsv` are not looked for). None where the folder holds no
    patient file. A patient file that cannot be read, or a listed wav that is missing, goes into
    `problems`; a patient left without recordings is kept (with none)."""
    txts = sorted(t for t in folder.glob("*.txt") if t.stem.isdigit())
    if not txts:
        return None
    out: dict[str, list[Recording]] = {}
    for txt in txts:
        try:
            _, entries = parse_patient_txt(txt, problems)
        except (ValueError, OSError) as err:
            problems.append(Problem(str(txt), str(err)))
            continue
        recs = []
        for location, stem in entries:
            wav = folder / f"{stem}.wav"
            if not wav.exists():
                problems.append(Problem(str(wav), "listed in the patient's .txt but missing; skipped"))
                continue
            recs.append(Recording(stem, txt.stem, location, wav))
        out[txt.stem] = recs
    return out


def recording_name_parts(stem: str) -> tuple[str, str] | None:
    """(patient id, location) that a `PID_LOC[_N]` file name gives; None for any other name."""
    match = RECORDING_NAME.match(stem)
    return (match["pid"], match["loc"]) if match else None


CROSS_CHECK_OFF = "labels come from the .txt files alone and the csv/txt cross-check is off"


def read_training_csv(path: Path, problems: list[Problem]) -> dict[str, dict[str, str]]:
    rows: dict[str, dict[str, str]] = {}
    # utf-8-sig: a spreadsheet's byte-order mark must not rename the first column;
    # strict: an unterminated quote raises instead of swallowing the rest of the file
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh, strict=True)
        if "Patient ID" not in (reader.fieldnames or []):
            columns = ", ".join(shorten(c, 40) for c in (reader.fieldnames or [])[:8]) or "none"
            problems.append(Problem(str(path), f"no 'Patient ID' column (columns: {columns}); {CROSS_CHECK_OFF}"))
            return rows
        for row in reader:
            pid = (row.get("Patient ID") or "").strip()
            if not pid:
                continue
            if pid in rows:
                problems.append(Problem(str(path), f"duplicate patient ID {pid}; first row kept"))
                continue
            rows[pid] = row
    return rows


@register_dataset("circor", CirCor)
def load_circor(data_dir: str | Path) -> CirCor:
    """Parse the dataset; every inconsistency goes into `.problems`."""
    root, folder = find_root(data_dir)
    problems: list[Problem] = []
    csv_path = root / "training_data.csv"
    try:
        csv_rows = read_training_csv(csv_path, problems) if csv_path.exists() else {}
    except (UnicodeDecodeError, csv.Error) as err:  # a damaged csv must not hide the .txt files
        problems.append(Problem(str(csv_path), f"unreadable ({err}); {CROSS_CHECK_OFF}"))
        csv_rows = {}
    if not csv_path.exists():
        problems.append(Problem(str(csv_path), "training_data.csv missing; using the .txt files alone", "warning"))
    patients: dict[str, Patient] = {}
    for txt in sorted(folder.glob("*.txt"), key=lambda p: (len(p.stem), p.stem)):
        if not PATIENT_ID.fullmatch(txt.stem):
            if txt.stem.isdigit():  # digits, but not 0-9 (e.g. `²³.txt`): looks like a patient, is not one
                problems.append(Problem(str(txt), "file name is not a patient ID (ASCII digits 0-9); skipped",
                                        "warning"))
            continue
        try:
            patient = _build_patient(txt, folder, csv_rows.get(txt.stem), problems)
        except (ValueError, OSError) as err:
            problems.append(Problem(str(txt), str(err)))
            continue
        if patient is not None:
            patients[patient.patient_id] = patient
    _drop_shared_recordings(patients, folder, problems)
    if csv_rows and patients and not set(csv_rows) & set(patients):
        problems.append(Problem(str(csv_path), f"none of its {len(csv_rows)} patient IDs has a .txt here; "
                                               f"{CROSS_CHECK_OFF}", "warning"))
    for pid in sorted(set(csv_rows) - set(patients), key=lambda s: (len(s), s)):
        if not (folder / f"{pid}.txt").exists():
            problems.append(Problem(str(csv_path), f"patient {pid} is in the csv but has no {pid}.txt", "warning"))
    listed = {r.wav.name for p in patients.values() for r in p.recordings}
    for wav in sorted(folder.glob("*.wav")):
        if wav.name not in listed and RECORDING_NAME.match(wav.stem) and wav.stem.split("_")[0] in patients:
            problems.append(Problem(str(wav), "recording not listed in its patient's .txt; ignored", "warning"))
    return CirCor(root, patients, problems)


def _drop_shared_recordings(patients: dict[str, Patient], folder: Path, problems: list[Problem]) -> None:
    """A recording listed by two patients stays with the one whose ID its name carries (else the
    first); the others lose it, and a patient left without recordings is dropped."""
    owners: dict[str, list[Patient]] = {}
    for patient in patients.values():
        for rec in patient.recordings:
            owners.setdefault(rec.recording_id, []).append(patient)
    for rid, listed in owners.items():
        if len(listed) < 2:
            continue
        keep = next((p for p in listed if rid.split("_")[0] == p.patient_id), listed[0])
        for patient in listed:
            if patient is keep:
                continue
            patient.recordings = [r for r in patient.recordings if r.recording_id != rid]
            txt = str(folder / f"{patient.patient_id}.txt")
            problems.append(Problem(txt, f"recording {rid} is also listed by patient {keep.patient_id}, who keeps "
                                         "it; skipped here"))
            if not patient.recordings:
                problems.append(Problem(txt, "patient has no usable recording; dropped"))
                del patients[patient.patient_id]


def _build_patient(txt: Path, folder: Path, csv_row: dict | None, problems: list[Problem]) -> Patient | None:
    fields, entries = parse_patient_txt(txt, problems)
    pid = txt.stem
    for key in TXT_FIELDS:
        if key not in fields:
            problems.append(Problem(str(txt), f"field '#{key}' missing", "warning"))
    for key, allowed in KNOWN_VALUES.items():
        value = fields.get(key, "nan")
        if value != "nan" and value not in allowed:
            problems.append(Problem(str(txt), f"unknown value {value!r} for '{key}'", "warning"))
    if csv_row is not None:
        for key in TXT_FIELDS:
            a, b = fields.get(key, "nan"), (csv_row.get(key) or "nan").strip()
            if a != b and not (_float(a) == _float(b)):
                problems.append(Problem(str(txt), f"'{key}' is {a!r} here but {b!r} in training_data.csv",
                                        "warning"))
    murmur = fields.get("Murmur", "nan")
    if murmur not in MURMUR_CLASSES:
        raise ValueError(f"murmur label {murmur!r} is not one of {MURMUR_CLASSES}; patient dropped")
    recordings = []
    for location, stem in entries:
        match = RECORDING_NAME.match(stem)
        wav = folder / f"{stem}.wav"
        if match is None or match["pid"] != pid:
            problems.append(Problem(str(txt), f"recording name {stem!r} does not fit PID_LOC[_N]", "warning"))
        if not wav.exists():
            problems.append(Problem(str(wav), "listed in the patient's .txt but missing; skipped"))
            continue
        hea, tsv = folder / f"{stem}.hea", folder / f"{stem}.tsv"
        for extra in (hea, tsv):
            if not extra.exists():
                problems.append(Problem(str(extra), "missing (recording kept)", "warning"))
        recordings.append(Recording(stem, pid, location, wav, hea if hea.exists() else None,
                                    tsv if tsv.exists() else None))
    if not recordings:
        problems.append(Problem(str(txt), "patient has no usable recording; dropped"))
        return None
    locations = fields.get("Murmur locations", "nan")
    return Patient(
        patient_id=pid, recordings=recordings, murmur=murmur,
        outcome=fields.get("Outcome", "nan"), campaign=fields.get("Campaign", ""),
        age=fields.get("Age", "nan"), sex=fields.get("Sex", "nan"),
        height=_float(fields.get("Height")), weight=_float(fields.get("Weight")),
        pregnant=fields.get("Pregnancy status") == "True",
        murmur_locations=tuple(locations.split("+")) if locations != "nan" else (),
        fields=fields,
    )
