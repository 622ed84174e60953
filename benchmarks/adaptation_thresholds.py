"""Granule object F1 at several probability thresholds, for the Granules runs of ``adaptation.py``.

    python benchmarks/adaptation_thresholds.py --work runs/adapt
    python benchmarks/adaptation_thresholds.py --work runs/adapt --families heldout-grainy \
        --steps start,strokes2 --thresholds 0.5,0.8

For each held-out family and step, the Granules model that ``benchmarks/adaptation.py --work DIR``
fine-tuned (``DIR/<family>/<step>-granules``; ``start`` = the bundled default) segments the
family's test micrographs (same seeds and size as there) once per threshold, as ``segment
--granule-threshold`` does, and the pooled object F1 (IoU >= 0.5) is printed with the numbers of
predicted and true granules. It answers whether a threshold, rather than the trainer's choice of
epoch, would have fixed a run (docs/adaptation.md).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from adaptation import SEED_TEST

from napari_emgranules.core.metrics import match_objects
from napari_emgranules.core.models import default_model, load_model
from napari_emgranules.core.segment import segment_micrograph
from napari_emgranules.core.synthetic import HELDOUT_FAMILIES, family_params, synthetic_micrograph


def f1_at(model, tests, threshold: float) -> tuple[float, int, int]:
    """Pooled object F1, predicted and true granule counts at one threshold."""
    net = model.with_threshold(threshold)
    tp = n_true = n_pred = 0
    for t in tests:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seg = segment_micrograph(t.image, t.pixel_size_nm, models={"granules": net})
        m = match_objects(t.granules == 1, seg.labels["granules"] == 1, iou_threshold=0.5)
        tp, n_true, n_pred = tp + m.tp, n_true + m.n_true, n_pred + m.n_pred
    return 2 * tp / max(1, n_true + n_pred), n_pred, n_true


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="the --work folder of adaptation.py")
    ap.add_argument("--families", default=",".join(HELDOUT_FAMILIES))
    ap.add_argument("--steps", default="start,full1,full2,full4,strokes1,strokes2,strokes4")
    ap.add_argument("--thresholds", default="0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9")
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--test", type=int, default=4, help="test micrographs per family")
    args = ap.parse_args(argv)
    thresholds = [float(v) for v in args.thresholds.split(",") if v.strip()]
    print("| family | step | " + " | ".join(f"p>={t:g}" for t in thresholds) + " |")
    print("|---|---|" + "---|" * len(thresholds))
    for family in args.families.split(","):
        tests = [synthetic_micrograph((args.size,) * 2, 0.8, seed=SEED_TEST + i,
                                      params=family_params(family)) for i in range(args.test)]
        for step in args.steps.split(","):
            weights = args.work / family / f"{step}-granules" / "granules.weights.h5"
            if step != "start" and not weights.is_file():
                print(f"| {family} | {step} | (no run at {weights}) |", flush=True)
                continue
            model = default_model("granules") if step == "start" else load_model(weights)
            cells = [f1_at(model, tests, t) for t in thresholds]
            print(f"| {family} | {step} | " + " | ".join(f"{f:.3f} ({p}/{n})" for f, p, n in cells)
                  + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
