"""Partial labels in a real viewer: Review's reviewed marks and strokes layers, and Export's three
kinds of truth (whole tiles, changes + reviewed areas, strokes) with UNLABELLED where nobody looked.
Run under ``xvfb-run``."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from napari_emgranules._layers import strokes_to_codes
from napari_emgranules._widgets import _common, export, review
from napari_emgranules._widgets._common import session_for, show_labels, tile_slices
from napari_emgranules._widgets.export import ExportWidget
from napari_emgranules._widgets.review import ReviewWidget
from napari_emgranules.core.io import read_labels
from napari_emgranules.core.schema import GRANULES_SCHEMA, LOCATIONS_SCHEMA, UNLABELLED
from napari_emgranules.core.synthetic import synthetic_micrograph

TILE = 128  # a 512 px image has 16 tiles, numbered row by row
SHAPE = (512, 512)


# -------------------------------------------------------------------------------------------------
# the strokes conversion (no viewer)
# -------------------------------------------------------------------------------------------------
def test_strokes_to_codes_shifts_classes_and_leaves_the_rest_unlabelled():
    strokes = np.array([[0, 1, 2], [7, 0, 1]], np.uint8)
    codes = strokes_to_codes(strokes)
    assert codes.dtype == np.uint16
    np.testing.assert_array_equal(codes, [[UNLABELLED, 0, 1], [6, UNLABELLED, 0]])
    assert (strokes_to_codes(np.zeros((3, 4), np.uint16)) == UNLABELLED).all()
    for bad in (np.array([[-1, 2]]), np.array([[0.5, 1.0]]), np.array([[UNLABELLED + 1]])):
        with pytest.raises(ValueError, match="strokes"):
            strokes_to_codes(bad)


# -------------------------------------------------------------------------------------------------
# in a viewer
# -------------------------------------------------------------------------------------------------
@pytest.fixture
def messages(monkeypatch):
    """Notifications shown by the widgets, as (level, text)."""
    shown: list[tuple[str, str]] = []
    for module, levels in ((export, ("info", "warning")), (review, ("info", "warning")),
                           (_common, ("info", "warning", "error"))):
        for level in levels:
            monkeypatch.setattr(module, f"show_{level}", lambda text, lv=level: shown.append((lv, text)))
    return shown


@pytest.fixture
def scene(make_napari_viewer):
    s = synthetic_micrograph(SHAPE, 0.8, seed=3)
    viewer = make_napari_viewer()
    image = viewer.add_image(s.image, name="cell", scale=(0.8, 0.8),
                             metadata={"pixel_size_nm": 0.8, "pixel_size_source": "metadata:test"})
    info = {"pixel_size_nm": 0.8, "pixel_size_source": "metadata:test", "mode": "test", "model": None}
    show_labels(viewer, image, "locations", s.locations, LOCATIONS_SCHEMA, info)
    granules = show_labels(viewer, image, "granules", s.granules, GRANULES_SCHEMA, info)
    session_for(viewer).set_tile_size(TILE)
    reviewer = ReviewWidget(viewer)
    exporter = ExportWidget(viewer)
    viewer.window.add_dock_widget(reviewer, name="Review")
    viewer.window.add_dock_widget(exporter, name="Export")
    reviewer._layer_box.value = granules
    return viewer, reviewer, exporter, granules


def _square(tile: int, at: int = 10, side: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = tile_slices(SHAPE, TILE, tile)
    y, x = np.mgrid[rows.start + at:rows.start + at + side, cols.start + at:cols.start + at + side]
    return y.ravel(), x.ravel()


def _export(exporter, qtbot, folder, truth: str, layers) -> list[dict[str, str]]:
    exporter._truth.value = truth
    exporter._label_layers.value = list(layers)
    exporter._folder.value = folder
    assert exporter.export() is not None
    qtbot.waitUntil(lambda: not exporter.busy, timeout=20000)
    with open(folder / "granules" / "manifest.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_mark_reviewed_is_undoable_and_never_touches_the_result(scene, messages):
    viewer, reviewer, _, granules = scene
    before = np.array(granules.data)
    assert reviewer.reviewed_layer is None and reviewer.reviewed_text == ""
    assert reviewer.mark_reviewed(tile=5)
    marks = reviewer.reviewed_layer
    assert marks is not None and marks.name == "cell granules reviewed"
    np.testing.assert_allclose(marks.scale, granules.scale)
    expected = np.zeros(SHAPE, bool)
    expected[tile_slices(SHAPE, TILE, 5)] = True
    np.testing.assert_array_equal(marks.data > 0, expected)
    assert "whole tiles: 5" in reviewer.reviewed_text
    assert viewer.layers.selection.active is granules  # the user goes on correcting
    np.testing.assert_array_equal(granules.data, before)
    # the result layer stays the only choice to review; the tile shows as reviewed
    assert [layer for _, layer in reviewer._layer_choices()] == [viewer.layers["cell locations"], granules]
    reviewer._tile.value = 5
    assert "reviewed" in reviewer._tile_text()

    # the visible area: go to tile 10, mark what the view shows (the tile and some around it)
    assert reviewer.go_to_tile(10)
    assert reviewer.mark_visible_reviewed()
    rows, cols = tile_slices(SHAPE, TILE, 10)
    assert (marks.data[rows, cols] > 0).all()
    window = reviewer.visible_window(granules)
    assert window[0].start <= rows.start and window[0].stop >= rows.stop
    assert window[1].start <= cols.start and window[1].stop >= cols.stop
    assert max(w.stop - w.start for w in window) < 2 * TILE  # the tile and a margin, not everything
    union = expected.copy()
    union[window] = True
    np.testing.assert_array_equal(marks.data > 0, union)

    # undo on the marks layer takes the last mark back
    marks.undo()
    np.testing.assert_array_equal(marks.data > 0, expected)
    assert reviewer.mark_reviewed(tile=5)  # already marked: nothing changes
    assert "already marked reviewed" in messages[-1][1]
    np.testing.assert_array_equal(granules.data, before)


def test_strokes_layer_paints_class_zero_and_is_never_replaced(scene, messages):
    viewer, reviewer, _, granules = scene
    strokes = reviewer.new_strokes_layer()
    assert strokes.name == "cell granules strokes"
    assert strokes.data.shape == SHAPE and not strokes.data.any()
    np.testing.assert_allclose(strokes.scale, granules.scale)
    assert viewer.layers.selection.active is strokes and strokes.mode == "paint"
    # value = class code + 1, each in its class colour; 0 = not painted (transparent)
    colours = np.asarray(strokes.colormap.map(np.array([0, 1, 2])))
    assert colours[0][3] == 0
    np.testing.assert_allclose(colours[1][:3], [0, 0, 0])  # background (#000000), paintable
    np.testing.assert_allclose(colours[2][:3], np.array([0xff, 0xe1, 0x19]) / 255, atol=1e-3)
    names = dict(zip(strokes.features["index"], strokes.features["class"], strict=True))
    assert names == {0: "not painted", 1: "background", 2: "granule"}
    # the strokes layer is not a result layer (Review and Export's result choices ignore it)
    assert strokes not in [layer for _, layer in reviewer._layer_choices()]

    strokes.data_setitem(_square(3), 1)
    painted = np.array(strokes.data)
    reviewer._layer_box.value = granules
    again = reviewer.new_strokes_layer()
    assert again is strokes and "already exists" in messages[-1][1]
    np.testing.assert_array_equal(strokes.data, painted)
    strokes.undo()
    assert not strokes.data.any()


def test_export_each_kind_of_truth(scene, qtbot, tmp_path, messages):
    viewer, reviewer, exporter, granules = scene
    base = np.array(granules.metadata["emgranules"]["model_output"])
    changed = _square(1)
    granules.data_setitem(changed, 1)  # a correction in tile 1
    assert reviewer.mark_reviewed(tile=6)  # tile 6 accepted as it is
    strokes = reviewer.new_strokes_layer()
    strokes.data_setitem(_square(3, at=20), 1)  # background strokes (class 0)
    strokes.data_setitem(_square(3, at=60, side=4), 2)  # granule strokes (class 1)

    # (a) whole tiles: the changed tile and the reviewed one, every pixel
    exporter._truth.value = "full"
    exporter._label_layers.value = [granules]
    assert "2 tiles (1, 6; whole tiles)" in exporter.plan
    rows = _export(exporter, qtbot, tmp_path / "a", "full", [granules])
    assert [r["name"] for r in rows] == ["cell_1.png", "cell_6.png"]
    assert {r["labelled"] for r in rows} == {"full"} and {r["made_by"] for r in rows} == {"corrected"}
    for row, k in zip(rows, (1, 6), strict=True):
        np.testing.assert_array_equal(read_labels(tmp_path / "a" / "granules" / "labels" / row["name"]),
                                      granules.data[tile_slices(SHAPE, TILE, k)])

    # (b) only the changed pixels + the reviewed tile; the rest unlabelled
    exporter._truth.value = "changed"
    diff = int((np.asarray(granules.data) != base).sum())
    assert f"{diff + TILE * TILE:,} labelled px in 2 tiles (1, 6; changed + reviewed)" in exporter.plan
    rows = _export(exporter, qtbot, tmp_path / "b", "changed", [granules])
    assert [r["name"] for r in rows] == ["cell_1.png", "cell_6.png"]
    assert {r["labelled"] for r in rows} == {"changed"}
    window = tile_slices(SHAPE, TILE, 1)
    tile1 = read_labels(tmp_path / "b" / "granules" / "labels" / "cell_1.png")
    mask = (np.asarray(granules.data) != base)[window]
    np.testing.assert_array_equal(tile1[mask], np.asarray(granules.data)[window][mask])
    assert (tile1[~mask] == UNLABELLED).all() and mask.any()
    tile6 = read_labels(tmp_path / "b" / "granules" / "labels" / "cell_6.png")
    np.testing.assert_array_equal(tile6, granules.data[tile_slices(SHAPE, TILE, 6)])

    # (c) strokes: class 0 and 1 where painted, unlabelled elsewhere
    exporter._truth.value = "strokes"
    assert exporter._label_layers.value == [strokes]
    assert "80 labelled px in 1 tile (3; strokes)" in exporter.plan
    rows = _export(exporter, qtbot, tmp_path / "c", "strokes", [strokes])
    assert [r["name"] for r in rows] == ["cell_3.png"] and rows[0]["labelled"] == "strokes"
    tile3 = read_labels(tmp_path / "c" / "granules" / "labels" / "cell_3.png")
    expected = np.full((TILE, TILE), UNLABELLED, np.uint16)
    expected[20:28, 20:28] = 0
    expected[60:64, 60:64] = 1
    np.testing.assert_array_equal(tile3, expected)
    assert float(rows[0]["labelled_fraction"]) == pytest.approx(80 / TILE ** 2, abs=1e-4)
    # nothing the user painted changed
    assert int((np.asarray(strokes.data) > 0).sum()) == 80


def test_all_unlabelled_export_is_refused_and_writes_nothing(scene, qtbot, tmp_path, messages):
    viewer, reviewer, exporter, granules = scene
    out = tmp_path / "out"
    out.mkdir()
    exporter._folder.value = out
    exporter._truth.value = "changed"
    exporter._label_layers.value = [granules]
    assert "every pixel is unlabelled" in exporter.plan
    n = len(messages)
    assert exporter.export() is None and not exporter.busy
    assert len(messages) == n + 1 and messages[-1][0] == "warning"
    assert "every pixel is unlabelled in 'cell granules'" in messages[-1][1]
    assert "mark tiles reviewed" in messages[-1][1]
    # the count follows the user's painting
    granules.data_setitem(_square(9), 1 - int(granules.data[_square(9)][0]))
    qtbot.waitUntil(lambda: "in 1 tile (9; changed + reviewed)" in exporter.plan, timeout=3000)
    granules.undo()
    qtbot.waitUntil(lambda: "every pixel is unlabelled" in exporter.plan, timeout=3000)

    reviewer.new_strokes_layer()  # empty
    exporter._truth.value = "strokes"
    assert exporter.export() is None
    assert "every pixel is unlabelled in 'cell granules strokes'" in messages[-1][1]
    assert "paint strokes" in messages[-1][1]
    assert list(out.iterdir()) == []
