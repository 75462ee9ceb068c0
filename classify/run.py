"""The `probe` job: caches + splits -> scores.csv, predictions.csv and a printed table."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from embed.circor import CirCor
from embed.splits import make_splits, read_splits

from .evaluate import SplitResult, evaluate, summary_table
from .features import find_cache


def load_splits(circor: CirCor, spec: str, seed: int = 0) -> dict[str, dict[str, str]]:
    """`spec`: paper | kfold | campaign | a CSV written by `pipeline.py splits`."""
    if spec in ("paper", "kfold", "campaign"):
        return make_splits(circor, spec, seed)
    splits = read_splits(spec)
    missing = set(circor.patients) - set(next(iter(splits.values()), {}))
    if missing:
        raise ValueError(f"{spec}: {len(missing)} patients of the data have no split "
                         f"(e.g. {sorted(missing)[:3]}); regenerate it with `pipeline.py splits`")
    return splits


def write_results(results: list[SplitResult], out: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    scores = pd.DataFrame([r.score_row() for r in results])
    preds = []
    for r in results:
        frame = r.predictions.copy()
        frame.insert(0, "probe", r.probe)
        frame.insert(0, "encoder", r.encoder)
        preds.append(frame)
    predictions = pd.concat(preds, ignore_index=True)
    columns = ["encoder", "probe", "patient_id", "split", "label", "prediction", "p_present", "p_unknown",
               "p_absent"]
    predictions = predictions[columns]
    scores.to_csv(out / "scores.csv", index=False, float_format="%.4f")
    predictions.to_csv(out / "predictions.csv", index=False, float_format="%.4f")
    return scores, predictions


def run_probe(circor: CirCor, encoders: list[str], probes: list[str], splits: dict[str, dict[str, str]],
              cache_dir: str | Path, out: str | Path, decision: str = "any", seed: int = 0,
              progress: bool = True) -> pd.DataFrame:
    results: list[SplitResult] = []
    for spec in encoders:
        embeddings = find_cache(cache_dir, spec).read()
        missing = sum(r.recording_id not in embeddings for r in circor.recordings())
        if missing:
            print(f"note: {missing} recordings have no {spec} embeddings (failed or not extracted); "
                  "their patients are scored on the rest")
        for probe in probes:
            results += evaluate(circor, embeddings, splits, probe, spec, decision, seed, progress)
    scores, _ = write_results(results, out)
    return summary_table(scores)
