"""PhysioNet/CinC 2016 as the second dataset: parsing the original layout, its splits, and
extract -> probe -> predict end to end through the same commands as CirCor."""
from __future__ import annotations

import json
import shutil
from collections import Counter

import pandas as pd
import pytest

import pipeline
from classify.task import Task
from embed.datasets import available_datasets, load_dataset
from embed.datasets.physionet2016 import load_physionet2016


def test_mini_parses_with_labels_sources_and_no_problems(physionet2016_mini):
    data = load_dataset("physionet2016", physionet2016_mini)
    assert "physionet2016" in available_datasets() and "circor" in available_datasets()
    assert len(data.recordings()) == 60 and not data.problems
    assert data.classes == ("abnormal", "normal")
    reference = {}
    for ref in physionet2016_mini.glob("training-*/REFERENCE.csv"):
        for line in ref.read_text().split():
            name, label = line.split(",")
            reference[name] = 0 if label == "1" else 1
    assert data.group_labels() == reference
    assert Counter(r.source for r in data.recordings()) == {f"training-{x}": 10 for x in "abcdef"}
    task = Task.from_dataset(data)
    assert task.scoring.primary == "macc" and task.recordings_of["a0001"] == ["a0001"]


def test_splits_cover_every_recording_and_leave_one_source_out(physionet2016_mini):
    data = load_physionet2016(physionet2016_mini)
    folds = data.splits("kfold", seed=0, folds=5)
    tested = Counter(g for split in folds.values() for g, part in split.items() if part == "test")
    assert set(tested) == set(data.group_ids()) and set(tested.values()) == {1}
    for split in folds.values():  # stratified: both classes in every test fold
        assert {data.group_labels()[g] for g, part in split.items() if part == "test"} == {0, 1}
    sources = data.splits("source")
    assert sorted(sources) == [f"test_training-{x}" for x in "abcdef"]
    for name, split in sources.items():
        held = name.removeprefix("test_")
        assert all((part == "test") == (data.by_id[g].source == held) for g, part in split.items())
        assert Counter(split.values())["val"] > 0
    with pytest.raises(ValueError, match="kfold, source"):
        data.splits("paper")


def test_bad_reference_lines_and_files_are_named_and_skipped(physionet2016_mini, tmp_path):
    for set_name in ("training-a", "training-b"):
        shutil.copytree(physionet2016_mini / set_name, tmp_path / set_name)
    ref = tmp_path / "training-a" / "REFERENCE.csv"
    lines = ref.read_text().split()
    assert lines[1].startswith("a0002,")
    lines[1] = "a0002,0"
    ref.write_text("\n".join(lines + [lines[0], "a9999,1", "../x,1"]) + "\n")
    (tmp_path / "training-b" / "b0001.wav").unlink()
    data = load_physionet2016(tmp_path)
    messages = [f"{p.path}: {p.message}" for p in data.problems]
    assert any("listed twice" in m for m in messages)
    assert any("a9999.wav" in m and "missing" in m for m in messages)
    assert any("REFERENCE.csv:" in m and "'a0002,0'" in m for m in messages)
    assert any("bad recording name" in m for m in messages)
    assert any("b0001.wav" in m for m in messages)
    assert len(data.recordings()) == 18 and "a0002" not in data.group_labels()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no PhysioNet 2016 data here"):
        load_physionet2016(tmp_path / "empty")


def test_extract_probe_predict_end_to_end(physionet2016_mini, tmp_path, capsys):
    cache, out, model = tmp_path / "cache", tmp_path / "out", tmp_path / "model"
    base = ["--dataset", "physionet2016", "--data", str(physionet2016_mini)]
    assert pipeline.main(["extract", *base, "--cache", str(cache)]) == 0
    assert pipeline.main(["probe", *base, "--cache", str(cache), "--out", str(out), "--splits", "source",
                          "--save-model", str(model)]) == 0
    scores = pd.read_csv(out / "scores.csv")
    assert list(scores.columns[3:8]) == ["macc", "recall_abnormal", "recall_normal", "auroc", "n_patients"]
    assert len(scores) == 6 and scores["n_patients"].tolist() == [10] * 6 and "val_macc" in scores
    assert ((scores["recall_abnormal"] + scores["recall_normal"]) / 2 - scores["macc"]).abs().max() < 1e-3
    preds = pd.read_csv(out / "predictions.csv")
    assert {"p_abnormal", "p_normal"} <= set(preds.columns) and len(preds) == 60
    capsys.readouterr()
    wav = physionet2016_mini / "training-a" / "a0001.wav"
    assert pipeline.main(["predict", "--model", str(model), "--input", str(wav), "--out", str(tmp_path / "p")]) == 0
    result = json.loads((tmp_path / "p" / "a0001.json").read_text())
    assert result["class"] in ("abnormal", "normal") and set(result["probabilities"]) == {"abnormal", "normal"}
