"""``emgranules grid``: point counting over label maps, and its agreement with a lab's manual
scores. A thin wrapper over :mod:`napari_emgranules.core.pointgrid`."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._cli_common import EXIT_BAD_INPUT, EXIT_OK, CliError, _fail, _user_errors
from ._cli_measure import _pairs, _pixel_size


def _cmd_grid(args: argparse.Namespace) -> int:
    import pandas as pd

    from .core.io import read_labels
    from .core.measure import write_csv
    from .core.pointgrid import agreement, grid_table, make_grid, read_manual_scores, score_points

    outs = [Path(p) for p in (args.out, args.points, args.agreement) if p]
    if (args.agreement or args.fit_calibration) and not args.manual:
        raise CliError("--agreement and --fit-calibration need --manual (the lab's point scores)")
    if args.fit_calibration:
        outs.append(Path(args.fit_calibration))
    if not args.overwrite:
        for p in outs:
            if p.exists():
                raise CliError(f"{p}: exists already; use --overwrite to replace it")
    tables, points, shapes, failures = [], [], {}, 0
    for name, loc_path, gra_path in _pairs(args.locations, args.granules):
        try:
            px, _ = _pixel_size(args, loc_path, gra_path)
            if px is None:
                raise CliError(f"{loc_path}: no pixel size in the file; give --pixel-size NM (the grid "
                               "spacing is in nm)")
            loc, gra = read_labels(loc_path), read_labels(gra_path)
            grid = make_grid(loc.shape, px, args.spacing, args.seed)
            pts = score_points(grid, loc, gra, image=name)
            tables.append(grid_table(pts, loc, gra, grid=grid))
            points.append(pts)
            shapes[name] = loc.shape
        except (*_user_errors(), CliError) as exc:
            _fail(str(exc) if str(loc_path) in str(exc) else f"{loc_path}: {exc}")
            failures += 1
    if not tables:
        raise CliError("nothing was counted")
    table = pd.concat(tables, ignore_index=True)
    written = [write_csv(table, args.out, overwrite=args.overwrite)]
    if args.points:
        written.append(write_csv(pd.concat(points, ignore_index=True), args.points,
                                 overwrite=args.overwrite))
    if args.manual:
        manual = grid_table(read_manual_scores(args.manual, shapes=shapes))
        per_image, summary = agreement(table, manual)
        for _, row in summary.iterrows():
            print(f"{row['region']}: {row['images']} image(s), bias {row['bias']:+.4f}, limits "
                  f"{row['loa_low']:+.4f} .. {row['loa_high']:+.4f}, concordance {row['ccc']:.3f}")
        if args.agreement:
            written.append(write_csv(per_image, args.agreement, overwrite=args.overwrite))
        if args.fit_calibration:
            from .core.pointgrid import PfCalibration

            cal = PfCalibration.fit(table, manual, name=Path(args.fit_calibration).stem)
            for region, r in cal.regions.items():
                print(f"{region}: manual pf = {r['intercept']:+.4f} + {r['slope']:.3f} x automated pf "
                      f"({int(r['n'])} images, residual SD {r['residual_sd']:.4f})")
            written.append(cal.save(args.fit_calibration, overwrite=args.overwrite))
    print("written: " + ", ".join(str(p) for p in written))
    return EXIT_BAD_INPUT if failures else EXIT_OK


def add_parsers(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("grid", help="point counting over label maps (manual stereology's way), and "
                                    "agreement with a lab's manual scores")
    g.add_argument("locations", help="Locations label map, or a folder of them")
    g.add_argument("granules", help="Granules label map, or a folder (paired by file name)")
    g.add_argument("--spacing", type=float, required=True, metavar="NM", help="grid spacing in nm")
    g.add_argument("--random-seed", "--seed", dest="seed", type=int, default=0,
                   help="seed of the grid's random offset (recorded in the table; default 0)")
    g.add_argument("--pixel-size", type=float, metavar="NM",
                   help="pixel size in nm (default: from the label files' metadata)")
    g.add_argument("--out", required=True, metavar="CSV",
                   help="per image and region: points, hits, pf with its 95%% interval, pixel pf")
    g.add_argument("--points", metavar="CSV", help="also write every point with its scores")
    g.add_argument("--manual", metavar="CSV",
                   help="a lab's manual scores (image, row, col, region, hit): prints the agreement")
    g.add_argument("--agreement", metavar="CSV", help="with --manual: per image and region, both pf "
                                                      "and their difference")
    g.add_argument("--fit-calibration", metavar="JSON",
                   help="with --manual: fit the manual pf against the automated pixel pf per region "
                        "(at least 3 images) and save it for measure/batch --pf-calibration")
    g.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    g.set_defaults(func=_cmd_grid)
