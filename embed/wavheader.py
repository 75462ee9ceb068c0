"""What a WAV file's header claims, read without libsndfile, to explain what it cannot open and
to see a header that promises more audio than the file holds (libsndfile silently reads less)."""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path


@dataclass
class WavHeader:
    sample_rate: int
    channels: int
    bits: int
    data_bytes_claimed: int  # the data chunk's size field
    data_bytes_present: int  # bytes actually in the file after the data chunk's header

    @property
    def frame_bytes(self) -> int:
        return max(1, self.channels * max(1, self.bits // 8))

    @property
    def frames_claimed(self) -> int:
        return self.data_bytes_claimed // self.frame_bytes

    @property
    def frames_present(self) -> int:
        return self.data_bytes_present // self.frame_bytes


def read_wav_header(path: str | Path, max_chunks: int = 64) -> WavHeader | None:
    """The fmt and data chunk fields of a RIFF/WAVE file; None when it is not one or is too damaged."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            if fh.read(4) != b"RIFF" or (fh.read(4), fh.read(4))[1] != b"WAVE":
                return None
            fmt = None
            for _ in range(max_chunks):
                head = fh.read(8)
                if len(head) < 8:
                    return None
                chunk, length = head[:4], struct.unpack("<I", head[4:])[0]
                if chunk == b"fmt " and length >= 16:
                    _, channels, rate, _, _, bits = struct.unpack("<HHIIHH", fh.read(16))
                    fmt = (rate, channels, bits)
                    fh.seek(length - 16 + (length & 1), 1)
                elif chunk == b"data":
                    if fmt is None:
                        return None
                    return WavHeader(*fmt, length, max(0, size - fh.tell()))
                else:
                    fh.seek(length + (length & 1), 1)
    except (OSError, struct.error):
        return None
    return None
