"""Granules fine-tuned on strokes: class weights and validation mix.

    python benchmarks/stroke_prior.py                  # both held-out families, prints a table
    python benchmarks/stroke_prior.py --families heldout-grainy --epochs 10

Strokes hold far more granule pixels than a micrograph does (about 20% of the labelled pixels
against 3%), so a model fine-tuned on them as they are learns to paint granules generously.
``--class-weights prior`` counts the labelled pixels with the class mix the starting model finds
on the whole training images; ``--validation-mix auto`` (the default) scores the held-out strip in
that mix, ``labelled`` as painted (the trainer before 2026-12-06). For each held-out family this
takes the first training micrograph of ``benchmarks/adaptation.py`` and its granule strokes (same
seeds, same stroke draws), fine-tunes the bundled Granules model with ``emgranules train --pair ...
--epochs N`` once per setting, and scores granule object F1 (IoU >= 0.5) on the family's first
``--n-test`` test micrographs, with the counts of true and predicted granules.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
from adaptation import SEED_TEST, SEED_TRAIN, cli_train, granule_strokes, strokes

from napari_emgranules.core.io import write_image, write_labels
from napari_emgranules.core.metrics import match_objects
from napari_emgranules.core.models import default_model, load_model
from napari_emgranules.core.segment import segment_micrograph
from napari_emgranules.core.synthetic import HELDOUT_FAMILIES, family_params, synthetic_micrograph


def granule_scores(model, tests) -> tuple[float, int, int]:
    """Pooled object F1, true and predicted granule counts over the test micrographs."""
    tp = n_true = n_pred = 0
    for t in tests:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seg = segment_micrograph(t.image, t.pixel_size_nm, granules_model=model, kinds=("granules",))
        m = match_objects(t.granules == 1, seg.granules == 1, iou_threshold=0.5)
        tp, n_true, n_pred = tp + m.tp, n_true + m.n_true, n_pred + m.n_pred
    return 2 * tp / max(1, n_true + n_pred), n_true, n_pred


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default=",".join(HELDOUT_FAMILIES))
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--n-test", type=int, default=2)
    ap.add_argument("--size", type=int, default=2048, help="micrograph side (px, 0.8 nm/px)")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families.split(","):
            params = family_params(family)
            train = synthetic_micrograph((args.size,) * 2, 0.8, seed=SEED_TRAIN, params=params)
            tests = [synthetic_micrograph((args.size,) * 2, 0.8, seed=SEED_TEST + i, params=params)
                     for i in range(args.n_test)]
            rng = np.random.default_rng(7)  # the draws adaptation.py makes for its first micrograph
            strokes(train.locations.astype(np.uint16), rng)
            stroked = granule_strokes(train.granules, rng)
            d = Path(tmp) / family
            d.mkdir()
            write_image(d / "image.tif", train.image, pixel_size_nm=0.8)
            write_labels(d / "strokes.tif", stroked)
            labelled = stroked != 65535
            share = float((stroked[labelled] == 1).mean())
            f1, n_true, n_pred = granule_scores(default_model("granules"), tests)
            rows.append((family, "start (bundled)", f1, n_true, n_pred, "-"))
            for mode, mix in (("none", "labelled"), ("none", "auto"), ("prior", "auto")):
                run = cli_train([(d / "image.tif", d / "strokes.tif")], "granules", d / f"{mode}-{mix}",
                                ["--epochs", str(args.epochs), "--class-weights", mode,
                                 "--validation-mix", mix])
                f1, n_true, n_pred = granule_scores(load_model(run["weights"]), tests)
                rows.append((family, f"strokes, --class-weights {mode} --validation-mix {mix}", f1,
                             n_true, n_pred, f"{run['cpu_s'] / 60:.1f}"))
            print(f"{family}: granule share of the labelled pixels {share:.1%}, of the micrograph "
                  f"{float((train.granules == 1).mean()):.1%}", flush=True)
    print("\n| family | model | granule F1 | true | predicted | CPU min |\n|---|---|---|---|---|---|")
    for family, what, f1, n_true, n_pred, cpu in rows:
        print(f"| {family} | {what} | {f1:.3f} | {n_true} | {n_pred} | {cpu} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
