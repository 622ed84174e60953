"""``emgranules export-model``: weights -> ONNX or ZEISS ``.czann`` / ``.czmodel``.

A thin wrapper over :mod:`napari_emgranules.core.interop`; :func:`add_parsers` is called by
:func:`napari_emgranules.cli.build_parser`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._cli_common import EXIT_OK, CliError

FORMATS = {"onnx": ".onnx", "czann": ".czann", "czmodel": ".czmodel", "bioimageio": ".zip"}


def _format(args: argparse.Namespace, out: Path) -> str:
    """``--format``, or the one ``--out``'s suffix names; the two must agree."""
    by_suffix = {s: f for f, s in FORMATS.items()}.get(out.suffix.lower())
    fmt = args.format or by_suffix
    if fmt is None:
        raise CliError(f"{out}: give --format ({', '.join(FORMATS)}) or an --out file ending in "
                       f"{', '.join(FORMATS.values())}")
    if by_suffix != fmt:
        raise CliError(f"{out}: --format {fmt} writes a {FORMATS[fmt]} file; name --out "
                       f"'{out.with_suffix(FORMATS[fmt]).name}'")
    return fmt


def _cmd_export_model(args: argparse.Namespace) -> int:
    from .core.interop import CZANN_OPSET, DEFAULT_OPSET, export_czann, export_onnx
    from .core.models import default_model, load_model, sidecar_path

    out = Path(args.out)
    fmt = _format(args, out)
    if out.is_dir():
        raise CliError(f"{out}: --out must be a file name, but this is a folder")
    existing = [p for p in (out, sidecar_path(out) if fmt == "onnx" else None) if p and p.exists()]
    if existing and not args.overwrite:
        raise CliError(f"{existing[0]}: exists already; use --overwrite to replace it")
    if args.weights is None:
        if args.kind is None:
            raise CliError("give WEIGHTS, or --model locations|granules for the bundled model")
        model = default_model(args.kind)
    else:
        if not Path(args.weights).exists() and not Path(args.weights + ".index").exists():
            raise CliError(f"{args.weights}: no such weights file")
        model = load_model(args.weights, args.kind)
    if fmt == "onnx":
        written = export_onnx(model, out, opset=args.opset or DEFAULT_OPSET, overwrite=args.overwrite)
        extra = f" + {sidecar_path(written).name}"
    elif fmt == "bioimageio":
        from .core.bioimageio import export_bioimageio

        written = export_bioimageio(model, out, overwrite=args.overwrite)
        extra = " (BioImage Model Zoo package: rdf.yaml, ONNX and Keras weights, test tensors)"
    else:
        written = export_czann(model, out, tile=args.tile, border_px=args.border,
                               pixel_type=args.pixel_type, opset=args.opset or CZANN_OPSET,
                               overwrite=args.overwrite)
        extra = ""
    state = "" if model.card.trained else " [UNTRAINED: random weights]"
    print(f"{model.kind} model ({model.card.architecture}, {model.n_classes} classes, "
          f"{model.card.pixel_size_nm:g} nm/px) -> {written}{extra} ({fmt}){state}")
    if not model.card.trained:
        print("note: this model has random weights; its labels are meaningless", file=sys.stderr)
    return EXIT_OK


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``export-model``."""
    exm = sub.add_parser(
        "export-model",
        help="weights -> ONNX (runs without TensorFlow), a BioImage Model Zoo package, or ZEISS "
             "ZEN/arivis .czann/.czmodel",
        description="Export a model for other tools. ONNX: input 'image' float32 (n, h, w, 1) in "
                    "[0, 1], output 'logits' (n, h, w, classes), sides multiples of 128; the model "
                    "card is in the file's metadata and a .onnx.json sidecar. .czann: CZANN 2.1.0 "
                    "for ZEN >= 3.13 (softmax output, fixed tile). .czmodel: legacy Intellesis. "
                    "bioimageio (.zip): BioImage Model Zoo format 0.5 for deepImageJ, ilastik, "
                    "BiaPy and bioimageio.core.",
    )
    exm.add_argument("weights", nargs="?", metavar="WEIGHTS",
                     help="weights (.weights.h5, .keras, .h5, TF checkpoint or .onnx); default: "
                          "the bundled model of --model")
    exm.add_argument("--model", dest="kind", choices=("locations", "granules"),
                     help="which model the weights are (needed without a sidecar)")
    exm.add_argument("--format", choices=tuple(FORMATS),
                     help="onnx, bioimageio, czann or czmodel (default: from --out's suffix)")
    exm.add_argument("--out", required=True, metavar="FILE", help="file to write")
    exm.add_argument("--opset", type=int, metavar="N",
                     help="ONNX opset (default 17 for onnx, 18 inside .czann/.czmodel)")
    exm.add_argument("--tile-size", "--tile", dest="tile", type=int, default=1024, metavar="PX",
                     help="czann/czmodel: tile side ZEN feeds the network (default 1024)")
    exm.add_argument("--border", type=int, default=128, metavar="PX",
                     help="czann/czmodel: context around each tile (default 128; MinOverlap = 2x)")
    exm.add_argument("--pixel-type", default="Gray16", choices=("Gray16", "Gray8"),
                     help="czmodel: pixel type of the micrographs (default Gray16)")
    exm.add_argument("--overwrite", action="store_true", help="replace existing files")
    exm.set_defaults(func=_cmd_export_model)
