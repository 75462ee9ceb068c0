"""Official-output fixtures: deterministic random checkpoints in the authors' layouts, short
deterministic clips, and the arrays the authors' own code computed from them.

A checkpoint is described by a *spec* (tensor names, shapes, dtypes and how each is drawn) that
is small enough to commit; `generate_state_dict` turns a spec back into the same tensors on any
machine (numpy's PCG64 stream per tensor, seeded by the spec's seed and the tensor's name), so the
tests rebuild the checkpoint, run the project's loader on it and compare with the arrays stored
under `tests/fixtures/official/<encoder>/`. How each array set was made (repository, commit,
command) is written next to it.
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "official"
Init = Literal["normal", "norm_weight", "bias", "running_var", "zeros"]


def _infer_init(name: str, shape: tuple[int, ...]) -> Init:
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
        return "zeros"
    if leaf == "running_var":
        return "running_var"
    if leaf in ("bias", "running_mean"):
        return "bias"
    is_norm = any(k in name.lower() for k in ("norm", "bn", ".ln", "ln_", "layernorm"))
    if leaf == "weight" and len(shape) == 1 and is_norm:
        return "norm_weight"
    return "normal"


def spec_of(state_dict: dict[str, torch.Tensor], seed: int = 0) -> dict:
    """The spec of a state dict: enough to regenerate tensors of the same names, shapes and dtypes."""
    return {"seed": seed, "tensors": [
        {"name": k, "shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", ""),
         "init": _infer_init(k, tuple(v.shape))} for k, v in state_dict.items()]}


def _draw(entry: dict, seed: int) -> np.ndarray:
    """An entry's tensor: its explicit `values` (e.g. calibrated normalisation statistics) when the
    spec stores them, else drawn by its `init`; a `std` replaces the fan-in scale of `normal`."""
    shape = tuple(entry["shape"])
    if "values" in entry:
        return np.asarray(entry["values"], dtype=np.float64).reshape(shape)
    rng = np.random.default_rng([seed, zlib.crc32(entry["name"].encode())])
    init = entry.get("init") or _infer_init(entry["name"], shape)
    if init == "zeros":
        return np.zeros(shape)
    if init == "running_var":
        return 0.5 + rng.random(shape)
    if init == "norm_weight":
        return 1.0 + 0.1 * rng.standard_normal(shape)
    if init == "bias":
        return 0.02 * rng.standard_normal(shape)
    if "std" in entry:
        return entry["std"] * rng.standard_normal(shape)
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else max(1, shape[0] if shape else 1)
    return rng.standard_normal(shape) / np.sqrt(fan_in)


def generate_state_dict(spec: dict) -> dict[str, torch.Tensor]:
    """Deterministic tensors for every entry of `spec` (the same on every machine).

    `spec["tied"]` (optional) maps a name to the name whose tensor it shares, for parameters the
    official model shares between modules (its state dict lists them under every name).
    """
    import torch  # here, so that make scripts for TensorFlow models run without torch

    out = {}
    tied = spec.get("tied", {})
    for entry in spec["tensors"]:
        if entry["name"] in tied:
            continue
        dtype = getattr(torch, entry["dtype"])
        out[entry["name"]] = torch.from_numpy(np.asarray(_draw(entry, spec["seed"]))).to(dtype)
    for name, source in tied.items():
        out[name] = out[source]
    return {entry["name"]: out[entry["name"]] for entry in spec["tensors"]}


def clips(sample_rate: int, seconds: float = 2.0, n: int = 2, seed: int = 0) -> np.ndarray:
    """`n` deterministic float32 clips: a few tones with a heart-rate envelope, plus noise."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        freqs = rng.uniform(40, min(900, sample_rate / 2.5), 3)
        tone = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) for f in freqs) / 3
        beat = 0.5 + 0.5 * np.cos(2 * np.pi * (1.1 + 0.2 * i) * t) ** 8
        out.append(0.3 * tone * beat + 0.02 * rng.standard_normal(len(t)))
    return np.asarray(out, dtype=np.float32)


def relative_error(actual, expected) -> float:
    """||actual - expected|| / ||expected|| (Frobenius), in float64."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        raise AssertionError(f"shape {a.shape} != official {e.shape}")
    return float(np.linalg.norm(a - e) / max(np.linalg.norm(e), 1e-30))


def fixture_dir(encoder: str) -> Path:
    return FIXTURES / encoder


def load_spec(encoder: str, name: str = "spec") -> dict:
    return json.loads((fixture_dir(encoder) / f"{name}.json").read_text())


def save_spec(encoder: str, spec: dict, name: str = "spec") -> Path:
    path = fixture_dir(encoder) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec, separators=(",", ":")))
    return path


def load_outputs(encoder: str, name: str = "outputs") -> dict[str, np.ndarray]:
    """The official arrays (e.g. `frontend`, `frames`, `clip`) stored as `<name>.npz`."""
    with np.load(fixture_dir(encoder) / f"{name}.npz", allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def save_outputs(encoder: str, arrays: dict, name: str = "outputs") -> Path:
    """Store official arrays (tensors or numpy) as float32 in `<name>.npz`; prints their shapes."""
    path = fixture_dir(encoder) / f"{name}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **{k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()})
    print(path, {k: tuple(v.shape) for k, v in arrays.items()})
    return path


def errors_vs_official(encoder, fixture: str, front_end, name: str = "outputs") -> dict[str, float]:
    """Relative errors of a project encoder against the stored official arrays, on the clips the
    spec names: `front_end(audio)` vs `frontend`, `frame_embeddings` vs `frames`, `embed` vs `clip`."""
    import torch

    audio = torch.from_numpy(clips(**load_spec(fixture)["clips"]))
    return errors_against(fixture, name, frontend=front_end(audio), frames=encoder.frame_embeddings(audio),
                          clip=encoder.embed(audio))


def errors_against(encoder: str, name: str = "outputs", **actual) -> dict[str, float]:
    """Relative error of each given array (e.g. `frontend=..., frames=..., clip=...`) against the
    official array of the same name in `<name>.npz`."""
    official = load_outputs(encoder, name)
    return {name: relative_error(value, official[name]) for name, value in actual.items()}
