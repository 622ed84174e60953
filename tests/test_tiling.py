"""Tile plans cover the image exactly; blending weights sum to one; seed tiles are numbered as the seed."""

from __future__ import annotations

import numpy as np
import pytest

from napari_emgranules.core.tiling import TilePlan, pad_to_multiple, seed_tile_origins, split_seed


@pytest.mark.parametrize("shape", [(128, 128), (100, 37), (1000, 1500), (4096, 4096), (5000, 130)])
def test_pad_to_multiple_crops_back(shape):
    img = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    padded, crop = pad_to_multiple(img, 128)
    assert all(s % 128 == 0 for s in padded.shape)
    np.testing.assert_array_equal(padded[crop], img)


@pytest.mark.parametrize(
    "shape, max_window, halo",
    [((4096, 4096), 2048, 128), ((4096, 4096), 1024, 256), ((1000, 1500), 1024, 128),
     ((300, 200), 512, 64), ((5000, 130), 1024, 128)],
)
def test_plan_windows_cover_the_image_and_weights_sum_to_one(shape, max_window, halo):
    plan = TilePlan.for_image(shape, max_window, halo)
    assert all(w % 128 == 0 and w <= max_window for w in plan.window)
    assert all(h >= halo for h in plan.halo)
    weights = plan.weights()
    acc = np.zeros(plan.padded_shape, np.float64)
    marks = np.zeros(plan.padded_shape, np.float64)
    for y, x in plan.origins():
        assert y + plan.window[0] <= plan.padded_shape[0]
        assert x + plan.window[1] <= plan.padded_shape[1]
        acc[y:y + plan.window[0], x:x + plan.window[1]] += weights
        marks[y:y + plan.window[0], x:x + plan.window[1]] += 1
    inner = plan.crop(acc)
    assert inner.shape == shape
    assert (plan.crop(marks) >= 1).all()
    # Away from the image border (where only one window reaches) the cross-fades sum to 1.
    h0, h1 = plan.halo
    core = inner[h0:-h0 or None, h1:-h1 or None] if min(shape) > 4 * max(plan.halo) else inner
    if plan.n_windows > 1 and min(shape) > 4 * max(plan.halo):
        np.testing.assert_allclose(core, 1.0, atol=5e-3)


def test_blending_reconstructs_a_smooth_field_exactly():
    """Cutting, weighting and summing an image gives it back: no seams from the plan itself."""
    rng = np.random.default_rng(3)
    img = rng.random((900, 1300)).astype(np.float32)
    plan = TilePlan.for_image(img.shape, 512, 64)
    padded = plan.pad(img)
    w = plan.weights()
    acc = np.zeros(plan.padded_shape, np.float32)
    wsum = np.zeros(plan.padded_shape, np.float32)
    for y, x in plan.origins():
        acc[y:y + plan.window[0], x:x + plan.window[1]] += padded[y:y + plan.window[0],
                                                                  x:x + plan.window[1]] * w
        wsum[y:y + plan.window[0], x:x + plan.window[1]] += w
    np.testing.assert_allclose(plan.crop(acc) / plan.crop(wsum), img, rtol=1e-5, atol=1e-6)


def test_plan_refuses_windows_too_small_for_the_halo():
    with pytest.raises(ValueError, match="too small"):
        TilePlan.for_image((1000, 1000), 256, 128)
    with pytest.raises(ValueError, match="multiple of 128"):
        TilePlan.for_image((1000, 1000), 1000, 64)


def test_split_seed_numbers_tiles_column_major_as_the_original_utility():
    img = np.zeros((4096, 4096), np.uint16)
    for r in range(4):
        for c in range(4):
            img[r * 1024:(r + 1) * 1024, c * 1024:(c + 1) * 1024] = 10 * r + c
    tiles = split_seed(img, 4)
    assert [i for i, _ in tiles] == list(range(16))
    assert all(t.shape == (1024, 1024) for _, t in tiles)
    # tile l: column l // 4, row l % 4 (outer loop over columns, inner over rows)
    assert [int(t[0, 0]) for _, t in tiles] == [10 * (k % 4) + k // 4 for k in range(16)]
    rows = split_seed(img, 4, order="row")
    assert [int(t[0, 0]) for _, t in rows] == [10 * (k // 4) + k % 4 for k in range(16)]
    with pytest.raises(ValueError, match="divisible"):
        split_seed(np.zeros((1000, 1000)), 3)


def test_seed_tile_origins():
    assert seed_tile_origins((4096, 4096)) == [(y, x) for y in range(0, 4096, 1024)
                                               for x in range(0, 4096, 1024)]
    assert seed_tile_origins((1500, 900)) == [(0, 0), (1024, 0)]
