"""Synthetic TEM micrographs of skeletal muscle with exact ground truth.

A deliberately simple generator: straight (gently wavy) myofibrils at a random angle, sarcomeres
(A band, I band, Z disk), intermyofibrillar space, a few mitochondria beside the Z lines, a
peripheral region along one image edge, a few lipid droplets and dark round glycogen granules
placed with a known density per region. Every size is given in physical units and scaled by the
pixel size. The result is deterministic for a seed. Used as the bundled sample micrograph and by
tests; a later version may change the internals, not the API.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .schema import LOCATIONS_SCHEMA

__all__ = ["SyntheticMicrograph", "synthetic_micrograph", "sample_micrograph"]

UNCLASSIFIED, A_BAND, I_BAND, Z_DISK, S_SPACE, N_REGION, OTHER = range(7)

#: Target granule area fraction per location code (index = code): U, A, I, Z, S, N, O.
GRANULE_AREA_FRACTION = np.array([0.0, 0.005, 0.04, 0.01, 0.06, 0.05, 0.0])

# Grey level per location code before granules, blur and noise (0 = dense/dark, 1 = empty/light).
_GREY = np.array([0.93, 0.40, 0.64, 0.16, 0.70, 0.76, 0.55], np.float32)
# Image value of grey 0 and grey 1 for each output dtype.
_RANGE = {np.dtype(np.uint8): (31.0, 195.0), np.dtype(np.uint16): (8000.0, 50000.0)}


@dataclass
class SyntheticMicrograph:
    """A synthetic micrograph and its exact ground truth (arrays share one 2-D shape).

    ``image`` is EM-like (dark = dense), uint8 or uint16; ``locations`` holds uint8 codes of the
    Locations schema (0 U, 1 A, 2 I, 3 Z, 4 S, 5 N, 6 O); ``granules`` is uint8 with 1 = granule;
    ``true_pixel_fractions`` maps each measured region letter to granule px / region px (NaN if
    the region is absent).
    """

    image: np.ndarray
    locations: np.ndarray
    granules: np.ndarray
    pixel_size_nm: float
    true_pixel_fractions: dict[str, float]
    seed: int


def synthetic_micrograph(shape: tuple[int, int] = (1024, 1024), pixel_size_nm: float = 0.8,
                         seed: int = 0, dtype: str | np.dtype = "uint16") -> SyntheticMicrograph:
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
    """
    if len(shape) != 2 or min(int(shape[0]), int(shape[1])) < 1:
        raise ValueError(f"shape must be two positive integers, got {shape!r}")
    dt = np.dtype(dtype)
    if dt not in _RANGE:
        raise ValueError(f"dtype must be uint8 or uint16, got {dt}")
    ps = float(pixel_size_nm)
    if not (math.isfinite(ps) and ps > 0):
        raise ValueError(f"pixel_size_nm must be a positive number, got {pixel_size_nm!r}")
    rng = np.random.default_rng(seed)
    um = 1000.0 / ps  # pixels per micrometre
    loc, grey, u, v, fib = _myofibrils(rng, (int(shape[0]), int(shape[1])), um)
    _periphery(rng, loc, grey, um)
    _mitochondria(rng, loc, grey, u, v, fib, um)
    del u, v
    _lipid_droplets(rng, loc, grey, um)
    granules = _granules(rng, loc, grey, um)
    image = _imaging(rng, grey, um, dt)
    n_region = np.bincount(loc.ravel(), minlength=7)
    n_granule = np.bincount(loc[granules.view(bool)], minlength=7)
    fractions = {c.letter: float(n_granule[c.code] / n_region[c.code]) if n_region[c.code]
                 else float("nan") for c in LOCATIONS_SCHEMA.classes if c.measured}
    return SyntheticMicrograph(image, loc, granules, ps, fractions, int(seed))


def sample_micrograph() -> SyntheticMicrograph:
    """The bundled sample: 2048 x 2048 px at 0.8 nm/px, uint16, seed 2024."""
    return synthetic_micrograph((2048, 2048), 0.8, seed=2024, dtype="uint16")


def _myofibrils(rng, shape, um):
    """Myofibrils and intermyofibrillar space; returns loc, grey, fibre coordinates and layout."""
    h, w = shape
    theta = rng.uniform(0.0, math.pi)
    cos, sin = math.cos(theta), math.sin(theta)
    y = np.arange(h, dtype=np.float32)[:, None] - np.float32((h - 1) / 2)
    x = np.arange(w, dtype=np.float32)[None, :] - np.float32((w - 1) / 2)
    u = x * np.float32(cos) + y * np.float32(sin)  # along the fibres
    v = y * np.float32(cos) - x * np.float32(sin)  # across the fibres
    # Gentle waviness: shift v by a slow sine of u (looked up in a 1-px table, faster than sin).
    amp, lam, ph = rng.uniform(0.02, 0.05) * um, rng.uniform(4, 8) * um, rng.uniform(0, 2 * np.pi)
    half_u = 0.5 * ((w - 1) * abs(cos) + (h - 1) * abs(sin)) + 2
    wave = amp * np.sin((np.arange(int(2 * half_u) + 2) - half_u) * (2 * np.pi / lam) + ph)
    buf = np.add(u, np.float32(half_u))  # float32 scratch
    idx = buf.astype(np.int32)  # int32 scratch: indices into 1-px lookup tables
    v += np.take(wave.astype(np.float32), idx, out=buf, mode="clip")
    # Layout across the fibres: a gap (S) near the centre, then fibril, gap, fibril, ... outwards.
    half = 0.5 * ((h - 1) * abs(cos) + (w - 1) * abs(sin)) + amp + 2
    gap0, c0 = rng.uniform(0.05, 0.30) * um, rng.uniform(-0.1, 0.1) * um
    segs = [(c0 - gap0 / 2, c0 + gap0 / 2, True)]
    for sign in (1, -1):
        pos, is_gap = c0 + sign * gap0 / 2, False
        while abs(pos) < half + 2 * um:
            size = (rng.uniform(0.05, 0.30) if is_gap else rng.uniform(0.5, 1.5)) * um
            segs.append((min(pos, pos + sign * size), max(pos, pos + sign * size), is_gap))
            pos, is_gap = pos + sign * size, not is_gap
    segs.sort()
    starts = np.array([s[0] for s in segs])
    gaps = np.array([s[2] for s in segs])
    # Sarcomere: Z at (u + phase) mod L == 0, M line at L/2. The centre pixel lies in the I band
    # halfway between Z and A so that every code shows up in small images too.
    L, A = rng.uniform(2.2, 2.6) * um, rng.uniform(1.55, 1.65) * um
    zw, hz, mw = rng.uniform(0.05, 0.10) * um, rng.uniform(0.15, 0.25) * um, 0.03 * um
    quarter = (L - A) / 4 + rng.uniform(-0.05, 0.05) * um
    phase0 = quarter if rng.random() < 0.5 else L - quarter
    phases = phase0 + np.clip(rng.normal(0, 0.04, len(segs)), -0.1, 0.1) * um  # misregistration
    # Per-pixel lookups through 1-px tables across the fibres and along the sarcomere.
    v_lo, nb = -half, int(2 * half) + 2
    centres = v_lo + np.arange(nb) + 0.5
    seg_of = np.clip(np.searchsorted(starts, centres, side="right") - 1, 0, len(segs) - 1)
    gap_tab, phase_tab = gaps[seg_of], phases[seg_of].astype(np.float32)
    filaments = 0.03 * np.sin(centres * (2 * np.pi / (0.038 * um))) + rng.normal(0, 0.01, nb)
    tex_tab = np.where(gap_tab, 0.0, filaments).astype(np.float32)
    dist = np.arange(int(L / 2) + 2) + 0.5  # distance from the M line
    loc_tab = np.where(dist < A / 2, A_BAND, np.where(dist > L / 2 - zw / 2, Z_DISK, I_BAND))
    grey_tab = _GREY[loc_tab].copy()
    grey_tab[dist < hz / 2] += 0.07  # lighter H zone
    grey_tab[dist < mw / 2] = 0.30  # M line
    np.copyto(idx, np.subtract(v, np.float32(v_lo), out=buf), casting="unsafe")
    np.clip(idx, 0, nb - 1, out=idx)
    gap = gap_tab[idx]
    grey = tex_tab[idx]
    phase_tab += np.float32(L * math.ceil(half_u / L + 1))  # keeps u + phase positive for fmod
    p = np.take(phase_tab, idx, out=buf, mode="clip")
    p += u
    np.fmod(p, np.float32(L), out=p)
    p -= np.float32(L / 2)
    np.copyto(idx, np.abs(p, out=p), casting="unsafe")  # whole px from the M line
    loc = loc_tab.astype(np.uint8)[idx]
    grey += np.take(grey_tab, idx, out=buf, mode="clip")
    loc[gap] = S_SPACE
    grey[gap] = _GREY[S_SPACE]
    fib = dict(segs=segs, phases=phases, L=L, wave=(amp, lam, ph), rot=(cos, sin))
    return loc, grey, u, v, fib


def _periphery(rng, loc, grey, um):
    """Peripheral region (N) along one edge, optionally with an empty strip (U) outside the cell."""
    h, w = loc.shape
    edge = int(rng.integers(4))  # 0 top, 1 bottom, 2 left, 3 right
    n_perp, n_along = (h, w) if edge < 2 else (w, h)
    d = np.arange(n_perp, dtype=np.float32)[:: -1 if edge % 2 else 1]
    along = np.arange(n_along, dtype=np.float32)

    def boundary(width):
        wobble = min(0.1 * um, 0.3 * width) * rng.uniform(0.3, 1.0)
        lam, ph = rng.uniform(1.0, 3.0) * um, rng.uniform(0, 2 * np.pi)
        return width + wobble * np.sin(along * np.float32(2 * np.pi / lam) + np.float32(ph))

    b_cell = boundary(rng.uniform(0.05, 0.15) * n_perp)
    b_out = boundary(rng.uniform(0.01, 0.03) * n_perp) if rng.random() < 0.6 else None
    dd, bb = (d[:, None], b_cell[None, :]) if edge < 2 else (d[None, :], b_cell[:, None])
    inside = np.broadcast_to(dd < bb, loc.shape)
    loc[inside], grey[inside] = N_REGION, _GREY[N_REGION]
    if b_out is not None:
        bo = b_out[None, :] if edge < 2 else b_out[:, None]
        outside = np.broadcast_to(dd < bo, loc.shape)
        loc[outside], grey[outside] = UNCLASSIFIED, _GREY[UNCLASSIFIED]
        membrane = np.broadcast_to(np.abs(dd - bo) < max(1.0, 0.004 * um), loc.shape)
        grey[membrane] = 0.35  # sarcolemma


def _mitochondria(rng, loc, grey, u, v, fib, um):
    """Mitochondria (code 3) in the intermyofibrillar space on either side of the Z lines."""
    h, w = loc.shape
    (cos, sin), L, (amp, lam, ph) = fib["rot"], fib["L"], fib["wave"]
    half_u = 0.5 * ((w - 1) * abs(cos) + (h - 1) * abs(sin))
    segs, phases = fib["segs"], fib["phases"]
    for j, (v0, v1, is_gap) in enumerate(segs):
        if not is_gap or j == 0 or j == len(segs) - 1:
            continue
        phi = phases[j + (1 if rng.random() < 0.5 else -1)]
        fibril = min(segs[j - 1][1] - segs[j - 1][0], segs[j + 1][1] - segs[j + 1][0])
        n0, n1 = math.ceil((phi - half_u - um) / L), math.floor((phi + half_u + um) / L)
        for n in range(n0, n1 + 1):  # Z lines (u = n L - phi) within reach of the image
            for side in (-1, 1):
                if rng.random() < 0.5:
                    continue
                av, au = rng.uniform(0.125, 0.4) * um, rng.uniform(0.075, 0.15) * um
                av = min(av, (v1 - v0) / 2 + 0.4 * fibril)  # reach at most 40% into a fibril
                uc = n * L - phi + side * (au + rng.uniform(0.0, 0.03) * um)
                vc = (v0 + v1) / 2
                vr = vc - amp * math.sin(uc * 2 * math.pi / lam + ph)  # unwarped v of the centre
                xc, yc = uc * cos - vr * sin + (w - 1) / 2, uc * sin + vr * cos + (h - 1) / 2
                r = max(au, av) + amp + 2
                ys = slice(max(0, int(yc - r)), min(h, int(yc + r) + 1))
                xs = slice(max(0, int(xc - r)), min(w, int(xc + r) + 1))
                if ys.start >= ys.stop or xs.start >= xs.stop:
                    continue
                du, dv = u[ys, xs] - np.float32(uc), v[ys, xs] - np.float32(vc)
                rho2 = (du / np.float32(au)) ** 2 + (dv / np.float32(av)) ** 2
                lsl, gsl = loc[ys, xs], grey[ys, xs]
                ok = (rho2 <= 1) & (lsl >= A_BAND) & (lsl <= S_SPACE)
                cristae = np.cos(dv * np.float32(2 * np.pi / (0.03 * um))) > 0.4
                lsl[ok] = Z_DISK
                gsl[ok] = np.where(rho2 > 0.75, 0.30, np.where(cristae, 0.36, 0.52))[ok]


def _lipid_droplets(rng, loc, grey, um):
    """A few uniform grey round droplets (code 6) in the intermyofibrillar or peripheral space."""
    h, w = loc.shape
    for _ in range(rng.poisson(0.2 * h * w / um**2)):
        for _ in range(30):
            yc, xc = int(rng.integers(h)), int(rng.integers(w))
            if loc[yc, xc] in (S_SPACE, N_REGION):
                break
        else:
            continue
        r = rng.uniform(0.075, 0.2) * um
        ys = slice(max(0, int(yc - r)), min(h, int(yc + r) + 1))
        xs = slice(max(0, int(xc - r)), min(w, int(xc + r) + 1))
        yy, xx = np.ogrid[ys, xs]
        disc = ((yy - yc) ** 2 + (xx - xc) ** 2 <= r * r) & (loc[ys, xs] != UNCLASSIFIED)
        loc[ys, xs][disc], grey[ys, xs][disc] = OTHER, _GREY[OTHER]


def _granules(rng, loc, grey, um):
    """Dark round glycogen granules 15-40 nm across, placed by region density."""
    h, w = loc.shape
    a, b = 2.5, 4.5  # diameter = 15 + 25 * Beta(a, b) nm, mean ~24 nm
    mean_b, mean_b2 = a / (a + b), a * (a + 1) / ((a + b) * (a + b + 1))
    mean_area = math.pi / 4 * (225 + 750 * mean_b + 625 * mean_b2) * (um / 1000) ** 2
    lam = -np.log1p(-GRANULE_AREA_FRACTION)  # Poisson intensity giving that covered fraction
    n = rng.poisson(lam.max() * h * w / mean_area)
    yc, xc = rng.integers(0, h, n), rng.integers(0, w, n)
    keep = rng.random(n) < (lam / lam.max())[loc[yc, xc]]
    yc, xc = yc[keep], xc[keep]
    radius = (15 + 25 * rng.beta(a, b, len(yc))) * (um / 2000)
    core = rng.uniform(0.03, 0.10, len(yc))
    mask = np.zeros((h, w), np.uint8)
    for y, x, r, g in zip(yc.tolist(), xc.tolist(), radius.tolist(), core.tolist(), strict=True):
        k = int(r)
        y0, y1, x0, x1 = max(0, y - k), min(h, y + k + 1), max(0, x - k), min(w, x + k + 1)
        rho2 = ((np.arange(y0, y1) - y) ** 2)[:, None] + ((np.arange(x0, x1) - x) ** 2)[None, :]
        rho2 = rho2 / (r * r)
        disc = rho2 <= 1
        mask[y0:y1, x0:x1] |= disc
        profile = np.where(disc, 0.22 - (0.22 - g) * np.sqrt(np.maximum(1 - rho2, 0)), 1.0)
        np.minimum(grey[y0:y1, x0:x1], profile, out=grey[y0:y1, x0:x1], casting="unsafe")
    return mask


def _imaging(rng, grey, um, dt):
    """Fine texture, blur (sigma 2 nm), uneven illumination, noise and mapping to ``dt``."""
    h, w = grey.shape
    sigma = 0.002 * um
    buf = rng.standard_normal((h, w), dtype=np.float32)
    grey += np.multiply(buf, np.float32(0.04 * 2 * math.sqrt(math.pi) * max(sigma, 0.5)), out=buf)
    img = ndi.gaussian_filter(grey, sigma, output=buf, mode="nearest", truncate=3.0)
    t, g = rng.uniform(0, 2 * np.pi), rng.uniform(0.03, 0.08)
    img *= 1 + np.float32(g * math.sin(t)) * np.linspace(-1, 1, h, dtype=np.float32)[:, None]
    img *= 1 + np.float32(g * math.cos(t)) * np.linspace(-1, 1, w, dtype=np.float32)[None, :]
    # Poisson-like (signal-dependent) plus Gaussian read noise, drawn as one normal.
    sd = np.maximum(img, 0, out=grey)
    sd *= np.float32(0.05**2)
    sd += np.float32(0.025**2)
    np.sqrt(sd, out=sd)
    sd *= rng.standard_normal((h, w), dtype=np.float32)
    img += sd
    lo, hi = _RANGE[dt]
    img *= np.float32(hi - lo)
    img += np.float32(lo)
    np.clip(img, 0, np.iinfo(dt).max, out=img)
    return img.astype(dt)
