"""LayerData tuples for napari, built without importing napari (used by the reader and sample),
and the plain helpers the widgets share about layers: where a pixel size comes from, and the
strokes layers' values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .core.schema import UNLABELLED, ClassSchema

#: ``pixel_size_source`` values that mean the pixel size is not known, only assumed (the core's
#: ``"model"``: "the models' own pixel size") or missing.
ASSUMED_PIXEL_SIZE_SOURCES = frozenset({"model", "unknown", ""})
#: What a strokes layer holds where nothing is painted (class ``code`` is stored as ``code + 1``).
NOT_PAINTED = 0


def known_pixel_size(metadata: Mapping[str, Any]) -> tuple[float | None, str]:
    """The pixel size (nm) recorded in ``metadata`` and where it came from.

    Returns ``(None, "unknown")`` when none is recorded or it was only assumed (see
    :data:`ASSUMED_PIXEL_SIZE_SOURCES`); a value without a source counts as ``"metadata"``.
    """
    value = metadata.get("pixel_size_nm")
    source = str(metadata.get("pixel_size_source") or "metadata")
    try:
        px = float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        px = math.nan
    if not (math.isfinite(px) and px > 0) or source in ASSUMED_PIXEL_SIZE_SOURCES:
        return None, "unknown"
    return px, source


def image_layer_data(
    data: np.ndarray, name: str, pixel_size_nm: float, metadata: dict[str, Any] | None = None
) -> tuple[np.ndarray, dict[str, Any], str]:
    """An image layer in physical units (nm), keeping the micrograph's metadata.

    When ``metadata["pixel_size_source"]`` says the pixel size was only assumed (a file without
    calibration), the layer stays in pixels and its metadata records the pixel size as unknown:
    the user gives it (Segment or Export widget), nothing guesses it.
    """
    meta = dict(metadata or {})
    kwargs: dict[str, Any] = {"name": name, "metadata": meta, "colormap": "gray"}
    if str(meta.get("pixel_size_source", "metadata")) in ASSUMED_PIXEL_SIZE_SOURCES:
        meta.update(pixel_size_nm=None, pixel_size_source="unknown")
    else:
        kwargs.update(scale=(pixel_size_nm, pixel_size_nm), units=("nm", "nm"))
    return data, kwargs, "image"


def labels_layer_data(
    labels: np.ndarray, schema: ClassSchema, name: str, pixel_size_nm: float,
    metadata: dict[str, Any] | None = None,
) -> tuple[np.ndarray, dict[str, Any], str]:
    """A labels layer coloured and named by ``schema`` (hovering shows the class name)."""
    colors: dict[int | None, str] = {c.code: c.color for c in schema.classes if c.code != 0}
    colors[0] = "transparent"
    colors[None] = "transparent"
    features = {"index": [c.code for c in schema.classes],
                "class": [c.name for c in schema.classes],
                "letter": [c.letter for c in schema.classes]}
    return (
        labels,
        {"name": name, "scale": (pixel_size_nm, pixel_size_nm), "units": ("nm", "nm"),
         "colormap": colors, "features": features, "opacity": 0.5,
         "metadata": {"schema": schema.to_dict(), **(metadata or {})}},
        "labels",
    )


# -------------------------------------------------------------------------------------------------
# Strokes: scribbles of classes on an otherwise empty layer (partial training labels)
# -------------------------------------------------------------------------------------------------
def stroke_colors(schema: ClassSchema) -> dict[int | None, str]:
    """Colour of each strokes-layer value: ``code + 1`` gets class ``code``'s colour; 0 none."""
    colors: dict[int | None, str] = {c.code + 1: c.color for c in schema.classes}
    colors[NOT_PAINTED] = "transparent"
    colors[None] = "transparent"
    return colors


def stroke_features(schema: ClassSchema) -> dict[str, list]:
    """The features table of a strokes layer (hovering names the class of a stroke)."""
    return {"index": [NOT_PAINTED, *(c.code + 1 for c in schema.classes)],
            "class": ["not painted", *(c.name for c in schema.classes)],
            "letter": ["", *(c.letter for c in schema.classes)]}


def strokes_dtype(schema: ClassSchema) -> np.dtype:
    """The smallest unsigned integer type holding every stroke value of ``schema``."""
    return np.dtype(np.uint8 if schema.n_classes < np.iinfo(np.uint8).max else np.uint16)


def strokes_to_codes(strokes: np.ndarray) -> np.ndarray:
    """Strokes-layer values to training label codes: ``value - 1``, and 0 (not painted) to
    :data:`~napari_emgranules.core.schema.UNLABELLED`.

    napari's Labels treat 0 as "nothing painted", so class 0 is stored as 1, class 1 as 2, ...

    Parameters
    ----------
    strokes : numpy.ndarray
        Integer values of a strokes layer (0 = not painted).

    Returns
    -------
    numpy.ndarray
        uint16 class codes, :data:`UNLABELLED` where nothing is painted.

    Raises
    ------
    ValueError
        For non-integer, negative or too large values (they are not strokes).
    """
    values = np.asarray(strokes)
    if values.dtype.kind not in "iub":
        raise ValueError(f"strokes must be integer label values, got dtype {values.dtype}")
    if values.size and (int(values.min()) < 0 or int(values.max()) > UNLABELLED):
        raise ValueError(f"strokes must lie in 0..{UNLABELLED} (0 = not painted, class c as c + 1), "
                         f"got {int(values.min())}..{int(values.max())}")
    codes = values.astype(np.int64) - 1
    codes[values == NOT_PAINTED] = UNLABELLED
    return codes.astype(np.uint16)
