"""Synthetic TEM micrographs of longitudinally sectioned skeletal muscle, with exact ground truth.

Every structure has a physical size (micrometres or nanometres) taken from muscle ultrastructure
and is scaled by the pixel size, so the same seed at 0.6 or 1.2 nm/px shows the same cell at
another magnification. The truth is exact by construction: each pixel's Locations code is the
structure drawn there, and the granule mask is the projection of the granules drawn.

What is drawn (see :class:`SyntheticParams` for the ranges and where they come from):

* myofibrils at a random angle, gently wavy, each sarcomere with a dense A band (fine
  longitudinal thick-filament striation), a lighter H zone with a dark M line, a light I band and
  a dark Z disk; neighbouring myofibrils are out of register by a random shift;
* intermyofibrillar spaces (S) with longitudinal sarcoplasmic-reticulum tubules, triads (a
  T tubule between two terminal cisternae) at the A-I junctions, and mitochondria (double
  membrane, cristae) in pairs on either side of the Z line, labelled Z as in the original tool;
* a peripheral region (N) between the outermost myofibril and the sarcolemma, with vesicles,
  subsarcolemmal mitochondria (Z) and sometimes a nucleus (envelope, heterochromatin), and
  outside the cell (unclassified, U) resin and a basal lamina; section holes and folds (U);
  lipid droplets (other, O);
* glycogen granules: dark round particles, singly and in clusters, with a density drawn per
  region, some of them caps cut by the section faces (smaller and paler);
* stain precipitate (very dark specks and needles that are not granules), section-thickness
  blur, uneven illumination, shot and read noise, varying contrast and brightness.

The result is deterministic for a seed and a parameter set. ``synthetic_micrograph`` of a
4096 x 4096 micrograph takes a few seconds.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .metrics import region_pixel_fractions
from .schema import LOCATIONS_SCHEMA

__all__ = ["SyntheticMicrograph", "SyntheticParams", "synthetic_micrograph", "sample_micrograph"]

UNCLASSIFIED, A_BAND, I_BAND, Z_DISK, S_SPACE, N_REGION, OTHER = range(7)
_MEASURED = "AIZSN"

# Grey levels (0 = dense/dark, 1 = empty/light) before blur, illumination and noise.
_G_A, _G_H, _G_M, _G_I, _G_Z = 0.40, 0.48, 0.30, 0.66, 0.15
_G_S, _G_N, _G_OUT, _G_LIPID = 0.72, 0.76, 0.93, 0.58
_G_MEMBRANE = 0.28


def _pair(value: Any, name: str, lo: float = 0.0, hi: float = math.inf) -> tuple[float, float]:
    try:
        a, b = (float(value[0]), float(value[1])) if np.ndim(value) else (float(value),) * 2
    except (TypeError, ValueError, IndexError):
        raise ValueError(f"{name} must be a number or a (low, high) pair, got {value!r}") from None
    if not (math.isfinite(a) and math.isfinite(b) and lo <= a <= b <= hi):
        raise ValueError(f"{name} must satisfy {lo} <= low <= high <= {hi}, got {value!r}")
    return a, b


@dataclass(frozen=True)
class SyntheticParams:
    """Ranges the generator draws each micrograph's cell and imaging from.

    A pair ``(low, high)`` is drawn uniformly per micrograph (a single number fixes it);
    probabilities are per micrograph unless said. Lengths are physical, so they scale with the
    pixel size. The defaults follow mammalian skeletal muscle in longitudinal ultrathin sections
    (Peachey 1965; Franzini-Armstrong 1973 for the triad and SR; Marchand et al. 2002 and
    Nielsen et al. 2010 for glycogen sizes and their distribution between subcellular pools).
    """

    #: Angle of the fibre axis to the image rows in degrees; ``None`` draws it from 0-180.
    angle_deg: float | None = None
    #: Myofibril diameter, 0.5-1.5 um (light microscopy and EM of human and rat muscle).
    myofibril_width_um: tuple[float, float] = (0.5, 1.5)
    #: Intermyofibrillar space between myofibrils, 50-300 nm.
    gap_width_um: tuple[float, float] = (0.05, 0.30)
    #: Sarcomere length at rest, 2.2-2.6 um.
    sarcomere_um: tuple[float, float] = (2.2, 2.6)
    #: A band (thick-filament length), ~1.6 um and constant.
    a_band_um: tuple[float, float] = (1.55, 1.65)
    #: H zone (thick filaments without overlap) at these sarcomere lengths, 0.15-0.3 um.
    h_zone_um: tuple[float, float] = (0.15, 0.30)
    #: Z-disk width: 50-100 nm (narrow in fast, wide in slow fibres).
    z_width_nm: tuple[float, float] = (50.0, 100.0)
    #: Apparent spacing of thick filaments in a longitudinal section, ~40 nm.
    filament_spacing_nm: tuple[float, float] = (38.0, 42.0)
    #: Standard deviation of the shift between neighbouring myofibrils' sarcomeres (um).
    misregistration_um: float = 0.08
    #: Amplitude of the slow waviness of the myofibrils (um).
    waviness_um: tuple[float, float] = (0.02, 0.06)
    #: Probability of a mitochondrion on each side of each Z line along a space.
    mitochondria_probability: float = 0.55
    #: Length of a mitochondrion across the fibre, 0.2-1 um (I-band pairs wrapping fibrils).
    mitochondrion_length_um: tuple[float, float] = (0.2, 1.0)
    #: Probability of a triad at each A-I junction along a space.
    triad_probability: float = 0.7
    #: Probability that the micrograph shows the cell periphery (region N).
    periphery_probability: float = 0.9
    #: Width of the subsarcolemmal region between the outermost myofibril and sarcolemma (um).
    periphery_width_um: tuple[float, float] = (0.2, 0.8)
    #: Probability of a myonucleus in the periphery (when the periphery shows).
    nucleus_probability: float = 0.35
    #: Probability that the outside of the cell (resin, basal lamina) shows beyond the sarcolemma.
    outside_probability: float = 0.6
    #: Probabilities of a section hole and of a section fold (both unclassified).
    hole_probability: float = 0.15
    fold_probability: float = 0.1
    #: Lipid droplets per um^2 of intermyofibrillar and peripheral space.
    lipid_per_um2: float = 0.3
    #: Glycogen area fraction drawn per region, in the order A, I, Z, S, N: low in the A band,
    #: highest in the intermyofibrillar space, the I band and the periphery.
    granule_fractions: tuple[tuple[float, float], ...] = (
        (0.001, 0.012), (0.02, 0.08), (0.003, 0.02), (0.04, 0.14), (0.02, 0.10))
    #: Diameter of glycogen beta-particles, 15-40 nm (mean ~25 nm).
    granule_diameter_nm: tuple[float, float] = (15.0, 40.0)
    #: Fraction of granules that sit in clusters.
    cluster_fraction: float = 0.3
    #: Section thickness (nm): granules straddling a face show as smaller, paler caps.
    section_thickness_nm: float = 70.0
    #: Probability of stain precipitate (very dark specks and needles, not granules).
    precipitate_probability: float = 0.3
    #: Gaussian blur (sigma, nm) from the section's thickness and the microscope.
    blur_nm: tuple[float, float] = (1.0, 2.5)
    #: Multiplies the shot and read noise.
    noise_scale: float = 1.0
    #: Fraction of the data type's range between the densest and the emptiest grey.
    contrast: tuple[float, float] = (0.55, 0.9)
    #: Strength of uneven illumination (gradient and vignetting) as a fraction of intensity.
    illumination: tuple[float, float] = (0.02, 0.10)

    def __post_init__(self) -> None:
        if self.angle_deg is not None and not math.isfinite(float(self.angle_deg)):
            raise ValueError(f"angle_deg must be finite or None, got {self.angle_deg!r}")
        for name in ("myofibril_width_um", "gap_width_um", "sarcomere_um", "a_band_um", "h_zone_um",
                     "z_width_nm", "filament_spacing_nm", "waviness_um", "mitochondrion_length_um",
                     "periphery_width_um", "granule_diameter_nm", "blur_nm", "illumination"):
            _pair(getattr(self, name), name)
        _pair(self.contrast, "contrast", 0.01, 1.0)
        for name in ("mitochondria_probability", "triad_probability", "periphery_probability",
                     "nucleus_probability", "outside_probability", "hole_probability",
                     "fold_probability", "cluster_fraction", "precipitate_probability"):
            _pair(getattr(self, name), name, 0.0, 1.0)
        for name in ("misregistration_um", "lipid_per_um2", "noise_scale", "section_thickness_nm"):
            _pair(getattr(self, name), name)
        if len(self.granule_fractions) != 5:
            raise ValueError("granule_fractions needs five (low, high) pairs, for A, I, Z, S, N")
        for letter, pair in zip(_MEASURED, self.granule_fractions, strict=True):
            _pair(pair, f"granule_fractions[{letter}]", 0.0, 0.5)
        if self.a_band_um[1] >= self.sarcomere_um[0]:
            raise ValueError("a_band_um must be shorter than sarcomere_um")


@dataclass
class SyntheticMicrograph:
    """A synthetic micrograph and its exact ground truth (arrays share one 2-D shape).

    ``image`` is EM-like (dark = dense), uint8 or uint16; ``locations`` holds uint8 codes of the
    Locations schema (0 U, 1 A, 2 I, 3 Z, 4 S, 5 N, 6 O); ``granules`` is uint8 with 1 = granule;
    ``true_pixel_fractions`` maps each measured region letter to granule px / region px (NaN if
    the region is absent); ``drawn`` records the values drawn for this cell (angle, sarcomere
    length, target granule fractions, noise, ...).
    """

    image: np.ndarray
    locations: np.ndarray
    granules: np.ndarray
    pixel_size_nm: float
    true_pixel_fractions: dict[str, float]
    seed: int
    drawn: dict[str, Any] = field(default_factory=dict)


def synthetic_micrograph(shape: tuple[int, int] = (4096, 4096), pixel_size_nm: float = 0.8,
                         seed: int = 0, dtype: str | np.dtype = "uint16",
                         params: SyntheticParams | None = None) -> SyntheticMicrograph:
    """Generate a synthetic longitudinal-section micrograph of skeletal muscle.

    Parameters
    ----------
    shape : (rows, cols)
        Image size in pixels.
    pixel_size_nm : float
        Pixel size; all structures have fixed physical sizes (a sarcomere is 2.2-2.6 um).
    seed : int
        Seed of the random generator; the same arguments give identical arrays.
    dtype : ``"uint16"`` or ``"uint8"``
        Data type of the image.
    params : SyntheticParams, optional
        Ranges of the cell and imaging parameters (defaults: :class:`SyntheticParams`).
    """
    if len(shape) != 2 or min(int(shape[0]), int(shape[1])) < 1:
        raise ValueError(f"shape must be two positive integers, got {shape!r}")
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.uint8), np.dtype(np.uint16)):
        raise ValueError(f"dtype must be uint8 or uint16, got {dt}")
    ps = float(pixel_size_nm)
    if not (math.isfinite(ps) and ps > 0):
        raise ValueError(f"pixel_size_nm must be a positive number, got {pixel_size_nm!r}")
    p = SyntheticParams() if params is None else params
    if not isinstance(p, SyntheticParams):
        raise TypeError(f"params must be a SyntheticParams, got {type(params).__name__}")
    cell = _Cell(int(seed), (int(shape[0]), int(shape[1])), 1000.0 / ps, p)
    cell.myofibrils()
    cell.periphery()
    cell.intermyofibrillar()
    cell.artefacts()
    granules = cell.granules()
    cell.precipitate()
    image = cell.imaging(dt)
    fractions = region_pixel_fractions(cell.loc, granules, LOCATIONS_SCHEMA)
    return SyntheticMicrograph(image, cell.loc, granules, ps, fractions, int(seed), cell.drawn)


def sample_micrograph(size: int = 2048) -> SyntheticMicrograph:
    """The bundled sample: ``size`` x ``size`` px (2048 or the full 4096) at 0.8 nm/px, uint16.

    Seed 2024 shows every measured region at both sizes.
    """
    if size not in (2048, 4096):
        raise ValueError(f"the sample is 2048 or 4096 px on a side, not {size!r}")
    return synthetic_micrograph((size, size), 0.8, seed=2024, dtype="uint16")


def _draw(rng: np.random.Generator, value: Any) -> float:
    lo, hi = _pair(value, "range")
    return lo if lo == hi else float(rng.uniform(lo, hi))


class _Cell:
    """The drawing state: fibre coordinates, label map, grey map and the drawn values."""

    STAGES = ("geometry", "myofibrils", "filaments", "periphery", "chromatin", "spaces",
              "lipids", "artefacts", "granules", "precipitate", "imaging")

    def __init__(self, seed: int, shape: tuple[int, int], um: float, p: SyntheticParams) -> None:
        # One generator per stage, so that a stage drawing a pixel-count-dependent number of
        # values (noise, tables) does not shift the others: the same seed at another pixel size
        # draws the same cell.
        streams = np.random.SeedSequence(seed).spawn(len(self.STAGES))
        self.rngs = {k: np.random.default_rng(s) for k, s in zip(self.STAGES, streams, strict=True)}
        rng = self.rngs["geometry"]
        self.shape, self.um, self.p = shape, um, p
        h, w = shape
        angle = rng.uniform(0.0, 180.0) if p.angle_deg is None else float(p.angle_deg) % 180.0
        theta = math.radians(angle)
        self.cos, self.sin = math.cos(theta), math.sin(theta)
        self.drawn: dict[str, Any] = {"angle_deg": round(angle, 3), "params": asdict(p)}
        y = np.arange(h, dtype=np.float32)[:, None] - np.float32((h - 1) / 2)
        x = np.arange(w, dtype=np.float32)[None, :] - np.float32((w - 1) / 2)
        self.u = x * np.float32(self.cos) + y * np.float32(self.sin)  # along the fibres
        self.v = y * np.float32(self.cos) - x * np.float32(self.sin)  # across the fibres
        # Slow waviness: v is shifted by a sine of u (through a 1-px table, faster than sin).
        self.amp = _draw(rng, p.waviness_um) * um
        self.lam, self.ph = rng.uniform(4, 8) * um, rng.uniform(0, 2 * np.pi)
        self.half_u = 0.5 * ((w - 1) * abs(self.cos) + (h - 1) * abs(self.sin)) + 2
        self.half_v = 0.5 * ((h - 1) * abs(self.cos) + (w - 1) * abs(self.sin)) + self.amp + 2
        wave = self.amp * np.sin((np.arange(int(2 * self.half_u) + 2) - self.half_u)
                                 * (2 * np.pi / self.lam) + self.ph)
        self.iu = np.add(self.u, np.float32(self.half_u)).astype(np.int32)  # u table index
        self.v += np.take(wave.astype(np.float32), self.iu, mode="clip")
        self.loc = np.empty(shape, np.uint8)
        self.grey = np.empty(shape, np.float32)
        self.blocked = np.zeros(shape, bool)  # no glycogen here (nucleus, mitochondria, ...)

    # -- geometry helpers ---------------------------------------------------------------------
    def _to_xy(self, uc: float, vc: float) -> tuple[float, float]:
        """Image (x, y) of fibre coordinates (u, v), undoing the waviness."""
        h, w = self.shape
        vr = vc - self.amp * math.sin(uc * 2 * math.pi / self.lam + self.ph)
        return (uc * self.cos - vr * self.sin + (w - 1) / 2,
                uc * self.sin + vr * self.cos + (h - 1) / 2)

    def _window(self, uc: float, vc: float, reach: float):
        """Slices around fibre point (uc, vc) and its du, dv arrays; None if off the image."""
        h, w = self.shape
        xc, yc = self._to_xy(uc, vc)
        r = reach + self.amp + 2
        ys = slice(max(0, int(yc - r)), min(h, int(yc + r) + 1))
        xs = slice(max(0, int(xc - r)), min(w, int(xc + r) + 1))
        if ys.start >= ys.stop or xs.start >= xs.stop:
            return None
        return ys, xs, self.u[ys, xs] - np.float32(uc), self.v[ys, xs] - np.float32(vc)

    def _ellipse(self, uc, vc, au, av, *, lumen, membrane_nm, codes, label=None, block=False,
                 inner=None):
        """A membrane-bound ellipse (axes au along, av across the fibre); returns its mask.

        Drawn only over pixels whose code is in ``codes``; ``label`` relabels them; ``inner``
        (a function of du, dv, rho) overrides the lumen grey (cristae, chromatin).
        """
        win = self._window(uc, vc, max(au, av))
        if win is None:
            return None
        ys, xs, du, dv = win
        rho = np.sqrt((du / np.float32(au)) ** 2 + (dv / np.float32(av)) ** 2)
        lsl, gsl = self.loc[ys, xs], self.grey[ys, xs]
        inside = (rho <= 1) & np.isin(lsl, codes)
        if not inside.any():
            return None
        m = membrane_nm * self.um / 1000 / max(min(au, av), 1.0)
        value = np.full(rho.shape, np.float32(lumen)) if inner is None else inner(du, dv, rho)
        value = np.where(rho > 1 - m, np.float32(_G_MEMBRANE), value)
        gsl[inside] = value[inside]
        if label is not None:
            lsl[inside] = label
        if block:
            self.blocked[ys, xs] |= inside
        return inside

    # -- structures -----------------------------------------------------------------------------
    def myofibrils(self) -> None:
        """Myofibrils (A, I, Z) and the spaces between them (S), as 1-px lookup tables."""
        rng, p, um = self.rngs["myofibrils"], self.p, self.um
        # Layout across the fibres: a space near the centre, then fibril, space, fibril, ...
        reach = self.half_v + 3 * um
        gap0, c0 = _draw(rng, p.gap_width_um) * um, rng.uniform(-0.1, 0.1) * um
        segs = [(c0 - gap0 / 2, c0 + gap0 / 2, True)]
        for sign in (1, -1):
            pos, is_gap = c0 + sign * gap0 / 2, False
            while abs(pos) < reach:
                size = _draw(rng, p.gap_width_um if is_gap else p.myofibril_width_um) * um
                segs.append((min(pos, pos + sign * size), max(pos, pos + sign * size), is_gap))
                pos, is_gap = pos + sign * size, not is_gap
        segs.sort()
        self.segs = segs
        starts = np.array([s[0] for s in segs])
        gaps = np.array([s[2] for s in segs])
        # Sarcomere: Z at (u + phase) mod L == 0, M line at L/2. The centre pixel lies in the
        # I band halfway between Z and A so that every code shows in small images too.
        L, A = _draw(rng, p.sarcomere_um) * um, _draw(rng, p.a_band_um) * um
        zw = _draw(rng, p.z_width_nm) * um / 1000
        hz, mw = min(_draw(rng, p.h_zone_um) * um, 0.8 * A), 0.03 * um
        quarter = (L - A) / 4 + rng.uniform(-0.05, 0.05) * um
        phase0 = quarter if rng.random() < 0.5 else L - quarter
        phases = phase0 + np.clip(rng.normal(0, p.misregistration_um, len(segs)), -0.25, 0.25) * um
        self.L, self.A, self.phases = L, A, phases
        self.drawn.update(sarcomere_um=L / um, a_band_um=A / um, z_width_nm=zw / um * 1000)
        # Tables across the fibres (per v pixel) and along the sarcomere (per px from M line).
        v_lo, nb = -reach, int(2 * reach) + 2
        self.v_lo = v_lo
        centres = v_lo + np.arange(nb) + 0.5
        seg_of = np.clip(np.searchsorted(starts, centres, side="right") - 1, 0, len(segs) - 1)
        gap_tab, phase_tab = gaps[seg_of], phases[seg_of].astype(np.float32)
        spacing = _draw(rng, p.filament_spacing_nm) * um / 1000
        jitter = np.cumsum(self.rngs["filaments"].normal(0, 0.08, nb))  # slowly drifting filament phase
        filaments = np.cos(centres * (2 * np.pi / spacing) + jitter + seg_of * 1.7)
        fil_tab = np.where(gap_tab, 0.0, filaments).astype(np.float32)
        dist = np.arange(int(L / 2) + 2) + 0.5
        loc_tab = np.where(dist < A / 2, A_BAND, np.where(dist > L / 2 - zw / 2, Z_DISK, I_BAND))
        grey_tab = np.select([dist < mw / 2, dist < hz / 2, dist < A / 2, dist > L / 2 - zw / 2],
                             [_G_M, _G_H, _G_A, _G_Z], _G_I).astype(np.float32)
        amp_tab = np.select([dist < A / 2, dist > L / 2 - zw / 2], [0.07, 0.0], 0.02)
        iv = np.subtract(self.v, np.float32(v_lo)).astype(np.int32)
        np.clip(iv, 0, nb - 1, out=iv)
        phase_tab += np.float32(L * math.ceil(self.half_u / L + 1))  # u + phase > 0 for fmod
        d = np.take(phase_tab, iv)
        d += self.u
        np.fmod(d, np.float32(L), out=d)
        d -= np.float32(L / 2)
        idist = np.abs(d, out=d).astype(np.int32)  # whole px from the M line
        del d
        np.take(loc_tab.astype(np.uint8), idist, out=self.loc)
        np.take(grey_tab, idist, out=self.grey)
        g = np.take(fil_tab, iv)
        g *= np.take(amp_tab.astype(np.float32), idist)
        self.grey += g
        del g, idist
        gap = np.take(gap_tab, iv)
        self.loc[gap] = S_SPACE
        self.grey[gap] = _G_S
        self.iv = iv

    def periphery(self) -> None:
        """Peripheral region (N) along the fibre beyond the outermost myofibril, and outside."""
        rng, p, um = self.rngs["periphery"], self.p, self.um
        self.drawn.update(periphery=False, nucleus=False, outside=False)
        if rng.random() >= p.periphery_probability:
            return
        side = 1 if rng.random() < 0.5 else -1
        h, w = self.shape
        # Half-extent of the image across the fibres through its centre.
        ext = min((h / 2) / max(abs(self.cos), 1e-6), (w / 2) / max(abs(self.sin), 1e-6))
        nucleus = rng.random() < p.nucleus_probability
        outside = rng.random() < p.outside_probability
        width = _draw(rng, p.periphery_width_um) * um
        nu_u = nu_v = 0.0
        if nucleus:
            nu_u, nu_v = rng.uniform(1.5, 4.0) * um, rng.uniform(0.4, 1.0) * um
            width = max(width, 2 * nu_v + rng.uniform(0.15, 0.4) * um)
        if outside:  # the sarcolemma crosses the image; the periphery lies inside it
            sarcolemma = ext * (1 - 2 * rng.uniform(0.03, 0.15))
            target = sarcolemma - width
        else:  # the periphery reaches the image edge; the sarcolemma lies at or beyond it
            target = ext * (1 - 2 * rng.uniform(0.08, 0.3))
            sarcolemma = max(target + width, ext)
        # The myofibril edge nearest to the target: a fibril's outer boundary.
        edges = [(s[1] if side > 0 else -s[0]) for s in self.segs if not s[2]]
        inner = min(edges, key=lambda e: abs(e - target)) if edges else target
        inner = min(inner, sarcolemma - 0.1 * um)
        lam, ph = rng.uniform(1.0, 3.0) * um, rng.uniform(0, 2 * np.pi)
        wob = (0.03 * um * np.sin((np.arange(int(2 * self.half_u) + 2) - self.half_u)
                                  * (2 * np.pi / lam) + ph)).astype(np.float32)
        vs = self.v * np.float32(side)
        vs -= np.take(wob, self.iu, mode="clip")
        region = vs > np.float32(inner)
        self.loc[region], self.grey[region] = N_REGION, _G_N
        self.drawn.update(periphery=True, periphery_width_um=(sarcolemma - inner) / um)
        self.n_band = (side, inner, sarcolemma)
        if outside:
            out = vs > np.float32(sarcolemma)
            self.loc[out], self.grey[out] = UNCLASSIFIED, _G_OUT
            self.blocked |= out
            m = max(0.6, 0.004 * um)
            self.grey[np.abs(vs - np.float32(sarcolemma)) < m] = _G_MEMBRANE  # sarcolemma
            lamina = np.abs(vs - np.float32(sarcolemma + 0.04 * um)) < 0.012 * um
            self.grey[lamina & out] = 0.62  # basal lamina
            self.drawn["outside"] = True
        del vs
        # Vesicles and subsarcolemmal mitochondria in the peripheral cytoplasm.
        span = self.half_u
        for _ in range(rng.poisson(8 * 2 * span / um * (sarcolemma - inner) / um / 4)):
            uc, vc = rng.uniform(-span, span), side * rng.uniform(inner, sarcolemma)
            r = rng.uniform(0.015, 0.04) * um
            self._ellipse(uc, vc, r, r * rng.uniform(0.8, 1.2), lumen=0.8, membrane_nm=6,
                          codes=[N_REGION], block=True)
        for _ in range(rng.poisson(0.5 * 2 * span / um)):
            uc, vc = rng.uniform(-span, span), side * rng.uniform(inner, sarcolemma)
            self._mitochondrion(rng, uc, vc, rng.uniform(0.2, 0.5) * um,
                                rng.uniform(0.1, 0.25) * um, [N_REGION])
        if nucleus:
            uc = rng.uniform(-0.5, 0.5) * span
            self._nucleus(uc, side * (sarcolemma - 0.08 * um - nu_v), nu_u, nu_v)
            self.drawn["nucleus"] = True

    def _nucleus(self, uc: float, vc: float, au: float, av: float) -> None:
        """A myonucleus: double envelope, heterochromatin rim and clumps, euchromatin."""
        rng, um = self.rngs["chromatin"], self.um
        win = self._window(uc, vc, max(au, av))
        if win is None:
            return
        ys, xs, du, dv = win
        rho = np.sqrt((du / np.float32(au)) ** 2 + (dv / np.float32(av)) ** 2)
        lsl, gsl = self.loc[ys, xs], self.grey[ys, xs]
        inside = rho <= 1
        if not inside.any():
            return
        # Chromatin clumps: smooth noise from a coarse grid (~60 nm cells), thresholded.
        cell = max(2, int(0.06 * um))
        coarse = rng.standard_normal((du.shape[0] // cell + 2, du.shape[1] // cell + 2))
        noise = ndi.zoom(coarse.astype(np.float32), cell, order=1)[: du.shape[0], : du.shape[1]]
        e = 10.0 / 1000 * um / min(au, av)  # ~10 nm in rho units
        value = np.where(noise > 0.9, np.float32(0.36), np.float32(0.58))
        value = np.where(rho > 1 - 10 * e, np.float32(0.36), value)  # peripheral heterochromatin
        value = np.where(rho > 1 - 3 * e, np.float32(0.8), value)  # perinuclear space
        value = np.where((rho > 1 - 4 * e) & (rho <= 1 - 3 * e), np.float32(_G_MEMBRANE), value)
        value = np.where(rho > 1 - e, np.float32(_G_MEMBRANE), value)
        gsl[inside] = value[inside]
        lsl[inside] = N_REGION
        self.blocked[ys, xs] |= inside

    def _mitochondrion(self, rng, uc: float, vc: float, av: float, au: float, codes) -> None:
        """A mitochondrion (label Z): double membrane, cristae across its long axis."""
        um = self.um
        period = rng.uniform(0.025, 0.04) * um
        phase = rng.uniform(0, 2 * np.pi)
        e = 7.0 / 1000 * um / max(min(au, av), 1.0)

        def inner(du, dv, rho):
            cristae = np.cos(dv * np.float32(2 * np.pi / period) + np.float32(phase)) > 0.55
            val = np.where(cristae & (rho < 1 - 3 * e), np.float32(0.30), np.float32(0.45))
            return np.where((rho > 1 - 2.2 * e) & (rho <= 1 - e), np.float32(0.55), val)

        self._ellipse(uc, vc, au, av, lumen=0.45, membrane_nm=7, codes=codes, label=Z_DISK,
                      block=True, inner=inner)

    def intermyofibrillar(self) -> None:
        """Mitochondria at the Z lines, triads at the A-I junctions and SR tubules in spaces."""
        rng, p, um = self.rngs["spaces"], self.p, self.um
        L, A, segs, phases = self.L, self.A, self.segs, self.phases
        span = self.half_u + um
        space = [S_SPACE]
        for j, (v0, v1, is_gap) in enumerate(segs):
            if not is_gap or j == 0 or j == len(segs) - 1 or abs((v0 + v1) / 2) > self.half_v + um:
                continue
            phi = phases[j + (1 if rng.random() < 0.5 else -1)]
            vc, gw = (v0 + v1) / 2, v1 - v0
            fibril = min(segs[j - 1][1] - segs[j - 1][0], segs[j + 1][1] - segs[j + 1][0])
            for n in range(math.floor((-span + phi) / L), math.ceil((span + phi) / L) + 1):
                z = n * L - phi  # a Z line at u = z
                for side in (-1, 1):
                    if rng.random() < p.mitochondria_probability:
                        av = _draw(rng, p.mitochondrion_length_um) * um / 2
                        av = min(av, gw / 2 + 0.4 * fibril)  # reach at most 40% into a fibril
                        au = rng.uniform(0.07, 0.15) * um
                        uc = z + side * (au + rng.uniform(0.0, 0.03) * um)
                        self._mitochondrion(rng, uc, vc, av, au,
                                            [A_BAND, I_BAND, Z_DISK, S_SPACE])
                    if rng.random() < p.triad_probability:
                        self._triad(rng, z + side * (L - A) / 2, vc, gw)
                # Longitudinal SR tubules over the A band, between the triads.
                for _ in range(rng.poisson(1.5)):
                    uc = z + L / 2 + rng.uniform(-0.35, 0.35) * A
                    r = rng.uniform(0.012, 0.025) * um
                    off = rng.uniform(-0.5, 0.5) * max(gw - 2 * r, 0)
                    self._ellipse(uc, vc + off, rng.uniform(0.08, 0.3) * um, r, lumen=0.66,
                                  membrane_nm=5, codes=space)

    def _triad(self, rng, uc: float, vc: float, gw: float) -> None:
        """A T tubule between two terminal cisternae, across the space at an A-I junction."""
        um = self.um
        t = rng.uniform(0.010, 0.016) * um
        c = rng.uniform(0.015, 0.025) * um
        av = gw / 2 * rng.uniform(0.7, 0.95)
        self._ellipse(uc, vc, t, av, lumen=0.40, membrane_nm=5, codes=[S_SPACE])
        for s in (-1, 1):
            self._ellipse(uc + s * (t + 0.006 * um + c), vc, c, av, lumen=0.55, membrane_nm=5,
                          codes=[S_SPACE])

    def artefacts(self) -> None:
        """Lipid droplets (O) in the spaces and periphery; section holes and folds (U)."""
        rng, p, um = self.rngs["lipids"], self.p, self.um
        h, w = self.shape
        for _ in range(rng.poisson(p.lipid_per_um2 * h * w / um**2)):
            for _ in range(30):
                yc, xc = int(rng.uniform(0, h)), int(rng.uniform(0, w))
                if self.loc[yc, xc] in (S_SPACE, N_REGION) and not self.blocked[yc, xc]:
                    break
            else:
                continue
            r = rng.uniform(0.075, 0.2) * um
            ys = slice(max(0, int(yc - r)), min(h, int(yc + r) + 1))
            xs = slice(max(0, int(xc - r)), min(w, int(xc + r) + 1))
            yy, xx = np.ogrid[ys, xs]
            disc = (yy - yc) ** 2 + (xx - xc) ** 2 <= r * r
            disc &= self.loc[ys, xs] != UNCLASSIFIED
            self.loc[ys, xs][disc], self.grey[ys, xs][disc] = OTHER, _G_LIPID
            self.blocked[ys, xs] |= disc
        self.drawn.update(hole=False, fold=False)
        rng = self.rngs["artefacts"]
        if rng.random() < p.hole_probability:  # a tear in the section: irregular, empty
            yc, xc = rng.uniform(0, h), rng.uniform(0, w)
            r = rng.uniform(0.08, 0.4) * um
            k, ph, a = int(rng.integers(2, 6)), rng.uniform(0, 2 * np.pi), rng.uniform(0.1, 0.3)
            ys = slice(max(0, int(yc - 1.4 * r)), min(h, int(yc + 1.4 * r) + 1))
            xs = slice(max(0, int(xc - 1.4 * r)), min(w, int(xc + 1.4 * r) + 1))
            if ys.start < ys.stop and xs.start < xs.stop:
                yy, xx = np.ogrid[ys, xs]
                ang = np.arctan2(yy - yc, xx - xc)
                hole = np.hypot(yy - yc, xx - xc) <= r * (1 + a * np.sin(k * ang + ph))
                self.loc[ys, xs][hole], self.grey[ys, xs][hole] = UNCLASSIFIED, 0.97
                self.blocked[ys, xs] |= hole
                self.drawn["hole"] = True
        if rng.random() < p.fold_probability:  # a fold: a dark band of double thickness
            t = rng.uniform(0, np.pi)
            off = rng.uniform(-0.4, 0.4) * min(h, w)
            half = rng.uniform(0.03, 0.08) * um
            yy = np.arange(h, dtype=np.float32)[:, None] - np.float32(h / 2)
            xx = np.arange(w, dtype=np.float32)[None, :] - np.float32(w / 2)
            fold = np.abs(xx * np.float32(math.cos(t)) + yy * np.float32(math.sin(t)) - off) < half
            self.loc[fold] = UNCLASSIFIED
            self.grey[fold] *= np.float32(0.5)
            self.blocked |= fold
            self.drawn["fold"] = True

    def granules(self) -> np.ndarray:
        """Glycogen granules placed by region density, singly and in clusters; returns the mask."""
        rng, p, um = self.rngs["granules"], self.p, self.um
        h, w = self.shape
        nm = um / 1000  # px per nm
        target = np.zeros(7)
        for letter, pair in zip(_MEASURED, p.granule_fractions, strict=True):
            target["UAIZSNO".index(letter)] = _draw(rng, pair)
        self.drawn["target_fractions"] = {k: float(target["UAIZSNO".index(k)]) for k in _MEASURED}
        lam = -np.log1p(-target)
        if lam.max() <= 0:
            return np.zeros((h, w), np.uint8)
        d_lo, d_hi = p.granule_diameter_nm
        a, b = 2.5, 4.5  # diameter = lo + (hi - lo) Beta(a, b): mean ~25 nm for 15-40 nm
        mb, mb2 = a / (a + b), a * (a + 1) / ((a + b) * (a + b + 1))
        mean_area = math.pi / 4 * (d_lo**2 + 2 * d_lo * (d_hi - d_lo) * mb
                                   + (d_hi - d_lo) ** 2 * mb2) * nm**2
        t = float(p.section_thickness_nm)
        visible = t / (t + 0.5 * (d_lo + d_hi) * 0.5)  # share of spheres not cut to tiny caps
        n = rng.poisson(lam.max() * h * w / (mean_area * visible))
        n_cluster = rng.binomial(n, p.cluster_fraction)
        yc = rng.uniform(0, h, n - n_cluster)
        xc = rng.uniform(0, w, n - n_cluster)
        if n_cluster:
            per = 5.0
            parents = max(1, int(round(n_cluster / per)))
            py, px = rng.uniform(0, h, parents), rng.uniform(0, w, parents)
            k = rng.integers(0, parents, n_cluster)
            spread = rng.uniform(20, 35, parents)[k] * nm
            yc = np.concatenate([yc, py[k] + rng.normal(0, 1, n_cluster) * spread])
            xc = np.concatenate([xc, px[k] + rng.normal(0, 1, n_cluster) * spread])
        m = len(yc)  # every value is drawn before the filtering, which depends on the pixels
        accept = rng.random(m)
        radius = (d_lo + (d_hi - d_lo) * rng.beta(a, b, m)) / 2  # nm
        depth = rng.uniform(-radius, t + radius)  # centre relative to the upper section face
        dark = rng.uniform(0.06, 0.20, m)
        iy = np.clip(yc.astype(int), 0, h - 1)
        ix = np.clip(xc.astype(int), 0, w - 1)
        keep = (accept < (lam / lam.max())[self.loc[iy, ix]]) & ~self.blocked[iy, ix]
        yc, xc, radius, depth, dark = yc[keep], xc[keep], radius[keep], depth[keep], dark[keep]
        mask = np.zeros((h, w), np.uint8)
        grey, blocked = self.grey, self.blocked
        for y, x, r, z, g in zip(yc.tolist(), xc.tolist(), radius.tolist(), depth.tolist(),
                                 dark.tolist(), strict=True):
            out = max(-z, z - t, 0.0)  # distance of the centre outside the section
            rp = math.sqrt(max(r * r - out * out, 0.0))  # projected radius (nm)
            if rp < 5.0 or r - out < 4.0:
                continue  # a cap too small or too thin to see
            k = int(rp * nm) + 1
            y0, y1 = max(0, int(y) - k), min(h, int(y) + k + 2)
            x0, x1 = max(0, int(x) - k), min(w, int(x) + k + 2)
            if y0 >= y1 or x0 >= x1:
                continue
            rho2 = (((np.arange(y0, y1) + 0.5 - y) ** 2)[:, None]
                    + ((np.arange(x0, x1) + 0.5 - x) ** 2)[None, :]) / (nm * nm)
            half = np.sqrt(np.maximum(r * r - rho2, 0.0))
            chord = np.clip(z + half, 0, t) - np.clip(z - half, 0, t)
            disc = (chord >= 2.0) & ~blocked[y0:y1, x0:x1]
            mask[y0:y1, x0:x1] |= disc
            alpha = np.sqrt(np.clip(chord / 12.0, 0, 1))
            gsl = grey[y0:y1, x0:x1]
            val = gsl * (1 - alpha) + np.float32(g) * alpha
            np.minimum(gsl, np.where(disc, val, gsl), out=gsl, casting="unsafe")
        return mask

    def precipitate(self) -> None:
        """Stain precipitate: patches of very dark specks and a few needles (not granules)."""
        rng, p, um = self.rngs["precipitate"], self.p, self.um
        h, w = self.shape
        self.drawn["precipitate"] = False
        if rng.random() >= p.precipitate_probability:
            return
        self.drawn["precipitate"] = True
        for _ in range(rng.integers(1, 4)):
            cy, cx, spread = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.05, 0.3) * um
            for _ in range(rng.integers(20, 120)):
                y, x = cy + rng.normal(0, spread), cx + rng.normal(0, spread)
                r = rng.uniform(1.0, 4.0) / 1000 * um + 0.5
                self._dab(y, x, r, r * rng.uniform(1, 2.5), rng.uniform(0, np.pi))
        for _ in range(rng.integers(0, 6)):
            r = rng.uniform(2, 5) / 1000 * um + 0.5
            self._dab(rng.uniform(0, h), rng.uniform(0, w), r, r * rng.uniform(4, 10),
                      rng.uniform(0, np.pi))

    def _dab(self, y: float, x: float, ra: float, rb: float, t: float) -> None:
        """A very dark ellipse (a speck or needle of precipitate) of semi-axes ra, rb."""
        h, w = self.shape
        k = int(max(ra, rb)) + 1
        y0, y1 = max(0, int(y) - k), min(h, int(y) + k + 2)
        x0, x1 = max(0, int(x) - k), min(w, int(x) + k + 2)
        if y0 >= y1 or x0 >= x1:
            return
        yy = (np.arange(y0, y1) + 0.5 - y)[:, None]
        xx = (np.arange(x0, x1) + 0.5 - x)[None, :]
        a = (xx * math.cos(t) + yy * math.sin(t)) / rb
        b = (yy * math.cos(t) - xx * math.sin(t)) / ra
        self.grey[y0:y1, x0:x1][a * a + b * b <= 1] = 0.02

    def imaging(self, dt: np.dtype) -> np.ndarray:
        """Grain, section blur, uneven illumination, shot and read noise, contrast; to ``dt``."""
        rng, p, um = self.rngs["imaging"], self.p, self.um
        del self.u, self.v, self.iu, self.iv
        h, w = self.shape
        grey = self.grey
        sigma = _draw(rng, p.blur_nm) * um / 1000
        buf = rng.standard_normal((h, w), dtype=np.float32)
        grey += np.multiply(buf, np.float32(0.04 * 2 * math.sqrt(math.pi) * max(sigma, 0.5)), out=buf)
        img = ndi.gaussian_filter(grey, sigma, output=buf, mode="nearest", truncate=3.0)
        g, t = _draw(rng, p.illumination), rng.uniform(0, 2 * np.pi)
        vig = rng.uniform(0, 1) * g
        ry = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
        rx = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
        img *= 1 + np.float32(g * math.sin(t)) * ry - np.float32(vig / 2) * ry * ry
        img *= 1 + np.float32(g * math.cos(t)) * rx - np.float32(vig / 2) * rx * rx
        # Signal-dependent (shot) and constant (read) noise, drawn as one normal.
        shot = rng.uniform(0.035, 0.065) * p.noise_scale
        read = rng.uniform(0.015, 0.03) * p.noise_scale
        sd = np.maximum(img, 0, out=grey)
        sd *= np.float32(shot**2)
        sd += np.float32(read**2)
        np.sqrt(sd, out=sd)
        sd *= rng.standard_normal((h, w), dtype=np.float32)
        img += sd
        contrast = _draw(rng, p.contrast)
        lo = rng.uniform(0.03, max(0.03, 0.97 - contrast))
        self.drawn.update(blur_nm=sigma / um * 1000, shot_noise=shot, read_noise=read,
                          contrast=contrast, offset=lo, illumination=g)
        top = float(np.iinfo(dt).max)
        img *= np.float32(contrast * top)
        img += np.float32(lo * top)
        np.clip(img, 0, top, out=img)
        return np.rint(img, out=img).astype(dt)
