"""Pictures of what the default models do on the held-out looks (and, with ``--compare``, others).

    python benchmarks/render_heldout.py --compare previous=runs/old

One 2048 x 2048 micrograph (0.8 nm/px, seed 300000 + k) of each held-out family: the micrograph,
the Locations truth and each model set's Locations (schema colours), and a 400 px crop (the one
richest in true granules) with the true granules (green) and each set's granules (red). Writes
``docs/heldout-<family>.png``.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

from napari_emgranules.core.schema import LOCATIONS_SCHEMA
from napari_emgranules.core.segment import segment_micrograph
from napari_emgranules.core.synthetic import HELDOUT_FAMILIES, family_params, synthetic_micrograph

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import save_figure  # noqa: E402  (a sibling module)
from calibration import model_set  # noqa: E402  (a sibling benchmark: the same model sets)

ROOT = Path(__file__).resolve().parent.parent


def _granule_rich_crop(granules: np.ndarray, side: int) -> tuple[slice, slice]:
    """The ``side``-px square (on a half-side grid) holding the most true granule pixels."""
    step = side // 2
    best, where = -1, (0, 0)
    for y in range(0, granules.shape[0] - side + 1, step):
        for x in range(0, granules.shape[1] - side + 1, step):
            n = int(np.count_nonzero(granules[y:y + side, x:x + side]))
            if n > best:
                best, where = n, (y, x)
    return slice(where[0], where[0] + side), slice(where[1], where[1] + side)


def render(family: str, m, results: dict[str, object], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    cmap = ListedColormap([LOCATIONS_SCHEMA.colors()[c] for c in range(LOCATIONS_SCHEMA.n_classes)])
    n = 2 + len(results)
    fig = Figure(figsize=(3.3 * n, 6.8), dpi=70)
    axes = fig.subplots(2, n)
    step = 4
    crop = _granule_rich_crop(m.granules, 400)
    axes[0, 0].imshow(m.image[::step, ::step], cmap="gray")
    axes[0, 0].set_title(f"{family} (never trained on)", fontsize=9)
    axes[0, 1].imshow(m.locations[::step, ::step], cmap=cmap, vmin=0, vmax=6, interpolation="nearest")
    axes[0, 1].set_title("Locations truth", fontsize=9)
    axes[1, 0].imshow(m.image[crop], cmap="gray")
    axes[1, 0].set_title("a 320 nm crop", fontsize=9)
    axes[1, 1].imshow(m.image[crop], cmap="gray")
    axes[1, 1].contour(m.granules[crop], levels=[0.5], colors="lime", linewidths=0.8)
    axes[1, 1].set_title("granule truth", fontsize=9)
    for k, (name, seg) in enumerate(results.items(), start=2):
        axes[0, k].imshow(seg.locations[::step, ::step], cmap=cmap, vmin=0, vmax=6,
                          interpolation="nearest")
        axes[0, k].set_title(f"{name}: Locations", fontsize=9)
        axes[1, k].imshow(m.image[crop], cmap="gray")
        axes[1, k].contour(seg.granules[crop], levels=[0.5], colors="red", linewidths=0.8)
        axes[1, k].set_title(f"{name}: granules", fontsize=9)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compare", action="append", default=[], metavar="NAME=DIR")
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    args = ap.parse_args(argv)
    sets = {"bundled default": model_set(None)}
    for c in args.compare:
        name, _, spec = c.partition("=")
        sets[name] = model_set(spec)
    for k, family in enumerate(HELDOUT_FAMILIES):
        m = synthetic_micrograph((2048, 2048), 0.8, seed=300_000 + k, dtype="uint16",
                                 params=family_params(family))
        results = {}
        for name, models in sets.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                results[name] = segment_micrograph(m.image, 0.8, models=models)
        path = args.out / f"heldout-{family.removeprefix('heldout-')}.png"
        render(family, m, results, path)
        print(f"wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
