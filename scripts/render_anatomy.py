#!/usr/bin/env python
"""Draw docs/anatomy.png: contraction states, oblique cuts and glycogen rosettes, and what the
bundled default models make of them.

    python scripts/render_anatomy.py [--seed 7] [--out docs/anatomy.png]

One cell (``synthetic_micrograph((2048, 2048), 0.8, seed)``, fibres along the rows) drawn with
the settings of the matching conditions of ``benchmarks/accuracy.py`` (the resting default,
contracted and stretched sarcomeres, cuts tilted 30 and 50 degrees out of the section plane,
30% of the glycogen in alpha-particle rosettes), segmented with the bundled defaults. Rows: the
micrograph; its Locations truth; the default's Locations labels; a 384 px zoom where the truth
has the largest glycogen particle, granule truth in green and the default's granules in red.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402

from napari_emgranules.core.schema import LOCATIONS_SCHEMA  # noqa: E402
from napari_emgranules.core.segment import segment_micrograph  # noqa: E402
from napari_emgranules.core.synthetic import SyntheticParams, synthetic_micrograph  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIZE, ZOOM = 2048, 384
CASES = (  # the overrides of benchmarks/accuracy.py's conditions of the same names
    ("resting (default)", {}),
    ("contracted", {"sarcomere_um": (1.8, 1.95), "h_zone_um": (0.0, 0.0)}),
    ("stretched", {"sarcomere_um": (3.0, 3.3), "h_zone_um": (0.8, 1.1)}),
    ("oblique 30°", {"oblique_deg": (30.0, 30.0)}),
    ("oblique 50°", {"oblique_deg": (50.0, 50.0)}),
    ("rosettes 30%", {"rosette_fraction": 0.3}),
)


def zoom_corner(granules: np.ndarray) -> tuple[int, int]:
    """Top-left corner of the ZOOM square around the largest particle of the granule truth."""
    lab, n = ndi.label(granules, np.ones((3, 3), bool))
    if not n:
        return (0, 0)
    largest = int(np.argmax(np.bincount(lab.ravel())[1:])) + 1
    cy, cx = ndi.center_of_mass(lab == largest)
    return tuple(int(min(max(c - ZOOM / 2, 0), SIZE - ZOOM)) for c in (cy, cx))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "anatomy.png")
    args = parser.parse_args()
    colours = ListedColormap([LOCATIONS_SCHEMA.colors()[c][:7]
                              for c in range(LOCATIONS_SCHEMA.n_classes)])  # the schema's colours
    fig, axes = plt.subplots(4, len(CASES), figsize=(3.2 * len(CASES), 13))
    for j, (name, overrides) in enumerate(CASES):
        m = synthetic_micrograph((SIZE, SIZE), 0.8, seed=args.seed,
                                 params=SyntheticParams(angle_deg=0.0, **overrides))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seg = segment_micrograph(m.image, 0.8)
        lo, hi = np.percentile(m.image, [0.5, 99.5])
        axes[0, j].imshow(m.image, cmap="gray", vmin=lo, vmax=hi)
        sarc = m.drawn.get("apparent_sarcomere_um", m.drawn["sarcomere_um"])
        axes[0, j].set_title(f"{name}\nsarcomere {sarc:.2f} um as seen", fontsize=9)
        for row, labels, what in ((1, m.locations, "truth"), (2, seg.locations, "default")):
            axes[row, j].imshow(labels, cmap=colours, vmin=0, vmax=LOCATIONS_SCHEMA.n_classes - 1,
                                interpolation="nearest")
            axes[row, j].set_title(f"Locations: {what}", fontsize=9)
        y, x = zoom_corner(m.granules)
        window = (slice(y, y + ZOOM), slice(x, x + ZOOM))
        axes[3, j].imshow(m.image[window], cmap="gray", vmin=lo, vmax=hi)
        axes[3, j].contour(m.granules[window], [0.5], colors="lime", linewidths=0.6)
        axes[3, j].contour(seg.granules[window], [0.5], colors="red", linewidths=0.6)
        found = seg.granules[m.granules == 1].mean() if m.granules.any() else float("nan")
        axes[3, j].set_title(f"granules: truth green, default red\n{found:.2f} of glycogen px found",
                             fontsize=9)
        print(f"{name}: {found:.3f} of the true glycogen pixels found", flush=True)
    for a in axes.flat:
        a.set_xticks([])
        a.set_yticks([])
    fig.suptitle(f"One cell (seed {args.seed}, {SIZE} px at 0.8 nm/px) in other anatomical "
                 "states, segmented by the bundled defaults", fontsize=11)
    fig.tight_layout()
    fig.savefig(args.out, dpi=70)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
