"""Scores broken down by subgroup: where a model's patients are called right or wrong.

The subgroups are attributes that describe the patients (the dataset's `group_attributes`: age
group, murmur grade, recording source, ...). They are read after the fact, from the test
patients' saved predictions: nothing here chooses or tunes anything.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from embed.datasets.base import NOT_GIVEN

from classify.evaluation.metrics import LABEL_METRICS, recalls
from classify.jobs.outputs import markdown_text

NOT_IN_DATA = "not in data"  # a predicted patient the dataset given to the report does not hold

# attribute name -> (group id -> value, the values in reading order)
Attributes = Mapping[str, tuple[Mapping[str, str], Sequence[str]]]


def select_attributes(available: Attributes, names: Sequence[str], dataset: str = "the dataset") -> Attributes:
    """The attributes named in `names`, in that order; an unknown name is refused with the known ones."""
    unknown = [n for n in names if n not in available]
    if unknown:
        known = ", ".join(available) or "none"
        raise ValueError(f"{dataset} has no attribute {', '.join(map(repr, unknown))} to break scores down by "
                         f"(its attributes: {known})")
    return {n: available[n] for n in names}


def value_order(values: Sequence[str], order: Sequence[str]) -> list[str]:
    """The values met, in the attribute's reading order; any others after them, sorted; values the
    dataset does not give for a patient (`not given`, `not in data`) last."""
    met = set(values)
    first = [v for v in order if v in met]
    last = [v for v in (NOT_GIVEN, NOT_IN_DATA) if v in met and v not in first]
    rest = sorted(met - set(first) - set(last))
    return first + rest + last


def subgroup_table(predictions: pd.DataFrame, attributes: Attributes, classes: Sequence[str],
                   metrics: Sequence[str]) -> pd.DataFrame:
    """One row per encoder × probe × attribute × value, over the predictions pooled across splits
    and seeds: `patients` (distinct), `predictions` (patient × run rows), per class the number of
    predictions with that true class (`n_<class>`) and their recall (`recall_<class>`, NaN when the
    subgroup has none), and each label metric in `metrics` over the subgroup's predictions."""
    if predictions.empty:
        raise ValueError("the runs hold no test predictions to break down by subgroup")
    predictions = predictions.reset_index(drop=True)  # rows are matched to their values by index
    ids = predictions["patient_id"].astype(str)
    known = set().union(*[set(values) for values, _ in attributes.values()]) if attributes else set()
    if attributes and not ids.isin(known).any():
        raise ValueError("none of the runs' patients is in the dataset given for the subgroups: "
                         "is it the dataset the runs were made on?")
    rows = []
    for name, (values, order) in attributes.items():
        value = ids.map(lambda pid: values.get(pid, NOT_IN_DATA))
        for (encoder, probe), run in predictions.groupby(["encoder", "probe"], sort=False):
            run_value = value.loc[run.index]
            for v in value_order(run_value.tolist(), order):
                part = run[run_value == v]
                labels, called = part["label"].to_numpy(int), part["prediction"].to_numpy(int)
                row = {"encoder": encoder, "probe": probe, "attribute": name, "value": v,
                       "patients": part["patient_id"].nunique(), "predictions": len(part)}
                counts = np.bincount(labels, minlength=len(classes))
                per_class = recalls(labels, called, len(classes))
                for c, n, r in zip(classes, counts, per_class):
                    row[f"n_{c.lower()}"] = int(n)
                    row[f"recall_{c.lower()}"] = float(r)
                for m in metrics:
                    row[m] = LABEL_METRICS[m](labels, called)
                rows.append(row)
    return pd.DataFrame(rows)


def subgroup_markdown(table: pd.DataFrame, attribute: str, classes: Sequence[str], metrics: Sequence[str],
                      headers: Mapping[str, str]) -> str:
    """One attribute's rows (of one encoder × probe) as a markdown table: each recall with the number
    of predictions it is over, since small subgroups give loose figures."""
    head = ["value", "patients", "predictions"] + [f"Rec. {markdown_text(c)} (n)" for c in classes] + [
        markdown_text(headers.get(m, m)) for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in table[table["attribute"] == attribute].to_dict("records"):
        # values come from the dataset's patient files: escaped like every id
        cells = [markdown_text(r["value"]), str(r["patients"]), str(r["predictions"])]
        for c in classes:
            n, rec = r[f"n_{c.lower()}"], r[f"recall_{c.lower()}"]
            cells.append(f"{rec:.3f} ({n})" if n else "—")
        cells += [f"{r[m]:.3f}" if np.isfinite(r[m]) else "—" for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
