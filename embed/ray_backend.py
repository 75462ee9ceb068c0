"""`extract --backend ray`: decoding and the encoder on a Ray cluster, the cache written here.

The recordings still to embed become a Ray Dataset. Decoding, resampling and window planning
(`extract_steps.prepare`) run as CPU tasks; the encoder runs in a pool of actors (`map_batches`
with a callable class), each built once from the pickled encoder and fed several recordings per
call, which it embeds with the `WindowBatcher` the local backend uses too (`extract_steps`).
Finished recordings stream back to this process, which writes them as cache shards under the
cache's lock, exactly as the local backend does: the cache stays the one source of truth, so a
rerun skips what is cached, an actor that dies loses only the call it was running (Ray restarts
it and retries that call), and a dead driver loses only the recordings not yet flushed.

Every node reads the recordings by the paths given here: the data must sit on a filesystem all
nodes mount at the same path. Ray is imported only in here, so a plain install never needs it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cache import EmbeddingCache
from .datasets.base import Recording
from .encoders import Encoder
from .extract_steps import ExtractReport, Prepared, ShardWriter, WindowBatcher, outcome, prepare, progress_bar
from .segments import Segmentation, SegmentConfig

CODE_ROOT = Path(__file__).resolve().parents[1]
PREPARE_CPUS = 0.5  # decoding is light next to the encoder; a half CPU per task leaves room for actors


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide to run. `address`: None starts a local Ray instance (or uses the one
    this process already joined), "auto" joins the cluster started on this node with
    `ray start`, "HOST:PORT" a remote head. `actors`: encoder actors (default: one per GPU, else
    one). `recordings_per_call`: recordings each actor call embeds; an actor dying loses at most
    this many. `threads_per_actor`: torch CPU threads in each actor (default: its share of the
    CPUs); CPU kernels split their sums by thread, so embeddings equal a local run's bit for bit
    when both use the same number of threads."""
    address: str | None = None
    actors: int | None = None
    recordings_per_call: int = 16
    threads_per_actor: int | None = None
    num_cpus: int | None = None  # for a local instance only: CPUs it may use (default: all)


def connect(options: RayOptions) -> bool:
    """Join (or start) Ray; True when this call started it. Workers import this checkout first."""
    import ray
    if ray.is_initialized():
        return False
    runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(
        p for p in (str(CODE_ROOT), os.environ.get("PYTHONPATH", "")) if p)}}
    if options.address is None:
        ray.init(num_cpus=options.num_cpus, include_dashboard=False, runtime_env=runtime_env,
                 log_to_driver=False)
    else:
        ray.init(address=options.address, runtime_env=runtime_env, log_to_driver=False)
    return True


@dataclass(frozen=True)
class ActorPlan:
    actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    threads: int  # torch threads inside each actor


def plan_actors(options: RayOptions) -> ActorPlan:
    """One actor per GPU (each taking one GPU) where GPUs exist; otherwise CPU actors sharing the
    CPUs left after one decoding task, each no wider than the largest node."""
    import ray
    total = ray.cluster_resources()
    gpus = int(total.get("GPU", 0))
    actors = max(1, options.actors or gpus or 1)
    if gpus:
        return ActorPlan(actors, 1.0, 1.0 if actors <= gpus else gpus / actors, options.threads_per_actor or 1)
    node_cpus = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=1)
    cpus = max(0.25, min((total.get("CPU", 1) - PREPARE_CPUS) / actors, node_cpus - PREPARE_CPUS))
    return ActorPlan(actors, cpus, 0.0, options.threads_per_actor or max(1, int(cpus)))


# -- rows: plain columns (numbers, strings, raw little-endian bytes), nothing pickled --------------
@dataclass(frozen=True)
class RowRecording:
    """A recording rebuilt from a row: what decoding and the cache need, for any dataset."""
    recording_id: str
    group_id: str
    location: str
    wav: Path
    expected_rate: int


def _recording_row(rec: Recording) -> dict:
    return {"recording_id": rec.recording_id, "group_id": rec.group_id,
            "location": rec.location, "wav": str(rec.wav), "expected_rate": rec.expected_rate}


def _prepare_row(row: dict, sample_rate: int, segments: SegmentConfig) -> dict:
    """CPU task: decode + resample + cut windows of one recording."""
    rec = RowRecording(str(row["recording_id"]), str(row["group_id"]), str(row["location"]), Path(row["wav"]),
                       int(row["expected_rate"]))
    prep = prepare(rec, sample_rate, segments)
    windows = np.zeros((0, 0), np.float32)
    if prep.error is None:
        try:  # long recordings are streamed: read their windows here, in the CPU task
            windows = np.stack([prep.windows[i] for i in range(len(prep.windows))]).astype(np.float32)
        except Exception as err:  # noqa: BLE001 - the recording fails, the run goes on
            prep.error = f"windows not readable: {type(err).__name__}: {err}"
    plan = prep.plan if prep.error is None else Segmentation(*(np.zeros(0, np.int64),) * 3)
    return {**row, "windows": windows.tobytes(), "n_windows": len(windows),
            "starts": plan.starts.astype(np.int64).tobytes(),
            "train_index": plan.train_index.astype(np.int64).tobytes(),
            "eval_index": plan.eval_index.astype(np.int64).tobytes(),
            "notes": "\n".join(prep.notes), "error": prep.error or ""}


def _plan_of(batch: dict, i: int) -> Segmentation:
    return Segmentation(*(np.frombuffer(batch[k][i], np.int64) for k in ("starts", "train_index", "eval_index")))


def _notes_of(batch: dict, i: int) -> list[str]:
    return [n for n in str(batch["notes"][i]).split("\n") if n]


def _prepared_from(batch: dict, i: int, window: int) -> Prepared:
    """Row `i` of a batch of prepared recordings, as the Prepared the local backend makes."""
    rec = RowRecording(str(batch["recording_id"][i]), str(batch["group_id"][i]), str(batch["location"][i]),
                       Path(str(batch["wav"][i])), int(batch["expected_rate"][i]))
    error = str(batch["error"][i]) or None
    windows = None if error else np.frombuffer(batch["windows"][i], np.float32).reshape(-1, window)
    return Prepared(rec, windows, _plan_of(batch, i), _notes_of(batch, i), error)


class EncoderActor:
    """One encoder per actor, built once; each call embeds a batch of prepared recordings."""

    def __init__(self, encoder: Encoder, batch_size: int, window: int, device: str, threads: int) -> None:
        import torch
        torch.set_num_threads(threads)
        self.encoder = encoder
        self.encoder.device = torch.device(device)
        self.encoder.to_device()
        self.batch_size, self.window = batch_size, window

    def __call__(self, batch: dict) -> dict:
        batcher = WindowBatcher(self.encoder, self.batch_size)
        done: list[Prepared] = []
        for i in range(len(batch["recording_id"])):
            done += batcher.add(_prepared_from(batch, i, self.window))
        done += batcher.finish()
        out = {k: [] for k in ("recording_id", "embeddings", "dim", "starts", "train_index",
                               "eval_index", "notes", "error")}
        for prep in done:
            emb = prep.embeddings if prep.error is None else np.zeros((0, 0), np.float32)
            out["recording_id"].append(prep.recording.recording_id)
            out["embeddings"].append(np.ascontiguousarray(emb, np.float32).tobytes())
            out["dim"].append(emb.shape[1] if emb.ndim == 2 else 0)
            for key in ("starts", "train_index", "eval_index"):
                out[key].append(getattr(prep.plan, key).astype(np.int64).tobytes())
            out["notes"].append("\n".join(prep.notes))
            out["error"].append(prep.error or "")
        return {k: np.array(v, dtype=object if k in ("embeddings", "starts", "train_index", "eval_index")
                            else None) for k, v in out.items()}


def extract_on_ray(encoder: Encoder, todo: list[Recording], cache: EmbeddingCache, segments: SegmentConfig,
                   batch_size: int, flush_every: int, progress: bool, report: ExtractReport,
                   options: RayOptions) -> None:
    """Embed `todo` on Ray and write it into `cache` (whose lock the caller holds)."""
    try:
        import ray
    except ImportError:
        raise RuntimeError("--backend ray needs Ray: pip install -e '.[ray]'") from None
    import torch

    started = connect(options)
    device = encoder.device
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        plan = plan_actors(options)
        window = int(round(segments.window_s * encoder.sample_rate))
        if device.type != "cpu":  # shipped to the actors from the CPU; each moves it to its own device
            encoder.device = torch.device("cpu")
            encoder.to_device()
        by_id = {r.recording_id: r for r in todo}
        dataset = (ray.data.from_items([_recording_row(r) for r in todo],
                                       override_num_blocks=max(1, min(len(todo), 200)))
                   .map(_prepare_row, fn_kwargs={"sample_rate": encoder.sample_rate, "segments": segments},
                        num_cpus=PREPARE_CPUS)
                   .map_batches(EncoderActor, batch_size=options.recordings_per_call, batch_format="numpy",
                                fn_constructor_kwargs={"encoder": encoder, "batch_size": batch_size,
                                                       "window": window, "threads": plan.threads,
                                                       "device": "cuda" if plan.gpus_per_actor else "cpu"},
                                compute=ray.data.ActorPoolStrategy(size=plan.actors), num_cpus=plan.cpus_per_actor,
                                num_gpus=plan.gpus_per_actor or None))
        writer = ShardWriter(cache, report, flush_every, progress_bar(encoder, len(todo), progress))
        written: set[str] = set()
        try:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                for i in range(len(batch["recording_id"])):
                    rid = str(batch["recording_id"][i])
                    if rid in written:  # a retried call may repeat a recording: one copy only
                        continue
                    written.add(rid)
                    # problems name the file as this process sees it
                    prep = Prepared(by_id[rid], None, _plan_of(batch, i), _notes_of(batch, i),
                                    str(batch["error"][i]) or None)
                    if prep.error is None:
                        prep.embeddings = np.frombuffer(batch["embeddings"][i], np.float32).reshape(
                            -1, int(batch["dim"][i])).copy()
                        report.windows += len(prep.embeddings)
                    writer.add(*outcome(prep))
        finally:
            writer.close()
    finally:
        if device.type != "cpu":
            encoder.device = device
            encoder.to_device()
        if started:
            ray.shutdown()
