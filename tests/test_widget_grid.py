"""The Point grid dock widget in a real viewer (run under ``xvfb-run``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_emgranules._widgets import _common, grid
from napari_emgranules._widgets.grid import GRID, PointGridWidget
from napari_emgranules.core.pointgrid import (
    agreement,
    grid_table,
    make_grid,
    read_manual_scores,
    score_points,
)
from napari_emgranules.core.schema import GRANULES_SCHEMA, LOCATIONS_SCHEMA
from napari_emgranules.core.synthetic import synthetic_micrograph

PX = 0.8
INFO = {"pixel_size_nm": PX, "pixel_size_source": "synthetic"}


@pytest.fixture(scope="module")
def micrograph():
    return synthetic_micrograph((512, 512), PX, seed=3)


@pytest.fixture
def messages(monkeypatch):
    seen: list[tuple[str, str]] = []
    for module in (grid, _common):
        for level in ("error", "warning", "info"):
            name = f"show_{level}"
            if hasattr(module, name):
                monkeypatch.setattr(module, name, lambda text, level=level: seen.append((level, text)))
    return seen


@pytest.fixture
def scene(make_napari_viewer, micrograph):
    viewer = make_napari_viewer()
    image = viewer.add_image(micrograph.image, name="cell", scale=(PX, PX))
    loc = _common.show_labels(viewer, image, "locations", micrograph.locations, LOCATIONS_SCHEMA, INFO)
    gra = _common.show_labels(viewer, image, "granules", micrograph.granules, GRANULES_SCHEMA, INFO)
    return viewer, PointGridWidget(viewer), loc, gra


def test_the_grid_is_the_core_grid_scored_from_the_layers(scene, micrograph):
    viewer, widget, loc, gra = scene
    assert widget._locations.value is loc and widget._granules.value is gra
    widget._spacing.value, widget._seed.value = 40.0, 7
    layer = widget.lay_grid()
    expected = score_points(make_grid((512, 512), PX, 40.0, 7), micrograph.locations,
                            micrograph.granules, image="cell")
    assert len(layer.data) == len(expected) and layer.metadata[GRID]["seed"] == 7
    # napari puts pixel centres at integers, the core at k + 0.5; the scale is the image's
    np.testing.assert_allclose(layer.data + 0.5, expected[["row", "col"]].to_numpy())
    assert tuple(layer.scale) == pytest.approx((PX, PX))
    np.testing.assert_array_equal(layer.features["region_code"], expected["region_code"])
    np.testing.assert_array_equal(layer.features["hit"], expected["hit"])
    table = widget.comparison()
    core = grid_table(expected)
    np.testing.assert_allclose(table["model pf"].to_numpy(float), core["pf_points"].to_numpy(float))
    assert table["reviewed points"].isna().all()  # nothing reviewed yet
    # the keys are bound on the grid layer itself, not on every Points layer
    assert {"Right", "Left", "H", "A", "N", "Enter"} <= {str(k) for k in layer.keymap}
    other = viewer.add_points(np.zeros((1, 2)))
    assert "H" not in {str(k) for k in other.keymap}


def test_review_with_the_keys_fills_the_table_and_the_saved_sheet_reads_back(scene, tmp_path,
                                                                             messages):
    viewer, widget, loc, _ = scene
    widget._spacing.value = 60.0
    layer = widget.lay_grid()
    keys = {str(k): f for k, f in layer.keymap.items()}
    assert keys["Right"](layer) is None and widget._current == 0
    np.testing.assert_allclose(viewer.camera.center[-2:], layer.data_to_world(layer.data[0])[-2:])
    keys["A"](layer)  # region A
    keys["H"](layer)  # toggles the hit
    first_hit = bool(layer.features["hit"].iloc[0])
    assert layer.features["region_code"].iloc[0] == 1 and layer.features["reviewed"].iloc[0]
    assert first_hit != bool(layer.features["model_hit"].iloc[0])
    keys["Enter"](layer)  # done with point 1: point 2 comes up
    assert widget._current == 1 and layer.features["reviewed"].sum() == 1
    keys["Enter"](layer)  # point 2 is right as it is, and point 3 comes up
    assert widget._current == 2 and layer.features["reviewed"].sum() == 2
    table = widget.comparison().set_index("region")
    assert table["reviewed points"].sum() == 2 and table.loc["A", "reviewed points"] >= 1
    assert 0 <= table.loc["A", "95% low"] <= table.loc["A", "reviewed pf"] <= table.loc["A", "95% high"]
    # the scores survive in the layer; the sheet is what `emgranules grid --manual` reads
    written = widget.save(tmp_path / "cell-grid")
    assert written.suffix == ".csv"
    manual = read_manual_scores(written, shapes={"cell": (512, 512)})
    assert len(manual) == len(layer.data) and manual["hit"].iloc[0] == first_hit
    sheet = pd.read_csv(written)
    assert sheet["reviewed"].sum() == 2 and set(sheet["seed"]) == {0}
    model = grid_table(score_points(make_grid((512, 512), PX, 60.0, 0), np.asarray(loc.data),
                                    np.asarray(widget._granules.value.data), image="cell"))
    per_image, _ = agreement(model, grid_table(manual))
    assert per_image["difference"].abs().max() <= 1.0  # one image, every region compared
    with pytest.raises(FileExistsError):
        widget.save(written)  # never replaced
    # a new grid would drop the reviewed points: refused with a message, the layer stays
    assert widget.lay_grid() is None and layer in viewer.layers
    assert any("reviewed points" in text for level, text in messages if level == "error")


def test_unknown_pixel_size_and_missing_layers_are_messages(make_napari_viewer, micrograph, messages):
    viewer = make_napari_viewer()
    image = viewer.add_image(micrograph.image, name="plain")
    info = {"pixel_size_nm": None, "pixel_size_source": "unknown"}
    _common.show_labels(viewer, image, "locations", micrograph.locations, LOCATIONS_SCHEMA, info)
    _common.show_labels(viewer, image, "granules", micrograph.granules, GRANULES_SCHEMA, info)
    widget = PointGridWidget(viewer)
    assert widget.lay_grid() is None
    assert any("pixel size is unknown" in text for _, text in messages)
    widget.step(1)  # no grid: nothing happens
    widget.set_region(1)
    assert any("go to a point first" in text for _, text in messages)
    with pytest.raises(ValueError, match="lay a grid first"):
        widget.save("x.csv")
    empty = PointGridWidget(make_napari_viewer())
    assert empty.lay_grid() is None
    assert any("choose a Locations and a Granules layer" in text for _, text in messages)
