"""Accuracy of label maps against ground truth: pixel, per-class and per-object measures.

Pixel measures come from a confusion matrix (rows = true class, columns = predicted class) built
with one :func:`numpy.bincount` per chunk of pixels, so a 4096 x 4096 map costs well under a second:

- :func:`pixel_accuracy`: the fraction of pixels whose class is right;
- :func:`iou_per_class` / :func:`mean_iou`: intersection over union, per class and averaged over the
  classes present in the truth or the prediction;
- :func:`dice_per_class`: the Dice (F1) score per class;
- :func:`normalise_confusion`: the matrix as recall (rows sum to 1) or precision (columns sum to 1).

Object measures (:func:`match_objects`) count connected components: a true and a predicted object
match when their IoU reaches a threshold (one-to-one, greedy by IoU), giving true positives, false
positives and false negatives, hence object precision, recall and F1. This is the measure that
matters for granules, where a per-pixel score is dominated by the background.

Nothing here runs a model: :mod:`~napari_emgranules.core.evaluation` runs one on training pairs and
scores it with these functions.

:func:`image_metrics` gives one table row for one image; :func:`evaluate_predictions` runs it over
many images and returns an :class:`EvaluationReport` with the per-image table, the pooled confusion
matrix and object counts, a text summary for the console and :meth:`EvaluationReport.write` for CSV
files.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from .io import atomic_output
from .schema import UNLABELLED, ClassSchema, SchemaError

__all__ = [
    "NORMALISATIONS",
    "REPORT_FILES",
    "EvaluationReport",
    "ObjectMatch",
    "confusion_matrix",
    "dice_per_class",
    "evaluate_predictions",
    "image_metrics",
    "iou_per_class",
    "match_objects",
    "mean_iou",
    "normalise_confusion",
    "pixel_accuracy",
    "region_pixel_fractions",
]

PathLike = str | os.PathLike[str]

#: Accepted values of ``by`` in :func:`normalise_confusion`.
NORMALISATIONS: tuple[str, ...] = ("recall", "precision")

#: Files written by :meth:`EvaluationReport.write`, in order.
REPORT_FILES: tuple[str, ...] = (
    "per_image.csv",
    "summary.csv",
    "confusion_counts.csv",
    "confusion_recall.csv",
    "confusion_precision.csv",
    "accuracies.txt",
)

# Pixels per bincount call in confusion_matrix (bounds the temporary index array to ~32 MiB).
_CHUNK = 1 << 22
# Largest dense contingency table (true x predicted objects) built with bincount in match_objects;
# beyond it the sparse table is built by sorting the pixel pairs instead.
_DENSE_PAIRS = 1 << 24


# --------------------------------------------------------------------------------------------
# Pixel measures
# --------------------------------------------------------------------------------------------


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return " x ".join(str(s) for s in shape) or "scalar"


def _check_same_shape(truth: np.ndarray, pred: np.ndarray, what: str = "maps") -> None:
    if truth.shape != pred.shape:
        raise ValueError(
            f"truth and prediction {what} differ in shape: truth is {_fmt_shape(truth.shape)}, "
            f"prediction is {_fmt_shape(pred.shape)}; compare maps of the same image at the same "
            f"size"
        )


def _check_codes(arr: np.ndarray, n_classes: int, what: str) -> None:
    if arr.dtype.kind not in "iub":
        raise ValueError(f"{what}: label maps must hold integer codes, got dtype {arr.dtype}")
    if arr.size == 0:
        return
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= n_classes:
        bad = np.unique(arr[(arr < 0) | (arr >= n_classes)])[:10].tolist()
        raise ValueError(
            f"{what} holds codes {bad} outside 0..{n_classes - 1} (n_classes={n_classes}); check "
            f"that the label map and the class schema belong together"
        )


def _check_cm(cm: np.ndarray) -> np.ndarray:
    arr = np.asarray(cm)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] == 0:
        raise ValueError(
            f"a confusion matrix must be square (n_classes x n_classes), got shape "
            f"{_fmt_shape(arr.shape)}; build one with confusion_matrix()"
        )
    return arr


def confusion_matrix(truth: np.ndarray, pred: np.ndarray, n_classes: int,
                     weights: np.ndarray | None = None) -> np.ndarray:
    """Count pixels by (true class, predicted class).

    Parameters
    ----------
    truth, pred : numpy.ndarray
        Integer label maps of the same shape, codes ``0 .. n_classes - 1``; truth pixels of
        :data:`~napari_emgranules.core.schema.UNLABELLED` (partial labels) are not counted.
    n_classes : int
        Number of classes.
    weights : numpy.ndarray, optional
        What each pixel counts for (same shape as ``truth``); then the matrix sums weights.

    Returns
    -------
    numpy.ndarray
        int64 array ``(n_classes, n_classes)`` (float64 with ``weights``); ``cm[i, j]`` is the
        number of pixels of true class ``i`` predicted as class ``j``.

    Raises
    ------
    ValueError
        If the shapes differ, a map is not integer, ``n_classes < 1``, or a code is outside
        ``0 .. n_classes - 1``.
    """
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 1:
        raise ValueError(f"n_classes must be a positive integer, got {n_classes!r}")
    n = int(n_classes)
    t = np.asarray(truth)
    p = np.asarray(pred)
    _check_same_shape(t, p)
    w = None
    if weights is not None:
        w = np.asarray(weights, np.float64)
        if w.shape != t.shape:
            raise ValueError(f"weights of shape {w.shape} for label maps of shape {t.shape}")
    if t.size and t.max() == UNLABELLED:  # a partial label map: count the labelled pixels only
        labelled = t != UNLABELLED
        t, p = t[labelled], p[labelled]
        w = None if w is None else w[labelled]
    _check_codes(t, n, "truth")
    _check_codes(p, n, "prediction")
    tf = t.ravel()
    pf = p.ravel()
    wf = None if w is None else w.ravel()
    counts = np.zeros(n * n, dtype=np.int64 if w is None else np.float64)
    for start in range(0, tf.size, _CHUNK):
        stop = start + _CHUNK
        idx = tf[start:stop].astype(np.intp) * n
        idx += pf[start:stop].astype(np.intp)
        counts += np.bincount(idx, None if wf is None else wf[start:stop], minlength=n * n)
    return counts.reshape(n, n)


def region_pixel_fractions(locations: np.ndarray, granules: np.ndarray,
                           schema: ClassSchema | None = None) -> dict[str, float]:
    """Granule pixel fraction ``pf`` of each measured region: granule px in it / its px.

    Parameters
    ----------
    locations, granules : numpy.ndarray
        Locations codes and a granule mask (non-zero = granule) of one shape.
    schema : ClassSchema, optional
        Locations schema (default :data:`LOCATIONS_SCHEMA`); its measured codes are reported.

    Returns
    -------
    dict
        Region letter -> pf; NaN for a region with no pixels.
    """
    from .schema import LOCATIONS_SCHEMA

    schema = schema or LOCATIONS_SCHEMA
    _check_same_shape(locations, granules, "location and granule maps")
    n = max(schema.n_classes, int(locations.max(initial=0)) + 1)
    n_region = np.bincount(locations.ravel(), minlength=n)
    n_granule = np.bincount(locations[np.asarray(granules).astype(bool)], minlength=n)
    return {schema.letters[c]: float(n_granule[c] / n_region[c]) if n_region[c] else math.nan
            for c in schema.measured_codes}


def pixel_accuracy(cm: np.ndarray) -> float:
    """Fraction of pixels whose predicted class is the true class.

    Parameters
    ----------
    cm : numpy.ndarray
        Confusion matrix from :func:`confusion_matrix`.

    Returns
    -------
    float
        ``trace(cm) / sum(cm)``; NaN for an empty matrix (no pixels).
    """
    arr = _check_cm(cm)
    total = arr.sum()
    return float(np.trace(arr) / total) if total > 0 else math.nan


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast_shapes(num.shape, den.shape), np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """Intersection over union (Jaccard index) of every class.

    Parameters
    ----------
    cm : numpy.ndarray
        Confusion matrix from :func:`confusion_matrix`.

    Returns
    -------
    numpy.ndarray
        float64, one value per class: ``tp / (tp + fp + fn)``; NaN for a class absent from both
        the truth and the prediction.
    """
    arr = _check_cm(cm)
    tp = np.diag(arr)
    return _ratio(tp, arr.sum(axis=1) + arr.sum(axis=0) - tp)


def dice_per_class(cm: np.ndarray) -> np.ndarray:
    """Dice coefficient (pixel F1) of every class.

    Parameters
    ----------
    cm : numpy.ndarray
        Confusion matrix from :func:`confusion_matrix`.

    Returns
    -------
    numpy.ndarray
        float64, one value per class: ``2 tp / (2 tp + fp + fn)``; NaN for a class absent from
        both the truth and the prediction.
    """
    arr = _check_cm(cm)
    return _ratio(2 * np.diag(arr), arr.sum(axis=1) + arr.sum(axis=0))


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def mean_iou(cm: np.ndarray) -> float:
    """Mean IoU over the classes present in the truth or the prediction.

    Parameters
    ----------
    cm : numpy.ndarray
        Confusion matrix from :func:`confusion_matrix`.

    Returns
    -------
    float
        Mean of :func:`iou_per_class` ignoring NaN; NaN if no class is present.
    """
    return _nanmean(iou_per_class(cm))


def normalise_confusion(cm: np.ndarray, by: str) -> np.ndarray:
    """Normalise a confusion matrix by its rows (recall) or columns (precision).

    Parameters
    ----------
    cm : numpy.ndarray
        Confusion matrix from :func:`confusion_matrix`.
    by : {"recall", "precision"}
        ``"recall"`` divides each row by its sum (the fraction of each true class predicted as
        each class; rows sum to 1); ``"precision"`` divides each column by its sum (the fraction
        of each predicted class that is truly each class; columns sum to 1).

    Returns
    -------
    numpy.ndarray
        float64 array of the same shape; a row (recall) or column (precision) with zero sum is
        all NaN.

    Raises
    ------
    ValueError
        If ``by`` is not one of :data:`NORMALISATIONS`.
    """
    arr = _check_cm(cm)
    if by == "recall":
        return _ratio(arr, arr.sum(axis=1, keepdims=True))
    if by == "precision":
        return _ratio(arr, arr.sum(axis=0, keepdims=True))
    raise ValueError(f"by must be one of {', '.join(map(repr, NORMALISATIONS))}, got {by!r}")


# --------------------------------------------------------------------------------------------
# Object measures
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectMatch:
    """Counts of matched connected objects of one class.

    Parameters
    ----------
    n_true : int
        Objects in the truth.
    n_pred : int
        Objects in the prediction.
    tp : int
        Matched pairs (true positives).
    fp : int
        Predicted objects without a match (false positives), ``n_pred - tp``.
    fn : int
        True objects without a match (false negatives), ``n_true - tp``.

    Notes
    -----
    Matches of several images add up with ``+`` (``sum(matches, ObjectMatch.empty())``).
    """

    n_true: int
    n_pred: int
    tp: int
    fp: int
    fn: int

    def __post_init__(self) -> None:
        values = (self.n_true, self.n_pred, self.tp, self.fp, self.fn)
        if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0 for v in values):
            raise ValueError(f"ObjectMatch counts must be non-negative integers, got {values}")
        if self.tp + self.fp != self.n_pred or self.tp + self.fn != self.n_true:
            raise ValueError(
                f"inconsistent ObjectMatch: tp + fp must equal n_pred and tp + fn must equal "
                f"n_true, got n_true={self.n_true}, n_pred={self.n_pred}, tp={self.tp}, "
                f"fp={self.fp}, fn={self.fn}"
            )
        for name in ("n_true", "n_pred", "tp", "fp", "fn"):
            object.__setattr__(self, name, int(getattr(self, name)))

    @classmethod
    def empty(cls) -> ObjectMatch:
        """All counts zero (the neutral element of ``+``)."""
        return cls(0, 0, 0, 0, 0)

    def __add__(self, other: ObjectMatch) -> ObjectMatch:
        if not isinstance(other, ObjectMatch):
            return NotImplemented
        return ObjectMatch(self.n_true + other.n_true, self.n_pred + other.n_pred,
                           self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    @property
    def precision(self) -> float:
        """``tp / n_pred``; NaN when nothing was predicted."""
        return self.tp / self.n_pred if self.n_pred else math.nan

    @property
    def recall(self) -> float:
        """``tp / n_true``; NaN when the truth has no object."""
        return self.tp / self.n_true if self.n_true else math.nan

    @property
    def f1(self) -> float:
        """``2 tp / (n_true + n_pred)``; NaN when neither has an object (0 when only one has)."""
        total = self.n_true + self.n_pred
        return 2 * self.tp / total if total else math.nan


def _check_threshold(iou_threshold: float) -> float:
    try:
        thr = float(iou_threshold)
    except (TypeError, ValueError):
        raise ValueError(f"iou_threshold must be a number in (0, 1], got {iou_threshold!r}") from None
    if not 0.0 < thr <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1] (0.5 is usual), got {iou_threshold!r}")
    return thr


def _structure(ndim: int, connectivity: int) -> np.ndarray:
    if isinstance(connectivity, bool) or not isinstance(connectivity, (int, np.integer)) \
            or not 1 <= connectivity <= ndim:
        raise ValueError(
            f"connectivity must be an integer from 1 (edge neighbours only) to {ndim} (also "
            f"diagonal neighbours) for {ndim}-D masks, got {connectivity!r}"
        )
    return ndi.generate_binary_structure(ndim, int(connectivity))


def _overlaps(lt: np.ndarray, nt: int, lp: np.ndarray, np_: int,
              both: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse contingency of two label images: (true id, predicted id, shared pixels), ids >= 1."""
    t = lt[both].astype(np.int64)
    p = lp[both].astype(np.int64)
    width = np_ + 1
    keys = t * width + p
    if (nt + 1) * width <= _DENSE_PAIRS:
        counts = np.bincount(keys, minlength=(nt + 1) * width)
        keys = np.flatnonzero(counts)
        inter = counts[keys]
    else:
        keys, inter = np.unique(keys, return_counts=True)
    return keys // width, keys % width, inter.astype(np.int64)


def match_objects(truth_mask: np.ndarray, pred_mask: np.ndarray, iou_threshold: float = 0.5,
                  connectivity: int = 2) -> ObjectMatch:
    """Match the connected objects of two masks one-to-one by IoU.

    Parameters
    ----------
    truth_mask, pred_mask : numpy.ndarray
        Masks of the same shape (non-zero = object), e.g. ``labels == code``.
    iou_threshold : float, optional
        A true and a predicted object can match when their IoU is at least this, in (0, 1].
        With a threshold of 0.5 or more every object overlaps at most one partner above it, so
        the matching is unique; below, pairs are taken greedily by descending IoU.
    connectivity : int, optional
        Neighbourhood of a connected component: 1 = edge neighbours (4 in 2-D), 2 = also
        diagonal ones (8 in 2-D), up to ``ndim``.

    Returns
    -------
    ObjectMatch
        Object counts and matches.

    Raises
    ------
    ValueError
        If the shapes differ, ``iou_threshold`` is not in (0, 1] or ``connectivity`` is out of
        range.
    """
    t = np.asarray(truth_mask)
    p = np.asarray(pred_mask)
    _check_same_shape(t, p, what="masks")
    thr = _check_threshold(iou_threshold)
    if t.ndim == 0:
        raise ValueError("masks must have at least one dimension, got scalars")
    structure = _structure(t.ndim, connectivity)
    t = t.astype(bool, copy=False)
    p = p.astype(bool, copy=False)
    lt, nt = ndi.label(t, structure=structure)
    lp, np_ = ndi.label(p, structure=structure)
    if nt == 0 or np_ == 0:
        return ObjectMatch(nt, np_, 0, np_, nt)
    area_t = np.bincount(lt.ravel(), minlength=nt + 1)
    area_p = np.bincount(lp.ravel(), minlength=np_ + 1)
    ti, pi, inter = _overlaps(lt, nt, lp, np_, t & p)
    iou = inter / (area_t[ti] + area_p[pi] - inter)
    keep = iou >= thr
    ti, pi, iou = ti[keep], pi[keep], iou[keep]
    if ti.size == 0:
        return ObjectMatch(nt, np_, 0, np_, nt)
    if np.unique(ti).size == ti.size and np.unique(pi).size == pi.size:
        tp = int(ti.size)  # already one-to-one (always so for thresholds above 0.5)
    else:
        order = np.lexsort((pi, ti, -iou))  # descending IoU, ties by object ids (deterministic)
        used_t: set[int] = set()
        used_p: set[int] = set()
        for a, b in zip(ti[order].tolist(), pi[order].tolist(), strict=True):
            if a not in used_t and b not in used_p:
                used_t.add(a)
                used_p.add(b)
        tp = len(used_t)
    return ObjectMatch(nt, np_, tp, np_ - tp, nt - tp)


# --------------------------------------------------------------------------------------------
# Per image
# --------------------------------------------------------------------------------------------


def _object_codes(schema: ClassSchema, object_codes: Iterable[int] | None) -> tuple[int, ...]:
    if object_codes is None:
        return schema.measured_codes if schema.kind == "granules" else ()
    codes: list[int] = []
    for code in object_codes:
        if isinstance(code, bool) or not isinstance(code, (int, np.integer)) \
                or not 0 <= code < schema.n_classes:
            raise SchemaError(
                f"object code {code!r} is not in the {schema.kind} schema (valid codes "
                f"0..{schema.n_classes - 1})"
            )
        if int(code) not in codes:
            codes.append(int(code))
    return tuple(codes)


def _pixel_columns(cm: np.ndarray, schema: ClassSchema) -> dict[str, float]:
    row: dict[str, float] = {"pixel_accuracy": pixel_accuracy(cm), "mean_iou": mean_iou(cm)}
    ious = iou_per_class(cm)
    dices = dice_per_class(cm)
    for code, letter in schema.letters.items():
        row[f"iou_{letter}"] = float(ious[code])
        row[f"dice_{letter}"] = float(dices[code])
    return row


def _object_columns(match: ObjectMatch, letter: str) -> dict[str, float | int]:
    return {
        f"objects_true_{letter}": match.n_true,
        f"objects_pred_{letter}": match.n_pred,
        f"object_tp_{letter}": match.tp,
        f"object_precision_{letter}": match.precision,
        f"object_recall_{letter}": match.recall,
        f"object_f1_{letter}": match.f1,
    }


def _evaluate_one(truth: np.ndarray, pred: np.ndarray, schema: ClassSchema,
                  codes: tuple[int, ...], iou_threshold: float
                  ) -> tuple[dict[str, float | int], np.ndarray, dict[int, ObjectMatch]]:
    t = np.asarray(truth)
    p = np.asarray(pred)
    _check_same_shape(t, p)
    schema.check_labels(t, "truth", allow_unlabelled=True)
    schema.check_labels(p, "prediction")
    cm = confusion_matrix(t, p, schema.n_classes)
    row: dict[str, float | int] = dict(_pixel_columns(cm, schema))
    matches: dict[int, ObjectMatch] = {}
    labelled = t != UNLABELLED  # objects are matched where the truth is labelled
    for code in codes:
        matches[code] = match_objects(t == code, (p == code) & labelled, iou_threshold=iou_threshold)
        row.update(_object_columns(matches[code], schema.letters[code]))
    return row, cm, matches


def image_metrics(truth: np.ndarray, pred: np.ndarray, schema: ClassSchema, *,
                  object_codes: Iterable[int] | None = None,
                  iou_threshold: float = 0.5) -> dict[str, float | int]:
    """All measures of one predicted label map against its ground truth (one table row).

    Parameters
    ----------
    truth, pred : numpy.ndarray
        Integer label maps of the same shape, codes of ``schema``.
    schema : ClassSchema
        The classes (column names use their letters).
    object_codes : iterable of int, optional
        Classes whose connected objects are matched (:func:`match_objects`, 8-connectivity in
        2-D). ``None``: the schema's measured codes for a ``"granules"`` schema, none otherwise.
    iou_threshold : float, optional
        IoU at which a true and a predicted object match.

    Returns
    -------
    dict
        ``pixel_accuracy``, ``mean_iou``, then ``iou_<letter>`` and ``dice_<letter>`` for every
        class, then for every object code ``objects_true_<letter>``, ``objects_pred_<letter>``,
        ``object_tp_<letter>`` (ints) and ``object_precision_<letter>``,
        ``object_recall_<letter>``, ``object_f1_<letter>`` (floats, NaN where undefined).

    Raises
    ------
    ValueError
        If the shapes differ or ``iou_threshold`` is not in (0, 1].
    SchemaError
        If a map holds a code outside the schema, or an object code is not in it.
    """
    codes = _object_codes(schema, object_codes)
    _check_threshold(iou_threshold)
    row, _, _ = _evaluate_one(truth, pred, schema, codes, iou_threshold)
    return row


# --------------------------------------------------------------------------------------------
# Many images
# --------------------------------------------------------------------------------------------


def _fmt(value: float, width: int = 8, digits: int = 4) -> str:
    return f"{'n/a':>{width}}" if value is None or math.isnan(value) else f"{value:>{width}.{digits}f}"


@dataclass
class EvaluationReport:
    """Evaluation of predicted label maps against ground truth over a set of images.

    Parameters
    ----------
    schema : ClassSchema
        The classes.
    table : pandas.DataFrame
        One row per image: column ``image`` (its name), then the :func:`image_metrics` columns.
    confusion : numpy.ndarray
        Confusion counts summed over all images (rows = true class, columns = predicted class).
    objects : dict of int to ObjectMatch
        Object counts summed over all images, per object code.
    notes : list of str, optional
        Remarks for the reader (e.g. classes absent from every image).
    iou_threshold : float, optional
        IoU at which objects were matched (shown in the text summary).
    """

    schema: ClassSchema
    table: pd.DataFrame
    confusion: np.ndarray
    objects: dict[int, ObjectMatch] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    iou_threshold: float = 0.5

    @property
    def n_images(self) -> int:
        """Number of images evaluated."""
        return len(self.table)

    @property
    def summary(self) -> dict[str, float | int]:
        """Measures pooled over all pixels and objects of all images.

        ``n_images``, ``pixel_accuracy``, ``mean_iou``, ``iou_<letter>``, ``dice_<letter>`` (from
        the summed confusion matrix), ``mean_image_accuracy`` (mean of the per-image pixel
        accuracies), and per object code ``objects_true_<letter>``, ``objects_pred_<letter>``,
        ``object_tp_<letter>``, ``object_precision_<letter>``, ``object_recall_<letter>``,
        ``object_f1_<letter>`` (from the summed object counts).
        """
        out: dict[str, float | int] = {"n_images": self.n_images}
        out.update(_pixel_columns(self.confusion, self.schema))
        if self.n_images and "pixel_accuracy" in self.table:
            out["mean_image_accuracy"] = _nanmean(self.table["pixel_accuracy"].to_numpy(float))
        else:
            out["mean_image_accuracy"] = math.nan
        for code, match in self.objects.items():
            out.update(_object_columns(match, self.schema.letters[code]))
        return out

    def confusion_frame(self, by: str | None = None) -> pd.DataFrame:
        """The pooled confusion matrix labelled with class names.

        Parameters
        ----------
        by : {None, "recall", "precision"}, optional
            ``None`` for pixel counts, else normalised as in :func:`normalise_confusion`.

        Returns
        -------
        pandas.DataFrame
            Index ``"true: <name>"``, columns ``"predicted: <name>"``.
        """
        data = self.confusion if by is None else normalise_confusion(self.confusion, by)
        names = [self.schema.names[c] for c in range(self.schema.n_classes)]
        return pd.DataFrame(data, index=pd.Index([f"true: {n}" for n in names]),
                            columns=[f"predicted: {n}" for n in names])

    def accuracies_text(self) -> str:
        """``accuracies.txt``: one line per image, its index and pixel accuracy (``0      0.973214``)."""
        lines = [f"{i:<6d} {float(acc):.6f}"
                 for i, acc in enumerate(self.table["pixel_accuracy"].to_numpy(float))]
        return "".join(line + "\n" for line in lines)

    def write(self, out_dir: PathLike, *, overwrite: bool = False) -> list[Path]:
        """Write the report as CSV and text files into a folder.

        Files (:data:`REPORT_FILES`): ``per_image.csv`` (the table), ``summary.csv`` (one row,
        :attr:`summary`), ``confusion_counts.csv``, ``confusion_recall.csv``,
        ``confusion_precision.csv`` (:meth:`confusion_frame`) and ``accuracies.txt`` (the original
        tool's format: image index and pixel accuracy; the names are in ``per_image.csv``).

        Parameters
        ----------
        out_dir : str or os.PathLike
            Folder, created if missing.
        overwrite : bool, optional
            Replace existing files; otherwise an existing file stops the call before anything is
            written.

        Returns
        -------
        list of pathlib.Path
            The files written, in the order above.

        Raises
        ------
        FileExistsError
            If one of the files exists and ``overwrite`` is false, or ``out_dir`` is a file.
        """
        folder = Path(out_dir).expanduser()
        if folder.exists() and not folder.is_dir():
            raise FileExistsError(f"{folder}: is a file, not a folder; give a folder to write the report to")
        targets = [folder / name for name in REPORT_FILES]
        if not overwrite:
            for target in targets:
                if target.exists():
                    raise FileExistsError(
                        f"{target}: exists already; choose another folder or pass overwrite=True"
                    )
        folder.mkdir(parents=True, exist_ok=True)
        writers = {
            "per_image.csv": lambda tmp: self.table.to_csv(tmp, index=False),
            "summary.csv": lambda tmp: pd.DataFrame([self.summary]).to_csv(tmp, index=False),
            "confusion_counts.csv": lambda tmp: self.confusion_frame().to_csv(tmp),
            "confusion_recall.csv": lambda tmp: self.confusion_frame("recall").to_csv(tmp),
            "confusion_precision.csv": lambda tmp: self.confusion_frame("precision").to_csv(tmp),
            "accuracies.txt": lambda tmp: tmp.write_text(self.accuracies_text()),
        }
        for target in targets:
            with atomic_output(target) as tmp:
                writers[target.name](tmp)
        return targets

    def format(self) -> str:
        """A short text summary: per-class IoU and Dice, mean IoU, pixel accuracy, object scores."""
        s = self.summary
        width = max([len(f"{c.letter}  {c.name}") for c in self.schema.classes] + [16]) + 2
        lines = [f"Evaluation of {self.n_images} image{'s' if self.n_images != 1 else ''} "
                 f"({self.schema.kind} schema), pooled over all pixels",
                 f"{'class':<{width}}{'IoU':>8}{'Dice':>8}"]
        for c in self.schema.classes:
            lines.append(f"{c.letter + '  ' + c.name:<{width}}{_fmt(s[f'iou_{c.letter}'])}"
                         f"{_fmt(s[f'dice_{c.letter}'])}")
        lines.append(f"{'mean IoU':<{width}}{_fmt(s['mean_iou'])}")
        lines.append(f"{'pixel accuracy':<{width}}{_fmt(s['pixel_accuracy'])}"
                     f"   (mean over images {_fmt(s['mean_image_accuracy'], 0)})")
        if self.objects:
            lines.append("")
            lines.append(f"{'objects (IoU >= ' + format(self.iou_threshold, 'g') + ')':<{width}}"
                         f"{'true':>8}{'pred':>8}{'TP':>8}{'prec.':>8}{'recall':>8}{'F1':>8}")
            for code, m in self.objects.items():
                c = self.schema.classes[code]
                lines.append(f"{c.letter + '  ' + c.name:<{width}}{m.n_true:>8d}{m.n_pred:>8d}"
                             f"{m.tp:>8d}{_fmt(m.precision)}{_fmt(m.recall)}{_fmt(m.f1)}")
        if self.notes:
            lines.append("")
            lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def evaluate_predictions(items: Iterable[Sequence[Any]], schema: ClassSchema, *,
                         object_codes: Iterable[int] | None = None,
                         iou_threshold: float = 0.5) -> EvaluationReport:
    """Evaluate predicted label maps of many images against their ground truth.

    Parameters
    ----------
    items : iterable of (name, truth, prediction)
        One entry per image: a name for the table and two integer label maps of the same shape.
        Consumed once, so a generator reading files one by one keeps memory low.
    schema : ClassSchema
        The classes.
    object_codes : iterable of int, optional
        As in :func:`image_metrics`.
    iou_threshold : float, optional
        IoU at which a true and a predicted object match.

    Returns
    -------
    EvaluationReport
        Per-image table, pooled confusion matrix and object counts.

    Raises
    ------
    ValueError
        If ``items`` is empty or an item is not a (name, truth, prediction) triple, or as in
        :func:`image_metrics` (the message then names the image).
    SchemaError
        As in :func:`image_metrics`, naming the image.
    """
    acc = _Accumulator(schema, object_codes, iou_threshold)
    for index, item in enumerate(items):
        try:
            name, truth, pred = item
        except (TypeError, ValueError):
            raise ValueError(
                f"item {index}: expected a (name, truth, prediction) triple, got "
                f"{type(item).__name__}"
            ) from None
        acc.add(name, truth, pred)
    return acc.report()


class _Accumulator:
    """Adds images one at a time (so callers can predict, report progress and free memory)."""

    def __init__(self, schema: ClassSchema, object_codes: Iterable[int] | None, iou_threshold: float):
        self.schema = schema
        self.codes = _object_codes(schema, object_codes)
        self.threshold = _check_threshold(iou_threshold)
        self.rows: list[dict[str, Any]] = []
        self.total = np.zeros((schema.n_classes, schema.n_classes), dtype=np.int64)
        self.pooled = {code: ObjectMatch.empty() for code in self.codes}

    def add(self, name: str, truth: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
        try:
            row, cm, matches = _evaluate_one(truth, pred, self.schema, self.codes, self.threshold)
        except SchemaError as exc:
            raise SchemaError(f"{name}: {exc}") from exc
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from exc
        self.rows.append({"image": str(name), **row})
        self.total += cm
        for code, match in matches.items():
            self.pooled[code] = self.pooled[code] + match
        return self.rows[-1]

    def report(self) -> EvaluationReport:
        rows, total, schema = self.rows, self.total, self.schema
        if not rows:
            raise ValueError("no images to evaluate: give at least one (name, truth, prediction)")
        notes: list[str] = []
        absent = [c for c in schema.classes
                  if total[c.code, :].sum() == 0 and total[:, c.code].sum() == 0]
        if absent:
            listed = ", ".join(f"{c.letter} ({c.name})" for c in absent)
            notes.append(f"absent from every truth and prediction, IoU/Dice undefined: {listed}")
        names = [r["image"] for r in rows]
        if len(set(names)) != len(names):
            notes.append("some image names occur more than once; rows are in input order")
        return EvaluationReport(schema=schema, table=pd.DataFrame(rows), confusion=total,
                                objects=self.pooled, notes=notes, iou_threshold=self.threshold)
