"""New recordings to predict on, from the paths a user gives: patient folders in the dataset's
layout (CirCor: `PID.txt` + wavs; a folder of several patients works too), plain folders of audio
files, or loose audio files at any sample rate.

A plain folder is one patient named after it. A loose file's patient and location come from its
name where the dataset's naming gives them (CirCor: `PID_LOC[_N]`), else it is its own patient at
location "unknown"; `patient_id` puts every input into one patient. Only `circor.py` knows the
layout and the naming: this module asks it (`read_patient_folder`, `recording_name_parts`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..problems import Problem
from .circor import Recording, read_patient_folder, recording_name_parts

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".aiff", ".aif"}


@dataclass
class InputRecording:
    recording_id: str
    patient_id: str
    location: str
    path: Path


@dataclass
class InputJob:
    """What `extract` needs: an id unique within this run (names may repeat across inputs) and a file."""
    recording_id: str
    wav: Path
    expected_rate: int = Recording.expected_rate  # input comes in CirCor's layout: another rate is noted


def gather_inputs(inputs: list[str | Path], patient_id: str | None = None
                  ) -> tuple[dict[str, list[InputRecording]], list[Problem]]:
    """Patient ID -> recordings, from folders and files; problems for what could not be used."""
    problems: list[Problem] = []
    patients: dict[str, list[InputRecording]] = {}
    for item in map(Path, inputs):
        if item.is_dir():
            for pid, recs in _from_folder(item, problems).items():
                patients.setdefault(patient_id or pid, []).extend(recs)
        elif item.is_file():
            rec = _loose(item, patient_id)
            patients.setdefault(rec.patient_id, []).append(rec)
        else:
            problems.append(Problem(str(item), "no such file or folder"))
    return patients, problems


def _from_folder(folder: Path, problems: list[Problem]) -> dict[str, list[InputRecording]]:
    listed = read_patient_folder(folder, problems)
    if listed is not None:
        return {pid: [InputRecording(r.recording_id, r.patient_id, r.location, r.wav) for r in recs]
                for pid, recs in listed.items()}
    # a plain folder of recordings: one patient named after the folder
    wavs = sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
    if not wavs:
        problems.append(Problem(str(folder), f"no recordings ({', '.join(sorted(AUDIO_SUFFIXES))}) "
                                             "and no patient .txt in this folder"))
        return {}
    return {folder.name: [_loose(w, folder.name) for w in wavs]}


def _loose(path: Path, patient_id: str | None = None) -> InputRecording:
    parts = recording_name_parts(path.stem)
    pid = patient_id or (parts[0] if parts else path.stem)
    return InputRecording(path.stem, pid, parts[1] if parts else "unknown", path)
