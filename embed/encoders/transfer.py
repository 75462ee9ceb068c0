"""Batches between host and device, one code path for every device.

On CUDA the host side of each copy lives in pinned memory and the copies do not block, so the
host goes on decoding and stacking the next batch while the device computes this one; a copy
back to the host is finished only when its result is asked for. On a CPU the very same lines
run with plain memory and blocking copies: `device.type` guards only the calls a CPU cannot make
(pinning, CUDA events), so CPU tests exercise everything else.
"""
from __future__ import annotations

import numpy as np
import torch


def pins_memory(device: torch.device) -> bool:
    """Whether host buffers for `device` are pinned and its copies non-blocking (CUDA only)."""
    return device.type == "cuda"


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`x` (on the host) on `device`; on CUDA through pinned memory, without blocking the host."""
    pinned = pins_memory(device)
    if pinned:
        x = x.pin_memory()
    return x.to(device, non_blocking=pinned)


class HostCopy:
    """A device tensor's copy into host memory, started without waiting for the device;
    `result()` waits for that copy alone and gives it as numpy."""

    def __init__(self, x: torch.Tensor) -> None:
        pinned = pins_memory(x.device)
        self.host = torch.empty(x.shape, dtype=x.dtype, pin_memory=pinned)
        self.host.copy_(x, non_blocking=pinned)
        self._ready = None
        if pinned:  # marks the copy's end in the device's stream of work
            self._ready = torch.cuda.Event()
            self._ready.record()

    def result(self) -> np.ndarray:
        if self._ready is not None:
            self._ready.synchronize()
        return self.host.numpy()


class Ready:
    """A result already on the host, with `HostCopy`'s interface."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def result(self) -> np.ndarray:
        return self.array
