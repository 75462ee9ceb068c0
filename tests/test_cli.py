"""End to end through the command line, on synthetic CirCor-format data."""
import pandas as pd
import pytest

from pipeline import main


def test_splits_extract_probe(synthetic_data, tmp_path, capsys):
    splits = tmp_path / "splits.csv"
    assert main(["splits", "--data", str(synthetic_data), "--out", str(splits)]) == 0
    assert main(["extract", "--data", str(synthetic_data), "--encoder", "logmel", "--cache", str(tmp_path / "c")]) == 0
    out = tmp_path / "run"
    assert main(["probe", "--data", str(synthetic_data), "--encoder", "logmel", "--probe", "linear",
                 "--splits", str(splits), "--cache", str(tmp_path / "c"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "weighted_accuracy" in printed and "±" in printed
    scores = pd.read_csv(out / "scores.csv")
    assert scores["split"].tolist() == ["split1", "split2", "split3"]
    assert scores["weighted_accuracy"].between(0, 1).all()
    # the synthetic murmurs are audible: a linear probe on log-mel statistics must beat chance
    assert scores["auroc"].mean() > 0.6
    preds = pd.read_csv(out / "predictions.csv")
    assert list(preds.columns) == ["encoder", "probe", "patient_id", "split", "label", "prediction",
                                   "p_present", "p_unknown", "p_absent"]
    assert len(preds) == 3 * 10  # every test patient of every split
    assert (abs(preds[["p_present", "p_unknown", "p_absent"]].sum(axis=1) - 1) < 1e-3).all()


def test_probe_without_cache_fails_clearly(synthetic_data, tmp_path, capsys):
    code = main(["probe", "--data", str(synthetic_data), "--encoder", "logmel", "--cache", str(tmp_path)])
    assert code == 2
    assert "no embedding cache for 'logmel'" in capsys.readouterr().err


def test_unknown_encoder_is_named(synthetic_data, tmp_path, capsys):
    assert main(["extract", "--data", str(synthetic_data), "--encoder", "nope", "--cache", str(tmp_path)]) == 2
    assert "unknown encoder 'nope'" in capsys.readouterr().err


def test_decision_choices_are_the_rule_registry(monkeypatch, capsys):
    from typing import get_args

    from classify.evaluation.rules import RULES, DecisionName, MeanRule
    from pipeline import build_parser
    assert set(get_args(DecisionName)) == set(RULES)  # the Literal type names the registered rules

    def parsed(decision: str) -> str:
        return build_parser().parse_args(["probe", "--data", "d", "--decision", decision]).decision

    assert [parsed(name) for name in RULES] == list(RULES)

    class MedianRule(MeanRule):
        name, suffix, summary = "median", "+median", "stand-in for a newly registered rule"

    with pytest.raises(SystemExit):
        parsed("median")
    assert "invalid choice: 'median'" in capsys.readouterr().err
    monkeypatch.setitem(RULES, "median", MedianRule)
    assert parsed("median") == "median"  # a rule registered later is a choice without touching the CLI
    with pytest.raises(SystemExit):
        build_parser().parse_args(["probe", "--help"])
    shown = capsys.readouterr().out
    assert "{" + ",".join(RULES) + "}" in shown.replace(" ", "").replace("\n", "")
    assert list(RULES)[-1] == "median"
    assert all(f"{name}: {rule.summary}" in shown for name, rule in RULES.items())


def test_demo_runs_end_to_end_reuses_its_work_folder_and_cleans_up(tmp_path, capsys):
    import glob
    import json
    import shlex
    from pathlib import Path
    work = tmp_path / "demo"
    assert main(["demo", "--patients", "20", "--workdir", str(work)]) == 0
    out = capsys.readouterr().out
    assert "0 already cached" in out
    scores = pd.read_csv(work / "out" / "scores.csv")
    assert set(scores["probe"]) == {"linear+any", "xgboost+any"} and len(scores) == 6
    # it saves a model and prints a predict command for a test patient of the first split; that command works
    command = shlex.split(out.split("python pipeline.py ", 1)[1].splitlines()[0])
    assert command[:3] == ["predict", "--model", str(work / "model")] and command[4].endswith("_*.wav")
    unseen = Path(command[4]).name.split("_")[0]
    first_split = pd.read_csv(work / "out" / "predictions.csv", dtype={"patient_id": str}).query("split == 'split1'")
    assert unseen in set(first_split["patient_id"])  # scored as a test patient, so never trained on
    assert main([*command[:4], *sorted(glob.glob(command[4])), *command[5:]]) == 0
    call = json.loads((work / "predictions" / f"{unseen}.json").read_text())
    assert call["model"]["encoder"] == "logmel" and call["class"] in ("Present", "Unknown", "Absent")
    assert main(["demo", "--patients", "20", "--workdir", str(work), "--clean"]) == 0
    out = capsys.readouterr().out
    assert "0 recordings embedded" in out and "already cached" in out and f"removed {work}" in out
    assert not work.exists()


def test_benchmark_times_every_precision_and_batch_size(capsys):
    from embed.benchmark import measure
    from embed.encoders import create
    result = measure(create("logmel"), windows=10, batch_size=4, window_s=2.0)
    assert result.windows == 10 and result.seconds > 0
    assert result.realtime_factor == pytest.approx(2.0 * 10 / result.seconds)
    assert main(["benchmark", "--encoder", "logmel", "--precision", "fp32,bf16", "--batch-size", "2,4",
                 "--windows", "4", "--window", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "windows/s" in line]
    assert [r.split()[2:5] for r in rows] == [["fp32", "batch", "2:"], ["fp32", "batch", "4:"],
                                              ["bf16", "batch", "2:"], ["bf16", "batch", "4:"]]
