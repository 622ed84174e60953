"""One-click corrections: a missed granule is fitted from a click, false ones go by click or box,
a mislabelled region is refilled in one click (bounded by the model's classes and by its look)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_emgranules.core.corrections import granule_at, granules_at, granules_in_box, region_at
from napari_emgranules.core.synthetic import family_params, synthetic_micrograph

PX = 0.8


def particles(shape=(200, 200), spots=((50, 50, 25.0), (120, 80, 35.0), (150, 150, 18.0)), seed=0):
    rng = np.random.default_rng(seed)
    img = np.full(shape, 180.0) + rng.normal(0, 8, shape)
    truth = np.zeros(shape, np.uint8)
    yy, xx = np.indices(shape)
    for cy, cx, d in spots:
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= (d / PX / 2) ** 2
        img[inside], truth[inside] = 60, 1
    return np.clip(img, 0, 255).astype(np.uint8), truth


def test_a_click_near_a_dark_particle_fits_its_disc():
    img, _ = particles()
    for cy, cx, d in ((50, 50, 25.0), (120, 80, 35.0), (150, 150, 18.0)):
        mask, centre, diameter = granule_at(img, (cy + 3, cx - 2), PX)  # a click off centre
        assert diameter == pytest.approx(d, abs=2.0)
        assert abs(centre[0] - cy) <= 1 and abs(centre[1] - cx) <= 1
        assert mask.sum() == pytest.approx(np.pi * (d / PX / 2) ** 2, rel=0.1)


def test_a_click_on_background_or_outside_is_refused():
    img, _ = particles()
    for point in ((10, 190), (100, 20), (185, 30)):
        with pytest.raises(ValueError, match="no dark particle"):
            granule_at(img, point, PX)
    with pytest.raises(ValueError, match="outside the 200 x 200 px image"):
        granule_at(img, (250, 10), PX)
    with pytest.raises(ValueError, match="pixel size"):
        granule_at(img, (50, 50), 0)


@pytest.mark.parametrize("family", ["standard", "heldout-grainy"])
def test_clicks_on_generated_granules_fit_them(family):
    m = synthetic_micrograph((512, 512), PX, seed=310_000, params=family_params(family))
    comp, n = ndi.label(m.granules == 1)
    centres = ndi.center_of_mass(np.ones(comp.shape), comp, range(1, n + 1))
    ious = []
    for i, (cy, cx) in enumerate(centres, start=1):
        try:
            mask, _, _ = granule_at(m.image, (cy + 1, cx - 1), PX)
        except ValueError:
            ious.append(0.0)
            continue
        t = comp == i
        ious.append((mask & t).sum() / (mask | t).sum())
    assert n >= 10 and np.mean(np.asarray(ious) >= 0.5) >= 0.8, ious


def test_false_granules_go_by_click_or_box():
    _, truth = particles()
    components, _ = ndi.label(truth)
    one = granules_at(truth, (52, 48))
    assert np.array_equal(one, components == components[50, 50])
    assert not granules_at(truth, (5, 5)).any()  # nothing there
    box = granules_in_box(truth, (100, 60), (199, 199))  # the two lower particles' centres
    assert box.sum() == truth[80:].sum() and not box[:80].any()
    assert not granules_in_box(np.zeros_like(truth), (0, 0), (10, 10)).any()


def test_a_granule_with_a_diagonal_pixel_goes_whole():
    """A granule is one 8-connected object (as measured): a pixel touching it only at a corner
    goes with it, by click and by box."""
    labels = np.zeros((64, 64), np.uint8)
    labels[20:26, 20:26] = 1
    labels[26, 26] = 1  # touches the square at a corner only
    assert granules_at(labels, (22, 22)).sum() == 37
    assert granules_in_box(labels, (10, 10), (40, 40)).sum() == 37
    assert granules_at(labels, (26, 26)).sum() == 37


def test_a_region_is_refilled_as_far_as_it_looks_like_the_click():
    rng = np.random.default_rng(0)
    labels = np.full((120, 120), 4, np.uint8)  # the model said "space" everywhere
    labels[:, :10] = 1
    image = np.full(labels.shape, 200.0)
    yy, xx = np.indices(labels.shape)
    mito = (yy - 60) ** 2 / 30 ** 2 + (xx - 60) ** 2 / 20 ** 2 <= 1  # a darker mitochondrion in it
    image[mito] = 110
    image += rng.normal(0, 3, image.shape)
    plain = region_at(labels, (60, 60))
    assert plain.sum() == (labels == 4).sum()  # the model's whole connected area
    looks = region_at(labels, (60, 60), image)
    iou = (looks & mito).sum() / (looks | mito).sum()
    assert iou > 0.9, iou
    corner = region_at(labels, (119, 119), image)  # a click at the edge of the image
    assert corner[119, 119] and corner[mito].mean() < 0.01  # the space, without the mitochondrion
    with pytest.raises(ValueError, match="differ in size"):
        region_at(labels, (60, 60), image[:50])
