"""Which fine-tuning recipe learns a new look from one corrected micrograph: a measured choice.

    python benchmarks/recipe_sweep.py                                   # the variants below
    python benchmarks/recipe_sweep.py --family heldout-lowcontrast --kind granules \
        --variant base= --variant lr1e-3="--lr 1e-3"

One micrograph (2048x2048 at 0.8 nm/px) of a held-out appearance family is "fully corrected" (its
truth), each variant fine-tunes the bundled model on it with ``emgranules train --pair ...`` plus the
variant's options under the same time budget, and the result is scored on two other micrographs of
the family (Locations mean IoU over A I Z S N with per-region IoU, granule object F1, max |pf
error|; see ``benchmarks/adaptation.py``). One seed per variant: differences of a few hundredths
are noise. Runs one training at a time (a second one would take CPU from the first).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

from adaptation import cli_train, score

from napari_emgranules.core.io import write_image, write_labels
from napari_emgranules.core.models import default_model, load_model
from napari_emgranules.core.synthetic import family_params, synthetic_micrograph

VARIANTS = {
    "base": "",  # the command line's defaults
    "lr2e-3": "--lr 2e-3",
    "balanced": "--class-weights balanced",
    "balanced-lr1e-3": "--class-weights balanced --lr 1e-3",
    "rot-zoom": "--rotate90 --scale-jitter 0.2",
    "frozen-lr1e-3": "--freeze-encoder --lr 1e-3",
    "rehearsal": "--rehearsal 0.5",  # generator micrographs in the user's grey levels per class
    "rehearsal-random": "--rehearsal 0.5 --rehearsal-look random",
    "rehearsal-rot": "--rehearsal 0.5 --rotate90",
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="heldout-grainy")
    ap.add_argument("--kind", default="locations", choices=("locations", "granules"))
    ap.add_argument("--variant", action="append", metavar="NAME=OPTIONS",
                    help="a variant (repeatable); default: the built-in list")
    ap.add_argument("--max-minutes", default="5")
    args = ap.parse_args(argv)
    variants = dict(v.split("=", 1) for v in args.variant) if args.variant else VARIANTS
    params = family_params(args.family)
    train = synthetic_micrograph((2048, 2048), 0.8, seed=300_000, params=params)
    test = [synthetic_micrograph((2048, 2048), 0.8, seed=310_000 + i, params=params) for i in range(2)]
    with tempfile.TemporaryDirectory(prefix="recipes-") as tmp:
        work = Path(tmp)
        write_image(work / "m.tif", train.image, pixel_size_nm=0.8)
        write_labels(work / "labels.tif", train.locations if args.kind == "locations" else train.granules)
        print("| variant | options | minutes | Locations mIoU | IoU A / I / Z / S / N | granule F1 | "
              "max abs pf error |\n|---|---|---|---|---|---|---|", flush=True)
        start = score(test, default_model("locations"), default_model("granules"))
        ious = " / ".join(f"{v:.2f}" for v in start["iou"].values())
        print(f"| start (bundled) | | - | {start['locations_miou']:.3f} | {ious} "
              f"| {start['granule_f1']:.3f} | {start['max_pf_error']:.3f} |", flush=True)
        for name, options in variants.items():
            run = cli_train([(work / "m.tif", work / "labels.tif")], args.kind, work / name,
                            ["--max-minutes", args.max_minutes, *shlex.split(options)])
            tuned = load_model(run["weights"])
            other = default_model("granules" if args.kind == "locations" else "locations")
            r = score(test, *((tuned, other) if args.kind == "locations" else (other, tuned)))
            ious = " / ".join(f"{v:.2f}" for v in r["iou"].values())
            print(f"| {name} | `{options}` | {run['wall_s'] / 60:.1f} | {r['locations_miou']:.3f} | {ious} "
                  f"| {r['granule_f1']:.3f} | {r['max_pf_error']:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
