"""The runs of an evaluation: every split x seed, named as scores.csv names them. `probe` and
`recipe` both take their runs from `split_runs` and score each into a `SplitResult`."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Run:
    name: str  # the run's name in scores.csv: SPLIT, or SPLIT@seedS
    split_name: str
    split: dict[str, str]
    seed: int


def split_runs(splits: dict[str, dict[str, str]], seeds: int = 1, first_seed: int = 0, *,
               seed_major: bool = True, name_seed: bool = False) -> list[Run]:
    """Every split with seeds first_seed, first_seed + 1, ...; `seed_major`: all splits of one seed
    before the next seed (`probe --repeats`), else all seeds of one split together (a recipe, whose
    segmenters are fit once per split); runs are named SPLIT@seedS when there are several seeds or
    `name_seed` asks for it."""
    pairs = ([(name, s) for s in range(seeds) for name in splits] if seed_major
             else [(name, s) for name in splits for s in range(seeds)])
    tagged = name_seed or seeds > 1
    return [Run(f"{name}@seed{first_seed + s}" if tagged else name, name, splits[name], first_seed + s)
            for name, s in pairs]
