"""`probe --save-model` + `predict`: saved models as arrays with a hash manifest, refused when
tampered with, never executed, and per-patient predictions from a CirCor folder or loose wavs at
any sample rate."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from scipy.signal import resample_poly

import pipeline
from classify.store.models import ModelIntegrityError, canonical_sha256, load_manifest, load_model, select_model
from classify.jobs.encoders import probe_encoder as build_encoder
from classify.jobs.predict import output_names
from classify.estimators.base import full_proba
from embed.checksum import file_sha256
from embed.datasets.circor import MURMUR_CLASSES, load_circor
from embed.datasets.inputs import gather_inputs
from embed.datasets.synthetic import make_dataset


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    work = tmp_path_factory.mktemp("predict")
    data = make_dataset(work / "data", n_patients=30, seed=4)
    cache, model = work / "cache", work / "model"
    assert pipeline.main(["extract", "--data", str(data), "--cache", str(cache)]) == 0
    assert pipeline.main(["probe", "--data", str(data), "--cache", str(cache), "--out", str(work / "out"),
                          "--save-model", str(model)]) == 0
    return {"work": work, "data": data, "cache": cache, "model": model, "circor": load_circor(data)}


def _predict(capsys, *args: str) -> tuple[int, list[dict], str]:
    code = pipeline.main(["predict", *args])
    out = capsys.readouterr()
    decoder, results, text = json.JSONDecoder(), [], out.out.strip()
    while text:  # stdout is the JSON objects, one per patient
        obj, end = decoder.raw_decode(text)
        results.append(obj)
        text = text[end:].strip()
    return code, results, out.err


def _expected_from_cache(trained, pid: str) -> dict[str, np.ndarray]:
    """What the saved probe says from the embeddings `extract` cached: predict must agree."""
    from classify.features.caches import find_cache
    manifest = load_manifest(trained["model"])
    estimator, _, _ = load_model(trained["model"], select_model(manifest))
    cached = find_cache(trained["cache"], "logmel").read()
    return {r.recording_id: full_proba(estimator, cached[r.recording_id].eval(), 3).mean(axis=0)
            for r in trained["circor"].patients[pid].recordings}


def test_manifest_records_hashes_config_classes_and_rule(trained):
    manifest = load_manifest(trained["model"])
    assert manifest["classes"] == list(MURMUR_CLASSES) and manifest["decision"] == "any"
    (entry,) = manifest["models"]
    assert entry["encoder"] == "logmel" and entry["probe"] == "linear" and "C" in entry["params"]
    assert entry["sha256"] == file_sha256(trained["model"] / entry["file"])
    assert entry["cache_config"]["encoder"] == "logmel" and "checkpoint_sha256" in entry["cache_config"]
    assert entry["trained_on"]["split"] == "split1" and entry["rule"] == {"rule": "any", "params": {}, "fitted": {}}
    # exactly what `probe` selected: the saved model's test metrics are probe's split1 row
    scores = pd.read_csv(trained["work"] / "out" / "scores.csv").set_index("split")
    assert entry["split_test_metrics"]["weighted_accuracy"] == pytest.approx(scores.loc["split1", "weighted_accuracy"],
                                                                              abs=5e-5)
    assert f"C={entry['params']['C']}" in scores.loc["split1", "params"]


def test_predict_on_a_circor_patient_folder(trained, capsys, tmp_path):
    circor = trained["circor"]
    pid = next(p for p in circor.patient_ids() if circor.patients[p].murmur == "Present")
    folder = tmp_path / "patient"
    folder.mkdir()
    src = circor.root / "training_data"
    for f in src.glob(f"{pid}[._]*"):
        shutil.copy(f, folder)
    code, results, err = _predict(capsys, "--model", str(trained["model"]), "--input", str(folder),
                                  "--out", str(tmp_path / "pred"))
    assert code == 0, err
    (result,) = results
    assert result == json.loads((tmp_path / "pred" / f"{pid}.json").read_text())
    assert result["patient_id"] == pid and result["class"] in MURMUR_CLASSES
    assert abs(sum(result["probabilities"].values()) - 1) < 1e-6
    recs = {r["recording_id"]: r for r in result["recordings"]}
    assert {rid: r["location"] for rid, r in recs.items()} == {
        r.recording_id: r.location for r in circor.patients[pid].recordings}
    # the audio path of predict reproduces the cached embeddings, so the probabilities agree
    for rid, proba in _expected_from_cache(trained, pid).items():
        np.testing.assert_allclose([recs[rid]["probabilities"][c] for c in MURMUR_CLASSES], proba, atol=1e-5)
    # the paper's rule: Present if any recording is Present, else Unknown if any, else Absent
    classes = [r["class"] for r in result["recordings"]]
    rule = next((c for c in ("Present", "Unknown") if c in classes), "Absent")
    assert result["class"] == rule


def test_predict_on_loose_wavs_at_any_rate(trained, capsys, tmp_path):
    circor = trained["circor"]
    pid = circor.patient_ids()[0]
    rec = circor.patients[pid].recordings[0]
    x, rate = sf.read(rec.wav, dtype="float32")
    assert rate == 4000
    sf.write(tmp_path / f"{pid}_{rec.location}.wav", resample_poly(x, 2, 1), 8000, subtype="PCM_16")
    y = resample_poly(x, 441, 40)
    sf.write(tmp_path / "visit3.wav", np.stack([y, y], axis=1), 44100, subtype="PCM_16")  # stereo, no location
    (tmp_path / "broken.wav").write_bytes(b"")
    code, results, err = _predict(capsys, "--model", str(trained["model"]), "--input",
                                  str(tmp_path / f"{pid}_{rec.location}.wav"), str(tmp_path / "visit3.wav"),
                                  str(tmp_path / "broken.wav"), "--out", str(tmp_path / "pred"))
    by_pid = {r["patient_id"]: r for r in results}
    assert set(by_pid) == {pid, "visit3", "broken"}
    eight, stereo = by_pid[pid]["recordings"][0], by_pid["visit3"]["recordings"][0]
    assert eight["location"] == rec.location and stereo["location"] == "unknown"
    assert "sample rate 8000 Hz (the data's own rate is 4000 Hz), resampled to 4000 Hz" in eight["notes"]
    assert "2 channels downmixed to mono" in stereo["notes"] and any("44100 Hz" in n for n in stereo["notes"])
    # a resampled copy is classified like the original (requantisation + filter roll-off move it a little)
    original = _expected_from_cache(trained, pid)[rec.recording_id]
    for r in (eight, stereo):
        np.testing.assert_allclose([r["probabilities"][c] for c in MURMUR_CLASSES], original, atol=0.15)
        assert r["class"] == MURMUR_CLASSES[int(original.argmax())]
    # the unusable file is named with its problem; its patient has no class, and the exit code says so
    assert by_pid["broken"]["class"] is None
    assert by_pid["broken"]["skipped"] == [{"file": str(tmp_path / "broken.wav"), "problem": "empty file (0 bytes)"}]
    assert "broken.wav" in err and "empty file" in err and code == 1
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == sorted(["broken.json", f"{pid}.json", "visit3.json"])


def test_predict_names_an_empty_folder_and_a_missing_path(trained, capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    code, results, err = _predict(capsys, "--model", str(trained["model"]), "--input", str(tmp_path / "empty"),
                                  str(tmp_path / "nowhere"), "--out", str(tmp_path / "pred"))
    assert code == 1 and results == []
    lines = err.splitlines()  # the problems table shortens long paths from the left
    assert any(line.split()[2].endswith("/empty") and "no recordings" in line for line in lines if "error" in line)
    assert any(line.split()[2].endswith("/nowhere") and "no such file or folder" in line for line in lines
               if "error" in line)


def test_patient_id_groups_loose_files(tmp_path):
    for name in ("a_MV.wav", "b.wav", "c_TV_2.wav"):
        (tmp_path / name).write_bytes(b"")
    patients, _ = gather_inputs(sorted(tmp_path.iterdir()), patient_id="P1")
    assert list(patients) == ["P1"] and [r.location for r in patients["P1"]] == ["MV", "unknown", "TV"]
    patients, _ = gather_inputs(sorted(tmp_path.iterdir()))
    assert sorted(patients) == ["a", "b", "c"]


def _copy_model(trained, tmp_path) -> Path:
    model = tmp_path / "model"
    shutil.copytree(trained["model"], model)
    return model


def test_tampered_model_file_is_refused(trained, capsys, tmp_path):
    model = _copy_model(trained, tmp_path)
    entry = select_model(load_manifest(model))
    with open(model / entry["file"], "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelIntegrityError, match="does not match the manifest"):
        load_model(model, entry)
    wav = trained["circor"].recordings()[0].wav
    code, results, err = _predict(capsys, "--model", str(model), "--input", str(wav), "--out", str(tmp_path / "p"))
    assert code == 2 and not results and "does not match the manifest" in err and "refusing to load it" in err


def test_manifest_problems_are_refused(trained, tmp_path):
    model = _copy_model(trained, tmp_path)
    manifest = json.loads((model / "manifest.json").read_text())
    entry = manifest["models"][0]
    with pytest.raises(ModelIntegrityError, match="points outside the folder"):
        load_model(model, {**entry, "file": "../model/" + entry["file"]})
    (model / "manifest.json").unlink()
    with pytest.raises(ModelIntegrityError, match="no manifest"):
        load_manifest(model)


def test_encoder_mismatch_is_refused(trained):
    """A model trained on other embeddings (here: another checkpoint hash) is never applied."""
    entry = select_model(load_manifest(trained["model"]))
    other = {**entry, "cache_config": {**entry["cache_config"], "checkpoint_sha256": "0" * 64}}
    with pytest.raises(ValueError, match="differs from the one the probe was trained on.*checkpoint_sha256"):
        build_encoder(other)


def _rewrite_manifest(model: Path, edit) -> None:
    """Edit the manifest as an attacker would, recomputing its own hash."""
    manifest = json.loads((model / "manifest.json").read_text())
    edit(manifest)
    manifest["manifest_sha256"] = canonical_sha256(manifest)
    (model / "manifest.json").write_text(json.dumps(manifest))


def test_edited_manifest_decision_is_refused(trained, capsys, tmp_path):
    model = _copy_model(trained, tmp_path)
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["decision"] = "mean"
    manifest["models"][0]["rule"] = {"rule": "mean", "params": {}, "fitted": {}}
    (model / "manifest.json").write_text(json.dumps(manifest))
    wav = trained["circor"].recordings()[0].wav
    code, results, err = _predict(capsys, "--model", str(model), "--input", str(wav), "--out", str(tmp_path / "p"))
    assert code == 2 and not results and "manifest was edited" in err
    # with its own hash recomputed, the edit still disagrees with the rule inside the hashed model file
    def to_mean(m):
        m["models"][0]["rule"] = {"rule": "mean", "params": {}, "fitted": {}}
    _rewrite_manifest(model, to_mean)
    with pytest.raises(ModelIntegrityError, match="'rule' differs from the one saved in the model file"):
        load_model(model, select_model(load_manifest(model)))


def test_crafted_model_folder_runs_no_code(trained, tmp_path):
    """A model file carrying a pickle, with a manifest rewritten to match its hash: refused, and
    the pickle's payload never runs."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    model = _copy_model(trained, tmp_path)
    entry = select_model(load_manifest(model))
    for name, write in (("evil.npz", lambda p: np.savez(p, header_json=np.array([Payload()], dtype=object))),
                        ("evil.joblib", lambda p: __import__("pickle").dump(Payload(), open(p, "wb")))):
        write(model / name)

        def point_at_evil(m, name=name):
            m["models"][0]["file"] = name
            m["models"][0]["sha256"] = file_sha256(model / name)
        _rewrite_manifest(model, point_at_evil)
        with pytest.raises(ModelIntegrityError, match="not a model file of this format"):
            load_model(model, select_model(load_manifest(model)))
        assert not marker.exists()
    assert entry["file"].endswith(".npz")


def test_tuned_rule_is_saved_and_used_by_predict(trained, capsys, tmp_path):
    model = tmp_path / "model-wgt"
    assert pipeline.main(["probe", "--data", str(trained["data"]), "--cache", str(trained["cache"]), "--out",
                          str(tmp_path / "out"), "--decision", "weighted", "--oof-folds", "3",
                          "--save-model", str(model)]) == 0
    capsys.readouterr()
    entry = select_model(load_manifest(model), "logmel", "linear")
    assert entry["variant"] == "linear+wgt"
    weights = entry["rule"]["fitted"]["weights_"]
    scores = pd.read_csv(tmp_path / "out" / "scores.csv").set_index("split")
    assert scores.loc["split1", "params"].endswith(f"class_weights={weights[0]:.2f}/{weights[1]:.2f}")
    circor = trained["circor"]
    wavs = [str(r.wav) for r in circor.patients[circor.patient_ids()[1]].recordings]
    code, (result,), _ = _predict(capsys, "--model", str(model), "--input", *wavs, "--patient-id", "P",
                                  "--out", str(tmp_path / "p"))
    mean = np.array([result["probabilities"][c] for c in MURMUR_CLASSES])
    assert result["decision_rule"]["fitted"]["weights_"] == weights
    assert result["class"] == MURMUR_CLASSES[int((mean * np.array([*weights, 1.0])).argmax())]


def test_patients_whose_ids_sanitise_alike_get_their_own_files(trained, capsys, tmp_path):
    wav = trained["circor"].recordings()[0].wav
    inputs = []
    for pid in ("a b", "a_b", "ü1", "é1"):
        folder = tmp_path / "in" / pid
        folder.mkdir(parents=True)
        shutil.copy(wav, folder / "x.wav")
        inputs.append(str(folder))
    code, results, _ = _predict(capsys, "--model", str(trained["model"]), "--input", *inputs,
                                "--out", str(tmp_path / "pred"))
    assert code == 0 and len(results) == 4
    files = sorted((tmp_path / "pred").iterdir())
    assert len(files) == 4
    assert sorted(json.loads(f.read_text())["patient_id"] for f in files) == sorted(["a b", "a_b", "ü1", "é1"])
    names = output_names(["a_b", "a b", "A_B"])
    assert names["a_b"] == "a_b.json" and len({n.lower() for n in names.values()}) == 3
