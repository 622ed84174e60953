"""Reading and writing micrographs and label maps.

Everything that touches image files goes through this module, so that the rest of the package
can rely on one contract: a :class:`Micrograph` holds a single 2-D gray image (original integer
dtype, or float32) together with its pixel size in nanometres and where that pixel size came from.

Reading
    :func:`read_micrograph` reads TIFF (plain, BigTIFF, ImageJ, OME; uncompressed or compressed),
    PNG (8/16 bit) and JPEG, and with the ``em`` extra MRC (``.mrc``, ``.st``) and Gatan Digital
    Micrograph (``.dm3``, ``.dm4``) files (:mod:`.emformats`). Colour images are converted to
    gray, stacks are refused, broken or truncated files raise :class:`MicrographError` with a
    one-line message naming the file.
    :func:`as_micrograph` / :func:`check_image_array` apply the same checks to in-memory arrays.

Pixel size
    The pixel size is taken, in this order, from: a user value with ``force_pixel_size=True``;
    calibrated file metadata (OME ``PhysicalSizeX``, ImageJ unit + resolution, FEI/Thermo and
    Zeiss SEM TIFF tags, TIFF resolution tags in centimetres, PNG ``pHYs``, the MRC header, the
    DM calibration); the user's value; the model's default. The chosen source
    is recorded in :attr:`Micrograph.pixel_size_source` (one of :data:`PIXEL_SIZE_SOURCES`).

Writing
    :func:`write_labels` and :func:`write_image` write TIFF or PNG through :func:`atomic_output`,
    so a target file is never left half-written.

The error and warning classes, the size limits and the helpers that the format readers
(:mod:`.emformats`, :mod:`.omezarr`) share with this module live in :mod:`._iobase`; the public
ones are re-exported here.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import secrets
import struct
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import tifffile
from PIL import Image

from ._iobase import (
    _PIXEL_SIZE_RTOL,
    MAX_SIDE_PX,
    MEMORY_FRACTION,  # noqa: F401 - re-exported: part of io's interface
    PLAUSIBLE_PIXEL_SIZE_NM,
    MicrographError,
    MicrographWarning,
    _accept_candidate,
    _check_decode_size,
    _exc_text,
    _fmt_shape,
    _normalise_unit,
    _unit_to_nm,
    _warn,
    available_memory_bytes,
)
from .emformats import em_pixel_size, instrument_tiff_pixel_size, read_em_file
from .omezarr import is_ome_zarr, ome_zarr_level0, read_ome_zarr

logger = logging.getLogger(__name__)

__all__ = [
    "LABEL_SUFFIXES",
    "available_memory_bytes",
    "file_sha256",
    "MICROGRAPH_SUFFIXES",
    "PIXEL_SIZE_SOURCES",
    "Micrograph",
    "MicrographError",
    "MicrographWarning",
    "as_micrograph",
    "atomic_output",
    "check_image_array",
    "metadata_pixel_size_nm",
    "read_labels",
    "read_micrograph",
    "write_image",
    "write_labels",
]

PathLike = str | os.PathLike[str]

#: Where a micrograph's pixel size came from.
PIXEL_SIZE_SOURCES: tuple[str, ...] = (
    "metadata:tiff-resolution",
    "metadata:imagej",
    "metadata:ome",
    "metadata:png",
    "metadata:fei",
    "metadata:zeiss-sem",
    "metadata:mrc",
    "metadata:dm",
    "metadata:ome-zarr",
    "user",
    "model",
)

#: File suffixes :func:`read_micrograph` accepts (case-insensitive).
MICROGRAPH_SUFFIXES: tuple[str, ...] = (
    ".tif", ".tiff", ".png", ".jpg", ".jpeg", ".dm3", ".dm4", ".mrc", ".st", ".zarr"
)

#: File suffixes label maps may be read from / written to (lossless formats only).
LABEL_SUFFIXES: tuple[str, ...] = (".tif", ".tiff", ".png")

#: Smallest side, in pixels, the segmentation models can work with.
MIN_SIDE_PX = 32

# Resolutions that image editors write by default; they carry no physical calibration.
_DEFAULT_DPI: tuple[float, ...] = (1.0, 72.0, 96.0, 150.0, 300.0, 600.0)

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_SUFFIX_FORMAT = {".tif": "tiff", ".tiff": "tiff", ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg",
                  ".dm3": "dm", ".dm4": "dm", ".mrc": "mrc", ".st": "mrc", ".zarr": "ome-zarr"}
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),
    (b"MM\x00+", "tiff"),
    (_PNG_MAGIC, "png"),
    (b"\xff\xd8\xff", "jpeg"),
)
_PNG_IEND = b"IEND\xaeB`\x82"

# Exceptions that tifffile, imagecodecs and Pillow raise for unreadable or damaged files.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    OSError,
    struct.error,
    zlib.error,
    EOFError,
    KeyError,
    IndexError,
    SyntaxError,
    RuntimeError,  # imagecodecs.*Error, NotImplementedError
    TypeError,
    AttributeError,
    ET.ParseError,
)


@dataclass
class Micrograph:
    """One 2-D gray micrograph with its pixel size.

    Parameters
    ----------
    data : numpy.ndarray
        2-D image ``(rows, cols)`` in its original integer dtype, or float32.
    pixel_size_nm : float
        Size of one pixel in nanometres.
    pixel_size_source : str
        Where :attr:`pixel_size_nm` came from; one of :data:`PIXEL_SIZE_SOURCES`.
    path : pathlib.Path or None
        File the image was read from, if any.
    metadata : dict
        Details about reading, e.g. ``{"format": "tiff", "dtype": "uint16",
        "converted_from": "rgb", "metadata_pixel_size_nm": 1.2}``.
    """

    data: np.ndarray
    pixel_size_nm: float
    pixel_size_source: str
    path: Path | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.path is not None and not isinstance(self.path, Path):
            self.path = Path(self.path)
        what = str(self.path) if self.path is not None else "<array>"
        if not isinstance(self.data, np.ndarray) or self.data.ndim != 2:
            shape = getattr(self.data, "shape", None)
            raise MicrographError(
                f"{what}: Micrograph.data must be a 2-D numpy array, got shape {shape}; "
                "build micrographs with read_micrograph() or as_micrograph()"
            )
        if self.pixel_size_source not in PIXEL_SIZE_SOURCES:
            raise MicrographError(
                f"{what}: pixel_size_source {self.pixel_size_source!r} is not one of "
                f"{', '.join(PIXEL_SIZE_SOURCES)}"
            )
        self.pixel_size_nm = _check_pixel_size_value(
            self.pixel_size_nm, what, "pixel_size_nm", warn=False
        )

    @property
    def name(self) -> str:
        """File stem (``cell`` of ``cell.ome.zarr`` too), or the name given to
        :func:`as_micrograph` (default ``"image"``)."""
        if self.path is not None:
            return micrograph_stem(self.path)
        return str(self.metadata.get("name", "image"))

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of the image."""
        rows, cols = self.data.shape
        return int(rows), int(cols)


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _check_pixel_size_value(value: Any, what: str, argname: str, *, warn: bool = True) -> float:
    """Return ``value`` as a positive finite float, or raise MicrographError."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise MicrographError(
            f"{what}: {argname} must be a number of nanometres per pixel, got {value!r}"
        )
    result = float(value)
    if not math.isfinite(result) or result <= 0:
        raise MicrographError(
            f"{what}: {argname} must be a positive number of nanometres per pixel, got {value!r}"
        )
    lo, hi = PLAUSIBLE_PIXEL_SIZE_NM
    if warn and not lo <= result <= hi:
        _warn(
            f"{what}: {argname}={result:g} nm/px is outside the usual range for TEM micrographs "
            f"({lo:g}-{hi:g} nm/px); check that the value is in nanometres, not micrometres"
        )
    return result


def _check_path(path: PathLike, suffixes: tuple[str, ...], kind: str) -> tuple[Path, str]:
    """Check that ``path`` is an existing, non-empty file of a supported type.

    Returns the path and its format (``"tiff"``, ``"png"`` or ``"jpeg"``), sniffed from the
    file's first bytes when they disagree with the suffix.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise MicrographError(
            f"{path!r}: expected a file path (str or pathlib.Path), got {type(path).__name__}"
        )
    p = Path(path).expanduser()
    if not p.exists():
        raise MicrographError(f"{p}: does not exist; check the folder and file name")
    suffix = p.suffix.lower()
    if p.is_dir() and suffix == ".zarr" and suffix in suffixes:  # an OME-Zarr store is a folder
        if not is_ome_zarr(p):
            raise MicrographError(f"{p}: is a folder named .zarr without Zarr metadata; not an "
                                  "OME-Zarr store")
        return p, "ome-zarr"
    if p.is_dir():
        raise MicrographError(f"{p}: is a folder, not an image file; pass a single {kind} file")
    if suffix not in suffixes:
        raise MicrographError(
            f"{p}: unsupported file type '{p.suffix or '(no suffix)'}' for a {kind}; "
            f"supported: {', '.join(suffixes)}"
        )
    try:
        size = p.stat().st_size
        with open(p, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise MicrographError(f"{p}: cannot be opened ({exc.strerror or exc})") from exc
    if size == 0:
        raise MicrographError(f"{p}: is empty (0 bytes); the file was not saved or copied fully")
    fmt = _SUFFIX_FORMAT[suffix]
    sniffed = next((f for magic, f in _MAGIC if head.startswith(magic)), None)
    if sniffed is not None and sniffed != fmt:
        if sniffed not in {_SUFFIX_FORMAT[s] for s in suffixes}:
            raise MicrographError(
                f"{p}: is a {sniffed.upper()} file despite its '{p.suffix}' suffix; "
                f"{sniffed.upper()} is not supported for a {kind}"
            )
        logger.warning("%s: content is %s although the suffix says %s", p, sniffed, fmt)
        fmt = sniffed
    return p, fmt


# --------------------------------------------------------------------------------------------
# Pixel size from metadata
# --------------------------------------------------------------------------------------------


def _rational(value: Any) -> float | None:
    """A TIFF RATIONAL tag value (``(num, den)`` or a number) as float, or None."""
    try:
        if isinstance(value, (tuple, list)):
            if len(value) != 2 or not value[1]:
                return None
            result = float(value[0]) / float(value[1])
        else:
            result = float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return result if math.isfinite(result) and result > 0 else None


def _is_default_dpi(dpi: float) -> bool:
    return any(abs(dpi - d) <= 0.005 * d for d in _DEFAULT_DPI)


def _ome_pixel_size(tif: tifffile.TiffFile, what: str) -> tuple[float, str] | None:
    xml = tif.ome_metadata
    if not xml:
        return None
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        logger.info("%s: OME-XML cannot be parsed (%s); ignoring it", what, exc)
        return None
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None

    def axis(name: str) -> float | None:
        raw = pixels.get(f"PhysicalSize{name}")
        if raw is None:
            return None
        unit = pixels.get(f"PhysicalSize{name}Unit", "µm")
        factor = _unit_to_nm(unit)
        try:
            value = float(raw)
        except ValueError:
            return None
        if factor is None:
            logger.info("%s: unknown OME PhysicalSize%sUnit %r; ignoring it", what, name, unit)
            return None
        return value * factor

    return _accept_candidate(what, axis("X"), axis("Y"), "metadata:ome", deliberate=True)


def _imagej_pixel_size(tif: tifffile.TiffFile, what: str) -> tuple[float, str] | None:
    meta = tif.imagej_metadata or {}
    unit = meta.get("unit")
    if not unit:
        return None
    factor = _unit_to_nm(unit)
    if factor is None:
        if _normalise_unit(unit) not in ("pixel", "pixels", "px", ""):
            logger.info("%s: unknown ImageJ unit %r; ignoring it", what, unit)
        return None
    tags = tif.pages.first.tags
    x_res = _rational(tags["XResolution"].value) if "XResolution" in tags else None
    y_res = _rational(tags["YResolution"].value) if "YResolution" in tags else None
    if x_res is None:
        return None
    x_nm = factor / x_res
    y_nm = factor / y_res if y_res is not None else None
    return _accept_candidate(what, x_nm, y_nm, "metadata:imagej", deliberate=True)


def _resolution_tag_pixel_size(tif: tifffile.TiffFile, what: str) -> tuple[float, str] | None:
    tags = tif.pages.first.tags
    if "XResolution" not in tags:
        return None
    unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2  # TIFF default
    x_res = _rational(tags["XResolution"].value)
    y_res = _rational(tags["YResolution"].value) if "YResolution" in tags else None
    if x_res is None:
        return None
    if unit == 3:  # CENTIMETER: pixels per cm
        dpi, nm_per_unit = x_res * 2.54, 1e7
    elif unit == 2:  # INCH
        dpi, nm_per_unit = x_res, 2.54e7
    else:  # NONE or unknown: no physical unit
        return None
    if _is_default_dpi(dpi):
        logger.debug("%s: resolution %.4g dpi is an editor default; ignoring it", what, dpi)
        return None
    x_nm = nm_per_unit / x_res
    y_nm = nm_per_unit / y_res if y_res is not None else None
    return _accept_candidate(what, x_nm, y_nm, "metadata:tiff-resolution", deliberate=False)


def _tiff_pixel_size(tif: tifffile.TiffFile, what: str) -> tuple[float, str] | None:
    """Pixel size from an open TIFF: OME, then ImageJ, then resolution tags."""
    if tif.is_ome:
        found = _ome_pixel_size(tif, what)
        if found is not None:
            return found
    if tif.is_imagej:
        found = _imagej_pixel_size(tif, what)
        if found is not None:
            return found
    found = instrument_tiff_pixel_size(tif, what)  # FEI/Thermo and Zeiss SEM tags
    if found is not None:
        return found
    return _resolution_tag_pixel_size(tif, what)


def _png_pixel_size(info: dict[str, Any], what: str) -> tuple[float, str] | None:
    """Pixel size from a PNG ``pHYs`` chunk (Pillow reports metre units as ``info["dpi"]``)."""
    dpi = info.get("dpi")
    if not isinstance(dpi, (tuple, list)) or len(dpi) != 2:
        return None
    x_dpi, y_dpi = _rational(dpi[0]), _rational(dpi[1])
    if x_dpi is None or _is_default_dpi(x_dpi):
        return None
    y_nm = 2.54e7 / y_dpi if y_dpi is not None else None
    return _accept_candidate(what, 2.54e7 / x_dpi, y_nm, "metadata:png", deliberate=False)


def metadata_pixel_size_nm(path: PathLike) -> tuple[float, str] | None:
    """Pixel size stored in an image file's metadata.

    Looks at OME-XML ``PhysicalSizeX``, ImageJ ``unit`` + resolution, FEI/Thermo
    (``[Scan] PixelWidth``) and Zeiss SEM (``AP_IMAGE_PIXEL_SIZE``) TIFF tags, TIFF resolution
    tags in centimetres (or inches, unless an editor default such as 72 dpi), PNG ``pHYs``, the
    MRC header's voxel size, the Digital Micrograph calibration and an OME-Zarr store's level-0
    ``scale`` with its axes' units. Values outside 0.01-100 nm/px are ignored.

    Parameters
    ----------
    path : str or os.PathLike
        TIFF, PNG, JPEG, MRC, DM3/DM4 file or OME-Zarr store.

    Returns
    -------
    tuple of (float, str) or None
        ``(nm_per_pixel, source)`` with ``source`` one of the ``"metadata:..."`` entries of
        :data:`PIXEL_SIZE_SOURCES`, or None if the file carries no usable calibration.

    Raises
    ------
    MicrographError
        If the file is missing, not a supported image, or cannot be parsed.
    """
    p, fmt = _check_path(path, MICROGRAPH_SUFFIXES, "micrograph")
    what = str(p)
    if fmt == "tiff":
        try:
            with tifffile.TiffFile(p) as tif:
                return _tiff_pixel_size(tif, what)
        except MicrographError:
            raise
        except _DECODE_ERRORS as exc:
            raise MicrographError(f"{what}: cannot be read as TIFF: {_exc_text(exc)}") from exc
    if fmt == "png":
        try:
            with Image.open(p) as im:
                info = dict(im.info)
        except _DECODE_ERRORS + (Image.DecompressionBombError,) as exc:
            raise MicrographError(f"{what}: cannot be read as PNG: {_exc_text(exc)}") from exc
        return _png_pixel_size(info, what)
    if fmt in ("mrc", "dm"):
        return em_pixel_size(p, fmt, what)
    if fmt == "ome-zarr":
        return ome_zarr_level0(p, what)[1]["pixel"]
    return None  # JPEG density fields cannot express nanometre pixels


# --------------------------------------------------------------------------------------------
# Decoding files
# --------------------------------------------------------------------------------------------


@dataclass
class _Decoded:
    data: np.ndarray
    info: dict[str, Any]
    pixel: tuple[float, str] | None = None
    channel_axis_first: bool = False
    gray_alpha: bool = False


@contextlib.contextmanager
def _decode_guard(what: str) -> Iterator[None]:
    """Turn a decoder's failure into one :class:`MicrographError` naming the file and the problem."""
    try:
        yield
    except MicrographError:
        raise
    except MemoryError as exc:
        raise MicrographError(
            f"{what}: not enough memory to decode it; use tiled/montage processing"
        ) from exc
    except _DECODE_ERRORS as exc:
        raise MicrographError(
            f"{what}: is truncated or corrupt ({type(exc).__name__}: {_exc_text(exc)})"
        ) from exc


def _read_tiff(p: Path, what: str, *, raw: bool) -> _Decoded:
    """Decode the single image of a TIFF; ``raw`` keeps stored values and skips pixel size."""
    try:
        tif = tifffile.TiffFile(p)
    except _DECODE_ERRORS as exc:
        with open(p, "rb") as fh:
            is_tiff = any(fh.read(4) == magic for magic, f in _MAGIC if f == "tiff")
        problem = "is truncated or corrupt — it" if is_tiff else "is not a TIFF image — it"
        raise MicrographError(
            f"{what}: {problem} cannot be read as TIFF: {_exc_text(exc)}"
        ) from exc
    with tif:
        with _decode_guard(what):
            if len(tif.pages) == 0:
                raise MicrographError(
                    f"{what}: is truncated or corrupt — no readable image directory (IFD) was "
                    "found; copy or export the file again"
                )
            page = tif.pages.first
            if not isinstance(page, tifffile.TiffPage):
                raise MicrographError(f"{what}: cannot be read as TIFF: first page is not an image")
            rows, cols = int(page.imagelength), int(page.imagewidth)
            if page.size == 0 or rows == 0 or cols == 0:
                raise MicrographError(f"{what}: is empty (image of {rows}x{cols} px)")

            # A stack is several full-size planes; thumbnails/previews of another size are not.
            n_images = 1
            if len(tif.pages) > 1:
                planes = [
                    pg
                    for pg in tif.pages
                    if isinstance(pg, tifffile.TiffPage)
                    and not pg.is_reduced
                    and (pg.imagelength, pg.imagewidth) == (rows, cols)
                ]
                n_images = max(1, len(planes))
                if len(tif.pages) > n_images:
                    logger.info(
                        "%s: ignoring %d extra page(s) of another size (thumbnails/previews)",
                        what,
                        len(tif.pages) - n_images,
                    )
            with contextlib.suppress(*_DECODE_ERRORS):
                series_size = math.prod(tif.series[0].shape)
                n_images = max(n_images, series_size // max(1, math.prod(page.shape)))
            if n_images > 1:
                raise MicrographError(
                    f"{what}: contains a stack of {n_images} images of {rows}x{cols} px; the tool "
                    "segments one 2-D micrograph at a time — save one plane as its own file"
                )
            if page.dtype is None:
                raise MicrographError(
                    f"{what}: has an unsupported pixel format ({page.bitspersample} bits, sample "
                    f"format {page.sampleformat}); save it as 8- or 16-bit gray TIFF"
                )
            _check_decode_size(what, rows, cols, int(page.nbytes))

            filesize = int(tif.filehandle.size)
            ends = [
                int(off) + int(cnt)
                for off, cnt in zip(page.dataoffsets, page.databytecounts, strict=False)
                if cnt
            ]
            if not ends or max(ends) > filesize:
                end = max(ends) if ends else 0
                raise MicrographError(
                    f"{what}: is truncated or corrupt — its image data should end at byte {end} "
                    f"but the file has {filesize} bytes; copy or export the file again"
                )
            data = page.asarray()
            info: dict[str, Any] = {
                "format": "tiff",
                "bigtiff": bool(tif.is_bigtiff),
                "compression": page.compression.name.lower()
                if hasattr(page.compression, "name")
                else str(page.compression),
            }
            photometric = int(page.photometric)
            if raw:
                pass  # label maps: keep stored values (palette indices, min-is-white codes)
            elif photometric == int(tifffile.PHOTOMETRIC.PALETTE) and page.colormap is not None:
                cmap = np.asarray(page.colormap)  # (3, 2**bits) uint16
                data = np.moveaxis(cmap[:, data], 0, -1)
                if np.all(cmap % 257 == 0):  # 8-bit colours scaled to 16 bit
                    data = (data // 257).astype(np.uint8)
                info["converted_from"] = "palette"
            elif photometric == int(tifffile.PHOTOMETRIC.MINISWHITE) and data.dtype.kind in "ub":
                data = np.invert(data)
                info["inverted"] = True  # 0 means white in this file; make 0 black
                logger.info("%s: photometric min-is-white; inverted to min-is-black", what)
            channel_axis_first = photometric == int(tifffile.PHOTOMETRIC.RGB) and int(
                page.planarconfig
            ) == int(tifffile.PLANARCONFIG.SEPARATE)
            gray_alpha = (
                photometric == int(tifffile.PHOTOMETRIC.MINISBLACK)
                and int(page.samplesperpixel) == 2
            )
            pixel = None if raw else _tiff_pixel_size(tif, what)
    return _Decoded(data, info, pixel, channel_axis_first, gray_alpha)


_PIL_BYTES_PER_BAND = {"1": 1, "L": 1, "P": 1, "I": 4, "F": 4}


def _pillow_array(im: Image.Image, *, for_labels: bool) -> tuple[np.ndarray, dict[str, Any]]:
    """Convert a loaded Pillow image to a numpy array; report colour conversions in the dict."""
    info: dict[str, Any] = {}
    mode = im.mode
    if mode == "P" and for_labels:
        return np.asarray(im), info  # palette indices are the class codes
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")
        info["converted_from"] = "palette"
        mode = im.mode
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
        info["converted_from"] = mode.lower()
        mode = "RGB"
    arr = np.asarray(im)
    if arr.dtype.byteorder not in ("=", "|"):
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if mode == "I" and arr.size and arr.min() >= 0 and arr.max() <= 65535:
        arr = arr.astype(np.uint16)  # 16-bit PNG decoded as 32-bit by some Pillow versions
    return arr, info


def _read_pillow(p: Path, what: str, fmt: str, *, for_labels: bool) -> _Decoded:
    name = fmt.upper()
    if fmt == "png":
        # Pillow may decode a cut-off PNG without complaint (ImageFile.LOAD_TRUNCATED_IMAGES);
        # a complete PNG ends with its IEND chunk.
        with open(p, "rb") as fh:
            head = fh.read(8)
            fh.seek(max(0, p.stat().st_size - 1024))
            tail = fh.read()
        if head == _PNG_MAGIC and _PNG_IEND not in tail:
            raise MicrographError(
                f"{what}: is truncated or corrupt — the PNG end marker is missing; "
                "copy or export the file again"
            )
    try:
        im = Image.open(p)
    except Image.DecompressionBombError as exc:
        raise MicrographError(
            f"{what}: is larger than Pillow's decompression-bomb limit ({_exc_text(exc)}); "
            "save it as TIFF or use tiled/montage processing"
        ) from exc
    except _DECODE_ERRORS as exc:
        raise MicrographError(f"{what}: cannot be read as {name}: {_exc_text(exc)}") from exc
    with im:
        with _decode_guard(what):
            cols, rows = im.size
            bands = len(im.getbands())
            per_band = _PIL_BYTES_PER_BAND.get(im.mode, 2 if im.mode.startswith("I;16") else 1)
            _check_decode_size(what, rows, cols, rows * cols * bands * per_band)
            n_frames = int(getattr(im, "n_frames", 1) or 1)
            if fmt == "png" and n_frames > 1:
                raise MicrographError(
                    f"{what}: contains a stack of {n_frames} images of {rows}x{cols} px "
                    "(animated PNG); the tool segments one 2-D micrograph at a time — save one "
                    "frame as its own file"
                )
            file_info = dict(im.info)
            mode = im.mode
            im.load()
            data, conv = _pillow_array(im, for_labels=for_labels)
    info: dict[str, Any] = {"format": fmt, "mode": mode, **conv}
    pixel = _png_pixel_size(file_info, what) if fmt == "png" and not for_labels else None
    return _Decoded(data, info, pixel, gray_alpha=mode == "LA")


def _decode(p: Path, fmt: str, what: str, *, for_labels: bool) -> _Decoded:
    if fmt == "tiff":
        return _read_tiff(p, what, raw=for_labels)
    if fmt == "ome-zarr":
        data, info, pixel = read_ome_zarr(p, what)
        return _Decoded(data, info, pixel)
    if fmt in ("mrc", "dm"):
        data, info, pixel = read_em_file(p, fmt, what)
        return _Decoded(data, info, pixel)
    return _read_pillow(p, what, fmt, for_labels=for_labels)


# --------------------------------------------------------------------------------------------
# Normalising image content
# --------------------------------------------------------------------------------------------


def _stack_error(what: str, shape: tuple[int, ...]) -> MicrographError:
    if shape[-1] in (3, 4) and len(shape) >= 4:
        n, plane = math.prod(shape[:-3]), shape[-3:-1]
    else:
        n, plane = math.prod(shape[:-2]), shape[-2:]
    return MicrographError(
        f"{what}: contains a stack of {n} images of {_fmt_shape(plane)} px (array shape "
        f"{tuple(int(s) for s in shape)}); the tool segments one 2-D micrograph at a time — "
        "save one plane as its own file"
    )


def to_gray(a: np.ndarray) -> tuple[np.ndarray, bool]:
    """Luminance of an (..., 3|4) array in its own dtype; True if the channels were identical."""
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    if np.array_equal(r, g) and np.array_equal(r, b):
        return np.ascontiguousarray(r), True
    small = a.dtype.itemsize <= 2 or a.dtype == np.float32
    work = np.float32 if small else np.float64
    gray = r.astype(work)
    gray *= 0.2125
    gray += work(0.7154) * g.astype(work)
    gray += work(0.0721) * b.astype(work)
    if a.dtype.kind in "ui":
        info = np.iinfo(a.dtype)
        np.rint(gray, out=gray)
        np.clip(gray, info.min, info.max, out=gray)
        return gray.astype(a.dtype), False
    return gray, False


def _normalise_image(
    image: Any,
    what: str,
    *,
    channel_axis_first: bool = False,
    gray_alpha: bool = False,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Validate and convert image content to one 2-D gray plane; see :func:`check_image_array`."""
    a = np.asarray(image)
    info: dict[str, Any] = {"dtype": str(a.dtype), "original_shape": tuple(int(s) for s in a.shape)}
    if a.dtype.kind == "c":
        raise MicrographError(
            f"{what}: has complex pixel values ({a.dtype}); pass the magnitude (numpy.abs) or "
            "the real part instead"
        )
    if a.dtype.kind not in "biuf":
        raise MicrographError(
            f"{what}: has unsupported pixel type {a.dtype}; expected an integer, float or "
            "boolean image"
        )
    if a.size == 0:
        raise MicrographError(f"{what}: is empty (shape {tuple(a.shape)})")

    original_shape = a.shape
    a = np.squeeze(a)
    if channel_axis_first and a.ndim == 3 and a.shape[0] in (3, 4):
        a = np.moveaxis(a, 0, -1)
    if a.ndim < 2:
        dims = original_shape if len(original_shape) == 2 else (a.size, 1)
        raise MicrographError(
            f"{what}: is {_fmt_shape(dims)} px; the models need at least "
            f"{MIN_SIDE_PX}x{MIN_SIDE_PX} px"
        )
    colour: str | None = None
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        colour = "rgb" if a.shape[-1] == 3 else "rgba"
    elif a.ndim == 3 and a.shape[-1] == 2 and gray_alpha:
        colour = "gray+alpha"
    elif a.ndim >= 3:
        raise _stack_error(what, a.shape)

    rows, cols = int(a.shape[0]), int(a.shape[1])
    if rows < MIN_SIDE_PX or cols < MIN_SIDE_PX:
        raise MicrographError(
            f"{what}: is {rows}x{cols} px; the models need at least {MIN_SIDE_PX}x{MIN_SIDE_PX} px"
        )
    if rows > MAX_SIDE_PX or cols > MAX_SIDE_PX:
        raise MicrographError(
            f"{what}: is {rows}x{cols} px; sides above {MAX_SIDE_PX} px are not supported — "
            "split it into tiles (tiled/montage processing) and segment those"
        )

    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * np.uint8(255)
    if colour == "gray+alpha":
        a = np.ascontiguousarray(a[..., 0])
        info.setdefault("converted_from", colour)
        logger.info("%s: dropped the alpha channel of a gray+alpha image", what)
    elif colour is not None:
        a, identical = to_gray(a)
        info["converted_from"] = info.get("converted_from") or colour
        if identical:
            logger.info("%s: %s image with identical channels taken as gray", what, colour)
        else:
            extra = " and dropped the alpha channel" if colour == "rgba" else ""
            _warn(
                f"{what}: converted RGB to gray (luminance 0.2125 R + 0.7154 G + 0.0721 B)"
                f"{extra}; the models expect gray micrographs, so check the result"
            )

    if a.dtype.kind == "f":
        if a.dtype != np.float32:
            with np.errstate(over="ignore"):
                a = a.astype(np.float32)
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        if bad:
            raise MicrographError(
                f"{what}: contains {bad} NaN/infinite pixels (values beyond the float32 range "
                "count as infinite); replace them (e.g. numpy.nan_to_num) before segmenting"
            )
    return a, info


def check_image_array(image: np.ndarray, what: str = "<array>") -> np.ndarray:
    """Validate an image and convert it to one 2-D gray plane the models can use.

    Singleton dimensions are squeezed, RGB/RGBA is converted to gray by luminance (keeping the
    dtype; a :class:`MicrographWarning` is issued unless all channels are identical), booleans
    become uint8 0/255, floats become float32. Integer dtypes are kept as they are.

    Parameters
    ----------
    image : numpy.ndarray
        The image (or anything :func:`numpy.asarray` accepts).
    what : str
        Name used at the start of error messages (a file path, or ``"<array>"``).

    Returns
    -------
    numpy.ndarray
        2-D array ``(rows, cols)``; may be a view of ``image`` when nothing had to change.

    Raises
    ------
    MicrographError
        For empty, too small (< 32 px) or too large (> 2**17 px) images, stacks, complex or
        non-numeric dtypes, and NaN/infinite pixels.
    """
    data, _ = _normalise_image(image, what)
    return data


# --------------------------------------------------------------------------------------------
# Public readers
# --------------------------------------------------------------------------------------------


def _resolve_pixel_size(
    what: str,
    found: tuple[float, str] | None,
    user: float | None,
    default: float,
    force: bool,
) -> tuple[float, str, dict[str, Any]]:
    meta: dict[str, Any] = {}
    if found is not None:
        meta["metadata_pixel_size_nm"] = found[0]
        meta["metadata_pixel_size_source"] = found[1]
    if force and user is None:
        logger.warning("%s: force_pixel_size=True has no effect without pixel_size_nm", what)
    if user is not None and force:
        if found is not None:
            logger.info(
                "%s: using pixel_size_nm=%g instead of the file's %g nm/px (forced)",
                what,
                user,
                found[0],
            )
        return user, "user", meta
    if found is not None:
        value, source = found
        if user is not None and abs(user - value) > _PIXEL_SIZE_RTOL * max(user, value):
            _warn(
                f"{what}: the file's metadata ({source}) gives {value:.4g} nm/px but "
                f"pixel_size_nm={user:.4g} was given; using the file's {value:.4g} nm/px — "
                f"pass force_pixel_size=True (CLI: --force-pixel-size) to use {user:.4g} nm/px instead"
            )
        return value, source, meta
    if user is not None:
        return user, "user", meta
    logger.info("%s: no pixel size in the file or given; using the model's %g nm/px", what, default)
    return default, "model", meta


def read_micrograph(
    path: PathLike,
    pixel_size_nm: float | None = None,
    *,
    default_pixel_size_nm: float = 0.8,
    force_pixel_size: bool = False,
) -> Micrograph:
    """Read one 2-D micrograph and work out its pixel size.

    Parameters
    ----------
    path : str or os.PathLike
        TIFF (incl. BigTIFF, ImageJ, OME; LZW/deflate/zstd/... compressed), PNG or JPEG file;
        MRC (``.mrc``, ``.st``) or Digital Micrograph (``.dm3``, ``.dm4``) with the ``em`` extra.
    pixel_size_nm : float, optional
        Pixel size the user knows, in nm per pixel. Used when the file has no calibration, or
        always with ``force_pixel_size=True``.
    default_pixel_size_nm : float
        The model's native pixel size, used when neither the file nor the user gives one.
    force_pixel_size : bool
        Prefer ``pixel_size_nm`` over the file's metadata.

    Returns
    -------
    Micrograph
        2-D gray image (original integer dtype, or float32) with pixel size and its source.

    Raises
    ------
    MicrographError
        If the file is missing, empty, of an unsupported type, truncated or corrupt, a stack,
        too small (< 32 px a side), too large for memory, or has NaN/infinite pixels.

    Warns
    -----
    MicrographWarning
        When colour is converted to gray, pixels are not square, or the file's pixel size
        differs from ``pixel_size_nm`` (the file's value is used unless forced).
    """
    p, fmt = _check_path(path, MICROGRAPH_SUFFIXES, "micrograph")
    what = str(p)
    user = (
        None
        if pixel_size_nm is None
        else _check_pixel_size_value(pixel_size_nm, what, "pixel_size_nm")
    )
    default = _check_pixel_size_value(default_pixel_size_nm, what, "default_pixel_size_nm")
    decoded = _decode(p, fmt, what, for_labels=False)
    data, content = _normalise_image(
        decoded.data,
        what,
        channel_axis_first=decoded.channel_axis_first,
        gray_alpha=decoded.gray_alpha,
    )
    if "converted_from" in decoded.info and "converted_from" in content:
        content["converted_from"] = decoded.info["converted_from"]
    value, source, pixel_meta = _resolve_pixel_size(
        what, decoded.pixel, user, default, force_pixel_size
    )
    metadata = {**decoded.info, **content, **pixel_meta}
    logger.debug("%s: read %s %s, %g nm/px (%s)", what, data.shape, data.dtype, value, source)
    return Micrograph(data, value, source, path=p, metadata=metadata)


def as_micrograph(
    image: np.ndarray | Micrograph | PathLike,
    pixel_size_nm: float | None = None,
    *,
    default_pixel_size_nm: float = 0.8,
    name: str = "image",
) -> Micrograph:
    """Wrap an array (or pass through a Micrograph) as a validated :class:`Micrograph`.

    Parameters
    ----------
    image : numpy.ndarray, Micrograph, str or os.PathLike
        Image data (checked like :func:`check_image_array`), an existing micrograph, or a
        file path (read with :func:`read_micrograph`).
    pixel_size_nm : float, optional
        Pixel size in nm per pixel. For an array: source ``"user"``; for a Micrograph it
        replaces the stored value (source ``"user"``, the old value kept in ``metadata``).
    default_pixel_size_nm : float
        Used (source ``"model"``) when ``pixel_size_nm`` is not given for an array.
    name : str
        Name of an array micrograph (:attr:`Micrograph.name`).

    Returns
    -------
    Micrograph

    Raises
    ------
    MicrographError
        If the image fails the checks of :func:`check_image_array` or a value is invalid.
    """
    if isinstance(image, (str, os.PathLike)):
        return read_micrograph(image, pixel_size_nm, default_pixel_size_nm=default_pixel_size_nm)
    if isinstance(image, Micrograph):
        if pixel_size_nm is None:
            return image
        what = str(image.path) if image.path is not None else "<array>"
        value = _check_pixel_size_value(pixel_size_nm, what, "pixel_size_nm")
        metadata = {
            **image.metadata,
            "previous_pixel_size_nm": image.pixel_size_nm,
            "previous_pixel_size_source": image.pixel_size_source,
        }
        return replace(image, pixel_size_nm=value, pixel_size_source="user", metadata=metadata)
    what = "<array>"
    data, content = _normalise_image(image, what)
    if pixel_size_nm is not None:
        value, source = _check_pixel_size_value(pixel_size_nm, what, "pixel_size_nm"), "user"
    else:
        value = _check_pixel_size_value(default_pixel_size_nm, what, "default_pixel_size_nm")
        source = "model"
    metadata = {"format": "array", "name": str(name), **content}
    return Micrograph(data, value, source, path=None, metadata=metadata)


def read_labels(path: PathLike, schema: Any = None) -> np.ndarray:
    """Read a label map (class codes) from a TIFF or PNG file, or a 3D Slicer ``.seg.nrrd``.

    Parameters
    ----------
    path : str or os.PathLike
        Single-channel ``.tif``/``.tiff``/``.png`` file. Palette PNGs give their indices. A
        ``.seg.nrrd`` segmentation is mapped onto ``schema`` by its segment names
        (:func:`~.slicer.read_seg_nrrd`; pixels in no known segment are ``UNLABELLED``).
    schema : ClassSchema, optional
        For ``.seg.nrrd`` only: the classes to map onto (default: guessed from the names).

    Returns
    -------
    numpy.ndarray
        2-D array of class codes, uint8 or uint16 (other integer or integral-float maps with
        values 0..65535 are converted: uint8 if all codes < 256, else uint16).

    Raises
    ------
    MicrographError
        If the file is missing, unreadable, truncated, colour (labels must be single-channel),
        a stack, or holds negative, non-integral, non-finite or >= 65536 values.
    """
    from .slicer import SegmentationFileError, is_seg_nrrd, read_seg_nrrd

    if is_seg_nrrd(path):
        try:
            return read_seg_nrrd(path, schema)[0]
        except SegmentationFileError as exc:
            raise MicrographError(str(exc)) from None
    p, fmt = _check_path(path, LABEL_SUFFIXES, "label map")
    what = str(p)
    decoded = _decode(p, fmt, what, for_labels=True)
    a = np.squeeze(decoded.data)
    if a.size == 0:
        raise MicrographError(f"{what}: is empty (shape {tuple(decoded.data.shape)})")
    if a.ndim == 3 and (decoded.channel_axis_first or a.shape[-1] in (2, 3, 4)):
        channels = a.shape[0] if decoded.channel_axis_first else a.shape[-1]
        raise MicrographError(
            f"{what}: has {channels} colour channels; labels must be single-channel (one class "
            "code per pixel) — save the label map as gray or indexed, not RGB"
        )
    if a.ndim != 2:
        if a.ndim > 2:
            raise _stack_error(what, a.shape)
        raise MicrographError(f"{what}: is not a 2-D label map (shape {tuple(a.shape)})")
    return _label_values(a, what, reading=True)


def _label_values(a: np.ndarray, what: str, *, reading: bool) -> np.ndarray:
    """Check label values (integral, 0..65535) and return them as uint8/uint16."""
    kind = a.dtype.kind
    if kind == "b":
        return a.astype(np.uint8)
    if kind == "f":
        if not reading:
            raise MicrographError(
                f"{what}: labels must be integer class codes, got {a.dtype}; round and cast them "
                "(e.g. labels.astype(numpy.uint16)) first"
            )
        if not np.all(np.isfinite(a)) or not np.array_equal(a, np.rint(a)):
            raise MicrographError(
                f"{what}: labels must be integer class codes, but the {a.dtype} values are not "
                "all whole numbers"
            )
    elif kind not in "ui":
        raise MicrographError(f"{what}: labels must be integer class codes, got {a.dtype}")
    if kind == "u" and a.dtype.itemsize <= 2:
        return a.astype(a.dtype.newbyteorder("="), copy=False)
    lo, hi = a.min(), a.max()
    if lo < 0:
        raise MicrographError(
            f"{what}: labels contain negative values (minimum {lo}); class codes must be >= 0"
        )
    if hi >= 65536:
        raise MicrographError(
            f"{what}: labels contain values up to {hi}; class codes must be below 65536"
        )
    return a.astype(np.uint8 if hi < 256 else np.uint16)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_output(path: PathLike) -> Iterator[Path]:
    """Write a file atomically: yield a temporary path next to ``path``, then move it in place.

    The temporary file lives in the same folder (so :func:`os.replace` is atomic) and keeps the
    suffix of ``path`` (so writers choosing a format by suffix work). Missing parent folders are
    created.

    Parameters
    ----------
    path : str or os.PathLike
        Final file path.

    Yields
    ------
    pathlib.Path
        Temporary path to write to.

    Raises
    ------
    FileNotFoundError
        If the body finished without creating the temporary file.
    IsADirectoryError
        If ``path`` is an existing folder.

    Notes
    -----
    If the body raises, the temporary file is removed, the target is left untouched, and the
    exception propagates.
    """
    target = Path(path).expanduser()
    if target.is_dir():
        raise IsADirectoryError(f"{target}: is a folder; give a file name to write to")
    target.parent.mkdir(parents=True, exist_ok=True)
    stem = target.stem[:100]
    tmp = target.with_name(f".{stem}.{secrets.token_hex(6)}.tmp{target.suffix}")
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{target}: nothing was written (temporary file {tmp.name})")
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    logger.debug("%s: written", target)


def _output_format(path: PathLike, suffixes: tuple[str, ...], kind: str) -> tuple[Path, str]:
    p = Path(path).expanduser()
    suffix = p.suffix.lower()
    if suffix not in suffixes:
        hint = " (JPEG is lossy)" if suffix in (".jpg", ".jpeg") else ""
        raise MicrographError(
            f"{p}: cannot write a {kind} as '{p.suffix or '(no suffix)'}'{hint}; "
            f"use one of {', '.join(suffixes)}"
        )
    return p, _SUFFIX_FORMAT[suffix]


def _write_tiff(tmp: Path, data: np.ndarray, pixel_size_nm: float | None) -> None:
    kwargs: dict[str, Any] = {}
    if pixel_size_nm is not None:
        per_cm = 1e7 / pixel_size_nm
        kwargs.update(resolution=(per_cm, per_cm), resolutionunit="CENTIMETER")
    photometric = "rgb" if data.ndim == 3 else "minisblack"
    # Deflate level 1 on parallel strips: ~3x faster than the default level for ~30% larger label
    # files, which matters when writing is on the end-to-end path of every micrograph.
    tifffile.imwrite(
        tmp, data, photometric=photometric, compression="zlib", compressionargs={"level": 1},
        maxworkers=min(4, os.cpu_count() or 1), metadata=None, **kwargs
    )


def _write_png(tmp: Path, data: np.ndarray, pixel_size_nm: float | None) -> None:
    kwargs: dict[str, Any] = {}
    if pixel_size_nm is not None:
        per_metre = 1e9 / pixel_size_nm
        if per_metre < 2**32 - 1:  # pHYs stores a 32-bit count of pixels per metre
            dpi = per_metre * 0.0254
            kwargs["dpi"] = (dpi, dpi)
        else:
            logger.info("PNG cannot store %g nm/px; writing without pixel size", pixel_size_nm)
    iio.imwrite(tmp, data, extension=".png", plugin="pillow", **kwargs)


def write_labels(path: PathLike, labels: np.ndarray, *, pixel_size_nm: float | None = None) -> Path:
    """Write a label map (class codes) as TIFF or 16-bit PNG.

    Parameters
    ----------
    path : str or os.PathLike
        ``.png`` (single-channel 16-bit gray PNG) or ``.tif``/``.tiff`` (deflate-compressed;
        uint8/uint16 kept, other integer types stored as uint8 if all codes < 256 else uint16).
    labels : numpy.ndarray
        2-D integer (or boolean) array with values in 0..65535.
    pixel_size_nm : float, optional
        Stored as TIFF resolution in centimetre units (or PNG ``pHYs``), so that
        :func:`read_micrograph` recovers it.

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    MicrographError
        If the suffix is not .tif/.tiff/.png or the labels are not 2-D integers in range.
    """
    p, fmt = _output_format(path, LABEL_SUFFIXES, "label map")
    what = str(p)
    a = np.asarray(labels)
    if a.size == 0:
        raise MicrographError(
            f"{what}: labels are empty (shape {tuple(a.shape)}); nothing to write"
        )
    if a.ndim != 2:
        raise MicrographError(
            f"{what}: labels must be a 2-D array (rows, cols), got shape {tuple(a.shape)}"
        )
    a = _label_values(a, what, reading=False)
    if pixel_size_nm is not None:
        pixel_size_nm = _check_pixel_size_value(pixel_size_nm, what, "pixel_size_nm")
    with atomic_output(p) as tmp:
        if fmt == "png":
            _write_png(tmp, a.astype(np.uint16), pixel_size_nm)
        else:
            _write_tiff(tmp, a, pixel_size_nm)
    return p


def write_image(path: PathLike, image: np.ndarray, *, pixel_size_nm: float | None = None) -> Path:
    """Write an image as TIFF or PNG.

    Parameters
    ----------
    path : str or os.PathLike
        ``.png``: uint8 -> 8-bit, uint16 -> 16-bit PNG (gray; uint8 also RGB/RGBA).
        ``.tif``/``.tiff``: any integer or float dtype (gray), or uint8/uint16 RGB/RGBA;
        deflate-compressed.
    image : numpy.ndarray
        2-D gray image or ``(rows, cols, 3|4)`` colour image. Booleans are written as 0/255.
    pixel_size_nm : float, optional
        Stored as TIFF resolution in centimetre units (or PNG ``pHYs``).

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    MicrographError
        For unsupported suffixes (JPEG is refused: it is lossy), shapes or dtypes.
    """
    p, fmt = _output_format(path, LABEL_SUFFIXES, "image")
    what = str(p)
    a = np.asarray(image)
    if a.size == 0:
        raise MicrographError(f"{what}: image is empty (shape {tuple(a.shape)}); nothing to write")
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * np.uint8(255)
    colour = a.ndim == 3 and a.shape[-1] in (3, 4)
    if a.ndim != 2 and not colour:
        raise MicrographError(
            f"{what}: image must be 2-D (rows, cols) or (rows, cols, 3|4), got shape "
            f"{tuple(a.shape)}"
        )
    if a.dtype.kind not in "uif":
        raise MicrographError(f"{what}: cannot write pixel type {a.dtype}")
    if fmt == "png":
        if a.dtype not in (np.uint8, np.uint16) or (colour and a.dtype != np.uint8):
            raise MicrographError(
                f"{what}: PNG can hold uint8 (gray or colour) or uint16 (gray) images, got "
                f"{a.dtype}{' colour' if colour else ''}; convert the image or write a .tif"
            )
    elif colour and a.dtype not in (np.uint8, np.uint16):
        raise MicrographError(
            f"{what}: colour TIFFs must be uint8 or uint16, got {a.dtype}; convert the image"
        )
    if pixel_size_nm is not None:
        pixel_size_nm = _check_pixel_size_value(pixel_size_nm, what, "pixel_size_nm")
    with atomic_output(p) as tmp:
        if fmt == "png":
            _write_png(tmp, a, pixel_size_nm)
        else:
            _write_tiff(tmp, a, pixel_size_nm)
    return p


def micrograph_stem(path: PathLike) -> str:
    """The name outputs take from a micrograph file: its stem (``cell`` of ``cell.ome.zarr`` too)."""
    p = Path(path)
    if p.name.lower().endswith(".ome.zarr") and len(p.name) > len(".ome.zarr"):
        return p.name[:-len(".ome.zarr")]
    return p.stem or p.name


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file's bytes, read in 1 MiB chunks; of a folder (an OME-Zarr
    store), of every file under it with its relative path, in sorted order."""
    digest = hashlib.sha256()
    root = Path(path)
    files = sorted(q for q in root.rglob("*") if q.is_file()) if root.is_dir() else [root]
    for f in files:
        if f is not root:
            digest.update(f.relative_to(root).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()
