"""One encoder through every job a user runs on it: extract, --frames, probe with --save-model, a
recipe with a phase member on its frames with --save-model, and predict through both models.
Shared by the tests of encoders that come from outside heartprobe (`hear:MODULE`, `hf`)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from embed.cache import FrameCache, list_caches, read_config
from embed.datasets import load_dataset
from embed.datasets.splits import write_splits
from pipeline import main


def run_every_job(data: Path, tmp_path: Path, encoder: str, member: str, cache_name: str, member_name: str,
                  checkpoint: Sequence[str] = (), weights: Sequence[str] = ()):
    """Runs the jobs on `encoder` (`checkpoint`: its extract/probe options; `member`: the recipe's
    phase member naming it, its weights found through `weights`, which the recipe's parameters list as
    `member_name`); returns its first recording's frames."""
    cache = tmp_path / "cache"
    opts = ["--data", str(data), "--cache", str(cache)]
    assert main(["extract", *opts, "--encoder", encoder, *checkpoint]) == 0
    assert main(["extract", *opts, "--encoder", encoder, *checkpoint, "--frames"]) == 0
    (frames_path,) = list_caches(cache, cache_name, "frames")
    first = next(iter(FrameCache(cache, cache_name, read_config(frames_path)).read().values()))
    pids = list(load_dataset("circor", data).group_ids())
    split = {p: ("test" if i % 4 == 0 else "val" if i % 4 == 1 else "train") for i, p in enumerate(pids)}
    write_splits({"one": split}, tmp_path / "splits.csv")
    opts += ["--splits", str(tmp_path / "splits.csv")]
    assert main(["probe", *opts, "--encoder", encoder, *checkpoint, "--probe", "linear", "--decision", "mean",
                 "--out", str(tmp_path / "probe"), "--save-model", str(tmp_path / "probe-model")]) == 0
    scores = pd.read_csv(tmp_path / "probe" / "scores.csv")
    assert scores["encoder"].tolist() == [encoder] and 0 <= scores["uar"].iloc[0] <= 1
    assert main(["recipe", "toy-cycle", "--member", member, "--member", "quality", *opts, *weights,
                 "--seeds", "1", "--set", "folds=3", "--out", str(tmp_path / "recipe"),
                 "--save-model", str(tmp_path / "recipe-model")]) == 0
    assert member_name in pd.read_csv(tmp_path / "recipe" / "scores.csv")["params"].iloc[0]
    wav = next((data / "training_data").glob(f"{pids[0]}_*.wav"))
    for model in ("probe-model", "recipe-model"):
        out = tmp_path / f"pred-{model}"
        assert main(["predict", "--model", str(tmp_path / model), *weights, "--input", str(wav),
                     "--out", str(out)]) == 0
        result = json.loads(next(out.glob("*.json")).read_text())
        assert abs(sum(result["probabilities"].values()) - 1) < 1e-6
        assert result["patient_id"] == pids[0]
    assert np.isfinite(first.embeddings).all()
    return first
