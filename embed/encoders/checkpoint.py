"""Safe checkpoint loading shared by every encoder.

Files are read with `torch.load(weights_only=True)`; an official file that pickles more than
tensors gets exactly the extra types it needs through `allowed_globals`, and anything else
needs `trust_checkpoint=True` (the CLI's `--trust-checkpoint`).
"""
from __future__ import annotations

import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch

from ..checksum import file_sha256  # noqa: F401  (encoders hash their checkpoints with it)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


def load_checkpoint(
    path: str | Path,
    *,
    allowed_globals: Iterable = (),
    trust_checkpoint: bool = False,
) -> object:
    """Load a torch checkpoint on the CPU, weights-only unless the user said to trust it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    with open(path, "rb") as fh:
        head = fh.read(4)
    # torch.save writes a zip archive (torch >= 1.6) or a binary pickle (older files); anything
    # else, e.g. a CSV passed by mistake, is no checkpoint, whatever --trust-checkpoint says
    if not (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):
        raise CheckpointError(f"{path}: not a checkpoint file (torch checkpoints are zip archives or pickles; "
                              f"this one starts with {head!r}); check the --checkpoint path")
    if trust_checkpoint:
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refused by the weights-only loader, it holds more than tensors ({err}). "
            "Only if you trust where this file came from, rerun with --trust-checkpoint."
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({err})") from err

def numpy_globals() -> list:
    """The numpy types that training checkpoints pickle next to their tensors (arrays, integers: PANNs'
    sampler state, aiSFX's dataset indices), for `allowed_globals`."""
    core = getattr(np, "_core", None) or np.core
    allowed: list = [np.ndarray, np.dtype, core.multiarray._reconstruct, core.multiarray.scalar,
                     # files written with numpy < 2 name the module numpy.core
                     (core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
                     (core.multiarray.scalar, "numpy.core.multiarray.scalar")]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in ("Int64DType", "Int32DType", "Float64DType", "Float32DType",
                                                 "BoolDType", "UInt8DType") if hasattr(dtypes, n)]
    return allowed


def extract_state_dict(obj: object, keys: Iterable[str] = ("state_dict", "model", "module")) -> dict:
    """Unwrap the common nesting of training checkpoints to the tensor dict."""
    for key in keys:
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            return extract_state_dict(obj[key], keys)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"expected a dict of tensors, got {type(obj).__name__}")
    return dict(obj)


def require_tensors(state: Mapping, source: str | Path, keys: Iterable[str] | None = None) -> None:
    """Refuse a state dict whose entries (those in `keys`, default all) are not tensors, e.g. strings."""
    bad = [f"{k} ({type(state[k]).__name__})" for k in (state if keys is None else keys)
           if k in state and not isinstance(state[k], torch.Tensor)]
    if bad:
        shown = ", ".join(bad[:10]) + (f", ... ({len(bad) - 10} more)" if len(bad) > 10 else "")
        raise CheckpointError(f"{source}: entries that should be weight tensors are not: {shown}")


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict:
    """Keep only keys starting with `prefix`, with it removed (e.g. 'module.', 'encoder.')."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def load_strict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str | Path) -> None:
    """Load with exact key and shape matching; on failure list everything that is off."""
    own = model.state_dict()
    require_tensors(state, source, own)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = [f"{source}: checkpoint does not match the model"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches", mismatched)):
            if items:
                shown = ", ".join(items[:20]) + (f", ... ({len(items) - 20} more)" if len(items) > 20 else "")
                parts.append(f"{title} ({len(items)}): {shown}")
        raise CheckpointError("\n  ".join(parts))
    model.load_state_dict(state, strict=True)
