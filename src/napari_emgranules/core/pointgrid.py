"""Point counting, as muscle labs measure glycogen by hand, and its agreement with the pixels.

A square grid of points (spacing in nm, a random offset drawn from a recorded seed) is laid over a
micrograph; each point is scored for the region it falls in and whether it hits a granule. Per
region: points, hits, the point-count fraction ``hits / points`` with its exact binomial
(Clopper-Pearson) confidence interval, next to the same fraction from all pixels. A lab's own
manual scores (a CSV of point coordinates, region and hit) are compared with the automated ones
per image and region: differences, Bland-Altman bias and limits of agreement, and Lin's
concordance correlation coefficient.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .schema import LOCATIONS_SCHEMA, ClassSchema

POINT_COLUMNS = ("image", "point", "row", "col", "region_code", "region", "hit")
GRID_COLUMNS = ("image", "region", "region_code", "points", "hits", "pf_points", "pf_low", "pf_high",
                "pf_pixels", "area_fraction_points", "area_fraction_pixels", "spacing_nm", "seed",
                "offset_row_px", "offset_col_px")


class PointGridError(ValueError):
    """A grid or a manual score sheet that cannot be used (the message names the problem)."""


@dataclass(frozen=True)
class PointGrid:
    """A square point grid over an image of ``shape`` px: points at ``offset + k * spacing``."""

    shape: tuple[int, int]
    pixel_size_nm: float
    spacing_nm: float
    offset_px: tuple[float, float]
    seed: int | None = None

    @property
    def spacing_px(self) -> float:
        return self.spacing_nm / self.pixel_size_nm

    def points(self) -> np.ndarray:
        """``(n, 2)`` point positions (row, col) in pixel coordinates (pixel centres at k + 0.5)."""
        rows = np.arange(self.offset_px[0], self.shape[0], self.spacing_px)
        cols = np.arange(self.offset_px[1], self.shape[1], self.spacing_px)
        rr, cc = np.meshgrid(rows, cols, indexing="ij")
        return np.column_stack([rr.ravel(), cc.ravel()])


def make_grid(shape: Sequence[int], pixel_size_nm: float, spacing_nm: float,
              seed: int | None = 0) -> PointGrid:
    """A grid of ``spacing_nm`` with a random offset (uniform within one spacing) from ``seed``."""
    h, w = (int(v) for v in shape[:2])
    px = float(pixel_size_nm)
    if not (math.isfinite(px) and px > 0):
        raise PointGridError(f"the pixel size must be a positive number of nm, got {pixel_size_nm!r}")
    spacing_px = float(spacing_nm) / px
    if not math.isfinite(spacing_px) or spacing_px < 1:
        raise PointGridError(f"grid spacing {spacing_nm} nm is below one pixel ({px:g} nm)")
    if spacing_px > min(h, w):
        raise PointGridError(f"grid spacing {spacing_nm} nm ({spacing_px:.0f} px) is larger than the "
                             f"image ({h} x {w} px): no point would fall on it reliably")
    rng = np.random.default_rng(seed)
    offset = tuple(float(v) for v in rng.uniform(0, spacing_px, 2))
    return PointGrid((h, w), px, float(spacing_nm), offset, seed)


def score_points(grid: PointGrid, locations: np.ndarray, granules: np.ndarray, *,
                 schema: ClassSchema = LOCATIONS_SCHEMA, image: str = "image") -> pd.DataFrame:
    """Each grid point's region (the label under it) and whether it hits a granule."""
    loc, gra = np.asarray(locations), np.asarray(granules)
    if loc.shape != gra.shape or loc.shape != tuple(grid.shape):
        raise PointGridError(f"{image}: the label maps ({loc.shape}, {gra.shape}) and the grid "
                             f"({grid.shape}) differ in size")
    pts = grid.points()
    r, c = np.floor(pts[:, 0]).astype(int), np.floor(pts[:, 1]).astype(int)
    codes = loc[r, c].astype(int)
    return pd.DataFrame({
        "image": image, "point": np.arange(len(pts)), "row": pts[:, 0], "col": pts[:, 1],
        "region_code": codes, "region": [schema.letters.get(int(k), str(int(k))) for k in codes],
        "hit": gra[r, c] == 1,
    }, columns=list(POINT_COLUMNS))


def binomial_interval(k: np.ndarray, n: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Exact (Clopper-Pearson) interval of a proportion ``k / n`` (NaN where ``n`` is 0)."""
    from scipy.stats import beta

    k, n = np.asarray(k, float), np.asarray(n, float)
    a = (1 - level) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        low = np.where(k > 0, beta.ppf(a, k, n - k + 1), 0.0)
        high = np.where(k < n, beta.ppf(1 - a, k + 1, n - k), 1.0)
    low, high = np.where(n > 0, low, np.nan), np.where(n > 0, high, np.nan)
    return low, high


def grid_table(points: pd.DataFrame, locations: np.ndarray | None = None,
               granules: np.ndarray | None = None, *, grid: PointGrid | None = None,
               schema: ClassSchema = LOCATIONS_SCHEMA, level: float = 0.95) -> pd.DataFrame:
    """Per measured region: points, hits, point-count pf with its interval, and (given the label
    maps) the pixel pf and area fractions side by side."""
    rows = []
    for image, pts in points.groupby("image", sort=False) if len(points) else []:
        for code in schema.measured_codes:
            sel = pts["region_code"] == code
            n, k = int(sel.sum()), int(pts.loc[sel, "hit"].sum())
            row: dict[str, Any] = {"image": image, "region": schema.letters[code], "region_code": code,
                                   "points": n, "hits": k, "pf_points": k / n if n else math.nan,
                                   "area_fraction_points": n / len(pts) if len(pts) else math.nan}
            low, high = binomial_interval(np.array([k]), np.array([n]), level)
            row["pf_low"], row["pf_high"] = float(low[0]), float(high[0])
            if locations is not None and granules is not None:
                region = np.asarray(locations) == code
                area = int(region.sum())
                row["pf_pixels"] = (int((np.asarray(granules)[region] == 1).sum()) / area
                                    if area else math.nan)
                row["area_fraction_pixels"] = area / region.size
            if grid is not None:
                row.update(spacing_nm=grid.spacing_nm, seed=grid.seed, offset_row_px=grid.offset_px[0],
                           offset_col_px=grid.offset_px[1])
            rows.append(row)
    return pd.DataFrame(rows, columns=list(GRID_COLUMNS))


def read_manual_scores(path: str | os.PathLike, *, schema: ClassSchema = LOCATIONS_SCHEMA,
                       shapes: dict[str, tuple[int, int]] | None = None) -> pd.DataFrame:
    """A lab's manual point scores: CSV with ``image``, ``row``, ``col`` (pixels), ``region``
    (letter or code) and ``hit`` (1/0, yes/no, true/false). Returns :data:`POINT_COLUMNS` rows.

    ``shapes`` (image name -> (rows, cols)) checks that every point lies on its image.
    """
    p = Path(path)
    try:
        table = pd.read_csv(p, dtype={"image": str, "region": str})
    except FileNotFoundError:
        raise PointGridError(f"{p}: no such file") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise PointGridError(f"{p}: not a readable CSV of point scores ({exc})") from None
    missing = [c for c in ("image", "row", "col", "region", "hit") if c not in table.columns]
    if missing:
        raise PointGridError(f"{p}: lacks the column(s) {', '.join(missing)} (needed: image, row, col, "
                             "region, hit)")
    by_letter = {c.letter.upper(): c.code for c in schema.classes}
    codes, bad = [], []
    for i, value in enumerate(table["region"].astype(str).str.strip()):
        code = by_letter.get(value.upper())
        if code is None and value.lstrip("-").isdigit() and 0 <= int(value) < schema.n_classes:
            code = int(value)
        if code is None:
            bad.append(f"line {i + 2}: {value!r}")
        codes.append(code)
    if bad:
        letters = ", ".join(f"{c.letter} ({c.code})" for c in schema.classes)
        raise PointGridError(f"{p}: unknown region(s) {'; '.join(bad[:5])}; the regions are {letters}")
    hits = table["hit"].astype(str).str.strip().str.lower()
    known = hits.isin(["1", "0", "yes", "no", "true", "false", "y", "n"])
    if not known.all():
        line = int(np.flatnonzero(~known.to_numpy())[0]) + 2
        raise PointGridError(f"{p}: line {line}: hit {table['hit'].iloc[line - 2]!r} is not 1/0 or yes/no")
    rows_, cols_ = pd.to_numeric(table["row"], errors="coerce"), pd.to_numeric(table["col"], errors="coerce")
    if rows_.isna().any() or cols_.isna().any():
        line = int(np.flatnonzero((rows_.isna() | cols_.isna()).to_numpy())[0]) + 2
        raise PointGridError(f"{p}: line {line}: row and col must be numbers (pixels)")
    for image, (h, w) in (shapes or {}).items():
        sel = table["image"] == image
        out = sel & ((rows_ < 0) | (rows_ >= h) | (cols_ < 0) | (cols_ >= w))
        if out.any():
            line = int(np.flatnonzero(out.to_numpy())[0]) + 2
            raise PointGridError(f"{p}: line {line}: point ({rows_[out].iloc[0]:g}, "
                                 f"{cols_[out].iloc[0]:g}) lies outside {image} ({h} x {w} px)")
    return pd.DataFrame({
        "image": table["image"], "point": np.arange(len(table)), "row": rows_, "col": cols_,
        "region_code": codes, "region": [schema.letters[c] for c in codes],
        "hit": hits.isin(["1", "yes", "true", "y"]),
    }, columns=list(POINT_COLUMNS))


def lins_ccc(x: Sequence[float], y: Sequence[float]) -> float:
    """Lin's concordance correlation coefficient (1 = identical; NaN with fewer than 2 pairs)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 2:
        return math.nan
    sxy = float(np.mean((x - x.mean()) * (y - y.mean())))
    denom = float(x.var() + y.var() + (x.mean() - y.mean()) ** 2)
    return 1.0 if denom == 0 else 2 * sxy / denom


def agreement(automated: pd.DataFrame, manual: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Automated against manual point-count pf, per image and region, and per region over images.

    Both tables are :func:`grid_table` outputs. Returns ``(per_image, summary)``: the first with
    both pf and their difference (automated - manual); the second per region with the number of
    images, Bland-Altman bias and 95% limits of agreement, and Lin's concordance.
    """
    keys = ["image", "region"]
    both = automated[keys + ["pf_points", "points"]].merge(
        manual[keys + ["pf_points", "points"]], on=keys, suffixes=("_automated", "_manual"))
    both["difference"] = both["pf_points_automated"] - both["pf_points_manual"]
    rows = []
    for region, g in both.groupby("region", sort=False):
        d = g["difference"].dropna()
        bias = float(d.mean()) if len(d) else math.nan
        sd = float(d.std(ddof=1)) if len(d) > 1 else math.nan
        rows.append({"region": region, "images": int(len(d)), "bias": bias,
                     "loa_low": bias - 1.96 * sd, "loa_high": bias + 1.96 * sd,
                     "ccc": lins_ccc(g["pf_points_automated"], g["pf_points_manual"])})
    return both, pd.DataFrame(rows, columns=["region", "images", "bias", "loa_low", "loa_high", "ccc"])


# -------------------------------------------------------------------------------------------------
# Calibration of the automated pf against a lab's manual counts
# -------------------------------------------------------------------------------------------------
CALIBRATION_FORMAT = "napari-emgranules.pf-calibration/1"
MIN_CALIBRATION_IMAGES = 3


@dataclass(frozen=True)
class PfCalibration:
    """Per region a straight line from the automated pixel pf to a lab's manual point-count pf,
    ``manual = intercept + slope * automated``, fitted over images (ordinary least squares), with
    what a 95% prediction interval needs (``n``, mean and spread of the automated pf, residual SD).

    Saved as a small JSON file (:meth:`save`, :meth:`load`), e.g. next to the weights it was fitted
    for; :meth:`apply` adds ``pf_calibrated`` and its interval to a density table and names the
    calibration in every row, so a table always says whether it was calibrated.
    """

    regions: dict[str, dict[str, float]]
    name: str = "calibration"

    @classmethod
    def fit(cls, automated: pd.DataFrame, manual: pd.DataFrame, name: str = "calibration") -> PfCalibration:
        """From :func:`grid_table` outputs: ``automated`` with ``pf_pixels`` (the label maps'),
        ``manual`` with ``pf_points`` (the lab's scores), matched by image and region; regions with
        fewer than :data:`MIN_CALIBRATION_IMAGES` images are left out.

        Raises
        ------
        PointGridError
            When no region has enough images.
        """
        both = automated[["image", "region", "pf_pixels"]].merge(
            manual[["image", "region", "pf_points"]], on=["image", "region"]).dropna()
        regions = {}
        for region, g in both.groupby("region", sort=False):
            x, y = g["pf_pixels"].to_numpy(float), g["pf_points"].to_numpy(float)
            n = len(x)
            sxx = float(((x - x.mean()) ** 2).sum())
            if n < MIN_CALIBRATION_IMAGES or sxx <= 0:
                continue
            slope = float(((x - x.mean()) * (y - y.mean())).sum() / sxx)
            intercept = float(y.mean() - slope * x.mean())
            resid = y - (intercept + slope * x)
            sd = float(np.sqrt((resid ** 2).sum() / (n - 2))) if n > 2 else math.nan
            regions[str(region)] = {"slope": slope, "intercept": intercept, "n": n,
                                    "x_mean": float(x.mean()), "sxx": sxx, "residual_sd": sd,
                                    "slope_se": sd / math.sqrt(sxx),
                                    "intercept_se": sd * math.sqrt(1 / n + x.mean() ** 2 / sxx)}
        if not regions:
            raise PointGridError(f"no region has manual and automated pf on at least "
                                 f"{MIN_CALIBRATION_IMAGES} images with different values: nothing "
                                 "to fit")
        return cls(regions, name)

    def apply(self, table: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
        """``table`` (a density table) with ``pf_calibrated``, ``pf_calibrated_low``/``high`` (the
        prediction interval) and ``pf_calibration`` (this calibration's name; regions it does not
        cover are NaN and say ``"none for this region"``)."""
        from scipy.stats import t as student

        out = table.copy()
        cal, low, high, used = [], [], [], []
        for region, pf in zip(out["region"].astype(str), out["pf"].astype(float), strict=True):
            r = self.regions.get(region)
            if r is None or math.isnan(pf):
                cal.append(math.nan), low.append(math.nan), high.append(math.nan)
                used.append(self.name if r is not None else "none for this region")
                continue
            value = r["intercept"] + r["slope"] * pf
            q = float(student.ppf(0.5 + level / 2, r["n"] - 2))
            half = q * r["residual_sd"] * math.sqrt(1 + 1 / r["n"] + (pf - r["x_mean"]) ** 2 / r["sxx"])
            cal.append(value), low.append(value - half), high.append(value + half), used.append(self.name)
        out["pf_calibrated"], out["pf_calibrated_low"], out["pf_calibrated_high"] = cal, low, high
        out["pf_calibration"] = used
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"format": CALIBRATION_FORMAT, "name": self.name, "regions": self.regions}

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        from .io import atomic_output

        p = Path(path)
        if p.exists() and not overwrite:
            raise FileExistsError(f"{p}: exists already; nothing was written")
        with atomic_output(p) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=1), encoding="utf-8")
        return p

    @classmethod
    def load(cls, source: str | os.PathLike | dict) -> PfCalibration:
        """From a file :meth:`save` wrote, or its dict.

        Raises
        ------
        PointGridError
            Not such a file (missing, not JSON, another format, bad numbers).
        """
        what = "calibration" if isinstance(source, dict) else str(source)
        if isinstance(source, dict):
            data = source
        else:
            try:
                data = json.loads(Path(source).read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise PointGridError(f"{what}: no such file") from None
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise PointGridError(f"{what}: not a calibration file ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
            raise PointGridError(f"{what}: not a pf calibration ({CALIBRATION_FORMAT}); make one with "
                                 "emgranules grid --manual ... --fit-calibration")
        keys = ("slope", "intercept", "n", "x_mean", "sxx", "residual_sd")
        regions = {}
        for region, r in (data.get("regions") or {}).items():
            try:
                regions[str(region)] = {k: float(r[k]) for k in keys} | {
                    k: float(r.get(k, math.nan)) for k in ("slope_se", "intercept_se")}
            except (KeyError, TypeError, ValueError):
                raise PointGridError(f"{what}: region {region!r} lacks numbers {', '.join(keys)}") from None
        if not regions:
            raise PointGridError(f"{what}: calibrates no region")
        return cls(regions, str(data.get("name") or Path(what).name))
