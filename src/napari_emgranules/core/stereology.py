"""From granule pixel fraction on a section to granule volume fraction in the tissue.

A transmission micrograph shows the projection of a whole section of thickness ``t`` (about 70 nm):
every glycogen granule (a sphere of diameter ``h``, 10-45 nm, typically 25 nm) whose centre lies
within ``h / 2`` of the section cuts it and casts a disc. The measured granule pixel fraction of a
region, ``pf`` (granule pixels / region pixels), therefore exceeds the fraction of the tissue volume
that granules occupy, ``vf`` (the Holmes effect): with the defaults ``pf`` is about 4.7 ``vf`` while
the profiles overlap little. Two routes give ``vf`` from ``pf``.

**Baskets** (simulation, the route of Ríos et al., J Gen Physiol 2024): :func:`render_basket`
fills a box with non-overlapping spheres at a known ``vf``, projects the section through it onto the
pixel grid of the micrograph and measures ``pf``; :func:`calibrate_baskets` repeats it over a grid
of ``vf`` and seeds and returns a :class:`Calibration`, the monotone relation ``vf(pf)``. It includes
what the analytical route leaves out: overlap of the projected profiles (``pf`` grows slower than
linearly with ``vf``), the exclusion between granules and pixelation.

- Geometry: a box ``L x L x H``, periodic along all three axes (no edge effects), with the section
  the slab ``0 <= z <= t`` and ``H = max(t + h_max, 2 h_max)``, so each sphere that cuts the slab
  does so by exactly one periodic image. ``L`` is ``size_nm`` rounded to whole pixels.
- Placement: diameters are drawn from a :class:`DiameterDistribution` until their total volume is
  ``vf L^2 H`` (to half a sphere), so ``vf`` is also the nominal fraction of the box; the spheres
  are placed, largest first, by random sequential addition: a random position is kept when the
  sphere overlaps none already placed, else redrawn (vectorised: groups of 256 similar spheres are
  placed together, each group once the larger ones before it are all placed). This packs ``vf`` up
  to :data:`MAX_BASKET_VF` = 0.3 in a fraction of a second; higher values are refused, because the
  packing slows sharply there (equal spheres jam near 0.38, and a sphere that finds no room in
  20,000 tries raises :class:`RuntimeError`). ``vf`` 0.3 already gives ``pf`` about 0.87 with the
  defaults, far above what muscle shows.
- Definition of ``vf``: the fraction of the slab volume ``L^2 t`` that lies inside granules,
  computed exactly from the placed spheres clipped to the slab (they do not overlap, so the clipped
  volumes add). It fluctuates around the requested (nominal) value from basket to basket;
  :func:`render_basket` returns it and the calibration is fitted against its mean.
- Projection: a sphere whose portion inside the slab has height ``>= min_cap_nm`` is drawn as a disc
  of the largest radius of that portion: ``h / 2`` when the centre lies inside the slab, else
  ``sqrt((h/2)^2 - d^2)`` for a centre at distance ``d`` outside a face (a cap). A pixel is granule
  when its centre lies inside a disc; ``pf`` is the fraction of granule pixels.
- Fit: ``vf`` and ``pf`` are averaged over the seeds at each grid point; between the points and the
  origin the relation is interpolated linearly in the coordinates ``(vf, -ln(1 - pf))``, where
  randomly placed discs would lie on a straight line, so the interpolation is monotone, passes
  through ``(0, 0)``, is its own exact inverse (:meth:`Calibration.pf`) and errs little between
  points. Beyond the largest point it gives NaN and an :class:`OutOfCalibrationWarning`.

**Analytical** (classical stereology; no overlap of profiles, so valid while ``pf`` is small). For
a granule of diameter ``h`` (radius ``R = h / 2``), minimum visible cap height ``c`` and section
thickness ``t`` (``0 <= c < t``), a sphere is visible when its centre lies in a range of length
``L(h) = t + h - 2c`` across the slab (0 when ``h < c``), and the projected area summed over that
range is ``A(h) = pi (R^2 t + 4 R^3 / 3 - 2 c^2 R + 2 c^3 / 3)`` for ``h >= 2c`` (the centres inside
the slab give ``pi R^2 t``; the caps add ``pi (R^2 - d^2)`` for ``d`` up to ``R - c`` on both sides).
With ``Nv`` granules per volume and diameters from a distribution:

- ``pf = Aa = Nv E[A(h)] = Nv pi (t E[h^2] / 4 + E[h^3] / 6 - c^2 E[h] + 2 c^3 / 3)``,
- ``Na = Nv E[L(h)] = Nv (t + E[h] - 2c)`` (visible profiles per section area),
- ``vf = Vv = Nv pi E[h^3] / 6``,

so ``vf = pf / k`` with the Holmes factor ``k = E[A] / (pi E[h^3] / 6)`` (:func:`holmes_factor`).
These moment forms hold when every diameter is at least ``2c``; the expectations are taken over the
distribution's quantiles with the exact per-diameter ``L(h)`` and ``A(h)``, which also covers smaller
granules (``c > R``: ``A = pi R^2 L(h)``). The textbook shortcut draws every profile with the full
diameter, ``Na = Aa / (pi E[h^2] / 4)`` and ``Nv = Na / (t + E[h] - 2c)``; as cap profiles are
smaller than that, it undercounts profiles, by 0.5 % with the defaults but 7 % with ``c = 0``. With
``c = 0`` and ``t -> 0`` the factor tends to 1: an infinitely thin section shows the volume fraction
itself (Delesse).

**Minimum visible cap** (``min_cap_nm``, default 5 nm): the beam crosses at most ``c`` nm of granule
in a cap of height ``c``, against 25 nm through the middle of a whole typical granule, so a 5-nm cap
has at most a fifth of the contrast of a whole granule: about the faintest profile that a
segmentation trained on visible granules still marks. Set it from your own images (0 = every cap
seen); with the defaults ``vf`` changes by about 4 % between ``c = 0`` and 5 nm and by about 10 %
between 5 and 10 nm, and ``pf / vf`` is 3.6, 4.7 and 5.8 for 50-, 70- and 90-nm sections.

:func:`vf_from_pf` runs either route with the defaults; :func:`numerical_density` gives granule
counts per area and volume; :func:`vf_to_concentration` scales ``vf`` by a factor of the user's.
"""

from __future__ import annotations

import functools
import logging
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial import cKDTree
from scipy.special import ndtr, ndtri

__all__ = [
    "DEFAULT_BASKET_NM",
    "DEFAULT_DIAMETERS",
    "DEFAULT_PARAMS",
    "MAX_BASKET_VF",
    "METHODS",
    "N_QUANTILES",
    "Calibration",
    "DiameterDistribution",
    "OutOfCalibrationWarning",
    "StereologyParams",
    "analytical_pf",
    "analytical_vf",
    "basket_pf",
    "calibrate_baskets",
    "holmes_factor",
    "numerical_density",
    "render_basket",
    "vf_from_pf",
    "vf_to_concentration",
]

logger = logging.getLogger(__name__)

#: A float in, a float out; an array in, an array of the same shape out.
FloatOrArray = float | np.ndarray

#: Quantiles kept by a :class:`DiameterDistribution` (bounded, so it hashes and caches quickly).
N_QUANTILES = 256
#: Largest volume fraction a basket is filled to (random sequential addition slows sharply beyond).
MAX_BASKET_VF = 0.3
#: Default lateral size of a basket, nm.
DEFAULT_BASKET_NM = 800.0
#: Accepted values of ``method`` in :func:`vf_from_pf`.
METHODS: tuple[str, ...] = ("baskets", "analytical")

# Random sequential addition, batched: each round tries _RSA_BATCH positions shared among the next
# _RSA_GROUP spheres in order of size; a sphere that fails _RSA_MAX_TRIES times counts as jammed.
_RSA_BATCH = 4096
_RSA_GROUP = 256
_RSA_MAX_TRIES = 20_000
# The default calibration grid of calibrate_baskets (and so of vf_from_pf).
_VF_MAX, _N_POINTS, _SEEDS = 0.3, 10, (0, 1, 2)


def _finite(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StereologyParams:
    """Section and imaging parameters shared by both routes.

    Parameters
    ----------
    section_nm : float
        Section thickness ``t``, nm (70 by default; ultrathin sections are 50-90).
    min_cap_nm : float
        Minimum visible cap height ``c``, nm: a granule whose portion inside the section is lower
        than this is not seen (see the module notes for the 5-nm default); 0 = every cap is seen.
        Must satisfy ``0 <= min_cap_nm < section_nm``.
    pixel_size_nm : float
        Pixel size of the micrograph, nm per pixel (used by the baskets only).

    Raises
    ------
    ValueError
        If a value is not a finite number or out of range.
    """

    section_nm: float = 70.0
    min_cap_nm: float = 5.0
    pixel_size_nm: float = 0.8

    def __post_init__(self) -> None:
        section = _finite(self.section_nm, "section_nm")
        cap = _finite(self.min_cap_nm, "min_cap_nm")
        pixel = _finite(self.pixel_size_nm, "pixel_size_nm")
        if section <= 0:
            raise ValueError(f"section_nm is the section thickness and must be > 0 nm (TEM sections are "
                             f"about 50-90 nm), got {section}")
        if pixel <= 0:
            raise ValueError(f"pixel_size_nm must be > 0 nm per pixel (read it from the micrograph's "
                             f"calibration), got {pixel}")
        if not 0 <= cap < section:
            raise ValueError(f"min_cap_nm must be in [0, section_nm) = [0, {section}) nm (0 = every cap "
                             f"visible), got {cap}")
        for name, value in (("section_nm", section), ("min_cap_nm", cap), ("pixel_size_nm", pixel)):
            object.__setattr__(self, name, value)


DEFAULT_PARAMS = StereologyParams()


# --------------------------------------------------------------------------------------------
# Granule diameters
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class DiameterDistribution:
    """Distribution of granule diameters, nm, kept as equally likely quantiles.

    Build it with :meth:`normal` or :meth:`from_samples`. Node ``i`` of ``quantiles_nm`` is the
    quantile at probability ``(i + 0.5) / n``; moments are node means (midpoint rule) and
    :meth:`sample` interpolates the quantile function between the nodes.

    Parameters
    ----------
    quantiles_nm : tuple of float
        Non-decreasing, positive, finite diameters.

    Raises
    ------
    ValueError
        If ``quantiles_nm`` is empty, not one-dimensional, not finite, not positive or not sorted.
    """

    quantiles_nm: tuple[float, ...]

    def __post_init__(self) -> None:
        try:
            nodes = np.asarray(self.quantiles_nm, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"quantiles_nm must be diameters in nm, got {self.quantiles_nm!r}") from None
        if nodes.ndim != 1 or nodes.size == 0:
            raise ValueError("quantiles_nm must be a non-empty sequence of diameters in nm")
        if not np.all(np.isfinite(nodes)) or np.any(nodes <= 0):
            raise ValueError("quantiles_nm must be finite diameters > 0 nm")
        if np.any(np.diff(nodes) < 0):
            raise ValueError("quantiles_nm must be sorted in increasing order")
        object.__setattr__(self, "quantiles_nm", tuple(nodes.tolist()))

    @classmethod
    def normal(cls, mean_nm: float = 25.0, sd_nm: float = 5.0, low_nm: float = 10.0,
               high_nm: float = 45.0) -> DiameterDistribution:
        """Normal distribution truncated to ``[low_nm, high_nm]``.

        Parameters
        ----------
        mean_nm, sd_nm : float
            Mean and standard deviation of the untruncated normal, nm; ``sd_nm = 0`` gives every
            granule the diameter ``mean_nm``.
        low_nm, high_nm : float
            Truncation bounds, nm, ``0 < low_nm <= mean_nm <= high_nm``.

        Returns
        -------
        DiameterDistribution

        Raises
        ------
        ValueError
            If a value is not finite, ``sd_nm < 0`` or the bounds do not bracket the mean.
        """
        mean, sd = _finite(mean_nm, "mean_nm"), _finite(sd_nm, "sd_nm")
        low, high = _finite(low_nm, "low_nm"), _finite(high_nm, "high_nm")
        if sd < 0 or not 0 < low <= mean <= high:
            raise ValueError(f"need sd_nm >= 0 and 0 < low_nm <= mean_nm <= high_nm, got mean_nm={mean}, "
                             f"sd_nm={sd}, low_nm={low}, high_nm={high}")
        if sd == 0:
            return cls((mean,) * N_QUANTILES)
        lo, hi = ndtr((low - mean) / sd), ndtr((high - mean) / sd)
        nodes = mean + sd * ndtri(lo + _probabilities() * (hi - lo))
        return cls(tuple(np.clip(nodes, low, high)))

    @classmethod
    def from_samples(cls, diameters_nm: Sequence[float] | np.ndarray) -> DiameterDistribution:
        """Empirical distribution of measured diameters (e.g. particles' equivalent diameters).

        Parameters
        ----------
        diameters_nm : array_like
            Diameters in nm, all finite and > 0.

        Returns
        -------
        DiameterDistribution
            :data:`N_QUANTILES` quantiles of the samples.

        Raises
        ------
        ValueError
            If there are no samples, or a sample is not finite or not positive.
        """
        try:
            values = np.asarray(diameters_nm, dtype=np.float64).ravel()
        except (TypeError, ValueError):
            raise ValueError(f"diameters_nm must be numbers (nm), got {diameters_nm!r}") from None
        if values.size == 0:
            raise ValueError("diameters_nm is empty: measure at least one granule diameter (nm)")
        if not np.all(np.isfinite(values)) or np.any(values <= 0):
            raise ValueError("diameters_nm must be finite and > 0 nm; drop NaN, infinite and zero "
                             "entries (unmeasured particles) first")
        return cls(tuple(np.quantile(values, _probabilities())))

    @property
    def _nodes(self) -> np.ndarray:
        return np.asarray(self.quantiles_nm)

    @property
    def mean_nm(self) -> float:
        """Mean diameter, nm."""
        return self.moments()[0]

    @property
    def sd_nm(self) -> float:
        """Standard deviation of the diameters, nm."""
        return float(self._nodes.std())

    @property
    def max_nm(self) -> float:
        """Largest diameter, nm."""
        return self.quantiles_nm[-1]

    def moments(self) -> tuple[float, float, float]:
        """Raw moments ``(E[h], E[h^2], E[h^3])`` in nm, nm^2 and nm^3."""
        nodes = self._nodes
        return float(nodes.mean()), float(np.mean(nodes**2)), float(np.mean(nodes**3))

    def sample(self, n: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
        """Draw ``n`` diameters, nm (float64 array), with ``rng`` a Generator or a seed."""
        u = np.random.default_rng(rng).random(int(n))
        nodes = self._nodes
        return np.interp(u * nodes.size - 0.5, np.arange(nodes.size), nodes)

    def __repr__(self) -> str:
        return (f"DiameterDistribution(mean_nm={self.mean_nm:.3g}, sd_nm={self.sd_nm:.3g}, "
                f"range_nm=({self.quantiles_nm[0]:.3g}, {self.max_nm:.3g}))")


def _probabilities() -> np.ndarray:
    return (np.arange(N_QUANTILES) + 0.5) / N_QUANTILES


DEFAULT_DIAMETERS = DiameterDistribution.normal()


# --------------------------------------------------------------------------------------------
# Analytical route
# --------------------------------------------------------------------------------------------


def _fraction_array(values: FloatOrArray, name: str) -> tuple[np.ndarray, bool]:
    try:
        arr = np.array(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or an array of numbers, got {values!r}") from None
    bad = ~np.isnan(arr) & ((arr < 0) | (arr > 1))
    if bad.any():
        raise ValueError(f"{name} must be a fraction in [0, 1] (NaN for a missing value), got "
                         f"{arr[bad][:5].tolist()}")
    return arr, arr.ndim == 0


def _result(arr: np.ndarray, scalar: bool) -> FloatOrArray:
    return float(arr) if scalar else arr


def _profile_terms(h: np.ndarray, params: StereologyParams) -> tuple[np.ndarray, np.ndarray]:
    """Visible centre range ``L(h)`` (nm) and projected area summed over it ``A(h)`` (nm^3)."""
    t, c = params.section_nm, params.min_cap_nm
    r = h / 2
    seen = h >= c
    inner = t - 2 * np.maximum(0.0, c - r)  # centres inside the slab whose portion is tall enough
    cap = np.maximum(0.0, r - c)            # centres outside a face, up to this distance, show caps
    area = np.pi * (r**2 * inner + 2 * (r**2 * cap - cap**3 / 3))
    return np.where(seen, t + h - 2 * c, 0.0), np.where(seen, area, 0.0)


def holmes_factor(diameters: DiameterDistribution = DEFAULT_DIAMETERS,
                  params: StereologyParams = DEFAULT_PARAMS) -> float:
    """``pf / vf`` of sparse granules, ``E[A(h)] / (pi E[h^3] / 6)`` (module notes).

    Parameters
    ----------
    diameters : DiameterDistribution
        Granule diameters.
    params : StereologyParams
        Section thickness and minimum visible cap.

    Returns
    -------
    float
        About 5 with the defaults (70-nm section, 25 +- 5 nm granules, 5-nm caps).
    """
    _, area = _profile_terms(diameters._nodes, params)
    return float(area.mean() / (np.pi / 6 * diameters.moments()[2]))


def analytical_vf(pf: FloatOrArray, diameters: DiameterDistribution = DEFAULT_DIAMETERS,
                  params: StereologyParams = DEFAULT_PARAMS) -> FloatOrArray:
    """Volume fraction from pixel fraction by classical stereology, ``vf = pf / k``.

    Parameters
    ----------
    pf : float or numpy.ndarray
        Granule pixel fraction(s) in [0, 1]; NaN passes through.
    diameters : DiameterDistribution
        Granule diameters.
    params : StereologyParams
        Section thickness and minimum visible cap (``pixel_size_nm`` is not used).

    Returns
    -------
    float or numpy.ndarray
        ``vf``, same shape as ``pf``. Overlap of profiles is ignored, so ``vf`` is underestimated
        once ``pf`` is no longer small (:func:`calibrate_baskets` includes it).

    Raises
    ------
    ValueError
        If a ``pf`` is outside [0, 1].
    """
    arr, scalar = _fraction_array(pf, "pf")
    return _result(arr / holmes_factor(diameters, params), scalar)


def analytical_pf(vf: FloatOrArray, diameters: DiameterDistribution = DEFAULT_DIAMETERS,
                  params: StereologyParams = DEFAULT_PARAMS) -> FloatOrArray:
    """Pixel fraction expected by classical stereology, ``pf = k vf`` (inverse of :func:`analytical_vf`).

    Parameters
    ----------
    vf : float or numpy.ndarray
        Volume fraction(s) in [0, 1]; NaN passes through.
    diameters : DiameterDistribution
        Granule diameters.
    params : StereologyParams
        Section thickness and minimum visible cap.

    Returns
    -------
    float or numpy.ndarray
        ``pf``, linear in ``vf`` and so above 1 for ``vf`` above ``1 / k`` (about 0.2 with the
        defaults), where the no-overlap model has long stopped holding.

    Raises
    ------
    ValueError
        If a ``vf`` is outside [0, 1].
    """
    arr, scalar = _fraction_array(vf, "vf")
    return _result(arr * holmes_factor(diameters, params), scalar)


def numerical_density(pf: FloatOrArray, diameters: DiameterDistribution = DEFAULT_DIAMETERS,
                      params: StereologyParams = DEFAULT_PARAMS) -> tuple[FloatOrArray, FloatOrArray]:
    """Granule counts per section area and per tissue volume, by classical stereology.

    ``Nv = pf / E[A(h)]`` and ``Na = Nv E[L(h)]`` (module notes). Like :func:`analytical_vf` this
    ignores overlap of profiles; for a ``vf`` from the baskets use ``Nv = vf / (pi E[h^3] / 6)``.

    Parameters
    ----------
    pf : float or numpy.ndarray
        Granule pixel fraction(s) in [0, 1]; NaN passes through.
    diameters : DiameterDistribution
        Granule diameters.
    params : StereologyParams
        Section thickness and minimum visible cap.

    Returns
    -------
    na_per_um2 : float or numpy.ndarray
        Visible granule profiles per um^2 of section.
    nv_per_um3 : float or numpy.ndarray
        Granules per um^3 of tissue.

    Raises
    ------
    ValueError
        If a ``pf`` is outside [0, 1].
    """
    arr, scalar = _fraction_array(pf, "pf")
    length, area = _profile_terms(diameters._nodes, params)
    nv_per_nm3 = arr / area.mean()
    return _result(nv_per_nm3 * length.mean() * 1e6, scalar), _result(nv_per_nm3 * 1e9, scalar)


# --------------------------------------------------------------------------------------------
# Baskets: simulated sections
# --------------------------------------------------------------------------------------------


def _basket_box(diameters: DiameterDistribution, params: StereologyParams,
                size_nm: float) -> tuple[int, np.ndarray]:
    """Pixels per side and the periodic box ``(L, L, H)`` in nm."""
    size = _finite(size_nm, "size_nm")
    h_max = diameters.max_nm
    n_px = int(round(size / params.pixel_size_nm))
    if size < 4 * h_max or n_px < 64:
        raise ValueError(f"size_nm must be at least 4 granule diameters ({4 * h_max:.0f} nm) and 64 "
                         f"pixels ({64 * params.pixel_size_nm:.0f} nm), got {size_nm!r}; a few hundred "
                         f"nm to 2 um is usual")
    height = max(params.section_nm + h_max, 2 * h_max)
    side = n_px * params.pixel_size_nm
    return n_px, np.array([side, side, height])


def _draw_diameters(vf: float, volume_nm3: float, diameters: DiameterDistribution,
                    rng: np.random.Generator) -> np.ndarray:
    """Diameters whose volumes add up to ``vf * volume_nm3`` (to half a sphere)."""
    target = vf * volume_nm3
    mean_volume = np.pi / 6 * diameters.moments()[2]
    h = diameters.sample(int(1.2 * target / mean_volume) + 16, rng)
    while np.sum(h**3) * np.pi / 6 < target:
        h = np.concatenate([h, diameters.sample(h.size, rng)])
    volumes = np.pi / 6 * h**3
    return h[: int(np.searchsorted(np.cumsum(volumes) - volumes / 2, target))]


def _clear_of(pos: np.ndarray, r: np.ndarray, centres: np.ndarray, radii: np.ndarray,
              box: np.ndarray) -> np.ndarray:
    """Which candidate spheres overlap none of the placed ones (periodic box)."""
    ok = np.ones(len(pos), dtype=bool)
    if len(centres):
        pairs = cKDTree(pos, boxsize=box).sparse_distance_matrix(
            cKDTree(centres, boxsize=box), r.max() + radii.max(), output_type="ndarray")
        ok[pairs["i"][pairs["v"] < r[pairs["i"]] + radii[pairs["j"]]]] = False
    return ok


def _mutually_clear(pos: np.ndarray, r: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Keep candidates in order, dropping each that overlaps an earlier one."""
    tree = cKDTree(pos, boxsize=box)
    pairs = tree.sparse_distance_matrix(tree, 2 * r.max(), output_type="ndarray")
    i, j = pairs["i"], pairs["j"]
    hit = (i < j) & (pairs["v"] < r[i] + r[j])
    keep = np.ones(len(pos), dtype=bool)
    keep[j[hit]] = False
    return keep


def _place_round(ids: np.ndarray, r: np.ndarray, centres: np.ndarray, placed: np.ndarray,
                 box: np.ndarray, rng: np.random.Generator) -> float:
    """One random position per entry of ``ids``; place the spheres with a clear one.

    Returns the fraction of positions clear of the spheres placed before the round.
    """
    pos = rng.random((ids.size, 3)) * box % box
    ok = _clear_of(pos, r[ids], centres[placed], r[placed], box)
    ids, first = np.unique(ids[ok], return_index=True)  # one position per sphere, the first clear
    pos = pos[ok][first]
    keep = _mutually_clear(pos, r[ids], box) if ids.size else ids.astype(bool)
    centres[ids[keep]], placed[ids[keep]] = pos[keep], True
    return float(ok.mean())


def _tries_for(acceptance: float, most: int) -> int:
    """Tries per sphere that place it with 90 % probability at this acceptance per try."""
    if acceptance >= 0.9:
        return 1
    if acceptance <= 0:
        return most
    return int(min(most, np.ceil(np.log(0.1) / np.log1p(-acceptance))))


def _place_spheres(radii: np.ndarray, box: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Centres (n, 3) of non-overlapping spheres by random sequential addition, largest first.

    Spheres are placed in groups of ``_RSA_GROUP`` in order of size, a group only once the one
    before it is complete; each round gives every sphere left in the group ``reps`` random
    positions, with ``reps`` following the acceptance so that most of them land per round.
    """
    order = np.argsort(-radii, kind="stable")
    r = radii[order]
    centres, placed = np.zeros((r.size, 3)), np.zeros(r.size, dtype=bool)
    tries = np.zeros(r.size, dtype=np.int64)
    reps = 1
    for start in range(0, r.size, _RSA_GROUP):
        group = np.arange(start, min(start + _RSA_GROUP, r.size))
        while group.size:
            acceptance = _place_round(np.repeat(group, reps), r, centres, placed, box, rng)
            tries[group] += reps
            group = group[~placed[group]]
            reps = _tries_for(acceptance, _RSA_BATCH // max(group.size, 1))
            if group.size and tries[group].max() > _RSA_MAX_TRIES:
                raise RuntimeError(f"random sequential addition jammed with {r.size - placed.sum()} granules "
                                   f"left to place: the volume fraction is too high to pack these diameters "
                                   f"without overlap; use a lower vf (or vf_max)")
    out = np.empty_like(centres)
    out[order] = centres
    return out


def _slab_volume(z: np.ndarray, r: np.ndarray, t: float) -> float:
    """Total volume (nm^3) of the spheres' parts inside the slab ``0 <= z <= t``."""
    low, high = np.clip(-z, -r, r), np.clip(t - z, -r, r)
    return float(np.sum(np.pi * (r**2 * (high - low) - (high**3 - low**3) / 3)))


def _visible_discs(z: np.ndarray, r: np.ndarray, params: StereologyParams) -> tuple[np.ndarray, np.ndarray]:
    """Which spheres are seen in the slab, and the radius of their projected profile."""
    t = params.section_nm
    height = np.minimum(t, z + r) - np.maximum(0.0, z - r)
    outside = np.maximum(0.0, np.maximum(-z, z - t))
    seen = (height > 0) & (height >= params.min_cap_nm)
    return seen, np.sqrt(np.maximum(r**2 - outside**2, 0.0))


def _rasterise_discs(cx: np.ndarray, cy: np.ndarray, r: np.ndarray, n: int) -> np.ndarray:
    """Pixels of a periodic ``n x n`` image whose centre lies inside a disc (pixel units).

    Each disc is cut into row spans whose ends go into a difference array (``+1`` at the first
    pixel, ``-1`` after the last, both wrapped around the image; a span that wraps also starts at
    column 0); a cumulative sum along the rows counts the discs covering each pixel. Cost: one entry
    per disc and row.
    """
    k = int(np.ceil(r.max(initial=0.0))) + 1
    rows = np.floor(cy).astype(np.int64)[:, None] + np.arange(-k, k + 1)
    half2 = r[:, None] ** 2 - (rows + 0.5 - cy[:, None]) ** 2
    half = np.sqrt(np.maximum(half2, 0.0))
    first = np.ceil(cx[:, None] - half - 0.5).astype(np.int64)
    last = np.floor(cx[:, None] + half - 0.5).astype(np.int64)
    span = (half2 >= 0) & (last >= first)
    rows, first, last = rows[span] % n * (n + 1), first[span], last[span]
    wraps = first // n != last // n
    starts = np.concatenate([rows + first % n, rows[wraps]])
    diff = np.bincount(starts, minlength=n * (n + 1)) \
        - np.bincount(rows + last % n + 1, minlength=n * (n + 1))
    return np.cumsum(diff.reshape(n, n + 1), axis=1)[:, :n] > 0


def _check_basket_vf(vf: Any) -> float:
    value = _finite(vf, "vf")
    if not 0 <= value <= MAX_BASKET_VF:
        raise ValueError(f"vf of a basket must be in [0, {MAX_BASKET_VF}] (non-overlapping spheres "
                         f"cannot be packed by random addition much beyond), got {vf!r}")
    return value


def render_basket(vf: float, diameters: DiameterDistribution = DEFAULT_DIAMETERS,
                  params: StereologyParams = DEFAULT_PARAMS, *, size_nm: float = DEFAULT_BASKET_NM,
                  seed: int | Sequence[int] = 0) -> tuple[np.ndarray, float]:
    """Simulate one basket and project its section onto the pixel grid.

    Parameters
    ----------
    vf : float
        Nominal volume fraction the box is filled to, in [0, :data:`MAX_BASKET_VF`].
    diameters : DiameterDistribution
        Granule diameters.
    params : StereologyParams
        Section thickness, minimum visible cap and pixel size.
    size_nm : float
        Lateral size of the basket, nm (rounded to whole pixels).
    seed : int or sequence of int
        Seed of the random generator.

    Returns
    -------
    image : numpy.ndarray
        bool ``(n, n)`` projection, True = granule pixel; its mean is the basket's ``pf``.
    true_vf : float
        Fraction of the slab volume inside granules (the module's definition of ``vf``).

    Raises
    ------
    ValueError
        If ``vf`` or ``size_nm`` is out of range.
    RuntimeError
        If the spheres cannot be packed (``vf`` too high for the diameters).
    """
    vf = _check_basket_vf(vf)
    n_px, box = _basket_box(diameters, params, size_nm)
    rng = np.random.default_rng(seed)
    radii = _draw_diameters(vf, float(np.prod(box)), diameters, rng) / 2
    centres = _place_spheres(radii, box, rng)
    t, pixel = params.section_nm, params.pixel_size_nm
    z = centres[:, 2] - box[2] * np.round((centres[:, 2] - t / 2) / box[2])  # image nearest the slab
    seen, profile = _visible_discs(z, radii, params)
    image = _rasterise_discs(centres[seen, 0] / pixel, centres[seen, 1] / pixel, profile[seen] / pixel, n_px)
    return image, _slab_volume(z, radii, t) / (box[0] * box[1] * t)


def basket_pf(vf: float, diameters: DiameterDistribution = DEFAULT_DIAMETERS,
              params: StereologyParams = DEFAULT_PARAMS, *, size_nm: float = DEFAULT_BASKET_NM,
              seed: int | Sequence[int] = 0) -> float:
    """Granule pixel fraction of one simulated basket (see :func:`render_basket`)."""
    image, _ = render_basket(vf, diameters, params, size_nm=size_nm, seed=seed)
    return float(image.mean())


# --------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------


class OutOfCalibrationWarning(UserWarning):
    """A value lay beyond the calibrated range and gave NaN."""


def _to_log_cover(pf: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return -np.log1p(-pf)


def _interp_within(x: np.ndarray, xp: np.ndarray, fp: np.ndarray, message: str) -> np.ndarray:
    """``np.interp`` for ``0 <= x <= xp[-1]``; NaN, with one warning, above; NaN stays NaN."""
    shape, x = x.shape, np.atleast_1d(x)
    out = np.interp(np.nan_to_num(x, nan=0.0), xp, fp)
    out[np.isnan(x)] = np.nan
    above = x > xp[-1]
    if above.any():
        out[above] = np.nan
        warnings.warn(f"{int(above.sum())} value(s) {message}; they give NaN",
                      OutOfCalibrationWarning, stacklevel=3)
    return out.reshape(shape)


@dataclass(frozen=True)
class Calibration:
    """Relation between volume fraction and pixel fraction fitted on baskets.

    Parameters
    ----------
    vf_points, pf_points : tuple of float
        Mean true ``vf`` and mean ``pf`` over the seeds at each grid point, strictly increasing.
    pf_sd : tuple of float
        Standard deviation of ``pf`` between the seeds at each point.
    params : StereologyParams
        Parameters of the baskets.
    diameters : DiameterDistribution
        Granule diameters of the baskets.

    Notes
    -----
    The relation passes through ``(0, 0)`` and is linear between points in ``(vf, -ln(1 - pf))``.
    :meth:`vf` and :meth:`pf` are exact inverses of each other.

    Raises
    ------
    ValueError
        If the points are empty, of unequal length, outside (0, 1) or not strictly increasing.
    """

    vf_points: tuple[float, ...]
    pf_points: tuple[float, ...]
    pf_sd: tuple[float, ...]
    params: StereologyParams
    diameters: DiameterDistribution

    def __post_init__(self) -> None:
        vf, pf = np.asarray(self.vf_points, float), np.asarray(self.pf_points, float)
        if vf.ndim != 1 or vf.size == 0 or vf.shape != pf.shape or len(self.pf_sd) != vf.size:
            raise ValueError("vf_points, pf_points and pf_sd must be non-empty and of one length")
        if not (np.all((vf > 0) & (vf < 1) & (pf > 0) & (pf < 1))
                and np.all(np.diff(vf) > 0) and np.all(np.diff(pf) > 0)):
            raise ValueError("calibration points must lie in (0, 1) and increase strictly in vf and pf; a "
                             "noisy calibration needs more seeds, a larger size_nm or fewer n_points")
        for name, values in (("vf_points", vf), ("pf_points", pf), ("pf_sd", self.pf_sd)):
            object.__setattr__(self, name, tuple(float(v) for v in values))

    @property
    def vf_max(self) -> float:
        """Largest calibrated volume fraction."""
        return self.vf_points[-1]

    @property
    def pf_max(self) -> float:
        """Largest calibrated pixel fraction."""
        return self.pf_points[-1]

    def _nodes(self) -> tuple[np.ndarray, np.ndarray]:
        vf = np.concatenate([[0.0], self.vf_points])
        return vf, _to_log_cover(np.concatenate([[0.0], self.pf_points]))

    def vf(self, pf: FloatOrArray) -> FloatOrArray:
        """Volume fraction for pixel fraction(s) ``pf`` in [0, 1].

        ``pf = 0`` gives 0 and NaN gives NaN; ``pf`` above :attr:`pf_max` gives NaN and an
        :class:`OutOfCalibrationWarning` (no extrapolation). Raises ValueError outside [0, 1].
        """
        arr, scalar = _fraction_array(pf, "pf")
        vf_nodes, y_nodes = self._nodes()
        message = (f"of pf above {self.pf_max:.4g}, the largest of this calibration (vf {self.vf_max:.3g}); "
                   f"calibrate with a larger vf_max (up to {MAX_BASKET_VF}), or check the segmentation: "
                   f"such a pf means an almost solid granule mass")
        return _result(_interp_within(_to_log_cover(arr), y_nodes, vf_nodes, message), scalar)

    def pf(self, vf: FloatOrArray) -> FloatOrArray:
        """Pixel fraction for volume fraction(s) ``vf`` (inverse of :meth:`vf`, same rules)."""
        arr, scalar = _fraction_array(vf, "vf")
        vf_nodes, y_nodes = self._nodes()
        message = f"of vf above {self.vf_max:.4g}, the largest of this calibration"
        return _result(-np.expm1(-_interp_within(arr, vf_nodes, y_nodes, message)), scalar)


def _vf_grid(vf_max: float, n_points: int) -> np.ndarray:
    """Nominal volume fractions, denser at the low end where muscle lies."""
    return vf_max * (np.arange(1, n_points + 1) / n_points) ** 1.5


@functools.lru_cache(maxsize=512)
def _basket_node(diameters: DiameterDistribution, params: StereologyParams, nominal: float,
                 seeds: tuple[int, ...], size_nm: float) -> tuple[float, float, float]:
    """Mean true ``vf``, mean ``pf`` and the ``pf`` spread between seeds of one grid point."""
    vf, pf = np.empty(len(seeds)), np.empty(len(seeds))
    for j, seed in enumerate(seeds):
        image, vf[j] = render_basket(nominal, diameters, params, size_nm=size_nm, seed=seed)
        pf[j] = image.mean()
    return float(vf.mean()), float(pf.mean()), float(pf.std())


def _calibrate(diameters: DiameterDistribution, params: StereologyParams, vf_max: float,
               n_points: int, seeds: tuple[int, ...], size_nm: float,
               up_to_pf: float = math.inf) -> Calibration:
    """The calibration on the grid of :func:`_vf_grid`, its points up to the first whose ``pf``
    reaches ``up_to_pf`` (all of them by default).

    Each grid point is simulated (and cached) on its own, with the same seeds whatever the other
    points, and :meth:`Calibration.vf` interpolates between the two points around a value only, so
    a calibration cut after the point that covers the largest ``pf`` converts every ``pf`` up to it
    exactly as the whole grid does; the points above it (dense granule masses, by far the slowest
    to pack) are simulated only when a ``pf`` needs them.
    """
    start = time.perf_counter()
    rows = []
    for nominal in _vf_grid(vf_max, n_points):
        rows.append(_basket_node(diameters, params, float(nominal), seeds, size_nm))
        if rows[-1][1] >= up_to_pf:
            break
    logger.debug("basket calibration (%d of %d points x %d seeds) took %.2f s", len(rows), n_points,
                 len(seeds), time.perf_counter() - start)
    vf, pf, sd = (tuple(column) for column in zip(*rows, strict=True))
    return Calibration(vf, pf, sd, params, diameters)


@functools.lru_cache(maxsize=32)
def _calibrate_cached(diameters: DiameterDistribution, params: StereologyParams, vf_max: float,
                      n_points: int, seeds: tuple[int, ...], size_nm: float) -> Calibration:
    return _calibrate(diameters, params, vf_max, n_points, seeds, size_nm)


def _check_calibration_args(vf_max: float, n_points: int, seeds: Sequence[int],
                            size_nm: float) -> tuple[float, int, tuple[int, ...], float]:
    vf_max = _check_basket_vf(vf_max)
    if vf_max == 0 or _positive_int(n_points, "n_points") < 2:
        raise ValueError(f"need vf_max > 0 and n_points >= 2, got vf_max={vf_max}, n_points={n_points}")
    seeds = tuple(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0 for s in seeds):
        raise ValueError(f"seeds must be one or more integers >= 0, got {seeds!r}")
    return vf_max, int(n_points), tuple(map(int, seeds)), _finite(size_nm, "size_nm")


def calibrate_baskets(diameters: DiameterDistribution = DEFAULT_DIAMETERS,
                      params: StereologyParams = DEFAULT_PARAMS, *, vf_max: float = _VF_MAX,
                      n_points: int = _N_POINTS, seeds: Sequence[int] = _SEEDS,
                      size_nm: float = DEFAULT_BASKET_NM) -> Calibration:
    """Fit the ``vf``-``pf`` relation on simulated baskets (cached).

    Baskets are rendered at ``n_points`` nominal volume fractions ``vf_max (k / n_points)^1.5``,
    ``k = 1 .. n_points``, once per seed (see the module notes for the model and the fit). The
    result is cached per argument set, so a second call with equal arguments returns the same
    object at once.

    Parameters
    ----------
    diameters : DiameterDistribution
        Granule diameters.
    params : StereologyParams
        Section thickness, minimum visible cap and pixel size of the micrographs.
    vf_max : float
        Largest volume fraction simulated, in (0, :data:`MAX_BASKET_VF`]; ``pf`` beyond the one it
        gives cannot be converted.
    n_points : int
        Grid points (>= 2).
    seeds : sequence of int
        Seeds; each grid point is averaged over one basket per seed.
    size_nm : float
        Lateral size of each basket, nm.

    Returns
    -------
    Calibration

    Raises
    ------
    ValueError
        If an argument is out of range or the points do not increase (too noisy).
    """
    return _calibrate_cached(diameters, params, *_check_calibration_args(vf_max, n_points, seeds, size_nm))


# --------------------------------------------------------------------------------------------
# Convenience
# --------------------------------------------------------------------------------------------


def vf_from_pf(pf: FloatOrArray, *, method: str = "baskets", diameters: DiameterDistribution | None = None,
               params: StereologyParams | None = None) -> FloatOrArray:
    """Volume fraction from granule pixel fraction by either route.

    Parameters
    ----------
    pf : float or numpy.ndarray
        Granule pixel fraction(s) in [0, 1]; NaN passes through.
    method : {"baskets", "analytical"}
        ``"baskets"``: :meth:`Calibration.vf` of :func:`calibrate_baskets` with default settings;
        ``"analytical"``: :func:`analytical_vf`.
    diameters : DiameterDistribution, optional
        Granule diameters (default :data:`DEFAULT_DIAMETERS`).
    params : StereologyParams, optional
        Section and pixel parameters (default :data:`DEFAULT_PARAMS`).

    Returns
    -------
    float or numpy.ndarray
        ``vf``, same shape as ``pf``.

    Raises
    ------
    ValueError
        If ``method`` is unknown or a ``pf`` is outside [0, 1].
    """
    diameters = DEFAULT_DIAMETERS if diameters is None else diameters
    params = DEFAULT_PARAMS if params is None else params
    if method == "baskets":  # the default grid, simulated only as far as the largest pf needs
        arr, _ = _fraction_array(pf, "pf")
        largest = float(np.nanmax(arr)) if np.isfinite(arr).any() else 0.0
        grid = _check_calibration_args(_VF_MAX, _N_POINTS, _SEEDS, DEFAULT_BASKET_NM)
        return _calibrate(diameters, params, *grid, up_to_pf=largest).vf(pf)
    if method == "analytical":
        return analytical_vf(pf, diameters, params)
    raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")


def vf_to_concentration(vf: FloatOrArray, factor: float) -> FloatOrArray:
    """Scale volume fraction to a glycogen concentration with a factor of your own.

    Parameters
    ----------
    vf : float or numpy.ndarray
        Volume fraction(s) in [0, 1]; NaN passes through.
    factor : float
        Concentration per unit volume fraction in the unit you want, e.g. mmol glucosyl units per
        litre of tissue at ``vf = 1`` (the glucosyl concentration inside a granule). There is no
        default: take it from your own calibration or the literature you rely on.

    Returns
    -------
    float or numpy.ndarray
        ``vf * factor``, same shape as ``vf``.

    Raises
    ------
    ValueError
        If ``factor`` is not a finite number > 0 or a ``vf`` is outside [0, 1].
    """
    scale = _finite(factor, "factor")
    if scale <= 0:
        raise ValueError(f"factor must be > 0 (concentration per unit volume fraction), got {factor!r}")
    arr, scalar = _fraction_array(vf, "vf")
    return _result(arr * scale, scalar)
