"""The `recipe` and recipe `predict` jobs: caches a recipe needs -> its feature sources -> results.

`recipe_sources` runs `embed.extract.extract` for every cache of the recipe (recordings already
cached are skipped) and builds each member's source from the caches: the one path from recordings
to recipe features, for training (a dataset's recordings, `.tsv` intervals) and for prediction
(new recordings, the saved segmenter's intervals).
"""
from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from embed.datasets.inputs import InputJob
from embed.extract import extract, open_cache
from embed.frames import FrameConfig
from embed.problems import Problem
from embed.segments import SegmentConfig

from classify.evaluation.results import summary_table
from classify.evaluation.metrics import Scoring
from classify.features.phases import tsv_intervals
from classify.estimators.base import FeatureWidthError
from classify.recipes.fit import evaluate_recipe, fit_recipe
from classify.recipes.members import kind_of
from classify.recipes.recipe import SEGMENTATION_SOURCE, ExtractSpec, Member, Recipe
from classify.recipes.sources import Source
from classify.recipes.book import get_recipe, recipe_from_specs
from classify.store.models import load_recipe, save_recipe
from classify.jobs.encoders import recipe_encoder, refuse_changed
from classify.jobs.probe import load_splits, write_results
from classify.task import Task

def recipe_sources(recipe: Recipe, recordings: list, cache_dir: str | Path, weights: str | Path | None, *,
                   intervals: dict[str, np.ndarray] | None = None, device: str = "auto", batch_size: int | None = None,
                   progress: bool = True, expect: list[dict] | None = None
                   ) -> tuple[dict[str, Source], list[dict], list[Problem]]:
    """Extract what is not cached, then every member's source. Returns (sources by member name,
    each cache's configuration, problems). `expect`: the configurations a saved recipe was trained
    on; an encoder whose embeddings would differ (other weights, options) is refused."""
    caches, configs, problems = [], [], []
    for i, spec in enumerate(recipe.extracts):
        cache, new = ensure_cache(spec, recordings, cache_dir, weights, device=device, batch_size=batch_size,
                                  progress=progress, expect=None if expect is None else expect[i])
        # a file every encoder fails to read is one problem, not one per cache
        problems += [p for p in new if p not in problems]
        caches.append(cache)
        configs.append(cache.config)
    sources: dict[str, Source] = {}
    built: dict[tuple, Source] = {}  # members that differ only in their probe share one source
    for m in recipe.members:
        key = kind_of(m).share_key(m)
        if key not in built:
            built[key] = kind_of(m).source(m, caches[m.extract], intervals, progress)
        sources[m.name] = built[key]
    if recipe.segmentation is not None:  # the frames it segments, shared with a phases member of that cache
        spec = Member(SEGMENTATION_SOURCE, recipe.segmentation, kind="phases")
        key = kind_of(spec).share_key(spec)
        if key not in built:
            built[key] = kind_of(spec).source(spec, caches[spec.extract], intervals, progress)
        sources[SEGMENTATION_SOURCE] = built[key]
    return sources, configs, problems


def ensure_cache(spec: ExtractSpec, recordings: list, cache_dir: str | Path, weights: str | Path | None, *,
                 device: str = "auto", batch_size: int | None = None, progress: bool = True,
                 expect: dict | None = None):
    """The cache of `spec`, with every recording of `recordings` extracted into it that was not
    yet (a complete cache is only read); returns (cache, the extraction's problems). `expect`: the
    configuration a saved model was trained on; an encoder that would embed otherwise is refused."""
    encoder = recipe_encoder(spec, weights, device)
    frames = FrameConfig() if spec.frames else None
    segments = SegmentConfig()
    cache = open_cache(encoder, segments, cache_dir, frames)
    if expect is not None:
        refuse_changed(expect, cache.config, f"the recipe's {spec.encoder} differs from the one it was trained with")
    cached = cache.recording_ids() if cache.path.exists() or cache.parts_dir.is_dir() else set()
    if not any(r.recording_id not in cached for r in recordings):
        return cache, []
    report = extract(encoder, recordings, cache_dir, segments, batch_size, progress=progress,
                     frames=frames, lock_timeout_s=3600)
    report.raise_if_stopped()  # a model fit or predicted on what a full disk let through would be wrong
    return cache, list(report.problems)


def resolve_recipe(name: str, members: list[str] | None = None, without: tuple[str, ...] = (),
                   overrides: dict | None = None) -> Recipe:
    """The recipe `pipeline.py recipe NAME` runs: a committed recipe, a `.toml` file, or with
    `members` a recipe of those `--member` specs named NAME; `without` (member names) and
    `overrides` (recipe fields) make the ablations, named after their changes."""
    recipe = recipe_from_specs(members, name) if members else get_recipe(name)
    if without:
        recipe = recipe.without(*without)
    if overrides:
        recipe = recipe.with_fields(**overrides)
    if without or overrides:  # its own row name, so a report over several runs keeps them apart
        changes = [f"-{m}" for m in without] + [f"{k}={v}" for k, v in (overrides or {}).items()]
        recipe = dataclasses.replace(recipe, name=f"{name} {' '.join(changes)}")
    return recipe


def recipe_inputs(recipe: Recipe, dataset, cache_dir: str | Path, weights: str | Path | None,
                  device: str = "auto", progress: bool = True) -> tuple[Task, dict, dict, list[Problem]]:
    """What evaluating `recipe` on `dataset` needs: the task of its targets, its feature sources
    (caches extracted where missing, phases over the `.tsv` intervals), the caches' configurations,
    and the problems to show (unusable annotations, recordings that failed)."""
    task = Task.from_dataset(dataset, recipe.targets if recipe.targets in dataset.label_schemes else "patient")
    recordings = dataset.recordings()
    annotation_problems: list[Problem] = []
    intervals = tsv_intervals(recordings, annotation_problems)
    sources, configs, problems = recipe_sources(recipe, recordings, cache_dir, weights,
                                                intervals=intervals, device=device, progress=progress)
    return task, sources, configs, annotation_problems + [p for p in problems if p.severity == "error"]


def recipe_job(name: str, dataset_name: str, data: str | Path, cache_dir: str | Path, weights: str | Path | None,
               out: str | Path, *, members: list[str] | None = None, without: tuple[str, ...] = (),
               overrides: dict | None = None, splits: str | None = None, seeds: int = 5, seed: int = 0,
               save_model: str | Path | None = None, device: str = "auto", say: Callable[[str], None] = print) -> None:
    """`pipeline.py recipe`: `resolve_recipe`, then `run_recipe` into `out`; the table and what was
    written go to `say`. A misspelt recipe, member or field is refused before OUT is touched."""
    from embed.datasets import load_dataset

    from classify.jobs.outputs import OutputFolder
    started = time.time()
    recipe = resolve_recipe(name, members, without, overrides)
    if save_model and recipe.selection == "val":
        raise ValueError(f"recipe {recipe.name}: a selection='val' recipe chooses on each split's val patients, "
                         "so there is no one fit on every patient to save; save it with `probe --save-model`")
    with OutputFolder(out):
        dataset = load_dataset(dataset_name, data)
        table = run_recipe(recipe, dataset, cache_dir, weights, out, splits=splits, seeds=seeds, seed=seed,
                           save_model=save_model, device=device)
    say(table.to_string(index=False))
    say(f"\nwrote {Path(out) / 'scores.csv'} and {Path(out) / 'predictions.csv'} in {time.time() - started:.0f} s"
        + (f"; saved the recipe to {save_model}" if save_model else ""))


def run_recipe(recipe: Recipe, dataset, cache_dir: str | Path, weights: str | Path | None, out: str | Path, *,
               splits: str | None = None, seeds: int = 5, seed: int = 0, save_model: str | Path | None = None,
               device: str = "auto", progress: bool = True) -> pd.DataFrame:
    """`pipeline.py recipe`: extract, evaluate on every split x seed, write scores.csv and
    predictions.csv; with `save_model`, fit once more on every labelled group and save that."""
    task, sources, configs, problems = recipe_inputs(recipe, dataset, cache_dir, weights, device, progress)
    for p in problems:
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
    """Patient id -> {"class", "probabilities", "recordings"} for new patients (`embed.datasets.inputs.gather_inputs`),
    through the recipe's own feature path; phases come from the saved segmenter's intervals."""
    fitted, header = load_recipe(model_dir, manifest)
    classes = header["classes"]
    if fitted.segmenter is None and any(kind_of(m).segmented for m in fitted.recipe.members):
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
    have = set().union(*(kind_of(m).recording_ids(sources[m.name]) for m in fitted.recipe.members))
    usable = [g for g in group_ids if any(r in have for r in task.recordings_of[g])]
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
    return out, problems
