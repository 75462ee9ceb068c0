"""The GPU check, `pipeline.py gpu-check`: for M2D ViT-B and BEATs (randomly initialised
checkpoints written in the official layouts) and mn04 (its real weights, when given), the
`benchmark` command on a sample of recordings and a full `extract` of the dataset with decoding,
timed by the wall clock, at each precision.

`device="cpu"` runs the same code on a CPU (with small `windows`, `recordings` and
`extract_recordings`), so CI executes every line of the check but the CUDA calls themselves,
which `device.type` guards (`encoders/transfer.py`, `Encoder.auto_batch_size`).
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence

import torch

GpuCheckEncoder = Literal["m2d", "beats", "mn04"]
ENCODERS: tuple[GpuCheckEncoder, ...] = ("m2d", "beats", "mn04")
# the encoders that get random weights; mn04's must be given (its front end is calibrated on them)
RANDOM_WEIGHTS = ("m2d", "beats")


def default_precisions(device: torch.device) -> tuple[str, ...]:
    """fp16 and fp32 on CUDA; on a CPU, bf16 and fp32 where it computes bf16 natively, else fp32
    alone (emulated bf16 matrix products ran 70x slower than fp32 on an AVX2-only CPU)."""
    from .encoders.base import native_bf16
    if device.type == "cuda":
        return ("fp16", "fp32")
    return ("bf16", "fp32") if native_bf16() else ("fp32",)


@dataclass
class GpuCheckReport:
    lines: list[str] = field(default_factory=list)  # one per benchmark failure and per full extract
    failed: list[str] = field(default_factory=list)

    def add(self, line: str, failed: bool = False) -> None:
        self.lines.append(line + (" (FAILED, see above)" if failed else ""))
        if failed:
            self.failed.append(line)
        print(self.lines[-1], flush=True)


def run_gpu_check(
    data: str | Path,
    out: str | Path,
    benchmark_command: Callable[[list[str]], int],
    *,
    device: str = "cuda",
    encoders: Sequence[GpuCheckEncoder] = ENCODERS,
    mn04: str | Path | None = None,
    precisions: Sequence[str] | None = None,
    windows: int = 2048,
    recordings: int = 64,
    extract_recordings: int | None = None,
    batch_size: str = "auto",
    workers: int = 8,
    dataset: str = "circor",
) -> GpuCheckReport:
    """Run the check, write `out/gpu-check.txt` (one line per full extract) and
    `out/benchmark-NAME.csv`. `benchmark_command(argv)` is the command line's own entry point
    (`pipeline.main`), so the benchmark is exactly what a user runs; it is passed in because
    `embed` never imports the command line. `extract_recordings`: the first N recordings (all
    when None). Raises where the device is missing; a failed benchmark or extract is reported."""
    from .datasets import load_dataset
    from .encoders import create
    from .encoders.base import resolve_device
    from .extract import extract
    from .random_checkpoints import write_random_checkpoint

    target = resolve_device(device)  # "cuda" without a CUDA device: a clear error, here
    unknown = sorted(set(encoders) - set(ENCODERS))
    if unknown:
        raise ValueError(f"gpu-check encoders are {', '.join(ENCODERS)}; got {', '.join(unknown)}")
    precisions = tuple(precisions or default_precisions(target))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoints = {name: (write_random_checkpoint(name, out / "weights") if name in RANDOM_WEIGHTS else mn04)
                   for name in encoders}
    all_recordings = load_dataset(dataset, data).recordings()
    todo = all_recordings[:extract_recordings] if extract_recordings is not None else all_recordings
    report = GpuCheckReport()
    for name, checkpoint in checkpoints.items():
        if checkpoint is None:
            print(f"{name}: skipped (no --mn04 checkpoint given)")
            continue
        argv = ["benchmark", "--encoder", name, "--checkpoint", str(checkpoint), "--device", str(target),
                "--data", str(data), "--dataset", dataset, "--precision", ",".join(precisions),
                "--batch-size", batch_size, "--windows", str(windows), "--recordings", str(recordings),
                "--accuracy-windows", str(min(64, windows)), "--compare", "--out", str(out / f"benchmark-{name}.csv")]
        if benchmark_command(argv):
            report.add(f"{name}: benchmark", failed=True)
        for precision in precisions:
            encoder = create(name, checkpoint, device=str(target), precision=precision)
            # a fresh cache: every window is computed
            with tempfile.TemporaryDirectory(prefix=f"cache-{name}-{precision}-", dir=out) as cache:
                start = time.perf_counter()
                result = extract(encoder, todo, cache, batch_size=None if batch_size == "auto" else int(batch_size),
                                 workers=workers)
                wall = time.perf_counter() - start
            errors = [p for p in result.problems if p.severity == "error"]
            for problem in errors[:5]:
                print(f"  {problem}", flush=True)
            report.add(f"{name} {precision} on {target}: full extract of {len(todo)} recordings, {result.windows} "
                       f"windows in {wall:.1f} s wall, decode included ({result.windows / max(wall, 1e-9):.1f} "
                       f"windows/s), {len(errors)} failed", failed=bool(errors) or result.done == 0)
    (out / "gpu-check.txt").write_text("\n".join(report.lines) + "\n")
    return report
