"""Saving and loading fitted probes and decision rules as data, never as code.

A model folder holds one `.npz` file per (encoder, probe) and a `manifest.json`. Each `.npz`
holds only numeric arrays (scaler statistics, coefficients, network weights, XGBoost's own JSON
model as bytes) and a JSON header naming the probe, its parameters, the classes, the encoder's
cache key and the fitted decision rule; it is read with `allow_pickle=False`, so loading a model
folder can never run code. The manifest lists every file's sha256 and carries a sha256 of its
own content: a changed model file or an edited manifest (say, its decision) is refused, and the
manifest must agree with the header inside the hashed model file. (This guards against corrupt,
swapped or edited folders; it is not a signature.)

What is saved is exactly what `probe` selected on the first split: each probe fit on that split's
train groups with the hyper-parameters chosen on its val groups, and the decision rule fit there
(tuned rules included). Its test groups stay unseen, so the split's test metrics in the manifest
are an honest estimate for the saved model.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import time
import zipfile
from pathlib import Path

import numpy as np

from embed.atomic import write_bytes_atomic
from embed.checksum import file_sha256

from classify.evaluation.rules import DecisionRule, rule_from_dict
from classify.estimators.probes import PROBES

MODEL_FORMAT = 2
MANIFEST = "manifest.json"
HEADER = "header_json"


class ModelIntegrityError(RuntimeError):
    """A model folder that does not match its manifest (or has none); nothing in it is used."""


def _canonical_sha256(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def _file_name(encoder: str, probe: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{encoder}--{probe}") + ".npz"


def model_bytes(estimator, probe: str, header: dict) -> bytes:
    """The `.npz` of one fitted probe: its arrays and a JSON header."""
    arrays = {f"state:{k}": np.asarray(v) for k, v in estimator.state().items()}
    full = {"probe": probe, "params": estimator.get_params(), **header}
    arrays[HEADER] = np.frombuffer(json.dumps(full, sort_keys=True, default=str).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def save_models(out_dir: str | Path, models: list[dict], classes: tuple[str, ...], dataset: str) -> Path:
    """Write each `{"estimator", "rule", "encoder", "probe", "cache_config", ...}` and the manifest.

    Extra keys of a model dict (checkpoint, trained_on, split_test_metrics) go into the manifest.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for model in models:
        rule: DecisionRule = model["rule"]
        info = {k: v for k, v in model.items() if k not in ("estimator", "rule")}
        header = {"encoder": model["encoder"], "classes": list(classes), "rule": rule.to_dict(),
                  "cache_config": model["cache_config"]}
        name = _file_name(model["encoder"], model["probe"])
        write_bytes_atomic(out / name, model_bytes(model["estimator"], model["probe"], header))
        entries.append({"file": name, "sha256": file_sha256(out / name), "rule": rule.to_dict(),
                        "params": model["estimator"].get_params(), **info})
    manifest = {"format": MODEL_FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "dataset": dataset,
                "classes": list(classes), "decision": models[0]["rule"].name if models else None,
                "models": entries}
    manifest = json.loads(json.dumps(manifest, default=str))
    manifest["manifest_sha256"] = _canonical_sha256(manifest)
    # the manifest goes last, so a folder with a manifest has every file it names
    write_bytes_atomic(out / MANIFEST, json.dumps(manifest, indent=2).encode())
    return out / MANIFEST


def load_manifest(model_dir: str | Path) -> dict:
    path = Path(model_dir) / MANIFEST
    if not path.exists():
        raise ModelIntegrityError(f"{path}: no manifest; not a model folder written by `probe --save-model`")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ModelIntegrityError(f"{path}: unreadable manifest ({err})") from err
    if not isinstance(manifest, dict) or manifest.get("format") != MODEL_FORMAT or not manifest.get("models"):
        raise ModelIntegrityError(f"{path}: unknown manifest format or no models")
    if manifest.get("manifest_sha256") != _canonical_sha256(manifest):
        raise ModelIntegrityError(f"{path}: the manifest was edited after it was written (its sha256 does not "
                                  "match its content); refusing to use it")
    return manifest


def select_model(manifest: dict, encoder: str | None = None, probe: str | None = None) -> dict:
    """The manifest entry for this encoder/probe; the first one when neither is given."""
    hits = [m for m in manifest["models"]
            if (encoder is None or m["encoder"] == encoder) and (probe is None or m["probe"] == probe)]
    if not hits:
        have = ", ".join(f"{m['encoder']}/{m['probe']}" for m in manifest["models"])
        raise KeyError(f"no saved model for encoder={encoder} probe={probe}; the folder has: {have}")
    return hits[0]


def _checked_path(model_dir: str | Path, entry: dict) -> Path:
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
    path = _checked_path(model_dir, entry)
    try:
        with np.load(path, allow_pickle=False) as npz:
            header = json.loads(npz[HEADER].tobytes().decode())
            state = {k[len("state:"):]: npz[k] for k in npz.files if k.startswith("state:")}
    except (ValueError, OSError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as err:
        raise ModelIntegrityError(f"{path}: not a model file of this format ({err})") from err
    for key in ("probe", "encoder", "rule", "cache_config"):
        if header.get(key) != entry.get(key):
            raise ModelIntegrityError(f"{path}: the manifest's {key!r} differs from the one saved in the model "
                                      "file; refusing to use it")
    if classes is not None and header.get("classes") != list(classes):
        raise ModelIntegrityError(f"{path}: classes {header.get('classes')} differ from the manifest's {classes}")
    probe = header["probe"]
    if probe not in PROBES:
        raise ModelIntegrityError(f"{path}: unknown probe {probe!r}")
    cls = PROBES[probe][0]
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
