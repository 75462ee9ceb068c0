"""`--encoder hf`: tiny random transformers models of each family, built from configs offline and
saved with `save_pretrained`, against transformers' own `hidden_states` on the same audio."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers", reason='the hf extra is not installed (pip install -e ".[hf]")')

from embed.encoders import create  # noqa: E402
from embed.encoders.checkpoint import CheckpointError  # noqa: E402
from end_to_end import run_every_job  # noqa: E402
from official import clips, relative_error  # noqa: E402

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
WAVEFORM_CONV = {"conv_dim": (32,) * 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2}


def _configs() -> dict:
    t = transformers
    w2v_fe = lambda: t.Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True,  # noqa: E731
                                                return_attention_mask=False)
    return {
        "wav2vec2": (lambda: t.Wav2Vec2Config(**TINY, **WAVEFORM_CONV), t.Wav2Vec2Model, w2v_fe),
        "hubert": (lambda: t.HubertConfig(**TINY, **WAVEFORM_CONV), t.HubertModel, w2v_fe),
        "wavlm": (lambda: t.WavLMConfig(**TINY, **WAVEFORM_CONV, num_buckets=16, max_bucket_distance=40),
                  t.WavLMModel, w2v_fe),
        "data2vec-audio": (lambda: t.Data2VecAudioConfig(**TINY, conv_dim=(32,) * 7, num_conv_pos_embeddings=5,
                                                         num_conv_pos_embedding_groups=2),
                           t.Data2VecAudioModel, w2v_fe),
        "whisper": (lambda: t.WhisperConfig(d_model=32, encoder_layers=2, encoder_attention_heads=2, decoder_layers=1,
                                            decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                                            vocab_size=64, max_target_positions=16, num_mel_bins=80, pad_token_id=0,
                                            bos_token_id=1, eos_token_id=2, decoder_start_token_id=1),
                    t.WhisperModel, lambda: t.WhisperFeatureExtractor(feature_size=80)),
        "ast": (lambda: t.ASTConfig(**TINY, max_length=128, num_mel_bins=128), t.ASTModel,
                lambda: t.ASTFeatureExtractor(max_length=128)),
        # a LAION-style ClapModel with a two-stage HTSAT tower (the text tower is not run)
        "clap": (lambda: t.ClapConfig(audio_config=dict(hidden_size=32, patch_embeds_hidden_size=16, depths=(1, 1),
                                                        num_attention_heads=(1, 2), projection_dim=16),
                                      text_config=dict(**TINY, vocab_size=50), projection_dim=16),
                 t.ClapModel, lambda: t.ClapFeatureExtractor(truncation="rand_trunc")),
    }


FAMILIES = tuple(_configs())
RATE = {"clap": 48000}  # the others run at 16 kHz


def save_tiny(family: str, folder: Path, safe: bool = True) -> Path:
    config, cls, extractor = _configs()[family]
    torch.manual_seed(0)
    model = cls(config()).eval()
    with torch.no_grad():  # random biases too, so a skipped layer cannot hide behind zeros
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(std=0.02)
    model.save_pretrained(folder)
    if not safe:  # a folder of the older pickled kind
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
        (folder / "model.safetensors").unlink()
    extractor().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    return {f: save_tiny(f, tmp_path_factory.mktemp(f.replace("-", "_"))) for f in FAMILIES}


def unfold_htsat(grid: np.ndarray, chunks: int = 4) -> np.ndarray:
    """An HTSAT map (B, C, chunks * F, W), whose rows are time chunks stacked along frequency, as
    frames (B, chunks * W, C): each chunk's rows averaged, the chunks one after another in time."""
    rows = grid.shape[2] // chunks
    return np.concatenate([grid[:, :, c * rows:(c + 1) * rows].mean(axis=2) for c in range(chunks)],
                          axis=2).transpose(0, 2, 1)


def reference_hidden(folder: Path, family: str, audio: np.ndarray) -> list[np.ndarray]:
    """transformers' own hidden states, as frames (B, T, D)."""
    extractor = transformers.AutoFeatureExtractor.from_pretrained(folder, local_files_only=True)
    model = transformers.AutoModel.from_pretrained(folder, local_files_only=True).eval()
    inputs = extractor(list(audio), sampling_rate=RATE.get(family, 16000), return_tensors="pt")
    with torch.no_grad():
        if family == "whisper":
            out = model.get_encoder()(inputs["input_features"], output_hidden_states=True)
        elif family == "clap":
            out = model.audio_model(inputs["input_features"], output_hidden_states=True)
            # the blocks' maps, then last_hidden_state (normalised, unfolded by the tower already)
            return ([unfold_htsat(h.numpy()) for h in out.hidden_states[:-1]]
                    + [out.last_hidden_state.numpy().mean(axis=2).transpose(0, 2, 1)])
        else:
            out = model(inputs["input_values"], output_hidden_states=True)
    hidden = [h.numpy() for h in out.hidden_states]
    if family == "ast":  # patch tokens (frequency rows of time steps), class tokens dropped
        f_dim = (128 - 16) // model.config.frequency_stride + 1
        hidden = [h[:, 2:].reshape(h.shape[0], f_dim, -1, h.shape[-1]).mean(axis=1) for h in hidden]
    return hidden


@pytest.mark.parametrize("family", FAMILIES)
def test_frames_and_clip_match_transformers(family: str, folders) -> None:
    audio = clips(RATE.get(family, 16000), seconds=1.0)
    enc = create("hf", folders[family], layers="all")
    ours = enc.layer_frames(audio, range(enc.n_layers))
    ref = reference_hidden(folders[family], family, audio)
    assert len(ours) == len(ref) == 3
    n = ours[-1].shape[1]
    # Whisper (30 s), AST (max_length) and CLAP (10 s) pad the input: the frames centred in the
    # 1 s are kept (CLAP's last layer: 128 frames over 10 s stretched to 1024 mel columns)
    expected_n = {"whisper": 51, "ast": 10, "clap": 13}.get(family, ref[-1].shape[1])
    assert n == expected_n
    # every layer keeps the frames centred in the 1 s; CLAP's patch embedding runs at twice its
    # stages' rate (4 stretched mel columns a frame, 39 ms apart, against 8)
    assert [o.shape[1] for o in ours] == {"clap": [26, 13, 13]}.get(family, [n] * len(ours))
    errors = [relative_error(o.numpy(), r[:, :o.shape[1]]) for o, r in zip(ours, ref)]
    clip = relative_error(create("hf", folders[family]).embed(audio), ref[-1][:, :n].mean(axis=1))
    print(f"\n{family:15s} hidden-state errors {['%.1e' % e for e in errors]}, clip {clip:.1e}", end="")
    assert max(errors) <= 1e-5 and clip <= 1e-5, (errors, clip)
    # the two clips differ (a tiny random Whisper's output is mostly its positional embedding: 0.7 %)
    assert relative_error(ref[-1][0, :n], ref[-1][1, :n]) > 0.005
    times = enc.frame_times(n, audio.shape[1])
    assert np.all(np.diff(times) > 0) and times[-1] <= 1.0


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_points_like_fp32(family: str, folders) -> None:
    audio = clips(RATE.get(family, 16000), seconds=1.0)
    fp32 = create("hf", folders[family]).embed(audio)
    bf16 = create("hf", folders[family], precision="bf16").embed(audio)
    cos = (fp32 * bf16).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(bf16, axis=1)
    print(f"\n{family:15s} bf16 cosine {cos.min():.6f}", end="")
    assert cos.min() >= 0.999, cos


def test_key_has_class_config_and_weights_hash(folders) -> None:
    a = create("hf", folders["wav2vec2"])
    b = create("hf", folders["hubert"])
    assert a.config()["model_class"] == "Wav2Vec2Model" and b.config()["model_class"] == "HubertModel"
    assert a.config()["weights_sha256"] != b.config()["weights_sha256"]
    assert a.checkpoint.name == "model.safetensors"
    again = create("hf", a.checkpoint)  # the weights file, as predict passes it back, finds its folder
    assert again.config() == a.config()


def test_pickled_weights_need_trust_and_others_are_refused(tmp_path: Path) -> None:
    folder = save_tiny("hubert", tmp_path / "bin", safe=False)
    with pytest.raises(CheckpointError, match="only pickled weights.*--trust-checkpoint"):
        create("hf", folder)
    assert create("hf", folder, trust_checkpoint=True).embed(clips(16000, 0.5)).shape == (2, 32)
    with pytest.raises(CheckpointError, match="no config.json"):
        create("hf", tmp_path)
    other = tmp_path / "bert"
    transformers.BertModel(transformers.BertConfig(**TINY, vocab_size=50)).save_pretrained(other)
    with pytest.raises(CheckpointError, match="model type 'bert' is not one heartprobe runs"):
        create("hf", other)


def test_a_model_folder_runs_end_to_end_extract_frames_probe_recipe_predict(synthetic_data, tmp_path: Path) -> None:
    # the recipe names its weights by a plain name inside --weights: here the model's folder
    folder = save_tiny("wav2vec2", tmp_path / "weights" / "tiny-w2v")
    first = run_every_job(synthetic_data, tmp_path, "hf", "phases:hf:checkpoint=tiny-w2v", "hf", "hf_phases",
                          checkpoint=["--checkpoint", str(folder)], weights=["--weights", str(tmp_path / "weights")])
    steps = np.diff(first.times)
    # 20 ms apart; a 5 s window holds 249 of them (the convolutions' field), so windows meet 40 ms apart
    assert first.embeddings.shape[1] == 32 and np.isclose(np.median(steps), 0.02, atol=1e-5)
    assert steps.min() > 0.02 - 1e-5 and steps.max() < 0.04 + 1e-5


def test_clap_frames_of_a_full_clip_average_to_its_pooler_output(folders) -> None:
    """Over a whole 10 s clip no frame is dropped, so the clip embedding is the tower's own
    `pooler_output`; a longer window is refused (the extractor would crop a random part of it)."""
    audio = clips(48000, seconds=10.0)
    model = transformers.ClapModel.from_pretrained(folders["clap"], local_files_only=True).eval()
    inputs = transformers.ClapFeatureExtractor.from_pretrained(folders["clap"])(list(audio), sampling_rate=48000,
                                                                               return_tensors="pt")
    with torch.no_grad():
        pooled = model.audio_model(inputs["input_features"]).pooler_output.numpy()
    enc = create("hf", folders["clap"])
    assert enc.frame_embeddings(audio).shape[1] == 128
    assert relative_error(enc.embed(audio), pooled) <= 1e-5
    times = enc.frame_times(128, audio.shape[1])
    assert 0 < times[0] < times[-1] < 10.0 and np.allclose(np.diff(times), 10.0 / 1023 * 8)
    with pytest.raises(ValueError, match="at most 10 s"):
        enc.embed(clips(48000, seconds=10.5))
