"""OME-Zarr (NGFF): micrographs in, micrographs and label maps out, through ``ome-zarr-py``.

* :func:`read_ome_zarr` reads the highest resolution of a 2-D image (singleton ``t``, ``c`` and
  ``z`` axes are dropped) and its pixel size from the ``scale`` of level 0 and the axes' units.
  :func:`ome_zarr_level0` gives the same level as a lazy dask array (napari, large images).
* :func:`write_ome_zarr` writes a results store: the micrograph (optional) as the image and each
  label map under ``labels/<kind>`` with the schema's colours and properties (``image-label``),
  all as pyramids with the pixel size in nanometres. The store is written beside its final place
  and renamed into it, so a killed run never leaves half a store under the final name.

Files are named ``<name>.ome.zarr`` (folders); :func:`is_ome_zarr` tells them from other folders.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ._iobase import MicrographError
from .schema import ClassSchema

__all__ = ["OME_ZARR_SUFFIX", "is_ome_zarr", "read_ome_zarr", "ome_zarr_level0", "read_ome_zarr_labels",
           "write_ome_zarr"]

OME_ZARR_SUFFIX = ".ome.zarr"

# units the NGFF spec allows for space axes, in nm
_UNIT_NM = {"angstrom": 0.1, "nanometer": 1.0, "micrometer": 1e3, "millimeter": 1e6,
            "centimeter": 1e7, "meter": 1e9, "picometer": 1e-3}
_PYRAMID = (2, 4, 8)  # downsampling factors written below the full resolution


def is_ome_zarr(path: str | os.PathLike) -> bool:
    """True for a folder named ``*.zarr`` that holds Zarr group metadata (v2 or v3)."""
    p = Path(path)
    return p.suffix.lower() == ".zarr" and p.is_dir() and any(
        (p / name).is_file() for name in ("zarr.json", ".zattrs", ".zgroup"))


def _multiscale_node(path: Path, what: str):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    for name in ("ome_zarr", "ome_zarr.reader"):  # its "No parent found" notes are not ours
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        location = parse_url(str(path))
        nodes = list(Reader(location)()) if location is not None else []
    except Exception as exc:  # zarr/ome-zarr raise many kinds on a broken store
        raise MicrographError(f"{what}: is not a readable OME-Zarr store ({type(exc).__name__}: "
                              f"{exc})") from exc
    for node in nodes:
        if node.specs and isinstance(node.specs[0], Multiscales) and node.data:
            return node
    raise MicrographError(f"{what}: holds no OME-Zarr image (no 'multiscales' metadata)")


def ome_zarr_level0(path: str | os.PathLike, what: str | None = None) -> tuple[Any, dict[str, Any]]:
    """The full-resolution level as a lazy 2-D dask array, and ``{"pixel": (nm, source) or None,
    "axes": [...]}``."""
    what = what or str(path)
    node = _multiscale_node(Path(path), what)
    data = node.data[0]
    axes = node.metadata.get("axes") or []
    names = [a.get("name", "") if isinstance(a, dict) else str(a) for a in axes] or \
        ["t", "c", "z", "y", "x"][-data.ndim:]
    if len(names) != data.ndim:
        raise MicrographError(f"{what}: its axes ({', '.join(names)}) do not match its data "
                              f"({data.ndim} dimensions)")
    keep = []
    for i, (name, size) in enumerate(zip(names, data.shape, strict=True)):
        if name in ("y", "x"):
            keep.append(i)
        elif size != 1:
            raise MicrographError(f"{what}: has {size} planes along '{name}'; a micrograph is one "
                                  "2-D plane (pick one, e.g. in napari, and save it)")
    if [names[i] for i in keep] != ["y", "x"]:
        raise MicrographError(f"{what}: has no y and x axes ({', '.join(names)})")
    index = tuple(slice(None) if i in keep else 0 for i in range(data.ndim))
    plane = data[index]
    return plane, {"pixel": _pixel_size(node.metadata, names, keep, axes), "axes": names}


def _pixel_size(metadata: Mapping[str, Any], names: list[str], keep: list[int],
                axes: list[Any]) -> tuple[float, str] | None:
    transforms = metadata.get("coordinateTransformations") or []
    level0 = transforms[0] if transforms else []
    scale = next((t.get("scale") for t in level0 if t.get("type") == "scale"), None)
    if not scale or len(scale) != len(names):
        return None
    sizes = []
    for i in keep:
        unit = axes[i].get("unit") if i < len(axes) and isinstance(axes[i], dict) else None
        if unit not in _UNIT_NM:
            return None  # no unit (or not a length): not a calibration
        sizes.append(float(scale[i]) * _UNIT_NM[unit])
    if not all(math.isfinite(s) and s > 0 for s in sizes):
        return None
    return float(sizes[1]), "metadata:ome-zarr"  # x; read_micrograph warns about non-square


def read_ome_zarr(path: Path, what: str) -> tuple[np.ndarray, dict[str, Any], tuple[float, str] | None]:
    """The full-resolution plane in memory, file facts, and the pixel size (nm, source) or None."""
    plane, facts = ome_zarr_level0(path, what)
    try:
        data = np.asarray(plane.compute() if hasattr(plane, "compute") else plane)
    except MemoryError as exc:
        raise MicrographError(f"{what}: not enough memory to read its full resolution") from exc
    except Exception as exc:
        raise MicrographError(f"{what}: its chunks cannot be read ({type(exc).__name__}: {exc})") from exc
    return data, {"format": "ome-zarr", "axes": facts["axes"]}, facts["pixel"]


def _label_metadata(schema: ClassSchema) -> dict[str, Any]:
    colours, properties = [], []
    for cls in schema.classes:
        hex_ = cls.color.lstrip("#")
        rgba = [int(hex_[i:i + 2], 16) for i in (0, 2, 4)] + [0 if cls.code == 0 else 255]
        colours.append({"label-value": int(cls.code), "rgba": rgba})
        properties.append({"label-value": int(cls.code), "name": cls.name, "letter": cls.letter,
                           "measured": bool(cls.measured)})
    return {"colors": colours, "properties": properties}


def write_ome_zarr(path: str | os.PathLike, labels: Mapping[str, tuple[np.ndarray, ClassSchema]], *,
                   pixel_size_nm: float | None, image: np.ndarray | None = None,
                   overwrite: bool = False) -> Path:
    """Write ``labels`` (kind -> (label map, schema)) and optionally the micrograph as one
    OME-Zarr store at ``path`` (``*.ome.zarr``); returns the path.

    Raises
    ------
    FileExistsError
        If ``path`` exists and ``overwrite`` is False.
    ValueError
        For label maps of different shapes, or not the image's shape.
    """
    import zarr
    from ome_zarr.writer import write_image, write_labels

    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target}: exists already")
    shapes = {np.shape(a) for a, _ in labels.values()} | ({np.shape(image)} if image is not None else set())
    if len(shapes) > 1:
        raise ValueError(f"{target}: the label maps and image differ in shape ({sorted(shapes)})")
    px = float(pixel_size_nm) if pixel_size_nm else 1.0
    spatial = {"scale": {"y": px, "x": px}, "axes": "yx"}
    if pixel_size_nm:
        spatial["axes_units"] = {"y": "nanometer", "x": "nanometer"}
    side = min(next(iter(shapes)))
    factors = tuple(f for f in _PYRAMID if side // f >= 64)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        root = zarr.open_group(str(tmp), mode="w")
        base = image if image is not None else np.zeros(next(iter(shapes)), np.uint8)
        write_image(np.asarray(base), root, scale_factors=factors, **spatial)
        if image is None:
            root.attrs["emgranules"] = {"image": "none: the micrograph was not stored; the image "
                                                 "array is zeros"}
        for kind, (array, schema) in labels.items():
            write_labels(np.asarray(array), root, name=kind, scaler=None, scale_factors=factors,
                         label_metadata=_label_metadata(schema), **spatial)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def read_ome_zarr_labels(path: str | os.PathLike) -> dict[str, tuple[Any, ClassSchema | None]]:
    """The store's label images by name: (full-resolution array, lazily; its class schema when
    the ``image-label`` properties carry this package's fields, else None)."""
    import zarr

    from .schema import ClassInfo, SchemaError

    try:
        labels = zarr.open_group(str(Path(path) / "labels"), mode="r")
    except Exception:  # no labels group: no label images
        return {}
    attrs = labels.attrs.asdict()
    names = attrs.get("ome", attrs).get("labels", [])
    out: dict[str, tuple[Any, ClassSchema | None]] = {}
    for name in names:
        try:
            group = labels[name]
            meta = group.attrs.asdict()
            meta = meta.get("ome", meta)
            level0 = group[meta["multiscales"][0]["datasets"][0]["path"]]
        except Exception:  # a listed label image that cannot be read: left out
            continue
        props = (meta.get("image-label") or {}).get("properties") or []
        schema = None
        if props and all({"label-value", "name", "letter"} <= set(p) for p in props):
            colours = {c["label-value"]: c["rgba"] for c in (meta["image-label"].get("colors") or [])}
            ordered = sorted(props, key=lambda q: q["label-value"])
            try:
                schema = ClassSchema(name, tuple(ClassInfo(
                    int(p["label-value"]), str(p["letter"]), str(p["name"]),
                    "#" + "".join(f"{int(v):02x}" for v in colours.get(p["label-value"], [0, 0, 0])[:3]),
                    measured=bool(p.get("measured", False))) for p in ordered))
            except (SchemaError, ValueError, TypeError):
                schema = None
        squeezed = level0
        while getattr(squeezed, "ndim", 2) > 2 and squeezed.shape[0] == 1:
            squeezed = squeezed[0]
        out[str(name)] = (squeezed, schema)
    return out
