from collections import Counter

import pytest

from embed.datasets.circor import load_circor, paper_split, stratify_key
from embed.datasets.splits import make_splits, read_splits, write_splits


@pytest.fixture(scope="module")
def circor(synthetic_data):
    return load_circor(synthetic_data)


def test_paper_split_proportions_and_determinism(circor):
    split = paper_split(circor, 14)
    assert set(split) == set(circor.patients)
    counts = Counter(split.values())
    assert counts["test"] == 10 and counts["val"] == 4 and counts["train"] == 26
    assert split == paper_split(circor, 14)
    assert split != paper_split(circor, 42)


def test_paper_split_keeps_murmur_proportions(circor):
    """Stratified by outcome and murmur: each class's share of test stays near its share overall."""
    split = paper_split(circor, 42)
    for murmur in ("Present", "Unknown", "Absent"):
        members = [p for p, patient in circor.patients.items() if patient.murmur == murmur]
        in_test = sum(split[p] == "test" for p in members)
        assert abs(in_test - 0.25 * len(members)) <= 1.5, murmur
    assert len({stratify_key(circor, p) for p in circor.patients}) > 1


def test_kfold_tests_every_patient_once(circor):
    folds = make_splits(circor, "kfold", seed=3, folds=4)
    tested = Counter(p for split in folds.values() for p, v in split.items() if v == "test")
    assert set(tested) == set(circor.patients) and set(tested.values()) == {1}


def test_campaign_split_holds_out_a_campaign(circor):
    for name, split in make_splits(circor, "campaign").items():
        held = name.removeprefix("test_")
        for pid, part in split.items():
            assert (part == "test") == (circor.patients[pid].campaign == held)


def test_split_csv_roundtrip(circor, tmp_path):
    splits = make_splits(circor, "paper")
    write_splits(splits, tmp_path / "s.csv")
    assert read_splits(tmp_path / "s.csv") == splits
    assert (tmp_path / "s.csv").read_text().splitlines()[0] == "patient_id,split1,split2,split3"
