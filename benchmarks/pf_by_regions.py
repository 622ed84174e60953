"""Where a region's pf error comes from: the regions or the granules.

    python benchmarks/pf_by_regions.py --family heldout-grainy \
        --compare full1=WORK/heldout-grainy/full1-granules/granules.weights.h5

On the test micrographs of ``benchmarks/adaptation.py`` (2048 x 2048 at 0.8 nm/px, seeds 310000
upward, one appearance family), every Granules model (the bundled default as ``start``, plus each
``--compare NAME=WEIGHTS``) segments with the bundled Locations model. Per micrograph and region
(A, I, Z, S, N) it prints the true pixel fraction (pf), the pf measured in the *predicted* regions
(what a user gets) and the pf of the same granules in the *true* regions. When the second is
right and the first is not, the error is Locations', not Granules'. Markdown on stdout.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings

from adaptation import SEED_TEST  # a sibling module of benchmarks/

from napari_emgranules.core.metrics import region_pixel_fractions
from napari_emgranules.core.models import default_model, load_model
from napari_emgranules.core.segment import segment_micrograph
from napari_emgranules.core.synthetic import HELDOUT_FAMILIES, family_params, synthetic_micrograph

REGIONS = "AIZSN"


def _fmt(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.4f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", default=HELDOUT_FAMILIES[0])
    ap.add_argument("--test", type=int, default=4, help="test micrographs")
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--compare", action="append", default=[], metavar="NAME=WEIGHTS",
                    help="another Granules model (repeatable)")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    granules = {"start": default_model("granules")}
    for spec in args.compare:
        name, _, path = spec.partition("=")
        if not (name and path):
            ap.error(f"--compare {spec!r}: give NAME=WEIGHTS")
        granules[name] = load_model(path, "granules")
    locations = default_model("locations")
    print(f"# pf per region, {args.family}: true, in the predicted regions, in the true regions\n")
    print("| micrograph | granules | " + " | ".join(
        f"{r} true / predicted regions / true regions" for r in REGIONS) + " |")
    print("|---|---|" + "---|" * len(REGIONS))
    for i in range(args.test):
        t = synthetic_micrograph((args.size, args.size), 0.8, seed=SEED_TEST + i,
                                 params=family_params(args.family))
        for name, model in granules.items():
            seg = segment_micrograph(t.image, 0.8, locations_model=locations, granules_model=model)
            pred = region_pixel_fractions(seg.locations, seg.granules)
            in_true = region_pixel_fractions(t.locations, seg.granules)
            cells = [f"{_fmt(t.true_pixel_fractions.get(r, math.nan))} / {_fmt(pred[r])} / "
                     f"{_fmt(in_true[r])}" for r in REGIONS]
            print(f"| {SEED_TEST + i} | {name} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
