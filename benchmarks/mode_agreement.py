"""How closely does ``tiled`` inference agree with ``whole``? (and ``seed`` with ``whole``)

For a synthetic micrograph, runs each model whole and tiled with several window/halo settings and
reports: the fraction of pixels with the same label, overall and (more than 256 px from the edge)
where the whole pass's top two classes differ by more than 0.01; the mean and 99.9th percentile of
the absolute difference in class probabilities, and its maximum more than 256 px from the edge; and
the label agreement of the seed's non-overlapping tiles.

    python benchmarks/mode_agreement.py --size 2048 --windows 512,1024 --halos 128,256 \
        --json docs/mode_agreement.json

Weights: the bundled defaults, or ``--locations-weights`` / ``--granules-weights``. Each network
gets the micrograph scaled as its card says (``input_scaling``) on the micrograph's own grid (the
question is how windows agree with one pass, which does not depend on the pixel size).
"""

from __future__ import annotations

import argparse
import json
import warnings

import numpy as np

from napari_emgranules.core.models import load_model
from napari_emgranules.core.segment import (
    _predict_seed,
    _predict_tiled,
    input_scaler,
    run_to_completion,
)
from napari_emgranules.core.synthetic import synthetic_micrograph
from napari_emgranules.core.tiling import TilePlan, pad_to_multiple


def compare(model, x: np.ndarray, windows, halos) -> list[dict]:
    padded, crop = pad_to_multiple(x, 128)
    logits = model.predict_logits(padded[None])[0][crop]
    logits = logits / model.card.temperature  # the calibrated probabilities tiled mode blends
    whole = np.exp(logits - logits.max(-1, keepdims=True))
    whole /= whole.sum(-1, keepdims=True)
    wl = whole.argmax(-1)
    top2 = np.sort(whole, -1)
    decided = (top2[..., -1] - top2[..., -2]) > 0.01  # pixels whose label is not a near-tie
    edge = min(256, min(x.shape) // 4)  # "interior": more than this from the image edge
    inner = (slice(edge, -edge), slice(edge, -edge))
    rows = []
    for window in windows:
        for halo in halos:
            try:
                plan = TilePlan.for_image(x.shape, window, halo)
            except ValueError:
                continue
            tiled = np.exp(run_to_completion(_predict_tiled(model, x, plan, 1, want_scores=True))[0])
            diff = np.abs(tiled - whole).max(-1)
            rows.append({"model": model.kind, "mode": "tiled", "window": window, "halo": halo,
                         "windows": plan.n_windows,
                         "label_agreement": float((tiled.argmax(-1) == wl).mean()),
                         "mean_abs_prob_diff": float(diff.mean()),
                         "p999_abs_prob_diff": float(np.quantile(diff, 0.999)),
                         "interior_max_abs_prob_diff": float(diff[inner].max()),
                         "interior_label_agreement_where_margin_gt_0.01": float(
                             (tiled.argmax(-1) == wl)[inner][decided[inner]].mean()),
                         "interior_pixels_with_margin_gt_0.01": float(decided[inner].mean())})
    labels, _ = run_to_completion(_predict_seed(model, x, 1))
    rows.append({"model": model.kind, "mode": "seed", "window": 1024, "halo": 0,
                 "label_agreement": float((labels == wl).mean())})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--windows", default="512,1024")
    ap.add_argument("--halos", default="64,128,256")
    ap.add_argument("--locations-weights")
    ap.add_argument("--granules-weights")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="also write the rows to this JSON file")
    args = ap.parse_args()
    s = synthetic_micrograph((args.size, args.size), seed=args.seed)
    windows = [int(w) for w in args.windows.split(",")]
    halos = [int(h) for h in args.halos.split(",")]
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for kind, path in (("locations", args.locations_weights),
                           ("granules", args.granules_weights)):
            model = load_model(path, kind)
            trained = "trained" if model.card.trained else "untrained"
            x = input_scaler(s.image, model.card.input_scaling)(s.image)
            for row in compare(model, x, windows, halos):
                row["weights"] = trained
                rows.append(row)
                print(json.dumps(row))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
