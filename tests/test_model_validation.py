"""Saved model folders edited by someone who also recomputed every hash: each edit is refused on
load, naming the file and the field, instead of giving a call or failing deep inside a library."""
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from classify.store.models import MANIFEST, ModelIntegrityError, canonical_sha256, load_manifest, load_model
from classify.estimators.linear import LinearProbe
from classify.recipes.fit import fit_recipe
from classify.recipes.recipe import ExtractSpec, Member, Recipe
from classify.store.models import load_recipe, save_recipe
from classify.jobs.encoders import recipe_encoder as build_encoder
from classify.estimators.segmenter import PhaseSegmenter
from tests.test_recipe import toy_task

RECIPE = Recipe("toy", "", (), (Member("toy", 0), Member("toy_xgb", 0, probe="xgboost")), targets="patient",
                folds=3)


def rehash(folder: Path, name: str, arrays: dict | None = None, header: dict | None = None,
           manifest_edit=None) -> None:
    """Rewrite `folder/name` with `arrays` / `header` replaced and recompute every hash, as a
    careful tamperer would."""
    path = folder / name
    with np.load(path, allow_pickle=False) as npz:
        content = {k: npz[k] for k in npz.files}
    if arrays:
        content.update(arrays)
    if header is not None:
        content["header_json"] = np.frombuffer(json.dumps(header, sort_keys=True).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **content)
    path.write_bytes(buffer.getvalue())
    manifest = json.loads((folder / MANIFEST).read_text())
    for entry in manifest["models"]:
        if entry["file"] == name:
            entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    if manifest_edit:
        manifest_edit(manifest)
    manifest["manifest_sha256"] = canonical_sha256(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest))


def header_of(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as npz:
        return json.loads(npz["header_json"].tobytes().decode())


@pytest.fixture(scope="module")
def recipe_folder(tmp_path_factory):
    task, blocks = toy_task(120, seed=2)
    sources = {"toy": blocks["toy"], "toy_xgb": blocks["toy"]}
    fitted = fit_recipe(task, RECIPE, sources, task.group_ids[:90], seed=0)
    # a segmenter fitted on toy frames, so its arrays are checked too
    rng = np.random.default_rng(0)
    times = [np.arange(200) * 0.02 + 0.01 for _ in range(3)]
    intervals = [np.array([[t, t + 0.1, 1 + (k % 4)] for k, t in enumerate(np.arange(0, 4.0, 0.1))]) for _ in range(3)]
    fitted.segmenter = PhaseSegmenter(heart_rate=0.0).fit([rng.normal(size=(200, 3)) for _ in times], times, intervals)
    folder = tmp_path_factory.mktemp("recipe-model")
    save_recipe(fitted, folder, task.classes, "toy", [], trained_on="toy", locations=task.locations)
    return folder, task, sources


def fresh_copy(folder: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "model"
    copy.mkdir(parents=True)
    for f in folder.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    return copy


def load(folder: Path):
    return load_recipe(folder, load_manifest(folder))


def test_an_untouched_recipe_folder_loads_and_predicts(recipe_folder):
    folder, task, sources = recipe_folder
    fitted, _ = load(folder)
    proba, _ = fitted.predict_proba(task, sources, task.group_ids[90:])
    assert np.all(np.isfinite(proba)) and np.allclose(proba.sum(axis=1), 1)


@pytest.mark.parametrize("key, value, message", [
    ("stage2:coef", lambda a: np.full_like(a, np.nan), r"stage2: field 'coef': \d+ of \d+ values are not finite"),
    ("stage1:toy:mean", lambda a: np.r_[a, 0.0], "field 'scale' has 8 entries, expected 9"),
    ("stage1:toy:coef", lambda a: a[:, :-1], "stage1:toy: field 'coef' has 7 columns but the scaler has 8 features"),
    ("stage1:toy:classes", lambda a: a[::-1].copy(), "expected distinct ascending class indices"),
    ("stage1:toy:classes", lambda a: a + 5, "expected distinct ascending class indices below 3"),
    ("stage2:mean", lambda a: a[:-3], "field 'scale' has"),
    ("segmenter:grid_hop", lambda a: np.asarray(0.0), "segmenter: field 'grid_hop' must be a finite number > 0"),
    ("segmenter:factor", lambda a: np.asarray(0), "field 'factor' must be a finite whole number > 0"),
    ("segmenter:coef", lambda a: np.where(np.arange(a.size).reshape(a.shape) == 0, -np.inf, a),
     "field 'coef': 1 of"),
    ("segmenter:log_duration_2", lambda a: np.full_like(a, np.nan), "field 'log_duration_2'"),
])
def test_edited_arrays_are_refused_naming_the_file_and_field(recipe_folder, tmp_path, key, value, message):
    folder = fresh_copy(recipe_folder[0], tmp_path)
    with np.load(folder / "recipe.npz", allow_pickle=False) as npz:
        original = npz[key]
    rehash(folder, "recipe.npz", arrays={key: value(original)})
    with pytest.raises(ModelIntegrityError, match=message) as err:
        load(folder)
    assert str(folder / "recipe.npz") in str(err.value)


def test_a_patient_model_of_another_width_is_refused(recipe_folder, tmp_path):
    folder = fresh_copy(recipe_folder[0], tmp_path)
    with np.load(folder / "recipe.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files if k.startswith("stage2:")}
    cut = {k: (v[..., :-1] if k in ("stage2:coef",) else v[:-1] if k in ("stage2:mean", "stage2:scale", "stage2:var")
               else v) for k, v in arrays.items()}
    rehash(folder, "recipe.npz", arrays=cut)
    with pytest.raises(ModelIntegrityError, match=r"field 'stage2' takes 39 patient features; 2 members, 3 classes "
                                                  r"and 4 locations make 40"):
        load(folder)


def test_a_segmenter_hop_of_zero_in_the_parameters_is_refused(recipe_folder, tmp_path):
    folder = fresh_copy(recipe_folder[0], tmp_path)
    header = header_of(folder / "recipe.npz")
    header["params"]["segmenter"]["hop_s"] = 0
    rehash(folder, "recipe.npz", header=header)
    with pytest.raises(ModelIntegrityError, match="hop_s must be a finite number > 0, got 0"):
        load(folder)


def test_nan_leaves_in_the_boosted_member_are_refused(recipe_folder, tmp_path):
    folder = fresh_copy(recipe_folder[0], tmp_path)
    with np.load(folder / "recipe.npz", allow_pickle=False) as npz:
        raw = npz["stage1:toy_xgb:booster_json"].tobytes().decode()
    model = json.loads(raw)
    model["learner"]["gradient_booster"]["model"]["trees"][0]["base_weights"][0] = float("nan")
    edited = json.dumps(model).encode()  # Python writes NaN, which JSON has not
    rehash(folder, "recipe.npz", arrays={"stage1:toy_xgb:booster_json": np.frombuffer(edited, dtype=np.uint8)})
    with pytest.raises(ModelIntegrityError, match="booster_json' holds a non-finite number"):
        load(folder)


def test_manifest_and_file_must_name_the_same_recipe_classes_and_decision(recipe_folder, tmp_path):
    folder = fresh_copy(recipe_folder[0], tmp_path)
    header = header_of(folder / "recipe.npz")
    header["recipe"]["name"] = "cycle-other"
    rehash(folder, "recipe.npz", header=header)
    with pytest.raises(ModelIntegrityError, match=r"field 'recipe': the manifest says 'recipe:toy', the recipe "
                                                  r"file 'recipe:cycle-other'"):
        load(folder)

    folder = fresh_copy(recipe_folder[0], tmp_path / "b")
    rehash(folder, "recipe.npz", manifest_edit=lambda m: m.update(classes=["Absent", "Unknown", "Present"]))
    with pytest.raises(ModelIntegrityError, match="field 'classes': the manifest says \\['Absent'"):
        load(folder)

    folder = fresh_copy(recipe_folder[0], tmp_path / "c")
    rehash(folder, "recipe.npz", manifest_edit=lambda m: m.update(decision="any"))
    with pytest.raises(ModelIntegrityError, match="field 'decision'"):
        load(folder)


def test_features_of_another_width_at_predict_are_named(recipe_folder):
    folder, task, sources = recipe_folder
    fitted, _ = load(folder)
    wider = {name: type(block)(block.recording_ids, np.hstack([block.X, block.X[:, :2]]))
             for name, block in sources.items()}
    with pytest.raises(ValueError, match="member toy's probe was fitted on 8 features per row and is given 10"):
        fitted.predict_proba(task, wider, task.group_ids[90:])


@pytest.mark.parametrize("name", ["../evil-weights.pt", "/etc/passwd", "sub/dir.pt", ".hidden.pt", "..", "a\\b.pt"])
def test_weight_names_must_be_plain_file_names_inside_weights(name, tmp_path):
    with pytest.raises(ValueError, match="must be a plain file name inside --weights"):
        ExtractSpec("mn04", name)


def test_a_recipe_header_with_a_weight_path_is_refused_on_load(recipe_folder, tmp_path):
    folder = fresh_copy(recipe_folder[0], tmp_path)
    header = header_of(folder / "recipe.npz")
    header["recipe"]["extracts"] = [{"encoder": "mn04", "checkpoint": "../evil-weights.pt", "layers": "last",
                                     "precision": None, "frames": False}]
    rehash(folder, "recipe.npz", header=header)
    with pytest.raises(ModelIntegrityError, match="plain file name inside --weights, got '../evil-weights.pt'"):
        load(folder)
    (tmp_path / "evil-weights.pt").write_bytes(b"")  # never reached: the name is refused before any file is opened
    with pytest.raises(ValueError, match="plain file name"):
        build_encoder(ExtractSpec("mn04", "../evil-weights.pt"), tmp_path / "weights")


def test_probe_folders_refuse_non_finite_and_mismatched_arrays(tmp_path):
    from classify.evaluation.rules import make_rule
    from classify.store.models import save_models

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 5)), np.repeat([0, 1, 2], 20)
    probe = LinearProbe().fit(X, y)
    models = [{"estimator": probe, "rule": make_rule("mean"), "encoder": "logmel", "probe": "linear",
               "cache_config": {"encoder": "logmel"}}]
    save_models(tmp_path / "m", models, ("Present", "Unknown", "Absent"), "circor")
    folder = tmp_path / "m"
    name = "logmel--linear.npz"
    rehash(folder, name, arrays={"state:intercept": np.array([np.nan, 0.0, 0.0])})
    manifest = load_manifest(folder)
    with pytest.raises(ModelIntegrityError, match=r"logmel--linear.npz: cannot rebuild the linear probe \(field "
                                                  r"'intercept': 1 of 3 values are not finite"):
        load_model(folder, manifest["models"][0], manifest["classes"])
    rehash(folder, name, arrays={"state:intercept": np.zeros(3), "state:classes": np.array([0, 1, 7])})
    manifest = load_manifest(folder)
    with pytest.raises(ModelIntegrityError, match="names more than the 3 classes"):
        load_model(folder, manifest["models"][0], manifest["classes"])
