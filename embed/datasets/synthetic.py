"""A small synthetic dataset in CirCor's exact layout, for the demo and the tests.

Heart beats are damped low-frequency tones for S1 and S2; a murmur is band-limited noise in
systole (or, less often, diastole) at the patient's murmur locations; "Unknown" patients have
recordings drowned in broadband noise and rubbing. Every file CirCor has is written: the
patient `.txt`, `training_data.csv`, and per recording `.wav` (4 kHz, 16-bit), `.hea`, `.tsv`.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import butter, sosfilt

from .circor import LOCATIONS, TXT_FIELDS

RATE = 4000


def _tone(rng: np.random.Generator, n: int, freq: float, decay: float) -> np.ndarray:
    t = np.arange(n) / RATE
    return np.sin(2 * np.pi * freq * t + rng.uniform(0, np.pi)) * np.exp(-t * decay)


def heart_sound(rng: np.random.Generator, duration_s: float, murmur: str | None, noisy: bool,
                murmur_gain: float = 0.3) -> tuple[np.ndarray, list[tuple[float, float, int]]]:
    """One recording and its S1/systole/S2/diastole segmentation rows."""
    n = int(duration_s * RATE)
    x = np.zeros(n)
    rows: list[tuple[float, float, int]] = []
    period = 60.0 / rng.uniform(70, 140)
    sos = butter(4, [150, 450], btype="band", fs=RATE, output="sos")
    t = rng.uniform(0.05, 0.3)
    while t + period < duration_s:
        s1, sys_end = t, t + 0.35 * period
        s1_len, s2_len = 0.1, 0.08
        i = int(s1 * RATE)
        x[i:i + int(s1_len * RATE)] += _tone(rng, int(s1_len * RATE), rng.uniform(40, 70), 35)
        j = int(sys_end * RATE)
        x[j:j + int(s2_len * RATE)] += 0.7 * _tone(rng, int(s2_len * RATE), rng.uniform(60, 100), 45)
        if murmur in ("systolic", "diastolic"):
            a, b = (s1 + s1_len, sys_end) if murmur == "systolic" else (sys_end + s2_len, t + 0.9 * period)
            seg = sosfilt(sos, rng.standard_normal(int((b - a) * RATE)))
            x[int(a * RATE):int(a * RATE) + len(seg)] += murmur_gain * seg * np.hanning(len(seg))
        rows += [(s1, s1 + s1_len, 1), (s1 + s1_len, sys_end, 2), (sys_end, sys_end + s2_len, 3),
                 (sys_end + s2_len, t + period, 4)]
        t += period * rng.uniform(0.97, 1.03)
    # stethoscope and room noise varies between recordings, so murmurs are not trivially audible
    x += rng.uniform(0.01, 0.12) * rng.standard_normal(n)
    if noisy:
        x += rng.uniform(0.2, 0.6) * rng.standard_normal(n) + 0.3 * np.sin(2 * np.pi * 3 * np.arange(n) / RATE)
    x = 0.5 * x / (np.abs(x).max() + 1e-9)
    return x.astype(np.float32), rows


def make_dataset(out_dir: str | Path, n_patients: int = 60, seed: int = 0,
                 class_mix: tuple[float, float, float] = (0.3, 0.15, 0.55)) -> Path:
    """Write a CirCor-format dataset under `out_dir` and return `out_dir`."""
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    folder = out / "training_data"
    folder.mkdir(parents=True, exist_ok=True)
    header = ["Patient ID", "Recording locations:", *TXT_FIELDS]
    rows = []
    for k in range(n_patients):
        pid = str(10000 + 37 * k)
        murmur = rng.choice(["Present", "Unknown", "Absent"], p=list(class_mix))
        locations = list(rng.choice(LOCATIONS[:4], size=rng.integers(2, 5), replace=False))
        if rng.random() < 0.1:
            locations.append(locations[0])  # a repeated location becomes LOC_1, LOC_2
        murmur_locs = sorted(rng.choice(locations, size=rng.integers(1, len(set(locations)) + 1),
                                        replace=False)) if murmur == "Present" else []
        timing = "systolic" if rng.random() < 0.85 else "diastolic"
        murmur_gain = rng.uniform(0.03, 0.4)
        stems, seen = [], {}
        for loc in locations:
            seen[loc] = seen.get(loc, 0) + 1
        counter: dict[str, int] = {}
        for loc in locations:
            counter[loc] = counter.get(loc, 0) + 1
            stem = f"{pid}_{loc}" + (f"_{counter[loc]}" if seen[loc] > 1 else "")
            stems.append((loc, stem))
            x, segs = heart_sound(rng, rng.uniform(6, 20), timing if loc in murmur_locs else None,
                                  murmur == "Unknown" and rng.random() < 0.7, murmur_gain)
            sf.write(folder / f"{stem}.wav", x, RATE, subtype="PCM_16")
            (folder / f"{stem}.hea").write_text(
                f"{stem} 1 {RATE} {len(x)}\n{stem}.wav 16+44 1 16 0 0 0 0 {loc}\n")
            (folder / f"{stem}.tsv").write_text("".join(f"{a:.3f}\t{b:.3f}\t{c}\n" for a, b, c in segs))
        fields = {
            "Age": str(rng.choice(["Neonate", "Infant", "Child", "Adolescent"])),
            "Sex": str(rng.choice(["Male", "Female"])),
            "Height": f"{rng.uniform(50, 170):.1f}", "Weight": f"{rng.uniform(3, 60):.1f}",
            "Pregnancy status": "False", "Murmur": str(murmur),
            "Murmur locations": "+".join(murmur_locs) if murmur_locs else "nan",
            "Most audible location": murmur_locs[0] if murmur_locs else "nan",
            "Systolic murmur timing": "Holosystolic" if murmur_locs and timing == "systolic" else "nan",
            "Outcome": "Abnormal" if murmur != "Absent" or rng.random() < 0.3 else "Normal",
            "Campaign": "CC2014" if k % 3 else "CC2015", "Additional ID": "nan",
        }
        fields = {key: fields.get(key, "nan") for key in TXT_FIELDS}
        lines = [f"{pid} {len(stems)} {RATE}"]
        lines += [f"{loc} {stem}.hea {stem}.wav {stem}.tsv" for loc, stem in stems]
        lines += [f"#{key}: {value}" for key, value in fields.items()]
        (folder / f"{pid}.txt").write_text("\n".join(lines) + "\n")
        rows.append([pid, "+".join(loc for loc, _ in stems), *fields.values()])
    with open(out / "training_data.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return out
