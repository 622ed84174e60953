"""Measurements from a pair of label maps: the per-region density table, granule particles,
Z-disk widths, and the volume fraction by stereology.

Density table (seed-exact)
    For each measured Locations code (default 1..5 = A, I, Z, S, N) the region's area in pixels,
    the granule pixels inside it and ``pf = granule px / area px``, exactly as the original
    ``granule_density`` utility counts them. A region absent from the image has area 0, granules
    0 and ``pf`` NaN (the seed's text tables write -1). Unclassified and other codes give no row.
    Areas are also given in um^2, and every row records the pixel size and where it came from.

Granule particles
    Connected granule components (8-connected), optionally split where granules touch. Per
    particle: its region (by the majority of its pixels), area, equivalent and maximal Feret
    diameters in nm, and circularity ``4 pi A / P^2``. :class:`ParticleFilter` keeps the
    particles whose size and shape fit glycogen beta-particles (about 10-45 nm, round).

Z-disk width
    Area over skeleton length of each connected Z component, in nm. Mitochondria share the Z
    label (as in the seed), so components wider than ``max_width_nm`` are reported but not kept.

Stereology
    ``vf`` per region from ``pf`` through :mod:`.stereology` (baskets of virtual granules by
    default, with the micrograph's own measured diameters).

Writers
    Tidy CSV, and the seed's two text tables (areas/granule pixels; densities with 4 decimals).

All of this is plain numpy/scipy and runs in well under a second for a 4096 x 4096 pair
(``python benchmarks/bench_measure.py``).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from .io import atomic_output
from .schema import LOCATIONS_SCHEMA, ClassSchema, SchemaError

logger = logging.getLogger(__name__)

__all__ = [
    "REGION_COLUMNS",
    "PARTICLE_COLUMNS",
    "ParticleFilter",
    "Measurement",
    "density_table",
    "pf_standard_error",
    "tile_density_tables",
    "granule_particles",
    "summarise_particles",
    "z_disk_widths",
    "measure_labels",
    "measure_segmentation",
    "format_seed_areas",
    "format_seed_densities",
    "write_seed_tables",
    "write_csv",
    "SEED_AREAS_FILE",
    "SEED_DENSITIES_FILE",
]

PathLike = str | os.PathLike

REGION_COLUMNS: tuple[str, ...] = (
    "image", "tile", "region_code", "region", "region_name", "area_px", "area_um2", "granule_px",
    "pf", "pf_se", "vf", "granule_count", "granules_per_um2", "mean_diameter_nm", "sd_diameter_nm",
    "pixel_size_nm", "pixel_size_source", "section_nm", "vf_method", "path",
)
"""Columns of the tidy density table, one row per image (and tile) and measured region."""

PARTICLE_COLUMNS: tuple[str, ...] = (
    "image", "tile", "particle", "region_code", "region", "row", "col", "area_px", "area_nm2",
    "equivalent_diameter_nm", "feret_diameter_nm", "perimeter_nm", "circularity", "kept",
)
"""Columns of the particle table, one row per connected granule particle."""

Z_COLUMNS: tuple[str, ...] = (
    "image", "component", "row", "col", "area_nm2", "length_nm", "width_nm", "kept",
)

SEED_AREAS_FILE = "location and granule areas.txt"
SEED_DENSITIES_FILE = "granule densities.txt"
_SEED_NAME_WIDTH = 35  # the seed keeps the first 35 characters of the file name (A35)

# Benkrid-Crookes perimeter weights: value of a border pixel's 3x3 code (self 1, edge neighbours
# 2, corner neighbours 10, counting only border pixels of the same object) -> boundary length.
_PERIMETER_WEIGHTS = np.zeros(50)
_PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1.0
_PERIMETER_WEIGHTS[[21, 33]] = math.sqrt(2.0)
_PERIMETER_WEIGHTS[[13, 23]] = (1.0 + math.sqrt(2.0)) / 2.0
_FERET_ANGLES = np.linspace(0.0, np.pi, 36, endpoint=False)


# -------------------------------------------------------------------------------------------------
# input checks
# -------------------------------------------------------------------------------------------------
def _check_pair(locations: np.ndarray, granules: np.ndarray,
                schema: ClassSchema) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(locations, granule mask)``; raises ValueError naming the problem."""
    loc, gra = np.asarray(locations), np.asarray(granules)
    for arr, what in ((loc, "locations"), (gra, "granules")):
        if arr.ndim != 2:
            raise ValueError(f"{what}: a label map must be 2-D, got shape {arr.shape}")
        if arr.size == 0:
            raise ValueError(f"{what}: the label map is empty (shape {arr.shape})")
        if arr.dtype.kind not in "iub":
            raise ValueError(f"{what}: label maps must hold integer codes, got dtype {arr.dtype}")
    if loc.shape != gra.shape:
        raise ValueError(f"the locations map ({loc.shape[0]}x{loc.shape[1]}) and the granules map "
                         f"({gra.shape[0]}x{gra.shape[1]}) differ in size; give maps of one micrograph")
    schema.check_labels(loc, "locations")
    if gra.dtype != bool:
        lo, hi = gra.min(), gra.max()
        if lo < 0 or (hi > 1 and np.any((gra != 0) & (gra != hi))):
            raise ValueError(f"granules: expected a two-class map (0 = background, 1 = granule), "
                             f"got values {np.unique(gra)[:10].tolist()}")
    mask = gra.astype(bool, copy=False)
    return loc.astype(np.uint8 if loc.dtype.itemsize == 1 else np.intp, copy=False), mask


def _check_pixel_size(pixel_size_nm: float | None) -> float:
    if pixel_size_nm is None:
        return math.nan
    try:
        value = float(pixel_size_nm)
    except (TypeError, ValueError):
        raise ValueError(f"pixel_size_nm must be a number of nanometres, got {pixel_size_nm!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"pixel_size_nm must be positive and finite, got {pixel_size_nm!r}")
    return value


# -------------------------------------------------------------------------------------------------
# density table
# -------------------------------------------------------------------------------------------------
def code_counts(labels: np.ndarray, minlength: int = 0) -> np.ndarray:
    """Pixels per code of a label map (``np.bincount`` of it, at least ``minlength`` long).

    A map of a few 8-bit codes is counted by one comparison per code, which is several times
    faster than a histogram that widens every pixel to 64 bits first.
    """
    labels = np.asarray(labels)
    hi = int(labels.max()) if labels.size else -1
    if labels.dtype != np.uint8 or hi >= 16:
        return np.bincount(labels.ravel(), minlength=minlength)
    counts = np.zeros(max(minlength, hi + 1), dtype=np.int64)
    counts[:hi + 1] = [np.count_nonzero(labels == c) for c in range(hi + 1)]
    return counts


def _region_counts(loc: np.ndarray, mask: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels per code, and granule pixels per code."""
    n = max(n, int(loc.max()) + 1)
    if loc.dtype == np.uint8:
        return code_counts(loc, n), np.bincount(loc[mask], minlength=n)
    both = np.bincount((loc.ravel().astype(np.intp) << 1) | mask.ravel(), minlength=2 * n)
    both = both.reshape(n, 2)
    return both.sum(axis=1), both[:, 1]


def density_table(locations: np.ndarray, granules: np.ndarray, *,
                  schema: ClassSchema | None = None, pixel_size_nm: float | None = None,
                  pixel_size_source: str = "unknown", image: str = "image", tile: str = "",
                  path: str = "") -> pd.DataFrame:
    """Per-region area, granule pixels and pixel fraction of one micrograph (or tile).

    Parameters
    ----------
    locations, granules : numpy.ndarray
        Locations codes and the granule map (0 background, 1 granule) of one shape.
    schema : ClassSchema, optional
        Locations schema; its measured codes (default A, I, Z, S, N) give one row each.
    pixel_size_nm : float, optional
        Pixel size; without it the um^2 columns are NaN.
    pixel_size_source, image, tile, path : str
        Recorded in every row.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`REGION_COLUMNS`; ``pf`` is NaN for a region with no pixels; ``pf_se`` is
        its standard error over the image's fields (:func:`pf_standard_error`). The particle
        and stereology columns are NaN here (see :func:`measure_labels`).

    Raises
    ------
    ValueError
        On maps of different shapes, non-integer or out-of-schema codes, or a granule map with
        more than two values.
    """
    schema = schema or LOCATIONS_SCHEMA
    loc, mask = _check_pair(locations, granules, schema)
    return _density_rows(loc, mask, schema, _check_pixel_size(pixel_size_nm), pixel_size_source,
                         image, tile, path)


PF_FIELDS = 4
"""Fields per side (4 x 4) over which ``pf_se`` measures how much ``pf`` varies in an image."""


def _field_counts(loc: np.ndarray, mask: np.ndarray, n: int,
                  fields: int = PF_FIELDS) -> tuple[np.ndarray, np.ndarray]:
    """Pixels and granule pixels per code in each of ``fields`` x ``fields`` fields: (k, n) each.

    Their sums over the fields are the whole image's counts, so counting stays one pass.
    """
    n = max(n, int(loc.max(initial=0)) + 1)  # one width for every field
    rows = np.linspace(0, loc.shape[0], min(fields, loc.shape[0]) + 1).astype(int)
    cols = np.linspace(0, loc.shape[1], min(fields, loc.shape[1]) + 1).astype(int)
    counts = [_region_counts(loc[r0:r1, c0:c1], mask[r0:r1, c0:c1], n)
              for r0, r1 in zip(rows[:-1], rows[1:], strict=True)
              for c0, c1 in zip(cols[:-1], cols[1:], strict=True)] or [(np.zeros(n, np.int64),) * 2]
    return np.array([a for a, _ in counts]), np.array([g for _, g in counts])


def pf_standard_error(area: np.ndarray, granule_px: np.ndarray) -> np.ndarray:
    """Standard error of ``pf`` from its variation between the fields of one image.

    ``pf = sum(granule_px) / sum(area)`` is a ratio estimator over the fields (rows of the
    ``(fields, regions)`` arrays); its variance is estimated as in cluster sampling (Cochran,
    *Sampling Techniques*, 1977, 6.9): ``k / (k - 1) * sum((g_i - pf a_i)^2) / (sum a_i)^2`` over
    the ``k`` fields that hold the region. NaN for a region in fewer than two fields: one field
    cannot say how much pf varies. A region spread evenly gives a small error; one seen in a
    corner, or whose granules cluster in one field, a large one.
    """
    a = np.asarray(area, dtype=float)
    g = np.asarray(granule_px, dtype=float)
    total = a.sum(axis=0)
    k = np.count_nonzero(a > 0, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        pf = g.sum(axis=0) / total
        resid = ((g - pf * a) ** 2).sum(axis=0)
        var = k / np.maximum(k - 1, 1) * resid / (total * total)
    return np.where(k >= 2, np.sqrt(var), np.nan)


def _density_rows(loc: np.ndarray, mask: np.ndarray, schema: ClassSchema, px: float, source: str,
                  image: str, tile: str, path: str) -> pd.DataFrame:
    field_area, field_gran = _field_counts(loc, mask, schema.n_classes)
    area, gran = field_area.sum(axis=0), field_gran.sum(axis=0)
    codes = list(schema.measured_codes)
    a, g = area[codes].astype(np.int64), gran[codes].astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        pf = np.where(a > 0, g / np.maximum(a, 1), np.nan)
    pf_se = pf_standard_error(field_area[:, codes], field_gran[:, codes])
    nan = np.full(len(codes), np.nan)
    return pd.DataFrame({
        "image": image, "tile": tile, "region_code": codes,
        "region": [schema.letters[c] for c in codes], "region_name": [schema.names[c] for c in codes],
        "area_px": a, "area_um2": a * (px * px) / 1e6, "granule_px": g, "pf": pf, "pf_se": pf_se,
        "vf": nan,
        "granule_count": nan, "granules_per_um2": nan, "mean_diameter_nm": nan,
        "sd_diameter_nm": nan, "pixel_size_nm": px, "pixel_size_source": source,
        "section_nm": np.nan, "vf_method": "", "path": path,
    }, columns=list(REGION_COLUMNS))


def _tiles(shape: tuple[int, int], tile: int) -> list[tuple[str, tuple[slice, slice]]]:
    """The seed's tiles of a micrograph, numbered as ``split_EM_to_newdim`` does (column-major)."""
    h, w = shape
    if tile < 1 or h % tile or w % tile:
        raise ValueError(f"a {w}x{h} map cannot be cut into {tile}x{tile} tiles as the seed does "
                         f"(its sides must be multiples of {tile})")
    ny, nx = h // tile, w // tile
    return [(str(a * ny + b), (slice(b * tile, (b + 1) * tile), slice(a * tile, (a + 1) * tile)))
            for a in range(nx) for b in range(ny)]


def tile_density_tables(locations: np.ndarray, granules: np.ndarray, *, tile: int = 1024,
                        schema: ClassSchema | None = None, pixel_size_nm: float | None = None,
                        pixel_size_source: str = "unknown", image: str = "image",
                        path: str = "") -> pd.DataFrame:
    """:func:`density_table` of each of the seed's ``tile`` x ``tile`` tiles.

    Tiles are numbered as the original splitter numbers them (column by column), and the
    ``tile`` column holds that number as text, so ``image`` + ``_`` + ``tile`` is the seed's
    tile file stem.
    """
    schema = schema or LOCATIONS_SCHEMA
    loc, mask = _check_pair(locations, granules, schema)
    px = _check_pixel_size(pixel_size_nm)
    frames = [_density_rows(loc[s], mask[s], schema, px, pixel_size_source, image, name, path)
              for name, s in _tiles(loc.shape, tile)]
    return pd.concat(frames, ignore_index=True)


# -------------------------------------------------------------------------------------------------
# particles
# -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParticleFilter:
    """Which granule particles count: size and shape of glycogen beta-particles.

    Parameters
    ----------
    min_diameter_nm, max_diameter_nm : float
        Range of equivalent diameters kept (default 10-45 nm: beta-particles are about 15-40 nm;
        smaller specks are noise, larger blobs are touching granules or stain).
    min_circularity : float
        Smallest ``4 pi A / P^2`` kept (1 for a disc; two touching discs score about 0.6).
    """

    min_diameter_nm: float = 10.0
    max_diameter_nm: float = 45.0
    min_circularity: float = 0.7

    def __post_init__(self) -> None:
        lo, hi, c = self.min_diameter_nm, self.max_diameter_nm, self.min_circularity
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo < hi):
            raise ValueError(f"particle diameters: need 0 <= min < max (nm), got {lo} and {hi}")
        if not (math.isfinite(c) and 0 <= c <= 1):
            raise ValueError(f"min_circularity must be within 0..1, got {c}")

    def keep(self, diameter_nm: np.ndarray, circularity: np.ndarray) -> np.ndarray:
        """Boolean mask of the particles that pass."""
        return ((diameter_nm >= self.min_diameter_nm) & (diameter_nm <= self.max_diameter_nm)
                & (circularity >= self.min_circularity))


_EIGHT = np.ones((3, 3), dtype=bool)


def _split_touching(labels: np.ndarray, n: int, min_diameter_px: float, candidates: np.ndarray) -> int:
    """Split the ``candidates`` components in place at the necks between touching granules.

    Each candidate is cut by a watershed of its distance transform from one seed per local
    maximum at least a minimal granule radius apart. Returns the new number of labels.
    """
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    radius = max(1, int(round(min_diameter_px / 2)))
    boxes = ndi.find_objects(labels)
    for lab in np.flatnonzero(candidates) + 1:
        box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in boxes[lab - 1])
        crop = labels[box]
        own = crop == lab
        dist = ndi.distance_transform_edt(own)
        peaks = peak_local_max(dist, min_distance=radius, labels=own.astype(np.uint8),
                               exclude_border=False)
        if len(peaks) < 2:
            continue
        markers = np.zeros(crop.shape, dtype=np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        parts = watershed(-dist, markers, mask=own)
        crop[own & (parts > 1)] = parts[own & (parts > 1)] + n - 1
        n += len(peaks) - 1
    return n


def _shape_features(labels: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Area, centroid, perimeter and maximal Feret diameter (pixels) of labels 1..n.

    Works on the object pixels only (flat indices into a 1-pixel padded copy), so the cost grows
    with the granule area, not with the image.
    """
    padded = np.pad(labels, 1)
    width = padded.shape[1]
    idx = np.flatnonzero(padded)
    lab = padded.ravel()[idx]
    flat = padded.ravel()
    edge = (-1, 1, -width, width)
    corner = (-width - 1, -width + 1, width - 1, width + 1)
    inner = np.ones(idx.size, dtype=bool)
    for o in edge:
        inner &= flat[idx + o] == lab
    bidx, blab = idx[~inner], lab[~inner]
    is_border = np.zeros(flat.size, dtype=bool)
    is_border[bidx] = True
    code = np.ones(bidx.size, dtype=np.intp)
    for weight, offsets in ((2, edge), (10, corner)):
        for o in offsets:
            code += weight * (is_border[bidx + o] & (flat[bidx + o] == blab))
    rows, cols = np.divmod(idx, width)
    area = np.bincount(lab, minlength=n + 1)[1:].astype(float)
    return {
        "area": area,
        "row": np.bincount(lab, rows, minlength=n + 1)[1:] / area - 1,
        "col": np.bincount(lab, cols, minlength=n + 1)[1:] / area - 1,
        "perimeter": np.bincount(blab, _PERIMETER_WEIGHTS[np.minimum(code, 49)], minlength=n + 1)[1:],
        "feret": _feret(bidx, blab, width, n),
    }


def _feret(bidx: np.ndarray, blab: np.ndarray, width: int, n: int) -> np.ndarray:
    """Maximal caliper diameter of each object's pixel squares, over 36 directions."""
    order = np.argsort(blab, kind="stable")
    blab, (r, c) = blab[order], np.divmod(bidx[order], width)
    starts = np.flatnonzero(np.r_[True, blab[1:] != blab[:-1]])
    cos, sin = np.cos(_FERET_ANGLES), np.sin(_FERET_ANGLES)
    proj = r[:, None].astype(np.float32) * cos + c[:, None].astype(np.float32) * sin
    extent = np.maximum.reduceat(proj, starts) - np.minimum.reduceat(proj, starts)
    out = np.zeros(n)
    out[blab[starts] - 1] = (extent + np.abs(cos) + np.abs(sin)).max(axis=1)
    return out


def _majority_region(labels: np.ndarray, loc: np.ndarray, n: int, n_codes: int) -> np.ndarray:
    """Locations code covering most of each particle's pixels."""
    sel = labels > 0
    counts = np.bincount(labels[sel].astype(np.intp) * n_codes + loc[sel], minlength=(n + 1) * n_codes)
    return counts.reshape(n + 1, n_codes)[1:].argmax(axis=1)


def granule_particles(granules: np.ndarray, locations: np.ndarray | None = None, *,
                      pixel_size_nm: float, schema: ClassSchema | None = None,
                      filters: ParticleFilter | None = None, split_touching: bool = False,
                      image: str = "image", tile: str = "") -> pd.DataFrame:
    """Connected granule particles with their region, sizes in nm and shape.

    Parameters
    ----------
    granules : numpy.ndarray
        Granule map (0 background, 1 granule).
    locations : numpy.ndarray, optional
        Locations codes of the same shape; each particle gets the region covering most of it.
    pixel_size_nm : float
        Pixel size (sizes are reported in nm).
    schema : ClassSchema, optional
        Locations schema (region letters).
    filters : ParticleFilter, optional
        Size and shape ranges for the ``kept`` column (default :class:`ParticleFilter`).
    split_touching : bool
        Cut components that fail the filters (too large or not round) at the necks between
        touching granules (distance-transform watershed) before measuring.
    image, tile : str
        Recorded in every row.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`PARTICLE_COLUMNS`; ``row``/``col`` are the centroid in pixels, ``kept``
        says whether the particle passed ``filters``.
    """
    return granule_objects(granules, locations, pixel_size_nm=pixel_size_nm, schema=schema,
                           filters=filters, split_touching=split_touching, image=image, tile=tile)[1]


def granule_objects(granules: np.ndarray, locations: np.ndarray | None = None, *,
                    pixel_size_nm: float, schema: ClassSchema | None = None,
                    filters: ParticleFilter | None = None, split_touching: bool = False,
                    image: str = "image", tile: str = "") -> tuple[np.ndarray, pd.DataFrame]:
    """:func:`granule_particles`, and the particles' label image (particle ``k`` of the table is
    the pixels labelled ``k``), e.g. for their outlines (:mod:`.objects`)."""
    schema = schema or LOCATIONS_SCHEMA
    filters = filters or ParticleFilter()
    px = _check_pixel_size(pixel_size_nm)
    if math.isnan(px):
        raise ValueError("pixel_size_nm is needed to measure particles in nm")
    if locations is None:
        locations = np.zeros(np.shape(granules), dtype=np.uint8)
    loc, mask = _check_pair(locations, granules, schema)
    return _particles(loc, mask, schema, px, filters, split_touching, image, tile)


def _particles(loc: np.ndarray, mask: np.ndarray, schema: ClassSchema, px: float,
               filters: ParticleFilter, split_touching: bool, image: str,
               tile: str) -> tuple[np.ndarray, pd.DataFrame]:
    labels, n = ndi.label(mask, structure=_EIGHT)
    if n == 0:
        return labels, _empty_particles()
    feats = _shape_features(labels, n)
    if split_touching:
        bad = ~filters.keep(_eq_diameter(feats["area"]) * px, _circularity(feats))
        bad &= feats["area"] * px * px > math.pi * (filters.min_diameter_nm / 2) ** 2 * 2
        if bad.any():
            n = _split_touching(labels, n, filters.min_diameter_nm / px, bad)
            feats = _shape_features(labels, n)
    codes = _majority_region(labels, loc, n, max(schema.n_classes, int(loc.max()) + 1))
    diameter = _eq_diameter(feats["area"]) * px
    circ = _circularity(feats)
    letters = schema.letters
    return labels, pd.DataFrame({
        "image": image, "tile": tile, "particle": np.arange(1, n + 1), "region_code": codes,
        "region": [letters.get(int(c), str(int(c))) for c in codes],
        "row": feats["row"], "col": feats["col"], "area_px": feats["area"].astype(np.int64),
        "area_nm2": feats["area"] * px * px, "equivalent_diameter_nm": diameter,
        "feret_diameter_nm": feats["feret"] * px, "perimeter_nm": feats["perimeter"] * px,
        "circularity": circ, "kept": filters.keep(diameter, circ),
    }, columns=list(PARTICLE_COLUMNS))


def _empty_particles() -> pd.DataFrame:
    text = ("image", "tile", "region")
    return pd.DataFrame({c: pd.Series(dtype=object if c in text else bool if c == "kept" else float)
                         for c in PARTICLE_COLUMNS})


def _eq_diameter(area_px: np.ndarray) -> np.ndarray:
    return 2.0 * np.sqrt(area_px / math.pi)


def _circularity(feats: dict[str, np.ndarray]) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        circ = 4 * math.pi * feats["area"] / feats["perimeter"] ** 2
    # A one- or two-pixel speck has a near-zero Benkrid perimeter; call it round.
    return np.where(feats["perimeter"] > 0, np.minimum(circ, 1.0), 1.0)


def summarise_particles(regions: pd.DataFrame, particles: pd.DataFrame) -> pd.DataFrame:
    """Fill the count and diameter columns of a density table from its kept particles.

    Rows are matched on ``image``, ``tile`` and ``region_code``. A region without kept particles
    gets count 0 and NaN diameters; a region with no area keeps NaN throughout.
    """
    out = regions.copy()
    kept = particles[particles["kept"]] if len(particles) else particles
    keys = ["image", "tile", "region_code"]
    stats = (kept.groupby(keys)["equivalent_diameter_nm"].agg(["size", "mean", "std"])
             if len(kept) else pd.DataFrame(columns=["size", "mean", "std"]))
    idx = pd.MultiIndex.from_frame(out[keys])
    stats = stats.reindex(idx)
    count = stats["size"].fillna(0).to_numpy(dtype=float)
    has_area = out["area_px"].to_numpy() > 0
    out["granule_count"] = np.where(has_area, count, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["granules_per_um2"] = np.where(has_area, count / out["area_um2"].to_numpy(), np.nan)
    out["mean_diameter_nm"] = stats["mean"].to_numpy(dtype=float)
    out["sd_diameter_nm"] = stats["std"].to_numpy(dtype=float)
    return out


# -------------------------------------------------------------------------------------------------
# Z-disk width
# -------------------------------------------------------------------------------------------------
def _skeleton_length(mask: np.ndarray) -> float:
    """Length of a mask's skeleton in pixels (orthogonal steps 1, diagonal steps sqrt 2)."""
    from skimage.morphology import skeletonize

    sk = np.pad(skeletonize(mask), 1)
    orth = np.count_nonzero(sk[1:, :] & sk[:-1, :]) + np.count_nonzero(sk[:, 1:] & sk[:, :-1])
    diag = np.count_nonzero(sk[1:, 1:] & sk[:-1, :-1]) + np.count_nonzero(sk[1:, :-1] & sk[:-1, 1:])
    return orth + math.sqrt(2.0) * diag + 1.0


def z_disk_widths(locations: np.ndarray, *, pixel_size_nm: float, z_code: int | None = None,
                  schema: ClassSchema | None = None, max_width_nm: float = 150.0,
                  min_length_nm: float = 200.0, image: str = "image") -> pd.DataFrame:
    """Width (area / length) of each connected Z component, in nm.

    The length is the component's skeleton length plus its width (the skeleton of a band ends
    half a width before each end).

    Parameters
    ----------
    locations : numpy.ndarray
        Locations codes.
    pixel_size_nm : float
        Pixel size.
    z_code : int, optional
        Code of the Z label (default: the schema's class with letter ``Z``).
    schema : ClassSchema, optional
        Locations schema.
    max_width_nm, min_length_nm : float
        Components wider than ``max_width_nm`` (mitochondria share the Z label) or shorter than
        ``min_length_nm`` (fragments) are listed with ``kept`` False.
    image : str
        Recorded in every row.

    Returns
    -------
    pandas.DataFrame
        Columns ``image, component, row, col, area_nm2, length_nm, width_nm, kept``. Z disks
        are typically 50-100 nm wide, wider in slow (type I) fibres than in fast ones.
    """
    schema = schema or LOCATIONS_SCHEMA
    px = _check_pixel_size(pixel_size_nm)
    if math.isnan(px):
        raise ValueError("pixel_size_nm is needed to measure Z-disk widths in nm")
    loc = np.asarray(locations)
    if loc.ndim != 2 or loc.size == 0 or loc.dtype.kind not in "iub":
        raise ValueError(f"locations: need a non-empty 2-D integer map, got shape {loc.shape} "
                         f"and dtype {loc.dtype}")
    if z_code is None:
        z_codes = [c for c, letter in schema.letters.items() if letter == "Z"]
        if not z_codes:
            raise SchemaError("the locations schema has no class with letter Z; pass z_code")
        z_code = z_codes[0]
    labels, n = ndi.label(loc == z_code, structure=_EIGHT)
    rows = []
    for i, box in enumerate(ndi.find_objects(labels), start=1):
        own = labels[box] == i
        area = float(own.sum())
        # The skeleton stops about half a width short of each end of a band, so the band's
        # length is skeleton + width, and width = area / length solves w^2 + skel w - area = 0.
        skel = _skeleton_length(own)
        width = (math.sqrt(skel * skel + 4.0 * area) - skel) / 2.0
        length = skel + width
        rr, cc = np.nonzero(own)
        rows.append((image, i, box[0].start + rr.mean(), box[1].start + cc.mean(), area * px * px,
                     length * px, width * px,
                     bool(width * px <= max_width_nm and length * px >= min_length_nm)))
    return pd.DataFrame(rows, columns=list(Z_COLUMNS))


# -------------------------------------------------------------------------------------------------
# everything for one micrograph
# -------------------------------------------------------------------------------------------------
@dataclass
class Measurement:
    """Everything measured on one micrograph's pair of label maps.

    Attributes
    ----------
    regions : pandas.DataFrame
        Per-region density table (:data:`REGION_COLUMNS`), whole image.
    tiles : pandas.DataFrame or None
        The same per seed tile, when asked for.
    particles : pandas.DataFrame
        One row per granule particle (:data:`PARTICLE_COLUMNS`).
    z_disks : pandas.DataFrame or None
        Z-component widths, when asked for.
    notes : list of str
        What was assumed (e.g. the diameter distribution used for ``vf``).
    particle_map : numpy.ndarray or None
        The particles' label image (particle ``k`` = pixels labelled ``k``), for their outlines
        (:func:`~.objects.particles_geojson`); None without a pixel size.
    """

    regions: pd.DataFrame
    particles: pd.DataFrame
    tiles: pd.DataFrame | None = None
    z_disks: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)
    particle_map: np.ndarray | None = field(default=None, repr=False)

    def tables(self) -> pd.DataFrame:
        """Whole-image rows followed by tile rows (the layout of the ``measure`` CSV)."""
        return pd.concat([self.regions, self.tiles], ignore_index=True) \
            if self.tiles is not None else self.regions


def _add_vf(table: pd.DataFrame, particles: pd.DataFrame, stereology: Any, method: str,
            diameters: Any, notes: list[str]) -> pd.DataFrame:
    """Fill ``vf`` (and ``section_nm``, ``vf_method``) from ``pf`` by stereology."""
    from . import stereology as st

    if isinstance(diameters, str) and diameters == "measured":
        sizes = particles.loc[particles["kept"], "equivalent_diameter_nm"].to_numpy() \
            if len(particles) else np.empty(0)
        if sizes.size >= 20:
            diameters = st.DiameterDistribution.from_samples(sizes)
            notes.append(f"vf: granule diameters from the {sizes.size} kept particles "
                         f"(mean {sizes.mean():.1f} nm)")
        else:
            diameters = st.DEFAULT_DIAMETERS
            notes.append(f"vf: only {sizes.size} kept particles; assumed granule diameters "
                         f"{diameters.mean_nm:.0f} nm (default distribution)")
    out = table.copy()
    out["vf"] = st.vf_from_pf(out["pf"].to_numpy(dtype=float), method=method,
                              diameters=diameters, params=stereology)
    out["section_nm"] = stereology.section_nm
    out["vf_method"] = method
    return out


def measure_labels(locations: np.ndarray, granules: np.ndarray, *, pixel_size_nm: float | None,
                   pixel_size_source: str = "unknown", schema: ClassSchema | None = None,
                   image: str = "image", path: str = "", tile: int | None = None,
                   filters: ParticleFilter | None = None, split_touching: bool = False,
                   section_nm: float | None = 70.0, min_cap_nm: float | None = None,
                   vf_method: str = "baskets", diameters: Any = "measured",
                   concentration_factor: float | None = None, z_disks: bool = False,
                   derived: Mapping[str, Sequence[str]] | None = None,
                   pf_calibration: Any = None) -> Measurement:
    """Density table, particles (counts and sizes per region), ``vf`` and optionally Z widths.

    Parameters
    ----------
    locations, granules : numpy.ndarray
        Label maps of one micrograph.
    pixel_size_nm : float or None
        Pixel size; ``None`` measures in pixels only (no um^2, particle sizes, or vf).
    pixel_size_source, image, path : str
        Recorded in the tables.
    schema : ClassSchema, optional
        Locations schema.
    tile : int, optional
        Also measure each seed tile of this side (e.g. 1024) into :attr:`Measurement.tiles`.
    filters, split_touching
        See :func:`granule_particles`.
    section_nm : float or None
        Section thickness for ``vf`` (default 70 nm); ``None`` leaves ``vf`` NaN.
    min_cap_nm : float, optional
        Smallest visible cap height (default: :class:`~.stereology.StereologyParams`'s).
    vf_method : {"baskets", "analytical"}
        Stereological route (see :mod:`.stereology`).
    diameters : "measured" or DiameterDistribution
        Granule diameters for ``vf``: the kept particles' equivalent diameters by default.
    concentration_factor : float, optional
        Adds a ``concentration`` column, ``vf * factor`` (your unit per unit volume fraction; see
        :func:`~.stereology.vf_to_concentration`).
    z_disks : bool
        Also measure Z-disk widths.
    derived : mapping, optional
        Pooled regions to add, e.g. ``{"myofibrillar": ("A", "I")}`` (:func:`pooled_regions`).
    pf_calibration : PfCalibration, path or dict, optional
        A fit of the lab's manual point counts against this pf
        (:class:`~.pointgrid.PfCalibration`): adds ``pf_calibrated`` with its 95% prediction
        interval and names the calibration in every row.
    """
    if pf_calibration is not None:
        from .pointgrid import PfCalibration

        cal = pf_calibration if isinstance(pf_calibration, PfCalibration) else \
            PfCalibration.load(pf_calibration)
        m = measure_labels(locations, granules, pixel_size_nm=pixel_size_nm,
                           pixel_size_source=pixel_size_source, schema=schema, image=image, path=path,
                           tile=tile, filters=filters, split_touching=split_touching,
                           section_nm=section_nm, min_cap_nm=min_cap_nm, vf_method=vf_method,
                           diameters=diameters, concentration_factor=concentration_factor,
                           z_disks=z_disks, derived=derived)
        m.regions = cal.apply(m.regions)
        m.tiles = cal.apply(m.tiles) if m.tiles is not None else None
        return m
    if derived:
        m = measure_labels(locations, granules, pixel_size_nm=pixel_size_nm,
                           pixel_size_source=pixel_size_source, schema=schema, image=image, path=path,
                           tile=tile, filters=filters, split_touching=split_touching,
                           section_nm=section_nm, min_cap_nm=min_cap_nm, vf_method=vf_method,
                           diameters=diameters, concentration_factor=concentration_factor,
                           z_disks=z_disks)
        m.regions = pooled_regions(m.regions, derived)
        m.tiles = pooled_regions(m.tiles, derived) if m.tiles is not None else None
        return m
    schema = schema or LOCATIONS_SCHEMA
    loc, mask = _check_pair(locations, granules, schema)
    px = _check_pixel_size(pixel_size_nm)
    notes: list[str] = []
    regions = _density_rows(loc, mask, schema, px, pixel_size_source, image, "", path)
    tiles = None
    if tile:
        tiles = pd.concat([_density_rows(loc[s], mask[s], schema, px, pixel_size_source, image, name,
                                         path) for name, s in _tiles(loc.shape, tile)],
                          ignore_index=True)
    if math.isnan(px):
        notes.append("no pixel size: areas in pixels only; no particle sizes or vf")
        return Measurement(regions, _empty_particles(), tiles, None, notes)
    filters = filters or ParticleFilter()
    particle_map, particles = _particles(loc, mask, schema, px, filters, split_touching, image, "")
    regions = summarise_particles(regions, particles)
    if tiles is not None:
        tiles = summarise_particles(tiles, _tile_of(particles, loc.shape, tile))
    if section_nm is not None:
        from .stereology import StereologyParams

        kwargs = {} if min_cap_nm is None else {"min_cap_nm": min_cap_nm}
        params = StereologyParams(section_nm=section_nm, pixel_size_nm=px, **kwargs)
        regions = _add_vf(regions, particles, params, vf_method, diameters, notes)
        if tiles is not None:
            tiles = _add_vf(tiles, particles, params, vf_method, diameters, [])
        if concentration_factor is not None:
            from .stereology import vf_to_concentration

            for table in (regions, tiles) if tiles is not None else (regions,):
                table["concentration"] = vf_to_concentration(table["vf"].to_numpy(float),
                                                             concentration_factor)
    zd = z_disk_widths(loc, pixel_size_nm=px, schema=schema, image=image) if z_disks else None
    return Measurement(regions, particles, tiles, zd, notes, particle_map)


DERIVED_CODE = -1
"""``region_code`` of a derived (pooled) region row: not a class of the schema."""

_KEPT_IN_DERIVED = frozenset({"pixel_size_nm", "pixel_size_source", "section_nm", "vf_method", "path"})


def parse_derived(text: str) -> dict[str, tuple[str, ...]]:
    """``"myofibrillar=A+I,other=Z+S"`` -> ``{"myofibrillar": ("A", "I"), "other": ("Z", "S")}``.

    Raises
    ------
    ValueError
        For an item without ``=`` or with fewer than two regions.
    """
    out: dict[str, tuple[str, ...]] = {}
    for item in (t.strip() for t in str(text).split(",") if t.strip()):
        name, sep, parts = item.partition("=")
        regions = tuple(r.strip() for r in parts.split("+") if r.strip())
        if not sep or not name.strip() or len(regions) < 2:
            raise ValueError(f"derived region {item!r}: write NAME=A+I (a name and two or more regions)")
        out[name.strip()] = regions
    return out


def pooled_regions(table: pd.DataFrame, derived: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """``table`` (a density table) with a pooled row per image (and tile) for each derived region.

    A derived region (``{"myofibrillar": ("A", "I")}``; the other muscle-TEM tool's "intra") adds
    up its regions' areas, granule pixels and granule counts, so ``pf`` and granules per um^2 are
    those of the union; ``vf`` is the area-weighted mean of the regions' ``vf`` (volume fractions
    of disjoint regions), the mean diameter the count-weighted mean, and the SD the pooled one.
    Its ``region`` is ``"A+I"``, ``region_name`` the given name and ``region_code``
    :data:`DERIVED_CODE`; the original tool's text tables leave such rows out.

    Raises
    ------
    ValueError
        For a region letter the table does not have.
    """
    if not derived or table.empty:
        return table
    letters = set(table["region"].astype(str))
    rows = []
    for name, parts in derived.items():
        missing = [r for r in parts if r not in letters]
        if missing:
            raise ValueError(f"derived region {name!r}: no region {', '.join(missing)} in the table "
                             f"(regions: {', '.join(sorted(letters))})")
        sel = table[table["region"].astype(str).isin(parts)]
        for (image, tile), g in sel.groupby(["image", "tile"], sort=False, dropna=False):
            area, count = g["area_px"].sum(), g["granule_count"]
            n = count.fillna(0)
            row = g.iloc[0].to_dict()
            total = float(n.sum())
            mean = float((g["mean_diameter_nm"] * n).sum() / total) if total else np.nan
            second = float((n * (g["sd_diameter_nm"].fillna(0) ** 2 + g["mean_diameter_nm"] ** 2)).sum()
                           / total) if total else np.nan
            row = {k: (v if k in _KEPT_IN_DERIVED else np.nan) for k, v in row.items()}
            row.update({
                "image": image, "tile": tile, "region_code": DERIVED_CODE, "region": "+".join(parts),
                "region_name": name, "area_px": area, "area_um2": g["area_um2"].sum(min_count=1),
                "granule_px": g["granule_px"].sum(), "pf": g["granule_px"].sum() / area if area else np.nan,
                "vf": (g["vf"] * g["area_px"]).sum(min_count=1) / area if area and g["vf"].notna().all()
                else np.nan,
                "granule_count": count.sum(min_count=1),
                "granules_per_um2": (count.sum(min_count=1) / g["area_um2"].sum(min_count=1))
                if g["area_um2"].sum() else np.nan,
                "mean_diameter_nm": mean,
                "sd_diameter_nm": float(np.sqrt(max(second - mean ** 2, 0.0))) if total > 1 else np.nan,
            })
            rows.append(row)
    if not rows:
        return table
    return pd.concat([table, pd.DataFrame(rows, columns=table.columns)], ignore_index=True)


def measure_segmentation(result: Any, **kwargs: Any) -> Measurement:
    """:func:`measure_labels` of a :class:`~.segment.SegmentationResult` (its maps, pixel size,
    source and name); keyword arguments go to :func:`measure_labels`."""
    if result.locations is None or result.granules is None:
        raise ValueError(f"{result.name}: measuring needs both label maps; segment with both models")
    schema = result.models["locations"].schema if "locations" in result.models else None
    return measure_labels(result.locations, result.granules, pixel_size_nm=result.pixel_size_nm,
                          pixel_size_source=result.pixel_size_source, image=result.name,
                          schema=schema, **kwargs)


def _tile_of(particles: pd.DataFrame, shape: tuple[int, int], tile: int) -> pd.DataFrame:
    """Particles labelled with the seed tile holding their centroid."""
    out = particles.copy()
    ny = shape[0] // tile
    a = (out["col"].to_numpy() // tile).astype(int)
    b = (out["row"].to_numpy() // tile).astype(int)
    out["tile"] = (a * ny + b).astype(str)
    return out


# -------------------------------------------------------------------------------------------------
# writers
# -------------------------------------------------------------------------------------------------
def _seed_name(name: str) -> str:
    """The seed's image-name field: the first 35 characters, right-justified in 35 (IDL A35)."""
    return name[:_SEED_NAME_WIDTH].rjust(_SEED_NAME_WIDTH)


def _seed_int(value: int, width: int) -> str:
    # IDL would print asterisks for a number wider than its field (possible only for whole
    # micrographs, never for the seed's 1024 tiles); we print the whole number instead.
    return f"{int(value):{width}d}"


def _seed_rows(table: pd.DataFrame, letters: Sequence[str]) -> list[tuple[str, pd.DataFrame]]:
    table = table.copy()
    if "seed_name" not in table:  # a seed tile's file is <micrograph>_<tile number>.png
        tile = table["tile"].fillna("").astype(str)
        image = table["image"].astype(str)
        table["seed_name"] = image.where(tile == "", image + "_" + tile + ".png")
    table["_name"] = table["seed_name"]
    out = []
    for name, rows in table.groupby("_name", sort=False):
        by_letter = rows.set_index("region")
        missing = [x for x in letters if x not in by_letter.index]
        if missing:
            raise ValueError(f"{name}: the table has no row for region(s) {', '.join(missing)}")
        out.append((str(name), by_letter.loc[list(letters)]))
    return out


def format_seed_areas(table: pd.DataFrame, letters: Sequence[str] = ("A", "I", "Z", "S", "N"),
                      newline: str = "\n") -> str:
    """The seed's "location and granule areas" text table.

    One header line, then per image (column ``seed_name`` if present, else ``image``) its name
    in 35 characters and the area and granule pixels of each region (``I8`` then ``I7`` fields).
    """
    header = "image_name " + " ".join(f"{x}_area {x}_grns" for x in letters)
    lines = [header]
    for name, rows in _seed_rows(table, letters):
        values = np.column_stack([rows["area_px"], rows["granule_px"]]).ravel()
        lines.append(_seed_name(name) + "".join(_seed_int(v, 8 if i == 0 else 7)
                                                for i, v in enumerate(values)))
    return newline.join(lines) + newline


def format_seed_densities(table: pd.DataFrame, letters: Sequence[str] = ("A", "I", "Z", "S", "N"),
                          newline: str = "\n") -> str:
    """The seed's "granule densities" text table: ``pf`` per region (``F8.4``), -1 where absent.

    ``pf`` is recomputed in single precision from the pixel counts, as the seed does, so the
    fourth decimal rounds as in its files.
    """
    header = "image_name " + " ".join(f"{x}_dens" for x in letters)
    lines = [header]
    for name, rows in _seed_rows(table, letters):
        area = rows["area_px"].to_numpy(dtype=np.float32)
        gran = rows["granule_px"].to_numpy(dtype=np.float32)
        with np.errstate(invalid="ignore", divide="ignore"):
            dens = np.where(area > 0, gran / np.where(area > 0, area, np.float32(1)), np.float32(-1))
        lines.append(_seed_name(name) + "".join(f"{float(d):8.4f}" for d in dens.astype(np.float32)))
    return newline.join(lines) + newline


def _refuse_existing(paths: Iterable[Path], overwrite: bool) -> None:
    if overwrite:
        return
    for p in paths:
        if p.exists():
            raise FileExistsError(f"{p}: exists already; choose another name or allow overwriting")


def write_seed_tables(table: pd.DataFrame, out_dir: PathLike, *, overwrite: bool = False,
                      letters: Sequence[str] = ("A", "I", "Z", "S", "N"),
                      newline: str = "\n") -> tuple[Path, Path]:
    """Write the seed's two text tables into ``out_dir``; refuses to overwrite unless asked.

    Returns the paths of the areas table and the densities table.
    """
    out = Path(out_dir)
    paths = (out / SEED_AREAS_FILE, out / SEED_DENSITIES_FILE)
    _refuse_existing(paths, overwrite)
    texts = (format_seed_areas(table, letters, newline), format_seed_densities(table, letters, newline))
    for path, text in zip(paths, texts, strict=True):
        with atomic_output(path) as tmp:
            tmp.write_bytes(text.encode("ascii", errors="replace"))
    return paths


def write_csv(table: pd.DataFrame, path: PathLike, *, overwrite: bool = False) -> Path:
    """Write a table as CSV atomically; refuses to replace an existing file unless asked."""
    p = Path(path)
    _refuse_existing([p], overwrite)
    with atomic_output(p) as tmp:
        table.to_csv(tmp, index=False)
    return p
