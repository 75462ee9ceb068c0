"""`compare`: paired bootstrap differences, resuming after an interruption, encoders' phase members
over the shared log-mel segmentation, and ensemble selection that sees no test patient."""
import numpy as np
import pandas as pd
import pytest

from classify.evaluation.metrics import Scoring, class_aurocs
from classify.evaluation.paired import RunPredictions, paired_difference, rank_aurocs, row_bootstrap
from classify.evaluation.patient_ensemble import forward_select
from classify.evaluation.runs import Run
from classify.jobs.compare import Cell, CellStore, compare_job, compute_cells, ensemble_cells, parse_encoders, signature
from classify.recipes.protocols import cycle_recipe
from classify.recipes.recipe import SEGMENTATION_SOURCE

SCORING = Scoring(("Present", "Unknown", "Absent"), ("weighted_accuracy", "uar"), (5.0, 3.0, 1.0))


def run(name, predictions, labels=(0, 1, 2, 2), split="s"):
    n = len(labels)
    return RunPredictions(name, split, np.array(list("abcd"[:n])), np.array(labels), np.array(predictions),
                          np.full((n, 3), 1 / 3))


def test_paired_difference_and_its_interval_match_a_hand_computation():
    """Rows A and B, two seeds of one split, patients a-d (labels P, U, A, A; weights 5, 3, 1, 1).
    W.acc: A 9/10 and 7/10 (mean 0.8), B 5/10 and 10/10 (0.75): difference 0.05. Resample 1 takes
    a, a, b, b: A 16/16 and 10/16, B 6/16 and 16/16: difference 0.125. Resample 2 takes c, d, d, d:
    A 1/4 and 4/4, B 4/4 and 4/4: difference -0.375. The 95 % percentile interval of
    (0.125, -0.375) interpolates to -0.375 + 0.025 * 0.5 and -0.375 + 0.975 * 0.5."""
    draws = {"s": np.array([[0, 0, 1, 1], [2, 3, 3, 3]])}
    a = row_bootstrap(SCORING, [run("s@seed0", [0, 1, 2, 0]), run("s@seed1", [0, 2, 2, 2])], draws)
    b = row_bootstrap(SCORING, [run("s@seed0", [2, 1, 2, 2]), run("s@seed1", [0, 1, 2, 2])], draws)
    assert a.point["weighted_accuracy"] == pytest.approx(0.8) and b.point["weighted_accuracy"] == pytest.approx(0.75)
    np.testing.assert_allclose(a.draws["weighted_accuracy"], [0.8125, 0.625])
    diff, lo, hi = paired_difference(a, b, "weighted_accuracy")
    assert (diff, lo, hi) == pytest.approx((0.05, -0.3625, 0.1125))
    # the same rows against themselves: no difference, on every resample
    assert paired_difference(a, a, "uar") == (0.0, 0.0, 0.0)
    # rows over other runs cannot be paired
    c = row_bootstrap(SCORING, [run("s@seed0", [0, 1, 2, 0])], draws)
    with pytest.raises(ValueError, match="same runs"):
        paired_difference(a, c, "weighted_accuracy")


def test_rank_aurocs_equal_sklearns_with_ties_and_missing_classes():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (20, 30))
    labels[3] = 0  # a resample with one class only: NaN for every class
    proba = np.round(rng.random((20, 30, 3)), 1)  # ties
    got = rank_aurocs(labels, proba)
    for b in range(20):
        np.testing.assert_allclose(got[b], class_aurocs(labels[b], proba[b]), equal_nan=True)


def test_encoders_name_their_published_weight_file_and_are_refused_by_name():
    choices = parse_encoders("logmel,mn04,yamnet:precision=bf16")
    assert [c.checkpoint for c in choices] == [None, "efficientat_mn04_as_mAP_432.pt", "yamnet.tflite"]
    assert choices[0].precision == "fp32" and choices[2].precision == "bf16"
    with pytest.raises(KeyError, match="unknown encoder 'mn4'"):
        parse_encoders("mn4")
    with pytest.raises(ValueError, match="one layer index"):
        parse_encoders("mn04:layers=all")
    with pytest.raises(ValueError, match="NAME"):
        parse_encoders("mn04:pooling=max")
    (block,) = parse_encoders("mn04:layers=6")  # a block's frames: its own row, its own caches
    assert block.label == "mn04:layers=6" and block.source["layers"] == "6"
    assert cycle_recipe("cycle", block.label, block.source).extracts[0].layers == "6"


def test_a_choice_of_layers_takes_in_each_run_the_layer_with_the_best_inner_score(tmp_path):
    """`mn04:layers=6+12`: each layer's cells are the one-layer rows' cells (read here from the store,
    nothing computed); per run the row is the layer whose inner score is best, whatever the test
    patients say (the other layer is given perfect test calls)."""
    from types import SimpleNamespace
    (choice,) = parse_encoders("mn04:layers=6+12")
    assert [c.label for c in choice.candidates] == ["mn04:layers=6", "mn04:layers=12"]
    assert choice.label == "mn04:layers=6+12" and not parse_encoders("mn04:layers=6")[0].candidates
    for bad in ("mn04:layers=6+6", "mn04:layers=6+all"):
        with pytest.raises(ValueError, match="twice|one layer index"):
            parse_encoders(bad)
    dataset = SimpleNamespace(name="circor")
    runs = [Run("a@seed0", "a", {"p1": "test"}, 0), Run("b@seed0", "b", {"p1": "test"}, 0)]
    inner = {("6", "a@seed0"): (0.70, 0.6), ("12", "a@seed0"): (0.80, 0.5),
             ("6", "b@seed0"): (0.75, 0.7), ("12", "b@seed0"): (0.75, 0.6)}  # b: a tie on W.acc, UAR decides
    store = CellStore(tmp_path)
    for candidate in choice.candidates:
        for r in runs:
            wacc, uar = inner[(candidate.layers, r.name)]
            chosen = {"a@seed0": "12", "b@seed0": "6"}[r.name] == candidate.layers
            test = run(r.name, [0, 1, 2, 2] if not chosen else [2, 2, 0, 0], split=r.split_name)
            store.save(Cell(candidate.label, "cycle", r.name, r.split_name,
                            signature(dataset.name, candidate, "cycle", r), test,
                            {"weighted_accuracy": wacc, "uar": uar}, {"C": "1"}, seconds=10.0))
    cells = compute_cells(dataset, [choice], ["cycle"], runs, None, None, tmp_path, SCORING, progress=False)
    assert set(cells) == {("mn04:layers=6+12", "cycle", r.name) for r in runs}
    for r, layer in (("a@seed0", "12"), ("b@seed0", "6")):
        cell = cells[("mn04:layers=6+12", "cycle", r)]
        assert cell.params == {"C": "1", "layer": layer}
        assert cell.test.predictions.tolist() == [2, 2, 0, 0]  # the chosen layer's (worse) test calls
        assert cell.inner_cv["weighted_accuracy"] == inner[(layer, r)][0]
        assert cell.seconds == 20.0  # both layers were scored


def test_an_encoders_cycle_recipe_pools_its_own_frames_over_the_log_mel_segmentation(synthetic_data, tmp_path):
    """`cycle` for an encoder: its frames are the only phase features, and they are pooled over the
    intervals of the log-mel frames' segmenter (the segmentation cache is no feature member)."""
    from classify.features.phases import phase_features
    from classify.jobs.recipe import recipe_sources
    from classify.recipes.fit import fit_recipe
    from classify.task import Task
    from embed.datasets import load_dataset
    dataset = load_dataset("circor", synthetic_data)
    recipe = cycle_recipe("cycle", "crepe", {"encoder": "crepe", "precision": "fp32"}).with_fields(folds=3)
    assert [m.name for m in recipe.members] == ["crepe_phases", "quality"]
    segmentation = recipe.extracts[recipe.segmentation]
    assert (segmentation.encoder, segmentation.frames) == ("logmel", True)
    assert all(m.extract != recipe.segmentation for m in recipe.members)
    both = cycle_recipe("cycle+logmel", "crepe", {"encoder": "crepe", "precision": "fp32"})
    assert [m.name for m in both.members] == ["logmel_phases", "crepe_phases", "quality"]
    assert both.members[0].extract == both.segmentation  # log-mel's phases share the segmentation's cache
    recordings = dataset.recordings()[:40]
    from classify.features.phases import tsv_intervals
    sources, _, _ = recipe_sources(recipe, recordings, tmp_path / "cache", None,
                                   intervals=tsv_intervals(recordings), progress=False)
    logmel, crepe = sources[SEGMENTATION_SOURCE], sources["crepe_phases"]
    assert logmel is not crepe and crepe.frames[recordings[0].recording_id].embeddings.shape[1] == 256
    patient_of = {r.recording_id: r.patient_id for r in recordings}
    groups = list(dict.fromkeys(patient_of.values()))
    full = Task.from_dataset(dataset, recipe.targets)
    task = Task(full.scoring, groups, {g: full.group_labels[g] for g in groups},
                {g: [r for r in patient_of if patient_of[r] == g] for g in groups}, full.targets,
                locations=full.locations, recording_location=full.recording_location)
    train_groups, test_groups = groups[:-3], groups[-3:]
    fitted = fit_recipe(task, recipe, sources, train_groups)
    train = [r for g in train_groups for r in task.recordings_of[g]]
    intervals = logmel.crossfit_intervals(train, patient_of)
    block = crepe.crossfit_block(train, patient_of, logmel)
    for i, rid in enumerate(block.recording_ids):  # training: crepe's frames, log-mel's cross-fitted intervals
        f = crepe.frames[rid]
        np.testing.assert_allclose(block.X[i], phase_features(f.embeddings, f.times, intervals[rid]), rtol=1e-6)
    test = [r for g in test_groups for r in task.recordings_of[g]]
    decoded = logmel.segmented(fitted.segmenter, test)
    assert fitted.segmenter.n_features_in_ == logmel.frames[test[0]].embeddings.shape[1]
    blocks = fitted.blocks_for(sources, test)
    for rid in test:  # test: the intervals the log-mel segmenter decodes
        f = crepe.frames[rid]
        np.testing.assert_allclose(blocks["crepe_phases"].rows([rid])[1][0],
                                   phase_features(f.embeddings, f.times, decoded[rid]), rtol=1e-6)
    assert fitted.cv_proba.shape == (len(train_groups), 3) and fitted.cv_groups == train_groups


def toy_cells(seed=0):
    """Three heart-cycle cells over one run: fit patients f0..f59 (out of fold), test t0..t19."""
    rng = np.random.default_rng(seed)
    fit_ids, test_ids = np.array([f"f{i}" for i in range(60)]), np.array([f"t{i}" for i in range(20)])
    y_fit, y_test = rng.integers(0, 3, 60), rng.integers(0, 3, 20)
    labels = {**dict(zip(fit_ids, y_fit.tolist())), **dict(zip(test_ids, y_test.tolist()))}

    def proba(y, skill):
        p = rng.random((len(y), 3)) + skill * np.eye(3)[y]
        return p / p.sum(axis=1, keepdims=True)

    cells = {}
    for name, skill in (("good", 3.0), ("fair", 1.0), ("noise", 0.0)):
        test = RunPredictions("s@seed0", "s", test_ids, y_test, proba(y_test, skill).argmax(1), proba(y_test, skill))
        cells[(name, "cycle", "s@seed0")] = Cell(name, "cycle", "s@seed0", "s", "", test,
                                                 {"weighted_accuracy": skill, "uar": skill}, {},
                                                 fit_ids, proba(y_fit, skill))
    return cells, labels


def test_ensemble_selection_sees_no_test_patient():
    cells, labels = toy_cells()
    runs = [Run("s@seed0", "s", {}, 0)]
    out, chosen = ensemble_cells(cells, runs, SCORING, labels)
    assert chosen["s@seed0"][0] == "good/cycle"  # the best out-of-fold member first
    assert out[("ensemble", "best-single", "s@seed0")].params["members"] == "good/cycle"
    # other test probabilities, calls and labels change nothing of the selection or the rule
    rng = np.random.default_rng(5)
    scrambled = {}
    for key, c in cells.items():
        t = c.test
        test = RunPredictions(t.run, t.split, t.patient_ids, rng.permutation(t.labels), rng.integers(0, 3, len(t.labels)),
                              rng.dirichlet(np.ones(3), len(t.labels)))
        scrambled[key] = Cell(c.encoder, c.protocol, c.run, c.split, "", test, c.inner_cv, {}, c.oof_ids, c.oof_proba)
    out2, chosen2 = ensemble_cells(scrambled, runs, SCORING, {k: v for k, v in labels.items() if k.startswith("f")})
    assert chosen2 == chosen
    assert out2[("ensemble", "forward", "s@seed0")].inner_cv == out[("ensemble", "forward", "s@seed0")].inner_cv
    # the selection never asks for a test patient's label
    class FitOnly(dict):
        def __getitem__(self, key):
            assert key.startswith("f"), f"the selection read test patient {key}'s label"
            return super().__getitem__(key)
    oof = {f"{e}/{p}": (c.oof_ids, c.oof_proba) for (e, p, _), c in cells.items()}
    from classify.evaluation.rules import make_rule
    members, _, _ = forward_select(oof, FitOnly(labels), lambda: make_rule("cost", SCORING.class_weights),
                                   SCORING.selection_key)
    assert members == chosen["s@seed0"]


def test_an_interrupted_comparison_resumes_to_the_same_table(circor_mini, tmp_path):
    """Killed after two cells, rerun: the finished cells are read, the rest computed, and the table
    equals an uninterrupted run's."""
    args = dict(dataset_name="circor", data=circor_mini, encoders="logmel", protocols="linear-any,linear-mean",
                splits="kfold", seeds=1, cache_dir=tmp_path / "cache", n_boot=50, progress=False, say=lambda s: None)
    compare_job(out=tmp_path / "whole", **args)
    made = []

    def stop_after_two(cell):
        made.append(cell.run)
        if len(made) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compare_job(out=tmp_path / "resumed", on_cell=stop_after_two, **args)
    assert len(list((tmp_path / "resumed" / "cells").rglob("*.json"))) == 2
    rest = []
    compare_job(out=tmp_path / "resumed", on_cell=lambda c: rest.append(c.run), **args)
    assert len(rest) == 10 - 2
    whole, resumed = (pd.read_csv(tmp_path / name / "compare.csv") for name in ("whole", "resumed"))
    # identical but for the wall time the cells took
    pd.testing.assert_frame_equal(resumed.drop(columns="seconds"), whole.drop(columns="seconds"))
    assert list(whole["protocol"]) == ["linear-any", "linear-mean"] and (whole["runs"] == 5).all()
    assert {"weighted_accuracy_lo", "uar_hi", "auroc", "recall_present", "inner_weighted_accuracy"} <= set(whole)
    assert (tmp_path / "whole" / "forest.png").stat().st_size > 0
    # a cell made from other inputs is recomputed, not read
    cell = next((tmp_path / "resumed" / "cells").rglob("*.json"))
    cell.write_text(cell.read_text().replace('"signature": "', '"signature": "0'))
    again = []
    with pytest.warns(UserWarning, match="other inputs"):
        compare_job(out=tmp_path / "resumed", on_cell=lambda c: again.append(c.run), **args)
    assert len(again) == 1


def test_a_recipe_file_names_its_segmentation_cache_and_a_saved_recipe_keeps_it(tmp_path):
    from classify.recipes.book import get_recipe
    from classify.store.models import recipe_from_dict, recipe_to_dict
    path = tmp_path / "own.toml"
    path.write_text('name = "own"\nsegmentation = { encoder = "logmel", precision = "fp32" }\n'
                    '[[members]]\nname = "crepe_phases"\nkind = "phases"\nsource = { encoder = "crepe" }\n')
    recipe = get_recipe(str(path))
    assert [m.name for m in recipe.members] == ["crepe_phases"]
    assert recipe.extracts[recipe.segmentation] == recipe.extracts[0].__class__("logmel", precision="fp32", frames=True)
    assert recipe_from_dict(recipe_to_dict(recipe)) == recipe
    path.write_text('name = "bad"\nsegmentation = "logmel"\n'
                    '[[members]]\nname = "p"\nkind = "phases"\nsource = { encoder = "logmel" }\n')
    with pytest.raises(ValueError, match="segmentation must be a source table"):
        get_recipe(str(path))
    with pytest.raises(ValueError, match="segmentation must name one of its frame caches"):
        recipe.with_fields(segmentation=5)


def test_every_published_weight_file_name_is_the_one_the_readme_tells_users_to_get():
    import re
    from pathlib import Path

    from embed.encoders import available, get_class
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme.split("**Where the weights come from**")[1].split("`embed/hear.py`")[0]
    named = set(re.findall(r"--checkpoint ([^\s`]+)", table))
    files = {get_class(n).weight_file for n in available()} - {None}
    assert files and files <= named, files - named
