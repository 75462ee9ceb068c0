"""Datasets: each module reads one corpus's layout and registers its loader (see `base.py`).

Importing the package imports every dataset module, so adding a dataset is adding one file
with a `@register_dataset("name")` loader.
"""
import importlib
import pkgutil

from .base import Dataset, Recording, available_datasets, load_dataset, register_dataset

_INFRASTRUCTURE = {"base", "splits", "inputs", "download", "synthetic"}
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _INFRASTRUCTURE and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Dataset", "Recording", "available_datasets", "load_dataset", "register_dataset"]
