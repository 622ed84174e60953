"""``emgranules export | train | evaluate``: training data, training and accuracy from the shell.

Thin wrappers over :mod:`napari_emgranules.core.dataset`, ``core.train`` and ``core.metrics``;
:func:`add_parsers` is called by :func:`napari_emgranules.cli.build_parser`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ._cli_common import EXIT_OK, CliError, _fail
from .core.options import MODES


# -------------------------------------------------------------------------------------------------
# helpers
# -------------------------------------------------------------------------------------------------
def _schema_argument(value: str, task: str | None):
    """``--schema``: a schema's name (``locations-mito``), a JSON file (a ClassSchema, e.g. a
    dataset's schema.json) or class names."""
    from .core.schema import NAMED_SCHEMAS, ClassSchema, SchemaError

    if value in NAMED_SCHEMAS:
        return NAMED_SCHEMAS[value]
    p = Path(value)
    if p.suffix.lower() == ".json" or p.is_file():
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CliError(f"{p}: cannot read the schema ({exc})") from None
        schema = ClassSchema.from_dict(data)
        return ClassSchema(task, schema.classes) if task else schema
    names = [n.strip() for n in value.split(",")]
    if len(names) < 2:
        raise SchemaError(f"--schema {value!r}: give at least two class names separated by commas "
                          "(code 0 first), or a schema JSON file")
    return ClassSchema.from_names(task or "custom", names)


def _kind_schema(args: argparse.Namespace):
    from .core.schema import default_schema

    if args.schema:
        schema = _schema_argument(args.schema, getattr(args, "task", None))
        if args.kind not in (None, "new") and schema.kind != args.kind:
            raise CliError(f"--schema is a {schema.kind} schema but --model is {args.kind}")
        return schema.kind, schema
    if args.kind in (None, "new"):
        raise CliError("a new model needs --schema (class names, e.g. "
                       "'background,membrane', or a schema JSON file)")
    return args.kind, default_schema(args.kind)


def _parse_tiles(value: str):
    if value == "all":
        return "all"
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise CliError(f"--tiles {value!r}: give 'all' or tile numbers such as 0,3,5") from None


# -------------------------------------------------------------------------------------------------
# export
# -------------------------------------------------------------------------------------------------
def _read_truth(path: str, schema, segment_map: str | None):
    """The label map to export: a TIFF/PNG, or a 3D Slicer .seg.nrrd mapped onto ``schema``."""
    from .core.io import MicrographError, read_labels
    from .core.slicer import SegmentationFileError, is_seg_nrrd, parse_segment_map, read_seg_nrrd

    if not is_seg_nrrd(path):
        if segment_map:
            raise CliError("--segment-map is for 3D Slicer .seg.nrrd labels")
        return read_labels(path)
    try:
        labels, info = read_seg_nrrd(path, schema, segment_map=parse_segment_map(segment_map or ""))
    except (SegmentationFileError, ValueError) as exc:
        raise MicrographError(str(exc)) from None
    mapped = ", ".join(f"{name} -> {code}" for name, code in info["segments"].items())
    print(f"{path}: segments {mapped}" + (f"; left out: {', '.join(info['left_out'])}"
                                           if info["left_out"] else "")
          + f"; {info['unlabelled_fraction']:.0%} of the pixels in no segment (not labelled)")
    return labels


def _cmd_export(args: argparse.Namespace) -> int:
    from .core.dataset import export_training_pairs
    from .core.io import read_labels, read_micrograph

    kind, schema = _kind_schema(args)
    micrograph = read_micrograph(args.image, args.pixel_size)
    labels = _read_truth(args.labels, schema, args.segment_map)
    before = read_labels(args.only_changed_from) if args.only_changed_from else None
    reviewed = read_labels(args.reviewed) > 0 if args.reviewed else None
    if reviewed is not None and args.labelled != "changed":
        raise CliError("--reviewed goes with --labelled changed (the reviewed pixels join the "
                       "changed ones)")
    pairs = export_training_pairs(
        micrograph, labels, args.out, schema=schema, tiles=_parse_tiles(args.tiles),
        tile_size=args.tile_size, only_changed_from=before, made_by=args.made_by,
        image_format=args.format, labelled=args.labelled, reviewed=reviewed,
    )
    if not pairs:
        print(f"{Path(args.image).name}: no tile differs from {args.only_changed_from}; "
              "nothing exported")
        return EXIT_OK
    partial = "" if pairs[0].labelled == "full" else f", {pairs[0].labelled} pixels only"
    print(f"{Path(args.image).name}: {len(pairs)} {kind} training pairs{partial} -> {args.out} "
          f"({', '.join(p.name for p in pairs[:6])}{' ...' if len(pairs) > 6 else ''})")
    return EXIT_OK


# -------------------------------------------------------------------------------------------------
# train
# -------------------------------------------------------------------------------------------------
def _train_options(args: argparse.Namespace) -> dict:
    from .core.train import CLASS_WEIGHT_MODES

    opts = {"epochs": args.epochs, "batch_size": args.batch_size, "crop": args.crop,
            "steps_per_epoch": args.steps_per_epoch, "optimizer": args.optimizer,
            "learning_rate": args.lr, "clip_norm": args.clip_norm, "dice_weight": args.dice,
            "val_fraction": args.val_fraction, "validation_split": args.validation_split,
            "validation_mix": args.validation_mix,
            "monitor": args.monitor, "early_stopping_patience": args.patience,
            "freeze_encoder": args.freeze_encoder, "rotate90": args.rotate90,
            "scale_jitter": args.scale_jitter, "elastic": args.elastic, "seed": args.seed,
            "max_minutes": args.max_minutes,
            "input_scaling": args.input_scaling, "rehearsal": args.rehearsal,
            "rehearsal_look": args.rehearsal_look,
            "rehearsal_validation": args.rehearsal_validation,
            "max_class_loss": args.max_class_loss, "average_with_start": args.average_with_start,
            "start_labels": args.start_labels,
            "held_out_floor": args.held_out_floor, "keep_epochs": args.keep_epochs or None}
    cw = args.class_weights
    if cw is not None and cw not in CLASS_WEIGHT_MODES:
        try:
            cw = tuple(float(w) for w in cw.split(","))
        except ValueError:
            raise CliError(f"--class-weights {cw!r}: give none, balanced, prior or one number per class "
                           "(e.g. 1,10)") from None
    opts["class_weights"] = cw
    if args.no_augment:
        opts.update(flips=False, contrast=0.0, brightness=0.0)
    return {k: v for k, v in opts.items() if v is not None}


def _cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .core.progress import run_to_completion
    from .core.train import format_report, train_iter

    data = list(args.data) + [tuple(p) for p in args.pair or ()]
    if not data:
        raise CliError("nothing to train on: give training-data folders and/or "
                       "--pair MICROGRAPH LABELS")
    if args.resume:
        gen = train_iter(data, args.out, resume=True, pixel_size_nm=args.pixel_size,
                         **({"epochs": args.epochs} if args.epochs else {}))
    else:
        kind, schema = _kind_schema(args)
        start = args.weights
        gen = train_iter(data, args.out, model=start, kind=kind, schema=schema,
                         architecture=args.architecture, fresh=args.fresh,
                         validation=args.validation or None, name=args.name,
                         pixel_size_nm=args.pixel_size, **_train_options(args))
    bar = None

    def show(ev) -> None:  # one progress bar per epoch, one line when an epoch ends
        nonlocal bar
        if bar is None or ev.step == 1 and not ev.end_of_epoch:
            if bar is not None:
                bar.close()
            bar = tqdm(total=ev.steps, desc=f"epoch {ev.epoch}/{ev.epochs}", unit="step",
                       file=sys.stderr, leave=False, disable=args.quiet)
        if ev.end_of_epoch:
            bar.close()
            star = "  (best so far: saved)" if ev.improved else ""
            print(ev.message + star, flush=True)
        else:
            bar.update(1)
            bar.set_postfix(loss=f"{ev.logs.get('loss', float('nan')):.4f}")

    try:
        result = run_to_completion(gen, show)
    except KeyboardInterrupt:
        gen.close()
        _fail(f"interrupted; the last finished epoch is kept: continue with "
              f"'emgranules train {' '.join(args.data)}"
              f"{''.join(f' --pair {a} {b}' for a, b in args.pair or ())} --out {args.out} --resume'")
        return 130
    finally:
        if bar is not None:
            bar.close()
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    if result.report is not None:
        print("validation IoU per class, starting weights (before) and kept weights (after):")
        print(format_report(result.report))
    averaged = (f", averaged with the starting weights ({result.averaged_with_start:.0%} start)"
                if result.averaged_with_start else "")
    print(f"best {result.monitor} {result.best_value:.4f} at epoch {result.best_epoch}"
          f"{' (the starting weights)' if result.kept_start else ''}{averaged}: "
          f"{result.weights_path} (history: {result.out_dir / 'history.csv'}, "
          f"{result.out_dir / 'history.png'})")
    return EXIT_OK


# -------------------------------------------------------------------------------------------------
# evaluate
# -------------------------------------------------------------------------------------------------
def _cmd_evaluate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .core.evaluation import evaluate_iter
    from .core.models import load_model
    from .core.progress import run_to_completion

    model = load_model(args.weights, args.kind)
    if args.granule_thresholds:
        return _evaluate_thresholds(model, args)
    if args.out:
        from .core.metrics import REPORT_FILES

        existing = [Path(args.out) / f for f in REPORT_FILES if (Path(args.out) / f).exists()]
        if existing and not args.overwrite:
            raise CliError(f"{existing[0]} exists already; use --overwrite or another --out")
    gen = evaluate_iter(model, args.data, mode=args.mode, iou_threshold=args.iou_threshold,
                        predictions_dir=args.predictions)
    with tqdm(unit="image", file=sys.stderr, leave=False, disable=args.quiet) as bar:
        def advance(ev):
            bar.total = ev.total
            bar.set_postfix_str(ev.name)
            bar.update(1)

        report = run_to_completion(gen, advance)
    if args.json:
        print(json.dumps({"summary": report.summary, "notes": report.notes}, indent=2, default=float))
    else:
        print(report.format())
    if args.out:
        written = report.write(args.out, overwrite=args.overwrite)
        print(f"report: {', '.join(str(w) for w in written)}", file=sys.stderr)
    return EXIT_OK


THRESHOLDS_FILE = "thresholds.csv"


def _evaluate_thresholds(model, args: argparse.Namespace) -> int:
    """``evaluate --granule-thresholds``: one table row per threshold, and the best F1."""
    from tqdm import tqdm

    from .core.evaluation import threshold_sweep

    if args.predictions:
        raise CliError("--predictions writes one threshold's label maps: use it without "
                       "--granule-thresholds (with --granule-threshold in segment)")
    try:
        values = [float(v) for v in args.granule_thresholds.split(",") if v.strip()]
    except ValueError:
        raise CliError(f"--granule-thresholds: not numbers: {args.granule_thresholds!r}") from None
    target = Path(args.out) / THRESHOLDS_FILE if args.out else None
    if target is not None and target.exists() and not args.overwrite:
        raise CliError(f"{target} exists already; use --overwrite or another --out")
    with tqdm(unit="image", file=sys.stderr, leave=False, disable=args.quiet) as bar:
        def advance(ev):
            bar.update(1)
        try:
            table = threshold_sweep(model, args.data, values, mode=args.mode,
                                    iou_threshold=args.iou_threshold, progress=advance)
        except ValueError as exc:
            raise CliError(str(exc)) from None
    best = table.loc[table["object_f1"].idxmax()]
    if args.json:
        print(json.dumps({"thresholds": table.to_dict(orient="records"),
                          "best_f1_threshold": float(best["threshold"])}, indent=2, default=float))
    else:
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        print(f"best object F1 {best['object_f1']:.4f} at p >= {best['threshold']:g}: segment and "
              f"batch with --granule-threshold {best['threshold']:g}")
    if target is not None:
        from .core.io import atomic_output

        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(target) as tmp:
            table.to_csv(tmp, index=False)
        print(f"report: {target}", file=sys.stderr)
    return EXIT_OK


# -------------------------------------------------------------------------------------------------
# parsers
# -------------------------------------------------------------------------------------------------
def _add_schema_options(p: argparse.ArgumentParser, required_kind: bool) -> None:
    p.add_argument("--model", dest="kind", choices=("locations", "granules", "new"),
                   required=required_kind,
                   help="which model the labels are for; 'new' for a new task (needs --schema)")
    p.add_argument("--schema", metavar="NAME|NAMES|FILE",
                   help="the classes: 'locations-mito' (Locations with mitochondria apart from "
                        "the Z disk, code 7), or for a new task comma-separated names, code 0 "
                        "first (e.g. background,membrane), or a schema JSON file")
    p.add_argument("--task", metavar="NAME", help="name of a new task (default: custom)")


def add_parsers(sub) -> None:
    """Add the export, train and evaluate sub-commands."""
    from .core.models import INPUT_SCALINGS  # no Keras: the models module imports it lazily

    exp = sub.add_parser("export", help="micrograph + label map -> training pairs (never overwrites)")
    exp.add_argument("image", metavar="IMAGE", help="the micrograph")
    exp.add_argument("--labels", required=True, metavar="FILE",
                     help="its label map (e.g. corrected Locations or Granules labels)")
    exp.add_argument("--out", required=True, help="training-data folder (images/, labels/, "
                                                  "manifest.csv); existing pairs are kept")
    _add_schema_options(exp, required_kind=False)
    exp.add_argument("--tiles", default="all", help="'all' or tile numbers (row-major from 0), "
                                                    "e.g. 0,3,5")
    exp.add_argument("--tile-size", type=int, default=1024, metavar="PX",
                     help="tile side (default 1024, as the original tool)")
    exp.add_argument("--only-changed-from", metavar="FILE",
                     help="export only tiles whose labels differ from this map (e.g. the model's "
                          "prediction before corrections)")
    exp.add_argument("--labelled", default="full", choices=("full", "changed"),
                     help="which pixels are truth: 'full' (every pixel of the exported tiles) or "
                          "'changed' (only pixels that differ from --only-changed-from, plus "
                          "--reviewed); the others are written as unlabelled (65535). Labels that "
                          "already hold 65535 (strokes) are partial as they are")
    exp.add_argument("--reviewed", metavar="MASK",
                     help="with --labelled changed: an image whose non-zero pixels the user checked "
                          "and accepted as they are")
    exp.add_argument("--made-by", default="corrected",
                     help="who or what made the labels, recorded in the manifest")
    exp.add_argument("--pixel-size", type=float, metavar="NM",
                     help="pixel size when the image's metadata has none")
    exp.add_argument("--format", default="png", choices=("png", "tif"), help="file format")
    exp.add_argument("--segment-map", metavar="NAME=CODE,...",
                     help="3D Slicer .seg.nrrd labels: segment names to class codes, over the "
                          "default names (A-band, I-band, Z-disc, mitochondria, intermyofibrillar, "
                          "subsarcolemmal, glycogen, ...)")
    exp.set_defaults(func=_cmd_export)

    tr = sub.add_parser("train", help="train or fine-tune a model on training pairs")
    tr.add_argument("data", nargs="*", metavar="DATA",
                    help="training-data folders (each with images/ and labels/)")
    tr.add_argument("--pair", nargs=2, action="append", metavar=("MICROGRAPH", "LABELS"),
                    help="a whole micrograph and its label map (65535 = unlabelled), no export "
                         "needed; repeat for more")
    tr.add_argument("--pixel-size", type=float, metavar="NM",
                    help="pixel size of --pair micrographs whose files give none")
    tr.add_argument("--out", required=True,
                    help="run folder: best weights, history.csv/png, checkpoint")
    _add_schema_options(tr, required_kind=False)
    tr.add_argument("--weights", metavar="FILE",
                    help="start from these weights (default: the bundled model when trained)")
    tr.add_argument("--fresh", action="store_true", help="start from random weights")
    tr.add_argument("--architecture", choices=("unet_model7", "unet_model"),
                    help="network of a fresh model (default: Locations' for locations, else "
                         "Granules')")
    tr.add_argument("--name", help="weights file stem (default: the model kind)")
    tr.add_argument("--validation", nargs="+", metavar="DIR",
                    help="validation-pair folders (default: --val-fraction of DATA)")
    tr.add_argument("--epochs", type=int, help="epochs in total (default 50)")
    tr.add_argument("--batch-size", type=int, help="crops per step (default 2)")
    tr.add_argument("--crop", type=int, help="crop side, a multiple of 128 (default 512)")
    tr.add_argument("--steps-per-epoch", type=int,
                    help="default: enough crops to cover the training pixels once, at least 8 "
                         "when fine-tuning and 50 from scratch")
    tr.add_argument("--optimizer", choices=("nadam", "adam"),
                    help="default nadam from scratch, adam when fine-tuning")
    tr.add_argument("--lr", type=float, help="learning rate (default 2e-3 from scratch; fine-tuning "
                    "5e-5 Locations, 5e-4 others)")
    tr.add_argument("--clip-norm", type=float, metavar="N",
                    help="clip the gradient's global norm (e.g. 1.0; steadies training from scratch)")
    tr.add_argument("--class-weights", metavar="none|balanced|prior|W,W,...",
                    help="per-class loss weights (default none); prior: when fine-tuning on "
                         "partial labels (strokes), count the labelled pixels with the class mix "
                         "the starting model finds on the whole images")
    tr.add_argument("--validation-mix", choices=("auto", "labelled", "start"),
                    help="count validation pixels as labelled, or in the class mix the starting "
                         "model finds on the whole images (start); auto (default): start when "
                         "fine-tuning on partial labels (strokes) or with --class-weights prior")
    tr.add_argument("--average-with-start", type=float, metavar="S",
                    help="when fine-tuning, keep the average of the best epoch's and the starting "
                         "weights, S of it from the start (0 = the best epoch as it is; default "
                         "0.5 for Locations, 0 for others)")
    tr.add_argument("--start-labels", type=float, metavar="W",
                    help="when fine-tuning on partial labels (strokes, corrected pixels), the "
                         "starting model's sure predictions of the unlabelled pixels train too, "
                         "each weighing W against a labelled pixel (0 = off; default 0.1 for "
                         "Granules, 0 for others)")
    tr.add_argument("--dice", type=float, help="weight of a soft-Dice loss term (default 0)")
    tr.add_argument("--val-fraction", type=float,
                    help="share held out for validation (default 0.2)")
    tr.add_argument("--validation-split", choices=("auto", "blocks", "pairs"),
                    help="hold out a strip of each micrograph (blocks) or whole pairs; auto "
                         "(default): blocks with fewer than 5 micrographs")
    tr.add_argument("--monitor", choices=("val_mean_iou", "val_accuracy", "val_loss", "loss"),
                    help="metric choosing the best epoch (default val_mean_iou)")
    tr.add_argument("--patience", type=int, help="early stopping patience in epochs (default 10)")
    tr.add_argument("--freeze-encoder", action="store_true", help="train the decoder only")
    tr.add_argument("--rotate90", action=argparse.BooleanOptionalAction, default=None,
                    help="also augment by quarter turns (default: on from scratch, off when "
                         "fine-tuning)")
    tr.add_argument("--scale-jitter", type=float, metavar="S", help="random zoom in [1-S, 1+S]")
    tr.add_argument("--elastic", type=float, metavar="PX",
                    help="random elastic deformation: displacements of this spread (crop pixels) on "
                         "a 3x3 grid, as in the original U-Net (0 = off, the default)")
    tr.add_argument("--rehearsal", type=float, metavar="F",
                    help="when fine-tuning Locations or Granules: share of the crops taken from "
                         "synthetic micrographs, so a few micrographs do not make the model forget "
                         "(default 0)")
    tr.add_argument("--rehearsal-look", choices=("matched", "random"),
                    help="rehearsal micrographs in the training data's grey levels per class "
                         "(matched, default) or in the generator's random looks")
    tr.add_argument("--rehearsal-validation", action=argparse.BooleanOptionalAction, default=None,
                    help="with rehearsal: also validate on 2 synthetic micrographs in the data's look "
                         "(best epoch by the mean of both mean IoUs; on by default)")
    tr.add_argument("--max-class-loss", type=float, default=0.05, metavar="IOU",
                    help="when fine-tuning, keep an epoch only if no class lost more than this IoU "
                         "on the validation data against the starting model (default 0.05; 1 = off)")
    tr.add_argument("--held-out-floor", action=argparse.BooleanOptionalAction, default=None,
                    help="with rehearsal validation: keep an epoch only if it scores at least the "
                         "starting model on your own held-out data (on by default)")
    tr.add_argument("--no-augment", action="store_true",
                    help="no flips, contrast or brightness changes")
    tr.add_argument("--random-seed", "--seed", dest="seed", type=int, help="random seed (default 0)")
    tr.add_argument("--max-minutes", type=float, metavar="MIN",
                    help="time budget: start no epoch after MIN minutes (the best weights are kept)")
    tr.add_argument("--input-scaling", choices=INPUT_SCALINGS,
                    help="how the trained model scales its input (default: the starting model's): "
                         "dtype-range as the original networks, or percentile (each micrograph "
                         "stretched by its own grey levels)")
    tr.add_argument("--keep-epochs", action="store_true",
                    help="also keep every epoch's weights in OUT/epochs/ (the best weights are "
                         "kept either way)")
    tr.add_argument("--resume", action="store_true",
                    help="continue the run in --out from its last finished epoch")
    tr.add_argument("--quiet", action="store_true", help="no progress bars")
    tr.set_defaults(func=_cmd_train)

    ev = sub.add_parser("evaluate", help="accuracy of weights on training pairs (per image, "
                                         "per class, objects)")
    ev.add_argument("weights", metavar="WEIGHTS")
    ev.add_argument("data", nargs="+", metavar="DATA", help="pair folders (images/, labels/)")
    ev.add_argument("--model", "--kind", dest="kind", choices=("locations", "granules"),
                    help="what the weights are, when they have no sidecar (the same --model as "
                         "train and export-model; --kind is the old spelling)")
    ev.add_argument("--out", metavar="DIR", help="write per_image.csv, summary.csv, confusion "
                                                 "matrices and accuracies.txt here")
    ev.add_argument("--predictions", metavar="DIR", help="also write the predicted label maps")
    ev.add_argument("--mode", default="auto", choices=MODES)
    ev.add_argument("--iou-threshold", type=float, default=0.5,
                    help="IoU for an object (granule) match (default 0.5)")
    ev.add_argument("--granule-thresholds", metavar="P,P,...",
                    help="a two-class model (Granules): score each probability threshold (e.g. "
                         "0.3,0.5,0.7; 0.5 = the arg-max) and name the best F1, to choose "
                         "segment's --granule-threshold on corrected pairs; --out gets "
                         f"{THRESHOLDS_FILE}")
    ev.add_argument("--json", action="store_true", help="print the summary as JSON")
    ev.add_argument("--overwrite", action="store_true", help="replace report files in --out")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(func=_cmd_evaluate)

