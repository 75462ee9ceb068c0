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
    """The class of a registry name, or of `NAME:TARGET` (e.g. `hear:MODULE`)."""
    family = name.partition(":")[0]
    try:
        return _REGISTRY[family]
    except KeyError:
        raise KeyError(f"unknown encoder {family!r}; available: {', '.join(available())}") from None


def create(name: str, checkpoint=None, **kwargs) -> Encoder:
    """Build an encoder by registry name, e.g. `create('mn04', 'mn04_as.pt', device='cuda')`;
    `NAME:TARGET` sets the option the encoder names in `name_option` (`create('hear:my_module')`)."""
    cls = get_class(name)
    _, sep, target = name.partition(":")
    if sep:
        if cls.name_option is None or not target:
            raise ValueError(f"encoder {cls.name!r} takes no :TARGET in its name (got {name!r})")
        kwargs[cls.name_option] = target
    return cls(checkpoint, **kwargs)


def split_spec(spec: str) -> tuple[str, list[str]]:
    """`NAME[:TARGET][:MORE...]` -> (`NAME[:TARGET]`, [MORE, ...]): the part after NAME is the
    encoder's TARGET when it takes one (`name_option`) and the part is no KEY=VALUE."""
    name, *rest = spec.split(":")
    if rest and "=" not in rest[0] and get_class(name).name_option:
        name, rest = f"{name}:{rest[0]}", rest[1:]
    return name, rest


def spec_of_config(config: dict) -> str:
    """The registry name (`NAME[:TARGET]`) that builds the encoder of a cache configuration."""
    option = get_class(config["encoder"]).name_option
    return config["encoder"] + (f":{config[f'cfg_{option}']}" if option else "")


def cache_name_matches(spec_name: str, config: dict) -> bool:
    """Whether a cache of `config` is one of `NAME[:TARGET]` (a TARGET is matched in the config)."""
    family, sep, target = spec_name.partition(":")
    if config.get("encoder") != family:
        return False
    return not sep or config.get(f"cfg_{get_class(family).name_option}") == target
