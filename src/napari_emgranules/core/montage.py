"""Montages larger than memory: segment a TIFF by tiles, reading and writing only a band at a time.

:func:`segment_large_iter` gives the same label maps as :func:`~.segment.segment_micrograph_iter`
in ``tiled`` mode with the same window and halo (the same windows, the same cross-fade, summed in
the same order), but never holds the image, the class scores or the label maps whole:

* the input is a memory map of the TIFF's pixels (:func:`tifffile.memmap`); a compressed TIFF is
  first decoded strip by strip (or tile by tile) into a scratch memory map next to the outputs;
* windows are read from the map, reflect-padded by index arithmetic (as :meth:`TilePlan.pad`);
* scores are summed in one band of window rows; rows no later window touches are reduced to labels
  and written into a memory-mapped, uncompressed output TIFF, which is renamed into place when done;
* small granule specks are removed band by band, with a margin wide enough that every speck is seen
  whole, so the result equals the whole-image :func:`~.segment.remove_small_objects`.

Memory: one band of ``window x padded width x classes`` float32 scores, one batch of windows and the
network's forward pass, independent of the montage's height.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
from collections.abc import Generator, Iterator
from pathlib import Path

import numpy as np
import tifffile

from .io import (  # _resolve_pixel_size: the same pixel-size rules as read_micrograph
    MicrographError,
    _resolve_pixel_size,
    atomic_output,
    available_memory_bytes,
    metadata_pixel_size_nm,
)
from .models import MULTIPLE, SegmentationModel, reduce_scores
from .segment import (
    _BYTES_PER_PIXEL,
    _RESAMPLE_TOLERANCE,
    MIN_GRANULE_NM,
    SegmentationResult,
    SegmentProgress,
    _resolve_model,
    remove_small_objects,
    run_to_completion,
    to_unit_float,
)
from .tiling import TilePlan

logger = logging.getLogger(__name__)

__all__ = ["segment_large", "segment_large_iter", "tiled_bytes_per_pixel"]

_CLEAN_BAND = 1024  # rows per band when removing granule specks
_MAX_WINDOW = 4096


def tiled_bytes_per_pixel(n_classes: int = 7) -> int:
    """Bytes per image pixel that in-memory ``tiled`` segmentation holds (scores, weights, input)."""
    return 4 * (n_classes + 4)


# -------------------------------------------------------------------------------------------------
# The source: a memory map of the TIFF's pixels
# -------------------------------------------------------------------------------------------------
def _gray_page(tif: tifffile.TiffFile, what: str) -> tifffile.TiffPage:
    page = tif.pages.first
    if len(tif.pages) != 1 or page.samplesperpixel != 1 or len(page.shape) != 2:
        raise MicrographError(f"{what}: a montage segmented by tiles must be one 2-D gray image "
                              f"(this file has {len(tif.pages)} page(s) of shape {page.shape})")
    if page.photometric != tifffile.PHOTOMETRIC.MINISBLACK:
        raise MicrographError(f"{what}: a montage segmented by tiles must be min-is-black gray "
                              f"(photometric {page.photometric.name}); convert it first")
    if page.dtype is None or page.dtype.kind not in "ui":
        raise MicrographError(f"{what}: a montage segmented by tiles must have 8- or 16-bit integer "
                              f"pixels, not {page.dtype}; convert it first")
    return page


def _decode_to_scratch(page: tifffile.TiffPage, scratch: Path) -> np.memmap:
    """Decode a compressed page segment by segment into a raw memory map (bounded memory)."""
    rows, cols = page.shape
    out = np.memmap(scratch, dtype=page.dtype.newbyteorder("="), mode="w+", shape=(rows, cols))
    for segment, index, _shape in page.segments():
        r, c = int(index[2]), int(index[3])
        if segment is None:  # an empty segment holds zeros (already)
            continue
        seg = np.asarray(segment).reshape(segment.shape[1], segment.shape[2])
        h, w = min(seg.shape[0], rows - r), min(seg.shape[1], cols - c)
        out[r:r + h, c:c + w] = seg[:h, :w]
    out.flush()
    return out


def _inspect(path: Path) -> tuple[bool, tifffile.TiffPage]:
    """Whether the TIFF can be memory-mapped as it is; refuses anything but one 2-D gray image."""
    what = str(path)
    try:
        with tifffile.TiffFile(path) as tif:
            page = _gray_page(tif, what)
            return bool(page.is_memmappable), page
    except (tifffile.TiffFileError, OSError) as exc:
        raise MicrographError(f"{what}: cannot be read as TIFF ({type(exc).__name__}: {exc})") from exc


@contextlib.contextmanager
def _tiff_source(path: Path, scratch_dir: Path) -> Iterator[np.ndarray]:
    """A read-only memory map of a gray TIFF's pixels (compressed ones via a scratch copy)."""
    memmappable, _ = _inspect(path)
    if memmappable:
        yield tifffile.memmap(path, mode="r")
        return
    scratch_dir.mkdir(parents=True, exist_ok=True)
    scratch = scratch_dir / f".{path.stem[:60]}.{secrets.token_hex(6)}.tmp.raw"
    logger.info("%s: compressed; decoding it into the scratch file %s", path, scratch)
    try:
        with tifffile.TiffFile(path) as tif:
            source = _decode_to_scratch(tif.pages.first, scratch)
        yield source
    finally:
        scratch.unlink(missing_ok=True)


# -------------------------------------------------------------------------------------------------
# Windows by index arithmetic
# -------------------------------------------------------------------------------------------------
def _pad_index(n: int, before: int, total: int, mode: str) -> np.ndarray:
    """Source index of each of ``total`` padded positions (``np.pad`` reflect or edge semantics)."""
    j = np.arange(total, dtype=np.int64) - before
    if mode == "edge" or n == 1:
        return np.clip(j, 0, n - 1)
    period = 2 * (n - 1)
    j = np.mod(j, period)
    return np.where(j >= n, period - j, j)


def _take(src: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``src[rows][:, cols]`` reading only the rectangle the indices span."""
    r0, r1, c0, c1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
    block = np.asarray(src[r0:r1, c0:c1])
    return block[np.ix_(rows - r0, cols - c0)]


def _blend_into(model: SegmentationModel, src: np.ndarray, plan: TilePlan, batch_size: int,
                dst: np.ndarray) -> Generator[int, None, None]:
    """Predict ``plan``'s windows row by row; write the labels of finished rows into ``dst``.

    Yields the number of windows of each forward pass.
    """
    (wy, wx), (cy, cx) = plan.window, plan.core
    (top, left), (h, w) = plan.pad_before, plan.image_shape
    ph, pw = plan.padded_shape
    mode = "reflect" if min(h, w) > 1 else "edge"
    rows, cols = _pad_index(h, top, ph, mode), _pad_index(w, left, pw, mode)
    weights = plan.weights()
    band = np.zeros((wy, pw, model.n_classes), np.float32)  # padded rows [y, y + wy)
    n_rows, n_cols = plan.counts
    for i in range(n_rows):
        y = i * cy
        xs = [j * cx for j in range(n_cols)]
        for start in range(0, n_cols, batch_size):
            chunk = xs[start:start + batch_size]
            batch = np.stack([to_unit_float(_take(src, rows[y:y + wy], cols[x:x + wx])) for x in chunk])
            for x, p in zip(chunk, model.predict_probabilities(batch), strict=True):
                p *= weights[..., None]
                band[:, x:x + wx] += p
            yield len(chunk)
        done = wy if i == n_rows - 1 else cy  # rows no later window row reaches
        lo, hi = max(y, top), min(y + done, top + h)
        if hi > lo:
            dst[lo - top:hi - top] = reduce_scores(band[lo - y:hi - y, left:left + w])[0]
        band[:wy - cy] = band[cy:]
        band[wy - cy:] = 0.0


def _remove_small_in_bands(labels: np.ndarray, min_diameter_nm: float, pixel_size_nm: float) -> None:
    """:func:`remove_small_objects` over ``labels`` in place, one band of rows at a time.

    Each band is labelled with ``margin >= min_px`` extra rows on both sides. A component meeting
    the band's rows either lies wholly inside the extended band (then its size is exact) or crosses
    a margin, which takes at least ``margin`` pixels, so it is not small: the result equals the
    whole-image removal.
    """
    min_px = math.pi / 4 * (float(min_diameter_nm) / float(pixel_size_nm)) ** 2
    margin = math.ceil(min_px) + 1
    h = labels.shape[0]
    for r0 in range(0, h, _CLEAN_BAND):
        r1 = min(h, r0 + _CLEAN_BAND)
        a0, a1 = max(0, r0 - margin), min(h, r1 + margin)
        block = np.array(labels[a0:a1])
        remove_small_objects(block, min_diameter_nm, pixel_size_nm)
        labels[r0:r1] = block[r0 - a0:r1 - a0]


# -------------------------------------------------------------------------------------------------
# Public API
# -------------------------------------------------------------------------------------------------
def _large_window(budget: int | None, width: int, batch_size: int, n_classes: int) -> int:
    """Largest window (multiple of 128, <= 4096) whose forward pass and score band fit ``budget``."""
    if budget is None:
        return 2048
    padded_width = width + 2 * _MAX_WINDOW
    smallest = 3 * MULTIPLE  # a core of 128 between two 128 halos
    for side in range(_MAX_WINDOW, smallest, -MULTIPLE):
        need = side * side * _BYTES_PER_PIXEL * batch_size + side * padded_width * n_classes * 4
        if need <= budget:
            return side
    return smallest


def _pixel_size(path: Path, pixel_size_nm: float | None, force: bool,
                models: dict[str, SegmentationModel]) -> tuple[float, str]:
    default = min(m.card.pixel_size_nm for m in models.values())
    found = metadata_pixel_size_nm(path)
    value, source, _ = _resolve_pixel_size(str(path), found, pixel_size_nm, default, force)
    for kind, model in models.items():
        if abs(value / model.card.pixel_size_nm - 1.0) > _RESAMPLE_TOLERANCE:
            raise MicrographError(
                f"{path}: is {value:g} nm/px but the {kind} model works at "
                f"{model.card.pixel_size_nm:g} nm/px; montages segmented by tiles are not resampled "
                "- resample the montage to the model's pixel size first")
    return value, source


def _create_label_map(tmp: Path, shape: tuple[int, int], pixel_size_nm: float) -> np.memmap:
    """A new uncompressed uint8 TIFF at ``tmp``, memory-mapped for writing (pixel size stored)."""
    per_cm = 1e7 / pixel_size_nm
    return tifffile.memmap(tmp, shape=shape, dtype=np.uint8, photometric="minisblack", metadata=None,
                           resolution=(per_cm, per_cm), resolutionunit="CENTIMETER")


def segment_large_iter(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    name: str | None = None,
    pixel_size_nm: float | None = None,
    force_pixel_size: bool = False,
    locations_model: SegmentationModel | str | os.PathLike | None = None,
    granules_model: SegmentationModel | str | os.PathLike | None = None,
    max_window: int | None = None,
    halo: int = 128,
    batch_size: int = 1,
    min_granule_nm: float | None = MIN_GRANULE_NM,
    memory_budget_bytes: int | None = None,
) -> Generator[SegmentProgress, None, SegmentationResult]:
    """Segment a TIFF montage by tiles into ``out_dir/locations/<name>.tif`` and ``.../granules/``.

    Parameters
    ----------
    path : path-like
        A 2-D gray 8/16-bit TIFF (uncompressed ones are read in place; compressed ones are first
        decoded into a scratch file in ``out_dir``). Its pixel size must be the models' (within 1%).
    out_dir : path-like
        Output folder; the label maps are written as uncompressed TIFFs, atomically.
    name : str, optional
        Output file stem (default: the input's).
    pixel_size_nm, force_pixel_size
        As :func:`~.io.read_micrograph`.
    locations_model, granules_model : SegmentationModel or path, optional
        Models or weight files; the bundled defaults when None.
    max_window, halo, batch_size, min_granule_nm
        As :func:`~.segment.segment_micrograph_iter` in ``tiled`` mode; ``max_window`` defaults to
        the largest window whose pass and score band fit the memory budget.
    memory_budget_bytes : int, optional
        Default half the available memory.

    Yields
    ------
    SegmentProgress
        After every forward pass.

    Returns
    -------
    SegmentationResult
        Mode ``"tiled"``; its label maps are read-only memory maps of the written files.

    Raises
    ------
    MicrographError
        If the file is not a single 2-D gray integer TIFF, or is at another pixel size.
    """
    p, out = Path(path), Path(out_dir)
    name = name or p.stem
    models = {"locations": _resolve_model(locations_model, "locations"),
              "granules": _resolve_model(granules_model, "granules")}
    budget = memory_budget_bytes
    if budget is None:
        avail = available_memory_bytes()
        budget = avail // 2 if avail else None
    with _tiff_source(p, out) as src:
        px, source = _pixel_size(p, pixel_size_nm, force_pixel_size, models)
        shape = tuple(int(s) for s in src.shape)
        n_classes = max(m.n_classes for m in models.values())
        window = max_window or _large_window(budget, shape[1], batch_size, n_classes)
        plan = TilePlan.for_image(shape, window, halo, MULTIPLE)
        steps = plan.counts[0] * -(-plan.counts[1] // batch_size)
        done = 0
        for kind, model in models.items():
            target = out / kind / f"{name}.tif"
            with atomic_output(target) as tmp:
                dst = _create_label_map(tmp, shape, px)
                for step, _ in enumerate(_blend_into(model, src, plan, batch_size, dst), 1):
                    done += 1
                    yield SegmentProgress(kind, step, steps, done, 2 * steps,
                                          f"{kind}: pass {step}/{steps} (tiled, by bands)")
                if min_granule_nm and model.card.kind == "granules":
                    _remove_small_in_bands(dst, min_granule_nm, px)
                dst.flush()
                del dst
    labels = {k: tifffile.memmap(out / k / f"{name}.tif", mode="r") for k in models}
    return SegmentationResult(labels=labels, pixel_size_nm=px, pixel_size_source=source, mode="tiled",
                              models={k: m.card for k, m in models.items()}, name=name,
                              notes=[f"segmented by bands of {plan.window[0]} px windows "
                                     f"({plan.n_windows} windows per model) from a memory map"])


def segment_large(path: str | os.PathLike, out_dir: str | os.PathLike, **kwargs) -> SegmentationResult:
    """Run :func:`segment_large_iter` to the end and return its result."""
    return run_to_completion(segment_large_iter(path, out_dir, **kwargs))
