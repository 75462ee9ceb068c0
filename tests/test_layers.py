"""Layer-wise features: `extract --layers` (cache layout and key) and `probe --layers` (choice of
layers inside train+val only)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import classify.evaluation.layers as layers_module
from classify.evaluation.layers import (cv_layer_scores, layer_columns, layer_slices, resolve_probe_layers,
                             select_layers_cv)
from classify.jobs.probe import load_splits, run_probe
from classify.task import Task
from embed.cache import EmbeddingCache, read_config
from embed.datasets import load_dataset
from embed.encoders import create
from embed.extract import cache_config
from embed.segments import SegmentConfig
from pipeline import main
from test_encoder_byola import _state as byola_state
from test_encoder_efficientat import REAL_MN04


@pytest.fixture(scope="module")
def byola_checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("byola") / "AudioNTT2020-BYOLA-64x96d512.pth"
    torch.save(byola_state(1, 512, 0), path)
    return path


def test_layer_list_goes_into_the_cache_key_and_last_keeps_the_old_one(byola_checkpoint) -> None:
    segments = SegmentConfig()

    def key(**kwargs) -> str:
        return EmbeddingCache("unused", "byola", cache_config(create("byola", byola_checkpoint, **kwargs),
                                                              segments)).key
    before = key()
    assert key(layers="last") == key(layers=[-1]) == key(layers=[4]) == before  # the embedding is layer 4
    assert len({before, key(layers="all"), key(layers="0,2"), key(layers="2,4")}) == 4
    config = cache_config(create("byola", byola_checkpoint, layers="0,4"), segments)
    assert config["layers"] == [0, 4] and config["layer_dims"] == [64, 512]
    assert layer_slices(config) == {0: slice(0, 64), 4: slice(64, 576)}
    with pytest.raises(ValueError, match=r"layers 0\.\.4"):
        create("byola", byola_checkpoint, layers="5")


def test_an_encoder_without_blocks_has_one_layer() -> None:
    logmel = create("logmel", layers="all")
    assert logmel.n_layers == 1 and logmel.last_only and "layers" not in logmel.describe()
    with pytest.raises(ValueError, match=r"layers 0\.\.0"):
        create("logmel", layers="1")


def _subset(source: Path, dest: Path, patients: int) -> Path:
    table = pd.read_csv(source / "training_data.csv")
    table = table.head(patients)
    (dest / "training_data").mkdir(parents=True)
    for pid in table["Patient ID"]:
        for f in (source / "training_data").glob(f"{pid}[._]*"):
            shutil.copy(f, dest / "training_data" / f.name)
    table.to_csv(dest / "training_data.csv", index=False)
    return dest


def test_extract_all_layers_of_mn04_on_circor_round_trips_through_the_cache(circor_mini, tmp_path) -> None:
    if not REAL_MN04.is_file():
        pytest.skip(f"{REAL_MN04} not present")
    data = _subset(circor_mini, tmp_path / "data", patients=1)
    cache = tmp_path / "cache"
    base = ["extract", "--data", str(data), "--encoder", "mn04", "--checkpoint", str(REAL_MN04), "--cache", str(cache),
            "--precision", "fp32", "--batch-size", "8", "--window", "1", "--train-stride", "5", "--eval-stride", "5"]
    assert main(base + ["--layers", "all"]) == 0
    assert main(base) == 0  # --layers last: the cache as before
    files = sorted(cache.glob("mn04-*.h5"))
    assert len(files) == 2
    caches = [EmbeddingCache(cache, "mn04", read_config(f)) for f in files]
    layered, last = sorted(caches, key=lambda c: "layers" in c.config, reverse=True)
    slices = layer_slices(layered)
    assert sorted(slices) == list(range(17)) and layer_slices(last) == {-1: slice(0, None)}
    widths = [s.stop - s.start for s in slices.values()]
    assert widths == [8, 8, 16, 16, 16, 16, 16, 32, 32, 32, 32, 48, 48, 64, 64, 64, 384]
    got, want = layered.read(), last.read()
    assert sorted(got) == sorted(want) and len(got) >= 2
    for rid, rec in got.items():
        assert rec.embeddings.shape[1] == sum(widths)
        assert np.array_equal(rec.embeddings[:, slices[16]], want[rid].embeddings)  # layer 16 = the embedding
        assert np.array_equal(rec.starts, want[rid].starts)


# -- probe side ------------------------------------------------------------------------------------
def _layered_cache(cache_dir: Path, name: str, config: dict, source: dict, rng) -> dict[int, slice]:
    """A 3-layer cache: layers 0 and 2 are noise, layer 1 the informative logmel statistics."""
    from embed.cache import CachedRecording
    dims = [16, next(iter(source.values())).embeddings.shape[1], 8]
    layered = {**config, "layers": [0, 1, 2], "n_layers": 3, "layer_dims": dims}
    records = [CachedRecording(rid, np.hstack([rng.standard_normal((len(r.embeddings), dims[0])), r.embeddings,
                                               rng.standard_normal((len(r.embeddings), dims[2]))]).astype(np.float32),
                               r.starts, r.train_index, r.eval_index) for rid, r in source.items()]
    cache = EmbeddingCache(cache_dir, name, layered)
    cache.write_shard(records)
    cache.consolidate()
    return layer_slices(layered)


@pytest.fixture(scope="module")
def layered(synthetic_data, tmp_path_factory):
    from classify.features.caches import find_cache
    work = tmp_path_factory.mktemp("layered")
    assert main(["extract", "--data", str(synthetic_data), "--encoder", "logmel", "--cache", str(work / "c")]) == 0
    source = find_cache(work / "c", "logmel")
    slices = _layered_cache(work / "layered", "logmel", source.config, source.read(), np.random.default_rng(0))
    dataset = load_dataset("circor", synthetic_data)
    return work / "layered", slices, Task.from_dataset(dataset), load_splits(dataset, "paper")


def test_probe_layers_fixed_cv_and_weighted(layered, tmp_path, monkeypatch) -> None:
    cache, slices, task, splits = layered
    seen = []
    choose = layers_module.select_layers_cv

    def spy(X, y, groups, slices, **kwargs):
        seen.append(set(groups))
        return choose(X, y, groups, slices, **kwargs)
    monkeypatch.setattr(layers_module, "select_layers_cv", spy)

    _, results = run_probe(task, ["logmel"], ["linear"], splits, cache, tmp_path / "cv", decision="mean",
                           progress=False, layers="cv")
    # the choice saw train+val patients of each split, never its test patients
    assert len(seen) == len(splits)
    for groups, split in zip(seen, splits.values()):
        assert groups == set(task.ids_in(split, "train") + task.ids_in(split, "val"))
    assert [r.params["layers"] for r in results] == ["1"] * len(splits)  # the informative layer
    cv_auroc = np.mean([r.metrics["auroc"] for r in results])

    _, noise = run_probe(task, ["logmel"], ["linear"], splits, cache, tmp_path / "l0", decision="mean",
                         progress=False, layers="0,2")
    assert cv_auroc > np.mean([r.metrics["auroc"] for r in noise]) + 0.1
    assert all(r.model.model_[-1].coef_.shape[1] == 16 + 8 for r in noise)  # layers 0 and 2 only

    _, weighted = run_probe(task, ["logmel"], ["linear"], splits, cache, tmp_path / "w", decision="mean",
                            progress=False, layers="weighted")
    scores = pd.read_csv(tmp_path / "w" / "scores.csv")
    assert scores["probe"].unique().tolist() == ["linear+mean+layers=weighted"]
    assert np.mean([r.metrics["auroc"] for r in weighted]) > 0.6
    with pytest.raises(ValueError, match="holds layers 0,1,2"):
        run_probe(task, ["logmel"], ["linear"], splits, cache, tmp_path / "bad", progress=False, layers="3")


def test_array_layer_selection_finds_the_informative_layer() -> None:
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(60), 4)
    y_group = np.arange(60) % 3
    y = y_group[groups]
    informative = np.eye(3)[y] * 2 + rng.standard_normal((len(y), 3))
    X = np.hstack([rng.standard_normal((len(y), 5)), informative, rng.standard_normal((len(y), 4))])
    slices = {0: slice(0, 5), 1: slice(5, 8), 2: slice(8, 12)}
    assert layer_columns(slices, [2, 0]).tolist() == [8, 9, 10, 11, 0, 1, 2, 3, 4]
    scores = cv_layer_scores(X, y, groups, slices, folds=3)
    assert scores[(1,)] > 0.9 and max(scores[(0,)], scores[(2,)]) < 0.6
    assert select_layers_cv(X, y, groups, slices, folds=3) == (1,)
    assert resolve_probe_layers("2,0", slices) == (0, 2) and resolve_probe_layers("last", slices, 3) == (2,)
    assert resolve_probe_layers("cv", slices) == "cv"
    with pytest.raises(ValueError, match="holds one"):
        resolve_probe_layers("cv", {-1: slice(0, None)})
