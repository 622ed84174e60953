"""LayerData tuples for napari, built without importing napari (used by the reader and sample)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .core.schema import ClassSchema


def image_layer_data(
    data: np.ndarray, name: str, pixel_size_nm: float, metadata: dict[str, Any] | None = None
) -> tuple[np.ndarray, dict[str, Any], str]:
    """An image layer in physical units (nm), keeping the micrograph's metadata."""
    return (
        data,
        {"name": name, "scale": (pixel_size_nm, pixel_size_nm), "units": ("nm", "nm"),
         "metadata": dict(metadata or {}), "colormap": "gray"},
        "image",
    )


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
