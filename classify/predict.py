"""`predict`: a saved probe + its frozen encoder -> a murmur call per patient.

Inputs are patient folders in CirCor's layout (`PID.txt` + wavs; a folder of several patients
works too), folders of wavs without a `.txt`, or loose wav files at any sample rate. A
recording's location comes from its `.txt` line, else from a `NAME_LOC[_N]` file name, else it
is "unknown". Loose files are grouped by the NAME part of `NAME_LOC[_N]`; any other file is
its own patient, unless `patient_id` puts every loose file into one patient.

Each recording gets the same treatment as in training: resampled to the encoder's rate
(long recordings streamed), cut into the evaluation windows of the saved segment config,
embedded, classified per window; recording probabilities are the window mean, and the
patient's class follows the saved decision rule (the paper's: Present if any recording is
Present, else Unknown if any is Unknown, else Absent).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embed.audio import AudioError, open_resampled
from embed.datasets.circor import MURMUR_CLASSES, Problem, parse_patient_txt
from embed.segments import SegmentConfig, plan_segments

from .aggregate import patient_rule
from .model_io import load_manifest, load_model, select_model
from .probes import full_proba

LOOSE_NAME = re.compile(r"^(?P<pid>.+?)_(?P<loc>AV|PV|TV|MV|Phc)(?:_\d+)?$")
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".aiff", ".aif"}


@dataclass
class InputRecording:
    recording_id: str
    patient_id: str
    location: str
    path: Path


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
        out[folder.name] = [_loose(w, folder.name) for w in wavs]
    return out


def _loose(path: Path, patient_id: str | None = None) -> InputRecording:
    match = LOOSE_NAME.match(path.stem)
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


def _segment_config(config: dict) -> SegmentConfig:
    seg = config["segments"]
    eval_stride = seg.get("eval_stride_s")
    return SegmentConfig(seg["window_s"], seg["train_stride_s"], None if eval_stride == "window" else eval_stride)


def build_encoder(entry: dict, checkpoint: str | None = None, device: str = "auto",
                  trust_checkpoint: bool = False):
    """The encoder the probe was trained on; refuses one whose embeddings would differ."""
    from embed.encoders import create
    from embed.extract import cache_config

    saved = entry["cache_config"]
    ckpt = checkpoint or entry.get("checkpoint")
    encoder = create(saved["encoder"], ckpt, pooling=saved["pooling"], device=device,
                     trust_checkpoint=trust_checkpoint)
    segments = _segment_config(saved)
    now = cache_config(encoder, segments)
    # precision follows the device (fp16 on CUDA, fp32 on CPU); everything else must match
    differ = sorted(k for k in set(saved) | set(now) if k != "precision" and saved.get(k) != now.get(k))
    if differ:
        detail = "; ".join(f"{k}: trained {saved.get(k)!r}, now {now.get(k)!r}" for k in differ)
        hint = " (pass the checkpoint the probe was trained with: --checkpoint)" if "checkpoint_sha256" in differ else ""
        raise ValueError(f"the encoder differs from the one the probe was trained on: {detail}{hint}")
    return encoder, segments


def predict_recording(encoder, segments: SegmentConfig, estimator, rec: InputRecording,
                      batch_size: int = 32) -> dict:
    audio = open_resampled(rec.path, encoder.sample_rate)
    plan = plan_segments(audio.n_samples, encoder.sample_rate, segments)
    window = int(round(segments.window_s * encoder.sample_rate))
    windows = audio.windows(plan.starts[plan.eval_index], window)
    embs = [encoder.embed(np.stack([windows[i] for i in range(lo, min(lo + batch_size, len(windows)))]))
            for lo in range(0, len(windows), batch_size)]
    proba = full_proba(estimator, np.concatenate(embs)).mean(axis=0)
    return {
        "recording_id": rec.recording_id, "file": str(rec.path), "location": rec.location,
        "duration_s": round(audio.n_samples / encoder.sample_rate, 3), "windows": int(len(windows)),
        "class": MURMUR_CLASSES[int(proba.argmax())],
        "probabilities": {c: float(p) for c, p in zip(MURMUR_CLASSES, proba)}, "notes": audio.notes,
    }


def patient_decision(recordings: list[dict], decision: str) -> tuple[str, dict[str, float]]:
    proba = np.array([[r["probabilities"][c] for c in MURMUR_CLASSES] for r in recordings])
    mean = proba.mean(axis=0)
    if decision == "any":
        label = patient_rule(proba.argmax(axis=1))
    elif decision == "mean":
        label = int(mean.argmax())
    else:
        raise ValueError(f"saved decision rule {decision!r} is not supported by predict (any, mean)")
    return MURMUR_CLASSES[label], {c: float(p) for c, p in zip(MURMUR_CLASSES, mean)}


def predict(model_dir: str | Path, inputs: list[str | Path], out_dir: str | Path | None = None, *,
            checkpoint: str | None = None, encoder_name: str | None = None, probe: str | None = None,
            patient_id: str | None = None, device: str = "auto", trust_checkpoint: bool = False,
            batch_size: int = 32) -> tuple[list[dict], list[Problem]]:
    """One result dict per patient (also written as `out_dir/PID.json`), and the problems met."""
    manifest = load_manifest(model_dir)
    entry = select_model(manifest, encoder_name, probe)
    estimator = load_model(model_dir, entry)  # refuses a file whose hash differs from the manifest
    encoder, segments = build_encoder(entry, checkpoint, device, trust_checkpoint)
    patients, problems = gather_inputs(inputs, patient_id)
    decision = manifest.get("decision", "any")
    results = []
    for pid, recs in patients.items():
        done = []
        for rec in recs:
            try:
                done.append(predict_recording(encoder, segments, estimator, rec, batch_size))
            except AudioError as err:
                problems.append(Problem(str(rec.path), err.problem))
        for r in done:
            problems.extend(Problem(r["file"], note, "warning") for note in r["notes"])
        result = {"patient_id": pid, "class": None, "probabilities": None, "decision_rule": decision,
                  "model": {"encoder": entry["encoder"], "probe": entry["probe"], "file": entry["file"]},
                  "recordings": done,
                  "skipped": [{"file": p.path, "problem": p.message} for p in problems
                              if p.severity == "error" and any(p.path == str(r.path) for r in recs)]}
        if done:
            result["class"], result["probabilities"] = patient_decision(done, decision)
        else:
            problems.append(Problem(pid, "no usable recording; no prediction"))
        results.append(result)
        if out_dir is not None:
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            safe = re.sub(r"[^A-Za-z0-9_.-]", "_", pid)
            (out / f"{safe}.json").write_text(json.dumps(result, indent=2))
    return results, problems
