"""Checks on the arrays a saved model is rebuilt from, before anything is fitted from them.

A model folder's hashes only say that its files are the ones its manifest lists; a folder whose
hashes were recomputed after an edit passes them. So every saved state is also checked for what
a fitted model always has: finite numbers, arrays whose shapes agree with each other, and class
indices the model's classes allow. A failed check raises `ValueError` naming the field; the
loaders add the file.
"""
from __future__ import annotations

import numpy as np


def field(state: dict[str, np.ndarray], name: str, ndim: int | None = None) -> np.ndarray:
    """`state[name]`, numeric, finite and of `ndim` dimensions."""
    if name not in state:
        raise ValueError(f"field {name!r} is missing")
    array = np.asarray(state[name])
    if array.dtype.kind not in "biuf":
        raise ValueError(f"field {name!r} holds {array.dtype} values, not numbers")
    if ndim is not None and array.ndim != ndim:
        raise ValueError(f"field {name!r} has {array.ndim} dimensions {array.shape}, expected {ndim}")
    bad = int(array.size - np.isfinite(array).sum()) if array.dtype.kind == "f" else 0
    if bad:
        raise ValueError(f"field {name!r}: {bad} of {array.size} values are not finite (NaN or infinite)")
    return array


def same_length(name: str, array: np.ndarray, expected: int, what: str) -> None:
    if len(array) != expected:
        raise ValueError(f"field {name!r} has {len(array)} entries, expected {expected} ({what})")


def class_indices(state: dict[str, np.ndarray], n_classes: int | None, name: str = "classes") -> np.ndarray:
    """The fitted class indices: distinct integers, ascending, each below `n_classes` when known."""
    classes = field(state, name, ndim=1)
    if classes.dtype.kind == "f" and not np.all(classes == np.round(classes)):
        raise ValueError(f"field {name!r} holds fractional class indices {classes.tolist()}")
    if len(classes) == 0 or np.any(np.diff(classes) <= 0) or classes.min() < 0 or (
            n_classes is not None and classes.max() >= n_classes):
        limit = f" below {n_classes}" if n_classes is not None else ""
        raise ValueError(f"field {name!r} = {classes.tolist()}: expected distinct ascending class indices{limit}")
    return classes


def scaler_width(state: dict[str, np.ndarray]) -> int:
    """The width of a saved StandardScaler (mean, scale, var), checked against each other."""
    mean = field(state, "mean", ndim=1)
    for name in ("scale", "var"):
        same_length(name, field(state, name, ndim=1), len(mean), "one per feature, as 'mean'")
    if np.any(state["scale"] <= 0):
        raise ValueError("field 'scale' holds values <= 0 (a standard deviation is positive)")
    return len(mean)


def linear_width(state: dict[str, np.ndarray], n_classes: int | None = None) -> int:
    """The feature width of a saved standardised logistic regression, every shape checked: a
    scaler over the same width as the coefficients, one coefficient row and intercept per class
    (one for two classes)."""
    classes = class_indices(state, n_classes)
    coef, intercept = field(state, "coef", ndim=2), field(state, "intercept", ndim=1)
    rows = 1 if len(classes) == 2 else len(classes)
    if coef.shape[0] != rows or len(intercept) != rows:
        raise ValueError(f"fields 'coef' {coef.shape} and 'intercept' {intercept.shape} do not fit "
                         f"{len(classes)} classes (expected {rows} rows)")
    width = scaler_width(state)
    if coef.shape[1] != width:
        raise ValueError(f"field 'coef' has {coef.shape[1]} columns but the scaler has {width} features")
    return width


def positive(name: str, value, integer: bool = False) -> float:
    """A finite number > 0 (a whole one with `integer`)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not np.isfinite(number) or number <= 0 or (integer and number != int(number)):
        raise ValueError(f"{name} must be a finite {'whole number' if integer else 'number'} > 0, got {value!r}")
    return number
