"""Where the false granules are: predicted granules that touch no true one, by true region.

    python benchmarks/false_granules.py                                   # in-range, stretched
    python benchmarks/false_granules.py --conditions in-range,pixel-1.0 --granules runs/x/granules.weights.h5

The micrographs are those of ``benchmarks/accuracy.py`` (same conditions, seeds and size), so the
counts add up to its "false granules" column. Each false granule is put in the true region
(Locations code) that holds most of its pixels; the table also says whether the generator drew a
myonucleus in the field (its heterochromatin clumps are the usual suspects, labelled N).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import CONDITIONS, SEED_BASE, SEED_STRIDE, generate, get_model, make_params  # noqa: E402

from napari_emgranules.core.schema import LOCATIONS_SCHEMA  # noqa: E402
from napari_emgranules.core.segment import segment_micrograph  # noqa: E402


def false_components(truth, predicted: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Labelled predicted granules (8-connected) and, for each one touching no true granule,
    its label and the true region (Locations code) under most of its pixels."""
    lab, n = ndi.label(predicted, np.ones((3, 3), bool))
    hit = np.zeros(n + 1, bool)
    hit[np.unique(lab[truth.granules == 1])] = True
    false = []
    for i, sl in enumerate(ndi.find_objects(lab), start=1):
        if sl is not None and not hit[i]:
            codes = truth.locations[sl][lab[sl] == i]
            false.append((i, int(np.bincount(codes, minlength=LOCATIONS_SCHEMA.n_classes).argmax())))
    return lab, false


def false_by_region(false: list[tuple[int, int]]) -> np.ndarray:
    """Counts of false granules (:func:`false_components`) by true region, one per Locations code."""
    return np.bincount([code for _, code in false], minlength=LOCATIONS_SCHEMA.n_classes)


def picture(truth, lab: np.ndarray, false: list[tuple[int, int]], path: Path, n: int = 12,
            half: int = 60) -> None:
    """Crops of the micrograph around up to ``n`` false granules (red outline; true granules cyan)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    false = false[:n]
    cols = min(6, max(1, len(false)))
    rows = max(1, -(-len(false) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
    centres = ndi.center_of_mass(lab > 0, lab, [i for i, _ in false]) if false else []
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (i, code), (cy, cx) in zip(axes.ravel(), false, centres, strict=False):
        y0, x0 = max(0, int(cy) - half), max(0, int(cx) - half)
        win = (slice(y0, y0 + 2 * half), slice(x0, x0 + 2 * half))
        ax.imshow(truth.image[win], cmap="gray")
        ax.contour(lab[win] == i, [0.5], colors="r", linewidths=1)
        ax.contour(truth.granules[win], [0.5], colors="c", linewidths=0.5)
        ax.set_title(f"true region {LOCATIONS_SCHEMA.letters[code]}", fontsize=8)
    fig.suptitle(f"false granules (red) of seed {truth.seed}; true granules cyan", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conditions", default="in-range,stretched",
                    help="comma-separated condition keys of benchmarks/accuracy.py")
    ap.add_argument("--granules", help="Granules weights (default: the bundled default model)")
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--per-condition", type=int, default=2)
    ap.add_argument("--picture", type=Path, help="PNG of crops around the first micrograph's false granules")
    args = ap.parse_args(argv)
    index = {c.key: k for k, c in enumerate(CONDITIONS)}
    keys = [k.strip() for k in args.conditions.split(",") if k.strip()]
    unknown = [k for k in keys if k not in index]
    if unknown:
        ap.error(f"unknown conditions: {', '.join(unknown)} (known: {', '.join(index)})")
    model = get_model(args.granules, "granules")
    letters = [LOCATIONS_SCHEMA.letters[c] for c in range(LOCATIONS_SCHEMA.n_classes)]
    print(f"Granules: {args.granules or 'bundled default'}; {args.size} px micrographs\n")
    print("| condition | seed | nucleus drawn | false granules | per um^2 | "
          + " | ".join(letters) + " |")
    print("|---|---|---|---|---|" + "---|" * len(letters))
    for key in keys:
        cond = CONDITIONS[index[key]]
        params = make_params(cond)
        for i in range(args.per_condition):
            seed = SEED_BASE + index[key] * SEED_STRIDE + i
            truth = generate(cond, params, args.size, seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                seg = segment_micrograph(truth.image, cond.pixel_size_nm, models={"granules": model})
            lab, false = false_components(truth, seg.labels["granules"] == 1)
            counts = false_by_region(false)
            if args.picture and false:
                picture(truth, lab, false, args.picture)
                args.picture = None
            area_um2 = (args.size * cond.pixel_size_nm / 1000) ** 2
            print(f"| {cond.name} | {seed} | {'yes' if truth.drawn.get('nucleus') else 'no'} | "
                  f"{counts.sum()} | {counts.sum() / area_um2:.2f} | "
                  + " | ".join(str(c) for c in counts) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
