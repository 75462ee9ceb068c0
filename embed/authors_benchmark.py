"""heartprobe against the authors' own extraction code, on the same windows, in one process.

    python -m embed.authors_benchmark --m2d M2D_DIR --evar EVAR_DIR --byola BYOLA_DIR [--data D]

M2D_DIR, EVAR_DIR and BYOLA_DIR are checkouts, outside this repository, of
https://github.com/nttcslab/m2d (`examples/portable_m2d.py`: `PortableM2D`),
https://github.com/nttcslab/eval-audio-repr (EVAR: `evar.ar_byola.AR_BYOLA`, `config/byola.yaml`) and
https://github.com/nttcslab/byol-a (the network EVAR imports as `external.byol_a`, and the d512
weights, `pretrained_weights/AudioNTT2020-BYOLA-64x96d512.pth`). Their code is imported from there
at run time, never copied here; it needs `timm einops nnAudio` (M2D) and `torchaudio easydict
pyyaml nnAudio` (EVAR) in the environment. M2D runs on a randomly initialised checkpoint in the
official layout unless `--m2d-weights` names one (speed does not depend on the values).

Each model embeds the same windows (`--data`: real recordings' windows, as `extract` cuts them;
else noise) in batches of `--batch-size` at `--precision` (bf16: CPU autocast for the authors'
code, heartprobe's own bf16 path for ours), clip embeddings as each side defines them (M2D: the
time mean; BYOL-A: mean + max). Rounds alternate between the two so that load from other jobs
falls on both alike; it prints per side the best round's windows/s, by wall and by this process's
CPU time, the ratio, and the cosine between the two sides' embeddings (same weights, same maths).
Figures, not assertions.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch

from .benchmark import decode_windows, noise_windows, sample_recordings
from .encoders import Encoder, create
from .random_checkpoints import write_random_checkpoint

Precision = Literal["fp32", "bf16"]
BYOLA_D512 = Path("pretrained_weights") / "AudioNTT2020-BYOLA-64x96d512.pth"


@dataclass
class SideBySide:
    model: str
    precision: str
    windows: int
    authors_s: float
    ours_s: float
    authors_cpu_s: float
    ours_cpu_s: float
    cosine_min: float

    def row(self) -> str:
        return (f"{self.model:6s} {self.precision}: authors {self.windows / self.authors_s:7.1f} windows/s, "
                f"heartprobe {self.windows / self.ours_s:7.1f} windows/s, speed-up {self.authors_s / self.ours_s:.2f}x "
                f"(by CPU time {self.authors_cpu_s / self.ours_cpu_s:.2f}x); cosine min {self.cosine_min:.5f} "
                f"over {self.windows} windows")


def _autocast(precision: Precision):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cpu", dtype=torch.bfloat16)


def authors_m2d(m2d_dir: Path, weights: Path, precision: Precision) -> Callable[[np.ndarray], np.ndarray]:
    sys.path.insert(0, str(m2d_dir / "examples"))
    from portable_m2d import PortableM2D  # the authors' runtime
    model = PortableM2D(str(weights)).eval()

    def embed(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), _autocast(precision):
            return model.get_scene_embeddings(torch.from_numpy(batch)).float().numpy()
    return embed


def authors_byola(evar_dir: Path, byola_dir: Path, weights: Path, norm_stats: tuple[float, float],
                  precision: Precision) -> Callable[[np.ndarray], np.ndarray]:
    import yaml
    from easydict import EasyDict
    # EVAR imports BYOL-A as `external.byol_a`: a folder of that name pointing at the checkout
    work = Path(tempfile.mkdtemp(prefix="evar-"))
    (work / "external").mkdir()
    os.symlink(byola_dir.resolve(), work / "external" / "byol_a")
    sys.path[:0] = [str(evar_dir.resolve()), str(work)]
    from evar.ar_byola import AR_BYOLA
    cfg = EasyDict(yaml.safe_load((evar_dir / "config" / "byola.yaml").read_text()))
    cfg.weight_file, cfg.feature_d = str(weights), 512
    model = AR_BYOLA(cfg).eval()
    model.norm_stats = torch.tensor(norm_stats)  # what its `precompute` sets from training data

    def embed(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), _autocast(precision):
            return model(torch.from_numpy(batch)).float().numpy()
    return embed


def time_side_by_side(name: str, authors: Callable[[np.ndarray], np.ndarray], ours: Encoder, windows: np.ndarray,
                      batch_size: int, rounds: int = 3) -> SideBySide:
    """Both sides over all `windows` in batches, `rounds` times alternating after one warm-up batch
    each; the best round of each."""
    batches = [windows[i:i + batch_size] for i in range(0, len(windows), batch_size)]
    sides = {"authors": authors, "ours": ours.embed}
    for embed in sides.values():
        embed(batches[0])
    best = {side: (np.inf, np.inf) for side in sides}
    outputs: dict[str, np.ndarray] = {}
    for _ in range(rounds):
        for side, embed in sides.items():
            start, cpu = time.perf_counter(), time.process_time()
            out = [embed(b) for b in batches]
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
            best[side] = (min(best[side][0], wall), min(best[side][1], cpu))
            outputs[side] = np.concatenate(out)
    a, b = outputs["authors"], outputs["ours"]
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return SideBySide(name, ours.precision, len(windows), best["authors"][0], best["ours"][0],
                      best["authors"][1], best["ours"][1], float(cosine.min()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m embed.authors_benchmark", description=__doc__.split("\n\n")[0])
    p.add_argument("--m2d", type=Path, help="checkout of nttcslab/m2d (omit to skip M2D)")
    p.add_argument("--evar", type=Path, help="checkout of nttcslab/eval-audio-repr (omit to skip BYOL-A)")
    p.add_argument("--byola", type=Path, help="checkout of nttcslab/byol-a (with --evar)")
    p.add_argument("--m2d-weights", type=Path, default=None,
                   help="an M2D checkpoint in its official folder (default: random weights, official layout)")
    p.add_argument("--byola-weights", type=Path, default=None, help=f"default: BYOLA_DIR/{BYOLA_D512}")
    p.add_argument("--data", default=None, help="windows of a sample of this dataset's recordings (else noise)")
    p.add_argument("--dataset", default="circor")
    p.add_argument("--recordings", type=int, default=8)
    p.add_argument("--windows", type=int, default=32, help="windows embedded per round")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    args = p.parse_args(argv)
    if args.evar is not None and args.byola is None:
        p.error("--evar needs --byola (the BYOL-A checkout EVAR imports)")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, precision {args.precision}")
    rows = []

    def windows_for(encoder: Encoder) -> np.ndarray:
        if args.data is None:
            return noise_windows(encoder, args.windows)
        audio, _ = decode_windows(sample_recordings(args.data, args.recordings, dataset=args.dataset), encoder)
        return audio[np.arange(args.windows) % len(audio)]

    if args.m2d is not None:
        with tempfile.TemporaryDirectory(prefix="m2d-random-") as tmp:
            weights = args.m2d_weights or write_random_checkpoint("m2d", tmp)
            ours = create("m2d", weights, precision=args.precision)
            authors = authors_m2d(args.m2d, weights, args.precision)
            rows.append(time_side_by_side("m2d", authors, ours, windows_for(ours), args.batch_size, args.rounds))
        print(rows[-1].row(), flush=True)
    if args.evar is not None:
        weights = args.byola_weights or args.byola / BYOLA_D512
        if not weights.is_file():
            raise SystemExit(f"{weights}: BYOL-A weights not found (pass --byola-weights)")
        ours = create("byola", weights, precision=args.precision)
        authors = authors_byola(args.evar, args.byola, weights, ours.norm_stats, args.precision)
        rows.append(time_side_by_side("byola", authors, ours, windows_for(ours), args.batch_size, args.rounds))
        print(rows[-1].row(), flush=True)
    if not rows:
        p.error("nothing to time: give --m2d and/or --evar with --byola")
    return 0


if __name__ == "__main__":
    sys.exit(main())
