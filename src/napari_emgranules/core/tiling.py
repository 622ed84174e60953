"""Tile plans: padding to the network's multiple, overlapping windows with blending, seed tiles.

Three ways to cut a micrograph for a fully convolutional network:

* whole image: reflect-pad to a multiple of 128 (:func:`pad_to_multiple`), one pass, crop back;
* :class:`TilePlan`: a grid of equal windows whose cores tile the image, each window carrying a halo of
  context on every side; overlapping predictions are cross-faded with linear ramps
  (:meth:`TilePlan.weights`), so there are no seams;
* the original tool's non-overlapping tiles (:func:`seed_tile_origins`, :func:`split_seed`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = [
    "round_up",
    "pad_to_multiple",
    "TilePlan",
    "seed_tile_origins",
    "split_seed",
]


def round_up(n: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= ``n``."""
    return int(math.ceil(n / multiple) * multiple)


def _reflect_pad(image: np.ndarray, pads: tuple[tuple[int, int], tuple[int, int]]) -> np.ndarray:
    """Reflect padding that also works when a pad is wider than the image (repeats the mirror)."""
    if all(p == 0 for pair in pads for p in pair):
        return image
    # np.pad's 'reflect' handles pads wider than the axis by reflecting repeatedly; 'symmetric'
    # fails on a 1-pixel axis, so guard that single case.
    mode = "reflect" if min(image.shape[:2]) > 1 else "edge"
    full = tuple(pads) + ((0, 0),) * (image.ndim - 2)
    return np.pad(image, full, mode=mode)


def pad_to_multiple(
    image: np.ndarray, multiple: int = 128
) -> tuple[np.ndarray, tuple[slice, slice]]:
    """Reflect-pad both sides of a 2-D (or 2-D + channels) image to multiples of ``multiple``.

    The padding is split evenly between the two ends of each axis, so the image centre stays the
    centre. Returns the padded image and the slices that crop it back.
    """
    h, w = image.shape[:2]
    ph, pw = round_up(h, multiple) - h, round_up(w, multiple) - w
    top, left = ph // 2, pw // 2
    padded = _reflect_pad(image, ((top, ph - top), (left, pw - left)))
    return padded, (slice(top, top + h), slice(left, left + w))


@dataclass(frozen=True)
class TilePlan:
    """A grid of equal, overlapping windows covering an image.

    Each axis is cut into ``n`` cores of equal length ``core``; a window is its core plus a halo of
    context on both sides (all multiples of 128, on the whole-image pass's grid).
    Windows are read from the image reflect-padded by the halo (:meth:`pad`), predicted, weighted by
    :meth:`weights` (a linear cross-fade over the overlaps, zero in the outer half of each halo)
    and summed; dividing by the summed weights gives a seam-free result.

    Use :meth:`for_image` to make one.
    """

    image_shape: tuple[int, int]
    window: tuple[int, int]
    core: tuple[int, int]
    counts: tuple[int, int]
    pad_before: tuple[int, int]
    halo: tuple[int, int]

    @classmethod
    def for_image(
        cls,
        image_shape: tuple[int, int],
        max_window: int = 2048,
        halo: int = 128,
        multiple: int = 128,
    ) -> TilePlan:
        """Plan windows no larger than ``max_window`` with at least ``halo`` px of context.

        The windows sit on the same ``multiple`` grid as a whole-image pass (the image padded as
        :func:`pad_to_multiple` pads it): a U-Net with 7 poolings gives the same output for an
        input shifted by a multiple of 128 only, so this alignment is what makes tiled results
        match whole-image results. Cores and halos are therefore multiples of ``multiple``.

        Raises
        ------
        ValueError
            If ``max_window`` leaves no room for a core inside the two halos.
        """
        if max_window % multiple:
            raise ValueError(f"max_window must be a multiple of {multiple}, got {max_window}")
        h = round_up(max(halo, 0), multiple)
        if max_window - 2 * h < multiple:
            raise ValueError(
                f"max_window {max_window} is too small for a halo of {h} px on each side "
                f"(halos are rounded up to multiples of {multiple})"
            )
        window, core, counts, pad_before = [], [], [], []
        for size in image_shape[:2]:
            aligned = round_up(size, multiple)  # the whole-image pass's padded size
            n = max(1, math.ceil(aligned / (max_window - 2 * h)))
            c = round_up(math.ceil(aligned / n), multiple)
            n = math.ceil(aligned / c)
            window.append(c + 2 * h)
            core.append(c)
            counts.append(n)
            pad_before.append((aligned - size) // 2 + h)
        return cls(tuple(image_shape[:2]), tuple(window), tuple(core), tuple(counts),
                   tuple(pad_before), (h, h))

    # -- geometry ------------------------------------------------------------------------------------
    @property
    def n_windows(self) -> int:
        return self.counts[0] * self.counts[1]

    @property
    def padded_shape(self) -> tuple[int, int]:
        return tuple(
            (n - 1) * c + w for n, c, w in zip(self.counts, self.core, self.window, strict=True)
        )

    def origins(self) -> Iterator[tuple[int, int]]:
        """Top-left corner of each window in the padded image (see :meth:`pad`), row by row."""
        for i in range(self.counts[0]):
            for j in range(self.counts[1]):
                yield i * self.core[0], j * self.core[1]

    def pad(self, image: np.ndarray) -> np.ndarray:
        """Reflect-pad ``image`` so every window lies inside it."""
        ph, pw = self.padded_shape
        h, w = self.image_shape
        (top, left) = self.pad_before
        return _reflect_pad(image, ((top, ph - h - top), (left, pw - w - left)))

    def crop(self, padded: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`pad`."""
        (top, left), (h, w) = self.pad_before, self.image_shape
        return padded[top:top + h, left:left + w]

    def weights(self) -> np.ndarray:
        """Blending weights of one window, float32 ``window`` shaped, in (0, 1].

        Along each axis the weight is ~0 in the outer half of the halo, rises linearly across the
        inner half of the halo and the first half of the next window's halo, and is 1 in the core.
        Neighbouring windows' ramps sum to 1 where they overlap.
        """
        profiles = []
        for win, c in zip(self.window, self.core, strict=True):
            h = (win - c) / 2.0  # halo on each side
            pos = np.arange(win, dtype=np.float32) + 0.5
            dist = np.minimum(pos, win - pos)  # distance to the window edge
            ramp = (dist - h / 2.0) / h if h > 0 else np.ones_like(pos)
            profiles.append(np.clip(ramp, 1e-3, 1.0).astype(np.float32))
        return np.outer(profiles[0], profiles[1])


def seed_tile_origins(shape: tuple[int, int], tile: int = 1024) -> list[tuple[int, int]]:
    """Top-left corners of the original tool's non-overlapping ``tile`` x ``tile`` tiles, row-major."""
    return [(y, x) for y in range(0, shape[0], tile) for x in range(0, shape[1], tile)]


def split_seed(
    image: np.ndarray, split: int = 4, order: str = "column"
) -> list[tuple[int, np.ndarray]]:
    """Cut a micrograph into ``split`` x ``split`` equal tiles, numbered as the original tool does.

    The original utility (``split_EM_to_newdim``) loops over the column start in the outer loop and
    the row start in the inner loop, so tile ``l`` is at column ``l // split`` and row ``l % split``
    (``order="column"``). ``order="row"`` numbers row by row instead.

    Raises
    ------
    ValueError
        If the sides are not divisible by ``split``.
    """
    h, w = image.shape[:2]
    if split < 1 or h % split or w % split:
        raise ValueError(
            f"a {h}x{w} image cannot be split into {split}x{split} equal tiles "
            f"(the sides must be divisible by {split})"
        )
    if order not in ("column", "row"):
        raise ValueError(f"order must be 'column' or 'row', got {order!r}")
    th, tw = h // split, w // split
    tiles = []
    for a in range(split):
        for b in range(split):
            row, col = (b, a) if order == "column" else (a, b)
            tiles.append((a * split + b, image[row * th:(row + 1) * th, col * tw:(col + 1) * tw]))
    return tiles
