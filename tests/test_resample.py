"""Resampling between a micrograph's grid and a model's: one definition, exact fast paths."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_emgranules.core.resample import (
    model_grid_shape,
    resample,
    resample_rows,
    resample_weights,
    upsample_argmax,
    upsample_argmax_rows,
)

SHAPES = [((300, 420), (75, 105)), ((75, 105), (300, 420)), ((301, 419), (77, 103)),
          ((50, 60, 3), (200, 240, 3)), ((97, 64, 2), (31, 80, 2))]


@pytest.mark.parametrize("shapes", SHAPES)
def test_resample_is_keras_antialiased_bilinear_resize(shapes):
    from napari_emgranules.core._backend import get_keras

    ops = get_keras().ops
    source, target = shapes
    a = np.random.default_rng(1).random(source).astype(np.float32)
    a3 = a if a.ndim == 3 else a[..., None]
    expected = ops.convert_to_numpy(ops.image.resize(a3[None], target[:2], interpolation="bilinear",
                                                     antialias=True))[0]
    got = resample(a, target[:2])
    assert got.dtype == np.float32 and got.shape == target
    np.testing.assert_allclose(got.reshape(expected.shape), expected, rtol=0, atol=2e-5)


@pytest.mark.parametrize("shapes", SHAPES)
def test_resampling_by_bands_equals_the_whole_image(shapes):
    source, target = shapes
    a = np.random.default_rng(2).random(source).astype(np.float32)
    bands = [resample_rows(lambda rows: a[rows], source[:2], target[:2], o0, min(o0 + 16, target[0]))
             for o0 in range(0, target[0], 16)]
    np.testing.assert_array_equal(np.concatenate(bands), resample(a, target[:2]))


def test_weights_are_normalised_and_a_constant_image_stays_constant():
    for n_in, n_out in ((4096, 1024), (1000, 313), (64, 80), (7, 3)):
        w = resample_weights(n_in, n_out)
        np.testing.assert_allclose(np.asarray(w.sum(axis=1)).ravel(), 1.0, atol=1e-6)
    np.testing.assert_allclose(resample(np.full((90, 70), 0.3, np.float32), (23, 31)), 0.3, atol=1e-6)
    with pytest.raises(ValueError, match="cannot resample"):
        resample_weights(0, 5)


def test_an_integer_shrink_is_a_local_mean_without_shift():
    a = np.zeros((64, 64), np.float32)
    a[24:40, 24:40] = 1.0  # a centred square keeps its centre at the model's grid
    small = resample(a, (16, 16))
    ys, xs = np.nonzero(small > 0.5)
    assert (ys.min() + ys.max()) / 2 == pytest.approx(7.5) and (xs.min() + xs.max()) / 2 == pytest.approx(7.5)
    assert small.sum() * 16 == pytest.approx(a.sum(), rel=1e-5)  # area preserved


@pytest.mark.parametrize("target", [(1024, 800), (1000, 1111), (256, 300), (700, 203), (64, 50)])
def test_upsampled_argmax_is_exact(target):
    rng = np.random.default_rng(3)
    scores = ndi.gaussian_filter(rng.normal(size=(256, 200, 7)), (3, 3, 0)).astype(np.float32) * 10
    brute = resample(scores, target).argmax(axis=-1)
    got = upsample_argmax(scores, target)
    assert got.dtype == np.uint8 and got.shape == target
    assert np.mean(got != brute) < 1e-5  # only exact float ties may differ
    if target[0] >= 256:
        bands = [upsample_argmax_rows(lambda rows: scores[rows], scores.shape[:2], target, o0,
                                      min(o0 + 37, target[0])) for o0 in range(0, target[0], 37)]
        np.testing.assert_array_equal(np.concatenate(bands), got)


@pytest.mark.parametrize("target", [(1024, 800), (700, 203), (64, 50)])
def test_two_class_scores_and_their_difference_give_the_arg_max(target):
    rng = np.random.default_rng(4)
    scores = ndi.gaussian_filter(rng.normal(size=(256, 200, 2)), (3, 3, 0)).astype(np.float32) * 10
    brute = resample(scores, target).argmax(axis=-1)
    for given in (scores, scores[..., 1] - scores[..., 0]):
        got = upsample_argmax(given, target)
        assert got.dtype == np.uint8 and got.shape == target
        assert np.mean(got != brute) < 1e-5  # only exact float ties may differ


def test_channels_resample_alike_and_bands_do_not_show():
    rng = np.random.default_rng(5)
    stack = rng.random((97, 131, 7), dtype=np.float32)  # rows not a multiple of the column band
    for target in ((50, 300), (200, 64)):
        whole = resample(stack, target)
        assert whole.flags.c_contiguous
        for c in (0, 6):
            np.testing.assert_allclose(whole[..., c], resample(stack[..., c], target), rtol=1e-6,
                                       atol=1e-6)


def test_model_grid_shape_keeps_near_equal_pixel_sizes():
    assert model_grid_shape((4096, 2048), 0.25) == (1024, 512)
    assert model_grid_shape((4096, 2048), 1.005) == (4096, 2048)
    assert model_grid_shape((20, 20), 0.01) == (8, 8)
