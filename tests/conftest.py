"""Shared fixtures: a synthetic CirCor-format dataset and the real mini subset when present."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from embed.datasets.synthetic import make_dataset

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HEARTPROBE_SHARED", REPO.parent / "shared"))
CIRCOR_MINI = SHARED / "circor-mini"
PHYSIONET2016_MINI = SHARED / "physionet2016-mini"


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("synthetic"), n_patients=40, seed=1)


@pytest.fixture(scope="session")
def circor_mini() -> Path:
    if not (CIRCOR_MINI / "training_data.csv").exists():
        pytest.skip("../shared/circor-mini not present")
    return CIRCOR_MINI


@pytest.fixture(scope="session")
def physionet2016_mini() -> Path:
    if not (PHYSIONET2016_MINI / "training-a" / "REFERENCE.csv").exists():
        pytest.skip("../shared/physionet2016-mini not present")
    return PHYSIONET2016_MINI
