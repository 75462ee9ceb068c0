"""Datasets: each module reads one corpus's layout and registers it (see `base.py`)."""
from .base import Dataset, Recording, available_datasets, load_dataset, register_dataset
from . import circor, physionet2016  # noqa: F401,E402  (registrations)

__all__ = ["Dataset", "Recording", "available_datasets", "load_dataset", "register_dataset"]
