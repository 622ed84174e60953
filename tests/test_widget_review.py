"""The Review and correct dock widget in a real viewer (run under ``xvfb-run``)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_emgranules._widgets import review
from napari_emgranules._widgets._common import session_for, show_confidence, show_labels, tile_slices
from napari_emgranules._widgets.review import ReviewWidget
from napari_emgranules.core.schema import GRANULES_SCHEMA, LOCATIONS_SCHEMA
from napari_emgranules.core.synthetic import synthetic_micrograph

TILE = 128  # a 512 px image has 16 tiles, numbered row by row
LOW, MIDDLE = 6, 9  # tiles with low and middling confidence


@pytest.fixture
def messages(monkeypatch):
    """Notifications the widget shows, as (level, text)."""
    shown: list[tuple[str, str]] = []
    for level in ("info", "warning"):
        monkeypatch.setattr(review, f"show_{level}", lambda text, lv=level: shown.append((lv, text)))
    return shown


@pytest.fixture
def scene(make_napari_viewer):
    s = synthetic_micrograph((512, 512), 0.8, seed=3)
    viewer = make_napari_viewer()
    image = viewer.add_image(s.image, name="cell", scale=(0.8, 0.8), translate=(10.0, -5.0),
                             metadata={"pixel_size_nm": 0.8})
    info = {"pixel_size_nm": 0.8, "pixel_size_source": "metadata", "mode": "test", "model": None}
    locations = show_labels(viewer, image, "locations", s.locations, LOCATIONS_SCHEMA, info)
    granules = show_labels(viewer, image, "granules", s.granules, GRANULES_SCHEMA, info)
    confidence = np.full((512, 512), 0.95, np.float32)
    confidence[tile_slices((512, 512), TILE, LOW)] = 0.3
    confidence[tile_slices((512, 512), TILE, MIDDLE)] = 0.6
    show_confidence(viewer, image, "granules", confidence)
    session_for(viewer).set_tile_size(TILE)
    widget = ReviewWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Review")
    widget._layer_box.value = granules
    return viewer, widget, locations, granules


def _paint_square(layer, tile: int, value: int, side: int = 6) -> None:
    rows, cols = tile_slices(layer.data.shape, TILE, tile)
    y, x = np.mgrid[rows.start + 20:rows.start + 20 + side, cols.start + 30:cols.start + 30 + side]
    layer.data_setitem((y.ravel(), x.ravel()), value)


def test_painting_lists_changed_tiles(scene, qtbot):
    viewer, widget, _, granules = scene
    assert widget.changed_tiles() == []
    assert "No tiles changed" in widget.changed_text
    _paint_square(granules, 5, 1)
    # the events of the layer refresh the list (debounced)
    qtbot.waitUntil(lambda: widget.changed_text.startswith("1 tile changed: 5"), timeout=3000)
    # napari's brush (data coordinates) in tile 10 = row 2, column 2
    granules.brush_size = 5
    granules.paint((2 * TILE + 40, 2 * TILE + 40), 1)
    qtbot.waitUntil(lambda: widget.changed_text == "2 tiles changed: 5, 10", timeout=3000)
    assert widget.changed_tiles() == [5, 10]
    # jumping through the changed tiles (wrapping round)
    assert widget.next_changed() == 5
    assert widget.next_changed() == 10
    assert widget.next_changed() == 5
    assert widget.previous_changed() == 10
    assert widget.current_tile == 10
    # undo of the brush stroke takes tile 10 off the list
    granules.undo()
    qtbot.waitUntil(lambda: widget.changed_text == "1 tile changed: 5", timeout=3000)


def test_least_sure_tiles_and_jumping(scene):
    viewer, widget, _, granules = scene
    ranking = widget.uncertain_tiles()
    assert [k for k, _ in ranking[:2]] == [LOW, MIDDLE]
    assert ranking[0][1] == pytest.approx(0.3)
    assert widget.uncertain_text.splitlines()[1].strip() == f"tile {LOW}: 0.300"
    assert widget._next_uncertain.enabled

    assert widget.next_uncertain() == LOW
    assert widget.current_tile == LOW
    rows, cols = tile_slices((512, 512), TILE, LOW)  # tile 6: rows 128-255, columns 256-383
    expected = ((rows.start + rows.stop - 1) / 2 * 0.8 + 10.0, (cols.start + cols.stop - 1) / 2 * 0.8 - 5.0)
    np.testing.assert_allclose(viewer.camera.center[-2:], expected)
    # the tile fills most of the canvas
    assert viewer.camera.zoom * TILE * 0.8 == pytest.approx(0.9 * min(viewer.canvas.size))
    assert viewer.layers.selection.active is granules

    assert widget.next_uncertain() == MIDDLE
    assert widget.previous_uncertain() == LOW
    # changing the shared tile size re-ranks on the new grid
    session_for(viewer).set_tile_size(256)
    assert widget._tile_size.value == 256
    assert widget.uncertain_tiles()[0][0] == 1  # tile 6 of 128 px lies in tile 1 of 256 px


def test_without_confidence_map_the_buttons_are_off(scene, messages):
    _, widget, locations, _ = scene
    widget._layer_box.value = locations
    assert widget.uncertain_tiles() is None
    assert "run Segment with 'confidence' on" in widget.uncertain_text
    assert not widget._next_uncertain.enabled and not widget._prev_uncertain.enabled
    assert widget.next_uncertain() is None
    assert messages and "confidence" in messages[-1][1]


def test_reset_tile_restores_the_model_output_and_undo_brings_the_paint_back(scene):
    _, widget, locations, _ = scene
    widget._layer_box.value = locations
    base = locations.metadata["emgranules"]["model_output"]
    _paint_square(locations, 3, 6, side=10)
    _paint_square(locations, 12, 6, side=10)
    painted = np.array(locations.data)
    assert widget.changed_tiles() == [3, 12]

    assert widget.go_to_tile(3)
    assert widget.reset_tile()  # the current tile
    np.testing.assert_array_equal(locations.data, np.where(
        np.arange(16).reshape(4, 4).repeat(TILE, 0).repeat(TILE, 1) == 12, painted, base))
    assert widget.changed_text == "1 tile changed: 12"

    locations.undo()
    np.testing.assert_array_equal(locations.data, painted)
    locations.redo()
    assert widget.changed_tiles() == [12]

    assert widget.reset_layer()
    np.testing.assert_array_equal(locations.data, base)
    locations.undo()
    assert widget.changed_tiles() == [12]


def test_fill_tile_sets_every_pixel_and_is_undoable(scene):
    _, widget, locations, _ = scene
    widget._layer_box.value = locations
    before = np.array(locations.data)
    rows, cols = tile_slices((512, 512), TILE, 2)
    assert widget.fill_tile(code=3, tile=2)
    assert (locations.data[rows, cols] == 3).all()
    outside = np.ones((512, 512), bool)
    outside[rows, cols] = False
    np.testing.assert_array_equal(locations.data[outside], before[outside])
    assert widget.changed_tiles() == [2]
    locations.undo()
    np.testing.assert_array_equal(locations.data, before)

    # replace one class by another, through the widget's own fields
    tile = 5
    rows, cols = tile_slices((512, 512), TILE, tile)
    present = np.unique(before[rows, cols])
    source_class = int(present[0])
    widget._tile.value = tile
    widget._fill_class.value = 6
    widget._fill_only.value = source_class
    assert widget.fill_tile()
    expected = before.copy()
    window = expected[rows, cols]
    window[window == source_class] = 6
    np.testing.assert_array_equal(locations.data, expected)


def test_bad_input_tells_the_user_and_changes_nothing(scene, messages, make_napari_viewer):
    viewer, widget, locations, granules = scene
    widget._layer_box.value = granules
    before = np.array(granules.data)

    assert not widget.reset_tile(tile=16)
    assert "no tile 16" in messages[-1][1] and "0..15" in messages[-1][1]
    assert not widget.fill_tile(code=1, tile=-1)
    assert not widget.fill_tile(code=7, tile=0)  # granules have classes 0..1
    assert "classes (0..1)" in messages[-1][1]
    assert not widget.go_to_tile(99)
    np.testing.assert_array_equal(granules.data, before)

    # a result layer without the model's output (e.g. metadata lost)
    granules.metadata = {**granules.metadata,
                         "emgranules": {k: v for k, v in granules.metadata["emgranules"].items()
                                        if k != "model_output"}}
    widget.refresh()
    assert "No model output" in widget.changed_text
    assert not widget.reset_tile(tile=0)
    assert "no model output" in messages[-1][1]
    assert widget.next_changed() is None

    # no result layer at all
    viewer.layers.remove(granules)
    viewer.layers.remove(locations)
    assert widget.layer is None
    assert "No result layer" in widget.changed_text
    n = len(messages)
    assert not widget.reset_tile(tile=0)
    assert not widget.fill_tile(code=1, tile=0)
    assert widget.next_uncertain() is None
    assert len(messages) == n + 3 and all("no result layer" in text for _, text in messages[n:])
    assert not widget._reset_tile_button.enabled
