"""Markdown + PNG report over one or more `probe` run folders.

Each run folder holds `scores.csv` (one row per encoder × probe × split) and `predictions.csv`
(one row per test patient). The report gives mean ± std over splits per encoder × probe, a
percentile bootstrap CI over the test patients pooled across splits, the seed paper's fine-tuned
numbers for reference, and three plots (scores, confusion matrices, per-class recalls). Given the
dataset's attributes, it also breaks the best row's recalls down by subgroup (age group, murmur
grade, ...), with a fourth plot.
"""
from __future__ import annotations

import datetime as _dt
import functools
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from dataclasses import dataclass

from embed.atomic import atomic_path, write_text_atomic

from classify.evaluation.results import metric_columns, summary_table
from classify.evaluation.metrics import LABEL_METRICS, bootstrap_ci, confusion
from classify.jobs.outputs import markdown_text, write_spreadsheet_csv
from classify.jobs.subgroups import Attributes, subgroup_markdown, subgroup_table

KEY = ["encoder", "probe", "split"]
SHORT = {"weighted_accuracy": "W.acc", "uar": "UAR", "macc": "MAcc", "auroc": "AUROC"}
PAPER_LABEL = "fine-tuned (paper)"
PAPER_SOURCE = "Niizumi et al., EMBC 2024; mean of 15 runs over 3 splits"
# Fine-tuned W.acc / UAR from the seed paper (not probes: full fine-tuning of each encoder).
PAPER_FINETUNED = {"M2D": (0.832, 0.713), "AST": (0.654, 0.672), "CNN14": (0.582, 0.548),
                   "BYOL-A": (0.556, 0.556)}
N_BOOT, BOOT_SEED = 1000, 0
N_CONFUSION = 4  # how many of the best encoder × probe rows get a confusion matrix
CLASS_COLORS = ["tab:red", "tab:gray", "tab:green", "tab:purple", "tab:olive"]  # one per class, in class order


def load_runs(run_dirs: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Concatenate the runs' scores and predictions; one encoder × probe × split kept once.

    When the same encoder × probe × split occurs in several runs, the last run given wins (with a
    warning if its numbers differ), and only that run's predictions are kept for it, so scores and
    predictions always describe the same fits.

    Run folders are read as untrusted: a file that is empty, binary or not CSV, a missing or empty
    key cell, a score that is text, NaN, infinite or outside 0..1, a label or prediction that is
    not a class index, a row given twice, and runs of different classes are refused, naming the
    file, the column and the rows. An empty score cell is how `probe` writes a metric a split does
    not define (e.g. the recall of a class its test patients lack) and stays missing.
    """
    if not run_dirs:
        raise ValueError("no run folders given")
    scores, preds, class_sets = [], [], {}
    for i, run in enumerate(map(Path, run_dirs)):
        if not run.is_dir():
            raise FileNotFoundError(f"run folder {run} does not exist")
        for name in ("scores.csv", "predictions.csv"):
            if not (run / name).is_file():
                raise FileNotFoundError(f"run folder {run} has no {name} (write it with `pipeline.py probe`)")
        s, p = _read_run_csv(run / "scores.csv"), _read_run_csv(run / "predictions.csv")
        missing = [c for c in KEY if c not in s.columns] + (
            [] if any(m in s.columns for m in LABEL_METRICS) else [f"one of {list(LABEL_METRICS)}"])
        missing += [c for c in KEY + ["patient_id", "label", "prediction"] if c not in p.columns]
        if missing:
            raise ValueError(f"{run}: missing columns {missing}")
        classes = class_names(s)
        if len(classes) < 2:
            raise ValueError(f"{run / 'scores.csv'}: no recall_CLASS column per class (found {classes or 'none'}); "
                             "the classes are read from them")
        class_sets[run] = classes
        _check_text(s, KEY, run / "scores.csv")
        _check_text(p, KEY + ["patient_id"], run / "predictions.csv")
        for column in metric_columns(s):
            s[column] = _scores(s[column], run / "scores.csv", column)
        for column in ("label", "prediction"):
            p[column] = _class_indices(p[column], run / "predictions.csv", column, classes)
        _check_unique(s, KEY, run / "scores.csv")
        _check_unique(p, KEY + ["patient_id"], run / "predictions.csv")
        scores.append(s.assign(_run=i))
        preds.append(p.assign(_run=i))
    if len({tuple(c) for c in class_sets.values()}) > 1:
        listing = "; ".join(f"{run}: {', '.join(c)}" for run, c in class_sets.items())
        raise ValueError(f"the runs hold different classes, so they are not one report ({listing})")
    scores, preds = pd.concat(scores, ignore_index=True), pd.concat(preds, ignore_index=True)
    repeated = scores[scores.duplicated(KEY, keep=False)]
    if len(repeated):
        varying = repeated.groupby(KEY)[metric_columns(scores)].nunique(dropna=False).gt(1).any(axis=1)
        if varying.any():
            names = [" × ".join(k) for k in varying[varying].index[:3]]
            warnings.warn(f"{int(varying.sum())} encoder × probe × split rows differ between runs "
                          f"(e.g. {names}); keeping the last run's", stacklevel=2)
    scores = scores.drop_duplicates(KEY, keep="last")
    preds = preds.merge(scores[KEY + ["_run"]], on=KEY + ["_run"])
    return scores.drop(columns="_run").reset_index(drop=True), preds.drop(columns="_run")


def _read_run_csv(path: Path) -> pd.DataFrame:
    """Every cell as the text written ('' where empty): values are checked column by column after."""
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    if not head.strip():
        raise ValueError(f"{path}: the file is empty (a run writes a header and one row per result)")
    if b"\0" in head:
        raise ValueError(f"{path}: binary content, not a CSV text file")
    try:  # utf-8-sig: a file saved again by a spreadsheet may start with a byte-order mark
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start}), so not a CSV file a run wrote") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ValueError(f"{path}: not a readable CSV file ({str(err).strip().splitlines()[-1]})") from None
    if frame.empty:
        raise ValueError(f"{path}: a header but no rows")
    return frame


def _shown(value: str, limit: int = 40) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "…")


def _refuse(path: Path, column: str, problem: str, bad: pd.Series) -> ValueError:
    """The file, the column, the problem and the first rows that have it (data rows, from 1)."""
    rows = ", ".join(f"row {i + 1}: {_shown(v)}" for i, v in bad.iloc[:3].items())
    more = f", and {len(bad) - 3} more rows" if len(bad) > 3 else ""
    return ValueError(f"{path}: column {column!r}: {problem} ({rows}{more})")


def _check_text(frame: pd.DataFrame, columns: list[str], path: Path) -> None:
    for column in columns:
        empty = frame[column].str.strip() == ""
        if empty.any():
            raise _refuse(path, column, "empty cells", frame.loc[empty, column])


def _check_unique(frame: pd.DataFrame, columns: list[str], path: Path) -> None:
    repeated = frame.duplicated(columns, keep="first")
    if repeated.any():
        keys = frame.loc[repeated, columns].astype(str).agg(" × ".join, axis=1)
        raise _refuse(path, " × ".join(columns), "the same row twice (a run writes each once)", keys)


def _scores(column: pd.Series, path: Path, name: str) -> pd.Series:
    """A metric column as floats in 0..1; an empty cell stays missing (the metric is not defined there)."""
    text = column.str.strip()
    values = pd.to_numeric(text.mask(text == ""), errors="coerce")  # 'nan' text -> NaN too: caught below
    not_number = (text != "") & ~np.isfinite(values)
    if not_number.any():
        raise _refuse(path, name, "not a finite number (a score is a number from 0 to 1, or empty where "
                                  "a split does not define it)", column[not_number])
    outside = values.notna() & ((values < 0) | (values > 1))
    if outside.any():
        raise _refuse(path, name, "outside 0..1 (every score here is a rate or an AUROC)", column[outside])
    return values.astype(float)


def _class_indices(column: pd.Series, path: Path, name: str, classes: list[str]) -> pd.Series:
    """Labels and predictions as class indices 0..n-1; anything else is refused with its reason."""
    text = column.str.strip()
    values = pd.to_numeric(text, errors="coerce")
    classes_shown = ", ".join(f"{i} {c}" for i, c in enumerate(classes))
    for problem, bad in (("empty cells", text == ""),
                         ("not a number", (text != "") & ~np.isfinite(values)),
                         ("not a whole number", np.isfinite(values) & (values != np.round(values))),
                         ("negative", values < 0),
                         (f"past the last class ({len(classes) - 1})", values >= len(classes))):
        if bad.any():
            raise _refuse(path, name, f"{problem}; a {name} is a class index ({classes_shown})", column[bad])
    return values.astype(int)


def summarise(scores: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """One row per encoder × probe, best mean W.acc first: numeric mean/std, formatted cells, CIs."""
    metrics = metric_columns(scores)
    grouped = scores.groupby(["encoder", "probe"], sort=False)[metrics]
    table = summary_table(scores).set_index(["encoder", "probe"])  # the "mean ± std" cells
    mean, std = grouped.mean().add_suffix("_mean"), grouped.std(ddof=0).add_suffix("_std")
    table = table.join(mean).join(std)
    pooled = predictions.groupby(["encoder", "probe"], sort=False)
    for name in label_metrics(scores):
        metric = LABEL_METRICS[name]
        cis = {k: bootstrap_ci(g["label"].to_numpy(int), g["prediction"].to_numpy(int), metric, N_BOOT, BOOT_SEED)
               for k, g in pooled}
        table[f"{name}_ci_low"] = [cis.get(k, (np.nan, np.nan))[0] for k in table.index]
        table[f"{name}_ci_high"] = [cis.get(k, (np.nan, np.nan))[1] for k in table.index]
    table["test_patients"] = pooled.size().reindex(table.index).fillna(0).astype(int)
    table = table.sort_values(f"{label_metrics(scores)[0]}_mean", ascending=False, kind="stable")
    return table.reset_index()


def label_metrics(frame: pd.DataFrame) -> list[str]:
    """The label-based metrics a scores (or summary) table holds, in their declared order."""
    return [m for m in LABEL_METRICS if m in frame.columns]


def recall_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith("recall_") and not c.endswith(("_mean", "_std"))]


def class_names(frame: pd.DataFrame) -> list[str]:
    """Class names from the recall columns (`recall_present` -> "Present"), in class order."""
    return [c[len("recall_"):].capitalize() for c in recall_columns(frame)]


def header(metric: str) -> str:
    return f"Rec. {metric[len('recall_'):].capitalize()}" if metric.startswith("recall_") else SHORT.get(metric, metric)


def confusions(predictions: pd.DataFrame, n_classes: int) -> dict[tuple[str, str], np.ndarray]:
    """Patient confusion matrix per encoder × probe, summed over splits (= pooled predictions)."""
    return {k: confusion(g["label"].to_numpy(int), g["prediction"].to_numpy(int), n_classes)
            for k, g in predictions.groupby(["encoder", "probe"], sort=False)}


def markdown_table(summary: pd.DataFrame, paper_reference: bool = True) -> str:
    labels = label_metrics(summary)
    others = [c[:-len("_mean")] for c in summary.columns if c.endswith("_mean") and c[:-len("_mean")] not in labels]
    head = ["encoder", "probe", "splits"]
    for m in labels:
        head += [markdown_text(header(m)), f"{markdown_text(header(m))} 95% CI"]
    head += [markdown_text(header(m)) for m in others]  # column names come from the run folders too
    rows = []
    for r in summary.itertuples(index=False):
        r = r._asdict()
        cells = [markdown_text(r["encoder"]), markdown_text(r["probe"]), str(r["splits"])]
        for m in labels:
            cells += [_cell(r[m]), _ci(r[f"{m}_ci_low"], r[f"{m}_ci_high"])]
        cells += [_cell(r[m]) for m in others]
        rows.append((r[f"{labels[0]}_mean"], cells))
    if paper_reference and labels[:2] == ["weighted_accuracy", "uar"]:
        for name, (wacc, u) in PAPER_FINETUNED.items():
            cells = [name, f"**{PAPER_LABEL}**", "15 runs", f"{wacc:.3f}", "—", f"{u:.3f}", "—"]
            rows.append((wacc, cells + ["—"] * (len(head) - len(cells))))
    rows.sort(key=lambda item: -item[0] if np.isfinite(item[0]) else np.inf)  # stable: ties keep order
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for _, cells in rows]
    return "\n".join(lines)


def confusion_markdown(matrix: np.ndarray, title: str, classes: list[str]) -> str:
    """`title` is markdown already (its ids escaped by the caller); class names are escaped here."""
    names = [markdown_text(c) for c in classes]
    lines = [f"**{title}** (rows: true, columns: predicted; patients summed over splits)", "",
             "| true \\ predicted | " + " | ".join(names) + " |", "|---|" + "---:|" * len(classes)]
    lines += [f"| {name} | " + " | ".join(str(int(v)) for v in row) + " |" for name, row in zip(names, matrix)]
    return "\n".join(lines)


@dataclass
class Report:
    path: Path  # report.md
    table: str  # its main markdown table


def write_report(run_dirs: list[Path], out: Path, paper_reference: bool = True,
                 attributes: Attributes | None = None) -> Report:
    """Read the runs, write `report.md`, `summary.csv` and the PNGs into `out`; returns report.md's
    path and its main table. With `attributes` (see `classify.jobs.subgroups`), also `subgroups.csv`
    (every encoder × probe), `subgroups.png` and a section per attribute (the best row).

    Everything is read and checked before the first file is written, so a refused run leaves `out`
    as it was; each file is written whole or not at all. Text from the runs and the dataset is
    escaped in report.md and made inert for spreadsheets in the csv files."""
    run_dirs = [Path(r) for r in run_dirs]
    scores, predictions = load_runs(run_dirs)
    if scores.empty:
        raise ValueError(f"no score rows in {', '.join(map(str, run_dirs))}")
    summary = summarise(scores, predictions)
    classes = class_names(scores)
    paper_reference = paper_reference and label_metrics(scores)[:2] == ["weighted_accuracy", "uar"]
    matrices = confusions(predictions, len(classes))
    best = [k for k in zip(summary["encoder"], summary["probe"]) if k in matrices][:N_CONFUSION]
    # refuses runs without predictions, or a dataset that holds none of their patients
    groups = subgroup_table(predictions, attributes, classes, label_metrics(summary)) if attributes else None

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_spreadsheet_csv(summary, out / "summary.csv", index=False, float_format="%.4f")
    plot_scores(summary, out / "scores.png", paper_reference)
    plot_confusions([(k, matrices[k]) for k in best], summary, out / "confusion.png", classes)
    plot_recalls(summary, out / "recalls.png", classes)

    runs = ", ".join(markdown_text(r) for r in run_dirs)
    table = markdown_table(summary, paper_reference)
    parts = [
        "# heartprobe report", "",
        f"Mean ± std (population, over splits) per encoder × probe, {len(scores)} encoder × probe × split rows, "
        f"best mean {header(label_metrics(scores)[0])} first. 95% CI: percentile bootstrap over the test patients pooled across splits "
        f"({N_BOOT} resamples, seed {BOOT_SEED}). All metrics are per patient "
        f"({', '.join(f'{i}={c}' for i, c in enumerate(classes))}).", "",
        table, "",
    ]
    if paper_reference:
        parts += [f"Rows marked **{PAPER_LABEL}** are not probes: they are the seed paper's fully fine-tuned "
                  f"encoders ({PAPER_SOURCE}), given for reference only; W.acc and UAR only.", ""]
    parts += ["## Plots", "", "![W.acc and UAR per encoder × probe](scores.png)", "",
              "![Confusion matrices of the best encoder × probe rows](confusion.png)", "",
              "![Per-class recall per encoder × probe](recalls.png)", "",
              "Files: [scores.png](scores.png) · [confusion.png](confusion.png) · [recalls.png](recalls.png) · "
              "[summary.csv](summary.csv)", "", "## Confusion matrices", ""]
    for k in best:
        parts += [confusion_markdown(matrices[k], f"{markdown_text(k[0])} × {markdown_text(k[1])}", classes), ""]
    if groups is not None:
        parts += subgroup_section(groups, list(attributes), summary, classes, out, best[0])
    parts += ["---", f"Produced by `classify.jobs.report.write_report` (`python pipeline.py report`) from {runs} "
              f"on {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}.", ""]
    path = out / "report.md"
    write_text_atomic(path, "\n".join(parts))
    return Report(path, table)


def subgroup_section(table: pd.DataFrame, attributes: list[str], summary: pd.DataFrame,
                     classes: list[str], out: Path, best: tuple[str, str]) -> list[str]:
    """Writes `table` (`subgroup_table`) as `subgroups.csv` and `subgroups.png`; returns the
    report's lines about `best`, the best encoder × probe row that has predictions."""
    metrics = label_metrics(summary)
    write_spreadsheet_csv(table, out / "subgroups.csv", index=False, float_format="%.4f")
    encoder, probe = best
    mine = table[(table["encoder"] == encoder) & (table["probe"] == probe)]
    plot_subgroups(mine, attributes, classes, out / "subgroups.png", f"{_short(encoder)} · {_short(probe)}")
    parts = ["## Subgroups", "",
             f"Recall per true class of the best row, **{markdown_text(encoder)} × {markdown_text(probe)}**, "
             f"within each subgroup of "
             f"the test patients, over its predictions pooled across splits (a patient tested in several runs "
             f"counts once per run; n: predictions of that true class). Every row: [subgroups.csv](subgroups.csv).",
             "", "![Recall per subgroup](subgroups.png)", ""]
    for name in attributes:
        parts += [f"**{markdown_text(name)}**", "", subgroup_markdown(mine, name, classes, metrics, SHORT), ""]
    return parts


# ---- plots ---------------------------------------------------------------------------------------

def pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt
    return plt


def png_plot(draw):
    """A plot function run with matplotlib's mathtext off (ids with `$` are text, and a malformed
    `$\\frac$` in a run folder cannot make drawing fail) that writes its PNG whole or not at all;
    `draw` returns the figure and the path, the plot function the path."""
    @functools.wraps(draw)
    def plot(*args, **kwargs) -> Path:
        import matplotlib
        pyplot()
        with matplotlib.rc_context({"text.parse_math": False}):
            fig, path = draw(*args, **kwargs)
            path = Path(path)
            try:
                with atomic_path(path) as tmp:
                    fig.savefig(tmp, dpi=120, format="png")
            finally:
                pyplot().close(fig)
        return path
    return plot


def _short(text: str, limit: int = 60) -> str:
    """An id as an axis or title label: one line, at most `limit` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _labels(summary: pd.DataFrame, width: int = 34) -> list[str]:
    """"encoder · probe"; long ones (ensembles) break before the probe to keep the axis narrow."""
    pairs = [(_short(e), _short(p)) for e, p in zip(summary["encoder"], summary["probe"])]
    return [f"{e} · {p}" if len(e) + len(p) <= width else f"{e}\n· {p}" for e, p in pairs]


def _hbars(ax, summary: pd.DataFrame, metrics: list[str], names: list[str], colors: list[str]) -> None:
    """Grouped horizontal bars (one group per encoder × probe, best at the top), std error bars
    clipped to [0, 1], the mean written inside each bar."""
    n, k = len(summary), len(metrics)
    y = np.arange(n)
    height = 0.8 / k
    for j, (metric, name, color) in enumerate(zip(metrics, names, colors)):
        offset = (j - (k - 1) / 2) * height
        mean = summary[f"{metric}_mean"].fillna(0).to_numpy(float)
        std = summary[f"{metric}_std"].fillna(0).to_numpy(float)
        xerr = np.vstack([np.minimum(std, mean), np.minimum(std, 1 - mean).clip(0)])
        ax.barh(y + offset, mean, height, xerr=xerr, color=color, label=name, capsize=2,
                error_kw={"elinewidth": 0.8, "ecolor": "0.25"})
        for yi, m in zip(y + offset, mean):
            if m >= 0.12:
                ax.text(0.01, yi, f"{m:.3f}", va="center", ha="left", color="white", fontsize=7)
    ax.set_yticks(y, _labels(summary))
    ax.invert_yaxis()
    ax.set_xlim(0, 1.05)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)


def _figure_height(n: int, per_row: float) -> float:
    return max(2.6, 1.4 + per_row * n)


@png_plot
def plot_scores(summary: pd.DataFrame, path: Path, paper_reference: bool = True) -> Path:
    plt = pyplot()
    colors = ["tab:blue", "tab:orange"]
    fig, ax = plt.subplots(figsize=(9, _figure_height(len(summary), 0.5)), layout="constrained")
    metrics = label_metrics(summary)[:2]
    _hbars(ax, summary, metrics, [header(m) for m in metrics], colors)
    if paper_reference:
        wacc, u = PAPER_FINETUNED["M2D"]
        ax.axvline(wacc, color=colors[0], ls="--", lw=1.2, label=f"M2D {PAPER_LABEL} W.acc {wacc:.3f}")
        ax.axvline(u, color=colors[1], ls="--", lw=1.2, label=f"M2D {PAPER_LABEL} UAR {u:.3f}")
    ax.set_xlabel("score (mean over splits; error bar = std over splits)")
    ax.set_title(f"Patient-level {' and '.join(header(m) for m in metrics)} per encoder × probe")
    fig.legend(loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    return fig, path


@png_plot
def plot_recalls(summary: pd.DataFrame, path: Path, classes: list[str]) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, _figure_height(len(summary), 0.65)), layout="constrained")
    _hbars(ax, summary, [f"recall_{c.lower()}" for c in classes], list(classes), CLASS_COLORS[:len(classes)])
    ax.set_xlabel("recall (mean over splits; error bar = std over splits)")
    ax.set_title("Per-class patient recall per encoder × probe")
    fig.legend(loc="outside lower center", ncols=len(classes), fontsize=8, frameon=False, title="true class", title_fontsize=8)
    return fig, path


@png_plot
def plot_subgroups(table: pd.DataFrame, attributes: list[str], classes: list[str], path: Path,
                   title: str = "") -> Path:
    """One panel per attribute: per value, a bar per true class (its recall), the number of
    predictions of that class above the bar; classes a subgroup does not hold get no bar."""
    plt = pyplot()
    widths = [max(1, (table["attribute"] == a).sum()) for a in attributes]
    fig, axes = plt.subplots(len(attributes), 1, figsize=(min(16, max(6, 1.3 * max(widths) + 2)), 2.9 * len(attributes)),
                             layout="constrained", squeeze=False)
    width = 0.8 / max(len(classes), 1)
    for ax, name in zip(axes[:, 0], attributes):
        rows = table[table["attribute"] == name]
        x = np.arange(len(rows))
        for j, c in enumerate(classes):
            n = rows[f"n_{c.lower()}"].to_numpy(int)
            rec = rows[f"recall_{c.lower()}"].to_numpy(float)
            at = x + (j - (len(classes) - 1) / 2) * width
            ax.bar(at[n > 0], rec[n > 0], width, color=CLASS_COLORS[j % len(CLASS_COLORS)])
            for xi, ni, ri in zip(at, n, rec):
                if ni:
                    ax.text(xi, min(ri, 1.0) + 0.02, str(ni), ha="center", va="bottom", fontsize=6)
        ax.set_xticks(x, [f"{_short(v, 24)}\n{p} patients" for v, p in zip(rows["value"], rows["patients"])],
                      fontsize=8)
        ax.set_xlim(-0.5, len(rows) - 0.5)
        ax.set_ylim(0, 1.15)
        ax.set_ylabel("recall")
        ax.set_title(name, fontsize=10, loc="left")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    fig.suptitle(_wrap(f"Recall per true class by subgroup{': ' + title if title else ''} "
                       "(number above a bar: predictions of that class)", fig.get_figwidth(), 11), fontsize=11)
    from matplotlib.patches import Patch  # one swatch per class, whether or not a panel has its bar
    fig.legend(handles=[Patch(color=CLASS_COLORS[j % len(CLASS_COLORS)], label=c) for j, c in enumerate(classes)],
               loc="outside lower center", ncols=len(classes), fontsize=8, frameon=False, title="true class",
               title_fontsize=8)
    return fig, path


def _wrap(text: str, inches: float, fontsize: float) -> str:
    """`text` broken into lines that fit `inches` at `fontsize` points (about 0.6 em per character)."""
    return textwrap.fill(text, max(12, int(inches * 72 / (0.6 * fontsize))))


@png_plot
def plot_confusions(items: list[tuple[tuple[str, str], np.ndarray]], summary: pd.DataFrame, path: Path,
                    classes: list[str]) -> Path:
    """Counts annotated; colour = fraction of the true class, so rare classes stay visible."""
    plt = pyplot()
    n = max(len(items), 1)
    cols = min(n, 2)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 4.2 * rows), layout="constrained", squeeze=False)
    primary = label_metrics(summary)[0]
    wacc = dict(zip(zip(summary["encoder"], summary["probe"]), summary[f"{primary}_mean"]))
    image = None
    for ax, ((encoder, probe), matrix) in zip(axes.flat, items):
        totals = matrix.sum(axis=1, keepdims=True)
        frac = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
        image = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
        for i in range(matrix.shape[0]):
            for j in range(matrix.shape[1]):
                ax.text(j, i, f"{matrix[i, j]}\n{frac[i, j]:.0%}", ha="center", va="center", fontsize=9,
                        color="white" if frac[i, j] > 0.6 else "black")
        ax.set_xticks(range(len(classes)), [_short(c, 16) for c in classes])
        ax.set_yticks(range(len(classes)), [_short(c, 16) for c in classes])
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{_wrap(f'{_short(encoder)} · {_short(probe)}', 4.0, 10)}\nmean {_short(header(primary))} "
                     f"{wacc.get((encoder, probe), np.nan):.3f}, n = {int(matrix.sum())}", fontsize=10)
    for ax in list(axes.flat)[len(items):]:
        ax.axis("off")
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, label="fraction of true class")
    # wrapped to the figure's width: one matrix alone is narrower than the title
    fig.suptitle(_wrap(f"Patient confusion matrices, summed over splits (best mean {header(primary)})", 4.2 * cols, 12),
                 fontsize=12)
    return fig, path


def _cell(text: str) -> str:
    return "—" if str(text).startswith("nan") else markdown_text(text)


def _ci(low: float, high: float) -> str:
    return "—" if not (np.isfinite(low) and np.isfinite(high)) else f"[{low:.3f}, {high:.3f}]"


def report_job(runs: list[str], out: str | None = None, *, paper: bool = True, by: list[str] | None = None,
               dataset_name: str = "circor", data: str | None = None, say: Callable[[str], None] = print) -> None:
    """`pipeline.py report`: warns of unfinished run folders, reads the patients' attributes for
    `by` (from the dataset at `data`), then `write_report` into `out` (default the first run's folder)."""
    from classify.jobs.outputs import unfinished_note
    for run in runs:
        if note := unfinished_note(run):
            print(f"warning: {note}", file=sys.stderr)
    attributes = None
    if by:
        if not data:
            raise ValueError("--by needs --data: the dataset the runs were made on, to read the patients' attributes")
        from embed.datasets import load_dataset

        from classify.jobs.subgroups import select_attributes
        dataset = load_dataset(dataset_name, data)
        attributes = select_attributes(dataset.group_attributes(), by, dataset.name)
    report = write_report([Path(r) for r in runs], Path(out or runs[0]), paper, attributes)
    say(report.table)
    say(f"\nwrote {report.path} and its PNGs")
