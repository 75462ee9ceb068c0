"""The heart-cycle protocols of `pipeline.py compare` as recipes built for any encoder.

`cycle`: the encoder's own frames pooled per heart-cycle phase over the log-mel segmentation's
intervals (the segmentation `cycle-logmel` uses, shared by every encoder so that only the frames
differ), plus the signal-quality features, a patient model over locations and the expected-cost
decision, as in `cycle-logmel`; for log-mel itself that is `cycle-logmel` without its boosted
member. `cycle+logmel`: the same with log-mel's phases as a second member.
"""
from __future__ import annotations

from typing import Literal

from classify.recipes.book import build_recipe
from classify.recipes.recipe import Recipe

CycleProtocol = Literal["cycle", "cycle+logmel"]
SEGMENTATION = {"encoder": "logmel", "precision": "fp32"}  # the frames every cycle recipe segments
QUALITY = ({"name": "quality", "kind": "windows", "stats": ["mean", "std"]}, {"encoder": "quality"})


def cycle_recipe(protocol: CycleProtocol, encoder: str, source: dict) -> Recipe:
    """`protocol` for the encoder of `source` (a recipe source table: encoder, checkpoint, precision,
    layers), named `encoder` in the recipe's name and its member's."""
    members = []
    if protocol == "cycle+logmel" and source != SEGMENTATION:
        members.append(({"name": "logmel_phases", "kind": "phases"}, SEGMENTATION))
    members.append(({"name": f"{encoder.replace(':', '-').replace('=', '')}_phases", "kind": "phases"}, source))
    members.append(QUALITY)
    fields = {"name": f"{protocol}:{encoder}", "train_intervals": "segmenter", "segmentation": SEGMENTATION,
              "description": f"{encoder} frames pooled per heart-cycle phase over the log-mel segmentation"
                             + (" + log-mel phases" if protocol == "cycle+logmel" else "")
                             + " + signal quality, patient model over locations, expected-cost decision"}
    return build_recipe(fields, members, f"protocol {protocol}")
