"""How to segment: one value that every entry point takes.

:class:`SegmentOptions` holds the choices that change how a micrograph is segmented (mode, windows,
speck removal, memory budget, precision, compilation, granule threshold and peak). The in-memory pipeline
(:func:`~.segment.segment_micrograph_iter`), montages by tiles (:func:`~.montage.segment_large_iter`),
batches (:func:`~.batch.batch_iter`, one value per run), the napari model process and the command
line's shared argument group all take it, so a choice is spelled, checked and documented once.
Which models run, and the micrograph's pixel size, are not options: they travel beside it.

Every function that takes ``options=`` also accepts the fields as keyword arguments (scripts keep
``segment_micrograph(img, 0.8, mode="whole")``); :meth:`SegmentOptions.merged` combines the two.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .models import MULTIPLE, PRECISIONS, VIEWS, SegmentationModel

__all__ = ["GRANULE_DIAMETERS_NM", "GRANULE_PEAK", "MODES", "MIN_GRANULE_NM", "PRECISIONS", "SegmentOptions"]

MODES = ("auto", "whole", "tiled", "seed")
"""Inference modes (:mod:`~.segment`)."""

GRANULE_DIAMETERS_NM = (15.0, 40.0)
"""Diameters of glycogen beta particles (nm), smallest and largest."""

MIN_GRANULE_NM = 12.0
"""Default smallest granule diameter kept in the Granules label map (nm).

Glycogen beta particles are 15-40 nm across; 12 nm leaves room for masks drawn tight and a pixel
size 20% off. Measured on synthetic micrographs of six looks (benchmarks/granule_min_size.py,
docs/granule_min_size.md): against 8 nm it
removed 6-40% of the false granules and raised granule F1 in all six.
"""

GRANULE_PEAK = 0.8
"""Default granule peak: a granule is kept only where its most confident pixel reaches this
calibrated probability (the pixels around it, down to the threshold, belong to it).

Thresholding every pixel higher shrinks each granule's mask along with dropping the doubtful
ones; asking the object's peak to be high keeps the masks as the arg-max draws them (hysteresis
thresholding). Measured on synthetic micrographs of nine looks (``python benchmarks/granule_min_size.py
--sizes 12 --peaks ...``: docs/granule_peak.md): against keeping every arg-max granule, a peak of
0.8 removed 31-65% of the false granules and raised object F1 on seven of them by 0.002-0.011
(lowered it by 0.006 where granules are faint and 0.003 on the noisy look).
"""


@dataclass(frozen=True)
class SegmentOptions:
    """How to segment a micrograph (the same for every micrograph of a run).

    Attributes
    ----------
    mode : {"auto", "whole", "tiled", "seed"}
        See :mod:`~.segment`.
    max_window : int, optional
        Largest window side of ``tiled`` (a multiple of 128, at least 256); default the largest
        that fits the memory budget, up to 4096 (2048 without a budget).
    halo : int
        Context kept around each ``tiled`` window's core (px).
    batch_size : int
        Windows per forward pass (``tiled``, ``seed``).
    min_granule_nm : float or None
        Granule objects smaller than a disc this wide become background; None (or 0) keeps the raw
        model output.
    memory_budget_bytes : int, optional
        Memory one micrograph may use; default half the available memory.
    precision : {"float32", "bfloat16", "float16"}
        Compute precision (:meth:`~.models.SegmentationModel.for_inference`).
    jit : bool
        Compile the networks (XLA / ``jax.jit``).
    granule_threshold : float, optional
        Granule where the calibrated probability is at least this (default: the arg-max, 0.5).
    granule_peak : float or None
        Keep a granule (8-connected) only where its most confident pixel reaches this calibrated
        probability (default :data:`GRANULE_PEAK`); None, or a peak at or below the threshold,
        keeps every granule the threshold draws. Confidence maps stay the network's: the pixels
        of a dropped granule keep their doubt, so the Review queue still points at them.
    views : int, optional
        Symmetric views of the input each network averages (1, 2, 4 or 8; more views, more passes):
        default each model card's (:attr:`~.models.ModelCard.views`).

    Raises
    ------
    ValueError
        On construction, one message listing every impossible value or combination.
    """

    mode: str = "auto"
    max_window: int | None = None
    halo: int = 128
    batch_size: int = 1
    min_granule_nm: float | None = MIN_GRANULE_NM
    memory_budget_bytes: int | None = None
    precision: str = "float32"
    jit: bool = False
    granule_threshold: float | None = None
    granule_peak: float | None = GRANULE_PEAK
    views: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.mode not in MODES:
            problems.append(f"mode must be one of {MODES}, got {self.mode!r}")
        if not _is_int(self.batch_size) or not _is_int(self.halo) or self.batch_size < 1 or self.halo < 0:
            problems.append(f"batch_size must be >= 1 and halo >= 0, got {self.batch_size} and "
                            f"{self.halo}")
        if self.max_window is not None:
            if not _is_int(self.max_window) or self.max_window < 2 * MULTIPLE or self.max_window % MULTIPLE:
                problems.append(f"max_window must be a multiple of {MULTIPLE} of at least "
                                f"{2 * MULTIPLE}, got {self.max_window}")
            elif _is_int(self.halo) and self.max_window - 2 * _round_up(self.halo) < MULTIPLE:
                problems.append(f"max_window {self.max_window} is too small for a halo of "
                                f"{_round_up(self.halo)} px on each side (halos are rounded up to "
                                f"multiples of {MULTIPLE})")
        if self.min_granule_nm is not None and not (_is_number(self.min_granule_nm)
                                                    and self.min_granule_nm >= 0):
            problems.append(f"min_granule_nm must be >= 0 nm (or None), got {self.min_granule_nm}")
        if self.memory_budget_bytes is not None and not (_is_int(self.memory_budget_bytes)
                                                         and self.memory_budget_bytes > 0):
            problems.append(f"memory_budget_bytes must be a positive number of bytes, got "
                            f"{self.memory_budget_bytes}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.granule_threshold is not None and not (_is_number(self.granule_threshold)
                                                       and 0 < self.granule_threshold < 1):
            problems.append(f"the granule threshold must lie between 0 and 1, got "
                            f"{self.granule_threshold}")
        if self.granule_peak is not None and not (_is_number(self.granule_peak)
                                                  and 0 < self.granule_peak < 1):
            problems.append(f"the granule peak must lie between 0 and 1 (or be off), got "
                            f"{self.granule_peak}")
        if self.views is not None and self.views not in VIEWS:
            problems.append(f"views must be one of {', '.join(map(str, VIEWS))}, got {self.views!r}")
        if problems:
            raise ValueError("; ".join(problems))

    # ---------------------------------------------------------------------------------------------
    @classmethod
    def merged(cls, options: SegmentOptions | None = None, **overrides: Any) -> SegmentOptions:
        """``options`` (default: the defaults) with the fields named in ``overrides`` replaced.

        Raises
        ------
        TypeError
            For a name that is not a field (listing the fields).
        ValueError
            For impossible values (see the class).
        """
        if options is not None and not isinstance(options, SegmentOptions):
            raise TypeError(f"options must be a SegmentOptions, got {type(options).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"unknown segmentation option(s) {', '.join(unknown)}; the options are "
                            f"{', '.join(sorted(names))}")
        base = options if options is not None else cls()
        return replace(base, **overrides) if overrides else base

    @property
    def speck_nm(self) -> float | None:
        """The speck-removal diameter, or None when off (None or 0)."""
        return self.min_granule_nm or None

    def peak_level(self, model: SegmentationModel) -> float | None:
        """The confidence at which a granule pixel of ``model`` (as :meth:`prepare` returns it)
        reaches :attr:`granule_peak`, or None when no peak applies (not a two-class Granules model,
        no peak, or a peak at or below the threshold)."""
        peak, threshold = self.granule_peak, self.granule_threshold or 0.5
        if peak is None or model.card.kind != "granules" or model.n_classes != 2 or peak <= threshold:
            return None
        # the prepared model labels by its thresholded probability, whose log-odds are the
        # calibrated ones minus logit(threshold); its confidence at a granule pixel is that probability
        return 1.0 / (1.0 + math.exp(-(_logit(peak) - _logit(threshold))))

    def prepare(self, model: SegmentationModel) -> SegmentationModel:
        """``model`` in these options' precision and compilation, with the granule threshold when it
        is a Granules model (cached copies; the model itself is unchanged)."""
        model = model.for_inference(self.precision, self.jit).with_views(self.views)
        return model.with_threshold(self.granule_threshold) if model.card.kind == "granules" else model

    def record(self) -> dict[str, Any]:
        """The options as a plain dict (JSON-ready)."""
        return asdict(self)


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _round_up(halo: int) -> int:
    return -(-max(int(halo), 0) // MULTIPLE) * MULTIPLE


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    try:
        return math.isfinite(float(value)) and not isinstance(value, bool)
    except (TypeError, ValueError):
        return False
