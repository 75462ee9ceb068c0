"""The one probe registry: every recording or window model by name, with its search grids.

A probe is used two ways, with the same class: as the linear-evaluation probe (`probe`: each
candidate of `grid` fit on train, chosen on val) and as a recipe member's recording model (its
`stage_params` fixed, `stage_grid` searched by patient-grouped CV inside the fit groups,
`search.RecordingStage`). Classes are imbalanced (most patients have no murmur), so every probe
weights samples by inverse class frequency. A new probe is one class plus one `register_probe`.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from sklearn.base import BaseEstimator, clone

from classify.estimators.boosted import XGBoostProbe
from classify.estimators.linear import LinearProbe
from classify.estimators.mlp import MLPProbe


@dataclass(frozen=True)
class ProbeSpec:
    cls: type
    grid: dict[str, list]  # the linear evaluation's candidates (chosen on val)
    stage_params: dict = field(default_factory=dict)  # as a recipe member: fixed parameters
    stage_grid: dict[str, list] = field(default_factory=dict)  # ... and those its grouped CV chooses


PROBES: dict[str, ProbeSpec] = {}


def register_probe(name: str, cls: type, grid: dict[str, list], stage_params: dict | None = None,
                   stage_grid: dict[str, list] | None = None) -> None:
    PROBES[name] = ProbeSpec(cls, grid, stage_params or {}, stage_grid or {})


register_probe("linear", LinearProbe, {"C": [1e-3, 1e-2, 1e-1, 1.0]},
               stage_params={"max_iter": 3000}, stage_grid={"C": [1e-3, 1e-2, 1e-1]})
# as a recipe member: fixed settings (a grid would multiply the recipe's slowest step), every thread
register_probe("xgboost", XGBoostProbe, {"max_depth": [3, 6], "n_estimators": [200], "learning_rate": [0.1]},
               stage_params={"n_estimators": 150, "max_depth": 3, "learning_rate": 0.1, "n_jobs": None})
register_probe("mlp", MLPProbe, {"hidden": [256], "dropout": [0.2, 0.5]})


def probe_spec(name: str) -> ProbeSpec:
    if name not in PROBES:
        raise KeyError(f"unknown probe {name!r}; available: {', '.join(PROBES)}")
    return PROBES[name]


def seeded(model: BaseEstimator, seed: int) -> BaseEstimator:
    """`model` with `random_state=seed` where it has one."""
    return model.set_params(random_state=seed) if "random_state" in model.get_params() else model


def grid_candidates(base: BaseEstimator, grid: dict[str, list]) -> list[BaseEstimator]:
    """Every point of `grid` (in its order, the last key varying fastest) set on a clone of `base`."""
    keys = list(grid)
    return [clone(base).set_params(**dict(zip(keys, values))) for values in itertools.product(*grid.values())]


def probe_grid(name: str, seed: int = 0) -> list[BaseEstimator]:
    """Every candidate estimator of the probe's linear-evaluation grid."""
    spec = probe_spec(name)
    return grid_candidates(seeded(spec.cls(), seed), spec.grid)


def default_probe(name: str, seed: int = 0) -> BaseEstimator:
    """The probe at its default hyper-parameters (layer choice runs before the grid search)."""
    return seeded(probe_spec(name).cls(), seed)
