#!/usr/bin/env python
"""Draw docs/synthetic.png: a synthetic micrograph, its Locations and Granules truth, and a zoom.

    python scripts/synthetic_figure.py [--seed 2024] [--out docs/synthetic.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from napari_emgranules.core.schema import LOCATIONS_SCHEMA  # noqa: E402
from napari_emgranules.core.synthetic import synthetic_micrograph  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "synthetic.png")
    args = parser.parse_args()
    m = synthetic_micrograph((args.size, args.size), 0.8, seed=args.seed)
    cmap = ListedColormap([c.color for c in LOCATIONS_SCHEMA.classes])
    h = args.size
    zy, zx = h // 2 - 384, h // 2 - 384
    zoom = (slice(zy, zy + 768), slice(zx, zx + 768))
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.4))
    lo, hi = np.percentile(m.image, [0.5, 99.5])
    axes[0].imshow(m.image, cmap="gray", vmin=lo, vmax=hi)
    axes[0].set_title(f"synthetic micrograph ({h} px, 0.8 nm/px, seed {args.seed})", fontsize=9)
    axes[0].add_patch(plt.Rectangle((zx, zy), 768, 768, fill=False, color="yellow", lw=1))
    axes[1].imshow(m.locations, cmap=cmap, vmin=-0.5, vmax=6.5, interpolation="nearest")
    axes[1].set_title("Locations truth: " + " ".join(
        f"{c.code} {c.letter}" for c in LOCATIONS_SCHEMA.classes), fontsize=9)
    axes[2].imshow(m.image[zoom], cmap="gray", vmin=lo, vmax=hi)
    axes[2].set_title("zoom (614 nm square)", fontsize=9)
    axes[3].imshow(m.image[zoom], cmap="gray", vmin=lo, vmax=hi)
    axes[3].contour(m.granules[zoom], levels=[0.5], colors="red", linewidths=0.6)
    pf = ", ".join(f"{k} {v:.3f}" for k, v in m.true_pixel_fractions.items())
    axes[3].set_title(f"Granules truth (red); true pf {pf}", fontsize=8)
    for ax in axes:
        ax.set_axis_off()
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
