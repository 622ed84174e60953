"""Widgets follow the user (run under ``xvfb-run``): selecting a micrograph, or a layer made from
one, chooses it in Segment, Export, Review and Density; colour and stacked images are named with
the reason they cannot be segmented, and a colour image can be converted to grey."""

from __future__ import annotations

import numpy as np
import pytest

from napari_emgranules._widgets import _common, segment
from napari_emgranules._widgets._common import show_labels
from napari_emgranules._widgets.density import DensityWidget
from napari_emgranules._widgets.export import ExportWidget
from napari_emgranules._widgets.review import ReviewWidget
from napari_emgranules._widgets.segment import SegmentWidget
from napari_emgranules.core.schema import GRANULES_SCHEMA, LOCATIONS_SCHEMA


@pytest.fixture
def messages(monkeypatch):
    shown: list[tuple[str, str]] = []
    for module, levels in ((segment, ("info",)), (_common, ("info", "warning", "error"))):
        for level in levels:
            monkeypatch.setattr(module, f"show_{level}", lambda text, lv=level: shown.append((lv, text)))
    return shown


def _micrograph(viewer, name: str, seed: int):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 255, (256, 256), dtype=np.uint8)
    image = viewer.add_image(data, name=name, scale=(0.8, 0.8), units=("nm", "nm"),
                             metadata={"pixel_size_nm": 0.8, "pixel_size_source": "test"})
    info = {"pixel_size_nm": 0.8, "pixel_size_source": "test", "mode": "test", "model": None}
    loc = show_labels(viewer, image, "locations", np.ones(data.shape, np.uint8), LOCATIONS_SCHEMA, info)
    gra = show_labels(viewer, image, "granules", (data > 200).astype(np.uint8), GRANULES_SCHEMA, info)
    return image, loc, gra


def test_every_widget_follows_the_selected_micrograph(make_napari_viewer):
    viewer = make_napari_viewer()
    a, a_loc, a_gra = _micrograph(viewer, "first", 1)
    b, b_loc, b_gra = _micrograph(viewer, "second", 2)
    viewer.layers.selection.active = b  # the user works on the second micrograph
    seg, exp = SegmentWidget(viewer), ExportWidget(viewer)
    rev, den = ReviewWidget(viewer), DensityWidget(viewer)
    # opened while "second" is selected: every widget starts on it, not on the first in the list
    assert seg.image.value is b and exp._image.value is b
    assert rev.layer is b_loc
    assert den.locations_combo.value is b_loc and den.granules_combo.value is b_gra
    assert set(exp._label_layers.value) == {b_loc, b_gra}

    viewer.layers.selection.active = a_gra  # a result layer of the first micrograph
    assert seg.image.value is a and exp._image.value is a
    assert rev.layer is a_gra  # the result layer itself
    assert den.locations_combo.value is a_loc and den.granules_combo.value is a_gra

    viewer.layers.selection.active = b  # the micrograph: Review keeps the kind under review
    assert rev.layer is b_gra and seg.image.value is b
    strokes = rev.new_strokes_layer()  # selects the strokes layer: Review stays on its result layer
    assert viewer.layers.selection.active is strokes and rev.layer is b_gra


def test_colour_images_are_named_with_the_reason_and_can_be_made_grey(make_napari_viewer, messages):
    viewer = make_napari_viewer()
    rgb = np.zeros((256, 256, 3), np.uint8)
    rgb[..., 0], rgb[..., 1] = 200, 100
    colour = viewer.add_image(rgb, name="photo", rgb=True)
    viewer.add_image(np.zeros((3, 64, 64), np.uint8), name="stack")
    seg = SegmentWidget(viewer)
    assert seg.image.value is None
    assert "photo (colour (RGB)" in seg.unusable.value and "stack (3-D stack" in seg.unusable.value
    assert not seg.grey_button.native.isHidden()
    assert seg.run() is None  # says why instead of "no micrograph layer" alone
    assert messages[-1][0] == "error" and "photo is colour (RGB)" in messages[-1][1]

    viewer.layers.selection.active = colour
    grey = seg.convert_to_grey()
    assert grey.name == "photo grey" and grey.data.dtype == np.uint8 and grey.data.ndim == 2
    assert int(grey.data[0, 0]) == round(0.2125 * 200 + 0.7154 * 100)
    assert seg.image.value is grey and colour in viewer.layers  # the colour layer stays
    assert "grey copy" in messages[-1][1]
