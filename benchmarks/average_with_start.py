"""Fine-tuned weights averaged with the starting weights, scored on micrographs they did not see.

    python benchmarks/average_with_start.py --work runs/adapt-old --kind locations
    python benchmarks/average_with_start.py --work runs/adapt --kind granules --shares 0,0.5

Takes the runs that ``benchmarks/adaptation.py --work DIR`` fine-tuned from the bundled defaults
(``DIR/<family>/<step>-<kind>``; run with ``--train-args '--average-with-start 0'`` so that their
kept weights are the best epoch's as they are), mixes each with the bundled starting weights,
``share x start + (1 - share) x kept`` for every ``--shares`` value (0 = the run as it is, 1 = the
start), and scores the family's test micrographs as adaptation.py does: Locations mean IoU over
A, I, Z, S, N with each class's IoU, or granule object F1. This is what ``emgranules train
--average-with-start`` does at the end of a run (``TrainConfig.average_with_start``), so it says
which share to make the default of each kind.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adaptation import SEED_TEST, score
from adaptation_thresholds import f1_at

from napari_emgranules.core.models import SegmentationModel, default_model, load_model
from napari_emgranules.core.synthetic import HELDOUT_FAMILIES, family_params, synthetic_micrograph


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="the --work folder of adaptation.py")
    ap.add_argument("--kind", choices=("locations", "granules"), default="locations")
    ap.add_argument("--families", default=",".join(HELDOUT_FAMILIES))
    ap.add_argument("--steps", default="full1,full2,full4,strokes1,strokes2,strokes4")
    ap.add_argument("--shares", default="0,0.5,1", help="shares of the starting weights")
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--test", type=int, default=4, help="test micrographs per family")
    args = ap.parse_args(argv)
    shares = [float(v) for v in args.shares.split(",") if v.strip()]
    start = default_model(args.kind)
    start_weights = start.keras_model.get_weights()
    print(f"| family | step | {args.kind}: " + " | ".join(f"start share {s:g}" for s in shares) + " |")
    print("|---|---|" + "---|" * len(shares))
    for family in args.families.split(","):
        tests = [synthetic_micrograph((args.size,) * 2, 0.8, seed=SEED_TEST + i,
                                      params=family_params(family)) for i in range(args.test)]
        for step in args.steps.split(","):
            weights = args.work / family / f"{step}-{args.kind}" / f"{args.kind}.weights.h5"
            if not weights.is_file():
                print(f"| {family} | {step} | (no run at {weights}) |", flush=True)
                continue
            tuned = load_model(weights)
            kept = tuned.keras_model.get_weights()
            cells = []
            for share in shares:
                tuned.keras_model.set_weights([share * a + (1 - share) * b
                                               for a, b in zip(start_weights, kept, strict=True)])
                model = SegmentationModel(tuned.keras_model, tuned.card)
                if args.kind == "granules":
                    f1, n_pred, n_true = f1_at(model, tests, 0.5)
                    cells.append(f"{f1:.3f} ({n_pred}/{n_true})")
                else:
                    r = score(tests, model, default_model("granules"))
                    per = " ".join(f"{k} {v:.2f}" for k, v in r["iou"].items())
                    cells.append(f"{r['locations_miou']:.3f} ({per})")
            print(f"| {family} | {step} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
