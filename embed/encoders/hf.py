"""`hf`: Hugging Face `transformers` audio models from a local folder (`--checkpoint DIR`).

DIR is what `save_pretrained` writes or a downloaded snapshot: `config.json`, the model's
`preprocessor_config.json` and its weights. Nothing is fetched: everything loads with
`local_files_only=True`, and never with `trust_remote_code` (a model type transformers does not
ship is refused). Weights load from `*.safetensors` only, unless `--trust-checkpoint` lets a
pickled `pytorch_model.bin` in. Needs the extra: `pip install -e ".[hf]"`.

Families (by `config.model_type`):
- wav2vec2, hubert, wavlm, data2vec-audio: the waveform through the model's feature extractor
  (its zero-mean unit-variance normalisation when `do_normalize`), frames = hidden states, one per
  total conv stride (20 ms at 16 kHz), centred on their receptive field;
- whisper: the encoder only, on the feature extractor's 30 s log-mel (zero-padded as Whisper is
  trained), frames every 20 ms centred on mel frame 2t, those past the audio dropped;
- audio-spectrogram-transformer (AST): the feature extractor's fbank (padded to `max_length`),
  frames = patch tokens averaged over frequency, one per `time_stride` fbank frames, those past
  the audio dropped;
- clap (a `ClapModel`, as the LAION checkpoints are: its audio tower only): the feature extractor's
  log-mel (48 kHz, 10 s, padded as its config says), which the HTSAT tower stretches to its image
  width and folds into `freq_ratio` time chunks stacked along frequency; frames = the tokens of a
  time column averaged over frequency, unfolded into time order, those past the audio dropped.
  The last layer is `last_hidden_state` (before the audio projection), so the clip embedding, the
  frames' mean, is `pooler_output` for a full 10 s clip.
Other model types are refused with the list of these.

Layers: transformers' own `hidden_states` (the embedding output, then each block; the last is
`last_hidden_state`), all from one forward pass, so `--layers all` or `cv` works. The clip
embedding is the frames' pooling (mean by default). The cache key holds the model class, the
hash of `config.json` and of the preprocessor config, and the weights' sha256.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..checksum import file_sha256
from .base import Encoder, token_frames
from .checkpoint import CheckpointError
from .registry import register

WAVEFORM_TYPES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio")
SUPPORTED_TYPES = (*WAVEFORM_TYPES, "whisper", "audio-spectrogram-transformer", "clap")
INSTALL_HINT = '--encoder hf needs transformers: pip install -e ".[hf]"'


def import_transformers():
    try:
        import transformers
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err
    return transformers


def model_folder(path: Path) -> Path:
    """The folder of a `save_pretrained` model: `path` itself, or the folder of a weights file in it."""
    folder = path if path.is_dir() else path.parent
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{path}: not a Hugging Face model folder (no config.json); pass the folder "
                              "save_pretrained wrote or a downloaded snapshot")
    return folder


def weight_files(folder: Path, trust_checkpoint: bool) -> list[Path]:
    safe = sorted(folder.glob("*.safetensors"))
    if safe:
        return safe
    pickled = sorted(folder.glob("pytorch_model*.bin"))
    if pickled and not trust_checkpoint:
        raise CheckpointError(f"{folder}: only pickled weights ({pickled[0].name}); heartprobe loads *.safetensors. "
                              "Only if you trust where the file came from, rerun with --trust-checkpoint")
    if not pickled:
        raise CheckpointError(f"{folder}: no weights (*.safetensors or pytorch_model.bin)")
    return pickled


def receptive_field(kernels: Sequence[int], strides: Sequence[int]) -> tuple[int, int]:
    """(receptive field, total stride) in samples of a stack of 1-d convolutions."""
    field, jump = 1, 1
    for k, s in zip(kernels, strides):
        field += (k - 1) * jump
        jump *= s
    return field, jump


@register("hf")
class HuggingFaceEncoder(Encoder):
    sample_rate = 16000  # set from the feature extractor
    needs_checkpoint = True
    default_pooling = "mean"

    def __init__(self, checkpoint=None, **kwargs) -> None:
        super().__init__(checkpoint, **kwargs)
        transformers = import_transformers()
        folder = model_folder(self.checkpoint)
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
        self.model_type = config.model_type
        if self.model_type not in SUPPORTED_TYPES:
            raise CheckpointError(f"{folder}: model type {self.model_type!r} is not one heartprobe runs; "
                                  f"--encoder hf takes {', '.join(SUPPORTED_TYPES)}")
        self.weights = weight_files(folder, self.trust_checkpoint)
        self.checkpoint = self.weights[0]  # what the cache key hashes and predict finds the folder from
        self.extractor = transformers.AutoFeatureExtractor.from_pretrained(folder, local_files_only=True,
                                                                           trust_remote_code=False)
        model = transformers.AutoModel.from_pretrained(folder, local_files_only=True, trust_remote_code=False,
                                                       use_safetensors=self.weights[0].suffix == ".safetensors")
        self.model = (model.get_encoder() if self.model_type == "whisper"
                      else model.audio_model if self.model_type == "clap" else model)
        self.model_class = type(model).__name__
        self.sample_rate = int(self.extractor.sampling_rate)
        if self.model_type == "clap":
            self.clap_grid = ClapGrid.of(config.audio_config, self.extractor)
            self.feature_dim = self.clap_grid.dims[-1]
            self._block_dims = self.clap_grid.dims[:-1]
            n_hidden = len(self._block_dims)
        else:
            self.feature_dim = int(config.d_model if self.model_type == "whisper" else config.hidden_size)
            n_hidden = int(config.encoder_layers if self.model_type == "whisper" else config.num_hidden_layers)
            self._block_dims = (self.feature_dim,) * n_hidden
        # labels of hidden_states[0..n-1] (the embedding output, then every block but the last,
        # which is the embedding); `layer_frames` reads them from the model's own outputs
        self.layer_modules = tuple(f"hidden_states.{i}" for i in range(n_hidden))
        self.hashes = {"config_sha256": file_sha256(folder / "config.json"),
                       "preprocessor_sha256": self._preprocessor_hash(folder),
                       "weights_sha256": [file_sha256(p) for p in self.weights]}
        if self.model_type in WAVEFORM_TYPES:
            field, stride = receptive_field(config.conv_kernel, config.conv_stride)
            self.frame_hop_s = stride / self.sample_rate
            self.frame_offset_s = (field - 1) / 2 / self.sample_rate
        elif self.model_type == "whisper":
            self.frame_hop_s = 2 * self.extractor.hop_length / self.sample_rate
            self.frame_offset_s = 0.0  # conv2 (stride 2, padding 1) keeps frame t on centred mel frame 2t
        elif self.model_type == "clap":
            self.frame_hop_s, self.frame_offset_s = self.clap_grid.hop_and_offset(-1)
        else:  # AST: kaldi fbank frames of 25 ms every 10 ms; a patch spans 16 of them
            self.f_dim = (config.num_mel_bins - config.patch_size) // config.frequency_stride + 1
            self.frame_hop_s = config.time_stride * 0.01
            self.frame_offset_s = (config.patch_size - 1) / 2 * 0.01 + 0.0125
        self._keep_hidden = False
        self._hidden: tuple | None = None
        self.to_device()

    @staticmethod
    def _preprocessor_hash(folder: Path) -> str | None:
        path = folder / "preprocessor_config.json"
        if not path.is_file():
            return None
        canonical = json.dumps(json.loads(path.read_text()), sort_keys=True).encode()
        return hashlib.sha256(canonical).hexdigest()

    # -- layers: transformers' hidden_states ------------------------------------------------
    def block_dims(self) -> tuple[int, ...]:
        return self._block_dims

    def inputs(self, audio: torch.Tensor) -> dict:
        """The feature extractor's model inputs for a batch of equal-length waveforms."""
        longest = {"whisper": getattr(self.extractor, "n_samples", None),
                   "clap": getattr(self.extractor, "nb_max_samples", None)}.get(self.model_type)
        if longest and audio.shape[-1] > longest:  # (CLAP would crop a random part of a longer one)
            raise ValueError(f"{self.model_class} takes at most {longest / self.sample_rate:g} s; "
                             f"got windows of {audio.shape[-1] / self.sample_rate:g} s (--window)")
        samples = [a for a in audio.float().cpu().numpy()]
        with torch.autocast(device_type=audio.device.type, enabled=False):  # front end in fp32 (Whisper's uses torch)
            out = self.extractor(samples, sampling_rate=self.sample_rate, return_tensors="pt")
        if self.model_type == "clap":  # is_longer: which clips a fused tower would fuse
            return {"input_features": out["input_features"].to(self.device), "is_longer": out["is_longer"]}
        key = "input_features" if self.model_type == "whisper" else "input_values"
        return {key: out[key].to(self.device)}

    def n_real_frames(self, n_samples: int, n_frames: int) -> int:
        """Frames centred inside the audio (Whisper and AST pad their input to a fixed length)."""
        if self.model_type in WAVEFORM_TYPES:
            return n_frames
        times = self.frame_times(n_frames, n_samples)
        return max(1, min(n_frames, int(np.searchsorted(times, n_samples / self.sample_rate, side="right"))))

    def hidden_frames(self, audio: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Every hidden state as frames `(B, T, D)`, padding frames dropped."""
        out = self.model(**self.inputs(audio), output_hidden_states=True)
        hidden = out.hidden_states
        if self.model_type == "clap":
            return self.clap_grid.frames(hidden[:-1], out.last_hidden_state, audio.shape[-1] / self.sample_rate)
        if self.model_type == "audio-spectrogram-transformer":
            hidden = tuple(token_frames(h, 2, self.f_dim, freq_major=True) for h in hidden)
        keep = self.n_real_frames(audio.shape[-1], hidden[-1].shape[1])
        return tuple(h[:, :keep] for h in hidden)

    def frames(self, audio: torch.Tensor) -> torch.Tensor:
        hidden = self.hidden_frames(audio)
        self._hidden = hidden if self._keep_hidden else None
        return hidden[-1]

    @torch.inference_mode()
    def layer_frames(self, audio, layers: Sequence[int]) -> list[torch.Tensor]:
        layers = list(layers)
        if any(not 0 <= i < self.n_layers for i in layers):
            raise ValueError(f"{self.name}: layers {layers} outside 0..{self.n_layers - 1}")
        self._keep_hidden = True
        try:
            self.frame_embeddings(audio)
            hidden = self._hidden
        finally:
            self._keep_hidden, self._hidden = False, None
        return [hidden[i].float() for i in layers]

    def config(self) -> dict:
        return {"model_class": self.model_class, "model_type": self.model_type, **self.hashes, "version": 1}


class ClapGrid:
    """Where the HTSAT tower's tokens sit in time. The tower stretches the log-mel's `n_mel` frames
    (`mel_step_s` apart) to `width` columns (bicubic, corners aligned) and folds them into
    `ratio` chunks stacked along frequency, so the image's rows are (chunk, frequency) and its
    columns time within a chunk; each stage halves both. A layer's frames: its map
    `(B, C, ratio * F, W)` averaged over F, unfolded to `ratio * W` frames in time order."""

    def __init__(self, dims: tuple[int, ...], columns: tuple[int, ...], ratio: int, width: int,
                 column_step_s: float) -> None:
        self.dims, self.columns, self.ratio = dims, columns, ratio
        self.width, self.column_step_s = width, column_step_s

    @classmethod
    def of(cls, config, extractor) -> "ClapGrid":
        ratio = config.spec_size // config.num_mel_bins
        width = config.spec_size * ratio
        stages = len(config.depths)
        # the patch embedding, then each stage's output (merged 2x2 after all but the last stage)
        dims = tuple(config.patch_embeds_hidden_size * 2 ** min(i, stages - 1) for i in range(stages + 1))
        grid = config.spec_size // config.patch_stride[1]
        columns = tuple(grid // 2 ** min(i, stages - 1) for i in range(stages + 1))
        n_mel = extractor.nb_max_samples // extractor.hop_length + 1
        mel_step_s = extractor.hop_length / extractor.sampling_rate
        step = mel_step_s * (n_mel - 1) / (width - 1) if n_mel < width else mel_step_s
        return cls(dims, columns, ratio, width, step)

    def hop_and_offset(self, layer: int) -> tuple[float, float]:
        """Seconds between layer `layer`'s frames, and the first one's centre."""
        span = self.width // (self.ratio * self.columns[layer])  # stretched mel columns per frame
        return span * self.column_step_s, (span - 1) / 2 * self.column_step_s

    def frames(self, maps: Sequence[torch.Tensor], last: torch.Tensor, duration_s: float) -> tuple[torch.Tensor, ...]:
        """Frames `(B, T, C)` of the blocks' `maps` (`hidden_states`) and of `last_hidden_state`,
        which the tower has unfolded already (`(B, C, F, ratio * W)`), those past `duration_s` dropped."""
        out = []
        for layer, grid in enumerate((*maps, last)):
            b, c, rows, cols = grid.shape
            if layer < len(maps):
                frames = grid.reshape(b, c, self.ratio, rows // self.ratio, cols).mean(dim=3).reshape(b, c, -1)
            else:
                frames = grid.mean(dim=2)
            hop, offset = self.hop_and_offset(layer)
            keep = max(1, min(frames.shape[-1], int(np.floor((duration_s - offset) / hop + 1e-9)) + 1))
            out.append(frames[..., :keep].transpose(1, 2))
        return tuple(out)
