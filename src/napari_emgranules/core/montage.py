"""Montages larger than memory: segment a TIFF or OME-Zarr micrograph by tiles, reading and writing
only a band at a time.

:func:`segment_large_iter` gives the same label maps as :func:`~.segment.segment_micrograph_iter`
in ``tiled`` mode with the same window and halo (the same windows, the same cross-fade, summed in
the same order), but never holds the image, the class scores or the label maps whole:

* the input is a memory map of the TIFF's pixels (:func:`tifffile.memmap`); a compressed TIFF is
  first decoded strip by strip (or tile by tile), and an OME-Zarr store's full resolution band of
  chunks by band of chunks, into a scratch memory map next to the outputs (windows, levels and
  resizing then read pixels in place, never decompressing a chunk twice);
* windows are read from the map, reflect-padded by index arithmetic (as :meth:`TilePlan.pad`);
* scores are summed in one band of window rows; rows no later window touches are reduced to labels
  and written into a memory-mapped, uncompressed output TIFF, which is renamed into place when done;
* for a model at another pixel size (the Locations model works at 3.2 nm/px), the montage is resized
  to it band by band into a scratch memory map (the same Gaussian and linear interpolation as
  ``segment``'s whole-image resize, with margins), predicted there, and the probabilities resized
  back band by band before the argmax;
* small granule specks are removed band by band, with a margin wide enough that every speck is seen
  whole, so the result equals the whole-image :func:`~.segment.remove_small_objects`.

Memory: one band of ``window x padded width x classes`` float32 scores, one batch of windows and the
network's forward pass, independent of the montage's height. Scratch files (named like the
temporary files of :func:`~.io.atomic_output`) live next to the outputs and are removed afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from .io import (  # _resolve_pixel_size: the same pixel-size rules as read_micrograph
    MicrographError,
    _resolve_pixel_size,
    atomic_output,
    metadata_pixel_size_nm,
    micrograph_stem,
)
from .models import MULTIPLE, SegmentationModel, reduce_scores
from .options import SegmentOptions
from .progress import run_to_completion
from .resample import model_grid_shape, resample_rows, upsample_argmax_rows
from .segment import (
    _BYTES_PER_PIXEL,
    SegmentationResult,
    SegmentProgress,
    _resolve_model,
    input_scaler,
    keep_peaked_objects,
    memory_budget,
    remove_small_objects,
)
from .tiling import TilePlan

logger = logging.getLogger(__name__)

__all__ = ["segment_large", "segment_large_iter", "tiled_bytes_per_pixel"]

_CLEAN_BAND = 1024  # rows per band when removing granule specks
_PEAK_MARGIN = 256  # rows beyond a band that the granules' peak looks at
_REDUCE_ROWS = 256  # rows per argmax of the summed scores (bounds its temporary copies)
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


def _decode_into(page: tifffile.TiffPage, out: np.ndarray) -> None:
    """Decode a compressed page segment by segment (strip or tile) into ``out`` (bounded memory)."""
    rows, cols = page.shape
    for segment, index, _shape in page.segments():
        if segment is None:  # an empty segment holds zeros
            continue
        r, c = int(index[2]), int(index[3])
        seg = np.asarray(segment).reshape(segment.shape[1], segment.shape[2])
        h, w = min(seg.shape[0], rows - r), min(seg.shape[1], cols - c)
        out[r:r + h, c:c + w] = seg[:h, :w]


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
def _scratch(folder: Path, name: str, shape: tuple[int, ...], dtype=np.float32) -> Iterator[np.memmap]:
    """A temporary memory-mapped array in ``folder`` (named as temporaries, removed afterwards)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f".{name[:60]}.{secrets.token_hex(6)}.tmp.raw"
    try:
        yield np.memmap(path, dtype=dtype, mode="w+", shape=shape)
    finally:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def _tiff_source(path: Path, scratch_dir: Path) -> Iterator[np.ndarray]:
    """A read-only memory map of a gray TIFF's pixels (compressed ones via a scratch copy)."""
    memmappable, page = _inspect(path)
    if memmappable:
        yield tifffile.memmap(path, mode="r")
        return
    logger.info("%s: compressed; decoding it into a scratch file in %s", path, scratch_dir)
    with _scratch(scratch_dir, path.stem, page.shape, page.dtype.newbyteorder("=")) as copy, \
            tifffile.TiffFile(path) as tif:
        _decode_into(tif.pages.first, copy)
        yield copy


def _ome_zarr_plane(path: Path) -> Any:
    """An OME-Zarr store's full-resolution 2-D plane (lazy); refuses anything but integer gray."""
    from .omezarr import ome_zarr_level0

    plane, _facts = ome_zarr_level0(path)
    if plane.dtype.kind not in "ui":
        raise MicrographError(f"{path}: a montage segmented by tiles must have 8- or 16-bit integer "
                              f"pixels, not {plane.dtype}; convert it first")
    return plane


def _band_rows(plane: Any) -> int:
    """Rows per band when copying a chunked array: whole chunk rows, at least 256 rows."""
    chunks = getattr(plane, "chunks", None)
    height = int(chunks[0][0]) if chunks and isinstance(chunks[0], tuple) and chunks[0] else 256
    return height * max(1, -(-256 // height))


@contextlib.contextmanager
def _source(path: Path, scratch_dir: Path) -> Iterator[np.ndarray]:
    """The montage's pixels as a read-only memory map: a TIFF's own (:func:`_tiff_source`), or an
    OME-Zarr store's full resolution decoded into a scratch copy a band of chunks at a time."""
    from .omezarr import is_ome_zarr

    if not is_ome_zarr(path):
        with _tiff_source(path, scratch_dir) as src:
            yield src
        return
    plane = _ome_zarr_plane(path)
    logger.info("%s: OME-Zarr; decoding its full resolution into a scratch file in %s", path, scratch_dir)
    shape = tuple(int(n) for n in plane.shape)
    with _scratch(scratch_dir, micrograph_stem(path), shape, plane.dtype.newbyteorder("=")) as copy:
        step = _band_rows(plane)
        for r0 in range(0, shape[0], step):
            try:
                copy[r0:r0 + step] = np.asarray(plane[r0:r0 + step])
            except Exception as exc:  # zarr and its codecs raise many kinds on a damaged chunk
                raise MicrographError(f"{path}: its chunks cannot be read ({type(exc).__name__}: "
                                      f"{exc})") from exc
        yield copy


# -------------------------------------------------------------------------------------------------
# Windows by index arithmetic
# -------------------------------------------------------------------------------------------------
def _mirror(i: np.ndarray, n: int) -> np.ndarray:
    """Indices reflected into ``[0, n)`` without repeating the edge (``np.pad`` reflect, ndimage
    mirror), as often as needed."""
    if n == 1:
        return np.zeros_like(i)
    period = 2 * (n - 1)
    j = np.mod(i, period)
    return np.where(j >= n, period - j, j)


def _pad_index(n: int, before: int, total: int, mode: str) -> np.ndarray:
    """Source index of each of ``total`` padded positions (``np.pad`` reflect or edge semantics)."""
    j = np.arange(total, dtype=np.int64) - before
    return np.clip(j, 0, n - 1) if mode == "edge" else _mirror(j, n)


def _take(src: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``src[rows][:, cols]`` reading only the rectangle the indices span."""
    r0, r1, c0, c1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
    block = np.asarray(src[r0:r1, c0:c1])
    return block[np.ix_(rows - r0, cols - c0)]


def _blend_rows(model: SegmentationModel, src: np.ndarray, plan: TilePlan, batch_size: int,
                emit: Callable[[int, int, np.ndarray, np.ndarray], None],
                prep: Callable[[np.ndarray], np.ndarray]) -> Generator[int, None, None]:
    """Predict ``plan``'s windows row by row, as ``segment``'s in-memory ``tiled`` mode does.

    ``prep`` turns a window of ``src`` into the model's input.

    Whenever no later window reaches a run of image rows, ``emit(lo, hi, scores, weights)`` gets
    their summed weighted probabilities ``(hi - lo, width, classes)`` and summed weights. Yields the
    number of windows of each forward pass.
    """
    (wy, wx), (cy, cx) = plan.window, plan.core
    (top, left), (h, w) = plan.pad_before, plan.image_shape
    ph, pw = plan.padded_shape
    mode = "reflect" if min(h, w) > 1 else "edge"
    rows, cols = _pad_index(h, top, ph, mode), _pad_index(w, left, pw, mode)
    weights = plan.weights()
    band = np.zeros((wy, pw, model.n_classes), np.float32)  # padded rows [y, y + wy)
    wsum = np.zeros((wy, pw), np.float32)
    n_rows, n_cols = plan.counts
    for i in range(n_rows):
        y = i * cy
        xs = [j * cx for j in range(n_cols)]
        for start in range(0, n_cols, batch_size):
            chunk = xs[start:start + batch_size]
            batch = np.stack([prep(_take(src, rows[y:y + wy], cols[x:x + wx])) for x in chunk])
            for x, p in zip(chunk, model.predict_probabilities(batch), strict=True):
                p *= weights[..., None]
                band[:, x:x + wx] += p
                wsum[:, x:x + wx] += weights
            yield len(chunk)
        done = wy if i == n_rows - 1 else cy  # rows no later window row reaches
        for lo in range(max(y, top), min(y + done, top + h), _REDUCE_ROWS):
            hi = min(lo + _REDUCE_ROWS, y + done, top + h)
            emit(lo - top, hi - top, band[lo - y:hi - y, left:left + w], wsum[lo - y:hi - y, left:left + w])
        for a in (band, wsum):
            a[:wy - cy] = a[cy:]
            a[wy - cy:] = 0.0


def _log_probabilities(probs: np.ndarray) -> Callable[[slice], np.ndarray]:
    """Rows of blended probabilities as log-probabilities (``segment``'s tiled upsampling)."""
    return lambda rows: np.log(np.maximum(np.asarray(probs[rows]), np.float32(1e-30)))


def _row_chunk(width: int, depth: int, scale: float) -> int:
    """Output rows per resize step: about 2**24 values read or written."""
    return max(8, int(2**24 / (width * depth * max(1.0, scale))))


def _clean_granules_in_bands(labels: np.ndarray, min_diameter_nm: float | None, pixel_size_nm: float,
                             peaked: bool) -> None:
    """Granule clean-up over ``labels`` in place, one band of rows at a time: with ``peaked``,
    :func:`keep_peaked_objects` (granules written as 1, their confident pixels as 2), then
    :func:`remove_small_objects`, as the in-memory pipeline does.

    Each band is labelled with ``margin`` extra rows on both sides. A component meeting the band's
    rows either lies wholly inside the extended band (then its size and its peak are exact) or
    crosses a margin: it then takes at least ``margin`` pixels, so it is not small, and it is kept
    (its confident pixels may lie beyond). The result equals the whole-image clean-up except for a
    granule object more than :data:`_PEAK_MARGIN` rows tall without a confident pixel in reach.
    """
    min_px = math.pi / 4 * (float(min_diameter_nm) / float(pixel_size_nm)) ** 2 if min_diameter_nm else 0
    margin = max(math.ceil(min_px) + 1, _PEAK_MARGIN if peaked else 0)
    h = labels.shape[0]
    for r0 in range(0, h, _CLEAN_BAND):
        r1 = min(h, r0 + _CLEAN_BAND)
        a0, a1 = max(0, r0 - margin), min(h, r1 + margin)
        block = np.array(labels[a0:a1])
        if peaked:  # (rows of the next band's margin keep their codes until the last step)
            strong = block == 2
            block[strong] = 1
            keep_peaked_objects(block, strong, keep_touching=(a0 > 0, a1 < h))
        if min_diameter_nm:
            remove_small_objects(block, min_diameter_nm, pixel_size_nm)
        band = block[r0 - a0:r1 - a0]
        labels[r0:r1] = np.where(band == 0, 0, labels[r0:r1]) if peaked else band
    if peaked:
        for r0 in range(0, h, _CLEAN_BAND):
            band = np.array(labels[r0:r0 + _CLEAN_BAND])
            band[band == 2] = 1
            labels[r0:r0 + _CLEAN_BAND] = band


# -------------------------------------------------------------------------------------------------
# Public API
# -------------------------------------------------------------------------------------------------
def _large_window(budget: int | None, width: int, batch_size: int, n_classes: int) -> int:
    """Largest window (multiple of 128, <= 4096) whose forward passes and score band fit ``budget``.

    Per window pixel: the pass (``_BYTES_PER_PIXEL``) and its probabilities, weighted in place;
    the band: a window's height of scores across the padded width.
    """
    if budget is None:
        return 2048
    smallest = 3 * MULTIPLE  # a core of 128 between two 128 halos
    for side in range(_MAX_WINDOW, smallest, -MULTIPLE):
        window = side * side * batch_size * (_BYTES_PER_PIXEL + 4 * n_classes)
        band = side * (width + side) * 4 * n_classes
        if window + band <= budget:
            return side
    return smallest


def _pixel_size(path: Path, pixel_size_nm: float | None, force: bool,
                models: dict[str, SegmentationModel]) -> tuple[float, str]:
    """The montage's pixel size by :func:`~.io.read_micrograph`'s rules (default: the finest model's)."""
    default = min(m.card.pixel_size_nm for m in models.values())
    found = metadata_pixel_size_nm(path)
    value, source, _ = _resolve_pixel_size(str(path), found, pixel_size_nm, default, force)
    return value, source


def _model_shape(shape: tuple[int, int], pixel_size_nm: float, model: SegmentationModel) -> tuple[int, int]:
    """The montage's shape at the model's pixel size (``segment``'s rule and tolerance)."""
    return model_grid_shape(shape, pixel_size_nm / model.card.pixel_size_nm)


def _labels_by_bands(model: SegmentationModel, src: np.ndarray, plan: TilePlan, batch_size: int,
                     dst: np.ndarray, scratch: Path, name: str,
                     peak: float | None = None) -> Generator[int, None, None]:
    """One model's labels of ``src`` into ``dst``; through a resampled scratch copy when ``plan``
    is at another scale (image resized, probabilities predicted, then resized back, by bands).

    With ``peak`` (a two-class model's confidence level, :meth:`~.options.SegmentOptions.peak_level`)
    class-1 pixels whose probability reaches it are written as code 2, for
    :func:`_clean_granules_in_bands`.
    """
    shape, mshape = tuple(dst.shape), plan.image_shape
    prep = input_scaler(src, model.card.input_scaling)  # levels of the whole montage
    if mshape == shape:
        def labels(lo, hi, scores, weights):
            lab = reduce_scores(scores)[0]
            if peak is not None:  # summed weighted probabilities against the summed weights
                lab[(lab == 1) & (scores[..., 1] >= np.float32(peak) * weights)] = 2
            dst[lo:hi] = lab

        yield from _blend_rows(model, src, plan, batch_size, labels, prep)
        return
    with _scratch(scratch, name, mshape) as scaled, \
            _scratch(scratch, name, mshape + (model.n_classes,)) as probs:
        step = _row_chunk(shape[1], 1, shape[0] / mshape[0])
        for o0 in range(0, mshape[0], step):
            scaled[o0:o0 + step] = resample_rows(lambda r: prep(np.asarray(src[r])), shape,
                                                 mshape, o0, min(o0 + step, mshape[0]))

        def normalised(lo, hi, scores, weights):
            probs[lo:hi] = scores / weights[..., None]

        yield from _blend_rows(model, scaled, plan, batch_size, normalised,
                               lambda piece: np.asarray(piece, np.float32))
        step = _row_chunk(shape[1], model.n_classes, mshape[0] / shape[0])
        if peak is not None:
            odds = np.array([math.log(peak / (1.0 - peak)), 0.0], np.float32)

            def raised(rows):
                return _log_probabilities(probs)(rows) + odds
        for o0 in range(0, shape[0], step):
            o1 = min(o0 + step, shape[0])
            lab = upsample_argmax_rows(_log_probabilities(probs), mshape, shape, o0, o1)
            if peak is not None:  # class 1 wins against class 0 raised to the peak's log-odds
                strong = upsample_argmax_rows(raised, mshape, shape, o0, o1)
                lab[(lab == 1) & (strong == 1)] = 2
            dst[o0:o1] = lab


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
    options: SegmentOptions | None = None,
    locations_model: SegmentationModel | str | os.PathLike | None = None,
    granules_model: SegmentationModel | str | os.PathLike | None = None,
    **option_fields: Any,
) -> Generator[SegmentProgress, None, SegmentationResult]:
    """Segment a montage by tiles into ``out_dir/locations/<name>.tif`` and ``.../granules/``.

    Parameters
    ----------
    path : path-like
        A 2-D gray 8/16-bit TIFF (uncompressed ones are read in place; compressed ones are first
        decoded into a scratch file in ``out_dir``) or an OME-Zarr store (its full resolution,
        decoded into a scratch file a band of chunks at a time). For a model at another pixel
        size the montage is resized to it by bands into a scratch file, and the probabilities
        resized back.
    out_dir : path-like
        Output folder; the label maps are written as uncompressed TIFFs, atomically.
    name : str, optional
        Output file stem (default: the input's).
    pixel_size_nm, force_pixel_size
        As :func:`~.io.read_micrograph`.
    locations_model, granules_model : SegmentationModel or path, optional
        Models or weight files; the bundled defaults when None.
    options, **option_fields
        :class:`~.options.SegmentOptions` (and fields replacing its own), as
        :func:`~.segment.segment_micrograph_iter`; montages always run ``tiled`` whatever the mode.
        ``max_window`` defaults to the largest window whose pass and score band fit the memory
        budget (default half the available memory).

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
        If the file is not a single 2-D gray integer TIFF or OME-Zarr plane.
    """
    p, out = Path(path), Path(out_dir)
    name = name or micrograph_stem(p)
    opts = SegmentOptions.merged(options, **option_fields)
    models = {"locations": opts.prepare(_resolve_model(locations_model, "locations")),
              "granules": opts.prepare(_resolve_model(granules_model, "granules"))}
    budget = memory_budget(opts)
    halo, batch_size, max_window = opts.halo, opts.batch_size, opts.max_window
    with _source(p, out) as src:
        px, source = _pixel_size(p, pixel_size_nm, force_pixel_size, models)
        shape = tuple(int(s) for s in src.shape)
        plans = {}
        for kind, model in models.items():
            mshape = _model_shape(shape, px, model)
            window = max_window or _large_window(budget, mshape[1], batch_size, model.n_classes)
            plans[kind] = TilePlan.for_image(mshape, window, halo, MULTIPLE)
        steps = {k: plan.counts[0] * -(-plan.counts[1] // batch_size) for k, plan in plans.items()}
        done = 0
        for kind, model in models.items():
            with atomic_output(out / kind / f"{name}.tif") as tmp:
                dst = _create_label_map(tmp, shape, px)
                peak = opts.peak_level(model)
                passes = _labels_by_bands(model, src, plans[kind], batch_size, dst, out, name, peak)
                for step, _ in enumerate(passes, 1):
                    done += 1
                    yield SegmentProgress(kind, step, steps[kind], done, sum(steps.values()),
                                          f"{kind}: pass {step}/{steps[kind]} (tiled, by bands)")
                if model.card.kind == "granules" and (opts.speck_nm or peak is not None):
                    _clean_granules_in_bands(dst, opts.speck_nm, px, peak is not None)
                dst.flush()
                del dst
    labels = {k: tifffile.memmap(out / k / f"{name}.tif", mode="r") for k in models}
    notes = [f"{k}: segmented by bands, {plan.n_windows} windows of {plan.window[0]} px at "
             f"{plan.image_shape[1]}x{plan.image_shape[0]} px" for k, plan in plans.items()]
    return SegmentationResult(labels=labels, pixel_size_nm=px, pixel_size_source=source, mode="tiled",
                              models={k: m.card for k, m in models.items()}, name=name, notes=notes)


def segment_large(path: str | os.PathLike, out_dir: str | os.PathLike, **kwargs) -> SegmentationResult:
    """Run :func:`segment_large_iter` to the end and return its result."""
    return run_to_completion(segment_large_iter(path, out_dir, **kwargs))
