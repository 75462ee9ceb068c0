import numpy as np
import pytest
from sklearn.base import clone

from classify.estimators.mlp import MLPProbe
from classify.estimators.base import full_proba
from classify.estimators.boosted import XGBoostProbe
from classify.estimators.linear import LinearProbe
from classify.estimators.probes import probe_grid


def blobs(n=300, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    X = rng.standard_normal((n, 8)) + 3 * np.eye(3, 8)[y]
    return X, y


@pytest.mark.parametrize("probe", [LinearProbe(C=1.0), XGBoostProbe(n_estimators=30)])
def test_probes_learn_separable_classes(probe):
    X, y = blobs()
    model = clone(probe).fit(X, y)
    Xt, yt = blobs(seed=1)
    proba = model.predict_proba(Xt)
    assert proba.shape == (300, 3) and np.allclose(proba.sum(axis=1), 1)
    assert (model.predict(Xt) == yt).mean() > 0.9


def test_full_proba_fills_missing_classes():
    X, y = blobs()
    keep = y != 1
    model = LinearProbe().fit(X[keep], y[keep])
    proba = full_proba(model, X, 3)
    assert proba.shape == (300, 3) and (proba[:, 1] == 0).all()


def test_grid_expands_all_combinations():
    grid = probe_grid("xgboost", seed=5)
    params = [tuple(sorted(g.get_params().items())) for g in grid]
    assert len(set(params)) == len(grid) > 1  # distinct candidates, each seeded with the run's seed
    assert all(g.random_state == 5 for g in grid)
    with pytest.raises(KeyError, match="unknown probe"):
        probe_grid("svm")


def test_class_weighting_helps_the_minority():
    rng = np.random.default_rng(0)
    y = np.array([0] * 20 + [2] * 380)
    X = rng.standard_normal((400, 4)) + 0.8 * (y == 0)[:, None]
    weighted = LinearProbe(class_weight="balanced").fit(X, y)
    plain = LinearProbe(class_weight=None).fit(X, y)
    assert (weighted.predict(X) == 0).sum() > (plain.predict(X) == 0).sum()


@pytest.mark.parametrize("probe", [LinearProbe(C=1.0), XGBoostProbe(n_estimators=20), MLPProbe(max_epochs=5)])
@pytest.mark.parametrize("n_classes", [2, 3])
def test_probe_state_round_trips_as_plain_arrays(probe, n_classes):
    """What --save-model writes: numbers only, rebuilt into a probe that scores identically."""
    X, y = blobs()
    keep = y < n_classes
    model = clone(probe).fit(X[keep], y[keep])
    state = model.state()
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in state.values())
    again = type(model).from_state(model.get_params(), state)
    np.testing.assert_allclose(again.predict_proba(X), model.predict_proba(X), rtol=1e-6, atol=1e-7)


def test_mlp_uses_its_own_generator_not_the_global_seed():
    import torch
    X, y = blobs()
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first = MLPProbe(max_epochs=3, random_state=7).fit(X, y).predict_proba(X)
    assert torch.equal(torch.random.get_rng_state(), before)  # global state untouched
    torch.manual_seed(999)
    np.testing.assert_array_equal(MLPProbe(max_epochs=3, random_state=7).fit(X, y).predict_proba(X), first)
    assert not np.allclose(MLPProbe(max_epochs=3, random_state=8).fit(X, y).predict_proba(X), first)
