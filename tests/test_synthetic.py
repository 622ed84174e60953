"""Tests of the synthetic micrograph generator (core/synthetic.py)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from skimage.measure import label, regionprops

from napari_emgranules.core.schema import LOCATIONS_SCHEMA
from napari_emgranules.core.synthetic import (
    SyntheticMicrograph,
    SyntheticParams,
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
    assert 0 < lo < hi < 65535 and hi - lo > 0.3 * 65535


def test_all_measured_codes_present():
    # A full-size micrograph shows every measured region; small fields show a part of the cell.
    m = synthetic_micrograph((4096, 4096), seed=1, dtype="uint8")
    counts = np.bincount(m.locations.ravel(), minlength=7)
    assert (counts[1:6] > 0).all(), counts
    assert all(np.isfinite(v) for v in m.true_pixel_fractions.values())
    assert m.drawn["periphery"] and 0 <= m.drawn["angle_deg"] < 180


def test_fractions_match_masks(default_1024):
    for m in default_1024:
        for letter, code in MEASURED.items():
            region = m.locations == code
            expected = m.granules[region].sum() / region.sum() if region.any() else np.nan
            np.testing.assert_allclose(m.true_pixel_fractions[letter], expected, rtol=1e-12)


def test_fractions_follow_region_densities():
    # Pooled over micrographs: glycogen is highest in the spaces, I band and periphery, lowest
    # in the A band, and each region's fraction is near the mean of the range it is drawn from.
    ms = [synthetic_micrograph((2048, 2048), seed=s, dtype="uint8") for s in range(6)]
    region = sum(np.bincount(m.locations.ravel(), minlength=7) for m in ms)
    gran = sum(np.bincount(m.locations[m.granules == 1], minlength=7) for m in ms)
    f = dict(zip("UAIZSNO", gran / np.maximum(region, 1), strict=True))
    assert f["U"] == 0 and f["O"] == 0  # none outside the cell, on artefacts or in lipid
    assert f["A"] < 0.015 and f["Z"] < 0.03
    assert 0.02 < f["I"] < 0.08 and 0.04 < f["S"] < 0.14 and 0.015 < f["N"] < 0.10
    assert min(f["I"], f["S"], f["N"]) > 2 * f["A"]


def test_granules_only_where_requested():
    zero = (0.0, 0.0)
    p = SyntheticParams(granule_fractions=(zero, zero, zero, (0.1, 0.1), zero), cluster_fraction=0)
    m = synthetic_micrograph((2048, 2048), seed=7, params=p)
    in_s = m.granules[m.locations == 4].sum() / m.granules.sum()
    assert in_s > 0.9  # the rest: discs centred in a space that reach over its edge
    assert 0.05 < m.true_pixel_fractions["S"] < 0.12
    assert m.drawn["target_fractions"]["S"] == 0.1


@pytest.mark.parametrize("seed", [2, 3])
def test_same_cell_at_another_pixel_size(seed):
    # Sizes are physical: the same seed at twice the pixel size over the same field of view
    # draws the same cell at half the resolution.
    fine = synthetic_micrograph((1024, 1024), 0.8, seed=seed)
    coarse = synthetic_micrograph((512, 512), 1.6, seed=seed)
    assert (fine.locations[::2, ::2] == coarse.locations).mean() > 0.99
    assert abs(fine.granules.sum() / 4 / coarse.granules.sum() - 1) < 0.1
    assert fine.drawn["sarcomere_um"] == coarse.drawn["sarcomere_um"]


def _runs(row: np.ndarray, code: int) -> np.ndarray:
    edges = np.diff(np.concatenate([[0], (row == code).astype(np.int8), [0]]))
    return np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)


@pytest.mark.parametrize(("angle", "ps"), [(0.0, 0.8), (90.0, 0.8), (0.0, 1.2)])
def test_band_widths_in_physical_units(angle, ps):
    p = SyntheticParams(angle_deg=angle, mitochondria_probability=0, lipid_per_um2=0,
                        periphery_probability=0, hole_probability=0, fold_probability=0)
    n = int(round(6400 / ps))  # 5.1 um along the fibre: at least one whole A band
    m = synthetic_micrograph((256, n) if angle == 0 else (n, 256), ps, seed=5, params=p)
    lines = m.locations if angle == 0 else m.locations.T
    a_runs = np.concatenate([_runs(r, 1) for r in lines[::32]]) * ps / 1000
    z_runs = np.concatenate([_runs(r, 3) for r in lines[::32]]) * ps
    assert abs(a_runs.max() - m.drawn["a_band_um"]) < 0.01  # um
    assert abs(np.median(z_runs) - m.drawn["z_width_nm"]) < 2 * ps  # nm
    assert 50 <= m.drawn["z_width_nm"] <= 100 and 1.55 <= m.drawn["a_band_um"] <= 1.65


def test_granule_pixels_are_dark():
    m = synthetic_micrograph((2048, 2048), seed=6)
    img = m.image.astype(float)
    for code in (1, 2, 4, 5):
        region = m.locations == code
        g, bg = img[region & (m.granules == 1)], img[region & (m.granules == 0)]
        if len(g) > 500:
            assert np.median(g) < np.percentile(bg, 10), code


def test_noise_and_contrast_parameters():
    quiet = synthetic_micrograph((512, 512), seed=2, params=SyntheticParams(noise_scale=0.5))
    noisy = synthetic_micrograph((512, 512), seed=2, params=SyntheticParams(noise_scale=3.0))
    np.testing.assert_array_equal(quiet.locations, noisy.locations)

    def roughness(img):
        x = img.astype(float)
        return np.std(x[1:, :] - x[:-1, :])

    assert roughness(noisy.image) > 2 * roughness(quiet.image)
    flat = synthetic_micrograph((512, 512), seed=2, params=SyntheticParams(contrast=0.2))
    assert np.ptp(np.percentile(flat.image, [1, 99])) < 0.3 * 65535
    assert flat.drawn["contrast"] == 0.2


def test_granule_diameters_scale_with_pixel_size():
    medians = {}
    for ps, n in ((0.8, 1024), (1.6, 512)):  # the same field of view
        d_px = np.concatenate([_isolated_diameters_px(synthetic_micrograph((n, n), ps, seed=s))
                               for s in (0, 1, 3)])
        assert len(d_px) > 50
        d_nm = d_px * ps
        # Whole granules are 15-40 nm; caps cut by the section faces can look as small as 10 nm.
        assert d_nm.min() > 10 - 2 * ps and d_nm.max() < 40 + 2 * ps
        assert np.median(d_nm) > 18
        medians[ps] = np.median(d_px)
    assert 1.8 < medians[0.8] / medians[1.6] < 2.2


def test_granules_darker_than_a_band(default_1024):
    for m in default_1024:
        img = m.image.astype(float)
        a_band = (m.locations == 1) & (m.granules == 0)
        i_band = (m.locations == 2) & (m.granules == 0)
        if m.granules.sum() and a_band.sum() > 1000 and i_band.sum() > 1000:
            assert img[m.granules == 1].mean() < img[a_band].mean()
            assert img[a_band].mean() < img[i_band].mean()


def test_full_size_micrograph_takes_seconds():
    t = time.perf_counter()
    m = synthetic_micrograph()  # 4096 x 4096 at 0.8 nm/px, uint16
    assert time.perf_counter() - t < 30  # ~2 s here; generous for slow CI machines
    assert m.image.shape == (4096, 4096) and m.image.dtype == np.uint16


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


@pytest.mark.parametrize("kwargs", [
    {"contrast": (0.9, 0.5)}, {"contrast": 1.5}, {"noise_scale": -1}, {"angle_deg": float("inf")},
    {"granule_fractions": ((0, 0.1),) * 4}, {"granule_fractions": ((0, 0.9),) * 5},
    {"mitochondria_probability": 2}, {"sarcomere_um": (1.0, 1.2)}, {"blur_nm": "wide"},
])
def test_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        SyntheticParams(**kwargs)
    with pytest.raises(TypeError, match="SyntheticParams"):
        synthetic_micrograph((32, 32), params={"noise_scale": 2})
