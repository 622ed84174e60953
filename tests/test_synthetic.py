"""Tests of the synthetic micrograph generator (core/synthetic.py)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from skimage.measure import label, regionprops

from napari_emgranules.core.schema import LOCATIONS_SCHEMA
from napari_emgranules.core.synthetic import (
    SyntheticMicrograph,
    sample_micrograph,
    synthetic_micrograph,
)

MEASURED = {c.letter: c.code for c in LOCATIONS_SCHEMA.classes if c.measured}


@pytest.fixture(scope="module")
def default_1024() -> list[SyntheticMicrograph]:
    return [synthetic_micrograph((1024, 1024), seed=s) for s in range(4)]


def _isolated_diameters_px(m: SyntheticMicrograph) -> np.ndarray:
    """Equivalent diameters of single, whole granules (not merged, not cut by the border)."""
    h, w = m.granules.shape
    out = []
    for r in regionprops(label(m.granules, connectivity=1)):
        y0, x0, y1, x1 = r.bbox
        if y0 == 0 or x0 == 0 or y1 == h or x1 == w or r.solidity < 0.95 or r.eccentricity > 0.3:
            continue
        out.append(r.equivalent_diameter_area)
    return np.array(out)


def test_deterministic_per_seed():
    a = synthetic_micrograph((300, 400), pixel_size_nm=1.2, seed=7)
    b = synthetic_micrograph((300, 400), pixel_size_nm=1.2, seed=7)
    c = synthetic_micrograph((300, 400), pixel_size_nm=1.2, seed=8)
    for name in ("image", "locations", "granules"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    np.testing.assert_equal(a.true_pixel_fractions, b.true_pixel_fractions)
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.granules, c.granules)
    assert (a.seed, c.seed, a.pixel_size_nm) == (7, 8, 1.2)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", np.uint8, np.dtype("uint16")])
def test_shapes_and_dtypes(dtype):
    m = synthetic_micrograph((200, 330), seed=1, dtype=dtype)
    assert m.image.shape == m.locations.shape == m.granules.shape == (200, 330)
    assert m.image.dtype == np.dtype(dtype)
    assert m.locations.dtype == m.granules.dtype == np.uint8
    assert m.locations.max() <= 6
    assert set(np.unique(m.granules)) <= {0, 1}
    assert set(m.true_pixel_fractions) == set("AIZSN")


def test_uint8_is_uint16_scaled():
    m8 = synthetic_micrograph((256, 256), seed=3, dtype="uint8")
    m16 = synthetic_micrograph((256, 256), seed=3, dtype="uint16")
    np.testing.assert_array_equal(m8.locations, m16.locations)
    diff = m8.image.astype(float) - m16.image.astype(float) / 257
    assert np.abs(diff).max() <= 2
    lo, hi = np.percentile(m16.image, [0.5, 99.5])
    assert 4000 < lo < 20000 and 35000 < hi < 60000


def test_all_measured_codes_present(default_1024):
    for m in default_1024:
        counts = np.bincount(m.locations.ravel(), minlength=7)
        assert (counts[1:6] > 0).all(), counts
        assert all(np.isfinite(v) for v in m.true_pixel_fractions.values())


def test_fractions_match_masks(default_1024):
    m = default_1024[0]
    for letter, code in MEASURED.items():
        region = m.locations == code
        expected = m.granules[region].sum() / region.sum() if region.any() else np.nan
        np.testing.assert_allclose(m.true_pixel_fractions[letter], expected, rtol=1e-12)
    small = synthetic_micrograph((64, 64), seed=0)
    for letter, code in MEASURED.items():
        assert np.isnan(small.true_pixel_fractions[letter]) == (not (small.locations == code).any())


def test_fractions_near_targets(default_1024):
    region = sum(np.bincount(m.locations.ravel(), minlength=7) for m in default_1024)
    gran = sum(np.bincount(m.locations[m.granules == 1], minlength=7) for m in default_1024)
    f = dict(zip("UAIZSNO", gran / np.maximum(region, 1), strict=True))
    assert 0.025 < f["I"] < 0.06
    assert 0.035 < f["S"] < 0.09
    assert 0.03 < f["N"] < 0.07
    assert f["A"] < 0.015
    assert f["Z"] < 0.035
    assert f["I"] > 3 * f["A"] and f["S"] > 3 * f["A"]


def test_granule_diameters_scale_with_pixel_size():
    medians = {}
    for ps, n in ((0.8, 1024), (1.6, 512)):  # the same field of view
        d_px = np.concatenate([_isolated_diameters_px(synthetic_micrograph((n, n), ps, seed=s))
                               for s in (0, 1)])
        assert len(d_px) > 50
        d_nm = d_px * ps
        assert d_nm.min() > 15 - 2 * ps and d_nm.max() < 40 + 2 * ps
        medians[ps] = np.median(d_px)
    assert 1.8 < medians[0.8] / medians[1.6] < 2.2


def test_granules_darker_than_a_band(default_1024):
    for m in default_1024:
        img = m.image.astype(float)
        a_band = (m.locations == 1) & (m.granules == 0)
        assert img[m.granules == 1].mean() < img[a_band].mean()
        assert img[a_band].mean() < img[(m.locations == 2) & (m.granules == 0)].mean()


def test_small_image_is_fast():
    synthetic_micrograph((256, 256))
    best = min(_timed(lambda: synthetic_micrograph((256, 256), seed=5)) for _ in range(3))
    assert best < 0.2


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def test_sample_micrograph():
    m = sample_micrograph()
    assert m.image.shape == (2048, 2048) and m.image.dtype == np.uint16
    assert (m.seed, m.pixel_size_nm) == (2024, 0.8)
    assert np.bincount(m.locations.ravel(), minlength=7)[1:6].min() > 0


@pytest.mark.parametrize("kwargs", [
    {"dtype": "float32"}, {"dtype": "int16"}, {"pixel_size_nm": 0}, {"pixel_size_nm": -1.0},
    {"pixel_size_nm": float("nan")}, {"shape": (0, 10)}, {"shape": (10,)},
])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        synthetic_micrograph(**{"shape": (32, 32), **kwargs})
