"""``emgranules``: the command line over the headless core.

Exit codes: 0 success; 2 bad input or arguments (one line on stderr per problem, nothing
half-written); 1 an unexpected internal error (rerun with ``--debug`` for the traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import warnings
from collections.abc import Sequence

from . import __version__, _cli_batch, _cli_grid, _cli_interop, _cli_measure, _cli_study, _cli_training
from ._cli_common import (  # noqa: F401 - re-exported: the shared pieces of every command
    EXIT_BAD_INPUT,
    EXIT_INTERNAL,
    EXIT_OK,
    CliError,
    _expand_inputs,
    _fail,
    _output_folder,
    _show_warning,
    _user_errors,
    add_label_format_argument,
    add_segment_arguments,
    segment_options,
)

logger = logging.getLogger("napari_emgranules")



# -------------------------------------------------------------------------------------------------
# segment
# -------------------------------------------------------------------------------------------------
def _cmd_segment(args: argparse.Namespace) -> int:
    """Label maps of micrographs: the core batch (one output layout, one set of checks) without
    the tables."""
    from tqdm import tqdm

    from .core.batch import batch_iter
    from .core.io import write_image
    from .core.progress import run_to_completion

    out = _output_folder(args.out)
    options = segment_options(args)
    if not args.images and not args.sample:
        raise CliError("give micrographs to segment, or --sample for the bundled sample")
    inputs: list[object] = []
    if args.sample:
        from .core.synthetic import sample_micrograph

        sample = sample_micrograph()
        sample_path = write_image(out / "sample.tif", sample.image, pixel_size_nm=sample.pixel_size_nm)
        print(f"sample micrograph (synthetic, {sample.image.shape[1]}x{sample.image.shape[0]} px, "
              f"{sample.pixel_size_nm} nm/px) written to {sample_path}")
        inputs.append(sample_path)
    inputs.extend(_expand_inputs(args.images))
    kinds = tuple(args.only) if args.only else ("locations", "granules")
    gen = batch_iter(inputs, out, options=options, locations_model=args.locations_weights,
                     granules_model=args.granules_weights, pixel_size_nm=args.pixel_size,
                     force_pixel_size=args.force_pixel_size, overwrite=args.overwrite, kinds=kinds,
                     tables=False, label_format=args.format, confidence=args.confidence)
    # the bar only on a terminal (None): logs of cluster jobs and pipes keep one line per message
    with tqdm(desc="segment", unit="image", file=sys.stderr, leave=False,
              disable=True if args.quiet else None) as bar:
        def advance(event, bar=bar) -> None:
            bar.total = event.total
            bar.update(1)
            if event.status == "failed":
                tqdm.write(f"emgranules: error: {event.message}", file=sys.stderr)
            else:  # done, or skipped: unchanged since the last run into this folder
                tqdm.write(event.message, file=sys.stdout)

        result = run_to_completion(gen, advance)
    untrained = sorted(k for k, m in result.models.items() if m.get("trained") is False)
    synthetic = sorted(k for k, m in result.models.items() if m.get("synthetic") and k not in untrained)
    if result.done and untrained:
        print(f"note: the bundled {' and '.join(untrained)} model(s) used are UNTRAINED (random "
              "weights) in this version; their labels are meaningless. Pass "
              "--locations-weights/--granules-weights with trained weights.", file=sys.stderr)
    if result.done and synthetic:
        print(f"note: the {' and '.join(synthetic)} model(s) used are the bundled defaults, "
              "trained on synthetic micrographs only. On real micrographs check the labels, "
              "correct them and retrain (emgranules export / train), or pass your lab's weights "
              "with --locations-weights/--granules-weights.", file=sys.stderr)
    return EXIT_BAD_INPUT if result.failures else EXIT_OK


def _cmd_prefer_reader(args: argparse.Namespace) -> int:  # noqa: ARG001
    from ._reader import SHARED_PATTERNS, prefer_this_reader

    prefer_this_reader()
    print(f"napari now opens {', '.join(SHARED_PATTERNS)} with napari-emgranules (change it in "
          "napari's Preferences > Plugins)")
    return EXIT_OK


# -------------------------------------------------------------------------------------------------
# split
# -------------------------------------------------------------------------------------------------
def _cmd_split(args: argparse.Namespace) -> int:
    from .core.io import read_micrograph, write_image
    from .core.tiling import split_seed

    out = _output_folder(args.out)
    failures = 0
    for path in _expand_inputs(args.images):
        try:
            m = read_micrograph(path)
            tiles = split_seed(m.data, args.tiles, args.order)
            targets = [out / f"{path.stem}_{index}.png" for index, _ in tiles]
            existing = [t for t in targets if t.exists()]
            if existing and not args.overwrite:
                raise CliError(f"{existing[0]} exists already (tiles may be training data); "
                               "use --overwrite to replace")
            if m.data.dtype.kind != "u" or m.data.dtype.itemsize > 2:
                raise CliError(f"{m.data.dtype} pixels cannot be written as PNG tiles "
                               "(8- or 16-bit unsigned only)")
        except (CliError, *_user_errors()) as exc:
            _fail(f"{path}: {exc}" if str(path) not in str(exc) else str(exc))
            failures += 1
            continue
        for (_, tile), target in zip(tiles, targets, strict=True):
            write_image(target, tile, pixel_size_nm=m.pixel_size_nm)
        side = tiles[0][1].shape
        print(f"{path.name}: {len(tiles)} tiles of {side[1]}x{side[0]} px -> "
              f"{out}/{path.stem}_0..{len(tiles) - 1}.png")
        if side != (1024, 1024):
            print(f"emgranules: warning: tiles are {side[1]}x{side[0]} px; the original models "
                  "were trained on 1024x1024 tiles at 0.8 nm/px", file=sys.stderr)
    return EXIT_BAD_INPUT if failures else EXIT_OK


# -------------------------------------------------------------------------------------------------
# info
# -------------------------------------------------------------------------------------------------
def collect_info() -> dict:
    """Versions, Keras backend, devices and bundled models (what ``emgranules info`` prints)."""
    import importlib.metadata as md

    from .core._backend import get_keras
    from .core.models import default_model

    def version(dist: str) -> str | None:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None

    info: dict = {
        "napari-emgranules": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {d: version(d) for d in ("numpy", "keras", "tensorflow", "jax", "torch",
                                             "napari", "tifffile", "scikit-image", "pandas")},
    }
    keras = get_keras()
    backend = keras.backend.backend()
    info["keras_backend"] = backend
    info["devices"] = _devices(backend)
    models = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for kind in ("locations", "granules"):
            m = default_model(kind)
            c = m.card
            models[kind] = {
                "architecture": c.architecture,
                "parameters": m.count_params(),
                "trained": c.trained,
                "synthetic": c.synthetic,
                "training_data": c.provenance.get("training_data"),
                "pixel_size_nm": c.pixel_size_nm,
                "classes": [f"{k.code} {k.letter} {k.name}" for k in c.schema.classes],
                "measured": list(c.schema.measured_codes),
                "source": c.provenance.get("source", "built in (random fixed-seed weights)"),
            }
    info["bundled_models"] = models
    return info


def _devices(backend: str) -> list[str]:
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            return [f"{d.device_type}:{d.name}" for d in tf.config.list_physical_devices()]
        if backend == "jax":
            import jax

            return [str(d) for d in jax.devices()]
        if backend == "torch":
            import torch

            cuda = [f"cuda:{i} {torch.cuda.get_device_name(i)}"
                    for i in range(torch.cuda.device_count())]
            return ["cpu", *cuda]
    except Exception as exc:  # a broken GPU stack must not break 'info': report it instead
        return [f"(could not list devices: {type(exc).__name__}: {exc})"]
    return []


def _cmd_info(args: argparse.Namespace) -> int:
    info = collect_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    print(f"napari-emgranules {info['napari-emgranules']} (Python {info['python']}, "
          f"{info['platform']})")
    print("packages: " + ", ".join(f"{k} {v}" for k, v in info["packages"].items() if v))
    print(f"Keras backend: {info['keras_backend']}  (set KERAS_BACKEND to change)")
    print("devices: " + ", ".join(info["devices"]))
    for kind, m in info["bundled_models"].items():
        state = ("UNTRAINED: random weights, labels are meaningless" if not m["trained"] else
                 "trained on SYNTHETIC micrographs only: on real data correct and retrain, or "
                 "load your lab's weights" if m["synthetic"] else "trained")
        print(f"bundled {kind} model: {m['architecture']}, {m['parameters']:,} parameters, "
              f"{m['pixel_size_nm']} nm/px, {state}")
        print("    classes: " + "; ".join(m["classes"]) + f"  (measured: {m['measured']})")
    return EXIT_OK


# -------------------------------------------------------------------------------------------------
# entry point
# -------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emgranules",
        description="Glycogen granules in EM micrographs of skeletal muscle: segment, split, export, "
                    "train, evaluate, measure, study, info.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    seg = sub.add_parser("segment", help="micrographs -> Locations and Granules label maps")
    seg.add_argument("images", nargs="*", metavar="IMAGE", help="micrographs or folders of them")
    seg.add_argument("--out", required=True, help="output folder (created if missing)")
    seg.add_argument("--sample", action="store_true",
                     help="also segment the bundled synthetic sample micrograph")
    add_segment_arguments(seg)
    seg.add_argument("--only", action="append", choices=("locations", "granules"),
                     help="run only this model (repeatable)")
    add_label_format_argument(seg)
    seg.add_argument("--confidence", action="store_true",
                     help="also write per-pixel confidence (16-bit TIFF, 65535 = certain)")
    seg.add_argument("--overwrite", action="store_true", help="replace existing label files")
    seg.add_argument("--quiet", action="store_true", help="no progress bar")
    seg.set_defaults(func=_cmd_segment)

    spl = sub.add_parser("split", help="cut micrographs into tiles named as the original tool")
    spl.add_argument("images", nargs="+", metavar="IMAGE")
    spl.add_argument("--out", required=True, help="output folder")
    spl.add_argument("--per-side", "--tiles", dest="tiles", type=int, default=4, metavar="N",
                     help="tiles per side (default 4: a 4096 image -> 16 tiles of 1024)")
    spl.add_argument("--order", default="column", choices=("column", "row"),
                     help="tile numbering: column-major as the original utility (default) or row")
    spl.add_argument("--overwrite", action="store_true", help="replace existing tiles")
    spl.set_defaults(func=_cmd_split)

    for module in (_cli_training, _cli_study, _cli_measure, _cli_grid, _cli_batch, _cli_interop):
        module.add_parsers(sub)

    pre = sub.add_parser("prefer-reader",
                         help="make napari open .dm3/.dm4/.mrc/.st/.zarr with this plugin without "
                              "asking (other plugins, e.g. napari-rosettasciio, read them too)")
    pre.set_defaults(func=_cmd_prefer_reader)

    inf = sub.add_parser("info", help="versions, Keras backend, devices, bundled models")
    inf.add_argument("--json", action="store_true", help="machine-readable output")
    inf.set_defaults(func=_cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="emgranules: %(levelname)s: %(message)s")
    if not args.debug:  # a corrupt file gets our one-line message; tifffile's own log is noise
        logging.getLogger("tifffile").setLevel(logging.ERROR)
    else:  # and the backend's own start-up lines (core._backend hides them otherwise)
        os.environ["EMGRANULES_DEBUG"] = "1"
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        from .core.models import UntrainedModelWarning

        # The CLI says so in each result line and a closing note instead.
        warnings.filterwarnings("ignore", category=UntrainedModelWarning)
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        return args.func(args)
    except CliError as exc:
        _fail(str(exc))
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        _fail("interrupted; finished outputs are complete, nothing was half-written")
        return 130
    except Exception as exc:
        if args.debug:
            raise
        if isinstance(exc, _user_errors()):
            _fail(str(exc))
            return EXIT_BAD_INPUT
        _fail(f"internal error ({type(exc).__name__}: {exc}); rerun with --debug and report it")
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
