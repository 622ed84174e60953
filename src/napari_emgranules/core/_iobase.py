"""Low-level pieces shared by the micrograph readers: :mod:`.io`, :mod:`.emformats`, :mod:`.omezarr`.

It holds the :class:`MicrographError` and :class:`MicrographWarning` classes, the size limits and
the decode-size guard, the length-unit table, and the check of a pixel size found in metadata. It
imports none of those three modules, so each of them imports it at the top. :mod:`.io` re-exports
the public names; import them from there.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import warnings
from typing import Any

# The helpers here log and warn as part of io (these pieces were split out of it).
_IO_MODULE = __name__.rpartition(".")[0] + ".io"
# Frames skipped when attributing a MicrographWarning to its caller.
_INTERNAL_MODULES = (__name__, _IO_MODULE)

logger = logging.getLogger(_IO_MODULE)

#: Largest side, in pixels, accepted for a single micrograph.
MAX_SIDE_PX = 2**17
#: Pixel sizes (nm/px) outside this closed range are treated as not being a TEM calibration.
PLAUSIBLE_PIXEL_SIZE_NM: tuple[float, float] = (0.01, 100.0)
#: Refuse to decode an image needing more than this fraction of the available memory.
MEMORY_FRACTION = 0.8

# Relative tolerance for "same pixel size" (user vs metadata, X vs Y).
_PIXEL_SIZE_RTOL = 0.01

# Length units → nanometres. Keys are normalised by _normalise_unit().
_UNIT_NM: dict[str, float] = {
    "pm": 1e-3,
    "å": 0.1,
    "a": 0.1,
    "angstrom": 0.1,
    "ångström": 0.1,
    "nm": 1.0,
    "nanometer": 1.0,
    "nanometre": 1.0,
    "µm": 1e3,
    "um": 1e3,
    "micron": 1e3,
    "micrometer": 1e3,
    "micrometre": 1e3,
    "mm": 1e6,
    "millimeter": 1e6,
    "millimetre": 1e6,
    "cm": 1e7,
    "centimeter": 1e7,
    "centimetre": 1e7,
    "m": 1e9,
    "meter": 1e9,
    "metre": 1e9,
    "in": 2.54e7,
    "inch": 2.54e7,
}


class MicrographError(ValueError):
    """An image file or array cannot be used as a micrograph (or label map).

    The message starts with the file path (or ``"<array>"``), says what is wrong and what to do.
    """


class MicrographWarning(UserWarning):
    """Something about a micrograph was changed or guessed; the result may need checking."""


# Both are part of io's public API and are re-exported there; they keep io as their home so that
# tracebacks, reprs and pickles name them as before.
MicrographError.__module__ = MicrographWarning.__module__ = _IO_MODULE


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _warn(message: str) -> None:
    """Issue a MicrographWarning attributed to the first caller outside io and this module."""
    level, frame = 2, sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__") in _INTERNAL_MODULES:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, MicrographWarning, stacklevel=level)


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(int(s)) for s in shape)


def available_memory_bytes() -> int | None:
    """Memory available for new allocations, in bytes, or None when it cannot be determined.

    Uses ``MemAvailable`` from ``/proc/meminfo`` (Linux; counts reclaimable page cache), then
    ``psutil`` if installed, then ``os.sysconf`` free pages.
    """
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    try:
        import psutil  # type: ignore[import-untyped]

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - psutil missing or failing: try the next method
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def _check_decode_size(what: str, rows: int, cols: int, nbytes: int) -> None:
    """Refuse images whose sides or decoded size are too large, before decoding them."""
    if rows > MAX_SIDE_PX or cols > MAX_SIDE_PX:
        raise MicrographError(
            f"{what}: is {rows}x{cols} px; sides above {MAX_SIDE_PX} px are not supported — "
            "split it into tiles (tiled/montage processing) and segment those"
        )
    available = available_memory_bytes()
    if available is None:
        logger.debug("%s: available memory unknown; skipping the size check", what)
        return
    if nbytes > MEMORY_FRACTION * available:
        raise MicrographError(
            f"{what}: decoding it needs {nbytes / 1e9:.2f} GB but only {available / 1e9:.2f} GB "
            "of memory is available; use tiled/montage processing (split the image into tiles) "
            "or a machine with more memory"
        )


def _normalise_unit(unit: Any) -> str:
    text = str(unit).strip()
    for escaped in ("\\u00B5", "\\u00b5", "\\u03BC", "\\u03bc"):
        text = text.replace(escaped, "µ")
    text = text.replace("\u03bc", "µ")  # Greek small mu -> micro sign
    text = text.lower()  # also maps the Angstrom sign U+212B and U+00C5 to "å"
    if text.endswith("s") and text[:-1] in _UNIT_NM and len(text) > 2:
        text = text[:-1]  # microns, nanometers, ...
    return text


def _unit_to_nm(unit: Any) -> float | None:
    """Nanometres in one ``unit`` (e.g. ``"µm"`` -> 1000), or None for unknown/pixel units."""
    return _UNIT_NM.get(_normalise_unit(unit))


def _accept_candidate(
    what: str, x_nm: float | None, y_nm: float | None, source: str, *, deliberate: bool
) -> tuple[float, str] | None:
    """Validate a metadata pixel size; warn about non-square pixels.

    ``deliberate`` marks calibrations a user set on purpose (OME, ImageJ); an implausible one of
    those is warned about, an implausible resolution tag is only logged.
    """
    if x_nm is None or not math.isfinite(x_nm) or x_nm <= 0:
        return None
    lo, hi = PLAUSIBLE_PIXEL_SIZE_NM
    if not lo <= x_nm <= hi:
        message = (
            f"{what}: file metadata ({source}) gives {x_nm:.4g} nm/px, outside the plausible "
            f"range {lo:g}-{hi:g} nm/px for TEM micrographs; ignoring it"
        )
        if deliberate:
            _warn(message + "; pass pixel_size_nm to set the pixel size")
        else:
            logger.info(message)
        return None
    if y_nm is not None and math.isfinite(y_nm) and y_nm > 0:
        if abs(x_nm - y_nm) > _PIXEL_SIZE_RTOL * max(x_nm, y_nm):
            _warn(
                f"{what}: pixels are not square (X {x_nm:.4g} nm, Y {y_nm:.4g} nm, {source}); "
                f"using the X size {x_nm:.4g} nm/px — resample the image to square pixels "
                "for accurate densities"
            )
    return x_nm, source


def _exc_text(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
