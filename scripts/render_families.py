#!/usr/bin/env python
"""Draw docs/synthetic_families.png: each named synthetic appearance family, side by side.

    python scripts/render_families.py [--seed 1] [--out docs/synthetic_families.png]

Each family draws the same cell, ``synthetic_micrograph((4096, 4096), 0.8, seed)`` with its
parameters, so the layout and the truth match between panels and only the look changes (the
held-out family "heldout-grainy" also has smaller granules). For each family the figure shows
the whole micrograph (burned-in annotations show there), a 1024 x 1024 crop at 0.8 nm/px chosen
to show the A and I bands, Z disks and a space, and a 256 px zoom (where the crop has the most
granules) with the granule truth. Each panel's grey scale is its own 0.5-99.5 percentile range,
as a viewer would show it.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from napari_emgranules.core.synthetic import (  # noqa: E402
    FAMILIES,
    HELDOUT_FAMILIES,
    family_params,
    synthetic_micrograph,
)

ROOT = Path(__file__).resolve().parents[1]
FULL, CROP, ZOOM = 4096, 1024, 256


def pick_crop(locations: np.ndarray) -> tuple[int, int]:
    """Top-left corner of the CROP square that best shows the A, I, Z and S regions."""
    best, corner = -1.0, (0, 0)
    for y in range(0, FULL - CROP + 1, 128):
        for x in range(0, FULL - CROP + 1, 128):
            c = np.bincount(locations[y:y + CROP, x:x + CROP].ravel(), minlength=7) / CROP**2
            score = min(c[1], c[2], 4 * c[3], 2 * c[4])
            if score > best:
                best, corner = score, (y, x)
    return corner


def pick_zoom(granules: np.ndarray) -> tuple[int, int]:
    """Top-left corner of the ZOOM square in the crop with the most granule pixels."""
    best, corner = -1, (0, 0)
    for y in range(0, CROP - ZOOM + 1, 64):
        for x in range(0, CROP - ZOOM + 1, 64):
            n = int(granules[y:y + ZOOM, x:x + ZOOM].sum())
            if n > best:
                best, corner = n, (y, x)
    return corner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "synthetic_families.png")
    args = parser.parse_args()
    names = list(FAMILIES)
    cols = math.ceil(len(names) / 2)
    fig, axes = plt.subplots(6, cols, figsize=(4 * cols, 24.8))
    corner = None
    for i, name in enumerate(names):
        m = synthetic_micrograph((FULL, FULL), 0.8, seed=args.seed, params=family_params(name))
        if corner is None:
            corner = pick_crop(m.locations)
            zy, zx = pick_zoom(m.granules[corner[0]:corner[0] + CROP,
                                          corner[1]:corner[1] + CROP])
        cy, cx = corner
        crop = m.image[cy:cy + CROP, cx:cx + CROP]
        lo, hi = np.percentile(crop, [0.5, 99.5])
        r, c = 3 * (i // cols), i % cols
        tag = " (held out)" if name in HELDOUT_FAMILIES else ""
        ax = axes[r, c]
        ax.imshow(m.image[::4, ::4], cmap="gray", vmin=lo, vmax=hi)
        ax.add_patch(plt.Rectangle((cx / 4, cy / 4), CROP / 4, CROP / 4, fill=False,
                                   color="yellow", lw=0.8))
        ax.set_title(f"{name}{tag}", fontsize=12, color="firebrick" if tag else "black")
        ax = axes[r + 1, c]
        ax.imshow(crop, cmap="gray", vmin=lo, vmax=hi, interpolation="lanczos")
        ax.add_patch(plt.Rectangle((zx, zy), ZOOM, ZOOM, fill=False, color="yellow", lw=0.8))
        ax.set_title(f"crop {CROP} px = {CROP * 0.8:.0f} nm", fontsize=8)
        ax = axes[r + 2, c]
        ax.imshow(crop[zy:zy + ZOOM, zx:zx + ZOOM], cmap="gray", vmin=lo, vmax=hi,
                  interpolation="nearest")
        ax.contour(m.granules[cy + zy:cy + zy + ZOOM, cx + zx:cx + zx + ZOOM], levels=[0.5],
                   colors="red", linewidths=0.9, alpha=0.8)
        ax.set_title(f"zoom {ZOOM * 0.8:.0f} nm, granule truth in red", fontsize=8)
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.suptitle(f"synthetic appearance families: {FULL} px at 0.8 nm/px, seed {args.seed}",
                 fontsize=13)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=72)
    plt.close(fig)
    try:  # a 128-colour palette keeps the greys and the red truth at a third of the size
        from PIL import Image
    except ImportError:
        pass
    else:
        with Image.open(args.out) as im:
            pal = im.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
        pal.save(args.out, optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
