"""One-click corrections of label maps: add a missed granule, remove false ones, refill a region.

Each function takes the current labels and returns the pixels to change (so the caller, the
Review widget or a script, writes them with its own undo history) and never edits in place.

* :func:`granule_at`: a disc fitted to the dark particle under a click. From the darkest (smoothed)
  pixel near the click, the local background is the median grey of a ring around it; the particle
  is the connected area darker than half-way between the two (its edge at half depth), and the
  disc has its area and centre, within the diameters glycogen particles have.
* :func:`granules_at` / :func:`granules_in_box`: the connected granules under a click or with
  their centre in a box.
* :func:`region_at`: the connected area of the class under a click (the model's boundaries bound
  it), to be given another class in one click instead of painting it.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

#: Granule diameters (nm) a click may fit: glycogen beta particles are about 15-40 nm.
MIN_DIAMETER_NM, MAX_DIAMETER_NM = 8.0, 60.0
_EIGHT = np.ones((3, 3), bool)  # a granule is one 8-connected object, as in the measurement
_MIN_DEPTH_SIGMAS = 4.0  # a particle is darker than its surroundings by this many noise sigmas


def _check_point(shape: tuple[int, ...], point, what: str = "point") -> tuple[int, int]:
    y, x = (int(round(float(v))) for v in point)
    if not (0 <= y < shape[0] and 0 <= x < shape[1]):
        raise ValueError(f"{what} ({y}, {x}) lies outside the {shape[0]} x {shape[1]} px image")
    return y, x


def granule_at(image: np.ndarray, point, pixel_size_nm: float, *,
               search_nm: float = 12.0) -> tuple[np.ndarray, tuple[int, int], float]:
    """The disc of a dark particle under ``point`` (row, col).

    Returns ``(mask, centre, diameter_nm)``: a boolean mask of ``image``'s shape, the particle's
    centre (row, col) and its fitted diameter. Raises ValueError when nothing darker than its
    surroundings lies near the click (a click on background) or the point is outside the image.
    """
    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"the micrograph must be 2-D, got shape {img.shape}")
    px = float(pixel_size_nm)
    if not (math.isfinite(px) and px > 0):
        raise ValueError(f"the pixel size must be a positive number of nm, got {pixel_size_nm!r}")
    y, x = _check_point(img.shape, point)
    r_max = max(2, int(math.ceil(MAX_DIAMETER_NM / 2 / px)))
    r_search = max(1, int(round(search_nm / px)))
    pad = r_max * 2 + r_search
    y0, y1 = max(0, y - pad), min(img.shape[0], y + pad + 1)
    x0, x1 = max(0, x - pad), min(img.shape[1], x + pad + 1)
    win = ndi.gaussian_filter(img[y0:y1, x0:x1].astype(np.float32), max(0.5, 2.0 / px))
    cy, cx = y - y0, x - x0
    sy = slice(max(0, cy - r_search), cy + r_search + 1)
    sx = slice(max(0, cx - r_search), cx + r_search + 1)
    near = win[sy, sx]
    dy, dx = np.unravel_index(int(np.argmin(near)), near.shape)
    cy, cx = sy.start + int(dy), sx.start + int(dx)
    yy, xx = np.indices(win.shape)
    dist = np.hypot(yy - cy, xx - cx)
    ring = (dist >= r_max) & (dist <= 2 * r_max)
    background = float(np.median(win[ring])) if ring.any() else float(np.median(win))
    around = win[ring] if ring.any() else win.ravel()
    noise = 1.4826 * float(np.median(np.abs(around - background)))  # robust to other particles
    depth = background - float(win[cy, cx])
    if depth <= max(_MIN_DEPTH_SIGMAS * noise, 1e-6):
        raise ValueError(f"no dark particle at ({y}, {x}): nothing there stands out from its "
                         "surroundings")
    half = background - depth / 2
    components, _ = ndi.label(win < half)
    particle = components == components[cy, cx]
    area = int(particle.sum())
    if area <= math.pi * r_max ** 2:  # a particle: the disc of its area at its centre
        py, px_ = (float(v) for v in ndi.center_of_mass(particle))
        diameter = 2 * math.sqrt(area / math.pi) * px
    else:  # dark beyond any granule (a band, a membrane): a disc around the darkest point
        py, px_ = float(cy), float(cx)
        diameter = MAX_DIAMETER_NM / 2
    diameter = float(np.clip(diameter, MIN_DIAMETER_NM, MAX_DIAMETER_NM))
    r_px = diameter / px / 2
    gy, gx = py + y0, px_ + x0
    full_y, full_x = np.ogrid[:img.shape[0], :img.shape[1]]
    mask = (full_y - gy) ** 2 + (full_x - gx) ** 2 <= r_px ** 2 + 0.25
    return mask, (int(round(gy)), int(round(gx))), diameter


def _window(shape, y0: float, y1: float, x0: float, x1: float, margin: int) -> tuple[slice, slice]:
    return (slice(max(0, int(math.floor(y0)) - margin), min(shape[0], int(math.ceil(y1)) + margin + 1)),
            slice(max(0, int(math.floor(x0)) - margin), min(shape[1], int(math.ceil(x1)) + margin + 1)))


def granules_at(granules: np.ndarray, point, *, reach_px: int = 3, window_px: int = 256) -> np.ndarray:
    """The connected granule(s) (label 1, 8-connected) at ``point`` or within ``reach_px`` of it
    (a mask; empty when there is none). Only a ``window_px`` neighbourhood is searched (granules
    are small)."""
    lab = np.asarray(granules)
    y, x = _check_point(lab.shape, point)
    near = _window(lab.shape, y, y, x, x, reach_px)
    out = np.zeros(lab.shape, bool)
    if not (lab[near] == 1).any():
        return out
    win = _window(lab.shape, y, y, x, x, window_px // 2)
    components, _ = ndi.label(lab[win] == 1, structure=_EIGHT)
    oy, ox = win[0].start, win[1].start
    ids = np.unique(components[near[0].start - oy:near[0].stop - oy, near[1].start - ox:near[1].stop - ox])
    out[win] = np.isin(components, ids[ids > 0])
    return out


def granules_in_box(granules: np.ndarray, corner0, corner1, *, margin_px: int = 64) -> np.ndarray:
    """Every connected granule (label 1, 8-connected) whose centre lies in the box between two corners."""
    lab = np.asarray(granules)
    (ya, xa), (yb, xb) = (tuple(float(v) for v in c) for c in (corner0, corner1))
    top, bottom, left, right = min(ya, yb), max(ya, yb), min(xa, xb), max(xa, xb)
    out = np.zeros(lab.shape, bool)
    win = _window(lab.shape, top, bottom, left, right, margin_px)
    components, n = ndi.label(lab[win] == 1, structure=_EIGHT)
    if n == 0:
        return out
    centres = np.asarray(ndi.center_of_mass(np.ones(components.shape), components, range(1, n + 1)))
    centres += (win[0].start, win[1].start)
    inside = ((centres[:, 0] >= top) & (centres[:, 0] <= bottom)
              & (centres[:, 1] >= left) & (centres[:, 1] <= right))
    out[win] = np.isin(components, np.flatnonzero(inside) + 1)
    return out


def region_at(labels: np.ndarray, point, image: np.ndarray | None = None, *,
              smooth_px: float = 2.0, sample_px: int = 5) -> np.ndarray:
    """The connected area of the class under ``point`` that one click gives another class.

    Without ``image``: the whole connected area (4-connected) of that class, as the model drew it.
    With ``image``: only the part of that area that looks like the pixels around the click. The
    area's smoothed grey levels are split in two (two-means, started from the mean within
    ``sample_px`` of the click and the area's mean): the pixels on the click's side, connected to
    it, with small holes filled. A mitochondrion or Z line the model gave the class of its
    surroundings is refilled without the rest of the area it touches.
    """
    lab = np.asarray(labels)
    y, x = _check_point(lab.shape, point)
    components, _ = ndi.label(lab == lab[y, x])
    area = components == components[y, x]
    if image is None:
        return area
    img = np.asarray(image)
    if img.shape != lab.shape:
        raise ValueError(f"the micrograph ({img.shape[0]} x {img.shape[1]} px) and the labels "
                         f"({lab.shape[0]} x {lab.shape[1]} px) differ in size")
    ys, xs = np.nonzero(area)
    margin = int(math.ceil(3 * smooth_px)) + 1
    box = _window(lab.shape, ys.min(), ys.max(), xs.min(), xs.max(), margin)
    smooth = ndi.gaussian_filter(img[box].astype(np.float32), smooth_px)
    inside = area[box]
    cy, cx = y - box[0].start, x - box[1].start
    win = _window(smooth.shape, cy, cy, cx, cx, sample_px)
    yy, xx = np.ogrid[win[0], win[1]]
    near = ((yy - cy) ** 2 + (xx - cx) ** 2 <= sample_px ** 2) & inside[win]
    values = smooth[inside]
    m_click, m_rest = float(smooth[win][near].mean()), float(values.mean())
    for _ in range(10):  # two-means on the area's grey levels, the click's cluster kept apart
        like = np.abs(values - m_click) <= np.abs(values - m_rest)
        if like.all() or not like.any():
            break
        m_click, m_rest = float(values[like].mean()), float(values[~like].mean())
    similar = np.zeros(inside.shape, bool)
    similar[inside] = np.abs(values - m_click) <= np.abs(values - m_rest)
    similar[cy, cx] = True
    parts, _ = ndi.label(similar)
    found = parts == parts[cy, cx]
    holes, n = ndi.label(ndi.binary_fill_holes(found) & ~found)
    if n:  # specks of noise inside are filled, not whole structures it surrounds
        sizes = np.bincount(holes.ravel())
        small = np.flatnonzero(sizes <= max(64, 0.02 * found.sum()))
        found |= np.isin(holes, small[small > 0])
    found &= inside
    out = np.zeros(lab.shape, bool)
    out[box] = found
    return out
