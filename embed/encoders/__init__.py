"""Frozen audio encoders.

Every module in this package registers its encoder with `@register("name")` when imported;
importing the package imports them all, so adding an encoder is adding one file. Optional
third-party packages (tflite, torchcrepe, ...) are imported inside the encoder's `__init__`,
never at module level, so a missing extra never breaks the registry.
"""
import importlib
import pkgutil

from .base import POOLINGS, Encoder, pool
from .registry import available, cache_name_matches, create, get_class, register, spec_of_config, split_spec

_INFRASTRUCTURE = {"base", "registry", "checkpoint", "frontend", "vit", "kaldi_fbank"}
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _INFRASTRUCTURE and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Encoder", "POOLINGS", "pool", "available", "cache_name_matches", "create", "get_class", "register",
           "spec_of_config", "split_spec"]
