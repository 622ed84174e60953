"""One micrograph of a batch: read, segment, write label maps, measure, write its tables.

These functions run in the batch's own process (serially, with reading and writing in background
threads) or in Dask workers (:func:`process_image`). They receive only plain, picklable values:
weight *paths* (or None for the bundled models), never loaded models, so that each worker loads
the models once (:func:`~.models.load_model` caches them per process).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .io import Micrograph, MicrographError, file_sha256, read_micrograph, write_image, write_labels
from .measure import code_counts, measure_segmentation, write_csv
from .models import SegmentationModel, WeightsError
from .montage import segment_large, tiled_bytes_per_pixel
from .omezarr import OME_ZARR_SUFFIX, is_ome_zarr, ome_zarr_level0, write_ome_zarr
from .options import SegmentOptions
from .progress import run_to_completion
from .segment import (
    SegmentationResult,
    _resolve_model,
    clean_granules,
    memory_budget,
    segment_micrograph_iter,
)

__all__ = ["ImageJob", "ImageSettings", "model_info", "process_image", "IMAGE_ERRORS"]

KINDS = ("locations", "granules")
LABEL_FORMATS = ("tif", "png", "ome-zarr")
"""Label map formats of a batch: TIFF, 16-bit PNG, or one OME-Zarr store per micrograph."""
IMAGE_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, MemoryError)
"""Errors that fail one micrograph (bad file, unsupported content) but not the batch."""

_HASHES: weakref.WeakKeyDictionary[SegmentationModel, str] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class ImageJob:
    """One micrograph to process: its path, output name and its own pixel size (manifest CSV)."""

    path: str
    name: str
    pixel_size_nm: float | None = None


@dataclass(frozen=True)
class ImageSettings:
    """Everything that says how to process a micrograph (the same for every image of a run).

    ``locations_model``/``granules_model`` are weight paths or None (bundled); in a serial run they
    may also be loaded :class:`SegmentationModel` objects. ``options`` says how to segment.
    """

    out_dir: str
    options: SegmentOptions = field(default_factory=SegmentOptions)
    locations_model: Any = None
    granules_model: Any = None
    pixel_size_nm: float | None = None
    force_pixel_size: bool = False
    measure: dict[str, Any] = field(default_factory=dict)
    granule_thresholds: tuple[float, ...] = ()
    kinds: tuple[str, ...] = KINDS
    tables: bool = True
    label_format: str = "tif"
    confidence: bool = False
    objects: bool = False

    def model(self, kind: str) -> SegmentationModel:
        """The loaded model of ``kind`` prepared for the run's options (precision, granule
        threshold; cached per process)."""
        ref = self.locations_model if kind == "locations" else self.granules_model
        return self.options.prepare(_resolve_model(ref, kind))


# -------------------------------------------------------------------------------------------------
# Models: load once per process, hash the weights once per model
# -------------------------------------------------------------------------------------------------
def weights_sha256(model: SegmentationModel) -> str:
    """SHA-256 of a model's weight arrays (dtype, shape and bytes of each, in order), cached."""
    if model not in _HASHES:
        try:
            keras_model = model.keras_model
        except WeightsError:  # a network run by another engine (ONNX) says so: hash its file
            keras_model = None
        if keras_model is None:
            _HASHES[model] = file_sha256(model.path)
            return _HASHES[model]
        digest = hashlib.sha256()
        for array in keras_model.get_weights():
            digest.update(f"{array.dtype.str}{array.shape}".encode())
            digest.update(array.tobytes())
        _HASHES[model] = digest.hexdigest()
    return _HASHES[model]


def model_info(settings: ImageSettings) -> dict[str, dict[str, Any]]:
    """Load both models (validating the weights) and describe them: weights hash, trained, synthetic."""
    info = {}
    for kind in settings.kinds:
        model = settings.model(kind)
        info[kind] = {"weights_sha256": weights_sha256(model), "trained": model.card.trained,
                      "synthetic": model.card.synthetic, "pixel_size_nm": model.card.pixel_size_nm,
                      "source": str(model.card.provenance.get("source", "built in"))}
    return info


# -------------------------------------------------------------------------------------------------
# The three steps
# -------------------------------------------------------------------------------------------------
@dataclass
class Loaded:
    """A micrograph read into memory, or the path of one too large for that (segmented by tiles)."""

    job: ImageJob
    micrograph: Micrograph | None
    started: float


def _too_large(path: Path, settings: ImageSettings) -> bool:
    """True for a TIFF or OME-Zarr micrograph whose in-memory tiled segmentation would not fit the
    memory budget (sized from its header or metadata, without reading pixels)."""
    budget = memory_budget(settings.options)
    if settings.options.mode == "seed" or budget is None:
        return False
    shape = _stored_shape(path)
    return shape is not None and shape[0] * shape[1] * tiled_bytes_per_pixel() > budget


def _stored_shape(path: Path) -> tuple[int, int] | None:
    """Rows and columns of a TIFF's first page or an OME-Zarr store's full resolution; None for
    other files and for any it cannot tell (reading the file then says what is wrong)."""
    import tifffile

    if is_ome_zarr(path):
        try:
            plane, _facts = ome_zarr_level0(path)
        except MicrographError:
            return None
        return int(plane.shape[0]), int(plane.shape[1])
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None
    try:
        with _quiet_tifffile(), tifffile.TiffFile(path) as tif:
            rows, cols = tif.pages.first.shape[:2]
    except (tifffile.TiffFileError, OSError, IndexError, ValueError):
        return None
    return int(rows), int(cols)


@contextlib.contextmanager
def _quiet_tifffile() -> Iterator[None]:
    """Drop tifffile's log records from this thread (a probe; reading the file reports problems)."""
    me = threading.get_ident()
    only_others = logging.Filter()
    only_others.filter = lambda record: record.thread != me
    log = logging.getLogger("tifffile")
    log.addFilter(only_others)
    try:
        yield
    finally:
        log.removeFilter(only_others)


def load_image(job: ImageJob, settings: ImageSettings) -> Loaded:
    """Read the micrograph, unless it is too large for memory (then only its path is kept)."""
    started = time.perf_counter()
    path = Path(job.path)
    if _too_large(path, settings):
        return Loaded(job, None, started)
    px = job.pixel_size_nm if job.pixel_size_nm is not None else settings.pixel_size_nm
    return Loaded(job, read_micrograph(path, px, force_pixel_size=settings.force_pixel_size), started)


def segment_image(loaded: Loaded, settings: ImageSettings) -> tuple[SegmentationResult, bool]:
    """The label maps of ``settings.kinds``; ``True`` second when they were written by tiles
    already (a montage too large for memory).

    With ``granule_thresholds`` the Granules model's arg-max labels come with the calibrated
    granule probability (``result.confidence["granule_probability"]``), so :func:`finish_image`
    can label every threshold from this one forward pass.
    """
    job, sweep = loaded.job, bool(settings.granule_thresholds)
    models = {f"{kind}_model": settings.model(kind) for kind in settings.kinds}
    if loaded.micrograph is None:
        needs = [what for what, wanted in (
            ("a granule threshold sweep", sweep), ("one model only", settings.kinds != KINDS),
            ("confidence maps", settings.confidence),
            (f"{settings.label_format} label maps", settings.label_format != "tif"))
            if wanted]
        if needs:
            raise ValueError(f"{job.path}: too large for memory, so it is segmented by tiles into TIFF "
                             f"label maps of both models; {', '.join(needs)} needs it in memory")
        px = job.pixel_size_nm if job.pixel_size_nm is not None else settings.pixel_size_nm
        return segment_large(job.path, settings.out_dir, name=job.name, pixel_size_nm=px,
                             force_pixel_size=settings.force_pixel_size, options=settings.options,
                             **models), True
    options = settings.options
    if sweep:  # the raw arg-max and probability; the run's own threshold and specks follow
        options = replace(options, granule_threshold=None, min_granule_nm=None, granule_peak=None)
        # from the weights as loaded: the run's model may carry its threshold in the graph already
        models["granules_model"] = options.prepare(_resolve_model(settings.granules_model, "granules"))
    result = run_to_completion(segment_micrograph_iter(
        loaded.micrograph, options=options, kinds=settings.kinds,
        confidence=True if settings.confidence else ("granules",) if sweep else False, **models))
    if sweep:
        labels, conf = result.labels["granules"], result.confidence["granules"]
        probability = np.where(labels == 1, conf, np.float32(1) - conf)  # of a granule (two classes)
        result.confidence["granule_probability"] = probability
        threshold = settings.options.granule_threshold
        if threshold is not None:
            result.labels["granules"] = (probability >= threshold).astype(np.uint8)
            result.confidence["granules"] = np.maximum(probability, np.float32(1) - probability)
        _clean_granules(result.labels["granules"], probability, threshold, settings, result.pixel_size_nm)
    return result, False


def _clean_granules(labels: np.ndarray, probability: np.ndarray, threshold: float | None,
                    settings: ImageSettings, pixel_size_nm: float) -> np.ndarray:
    """:func:`~.segment.clean_granules` of granules thresholded at ``threshold`` (None: the
    arg-max), ``probability`` being the calibrated granule probability."""
    peak = settings.options.granule_peak
    strong = probability >= np.float32(peak) if peak is not None and peak > (threshold or 0.5) else None
    return clean_granules(labels, strong, settings.options, pixel_size_nm)


def threshold_key(threshold: float) -> str:
    """How a swept threshold names its tables: ``t0.85`` (``tables/<name>.regions.t0.85.csv``)."""
    return f"t{threshold:g}"


def output_paths(name: str, settings: ImageSettings) -> dict[str, str]:
    """Per-image outputs, relative to the output folder."""
    if settings.label_format == "ome-zarr":  # one store holds the micrograph and both maps
        paths = {kind: f"ome-zarr/{name}{OME_ZARR_SUFFIX}" for kind in settings.kinds}
    else:
        paths = {kind: f"{kind}/{name}.{settings.label_format}" for kind in settings.kinds}
    if settings.confidence:
        paths.update({f"{kind}_confidence": f"{kind}_confidence/{name}.tif" for kind in settings.kinds})
    if not settings.tables:
        return paths
    paths.update(regions=f"tables/{name}.regions.csv", particles=f"tables/{name}.particles.csv")
    if settings.measure.get("z_disks"):
        paths["z_disks"] = f"tables/{name}.zdisks.csv"
    if settings.objects:
        paths["objects"] = f"objects/{name}.geojson"
        paths["rois"] = f"objects/{name}.roi.zip"
        paths["region_objects"] = f"objects/{name}.regions.geojson"
    for t in settings.granule_thresholds:
        key = threshold_key(t)
        paths[f"regions.{key}"] = f"tables/{name}.regions.{key}.csv"
        paths[f"particles.{key}"] = f"tables/{name}.particles.{key}.csv"
    return paths


def finish_image(result: SegmentationResult, written: bool, loaded: Loaded,
                 settings: ImageSettings) -> dict[str, Any]:
    """Write the label maps (unless ``written``) and confidence maps, measure, write the tables;
    the outcome record."""
    job, out = loaded.job, Path(settings.out_dir)
    rel = output_paths(job.name, settings)
    if not written and settings.label_format == "ome-zarr":
        maps = {kind: (result.labels[kind], result.models[kind].schema) for kind in settings.kinds}
        write_ome_zarr(out / rel[settings.kinds[0]], maps, pixel_size_nm=result.pixel_size_nm,
                       image=loaded.micrograph.data, overwrite=True)
    elif not written:
        for kind in settings.kinds:
            write_labels(out / rel[kind], result.labels[kind], pixel_size_nm=result.pixel_size_nm)
    if settings.confidence:  # 16-bit, 65535 = certain
        for kind in settings.kinds:
            conf16 = np.round(result.confidence[kind] * 65535).astype(np.uint16)
            write_image(out / rel[f"{kind}_confidence"], conf16, pixel_size_nm=result.pixel_size_nm)
    notes = list(result.notes)
    if settings.tables:
        notes += _measure(result, job, settings, out, rel)
    present = {}
    if "locations" in result.labels:  # the share of each region, for the summary line
        counts = code_counts(result.labels["locations"], 256)
        letters = result.models["locations"].schema.letters
        present = {letters[c]: round(float(counts[c] / counts.sum()), 4) for c in letters if counts[c]}
    return {"status": "done", "name": job.name, "path": job.path, "outputs": rel,
            "output_bytes": {k: output_size(out / v) for k, v in rel.items()},
            "mode": result.mode, "large": written, "pixel_size_nm": result.pixel_size_nm,
            "pixel_size_source": result.pixel_size_source, "notes": notes, "regions": present,
            "seconds": round(time.perf_counter() - loaded.started, 3)}


def output_size(path: Path) -> int:
    """Bytes of a file, or of every file in a folder (an OME-Zarr store)."""
    if path.is_dir():
        return sum(q.stat().st_size for q in path.rglob("*") if q.is_file())
    return os.path.getsize(path)


def _measure(result: SegmentationResult, job: ImageJob, settings: ImageSettings, out: Path,
             rel: dict[str, str]) -> list[str]:
    """Measure and write the density and particle tables (one set per swept threshold); notes."""
    m = measure_segmentation(result, path=job.path, **settings.measure)
    write_csv(m.tables(), out / rel["regions"], overwrite=True)
    write_csv(m.particles, out / rel["particles"], overwrite=True)
    if "z_disks" in rel:
        write_csv(m.z_disks, out / rel["z_disks"], overwrite=True)
    if "objects" in rel:  # the particles as QuPath objects and a Fiji ROI set (outlines in pixels)
        from .objects import (
            particles_geojson,
            particles_imagej_rois,
            regions_geojson,
            write_geojson,
            write_imagej_rois,
        )

        collection = (particles_geojson(m.particle_map, m.particles, pixel_size_nm=result.pixel_size_nm,
                                        image=job.name) if m.particle_map is not None else
                      {"type": "FeatureCollection", "features": [],
                       "napari-emgranules": {"image": job.name, "note": "no particles measured"}})
        write_geojson(collection, out / rel["objects"], overwrite=True)
        rois = particles_imagej_rois(m.particle_map, m.particles) if m.particle_map is not None else []
        write_imagej_rois(rois, out / rel["rois"], overwrite=True)
        schema = result.models["locations"].schema if "locations" in result.models else None
        write_geojson(regions_geojson(result.labels["locations"], schema,
                                      pixel_size_nm=result.pixel_size_nm, image=job.name),
                      out / rel["region_objects"], overwrite=True)
    for t in settings.granule_thresholds:  # one forward pass, a table per threshold
        if t == (settings.options.granule_threshold or 0.5):
            swept = m  # the run's own threshold (0.5: the arg-max) is measured already
        else:
            probability = result.confidence["granule_probability"]
            granules = _clean_granules((probability >= t).astype(np.uint8), probability, t, settings,
                                       result.pixel_size_nm)
            swept = measure_segmentation(replace(result, labels={**result.labels, "granules": granules}),
                                         path=job.path, **settings.measure)
        key = threshold_key(t)
        write_csv(swept.tables().assign(granule_threshold=t), out / rel[f"regions.{key}"],
                  overwrite=True)
        write_csv(swept.particles.assign(granule_threshold=t), out / rel[f"particles.{key}"],
                  overwrite=True)
    return m.notes


def failed(job: ImageJob, exc: BaseException) -> dict[str, Any]:
    """The outcome record of a micrograph that could not be processed."""
    text = str(exc) or type(exc).__name__
    if not isinstance(exc, IMAGE_ERRORS):
        text = f"internal error ({type(exc).__name__}: {text})"
    error = text if job.path in text else f"{job.path}: {text}"
    return {"status": "failed", "name": job.name, "path": job.path, "error": error}


def process_image(job: ImageJob, settings: ImageSettings) -> dict[str, Any]:
    """Read, segment, write and measure one micrograph (the Dask task); failures are returned."""
    try:
        loaded = load_image(job, settings)
        result, written = segment_image(loaded, settings)
        return finish_image(result, written, loaded, settings)
    except IMAGE_ERRORS as exc:
        return failed(job, exc)
