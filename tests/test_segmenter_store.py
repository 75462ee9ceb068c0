"""The segmenter store: a recipe's fitted segmenters and their decodes kept beside the cache, read
back by later runs instead of refitting, keyed so that other inputs never read a stale entry."""
import json
import os
import pickle

import numpy as np
import pytest

from classify.features.phases import tsv_intervals
from classify.recipes.book import get_recipe
from classify.jobs.recipe import recipe_sources
from classify.recipes.members import SEGMENTER_DIR
from classify.estimators.segmenter import PhaseSegmenter
from classify.store.segmenters import SegmenterStore, inputs_key, key_inputs
from embed.datasets import load_dataset


INPUTS = key_inputs("frames1", {"C": 0.1}, ["a_AV", "b_MV"], [np.zeros((1, 3)), np.ones((1, 3))])
OTHER = key_inputs("frames2", {"C": 0.1}, ["a_AV"], [np.zeros((1, 3))])


def test_an_entry_round_trips_and_a_bad_file_is_reported_and_ignored(tmp_path):
    store = SegmenterStore(tmp_path / "segmenters")
    state = {"coef": np.arange(6.0).reshape(2, 3), "factor": np.asarray(2)}
    decoded = {"a_AV": np.array([[0.0, 0.1, 1], [0.1, 0.4, 2]]), "b_MV": np.zeros((0, 3))}
    prints = {"a_AV": "f1", "b_MV": "f2"}
    store.save(INPUTS, state, decoded, prints)
    entry = store.load(INPUTS)
    assert set(entry.state) == set(state) and all(np.array_equal(entry.state[k], state[k]) for k in state)
    assert set(entry.decoded) == set(decoded) and all(np.array_equal(entry.decoded[r], decoded[r]) for r in decoded)
    assert entry.fingerprints == prints
    assert store.load(OTHER) is None
    key = inputs_key(INPUTS)
    store.path(key).write_bytes(b"not an npz")
    with pytest.warns(UserWarning, match=f"{key}.npz: unreadable segmenter entry"):
        assert store.load(INPUTS) is None
    assert not store.path(key).exists()  # dropped, so the recomputed entry takes its place
    # an entry holding a pickled object is refused, never unpickled
    with open(store.path(key), "wb") as fh:
        np.savez(fh, **{"state/coef": np.array([object()], dtype=object)}, ids=np.array(["a"]),
                 offsets=np.array([0, 0]), intervals=np.zeros((0, 3)))
    with pytest.warns(UserWarning, match=f"{key}.npz: unreadable"):
        assert store.load(INPUTS) is None
    assert not list((tmp_path / "segmenters").glob(".*.tmp"))
    # a store that cannot be written to (here a file where its folder should be) only warns
    (tmp_path / "blocked").write_text("a file, not a folder")
    with pytest.warns(UserWarning, match="could not keep the segmenter entry"):
        SegmenterStore(tmp_path / "blocked").save(INPUTS, state, decoded, prints)


def test_an_entry_under_another_key_or_edited_is_dropped(tmp_path):
    store = SegmenterStore(tmp_path / "segmenters")
    state = {"coef": np.arange(6.0).reshape(2, 3)}
    store.save(INPUTS, state, {}, {})
    store.save(OTHER, {"coef": np.ones((2, 3))}, {}, {})
    # swap the two files: each is now under the other's key
    a, b = store.path(inputs_key(INPUTS)), store.path(inputs_key(OTHER))
    content_a, content_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(content_b)
    b.write_bytes(content_a)
    with pytest.warns(UserWarning, match="made from other inputs than its key's"):
        assert store.load(INPUTS) is None
    assert not a.exists()
    # an entry whose arrays were changed after writing (its digest no longer matches)
    store.save(INPUTS, state, {"a_AV": np.array([[0.0, 1.0, 1.0]])}, {"a_AV": "f"})
    with np.load(a, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["intervals"] = arrays["intervals"] * 2
    with open(a, "wb") as fh:
        np.savez(fh, **arrays)
    with pytest.warns(UserWarning, match="do not match its digest"):
        assert store.load(INPUTS) is None


def test_temporary_files_of_a_killed_writer_are_removed_on_open(tmp_path):
    import subprocess
    import sys
    folder = tmp_path / "segmenters"
    folder.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    orphan = folder / f".{'a' * 32}.npz.{dead.stdout.strip()}.tmp"
    orphan.write_bytes(b"half an entry")
    mine = folder / f".{'b' * 32}.npz.{os.getpid()}.tmp"  # a live writer's file stays
    mine.write_bytes(b"being written")
    SegmenterStore(folder)
    assert not orphan.exists() and mine.exists()


def segmenter_key(*args) -> str:
    return inputs_key(key_inputs(*args))


def test_the_key_changes_with_every_input_of_the_fit():
    intervals = [np.array([[0.0, 0.1, 1.0]]), np.array([[0.0, 0.2, 2.0]])]
    base = segmenter_key("frames1", {"C": 0.1}, ["a", "b"], intervals)
    assert base == segmenter_key("frames1", {"C": 0.1}, ["a", "b"], [iv.copy() for iv in intervals])
    changed_tsv = [intervals[0], np.array([[0.0, 0.25, 2.0]])]
    assert len({base, segmenter_key("frames2", {"C": 0.1}, ["a", "b"], intervals),
                segmenter_key("frames1", {"C": 1.0}, ["a", "b"], intervals),
                segmenter_key("frames1", {"C": 0.1}, ["b", "a"], intervals[::-1]),
                segmenter_key("frames1", {"C": 0.1}, ["a", "b"], changed_tsv)}) == 5


def test_a_second_run_reads_the_cross_fit_and_test_segmenter_from_the_store(synthetic_data, tmp_path, monkeypatch):
    dataset = load_dataset("circor", synthetic_data)
    recordings = dataset.recordings()[:24]
    recipe = get_recipe("cycle-logmel")
    patient_of = {r.recording_id: r.patient_id for r in recordings}
    ids = [r.recording_id for r in recordings]
    train, test = ids[:16], ids[16:]

    def phases():
        sources, _, _ = recipe_sources(recipe, recordings, tmp_path, None, intervals=tsv_intervals(recordings),
                                       progress=False)
        return sources["phases"]

    first = phases()
    block = first.crossfit_block(train, patient_of)
    segmenter = first.fit_segmenter(train)
    decoded = first.segmented(segmenter, test)
    assert len(list((tmp_path / SEGMENTER_DIR).glob("*.npz"))) == 4  # three cross-fit folds + one

    # a new run (new sources, same cache folder) fits and decodes nothing, and gets the same numbers
    def refuse(*args, **kwargs):
        raise AssertionError("the store should have answered")
    monkeypatch.setattr(PhaseSegmenter, "fit", refuse)
    monkeypatch.setattr(PhaseSegmenter, "predict", refuse)
    loads = []
    load = SegmenterStore.load
    monkeypatch.setattr(SegmenterStore, "load", lambda self, inputs: loads.append(inputs_key(inputs)) or load(self, inputs))
    second = phases()
    again = second.crossfit_block(train, patient_of)
    assert len(loads) == len(set(loads)) == 3  # each fold's entry read once, not again to decode
    assert again is not block and np.array_equal(again.recording_ids, block.recording_ids)
    np.testing.assert_array_equal(again.X, block.X)
    stored = second.fit_segmenter(train)
    assert all(np.array_equal(v, decoded[r]) for r, v in second.segmented(stored, test).items())
    # the segmenter read back decodes exactly as the one that was fit
    monkeypatch.undo()
    rid = test[0]
    np.testing.assert_array_equal(stored.predict(second.frames[rid].embeddings, second.frames[rid].times),
                                  decoded[rid])

    # other training intervals (an edited .tsv) make another entry: the old one is not read
    edited = dict(second.intervals)
    edited[train[0]] = edited[train[0]] * np.array([1.0, 1.01, 1.0])
    second.intervals = edited
    before = set((tmp_path / SEGMENTER_DIR).glob("*.npz"))
    second.fit_segmenter(train)
    assert len(set((tmp_path / SEGMENTER_DIR).glob("*.npz")) - before) == 1


def test_entries_hold_plain_arrays_only(synthetic_data, tmp_path):
    """Loading a store entry never needs pickle: every array is numeric or text."""
    dataset = load_dataset("circor", synthetic_data)
    recordings = dataset.recordings()[:12]
    sources, _, _ = recipe_sources(get_recipe("cycle-logmel"), recordings, tmp_path, None,
                                   intervals=tsv_intervals(recordings), progress=False)
    phases = sources["phases"]
    ids = [r.recording_id for r in recordings]
    phases.segmented(phases.fit_segmenter(ids[:8]), ids[8:])
    (path,) = (tmp_path / SEGMENTER_DIR).glob("*.npz")
    with np.load(path, allow_pickle=False) as z:
        assert all(z[k].dtype.kind in "fiub U" for k in z.files)
    with pytest.raises(pickle.UnpicklingError):  # and it is not a pickle either
        pickle.loads(path.read_bytes())


def test_stale_decodes_and_a_segmenter_of_another_width_are_recomputed(synthetic_data, tmp_path, monkeypatch):
    dataset = load_dataset("circor", synthetic_data)
    recordings = dataset.recordings()[:14]
    ids = [r.recording_id for r in recordings]
    train, test = ids[:10], ids[10:]
    recipe = get_recipe("cycle-logmel")

    def phases():
        sources, _, _ = recipe_sources(recipe, recordings, tmp_path, None, intervals=tsv_intervals(recordings),
                                       progress=False)
        return sources["phases"]

    first = phases()
    decoded = first.segmented(first.fit_segmenter(train), test)
    # the frame cache of one test recording changed since it was decoded: it alone is decoded again
    second = phases()
    rec = second.frames[test[0]]
    second.frames[test[0]] = type(rec)(rec.recording_id, rec.embeddings[::-1].copy(), rec.times)
    decodes = []
    predict = PhaseSegmenter.predict
    monkeypatch.setattr(PhaseSegmenter, "predict", lambda self, f, t, *a: decodes.append(1) or predict(self, f, t, *a))
    with pytest.warns(UserWarning, match="1 decoded recordings .* were decoded from other frames"):
        again = second.segmented(second.fit_segmenter(train), test)
    assert len(decodes) == 1 and all(np.array_equal(again[r], decoded[r]) for r in test[1:])
    monkeypatch.undo()
    # an entry under the right key whose segmenter takes frames of another width is refitted
    (path,) = [p for p in (tmp_path / SEGMENTER_DIR).glob("*.npz")]
    store = SegmenterStore(tmp_path / SEGMENTER_DIR)
    with np.load(path, allow_pickle=False) as z:
        inputs = json.loads(str(z["inputs"]))
        state = {k[len("state/"):]: z[k] for k in z.files if k.startswith("state/")}
    width = state["coef"].shape[1] - 7  # one frame dimension fewer at each of the 7 context offsets
    state.update(coef=state["coef"][:, :width], mean=state["mean"][:width], scale=state["scale"][:width],
                 var=state["var"][:width])
    store.save(inputs, state, {}, {})
    third = phases()
    with pytest.warns(UserWarning, match="cannot be used .*takes frames \\d+ wide, the cache's are"):
        refit = third.fit_segmenter(train)
    assert refit.n_features_in_ == third.frames[train[0]].embeddings.shape[1]
