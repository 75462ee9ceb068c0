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
from pathlib import Path

import numpy as np

from embed.atomic import write_text_atomic
from embed.datasets.inputs import InputJob, InputRecording, gather_inputs
from embed.problems import Problem
from embed.segments import SegmentConfig

from classify.evaluation.rules import GroupTable
from classify.store.probe_io import load_manifest, load_model, select_model
from classify.estimators.probes import FeatureWidthError, full_proba

def _segment_config(config: dict) -> SegmentConfig:
    seg = config["segments"]
    eval_stride = seg.get("eval_stride_s")
    return SegmentConfig(seg["window_s"], seg["train_stride_s"], None if eval_stride == "window" else eval_stride,
                         align=seg.get("align", "fixed"))


def build_encoder(entry: dict, checkpoint: str | None = None, device: str = "auto",
                  trust_checkpoint: bool = False):
    """The encoder the probe was trained on; refuses one whose embeddings would differ."""
    from embed.encoders import create
    from embed.extract import cache_config

    saved = entry["cache_config"]
    ckpt = checkpoint or entry.get("checkpoint")
    encoder = create(saved["encoder"], ckpt, pooling=saved["pooling"], device=device,
                     trust_checkpoint=trust_checkpoint, layers=saved.get("layers"))
    segments = _segment_config(saved)
    now = cache_config(encoder, segments)
    # precision follows the device (fp16 on CUDA; on a CPU bf16 for bf16-safe encoders where native,
    # else fp32); everything else must match
    differ = sorted(k for k in set(saved) | set(now) if k != "precision" and saved.get(k) != now.get(k))
    if differ:
        detail = "; ".join(f"{k}: trained {saved.get(k)!r}, now {now.get(k)!r}" for k in differ)
        hint = " (pass the checkpoint the probe was trained with: --checkpoint)" if "checkpoint_sha256" in differ else ""
        raise ValueError(f"the encoder differs from the one the probe was trained on: {detail}{hint}")
    return encoder, segments


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

    jobs = [InputJob(f"r{i}", rec.path) for i, rec in enumerate(recordings)]
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
    and the problems met. A folder saved by `recipe --save-model` runs the whole recipe; its
    encoders' weight files are looked up by name in `weights`."""
    manifest = load_manifest(model_dir)
    if manifest.get("kind") == "recipe":
        return _predict_with_recipe(model_dir, manifest, inputs, out_dir, weights, patient_id, device, batch_size)
    entry = select_model(manifest, encoder_name, probe)
    classes = manifest["classes"]
    # refuses a file whose hash or header differs from the manifest; reads arrays only
    estimator, rule, _ = load_model(model_dir, entry, classes)
    encoder, segments = build_encoder(entry, checkpoint, device, trust_checkpoint)
    patients, problems = gather_inputs(inputs, patient_id)
    flat = [rec for recs in patients.values() for rec in recs]
    embedded, extract_problems = embed_inputs(encoder, segments, flat, batch_size)
    problems += extract_problems
    by_file: dict[str, list[Problem]] = {}
    for p in extract_problems:
        by_file.setdefault(p.path, []).append(p)
    cached_of = {id(rec): cached for rec, cached in zip(flat, embedded)}
    names = output_names(list(patients))
    results = []
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
                "notes": [q.message for q in by_file.get(str(rec.path), []) if q.severity == "warning"]})
        result = {"patient_id": pid, "class": None, "probabilities": None, "decision_rule": rule.to_dict(),
                  "model": {"encoder": entry["encoder"], "probe": entry["probe"], "file": entry["file"]},
                  "recordings": done,
                  "skipped": [{"file": q.path, "problem": q.message} for rec in recs
                              for q in by_file.get(str(rec.path), []) if q.severity == "error"]}
        if done:
            table = GroupTable.from_recordings(np.array(proba), np.full(len(proba), 0))
            result["class"] = classes[int(rule.predict(table)[0])]
            result["probabilities"] = {c: float(v) for c, v in zip(classes, table.mean[0])}
        else:
            problems.append(Problem(pid, "no usable recording; no prediction"))
        results.append(result)
        _write_result(out_dir, names[pid], result)
    return results, problems


def _write_result(out_dir: str | Path | None, name: str, result: dict) -> None:
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / name, json.dumps(result, indent=2))


def _predict_with_recipe(model_dir, manifest, inputs, out_dir, weights, patient_id, device, batch_size
                         ) -> tuple[list[dict], list[Problem]]:
    from classify.jobs.recipe import predict_recipe
    patients, problems = gather_inputs(inputs, patient_id)
    calls, recipe_problems = predict_recipe(model_dir, manifest, patients, weights, device, batch_size)
    problems += recipe_problems
    names = output_names(list(patients))
    entry = manifest["models"][0]
    results = []
    for pid, recs in patients.items():
        call = calls.get(pid)
        result = {"patient_id": pid, "class": call and call["class"],
                  "probabilities": call and call["probabilities"], "decision_rule": entry["rule"],
                  "model": {"encoder": entry["encoder"], "probe": entry["probe"], "file": entry["file"]},
                  "recordings": call["recordings"] if call else [],
                  "skipped": [{"file": q.path, "problem": q.message} for q in recipe_problems
                              if q.severity == "error" and q.path in {str(r.path) for r in recs}]}
        results.append(result)
        _write_result(out_dir, names[pid], result)
    return results, problems
