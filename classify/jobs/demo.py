"""The `demo` job: synthetic CirCor-format data -> extract -> probe -> saved model, no downloads."""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable

from embed.datasets.circor import load_circor
from embed.datasets.synthetic import make_dataset
from embed.encoders import create
from embed.extract import extract

from classify.jobs.outputs import OutputFolder
from classify.jobs.probe import load_splits, run_probe, save_probe_model
from classify.task import Task


def run_demo(workdir: str | Path, patients: int = 60, seed: int = 0, clean: bool = False,
             say: Callable[[str], None] = print) -> None:
    """Data, cache, results and a saved model under `workdir` (a rerun reuses the data and the
    cache); each step's line goes to `say` as soon as it is done. `clean` removes `workdir` at the end."""
    start = time.perf_counter()
    work = Path(workdir)
    data = work / f"data-{patients}p-seed{seed}"
    if not (data / "training_data.csv").exists():  # written last: its presence means complete
        shutil.rmtree(data, ignore_errors=True)
        make_dataset(data, n_patients=patients, seed=seed)
    circor = load_circor(data)
    say(f"synthetic CirCor: {len(circor.patients)} patients, {len(circor.recordings())} recordings in {data}")
    report = extract(create("logmel"), circor.recordings(), work / "cache")
    say(report.summary())
    splits = load_splits(circor, "paper")
    task = Task.from_dataset(circor)
    with OutputFolder(work / "out"):  # the demo's own folder: a rerun replaces its results
        table, results = run_probe(task, ["logmel"], ["linear", "xgboost"], splits, work / "cache", work / "out")
    say(table.to_string(index=False))
    say(f"\nwrote {work / 'out'}/scores.csv and predictions.csv in {time.perf_counter() - start:.1f} s")
    manifest = save_probe_model(results, work / "model", task, circor, work / "cache", ["logmel"])
    first_split = next(iter(splits.values()))
    unseen = next(pid for pid, part in first_split.items() if part == "test")  # the saved probes never saw it
    say(f"saved the probes selected on the first split with {manifest}")
    if clean:
        shutil.rmtree(work)
        say(f"removed {work}")
    else:
        say(f"call a patient they did not see (test in that split) with\n  python pipeline.py predict --model "
            f"{work / 'model'} --input {data / 'training_data'}/{unseen}_*.wav --out {work / 'predictions'}")
