"""Resampling between a micrograph's pixel size and a model's, one definition for every path.

A model works at its own pixel size (the Locations default at 3.2 nm/px, Granules at 0.8 nm/px).
Segmentation brings the micrograph to the model's grid, runs the network there, and brings the
labels back; training brings a lab's micrographs to the model's grid the same way. Both directions
are defined here once:

* **Image to model grid** (:func:`resample`): separable linear interpolation with pixel centres
  aligned (half-pixel convention); when shrinking, the tent kernel is widened by the factor
  (anti-aliasing, a local area mean). It is exactly ``keras.ops.image.resize(...,
  interpolation="bilinear", antialias=True)`` on every Keras backend (tests check it), written as
  two sparse matrix products so it costs a few tens of milliseconds for a 4096^2 micrograph in
  float32 and needs no Keras at all (ONNX Runtime installs, montages read by bands).
* **Scores back to the micrograph's grid** (:func:`upsample_argmax`): the arg-max of the
  bilinearly upsampled class scores (logits), computed exactly but only where it can differ from
  the coarse labels. Where the four coarse pixels around an output pixel share their arg-max, any
  convex combination of them has the same arg-max, so those pixels (almost all of them) take it
  directly; only pixels near a class boundary are interpolated. A 4096^2 label map from 1024^2 x 7
  logits takes a fraction of a second instead of interpolating 117 million values.

Bands of rows (:func:`resample_rows`) give the same result as the whole-image call, so a montage
larger than memory resamples by bands and agrees with the in-memory path.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np

__all__ = ["model_grid_shape", "resample", "resample_rows", "resample_weights", "upsample_argmax",
           "upsample_argmax_rows", "RESAMPLE_TOLERANCE"]

RESAMPLE_TOLERANCE = 0.01
"""Relative pixel-size difference below which a micrograph is used at the model's grid as it is."""


def model_grid_shape(shape: tuple[int, int], factor: float) -> tuple[int, int]:
    """The shape of an image of ``shape`` at ``factor`` times its pixel density (``image nm/px /
    model nm/px``); ``shape`` itself within :data:`RESAMPLE_TOLERANCE`."""
    if abs(factor - 1.0) <= RESAMPLE_TOLERANCE:
        return tuple(shape)
    return tuple(max(8, round(s * factor)) for s in shape)


@lru_cache(maxsize=32)
def resample_weights(n_in: int, n_out: int):
    """The ``(n_out, n_in)`` sparse interpolation matrix of one axis (float32 CSR).

    Output ``i`` sits at input coordinate ``x = (i + 0.5) * n_in / n_out - 0.5``; input ``j`` weighs
    ``max(0, 1 - |j - x| / s)`` with ``s = max(1, n_in / n_out)``; the weights of each row are
    normalised to sum 1 over the inputs that exist (so the edges clamp).
    """
    from scipy import sparse

    if n_in < 1 or n_out < 1:
        raise ValueError(f"cannot resample {n_in} pixels to {n_out}")
    scale = max(1.0, n_in / n_out)
    x = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    lo = np.floor(x - scale).astype(np.int64) + 1
    width = int(np.ceil(2 * scale)) + 1
    cols = lo[:, None] + np.arange(width)[None, :]
    w = np.maximum(0.0, 1.0 - np.abs(cols - x[:, None]) / scale)
    w[(cols < 0) | (cols >= n_in)] = 0.0
    w /= w.sum(axis=1, keepdims=True)
    keep = w > 0
    rows = np.broadcast_to(np.arange(n_out)[:, None], cols.shape)
    return sparse.csr_matrix((w[keep].astype(np.float32), (rows[keep], cols[keep])),
                             shape=(n_out, n_in))


def _along_rows(matrix, a: np.ndarray) -> np.ndarray:
    """``matrix @ a`` over the first axis of a 2-D or 3-D float32 array."""
    flat = a.reshape(a.shape[0], -1)
    return np.asarray(matrix @ flat, dtype=np.float32).reshape((matrix.shape[0],) + a.shape[1:])


_COL_BAND = 32  # image rows per step of the column pass (its transposes stay in the CPU cache)


def _along_cols(matrix, a: np.ndarray) -> np.ndarray:
    """``a @ matrix.T`` over the second axis of a 2-D or 3-D float32 array, C-contiguous.

    By bands of rows: transposing a whole image to multiply along its rows and back costs several
    times the product itself (cache misses); a band's transposes fit the cache (7x faster for a
    4096 x 8192 image, the same numbers).
    """
    channels = int(np.prod(a.shape[2:], dtype=np.int64))
    band = max(4, _COL_BAND // max(1, channels))
    out = np.empty((a.shape[0], matrix.shape[0]) + a.shape[2:], dtype=np.float32)
    for i in range(0, a.shape[0], band):
        out[i:i + band] = np.moveaxis(_along_rows(matrix, np.moveaxis(a[i:i + band], 1, 0)), 0, 1)
    return out


def resample(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``image`` (``(h, w)`` or ``(h, w, c)``) resampled to ``shape`` as float32 (see the module)."""
    a = np.asarray(image, dtype=np.float32)
    shape = tuple(int(s) for s in shape)
    if a.shape[:2] == shape:
        return a
    if a.shape[0] != shape[0]:
        a = _along_rows(resample_weights(a.shape[0], shape[0]), a)
    if a.shape[1] != shape[1]:
        a = _along_cols(resample_weights(a.shape[1], shape[1]), a)
    return np.ascontiguousarray(a)


def resample_rows(read: Callable[[slice], np.ndarray], in_shape: tuple[int, int],
                  out_shape: tuple[int, int], o0: int, o1: int) -> np.ndarray:
    """Rows ``o0..o1`` of :func:`resample` of an image read in part: ``read(rows)`` returns the
    source rows ``rows`` (a slice) as float32. Equal to the same rows of the whole-image call."""
    wy = resample_weights(in_shape[0], out_shape[0])[o0:o1]
    used = wy.indices
    lo, hi = int(used.min()), int(used.max()) + 1
    block = np.asarray(read(slice(lo, hi)), dtype=np.float32)
    rows = _along_rows(wy[:, lo:hi], block)
    if in_shape[1] != out_shape[1]:
        rows = _along_cols(resample_weights(in_shape[1], out_shape[1]), rows)
    return rows


def _corners(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear upsampling of one axis: lower and upper source index and the upper weight."""
    x = np.clip((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    i0 = np.floor(x).astype(np.intp)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (x - i0).astype(np.float32)


_CHUNK = 1 << 20  # boundary pixels interpolated per step (bounds the scratch memory)


def upsample_argmax(scores: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``argmax`` (uint8) of ``scores`` (``(h, w, c)``, or a two-class model's logit difference
    ``(h, w)``: class 1 where it is positive) bilinearly upsampled to ``shape``.

    Exact: equal to ``resample(scores, shape).argmax(-1)`` (to float rounding at ties) for any
    upsampling; pixels whose four source pixels agree are not interpolated (see the module).
    """
    s = np.asarray(scores, dtype=np.float32)
    shape = tuple(int(v) for v in shape)
    if s.ndim == 3 and s.shape[-1] == 2:  # two classes: only their difference matters
        s = s[..., 1] - s[..., 0]
    if shape[0] < s.shape[0] or shape[1] < s.shape[1]:  # shrinking: the output is the small side
        if s.ndim == 2:  # resampling is linear: the sign of the resampled logit difference
            return (resample(s, shape) > 0).astype(np.uint8)
        return resample(s, shape).argmax(axis=-1).astype(np.uint8)
    if s.ndim == 2:
        s = np.stack([np.zeros_like(s), s], axis=-1)
    return upsample_argmax_rows(lambda rows: s[rows], s.shape[:2], shape, 0, shape[0])


def upsample_argmax_rows(read: Callable[[slice], np.ndarray], in_shape: tuple[int, int],
                         out_shape: tuple[int, int], o0: int, o1: int) -> np.ndarray:
    """Rows ``o0..o1`` of :func:`upsample_argmax` (``out_shape`` at least ``in_shape``), reading
    only the score rows they need: ``read(rows)`` returns them (a slice) as ``(n, w, c)``."""
    y0, y1, ty = (a[o0:o1] for a in _corners(in_shape[0], out_shape[0]))
    x0, x1, tx = _corners(in_shape[1], out_shape[1])
    lo = int(y0[0])
    s = np.asarray(read(slice(lo, int(y1[-1]) + 1)), dtype=np.float32)
    y0, y1 = y0 - lo, y1 - lo
    coarse = s.argmax(axis=-1).astype(np.uint8)
    # cell (i, j) spans source pixels i..min(i+1, last) and j..min(j+1, last); in a block of rows
    # the last row only starts cells at the image's own last row, so clamping there is exact
    down = np.concatenate([coarse[1:], coarse[-1:]], axis=0)
    right = np.concatenate([coarse[:, 1:], coarse[:, -1:]], axis=1)
    diag = np.concatenate([down[:, 1:], down[:, -1:]], axis=1)
    mixed = (coarse != down) | (coarse != right) | (coarse != diag)
    # y0 and x0 are sorted: repeating rows and columns is the gather coarse[y0][:, x0], faster
    out = np.repeat(np.repeat(coarse, np.bincount(y0, minlength=coarse.shape[0]), axis=0),
                    np.bincount(x0, minlength=coarse.shape[1]), axis=1)
    ys, xs = _pixels_of_cells(np.nonzero(mixed), y0, x0)
    for k in range(0, ys.size, _CHUNK):
        yy, xx = ys[k:k + _CHUNK], xs[k:k + _CHUNK]
        a, b, c, d = y0[yy], y1[yy], x0[xx], x1[xx]
        wy, wx = ty[yy][:, None], tx[xx][:, None]
        top = s[a, c] * (1 - wx) + s[a, d] * wx
        bottom = s[b, c] * (1 - wx) + s[b, d] * wx
        out[yy, xx] = (top * (1 - wy) + bottom * wy).argmax(axis=-1)
    return out


def _pixels_of_cells(cells: tuple[np.ndarray, np.ndarray], y0: np.ndarray,
                     x0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Output pixels whose cell (lower source indices ``y0``, ``x0``; both sorted) is in ``cells``."""
    ci, cj = cells
    if not ci.size:
        return ci, cj
    starts_y = np.searchsorted(y0, np.arange(y0[-1] + 2))
    starts_x = np.searchsorted(x0, np.arange(x0[-1] + 2))
    cy = np.diff(starts_y)  # output rows per source row (0 beyond the last used)
    cx = np.diff(starts_x)
    cy = np.concatenate([cy, np.zeros(max(0, ci.max() + 1 - cy.size), cy.dtype)])
    cx = np.concatenate([cx, np.zeros(max(0, cj.max() + 1 - cx.size), cx.dtype)])
    starts_y = np.concatenate([starts_y, np.full(max(0, ci.max() + 2 - starts_y.size), y0.size)])
    starts_x = np.concatenate([starts_x, np.full(max(0, cj.max() + 2 - starts_x.size), x0.size)])
    my, mx = int(cy.max()), int(cx.max())
    dy = np.arange(my)[None, :, None]
    dx = np.arange(mx)[None, None, :]
    ny, nx = cy[ci][:, None, None], cx[cj][:, None, None]
    keep = (dy < ny) & (dx < nx)
    ys = np.broadcast_to(starts_y[ci][:, None, None] + dy, keep.shape)[keep]
    xs = np.broadcast_to(starts_x[cj][:, None, None] + dx, keep.shape)[keep]
    return ys, xs
