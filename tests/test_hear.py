import numpy as np
import pytest
import torch

from embed import hear


def test_hear_api_shapes_and_consistency():
    model = hear.load_model(encoder="logmel")
    assert model.sample_rate == 4000 and model.scene_embedding_size == 120 and model.timestamp_embedding_size == 60
    audio = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 4000 * 3)).astype(np.float32))
    frames, times = hear.get_timestamp_embeddings(audio, model)
    assert frames.shape[0] == 2 and frames.shape[2] == 60 and times.shape == frames.shape[:2]
    assert (torch.diff(times, dim=1) > 0).all() and times[0, -1] <= 3000.0
    scene = hear.get_scene_embeddings(audio, model)
    assert scene.shape == (2, 120)
    np.testing.assert_allclose(scene.numpy(), model.embed(audio.numpy()), rtol=1e-5, atol=1e-6)


def test_module_per_encoder():
    mod = hear.module("logmel")
    assert mod.load_model().name == "logmel"
    with pytest.raises(KeyError, match="unknown encoder"):
        hear.module("nope")
