"""``emgranules batch``: folders (or a cluster's worth) of micrographs -> label maps and tables.

A thin wrapper over :mod:`napari_emgranules.core.batch`; :func:`add_parsers` is called by
:func:`napari_emgranules.cli.build_parser`.
"""

from __future__ import annotations

import argparse
import math
import sys

from ._cli_common import (
    EXIT_BAD_INPUT,
    EXIT_OK,
    CliError,
    _output_folder,
    add_label_format_argument,
    add_segment_arguments,
    segment_options,
)
from ._cli_measure import add_calibration_argument, add_derived_argument, derived_regions, pf_calibration


def _measure_kwargs(args: argparse.Namespace) -> dict:
    if args.section <= 0 or not math.isfinite(args.section):
        raise CliError(f"--section {args.section}: the section thickness must be positive (nm)")
    kwargs: dict = {"tile": args.tile or None}
    derived, calibration = derived_regions(args), pf_calibration(args)
    if derived:
        kwargs["derived"] = derived
    if calibration:
        kwargs["pf_calibration"] = calibration
    if args.vf == "none":
        kwargs["section_nm"] = None
    else:
        kwargs.update(section_nm=args.section, vf_method=args.vf)
    return kwargs


def _thresholds(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CliError(f"--granule-thresholds {text!r}: give probabilities separated by commas, "
                       "e.g. 0.3,0.5,0.85") from None


def _models_note(models: dict) -> str | None:
    untrained = sorted(k for k, m in models.items() if m.get("trained") is False)
    if not untrained:
        return None
    return (f"note: the bundled {' and '.join(untrained)} model(s) used are UNTRAINED (random "
            "weights) in this version; their labels are meaningless. Pass --locations-weights/"
            "--granules-weights with trained weights.")


def _cmd_batch(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .core.batch import batch_iter, parse_scheduler
    from .core.progress import run_to_completion

    parse_scheduler(args.scheduler)  # a bad --scheduler is refused before anything starts
    out = _output_folder(args.out)
    gen = batch_iter(
        args.inputs, out, options=segment_options(args), locations_model=args.locations_weights,
        granules_model=args.granules_weights, pixel_size_nm=args.pixel_size,
        force_pixel_size=args.force_pixel_size, measure_kwargs=_measure_kwargs(args),
        seed_tables=args.seed_tables, scheduler=args.scheduler, overwrite=args.overwrite,
        granule_thresholds=_thresholds(args.granule_thresholds), label_format=args.format,
        objects=args.objects)
    with tqdm(desc="batch", unit="image", file=sys.stderr, disable=args.quiet) as bar:
        def advance(event, bar=bar) -> None:
            bar.total = event.total
            bar.update(1)
            bar.set_postfix_str(event.status)
            if event.status == "failed":
                tqdm.write(f"emgranules: error: {event.message}", file=sys.stderr)

        result = run_to_completion(gen, advance)
    note = _models_note(result.models)
    if note:
        print(note, file=sys.stderr)
    tables = ", ".join(str(result.paths[k]) for k in ("regions", "particles"))
    failed = f"; see {result.paths['failures']}" if result.failures else ""
    print(f"batch: {len(result.done)} done, {len(result.skipped)} skipped, {len(result.failures)} "
          f"failed -> {tables}{failed}")
    return EXIT_BAD_INPUT if result.failures else EXIT_OK


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``batch``."""
    bat = sub.add_parser("batch", help="many micrographs -> label maps, per-image and combined "
                                       "density tables; resumable, serial or on a Dask cluster")
    bat.add_argument("inputs", nargs="+", metavar="INPUT",
                     help="micrographs, folders of them, glob patterns ('cells/*.tif'), or a CSV "
                          "list with a 'path' column (and optionally 'pixel_size_nm')")
    bat.add_argument("--out", required=True, help="output folder (created if missing)")
    bat.add_argument("--scheduler", metavar="SPEC",
                     help="'processes:N' (a local Dask cluster of N worker processes) or "
                          "'tcp://host:port' (a running Dask scheduler); default: this process")
    add_segment_arguments(bat)
    add_label_format_argument(bat)
    add_derived_argument(bat)
    add_calibration_argument(bat)
    bat.add_argument("--objects", action="store_true",
                     help="also write each micrograph's granule particles as QuPath objects, "
                          "objects/<name>.geojson, and a Fiji ROI set, objects/<name>.roi.zip")
    bat.add_argument("--granule-thresholds", metavar="P,P,...",
                     help="also measure with each of these granule probability thresholds, from the "
                          "same forward pass: regions.t<P>.csv and particles.t<P>.csv (and per "
                          "image in tables/); the label maps stay those of --granule-threshold")
    bat.add_argument("--tile-size", "--tile", dest="tile", type=int, default=0, metavar="PX",
                     help="also measure each seed tile of this side, e.g. 1024 (rows in the tables; "
                          "the seed tables then list tiles)")
    bat.add_argument("--seed-tables", nargs="?", const=True, default=False, metavar="DIR",
                     help="also write the original tool's two text tables into DIR (default: --out)")
    bat.add_argument("--section", type=float, default=70.0, metavar="NM",
                     help="section thickness for vf (default 70 nm)")
    bat.add_argument("--vf", default="baskets", choices=("baskets", "analytical", "none"),
                     help="pf -> vf route (default baskets)")
    bat.add_argument("--overwrite", action="store_true",
                     help="redo every micrograph, and replace outputs no batch run recorded")
    bat.add_argument("--quiet", action="store_true", help="no progress bar")
    bat.set_defaults(func=_cmd_batch)
