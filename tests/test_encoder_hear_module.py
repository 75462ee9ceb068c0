"""`--encoder hear:MODULE`: an installed HEAR 2021 module (here `tests/toy_hear_module.py`) run
through its own three functions, end to end: extract, --frames, probe, a recipe with a phase member
on its frames, predict."""
import numpy as np
import pytest
import torch

import toy_hear_module
from embed.encoders import create
from end_to_end import run_every_job

MODULE = "hear:toy_hear_module"


def test_the_modules_own_functions_give_frames_times_and_the_clip_embedding(tmp_path):
    encoder = create(MODULE)
    model = toy_hear_module.load_model()
    audio = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 16000)).astype(np.float32)) * 0.1
    with torch.no_grad():
        frames, times = toy_hear_module.get_timestamp_embeddings(audio, model)
        scene = toy_hear_module.get_scene_embeddings(audio, model).numpy()
    np.testing.assert_allclose(encoder.frame_embeddings(audio).numpy(), frames.numpy(), rtol=1e-6)
    np.testing.assert_allclose(1000 * encoder.frame_times(frames.shape[1], 16000), times[0].numpy(), atol=1e-4)
    np.testing.assert_allclose(encoder.embed(audio), scene, rtol=1e-6)
    assert (encoder.sample_rate, encoder.frame_hop_s, encoder.embedding_size) == (16000, 0.05, 32)
    config = encoder.describe()
    assert config["cfg_module"] == "toy_hear_module" and len(config["cfg_module_sha256"]) == 64
    # a checkpoint is the module's model_file_path, and its sha256 goes into the cache key
    state = {k: v * 2 for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "toy.pt")
    doubled = create(MODULE, tmp_path / "toy.pt")
    assert not np.allclose(doubled.embed(audio), encoder.embed(audio))
    with pytest.raises(ValueError, match="needs the HEAR module"):
        create("hear")
    with pytest.raises(ImportError, match="cannot import the HEAR module 'no_such_module'"):
        create("hear:no_such_module")
    with pytest.raises(ValueError, match="not a HEAR module"):
        create("hear:json")
    with pytest.raises(ValueError, match="takes no :TARGET"):
        create("logmel:x")


def test_a_hear_module_runs_end_to_end_extract_frames_probe_recipe_predict(synthetic_data, tmp_path):
    first = run_every_job(synthetic_data, tmp_path, MODULE, f"phases:{MODULE}", "hear",
                          "hear-toy_hear_module_phases")
    assert first.embeddings.shape[1] == 16 and np.allclose(np.diff(first.times)[:5], 0.05)
