"""``emgranules measure``: label maps -> density tables, particles, vf, seed text tables.

A thin wrapper over :mod:`napari_emgranules.core.measure`; :func:`add_parsers` is called by
:func:`napari_emgranules.cli.build_parser`.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ._cli_common import EXIT_BAD_INPUT, EXIT_OK, CliError, _fail, _user_errors


def _label_files(folder: Path) -> dict[str, Path]:
    from .core.io import LABEL_SUFFIXES

    return {p.stem: p for p in sorted(folder.iterdir())
            if p.is_file() and p.suffix.lower() in LABEL_SUFFIXES}


def _pairs(locations: str, granules: str) -> list[tuple[str, Path, Path]]:
    """``(name, locations file, granules file)``: two files, or two folders paired by file name."""
    loc, gra = Path(locations), Path(granules)
    for p in (loc, gra):
        if not p.exists():
            raise CliError(f"{p}: no such file or folder")
    if loc.is_dir() != gra.is_dir():
        raise CliError(f"give two label files or two folders of them, not {loc} and {gra}")
    if not loc.is_dir():
        return [(loc.stem, loc, gra)]
    lf, gf = _label_files(loc), _label_files(gra)
    if not lf:
        raise CliError(f"{loc}: the folder holds no label maps (.tif, .tiff, .png)")
    unpaired = sorted(set(lf) ^ set(gf))
    if unpaired:
        raise CliError(f"{len(unpaired)} label map(s) have no partner of the same name in the other "
                       f"folder: {', '.join(unpaired[:5])}{' ...' if len(unpaired) > 5 else ''}")
    return [(name, lf[name], gf[name]) for name in sorted(lf)]


def _pixel_size(args: argparse.Namespace, loc: Path, gra: Path) -> tuple[float | None, str]:
    """``--pixel-size`` when given, else the label files' metadata (which must agree)."""
    from .core.io import metadata_pixel_size_nm

    if args.pixel_size is not None:
        return args.pixel_size, "user"
    found = [metadata_pixel_size_nm(p) for p in (loc, gra)]
    sizes = {round(f[0], 6) for f in found if f}
    if len(sizes) > 1:
        raise CliError(f"{loc} and {gra} record different pixel sizes ({' and '.join(map(str, sizes))} "
                       "nm); give --pixel-size")
    for f in found:
        if f:
            return f
    return None, "unknown"


def _outputs(args: argparse.Namespace) -> list[Path]:
    from .core.measure import SEED_AREAS_FILE, SEED_DENSITIES_FILE

    outs = [Path(args.out)] + [Path(p) for p in (args.particles, args.z_disks) if p]
    if args.seed_tables:
        outs += [Path(args.seed_tables) / SEED_AREAS_FILE, Path(args.seed_tables) / SEED_DENSITIES_FILE]
    if not args.overwrite:
        for p in outs:
            if p.exists():
                raise CliError(f"{p}: exists already; use --overwrite to replace it")
    return outs


def add_derived_argument(parser: argparse.ArgumentParser) -> None:
    """``--derived NAME=A+I,...`` (measure, batch)."""
    parser.add_argument("--derived", metavar="NAME=A+I,...",
                        help="also pool regions into named rows, e.g. 'myofibrillar=A+I' (the other "
                             "muscle-TEM tool's 'intra'): areas, granules and counts added")


def add_calibration_argument(parser: argparse.ArgumentParser) -> None:
    """``--pf-calibration FILE`` (measure, batch)."""
    parser.add_argument("--pf-calibration", metavar="JSON",
                        help="a fit of your manual point counts against the automated pf (emgranules "
                             "grid --fit-calibration): adds pf_calibrated with its 95%% interval")


def pf_calibration(args: argparse.Namespace) -> dict | None:
    """The ``--pf-calibration`` file's content (None when not given); a bad file is a CliError."""
    from .core.pointgrid import PfCalibration, PointGridError

    if not getattr(args, "pf_calibration", None):
        return None
    try:
        return PfCalibration.load(args.pf_calibration).to_dict()
    except PointGridError as exc:
        raise CliError(str(exc)) from None


def derived_regions(args: argparse.Namespace) -> dict | None:
    """The parsed ``--derived`` value (None when not given)."""
    from .core.measure import parse_derived

    if not getattr(args, "derived", None):
        return None
    try:
        return parse_derived(args.derived)
    except ValueError as exc:
        raise CliError(f"--derived: {exc}") from None


def _measure_one(args: argparse.Namespace, name: str, loc_path: Path, gra_path: Path, filters):
    from .core.io import read_labels
    from .core.measure import measure_labels

    px, source = _pixel_size(args, loc_path, gra_path)
    if px is None:
        print(f"emgranules: warning: {loc_path}: no pixel size in the file; areas in pixels only, "
              "no particle sizes or vf (give --pixel-size NM)", file=sys.stderr)
    result = measure_labels(
        read_labels(loc_path), read_labels(gra_path), pixel_size_nm=px, pixel_size_source=source,
        image=name, path=str(loc_path), tile=args.tile or None,
        filters=filters,
        split_touching=args.split_touching,
        section_nm=None if args.vf == "none" else args.section,
        min_cap_nm=args.min_cap, vf_method=args.vf if args.vf != "none" else "baskets",
        concentration_factor=args.concentration_factor,
        z_disks=bool(args.z_disks) and px is not None, derived=derived_regions(args),
        pf_calibration=pf_calibration(args),
    )
    result.regions["seed_name"] = loc_path.name
    return result


def _cmd_measure(args: argparse.Namespace) -> int:
    import pandas as pd
    from tqdm import tqdm

    from .core.measure import ParticleFilter, write_csv, write_seed_tables

    pairs = _pairs(args.locations, args.granules)
    _outputs(args)
    objects = [Path(args.objects) / f"{name}{suffix}" for name, _, _ in pairs
               for suffix in (".geojson", ".roi.zip", ".regions.geojson")] if args.objects else []
    taken = [p for p in objects if p.exists()]
    if taken and not args.overwrite:
        raise CliError(f"{taken[0]}: exists already; use --overwrite to replace it")
    filters = ParticleFilter(args.min_diameter, args.max_diameter, args.min_circularity)
    if args.concentration_factor is not None and args.vf == "none":
        raise CliError("--concentration-factor needs vf (drop --vf none)")
    if args.section <= 0 or not math.isfinite(args.section):
        raise CliError(f"--section {args.section}: the section thickness must be positive (nm)")
    regions, tiles, particles, zdisks, failures = [], [], [], [], 0
    written_objects: list[Path] = []
    for name, loc_path, gra_path in tqdm(pairs, desc="measure", unit="map", file=sys.stderr,
                                         disable=args.quiet or len(pairs) < 2, leave=False):
        try:
            result = _measure_one(args, name, loc_path, gra_path, filters)
        except _user_errors() as exc:
            _fail(f"{loc_path}: {exc}" if str(loc_path) not in str(exc) else str(exc))
            failures += 1
            continue
        regions.append(result.regions)
        tiles += [result.tiles] if result.tiles is not None else []
        particles.append(result.particles)
        if args.objects and result.particle_map is not None:
            from .core.objects import particles_geojson, write_geojson

            px = float(result.regions["pixel_size_nm"].iloc[0])
            collection = particles_geojson(result.particle_map, result.particles, pixel_size_nm=px,
                                           image=name)
            written_objects.append(write_geojson(collection, Path(args.objects) / f"{name}.geojson",
                                                 overwrite=args.overwrite))
            from .core.io import read_labels
            from .core.objects import particles_imagej_rois, regions_geojson, write_imagej_rois

            written_objects.append(write_imagej_rois(
                particles_imagej_rois(result.particle_map, result.particles),
                Path(args.objects) / f"{name}.roi.zip", overwrite=args.overwrite))
            written_objects.append(write_geojson(
                regions_geojson(read_labels(loc_path), pixel_size_nm=px, image=name),
                Path(args.objects) / f"{name}.regions.geojson", overwrite=args.overwrite))
        elif args.objects:
            tqdm.write(f"{name}: no pixel size: no particle objects written", file=sys.stderr)
        zdisks += [result.z_disks] if result.z_disks is not None else []
        for note in result.notes:
            tqdm.write(f"{name}: {note}", file=sys.stderr)
        tqdm.write(_summary_line(name, result.regions), file=sys.stdout)
    if not regions:
        raise CliError("nothing was measured")
    table = pd.concat(regions + tiles, ignore_index=True)
    written = [write_csv(table.drop(columns="seed_name"), args.out, overwrite=args.overwrite)]
    if args.particles:
        written.append(write_csv(pd.concat(particles, ignore_index=True), args.particles,
                                 overwrite=args.overwrite))
    if args.z_disks and zdisks:
        written.append(write_csv(pd.concat(zdisks, ignore_index=True), args.z_disks,
                                 overwrite=args.overwrite))
    if args.seed_tables:
        seed_rows = pd.concat(tiles, ignore_index=True) if tiles else table
        written += write_seed_tables(seed_rows, args.seed_tables, overwrite=args.overwrite)
    written += written_objects
    print("written: " + ", ".join(str(p) for p in written))
    return EXIT_BAD_INPUT if failures else EXIT_OK


def _summary_line(name: str, regions) -> str:
    def fmt(row) -> str:
        if row.area_px == 0:
            return f"{row.region} -"
        vf = "" if math.isnan(row.vf) else f" vf {row.vf:.4f}"
        return f"{row.region} pf {row.pf:.4f}{vf}"

    return f"{name}: " + "; ".join(fmt(r) for r in regions.itertuples())


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``measure``."""
    mea = sub.add_parser("measure", help="label maps -> per-region granule density table (pf, vf, "
                                         "counts, sizes) and the original tool's text tables")
    mea.add_argument("locations", metavar="LOCATIONS", help="Locations label map, or a folder of them")
    mea.add_argument("granules", metavar="GRANULES",
                     help="Granules label map, or a folder of them (paired by file name)")
    mea.add_argument("--out", required=True, metavar="CSV", help="density table (tidy CSV)")
    mea.add_argument("--pixel-size", type=float, metavar="NM",
                     help="pixel size in nm (default: from the label files' metadata)")
    mea.add_argument("--particles", metavar="CSV", help="also write one row per granule particle")
    mea.add_argument("--z-disks", metavar="CSV", help="also write Z-disk widths")
    mea.add_argument("--objects", metavar="DIR",
                     help="also write each label map's granule particles as GeoJSON objects for "
                          "QuPath (DIR/<name>.geojson: outlines in pixels, sizes in nm), as an "
                          "ImageJ ROI set for Fiji's ROI Manager (DIR/<name>.roi.zip), and the "
                          "regions as outlined annotations (DIR/<name>.regions.geojson)")
    mea.add_argument("--seed-tables", metavar="DIR",
                     help="also write the original tool's two text tables into DIR "
                          "(per tile with --tile, else per label map)")
    mea.add_argument("--tile-size", "--tile", dest="tile", type=int, default=0, metavar="PX",
                     help="also measure each seed tile of this side, e.g. 1024 (default: whole only)")
    mea.add_argument("--section", type=float, default=70.0, metavar="NM",
                     help="section thickness for vf (default 70 nm)")
    mea.add_argument("--min-cap", type=float, metavar="NM",
                     help="smallest visible granule cap height for vf (default: the model's)")
    mea.add_argument("--vf", default="baskets", choices=("baskets", "analytical", "none"),
                     help="pf -> vf route: basket simulation (default), analytical, or none")
    add_derived_argument(mea)
    add_calibration_argument(mea)
    mea.add_argument("--concentration-factor", type=float, metavar="F",
                     help="add a 'concentration' column = vf x F (F: your glycogen concentration "
                          "per unit volume fraction, e.g. mmol glucosyl units/L at vf = 1)")
    mea.add_argument("--min-diameter", type=float, default=10.0, metavar="NM",
                     help="smallest particle counted (equivalent diameter, default 10 nm)")
    mea.add_argument("--max-diameter", type=float, default=45.0, metavar="NM",
                     help="largest particle counted (default 45 nm)")
    mea.add_argument("--min-circularity", type=float, default=0.7, metavar="C",
                     help="least round particle counted, 0..1 (default 0.7)")
    mea.add_argument("--split-touching", action="store_true",
                     help="split touching granules before counting (watershed)")
    mea.add_argument("--overwrite", action="store_true", help="replace existing output files")
    mea.add_argument("--quiet", action="store_true", help="no progress bar")
    mea.set_defaults(func=_cmd_measure)
