"""Run a list of independent fits here, one after another, or as Ray tasks across a cluster.

A fit's result depends only on its arguments (seeds included, one BLAS thread inside), so both
backends return the same results in the same order. Large arguments shared by many fits (the
dataset, an encoder's embeddings) are wrapped in `Shared` and sent to the cluster once.
"""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Callable, Literal

from tqdm import tqdm

if TYPE_CHECKING:
    from embed.ray_backend import RayOptions

Backend = Literal["local", "ray"]


class Shared:
    """An argument many tasks receive: put in the Ray object store once, not once per task."""

    def __init__(self, value: Any) -> None:
        self.value = value


def run_tasks(fn: Callable, tasks: list[tuple[tuple, dict]], backend: Backend = "local",
              ray: "RayOptions | None" = None, progress: bool = True, desc: str = "fit") -> list:
    """`[fn(*args, **kwargs) for args, kwargs in tasks]`, locally or as Ray tasks (one CPU each)."""
    if backend not in ("local", "ray"):
        raise ValueError(f"backend must be 'local' or 'ray', got {backend!r}")
    bar = tqdm(total=len(tasks), desc=desc, unit="fit", disable=not progress, leave=False, file=sys.stderr)
    try:
        if backend == "local":
            out = []
            for args, kwargs in tasks:
                out.append(fn(*_unwrap(args), **dict(zip(kwargs, _unwrap(kwargs.values())))))
                bar.update(1)
            return out
        return _run_on_ray(fn, tasks, ray, bar)
    finally:
        bar.close()


def _unwrap(values) -> list:
    return [v.value if isinstance(v, Shared) else v for v in values]


def _run_on_ray(fn: Callable, tasks: list[tuple[tuple, dict]], options: "RayOptions | None", bar: tqdm) -> list:
    try:
        import ray
    except ImportError:
        raise RuntimeError("--backend ray needs Ray: pip install -e '.[ray]'") from None
    from embed.ray_backend import RayOptions, connect

    started = connect(options or RayOptions())
    try:
        refs: dict[int, Any] = {}  # id(Shared) -> its object reference, put once

        def to_ref(v):
            if not isinstance(v, Shared):
                return v
            if id(v) not in refs:
                refs[id(v)] = ray.put(v.value)
            return refs[id(v)]

        remote = ray.remote(num_cpus=1)(fn)
        futures = [remote.remote(*map(to_ref, args), **{k: to_ref(v) for k, v in kwargs.items()})
                   for args, kwargs in tasks]
        waiting = list(futures)
        while waiting:
            ready, waiting = ray.wait(waiting, num_returns=1)
            bar.update(len(ready))
        return ray.get(futures)
    finally:
        if started:
            ray.shutdown()
