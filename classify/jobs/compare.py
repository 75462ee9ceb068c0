"""The `compare` job: every encoder under every protocol, on every split x seed, on the same test
patients; then a patient-level ensemble of the heart-cycle rows, and the table (`compare_table`).

Protocols: `linear-any` and `linear-mean` are the linear evaluation of `probe` (window embeddings,
C chosen on val, the paper's *any* rule or the mean); `cycle` and `cycle+logmel` are recipes
(`classify.recipes.protocols`). Each encoder x protocol x run is a cell, written to
`OUT/cells/ENCODER/PROTOCOL/RUN.json` as soon as it is scored: a rerun reads the finished cells and
computes only the others, so an interrupted comparison resumes where it stopped. A cell made from
other inputs (another encoder configuration, other split membership) is recomputed. An encoder named
with several layers (`mn04:layers=6+12`) is a choice: each layer is scored as its own encoder
(the same cells as `mn04:layers=6` would have), and in each run the row takes the layer with the
best inner score (val for the linear protocols, inner CV for the recipes); test patients never
enter the choice.
"""
from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, get_args

import numpy as np
import pandas as pd
from tqdm import tqdm

from embed.atomic import write_text_atomic

from classify.evaluation.metrics import Scoring
from classify.evaluation.paired import RunPredictions
from classify.evaluation.patient_ensemble import ensemble_predict, forward_select
from classify.evaluation.results import proba_columns
from classify.evaluation.rules import make_rule
from classify.evaluation.runs import Run, split_runs
from classify.jobs.compare_table import CIRCOR_REFERENCES, ENSEMBLE, compare_table, write_comparison
from classify.jobs.outputs import OutputFolder
from classify.jobs.probe import probe_recipes
from classify.recipes.fit import evaluate
from classify.recipes.members import kind_of
from classify.recipes.protocols import SEGMENTATION, cycle_recipe
from classify.recipes.recipe import ExtractSpec
from classify.task import Task

Protocol = Literal["linear-any", "linear-mean", "cycle", "cycle+logmel"]
PROTOCOLS: tuple[str, ...] = get_args(Protocol)
CELL_FORMAT = 1


@dataclass(frozen=True)
class EncoderChoice:
    """An encoder as `--encoders` names it: NAME[:checkpoint=FILE][:precision=P][:layers=I|I+J+...];
    FILE is looked up in --weights (default: the encoder's published weight file name); `layers`: the
    one layer its windows and frames come from (default: the embedding), or several joined by `+`,
    of which each run takes the one with the best inner score."""
    name: str
    checkpoint: str | None = None
    precision: str | None = None
    layers: str | None = None

    @property
    def label(self) -> str:
        """The row's name: the encoder, and its layer when it is not the embedding."""
        return self.name + (f":layers={self.layers}" if self.layers else "")

    @property
    def source(self) -> dict:
        """As a recipe source table."""
        return {k: v for k, v in (("encoder", self.name), ("checkpoint", self.checkpoint),
                                  ("precision", self.precision), ("layers", self.layers)) if v is not None}

    @property
    def candidates(self) -> list["EncoderChoice"]:
        """The one-layer encoders a choice of layers picks from; none for one layer or the embedding."""
        if not self.layers or "+" not in self.layers:
            return []
        return [EncoderChoice(self.name, self.checkpoint, self.precision, layer) for layer in self.layers.split("+")]


def parse_encoders(text: str) -> list[EncoderChoice]:
    from embed.encoders import get_class, split_spec
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        raise_on = f"--encoders item {item!r}"
        name, options = split_spec(item)  # NAME may be NAME:TARGET (hear:MODULE)
        cls = get_class(name)  # an unknown encoder is refused by name, with the available ones
        opts = {}
        for pair in filter(None, options):
            key, sep, value = pair.partition("=")
            if not sep or key not in ("checkpoint", "precision", "layers"):
                raise ValueError(f"{raise_on}: expected NAME[:checkpoint=FILE][:precision=P][:layers=I|I+J+...]")
            layers = value.split("+") if key == "layers" else []
            if not all(v.lstrip("-").isdigit() for v in layers):
                raise ValueError(f"{raise_on}: layers takes one layer index (the frames of one layer), "
                                 "or several joined by + for a choice by inner score")
            if len(set(layers)) != len(layers):
                raise ValueError(f"{raise_on}: a layer named twice in {value!r}")
            opts[key] = value
        checkpoint = opts.get("checkpoint") or (cls.weight_file if cls.needs_checkpoint else None)
        if cls.needs_checkpoint and not checkpoint:
            raise ValueError(f"{raise_on}: {name} has no published weight file name; give :checkpoint=FILE")
        # log-mel's frames are also the segmentation's: the same precision, so one cache serves both
        precision = opts.get("precision") or (SEGMENTATION["precision"] if name == SEGMENTATION["encoder"] else None)
        out.append(EncoderChoice(name, checkpoint, precision, opts.get("layers")))
    if len({e.label for e in out}) != len(out):
        raise ValueError("--encoders: an encoder named twice")
    return out


@dataclass
class Cell:
    """One encoder x protocol x run: its test predictions, inner-CV scores and (recipes) the
    out-of-fold patient probabilities of its fit groups, which the ensemble is selected on."""
    encoder: str
    protocol: str
    run: str
    split: str
    signature: str
    test: RunPredictions
    inner_cv: dict[str, float]  # metric -> score: on the val groups (linear) or the inner CV (recipes, ensembles)
    params: dict[str, str] = field(default_factory=dict)
    oof_ids: np.ndarray | None = None
    oof_proba: np.ndarray | None = None
    seconds: float = 0.0

    def to_json(self) -> str:
        t = self.test
        return json.dumps({
            "format": CELL_FORMAT, "encoder": self.encoder, "protocol": self.protocol, "run": self.run,
            "split": self.split, "signature": self.signature, "patient_ids": list(map(str, t.patient_ids)),
            "labels": t.labels.tolist(), "predictions": t.predictions.tolist(), "proba": t.proba.tolist(),
            "inner_cv": self.inner_cv, "params": self.params, "seconds": self.seconds,
            "oof_ids": None if self.oof_ids is None else list(map(str, self.oof_ids)),
            "oof_proba": None if self.oof_proba is None else self.oof_proba.tolist()})

    @staticmethod
    def from_json(text: str) -> "Cell":
        d = json.loads(text)
        if d.get("format") != CELL_FORMAT:
            raise ValueError(f"cell format {d.get('format')!r}, not {CELL_FORMAT}")
        test = RunPredictions(d["run"], d["split"], np.array(d["patient_ids"]), np.array(d["labels"], int),
                              np.array(d["predictions"], int), np.array(d["proba"], float))
        oof = d.get("oof_ids")
        return Cell(d["encoder"], d["protocol"], d["run"], d["split"], d["signature"], test, d["inner_cv"],
                    d.get("params", {}), None if oof is None else np.array(oof),
                    None if oof is None else np.array(d["oof_proba"], float), float(d.get("seconds", 0.0)))


class CellStore:
    """Finished cells under OUT/cells; each written whole (atomically) once it is scored."""

    def __init__(self, out: Path) -> None:
        self.root = Path(out) / "cells"

    def path(self, encoder: str, protocol: str, run: str) -> Path:
        return self.root / encoder.replace(":", "-") / protocol / f"{run}.json"

    def load(self, encoder: str, protocol: str, run: str, signature: str) -> Cell | None:
        path = self.path(encoder, protocol, run)
        if not path.is_file():
            return None
        try:
            cell = Cell.from_json(path.read_text())
        except (ValueError, KeyError, TypeError) as err:
            warnings.warn(f"{path}: unreadable cell ({err}); computing it again")
            return None
        if cell.signature != signature:
            warnings.warn(f"{path}: made from other inputs (encoder options or split membership); computing it again")
            return None
        return cell

    def save(self, cell: Cell) -> None:
        path = self.path(cell.encoder, cell.protocol, cell.run)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, cell.to_json())


def signature(dataset_name: str, encoder: EncoderChoice, protocol: str, run: Run) -> str:
    """What a cell's result depends on besides the code: dataset, encoder options, protocol, the
    run's seed and its split membership."""
    membership = sorted(run.split.items())
    text = json.dumps([dataset_name, encoder.source, protocol, run.seed, membership])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_predictions(task: Task, result, run: Run) -> RunPredictions:
    """A run's test predictions (`SplitResult.predictions`) as the paired bootstrap takes them."""
    frame = result.predictions
    proba = frame[proba_columns(task.classes)].to_numpy(float)
    return RunPredictions(run.name, run.split_name, frame["patient_id"].to_numpy(str), frame["label"].to_numpy(int),
                          frame["prediction"].to_numpy(int), proba)


class ProtocolRunner:
    """Scores one encoder under one protocol, run by run; built lazily so that a comparison
    whose cells are all finished reads no cache."""

    def __init__(self, dataset, encoder: EncoderChoice, protocol: str, cache_dir, weights, device, progress) -> None:
        self.dataset, self.encoder, self.protocol = dataset, encoder, protocol
        self.cache_dir, self.weights, self.device, self.progress = cache_dir, weights, device, progress
        self._ready = None

    def _prepare(self):
        from classify.jobs.recipe import ensure_cache, recipe_inputs
        if self.protocol.startswith("linear-"):
            spec = ExtractSpec(self.encoder.name, self.encoder.checkpoint, layers=self.encoder.layers or "last",
                               precision=self.encoder.precision)
            cache, problems = ensure_cache(spec, self.dataset.recordings(), self.cache_dir, self.weights,
                                           device=self.device, progress=self.progress)
            # the linear evaluation of `probe`: a one-member "val" recipe over the whole cached vector
            recipe, = probe_recipes([self.encoder.label], "linear", "patient", self.protocol.split("-", 1)[1], None)
            member = recipe.members[0]
            sources = {member.name: kind_of(member).source(member, cache, None, False)}
            return Task.from_dataset(self.dataset, "patient"), (recipe, sources), problems
        recipe = cycle_recipe(self.protocol, self.encoder.label, self.encoder.source)
        task, sources, _, problems = recipe_inputs(recipe, self.dataset, self.cache_dir, self.weights, self.device,
                                                   self.progress)
        return task, (recipe, sources), problems

    def score(self, run: Run) -> tuple[RunPredictions, dict, dict, np.ndarray | None, np.ndarray | None]:
        """(test predictions, inner-CV scores, chosen parameters, OOF patient ids, OOF probabilities)."""
        if self._ready is None:
            self._ready = self._prepare()
            for p in self._ready[2]:
                if getattr(p, "severity", "error") == "error":
                    print(f"  {p}")
        task, (recipe, sources), _ = self._ready
        result = evaluate(task, [recipe], sources, [run], progress=False)[0][0]
        if recipe.selection == "val":
            inner = {task.scoring.primary: result.val_score}  # linear evaluation chooses on the val groups
            return run_predictions(task, result, run), inner, _strings(result.params), None, None
        fitted = result.model
        inner = {m: fitted.cv_metrics[f"cv_{m}"] for m in task.scoring.label_metrics if f"cv_{m}" in fitted.cv_metrics}
        return (run_predictions(task, result, run), inner, _strings(result.params),
                np.array(fitted.cv_groups), fitted.cv_proba)


def _strings(params: dict) -> dict[str, str]:
    return {str(k): str(v) for k, v in params.items()}


def aliased(encoder: EncoderChoice, protocol: str) -> str:
    """The protocol whose cells stand for this one: log-mel plus log-mel is log-mel's own cycle."""
    return "cycle" if protocol == "cycle+logmel" and encoder.source == SEGMENTATION else protocol


def compute_cells(dataset, encoders: list[EncoderChoice], protocols: list[str], runs: list[Run], cache_dir, weights,
                  out: Path, scoring: Scoring, device: str = "auto", progress: bool = True,
                  on_cell: Callable[[Cell], None] | None = None) -> dict[tuple[str, str, str], Cell]:
    """(encoder, protocol, run) -> cell, for every one asked for: finished cells are read, the others
    scored and written at once. `on_cell` is called after each new cell is written. An encoder with a
    choice of layers gets, in each run, its candidate cell with the best inner score (`scoring`)."""
    scored = list({e.label: e for choice in encoders for e in (choice.candidates or [choice])}.values())
    cells = _scored_cells(dataset, scored, protocols, runs, cache_dir, weights, out, device, progress, on_cell)
    out_cells = {}
    for encoder in encoders:
        for protocol in protocols:
            for run in runs:
                key = (encoder.label, protocol, run.name)
                if not encoder.candidates:
                    out_cells[key] = cells[key]
                    continue
                options = {c.layers: cells[(c.label, protocol, run.name)] for c in encoder.candidates}
                layer = best_by_inner_score(options, scoring)
                c = options[layer]
                out_cells[key] = Cell(encoder.label, protocol, run.name, c.split, c.signature, c.test, c.inner_cv,
                                      {**c.params, "layer": layer}, c.oof_ids, c.oof_proba,
                                      sum(o.seconds for o in options.values()))  # the choice costs every layer
    return out_cells


def best_by_inner_score(cells: dict[str, Cell], scoring: Scoring) -> str:
    """The name of the cell with the best inner scores (the primary metric first, ties to the next),
    never its test scores: the one rule for choosing a layer and an ensemble's best single member."""
    return max(cells, key=lambda n: tuple(cells[n].inner_cv.get(m, float("-inf")) for m in scoring.label_metrics))


def _scored_cells(dataset, encoders, protocols, runs, cache_dir, weights, out, device, progress, on_cell):
    """Every (encoder, protocol, run) cell of these one-layer encoders: read where finished, else scored."""
    store = CellStore(out)
    cells, todo = {}, []
    for encoder in encoders:
        for protocol in protocols:
            stored_as = aliased(encoder, protocol)
            for run in runs:
                sig = signature(dataset.name, encoder, stored_as, run)
                cell = store.load(encoder.label, stored_as, run.name, sig)
                if cell is None:
                    todo.append((encoder, stored_as, run, sig))
                else:
                    cells[(encoder.label, protocol, run.name)] = cell
    todo = list({(e.label, p, r.name): (e, p, r, sig) for e, p, r, sig in todo}.values())  # an alias: scored once
    runners: dict[tuple[str, str], ProtocolRunner] = {}
    for encoder, protocol, run, sig in tqdm(todo, desc="compare", disable=not progress or not todo):
        key = (encoder.label, protocol)
        if key not in runners:  # one at a time: the cells are grouped, and a runner holds its caches
            runners = {key: ProtocolRunner(dataset, encoder, protocol, cache_dir, weights, device, progress)}
        start = time.perf_counter()
        test, inner, params, oof_ids, oof_proba = runners[key].score(run)
        cell = Cell(encoder.label, protocol, run.name, run.split_name, sig, test, inner, params, oof_ids, oof_proba,
                    round(time.perf_counter() - start, 1))
        store.save(cell)
        if on_cell is not None:
            on_cell(cell)
    for encoder in encoders:  # every cell, new ones read back as a rerun would read them
        for protocol in protocols:
            for run in runs:
                key = (encoder.label, protocol, run.name)
                if key not in cells:
                    stored_as = aliased(encoder, protocol)
                    cells[key] = store.load(encoder.label, stored_as, run.name,
                                            signature(dataset.name, encoder, stored_as, run))
    return cells


def ensemble_cells(cells: dict[tuple[str, str, str], Cell], runs: list[Run], scoring: Scoring,
                   labels: dict[str, int]) -> tuple[dict[tuple[str, str, str], Cell], dict[str, list[str]]]:
    """Per run, the patient-level ensemble of every heart-cycle cell (forward selection on their
    out-of-fold patient probabilities, expected-cost rule) and the single cell with the best inner
    CV; returns those cells and each run's chosen members."""
    out, chosen_by_run = {}, {}
    for run in runs:
        members = {f"{e}/{p}": c for (e, p, r), c in cells.items() if r == run.name and c.oof_ids is not None}
        members = {name: c for name, c in members.items()
                   if not (name.endswith("/cycle+logmel") and c.protocol == "cycle")}  # an alias is one member
        if len(members) < 2:
            continue
        oof = {name: (c.oof_ids, c.oof_proba) for name, c in members.items()}
        chosen, rule, key = forward_select(oof, labels, lambda: make_rule("cost", scoring.class_weights),
                                           scoring.selection_key)
        ids, calls, proba = ensemble_predict(chosen, rule, {n: (c.test.patient_ids, c.test.proba)
                                                            for n, c in members.items()})
        first = members[chosen[0]].test.ordered(ids)
        test = RunPredictions(run.name, run.split_name, ids, first.labels, np.asarray(calls, int), proba)
        inner = dict(zip(scoring.label_metrics, key))
        out[(ENSEMBLE, "forward", run.name)] = Cell(ENSEMBLE, "forward", run.name, run.split_name, "", test, inner,
                                                    {"members": " & ".join(chosen)})
        best = best_by_inner_score(members, scoring)
        c = members[best]
        out[(ENSEMBLE, "best-single", run.name)] = Cell(ENSEMBLE, "best-single", run.name, run.split_name, "",
                                                        c.test, c.inner_cv, {"members": best})
        chosen_by_run[run.name] = chosen
    return out, chosen_by_run


def compare_job(dataset_name: str, data: str | Path, encoders: str, protocols: str, splits: str | None, seeds: int,
                cache_dir: str | Path, out: str | Path, weights: str | Path | None = None, *, seed: int = 0,
                ensemble: bool = True, n_boot: int = 1000, device: str = "auto", command: str = "",
                progress: bool = True, say: Callable[[str], None] = print,
                on_cell: Callable[[Cell], None] | None = None) -> pd.DataFrame:
    """`pipeline.py compare`: every encoder x protocol on every split x seed (finished cells in OUT are
    read, not recomputed), the patient-level ensemble of the heart-cycle rows, then compare.csv,
    compare.md and forest.png in OUT. Arguments are checked before OUT is touched."""
    from embed.datasets import load_dataset

    from classify.jobs.probe import load_splits
    chosen = parse_encoders(encoders)
    wanted = [p.strip() for p in protocols.split(",") if p.strip()]
    unknown = [p for p in wanted if p not in PROTOCOLS]
    if unknown or not wanted:
        raise ValueError(f"--protocols: unknown {unknown}; known: {', '.join(PROTOCOLS)}")
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    dataset = load_dataset(dataset_name, data)
    split_sets = load_splits(dataset, splits or dataset.split_schemes[0], seed)
    runs = split_runs(split_sets, seeds, seed, seed_major=False, name_seed=True)
    task = Task.from_dataset(dataset, "patient")
    with OutputFolder(out):
        cells = compute_cells(dataset, chosen, wanted, runs, cache_dir, weights, Path(out), task.scoring, device,
                              progress, on_cell)
        if ensemble:
            extra, _ = ensemble_cells(cells, runs, task.scoring, task.group_labels)
            cells.update(extra)
        table = compare_table(cells, task.scoring, n_boot, seed)
        written = write_comparison(table, Path(out), task.scoring, command,
                                   CIRCOR_REFERENCES if dataset.name == "circor" else None)
    shown = [c for c in ("encoder", "protocol", "runs", "weighted_accuracy", "uar", "auroc", "d_weighted_accuracy",
                         "d_uar") if c in table.columns]
    say(table[shown].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    say("\nwrote " + ", ".join(map(str, written)))
    return table
