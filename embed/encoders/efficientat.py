"""EfficientAT: AudioSet-trained MobileNetV3 (`mnXX`) and dynamic MobileNets (`dymnXX`).

Follows the official implementation, https://github.com/fschmid56/EfficientAT (MIT):
`models/mn/model.py` + `models/mn/block_types.py` (MN), `models/dymn/model.py` +
`models/dymn/dy_block.py` (DyMN) and `models/preprocess.py` (AugmentMelSTFT in eval mode).
Parameter names mirror the official modules so the released `*_as*.pt` state dicts load strictly.

Front end (eval mode, no augmentation): 32 kHz, pre-emphasis `x[n+1] - 0.97 x[n]`, STFT n_fft 1024,
window 800 (symmetric Hann, centred, reflect padding), hop 320, power spectrum, 128 Kaldi mel bands
0-15000 Hz (fmax = 16000 - 2000 // 2), `log(mel + 1e-5)`, then `(x + 4.5) / 5`.

Embedding: the official model returns `(logits, features)` with `features` the global average of
the last 1x1 conv's feature map (6 x the last block's channels, 384 for mn04, 960 for mn10). Frames
here are that map averaged over frequency, one per 32 STFT hops (0.32 s), so the default "mean"
pooling equals the official `features`. Inputs of any length are processed whole, as the official
`inference.py` does (the networks are fully convolutional; squeeze-excitation is channel-only).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import Encoder
from .checkpoint import extract_state_dict, load_checkpoint, load_strict
from .registry import register

N_CLASSES = 527  # AudioSet ontology, order of EfficientAT's metadata/class_labels_indices.csv

# (input, kernel, expanded, output, squeeze-excite, hard-swish, stride) of the 15 MobileNetV3-Large
# inverted-residual blocks before width scaling (MobileNetV3 paper, Table 1).
_MNV3_BLOCKS = (
    (16, 3, 16, 16, False, False, 1), (16, 3, 64, 24, False, False, 2),
    (24, 3, 72, 24, False, False, 1), (24, 5, 72, 40, True, False, 2),
    (40, 5, 120, 40, True, False, 1), (40, 5, 120, 40, True, False, 1),
    (40, 3, 240, 80, False, True, 2), (80, 3, 200, 80, False, True, 1),
    (80, 3, 184, 80, False, True, 1), (80, 3, 184, 80, False, True, 1),
    (80, 3, 480, 112, True, True, 1), (112, 3, 672, 112, True, True, 1),
    (112, 5, 672, 160, True, True, 2), (160, 5, 960, 160, True, True, 1),
    (160, 5, 960, 160, True, True, 1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a scaled channel count to a multiple of `divisor`, never more than 10% below it."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def scaled_blocks(width: float) -> list[tuple]:
    return [(make_divisible(i * width), k, make_divisible(e * width), make_divisible(o * width), se, hs, s)
            for i, k, e, o, se, hs, s in _MNV3_BLOCKS]


def embedding_dim(width: float) -> int:
    return 6 * make_divisible(160 * width)


# -- front end ---------------------------------------------------------------------------------
def kaldi_mel_banks(n_mels: int, n_fft: int, sample_rate: float, f_min: float, f_max: float) -> torch.Tensor:
    """Kaldi's triangular mel filters (mel = 1127 ln(1 + f/700), triangles in mel) as `(n_mels, n_fft//2 + 1)`.

    Kaldi builds `n_fft // 2` columns (DC up to one bin below Nyquist); the Nyquist column is zero,
    as in EfficientAT, which pads the bank by one column before multiplying with the spectrum.
    """
    if f_max <= 0:
        f_max += sample_rate / 2
    mel = lambda f: 1127.0 * torch.log1p(f / 700.0)  # noqa: E731
    lo, hi = mel(torch.tensor(float(f_min), dtype=torch.float64)), mel(torch.tensor(float(f_max), dtype=torch.float64))
    delta = (hi - lo) / (n_mels + 1)
    m = torch.arange(n_mels, dtype=torch.float64)[:, None]
    left, centre, right = lo + m * delta, lo + (m + 1) * delta, lo + (m + 2) * delta
    bins = mel(torch.arange(n_fft // 2, dtype=torch.float64) * (sample_rate / n_fft))[None, :]
    up = (bins - left) / (centre - left)
    down = (right - bins) / (right - centre)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)
    return F.pad(banks, (0, 1)).float()


class MelFrontEnd(nn.Module):
    """AugmentMelSTFT in eval mode: waveform (B, samples) -> normalised log-mel (B, 128, frames)."""

    def __init__(self, n_mels: int = 128, sample_rate: int = 32000, win_length: int = 800, hop: int = 320,
                 n_fft: int = 1024, f_min: float = 0.0, fmax_aug_range: int = 2000) -> None:
        super().__init__()
        self.n_fft, self.hop, self.win_length = n_fft, hop, win_length
        f_max = sample_rate // 2 - fmax_aug_range // 2  # the official default when fmax is None
        self.register_buffer("window", torch.hann_window(win_length, periodic=False), persistent=False)
        self.register_buffer("preemphasis", torch.tensor([[[-0.97, 1.0]]]), persistent=False)
        self.register_buffer("mel_banks", kaldi_mel_banks(n_mels, n_fft, sample_rate, f_min, f_max),
                             persistent=False)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        # the official code keeps the mel product out of autocast; we keep the whole front end in fp32
        with torch.autocast(device_type=audio.device.type, enabled=False):
            x = F.conv1d(audio.float()[:, None], self.preemphasis)[:, 0]
            spec = torch.stft(x, self.n_fft, hop_length=self.hop, win_length=self.win_length,
                              window=self.window, center=True, return_complex=True)
            power = spec.real ** 2 + spec.imag ** 2
            mel = torch.matmul(self.mel_banks, power)
            return (torch.log(mel + 1e-5) + 4.5) / 5.0


# -- MobileNetV3 (MN) ----------------------------------------------------------------------------
def conv_bn_act(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1,
                act: type[nn.Module] | None = nn.Hardswish) -> nn.Sequential:
    """torchvision ConvNormActivation layout: [conv (no bias), BN(eps 1e-3), activation]."""
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out, eps=0.001, momentum=0.01),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class _SqueezeExcite(nn.Module):
    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, squeeze)
        self.fc2 = nn.Linear(squeeze, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3))))))
        return x * scale[:, :, None, None]


class ChannelSE(nn.Module):
    """The official ConcurrentSEBlock with its AudioSet setting: one channel-wise SE (se_dims='c', r=4)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        # one branch; 'max' aggregation over a single branch is the identity
        self.conc_se_layers = nn.ModuleList([_SqueezeExcite(channels, make_divisible(channels // 4))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conc_se_layers[0](x)


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, kernel: int, c_exp: int, c_out: int, use_se: bool, hswish: bool,
                 stride: int) -> None:
        super().__init__()
        act = nn.Hardswish if hswish else nn.ReLU
        layers: list[nn.Module] = []
        if c_exp != c_in:
            layers.append(conv_bn_act(c_in, c_exp, 1, act=act))
        layers.append(conv_bn_act(c_exp, c_exp, kernel, stride, groups=c_exp, act=act))
        if use_se:
            layers.append(ChannelSE(c_exp))
        layers.append(conv_bn_act(c_exp, c_out, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.residual else out


def classifier_head(channels: int, hidden: int, n_classes: int = N_CLASSES) -> nn.Sequential:
    # indices 2 and 5 hold the weights, as in the official 'mlp' head
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(channels, hidden), nn.Hardswish(),
                         nn.Dropout(0.2), nn.Linear(hidden, n_classes))


class MN(nn.Module):
    """MobileNetV3 as in EfficientAT (`features.0..16`, `classifier.*`), without the front end."""

    def __init__(self, width: float) -> None:
        super().__init__()
        blocks = scaled_blocks(width)
        layers: list[nn.Module] = [conv_bn_act(1, blocks[0][0], 3, 2)]
        layers += [InvertedResidual(*cfg) for cfg in blocks]
        last_in = blocks[-1][3]
        layers.append(conv_bn_act(last_in, 6 * last_in, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = classifier_head(6 * last_in, make_divisible(1280 * width))

    def feature_map(self, spec: torch.Tensor) -> torch.Tensor:
        return self.features(spec)


# -- dynamic MobileNet (DyMN) --------------------------------------------------------------------
class DynamicConv(nn.Module):
    """Input-dependent mixture of k kernels; weights stored flat as (1, 1, k, out*in/groups*kh*kw)."""

    def __init__(self, c_in: int, c_out: int, context: int, kernel: int, stride: int = 1, groups: int = 1,
                 k: int = 4, temperature: float = 1.0) -> None:
        super().__init__()
        self.c_in, self.c_out, self.kernel, self.stride, self.groups = c_in, c_out, kernel, stride, groups
        self.padding = (kernel - 1) // 2
        self.temperature = temperature  # AudioSet checkpoints are used at their final temperature, 1
        self.residuals = nn.Sequential(nn.Linear(context, k))
        # He init (fan-in) per kernel; checkpoints overwrite it
        fan_in = (c_in // groups) * kernel * kernel
        weight = torch.randn(k, c_out * fan_in) * math.sqrt(2.0 / fan_in)
        self.weight = nn.Parameter(weight.view(1, 1, k, -1))

    def forward(self, x: torch.Tensor, g: tuple) -> torch.Tensor:
        b, _, f, t = x.shape
        attention = torch.softmax(self.residuals(g[0].view(b, -1)) / self.temperature, dim=-1)  # (b, k)
        kernels = (attention @ self.weight[0, 0]).view(b * self.c_out, self.c_in // self.groups,
                                                       self.kernel, self.kernel)
        # fold the batch into groups so that every sample is convolved with its own kernel
        out = F.conv2d(x.reshape(1, b * self.c_in, f, t), kernels.to(x.dtype), stride=self.stride,
                       padding=self.padding, groups=self.groups * b)
        return out.view(b, self.c_out, out.shape[-2], out.shape[-1])


class DyReLUB(nn.Module):
    """Dynamic ReLU (variant B): per-channel max of M context-predicted linear maps."""

    def __init__(self, channels: int, context: int, m: int = 2) -> None:
        super().__init__()
        self.channels, self.m = channels, m
        self.coef_net = nn.Sequential(nn.Linear(context, 2 * m * channels))
        self.register_buffer("lambdas", torch.tensor([1.0] * m + [0.5] * m))
        self.register_buffer("init_v", torch.tensor([1.0] + [0.0] * (2 * m - 1)))

    def forward(self, x: torch.Tensor, g: tuple) -> torch.Tensor:
        theta = 2 * torch.sigmoid(self.coef_net(g[0].view(x.shape[0], -1))) - 1
        coefs = theta.view(-1, self.channels, 1, 1, 2 * self.m) * self.lambdas + self.init_v
        mapped = x.unsqueeze(-1) * coefs[..., :self.m] + coefs[..., self.m:]
        return mapped.amax(dim=-1)


class ContextGen(nn.Module):
    """Context from frequency- and time-pooled input: a vector for Dy-Conv/Dy-ReLU, sequences for CA."""

    def __init__(self, context: int, c_in: int, c_exp: int, stride: int) -> None:
        super().__init__()
        self.joint_conv = nn.Conv2d(c_in, context, 1, bias=False)
        self.joint_norm = nn.BatchNorm2d(context, eps=0.001, momentum=0.01)
        self.conv_f = nn.Conv2d(context, c_exp, 1)
        self.conv_t = nn.Conv2d(context, c_exp, 1)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> tuple:
        cf = x.mean(dim=3, keepdim=True)                      # (b, c, f, 1)
        ct = x.mean(dim=2, keepdim=True).transpose(2, 3)      # (b, c, t, 1)
        f = cf.shape[2]
        joint = F.hardswish(self.joint_norm(self.joint_conv(torch.cat([cf, ct], dim=2))))
        h_cf, h_ct = joint[:, :, :f], joint[:, :, f:].transpose(2, 3)
        h_c = joint.mean(dim=2, keepdim=True)
        if self.stride > 1:  # follow the block's downsampling (avg pool k3, zero padding counted)
            h_cf = F.avg_pool2d(h_cf, (3, 1), (self.stride, 1), (1, 0))
            h_ct = F.avg_pool2d(h_ct, (1, 3), (1, self.stride), (0, 1))
        return h_c, self.conv_f(h_cf), self.conv_t(h_ct)


class DyBlock(nn.Module):
    """The official DY_Block with its defaults (Dy-Conv k=4, Dy-ReLU M=2, coordinate attention)."""

    def __init__(self, c_in: int, kernel: int, c_exp: int, c_out: int, use_se: bool, hswish: bool,
                 stride: int, width: float) -> None:
        super().__init__()
        context = int(np.clip(make_divisible(c_exp // 4), make_divisible(32 * width), make_divisible(128 * width)))
        self.act = F.hardswish if hswish else F.relu
        self.expand = c_exp != c_in
        if self.expand:
            self.exp_conv = DynamicConv(c_in, c_exp, context, 1)
            self.exp_norm = nn.BatchNorm2d(c_exp, eps=0.001, momentum=0.01)
        self.depth_conv = DynamicConv(c_exp, c_exp, context, kernel, stride, groups=c_exp)
        self.depth_norm = nn.BatchNorm2d(c_exp, eps=0.001, momentum=0.01)
        self.depth_act = DyReLUB(c_exp, context)
        self.proj_conv = DynamicConv(c_exp, c_out, context, 1)
        self.proj_norm = nn.BatchNorm2d(c_out, eps=0.001, momentum=0.01)
        self.context_gen = ContextGen(context, c_in, c_exp, stride)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.context_gen(x)
        out = x
        if self.expand:
            out = self.act(self.exp_norm(self.exp_conv(out, g)))
        out = self.depth_act(self.depth_norm(self.depth_conv(out, g)), g)
        out = out * torch.sigmoid(g[1]) * torch.sigmoid(g[2])  # coordinate attention
        out = self.proj_norm(self.proj_conv(out, g))
        return out + x if self.residual else out


class DyMN(nn.Module):
    """Dynamic MobileNet as in EfficientAT (`in_c`, `layers.0..14`, `out_c`, `classifier.*`)."""

    def __init__(self, width: float) -> None:
        super().__init__()
        blocks = scaled_blocks(width)
        self.in_c = conv_bn_act(1, blocks[0][0], 3, 2)
        self.layers = nn.ModuleList([DyBlock(*cfg, width=width) for cfg in blocks])
        last_in = blocks[-1][3]
        self.out_c = conv_bn_act(last_in, 6 * last_in, 1)
        self.classifier = classifier_head(6 * last_in, make_divisible(1280 * width))

    def feature_map(self, spec: torch.Tensor) -> torch.Tensor:
        x = self.in_c(spec)
        for layer in self.layers:
            x = layer(x)
        return self.out_c(x)


# -- encoders ------------------------------------------------------------------------------------
class EfficientATModel(nn.Module):
    """Front end + network; the state dict keys are the network's own (no prefix)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.mel = MelFrontEnd()

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.net.feature_map(self.mel(audio)[:, None])


class _EfficientAT(Encoder):
    sample_rate = 32000
    frame_hop_s = 32 * 320 / 32000  # five stride-2 stages over 10 ms hops
    frame_offset_s = 0.0  # padded stride-2 convs keep frame j on STFT frame 32 j, centred on sample 32 j * hop
    default_pooling = "mean"
    needs_checkpoint = True
    width: float = 1.0
    dynamic: bool = False
    front_end = ("model.mel",)

    def __init__(self, checkpoint=None, **kwargs) -> None:
        super().__init__(checkpoint, **kwargs)
        net = DyMN(self.width) if self.dynamic else MN(self.width)
        state = extract_state_dict(load_checkpoint(self.checkpoint, trust_checkpoint=self.trust_checkpoint))
        load_strict(net, state, self.checkpoint)
        self.model = EfficientATModel(net)
        self.to_device()

    def frames(self, audio: torch.Tensor) -> torch.Tensor:
        fmap = self.model(audio)                 # (B, C, F', T')
        return fmap.mean(dim=2).transpose(1, 2)  # (B, T', C)

    @torch.inference_mode()
    def tag(self, audio: np.ndarray | torch.Tensor) -> torch.Tensor:
        """AudioSet logits `(B, 527)` (apply a sigmoid for probabilities), as the official head gives."""
        x = torch.as_tensor(audio, dtype=torch.float32)
        x = (x[None] if x.ndim == 1 else x).to(self.device)
        with self._autocast():
            return self.model.net.classifier(self.model(x)).float()

    def block_dims(self) -> tuple[int, ...]:
        blocks = scaled_blocks(self.width)
        return (blocks[0][0],) + tuple(b[3] for b in blocks)  # the stem, then the 15 blocks' outputs

    def config(self) -> dict:
        return {"arch": "dymn" if self.dynamic else "mn", "width": self.width, "frontend": "mel128_32k_v1"}


# MN's stem and first four blocks (up to the first squeeze-excitation block) amplify bf16
# rounding: with them in bf16, the released mn04 on CirCor windows gives cosine 0.996 to fp32; with
# them in fp32, 0.9999 (the later blocks, at a quarter of the resolution, tolerate bf16). DyMN
# needs none on generated weights (0.99998); no released DyMN weights were at hand to check.
_BF16_FP32 = {False: tuple(f"net.features.{i}" for i in range(5)), True: ()}
# layers: the stem and the 15 inverted-residual blocks; the last 1x1 conv is the embedding (layer 16)
_LAYERS = {False: tuple(f"net.features.{i}" for i in range(16)),
           True: ("net.in_c",) + tuple(f"net.layers.{i}" for i in range(15))}


# the released AudioSet weights' mAP, part of their published file names (efficientat_mn04_as_mAP_432.pt)
_MAP = {"mn04": 432}


def _variant(name: str, width: float, dynamic: bool, bf16_safe: bool = False) -> type[Encoder]:
    cls = type(f"EfficientAT_{name}", (_EfficientAT,),
               {"width": width, "dynamic": dynamic, "feature_dim": embedding_dim(width),
                "weight_file": f"efficientat_{name}_as_mAP_{_MAP[name]}.pt" if name in _MAP else None,
                "bf16_fp32_modules": _BF16_FP32[dynamic], "layer_modules": _LAYERS[dynamic], "bf16_safe": bf16_safe,
                "__doc__": f"EfficientAT {name}: width {width}, {embedding_dim(width)}-d embedding."})
    return register(name)(cls)


# bf16_safe only where the check of docs/speed.md, bf16 safety (full CirCor in both precisions:
# cosine >= 0.999 on real windows, probe scores within noise) passed with released weights: mn04.
_variant("mn04", 0.4, dynamic=False, bf16_safe=True)
for _name, _width in (("mn05", 0.5), ("mn10", 1.0), ("mn20", 2.0), ("mn30", 3.0), ("mn40", 4.0)):
    _variant(_name, _width, dynamic=False)
for _name, _width in (("dymn04", 0.4), ("dymn10", 1.0), ("dymn20", 2.0)):
    _variant(_name, _width, dynamic=True)
