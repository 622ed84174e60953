"""Micrograph -> Locations and Granules label maps (and per-pixel confidence).

:func:`segment_micrograph_iter` is the one implementation: a generator that yields
:class:`SegmentProgress` events and returns a :class:`SegmentationResult`. The CLI draws a progress
bar from the events, the GUI runs it in a thread worker (closing the generator cancels), scripts call
:func:`segment_micrograph`, which runs it to the end.

Inference modes
---------------
``whole``
    The whole micrograph, reflect-padded to a multiple of 128, in one fully convolutional pass:
    no seams, and the least work per pixel.
``tiled``
    Equal windows with a halo of context, cross-faded where they overlap (:class:`TilePlan`), for
    images or machines where ``whole`` does not fit in memory.
``seed``
    The original tool's non-overlapping 1024 x 1024 tiles, for reproducing published numbers. A
    model at the image's pixel size (the original tool's 0.8 nm weights on 0.8 nm micrographs) sees
    exactly the original tiles; for a model at another pixel size the image is resampled to it
    first and the labels brought back by nearest neighbour.
``auto`` (default)
    ``whole`` if its estimated memory fits the budget, else ``tiled`` with the largest windows
    that fit.

Images are scaled as the model's card says (:func:`input_scaler`: by their dtype's range to
float32 in [0, 1], as the original tool does, or also stretched by the micrograph's own grey
levels) and, in
``whole``/``tiled`` modes, resampled to the model's pixel size and the labels brought back.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .calibration import scores_confidence
from .io import Micrograph, as_micrograph, available_memory_bytes, read_micrograph
from .models import MULTIPLE, SegmentationModel, default_model, load_model, reduce_scores
from .options import GRANULE_DIAMETERS_NM, MIN_GRANULE_NM, MODES, SegmentOptions
from .progress import run_to_completion  # noqa: F401 - re-exported (older imports)
from .resample import RESAMPLE_TOLERANCE, model_grid_shape, resample, upsample_argmax
from .tiling import TilePlan, pad_to_multiple, seed_tile_origins

logger = logging.getLogger(__name__)

__all__ = [
    "MODES",
    "SegmentProgress",
    "SegmentationResult",
    "segment_micrograph",
    "segment_micrograph_iter",
    "to_unit_float",
    "input_scaler",
    "input_levels",
    "estimate_memory_bytes",
    "run_to_completion",
    "remove_small_objects",
    "MIN_GRANULE_NM",
    "SegmentOptions",
    "memory_budget",
    "PIXEL_RANGE_SLACK",
    "PixelSizeRangeWarning",
    "pixel_range_notes",
    "views_notes",
]

SEED_TILE = 1024
# Peak memory growth per input pixel of one whole-image forward pass on the CPU: measured 193 B/px
# (Locations) and 92 B/px (Granules) with `python benchmarks/bench_segment.py --memory`
# (docs/benchmarks.md, 2026-12-04); 200 covers both (the default budget, half the available
# memory, leaves the rest of the margin).
_BYTES_PER_PIXEL = 200
_RESAMPLE_TOLERANCE = RESAMPLE_TOLERANCE  # kept for older imports
# How far outside the pixel sizes a model learnt from (ModelCard.training_pixel_range) a
# micrograph may lie, finer and coarser, before segmentation says its results are unchecked. The
# bundled defaults learnt from micrographs of 0.7-0.9 nm/px; on the standard look they meet their
# Locations and granule-F1 targets from 0.6 to 2.0 nm/px and miss Locations at 0.4 nm/px and
# nearly at 3.0 (`python benchmarks/accuracy.py`, docs/accuracy.md): 1.5x finer (0.47 nm/px)
# and 2.5x coarser (2.25 nm/px) lie between.
PIXEL_RANGE_SLACK = (1.5, 2.5)


class PixelSizeRangeWarning(UserWarning):
    """A micrograph's pixel size lies far outside those a model learnt from: its labels are
    extrapolated (check them, or correct a micrograph and fine-tune)."""


@dataclass(frozen=True)
class SegmentProgress:
    """One step of segmentation.

    Attributes
    ----------
    stage : str
        The model running (``"locations"`` / ``"granules"``).
    step, steps : int
        Windows done in this stage, and their number.
    done, total : int
        Windows done over all stages, and their number (for one overall progress bar).
    message : str
        Human-readable description.
    """

    stage: str
    step: int
    steps: int
    done: int
    total: int
    message: str = ""


@dataclass
class SegmentationResult:
    """Label maps of one micrograph, the same shape as the input image.

    Attributes
    ----------
    labels : dict
        ``{"locations": uint8 array, "granules": uint8 array}`` (only the models that ran).
    confidence : dict
        Same keys; max softmax probability per pixel (float32), when asked for.
    pixel_size_nm, pixel_size_source : float, str
        The image's pixel size and where it came from (metadata, user, model).
    mode : str
        The mode that ran (``auto`` resolved).
    models : dict
        The :class:`ModelCard` of each model.
    name : str
        The micrograph's name (file stem).
    """

    labels: dict[str, np.ndarray]
    confidence: dict[str, np.ndarray] = field(default_factory=dict)
    pixel_size_nm: float = 0.8
    pixel_size_source: str = "model"
    mode: str = "whole"
    models: dict[str, Any] = field(default_factory=dict)
    name: str = "image"
    notes: list[str] = field(default_factory=list)

    @property
    def locations(self) -> np.ndarray | None:
        return self.labels.get("locations")

    @property
    def granules(self) -> np.ndarray | None:
        return self.labels.get("granules")

    @property
    def untrained(self) -> list[str]:
        """Kinds of the models that had random (untrained) weights."""
        return [k for k, card in self.models.items() if not card.trained]


# -------------------------------------------------------------------------------------------------
# Input preparation
# -------------------------------------------------------------------------------------------------
def to_unit_float(image: np.ndarray) -> np.ndarray:
    """Convert an image to float32 in [0, 1] by its dtype's range, as the original tool does.

    ``uint8`` is divided by 255 and ``uint16`` by 65535 (so a 12-bit camera image in a 16-bit file
    looks dark, exactly as it did to the original models). Signed integers map their dtype range
    to [0, 1]. Floats already in [0, 1] pass unchanged; other floats are min-max scaled (with a
    warning, since their range is unknown).
    """
    a = np.asarray(image)
    if a.dtype == bool:
        return a.astype(np.float32)
    if a.dtype.kind == "u":
        out = a.astype(np.float32)
        out /= np.float32(np.iinfo(a.dtype).max)
        return out
    if a.dtype.kind == "i":
        info = np.iinfo(a.dtype)
        return ((a.astype(np.float64) - info.min) / (info.max - info.min)).astype(np.float32)
    if a.dtype.kind == "f":
        a = a.astype(np.float32, copy=False)
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ValueError("the image contains NaN or infinite values")
        if lo >= 0.0 and hi <= 1.0:
            return a
        warnings.warn(
            f"float image with values in [{lo:g}, {hi:g}] scaled to [0, 1] by its own range; "
            "save micrographs as 8- or 16-bit integers to keep the original tool's scaling",
            UserWarning,
            stacklevel=3,
        )
        return ((a - lo) / (hi - lo)).astype(np.float32) if hi > lo else np.zeros_like(a)
    raise ValueError(f"unsupported image dtype {a.dtype}")


#: Percentiles of the block means and the greys they are stretched to ("percentile" scaling).
STRETCH_PERCENTILES = (1.0, 99.0)
STRETCH_GREYS = (0.15, 0.75)
_LEVEL_BLOCK = 4  # block means: the noise of one pixel does not widen the percentiles
_LEVEL_MAX_BLOCKS = 1 << 18


def input_levels(image) -> tuple[float, float]:
    """The 1st and 99th percentiles (in :func:`to_unit_float` units) of an image's 4 x 4 px block
    means, on a regular subsample of at most about 260,000 blocks.

    Reads the image by rows, so a memory-mapped, Zarr or Dask array of any size works; the same
    image gives the same levels whether it is segmented in memory, as a montage, or trained on.
    Block means rather than pixels: percentiles of single pixels follow the noise (a noisy image
    would look contrasty); those of blocks follow the structures.
    """
    return levels_of(block_means(image))


def block_means(image) -> np.ndarray:
    """4 x 4 px block means (unit float) of a regular subsample of ``image``, read by rows."""
    h, w = (int(n) for n in image.shape[:2])
    b = _LEVEL_BLOCK if min(h, w) >= 4 * _LEVEL_BLOCK else 1
    nby, nbx = h // b, w // b
    stride = max(1, int(np.ceil(np.sqrt(nby * nbx / _LEVEL_MAX_BLOCKS))))
    rows = []
    for by in range(0, nby, stride):
        band = np.asarray(image[by * b:(by + 1) * b, :nbx * b]).reshape(b, nbx, b)[:, ::stride]
        rows.append(to_unit_float(band).mean(axis=(0, 2)))
    return np.concatenate(rows) if rows else np.zeros(0, np.float32)


def levels_of(values: np.ndarray) -> tuple[float, float]:
    """The :data:`STRETCH_PERCENTILES` of block means (0, 1 for none)."""
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, STRETCH_PERCENTILES)
    return float(lo), float(hi)


def stretch(x: np.ndarray, levels: tuple[float, float]) -> np.ndarray:
    """Linear map of unit-float ``x`` taking ``levels`` to :data:`STRETCH_GREYS`, clipped to
    [0, 1] (as training's augmentation clips).

    A (nearly) flat image is only shifted: its noise is not blown up.
    """
    lo, hi = levels
    g0, g1 = STRETCH_GREYS
    gain = (g1 - g0) / (hi - lo) if hi - lo > 1e-3 else 1.0
    gain = min(gain, 20.0)
    y = (np.asarray(x, np.float32) - np.float32(lo)) * np.float32(gain) + np.float32(g0)
    return np.clip(y, 0.0, 1.0, out=y)


def input_scaler(image, scaling: str = "dtype-range"):
    """A function that turns pieces of ``image`` (or all of it) into a model's input.

    ``"dtype-range"``: :func:`to_unit_float`. ``"percentile"``: :func:`to_unit_float`, then
    :func:`stretch` with the levels of the *whole* ``image`` (:func:`input_levels`), so that every
    tile of one micrograph is scaled alike.
    """
    if scaling == "dtype-range":
        return _by_table(to_unit_float)
    if scaling != "percentile":
        raise ValueError(f"unknown input scaling {scaling!r}")
    levels = input_levels(image)
    return _by_table(lambda piece: stretch(to_unit_float(piece), levels))


def _by_table(scale):
    """``scale`` for any piece; 8- and 16-bit pieces through a table of its value for every grey
    level: the same float32 numbers in one gather, instead of one pass over the piece per step."""
    tables: dict[np.dtype, np.ndarray] = {}

    def scaled(piece):
        a = np.asarray(piece)
        if a.dtype not in (np.uint8, np.uint16) or a.size < 4 * 65536:
            return scale(a)
        if a.dtype not in tables:
            tables[a.dtype] = scale(np.arange(np.iinfo(a.dtype).max + 1, dtype=a.dtype))
        return tables[a.dtype][a]

    return scaled


def _nearest(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a 2-D array to ``shape`` (pixel centres aligned)."""
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * a.shape[0] / shape[0]).astype(np.intp), a.shape[0] - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * a.shape[1] / shape[1]).astype(np.intp), a.shape[1] - 1)
    return a[rows][:, cols]


def estimate_memory_bytes(shape: tuple[int, int], batch: int = 1) -> int:
    """Rough peak memory of one forward pass over ``batch`` images of ``shape`` (padded to 128)."""
    h, w = (-(-s // MULTIPLE) * MULTIPLE for s in shape)
    return int(h * w * batch * _BYTES_PER_PIXEL)


def _resolve_model(model: SegmentationModel | str | os.PathLike | None, kind: str):
    if isinstance(model, SegmentationModel):
        if model.kind != kind:
            raise ValueError(f"a {model.kind} model was given where a {kind} model is needed")
        return model
    if model is None:
        return default_model(kind)
    return load_model(model, kind)


# -------------------------------------------------------------------------------------------------
# Per-model prediction generators
# -------------------------------------------------------------------------------------------------
def _predict_whole(model: SegmentationModel, x: np.ndarray, want_scores: bool,
                   confidence: bool = True):
    padded, crop = pad_to_multiple(x, MULTIPLE)
    if want_scores:  # logits or their difference (and confidence) on the model's grid
        scores = model.predict_scores(padded[None])[0][crop]
        yield 1
        return scores, scores_confidence(scores, model.card.temperature) if confidence else None
    labels, conf = model.predict_labels(padded[None], confidence)
    yield 1
    return labels[0][crop], None if conf is None else conf[0][crop]


def _predict_tiled(model: SegmentationModel, x: np.ndarray, plan: TilePlan, batch_size: int,
                   want_scores: bool):
    padded = plan.pad(x)
    weights = plan.weights()
    wy, wx = plan.window
    acc = np.zeros(plan.padded_shape + (model.n_classes,), np.float32)
    wsum = np.zeros(plan.padded_shape, np.float32)
    origins = list(plan.origins())
    for start in range(0, len(origins), batch_size):
        chunk = origins[start:start + batch_size]
        batch = np.stack([padded[y:y + wy, xx:xx + wx] for y, xx in chunk])
        probs = model.predict_probabilities(batch)
        for (y, xx), p in zip(chunk, probs, strict=True):
            p *= weights[..., None]
            acc[y:y + wy, xx:xx + wx] += p
            wsum[y:y + wy, xx:xx + wx] += weights
        yield len(chunk)
    scores, norm = plan.crop(acc), plan.crop(wsum)
    if want_scores:  # log-probabilities: their arg-max after upsampling is the blended one's
        probs = scores / norm[..., None]
        return np.log(np.maximum(probs, np.float32(1e-30))), probs.max(axis=-1)
    # argmax is unchanged by the per-pixel normalisation; only the maximum needs dividing
    labels, best = reduce_scores(scores)
    return labels, best / norm


def _predict_seed(model: SegmentationModel, x: np.ndarray, batch_size: int,
                  confidence: bool = True):
    h, w = x.shape
    labels = np.zeros((h, w), np.uint8)
    conf = np.zeros((h, w), np.float32) if confidence else None
    origins = seed_tile_origins((h, w), SEED_TILE)
    for start in range(0, len(origins), batch_size):
        chunk = origins[start:start + batch_size]
        tiles = []
        for y, xx in chunk:
            tile = x[y:y + SEED_TILE, xx:xx + SEED_TILE]
            if tile.shape != (SEED_TILE, SEED_TILE):  # edge tiles: mirror out to full size
                tile = np.pad(tile, ((0, SEED_TILE - tile.shape[0]), (0, SEED_TILE - tile.shape[1])),
                              mode="reflect" if min(tile.shape) > 1 else "edge")
            tiles.append(tile)
        lab, cf = model.predict_labels(np.stack(tiles), confidence)
        for i, (y, xx) in enumerate(chunk):
            th, tw = min(SEED_TILE, h - y), min(SEED_TILE, w - xx)
            labels[y:y + th, xx:xx + tw] = lab[i, :th, :tw]
            if conf is not None:
                conf[y:y + th, xx:xx + tw] = cf[i, :th, :tw]
        yield len(chunk)
    return labels, conf


# -------------------------------------------------------------------------------------------------
# The pipeline
# -------------------------------------------------------------------------------------------------
def _choose_mode(mode: str, shape: tuple[int, int], budget: int | None, max_window: int | None,
                 batch_size: int) -> tuple[str, int]:
    """Resolve ``auto`` and pick the largest tiled window (<= 4096) that fits the memory budget."""
    if max_window is None:
        max_window = 2048
        if budget is not None:
            side = (budget / (_BYTES_PER_PIXEL * batch_size)) ** 0.5
            max_window = int(min(4096, max(512, side // MULTIPLE * MULTIPLE)))
    if mode != "auto":
        return mode, max_window
    if budget is None or estimate_memory_bytes(shape) <= budget:
        return "whole", max_window
    return "tiled", max_window


def memory_budget(options: SegmentOptions) -> int | None:
    """The options' memory budget, or half the available memory (None when unknown)."""
    if options.memory_budget_bytes is not None:
        return options.memory_budget_bytes
    avail = available_memory_bytes()
    return avail // 2 if avail else None


def remove_small_objects(labels: np.ndarray, min_diameter_nm: float, pixel_size_nm: float,
                         background: int = 0) -> np.ndarray:
    """Set objects (8-connected, per code) smaller than a disc of ``min_diameter_nm`` to background.

    Returns ``labels`` itself (changed in place) for convenience. Only the pixels of each code are
    visited after labelling (granules cover a few per cent of a micrograph).
    """
    from scipy import ndimage as ndi

    min_px = math.pi / 4 * (float(min_diameter_nm) / float(pixel_size_nm)) ** 2
    hi = int(labels.max()) if labels.size else 0
    if labels.dtype == np.uint8 and hi < 16:  # a few codes: one comparison each (below)
        codes = range(hi + 1)
    elif labels.dtype == np.uint8:  # a histogram is much faster than np.unique's sort
        codes = np.flatnonzero(np.bincount(labels.ravel(), minlength=256))
    else:
        codes = np.unique(labels)
    for code in codes:
        if code == background:
            continue
        mask = labels == code
        if not mask.any():
            continue
        comp, n = ndi.label(mask, structure=np.ones((3, 3), bool))
        if not n:
            continue
        where = np.flatnonzero(mask)
        ids = comp.reshape(-1)[where]
        small = np.bincount(ids, minlength=n + 1) < min_px
        small[0] = False
        if small.any():
            drop = where[small[ids]]
            if labels.flags.c_contiguous:
                labels.reshape(-1)[drop] = background
            else:
                labels[np.unravel_index(drop, labels.shape)] = background
    return labels


def keep_peaked_objects(labels: np.ndarray, strong: np.ndarray, code: int = 1, background: int = 0,
                        keep_touching: tuple[bool, bool] = (False, False)) -> np.ndarray:
    """Set objects of ``code`` (8-connected) without a single ``strong`` pixel to background
    (hysteresis: an object counts where its most confident pixel is confident enough).

    Returns ``labels`` itself (changed in place). ``keep_touching`` (top, bottom) keeps the objects
    that touch the first / last row whatever their pixels: for a band cut out of a larger map,
    whose objects may go on beyond it (:mod:`~.montage`).
    """
    from scipy import ndimage as ndi

    mask = labels == code
    comp, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    if not n:
        return labels
    where = np.flatnonzero(mask)
    ids = comp.reshape(-1)[where]
    keep = np.zeros(n + 1, bool)
    keep[ids[np.asarray(strong).reshape(-1)[where]]] = True
    for touching, row in zip(keep_touching, (comp[0], comp[-1]), strict=True):
        if touching:
            keep[row] = True
    keep[0] = True
    drop = where[~keep[ids]]
    if drop.size:
        if labels.flags.c_contiguous:
            labels.reshape(-1)[drop] = background
        else:
            labels[np.unravel_index(drop, labels.shape)] = background
    return labels


def clean_granules(labels: np.ndarray, strong: np.ndarray | None, options: SegmentOptions,
                   pixel_size_nm: float) -> np.ndarray:
    """What every in-memory path does to a Granules label map (in place): the granule peak
    (``strong``: the confident granule pixels, None when no peak applies), then the specks."""
    if strong is not None:
        keep_peaked_objects(labels, strong)
    if options.speck_nm:
        remove_small_objects(labels, options.speck_nm, pixel_size_nm)
    return labels


def pixel_range_notes(pixel_size_nm: float, models: Mapping[str, Any]) -> list[str]:
    """What to tell the user about a micrograph at ``pixel_size_nm`` and these models
    (:class:`SegmentationModel` or :class:`ModelCard` by name): one line per model whose
    recorded training range (:attr:`ModelCard.training_pixel_range`) the pixel size lies
    outside by more than :data:`PIXEL_RANGE_SLACK` (finer, coarser); none for models without a
    record."""
    finer, coarser = PIXEL_RANGE_SLACK
    notes = []
    for name, model in models.items():
        card = getattr(model, "card", model)
        seen = card.training_pixel_range
        if seen is None or seen[0] / finer <= pixel_size_nm <= seen[1] * coarser:
            continue
        factor = pixel_size_nm / card.pixel_size_nm
        how = f"magnified {factor:.3g}x" if factor > 1 else f"shrunk {1 / factor:.3g}x"
        granules = ""
        if card.kind == "granules":
            lo, hi = (d / pixel_size_nm for d in GRANULE_DIAMETERS_NM)
            granules = f"; glycogen granules ({GRANULE_DIAMETERS_NM[0]:g}-{GRANULE_DIAMETERS_NM[1]:g} nm) " \
                        f"are {lo:.2g}-{hi:.2g} px across here"
        notes.append(
            f"{name} model: the micrograph is at {pixel_size_nm:g} nm/px, but the model learnt from "
            f"micrographs of {seen[0]:g}-{seen[1]:g} nm/px (the network runs at {card.pixel_size_nm:g} "
            f"nm/px: it sees this micrograph {how}{granules}); its labels here are unchecked: look at them, "
            "check the pixel size, or correct a micrograph and fine-tune (emgranules train)"
        )
    return notes


def views_notes(models: Mapping[str, Any]) -> list[str]:
    """What to tell the user about models that average symmetric views (:attr:`SegmentationModel.views`
    above 1; :class:`SegmentationModel` or :class:`ModelCard` by name) but whose training, as
    their card records it, had no quarter turns (``rotate90`` False): every view group beyond
    one holds transposed, turned inputs that such a model never saw, and averaging them can make
    its labels worse (a new task on real cardiac EM trained with flips only: pixel accuracy 0.926
    with one view, 0.890 with eight; docs/new_task_real.md). None for models without a record."""
    notes = []
    for name, model in models.items():
        card = getattr(model, "card", model)
        views = int(getattr(model, "views", card.views))
        training = card.provenance.get("training")
        if views > 1 and isinstance(training, dict) and training.get("rotate90") is False:
            notes.append(f"{name} model: it averages {views} views, which turn and transpose the "
                         "micrograph, but it was trained without quarter turns (rotate90), so those "
                         "views are new to it and can make its labels worse: segment with views=1 "
                         "(--views 1), or train with --rotate90")
    return notes


def _read(image, pixel_size_nm: float | None) -> Micrograph:
    if isinstance(image, (str, os.PathLike)):
        return read_micrograph(Path(image), pixel_size_nm)
    return as_micrograph(image, pixel_size_nm)


def _models_to_run(models, kinds, locations_model, granules_model,
                   options: SegmentOptions) -> dict[str, SegmentationModel]:
    """The models by result name, loaded and prepared for the options (precision, threshold)."""
    if models is not None:
        if not models:
            raise ValueError("models must name at least one model")
        loaded = {k: m if isinstance(m, SegmentationModel) else load_model(m) for k, m in models.items()}
    else:
        unknown = set(kinds) - {"locations", "granules"}
        if unknown or not kinds:
            raise ValueError(f"kinds must name 'locations' and/or 'granules', got {kinds!r}")
        loaded = {k: _resolve_model(locations_model if k == "locations" else granules_model, k)
                  for k in kinds}
    return {k: options.prepare(m) for k, m in loaded.items()}


@dataclass(frozen=True)
class _Plan:
    """How one model runs on one micrograph: its grid, windows and number of passes."""

    shape: tuple[int, int]
    tiles: TilePlan | None
    steps: int


def _plan(micrograph: Micrograph, model: SegmentationModel, mode: str, window: int,
          options: SegmentOptions, kind: str) -> _Plan:
    shape = model_grid_shape(micrograph.shape, micrograph.pixel_size_nm / model.card.pixel_size_nm)
    if mode == "tiled":
        tiles = TilePlan.for_image(shape, window, options.halo, MULTIPLE)
        return _Plan(shape, tiles, -(-tiles.n_windows // options.batch_size))
    if mode == "seed":
        if shape != micrograph.shape:
            logger.info("seed mode: the image (%g nm/px) is resampled to the %s model's %g nm/px "
                        "before it is cut into %d px tiles", micrograph.pixel_size_nm, kind,
                        model.card.pixel_size_nm, SEED_TILE)
        return _Plan(shape, None, -(-len(seed_tile_origins(shape, SEED_TILE)) // options.batch_size))
    return _Plan(shape, None, 1)


def _labels_of(model: SegmentationModel, x: np.ndarray, image_shape: tuple[int, int], plan: _Plan,
               mode: str, options: SegmentOptions, confidence: bool, peak: float | None = None):
    """One model's label map, confidence (or None) and, with ``peak`` (a two-class model's
    confidence level, :meth:`~.options.SegmentOptions.peak_level`), the mask of its confident
    class-1 pixels (else None), all at the micrograph's grid, from its input ``x`` on the model's
    grid; yields once per forward pass."""
    other_grid = plan.shape != image_shape
    want_scores = other_grid and mode != "seed"
    # the peak needs the confidence, except from scores: those say it themselves (below)
    need_cf = confidence or (peak is not None and not want_scores)
    if mode == "whole":
        lab, cf = yield from _predict_whole(model, x, want_scores, need_cf)
    elif mode == "tiled":
        lab, cf = yield from _predict_tiled(model, x, plan.tiles, options.batch_size, want_scores)
    else:
        lab, cf = yield from _predict_seed(model, x, options.batch_size, need_cf)
    strong = None
    if want_scores:  # class scores on the model's grid: exact arg-max of their upsampling
        if peak is not None:  # confident pixels on the model's grid, brought back by nearest
            strong = _nearest(_confident(lab, peak, model.card.temperature), image_shape)
        lab = upsample_argmax(lab, image_shape)
        cf = None if cf is None or not confidence else resample(cf, image_shape)
    elif other_grid:  # seed mode at another pixel size: labels back by nearest neighbour
        lab, cf = (None if a is None else _nearest(a, image_shape) for a in (lab, cf))
    if peak is not None and strong is None:
        strong = (lab == 1) & (cf >= np.float32(peak))
    return lab, (cf.astype(np.float32, copy=False) if confidence else None), strong


def _confident(scores: np.ndarray, level: float, temperature: float) -> np.ndarray:
    """Where a two-class model's scores give class 1 a calibrated probability of at least
    ``level`` (> 0.5): ``scores`` is its logit difference ``(h, w)`` (whole passes) or its two
    log-probabilities ``(h, w, 2)`` (tiled passes, calibrated already)."""
    odds = math.log(level / (1.0 - level))
    if scores.ndim == 2:
        return scores >= np.float32(odds * temperature)
    return scores[..., 1] - scores[..., 0] >= np.float32(odds)


def segment_micrograph_iter(
    image: np.ndarray | Micrograph | str | os.PathLike,
    pixel_size_nm: float | None = None,
    *,
    options: SegmentOptions | None = None,
    locations_model: SegmentationModel | str | os.PathLike | None = None,
    granules_model: SegmentationModel | str | os.PathLike | None = None,
    kinds: tuple[str, ...] = ("locations", "granules"),
    models: Mapping[str, SegmentationModel | str | os.PathLike] | None = None,
    confidence: bool | tuple[str, ...] = False,
    **option_fields: Any,
) -> Generator[SegmentProgress, None, SegmentationResult]:
    """Segment a micrograph with the Locations and Granules models, yielding progress.

    Parameters
    ----------
    image : ndarray, Micrograph or path
        A 2-D gray micrograph (any integer dtype, or float in [0, 1]), a :class:`Micrograph`, or a
        file to read.
    pixel_size_nm : float, optional
        The image's pixel size, used when the file's metadata has none (arrays: always).
        Defaults to the finest pixel size of the models used (0.8 nm for the Granules model).
    options : SegmentOptions, optional
        How to segment (mode, windows, speck removal, memory budget, precision, compilation,
        granule threshold); the defaults when None.
    locations_model, granules_model : SegmentationModel or path, optional
        Models or weight files; the bundled defaults when None.
    kinds : tuple of str
        Which models to run.
    models : mapping of name to SegmentationModel or path, optional
        Run these models instead (any kind, e.g. a user's own task): replaces the two model
        arguments and ``kinds``; results are keyed by the mapping's names.
    confidence : bool or tuple of str
        Also return each model's per-pixel confidence (max calibrated softmax probability); a
        tuple names the models to return it for (e.g. ``("granules",)``).
    **option_fields
        Fields of :class:`SegmentOptions` (``mode="whole"``, ``batch_size=4``, ...), replacing
        those of ``options``.

    Yields
    ------
    SegmentProgress
        After every forward pass.

    Returns
    -------
    SegmentationResult
    """
    opts = SegmentOptions.merged(options, **option_fields)
    micrograph = _read(image, pixel_size_nm)
    models = _models_to_run(models, kinds, locations_model, granules_model, opts)
    if micrograph.pixel_size_source == "model":
        # "the model's pixel size": an image of unknown scale is taken to be at the finest pixel
        # size of the models (the Granules model's 0.8 nm; the Locations default works coarser).
        micrograph = replace(micrograph, pixel_size_nm=min(m.card.pixel_size_nm
                                                           for m in models.values()))
    notes = pixel_range_notes(micrograph.pixel_size_nm, models)
    for note in notes:
        warnings.warn(note, PixelSizeRangeWarning, stacklevel=2)
    for note in views_notes(models):
        warnings.warn(note, UserWarning, stacklevel=2)
        notes.append(note)
    # the networks run on their own grids: a coarse micrograph grows there (12.5 -> 0.8 nm/px is
    # 16 times the side), and "whole" must fit on the largest of them
    grids = [model_grid_shape(micrograph.shape, micrograph.pixel_size_nm / m.card.pixel_size_nm)
             for m in models.values()]
    largest = max([micrograph.shape, *grids], key=lambda shape: shape[0] * shape[1])
    mode, window = _choose_mode(opts.mode, largest, memory_budget(opts), opts.max_window,
                                opts.batch_size)
    plans = {kind: _plan(micrograph, model, mode, window, opts, kind) for kind, model in models.items()}
    scaled = {scaling: input_scaler(micrograph.data, scaling)(micrograph.data)
              for scaling in {m.card.input_scaling for m in models.values()}}
    on_grid: dict[tuple, np.ndarray] = {}  # both models often share a grid and a scaling
    total, done = sum(p.steps for p in plans.values()), 0
    labels: dict[str, np.ndarray] = {}
    confs: dict[str, np.ndarray] = {}
    for kind, model in models.items():
        plan, scaling = plans[kind], model.card.input_scaling
        key = (plan.shape, scaling)
        if key not in on_grid:
            on_grid[key] = resample(scaled[scaling], plan.shape)
        wanted = bool(confidence) if isinstance(confidence, bool) else kind in confidence
        peak = opts.peak_level(model)
        passes = _labels_of(model, on_grid[key], micrograph.shape, plan, mode, opts, wanted, peak)
        step = 0
        while True:
            try:
                next(passes)
            except StopIteration as stop:
                lab, cf, strong = stop.value
                break
            step, done = step + 1, done + 1
            yield SegmentProgress(kind, step, plan.steps, done, total,
                                  f"{kind}: pass {step}/{plan.steps} ({mode})")
        if model.card.kind == "granules":
            lab = clean_granules(lab, strong, opts, micrograph.pixel_size_nm)
        labels[kind] = lab
        if wanted:
            confs[kind] = cf
    return SegmentationResult(
        labels=labels,
        confidence=confs,
        pixel_size_nm=micrograph.pixel_size_nm,
        pixel_size_source=micrograph.pixel_size_source,
        mode=mode,
        models={k: m.card for k, m in models.items()},
        name=micrograph.name,
        notes=notes,
    )


def segment_micrograph(image, pixel_size_nm: float | None = None, **kwargs) -> SegmentationResult:
    """Segment a micrograph and return its label maps; see :func:`segment_micrograph_iter`.

    Examples
    --------
    >>> from napari_emgranules import segment_micrograph
    >>> result = segment_micrograph("cell.tif")          # doctest: +SKIP
    >>> result.locations.shape, result.granules.dtype    # doctest: +SKIP
    ((4096, 4096), dtype('uint8'))
    """
    return run_to_completion(segment_micrograph_iter(image, pixel_size_nm, **kwargs))

