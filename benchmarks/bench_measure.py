#!/usr/bin/env python
"""Time the measurement of one 4096 x 4096 pair of label maps.

Usage::

    python benchmarks/bench_measure.py [--size 4096] [--repeats 5] [--seed 7] [--dense]

``--dense`` draws granules at 10-20 % of every region (several thousand particles), an upper
bound for real muscle.

Reports the median wall time of: the density table alone; the table with granule particles
(the issue's target: well under a second); per-tile tables (seed mode, 16 tiles); Z-disk widths;
the full :func:`measure_labels` with vf by baskets (first call, which calibrates, and a second
call on the same micrograph); and, for comparison, the original tool's style of counting (per
region, ``where`` then a sum, repeated for each 1024 tile).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _seed_style(loc: np.ndarray, gra: np.ndarray, tile: int = 1024) -> list[tuple[int, int]]:
    out = []
    for y in range(0, loc.shape[0], tile):
        for x in range(0, loc.shape[1], tile):
            tl, tg = loc[y:y + tile, x:x + tile], gra[y:y + tile, x:x + tile]
            for j in range(1, 6):
                roi = np.where(tl == j)
                out.append((len(roi[0]), int(tg[roi].sum())))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--dense", action="store_true", help="granules at 10-20%% of every region")
    args = parser.parse_args()

    from napari_emgranules.core.measure import (
        density_table,
        granule_particles,
        measure_labels,
        tile_density_tables,
        z_disk_widths,
    )
    from napari_emgranules.core.synthetic import SyntheticParams, synthetic_micrograph

    params = SyntheticParams(granule_fractions=((0.1, 0.2),) * 5) if args.dense else None
    m = synthetic_micrograph((args.size, args.size), 0.8, seed=args.seed, params=params)
    loc, gra = m.locations, m.granules
    n = len(granule_particles(gra, loc, pixel_size_nm=0.8))
    print(f"{args.size}x{args.size} synthetic pair (seed {args.seed}{', dense' if args.dense else ''}), "
          f"{n} granule particles, "
          f"median of {args.repeats}:")

    def table_and_particles():
        density_table(loc, gra, pixel_size_nm=0.8)
        granule_particles(gra, loc, pixel_size_nm=0.8)

    rows = [
        ("density table", lambda: density_table(loc, gra, pixel_size_nm=0.8)),
        ("density table + particles", table_and_particles),
        ("per-tile tables (1024 tiles)", lambda: tile_density_tables(loc, gra, pixel_size_nm=0.8)),
        ("Z-disk widths", lambda: z_disk_widths(loc, pixel_size_nm=0.8)),
        ("seed-style counting (where per region per tile)", lambda: _seed_style(loc, gra)),
    ]
    for name, fn in rows:
        print(f"  {name:50s} {_median_time(fn, args.repeats) * 1000:8.0f} ms")
    t = time.perf_counter()
    measure_labels(loc, gra, pixel_size_nm=0.8)
    first = time.perf_counter() - t
    again = _median_time(lambda: measure_labels(loc, gra, pixel_size_nm=0.8), args.repeats)
    print(f"  {'measure_labels with vf (first call, calibrates)':50s} {first * 1000:8.0f} ms")
    print(f"  {'measure_labels with vf (calibration cached)':50s} {again * 1000:8.0f} ms")


if __name__ == "__main__":
    main()
