"""The Export training data dock widget in a real viewer (run under ``xvfb-run``)."""

from __future__ import annotations

import csv
import hashlib

import numpy as np
import pytest

from napari_emgranules._widgets import _common, export
from napari_emgranules._widgets._common import session_for, show_labels, tile_slices
from napari_emgranules._widgets.export import ExportWidget
from napari_emgranules.core.io import read_labels, read_micrograph
from napari_emgranules.core.schema import GRANULES_SCHEMA, LOCATIONS_SCHEMA
from napari_emgranules.core.synthetic import synthetic_micrograph

TILE = 128  # a 512 px image has 16 tiles, numbered row by row
SHAPE = (512, 512)


@pytest.fixture
def messages(monkeypatch):
    """Notifications shown by the widget (and by the shared error helper), as (level, text)."""
    shown: list[tuple[str, str]] = []
    for module, levels in ((export, ("info", "warning")), (_common, ("info", "warning", "error"))):
        for level in levels:
            monkeypatch.setattr(module, f"show_{level}", lambda text, lv=level: shown.append((lv, text)))
    return shown


@pytest.fixture
def scene(make_napari_viewer):
    s = synthetic_micrograph(SHAPE, 0.8, seed=3)
    viewer = make_napari_viewer()
    image = viewer.add_image(s.image, name="cell", scale=(0.8, 0.8),
                             metadata={"pixel_size_nm": 0.8, "pixel_size_source": "metadata"})
    info = {"pixel_size_nm": 0.8, "pixel_size_source": "metadata", "mode": "test",
            "model": {"kind": "locations", "provenance": {"source": "/m/locations.weights.h5"}}}
    locations = show_labels(viewer, image, "locations", s.locations, LOCATIONS_SCHEMA, info)
    granules = show_labels(viewer, image, "granules", s.granules, GRANULES_SCHEMA,
                           {**info, "model": {"kind": "granules", "provenance": {"trained": False}}})
    session_for(viewer).set_tile_size(TILE)
    widget = ExportWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Export")
    return viewer, widget, image, locations, granules


def _paint(layer, tile: int, value: int, at: int = 10) -> None:
    """Paint an 8 x 8 px square of ``value`` into ``tile``, ``at`` px from its corner."""
    rows, cols = tile_slices(SHAPE, TILE, tile)
    y, x = np.mgrid[rows.start + at:rows.start + at + 8, cols.start + at:cols.start + at + 8]
    layer.data_setitem((y.ravel(), x.ravel()), value)


def _run(widget, qtbot) -> None:
    assert widget.export() is not None
    assert widget.busy
    qtbot.waitUntil(lambda: not widget.busy, timeout=20000)


def _manifest(root) -> list[dict[str, str]]:
    with open(root / "manifest.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _digest(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_export_changed_tiles_writes_exactly_those_pairs_and_never_deletes(scene, qtbot, tmp_path,
                                                                          messages):
    viewer, widget, image, locations, granules = scene
    assert widget._image.value is image
    assert widget._label_layers.value == [locations, granules]
    _paint(granules, 1, 1)
    _paint(granules, 6, 1)
    _paint(locations, 6, 4)
    widget._folder.value = tmp_path
    _run(widget, qtbot)

    for kind, layer, tiles in (("granules", granules, [1, 6]), ("locations", locations, [6])):
        root = tmp_path / kind
        rows = _manifest(root)
        assert [r["name"] for r in rows] == [f"cell_{k}.png" for k in tiles]
        assert (root / "schema.json").is_file()
        for row, k in zip(rows, tiles, strict=True):
            window = tile_slices(SHAPE, TILE, k)
            assert (int(row["y"]), int(row["x"])) == (window[0].start, window[1].start)
            assert row["source"] == "cell" and row["made_by"] == "corrected"
            assert float(row["pixel_size_nm"]) == pytest.approx(0.8)
            assert row["labelled"] == "full"
            np.testing.assert_array_equal(read_micrograph(root / "images" / row["name"]).data,
                                          image.data[window])
            np.testing.assert_array_equal(read_labels(root / "labels" / row["name"]), layer.data[window])
    assert "granules: 2 pairs (tiles 1, 6)" in widget.summary
    assert "locations: 1 pair (tiles 6)" in widget.summary
    assert messages[-1][0] == "info" and "2 pairs (tiles 1, 6)" in messages[-1][1]

    # exporting the same tiles again supersedes the first pairs: moved aside, never deleted
    first = _digest(tmp_path / "granules")
    _paint(granules, 1, 1, at=60)  # a further correction of tile 1
    _run(widget, qtbot)
    kept = list((tmp_path / "granules" / "superseded").iterdir())
    assert len(kept) == 1
    old = _digest(kept[0])
    for name in ("images/cell_1.png", "labels/cell_1.png", "images/cell_6.png", "labels/cell_6.png"):
        assert old[name] == first[name], name
    assert [r["name"] for r in _manifest(kept[0])] == ["cell_1.png", "cell_6.png"]
    assert [r["name"] for r in _manifest(tmp_path / "granules")] == ["cell_1.png", "cell_6.png"]
    np.testing.assert_array_equal(read_labels(tmp_path / "granules" / "labels" / "cell_1.png"),
                                  granules.data[tile_slices(SHAPE, TILE, 1)])


def test_export_chosen_or_all_tiles_of_uncorrected_and_truth_layers(scene, qtbot, tmp_path):
    viewer, widget, image, locations, granules = scene
    truth = viewer.add_labels(np.array(granules.data), name="cell granules (truth)",
                              metadata={"schema": GRANULES_SCHEMA.to_dict()})
    widget._label_layers.reset_choices()
    widget._label_layers.value = [granules, truth]
    widget._mode.value = "these"
    assert widget._tiles.enabled
    widget._tiles.value = "0, 3-4"
    widget._folder.value = tmp_path
    # two layers of one image into one folder: the second would supersede the first
    assert widget.export() is None and not (tmp_path / "granules").exists()
    widget._label_layers.value = [granules]
    assert "3 tiles (0, 3, 4; whole tiles)" in widget.plan
    _run(widget, qtbot)
    widget._label_layers.value = [truth]
    _run(widget, qtbot)
    rows = _manifest(tmp_path / "granules")
    assert [r["name"] for r in rows] == ["cell_0.png", "cell_3.png", "cell_4.png"]
    assert {r["made_by"] for r in rows} == {"unknown"}
    (kept,) = (tmp_path / "granules" / "superseded").iterdir()
    assert {r["made_by"] for r in _manifest(kept)} == {"granules model (untrained)"}
    assert not (tmp_path / "locations").exists()

    widget._label_layers.value = [locations]
    widget._mode.value = "all"
    session_for(viewer).set_tile_size(256)  # the shared grid: 4 tiles
    assert widget._tile_size.value == 256
    _run(widget, qtbot)
    rows = _manifest(tmp_path / "locations")
    assert [r["name"] for r in rows] == [f"cell_{k}.png" for k in range(4)]
    assert rows[0]["made_by"] == "locations model (locations.weights.h5)"
    assert [res.tiles for res in widget.last_results] == [[0, 1, 2, 3]]


def test_bad_input_tells_the_user_and_writes_nothing(scene, qtbot, tmp_path, messages):
    viewer, widget, image, locations, granules = scene
    out = tmp_path / "out"
    out.mkdir()

    def refused(fragment: str) -> None:
        n = len(messages)
        assert widget.export() is None
        assert not widget.busy
        assert len(messages) == n + 1 and messages[-1][0] == "warning", messages[n:]
        assert fragment in messages[-1][1], messages[-1][1]
        assert list(out.iterdir()) == []

    refused("no output folder")
    widget._folder.value = out
    refused("empty export selection")  # nothing painted yet
    _paint(granules, 2, 1)

    widget._label_layers.value = []
    refused("no label layers chosen")

    other = viewer.add_labels(np.zeros((256, 256), np.uint8), name="small",
                              metadata={"schema": GRANULES_SCHEMA.to_dict()})
    widget._label_layers.reset_choices()
    widget._label_layers.value = [granules, other]
    widget._mode.value = "all"
    refused("is 256 x 256 px but the image 'cell' is 512 x 512 px")

    widget._label_layers.value = [granules]
    widget._mode.value = "these"
    for text, fragment in (("3, x", "whole numbers"), ("", "type the tile numbers"),
                           ("2, 16", "no tile 16"), ("5-3", "not a valid tile range")):
        widget._tiles.value = text
        refused(fragment)

    truth = viewer.add_labels(np.array(granules.data), name="truth",
                              metadata={"schema": GRANULES_SCHEMA.to_dict()})
    widget._label_layers.reset_choices()
    widget._mode.value = "changed"
    widget._label_layers.value = [truth]
    refused("'truth' has no model output")

    # a labels layer with codes outside its schema: refused in the worker, before any file
    widget._label_layers.value = [granules, locations]
    _paint(locations, 2, 3)
    _paint(granules, 3, 5)  # granules have classes 0..1
    n = len(messages)
    _run(widget, qtbot)
    assert any(level == "error" and "granules" in text for level, text in messages[n:]), messages[n:]
    assert list(out.iterdir()) == []

    viewer.layers.remove(image)
    assert widget._image.value is None
    refused("no image layer")
