"""The `probe` job: caches + splits -> scores.csv, predictions.csv and a printed table."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal

import pandas as pd

from embed.datasets.splits import read_splits

from classify.evaluation.rules import DecisionName
from classify.evaluation.backend import Backend
from classify.evaluation.probe_protocol import variant_name
from classify.evaluation.results import SplitResult, proba_columns, summary_table
from classify.features.caches import find_cache
from classify.evaluation.runs import split_runs
from classify.evaluation.layers import layer_slices, resolve_probe_layers
from classify.recipes.fit import evaluate
from classify.recipes.members import MEMBER_KINDS
from classify.recipes.recipe import ExtractSpec, Member, Recipe
from classify.recipes.sources import WindowEmbeddings
from classify.jobs.outputs import write_csv_atomic
from classify.estimators.probes import PROBES
from classify.task import Task

if TYPE_CHECKING:
    from embed.ray_backend import RayOptions


def load_splits(dataset, spec: str, seed: int = 0, folds: int = 5) -> dict[str, dict[str, str]]:
    """`spec`: one of the dataset's split schemes, or a CSV written by `pipeline.py splits`."""
    if spec in dataset.split_schemes:
        return dataset.splits(spec, seed, folds)
    if not Path(spec).is_file():
        raise ValueError(f"--splits {spec!r}: neither a split scheme of {dataset.name} "
                         f"({', '.join(dataset.split_schemes)}) nor a CSV file")
    splits = read_splits(spec)
    missing = set(dataset.group_ids()) - set(next(iter(splits.values()), {}))
    if missing:
        raise ValueError(f"{spec}: {len(missing)} patients of the data have no split "
                         f"(e.g. {sorted(missing)[:3]}); regenerate it with `pipeline.py splits`")
    return splits


def check_probe_inputs(encoders: list[str], probes: list[str], cache_dir: str | Path,
                       layers: str | None = None) -> None:
    """What `run_probe` needs from its arguments and the cache folder, checked before a run starts,
    so that a misspelt name or a missing cache is refused before OUT is touched: known probes, a
    cache per encoder, and --layers that each cache holds."""
    unknown = [p for p in probes if p not in PROBES]
    if unknown:
        raise ValueError(f"unknown probe {', '.join(map(repr, unknown))}; available: {', '.join(PROBES)}")
    for spec in encoders:
        config = find_cache(cache_dir, spec).config
        if layers is not None:
            resolve_probe_layers(layers, layer_slices(config), config.get("n_layers"))


def write_results(results: list[SplitResult], out: str | Path, classes: tuple[str, ...]
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    scores = pd.DataFrame([r.score_row() for r in results])
    preds = []
    for r in results:
        frame = r.predictions.copy()
        frame.insert(0, "probe", r.probe)
        frame.insert(0, "encoder", r.encoder)
        preds.append(frame)
    predictions = pd.concat(preds, ignore_index=True)
    columns = ["encoder", "probe", "patient_id", "split", "label", "prediction", *proba_columns(classes)]
    predictions = predictions[columns]
    write_csv_atomic(scores, out / "scores.csv", index=False, float_format="%.4f")
    write_csv_atomic(predictions, out / "predictions.csv", index=False, float_format="%.4f")
    return scores, predictions


def member_layers(choice) -> str:
    """A segments member's `layers` for a resolved `--layers` choice (None: the whole cached vector)."""
    if choice is None:
        return "all"
    return choice if isinstance(choice, str) else ",".join(map(str, choice))


def read_sources(task: Task, encoders: list[str], cache_dir: str | Path, layers: str | None
                 ) -> tuple[dict[str, WindowEmbeddings], dict[str, str]]:
    """Each encoder's cached windows as a segments member's source (only the `layers` asked for),
    and each encoder's member `layers` (its cache's `resolve_probe_layers`: "all" without `layers`)."""
    sources, chosen = {}, {}
    wanted = task.all_recordings()
    kind = MEMBER_KINDS["segments"]
    for i, spec in enumerate(encoders):
        cache = find_cache(cache_dir, spec)
        chosen[spec] = "all" if layers is None else member_layers(
            resolve_probe_layers(layers, layer_slices(cache.config), cache.config.get("n_layers")))
        sources[spec] = kind.source(Member(spec, i, kind="segments", layers=chosen[spec]), cache, None, False)
        missing = sum(r not in sources[spec].recordings for r in wanted)
        if missing:
            print(f"note: {missing} recordings have no {spec} embeddings (failed or not extracted); "
                  "their patients are scored on the rest")
    return sources, chosen


def probe_recipes(encoders: list[str], probe: str, targets: str, decision: DecisionName, layers: str | None,
                  chosen_layers: dict[str, str] | None = None, ensemble: Literal["mean", "stack", "both"] | None = None,
                  demographics: bool = False, oof_folds: int = 5) -> list[Recipe]:
    """What `probe` evaluates for one probe: a one-member "val" recipe per encoder (a probe), and with
    `ensemble` (several encoders) their mean and/or stacked combination, recipes of every member.
    `chosen_layers`: each encoder's member `layers` (`read_sources`; default "all")."""
    label = probe + variant_name("", targets, decision) + (f"+layers={layers}" if layers else "")
    members = tuple(Member(spec, i, kind="segments", layers=(chosen_layers or {}).get(spec, "all"), probe=probe)
                    for i, spec in enumerate(encoders))

    def recipe(name: str, held: tuple[Member, ...], combine: Literal["mean", "stack"] = "mean",
               row_label: str = label) -> Recipe:
        return Recipe(name, f"the linear evaluation of {probe} over {name}", tuple(ExtractSpec(m.name) for m in held),
                      tuple(replace(m, extract=i) for i, m in enumerate(held)), targets=targets,
                      patient_model=False, decision=decision, selection="val", combine=combine,
                      demographics=demographics and combine == "stack", folds=oof_folds, label=row_label)
    out = [recipe(m.name, (m,)) for m in members]
    if ensemble is not None and len(encoders) > 1:
        names = "+".join(encoders)
        if ensemble in ("mean", "both"):
            out.append(recipe(f"ens:mean({names})", members))
        if ensemble in ("stack", "both"):
            out.append(recipe(f"ens:stack({names})", members, "stack", label + ("+demo" if demographics else "")))
    return out


def run_probe(task: Task, encoders: list[str], probes: list[str], splits: dict[str, dict[str, str]],
              cache_dir: str | Path, out: str | Path, decision: DecisionName = "any", seed: int = 0,
              progress: bool = True, ensemble: Literal["mean", "stack", "both"] | None = None, demographics: bool = False,
              oof_folds: int = 5, repeats: int = 1, backend: Backend = "local",
              ray: "RayOptions | None" = None, layers: str | None = None) -> tuple[pd.DataFrame, list[SplitResult]]:
    """Every encoder alone, and (with `ensemble`) their mean and/or stacked combination: one-member
    and several-member recipes of selection "val" (`probe_recipes`), through the one evaluation loop
    (`classify.recipes.fit.evaluate`). Returns the summary table and every split's result (fitted
    probe and rule included).

    `repeats` > 1 reruns every split with probe seeds seed, seed + 1, ... (the paper's 15 runs were
    5 seeds x 3 splits); the runs are named SPLIT@seedS and the table averages over all of them.
    `backend="ray"` runs the fits as Ray tasks (`ray`: the cluster), with the same results.
    `layers` (caches made with `extract --layers`): which cached layers the probes use, or how they
    are chosen per split (`classify.evaluation.layers`); None: the whole cached vector."""
    check_probe_inputs(encoders, probes, cache_dir, layers)
    sources, chosen = read_sources(task, encoders, cache_dir, layers)
    by_probe = [probe_recipes(encoders, probe, task.target_scheme, decision, layers, chosen, ensemble, demographics,
                              oof_folds) for probe in probes]
    runs = split_runs(splits, repeats, seed)
    flat = evaluate(task, [r for recipes in by_probe for r in recipes], sources, runs, backend=backend, ray=ray,
                    progress=progress, desc="probe")
    # rows as scores.csv has always had them: per probe, per run, the encoders then the ensembles
    results, first = [], 0
    for recipes in by_probe:
        per_recipe = flat[first:first + len(recipes)]
        first += len(recipes)
        results += [per_recipe[i][j] for j in range(len(runs)) for i in range(len(recipes))]
    scores, _ = write_results(results, out, task.classes)
    return summary_table(scores), results


def save_probe_model(results: list[SplitResult], model_dir: str | Path, task: Task, dataset,
                     cache_dir: str | Path, encoders: list[str], checkpoint: str | None = None) -> Path:
    """`probe --save-model` (and the demo): the first split's probes and rules, for `predict`."""
    from classify.store.models import save_selected
    caches = {spec: find_cache(cache_dir, spec) for spec in encoders}
    return save_selected(results, model_dir, task.classes, dataset.name,
                         {spec: (c.config, c.key) for spec, c in caches.items()}, checkpoint)


RESULT_FILES = ("scores.csv", "predictions.csv")  # what a probe run writes into its output folder


def probe_job(dataset_name: str, data: str | Path, encoders: list[str], probes: list[str], splits: str | None,
              cache_dir: str | Path, out: str | Path, *, targets: str = "patient", decision: DecisionName = "any",
              seed: int = 0, ensemble: Literal["mean", "stack", "both"] | None = None, demographics: bool = False,
              oof_folds: int = 5, repeats: int = 1, backend: Backend = "local", ray: "RayOptions | None" = None,
              layers: str | None = None, overwrite: bool = False, save_model: str | Path | None = None,
              checkpoint: str | None = None, say: Callable[[str], None] = print) -> None:
    """`pipeline.py probe`: the dataset at `data`, `splits` (a scheme or CSV; default: the
    dataset's first scheme) -> `run_probe` into `out` -> with `save_model`, `save_probe_model`.
    The table and what was written go to `say`."""
    from embed.datasets import load_dataset

    from classify.jobs.outputs import OutputFolder
    if save_model and ensemble:
        raise ValueError("--save-model saves single-encoder probes; drop --ensemble to save")
    if save_model and layers not in (None, "all"):
        raise ValueError("--save-model saves probes over the whole cached vector; use --layers all or drop "
                         "--layers (or extract only the layers you want)")
    # the checks first: a refused argument leaves OUT untouched, with no UNFINISHED.txt in it
    dataset = load_dataset(dataset_name, data)
    task = Task.from_dataset(dataset, targets)
    split_sets = load_splits(dataset, splits or dataset.split_schemes[0], seed)
    check_probe_inputs(encoders, probes, cache_dir, layers)
    # writable, not in use by another probe, earlier results kept unless `overwrite`, marked until finished
    with OutputFolder(out, keep=() if overwrite else RESULT_FILES):
        table, results = run_probe(task, encoders, probes, split_sets, cache_dir, out, decision=decision, seed=seed,
                                   ensemble=ensemble, demographics=demographics, oof_folds=oof_folds,
                                   repeats=repeats, backend=backend, ray=ray, layers=layers)
    say(table.to_string(index=False))
    say(f"\nwrote {Path(out) / 'scores.csv'} and {Path(out) / 'predictions.csv'}")
    if save_model:
        manifest = save_probe_model(results, save_model, task, dataset, cache_dir, encoders, checkpoint)
        say(f"saved the probes and decision rules selected on the first split with {manifest}")
