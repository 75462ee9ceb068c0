"""`predict`: a saved probe + its frozen encoder -> a call per patient (group).

Inputs are patient folders in CirCor's layout (`PID.txt` + wavs; a folder of several patients
works too), folders of wavs without a `.txt`, or loose wav files at any sample rate. A
recording's location comes from its `.txt` line, else from a `NAME_LOC[_N]` file name, else it
is "unknown". Loose files are grouped by the NAME part of `NAME_LOC[_N]`; any other file is
its own patient, unless `patient_id` puts every loose file into one patient.

Recordings go through the same path as in training: `embed.extract.extract` (decoding,
resampling, window planning, batching) into a temporary cache, then the saved probe scores the
evaluation windows, recording probabilities are the window means, and the saved (fitted)
decision rule makes the patient's call.
"""
from __future__ import annotations

import hashlib
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embed.atomic import write_text_atomic
from embed.datasets.circor import RECORDING_NAME, Recording, parse_patient_txt
from embed.problems import Problem
from embed.segments import SegmentConfig

from classify.evaluation.rules import GroupTable
from classify.jobs.encoders import probe_encoder
from classify.store.models import load_manifest, load_model, select_model
from classify.estimators.base import FeatureWidthError, full_proba

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".aiff", ".aif"}


@dataclass
class InputRecording:
    recording_id: str
    patient_id: str
    location: str
    path: Path


@dataclass
class _Job:
    """What `extract` needs: an id unique within this run (names may repeat across inputs) and a file."""
    recording_id: str
    wav: Path
    expected_rate: int = Recording.expected_rate  # input comes in CirCor's layout: another rate is noted


def _from_folder(folder: Path, problems: list[Problem]) -> dict[str, list[InputRecording]]:
    out: dict[str, list[InputRecording]] = {}
    txts = sorted(t for t in folder.glob("*.txt") if t.stem.isdigit())
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
            recs.append(InputRecording(stem, txt.stem, location, wav))
        out[txt.stem] = recs
    if not txts:  # a plain folder of recordings: one patient named after the folder
        wavs = sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
        if not wavs:
            problems.append(Problem(str(folder), f"no recordings ({', '.join(sorted(AUDIO_SUFFIXES))}) "
                                                 "and no patient .txt in this folder"))
            return out
        out[folder.name] = [_loose(w, folder.name) for w in wavs]
    return out


def _loose(path: Path, patient_id: str | None = None) -> InputRecording:
    match = RECORDING_NAME.match(path.stem)
    pid = patient_id or (match["pid"] if match else path.stem)
    return InputRecording(path.stem, pid, match["loc"] if match else "unknown", path)


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


def eval_only(segments: SegmentConfig) -> SegmentConfig:
    """The same evaluation windows with no extra training windows (the training stride is set to the
    evaluation one, so the union of both plans is the evaluation plan)."""
    stride = segments.window_s if segments.eval_stride_s is None else segments.eval_stride_s
    return SegmentConfig(segments.window_s, stride, segments.eval_stride_s, align=segments.align)


def embed_inputs(encoder, segments: SegmentConfig, recordings: list[InputRecording], batch_size: int = 32,
                 progress: bool = False):
    """Evaluation-window embeddings per input recording (by position) through `extract`, and the
    problems it met (files named)."""
    from embed.extract import extract
    from embed.cache import EmbeddingCache
    from embed.extract import cache_config

    jobs = [_Job(f"r{i}", rec.path) for i, rec in enumerate(recordings)]
    plan = eval_only(segments)
    with tempfile.TemporaryDirectory(prefix="heartprobe-predict-") as tmp:
        report = extract(encoder, jobs, tmp, plan, batch_size, progress=progress)
        report.raise_if_stopped()  # else the recordings it did not reach would read as unusable
        cached = EmbeddingCache(tmp, encoder.name, cache_config(encoder, plan)).read()
    return [cached.get(job.recording_id) for job in jobs], report.problems


def output_names(patient_ids: list[str]) -> dict[str, str]:
    """A distinct, safe file name per patient id: the id itself when it is safe, else its safe form
    plus a short hash of the id, so ids that sanitise alike (`a b`, `a_b`) never share a file. A
    name never starts with `-` (read as an option by shell tools) or `.` (hidden)."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    for pid in patient_ids:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", pid).lstrip("-.").rstrip(".") or "patient"
        name = safe
        if safe != pid or name.lower() in taken:
            name = f"{safe}-{hashlib.sha256(pid.encode()).hexdigest()[:10]}"
        names[pid] = name + ".json"
        taken.add(name.lower())
    return names


def predict(model_dir: str | Path, inputs: list[str | Path], out_dir: str | Path | None = None, *,
            checkpoint: str | None = None, encoder_name: str | None = None, probe: str | None = None,
            patient_id: str | None = None, device: str = "auto", trust_checkpoint: bool = False,
            batch_size: int = 32, weights: str | Path | None = None) -> tuple[list[dict], list[Problem]]:
    """One result dict per patient (also written as `out_dir/NAME.json`, NAME from `output_names`),
    and the problems met: the one predict path for both kinds of model folder. A probe folder's
    saved probe scores the evaluation windows of its encoder (`--checkpoint`); a folder saved by
    `recipe --save-model` runs the whole recipe, its encoders' weight files looked up by name in
    `weights`."""
    manifest = load_manifest(model_dir)
    patients, problems = gather_inputs(inputs, patient_id)
    if manifest["kind"] == "recipe":
        from classify.jobs.recipe import predict_recipe
        entry = manifest["models"][0]
        calls, more = predict_recipe(model_dir, manifest, patients, weights, device, batch_size)
    else:
        entry = select_model(manifest, encoder_name, probe)
        calls, more = _predict_probe(model_dir, manifest, entry, patients, checkpoint, device, trust_checkpoint,
                                     batch_size)
    problems += more
    by_file: dict[str, list[Problem]] = {}
    for q in more:
        by_file.setdefault(q.path, []).append(q)
    names = output_names(list(patients))
    results = []
    for pid, recs in patients.items():
        call = calls.get(pid)
        if call is None:
            problems.append(Problem(pid, "no usable recording; no prediction"))
        result = {"patient_id": pid, "class": call and call["class"], "probabilities": call and call["probabilities"],
                  "decision_rule": entry["rule"],
                  "model": {"encoder": entry["encoder"], "probe": entry["probe"], "file": entry["file"]},
                  "recordings": call["recordings"] if call else [],
                  "skipped": [{"file": q.path, "problem": q.message} for rec in recs
                              for q in by_file.get(str(rec.path), []) if q.severity == "error"]}
        results.append(result)
        _write_result(out_dir, names[pid], result)
    return results, problems


def _predict_probe(model_dir, manifest: dict, entry: dict, patients: dict[str, list[InputRecording]],
                   checkpoint, device, trust_checkpoint, batch_size) -> tuple[dict[str, dict], list[Problem]]:
    """Patient id -> {"class", "probabilities", "recordings"} from a saved probe: window
    probabilities averaged per recording, the saved (fitted) decision rule over the recordings."""
    classes = manifest["classes"]
    # refuses a file whose hash or header differs from the manifest; reads arrays only
    estimator, rule, _ = load_model(model_dir, entry, classes)
    encoder, segments = probe_encoder(entry, checkpoint, device, trust_checkpoint)
    flat = [rec for recs in patients.values() for rec in recs]
    embedded, problems = embed_inputs(encoder, segments, flat, batch_size)
    notes: dict[str, list[str]] = {}
    for q in problems:
        if q.severity == "warning":
            notes.setdefault(q.path, []).append(q.message)
    cached_of = {id(rec): cached for rec, cached in zip(flat, embedded)}
    calls = {}
    for pid, recs in patients.items():
        done, proba = [], []
        for rec in recs:
            cached = cached_of[id(rec)]
            if cached is None:
                continue
            try:
                p = full_proba(estimator, cached.eval(), len(classes)).mean(axis=0)
            except FeatureWidthError as err:
                raise ValueError(f"{Path(model_dir) / entry['file']}: {err}; the encoder's embeddings do not "
                                 "fit this model") from None
            proba.append(p)
            done.append({
                "recording_id": rec.recording_id, "file": str(rec.path), "location": rec.location,
                "windows": int(len(cached.eval_index)), "class": classes[int(p.argmax())],
                "probabilities": {c: float(v) for c, v in zip(classes, p)},
                "notes": notes.get(str(rec.path), [])})
        if done:
            table = GroupTable.from_recordings(np.array(proba), np.full(len(proba), 0))
            calls[pid] = {"class": classes[int(rule.predict(table)[0])],
                          "probabilities": {c: float(v) for c, v in zip(classes, table.mean[0])}, "recordings": done}
    return calls, problems


def _write_result(out_dir: str | Path | None, name: str, result: dict) -> None:
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / name, json.dumps(result, indent=2))


def predict_summary(results: list[dict], out: Path, shown: int = 10) -> str:
    """The files `predict` wrote, by their real names (those of `output_names`), or that it wrote none."""
    if not results:
        return f"no patient found in the input; nothing written to {out}"
    names = output_names([r["patient_id"] for r in results])
    written = [path for path in (out / names[r["patient_id"]] for r in results) if path.is_file()]
    if not written:
        return f"nothing written to {out}"
    no_call = sum(r["class"] is None for r in results)
    listing = "\n".join(f"  {path}" for path in written[:shown])
    more = f"\n  ... {len(written) - shown} more in {out}" if len(written) > shown else ""
    return (f"wrote {len(written)} patient file{'s' * (len(written) != 1)}"
            f"{f' ({no_call} without a call: no usable recording)' if no_call else ''}:\n{listing}{more}")
