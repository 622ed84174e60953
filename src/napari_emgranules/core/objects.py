"""Granule particles as objects other tools read: GeoJSON for QuPath (and any GIS-style reader),
and ImageJ ROI sets for Fiji (:func:`particles_imagej_rois`, written with ``roifile``); the
Locations regions as outlined ``annotation`` objects (:func:`regions_geojson`).

Each particle of the measurement becomes a GeoJSON ``Feature``: its outline as a ``Polygon`` in
pixel coordinates of the micrograph (x = column, y = row, pixel centres at integer + 0.5 as
QuPath draws them), ``objectType`` ``"detection"``, a ``classification`` (name and colour of the
granule class) and ``measurements`` in physical units (area nm², equivalent and Feret diameter
nm, circularity, region). The collection records the image, the pixel size and the tool.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from .schema import GRANULES_SCHEMA

_MEASUREMENTS = (("area_nm2", "Area nm^2"), ("equivalent_diameter_nm", "Equivalent diameter nm"),
                 ("feret_diameter_nm", "Feret diameter nm"), ("circularity", "Circularity"))


def _rgb(color: str) -> list[int]:
    c = color.lstrip("#")
    return [int(c[i:i + 2], 16) for i in (0, 2, 4)]


def _outline(mask: np.ndarray, top: int, left: int) -> list[list[float]]:
    """The outer boundary of a particle (a closed ring of [x, y] pixel-corner coordinates)."""
    from skimage.measure import find_contours

    padded = np.pad(mask, 1)
    contours = find_contours(padded.astype(np.float32), 0.5)
    ring = max(contours, key=len)  # the outer boundary (holes are shorter)
    coords = [[float(c) - 1 + left + 0.5, float(r) - 1 + top + 0.5] for r, c in ring]
    if coords[0] != coords[-1]:
        coords.append(coords[0])
    return coords


def _particle_rings(particle_map: np.ndarray, particles: pd.DataFrame, kept_only: bool):
    """(particle number, table row, closed outline) of each particle of the table, in order."""
    rows = particles[particles["kept"]] if kept_only and len(particles) else particles
    boxes = ndi.find_objects(np.asarray(particle_map))
    for _, row in rows.iterrows():
        k = int(row["particle"])
        box = boxes[k - 1] if k - 1 < len(boxes) else None
        if box is not None:
            yield k, row, _outline(np.asarray(particle_map[box]) == k, box[0].start, box[1].start)


def particles_geojson(particle_map: np.ndarray, particles: pd.DataFrame, *, pixel_size_nm: float,
                      image: str = "image", kept_only: bool = False) -> dict[str, Any]:
    """A GeoJSON FeatureCollection of the particles (rows of ``particles``, labelled in
    ``particle_map`` by their ``particle`` number)."""
    granule = GRANULES_SCHEMA.classes[1]
    features = []
    for k, row, ring in _particle_rings(particle_map, particles, kept_only):
        measurements = {name: float(row[col]) for col, name in _MEASUREMENTS}
        features.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {
                "objectType": "detection", "name": f"granule {k}",
                "classification": {"name": "Glycogen granule", "color": _rgb(granule.color)},
                "measurements": measurements, "region": str(row["region"]), "kept": bool(row["kept"]),
                "particle": k,
            },
        })
    return {"type": "FeatureCollection", "features": features,
            "napari-emgranules": {"image": image, "pixel_size_nm": float(pixel_size_nm),
                                  "coordinates": "pixels (x = column, y = row)"}}


def write_geojson(collection: dict[str, Any], path: str | os.PathLike, *,
                  overwrite: bool = False) -> Path:
    """Write a FeatureCollection atomically (never over an existing file unless ``overwrite``)."""
    from .io import atomic_output

    p = Path(path)
    if p.exists() and not overwrite:
        raise FileExistsError(f"{p}: exists already; nothing was written (--overwrite replaces it)")
    text = json.dumps(collection, separators=(",", ":"))
    with atomic_output(p) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return p


def particles_imagej_rois(particle_map: np.ndarray, particles: pd.DataFrame, *,
                          kept_only: bool = False) -> list[Any]:
    """The particles as ImageJ polygon ROIs (``roifile.ImagejRoi``), named ``granule <n>
    (<region>)``, with the outlines of :func:`particles_geojson` (x = column, y = row)."""
    from roifile import ImagejRoi

    rois = []
    for k, row, ring in _particle_rings(particle_map, particles, kept_only):
        rois.append(ImagejRoi.frompoints(np.asarray(ring[:-1], np.float32),
                                         name=f"granule {k} ({row['region']})"))
    return rois


def write_imagej_rois(rois: list[Any], path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ROIs as an ImageJ ROI set (``.zip``, what Fiji's ROI Manager opens) atomically."""
    from roifile import roiwrite

    from .io import atomic_output

    p = Path(path)
    if p.exists() and not overwrite:
        raise FileExistsError(f"{p}: exists already; nothing was written (--overwrite replaces it)")
    with atomic_output(p) as tmp:
        if rois:
            roiwrite(tmp, rois, mode="w")
        else:  # an empty set: an empty zip Fiji opens as no ROIs
            import zipfile

            zipfile.ZipFile(tmp, "w").close()
    return p


def _rings(mask: np.ndarray, top: int, left: int, tolerance: float) -> list[list[list[float]]]:
    """The outer boundary first, then the holes, of one connected component (closed rings of
    [x, y] pixel-corner coordinates, simplified to ``tolerance`` px)."""
    from skimage.measure import approximate_polygon, find_contours

    contours = find_contours(np.pad(mask, 1).astype(np.float32), 0.5)
    contours.sort(key=len, reverse=True)  # the outer boundary is the longest
    rings = []
    for contour in contours:
        simple = approximate_polygon(contour, tolerance) if tolerance > 0 else contour
        if len(simple) < 4:
            continue
        ring = [[float(c) - 1 + left + 0.5, float(r) - 1 + top + 0.5] for r, c in simple]
        if ring[0] != ring[-1]:
            ring.append(ring[0])
        rings.append(ring)
    return rings


def regions_geojson(locations: np.ndarray, schema: Any = None, *, pixel_size_nm: float | None = None,
                    image: str = "image", min_area_px: int = 64, tolerance: float = 1.0) -> dict[str, Any]:
    """The measured regions of a Locations map as a GeoJSON FeatureCollection: one ``annotation``
    per connected component of at least ``min_area_px`` pixels, a ``Polygon`` with its holes,
    classified by the region's name and colour, with its area in px (and um^2 with a pixel size)."""
    from .schema import LOCATIONS_SCHEMA

    schema = schema or LOCATIONS_SCHEMA
    loc = np.asarray(locations)
    features = []
    for code in schema.measured_codes:
        components, n = ndi.label(loc == code, structure=np.ones((3, 3), bool))
        if not n:
            continue
        sizes = np.bincount(components.ravel())
        for k, box in enumerate(ndi.find_objects(components), start=1):
            if box is None or sizes[k] < min_area_px:
                continue
            rings = _rings(components[box] == k, box[0].start, box[1].start, tolerance)
            if not rings:
                continue
            measurements = {"Area px": float(sizes[k])}
            if pixel_size_nm:
                measurements["Area um^2"] = float(sizes[k]) * pixel_size_nm ** 2 / 1e6
            features.append({
                "type": "Feature", "geometry": {"type": "Polygon", "coordinates": rings},
                "properties": {"objectType": "annotation", "name": f"{schema.letters[code]} {k}",
                               "classification": {"name": schema.names[code],
                                                  "color": _rgb(schema.classes[code].color)},
                               "region": schema.letters[code], "measurements": measurements},
            })
    return {"type": "FeatureCollection", "features": features,
            "napari-emgranules": {"image": image, "pixel_size_nm": pixel_size_nm,
                                  "coordinates": "pixels (x = column, y = row)"}}
