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
    }


FAMILIES = tuple(_configs())


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


def reference_hidden(folder: Path, family: str, audio: np.ndarray) -> list[np.ndarray]:
    """transformers' own hidden states, as frames (B, T, D)."""
    extractor = transformers.AutoFeatureExtractor.from_pretrained(folder, local_files_only=True)
    model = transformers.AutoModel.from_pretrained(folder, local_files_only=True).eval()
    inputs = extractor(list(audio), sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        if family == "whisper":
            out = model.get_encoder()(inputs["input_features"], output_hidden_states=True)
        else:
            out = model(inputs["input_values"], output_hidden_states=True)
    hidden = [h.numpy() for h in out.hidden_states]
    if family == "ast":  # patch tokens (frequency rows of time steps), class tokens dropped
        f_dim = (128 - 16) // model.config.frequency_stride + 1
        hidden = [h[:, 2:].reshape(h.shape[0], f_dim, -1, h.shape[-1]).mean(axis=1) for h in hidden]
    return hidden


@pytest.mark.parametrize("family", FAMILIES)
def test_frames_and_clip_match_transformers(family: str, folders) -> None:
    audio = clips(16000, seconds=1.0)
    enc = create("hf", folders[family], layers="all")
    ours = enc.layer_frames(audio, range(enc.n_layers))
    ref = reference_hidden(folders[family], family, audio)
    assert len(ours) == len(ref) == 3
    n = ours[-1].shape[1]
    # Whisper (30 s) and AST (max_length) pad the input: the frames centred in the 1 s are kept
    expected_n = {"whisper": 51, "ast": 10}.get(family, ref[-1].shape[1])
    assert n == expected_n
    errors = [relative_error(o.numpy(), r[:, :n]) for o, r in zip(ours, ref)]
    clip = relative_error(create("hf", folders[family]).embed(audio), ref[-1][:, :n].mean(axis=1))
    print(f"\n{family:15s} hidden-state errors {['%.1e' % e for e in errors]}, clip {clip:.1e}", end="")
    assert max(errors) <= 1e-5 and clip <= 1e-5, (errors, clip)
    # the two clips differ (a tiny random Whisper's output is mostly its positional embedding: 0.7 %)
    assert relative_error(ref[-1][0, :n], ref[-1][1, :n]) > 0.005
    times = enc.frame_times(n, audio.shape[1])
    assert np.all(np.diff(times) > 0) and times[-1] <= 1.0


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_points_like_fp32(family: str, folders) -> None:
    audio = clips(16000, seconds=1.0)
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
