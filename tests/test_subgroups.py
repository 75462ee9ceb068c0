"""Scores broken down by patient attributes: the datasets' attributes, the subgroup table's
counts and recalls, and `pipeline.py report --by`."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from classify.evaluation.metrics import uar, weighted_accuracy
from classify.jobs.report import write_report
from classify.jobs.subgroups import NOT_IN_DATA, select_attributes, subgroup_table, value_order
from embed.datasets import load_dataset
from embed.datasets.base import NOT_GIVEN
from embed.datasets.circor import ATTRIBUTE_FIELDS, load_circor
from pipeline import main
from tests.test_report import ENCODERS, make_run

CLASSES = ["Present", "Unknown", "Absent"]


def test_circor_attributes_come_from_each_patients_file(circor_mini):
    circor = load_circor(circor_mini)
    attributes = circor.group_attributes()
    assert set(attributes) == set(ATTRIBUTE_FIELDS) | {"recordings"}
    for name, (values, order) in attributes.items():
        assert set(values) == set(circor.patients), name  # every patient has a value
        assert set(values.values()) - {NOT_GIVEN}, name  # and the mini set has real ones
    for pid, patient in circor.patients.items():
        txt = (circor_mini / "training_data" / f"{pid}.txt").read_text()
        fields = dict(line[1:].split(": ", 1) for line in txt.splitlines() if line.startswith("#"))
        for name, (key, _) in ATTRIBUTE_FIELDS.items():
            assert attributes[name][0][pid] == (fields[key] if fields[key] != "nan" else NOT_GIVEN), (pid, name)
        assert attributes["recordings"][0][pid] == str(len(patient.recordings))
        if patient.murmur != "Present":  # the murmur fields describe murmurs only
            assert attributes["murmur_grade"][0][pid] == NOT_GIVEN
    grade, grade_order = attributes["murmur_grade"]
    assert set(grade.values()) - {NOT_GIVEN} <= set(grade_order)
    assert attributes["pregnancy"][0]["50782"] == "True" and attributes["campaign"][0]["50782"] == "CC2014"


def test_physionet2016_attribute_is_the_source_set(physionet2016_mini):
    data = load_dataset("physionet2016", physionet2016_mini)
    values, order = data.group_attributes()["source"]
    assert len(values) == 60 and all(value == f"training-{rid[0]}" for rid, value in values.items())
    assert list(order) == [f"training-{x}" for x in "abcdef"]


def test_value_order_follows_the_dataset_then_sorts_then_puts_missing_last():
    assert value_order(["b", NOT_GIVEN, "Child", "z", "Infant", NOT_IN_DATA, "a"], ("Infant", "Child", "Teen")) == [
        "Infant", "Child", "a", "b", "z", NOT_GIVEN, NOT_IN_DATA]


def test_subgroup_rows_count_and_score_their_own_predictions():
    rng = np.random.default_rng(3)
    n = 300
    frame = pd.DataFrame({"encoder": "enc", "probe": rng.choice(["linear", "xgboost"], n),
                          "patient_id": rng.integers(0, 60, n).astype(str), "split": "s",
                          "label": rng.integers(0, 3, n), "prediction": rng.integers(0, 3, n)})
    colour = {str(p): ["red", "blue", "green"][p % 3] for p in range(50)}  # patients 50-59 are not in the data
    table = subgroup_table(frame, {"colour": (colour, ("green", "red"))}, CLASSES, ["weighted_accuracy", "uar"])
    for probe in ("linear", "xgboost"):
        mine = table[table.probe == probe]
        assert mine["value"].tolist() == ["green", "red", "blue", NOT_IN_DATA]
        assert mine["predictions"].sum() == (frame.probe == probe).sum()
        for row in mine.to_dict("records"):
            ids = frame.patient_id.astype(int)
            value = np.where(ids >= 50, NOT_IN_DATA, np.array(["red", "blue", "green"])[ids % 3])
            part = frame[(frame.probe == probe) & (value == row["value"])]
            assert row["patients"] == part.patient_id.nunique()
            for k, c in enumerate(CLASSES):
                truth = part[part.label == k]
                assert row[f"n_{c.lower()}"] == len(truth)
                assert row[f"recall_{c.lower()}"] == pytest.approx((truth.prediction == k).mean())
            assert row["weighted_accuracy"] == pytest.approx(weighted_accuracy(part.label, part.prediction))
            assert row["uar"] == pytest.approx(uar(part.label, part.prediction))


def test_a_class_missing_from_a_subgroup_has_no_recall():
    frame = pd.DataFrame({"encoder": "e", "probe": "p", "patient_id": ["1", "2", "3"], "split": "s",
                          "label": [0, 0, 2], "prediction": [0, 2, 2]})
    table = subgroup_table(frame, {"grade": ({"1": "I/VI", "2": "I/VI", "3": NOT_GIVEN}, ("I/VI",))}, CLASSES, ["uar"])
    graded = table[table.value == "I/VI"].iloc[0]
    assert graded.recall_present == 0.5 and graded.n_unknown == 0 and np.isnan(graded.recall_unknown)
    assert graded.uar == 0.5  # over the classes the subgroup holds


def test_unknown_attribute_foreign_patients_and_empty_runs_are_refused():
    with pytest.raises(ValueError, match=r"circor has no attribute 'colour'.*age"):
        select_attributes({"age": ({}, ())}, ["colour"], "circor")
    frame = pd.DataFrame({"encoder": "e", "probe": "p", "patient_id": ["a"], "split": "s", "label": [0], "prediction": [0]})
    with pytest.raises(ValueError, match="none of the runs' patients"):
        subgroup_table(frame, {"age": ({"b": "Child"}, ())}, CLASSES, [])
    with pytest.raises(ValueError, match="no test predictions"):
        subgroup_table(frame.iloc[:0], {"age": ({"a": "Child"}, ())}, CLASSES, [])


def test_report_writes_the_best_rows_subgroups(tmp_path):
    run = make_run(tmp_path / "run", rows=ENCODERS[::-1])  # the best row last in the files
    scores = pd.read_csv(run / "scores.csv")
    ghost = scores.iloc[:1].assign(encoder="ghost", weighted_accuracy=0.99)  # scores but no predictions
    pd.concat([scores, ghost]).to_csv(run / "scores.csv", index=False)
    half = {str(10000 + i): ("even" if i % 2 == 0 else "odd") for i in range(40)}
    report = write_report([run], tmp_path / "out", attributes={"parity": (half, ("odd", "even"))})
    text = report.path.read_text()
    assert "## Subgroups" in text and "**parity**" in text and "![Recall per subgroup](subgroups.png)" in text
    assert (tmp_path / "out" / "subgroups.png").read_bytes()[:4] == b"\x89PNG"
    table = pd.read_csv(tmp_path / "out" / "subgroups.csv")
    assert len(table) == 3 * 2  # every encoder × probe, both values
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert summary.encoder.iloc[0] == "ghost"  # best on the scores, but nothing to break down
    best = summary.iloc[1]
    assert f"**{best.encoder} × {best.probe}**" in text
    section = text.split("**parity**")[1]
    first = [c.strip() for c in section.split("\n| odd |")[1].split("\n")[0].split("|")]
    row = table[(table.encoder == best.encoder) & (table.probe == best.probe) & (table.value == "odd")].iloc[0]
    assert first[1] == str(row.predictions) and first[2] == f"{row.recall_present:.3f} ({row.n_present})"


def test_cli_report_by_needs_data_and_reads_the_attributes(circor_mini, tmp_path, capsys):
    ids = sorted(load_circor(circor_mini).patients)
    run = make_run(tmp_path / "run", n=40)
    preds = pd.read_csv(run / "predictions.csv")
    preds["patient_id"] = preds.patient_id.map(lambda p: ids[p - 10000])
    preds.to_csv(run / "predictions.csv", index=False)
    assert main(["report", "--runs", str(run), "--out", str(tmp_path / "a"), "--by", "age"]) == 2
    assert "--by needs --data" in capsys.readouterr().err
    assert main(["report", "--runs", str(run), "--out", str(tmp_path / "b"), "--by", "age,colour",
                 "--data", str(circor_mini)]) == 2
    assert "no attribute 'colour'" in capsys.readouterr().err
    assert main(["report", "--runs", str(run), "--out", str(tmp_path / "c"), "--by", "age,murmur_grade",
                 "--data", str(circor_mini)]) == 0
    table = pd.read_csv(tmp_path / "c" / "subgroups.csv")
    assert set(table.attribute) == {"age", "murmur_grade"} and NOT_IN_DATA not in set(table.value)
