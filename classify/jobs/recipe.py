"""The `recipe` and recipe `predict` jobs: caches a recipe needs -> its feature sources -> results.

`recipe_sources` runs `embed.extract.extract` for every cache of the recipe (recordings already
cached are skipped) and builds each member's source from the caches: the one path from recordings
to recipe features, for training (a dataset's recordings, `.tsv` intervals) and for prediction
(new recordings, the saved segmenter's intervals).
"""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from embed.cache import layer_slices
from embed.datasets.inputs import InputJob
from embed.extract import extract, open_cache
from embed.frames import FrameConfig
from embed.problems import Problem
from embed.segments import SegmentConfig

from classify.evaluation.probe_protocol import summary_table
from classify.evaluation.layers import layer_columns
from classify.evaluation.metrics import Scoring
from classify.features.phases import tsv_intervals
from classify.estimators.probes import FeatureWidthError
from classify.recipes.recipe import ExtractSpec, FittedRecipe, PhaseFrames, Recipe, Source, evaluate_recipe, fit_recipe, window_block
from classify.recipes.book import get_recipe
from classify.store.recipe_io import load_recipe, save_recipe
from classify.store.segmenters import SegmenterStore
from classify.jobs.probe import load_splits, write_results
from classify.task import Task

SEGMENTER_DIR = "segmenters"  # under the cache folder


def build_encoder(spec: ExtractSpec, weights: str | Path | None, device: str = "auto"):
    """The encoder of one recipe cache, its checkpoint looked up by name in `weights`."""
    from embed.encoders import create
    checkpoint = None
    if spec.checkpoint:
        if weights is None:
            raise ValueError(f"the recipe's {spec.encoder} needs its weight file {spec.checkpoint}: pass --weights FOLDER")
        checkpoint = Path(weights) / spec.checkpoint
        if not checkpoint.is_file():
            raise FileNotFoundError(f"{checkpoint}: the recipe's {spec.encoder} weight file is not in --weights "
                                    f"{weights} (expected under its published name {spec.checkpoint})")
    return create(spec.encoder, checkpoint, device=device, precision=spec.precision, layers=spec.layers)


def recipe_sources(recipe: Recipe, recordings: list, cache_dir: str | Path, weights: str | Path | None, *,
                   intervals: dict[str, np.ndarray] | None = None, device: str = "auto", batch_size: int | None = None,
                   progress: bool = True, expect: list[dict] | None = None
                   ) -> tuple[dict[str, Source], list[dict], list[Problem]]:
    """Extract what is not cached, then every member's source. Returns (sources by member name,
    each cache's configuration, problems). `expect`: the configurations a saved recipe was trained
    on; an encoder whose embeddings would differ (other weights, options) is refused."""
    segments = SegmentConfig()
    caches, configs, problems = [], [], []
    for i, spec in enumerate(recipe.extracts):
        encoder = build_encoder(spec, weights, device)
        frames = FrameConfig() if spec.frames else None
        cache = open_cache(encoder, segments, cache_dir, frames)
        if expect is not None:
            _check_same(spec, expect[i], cache.config)
        cached = cache.recording_ids() if cache.path.exists() or cache.parts_dir.is_dir() else set()
        if any(r.recording_id not in cached for r in recordings):  # a complete cache is only read
            report = extract(encoder, recordings, cache_dir, segments, batch_size, progress=progress,
                             frames=frames, lock_timeout_s=3600)
            report.raise_if_stopped()  # a recipe fit or predicted on what a full disk let through would be wrong
            # a file every encoder fails to read is one problem, not one per cache
            problems += [p for p in report.problems if p not in problems]
        caches.append(cache)
        configs.append(cache.config)
    sources: dict[str, Source] = {}
    built: dict[tuple, Source] = {}  # members that differ only in their probe share one source
    for m in recipe.members:
        key = (m.extract, m.kind) if m.kind == "phases" else (m.extract, m.kind, m.stats, m.layers)
        if key not in built:
            built[key] = _member_source(m, caches[m.extract], intervals, progress)
        sources[m.name] = built[key]
    return sources, configs, problems


def _member_source(member, cache, intervals: dict[str, np.ndarray] | None, progress: bool) -> Source:
    if member.kind == "phases":  # segmenters fit on its frames are kept beside the cache
        return PhaseFrames(cache.read(), intervals or {}, SegmenterStore(cache.dir / SEGMENTER_DIR), cache.key,
                           progress)
    block = window_block(cache.read(), member.stats, layer_slices(cache.config))
    if member.layers not in ("all", "cv"):
        block = _layer_subset(block, member.layers, layer_slices(cache.config), len(member.stats))
    return block


def _layer_subset(block, layers: str, slices: dict[int, slice], n_stats: int):
    """Only the columns of layers `I,J` (for each window statistic)."""
    from classify.recipes.recipe import FeatureBlock
    if not len(block.recording_ids):
        return block
    width = block.X.shape[1] // n_stats
    cols = layer_columns(slices, [int(i) for i in layers.split(",")], width)
    cols = np.concatenate([cols + k * width for k in range(n_stats)])
    return FeatureBlock(block.recording_ids, block.X[:, cols])


def _check_same(spec: ExtractSpec, saved: dict, now: dict) -> None:
    # precision follows the device (fp16 on CUDA); anything else must be what the recipe was fit on
    differ = sorted(k for k in set(saved) | set(now) if k != "precision" and saved.get(k) != now.get(k))
    if differ:
        detail = "; ".join(f"{k}: trained {saved.get(k)!r}, now {now.get(k)!r}" for k in differ)
        raise ValueError(f"the recipe's {spec.encoder} differs from the one it was trained with: {detail}")


def run_recipe(name: str, dataset, cache_dir: str | Path, weights: str | Path | None, out: str | Path, *,
               splits: str | None = None, seeds: int = 5, seed: int = 0, save_model: str | Path | None = None,
               without: tuple[str, ...] = (), overrides: dict | None = None, device: str = "auto",
               progress: bool = True) -> pd.DataFrame:
    """`pipeline.py recipe NAME`: extract, evaluate on every split x seed, write scores.csv and
    predictions.csv; with `save_model`, fit once more on every labelled group and save that.
    `without` (member names) and `overrides` (recipe fields) make the ablations."""
    recipe = get_recipe(name)
    if without:
        recipe = recipe.without(*without)
    if overrides:
        recipe = recipe.with_fields(**overrides)
    if without or overrides:  # its own row name, so a report over several runs keeps them apart
        changes = [f"-{m}" for m in without] + [f"{k}={v}" for k, v in (overrides or {}).items()]
        recipe = dataclasses.replace(recipe, name=f"{name} {' '.join(changes)}")
    task = Task.from_dataset(dataset, recipe.targets if recipe.targets in dataset.label_schemes else "patient")
    recordings = dataset.recordings()
    annotation_problems: list[Problem] = []
    intervals = tsv_intervals(recordings, annotation_problems)
    sources, configs, problems = recipe_sources(recipe, recordings, cache_dir, weights,
                                                intervals=intervals, device=device, progress=progress)
    for p in annotation_problems + [p for p in problems if p.severity == "error"]:
        print(f"  {p}")
    split_sets = load_splits(dataset, splits or dataset.split_schemes[0], seed)
    results = evaluate_recipe(task, recipe, sources, split_sets, seeds=seeds, first_seed=seed, progress=progress)
    scores, _ = write_results(results, out, task.classes)
    if save_model:
        fitted = fit_recipe(task, recipe, sources, task.group_ids, seed)
        save_recipe(fitted, save_model, task.classes, dataset.name, configs,
                    trained_on=f"every labelled group of {dataset.name} ({len(task.group_ids)})",
                    locations=task.locations)
    return summary_table(scores)


def predict_recipe(model_dir: str | Path, manifest: dict, patients: dict[str, list], weights: str | Path | None,
                   device: str = "auto", batch_size: int = 32) -> tuple[dict[str, dict], list[Problem]]:
    """Patient id -> {"class", "probabilities", "recordings"} for new patients (`predict.gather_inputs`),
    through the recipe's own feature path; phases come from the saved segmenter's intervals."""
    from classify.recipes.recipe import decide
    fitted, header = load_recipe(model_dir, manifest)
    classes = header["classes"]
    if fitted.segmenter is None and any(m.kind == "phases" for m in fitted.recipe.members):
        raise ValueError(f"{model_dir}: this recipe pools phases from .tsv files only; new recordings need one "
                         "saved with test_intervals='segmenter'")
    flat = [rec for recs in patients.values() for rec in recs]
    jobs = [InputJob(f"r{i}", rec.path) for i, rec in enumerate(flat)]
    job_of = {id(rec): job.recording_id for rec, job in zip(flat, jobs)}
    with tempfile.TemporaryDirectory(prefix="heartprobe-recipe-") as tmp:
        sources, _, problems = recipe_sources(fitted.recipe, jobs, tmp, weights, device=device,
                                              batch_size=batch_size, progress=False,
                                              expect=header["cache_configs"])
    group_ids = list(patients)
    task = Task(Scoring(tuple(classes), ("uar",)), group_ids, {},
                {pid: [job_of[id(r)] for r in recs] for pid, recs in patients.items()}, {},
                locations=tuple(header.get("locations", ())),
                recording_location={job_of[id(r)]: r.location for r in flat})
    usable = [g for g in group_ids if any(_has_features(sources, r) for r in task.recordings_of[g])]
    out: dict[str, dict] = {}
    if usable:
        try:
            calls, proba, members = fitted.predict(task, sources, usable)
        except FeatureWidthError as err:  # features of another shape than the saved recipe's
            raise ValueError(f"{Path(model_dir) / manifest['models'][0]['file']}: {err}; the recordings' "
                             "features do not fit this model") from None
        for gi, pid in enumerate(usable):
            recs = []
            for rec in patients[pid]:
                rid = job_of[id(rec)]
                per_member = {m.name: {c: float(v) for c, v in zip(classes, m.proba[list(m.recording_ids).index(rid)])}
                              for m in members if rid in set(m.recording_ids)}
                recs.append({"recording_id": rec.recording_id, "file": str(rec.path), "location": rec.location,
                             "members": per_member})
            out[pid] = {"class": classes[int(calls[gi])],
                        "probabilities": {c: float(v) for c, v in zip(classes, proba[gi])}, "recordings": recs}
    for pid in group_ids:
        if pid not in out:
            problems.append(Problem(pid, "no usable recording; no prediction"))
    return out, problems


def _has_features(sources: dict[str, Source], recording_id: str) -> bool:
    return any(recording_id in (s.frames if isinstance(s, PhaseFrames) else set(s.recording_ids))
               for s in sources.values())
