"""Recipes: the two-stage model, the cost rule, selection inside train+val only, and the recipe
command's round trip through --save-model and predict."""
import json

import numpy as np
import pandas as pd
import pytest

from classify.evaluation.rules import GroupTable, make_rule
from classify.evaluation.metrics import Scoring, weighted_accuracy
from classify.features.patient import MemberScores, patient_features
from classify.recipes.fit import evaluate_recipe, fit_recipe
from classify.recipes.recipe import Member, Recipe
from classify.recipes.sources import FeatureBlock
from classify.store.models import load_recipe, save_recipe
from classify.task import Task
from embed.datasets import load_dataset
from embed.datasets.splits import write_splits
from pipeline import main

LOCS = ("AV", "PV", "TV", "MV")


def toy_task(n_groups: int = 120, seed: int = 0) -> tuple[Task, dict[str, FeatureBlock]]:
    """Groups of 2-4 recordings at random locations; class 0 groups carry a signal in feature 0 of
    the recordings at one location only, class 1 groups a weaker one in feature 1."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(3, n_groups, p=[0.3, 0.2, 0.5])
    recordings_of, location_of, targets, rows, ids = {}, {}, {}, [], []
    for g, label in enumerate(labels):
        gid = f"p{g:03d}"
        locs = rng.choice(LOCS, rng.integers(2, 5), replace=False)
        recordings_of[gid] = []
        for loc in locs:
            rid = f"{gid}_{loc}"
            x = rng.normal(size=8)
            if label == 0 and loc == "MV":
                x[0] += 3.0
            if label == 1:
                x[1] += 1.5
            recordings_of[gid].append(rid)
            location_of[rid] = loc
            targets[rid] = int(label)
            rows.append(x)
            ids.append(rid)
    task = Task(Scoring(("Present", "Unknown", "Absent"), ("weighted_accuracy", "uar"), (5.0, 3.0, 1.0)),
                list(recordings_of), {g: int(lab) for g, lab in zip(recordings_of, labels)}, recordings_of,
                targets, locations=LOCS, recording_location=location_of)
    return task, {"toy": FeatureBlock(np.array(ids), np.array(rows))}


RECIPE = Recipe("toy", "", (), (Member("toy", 0),), targets="patient", folds=3)


def test_cost_rule_is_the_expected_weighted_accuracy_decision():
    rng = np.random.default_rng(0)
    proba = rng.dirichlet(np.ones(3), 500)
    rule = make_rule("cost", (5.0, 3.0, 1.0))
    calls = rule.predict(GroupTable(np.arange(500), proba, proba, proba.argmax(1)))
    np.testing.assert_array_equal(calls, (proba * [5, 3, 1]).argmax(1))
    # with labels drawn from these probabilities, no other fixed call rule scores better on average
    labels = np.array([rng.choice(3, p=p) for p in proba])
    mean_rule = proba.argmax(1)
    assert weighted_accuracy(labels, calls) > weighted_accuracy(labels, mean_rule)


def test_patient_features_average_per_location_and_flag_missing_ones():
    member = MemberScores("m", np.array(["a_AV", "a_MV", "a_MV2", "b_PV"]),
                          np.array([[0.5, 0.25, 0.25], [0.8, 0.1, 0.1], [0.4, 0.3, 0.3], [0.1, 0.1, 0.8]]))
    X = patient_features([member], ["a", "b"], {"a": ["a_AV", "a_MV", "a_MV2"], "b": ["b_PV"]},
                         {"a_AV": "AV", "a_MV": "MV", "a_MV2": "MV", "b_PV": "PV"}, ("AV", "PV", "MV"))
    assert X.shape == (2, 3 * 3 + 3 + 3 + 3)
    np.testing.assert_allclose(X[0, 6:9], np.log([[0.8, 0.1, 0.1], [0.4, 0.3, 0.3]]).mean(0))  # MV: mean of 2
    assert not X[0, 3:6].any() and X[0, -3:].tolist() == [0, 1, 0]  # a has no PV recording
    np.testing.assert_allclose(X[1, 12:15], np.log([0.1, 0.1, 0.8]))  # max over b's one recording


def stage1_state(fitted, member: str) -> np.ndarray:
    state = fitted.parts[0].stage1[member].state()
    return state["coef"] if "coef" in state else state["booster_json"]


@pytest.mark.parametrize("probe", ["linear", "xgboost"])
def test_fit_never_uses_the_groups_it_is_not_given(probe):
    task, blocks = toy_task()
    fit_ids, held = task.group_ids[:90], task.group_ids[90:]
    recipe = Recipe("toy", "", (), (Member("toy", 0, probe=probe),), targets="patient", folds=3)
    a = fit_recipe(task, recipe, blocks, fit_ids, seed=0)
    # scramble every held-out recording's features and labels: nothing fitted may change
    spoiled = blocks["toy"].X.copy()
    held_rows = np.isin(blocks["toy"].recording_ids, [r for g in held for r in task.recordings_of[g]])
    spoiled[held_rows] = np.random.default_rng(1).normal(100, 50, size=(held_rows.sum(), spoiled.shape[1]))
    spoiled_task = Task(task.scoring, task.group_ids, {**task.group_labels, **{g: 0 for g in held}},
                        task.recordings_of, task.targets, locations=task.locations,
                        recording_location=task.recording_location)
    b = fit_recipe(spoiled_task, recipe, {"toy": FeatureBlock(blocks["toy"].recording_ids, spoiled)}, fit_ids, seed=0)
    np.testing.assert_array_equal(stage1_state(a, "toy"), stage1_state(b, "toy"))
    np.testing.assert_array_equal(a.parts[0].stage2.best_estimator_.state()["coef"], b.parts[0].stage2.best_estimator_.state()["coef"])
    assert a.cv_metrics == b.cv_metrics


def test_two_stages_learn_the_location_signal_and_report_inner_cv():
    task, blocks = toy_task(240)
    split = {g: ("test" if i % 4 == 0 else "train") for i, g in enumerate(task.group_ids)}
    results = evaluate_recipe(task, RECIPE, blocks, {"s": split}, seeds=2, progress=False)
    assert [r.split for r in results] == ["s@seed0", "s@seed1"]
    for r in results:
        assert set(r.predictions["patient_id"]) == set(task.ids_in(split, "test"))
        assert r.metrics["weighted_accuracy"] > 0.6 and 0 < r.metrics["cv_weighted_accuracy"] <= 1
    # the per-location patient model beats averaging the recordings (the signal is at MV only)
    flat = evaluate_recipe(task, RECIPE.with_fields(patient_model=False, decision="mean"), blocks, {"s": split},
                           seeds=1, progress=False)
    assert results[0].metrics["auroc"] > flat[0].metrics["auroc"]
    with pytest.raises(ValueError, match="cannot be set"):
        RECIPE.with_fields(members=())
    with pytest.raises(ValueError, match="train_intervals must be one of tsv, segmenter, got 'seg'"):
        RECIPE.with_fields(train_intervals="seg")


def test_boosted_stage1_catches_an_interaction_the_linear_one_cannot_and_round_trips(tmp_path):
    """Class 0 recordings differ from class 2 only in the sign agreement of features 2 and 3 (an
    XOR: no single direction separates them); members sharing one source, one per probe."""
    task, blocks = toy_task(240, seed=3)
    X = blocks["toy"].X.copy()
    rng = np.random.default_rng(4)
    X[:, 2:4] = rng.choice([-1.0, 1.0], size=(len(X), 2)) + rng.normal(0, 0.2, size=(len(X), 2))
    same_sign = np.sign(X[:, 2]) == np.sign(X[:, 3])
    X[:, 0] = 0.0  # only the interaction carries class 0 now
    for i, rid in enumerate(blocks["toy"].recording_ids):
        if task.targets[rid] in (0, 2) and same_sign[i] != (task.targets[rid] == 0):
            X[i, 2] = -X[i, 2]
    block = FeatureBlock(blocks["toy"].recording_ids, X)
    split = {g: ("test" if i % 4 == 0 else "train") for i, g in enumerate(task.group_ids)}
    scores = {}
    for probe in ("linear", "xgboost"):
        recipe = Recipe("toy", "", (), (Member(probe, 0, probe=probe),), targets="patient", folds=3)
        scores[probe] = evaluate_recipe(task, recipe, {probe: block}, {"s": split}, seeds=1,
                                        progress=False)[0].metrics["auroc_present"]
    assert scores["xgboost"] > scores["linear"] + 0.1
    both = Recipe("toy", "", (), (Member("lin", 0), Member("xgb", 0, probe="xgboost")), targets="patient", folds=3)
    sources = {"lin": block, "xgb": block}
    fitted = fit_recipe(task, both, sources, task.ids_in(split, "train"), seed=0)
    assert fitted.parts[0].stage1["xgb"].describe().startswith("xgboost")
    with pytest.raises(ValueError, match="unknown stage-1 probe 'svm'"):
        Member("x", 0, probe="svm")
    save_recipe(fitted, tmp_path / "model", task.classes, "toy", [], trained_on="toy", locations=task.locations)
    loaded, _ = load_recipe(tmp_path / "model", json.loads((tmp_path / "model" / "manifest.json").read_text()))
    test_ids = task.ids_in(split, "test")
    np.testing.assert_allclose(loaded.predict_proba(task, sources, test_ids)[0],
                               fitted.predict_proba(task, sources, test_ids)[0], rtol=1e-6)


def test_bags_average_fits_with_their_own_seeds_and_round_trip(tmp_path):
    task, blocks = toy_task(240, seed=5)
    split = {g: ("test" if i % 4 == 0 else "train") for i, g in enumerate(task.group_ids)}
    fit_ids, test_ids = task.ids_in(split, "train"), task.ids_in(split, "test")
    recipe = Recipe("toy", "", (), (Member("toy", 0), Member("toy_xgb", 0, probe="xgboost")),
                    targets="patient", folds=3)
    sources = {"toy": blocks["toy"], "toy_xgb": blocks["toy"]}
    bagged = fit_recipe(task, recipe.with_fields(bags=3), sources, fit_ids, seed=1)
    # run 1's bags are the single fits with seeds 3, 4, 5: runs never share a bag
    singles = [fit_recipe(task, recipe, sources, fit_ids, seed=s) for s in (3, 4, 5)]
    assert len(bagged.parts) == 3
    for part, single in zip(bagged.parts, singles):
        np.testing.assert_array_equal(part.stage2.oof_proba_, single.parts[0].stage2.oof_proba_)
    # the patient probabilities are the mean of the bags', and so are each member's recording ones
    proba, members = bagged.predict_proba(task, sources, test_ids)
    each = [s.predict_proba(task, sources, test_ids) for s in singles]
    np.testing.assert_allclose(proba, np.mean([p for p, _ in each], axis=0))
    np.testing.assert_allclose(members[1].proba, np.mean([m[1].proba for _, m in each], axis=0))
    assert not np.allclose(each[0][0], each[1][0])  # the seeds did draw different fits
    # the inner CV scores the mean of the bags' out-of-fold probabilities with the shared rule
    cv_proba = np.mean([s.parts[0].stage2.oof_proba_ for s in singles], axis=0)
    calls = bagged.rule.predict(GroupTable(np.asarray(fit_ids), cv_proba, cv_proba, cv_proba.argmax(1)))
    assert bagged.cv_metrics["cv_weighted_accuracy"] == task.scoring.metric(
        "weighted_accuracy", task.labels_of(fit_ids), calls)
    save_recipe(bagged, tmp_path / "model", task.classes, "toy", [], trained_on="toy", locations=task.locations)
    loaded, _ = load_recipe(tmp_path / "model", json.loads((tmp_path / "model" / "manifest.json").read_text()))
    assert len(loaded.parts) == 3
    np.testing.assert_allclose(loaded.predict_proba(task, sources, test_ids)[0], proba, rtol=1e-6)
    with pytest.raises(ValueError, match="bags must be a whole number >= 1, got 0"):
        recipe.with_fields(bags=0)


def test_members_that_differ_only_in_probe_share_one_source(synthetic_data, tmp_path):
    """cycle-logmel reads its phase frames once for the linear and the boosted member, so the
    frames are held and the segmenter decodes each recording once."""
    from classify.features.phases import tsv_intervals
    from classify.recipes.book import get_recipe
    from classify.jobs.recipe import recipe_sources
    recipe = get_recipe("cycle-logmel")
    probes = {m.name: m.probe for m in recipe.members if m.kind == "phases"}
    assert sorted(probes.values()) == ["linear", "xgboost"]
    recordings = load_dataset("circor", synthetic_data).recordings()[:6]
    sources, _, _ = recipe_sources(recipe, recordings, tmp_path, None, intervals=tsv_intervals(recordings),
                                   progress=False)
    first, second = (sources[name] for name in probes)
    assert first is second and set(first.frames) == {r.recording_id for r in recordings}
    assert sources["quality"] is not first


def test_recipe_command_round_trips_through_save_model_and_predict(synthetic_data, tmp_path):
    dataset = load_dataset("circor", synthetic_data)
    pids = list(dataset.group_ids())
    split = {p: ("test" if i % 4 == 0 else "val" if i % 4 == 1 else "train") for i, p in enumerate(pids)}
    write_splits({"one": split}, tmp_path / "splits.csv")
    args = ["recipe", "cycle-logmel", "--data", str(synthetic_data), "--cache", str(tmp_path / "cache"),
            "--splits", str(tmp_path / "splits.csv"), "--seeds", "1", "--out", str(tmp_path / "out"),
            "--save-model", str(tmp_path / "model"), "--set", "folds=3"]
    assert main(args) == 0
    scores = pd.read_csv(tmp_path / "out" / "scores.csv")
    assert scores["split"].tolist() == ["one@seed0"] and {"cv_weighted_accuracy", "uar"} <= set(scores.columns)
    preds = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert set(preds["patient_id"].astype(str)) == {p for p in pids if split[p] == "test"}
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert manifest["kind"] == "recipe" and manifest["decision"] == "cost"
    # predict on one patient folder: the saved recipe (segmenter intervals, no .tsv needed) runs whole
    patient = pids[0]
    folder = tmp_path / "new" / patient
    folder.mkdir(parents=True)
    for wav in (synthetic_data / "training_data").glob(f"{patient}_*.wav"):
        (folder / wav.name).write_bytes(wav.read_bytes())
    assert main(["predict", "--model", str(tmp_path / "model"), "--input", str(folder),
                 "--out", str(tmp_path / "pred")]) == 0
    result = json.loads(next((tmp_path / "pred").glob("*.json")).read_text())
    assert result["class"] in ("Present", "Unknown", "Absent")
    assert abs(sum(result["probabilities"].values()) - 1) < 1e-6
    assert {r["location"] for r in result["recordings"]} <= set(LOCS) | {"Phc", "unknown"}
    # an empty folder, or one whose only recording cannot be read, is named, not a crash deep in
    # the feature code
    (tmp_path / "empty").mkdir()
    assert main(["predict", "--model", str(tmp_path / "model"), "--input", str(tmp_path / "empty"),
                 "--out", str(tmp_path / "pred3")]) == 1
    (tmp_path / "unreadable").mkdir()
    (tmp_path / "unreadable" / "a_AV.wav").write_bytes(b"")
    assert main(["predict", "--model", str(tmp_path / "model"), "--input", str(tmp_path / "unreadable"),
                 "--out", str(tmp_path / "pred4")]) == 1
    unreadable = json.loads((tmp_path / "pred4" / "unreadable.json").read_text())
    assert unreadable["class"] is None and unreadable["skipped"] == [
        {"file": str(tmp_path / "unreadable" / "a_AV.wav"), "problem": "empty file (0 bytes)"}]
    # an edited recipe file is refused, not loaded
    (tmp_path / "model" / "recipe.npz").write_bytes(b"not a recipe")
    assert main(["predict", "--model", str(tmp_path / "model"), "--input", str(folder),
                 "--out", str(tmp_path / "pred2")]) != 0


def crossfit_logmel_recipe(data, cache_dir, n_recordings: int):
    """cycle-logmel with cross-fitted training intervals on the first recordings of `data`: the
    dataset, those recordings, the recipe and its sources (.tsv intervals)."""
    from classify.features.phases import tsv_intervals
    from classify.recipes.book import get_recipe
    from classify.jobs.recipe import recipe_sources
    dataset = load_dataset("circor", data)
    recordings = dataset.recordings()[:n_recordings]
    recipe = get_recipe("cycle-logmel").with_fields(train_intervals="segmenter", folds=3)
    sources, _, _ = recipe_sources(recipe, recordings, cache_dir, None, intervals=tsv_intervals(recordings),
                                   progress=False)
    return dataset, recordings, recipe, sources


def test_training_phases_from_cross_fitted_segmenters_never_come_from_their_own_patient(synthetic_data, tmp_path,
                                                                                        monkeypatch):
    """train_intervals="segmenter": each training recording's phases come from a segmenter fit on
    other patients' .tsv files only; computed once per training set, then reused across seeds."""
    from classify.features.phases import phase_features
    from classify.recipes.sources import CROSSFIT_FOLDS, PhaseFrames
    dataset, recordings, recipe, sources = crossfit_logmel_recipe(synthetic_data, tmp_path, 24)
    phases = sources["phases"]
    patient_of = {r.recording_id: r.patient_id for r in recordings}
    frame_owner = {id(f.embeddings): rid for rid, f in phases.frames.items()}
    decoded, trainings = {}, []
    fit_segmenter = PhaseFrames.fit_segmenter

    def spying_fit(self, ids, seed=0):
        segmenter, trained_on = fit_segmenter(self, ids, seed), {patient_of[r] for r in ids}
        trainings.append(trained_on)
        predict = segmenter.predict

        def spying_predict(frames, times, *args, **kwargs):
            rid = frame_owner[id(frames)]
            assert patient_of[rid] not in trained_on
            decoded[rid] = predict(frames, times, *args, **kwargs)
            return decoded[rid]
        segmenter.predict = spying_predict
        return segmenter

    monkeypatch.setattr(PhaseFrames, "fit_segmenter", spying_fit)
    ids = [r.recording_id for r in recordings]
    block = phases.crossfit_block(ids, patient_of)
    assert len(trainings) == CROSSFIT_FOLDS and set(decoded) == set(ids) == set(block.recording_ids)
    for i, rid in enumerate(block.recording_ids):  # the features are those of the decoded intervals
        f = phases.frames[rid]
        np.testing.assert_allclose(block.X[i], phase_features(f.embeddings, f.times, decoded[rid]))
    assert not np.allclose(block.X, phases.block(ids).rows(block.recording_ids)[1])  # not the .tsv ones
    # a recipe fit on these groups reads that block: no further cross-fit, whatever the seed
    task = Task.from_dataset(dataset, recipe.targets)
    groups = list(dict.fromkeys(r.patient_id for r in recordings))
    task = Task(task.scoring, groups, {g: task.group_labels[g] for g in groups},
                {g: [r for r in ids if patient_of[r] == g] for g in groups}, task.targets,
                locations=task.locations, recording_location=task.recording_location)
    assert phases.crossfit_block([r for g in groups for r in task.recordings_of[g]], patient_of) is block
    read = []
    crossfit_block = PhaseFrames.crossfit_block
    monkeypatch.setattr(PhaseFrames, "crossfit_block",
                        lambda self, *a, **k: read.append(crossfit_block(self, *a, **k)) or read[-1])
    for seed in (0, 1):
        fitted = fit_recipe(task, recipe.with_fields(test_intervals="tsv"), sources, groups, seed=seed)
        assert fitted.segmenter is None and "cv_uar" in fitted.cv_metrics
    # both phase members of both fits read that one block; the .tsv recipe reads none
    assert len(read) == 4 and all(b is block for b in read) and len(trainings) == CROSSFIT_FOLDS
    fit_recipe(task, recipe.with_fields(test_intervals="tsv", train_intervals="tsv"), sources, groups)
    assert len(read) == 4


def test_every_phases_member_pools_the_intervals_of_the_first_ones_segmentation(synthetic_data, tmp_path,
                                                                               monkeypatch):
    """Two phases members on different frames (say log-mel and an encoder's coarser frames): only the
    first one's frames are segmented, and the second pools the same cross-fitted intervals in
    training and the same decoded intervals at test, never ones of a segmenter of its own."""
    from classify.features.phases import phase_features
    from classify.recipes.sources import PhaseFrames
    from embed.cache import CachedFrames
    dataset, recordings, base, sources = crossfit_logmel_recipe(synthetic_data, tmp_path, 40)
    first = sources["phases"]
    rng = np.random.default_rng(0)
    # other frames: every second frame of a random projection, so a different dimension and hop
    projection = rng.normal(size=(next(iter(first.frames.values())).embeddings.shape[1], 5))
    second = PhaseFrames({r: CachedFrames(r, (f.embeddings[::2].astype(np.float32) @ projection), f.times[::2])
                          for r, f in first.frames.items()}, first.intervals)
    fit_segmenter = PhaseFrames.fit_segmenter

    def only_the_first(self, *args, **kwargs):
        assert self is first, "a second phases source fit a segmenter of its own"
        return fit_segmenter(self, *args, **kwargs)
    monkeypatch.setattr(PhaseFrames, "fit_segmenter", only_the_first)
    recipe = Recipe("two-frames", "", base.extracts, base.members + (Member("other_phases", 0, "phases"),),
                    folds=3, train_intervals="segmenter")
    sources = {**sources, "other_phases": second}
    patient_of = {r.recording_id: r.patient_id for r in recordings}
    task = Task.from_dataset(dataset, recipe.targets)
    groups = list(dict.fromkeys(r.patient_id for r in recordings))
    ids = [r.recording_id for r in recordings]
    task = Task(task.scoring, groups[:-3], {g: task.group_labels[g] for g in groups},
                {g: [r for r in ids if patient_of[r] == g] for g in groups}, task.targets,
                locations=task.locations, recording_location=task.recording_location)
    train_groups, test_groups = groups[:-3], groups[-3:]
    fitted = fit_recipe(task, recipe, sources, train_groups)
    train = [r for g in train_groups for r in task.recordings_of[g]]
    intervals = first.crossfit_intervals(train, patient_of)
    block = second.crossfit_block(train, patient_of, first)
    assert set(block.recording_ids) == set(train)
    for i, rid in enumerate(block.recording_ids):
        f = second.frames[rid]
        np.testing.assert_allclose(block.X[i], phase_features(f.embeddings, f.times, intervals[rid]), rtol=1e-6)
    # at test both members read the intervals the first source's segmenter decodes
    test = [r for g in test_groups for r in task.recordings_of[g]]
    blocks = fitted.blocks_for(sources, test)
    decoded = first.segmented(fitted.segmenter, test)
    for rid in test:
        f = second.frames[rid]
        have, X = blocks["other_phases"].rows([rid])
        np.testing.assert_allclose(X[0], phase_features(f.embeddings, f.times, decoded[rid]), rtol=1e-6)
    pred, proba, _ = fitted.predict(task, sources, test_groups)
    assert len(pred) == len(test_groups) and np.allclose(proba.sum(axis=1), 1)


def test_recipe_with_an_encoders_frames_runs_and_segments_only_the_log_mel_frames(synthetic_data, tmp_path):
    """cycle-byola (BYOL-A's frames pooled per phase beside log-mel's), with a generated checkpoint
    under the official file name: extracted, fit, saved and applied to a new patient; its segmenters
    (cross-fit and test) are those of one frame cache, not one set per phases member."""
    import torch

    from classify.recipes.book import RECIPES
    from classify.recipes.members import SEGMENTER_DIR
    from test_encoder_byola import _state as byola_state
    BYOLA_WEIGHTS = RECIPES["cycle-byola"].extracts[2].checkpoint  # the published name the recipe looks up
    weights = tmp_path / "weights"
    weights.mkdir()
    torch.save(byola_state(1, 512, 0), weights / BYOLA_WEIGHTS)
    dataset = load_dataset("circor", synthetic_data)
    pids = list(dataset.group_ids())
    split = {p: ("test" if i % 4 == 0 else "train") for i, p in enumerate(pids)}
    write_splits({"one": split}, tmp_path / "splits.csv")
    cache = tmp_path / "cache"
    assert main(["recipe", "cycle-byola", "--data", str(synthetic_data), "--weights", str(weights),
                 "--cache", str(cache), "--splits", str(tmp_path / "splits.csv"), "--seeds", "1",
                 "--out", str(tmp_path / "out"), "--save-model", str(tmp_path / "model"), "--set", "folds=3"]) == 0
    assert len(list(cache.glob("byola-frames-*.h5"))) == 1
    # the split: 3 cross-fit segmenters + 1 for the test recordings; --save-model: as many again
    assert len(list((cache / SEGMENTER_DIR).glob("*.npz"))) == 8
    scores = pd.read_csv(tmp_path / "out" / "scores.csv")
    assert scores["split"].tolist() == ["one@seed0"] and 0 <= scores["uar"].iloc[0] <= 1
    folder = tmp_path / "new" / pids[1]
    folder.mkdir(parents=True)
    for wav in (synthetic_data / "training_data").glob(f"{pids[1]}_*.wav"):
        (folder / wav.name).write_bytes(wav.read_bytes())
    assert main(["predict", "--model", str(tmp_path / "model"), "--weights", str(weights), "--input", str(folder),
                 "--out", str(tmp_path / "pred")]) == 0
    result = json.loads(next((tmp_path / "pred").glob("*.json")).read_text())
    assert abs(sum(result["probabilities"].values()) - 1) < 1e-6
