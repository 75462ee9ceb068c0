"""One registry of encoders (timm-style): a new encoder is one file plus one registration."""
from __future__ import annotations

from typing import Callable

from .base import Encoder

_REGISTRY: dict[str, type[Encoder]] = {}


def register(name: str) -> Callable[[type[Encoder]], type[Encoder]]:
    def add(cls: type[Encoder]) -> type[Encoder]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"encoder name {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return add


def available() -> list[str]:
    return sorted(_REGISTRY)


def get_class(name: str) -> type[Encoder]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown encoder {name!r}; available: {', '.join(available())}") from None


def create(name: str, checkpoint=None, **kwargs) -> Encoder:
    """Build an encoder by registry name, e.g. `create('mn04', 'mn04_as.pt', device='cuda')`."""
    return get_class(name)(checkpoint, **kwargs)
