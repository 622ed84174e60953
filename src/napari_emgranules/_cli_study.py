"""``emgranules study``: granule density compared between groups of subjects.

Thin wrapper over :mod:`napari_emgranules.core.study`; :func:`add_parsers` is called by
:func:`napari_emgranules.cli.build_parser`.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ._cli_common import EXIT_OK, CliError, _output_folder

if TYPE_CHECKING:
    import pandas as pd


def _inputs(args: argparse.Namespace) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None]:
    """(design, regions, particles or None) from STUDY.csv or --from-folders, and the tables."""
    from .core.study import (
        design_from_table,
        read_particles_tables,
        read_regions_tables,
        read_study_design,
    )

    if args.study and args.from_folders:
        raise CliError("give a study design (STUDY.csv) or --from-folders ROOT, not both")
    if not args.study and not args.from_folders:
        raise CliError("give a study design (STUDY.csv), or --from-folders ROOT with --tables")
    design = read_study_design(args.study) if args.study else None
    tables, particles = list(args.tables), list(args.particles)
    if design is not None:
        for column, found in (("table", tables), ("particles", particles)):
            if column in design:
                found[:0] = [p for p in dict.fromkeys(design[column]) if p]
    if not tables:
        hint = "or a 'table' column in the study design" if args.study else "--from-folders needs them"
        raise CliError(f"no regions table given: use --tables CSV ... ({hint})")
    regions = read_regions_tables(tables)
    if design is None:
        design = design_from_table(regions, args.from_folders)
    return design, regions, read_particles_tables(particles) if particles else None


def _cmd_study(args: argparse.Namespace) -> int:
    from .core.study import run_study

    out = _output_folder(args.out)
    design, regions, particles = _inputs(args)
    if args.weights:
        from .core.study import weights_from_column

        column, _, pairs = args.weights.partition("=")
        try:
            weights = {k.strip(): float(v) for k, _, v in
                       (item.partition(":") for item in pairs.split(",") if item.strip())}
        except ValueError:
            weights = {}
        if not column.strip() or not weights:
            raise CliError(f"--weights {args.weights!r}: write COLUMN=VALUE:W,VALUE:W, e.g. "
                           "depth=superficial:3,central:1")
        design = weights_from_column(design, column, weights)
    metrics = [m for m in args.metrics.split(",") if m.strip()]
    result = run_study(design, regions, particles, out_dir=out, metrics=metrics, n_boot=args.boot,
                       seed=args.seed, reference=args.reference, overwrite=args.overwrite)
    for warning in result.summary.warnings:
        print(f"emgranules: warning: {warning}", file=sys.stderr)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(result.format())
    return EXIT_OK


def add_parsers(sub) -> None:
    """Add the study sub-command."""
    st = sub.add_parser(
        "study", help="compare granule density per region between groups of subjects "
                      "(hierarchical bootstrap; tables, plots)")
    st.add_argument("study", nargs="?", metavar="STUDY.csv",
                    help="study design: one row per micrograph with columns image, subject, group "
                         "(optional table, particles: CSV files relative to it)")
    st.add_argument("--out", required=True, help="output folder (tables, plots, README.txt)")
    st.add_argument("--tables", nargs="+", action="extend", default=[], metavar="CSV",
                    help="regions tables (emgranules measurements), besides the design's 'table' "
                         "column")
    st.add_argument("--particles", nargs="+", action="extend", default=[], metavar="CSV",
                    help="particle tables, for the granule diameter plot")
    st.add_argument("--from-folders", metavar="ROOT",
                    help="instead of STUDY.csv: groups and subjects from the tables' micrograph "
                         "paths, ROOT/<group>/<subject>/<micrograph>")
    st.add_argument("--metrics", default="pf,vf,granules_per_um2", metavar="M,M",
                    help="metrics to compare (default pf,vf,granules_per_um2; also granule_count, "
                         "mean_diameter_nm)")
    st.add_argument("--reference", metavar="GROUP",
                    help="group the others are compared with (default: first in sorted order)")
    st.add_argument("--boot", type=int, default=10000, metavar="N",
                    help="bootstrap replicates (default 10000)")
    st.add_argument("--random-seed", "--seed", dest="seed", type=int, default=0,
                    help="random seed (default 0)")
    st.add_argument("--weights", metavar="COLUMN=VALUE:W,...",
                    help="weigh each image within its subject by a design column, e.g. "
                         "depth=superficial:3,central:1 (a numeric 'weight' column works too)")
    st.add_argument("--overwrite", action="store_true", help="replace existing output files")
    st.set_defaults(func=_cmd_study)
