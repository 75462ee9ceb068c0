"""The one encoder factory of the jobs that apply a saved model: the encoder a saved probe or a
recipe's cache needs, and the one check that it would embed as the one the model was trained on."""
from __future__ import annotations

from pathlib import Path

from embed.segments import SegmentConfig

from classify.recipes.recipe import ExtractSpec


def refuse_changed(saved: dict, now: dict, what: str, hint: str = "") -> None:
    """Refuse an encoder whose cache configuration differs from the saved one in anything but the
    precision, which follows the device (fp16 on CUDA; on a CPU bf16 for bf16-safe encoders where
    native, else fp32). `what` opens the message; `hint` is added when the weights differ."""
    differ = sorted(k for k in set(saved) | set(now) if k != "precision" and saved.get(k) != now.get(k))
    if differ:
        detail = "; ".join(f"{k}: trained {saved.get(k)!r}, now {now.get(k)!r}" for k in differ)
        extra = hint if "checkpoint_sha256" in differ else ""
        raise ValueError(f"{what}: {detail}{extra}")


def segment_config(config: dict) -> SegmentConfig:
    """The window plan a cache configuration records."""
    seg = config["segments"]
    eval_stride = seg.get("eval_stride_s")
    return SegmentConfig(seg["window_s"], seg["train_stride_s"], None if eval_stride == "window" else eval_stride,
                         align=seg.get("align", "fixed"))


def probe_encoder(entry: dict, checkpoint: str | None = None, device: str = "auto", trust_checkpoint: bool = False):
    """The encoder a saved probe was trained on, and its window plan; refuses one whose embeddings
    would differ."""
    from embed.encoders import create, spec_of_config
    from embed.extract import cache_config

    saved = entry["cache_config"]
    encoder = create(spec_of_config(saved), checkpoint or entry.get("checkpoint"), pooling=saved["pooling"], device=device,
                     trust_checkpoint=trust_checkpoint, layers=saved.get("layers"))
    segments = segment_config(saved)
    refuse_changed(saved, cache_config(encoder, segments), "the encoder differs from the one the probe was trained on",
                   " (pass the checkpoint the probe was trained with: --checkpoint)")
    return encoder, segments


def recipe_encoder(spec: ExtractSpec, weights: str | Path | None, device: str = "auto"):
    """The encoder of one recipe cache, its checkpoint looked up by its published name in `weights`."""
    from embed.encoders import create
    checkpoint = None
    if spec.checkpoint:
        if weights is None:
            raise ValueError(f"the recipe's {spec.encoder} needs its weight file {spec.checkpoint}: pass --weights FOLDER")
        checkpoint = Path(weights) / spec.checkpoint
        if not checkpoint.exists():  # a file, or a model folder (hf: what save_pretrained writes)
            raise FileNotFoundError(f"{checkpoint}: the recipe's {spec.encoder} weight file is not in --weights "
                                    f"{weights} (expected under its published name {spec.checkpoint})")
    return create(spec.encoder, checkpoint, device=device, precision=spec.precision, layers=spec.layers)
