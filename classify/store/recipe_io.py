"""A fitted recipe saved as data: one `.npz` of arrays plus the model folder's `manifest.json`.

The `.npz` holds every stage's arrays (recording probes, feature columns, the patient model, the
segmenter) and a JSON header with the recipe itself, the decision rule and the configurations of
the caches it was trained on. It is read with `allow_pickle=False` and checked against the
manifest's sha256, as `probe --save-model` folders are (see `model_io`).
"""
from __future__ import annotations

import dataclasses
import io
import json
import time
import zipfile
from pathlib import Path

import numpy as np

from embed.atomic import write_bytes_atomic
from embed.checksum import file_sha256

from classify.evaluation.rules import rule_from_dict
from classify.store.probe_io import (HEADER, MANIFEST, MODEL_FORMAT, ModelIntegrityError, _canonical_sha256,
                       _checked_path)
from classify.estimators.stages import RECORDING_PROBES, PatientModel
from classify.recipes.recipe import ExtractSpec, FittedRecipe, Member, Recipe, RecipePart
from classify.estimators.segmenter import PhaseSegmenter

RECIPE_FILE = "recipe.npz"


def recipe_to_dict(recipe: Recipe) -> dict:
    return dataclasses.asdict(recipe)


def recipe_from_dict(saved: dict) -> Recipe:
    fields = dict(saved)
    fields["extracts"] = tuple(ExtractSpec(**e) for e in saved["extracts"])
    fields["members"] = tuple(Member(**{**m, "stats": tuple(m["stats"])}) for m in saved["members"])
    return Recipe(**fields)


def save_recipe(fitted: FittedRecipe, model_dir: str | Path, classes: tuple[str, ...], dataset: str,
                cache_configs: list[dict], trained_on: str, locations: tuple[str, ...]) -> Path:
    """Write `recipe.npz` and the manifest (last, so a folder with a manifest is complete).
    `locations`: the task's, which shape the patient model's features."""
    out = Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    params = {}
    for i, part in enumerate(fitted.parts):
        bag = _bag_prefix(i)
        for name, probe in part.stage1.items():
            arrays.update({f"{bag}stage1:{name}:{k}": np.asarray(v) for k, v in probe.state().items()})
            params[f"{bag}stage1:{name}"] = probe.get_params()
            if part.columns[name] is not None:
                arrays[f"{bag}columns:{name}"] = np.asarray(part.columns[name])
        if part.stage2 is not None:
            arrays.update({f"{bag}stage2:{k}": np.asarray(v) for k, v in part.stage2.state().items()})
            params[f"{bag}stage2"] = part.stage2.get_params()
    if fitted.segmenter is not None:
        arrays.update({f"segmenter:{k}": np.asarray(v) for k, v in fitted.segmenter.state().items()})
        params["segmenter"] = {k: list(v) if isinstance(v, tuple) else v
                               for k, v in fitted.segmenter.get_params().items()}
    header = {"recipe": recipe_to_dict(fitted.recipe), "rule": fitted.rule.to_dict(), "params": params,
              "classes": list(classes), "cache_configs": cache_configs, "cv_metrics": fitted.cv_metrics,
              "locations": list(locations)}
    header = json.loads(json.dumps(header, default=str))
    arrays[HEADER] = np.frombuffer(json.dumps(header, sort_keys=True).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes_atomic(out / RECIPE_FILE, buffer.getvalue())
    entry = {"file": RECIPE_FILE, "sha256": file_sha256(out / RECIPE_FILE), "encoder": f"recipe:{fitted.recipe.name}",
             "probe": "recipe", "rule": header["rule"], "cache_configs": cache_configs, "trained_on": trained_on}
    manifest = {"format": MODEL_FORMAT, "kind": "recipe", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "dataset": dataset, "classes": list(classes), "decision": fitted.rule.name, "models": [entry]}
    manifest = json.loads(json.dumps(manifest, default=str))
    manifest["manifest_sha256"] = _canonical_sha256(manifest)
    write_bytes_atomic(out / MANIFEST, json.dumps(manifest, indent=2).encode())
    return out / MANIFEST


def _check_identity(path: Path, manifest: dict, entry: dict, header: dict) -> None:
    """The manifest and the hashed file name the same recipe, classes (in order) and decision."""
    name = header.get("recipe", {}).get("name") if isinstance(header.get("recipe"), dict) else None
    checks = (("recipe", entry.get("encoder"), f"recipe:{name}"),
              ("classes", manifest.get("classes"), header.get("classes")),
              ("decision", manifest.get("decision"), (header.get("rule") or {}).get("rule")))
    for what, in_manifest, in_file in checks:
        if in_manifest != in_file:
            raise ModelIntegrityError(f"{path}: field {what!r}: the manifest says {in_manifest!r}, the recipe file "
                                      f"{in_file!r}; refusing to use it")


def _check_part(recipe: Recipe, stage1: dict, columns: dict, stage2, n_classes: int, n_locations: int,
                bag: str) -> None:
    """Shapes of one bag against each other: a member's feature columns and its probe's width; the
    patient model's width and the patient features its members make."""
    for m in recipe.members:
        cols = columns[m.name]
        if cols is None:
            continue
        if cols.ndim != 1 or cols.dtype.kind not in "iu" or len(np.unique(cols)) != len(cols) or (
                len(cols) and cols.min() < 0):
            raise ValueError(f"field '{bag}columns:{m.name}' must list distinct non-negative column indices")
        if len(cols) != stage1[m.name].n_features_in_:
            raise ValueError(f"field '{bag}columns:{m.name}' selects {len(cols)} columns, the member's probe "
                             f"takes {stage1[m.name].n_features_in_}")
    if stage2 is not None:
        expected = len(recipe.members) * n_classes * (n_locations + 2) + n_locations
        if stage2.n_features_in_ != expected:
            raise ValueError(f"field '{bag}stage2' takes {stage2.n_features_in_} patient features; "
                             f"{len(recipe.members)} members, {n_classes} classes and {n_locations} locations "
                             f"make {expected}")


def _bag_prefix(index: int) -> str:
    """Keys of the recipe's bag `index`: the first bag's carry none, as files from before bags did."""
    return f"bag{index}/" if index else ""


def load_recipe(model_dir: str | Path, manifest: dict) -> tuple[FittedRecipe, dict]:
    """(fitted recipe, header) from a folder `save_recipe` wrote; sha256-checked, arrays only."""
    entry = manifest["models"][0]
    path = _checked_path(model_dir, entry)
    try:
        with np.load(path, allow_pickle=False) as npz:
            header = json.loads(npz[HEADER].tobytes().decode())
            arrays = {k: npz[k] for k in npz.files if k != HEADER}
    except (ValueError, OSError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as err:
        raise ModelIntegrityError(f"{path}: not a recipe file of this format ({err})") from err
    if header.get("rule") != entry.get("rule") or header.get("cache_configs") != entry.get("cache_configs"):
        raise ModelIntegrityError(f"{path}: the manifest differs from the recipe file; refusing to use it")
    _check_identity(path, manifest, entry, header)

    def part(prefix: str) -> dict[str, np.ndarray]:
        return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}

    def rebuilt(cls, name: str):
        """One stage from its saved arrays; a refusal names the stage (`name`) as well as the field."""
        try:
            return cls.from_state(params[name], part(f"{name}:"))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{name}: {err}") from None

    try:
        recipe = recipe_from_dict(header["recipe"])
        params = header["params"]
        parts = []
        for bag in map(_bag_prefix, range(recipe.bags)):
            stage1 = {m.name: rebuilt(RECORDING_PROBES[m.probe], f"{bag}stage1:{m.name}") for m in recipe.members}
            columns = {m.name: arrays.get(f"{bag}columns:{m.name}") for m in recipe.members}
            stage2 = rebuilt(PatientModel, f"{bag}stage2") if f"{bag}stage2" in params else None
            _check_part(recipe, stage1, columns, stage2, len(header["classes"]), len(header.get("locations", ())), bag)
            parts.append(RecipePart(stage1, columns, stage2))
        segmenter = rebuilt(PhaseSegmenter, "segmenter") if "segmenter" in params else None
        rule = rule_from_dict(header["rule"])
    except (KeyError, TypeError, ValueError) as err:
        raise ModelIntegrityError(f"{path}: cannot rebuild the recipe ({err})") from err
    return FittedRecipe(recipe, parts, rule, segmenter, header.get("cv_metrics", {})), header
