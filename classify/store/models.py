"""The one model store: fitted probes and recipes saved as data, never as code.

A model folder holds `.npz` files and a `manifest.json` naming its kind (`probe`: one file per
encoder x probe; `recipe`: one `recipe.npz`). Each `.npz` holds only numeric arrays (scaler
statistics, coefficients, network weights, XGBoost's own JSON model as bytes, a segmenter's
tables) and a JSON header (what was fit, its parameters, the classes, the decision rule, the
configurations of the caches it was trained on); it is read with `allow_pickle=False`, so loading
a model folder can never run code. The manifest lists every file's sha256 and carries a sha256 of
its own content: a changed model file or an edited manifest (say, its decision) is refused, and the
manifest must agree with the header inside the hashed model file. (This guards against corrupt,
swapped or edited folders; it is not a signature.) The manifest is written last, so a folder with
one is complete.

A probe folder holds what `probe` selected on the first split: each probe fit on that split's
train groups with the hyper-parameters chosen on its val groups, and the decision rule fit there
(tuned rules included); the split's test metrics in the manifest are an honest estimate for it. A
recipe folder holds every stage of a recipe fit on every labelled group.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import time
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np

from embed.atomic import write_bytes_atomic
from embed.checksum import file_sha256

from classify.estimators.probes import PROBES
from classify.estimators.search import PatientModel, RecordingStage
from classify.estimators.segmenter import PhaseSegmenter
from classify.evaluation.rules import DecisionRule, rule_from_dict
from classify.recipes.fit import FittedRecipe, RecipePart
from classify.recipes.recipe import ExtractSpec, Member, Recipe

MODEL_FORMAT = 3  # 3: one store for probes and recipes, recipe stages as grouped searches
MANIFEST = "manifest.json"
HEADER = "header_json"
RECIPE_FILE = "recipe.npz"
Kind = Literal["probe", "recipe"]


class ModelIntegrityError(RuntimeError):
    """A model folder that does not match its manifest (or has none); nothing in it is used."""


def canonical_sha256(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def npz_bytes(arrays: dict[str, np.ndarray], header: dict) -> bytes:
    """One model file: its arrays and a JSON header (sorted keys)."""
    arrays = dict(arrays)
    arrays[HEADER] = np.frombuffer(json.dumps(header, sort_keys=True, default=str).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def read_npz(path: Path, what: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(header, arrays) of a model file, arrays only (`allow_pickle=False`)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            header = json.loads(npz[HEADER].tobytes().decode())
            arrays = {k: npz[k] for k in npz.files if k != HEADER}
    except (ValueError, OSError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as err:
        raise ModelIntegrityError(f"{path}: not a {what} file of this format ({err})") from err
    return header, arrays


def write_folder(out_dir: str | Path, kind: Kind, files: dict[str, bytes], entries: list[dict], dataset: str,
                 classes: tuple[str, ...], decision: str | None) -> Path:
    """The model files, then the manifest (kind, every file's sha256, its own sha256)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        write_bytes_atomic(out / name, data)
    manifest = {"format": MODEL_FORMAT, "kind": kind, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "dataset": dataset, "classes": list(classes), "decision": decision,
                "models": [{"file": e["file"], "sha256": file_sha256(out / e["file"]),
                            **{k: v for k, v in e.items() if k != "file"}} for e in entries]}
    manifest = json.loads(json.dumps(manifest, default=str))
    manifest["manifest_sha256"] = canonical_sha256(manifest)
    write_bytes_atomic(out / MANIFEST, json.dumps(manifest, indent=2).encode())
    return out / MANIFEST


def load_manifest(model_dir: str | Path) -> dict:
    path = Path(model_dir) / MANIFEST
    if not path.exists():
        raise ModelIntegrityError(f"{path}: no manifest; not a model folder written by `probe --save-model` "
                                  "or `recipe --save-model`")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ModelIntegrityError(f"{path}: unreadable manifest ({err})") from err
    if not isinstance(manifest, dict) or not manifest.get("models"):
        raise ModelIntegrityError(f"{path}: unknown manifest format or no models")
    if manifest.get("format") != MODEL_FORMAT:
        raise ModelIntegrityError(
            f"{path}: a model folder of format {manifest.get('format')!r}, written by an earlier heartprobe; this "
            f"version reads format {MODEL_FORMAT} only: fit it again (`probe --save-model` or `recipe --save-model`)")
    if manifest.get("kind") not in ("probe", "recipe"):
        raise ModelIntegrityError(f"{path}: unknown model kind {manifest.get('kind')!r}")
    if manifest.get("manifest_sha256") != canonical_sha256(manifest):
        raise ModelIntegrityError(f"{path}: the manifest was edited after it was written (its sha256 does not "
                                  "match its content); refusing to use it")
    return manifest


def _file_name(encoder: str, probe: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{encoder}--{probe}") + ".npz"


def model_bytes(estimator, probe: str, header: dict) -> bytes:
    """The `.npz` of one fitted probe: its arrays and a JSON header."""
    arrays = {f"state:{k}": np.asarray(v) for k, v in estimator.state().items()}
    return npz_bytes(arrays, {"probe": probe, "params": estimator.get_params(), **header})


def save_models(out_dir: str | Path, models: list[dict], classes: tuple[str, ...], dataset: str) -> Path:
    """A probe folder: each `{"estimator", "rule", "encoder", "probe", "cache_config", ...}`, then the manifest.

    Extra keys of a model dict (checkpoint, trained_on, split_test_metrics) go into the manifest.
    """
    files, entries = {}, []
    for model in models:
        rule: DecisionRule = model["rule"]
        info = {k: v for k, v in model.items() if k not in ("estimator", "rule")}
        header = {"encoder": model["encoder"], "classes": list(classes), "rule": rule.to_dict(),
                  "cache_config": model["cache_config"]}
        name = _file_name(model["encoder"], model["probe"])
        files[name] = model_bytes(model["estimator"], model["probe"], header)
        entries.append({"file": name, "rule": rule.to_dict(), "params": model["estimator"].get_params(), **info})
    return write_folder(out_dir, "probe", files, entries, dataset, classes,
                        models[0]["rule"].name if models else None)


def select_model(manifest: dict, encoder: str | None = None, probe: str | None = None) -> dict:
    """The manifest entry for this encoder/probe; the first one when neither is given."""
    hits = [m for m in manifest["models"]
            if (encoder is None or m["encoder"] == encoder) and (probe is None or m["probe"] == probe)]
    if not hits:
        have = ", ".join(f"{m['encoder']}/{m['probe']}" for m in manifest["models"])
        raise KeyError(f"no saved model for encoder={encoder} probe={probe}; the folder has: {have}")
    return hits[0]


def checked_path(model_dir: str | Path, entry: dict) -> Path:
    folder = Path(model_dir).resolve()
    name = entry.get("file", "")
    path = (folder / name).resolve()
    if not name or Path(name).name != name or path.parent != folder:
        raise ModelIntegrityError(f"{folder / MANIFEST}: model file name {name!r} points outside the folder")
    if not path.exists():
        raise ModelIntegrityError(f"{path}: listed in the manifest but missing")
    actual = file_sha256(path)
    if actual != entry.get("sha256"):
        raise ModelIntegrityError(f"{path}: sha256 {actual[:16]}... does not match the manifest "
                                  f"({str(entry.get('sha256'))[:16]}...); refusing to load it")
    return path


def load_model(model_dir: str | Path, entry: dict, classes: list[str] | None = None
               ) -> tuple[object, DecisionRule, dict]:
    """(probe, decision rule, header) of one manifest entry, only if its sha256 matches and its
    header agrees with the manifest. Arrays only: `allow_pickle=False`."""
    path = checked_path(model_dir, entry)
    header, arrays = read_npz(path, "model")
    state = {k[len("state:"):]: v for k, v in arrays.items() if k.startswith("state:")}
    for key in ("probe", "encoder", "rule", "cache_config"):
        if header.get(key) != entry.get(key):
            raise ModelIntegrityError(f"{path}: the manifest's {key!r} differs from the one saved in the model "
                                      "file; refusing to use it")
    if classes is not None and header.get("classes") != list(classes):
        raise ModelIntegrityError(f"{path}: classes {header.get('classes')} differ from the manifest's {classes}")
    probe = header["probe"]
    if probe not in PROBES:
        raise ModelIntegrityError(f"{path}: unknown probe {probe!r}")
    cls = PROBES[probe].cls
    try:
        estimator = cls.from_state(header["params"], state)
        n_classes = len(header["classes"])
        if max(estimator.classes_) >= n_classes:
            raise ValueError(f"field 'classes' = {list(estimator.classes_)} names more than the {n_classes} "
                             "classes of the model")
        return estimator, rule_from_dict(header["rule"]), header
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ModelIntegrityError(f"{path}: cannot rebuild the {probe} probe ({err})") from err


def save_selected(results, model_dir: str | Path, classes: tuple[str, ...], dataset: str,
                  cache_configs: dict[str, tuple[dict, str]], checkpoint: str | None = None) -> Path:
    """`probe --save-model`: the probes and rules `probe` fitted and selected on its first split."""
    single = [r for r in results if r.model is not None]
    if not single:
        raise ValueError("nothing to save: no single-encoder probe was fitted")
    first_split = single[0].split
    models = []
    for r in single:
        if r.split != first_split:
            continue
        config, key = cache_configs[r.encoder]
        models.append({
            "estimator": r.model, "rule": r.rule, "encoder": r.encoder.partition("@")[0],
            "probe": r.probe.split("+")[0], "variant": r.probe, "cache_config": config, "cache_key": key,
            "checkpoint": str(Path(checkpoint).resolve()) if checkpoint else None,
            "trained_on": {"split": first_split, "groups": "train (probe), val (hyper-parameters and rule)"},
            "split_test_metrics": r.metrics,
        })
    return save_models(model_dir, models, classes, dataset)


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
    entry = {"file": RECIPE_FILE, "encoder": f"recipe:{fitted.recipe.name}", "probe": "recipe", "rule": header["rule"],
             "cache_configs": cache_configs, "trained_on": trained_on}
    return write_folder(model_dir, "recipe", {RECIPE_FILE: npz_bytes(arrays, header)}, [entry], dataset, classes,
                        fitted.rule.name)


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
    path = checked_path(model_dir, entry)
    header, arrays = read_npz(path, "recipe")
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
            stage1 = {m.name: rebuilt(RecordingStage, f"{bag}stage1:{m.name}") for m in recipe.members}
            columns = {m.name: arrays.get(f"{bag}columns:{m.name}") for m in recipe.members}
            stage2 = rebuilt(PatientModel, f"{bag}stage2") if f"{bag}stage2" in params else None
            _check_part(recipe, stage1, columns, stage2, len(header["classes"]), len(header.get("locations", ())), bag)
            parts.append(RecipePart(stage1, columns, stage2))
        segmenter = rebuilt(PhaseSegmenter, "segmenter") if "segmenter" in params else None
        rule = rule_from_dict(header["rule"])
    except (KeyError, TypeError, ValueError) as err:
        raise ModelIntegrityError(f"{path}: cannot rebuild the recipe ({err})") from err
    return FittedRecipe(recipe, parts, rule, segmenter, header.get("cv_metrics", {})), header
