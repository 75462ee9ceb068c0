"""The segmenter store: a recipe's fitted segmenters and their decodes kept beside the cache, read
back by later runs instead of refitting, keyed so that other inputs never read a stale entry."""
import pickle

import numpy as np
import pytest

from classify.phases import tsv_intervals
from classify.recipe_book import get_recipe
from classify.recipe_job import SEGMENTER_DIR, recipe_sources
from classify.segmenter import PhaseSegmenter
from classify.segmenter_store import SegmenterStore, segmenter_key
from embed.datasets import load_dataset


def test_an_entry_round_trips_and_a_bad_file_is_reported_and_ignored(tmp_path):
    store = SegmenterStore(tmp_path / "segmenters")
    state = {"coef": np.arange(6.0).reshape(2, 3), "factor": np.asarray(2)}
    decoded = {"a_AV": np.array([[0.0, 0.1, 1], [0.1, 0.4, 2]]), "b_MV": np.zeros((0, 3))}
    store.save("k1", state, decoded)
    got_state, got = store.load("k1")
    assert set(got_state) == set(state) and all(np.array_equal(got_state[k], state[k]) for k in state)
    assert set(got) == set(decoded) and all(np.array_equal(got[r], decoded[r]) for r in decoded)
    assert store.load("other") is None
    store.path("k2").write_bytes(b"not an npz")
    with pytest.warns(UserWarning, match="k2.npz: unreadable segmenter entry"):
        assert store.load("k2") is None
    # an entry holding a pickled object is refused, never unpickled
    with open(store.path("k3"), "wb") as fh:
        np.savez(fh, **{"state/coef": np.array([object()], dtype=object)}, ids=np.array(["a"]),
                 offsets=np.array([0, 0]), intervals=np.zeros((0, 3)))
    with pytest.warns(UserWarning, match="k3.npz: unreadable"):
        assert store.load("k3") is None
    assert not list((tmp_path / "segmenters").glob(".*.tmp"))
    # a store that cannot be written to (here a file where its folder should be) only warns
    (tmp_path / "blocked").write_text("a file, not a folder")
    with pytest.warns(UserWarning, match="could not keep the segmenter entry"):
        SegmenterStore(tmp_path / "blocked").save("k4", state, decoded)


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
    monkeypatch.setattr(SegmenterStore, "load", lambda self, key: loads.append(key) or load(self, key))
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
