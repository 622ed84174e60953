#!/usr/bin/env python
"""Draw docs/mitochondria_looks.png: real cardiac EM beside synthetic micrographs of its sampling.

    python scripts/render_mitochondria_looks.py [--seeds 3] [--out docs/mitochondria_looks.png]

Top row: the real cardiac micrographs of ``../shared/data/emnet-cardiac`` (about 12.5 nm/px; MIT
licence, see its README), whole. Below: synthetic micrographs of the same field at 12.5 nm/px,
drawn with :func:`~napari_emgranules.core.synthetic.randomised_params` looks that have columns of
longitudinal mitochondria and a dark mitochondrial matrix (the first such seeds from 20000), and
their Locations truth (Z disk + mitochondria in red). It shows whether the generator's
mitochondria now look like the real ones at that sampling; each panel's grey scale is its own
0.5-99.5 percentile range, as a viewer would show it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from napari_emgranules.core.io import read_micrograph  # noqa: E402
from napari_emgranules.core.schema import LOCATIONS_SCHEMA  # noqa: E402
from napari_emgranules.core.synthetic import randomised_params, synthetic_micrograph  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CARDIAC = ROOT.parent / "shared" / "data" / "emnet-cardiac" / "images"
PIXEL_NM, SIDE = 12.5, 512
COLOURS = ["#000000", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]


def dark_column_seeds(n: int, start: int = 20000) -> list[int]:
    """The first ``n`` seeds whose randomised look has mitochondria columns and a matrix darker
    than the A band."""
    seeds, s = [], start
    while len(seeds) < n:
        p = randomised_params(s)
        if p.mitochondria_columns > 0 and np.mean(p.grey_levels["mito"]) < np.mean(p.grey_levels["A"]):
            seeds.append(s)
        s += 1
    return seeds


def _show(ax, image, title):
    lo, hi = np.percentile(image, [0.5, 99.5])
    ax.imshow(image, cmap="gray", vmin=lo, vmax=hi)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="synthetic micrographs")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "mitochondria_looks.png")
    args = parser.parse_args()
    real = sorted(CARDIAC.glob("*.tif"))[:args.seeds]
    seeds = dark_column_seeds(args.seeds)
    cols = max(len(real), len(seeds))
    fig, axes = plt.subplots(3, cols, figsize=(4.2 * cols, 12.6), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for j, path in enumerate(real):
        image = np.asarray(read_micrograph(path, pixel_size_nm=PIXEL_NM).data)
        _show(axes[0, j], image[:SIDE, :SIDE], f"real cardiac EM: {path.name} (crop)")
    cmap = matplotlib.colors.ListedColormap(COLOURS)
    for j, seed in enumerate(seeds):
        m = synthetic_micrograph((SIDE, SIDE), PIXEL_NM, seed=seed, params=randomised_params(seed))
        _show(axes[1, j], m.image, f"synthetic, randomised look {seed}, {PIXEL_NM} nm/px")
        axes[2, j].imshow(m.locations, cmap=cmap, vmin=0, vmax=len(COLOURS) - 1,
                          interpolation="nearest")
        axes[2, j].set_title("truth: " + ", ".join(
            f"{LOCATIONS_SCHEMA.letters[c]} {col}" for c, col in
            ((1, "orange"), (2, "green"), (3, "red"), (4, "purple"), (5, "brown"))), fontsize=8)
    fig.suptitle(f"Mitochondria, real and synthetic, at {PIXEL_NM} nm/px ({SIDE} px = "
                 f"{SIDE * PIXEL_NM / 1000:.1f} um)", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=60)
    plt.close(fig)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
