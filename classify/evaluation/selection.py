"""The one selection loop: probe hyper-parameters, stacker C and decision-rule grids all use it."""
from __future__ import annotations

from typing import Callable, Iterable, TypeVar

Candidate = TypeVar("Candidate")


def select_best(candidates: Iterable[Candidate], score: Callable[[Candidate], tuple[object, object]]
                ) -> tuple[Candidate, object, object]:
    """The candidate with the highest score (the first of equals); `score` returns (score, extra),
    scores being numbers or tuples (compared left to right: ties go to the next metric)."""
    best = None
    for candidate in candidates:
        value, extra = score(candidate)
        if best is None or value > best[1]:
            best = (candidate, value, extra)
    if best is None:
        raise ValueError("no candidates to choose from")
    return best
