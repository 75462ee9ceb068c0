"""The report generator: markdown numbers, CIs, confusion counts and PNGs from run folders."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from classify.evaluation.metrics import Scoring, bootstrap_ci, confusion, weighted_accuracy
from classify.jobs.report import PAPER_FINETUNED, PAPER_LABEL, confusions, load_runs, write_report
from pipeline import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MURMUR = Scoring(("Present", "Unknown", "Absent"), ("weighted_accuracy", "uar"), (5.0, 3.0, 1.0))
ENCODERS = [("mn04", "linear", 0.8), ("ens:mean(mn04+yamnet)", "linear+loc", 0.65), ("logmel", "xgboost", 0.45)]


def make_run(folder: Path, rows=ENCODERS, splits=("split1", "split2", "split3"), n: int = 40, seed: int = 0,
             **to_csv) -> Path:
    """A run folder whose scores.csv is computed from its predictions.csv, like `probe` writes it."""
    rng = np.random.default_rng(seed)
    scores, preds = [], []
    for encoder, probe, skill in rows:
        for split in splits:
            labels = rng.choice(3, n, p=[0.25, 0.1, 0.65])
            guess = rng.integers(0, 3, n)
            prediction = np.where(rng.random(n) < skill, labels, guess)
            proba = rng.dirichlet(np.ones(3), n)
            proba[np.arange(n), prediction] += 1
            proba /= proba.sum(axis=1, keepdims=True)
            scores.append({"encoder": encoder, "probe": probe, "split": split,
                           **MURMUR.all(labels, prediction, proba), "val_weighted_accuracy": 0.5, "params": "C=1"})
            preds.append(pd.DataFrame({"encoder": encoder, "probe": probe, "patient_id": 10000 + np.arange(n),
                                       "split": split, "label": labels, "prediction": prediction,
                                       "p_present": proba[:, 0], "p_unknown": proba[:, 1], "p_absent": proba[:, 2]}))
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(scores).to_csv(folder / "scores.csv", index=False, float_format="%.4f", **to_csv)
    pd.concat(preds).to_csv(folder / "predictions.csv", index=False, float_format="%.4f", **to_csv)
    return folder


def table_rows(markdown: str) -> list[list[str]]:
    lines = [l for l in markdown.splitlines() if l.startswith("| ")]
    header = next(i for i, l in enumerate(lines) if l.startswith("| encoder "))
    rows = []
    for line in lines[header + 1:]:
        if line.startswith("| true"):
            break
        rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    base = tmp_path_factory.mktemp("report")
    run = make_run(base / "run")
    result = write_report([run], base / "report")
    assert result.table in result.path.read_text()  # what `pipeline.py report` prints
    return run, result.path


def test_table_rows_and_means_match_the_csv(report):
    run, path = report
    scores = pd.read_csv(run / "scores.csv")
    rows = table_rows(path.read_text())
    ours = [r for r in rows if r[1] != f"**{PAPER_LABEL}**"]
    assert [(r[0], r[1]) for r in ours] == [(e, p) for e, p, _ in ENCODERS]  # sorted by mean W.acc
    for r in ours:
        group = scores[(scores.encoder == r[0]) & (scores.probe == r[1])]
        assert r[2] == "3"
        for cell, col in zip([r[3], r[5], r[7], r[8], r[9], r[10]],
                             ["weighted_accuracy", "uar", "recall_present", "recall_unknown", "recall_absent",
                              "auroc"]):
            assert cell == f"{group[col].mean():.3f} ± {group[col].std(ddof=0):.3f}", (r[:2], col)
    means = [float(r[3].split(" ")[0]) for r in ours]
    assert means == sorted(means, reverse=True)


def test_paper_reference_rows(report, tmp_path):
    run, path = report
    rows = {r[0]: r for r in table_rows(path.read_text()) if r[1] == f"**{PAPER_LABEL}**"}
    assert set(rows) == set(PAPER_FINETUNED)
    assert rows["M2D"][3] == "0.832" and rows["M2D"][5] == "0.713"
    assert rows["BYOL-A"][3] == "0.556"
    assert "Niizumi" in path.read_text()
    bare = write_report([run], tmp_path / "bare", paper_reference=False).path.read_text()
    assert PAPER_LABEL not in bare and "0.832" not in bare
    assert len(table_rows(bare)) == len(ENCODERS)


def test_bootstrap_ci_pools_test_patients(report):
    run, path = report
    preds = pd.read_csv(run / "predictions.csv")
    group = preds[preds.encoder == "mn04"]
    lo, hi = bootstrap_ci(group.label.to_numpy(), group.prediction.to_numpy(), weighted_accuracy, 1000, 0)
    row = next(r for r in table_rows(path.read_text()) if r[0] == "mn04")
    assert row[4] == f"[{lo:.3f}, {hi:.3f}]"
    pooled = weighted_accuracy(group.label.to_numpy(), group.prediction.to_numpy())
    assert lo <= pooled <= hi and hi - lo > 0.01


def test_confusion_counts_match_predictions(report):
    run, path = report
    preds = pd.read_csv(run / "predictions.csv")
    text = path.read_text()
    matrices = confusions(preds.astype({"encoder": str, "probe": str}), 3)
    for encoder, probe, _ in ENCODERS:
        group = preds[(preds.encoder == encoder) & (preds.probe == probe)]
        expected = confusion(group.label.to_numpy(), group.prediction.to_numpy())
        assert expected.sum() == 3 * 40
        np.testing.assert_array_equal(matrices[(encoder, probe)], expected)
        block = text.split(f"**{encoder} × {probe}**")[1].split("\n\n", 2)[1].splitlines()[2:5]
        shown = np.array([[int(v) for v in line.strip("| ").split(" | ")[1:]] for line in block])
        np.testing.assert_array_equal(shown, expected)


def test_pngs_are_written_and_linked(report):
    _, path = report
    text = path.read_text()
    for name in ("scores.png", "confusion.png", "recalls.png"):
        png = path.parent / name
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000, name
        assert f"]({name})" in text
    assert "Produced by" in text


def test_runs_are_concatenated_and_deduplicated(tmp_path):
    a = make_run(tmp_path / "a", rows=ENCODERS[:2])
    b = make_run(tmp_path / "b", rows=ENCODERS[1:], seed=1)
    with pytest.warns(UserWarning, match="differ between runs"):  # ENCODERS[1] is in both, with other numbers
        scores, preds = load_runs([a, b])
    assert len(scores) == 3 * 3 and not scores.duplicated(["encoder", "probe", "split"]).any()
    assert len(preds) == 3 * 3 * 40
    later = pd.read_csv(b / "scores.csv").query("probe == 'linear+loc'")
    kept = scores.query("probe == 'linear+loc'")
    np.testing.assert_allclose(kept.weighted_accuracy, later.weighted_accuracy)
    with warnings.catch_warnings():  # the same run twice: identical rows, silently merged
        warnings.simplefilter("error")
        scores, preds = load_runs([a, a])
    assert len(scores) == 2 * 3 and len(preds) == 2 * 3 * 40


def test_missing_run_folder_is_named(tmp_path):
    run = make_run(tmp_path / "ok", rows=ENCODERS[:1])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        write_report([run, tmp_path / "nowhere"], tmp_path / "r")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty has no scores\.csv"):
        write_report([tmp_path / "empty"], tmp_path / "r")


def test_cli_report(tmp_path, capsys):
    run = make_run(tmp_path / "run", rows=ENCODERS[:1], splits=("split1", "split2"), n=20)
    assert main(["report", "--runs", str(run)]) == 0  # default --out: the first run folder
    printed = capsys.readouterr().out
    assert "| mn04 | linear | 2 |" in printed and (run / "report.md").is_file() and (run / "scores.png").is_file()
    assert main(["report", "--runs", str(run), str(tmp_path / "gone"), "--out", str(tmp_path / "r")]) == 2
    assert "gone" in capsys.readouterr().err


def test_two_class_runs_report_their_own_metric_and_classes(tmp_path):
    """A PhysioNet 2016 run: MAcc first, abnormal/normal recalls and matrices, no CirCor paper rows."""
    rng = np.random.default_rng(0)
    scoring = Scoring(("abnormal", "normal"), ("macc", "auroc"))
    scores, preds = [], []
    for split in ("fold1", "fold2"):
        labels = rng.integers(0, 2, 30)
        prediction = np.where(rng.random(30) < 0.8, labels, 1 - labels)
        proba = np.eye(2)[prediction] * 0.6 + 0.2
        scores.append({"encoder": "logmel", "probe": "linear", "split": split,
                       **scoring.all(labels, prediction, proba), "val_macc": 0.5, "params": "C=1"})
        preds.append(pd.DataFrame({"encoder": "logmel", "probe": "linear", "patient_id": [f"a{i:04d}" for i in range(30)],
                                   "split": split, "label": labels, "prediction": prediction,
                                   "p_abnormal": proba[:, 0], "p_normal": proba[:, 1]}))
    run = tmp_path / "pn"
    run.mkdir()
    pd.DataFrame(scores).to_csv(run / "scores.csv", index=False)
    pd.concat(preds).to_csv(run / "predictions.csv", index=False)
    result = write_report([run], tmp_path / "out")
    head = result.table.splitlines()[0]
    assert head.startswith("| encoder | probe | splits | MAcc | MAcc 95% CI | Rec. Abnormal | Rec. Normal | AUROC")
    assert PAPER_LABEL not in result.path.read_text()
    assert "| true \\ predicted | Abnormal | Normal |" in result.path.read_text()


# -- run folders are untrusted: ids, cells and files as an attacker or a careless user leaves them -----

HOSTILE = [('=HYPERLINK("http://evil.example","open")', "+cmd|' /C calc'!A0"),
           ("<script>alert(1)</script>", "a|b\nc"),
           ("[click](javascript:alert(1))", f"**{PAPER_LABEL}**"),
           ("@SUM(1+1)", "\tlinear"), ("-2+3", "\rtab"), ("$\\frac$ `code`", "x_y~z~")]


def _set_cell(path: Path, column: str, row: int, value: str) -> None:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.loc[row, column] = value
    frame.to_csv(path, index=False)


def _csv_cells(path: Path) -> list[str]:
    import csv
    with open(path, newline="", encoding="utf-8") as fh:
        return [cell for row in csv.reader(fh) for cell in row]


def test_hostile_ids_are_inert_in_the_csv_files_and_in_report_md(tmp_path):
    import csv  # quoted: a bare carriage return would end the csv row, whoever wrote it
    run = make_run(tmp_path / "run`x\nnew line", rows=[(e, p, 0.7) for e, p in HOSTILE], splits=("s1", "s2"), n=20,
                   quoting=csv.QUOTE_NONNUMERIC)
    preds = pd.read_csv(run / "predictions.csv", dtype={"patient_id": str})
    values = {pid: ["=1+1", "<b>bold</b>|x", "@A1"][i % 3] for i, pid in enumerate(sorted(set(preds.patient_id)))}
    result = write_report([run], tmp_path / "rep", attributes={"colour": (values, ["@A1"])})
    for name in ("summary.csv", "subgroups.csv"):
        cells = _csv_cells(result.path.parent / name)
        assert not [c for c in cells if c.startswith(("=", "+", "-", "@", "\t", "\r"))], name
        for encoder, probe in HOSTILE:  # the ids are all there, each behind a quote where it needed one
            for text in (encoder, probe):
                assert (f"'{text}" if text[0] in "=+-@\t\r" else text) in cells, (name, text)
    subgroups = pd.read_csv(result.path.parent / "subgroups.csv")
    assert {"'=1+1", "<b>bold</b>|x", "'@A1"} <= set(subgroups["value"])
    assert pd.api.types.is_numeric_dtype(subgroups["recall_present"])  # numbers stay numbers
    text = result.path.read_text()
    assert "<script>" not in text and "<b>" not in text
    assert not re.search(r"(?<!\\)\]\(javascript:", text) and "\\[click\\](javascript:" in text  # no link
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "a\\|b\\nc" in text
    rows = table_rows(text)
    assert len(rows) == len(HOSTILE) + len(PAPER_FINETUNED)  # no row broken by a `|` or a newline
    assert all(len(r) == len(rows[0]) for r in rows)
    assert sum(r[1] == f"**{PAPER_LABEL}**" for r in rows) == len(PAPER_FINETUNED)  # not faked by a probe name
    lines = text.splitlines()
    assert all(not line.startswith(("new line", "<")) for line in lines)
    footer = next(line for line in lines if line.startswith("Produced by"))
    assert "run\\`x\\nnew line" in footer
    for png in ("scores.png", "confusion.png", "recalls.png", "subgroups.png"):  # `$\frac$` drawn as text
        assert (result.path.parent / png).read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize("column, value, problem", [
    ("uar", "abc", "not a finite number"), ("weighted_accuracy", "nan", "not a finite number"),
    ("auroc", "inf", "not a finite number"), ("recall_present", "1.7", "outside 0..1"),
    ("uar", "-0.1", "outside 0..1")])
def test_bad_score_cells_are_refused_naming_file_column_and_row(tmp_path, capsys, column, value, problem):
    run = make_run(tmp_path / "run", rows=ENCODERS[:2], splits=("s1", "s2"), n=10)
    _set_cell(run / "scores.csv", column, 2, value)
    assert main(["report", "--runs", str(run), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {run / 'scores.csv'}: column {column!r}: {problem}" + err.split(problem, 1)[1]
    assert f"(row 3: {value!r})" in err and "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "rep").exists()  # checked before anything is written


@pytest.mark.parametrize("column", ["label", "prediction"])
@pytest.mark.parametrize("value, problem", [
    ("3", "past the last class (2)"), ("-1", "negative"), ("1.5", "not a whole number"), ("", "empty cells"),
    ("Present", "not a number"), ("nan", "not a number")])
def test_bad_labels_are_refused_naming_file_column_and_row(tmp_path, column, value, problem):
    run = make_run(tmp_path / "run", rows=ENCODERS[:1], splits=("s1",), n=10)
    _set_cell(run / "predictions.csv", column, 4, value)
    with pytest.raises(ValueError) as refused:
        write_report([run], tmp_path / "rep")
    assert str(refused.value) == (f"{run / 'predictions.csv'}: column {column!r}: {problem}; a {column} is a class "
                                  f"index (0 Present, 1 Unknown, 2 Absent) (row 5: {value!r})")
    assert not (tmp_path / "rep").exists()


@pytest.mark.parametrize("name, content, problem", [
    ("scores.csv", b"", "the file is empty"),
    ("predictions.csv", b"\n  \n", "the file is empty"),
    ("scores.csv", bytes(range(256)) * 4, "binary content, not a CSV text file"),
    ("predictions.csv", "encoder,probe,split,patient_id,label,prediction\n".encode(), "a header but no rows"),
    ("scores.csv", "encoder,probe,split\nmn04,linéar,s1\n".encode("latin-1"), "not UTF-8 text"),
    ("predictions.csv", b'encoder,probe\n"mn04,linear\n', "not a readable CSV file")])
def test_empty_binary_and_broken_files_are_named(tmp_path, name, content, problem):
    run = make_run(tmp_path / "run", rows=ENCODERS[:1], splits=("s1",), n=10)
    (run / name).write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(f"{run / name}: {problem}")):
        load_runs([run])


def test_rows_given_twice_empty_ids_and_mixed_classes_are_refused(tmp_path):
    run = make_run(tmp_path / "run", rows=ENCODERS[:1], splits=("s1", "s2"), n=10)
    text = (run / "predictions.csv").read_text()
    (run / "predictions.csv").write_text(text + text.splitlines()[3] + "\n")  # one patient counted twice
    with pytest.raises(ValueError, match=re.escape(f"{run / 'predictions.csv'}: column 'encoder × probe × split × "
                                                   f"patient_id': the same row twice")):
        load_runs([run])
    run = make_run(tmp_path / "run2", rows=ENCODERS[:1], splits=("s1", "s2"), n=10)
    _set_cell(run / "scores.csv", "encoder", 1, " ")
    with pytest.raises(ValueError, match=re.escape(f"{run / 'scores.csv'}: column 'encoder': empty cells (row 2: ' ')")):
        load_runs([run])
    run = make_run(tmp_path / "run3", rows=ENCODERS[:1], splits=("s1",), n=10)
    scores = pd.read_csv(run / "scores.csv")
    scores.drop(columns=[c for c in scores if c.startswith("recall_")]).to_csv(run / "scores.csv", index=False)
    with pytest.raises(ValueError, match=re.escape(f"{run / 'scores.csv'}: no recall_CLASS column")):
        load_runs([run])
    circor = make_run(tmp_path / "circor", rows=ENCODERS[:1], splits=("s1",), n=10)
    two = make_run(tmp_path / "two", rows=ENCODERS[:1], splits=("s1",), n=10)
    scores = pd.read_csv(two / "scores.csv").drop(columns=["recall_unknown"])
    scores.rename(columns={"recall_present": "recall_abnormal", "recall_absent": "recall_normal"}).to_csv(
        two / "scores.csv", index=False)
    preds = pd.read_csv(two / "predictions.csv")
    preds[["label", "prediction"]] %= 2
    preds.drop(columns=["p_unknown"]).to_csv(two / "predictions.csv", index=False)
    with pytest.raises(ValueError, match=r"the runs hold different classes.*circor: Present, Unknown, Absent; "
                                         r".*two: Abnormal, Normal"):
        load_runs([circor, two])


def test_undefined_scores_read_as_dashes_and_a_spreadsheet_resave_still_reads(tmp_path):
    """An empty cell is how probe writes a recall a split cannot have (no patient of that class)."""
    run = make_run(tmp_path / "run", rows=ENCODERS[:1], splits=("s1", "s2"), n=10)
    for row in (0, 1):
        _set_cell(run / "scores.csv", "recall_unknown", row, "")
    raw = (run / "scores.csv").read_bytes()
    (run / "scores.csv").write_bytes(b"\xef\xbb\xbf" + raw)  # the byte-order mark a spreadsheet adds
    text = write_report([run], tmp_path / "rep").path.read_text()
    row = next(r for r in table_rows(text) if r[0] == "mn04")
    assert row[8] == "—" and "nan" not in text.lower().replace("nanos", "")


def test_a_refused_or_failed_report_leaves_the_earlier_one_whole(tmp_path, monkeypatch):
    import matplotlib.figure
    run = make_run(tmp_path / "run", rows=ENCODERS[:1], splits=("s1",), n=10)
    out = write_report([run], tmp_path / "rep").path.parent
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = make_run(tmp_path / "bad", rows=ENCODERS[:1], splits=("s1",), n=10)
    _set_cell(bad / "predictions.csv", "label", 0, "7")
    with pytest.raises(ValueError, match="past the last class"):
        write_report([bad], out)

    def dies_half_way(self, target, **kwargs):
        Path(target).write_bytes(PNG_MAGIC)
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", dies_half_way)
    with pytest.raises(OSError, match="No space left"):
        write_report([make_run(tmp_path / "other", rows=ENCODERS[1:2], splits=("s1",), n=10)], out)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.suffix == ".png"} == {
        k: v for k, v in before.items() if k.endswith(".png")}
    assert sorted(p.name for p in out.iterdir()) == sorted(before)  # no temporary file left
