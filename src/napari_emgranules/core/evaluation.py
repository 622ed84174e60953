"""A model judged on training pairs: predict each pair's image, score it against its labels.

:func:`evaluate_iter` (a generator of :class:`EvaluateProgress`, returning the
:class:`~napari_emgranules.core.metrics.EvaluationReport`) serves ``emgranules evaluate`` and
scripts (:func:`evaluate`); :func:`threshold_sweep` scores a
Granules model at several probability thresholds; :func:`calibrate` fits a model's softmax
temperature on labelled micrographs. The scores themselves are
:mod:`~napari_emgranules.core.metrics`'s, which runs no model.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .calibration import choose_temperature
from .dataset import TrainingSet, load_training_pairs
from .io import write_labels
from .metrics import EvaluationReport, _Accumulator
from .models import SegmentationModel, load_model
from .progress import run_to_completion
from .segment import segment_micrograph_iter
from .tiling import pad_to_multiple
from .train import _as_training_set, _load_samples

__all__ = ["EvaluateProgress", "calibrate", "evaluate", "evaluate_iter", "model_logits_and_truth",
           "threshold_sweep"]

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class EvaluateProgress:
    """One image of :func:`evaluate_iter` done: its index (1-based), the total and its row."""

    done: int
    total: int
    name: str
    row: dict[str, Any]


def evaluate_iter(
    model: Any,
    data: Any,
    *,
    kind: str | None = None,
    mode: str = "auto",
    iou_threshold: float = 0.5,
    predictions_dir: PathLike | None = None,
    granule_threshold: float | None = None,
    object_codes: Iterable[int] | None = None,
) -> Generator[EvaluateProgress, None, EvaluationReport]:
    """Predict every pair's image with ``model`` and compare with its labels, image by image.

    Parameters
    ----------
    model : SegmentationModel or weights path
        The model to judge (a path is loaded with :func:`load_model`; ``kind`` is needed when the
        file has no sidecar).
    data : TrainingSet, folder or folders
        Pairs as written by :func:`export_training_pairs` (or bare ``images``/``labels`` folders).
    mode : str
        Inference mode, as in :func:`segment_micrograph` (images are resampled to the model's
        pixel size and the labels brought back, so truth and prediction align).
    iou_threshold : float
        IoU at which a true and a predicted object (granule) match.
    predictions_dir : path-like, optional
        Also write each predicted label map there (uint16 PNG named like the pair), as the
        original tool does; existing files are never replaced.
    granule_threshold : float, optional
        A two-class model labels class 1 where its probability is at least this (as
        ``--granule-threshold`` in ``segment``; None = the arg-max).
    object_codes : iterable of int, optional
        Classes scored as objects too (default: as in :func:`image_metrics`, the granules).

    Yields
    ------
    EvaluateProgress
        After each image.

    Returns
    -------
    EvaluationReport
    """

    net = model if isinstance(model, SegmentationModel) else load_model(model, kind)
    net = net.with_threshold(granule_threshold)
    if not isinstance(data, TrainingSet):
        data = load_training_pairs(*([data] if isinstance(data, (str, os.PathLike)) else data),
                                   schema=net.card.schema)
    out = Path(predictions_dir) if predictions_dir is not None else None
    if out is not None:
        clash = [out / (Path(p.name).stem + ".png") for p in data]
        clash = [c for c in clash if c.exists()]
        if clash:
            raise FileExistsError(f"{clash[0]}: exists already (and {len(clash) - 1} more); "
                                  "choose another predictions folder")
    acc = _Accumulator(net.card.schema, object_codes, iou_threshold)
    for i, pair in enumerate(data, start=1):
        image, truth = pair.load()
        result = run_to_completion(segment_micrograph_iter(
            image, pair.pixel_size_nm, models={"model": net}, mode=mode))
        pred = result.labels["model"]
        if out is not None:
            write_labels(out / (Path(pair.name).stem + ".png"), pred, pixel_size_nm=pair.pixel_size_nm)
        row = acc.add(pair.name, truth, pred)
        yield EvaluateProgress(i, len(data), pair.name, row)
    report = acc.report()
    if not net.card.trained:
        report.notes.append("the model is UNTRAINED (random weights)")
    return report


def threshold_sweep(model: Any, data: Any, thresholds: Sequence[float], *, kind: str | None = None,
                    mode: str = "auto", iou_threshold: float = 0.5,
                    progress: Any = None) -> pd.DataFrame:
    """Object and pixel scores of a two-class model (Granules) at several probability thresholds.

    Each threshold runs the model on every pair as ``segment --granule-threshold`` would, so a lab
    can choose the threshold on its own corrected micrographs: the defaults over-detect on some
    looks and miss faint granules on others (``python benchmarks/granule_min_size.py
    --thresholds ...``: docs/granule_threshold.md).

    Parameters
    ----------
    model, data, kind, mode, iou_threshold
        As in :func:`evaluate_iter`.
    thresholds : sequence of float
        Probabilities in (0, 1); 0.5 is the arg-max.
    progress : callable, optional
        Called with each :class:`EvaluateProgress` (across all thresholds).

    Returns
    -------
    pandas.DataFrame
        One row per threshold: ``threshold``, ``objects_true``, ``objects_pred``,
        ``object_precision``, ``object_recall``, ``object_f1`` and ``iou`` (class 1's pixel IoU).

    Raises
    ------
    ValueError
        No thresholds, one outside (0, 1), or a model with more than two classes.
    """

    values = [float(v) for v in thresholds]
    if not values:
        raise ValueError("give at least one threshold")
    bad = [v for v in values if not 0 < v < 1]
    if bad:
        raise ValueError(f"thresholds must lie between 0 and 1, got {bad[0]:g}")
    net = model if isinstance(model, SegmentationModel) else load_model(model, kind)
    if net.card.schema.n_classes != 2:
        raise ValueError(f"a threshold sweep needs a two-class model; {net.card.kind} has "
                         f"{net.card.schema.n_classes} classes")
    letter = net.card.schema.letters[1]
    if not isinstance(data, TrainingSet):  # read and checked once, not once per threshold
        data = load_training_pairs(*([data] if isinstance(data, (str, os.PathLike)) else data),
                                   schema=net.card.schema)
    rows = []
    for value in values:
        report = run_to_completion(evaluate_iter(net, data, mode=mode, iou_threshold=iou_threshold,
                                                 granule_threshold=value, object_codes=(1,)),
                                   progress)
        s = report.summary
        rows.append({"threshold": value, **{k: s[f"{k}_{letter}"] for k in (
            "objects_true", "objects_pred", "object_precision", "object_recall", "object_f1")},
            "iou": s[f"iou_{letter}"]})
    return pd.DataFrame(rows)


def evaluate(model: Any, data: Any, **kwargs: Any) -> EvaluationReport:
    """Evaluate a model on training pairs; see :func:`evaluate_iter`.

    Examples
    --------
    >>> report = evaluate("runs/granules/granules.weights.h5", "validation_pairs")  # doctest: +SKIP
    >>> report.summary["object_f1_G"], report.table["pixel_accuracy"].mean()        # doctest: +SKIP
    """
    return run_to_completion(evaluate_iter(model, data, **kwargs))


def model_logits_and_truth(model, data, pixel_size_nm: float | None = None,
                           max_side: int = 2048) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(logits, truth)`` of each micrograph in ``data`` (pair folders or (micrograph, labels)
    files, as :func:`~napari_emgranules.core.train.train` takes), at the model's pixel size and
    input scaling, each cut to its central ``max_side`` px square (whole-image prediction)."""
    card = model.card
    samples = _load_samples(_as_training_set(data, card.schema, pixel_size_nm), card.schema,
                            card.pixel_size_nm, card.input_scaling)
    out = []
    for s in samples:
        h, w = s.image.shape
        y, x = max(0, (h - max_side) // 2), max(0, (w - max_side) // 2)
        image = s.image[y:y + max_side, x:x + max_side]
        truth = s.labels[y:y + max_side, x:x + max_side]
        padded, crop = pad_to_multiple(image, 128)
        logits = model.predict_logits(padded[None])[0][crop]
        out.append((logits, truth))
    return out


def calibrate(model, data, pixel_size_nm: float | None = None, max_side: int = 2048
              ) -> tuple[float, dict[str, float], dict[str, float]]:
    """Fit ``model``'s temperature on labelled micrographs it did not train on.

    Returns ``(temperature, measures at the card's temperature, measures at the new one)``
    (:func:`~napari_emgranules.core.calibration.calibration_measures`); the model is not changed:
    set ``model.card.temperature``.
    """
    pairs = model_logits_and_truth(model, data, pixel_size_nm, max_side)
    return choose_temperature(pairs, model.card.temperature)
