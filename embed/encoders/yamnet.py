"""`yamnet`: Google's YAMNet (MobileNetV1 on log-mel patches, AudioSet 521 classes) in torch.

Follows the official TensorFlow implementation, tensorflow/models `research/audioset/yamnet/`
(params.py, features.py, yamnet.py); the weights are read from the published TF-Lite
conversion (`yamnet.tflite`: int8 weights, float activations, one 0.975 s patch per call)
with the `tflite` flatbuffer parser, dequantized and mapped onto the torch layers in graph
order (batch norm is already folded into the conv biases there).

Front end (params.py / features.py): 16 kHz, 400-sample (25 ms) periodic-Hann frames every
160 samples (10 ms), 512-point |rFFT|, 64 mel bands 125-7500 Hz built the way
`tf.signal.linear_to_mel_weight_matrix` builds them (HTK mel, triangles in mel space, DC bin
zeroed), log(mel + 0.001), patches of 96 frames hopping 48 frames (0.96 s / 0.48 s). The
.tflite embeds the same front end (features.py's tflite_compatible path) as int8 DFT/mel
matrices; we compute it exactly in float, as the official float model does, and the tests
check those matrices agree with ours within int8 rounding. The TF-Lite runtime itself is no
exact reference: its hybrid int8 kernels quantize activations on the fly, differently in the
reference kernels (per-row symmetric) and XNNPACK (per-row asymmetric), and the two disagree
by up to ~5 in log-mel on quiet bins of a pure tone.
Embedding: the 1024-d global-average-pooled last conv layer, one per 0.48 s patch.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .base import Encoder, join_batch_chunks
from .checkpoint import CheckpointError, load_strict
from .registry import register

SAMPLE_RATE = 16000
WINDOW, HOP, N_FFT = 400, 160, 512
N_MELS, MEL_MIN_HZ, MEL_MAX_HZ, LOG_OFFSET = 64, 125.0, 7500.0, 0.001
PATCH_FRAMES, PATCH_HOP_FRAMES = 96, 48
# one patch needs 96 frames: (96 - 1) * 160 + 400 samples = 0.975 s
MIN_SAMPLES = (PATCH_FRAMES - 1) * HOP + WINDOW
PATCH_HOP_SAMPLES = PATCH_HOP_FRAMES * HOP
NUM_CLASSES, EMBED_DIM = 521, 1024

# (kind, stride, output channels) per layer, as in the official _YAMNET_LAYER_DEFS (3x3 kernels)
LAYER_DEFS = [("conv", 2, 32), ("sep", 1, 64), ("sep", 2, 128), ("sep", 1, 128), ("sep", 2, 256),
              ("sep", 1, 256), ("sep", 2, 512)] + [("sep", 1, 512)] * 5 + [("sep", 2, 1024), ("sep", 1, 1024)]


def tf_mel_matrix(n_fft: int = N_FFT, n_mels: int = N_MELS, sample_rate: int = SAMPLE_RATE,
                  f_min: float = MEL_MIN_HZ, f_max: float = MEL_MAX_HZ) -> torch.Tensor:
    """`(n_fft//2+1, n_mels)` weights computed like tf.signal.linear_to_mel_weight_matrix.

    Unlike librosa, TF draws the triangles on the mel axis (bin centres converted to mel) and
    forces the DC bin to zero.
    """
    def to_mel(hz: np.ndarray | float) -> np.ndarray:
        return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)

    bins_mel = to_mel(np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1))[1:, None]
    edges = np.linspace(to_mel(f_min), to_mel(f_max), n_mels + 2)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel - lower) / (centre - lower)
    falling = (upper - bins_mel) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    return torch.from_numpy(np.vstack([np.zeros((1, n_mels)), weights])).float()


class YamnetFrontEnd(torch.nn.Module):
    """Waveform `(B, N)` -> log-mel `(B, frames, 64)`, frames = 1 + (N - 400) // 160 (no centering)."""

    def __init__(self) -> None:
        super().__init__()
        n = torch.arange(WINDOW, dtype=torch.float64)
        self.register_buffer("window", (0.5 - 0.5 * torch.cos(2 * math.pi * n / WINDOW)).float(),
                             persistent=False)
        self.register_buffer("mel", tf_mel_matrix(), persistent=False)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        # spectra in fp32 even under autocast: log of small mel energies is precision-sensitive
        with torch.autocast(device_type=audio.device.type, enabled=False):
            frames = audio.float().unfold(-1, WINDOW, HOP) * self.window
            # where the 400 samples sit inside the 512-point frame only changes the phase
            magnitude = torch.fft.rfft(frames, n=N_FFT).abs()
            return torch.log(magnitude @ self.mel + LOG_OFFSET)


def _same_pad(x: torch.Tensor, stride: int, kernel: int = 3) -> torch.Tensor:
    """TF 'SAME' padding: the odd pixel goes at the end (bottom/right)."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class SeparableConv(torch.nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.depthwise_conv = torch.nn.Conv2d(c_in, c_in, 3, stride, groups=c_in)
        self.pointwise_conv = torch.nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.depthwise_conv(_same_pad(x, self.stride)))
        return F.relu(self.pointwise_conv(x))


class PlainConv(torch.nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = torch.nn.Conv2d(c_in, c_out, 3, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(_same_pad(x, self.stride)))


class YamnetModel(torch.nn.Module):
    """Front end + MobileNetV1 body + dense classifier (batch norm folded into conv biases)."""

    def __init__(self) -> None:
        super().__init__()
        self.frontend = YamnetFrontEnd()
        layers, c_in = [], 1
        for kind, stride, c_out in LAYER_DEFS:
            layers.append((PlainConv if kind == "conv" else SeparableConv)(c_in, c_out, stride))
            c_in = c_out
        self.layers = torch.nn.ModuleList(layers)
        self.dense = torch.nn.Linear(EMBED_DIM, NUM_CLASSES)

    def patches(self, audio: torch.Tensor) -> torch.Tensor:
        """Pad like features.pad_waveform, then log-mel patches `(B, P, 96, 64)`."""
        n = audio.shape[-1]
        # at least one patch, then a whole number of 0.48 s hops; only zeros are appended
        extra = max(n, MIN_SAMPLES) - MIN_SAMPLES
        target = MIN_SAMPLES + math.ceil(extra / PATCH_HOP_SAMPLES) * PATCH_HOP_SAMPLES
        audio = F.pad(audio, (0, target - n))
        logmel = self.frontend(audio)
        return logmel.unfold(1, PATCH_FRAMES, PATCH_HOP_FRAMES).transpose(-1, -2)

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(B, N)` waveform -> embeddings `(B, P, 1024)` and class logits `(B, P, 521)`."""
        patches = self.patches(audio)
        b, p = patches.shape[:2]
        x = patches.reshape(b * p, 1, PATCH_FRAMES, N_MELS)  # NCHW, H = time, W = mel
        for layer in self.layers:
            x = layer(x)
        emb = x.mean(dim=(2, 3))
        return emb.reshape(b, p, -1), self.dense(emb).reshape(b, p, -1)


# -- reading the .tflite ----------------------------------------------------------------------

def _tensor_value(model, graph, index: int) -> np.ndarray:
    """Constant tensor as float32 numpy, int8 dequantized with (per-axis) scale/zero point."""
    import tflite

    tensor = graph.Tensors(index)
    raw = model.Buffers(tensor.Buffer()).DataAsNumpy()
    if isinstance(raw, int) or raw.size == 0:
        raise CheckpointError(f"tensor {tensor.Name().decode()!r} has no constant data")
    shape = [int(s) for s in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else []
    kind = tensor.Type()
    if kind == tflite.TensorType.FLOAT32:
        return raw.view(np.float32).reshape(shape).copy()
    if kind == tflite.TensorType.INT32:
        return raw.view(np.int32).reshape(shape).astype(np.float32)
    if kind != tflite.TensorType.INT8:
        raise CheckpointError(f"tensor {tensor.Name().decode()!r}: unsupported type {kind}")
    q = tensor.Quantization()
    if q is None or q.ScaleLength() == 0:
        raise CheckpointError(f"int8 tensor {tensor.Name().decode()!r} has no quantization scale")
    values = raw.view(np.int8).reshape(shape).astype(np.float32)
    scale = q.ScaleAsNumpy().astype(np.float32)
    zero = q.ZeroPointAsNumpy().astype(np.float32) if q.ZeroPointLength() else np.zeros_like(scale)
    if scale.size > 1:  # per-channel: broadcast along the quantized axis
        bshape = [1] * len(shape)
        bshape[q.QuantizedDimension()] = scale.size
        scale, zero = scale.reshape(bshape), zero.reshape(bshape)
    return (values - zero) * scale


def read_yamnet_tflite(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
    """Weights of a YAMNet .tflite as a `YamnetModel` state dict, plus the graph's front-end constants.

    Raises CheckpointError when the file is not a TF-Lite flatbuffer or not YAMNet's graph.
    """
    import tflite

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    buf = path.read_bytes()
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise CheckpointError(f"{path}: not a TF-Lite flatbuffer (no 'TFL3' identifier)")
    try:
        return _read_graph(tflite, tflite.Model.GetRootAsModel(buf, 0))
    except CheckpointError as err:
        raise CheckpointError(f"{path}: not a YAMNet .tflite: {err}") from None
    except Exception as err:  # a damaged flatbuffer fails with any of struct/Index/Value errors
        raise CheckpointError(f"{path}: unreadable TF-Lite file ({type(err).__name__}: {err})") from err


def _read_graph(tflite, model) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
    if model.SubgraphsLength() != 1:
        raise CheckpointError(f"expected 1 subgraph, found {model.SubgraphsLength()}")
    graph = model.Subgraphs(0)
    names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}

    def opname(op) -> str:
        code = model.OperatorCodes(op.OpcodeIndex())
        return names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "?")

    ops = [graph.Operators(i) for i in range(graph.OperatorsLength())]
    # depthwise kernels may be stored int8 behind a DEQUANTIZE op: follow it back to the constant
    dequantized = {int(op.Outputs(0)): int(op.Inputs(0)) for op in ops if opname(op) == "DEQUANTIZE"}

    def const(index: int) -> np.ndarray:
        return _tensor_value(model, graph, dequantized.get(index, index))

    convs, fcs, window = [], [], None
    for op in ops:
        kind = opname(op)
        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            options = (tflite.Conv2DOptions if kind == "CONV_2D" else tflite.DepthwiseConv2DOptions)()
            table = op.BuiltinOptions()
            options.Init(table.Bytes, table.Pos)
            convs.append((kind, options.StrideH(), const(op.Inputs(1)), const(op.Inputs(2))))
        elif kind == "FULLY_CONNECTED":
            bias = const(op.Inputs(2)) if op.InputsLength() > 2 and op.Inputs(2) >= 0 else None
            fcs.append((const(op.Inputs(1)), bias))
        elif kind == "MUL" and window is None:
            shapes = [tuple(graph.Tensors(op.Inputs(i)).ShapeAsNumpy()) for i in range(2)]
            if (1, WINDOW) in shapes:
                window = const(op.Inputs(shapes.index((1, WINDOW)))).reshape(-1)

    expected = [("CONV_2D", LAYER_DEFS[0][1])]
    for kind, stride, _ in LAYER_DEFS[1:]:
        expected += [("DEPTHWISE_CONV_2D", stride), ("CONV_2D", 1)]
    found = [(kind, stride) for kind, stride, _, _ in convs]
    if found != expected:
        raise CheckpointError(f"conv layers {found} differ from YAMNet's {expected}")
    fc_shapes = [w.shape for w, _ in fcs]
    if fc_shapes != [(N_FFT // 2 + 1, N_FFT)] * 2 + [(N_MELS, N_FFT // 2 + 1), (NUM_CLASSES, EMBED_DIM)]:
        raise CheckpointError(f"fully-connected layers {fc_shapes} differ from YAMNet's front end + classifier")

    state: dict[str, torch.Tensor] = {}
    it = iter(convs)
    for i, (kind, _, _) in enumerate(LAYER_DEFS):
        prefix = f"layers.{i}."
        # TF-Lite layouts: conv OHWI -> torch OIHW; depthwise 1HWC -> torch (C, 1, H, W)
        if kind == "conv":
            _, _, w, b = next(it)
            state[prefix + "conv.weight"], state[prefix + "conv.bias"] = w.transpose(0, 3, 1, 2), b
        else:
            _, _, w, b = next(it)
            state[prefix + "depthwise_conv.weight"] = w.transpose(3, 0, 1, 2)
            state[prefix + "depthwise_conv.bias"] = b
            _, _, w, b = next(it)
            state[prefix + "pointwise_conv.weight"] = w.transpose(0, 3, 1, 2)
            state[prefix + "pointwise_conv.bias"] = b
    state["dense.weight"], state["dense.bias"] = fcs[3]
    frontend = {"window": window, "dft_real": fcs[0][0], "dft_imag": fcs[1][0],
                "mel": fcs[2][0], "mel_bias": fcs[2][1]}
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, frontend


@register("yamnet")
class YamnetEncoder(Encoder):
    front_end = ("model.frontend",)
    """1024-d YAMNet embeddings every 0.48 s (0.96 s patches); `tag()` gives AudioSet scores."""

    sample_rate = SAMPLE_RATE
    feature_dim = EMBED_DIM
    frame_hop_s = 0.48
    frame_offset_s = 0.4875  # patch j spans 0.48 j .. 0.48 j + 0.975 s
    default_pooling = "mean"
    needs_checkpoint = True
    weight_file = "yamnet.tflite"
    # docs/speed.md, "bf16 safety": cosine 0.99982 to fp32 on real CirCor windows, probe scores within noise
    bf16_safe = True
    # layers: the first conv and the 12 separable convs before the last one (layer 13, the embedding)
    layer_modules = tuple(f"layers.{i}" for i in range(len(LAYER_DEFS) - 1))

    def __init__(self, checkpoint=None, **kwargs) -> None:
        super().__init__(checkpoint, **kwargs)
        try:
            import tflite  # noqa: F401  (only the flatbuffer schema; no interpreter needed)
        except ImportError as err:
            raise ImportError("the yamnet encoder reads yamnet.tflite with the `tflite` package: "
                              "pip install tflite (or pip install -e \".[yamnet]\")") from None
        state, self.tflite_frontend = read_yamnet_tflite(self.checkpoint)
        self.model = YamnetModel()
        load_strict(self.model, state, self.checkpoint)
        self.to_device()

    def frames(self, audio: torch.Tensor) -> torch.Tensor:
        return self.model(audio)[0]

    def block_dims(self) -> tuple[int, ...]:
        return tuple(c for _, _, c in LAYER_DEFS[:-1])

    def block_frames(self, index: int, output: torch.Tensor) -> torch.Tensor:
        # (B*patches, C, time, mel): one frame per 0.96 s patch, as the embedding, averaged over its map
        return output.float().mean(dim=(2, 3))

    def join_block_frames(self, index: int, parts: list[torch.Tensor], batch: int) -> torch.Tensor:
        return join_batch_chunks(parts, batch)

    @torch.inference_mode()
    def tag(self, audio: np.ndarray | torch.Tensor) -> torch.Tensor:
        """`(B, samples)` -> `(B, 521)` AudioSet class scores (sigmoid), averaged over patches."""
        x = torch.as_tensor(audio, dtype=torch.float32)
        x = (x[None] if x.ndim == 1 else x).to(self.device)
        with self._autocast():
            logits = self.model(x)[1]
        return torch.sigmoid(logits.float()).mean(dim=1).cpu()

    def config(self) -> dict:
        return {"frontend": "float-stft", "patch_s": 0.96, "hop_s": 0.48, "version": 1}
