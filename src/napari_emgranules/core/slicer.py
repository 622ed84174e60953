"""3D Slicer segmentations (``.seg.nrrd``) as label maps of our schemas.

3D Slicer saves a segmentation as an NRRD file whose header names each segment
(``Segment<i>_Name``), the layer it is stored in (``Segment<i>_Layer``) and its value there
(``Segment<i>_LabelValue``); the data hold one label image per layer (several layers when
segments overlap). This is the annotation format of another skeletal-muscle TEM glycogen tool and
of its public training set, so labs can train our models on it.

Rules (:func:`read_seg_nrrd`):

* **Names to classes**: a segment's name, lower-cased with spaces, hyphens and other punctuation
  removed, is looked up in the schema's own class names and letters, then in
  :data:`SEGMENT_ALIASES` (``A-band``, ``I band``, ``Z-disc``, ``mitochondria``,
  ``intermyofibrillar``, ``subsarcolemmal``, ``glycogen``, ...), then in the caller's
  ``segment_map`` (which wins over both).
* **Segments of the other model** (a glycogen segment when reading Locations, a band when reading
  Granules) are left out. **Unknown names** are left out too and listed; their pixels are
  :data:`~.schema.UNLABELLED` unless a known segment covers them.
* **Pixels in no segment** are :data:`~.schema.UNLABELLED` (partial labels), or class
  ``unsegmented`` when given (e.g. background for a granule file annotated exhaustively).
* **Overlaps** (a pixel in several segments, on different layers): the segment listed later in the
  header wins, except that a measured class wins over an unmeasured one (a granule over
  background, a band over "other").
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .schema import GRANULES_SCHEMA, LOCATIONS_SCHEMA, UNLABELLED, ClassSchema, name_key

#: Segment names (normalised: lower case, letters and digits only) and the class letter they mean,
#: per schema name.
SEGMENT_ALIASES: Mapping[str, Mapping[str, str]] = {
    "locations": {
        "aband": "A", "abands": "A", "iband": "I", "ibands": "I",
        "zdisc": "Z", "zdisk": "Z", "zdiscs": "Z", "zdisks": "Z", "zline": "Z", "zlines": "Z",
        "zband": "Z", "mitochondria": "Z", "mitochondrion": "Z", "mito": "Z", "mitos": "Z",
        "intermyofibrillar": "S", "intermyofibrillarspace": "S", "imf": "S", "interfibrillar": "S",
        "subsarcolemmal": "N", "subsarcolemmalspace": "N", "ss": "N", "peripheral": "N",
        "periphery": "N", "unclassified": "U", "other": "O", "nucleus": "O", "lipid": "O",
        "lipiddroplet": "O",
    },
    "granules": {
        "glycogen": "G", "glycogengranule": "G", "glycogengranules": "G", "granule": "G",
        "granules": "G", "glycogenparticles": "G", "background": "B",
    },
}


class SegmentationFileError(ValueError):
    """A ``.seg.nrrd`` file that cannot be read as a label map of the schema (message names it)."""


def is_seg_nrrd(path: str | os.PathLike) -> bool:
    """True for a file name ending in ``.nrrd`` (``.seg.nrrd`` is 3D Slicer's)."""
    return str(path).lower().endswith(".nrrd")


def segment_names(header: Mapping[str, Any]) -> dict[int, dict[str, Any]]:
    """The segments of a Slicer header: index -> {name, layer, value}."""
    out: dict[int, dict[str, Any]] = {}
    for key, value in header.items():
        m = re.fullmatch(r"Segment(\d+)_(Name|Layer|LabelValue)", str(key))
        if m:
            out.setdefault(int(m.group(1)), {})[m.group(2)] = value
    return dict(sorted(out.items()))


def _class_table(schema: ClassSchema, segment_map: Mapping[str, int] | None) -> dict[str, int]:
    table: dict[str, int] = {}
    by_letter = {c.letter: c.code for c in schema.classes}
    for alias, letter in SEGMENT_ALIASES.get(schema.kind, {}).items():
        if letter in by_letter:
            table[alias] = by_letter[letter]
    for c in schema.classes:
        table[name_key(c.name)] = c.code
        table[name_key(c.letter)] = c.code
    mito = table.get("mitochondria")  # a schema with mitochondria of their own takes every alias
    if mito is not None and mito != by_letter.get("Z"):
        table.update({alias: mito for alias in SEGMENT_ALIASES.get(schema.kind, {})
                      if alias.startswith("mito")})
    for name, code in (segment_map or {}).items():
        table[name_key(name)] = int(code)
    return table


def guess_kind(names: list[str]) -> str | None:
    """The model a set of segment names is for: "locations", "granules", or None (both or neither)."""
    kinds = {kind for kind, table in SEGMENT_ALIASES.items() for n in names if name_key(n) in table
             and not (kind == "granules" and table[name_key(n)] == "B")}
    return kinds.pop() if len(kinds) == 1 else None


def read_seg_nrrd(path: str | os.PathLike, schema: ClassSchema | None = None, *,
                  segment_map: Mapping[str, int] | None = None,
                  unsegmented: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """A 3D Slicer segmentation as a label map of ``schema`` (see the module's rules).

    Parameters
    ----------
    path : path
        A ``.seg.nrrd`` file of one 2-D slice (a third axis of length 1 is allowed).
    schema : ClassSchema, optional
        Default: Locations or Granules, whichever the segment names are for.
    segment_map : mapping, optional
        Segment name -> class code, over the default names (``{"myofibril": 1}``).
    unsegmented : int, optional
        Class of pixels in no segment (default: :data:`UNLABELLED`).

    Returns
    -------
    (numpy.ndarray, dict)
        uint16 codes, and ``{"schema", "segments": {name: code}, "left_out": [names],
        "unlabelled_fraction"}``.

    Raises
    ------
    SegmentationFileError
        Unreadable file, no segments, not 2-D, or no segment of the schema.
    """
    import nrrd

    p = Path(path)
    try:
        data, header = nrrd.read(str(p), index_order="C")
    except FileNotFoundError:
        raise SegmentationFileError(f"{p}: no such file") from None
    except Exception as exc:  # noqa: BLE001 - pynrrd raises several kinds for damaged files
        raise SegmentationFileError(f"{p}: not a readable NRRD file ({exc})") from None
    segments = segment_names(header)
    if not segments:
        raise SegmentationFileError(f"{p}: names no segments (Segment<i>_Name); save it from 3D "
                                    "Slicer's Segment Editor as a .seg.nrrd")
    names = [str(s.get("Name", f"Segment{i}")) for i, s in segments.items()]
    if schema is None:
        kind = guess_kind(names)
        if kind is None:
            raise SegmentationFileError(
                f"{p}: its segments ({', '.join(names)}) are not all for one model; say which model "
                "the labels are for (--model locations or granules)")
        schema = LOCATIONS_SCHEMA if kind == "locations" else GRANULES_SCHEMA
    arr = np.asarray(data)
    n_layers = max(int(s.get("Layer", 0) or 0) for s in segments.values()) + 1
    if arr.ndim == 4:  # (layers, z, y, x): Slicer's layout when segments overlap
        vol = arr
    elif arr.ndim == 3:  # one layer: (z, y, x)
        vol = arr[None]
    elif arr.ndim == 2:
        vol = arr[None, None]
    else:
        raise SegmentationFileError(f"{p}: holds a {arr.ndim}-D array; expected one 2-D slice")
    if vol.shape[0] < n_layers:
        raise SegmentationFileError(f"{p}: its header names layer {n_layers - 1} but the data hold "
                                    f"{vol.shape[0]} layer(s)")
    if vol.shape[1] != 1:
        raise SegmentationFileError(f"{p}: holds {vol.shape[1]} slices; a label map is one 2-D slice "
                                    "(export the slice from 3D Slicer)")
    planes = vol[:, 0]
    table = _class_table(schema, segment_map)
    other = {a for k, t in SEGMENT_ALIASES.items() if k != schema.kind for a in t}
    measured = {c.code for c in schema.classes if c.measured}
    labels = np.full(planes.shape[1:], UNLABELLED, np.uint16)
    mapped: dict[str, int] = {}
    left_out: list[str] = []
    order = sorted(segments.items(),
                   key=lambda kv: table.get(name_key(kv[1].get("Name", "")), -1) in measured)
    for _, seg in order:  # unmeasured first, measured last: a measured class wins an overlap
        name = str(seg.get("Name", ""))
        code = table.get(name_key(name))
        if code is None:
            left_out.append(name if name_key(name) not in other else f"{name} (the other model's)")
            continue
        if not 0 <= code < schema.n_classes:
            raise SegmentationFileError(f"{p}: segment {name!r} maps to code {code}, not a class of "
                                        f"{schema.kind} (0..{schema.n_classes - 1})")
        layer = int(seg.get("Layer", 0) or 0)
        value = int(seg.get("LabelValue", 1) or 1)
        labels[planes[layer] == value] = code
        mapped[name] = code
    if not mapped:
        raise SegmentationFileError(
            f"{p}: none of its segments ({', '.join(names)}) is a class of {schema.kind} "
            f"({', '.join(c.name for c in schema.classes)}); map them with --segment-map NAME=CODE")
    if unsegmented is not None:
        labels[labels == UNLABELLED] = int(unsegmented)
    info = {"schema": schema.kind, "segments": mapped, "left_out": left_out,
            "unlabelled_fraction": float(np.mean(labels == UNLABELLED))}
    return labels, info


def parse_segment_map(text: str) -> dict[str, int]:
    """``"myofibril=1, lipid droplet=6"`` -> ``{"myofibril": 1, "lipid droplet": 6}``."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        name, sep, code = part.rpartition("=")
        if not sep or not name.strip():
            raise ValueError(f"--segment-map: {part!r} is not NAME=CODE")
        try:
            out[name.strip()] = int(code)
        except ValueError:
            raise ValueError(f"--segment-map: {part!r}: the code must be a whole number") from None
    return out
