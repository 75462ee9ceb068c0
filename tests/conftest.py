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


# The default CPU precision follows the machine (bf16 where it is native and safe); the tests pin
# fp32 so their tolerances hold on every CPU. tests/test_precision.py checks the default itself.
os.environ["HEARTPROBE_CPU_BF16"] = "0"


@pytest.fixture(scope="module", autouse=True)
def _drop_generated_checkpoints(tmp_path_factory):
    """Generated checkpoints in the official layouts are full-size (a ViT-B is 330 MB); delete
    those a test module wrote once it is done, so the suite's disk peak stays near one module's
    (all of them together came to 7 GB) instead of growing to the sum."""
    root = tmp_path_factory.getbasetemp()
    before = {p for p in root.rglob("*") if p.is_file()}
    yield
    for path in root.rglob("*"):
        if path not in before and path.is_file() and path.stat().st_size > 20 * 2**20:
            path.unlink()
