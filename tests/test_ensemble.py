"""Issue-4 capabilities on synthetic data: location targets, thresholds, OOF, stacking, MLP."""
import numpy as np
import pandas as pd
import pytest

from classify.evaluation.rules import WeightedRule, make_rule, rule_from_dict
from classify.evaluation.ensemble import mean_scores, stack
from classify.evaluation.probe_protocol import RecordingScores, fit_encoder, fit_rule, out_of_fold
from classify.estimators.mlp import MLPProbe
from classify.estimators.linear import LinearProbe
from classify.task import Task
from embed.datasets.circor import load_circor, paper_split
from embed.encoders import create
from embed.extract import extract, open_cache
from embed.segments import SegmentConfig
from pipeline import main


@pytest.fixture(scope="module")
def setup(synthetic_data, tmp_path_factory):
    circor = load_circor(synthetic_data)
    cache = tmp_path_factory.mktemp("cache")
    extract(create("logmel"), circor.recordings(), cache, progress=False)
    embeddings = open_cache(create("logmel"), SegmentConfig(), cache).read()
    return circor, embeddings, paper_split(circor, 14), cache, Task.from_dataset(circor)


def test_location_targets_mark_only_murmur_locations(setup):
    circor = setup[0]
    targets = circor.recording_labels("location")
    for patient in circor.patients.values():
        for rec in patient.recordings:
            if patient.murmur == "Present":
                assert targets[rec.recording_id] == (0 if rec.location in patient.murmur_locations else 2)
            else:
                assert targets[rec.recording_id] == patient.label
    assert Task.from_dataset(circor, "location").targets == targets
    assert set(circor.recording_labels("patient").values()) == {0, 1, 2}
    with pytest.raises(ValueError, match="label scheme"):
        circor.recording_labels("beat")


def test_oof_scores_never_see_their_patient(setup):
    circor, embeddings, split, _, task = setup
    train = task.ids_in(split, "train")
    oof = out_of_fold(task, embeddings, train, LinearProbe(C=0.1), folds=3, seed=0)
    assert set(oof.patient_ids) == set(train)
    assert len(set(oof.recording_ids)) == len(oof.recording_ids)
    # a model trained on all train patients fits them better than the honest OOF one
    from classify.features.caches import segment_set
    from classify.estimators.base import full_proba
    data = segment_set(task, embeddings, train, "train")
    model = LinearProbe(C=0.1).fit(data.X, data.y)
    evals = segment_set(task, embeddings, train, "eval")
    seen = RecordingScores.from_segments(evals, full_proba(model, evals.X, 3)).reindex(oof.recording_ids)
    labels = np.array([circor.patients[p].label for p in oof.patient_ids])
    def loss(s): return -np.mean(np.log(s.proba[np.arange(len(labels)), labels] + 1e-9))
    assert loss(seen) < loss(oof)


def test_thresholds_maximise_val_weighted_accuracy(setup):
    circor = setup[0]
    pids = circor.patient_ids()[:20]
    recs = [circor.patients[p].recordings[0].recording_id for p in pids]
    labels = np.array([circor.patients[p].label for p in pids])
    proba = np.full((20, 3), 0.1)
    proba[labels == 0, 0] = 0.62  # Present patients score 0.62, others 0.1
    proba[labels == 1, 1] = 0.4
    scores = RecordingScores(np.array(recs), np.array(pids), proba)
    rule, score = fit_rule(setup[4], scores, "threshold")
    t_present, t_unknown = rule.thresholds_
    assert 0.1 < t_present <= 0.62 and 0.1 < t_unknown <= 0.4 and score == 1.0
    # a fitted rule is plain data: it round-trips through JSON and predicts the same
    again = rule_from_dict(rule.to_dict())
    assert (again.predict(scores.table()) == rule.predict(scores.table())).all()
    assert again.get_params() == {"thresholds": None} and again.thresholds_ == rule.thresholds_


def test_weighted_decision_scales_mean_probabilities(setup):
    circor = setup[0]
    pids = circor.patient_ids()[:24]
    recs = [circor.patients[p].recordings[0].recording_id for p in pids]
    labels = np.array([circor.patients[p].label for p in pids])
    assert set(labels) == {0, 1, 2}
    # plain argmax calls everyone Absent; Present needs a weight > 1.25, Unknown one > 1.57
    proba = np.tile([0.1, 0.1, 0.8], (24, 1))
    proba[labels == 0] = [0.4, 0.1, 0.5]
    proba[labels == 1] = [0.1, 0.35, 0.55]
    scores = RecordingScores(np.array(recs), np.array(pids), proba)
    table = scores.table()
    assert (WeightedRule().predict(table) == 2).all()  # default weights 1/1 = the mean rule
    assert (WeightedRule([1.0, 1.0]).predict(table) == make_rule("mean").predict(table)).all()
    rule, score = fit_rule(setup[4], scores, "weighted")
    s_present, s_unknown = rule.weights_
    assert score == 1.0 and 1.25 < s_present < 8.0 and 1.57 < s_unknown < 8.0 and 0.1 * s_present < 0.35 * s_unknown
    ordered = np.array([circor.patients[p].label for p in table.group_ids])
    assert (WeightedRule([s_present, s_unknown]).predict(table) == ordered).all()


def test_stack_and_mean_ensembles(setup):
    circor, embeddings, split, _, task = setup
    fitted = [fit_encoder(task, embeddings, split, "linear", oof_folds=3, seed=s) for s in (0, 1)]
    val, test, params = stack(task, fitted, demographics=True)
    assert params["C"] in (0.01, 0.1, 1.0)
    assert set(test.patient_ids) == set(task.ids_in(split, "test"))
    assert np.allclose(test.proba.sum(axis=1), 1)
    mean = mean_scores([f.test for f in fitted])
    assert np.allclose(mean.proba, (fitted[0].test.proba + fitted[1].test.reindex(mean.recording_ids).proba) / 2)
    with pytest.raises(ValueError, match="out-of-fold"):
        stack(task, [fit_encoder(task, embeddings, split, "linear")], demographics=False)


def test_demographic_features(setup):
    circor = setup[0]
    feats = circor.covariates(np.array(circor.patient_ids()[:5]))
    assert feats.shape == (5, 11) and np.isfinite(feats).all()
    assert (feats[:, :5].sum(axis=1) <= 1).all()


def test_mlp_probe_learns():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    X = rng.standard_normal((600, 10)) + 2 * np.eye(3, 10)[y]
    model = MLPProbe(max_epochs=30, random_state=0).fit(X, y, groups=np.arange(600) // 4)
    assert (model.predict(X) == y).mean() > 0.85
    assert np.allclose(model.predict_proba(X).sum(axis=1), 1, atol=1e-5)


def test_cli_ensemble_run(setup, tmp_path):
    circor, _, _, cache, _ = setup
    key = next(cache.glob("logmel-*.h5")).stem.split("-")[1]
    out = tmp_path / "ens"
    code = main(["probe", "--data", str(circor.root), "--encoder", f"logmel,logmel@{key}", "--probe", "linear",
                 "--cache", str(cache), "--out", str(out), "--ensemble", "both", "--decision", "threshold",
                 "--targets", "location", "--demographics", "--oof-folds", "3"])
    assert code == 0
    scores = pd.read_csv(out / "scores.csv")
    assert set(scores["encoder"]) == {"logmel", f"logmel@{key}", f"ens:mean(logmel+logmel@{key})",
                                      f"ens:stack(logmel+logmel@{key})"}
    assert set(scores["probe"]) == {"linear+loc+thr", "linear+loc+thr+demo"}
    assert scores["params"].str.contains("thresholds=").all()


def test_cli_repeats_rerun_each_split_with_new_probe_seeds(setup, tmp_path):
    circor, _, _, cache, _ = setup
    out = tmp_path / "rep"
    assert main(["probe", "--data", str(circor.root), "--encoder", "logmel", "--probe", "xgboost", "--cache",
                 str(cache), "--out", str(out), "--repeats", "2", "--seed", "5", "--decision", "weighted"]) == 0
    scores = pd.read_csv(out / "scores.csv")
    assert scores["split"].tolist() == [f"split{i}@seed{s}" for s in (5, 6) for i in (1, 2, 3)]
    assert scores["params"].str.contains("class_weights=").all()
    preds = pd.read_csv(out / "predictions.csv")
    first, second = (preds[preds["split"] == f"split1@seed{s}"].set_index("patient_id") for s in (5, 6))
    assert list(first.index) == list(second.index)  # same split, same test patients
    assert not np.allclose(first["p_present"], second["p_present"])  # xgboost subsamples by seed
