"""`predict`: a saved model folder (a probe or a recipe) + new recordings -> a call per patient.

The one predict path for both kinds of folder of the model store. Inputs are gathered by
`embed.datasets.inputs` (patient folders in a dataset's layout, plain folders of recordings, loose
files). Recordings go through the same path as in training, `embed.extract.extract` (decoding,
resampling, window planning, batching) into a temporary cache; then a probe scores the
evaluation windows, recording probabilities are the window means and its saved (fitted) decision
rule makes the patient's call, or a recipe runs its members, patient model and rule
(`classify.jobs.recipe.predict_recipe`). Both give the same result per patient.
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from embed.atomic import write_text_atomic
from embed.datasets.inputs import InputJob, InputRecording, gather_inputs
from embed.problems import Problem
from embed.segments import SegmentConfig

from classify.evaluation.rules import GroupTable
from classify.jobs.encoders import probe_encoder
from classify.store.models import load_manifest, load_model, select_model
from classify.estimators.base import FeatureWidthError, full_proba


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


def predict_job(model: str | Path, inputs: list[str], out: str | Path, *, strict: bool = False,
                say: Callable[[str], None] = print, **options) -> int:
    """`pipeline.py predict`: `predict` (`options` are its keywords), each patient's result as JSON
    to `say`, the problems and a summary to stderr; 1 when a patient got no call, a recording
    failed, or (`strict`) anything was wrong."""
    from embed.problems import format_table, problem_rows
    results, problems = predict(model, inputs, out, **options)
    for result in results:
        say(json.dumps(result, indent=2))
    if problems:
        print("\n" + format_table(problem_rows(problems, "predict")), file=sys.stderr)
    print(predict_summary(results, Path(out)), file=sys.stderr)
    failed = any(r["class"] is None for r in results) or any(p.severity == "error" for p in problems)
    return 1 if failed or (strict and problems) else 0
