"""What the default models do on real EM: the shared cardiac micrographs with mitochondria masks.

    python benchmarks/real_em.py                                   # the bundled defaults
    python benchmarks/real_em.py --compare old=runs/old            # also weights in runs/old/

There is no labelled real skeletal-muscle EM here, so this is a check, not a target: on the five
real cardiac micrographs of ``../shared/data/emnet-cardiac`` (about 12.5 nm/px; MIT licence, see
its README) the Locations model should put the mitochondria in class 3 (Z disk + mitochondria) and
band the myofibrils into A and I, and its confidence should be low where it is wrong. Reported per
model set: mitochondria recall, precision and IoU as class 3, the share of the image in each class,
mean confidence, and the calibration measures against the mitochondria mask (a pixel counts as
wrong when class 3 and the mask disagree). Pictures: ``docs/real_em.png`` (micrograph, mask, each
model set's labels and confidence). Reports: ``docs/real_em.md`` and ``.json``, written atomically.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from _report import run_header, save_figure, write_report  # a sibling module of benchmarks/

from napari_emgranules.core.calibration import calibration_measures
from napari_emgranules.core.io import read_labels, read_micrograph
from napari_emgranules.core.metrics import confusion_matrix, iou_per_class
from napari_emgranules.core.models import default_model, load_model
from napari_emgranules.core.schema import LOCATIONS_SCHEMA
from napari_emgranules.core.segment import segment_micrograph

ROOT = Path(__file__).resolve().parent.parent
CARDIAC = ROOT.parent / "shared" / "data" / "emnet-cardiac"
PIXEL_NM = 12.5
Z_CODE = 3


def models_of(spec: str | None):
    """The Locations model of a folder (``<dir>/locations.weights.h5``) or the bundled default."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if spec is None:
            return default_model("locations")
        return load_model(Path(spec) / "locations.weights.h5", "locations")


def _relative(path: str | None) -> str:
    """A weights path relative to the repository (no machine's paths in the docs)."""
    if not path:
        return "bundled"
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return Path(path).name


def run_set(name: str, model, pairs) -> tuple[dict[str, Any], list]:
    cm = np.zeros((2, 2), np.int64)
    shares = np.zeros(LOCATIONS_SCHEMA.n_classes, np.int64)
    conf_all, ok_all, shown = [], [], []
    t0 = time.perf_counter()
    for image, truth in pairs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seg = segment_micrograph(image, PIXEL_NM, models={"locations": model}, confidence=True)
        loc = seg.labels["locations"]
        z = (loc == Z_CODE).astype(np.uint8)
        cm += confusion_matrix(truth, z, 2)
        shares += np.bincount(loc.ravel(), minlength=LOCATIONS_SCHEMA.n_classes)
        conf = seg.confidence["locations"]
        conf_all.append(conf.ravel()[::7])
        ok_all.append((z == truth).ravel()[::7])
        shown.append((loc, conf))
    conf, ok = np.concatenate(conf_all), np.concatenate(ok_all)
    tp, fn, fp = cm[1, 1], cm[1, 0], cm[0, 1]
    result = {
        "name": name, "weights": _relative(model.card.provenance.get("source")),
        "input_scaling": model.card.input_scaling, "temperature": model.card.temperature,
        "mito_recall_as_class_3": float(tp / max(1, tp + fn)),
        "class_3_precision": float(tp / max(1, tp + fp)),
        "mito_iou_as_class_3": float(iou_per_class(cm)[1]),
        "class_shares": {LOCATIONS_SCHEMA.letters[c]: float(shares[c] / shares.sum())
                         for c in range(LOCATIONS_SCHEMA.n_classes)},
        "mean_confidence": float(conf.mean()),
        "calibration_vs_mito_mask": calibration_measures(conf, ok),
        "seconds": time.perf_counter() - t0,
    }
    return result, shown


def render(pairs, sets: list[tuple[str, list]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    cmap = ListedColormap([LOCATIONS_SCHEMA.colors()[c] for c in range(LOCATIONS_SCHEMA.n_classes)])
    rows = min(2, len(pairs))
    cols = 2 + 2 * len(sets)
    fig = Figure(figsize=(3.2 * cols, 3.4 * rows), dpi=70)
    axes = np.atleast_2d(fig.subplots(rows, cols))
    for r in range(rows):
        image, truth = pairs[r]
        axes[r, 0].imshow(image.data, cmap="gray")
        axes[r, 0].set_title("real cardiac EM", fontsize=9)
        axes[r, 1].imshow(image.data, cmap="gray")
        axes[r, 1].contour(truth, levels=[0.5], colors="yellow", linewidths=0.6)
        axes[r, 1].set_title("mitochondria mask", fontsize=9)
        for k, (name, shown) in enumerate(sets):
            loc, conf = shown[r]
            axes[r, 2 + 2 * k].imshow(loc, cmap=cmap, vmin=0, vmax=LOCATIONS_SCHEMA.n_classes - 1,
                                      interpolation="nearest")
            axes[r, 2 + 2 * k].set_title(f"{name}: Locations (blue = 3)", fontsize=9)
            axes[r, 3 + 2 * k].imshow(conf, cmap="magma", vmin=0, vmax=1)
            axes[r, 3 + 2 * k].set_title(f"{name}: confidence (dark = unsure)", fontsize=9)
    save_figure(fig, path)


def markdown(report: dict[str, Any]) -> str:
    lines = ["# The default Locations model on real EM (cardiac muscle, mitochondria masks)", "",
             f"Generated by `{report['command']}` on {report['generated']} ({report['cpus']} CPUs, "
             f"Python {report['python']}). Do not edit by hand: rerun the command.", "",
             "Data: the five labelled micrographs of `../shared/data/emnet-cardiac` (real cardiac "
             "muscle EM, MIT licence), segmented at 12.5 nm/px (from the sarcomere period). No "
             "target: there is no labelled real skeletal-muscle EM here. Class 3 is Z disk + "
             "mitochondria, so its recall of the mask is the fair number; its precision is lowered "
             "by the Z disks it also holds. Calibration: a pixel is wrong when class 3 and the mask "
             "disagree.", "",
             "| model set | input scaling | T | mito recall as 3 | class-3 precision | IoU | "
             "A | I | Z | S | N | U+O | mean confidence | ECE | wrong in least sure 10% |",
             "|" + "---|" * 15]
    for r in report["sets"]:
        sh = r["class_shares"]
        cal = r["calibration_vs_mito_mask"]
        lines.append(
            f"| {r['name']} | {r['input_scaling']} | {r['temperature']:.2f} | "
            f"{r['mito_recall_as_class_3']:.3f} | {r['class_3_precision']:.3f} | "
            f"{r['mito_iou_as_class_3']:.3f} | " + " | ".join(f"{sh[k]:.2f}" for k in "AIZSN")
            + f" | {sh['U'] + sh['O']:.2f} | {r['mean_confidence']:.3f} | {cal['ece']:.3f} | "
            f"{cal['wrong_in_least_confident']:.3f} |")
    lines += ["", "![real cardiac EM: the mask, and each model set's labels and confidence]"
              "(real_em.png)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compare", action="append", default=[], metavar="NAME=DIR",
                    help="also a Locations model from DIR/locations.weights.h5 (repeatable)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "real_em.md")
    args = ap.parse_args(argv)
    images = sorted((CARDIAC / "images").glob("*.tif"))
    if not images:
        print(f"{CARDIAC}: no micrographs found", file=sys.stderr)
        return 1
    pairs = [(read_micrograph(p, PIXEL_NM), (read_labels(CARDIAC / "labels" / p.name) > 0).astype(np.uint8))
             for p in images]
    specs = [("bundled default", None)] + [tuple(c.split("=", 1)) for c in args.compare]
    results, shown = [], []
    for name, spec in specs:
        result, pictures = run_set(name, models_of(spec), pairs)
        print(json.dumps({k: v for k, v in result.items() if k != "class_shares"}), flush=True)
        results.append(result)
        shown.append((name, pictures))
    report = {**run_header("real_em.py", argv), "pixel_size_nm": PIXEL_NM, "sets": results}
    render(pairs, shown, args.out.with_suffix(".png"))
    write_report(args.out, report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
