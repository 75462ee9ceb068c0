"""The one evaluation engine: the grouped-CV search, one probe registry for probes and recipe members,
recipes as TOML (and composed with --member), rules that mean the same everywhere, one model store."""
import json

import numpy as np
import pytest

from classify.estimators.linear import LinearProbe
from classify.estimators.probes import PROBES
from classify.estimators.search import (GroupedSearchCV, RecordingStage, balanced_log_loss, group_folds,
                                        out_of_fold_proba)
from classify.evaluation.rules import GroupTable, make_rule
from classify.features.patient import MemberScores
from classify.recipes.book import RECIPES, committed_recipes, get_recipe, recipe_from_specs, recipe_from_toml
from classify.recipes.fit import fit_recipe, patient_table
from classify.recipes.recipe import Member, Recipe
from classify.store.models import ModelIntegrityError, canonical_sha256, load_manifest, save_recipe
from tests.test_recipe import toy_task


def rows(seed=0, n_groups=60):
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_groups), 3)
    y = np.repeat(rng.integers(0, 3, n_groups), 3)
    X = rng.normal(size=(len(y), 6)) + y[:, None] * 0.8
    return X, y, groups


def test_grouped_search_picks_the_candidate_with_the_lowest_out_of_fold_loss():
    X, y, groups = rows()
    search = GroupedSearchCV(LinearProbe(), {"C": [1e-3, 1e-1, 10.0]}, folds=3, seed=1).fit(X, y, groups)
    folds = group_folds(y, groups, 3, 1)
    losses = {C: balanced_log_loss(y, out_of_fold_proba(LinearProbe(C=C), X, y, folds, 3, groups), 3)
              for C in (1e-3, 1e-1, 10.0)}
    assert search.best_params_ == {"C": min(losses, key=losses.get)}
    np.testing.assert_allclose(search.oof_proba_, out_of_fold_proba(LinearProbe(C=search.best_params_["C"]),
                                                                    X, y, folds, 3, groups))
    # no patient is on both sides of a fold
    for fit_idx, held_idx in folds:
        assert not set(groups[fit_idx]) & set(groups[held_idx])
    refit = LinearProbe(C=search.best_params_["C"]).fit(X, y)
    np.testing.assert_allclose(search.predict_proba(X), refit.predict_proba(X))


@pytest.mark.parametrize("probe", list(PROBES))
def test_every_registered_probe_is_a_recipe_member_and_round_trips_through_its_state(probe):
    X, y, groups = rows(2, 40)
    stage = RecordingStage(probe, folds=3, seed=0).fit(X, y, groups)
    assert stage.oof_proba_.shape == (len(y), 3) and np.allclose(stage.oof_proba_.sum(1), 1)
    rebuilt = RecordingStage.from_state(stage.get_params(), stage.state())
    np.testing.assert_allclose(rebuilt.predict_proba(X), stage.predict_proba(X), rtol=1e-6)
    assert rebuilt.describe() == stage.describe()


def test_the_committed_toml_recipes_load_and_a_base_adds_its_members():
    assert {"cycle-logmel", "cycle-logmel-bagged", "cycle-byola", "cycle-mn04"} <= set(RECIPES)
    logmel, byola = RECIPES["cycle-logmel"], RECIPES["cycle-byola"]
    assert RECIPES["cycle-logmel-bagged"].members == logmel.members and RECIPES["cycle-logmel-bagged"].bags == 5
    assert byola.members[:3] == logmel.members and byola.members[3].name == "byola_phases"
    assert byola.extracts[2].frames and byola.extracts[2].checkpoint == "AudioNTT2020-BYOLA-64x96d512.pth"
    # members that read the same cache share one extract
    assert logmel.members[0].extract == logmel.members[2].extract == 0 and len(logmel.extracts) == 2


def test_a_recipe_file_is_read_by_path_and_its_mistakes_are_named(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('name = "mine"\nbase = "cycle-logmel"\nfolds = 3\n')
    mine = get_recipe(str(path))
    assert mine.name == "mine" and mine.folds == 3 and mine.members == RECIPES["cycle-logmel"].members
    with pytest.raises(ValueError, match=r"x\.toml: unknown recipe fields \['fold'\]"):
        recipe_from_toml({"name": "x", "fold": 3}, "x.toml")
    with pytest.raises(ValueError, match="member 'a': unknown kind 'frames'"):
        recipe_from_toml({"name": "x", "members": [{"name": "a", "kind": "frames", "source": {"encoder": "logmel"}}]},
                         "x.toml")
    with pytest.raises(ValueError, match="its source needs an encoder"):
        recipe_from_toml({"name": "x", "members": [{"name": "a", "source": {}}]}, "x.toml")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "b.toml").write_text('name = "b"\nbase = "nowhere"\n')
    with pytest.raises(ValueError, match="b.toml: its base recipe 'nowhere'"):
        committed_recipes(tmp_path / "bad")


def test_member_specs_compose_the_committed_recipe():
    composed = recipe_from_specs(["phases:logmel:precision=fp32", "quality",
                                  "phases:logmel:probe=xgboost,precision=fp32"], "mine")
    logmel = RECIPES["cycle-logmel"]
    assert composed.extracts == logmel.extracts
    assert [(m.extract, m.kind, m.stats, m.probe) for m in composed.members] == [
        (m.extract, m.kind, m.stats, m.probe) for m in logmel.members]
    layered = recipe_from_specs(["windows:mn04:layers=cv,checkpoint=w.pt"])
    assert layered.extracts[0].layers == "all" and layered.members[0].layers == "cv"
    with pytest.raises(ValueError, match="unknown key 'prob'"):
        recipe_from_specs(["windows:mn04:prob=mlp"])
    with pytest.raises(ValueError, match="two members named alike"):
        recipe_from_specs(["quality", "quality"])


def test_recording_rules_are_refused_on_patient_probabilities_and_mean_what_they_mean_without():
    proba = np.array([[0.3, 0.1, 0.6], [0.1, 0.2, 0.7]])
    with pytest.raises(ValueError, match="any rule calls a patient from its recordings"):
        make_rule("any").predict(GroupTable.from_patients(["a", "b"], proba))
    with pytest.raises(ValueError, match="threshold rule calls a patient from its recordings"):
        make_rule("threshold").predict(GroupTable.from_patients(["a", "b"], proba))
    assert make_rule("mean").predict(GroupTable.from_patients(["a", "b"], proba)).tolist() == [2, 2]
    with pytest.raises(ValueError, match="the any rule calls a patient from its recordings"):
        Recipe("r", "", (), (Member("m", 0),), decision="any")
    # without a patient model, *any* is the first class any recording is called, as for a probe
    task, _ = toy_task(4)
    gid = task.group_ids[0]
    recs = task.recordings_of[gid]
    member = MemberScores("m", np.array(recs), np.array([[0.6, 0.1, 0.3]] + [[0.1, 0.1, 0.8]] * (len(recs) - 1)))
    table = patient_table(task, [gid], np.array([[0.2, 0.1, 0.7]]), [member])
    assert make_rule("any").predict(table).tolist() == [0] and make_rule("mean").predict(table).tolist() == [2]


def test_a_recipe_without_patient_model_decides_any_from_its_recordings():
    task, blocks = toy_task()
    recipe = Recipe("toy", "", (), (Member("toy", 0),), targets="patient", folds=3, patient_model=False,
                    decision="any")
    fitted = fit_recipe(task, recipe, blocks, task.group_ids[:90])
    calls, proba, members = fitted.predict(task, blocks, task.group_ids[90:])
    by_recording = GroupTable.from_recordings(members[0].proba, np.array(
        [g for g in task.group_ids[90:] for r in task.recordings_of[g]]))
    assert calls.tolist() == by_recording.first_call.tolist()


def test_models_of_an_earlier_format_are_refused_naming_the_version(tmp_path):
    task, blocks = toy_task()
    recipe = Recipe("toy", "", (), (Member("toy", 0),), targets="patient", folds=3)
    save_recipe(fit_recipe(task, recipe, blocks, task.group_ids), tmp_path, task.classes, "toy", [],
                trained_on="all", locations=task.locations)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["format"] == 3 and manifest["kind"] == "recipe"
    manifest["format"] = 2
    manifest["manifest_sha256"] = canonical_sha256(manifest)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelIntegrityError, match="a model folder of format 2, written by an earlier heartprobe; "
                                                  "this version reads format 3"):
        load_manifest(tmp_path)


def test_a_recipe_composed_with_member_runs_saves_and_predicts_through_the_one_path(synthetic_data, tmp_path):
    """`recipe NAME --member ...`: a windows member of the log-mel cache alone, the strong protocol
    (patient model, cost rule) over an encoder; saved and applied like any recipe."""
    import pandas as pd

    from embed.datasets import load_dataset
    from embed.datasets.splits import write_splits
    from pipeline import main
    dataset = load_dataset("circor", synthetic_data)
    pids = list(dataset.group_ids())
    split = {p: ("test" if i % 4 == 0 else "val" if i % 4 == 1 else "train") for i, p in enumerate(pids)}
    write_splits({"one": split}, tmp_path / "splits.csv")
    out = tmp_path / "out"
    args = ["recipe", "logmel-windows", "--member", "windows:logmel:stats=mean+std", "--data", str(synthetic_data),
            "--cache", str(tmp_path / "cache"), "--splits", str(tmp_path / "splits.csv"), "--seeds", "1",
            "--out", str(out), "--save-model", str(tmp_path / "model"), "--set", "folds=3"]
    assert main(args) == 0
    scores = pd.read_csv(out / "scores.csv")
    assert scores["encoder"].tolist() == ["logmel-windows folds=3"] and scores["probe"].tolist() == ["recipe"]
    assert "logmel_windows" in scores["params"].iloc[0]
    manifest = load_manifest(tmp_path / "model")
    assert manifest["kind"] == "recipe" and manifest["models"][0]["encoder"] == "recipe:logmel-windows folds=3"
    wav = next((synthetic_data / "training_data").glob(f"{pids[0]}_*.wav"))
    assert main(["predict", "--model", str(tmp_path / "model"), "--input", str(wav), "--out", str(tmp_path / "p")]) == 0
    result = json.loads(next((tmp_path / "p").glob("*.json")).read_text())
    assert result["class"] in ("Present", "Unknown", "Absent")
    assert set(result["recordings"][0]["members"]) == {"logmel_windows"}
    # a misspelt member is refused before OUT is touched
    assert main(["recipe", "x", "--member", "window:logmel", "--data", str(synthetic_data),
                 "--out", str(tmp_path / "never")]) == 2
    assert not (tmp_path / "never").exists()


# -- a probe is a one-member recipe ---------------------------------------------------------------

def test_a_probe_is_a_one_member_val_recipe_and_ensembles_are_recipes_of_every_member():
    from classify.jobs.probe import probe_recipes
    single, = probe_recipes(["logmel"], "xgboost", "location", "weighted", None)
    assert (single.selection, single.patient_model, single.decision, single.label) == ("val", False, "weighted",
                                                                                       "xgboost+loc+wgt")
    assert [(m.name, m.kind, m.probe) for m in single.members] == [("logmel", "segments", "xgboost")]
    recipes = probe_recipes(["a", "b"], "linear", "patient", "any", "cv", {"a": "cv", "b": "cv"}, "both",
                             demographics=True)
    assert [r.name for r in recipes] == ["a", "b", "ens:mean(a+b)", "ens:stack(a+b)"]
    assert [r.combine for r in recipes] == ["mean", "mean", "mean", "stack"]
    assert [r.label for r in recipes] == ["linear+any+layers=cv"] * 3 + ["linear+any+layers=cv+demo"]
    assert [m.name for m in recipes[3].members] == ["a", "b"] and {m.layers for m in recipes[3].members} == {"cv"}
    assert [r.demographics for r in recipes] == [False, False, False, True]


def test_recipes_refuse_a_member_of_the_other_selection_and_a_val_recipe_is_not_fit_on_groups():
    with pytest.raises(ValueError, match="fit by the linear evaluation; set selection='val'"):
        Recipe("r", "", (), (Member("m", 0, kind="segments"),), patient_model=False, decision="mean")
    with pytest.raises(ValueError, match="fits members of kind segments only"):
        Recipe("r", "", (), (Member("m", 0),), patient_model=False, decision="mean", selection="val")
    with pytest.raises(ValueError, match="has no patient model; set patient_model=False"):
        Recipe("r", "", (), (Member("m", 0, kind="segments"),), decision="mean", selection="val")
    with pytest.raises(ValueError, match="combine and demographics belong to selection='val'"):
        Recipe("r", "", (), (Member("m", 0),), combine="stack")
    val = Recipe("r", "", (), (Member("m", 0, kind="segments"),), patient_model=False, decision="mean",
                 selection="val")
    task, blocks = toy_task()
    with pytest.raises(ValueError, match="is fit split by split"):
        fit_recipe(task, val, blocks, task.group_ids)
    composed = recipe_from_specs(["segments:logmel:probe=xgboost"])
    assert (composed.selection, composed.patient_model, composed.decision) == ("val", False, "any")


def _one_split(synthetic_data, path):
    from embed.datasets import load_dataset
    from embed.datasets.splits import write_splits
    pids = list(load_dataset("circor", synthetic_data).group_ids())
    write_splits({"one": {p: ("test" if i % 4 == 0 else "val" if i % 4 == 1 else "train") for i, p in enumerate(pids)},
                  "two": {p: ("test" if i % 4 == 1 else "val" if i % 4 == 2 else "train") for i, p in enumerate(pids)}},
                 path)
    return path


def test_probe_fits_each_member_once_however_many_recipes_hold_it(synthetic_data, tmp_path, monkeypatch):
    from pipeline import main
    from classify.jobs.probe import load_splits, run_probe
    from classify.recipes import linear
    from classify.task import Task
    from embed.datasets import load_dataset
    cache = tmp_path / "cache"
    assert main(["extract", "--data", str(synthetic_data), "--cache", str(cache), "--encoder", "logmel"]) == 0
    key = next(cache.glob("logmel-*.h5")).stem.split("-")[1]
    specs = ["logmel", f"logmel@{key}"]
    dataset = load_dataset("circor", synthetic_data)
    fits = []
    real = linear.fit_member
    monkeypatch.setattr(linear, "fit_member", lambda *a, **k: fits.append(a[1].name) or real(*a, **k))
    splits = load_splits(dataset, str(_one_split(synthetic_data, tmp_path / "splits.csv")))
    _, results = run_probe(Task.from_dataset(dataset, "patient"), specs, ["linear"], splits, cache, tmp_path / "out",
                           progress=False, ensemble="both", oof_folds=3)
    assert sorted(fits) == sorted(specs * 2)  # 2 runs; the ensembles reuse the encoders' fits
    names = [*specs, f"ens:mean({'+'.join(specs)})", f"ens:stack({'+'.join(specs)})"]
    assert [(r.encoder, r.split) for r in results] == [(n, s) for s in ("one", "two") for n in names]


def test_a_segments_recipe_scores_as_the_probe_does_and_is_not_saved_by_recipe(synthetic_data, tmp_path):
    import pandas as pd
    from pipeline import main
    _one_split(synthetic_data, tmp_path / "splits.csv")
    common = ["--data", str(synthetic_data), "--cache", str(tmp_path / "cache"), "--splits", str(tmp_path / "splits.csv")]
    assert main(["recipe", "as-probe", "--member", "segments:logmel", "--seeds", "1", "--out", str(tmp_path / "r"),
                 *common]) == 0
    assert main(["probe", "--encoder", "logmel", "--probe", "linear", "--out", str(tmp_path / "p"), *common]) == 0
    recipe, probe = (pd.read_csv(tmp_path / d / "predictions.csv") for d in ("r", "p"))
    keep = ["patient_id", "label", "prediction", "p_present", "p_unknown", "p_absent"]
    pd.testing.assert_frame_equal(recipe[keep], probe[keep])
    assert main(["recipe", "as-probe", "--member", "segments:logmel", "--save-model", str(tmp_path / "m"),
                 "--out", str(tmp_path / "never"), *common]) == 2
    assert not (tmp_path / "never").exists()
