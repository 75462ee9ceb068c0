"""Randomly initialised checkpoints in the official file layouts, for timing encoders whose
weights are not at hand (`benchmark`, the GPU check). Speed does not depend on the values; the
embeddings of these files mean nothing.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, Literal

import torch

RandomEncoder = Literal["m2d", "ast", "beats", "atst_frame", "cnn14"]
# BEATs_iter3(+) configuration as published in its 'cfg' entry (the settings that change compute)
BEATS_ITER3_CFG = {"input_patch_size": 16, "relative_position_embedding": True, "gru_rel_pos": True, "deep_norm": True,
                   "max_distance": 800}


def _m2d(dest: Path) -> Path:
    from .encoders.m2d import M2DViT
    model = M2DViT([80, 608], [16, 16], "16k")
    with torch.no_grad():  # the pre-training init draws these; zeros would hide nothing but look odd
        model.cls_token.normal_(std=0.02)
        model.pos_embed.normal_(std=0.02)
    path = dest / "m2d_vit_base-80x608p16x16-random" / "checkpoint-300.pth"  # the folder names the config
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "args": argparse.Namespace(model="m2d_vit_base")}, path)
    return path


def _ast(dest: Path) -> Path:
    from .encoders.ast import ASTModel
    path = dest / "ast_random.pth"
    torch.save(ASTModel(1024).state_dict(), path)
    return path


def _beats(dest: Path) -> Path:
    from .encoders.beats import DEFAULT_CFG, BEATsModel
    cfg = {**DEFAULT_CFG, **BEATS_ITER3_CFG}
    path = dest / "BEATs_random.pt"
    torch.save({"cfg": cfg, "model": BEATsModel(cfg).state_dict()}, path)
    return path


def _atst(dest: Path) -> Path:
    from .encoders.atst import PREFIX, FrameAST
    encoder = FrameAST(768, 12, heads=12, n_positions=251, patch_h=64, patch_w=4, nprompt=0)
    path = dest / "atstframe_random.ckpt"
    torch.save({"state_dict": {PREFIX + k: v for k, v in encoder.state_dict().items()},
                "hyper_parameters": {"patch_h": 64, "patch_w": 4, "pos_type": "cut"}}, path)
    return path


def _cnn14(dest: Path) -> Path:
    from .encoders.cnn14 import Cnn14
    path = dest / "Cnn14_random.pth"
    torch.save({"model": Cnn14().state_dict()}, path)
    return path


WRITERS: dict[str, Callable[[Path], Path]] = {"m2d": _m2d, "ast": _ast, "beats": _beats,
                                              "atst_frame": _atst, "cnn14": _cnn14}


def write_random_checkpoint(name: RandomEncoder, dest: str | Path, seed: int = 0) -> Path:
    """Write a randomly initialised checkpoint of encoder `name` under `dest`; returns its path
    (the same values for the same seed)."""
    if name not in WRITERS:
        raise ValueError(f"no random checkpoint for {name!r}; available: {', '.join(WRITERS)}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    return WRITERS[name](dest)
