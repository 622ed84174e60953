"""Stereology: granule pixel fraction on a section -> granule volume fraction in the tissue."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from napari_emgranules.core import stereology
from napari_emgranules.core.stereology import (
    DEFAULT_DIAMETERS,
    MAX_BASKET_VF,
    N_QUANTILES,
    Calibration,
    DiameterDistribution,
    OutOfCalibrationWarning,
    StereologyParams,
    analytical_pf,
    analytical_vf,
    basket_pf,
    calibrate_baskets,
    holmes_factor,
    numerical_density,
    render_basket,
    vf_from_pf,
    vf_to_concentration,
)

# Seeds of the test baskets: none of them is a calibration seed (0, 1, 2).
TEST_SEEDS = (101, 102)


@pytest.fixture(scope="module")
def cal() -> Calibration:
    return calibrate_baskets()


def constant(h_nm: float) -> DiameterDistribution:
    return DiameterDistribution.from_samples([h_nm])


# --------------------------------------------------------------------------------------------
# baskets: the simulation recovers what it was built with
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vf", [0.01, 0.05, 0.15])
def test_calibration_recovers_the_volume_fraction_of_new_baskets(cal, vf):
    # baskets the calibration never saw (other seeds, 1.6 um instead of 0.8 um): measure pf, invert,
    # get the slab's true vf back within 10 % (the per-basket scatter is ~3 % at vf = 0.01)
    for seed in TEST_SEEDS:
        image, true_vf = render_basket(vf, seed=seed, size_nm=1600.0)
        assert image.dtype == bool and image.shape == (2000, 2000)
        assert true_vf == pytest.approx(vf, rel=0.15)  # the slab's own fraction scatters around the nominal
        assert cal.vf(float(image.mean())) == pytest.approx(true_vf, rel=0.10)


def test_basket_spheres_do_not_overlap():
    rng = np.random.default_rng(5)
    box = np.array([300.0, 300.0, 115.0])
    radii = DEFAULT_DIAMETERS.sample(2000, rng) / 2
    keep = np.cumsum(4 / 3 * np.pi * radii**3) <= 0.25 * box.prod()
    radii = radii[keep]
    centres = stereology._place_spheres(radii, box, rng)
    delta = centres[:, None, :] - centres[None, :, :]
    delta -= box * np.round(delta / box)  # periodic box: nearest image
    dist = np.sqrt((delta**2).sum(-1)) + np.eye(radii.size) * 1e9
    assert np.all(dist >= radii[:, None] + radii[None, :])
    assert np.all((centres >= 0) & (centres < box))


def test_slab_geometry_by_hand():
    t, r = 70.0, np.array([10.0, 10.0, 10.0, 10.0])
    z = np.array([35.0, 0.0, -6.0, -10.5])  # inside; centre on the face; 4-nm cap; outside
    params = StereologyParams(section_nm=t, min_cap_nm=5.0)
    seen, profile = stereology._visible_discs(z, r, params)
    np.testing.assert_array_equal(seen, [True, True, False, False])
    np.testing.assert_allclose(profile[:3], [10.0, 10.0, 8.0])
    sphere = 4 / 3 * np.pi * 1000
    cap4 = np.pi * 16 * (30 - 4) / 3  # pi c^2 (3R - c) / 3
    assert stereology._slab_volume(z, r, t) == pytest.approx(sphere + sphere / 2 + cap4)


def test_basket_refuses_bad_input():
    for vf in (-0.01, MAX_BASKET_VF + 0.01, math.nan, True):
        with pytest.raises(ValueError, match="vf"):
            basket_pf(vf)
    with pytest.raises(ValueError, match="size_nm"):
        basket_pf(0.01, size_nm=100.0)


def test_jammed_packing_says_so(monkeypatch):
    monkeypatch.setattr(stereology, "_RSA_MAX_TRIES", 1)
    with pytest.raises(RuntimeError, match="too high to pack"):
        render_basket(0.3, size_nm=300.0)


# --------------------------------------------------------------------------------------------
# baskets against classical stereology
# --------------------------------------------------------------------------------------------


def test_baskets_and_analytical_agree_at_low_fractions(cal):
    for vf in (0.005, 0.01, 0.02):
        assert cal.pf(vf) == pytest.approx(analytical_pf(vf), rel=0.10)
        pf = analytical_pf(vf)
        assert cal.vf(pf) == pytest.approx(analytical_vf(pf), rel=0.10)


def test_projection_overlap_makes_pf_grow_slower_than_linearly(cal):
    # at vf = 0.2 the analytical pf would be ~1: the profiles overlap, the basket pf is much lower ...
    assert cal.pf(0.2) < 0.8 * analytical_pf(0.2)
    assert cal.pf(0.2) < 0.8 * 10 * cal.pf(0.02)
    # ... so the analytical route underestimates vf for a dense region
    assert analytical_vf(cal.pf(0.2)) < 0.8 * 0.2
    # along the calibration pf keeps rising while pf / vf falls from ~4.7 to ~2.9
    pf, vf = np.array(cal.pf_points), np.array(cal.vf_points)
    assert np.all(np.diff(pf) > 0) and np.all(np.diff(vf) > 0)
    assert (pf / vf)[-1] < 0.7 * (pf / vf)[0]


# --------------------------------------------------------------------------------------------
# physics: Holmes effect, section thickness, minimum cap, pixel size
# --------------------------------------------------------------------------------------------


def test_holmes_effect_pf_exceeds_vf(cal):
    for vf in (0.005, 0.02, 0.1):
        assert cal.pf(vf) > 2 * vf
    # 25-nm granules, 70-nm section, 5-nm caps: k = (t h^2 / 4 + h^3 / 6 - c^2 h + 2 c^3 / 3) / (h^3 / 6)
    k = (70 * 625 / 4 + 15625 / 6 - 25 * 25 + 2 * 125 / 3) / (15625 / 6)
    assert holmes_factor(constant(25.0)) == pytest.approx(k)
    assert k == pytest.approx(4.992, abs=1e-3)


def test_thicker_sections_show_more_granule_area():
    vf, thin, thick = 0.02, StereologyParams(section_nm=40.0), StereologyParams(section_nm=100.0)
    for seed in TEST_SEEDS:
        assert basket_pf(vf, params=thick, seed=seed) > 1.5 * basket_pf(vf, params=thin, seed=seed)
    factors = [holmes_factor(params=StereologyParams(section_nm=t)) for t in (40.0, 70.0, 100.0)]
    assert factors == sorted(factors)


def test_thin_section_without_cap_loss_shows_the_volume_fraction():
    # Delesse: a plane section shows the volume fraction itself
    plane = StereologyParams(section_nm=1e-3, min_cap_nm=0.0)
    assert holmes_factor(params=plane) == pytest.approx(1.0, abs=1e-3)
    thin = StereologyParams(section_nm=0.5, min_cap_nm=0.0)
    image, true_vf = render_basket(0.1, params=thin, seed=TEST_SEEDS[0])
    assert holmes_factor(params=thin) < 1.05
    assert image.mean() / true_vf == pytest.approx(holmes_factor(params=thin), rel=0.05)


def test_larger_minimum_cap_hides_granule_area():
    caps = (0.0, 5.0, 10.0)
    seen = [basket_pf(0.02, params=StereologyParams(min_cap_nm=c), seed=TEST_SEEDS[0]) for c in caps]
    assert seen[0] > seen[1] > seen[2]
    factors = [holmes_factor(params=StereologyParams(min_cap_nm=c)) for c in caps]
    assert factors[0] > factors[1] > factors[2]


def test_calibration_is_in_physical_units_not_pixels(cal):
    coarse = calibrate_baskets(params=StereologyParams(pixel_size_nm=1.6))
    np.testing.assert_allclose(coarse.vf_points, cal.vf_points, rtol=1e-12)  # same baskets
    np.testing.assert_allclose(coarse.pf_points, cal.pf_points, rtol=0.02)
    pf = np.array([0.02, 0.1, 0.3, 0.6])
    np.testing.assert_allclose(coarse.vf(pf), cal.vf(pf), rtol=0.03)


@pytest.mark.parametrize("h_nm", [8.0, 25.0, 90.0])  # below 2c, typical, thicker than the section
def test_analytical_profile_area_matches_the_basket_projection_rule(h_nm):
    # integrate the projected disc area of the basket rule over all centre heights
    params = StereologyParams(section_nm=70.0, min_cap_nm=5.0)
    r = h_nm / 2
    z = np.linspace(-r, 70.0 + r, 400_001)
    seen, profile = stereology._visible_discs(z, np.full(z.size, r), params)
    area = np.pi * np.sum(np.where(seen, profile**2, 0.0)) * (z[1] - z[0])
    expected = holmes_factor(constant(h_nm), params) * np.pi * h_nm**3 / 6
    assert area == pytest.approx(expected, rel=1e-3)
    counted = np.sum(seen) * (z[1] - z[0])
    na, nv = numerical_density(0.1, constant(h_nm), params)
    assert na / nv * 1e3 == pytest.approx(counted, rel=1e-3)  # Na / Nv = L(h), nm


def test_numerical_density_by_hand():
    pf, h = 0.1, 25.0
    na, nv = numerical_density(pf, constant(h))
    nv_nm3 = pf / (np.pi * (70 * h**2 / 4 + h**3 / 6 - 25 * h + 2 * 125 / 3))
    assert nv == pytest.approx(nv_nm3 * 1e9)
    assert na == pytest.approx(nv_nm3 * (70 + h - 10) * 1e6)
    assert nv * np.pi * h**3 / 6 / 1e9 == pytest.approx(analytical_vf(pf, constant(h)))
    # the full-diameter textbook shortcut Na = Aa / (pi h^2 / 4) is within 3 % with 5-nm caps
    assert na == pytest.approx(pf / (np.pi * h**2 / 4) * 1e6, rel=0.03)


def test_moment_form_holds_for_a_distribution():
    d = DiameterDistribution.normal(25.0, 5.0)
    m1, m2, m3 = d.moments()
    k = (70 * m2 / 4 + m3 / 6 - 25 * m1 + 2 * 125 / 3) / (m3 / 6)
    assert holmes_factor(d) == pytest.approx(k)
    # a spread of sizes differs from a constant 25-nm population: E[h^2] / E[h^3] is smaller
    assert holmes_factor(d) < holmes_factor(constant(25.0))


# --------------------------------------------------------------------------------------------
# Calibration behaviour
# --------------------------------------------------------------------------------------------


def test_calibration_values_shapes_and_nan(cal):
    assert cal.vf(0.0) == 0.0 and cal.pf(0.0) == 0.0
    assert isinstance(cal.vf(0.1), float)
    assert math.isnan(cal.vf(math.nan))
    pf = np.array([[0.0, 0.05], [np.nan, 0.3]])
    vf = cal.vf(pf)
    assert vf.shape == pf.shape and np.isnan(vf[1, 0]) and np.all(np.isfinite(vf[[0, 0, 1], [0, 1, 1]]))
    grid = np.linspace(0.0, cal.pf_max, 30)
    np.testing.assert_allclose(cal.pf(cal.vf(grid)), grid, atol=1e-12)  # exact inverses


def test_calibration_refuses_to_extrapolate(cal):
    with pytest.warns(OutOfCalibrationWarning, match="larger vf_max.*check the segmentation"):
        out = cal.vf(np.array([0.1, min(1.0, cal.pf_max + 0.05), 1.0]))
    assert np.isfinite(out[0]) and np.isnan(out[1:]).all()
    with pytest.warns(OutOfCalibrationWarning):
        assert math.isnan(cal.pf(cal.vf_max + 0.01))
    for bad in (-0.1, 1.5, math.inf):
        with pytest.raises(ValueError, match=r"fraction in \[0, 1\]"):
            cal.vf(bad)


def test_calibration_is_cached(cal):
    start = time.perf_counter()
    again = calibrate_baskets(seeds=[0, 1, 2])
    assert again is cal
    assert time.perf_counter() - start < 0.1
    assert vf_from_pf(0.1) == cal.vf(0.1)


def test_vf_simulates_only_the_baskets_its_largest_pf_needs_and_equals_the_whole_grid():
    narrow = DiameterDistribution.normal(31.0, 4.0)  # a distribution no other test calibrates
    stereology._basket_node.cache_clear()
    low = np.array([0.0, 0.02, 0.15, np.nan])
    vf_low = vf_from_pf(low, diameters=narrow)
    simulated = stereology._basket_node.cache_info().currsize
    assert 1 <= simulated < 6  # the dense, slow top of the grid was not packed
    whole = calibrate_baskets(narrow)
    assert stereology._basket_node.cache_info().currsize == len(whole.vf_points)
    assert np.array_equal(vf_low, whole.vf(low), equal_nan=True)
    high = np.array([0.3, whole.pf_max * 0.99, 0.5])
    assert np.array_equal(vf_from_pf(high, diameters=narrow), whole.vf(high))
    with pytest.warns(OutOfCalibrationWarning):
        assert math.isnan(vf_from_pf(min(1.0, whole.pf_max + 0.05), diameters=narrow))


def test_calibration_and_its_arguments_are_checked(cal):
    with pytest.raises(ValueError, match="increase strictly"):
        Calibration((0.01, 0.005), (0.05, 0.1), (0.0, 0.0), cal.params, cal.diameters)
    with pytest.raises(ValueError, match="n_points"):
        calibrate_baskets(n_points=1)
    with pytest.raises(ValueError, match="seeds"):
        calibrate_baskets(seeds=())
    with pytest.raises(ValueError, match="vf"):
        calibrate_baskets(vf_max=0.5)


def test_vf_from_pf_routes():
    assert vf_from_pf(0.1, method="analytical") == pytest.approx(0.1 / holmes_factor())
    params = StereologyParams(section_nm=90.0)
    assert vf_from_pf(0.1, method="analytical", params=params) == analytical_vf(0.1, params=params)
    with pytest.raises(ValueError, match="method"):
        vf_from_pf(0.1, method="guess")


# --------------------------------------------------------------------------------------------
# diameters, parameters, concentration
# --------------------------------------------------------------------------------------------


def test_constant_samples_equal_a_zero_width_normal():
    samples = DiameterDistribution.from_samples(np.full(40, 25.0))
    assert samples == DiameterDistribution.normal(25.0, 0.0)
    assert samples.moments() == pytest.approx((25.0, 625.0, 15625.0))
    assert hash(samples) == hash(DiameterDistribution.normal(25.0, 0.0))
    assert np.all(samples.sample(10, 0) == 25.0)


def test_truncated_normal_and_empirical_distributions():
    d = DiameterDistribution.normal(25.0, 5.0, 10.0, 45.0)
    assert len(d.quantiles_nm) == N_QUANTILES
    assert d.mean_nm == pytest.approx(25.0, abs=0.05) and d.sd_nm == pytest.approx(5.0, rel=0.03)
    draws = d.sample(20_000, np.random.default_rng(0))
    assert draws.min() >= 10.0 and draws.max() <= 45.0 and draws.mean() == pytest.approx(25.0, abs=0.2)
    measured = np.random.default_rng(1).gamma(16.0, 25.0 / 16.0, 5000)  # right-skewed diameters
    emp = DiameterDistribution.from_samples(measured)
    for got, want in zip(emp.moments(), [np.mean(measured**k) for k in (1, 2, 3)], strict=True):
        assert got == pytest.approx(want, rel=0.01)


@pytest.mark.parametrize("bad", [[], [25.0, math.nan], [25.0, -3.0], [0.0], [math.inf], "abc"])
def test_bad_diameter_samples_are_refused(bad):
    with pytest.raises(ValueError, match="diameters_nm"):
        DiameterDistribution.from_samples(bad)


def test_bad_normal_parameters_are_refused():
    with pytest.raises(ValueError, match="sd_nm >= 0"):
        DiameterDistribution.normal(25.0, -1.0)
    with pytest.raises(ValueError, match="low_nm <= mean_nm <= high_nm"):
        DiameterDistribution.normal(50.0, 5.0, 10.0, 45.0)
    with pytest.raises(ValueError, match="mean_nm"):
        DiameterDistribution.normal(math.nan)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"section_nm": 0.0}, "section_nm"),
    ({"section_nm": -70.0}, "section_nm"),
    ({"section_nm": math.nan}, "section_nm"),
    ({"pixel_size_nm": 0.0}, "pixel_size_nm"),
    ({"pixel_size_nm": math.inf}, "pixel_size_nm"),
    ({"min_cap_nm": -1.0}, "min_cap_nm"),
    ({"min_cap_nm": 70.0}, "min_cap_nm"),
    ({"min_cap_nm": True}, "min_cap_nm"),
    ({"section_nm": "70"}, "section_nm"),
])
def test_bad_parameters_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StereologyParams(**kwargs)


def test_parameters_are_hashable_floats():
    params = StereologyParams(section_nm=70, min_cap_nm=0, pixel_size_nm=1)
    same = StereologyParams(70.0, 0.0, 1.0)
    assert params == same and hash(params) == hash(same)
    assert isinstance(params.section_nm, float)


def test_vf_to_concentration():
    assert vf_to_concentration(0.02, 100.0) == pytest.approx(2.0)
    out = vf_to_concentration(np.array([0.01, np.nan]), 50.0)
    assert out[0] == pytest.approx(0.5) and np.isnan(out[1])
    assert math.isnan(vf_to_concentration(math.nan, 50.0))
    for bad in (-1.0, 0.0, math.nan, math.inf, "10", None):
        with pytest.raises(ValueError, match="factor"):
            vf_to_concentration(0.02, bad)
