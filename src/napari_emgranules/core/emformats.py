"""Electron-microscopy file formats: MRC, Gatan Digital Micrograph, and instrument TIFF metadata.

:func:`napari_emgranules.core.io.read_micrograph` calls these readers for

* **MRC** (``.mrc``, ``.st``; MRC2014 and IMOD files) through ``mrcfile``: the pixel size comes
  from the header's cell size / grid (``voxel_size``, Ångström). A value of 0 or exactly 1 Å is
  taken as "not calibrated" (it is what writers put there when they know nothing). A file with
  more than one section (a tilt series, a stack, a volume) is refused, as TIFF stacks are.
  Rows are returned as stored (no vertical flip).
* **Digital Micrograph** (``.dm3``, ``.dm4``) through ``rosettasciio``: the pixel size comes from
  the image's spatial calibration (scale and unit of its two axes). The thumbnail is skipped;
  a file with several images or a 3-D image is refused.
* **FEI/Thermo Fisher and Zeiss SEM TIFFs** (read by ``tifffile``): ``[Scan] PixelWidth`` (or
  ``[EScan]``, metres) from the FEI/Helios tag, ``AP_IMAGE_PIXEL_SIZE`` / ``AP_PIXEL_SIZE`` (with
  unit) from the Zeiss SEM tag.

``mrcfile`` and ``rosettasciio`` are optional (``pip install "napari-emgranules[em]"``); they are
imported only when such a file is read.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ._iobase import (
    MicrographError,
    _accept_candidate,
    _check_decode_size,
    _exc_text,
    _fmt_shape,
    _unit_to_nm,
)

logger = logging.getLogger(__name__)

__all__ = ["EM_FORMATS", "EM_INSTALL_HINT", "read_em_file", "em_pixel_size", "instrument_tiff_pixel_size"]

#: File suffix -> format name for the formats read here.
EM_FORMATS: dict[str, str] = {".mrc": "mrc", ".st": "mrc", ".dm3": "dm", ".dm4": "dm"}

EM_INSTALL_HINT = 'pip install "napari-emgranules[em]"'

# IMOD's header stamp: with it, bit 0 of imodFlags says whether mode-0 bytes are signed.
_IMOD_STAMP = 1146047817
# MRC voxel sizes (Å) that writers store when they know no calibration.
_UNCALIBRATED_ANGSTROM = (0.0, 1.0)


def _missing(what: str, package: str, kind: str) -> MicrographError:
    return MicrographError(
        f"{what}: reading {kind} files needs the '{package}' package, which is not installed; "
        f"install it with: {EM_INSTALL_HINT}"
    )


def _stack(what: str, n: int, plane: tuple[int, ...], unit: str) -> MicrographError:
    return MicrographError(
        f"{what}: contains a stack of {n} {unit} of {_fmt_shape(plane)} px; the tool segments one "
        "2-D micrograph at a time — save one section as its own file"
    )


def _file_size(p: Path) -> int:
    return int(os.stat(p).st_size)


# --------------------------------------------------------------------------------------------
# MRC
# --------------------------------------------------------------------------------------------


def _mrcfile(what: str):
    try:
        import mrcfile
    except ImportError:
        raise _missing(what, "mrcfile", "MRC") from None
    return mrcfile


def _mrc_calibration(header: Any, what: str) -> tuple[float, str] | None:
    """Pixel size (nm) from an MRC header's cell dimensions and grid sampling."""
    try:
        mx, my = int(header.mx), int(header.my)
        cx, cy = float(header.cella.x), float(header.cella.y)
    except (AttributeError, TypeError, ValueError):
        return None
    if mx <= 0 or my <= 0 or not (math.isfinite(cx) and math.isfinite(cy)):
        return None
    x_a, y_a = cx / mx, cy / my
    if any(abs(x_a - u) < 1e-6 for u in _UNCALIBRATED_ANGSTROM):
        logger.info("%s: MRC voxel size %.4g Å looks unset; ignoring it", what, x_a)
        return None
    return _accept_candidate(what, x_a / 10.0, y_a / 10.0, "metadata:mrc", deliberate=True)


def _imod_unsigned_bytes(header: Any) -> bool:
    """True when IMOD stamped the file and did not flag its mode-0 bytes as signed.

    IMOD keeps ``imodStamp`` and ``imodFlags`` at bytes 152 and 156 of the header, i.e. at
    offsets 40 and 44 of MRC2014's ``extra2`` field.
    """
    try:
        raw = np.asarray(header.extra2).tobytes()
        order = np.asarray(header.nx).dtype.byteorder
    except (AttributeError, TypeError, ValueError):
        return False
    if len(raw) < 48:
        return False
    stamp, flags = np.frombuffer(raw[40:48], dtype=np.dtype("i4").newbyteorder(order))
    return int(stamp) == _IMOD_STAMP and not int(flags) & 1


def _open_mrc_header(p: Path, what: str):
    mrcfile = _mrcfile(what)
    try:
        return mrcfile.open(p, mode="r", header_only=True, permissive=False)
    except (ValueError, OSError, EOFError) as exc:
        raise MicrographError(
            f"{what}: is not a readable MRC file ({_exc_text(exc)}); check that it is an MRC/IMOD "
            "image and was copied completely"
        ) from exc


def _read_mrc(p: Path, what: str) -> tuple[np.ndarray, dict[str, Any], tuple[float, str] | None]:
    mrcfile = _mrcfile(what)
    with _open_mrc_header(p, what) as mrc:
        h = mrc.header
        nx, ny, nz, mode = int(h.nx), int(h.ny), int(h.nz), int(h.mode)
        imod_unsigned = _imod_unsigned_bytes(h)
        pixel = _mrc_calibration(h, what)
    if nx <= 0 or ny <= 0 or nz <= 0:
        raise MicrographError(f"{what}: is empty (MRC grid of {nx}x{ny}x{nz} px)")
    if nz > 1:
        raise _stack(what, nz, (ny, nx), "sections")
    _check_decode_size(what, ny, nx, _file_size(p))
    try:
        with mrcfile.open(p, mode="r", permissive=False) as mrc:
            data = np.array(mrc.data)  # copy: the file is closed afterwards
    except MemoryError as exc:
        raise MicrographError(f"{what}: not enough memory to decode it") from exc
    except (ValueError, OSError, EOFError) as exc:
        raise MicrographError(
            f"{what}: is truncated or corrupt ({_exc_text(exc)}); copy or export the file again"
        ) from exc
    if data.dtype == np.int8 and imod_unsigned:
        data = data.view(np.uint8)  # IMOD writes mode 0 as unsigned bytes unless flagged signed
    if data.dtype.byteorder not in ("=", "|"):
        data = data.astype(data.dtype.newbyteorder("="))
    info = {"format": "mrc", "mrc_mode": mode}
    return data, info, pixel


# --------------------------------------------------------------------------------------------
# Digital Micrograph
# --------------------------------------------------------------------------------------------


def _dm_version(p: Path, what: str) -> int:
    with open(p, "rb") as fh:
        head = fh.read(4)
    version = int.from_bytes(head, "big") if len(head) == 4 else -1
    if version not in (3, 4):
        raise MicrographError(
            f"{what}: is not a Gatan Digital Micrograph file (DM3/DM4 files start with version 3 "
            f"or 4, this one with {head[:4]!r}); check the file"
        )
    return version


def _dm_images(p: Path, what: str) -> tuple[list[dict[str, Any]], int]:
    version = _dm_version(p, what)
    try:
        from rsciio.digitalmicrograph import file_reader
    except ImportError:
        raise _missing(what, "rosettasciio", "Digital Micrograph") from None
    _check_decode_size(what, 0, 0, _file_size(p))
    try:
        images = file_reader(str(p), lazy=False)
    except MemoryError as exc:
        raise MicrographError(f"{what}: not enough memory to decode it") from exc
    except Exception as exc:  # noqa: BLE001 - rsciio raises struct/IO/own errors for broken files
        raise MicrographError(
            f"{what}: is truncated or corrupt — it cannot be read as DM{version} "
            f"({type(exc).__name__}: {_exc_text(exc)}); copy or export the file again"
        ) from exc
    if not images:
        raise MicrographError(f"{what}: holds no image (only thumbnails or tags)")
    if len(images) > 1:
        shapes = ", ".join(_fmt_shape(np.shape(im["data"])) for im in images)
        raise MicrographError(
            f"{what}: holds {len(images)} images ({shapes}); the tool segments one 2-D micrograph "
            "at a time — save the one to segment as its own file"
        )
    return images, version


def _dm_calibration(axes: list[dict[str, Any]], what: str) -> tuple[float, str] | None:
    """Pixel size (nm) from the spatial axes (``y`` then ``x``) of a 2-D DM image."""
    sizes: list[float | None] = []
    for axis in axes[-2:]:
        factor = _unit_to_nm(axis.get("units") or "")
        try:
            scale = float(f"{float(axis.get('scale', 0.0)):.7g}")  # DM stores float32 scales
        except (TypeError, ValueError):
            scale = 0.0
        sizes.append(scale * factor if factor is not None and scale > 0 else None)
    if len(sizes) != 2 or sizes[1] is None:
        logger.info("%s: the DM image has no spatial calibration", what)
        return None
    y_nm, x_nm = sizes
    return _accept_candidate(what, x_nm, y_nm, "metadata:dm", deliberate=True)


def _dm_array(data: np.ndarray) -> np.ndarray:
    if data.dtype.names and set("RGB") <= set(data.dtype.names):  # DM RGB(A): a record array
        return np.stack([np.asarray(data[c]) for c in data.dtype.names if c in "RGBA"], axis=-1)
    return np.asarray(data)


def _read_dm(p: Path, what: str) -> tuple[np.ndarray, dict[str, Any], tuple[float, str] | None]:
    images, version = _dm_images(p, what)
    image = images[0]
    data = _dm_array(image["data"])
    colour = data.ndim == 3 and data.shape[-1] in (3, 4) and bool(image["data"].dtype.names)
    spatial = data.shape[:2] if colour else data.shape
    if not colour and data.ndim == 3:
        raise _stack(what, int(data.shape[0]), tuple(data.shape[1:]), "images")
    if data.size == 0 or 0 in spatial:
        raise MicrographError(f"{what}: is empty (image of {_fmt_shape(data.shape)} px)")
    axes = [a for a in image.get("axes", []) if not a.get("navigate", False)]
    pixel = _dm_calibration(axes, what) if len(axes) >= 2 else None
    info = {"format": "dm", "dm_version": version}
    return data, info, pixel


# --------------------------------------------------------------------------------------------
# Entry points for io
# --------------------------------------------------------------------------------------------


def read_em_file(p: Path, fmt: str, what: str) -> tuple[np.ndarray, dict[str, Any], tuple[float, str] | None]:
    """Decode an MRC or DM file: ``(data, info, (pixel_nm, source) or None)``."""
    if fmt == "mrc":
        return _read_mrc(p, what)
    if fmt == "dm":
        return _read_dm(p, what)
    raise MicrographError(f"{what}: unknown EM format {fmt!r}")


def em_pixel_size(p: Path, fmt: str, what: str) -> tuple[float, str] | None:
    """Pixel size from an MRC header (without reading the data) or a DM file's calibration."""
    if fmt == "mrc":
        with _open_mrc_header(p, what) as mrc:
            return _mrc_calibration(mrc.header, what)
    if fmt == "dm":
        return _read_dm(p, what)[2]
    raise MicrographError(f"{what}: unknown EM format {fmt!r}")


# --------------------------------------------------------------------------------------------
# Instrument metadata in TIFF files
# --------------------------------------------------------------------------------------------


def _fei_pixel_size(tif: Any, what: str) -> tuple[float, str] | None:
    meta = getattr(tif, "fei_metadata", None)
    if not meta:
        return None
    for section in ("Scan", "EScan"):
        values = meta.get(section)
        if not isinstance(values, dict):
            continue
        try:
            x_m = float(values["PixelWidth"])
        except (KeyError, TypeError, ValueError):
            continue
        try:
            y_m: float | None = float(values["PixelHeight"])
        except (KeyError, TypeError, ValueError):
            y_m = None
        if not math.isfinite(x_m) or x_m <= 0:
            continue
        return _accept_candidate(
            what, x_m * 1e9, None if y_m is None else y_m * 1e9, "metadata:fei", deliberate=True
        )
    return None


def _zeiss_sem_pixel_size(tif: Any, what: str) -> tuple[float, str] | None:
    meta = getattr(tif, "sem_metadata", None)
    if not meta:
        return None
    for key in ("ap_image_pixel_size", "ap_pixel_size"):
        entry = meta.get(key)
        if not isinstance(entry, tuple) or len(entry) < 3:
            continue
        value, unit = entry[1], entry[2]
        factor = _unit_to_nm(unit)
        if factor is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            logger.info("%s: Zeiss SEM %s %r is not a length; ignoring it", what, key, entry)
            continue
        return _accept_candidate(what, float(value) * factor, None, "metadata:zeiss-sem",
                                 deliberate=True)
    return None


def instrument_tiff_pixel_size(tif: Any, what: str) -> tuple[float, str] | None:
    """Pixel size from FEI/Thermo (``fei_metadata``) or Zeiss SEM (``sem_metadata``) TIFF tags."""
    for reader in (_fei_pixel_size, _zeiss_sem_pixel_size):
        try:
            found = reader(tif, what)
        except (ValueError, TypeError, KeyError, AttributeError, OSError) as exc:
            logger.info("%s: instrument metadata cannot be parsed (%s); ignoring it", what, exc)
            continue
        if found is not None:
            return found
    return None
