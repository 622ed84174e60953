"""What every ``emgranules`` command shares: exit codes, the user-facing error, messages, the
output-folder check and the segmentation argument group. The command modules (``cli`` and
``_cli_*``) import it; it imports none of them, so the command line has no import cycle.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2


class CliError(Exception):
    """A user-facing problem: printed as one line, exit code 2."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from .core import USER_ERRORS

    return USER_ERRORS


# -------------------------------------------------------------------------------------------------
# helpers
# -------------------------------------------------------------------------------------------------
def _expand_inputs(items: Sequence[str]) -> list[Path]:
    """Files as given; folders expanded to the micrographs directly inside them."""
    from .core.batch import BatchError, expand_inputs

    try:
        return [item.path for item in expand_inputs(items, patterns=False, manifests=False)]
    except BatchError as exc:
        raise CliError(str(exc)) from None


def _output_folder(value: str) -> Path:
    """``--out`` as a Path; refused up front when it names an existing file (not a folder)."""
    out = Path(value)
    if out.exists() and not out.is_dir():
        raise CliError(f"{out}: --out must be a folder, but this is an existing file")
    return out


def add_segment_arguments(parser: argparse.ArgumentParser) -> None:
    """The segmentation options (:class:`~.core.options.SegmentOptions`), the models and the pixel
    size: one argument group for ``segment`` and ``batch``; :func:`segment_options` reads it."""
    from .core.models import VIEWS
    from .core.options import GRANULE_PEAK, MIN_GRANULE_NM, MODES, PRECISIONS

    group = parser.add_argument_group("segmentation")
    group.add_argument("--mode", default="auto", choices=MODES,
                       help="whole image, tiles with halo, or the original 1024 tiles (default auto: "
                            "whole when it fits in memory; TIFFs too large for memory are segmented "
                            "by tiles from a memory map)")
    group.add_argument("--pixel-size", type=float, metavar="NM",
                       help="pixel size in nm, used when the file's metadata has none")
    group.add_argument("--force-pixel-size", action="store_true",
                       help="use --pixel-size even when the file's metadata has one")
    group.add_argument("--locations-weights", metavar="FILE",
                       help="Locations weights (.weights.h5, .keras, .h5, TF checkpoint, .onnx)")
    group.add_argument("--granules-weights", metavar="FILE", help="Granules weights")
    group.add_argument("--granule-threshold", type=float, metavar="P",
                       help="granule where the Granules model's calibrated probability is at least "
                            "P (default: the arg-max, i.e. 0.5; the other muscle-TEM tool used 0.85)")
    group.add_argument("--granule-peak", type=float, default=GRANULE_PEAK, metavar="P",
                       help=f"keep a granule only where its most confident pixel reaches the "
                            f"calibrated probability P (default {GRANULE_PEAK:g}; 0 keeps every "
                            f"granule the threshold draws)")
    group.add_argument("--min-granule", type=float, default=MIN_GRANULE_NM, metavar="NM",
                       help=f"granule objects smaller than a disc this wide become background "
                            f"(default {MIN_GRANULE_NM:g} nm; 0 keeps the raw model output)")
    group.add_argument("--max-window", type=int, metavar="PX", help="largest tile side (tiled)")
    group.add_argument("--halo", type=int, default=128, metavar="PX",
                       help="context around each tile (tiled, default 128)")
    group.add_argument("--batch-size", type=int, default=1, metavar="N",
                       help="tiles per forward pass (tiled/seed and montages by tiles)")
    group.add_argument("--precision", default="float32", choices=PRECISIONS,
                       help="compute precision of the networks (default float32; the lower ones "
                            "are for GPUs with tensor cores)")
    group.add_argument("--jit", action="store_true",
                       help="compile the networks (XLA / jax.jit): pays off over many images")
    group.add_argument("--views", type=int, choices=VIEWS, metavar="N",
                       help="symmetric views of the input each network averages (1, 2, 4 or 8; "
                            "each view is one more forward pass; default each model card's: "
                            "the bundled Locations model 8, Granules 1)")


def add_label_format_argument(parser: argparse.ArgumentParser) -> None:
    """``--format`` of the label maps ``segment`` and ``batch`` write."""
    parser.add_argument("--format", default="tif", choices=("tif", "png", "ome-zarr"),
                        help="label maps as TIFF (default), 16-bit PNG as the original tool, or one "
                             "OME-Zarr store per micrograph (ome-zarr/<name>.ome.zarr: the "
                             "micrograph and labels/locations, labels/granules with class names "
                             "and colours)")


def segment_options(args: argparse.Namespace):
    """The :class:`~.core.options.SegmentOptions` of :func:`add_segment_arguments`' arguments."""
    from .core.options import SegmentOptions

    try:
        return SegmentOptions(mode=args.mode, max_window=args.max_window, halo=args.halo,
                              batch_size=args.batch_size, min_granule_nm=args.min_granule or None,
                              precision=args.precision, jit=args.jit,
                              granule_threshold=args.granule_threshold,
                              granule_peak=args.granule_peak or None,
                              views=args.views)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _fail(msg: str) -> None:
    print(f"emgranules: error: {msg}", file=sys.stderr)


def _show_warning(message, category, filename, lineno, file=None, line=None):  # noqa: ARG001
    print(f"emgranules: warning: {message}", file=sys.stderr)
