"""napari writer: a micrograph and its label layers saved as one OME-Zarr store.

*File > Save Selected Layers...* with a ``.zarr`` name: the selected image layer (optional) and
labels layers go into one store (:func:`~.core.omezarr.write_ome_zarr`): the image, and each labels
layer under ``labels/<kind>`` (``locations``/``granules`` for the Segment widget's layers, else the
layer's name) with its schema's names and colours, the pixel size from the layers' scale in nm.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from .core.schema import ClassSchema, default_schema

META = "emgranules"


def _kind(meta: dict[str, Any], used: set[str]) -> str:
    kind = (meta.get("metadata") or {}).get(META, {}).get("kind")
    name = kind or re.sub(r"[^0-9A-Za-z_.-]+", "_", str(meta.get("name", "labels"))).strip("_") or "labels"
    base, k = name, 2
    while name in used:
        name, k = f"{base}_{k}", k + 1
    used.add(name)
    return name


def _schema(meta: dict[str, Any], data: np.ndarray) -> ClassSchema:
    stored = (meta.get("metadata") or {}).get("schema")
    if stored:
        return ClassSchema.from_dict(stored)
    top = int(np.max(data)) if np.size(data) else 0
    if top > 6:
        raise ValueError(f"{meta.get('name', 'labels')}: codes up to {top} and no class schema in "
                         "its metadata: save it as TIFF instead")
    return default_schema("granules" if top <= 1 else "locations")


def write_ome_zarr_layers(path: str, layer_data: list[tuple[Any, dict, str]]) -> list[str]:
    """The npe2 writer: ``layer_data`` as (data, meta, layer type); returns the written path."""
    from .core.omezarr import write_ome_zarr

    images = [(np.asarray(d), m) for d, m, t in layer_data if t == "image"]
    labels = [(np.asarray(d), m) for d, m, t in layer_data if t == "labels"]
    if len(images) > 1:
        raise ValueError("select one image layer (the micrograph) and its label layers")
    if not labels:
        raise ValueError("select at least one labels layer to save as OME-Zarr labels")
    used: set[str] = set()
    maps = {_kind(m, used): (d, _schema(m, d)) for d, m in labels}
    scales = [tuple(m.get("scale") or (1.0, 1.0)) for _, m in images + labels]
    units = [tuple(m.get("units") or ()) for _, m in images + labels]
    px = None
    if any(u and str(u[-1]) in ("nm", "nanometer") for u in units):
        px = float(scales[0][-1])
    target = Path(path)
    if target.suffix.lower() != ".zarr":
        target = target.with_name(target.name + ".ome.zarr")
    image = images[0][0] if images else None
    return [str(write_ome_zarr(target, maps, pixel_size_nm=px, image=image))]
