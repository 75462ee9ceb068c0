"""Saving and loading fitted probes, safely.

A model folder holds one joblib file per (encoder, probe) and a `manifest.json` with the
sha256 of every file, the encoder's cache configuration (encoder, checkpoint hash, pooling,
segments), the class order and the patient decision rule. joblib files are pickles, so a file
is unpickled only after its hash matches the manifest; anything else is refused with a clear
error. (The manifest guards against corrupt, swapped or edited model files; it is not a
signature: only load model folders from people you trust.)

What is saved: per encoder x probe, the hyper-parameters chosen on the FIRST split's val
patients (as `probe` does), refit on that split's train + val patients. Its test patients stay
unseen, so the split's test score in the manifest is an honest estimate for the saved model.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

import joblib
from sklearn.base import BaseEstimator

from embed.circor import MURMUR_CLASSES, CirCor

MODEL_FORMAT = 1
MANIFEST = "manifest.json"


class ModelIntegrityError(RuntimeError):
    """A saved model that does not match its manifest (or has none); never unpickled."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _file_name(encoder: str, probe: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{encoder}--{probe}") + ".joblib"


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_models(out_dir: str | Path, models: list[dict], decision: str = "any") -> Path:
    """Write each `{"estimator", "encoder", "probe", "cache_config", ...}` and the manifest.

    Extra keys of a model dict (params, checkpoint, trained_on, scores) go into the manifest.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for model in models:
        info = {k: v for k, v in model.items() if k != "estimator"}
        name = _file_name(model["encoder"], model["probe"])
        _atomic_write(out / name, lambda tmp: joblib.dump(model["estimator"], tmp))
        entries.append({"file": name, "sha256": sha256_file(out / name), **info})
    manifest = {"format": MODEL_FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "classes": list(MURMUR_CLASSES), "decision": decision, "models": entries}
    # the manifest goes last, so a folder with a manifest has every file it names
    _atomic_write(out / MANIFEST, lambda tmp: tmp.write_text(json.dumps(manifest, indent=2, default=str)))
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
    if tuple(manifest.get("classes", ())) != MURMUR_CLASSES:
        raise ModelIntegrityError(f"{path}: class order {manifest.get('classes')} is not {list(MURMUR_CLASSES)}")
    return manifest


def select_model(manifest: dict, encoder: str | None = None, probe: str | None = None) -> dict:
    """The manifest entry for this encoder/probe; the first one when neither is given."""
    hits = [m for m in manifest["models"]
            if (encoder is None or m["encoder"] == encoder) and (probe is None or m["probe"] == probe)]
    if not hits:
        have = ", ".join(f"{m['encoder']}/{m['probe']}" for m in manifest["models"])
        raise KeyError(f"no saved model for encoder={encoder} probe={probe}; the folder has: {have}")
    return hits[0]


def load_model(model_dir: str | Path, entry: dict) -> BaseEstimator:
    """Unpickle one model file, only if its sha256 matches the manifest."""
    folder = Path(model_dir).resolve()
    name = entry.get("file", "")
    path = (folder / name).resolve()
    if not name or Path(name).name != name or path.parent != folder:
        raise ModelIntegrityError(f"{folder / MANIFEST}: model file name {name!r} points outside the folder")
    if not path.exists():
        raise ModelIntegrityError(f"{path}: listed in the manifest but missing")
    actual = sha256_file(path)
    if actual != entry.get("sha256"):
        raise ModelIntegrityError(f"{path}: sha256 {actual[:16]}... does not match the manifest "
                                  f"({str(entry.get('sha256'))[:16]}...); refusing to load it")
    return joblib.load(path)


def fit_for_saving(circor: CirCor, cache_dir: str | Path, encoder: str, probe: str,
                   split: dict[str, str], split_name: str = "", decision: str = "any", seed: int = 0,
                   checkpoint: str | None = None) -> dict:
    """Choose hyper-parameters on the split's val patients, refit on train + val; a `save_models` entry."""
    from .evaluate import evaluate_split, ids_in
    from .features import find_cache, segment_set
    from .probes import probe_grid

    cache = find_cache(cache_dir, encoder)
    embeddings = cache.read()
    result = evaluate_split(circor, embeddings, split, probe, encoder=encoder, split_name=split_name,
                            decision=decision, seed=seed)
    patients = ids_in(split, "train", circor) + ids_in(split, "val", circor)
    data = segment_set(circor, embeddings, patients, "train")
    estimator = probe_grid(probe, seed)[0].set_params(**result.params)
    estimator.fit(data.X, data.y)
    return {
        "estimator": estimator, "encoder": encoder.partition("@")[0], "probe": probe,
        "params": result.params, "cache_config": cache.config, "cache_key": cache.key,
        "checkpoint": str(Path(checkpoint).resolve()) if checkpoint else None,
        "trained_on": {"split": split_name, "patients": len(patients), "segments": len(data)},
        "split_test_metrics": result.metrics,
    }


def save_probe_models(circor: CirCor, encoders: list[str], probes: list[str], splits: dict[str, dict[str, str]],
                      cache_dir: str | Path, model_dir: str | Path, decision: str = "any", seed: int = 0,
                      checkpoint: str | None = None) -> Path:
    """`probe --save-model`: one model per encoder x probe, fit on the first split's train + val."""
    split_name, split = next(iter(splits.items()))
    models = [fit_for_saving(circor, cache_dir, enc, probe, split, split_name, decision, seed, checkpoint)
              for enc in encoders for probe in probes]
    return save_models(model_dir, models, decision)
