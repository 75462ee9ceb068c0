"""The comparison's table: per encoder x protocol the mean over runs of W.acc, UAR, AUROC (bootstrap
95 % intervals over test patients), each class's recall, the inner-CV scores and the paired
difference to log-mel under the same protocol; `compare.csv`, `compare.md` and a forest plot."""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from embed.atomic import write_text_atomic

from classify.evaluation.metrics import Scoring
from classify.evaluation.paired import (CI_METRICS, RowBootstrap, RunPredictions, bootstrap_draws, class_recalls,
                                        interval, paired_difference, row_bootstrap)
from classify.jobs.outputs import markdown_text, write_spreadsheet_csv
from classify.jobs.report import png_plot, pyplot

# fine-tuned references on the paper's three splits (nttcslab/m2d app/circor score files; Panah et al.
# for wav2vec 2.0) and the 2022 challenge's best hidden-test score: (W.acc, UAR)
CIRCOR_REFERENCES = {"fine-tuned M2D": (0.832, 0.713), "M2D+M2D": (0.837, 0.716), "AST+M2D": (0.832, 0.733),
                     "fine-tuned wav2vec 2.0": (0.80, 0.70), "challenge best (hidden test)": (0.780, None)}


class Cell(Protocol):
    """What the table reads of a cell (`classify.jobs.compare.Cell`)."""
    split: str
    test: RunPredictions
    inner_cv: dict[str, float]
    params: dict[str, str]
    seconds: float


REFERENCE_ENCODER = "logmel"  # every row's paired difference is taken to this encoder under the same protocol
ENSEMBLE = "ensemble"  # the ensemble rows' encoder name
SHORT = {"weighted_accuracy": "W.acc", "uar": "UAR", "auroc": "AUROC", "macc": "MAcc"}


def rows_of(cells: dict[tuple[str, str, str], Cell]) -> dict[tuple[str, str], list[Cell]]:
    rows: dict[tuple[str, str], list[Cell]] = {}
    for (encoder, protocol, _), cell in cells.items():
        rows.setdefault((encoder, protocol), []).append(cell)
    return rows


def compare_table(cells: dict[tuple[str, str, str], Cell], scoring: Scoring, n_boot: int = 1000,
                  seed: int = 0) -> pd.DataFrame:
    """One row per encoder x protocol (and the ensemble rows), in the order first seen."""
    rows = rows_of(cells)
    metrics = tuple(m for m in CI_METRICS if m in scoring.label_metrics or m == "auroc")
    test_patients: dict[str, np.ndarray] = {}
    for row in rows.values():
        for c in row:
            test_patients.setdefault(c.split, np.array(sorted(c.test.patient_ids)))
    draws = bootstrap_draws(test_patients, n_boot, seed)
    boot: dict[tuple[str, str], RowBootstrap] = {
        key: row_bootstrap(scoring, [c.test for c in row], draws, metrics) for key, row in rows.items()}
    out = []
    for (encoder, protocol), row in rows.items():
        b = boot[(encoder, protocol)]
        line: dict = {"encoder": encoder, "protocol": protocol, "runs": len(row)}
        for m in metrics:
            lo, hi = interval(b.draws[m])
            line.update({m: b.point[m], f"{m}_lo": lo, f"{m}_hi": hi})
        line.update(class_recalls(scoring, [c.test for c in row]))
        for name in (m for m in scoring.label_metrics if any(m in c.inner_cv for c in row)):
            line[f"inner_{name}"] = float(np.nanmean([c.inner_cv.get(name, np.nan) for c in row]))
        reference = (REFERENCE_ENCODER, protocol) if encoder != ENSEMBLE else (ENSEMBLE, "best-single")
        if reference in boot and reference != (encoder, protocol):
            line["vs"] = "/".join(reference)
            for m in metrics:
                d, lo, hi = paired_difference(b, boot[reference], m)
                line.update({f"d_{m}": d, f"d_{m}_lo": lo, f"d_{m}_hi": hi})
        line["members"] = ";".join(sorted({c.params["members"] for c in row if "members" in c.params}))
        line["seconds"] = float(sum(c.seconds for c in row))
        out.append(line)
    return pd.DataFrame(out)


def _ci(table: pd.Series, m: str) -> str:
    if not np.isfinite(table.get(m, np.nan)):
        return "—"
    return f"{table[m]:.3f} [{table[m + '_lo']:.3f}, {table[m + '_hi']:.3f}]"


def _diff(table: pd.Series, m: str) -> str:
    if not np.isfinite(table.get(f"d_{m}", np.nan)):
        return "—"
    return f"{table[f'd_{m}']:+.3f} [{table[f'd_{m}_lo']:+.3f}, {table[f'd_{m}_hi']:+.3f}]"


def compare_markdown(table: pd.DataFrame, scoring: Scoring, command: str, references: dict | None) -> str:
    metrics = [m for m in CI_METRICS if m in table.columns]
    recall_cols = [f"recall_{c.lower()}" for c in scoring.classes]
    inner = [c for c in table.columns if c.startswith("inner_")]
    head = (["encoder", "protocol", "runs"] + [f"{SHORT.get(m, m)} [95 % CI]" for m in metrics]
            + [f"Δ{SHORT.get(m, m)} vs reference [95 % CI]" for m in metrics[:2]]
            + [f"recall {c}" for c in scoring.classes] + [f"inner {SHORT.get(c[6:], c[6:])}" for c in inner] + ["wall s"])
    lines = ["# Comparison", "", f"`{command}`", "",
             "Means over runs (split x seed) of the test patients' scores; intervals: percentile bootstrap over "
             "test patients (the same draws for every row, so differences are paired); Δ: to logmel under the "
             "same protocol (ensemble rows: to the single heart-cycle recipe with the best inner CV in each run). "
             "Inner: the scores selection saw, on the val groups (linear) or by cross-validation inside train + val "
             "(cycle, ensemble).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in table.iterrows():
        cells = ([markdown_text(r["encoder"]), markdown_text(r["protocol"]), str(int(r["runs"]))]
                 + [_ci(r, m) for m in metrics] + [_diff(r, m) for m in metrics[:2]]
                 + [f"{r[c]:.3f}" for c in recall_cols] + [f"{r[c]:.3f}" if np.isfinite(r[c]) else "—" for c in inner]
                 + [f"{r['seconds']:.0f}"])
        lines.append("| " + " | ".join(cells) + " |")
    members = table[table["members"].astype(str) != ""] if "members" in table else table.iloc[:0]
    if len(members):
        lines += ["", "Ensemble members chosen (per run, by inner CV):", ""]
        lines += [f"- {markdown_text(r['protocol'])}: {markdown_text(r['members'])}" for _, r in members.iterrows()]
    if references:
        lines += ["", "References (drawn as lines in the forest plot): "
                  + "; ".join(f"{k} {w:.3f}" + (f" / {u:.3f}" if u is not None else "")
                              for k, (w, u) in references.items())]
    return "\n".join(lines) + "\n"


@png_plot
def forest_plot(table: pd.DataFrame, path: Path, references: dict | None, metrics=("weighted_accuracy", "uar")):
    """One row per encoder x protocol, its mean and 95 % interval, one panel per metric; the
    references as dashed vertical lines."""
    plt = pyplot()
    metrics = [m for m in metrics if m in table.columns]
    labels = [f"{e} · {p}" for e, p in zip(table["encoder"], table["protocol"])]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 1.4 + 0.32 * len(table)), sharey=True,
                             squeeze=False)
    y = np.arange(len(table))[::-1]
    for ax, m in zip(axes[0], metrics):
        err = np.vstack([table[m] - table[f"{m}_lo"], table[f"{m}_hi"] - table[m]])
        ax.errorbar(table[m], y, xerr=err, fmt="o", color="black", ecolor="grey", capsize=2, markersize=4)
        for i, (name, values) in enumerate((references or {}).items()):
            value = values[0 if m == "weighted_accuracy" else 1] if m in ("weighted_accuracy", "uar") else None
            if value is not None:
                ax.axvline(value, linestyle="--", linewidth=0.8, color=f"C{i}", label=name)
        ax.set_xlabel(SHORT.get(m, m))
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(y)
    axes[0][0].set_yticklabels(labels, fontsize=8)
    handles = {h.get_label(): h for ax in axes[0] for h in ax.get_lines() if not h.get_label().startswith("_")}
    if handles:  # one legend for both panels, under them, clear of the rows
        fig.legend(list(handles.values()), list(handles), fontsize=7, loc="lower center", ncol=min(len(handles), 5),
                   frameon=False)
    fig.tight_layout(rect=(0, 0.6 / (1.4 + 0.32 * len(table)) if handles else 0, 1, 1))
    return fig, path


def write_comparison(table: pd.DataFrame, out: Path, scoring: Scoring, command: str, references: dict | None) -> list[Path]:
    out = Path(out)
    write_spreadsheet_csv(table, out / "compare.csv", index=False, float_format="%.4f")
    write_text_atomic(out / "compare.md", compare_markdown(table, scoring, command, references))
    return [out / "compare.csv", out / "compare.md", forest_plot(table, out / "forest.png", references)]
