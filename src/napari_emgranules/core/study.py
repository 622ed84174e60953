"""Group studies: granule density per region compared between groups of subjects.

A study assigns every micrograph (``image``) to a subject (an animal or a person) and every
subject to one group (e.g. control / trained). Micrographs of one subject are not independent
measurements, so the groups are compared at the level of subjects:

Design
    :func:`read_study_design` reads a CSV with columns ``image, subject, group`` (optional
    ``table`` and ``particles``: the CSV files holding that image's measurements, relative to the
    design file); :func:`design_from_paths` takes group and subject from the folders of
    ``<root>/<group>/<subject>/<micrograph>``; :func:`check_design` validates either.

Summaries
    :func:`summarise_study` joins the regions table of :mod:`.measure` (one row per image and
    region) with the design and gives per-image, per-subject and per-group tables
    (:class:`StudySummary`): for each region and metric the mean, SD and SEM, the number of images
    and subjects, and for ratio metrics (``pf`` = granule px / area px, ``granules_per_um2``) also
    the pooled ratio (sums of numerator over sums of denominator).

Test
    :func:`hierarchical_bootstrap` compares groups by resampling subjects with replacement within
    each group, then each resampled subject's images with replacement, and taking the mean over
    subjects of the subject means in every replicate (Saravanan, Berman & Sober 2020,
    "Application of the hierarchical bootstrap to multi-level data in neuroscience", Neurons,
    Behavior, Data analysis, and Theory 3(5); arXiv:2007.07797). The difference to a reference
    group comes with a 95% percentile interval and a two-sided bootstrap p-value. An image-level
    t-test would treat every micrograph as an independent sample (pseudo-replication) and call
    differences between a few subjects significant; this test does not.

Output
    :func:`plot_regions`, :func:`plot_diameters` (PNG + SVG, matplotlib imported on use, no
    display needed) and :func:`run_study`, which writes all of it into a folder
    (:data:`STUDY_FILES`), never replacing files unless asked to.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .io import atomic_output
from .schema import LOCATIONS_SCHEMA

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_METRICS",
    "DESIGN_COLUMNS",
    "METRICS",
    "STUDY_FILES",
    "TEST_COLUMNS",
    "StudyError",
    "StudyResult",
    "StudySummary",
    "check_design",
    "compare_groups",
    "design_from_paths",
    "design_from_table",
    "hierarchical_bootstrap",
    "plot_diameters",
    "plot_regions",
    "read_particles_tables",
    "read_regions_tables",
    "read_study_design",
    "run_study",
    "summarise_study",
]

PathLike = str | os.PathLike[str]

#: Columns every study design needs.
DESIGN_COLUMNS: tuple[str, ...] = ("image", "subject", "group")
WEIGHT = "weight"
"""Optional design column: each image's weight within its subject (e.g. 3 for superficial and 1
for central images); all 1 without it."""


def _design_columns(design: pd.DataFrame) -> list[str]:
    return [*DESIGN_COLUMNS, WEIGHT] if WEIGHT in design else list(DESIGN_COLUMNS)


def weights_from_column(design: pd.DataFrame, column: str, weights: dict[str, float]) -> pd.DataFrame:
    """``design`` with a ``weight`` column from a text column, e.g. ``("depth", {"superficial": 3,
    "central": 1})``; an image whose value is not listed is refused with its name."""
    frame = design.rename(columns=lambda c: str(c).strip().lower())
    key = column.strip().lower()
    if key not in frame:
        raise StudyError(f"study design: no column {column!r} to take weights from (columns: "
                         f"{', '.join(map(str, frame.columns))})")
    values = _text(frame[key])
    missing = sorted(set(values) - set(weights))
    if missing:
        raise StudyError(f"study design: {column} value(s) {_examples(missing)} have no weight "
                         f"(given: {', '.join(f'{k}={v:g}' for k, v in weights.items())})")
    return frame.assign(**{WEIGHT: values.map(weights).astype(float)})

#: Metrics a study can compare (columns of the regions table) -> axis label with units.
METRICS: dict[str, str] = {
    "pf": "granule pixel fraction pf (fraction of region area)",
    "vf": "granule volume fraction vf (fraction)",
    "granules_per_um2": "granules per µm²",
    "granule_count": "granules per region (count)",
    "mean_diameter_nm": "mean granule diameter (nm)",
}

#: Metrics of :func:`summarise_study` and :func:`run_study` unless told otherwise.
DEFAULT_METRICS: tuple[str, ...] = ("pf", "vf", "granules_per_um2")

#: Files :func:`run_study` writes, in order (the two ``diameters`` plots only with particles).
STUDY_FILES: tuple[str, ...] = (
    "per_image.csv", "per_subject.csv", "per_group.csv", "tests.csv",
    "regions.png", "regions.svg", "diameters.png", "diameters.svg", "README.txt",
)

#: Columns of the table returned by :func:`hierarchical_bootstrap` (``tests.csv``).
TEST_COLUMNS: tuple[str, ...] = (
    "region", "region_name", "metric", "group", "reference", "mean_group", "mean_reference",
    "difference", "ci_low", "ci_high", "p_value", "n_subjects_group", "n_subjects_reference",
    "n_images_group", "n_images_reference", "n_boot",
)

# Ratio metrics: (numerator, denominator) columns giving the pooled value over several images.
_POOLED: dict[str, tuple[str, str]] = {"pf": ("granule_px", "area_px"),
                                       "granules_per_um2": ("granule_count", "area_um2")}
# Columns added up when the tiles of an image are pooled, and metrics averaged with a weight.
_SUMMED: tuple[str, ...] = ("area_px", "area_um2", "granule_px", "granule_count")
_WEIGHTED: dict[str, str] = {"vf": "area_px", "mean_diameter_nm": "granule_count"}
_REGION_ORDER: tuple[str, ...] = tuple(LOCATIONS_SCHEMA.letters[c]
                                       for c in LOCATIONS_SCHEMA.measured_codes)
# Bootstrap draws held in memory at once (replicates x subjects x images).
_MAX_DRAWS = 1 << 20


class StudyError(ValueError):
    """A study design or measurement table that cannot be used; the message says what to fix."""


# -------------------------------------------------------------------------------------------------
# Reading tables
# -------------------------------------------------------------------------------------------------
def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _examples(items: Sequence[str], n: int = 3) -> str:
    shown = ", ".join(repr(i) for i in items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def _read_csv(path: PathLike, what: str, text_only: bool = False) -> pd.DataFrame:
    """A CSV file as a frame; ``text_only`` keeps every cell as text (``01`` and ``NA`` stay)."""
    p = Path(path).expanduser()
    options = ({"dtype": str, "keep_default_na": False} if text_only
               else {"dtype": {"image": str, "tile": str}})
    if not p.is_file():
        raise StudyError(f"{p}: {'is a folder, not' if p.is_dir() else 'no such'} {what} file")
    try:
        frame = pd.read_csv(p, encoding="utf-8-sig", **options)
    except pd.errors.EmptyDataError:
        raise StudyError(f"{p}: the {what} file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise StudyError(f"{p}: cannot read the {what} as CSV ({_one_line(exc)})") from None
    if frame.empty:
        raise StudyError(f"{p}: the {what} has a header but no rows")
    return frame.rename(columns=lambda c: str(c).strip())


def _require_columns(frame: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise StudyError(f"{what}: missing column(s) {', '.join(missing)} (found: "
                         f"{', '.join(map(str, frame.columns)) or 'none'})")


def _text(series: pd.Series) -> pd.Series:
    return series.fillna("").astype(str).str.strip()


def _read_tables(paths: Iterable[PathLike], what: str, required: tuple[str, ...]) -> pd.DataFrame:
    frames = []
    for path in dict.fromkeys(str(Path(p).expanduser()) for p in paths):  # each file once
        frame = _read_csv(path, what)
        _require_columns(frame, required, f"{path} ({what})")
        frames.append(frame.assign(source_table=path))
    if not frames:
        raise StudyError(f"no {what} given")
    return pd.concat(frames, ignore_index=True)


def read_regions_tables(paths: Iterable[PathLike]) -> pd.DataFrame:
    """Read and concatenate regions tables (the tidy CSV of :mod:`.measure`).

    Parameters
    ----------
    paths : iterable of str or os.PathLike
        CSV files with at least the columns ``image`` and ``region``; a file named twice is read
        once.

    Returns
    -------
    pandas.DataFrame
        All rows, with a ``source_table`` column naming the file each came from.

    Raises
    ------
    StudyError
        If no path is given, a file is missing, empty or not CSV, or lacks a required column.
    """
    return _read_tables(paths, "regions table", ("image", "region"))


def read_particles_tables(paths: Iterable[PathLike]) -> pd.DataFrame:
    """Read and concatenate particle tables (one row per granule particle, from :mod:`.measure`).

    Parameters
    ----------
    paths : iterable of str or os.PathLike
        CSV files with at least the columns ``image`` and ``equivalent_diameter_nm``.

    Returns
    -------
    pandas.DataFrame
        All rows, with a ``source_table`` column.

    Raises
    ------
    StudyError
        As :func:`read_regions_tables`.
    """
    return _read_tables(paths, "particles table", ("image", "equivalent_diameter_nm"))


# -------------------------------------------------------------------------------------------------
# Study design
# -------------------------------------------------------------------------------------------------
def check_design(design: pd.DataFrame, source: str = "study design") -> pd.DataFrame:
    """Validate a study design and return it tidied: one row per image, text columns stripped.

    Parameters
    ----------
    design : pandas.DataFrame
        Columns ``image``, ``subject``, ``group`` (names are matched ignoring case and spaces);
        other columns are kept.
    source : str, optional
        What to call the design in messages (e.g. its file name).

    Returns
    -------
    pandas.DataFrame
        A copy; rows listed twice identically are kept once.

    Raises
    ------
    StudyError
        If a column is missing, there are no rows, a cell of ``image``/``subject``/``group`` is
        empty, an image is listed twice with different values, or a subject is in two groups.
    """
    frame = design.rename(columns=lambda c: str(c).strip().lower())
    _require_columns(frame, DESIGN_COLUMNS, f"{source}: a study design needs columns "
                                            f"image, subject, group; it")
    if frame.empty:
        raise StudyError(f"{source}: no rows; list one micrograph per row with its subject and group")
    for column in frame.columns:
        if column in DESIGN_COLUMNS or not pd.api.types.is_numeric_dtype(frame[column]):
            frame[column] = _text(frame[column])
    for column in DESIGN_COLUMNS:
        blank = np.flatnonzero(frame[column].eq("").to_numpy())
        if blank.size:
            raise StudyError(f"{source}: row {blank[0] + 1} has no {column}; every row needs an "
                             f"image, its subject and its group")
    frame = frame.drop_duplicates(ignore_index=True)
    twice = frame["image"][frame["image"].duplicated()]
    if len(twice):
        rows = frame[frame["image"] == twice.iloc[0]]
        differ = [c for c in frame.columns if rows[c].nunique() > 1]
        raise StudyError(f"{source}: image {twice.iloc[0]!r} is listed twice with different "
                         f"{', '.join(differ)}; list each micrograph once")
    if WEIGHT in frame:
        weights = pd.to_numeric(frame[WEIGHT], errors="coerce")
        bad = np.flatnonzero(~(np.isfinite(weights.to_numpy(float)) & (weights.to_numpy(float) > 0)))
        if bad.size:
            raise StudyError(f"{source}: row {bad[0] + 1} has weight {frame[WEIGHT].iloc[bad[0]]!r}; "
                             f"an image's weight must be a positive number")
        frame[WEIGHT] = weights.astype(float)
    groups = frame.groupby("subject")["group"].unique()
    mixed = groups[groups.map(len) > 1]
    if len(mixed):
        raise StudyError(f"{source}: subject {mixed.index[0]!r} is in groups "
                         f"{', '.join(sorted(mixed.iloc[0]))}; a subject belongs to one group (give "
                         f"subjects of different groups different names; paired designs are not "
                         f"supported)")
    return frame


def read_study_design(path: PathLike) -> pd.DataFrame:
    """Read a study design CSV: one row per micrograph with its subject and group.

    Parameters
    ----------
    path : str or os.PathLike
        CSV with columns ``image`` (the micrograph's name as in the regions table, i.e. its file
        stem), ``subject`` and ``group``; optional ``table`` and ``particles``: the regions and
        particle CSV files holding that image, relative to the design file's folder (empty cells
        allowed).

    Returns
    -------
    pandas.DataFrame
        As :func:`check_design`; ``table``/``particles`` hold paths joined to the design's folder.

    Raises
    ------
    StudyError
        If the file is missing, empty or not CSV, or :func:`check_design` refuses it.
    """
    p = Path(path).expanduser()
    frame = _read_csv(p, "study design", text_only=True)
    frame = frame.rename(columns=lambda c: c.lower())
    for column in ("table", "particles"):
        if column in frame:
            frame[column] = [str(p.parent / v) if v else "" for v in _text(frame[column])]
    return check_design(frame, str(p))


def _folder_parts(path: Path, root: Path | None) -> tuple[str, ...]:
    """(group, subject, file) of ``path``, or fewer/more parts when it is not two levels down."""
    if root is None:
        return tuple(p for p in (path.parent.parent.name, path.parent.name) if p) + (path.name,)
    try:
        return path.expanduser().resolve().relative_to(root).parts
    except ValueError:
        if path.is_absolute():
            return ()
        return path.parts  # a relative path outside the working folder: taken as relative to root


def design_from_paths(paths: Iterable[PathLike], root: PathLike | None = None) -> pd.DataFrame:
    """Build a study design from folders: ``<root>/<group>/<subject>/<micrograph>``.

    Parameters
    ----------
    paths : iterable of str or os.PathLike
        Micrograph files. A relative path is taken relative to the working folder, or, when that
        is not under ``root``, relative to ``root``.
    root : str or os.PathLike, optional
        The study folder; default: each file's grandparent folder is its group.

    Returns
    -------
    pandas.DataFrame
        Columns ``image`` (file stem), ``subject``, ``group``, ``path`` (as given), checked by
        :func:`check_design`.

    Raises
    ------
    StudyError
        If a path is not exactly two folders below ``root`` (the message names it), no path is
        given, or the design is inconsistent (e.g. one subject folder name in two groups).
    """
    return check_design(pd.DataFrame(_folder_rows(paths, root)),
                        "folders" if root is None else str(root))


def _folder_rows(paths: Iterable[PathLike], root: PathLike | None) -> list[dict[str, str]]:
    base = Path(root).expanduser().resolve() if root is not None else None
    rows = []
    for item in paths:
        parts = _folder_parts(Path(item), base)
        if len(parts) != 3:
            where = str(root) if root is not None else "the study folder"
            raise StudyError(f"{item}: not in a <group>/<subject>/ folder two levels below {where}; "
                             f"put each micrograph in {where}/<group>/<subject>/")
        rows.append({"image": Path(item).stem, "subject": parts[1], "group": parts[0],
                     "path": str(item)})
    if not rows:
        raise StudyError("no micrograph paths to take groups and subjects from")
    return rows


def design_from_table(regions: pd.DataFrame, root: PathLike) -> pd.DataFrame:
    """Study design from the ``path`` column of a regions table (:func:`design_from_paths`).

    Parameters
    ----------
    regions : pandas.DataFrame
        Regions table with columns ``image`` and ``path`` (the micrograph each row came from).
    root : str or os.PathLike
        The study folder holding ``<group>/<subject>/<micrograph>``.

    Returns
    -------
    pandas.DataFrame
        As :func:`design_from_paths`, with ``image`` as named in the table.

    Raises
    ------
    StudyError
        If the table has no ``path`` column, an image has no path, or a path is misplaced.
    """
    _require_columns(regions, ("image", "path"), "regions table (folders give the design)")
    pairs = pd.DataFrame({"image": _text(regions["image"]), "path": _text(regions["path"])})
    pairs = pairs.drop_duplicates(ignore_index=True)
    blank = pairs.loc[pairs["path"].eq(""), "image"].tolist()
    if blank:
        raise StudyError(f"{len(blank)} image(s) of the regions tables have no path (e.g. "
                         f"{_examples(blank)}); groups and subjects from folders need the path of "
                         f"every micrograph, or write a study design CSV")
    design = pd.DataFrame(_folder_rows(pairs["path"], root)).assign(image=pairs["image"])
    return check_design(design, str(root))


# -------------------------------------------------------------------------------------------------
# Summaries
# -------------------------------------------------------------------------------------------------
@dataclass
class StudySummary:
    """Per-image, per-subject and per-group tables of a study (:func:`summarise_study`).

    Parameters
    ----------
    per_image : pandas.DataFrame
        The regions table's whole-image rows joined with the design: ``group, subject, image,
        region, region_name``, the metrics, then the table's other columns.
    per_subject : pandas.DataFrame
        One row per group, subject, region and metric: ``n_images``, ``mean``, ``sd``, ``sem``
        over the subject's images, and ``pooled`` (ratio metrics: sum of numerators over sum of
        denominators of the subject's images; NaN for other metrics).
    per_group : pandas.DataFrame
        One row per group, region and metric: ``n_subjects``, ``mean``, ``sd``, ``sem`` over the
        subject means (each subject weighs the same), ``n_images``, and ``pooled`` over all the
        group's images.
    design : pandas.DataFrame
        The checked design.
    metrics : tuple of str
        Metrics summarised (those present in the tables).
    warnings : list of str
        Images in the design but not in the tables, and the reverse.
    notes : list of str
        Metrics skipped, tiles pooled, and the like.
    """

    per_image: pd.DataFrame
    per_subject: pd.DataFrame
    per_group: pd.DataFrame
    design: pd.DataFrame
    metrics: tuple[str, ...]
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def groups(self) -> list[str]:
        """Groups with measured images, sorted."""
        return sorted(self.per_image["group"].unique())

    @property
    def regions(self) -> list[str]:
        """Regions measured, A, I, Z, S, N first."""
        return _ordered(self.per_image["region"].unique())


def _ordered(regions: Iterable[str]) -> list[str]:
    rank = {r: i for i, r in enumerate(_REGION_ORDER)}
    return sorted(set(regions), key=lambda r: (rank.get(r, len(rank)), r))


def _sorted(frame: pd.DataFrame, metrics: Sequence[str] = (),
            by: Sequence[str] = ("group", "subject", "image", "region", "metric")) -> pd.DataFrame:
    """Rows sorted by ``by`` (columns present), regions as :func:`_ordered`, metrics as given."""
    rank = {r: f"{i:03d}{r}" for i, r in enumerate(_ordered(frame["region"]))}
    order = {m: f"{i:03d}" for i, m in enumerate(metrics)}

    def key(col: pd.Series) -> pd.Series:
        if col.name == "region":
            return col.map(rank)
        return col.map(lambda m: order.get(m, m)) if col.name == "metric" else col

    return frame.sort_values([c for c in by if c in frame], key=key, kind="stable",
                             ignore_index=True)


def _check_metrics(metrics: Iterable[str]) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(str(m).strip() for m in metrics))
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise StudyError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}; choose from "
                         f"{', '.join(METRICS)}")
    return names


def _numeric(frame: pd.DataFrame, columns: Iterable[str], what: str = "regions table") -> pd.DataFrame:
    for column in columns:
        try:
            frame[column] = pd.to_numeric(frame[column])
        except (ValueError, TypeError):
            bad = frame[column][pd.to_numeric(frame[column], errors="coerce").isna()
                                & frame[column].notna()]
            raise StudyError(f"column {column} of the {what} holds text where numbers are "
                             f"expected (e.g. {bad.iloc[0]!r} for image {frame['image'][bad.index[0]]!r})"
                             ) from None
    return frame


def _split_tiles(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(whole-image rows, rows of images measured only per tile)."""
    if "tile" not in frame:
        return frame, frame.iloc[:0]
    whole = _text(frame["tile"]).eq("").to_numpy()
    has_whole = frame["image"][whole].unique()
    return frame[whole], frame[~whole & ~frame["image"].isin(has_whole).to_numpy()]


def _ratio(num: pd.Series, den: pd.Series) -> pd.Series:
    return num.where(den > 0) / den.where(den > 0)


def _pool_tiles(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per image and region from tile rows: sums, weighted means, ratios recomputed."""
    grouped = rows.groupby(["image", "region"], sort=False)
    out = grouped.first()
    sums = [c for c in _SUMMED if c in rows]
    out[sums] = grouped[sums].sum(min_count=1)
    keys = [rows["image"], rows["region"]]
    for metric, weight in _WEIGHTED.items():
        if metric in rows and weight in rows:
            w = rows[weight].where(rows[metric].notna(), 0.0)
            out[metric] = (rows[metric].fillna(0.0) * w).groupby(keys).sum() / w.groupby(keys).sum()
    for metric, (num, den) in _POOLED.items():
        if {metric, num, den} <= set(rows.columns):
            out[metric] = _ratio(out[num], out[den])
    out["tile"] = ""
    return out.reset_index()


def _image_rows(regions: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """One row per image and region: whole-image rows, or the tiles pooled when there are none."""
    _require_columns(regions, ("image", "region"), "regions table")
    if regions.empty:
        raise StudyError("the regions table has no rows")
    frame = regions.copy()
    frame["image"], frame["region"] = _text(frame["image"]), _text(frame["region"])
    frame = _numeric(frame, [c for c in (*METRICS, *_SUMMED) if c in frame])
    whole, tiles = _split_tiles(frame)
    if len(tiles):
        names = list(tiles["image"].unique())
        notes.append(f"{len(names)} image(s) measured only per tile ({_examples(names)}): tiles "
                     f"pooled (areas and counts added, ratios recomputed, vf and mean diameter "
                     f"averaged weighted by area and count)")
        whole = pd.concat([whole, _pool_tiles(tiles)], ignore_index=True)
    twice = whole[whole.duplicated(["image", "region"], keep=False)]
    if len(twice):
        where = (f" (in {', '.join(sorted(twice['source_table'].unique()))})"
                 if "source_table" in twice else "")
        raise StudyError(f"image {twice['image'].iloc[0]!r} region {twice['region'].iloc[0]} has "
                         f"more than one whole-image row{where}; give each micrograph one name "
                         f"and measure it once")
    return whole


def _region_names(frame: pd.DataFrame) -> pd.Series:
    """One name per region letter: the table's first, else the Locations schema's, else the letter."""
    letters = LOCATIONS_SCHEMA.letters
    default = frame["region"].map({letter: LOCATIONS_SCHEMA.names[code]
                                   for code, letter in letters.items()})
    given = _text(frame["region_name"]) if "region_name" in frame else pd.Series("", frame.index)
    names = given.where(given.ne(""), default.fillna(frame["region"]))
    return frame["region"].map(names.groupby(frame["region"]).first())


def _available(table: pd.DataFrame, metrics: tuple[str, ...], notes: list[str]) -> tuple[str, ...]:
    present = []
    for metric in metrics:
        if metric not in table:
            notes.append(f"metric {metric}: no such column in the regions tables; skipped")
        elif not np.isfinite(table[metric].to_numpy(float)).any():
            notes.append(f"metric {metric}: no values in the regions tables; skipped")
        else:
            present.append(metric)
    if not present:
        raise StudyError(f"none of the metrics {', '.join(metrics)} has values in the regions tables")
    return tuple(present)


def _join_design(table: pd.DataFrame, design: pd.DataFrame,
                 warnings: list[str]) -> pd.DataFrame:
    in_design, in_tables = set(design["image"]), set(table["image"])
    if not in_design & in_tables:
        raise StudyError(
            f"none of the {len(in_design)} images of the study design is in the regions tables "
            f"(design: {_examples(sorted(in_design))}; tables: {_examples(sorted(in_tables))}); the "
            f"design's image column must name micrographs as the tables do (file stem)")
    for names, where, other in ((in_design - in_tables, "the study design", "regions tables"),
                                (in_tables - in_design, "the regions tables", "study design")):
        if names:
            warnings.append(f"{len(names)} image(s) in {where} but not in the {other}, left out: "
                            f"{_examples(sorted(names))}")
    return design[_design_columns(design)].merge(
        table.drop(columns=["group", "subject", WEIGHT], errors="ignore"), on="image")


def _describe(frame: pd.DataFrame, keys: list[str], count: str) -> pd.DataFrame:
    out = frame.groupby(keys, sort=False)["value"].agg(**{count: "count", "mean": "mean",
                                                           "sd": "std"}).reset_index()
    if WEIGHT in frame:  # the weighted mean of the images (SD and SEM stay unweighted)
        valid = frame["value"].notna()
        w = frame[WEIGHT].where(valid, 0.0)
        parts = frame.assign(_wv=(frame["value"].fillna(0.0) * w), _w=w)
        sums = parts.groupby(keys, sort=False)[["_wv", "_w"]].sum()
        mean = (sums["_wv"] / sums["_w"].where(sums["_w"] > 0)).rename("mean")
        out = out.drop(columns="mean").merge(mean.reset_index(), on=keys, how="left")
        out = out[[*keys, count, "mean", "sd"]]
    out["sem"] = out["sd"] / np.sqrt(out[count])
    return out


def _with_pooled(stats: pd.DataFrame, per_image: pd.DataFrame, keys: list[str],
                 metrics: tuple[str, ...]) -> pd.DataFrame:
    pooled = []
    for metric in metrics:
        num, den = _POOLED.get(metric, ("", ""))
        if num in per_image and den in per_image:
            w = per_image[WEIGHT] if WEIGHT in per_image else 1.0
            weighted = per_image.assign(**{num: per_image[num] * w, den: per_image[den] * w})
            sums = weighted.groupby(keys)[[num, den]].sum(min_count=1)
            pooled.append(pd.DataFrame({"metric": metric, "pooled": _ratio(sums[num], sums[den])})
                          .reset_index())
    if not pooled:
        return stats.assign(pooled=np.nan)
    return stats.merge(pd.concat(pooled), on=[*keys, "metric"], how="left")


def _long(per_image: pd.DataFrame, metrics: tuple[str, ...]) -> pd.DataFrame:
    ids = ["group", "subject", "image", "region", "region_name"] + ([WEIGHT] if WEIGHT in per_image else [])
    return per_image.melt(id_vars=ids, value_vars=list(metrics), var_name="metric", value_name="value")


def summarise_study(regions: pd.DataFrame, design: pd.DataFrame,
                    metrics: Sequence[str] = DEFAULT_METRICS) -> StudySummary:
    """Join a regions table with a study design and summarise it per image, subject and group.

    Parameters
    ----------
    regions : pandas.DataFrame
        Regions table (:func:`read_regions_tables`): one row per image and region, columns
        ``image``, ``region`` and the metrics (plus ``granule_px``, ``area_px``, ... for pooled
        ratios). With a ``tile`` column, whole-image rows (empty tile) are used; an image with tile
        rows only has its tiles pooled.
    design : pandas.DataFrame
        Study design (:func:`read_study_design`, :func:`design_from_paths`).
    metrics : sequence of str, optional
        Names from :data:`METRICS`; one missing from the tables is skipped with a note.

    Returns
    -------
    StudySummary
        The tables; images found in only one of design and tables are listed in ``warnings``.

    Raises
    ------
    StudyError
        If the design or table is unusable, a metric name is unknown, no requested metric has
        values, or no image of the design is in the tables.
    """
    design = check_design(design)
    wanted = _check_metrics(metrics)
    notes: list[str] = []
    warnings: list[str] = []
    table = _image_rows(regions, notes)
    metrics = _available(table, wanted, notes)
    per_image = _join_design(table, design, warnings)
    per_image["region_name"] = _region_names(per_image)
    first = ["group", "subject", "image", "region", "region_name", *metrics]
    per_image = _sorted(per_image[first + [c for c in per_image if c not in first]])
    subject_keys = ["group", "subject", "region", "region_name", "metric"]
    per_subject = _describe(_long(per_image, metrics), subject_keys, "n_images")
    per_subject = _sorted(_with_pooled(per_subject, per_image, ["group", "subject", "region"],
                                       metrics), metrics)
    group_keys = ["group", "region", "region_name", "metric"]
    per_group = _describe(per_subject.rename(columns={"mean": "value"}), group_keys, "n_subjects")
    per_group["n_images"] = per_subject.groupby(group_keys, sort=False)["n_images"].sum().to_numpy()
    per_group = _sorted(_with_pooled(per_group, per_image, ["group", "region"], metrics), metrics)
    return StudySummary(per_image, per_subject, per_group, design, metrics, warnings, notes)


# -------------------------------------------------------------------------------------------------
# Hierarchical bootstrap
# -------------------------------------------------------------------------------------------------
def _subject_arrays(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Values per subject, zero-padded to ``(n_subjects, most images)``, the image counts, and the
    images' weights padded alike (1 without a weight column)."""
    if WEIGHT not in rows:
        rows = rows.assign(**{WEIGHT: 1.0})
    grouped = list(rows.groupby("subject"))
    counts = np.array([len(g) for _, g in grouped])
    padded, weights = np.zeros((counts.size, counts.max())), np.zeros((counts.size, counts.max()))
    for i, (_, g) in enumerate(grouped):
        padded[i, :len(g)] = g["value"].to_numpy(float)
        weights[i, :len(g)] = g[WEIGHT].to_numpy(float)
    return padded, counts, weights


def _group_statistic(values: np.ndarray, counts: np.ndarray, weights: np.ndarray) -> float:
    return float(np.mean((values * weights).sum(axis=1) / weights.sum(axis=1)))


def _resample_group(values: np.ndarray, counts: np.ndarray, weights: np.ndarray, n_boot: int,
                    rng: np.random.Generator) -> np.ndarray:
    """Mean over resampled subjects of their resampled image means, one per replicate.

    Subjects are drawn with replacement (as many as the group has); each drawn subject's images
    are drawn with replacement (as many as it has). Replicates are done in chunks of whole arrays.
    """
    n_sub, width = values.shape
    out = np.empty(n_boot)
    step = max(1, _MAX_DRAWS // (n_sub * width))
    columns = np.arange(width)
    for start in range(0, n_boot, step):
        b = min(step, n_boot - start)
        subjects = rng.integers(0, n_sub, size=(b, n_sub))
        n = counts[subjects]
        images = np.minimum((rng.random((b, n_sub, width)) * n[..., None]).astype(np.intp),
                            n[..., None] - 1)
        inside = columns < n[..., None]
        w = np.where(inside, weights[subjects[..., None], images], 0.0)
        sums = np.where(inside, values[subjects[..., None], images] * w, 0.0).sum(axis=-1)
        out[start:start + b] = (sums / w.sum(axis=-1)).mean(axis=-1)
    return out


def _comparison(region: str, name: str, metric: str, group: str, reference: str,
                data: dict, boots: dict, n_boot: int) -> dict:
    diff = boots[group] - boots[reference]
    low, high = np.percentile(diff, [2.5, 97.5])
    tail = min(int((diff <= 0).sum()), int((diff >= 0).sum()))
    mean_g, mean_r = (_group_statistic(*data[g]) for g in (group, reference))
    return {"region": region, "region_name": name, "metric": metric, "group": group,
            "reference": reference, "mean_group": mean_g, "mean_reference": mean_r,
            "difference": mean_g - mean_r, "ci_low": float(low), "ci_high": float(high),
            "p_value": min(1.0, 2.0 * (tail + 1) / (n_boot + 1)),
            "n_subjects_group": data[group][1].size, "n_subjects_reference": data[reference][1].size,
            "n_images_group": int(data[group][1].sum()),
            "n_images_reference": int(data[reference][1].sum()), "n_boot": n_boot}


def _compare_region(rows: pd.DataFrame, region: str, metric: str, n_boot: int, seed: int,
                    reference: str | None, notes: list[str]) -> list[dict]:
    label = f"region {region}, {metric}"
    data = {g: _subject_arrays(r) for g, r in rows.groupby("group")}
    few = sorted(g for g, (_, counts, _) in data.items() if counts.size < 2)
    if few:
        notes.append(f"{label}: group(s) {', '.join(few)} have fewer than 2 subjects with values; "
                     f"left out of the test")
    data = {g: d for g, d in data.items() if g not in few}
    groups = sorted(data)
    ref = groups[0] if reference is None and groups else reference
    if len(groups) < 2 or ref not in data:
        why = "fewer than 2 groups" if len(groups) < 2 else f"no reference group {ref!r}"
        notes.append(f"{label}: {why} with at least 2 subjects; no test")
        return []
    rng = np.random.default_rng(seed)
    boots = {g: _resample_group(*data[g], n_boot, rng) for g in groups}
    name = str(rows["region_name"].iloc[0]) if "region_name" in rows else region
    return [_comparison(region, name, metric, g, ref, data, boots, n_boot)
            for g in groups if g != ref]


def _check_count(value: int, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise StudyError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def hierarchical_bootstrap(per_image: pd.DataFrame, design: pd.DataFrame, metric: str = "pf",
                           region: str | None = None, *, n_boot: int = 10000, seed: int = 0,
                           reference: str | None = None,
                           notes: list[str] | None = None) -> pd.DataFrame:
    """Compare groups by a two-level (subjects, then images) bootstrap of the group mean.

    In every replicate, each group's subjects are drawn with replacement (as many as the group
    has), then each drawn subject's images with replacement (as many as it has); the group
    statistic is the mean over the drawn subjects of their image means, so every subject weighs
    the same whatever its number of images (Saravanan, Berman & Sober 2020, "Application of the
    hierarchical bootstrap to multi-level data in neuroscience", Neurons, Behavior, Data analysis,
    and Theory 3(5), arXiv:2007.07797). Groups are resampled independently; the difference of
    each group to the reference group is taken replicate by replicate.

    Parameters
    ----------
    per_image : pandas.DataFrame
        One row per image and region with columns ``image``, ``region`` and ``metric``, e.g.
        :attr:`StudySummary.per_image` or a regions table (tiles handled as in
        :func:`summarise_study`). Images with a NaN value (e.g. pf of an absent region) are left
        out.
    design : pandas.DataFrame
        Study design giving each image's subject and group.
    metric : str, optional
        Column to compare (default ``"pf"``).
    region : str, optional
        Region letter; default every region in ``per_image``.
    n_boot : int, optional
        Bootstrap replicates (default 10000).
    seed : int, optional
        Seed of the random generator; each region starts from it, so results do not depend on
        which other regions or metrics are tested.
    reference : str, optional
        Group the others are compared with; default the first group in sorted order.
    notes : list of str, optional
        Tests skipped (fewer than 2 groups, a group with fewer than 2 subjects) are explained
        here.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`TEST_COLUMNS`, one row per region and non-reference group: ``mean_group``
        and ``mean_reference`` (means of subject means), ``difference`` (group - reference),
        ``ci_low``/``ci_high`` (2.5 and 97.5 percentiles of the bootstrap differences) and
        ``p_value`` = 2 x the share of bootstrap differences on the far side of 0 (at or beyond
        it), counted as ``(k + 1) / (n_boot + 1)`` so it is never 0, and at most 1.

    Raises
    ------
    StudyError
        If ``metric`` is not a column, ``n_boot`` < 1, or the design is unusable.
    """
    n_boot = _check_count(n_boot, "n_boot", 1)
    notes = [] if notes is None else notes
    frame = _image_rows(per_image.drop(columns=["group", "subject"], errors="ignore"), [])
    _require_columns(frame, (metric,), "the per-image table")
    checked = check_design(design)
    frame = checked[_design_columns(checked)].merge(frame.drop(columns=[WEIGHT], errors="ignore"),
                                                    on="image")
    frame["value"] = frame[metric].to_numpy(float)
    frame = frame[np.isfinite(frame["value"].to_numpy())]
    if "region_name" not in frame:
        frame["region_name"] = _region_names(frame)
    regions = [region] if region is not None else _ordered(frame["region"])
    rows = [row for r in regions
            for row in _compare_region(frame[frame["region"] == r], r, metric, n_boot, seed,
                                       reference, notes)]
    return pd.DataFrame(rows, columns=list(TEST_COLUMNS))


def compare_groups(summary: StudySummary, *, n_boot: int = 10000, seed: int = 0,
                   reference: str | None = None, notes: list[str] | None = None) -> pd.DataFrame:
    """:func:`hierarchical_bootstrap` of every metric and region of a study summary.

    Parameters
    ----------
    summary : StudySummary
        From :func:`summarise_study`.
    n_boot, seed, reference, notes
        As :func:`hierarchical_bootstrap`.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`TEST_COLUMNS`, sorted by region, then metric.
    """
    notes = [] if notes is None else notes
    subjects = summary.per_image.groupby("group")["subject"].nunique()
    if len(subjects) < 2:
        notes.append(f"one group only ({subjects.index[0]}): no test between groups")
        return pd.DataFrame(columns=list(TEST_COLUMNS))
    if subjects.min() < 5:
        notes.append(f"group(s) with fewer than 5 subjects ({', '.join(subjects.index[subjects < 5])}):"
                     f" with so few subjects bootstrap intervals tend to be too narrow and p too small; "
                     f"read them with caution")
    tests = [hierarchical_bootstrap(summary.per_image, summary.design, m, n_boot=n_boot, seed=seed,
                                    reference=reference, notes=notes) for m in summary.metrics]
    tests = [t for t in tests if len(t)]
    if not tests:
        return pd.DataFrame(columns=list(TEST_COLUMNS))
    return _sorted(pd.concat(tests, ignore_index=True), summary.metrics,
                   by=("region", "metric", "group"))


# -------------------------------------------------------------------------------------------------
# Particles
# -------------------------------------------------------------------------------------------------
def _as_bool(series: pd.Series) -> pd.Series:
    if series.dtype == bool:
        return series
    return _text(series).str.lower().isin(("true", "1", "1.0", "yes"))


def _particle_rows(particles: pd.DataFrame, design: pd.DataFrame,
                   notes: list[str] | None = None) -> pd.DataFrame:
    """Kept particles with a finite diameter, whole-image rows preferred, joined with the design."""
    _require_columns(particles, ("image", "equivalent_diameter_nm"), "particles table")
    frame = particles.copy()
    frame["image"] = _text(frame["image"])
    if "region" in frame:
        frame["region"] = _text(frame["region"])
    if "kept" in frame:
        frame = frame[_as_bool(frame["kept"]).to_numpy()]
    frame = _numeric(frame, ["equivalent_diameter_nm"], "particles table")
    frame = pd.concat(_split_tiles(frame[np.isfinite(frame["equivalent_diameter_nm"])]))
    design = check_design(design)
    extra = sorted(set(frame["image"]) - set(design["image"]))
    if extra and notes is not None:
        notes.append(f"particles of {len(extra)} image(s) not in the study design left out: "
                     f"{_examples(extra)}")
    return design[list(DESIGN_COLUMNS)].merge(
        frame.drop(columns=["group", "subject"], errors="ignore"), on="image")


# -------------------------------------------------------------------------------------------------
# Plots
# -------------------------------------------------------------------------------------------------
def _figure(n_panels: int, columns: int = 3) -> tuple[Figure, np.ndarray]:
    """A matplotlib Figure on the Agg canvas (no display, no pyplot) and its axes, row-major."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = min(n_panels, columns)
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(max(6.0, 0.5 + 4.3 * ncols), 0.6 + 3.6 * nrows), dpi=100,
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def _save(fig: Figure, path: PathLike) -> list[Path]:
    """Write ``fig`` as ``<path>.png`` and ``<path>.svg`` (a .png/.svg suffix of path is dropped)."""
    p = Path(path).expanduser()
    base = p.with_suffix("") if p.suffix.lower() in (".png", ".svg") else p
    targets = []
    for fmt in ("png", "svg"):
        target = base.with_name(f"{base.name}.{fmt}")
        with atomic_output(target) as tmp:
            fig.savefig(tmp, format=fmt, dpi=120)
        targets.append(target)
    return targets


def _colours(groups: Sequence[str]) -> dict[str, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {g: cmap(i % cmap.N) for i, g in enumerate(groups)}


def _bars_and_points(ax: Axes, summary: StudySummary, group: str, metric: str, x: pd.Series,
                     width: float, colour: tuple, rng: np.random.Generator) -> None:
    """One group's bars (mean of subject means +- SEM) and jittered subject means on ``ax``."""
    def rows(table: pd.DataFrame) -> pd.DataFrame:
        return table[(table["group"] == group) & (table["metric"] == metric)]

    stats = rows(summary.per_group).set_index("region").reindex(x.index)
    n = summary.per_image.loc[summary.per_image["group"] == group, "subject"].nunique()
    ax.bar(x, stats["mean"], width * 0.9, yerr=stats["sem"].fillna(0.0), color=colour, alpha=0.4,
           edgecolor=colour, capsize=3, label=f"{group} ({n} subjects)")
    subjects = rows(summary.per_subject)
    xs = subjects["region"].map(x).to_numpy(float) + rng.uniform(-0.3, 0.3, len(subjects)) * width
    ax.scatter(xs, subjects["mean"], s=14, color=colour, edgecolors="black", linewidths=0.4,
               zorder=3)


def plot_regions(summary: StudySummary, path: PathLike,
                 metrics: Sequence[str] | None = None) -> list[Path]:
    """Bars per region and group (mean of subject means +- SEM) with the subject means as points.

    Parameters
    ----------
    summary : StudySummary
        From :func:`summarise_study`.
    path : str or os.PathLike
        File stem; ``<path>.png`` and ``<path>.svg`` are written (atomically).
    metrics : sequence of str, optional
        One panel per metric; default all of the summary's.

    Returns
    -------
    list of pathlib.Path
        The PNG and SVG files.
    """
    metrics = tuple(metrics) if metrics else summary.metrics
    groups, regions = summary.groups, summary.regions
    colours = _colours(groups)
    rng = np.random.default_rng(0)  # the same jitter every time
    width = 0.8 / len(groups)
    fig, axes = _figure(len(metrics))
    for ax, metric in zip(axes, metrics, strict=True):
        for i, group in enumerate(groups):
            x = pd.Series(np.arange(len(regions)) + (i - (len(groups) - 1) / 2) * width, regions)
            _bars_and_points(ax, summary, group, metric, x, width, colours[group], rng)
        ax.set_xticks(np.arange(len(regions)), regions)
        ax.set_xlabel("region")
        ax.set_ylabel(METRICS[metric])
        ax.set_ylim(bottom=0)
    axes[0].legend(fontsize="small")
    fig.suptitle("bars: group mean of subject means ± SEM; points: subject means",
                 fontsize="medium")
    return _save(fig, path)


def plot_diameters(particles: pd.DataFrame, design: pd.DataFrame, path: PathLike, *,
                   by_region: bool = False) -> list[Path]:
    """Distribution of the kept granules' equivalent diameters per group (density histograms).

    Parameters
    ----------
    particles : pandas.DataFrame
        Particle table with ``image`` and ``equivalent_diameter_nm`` (``kept``: only kept rows;
        ``tile``: whole-image rows preferred, as in :func:`summarise_study`).
    design : pandas.DataFrame
        Study design.
    path : str or os.PathLike
        File stem; ``<path>.png`` and ``<path>.svg`` are written.
    by_region : bool, optional
        Add one panel per region (needs a ``region`` column) after the all-regions panel.

    Returns
    -------
    list of pathlib.Path
        The PNG and SVG files.

    Raises
    ------
    StudyError
        If no kept particle belongs to an image of the design.
    """
    rows = _particle_rows(particles, design)
    if rows.empty:
        raise StudyError("no kept particle belongs to an image of the study design; nothing to plot")
    panels = [("all regions", rows)]
    if by_region and "region" in rows:
        names = dict(zip(rows["region"], _region_names(rows), strict=True))
        panels += [(f"region {r} ({names[r]})", rows[rows["region"] == r])
                   for r in _ordered(rows["region"])]
    diameters = rows["equivalent_diameter_nm"].to_numpy(float)
    bins = np.histogram_bin_edges(diameters, bins="auto")
    if bins.size > 81:
        bins = np.linspace(diameters.min(), diameters.max(), 81)
    groups = sorted(rows["group"].unique())
    colours = _colours(groups)
    fig, axes = _figure(len(panels))
    for ax, (title, part) in zip(axes, panels, strict=True):
        for group, sel in part.groupby("group"):
            ax.hist(sel["equivalent_diameter_nm"], bins=bins, density=True, histtype="step",
                    linewidth=1.5, color=colours[group],
                    label=f"{group}: {len(sel)} granules, {sel['subject'].nunique()} subjects")
        ax.set_xlabel("equivalent diameter (nm)")
        ax.set_ylabel("density (1/nm)")
        ax.set_title(title)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.3)  # room for the legend
        ax.legend(fontsize="small", loc="upper right")
    fig.suptitle("granule diameters (kept particles) per group", fontsize="medium")
    return _save(fig, path)


# -------------------------------------------------------------------------------------------------
# Running a study
# -------------------------------------------------------------------------------------------------
def _test_line(row: pd.Series) -> str:
    return (f"{row['region']}  {row['metric']:<16} {row['group']} - {row['reference']}: "
            f"{row['difference']:+.4g}  95% CI [{row['ci_low']:.4g}, {row['ci_high']:.4g}]  "
            f"p = {row['p_value']:.3g}  (subjects {row['n_subjects_group']} vs "
            f"{row['n_subjects_reference']})")


@dataclass
class StudyResult:
    """What :func:`run_study` computed and wrote.

    Parameters
    ----------
    summary : StudySummary
        The per-image, per-subject and per-group tables.
    tests : pandas.DataFrame
        The group comparisons (:data:`TEST_COLUMNS`).
    out_dir : pathlib.Path
        The output folder.
    files : list of pathlib.Path
        Files written, in the order of :data:`STUDY_FILES`.
    n_boot, seed : int
        Bootstrap replicates and seed used.
    notes : list of str
        Tests skipped, metrics skipped, particles left out, and the like.
    """

    summary: StudySummary
    tests: pd.DataFrame
    out_dir: Path
    files: list[Path]
    n_boot: int
    seed: int
    notes: list[str] = field(default_factory=list)

    def test_lines(self) -> list[str]:
        """One line per comparison: region, metric, groups, difference, 95% CI, p."""
        return [_test_line(row) for _, row in self.tests.iterrows()]

    def design_lines(self) -> list[str]:
        """One line per group: its subjects and images with measurements."""
        counts = self.summary.per_image.groupby("group").agg(
            subjects=("subject", "nunique"), images=("image", "nunique"))
        return [f"{g}: {r.subjects} subjects, {r.images} images" for g, r in counts.iterrows()]

    def format(self) -> str:
        """A short text report: design, files written, test lines."""
        s = self.summary
        lines = [f"study: {'; '.join(self.design_lines())}; regions {', '.join(s.regions)}; "
                 f"metrics {', '.join(s.metrics)}",
                 f"wrote {len(self.files)} files to {self.out_dir}: "
                 f"{', '.join(f.name for f in self.files)}"]
        if self.tests.empty:
            lines.append("no group comparison (see the notes)")
        else:
            lines.append(f"hierarchical bootstrap, {self.n_boot} replicates, seed {self.seed} "
                         f"(difference = group - reference; 95% percentile CI; two-sided p):")
            lines += ["  " + line for line in self.test_lines()]
        return "\n".join(lines)


_README = """\
Group study of glycogen granule density (napari-emgranules)

Files
  per_image.csv     one row per micrograph and region: the regions table joined with the study
                    design (group, subject); only whole-image rows (tiles pooled where an image
                    was measured per tile only)
  per_subject.csv   per group, subject, region and metric: n_images, mean, sd, sem over the
                    subject's micrographs; pooled = sum of granule px / sum of region px (pf) or
                    sum of granules / sum of area (granules_per_um2) over them
  per_group.csv     per group, region and metric: n_subjects, mean, sd, sem over the subject
                    means (each subject weighs the same), n_images, pooled over all micrographs
  tests.csv         each group against the reference group, per region and metric: means,
                    difference (group - reference), 95% CI, p, subjects and images per group
  regions.png/.svg  bars: group mean of subject means +- SEM; points: subject means (jittered)
  diameters.png/.svg  density histograms of the kept granules' equivalent diameters per group
                    (only when a particles table was given)
  README.txt        this file

Units: pf and vf are fractions (0-1) of the region's area; granules_per_um2 per square
micrometre; diameters in nm.

Method
  Micrographs of one subject are not independent, so groups are compared at the subject level
  with a hierarchical bootstrap (Saravanan, Berman & Sober 2020, "Application of the
  hierarchical bootstrap to multi-level data in neuroscience", Neurons, Behavior, Data
  analysis, and Theory 3(5); arXiv:2007.07797): in each of {n_boot} replicates (seed {seed}),
  each group's subjects are drawn with replacement, then each drawn subject's micrographs
  with replacement; the group statistic is the mean over subjects of the subject means. The
  95% CI holds the 2.5 and 97.5 percentiles of the replicate differences; p is twice the share
  of replicate differences at or beyond 0 on the far side, counted as (k + 1) / (n + 1) and at
  most 1. Groups with fewer than 2 subjects are not tested.
"""


def _readme(result: StudyResult, warnings: list[str]) -> str:
    parts = [_README.format(n_boot=result.n_boot, seed=result.seed), "Design",
             *("  " + line for line in result.design_lines()), "", "Results"]
    parts += ["  " + line for line in result.test_lines()] or ["  no group comparison"]
    for title, items in (("Warnings", warnings), ("Notes", result.notes)):
        if items:
            parts += ["", title, *("  " + item for item in items)]
    return "\n".join(parts) + "\n"


def _write_csv(frame: pd.DataFrame, target: Path) -> Path:
    with atomic_output(target) as tmp:
        frame.to_csv(tmp, index=False)
    return target


def run_study(design: pd.DataFrame, regions: pd.DataFrame, particles: pd.DataFrame | None = None,
              *, out_dir: PathLike, metrics: Sequence[str] = DEFAULT_METRICS, n_boot: int = 10000,
              seed: int = 0, reference: str | None = None, overwrite: bool = False) -> StudyResult:
    """Summarise a study, compare its groups, and write tables, plots and a README to a folder.

    Parameters
    ----------
    design : pandas.DataFrame
        Study design (:func:`read_study_design`, :func:`design_from_paths`).
    regions : pandas.DataFrame
        Regions table(s) (:func:`read_regions_tables`).
    particles : pandas.DataFrame, optional
        Particle table(s) (:func:`read_particles_tables`) for the diameter plot.
    out_dir : str or os.PathLike
        Output folder, created if missing.
    metrics : sequence of str, optional
        As :func:`summarise_study`.
    n_boot, seed, reference
        As :func:`hierarchical_bootstrap`.
    overwrite : bool, optional
        Replace existing output files; otherwise an existing one stops the call before anything
        is written.

    Returns
    -------
    StudyResult
        Tables, tests and the files written (:data:`STUDY_FILES`, the diameter plots only when
        particles of the design's images were given).

    Raises
    ------
    StudyError
        If the inputs are unusable (see :func:`summarise_study`).
    FileExistsError
        If an output file exists and ``overwrite`` is false, or ``out_dir`` is a file.
    """
    n_boot = _check_count(n_boot, "n_boot", 1)
    summary = summarise_study(regions, design, metrics)
    notes = list(summary.notes)
    tests = compare_groups(summary, n_boot=n_boot, seed=seed, reference=reference, notes=notes)
    diameters = particles is not None and not _particle_rows(particles, summary.design, notes).empty
    if particles is not None and not diameters:
        notes.append("no kept particle belongs to an image of the study design; no diameter plot")
    folder = Path(out_dir).expanduser()
    names = [n for n in STUDY_FILES if diameters or not n.startswith("diameters.")]
    _refuse_existing(folder, [folder / n for n in names], overwrite)
    files = [_write_csv(frame, folder / name) for frame, name in (
        (summary.per_image, "per_image.csv"), (summary.per_subject, "per_subject.csv"),
        (summary.per_group, "per_group.csv"), (tests, "tests.csv"))]
    files += plot_regions(summary, folder / "regions")
    if diameters:
        files += plot_diameters(particles, summary.design, folder / "diameters", by_region=True)
    result = StudyResult(summary, tests, folder, files, n_boot, seed, notes)
    with atomic_output(folder / "README.txt") as tmp:
        tmp.write_text(_readme(result, summary.warnings), encoding="utf-8")
    files.append(folder / "README.txt")
    return result


def _refuse_existing(folder: Path, targets: list[Path], overwrite: bool) -> None:
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder}: is a file, not a folder; give a folder for the study")
    if overwrite:
        return
    for target in targets:
        if target.exists():
            raise FileExistsError(f"{target}: exists already; choose another folder or overwrite "
                                  f"(overwrite=True, --overwrite)")
