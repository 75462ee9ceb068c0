"""Probes over caches that hold several encoder layers (`extract --layers`).

`probe --layers SPEC`: `i` one layer, `i,j` concatenated, `all` every cached layer, `last` the
encoder's embedding, `cv` the best single layer by patient-grouped cross-validation over the
train+val groups of each split, `weighted` one probe per layer combined by a logistic-regression
stacker on their out-of-fold probabilities (`classify.evaluation.ensemble.stack`). No choice ever sees a test
group. The array functions (`layer_slices`, `layer_columns`, `cv_layer_scores`,
`select_layers_cv`) work on plain arrays, for other modules to reuse.
"""
from __future__ import annotations

from typing import Callable, Iterable, Literal, Sequence

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.metrics import balanced_accuracy_score
from threadpoolctl import threadpool_limits

from embed.cache import CachedRecording, layer_slices

from classify.evaluation.ensemble import stack
from classify.evaluation.rules import DecisionName, mean_by_group
from classify.evaluation.probe_protocol import EncoderScores, RecordingScores, fit_encoder, fit_rule
from classify.features.caches import segment_set
from classify.estimators.probes import default_probe
from classify.estimators.search import group_folds, out_of_fold_proba
from classify.evaluation.selection import select_best
from classify.task import Task

__all__ = ["layer_slices", "layer_columns", "resolve_probe_layers", "take_layers", "cv_layer_scores",
           "select_layers_cv", "fit_layer_choice", "LayerMode"]

LayerMode = Literal["cv", "weighted"]
Layers = tuple[int, ...]


def resolve_probe_layers(spec: str, slices: dict[int, slice], n_layers: int | None = None) -> Layers | LayerMode:
    """`probe --layers SPEC` against the layers a cache holds (`n_layers`: the encoder's depth, where
    known) -> sorted indices, or "cv" / "weighted"."""
    held = sorted(slices)
    if spec in ("cv", "weighted"):
        if len(held) < 2:
            raise ValueError(f"--layers {spec} chooses among cached layers, and this cache holds one "
                             "(extract with --layers all, or a list of layers, first)")
        return spec
    if spec == "all":
        return tuple(held)
    if spec == "last":
        spec = str(held[0] if held == [-1] else (n_layers or 0) - 1)
    try:
        wanted = sorted({int(v) for v in spec.split(",") if v.strip()})
    except ValueError:
        raise ValueError(f"--layers must be last, all, cv, weighted or comma-separated integers, got {spec!r}"
                         ) from None
    missing = [i for i in wanted if i not in slices]
    if missing or not wanted:
        raise ValueError(f"--layers {spec}: the cache holds layers {','.join(map(str, held))}; "
                         f"{missing or 'none given'} not among them (extract with --layers all or these layers)")
    return tuple(wanted)


def layer_columns(slices: dict[int, slice], layers: Iterable[int], width: int | None = None) -> np.ndarray:
    """Column indices of `layers` (in the given order) in vectors laid out by `slices`; `width` is the
    vector length, needed only for an open-ended slice (a cache of the embedding alone)."""
    cols = []
    for layer in layers:
        s = slices[layer]
        stop = s.stop if s.stop is not None else width
        if stop is None:
            raise ValueError("layer_columns needs the vector width for an open-ended slice")
        cols.append(np.arange(s.start or 0, stop))
    return np.concatenate(cols) if cols else np.zeros(0, dtype=int)


def take_layers(embeddings: dict[str, CachedRecording], slices: dict[int, slice], layers: Sequence[int]
                ) -> dict[str, CachedRecording]:
    """The cached recordings with only the columns of `layers`."""
    if not embeddings:
        return {}
    cols = layer_columns(slices, layers, next(iter(embeddings.values())).embeddings.shape[1])
    return {rid: CachedRecording(rid, rec.embeddings[:, cols], rec.starts, rec.train_index, rec.eval_index)
            for rid, rec in embeddings.items()}


def group_balanced_accuracy(y: np.ndarray, groups: np.ndarray) -> Callable[[np.ndarray], float]:
    """Default CV score: mean probabilities per group, argmax, balanced accuracy (UAR) against the
    group's label (its rows' first label)."""
    first_label = {}
    for g, label in zip(groups, y):
        first_label.setdefault(g, label)

    def score(proba: np.ndarray) -> float:
        ids, means = mean_by_group(proba, groups)
        return float(balanced_accuracy_score([first_label[g] for g in ids], means.argmax(axis=1)))
    return score


def cv_layer_scores(X: np.ndarray, y: np.ndarray, groups: np.ndarray, slices: dict[int, slice], *,
                    candidates: Iterable[Layers] | None = None, probe: BaseEstimator | None = None,
                    folds: int = 5, seed: int = 0, score: Callable[[np.ndarray], float] | None = None
                    ) -> dict[Layers, float]:
    """Cross-validated score of each candidate layer set (default: every single layer).

    X: one row per recording or window, columns laid out by `slices`; y: row labels; groups:
    patient of each row (folds never split a patient). `score` maps the out-of-fold probabilities
    of all rows to a number, higher better (default: per-group UAR). Pass only train+val rows."""
    X, y, groups = np.asarray(X), np.asarray(y), np.asarray(groups)
    probe = default_probe("linear", seed) if probe is None else probe
    score = score or group_balanced_accuracy(y, groups)
    n_classes = int(y.max()) + 1
    out = {}
    fold_list = group_folds(y, groups, folds, seed)  # the same folds for every candidate
    with threadpool_limits(limits=1, user_api="blas"):
        for layers in (candidates if candidates is not None else [(i,) for i in sorted(slices)]):
            cols = layer_columns(slices, layers, X.shape[1])
            out[tuple(layers)] = score(out_of_fold_proba(probe, X[:, cols], y, fold_list, n_classes, groups))
    return out


def select_layers_cv(X: np.ndarray, y: np.ndarray, groups: np.ndarray, slices: dict[int, slice], **kwargs
                     ) -> Layers:
    """The candidate (default: single layers) with the best `cv_layer_scores`; ties go to the earlier."""
    scores = cv_layer_scores(X, y, groups, slices, **kwargs)
    best, _, _ = select_best(scores, lambda layers: (scores[layers], None))
    return best


def fit_layer_choice(task: Task, embeddings: dict[str, CachedRecording], split: dict[str, str], probe: str, *,
                     layers: LayerMode, slices: dict[int, slice], decision: DecisionName = "any", seed: int = 0,
                     oof_folds: int = 0, cv_folds: int = 5) -> EncoderScores:
    """One split's probe with the layers chosen inside its train+val groups.

    cv: each single layer scored by `cv_layer_scores` (the probe at its default hyper-parameters,
    folds over train+val patients, the task's selection metric on patient decisions), the best one
    then probed as usual (grid on train, chosen on val). weighted: every layer probed as usual with
    out-of-fold train scores, the per-layer recording probabilities stacked by a logistic
    regression fit on those out-of-fold scores (its C chosen on val)."""
    if layers == "cv":
        trainval = task.ids_in(split, "train") + task.ids_in(split, "val")
        rows = segment_set(task, embeddings, trainval, "train")

        def patient_score(proba: np.ndarray) -> float:
            scores = RecordingScores.from_segments(rows, proba)
            return fit_rule(task, scores, decision)[1]
        chosen = select_layers_cv(rows.X, rows.y, rows.patient_ids, slices, probe=default_probe(probe, seed),
                                  folds=cv_folds, seed=seed, score=patient_score)
        fitted = fit_encoder(task, take_layers(embeddings, slices, chosen), split, probe, decision=decision,
                             seed=seed, oof_folds=oof_folds)
        fitted.params = {"layers": ",".join(map(str, chosen)), **fitted.params}
        return fitted
    if layers == "weighted":
        per_layer = [fit_encoder(task, take_layers(embeddings, slices, (layer,)), split, probe, decision=decision,
                                 seed=seed, oof_folds=oof_folds or cv_folds) for layer in sorted(slices)]
        val, test, params = stack(task, per_layer, decision=decision, locations=False)
        return EncoderScores(None, {"layers": "weighted", "stack_C": params["C"]}, fit_rule(task, val, decision)[1],
                             val, test)
    raise ValueError(f"layers must be 'cv' or 'weighted' here, got {layers!r}")
