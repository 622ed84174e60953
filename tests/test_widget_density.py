"""The Density dock widget in a real viewer (run under ``xvfb-run``)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from qtpy.QtCore import Qt

from napari_emgranules._layers import labels_layer_data
from napari_emgranules._widgets import _common, density
from napari_emgranules._widgets.density import DensityWidget
from napari_emgranules.core.measure import SEED_AREAS_FILE, SEED_DENSITIES_FILE, density_table, measure_labels
from napari_emgranules.core.schema import GRANULES_SCHEMA, LOCATIONS_SCHEMA
from napari_emgranules.core.synthetic import synthetic_micrograph

PX = 0.8
INFO = {"pixel_size_nm": PX, "pixel_size_source": "synthetic"}


@pytest.fixture(scope="module")
def micrograph():
    return synthetic_micrograph((512, 512), PX, seed=3)


@pytest.fixture
def messages(monkeypatch):
    """Every notification the widget shows, as (level, text)."""
    seen: list[tuple[str, str]] = []
    for module in (density, _common):
        for level in ("error", "warning", "info"):
            name = f"show_{level}"
            if hasattr(module, name):
                monkeypatch.setattr(module, name, lambda text, level=level: seen.append((level, text)))
    return seen


@pytest.fixture
def scene(make_napari_viewer, qtbot, micrograph):
    """A viewer with a micrograph, its Locations and Granules layers (as the Segment widget
    leaves them) and the Density widget."""
    viewer = make_napari_viewer()
    image = viewer.add_image(micrograph.image, name="cell", scale=(PX, PX))
    loc = _common.show_labels(viewer, image, "locations", micrograph.locations, LOCATIONS_SCHEMA, INFO)
    gra = _common.show_labels(viewer, image, "granules", micrograph.granules, GRANULES_SCHEMA, INFO)
    widget = DensityWidget(viewer)
    qtbot.addWidget(widget)
    return viewer, widget, loc, gra


def measured(qtbot, widget, timeout=15000):
    widget.measure()
    qtbot.waitUntil(lambda: not widget.busy and widget.measurement is not None, timeout=timeout)
    return widget.table_frame()


def pf_by_letter(table: pd.DataFrame, column: str = "letter") -> dict[str, float]:
    return dict(zip(table[column], table["pf"].astype(float), strict=True))


def test_table_and_features_hold_the_measurement(scene, qtbot, micrograph):
    viewer, widget, loc, gra = scene
    # the Segment widget's pair is chosen by default, with its pixel size
    assert widget.locations_combo.value is loc and widget.granules_combo.value is gra
    assert widget.pixel_size.value == pytest.approx(PX)
    widget.auto_update.value = False

    table = measured(qtbot, widget)
    expected = measure_labels(micrograph.locations, micrograph.granules, pixel_size_nm=PX).regions
    direct = density_table(micrograph.locations, micrograph.granules, pixel_size_nm=PX)
    assert list(table["letter"]) == ["A", "I", "Z", "S", "N"] == list(expected["region"])
    for column in ("pf", "vf", "area_px", "area_um2", "granule_px", "granule_count", "mean_diameter_nm"):
        np.testing.assert_allclose(table[column].astype(float), expected[column].astype(float),
                                   rtol=1e-12, equal_nan=True, err_msg=column)
    np.testing.assert_allclose(table["pf"].astype(float), direct["pf"], rtol=1e-12)

    # the table is a view on the layer's features: same numbers, the schema columns kept
    features = loc.features
    assert {"index", "class", "letter"} <= set(features.columns)
    measured_rows = features.set_index("index").loc[[1, 2, 3, 4, 5]]
    np.testing.assert_allclose(measured_rows["pf"], table["pf"].astype(float), rtol=1e-12)
    np.testing.assert_allclose(measured_rows["area_um2"], expected["area_um2"], rtol=1e-12)
    assert features.set_index("index").loc[[0, 6], "pf"].isna().all()  # unmeasured codes

    # headers in physical units, numbers formatted for reading
    headers = [widget.table.horizontalHeaderItem(c).text() for c in range(widget.table.columnCount())]
    assert "area (µm²)" in headers and "mean diameter (nm)" in headers
    pf_col = [c for c, (name, _, _) in enumerate(density.TABLE_COLUMNS) if name == "pf"][0]
    assert widget.table.item(1, pf_col).text() == f"{expected['pf'].iat[1]:.4f}"

    # the bar plot: pf and vf per region, labelled, rendered off the main thread
    qtbot.waitUntil(lambda: not widget.plot.busy, timeout=10_000)
    assert not widget.plot.pixmap().isNull()
    ax = widget.figure.axes[0]
    assert len(ax.patches) == 10 and ax.get_xlabel() == "region" and ax.get_ylabel()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["pf (area fraction)",
                                                                     "vf (volume fraction)"]

    # click a row: only that region is shown; click again: all regions
    widget.show()
    row = 1  # I band, code 2
    rect = widget.table.visualItemRect(widget.table.item(row, 1))
    qtbot.mouseClick(widget.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert loc.selected_label == 2 and loc.show_selected_label
    qtbot.mouseClick(widget.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert not loc.show_selected_label
    widget.select_region(5)
    assert loc.selected_label == 5 and loc.show_selected_label
    widget.show_all_button.click()
    assert not loc.show_selected_label


def test_painting_granules_updates_pf_after_a_pause(scene, qtbot):
    viewer, widget, loc, gra = scene
    assert widget.auto_update.value  # on by default
    before = pf_by_letter(measured(qtbot, widget))

    # paint a block of granule pixels where the cell is peripheral region (N, code 5)
    rows, cols = np.nonzero(np.asarray(loc.data) == 5)
    r, c = rows[len(rows) // 2], cols[len(cols) // 2]
    yy, xx = np.mgrid[r - 6:r + 6, c - 6:c + 6]
    gra.data_setitem((yy.ravel(), xx.ravel()), 1)
    after = density_table(np.asarray(loc.data), np.asarray(gra.data), pixel_size_nm=PX)
    expected = dict(zip(after["region"], after["pf"], strict=True))
    assert expected["N"] > before["N"]

    qtbot.waitUntil(lambda: abs(pf_by_letter(widget.table_frame())["N"] - expected["N"]) < 1e-12,
                    timeout=10000)
    assert loc.features.set_index("index").loc[5, "pf"] == pytest.approx(expected["N"], rel=1e-12)

    # with automatic updates off, painting leaves the table alone
    widget.auto_update.value = False
    gra.data_setitem((yy.ravel() + 20, xx.ravel()), 1)
    qtbot.wait(density.DEBOUNCE_MS + 300)
    assert pf_by_letter(widget.table_frame())["N"] == pytest.approx(expected["N"], rel=1e-12)


def test_save_csv_and_seed_tables_never_overwrite(scene, qtbot, tmp_path, messages):
    viewer, widget, loc, gra = scene
    widget.auto_update.value = False
    table = measured(qtbot, widget)

    path = tmp_path / "density.csv"
    assert widget.save_csv(path) == path
    saved = pd.read_csv(path)
    assert list(saved["region"]) == ["A", "I", "Z", "S", "N"]
    np.testing.assert_allclose(saved["pf"], table["pf"].astype(float), rtol=1e-9)
    np.testing.assert_allclose(saved["area_um2"], table["area_um2"].astype(float), rtol=1e-9)

    text = path.read_bytes()
    messages.clear()
    assert widget.save_csv(path) is None
    assert path.read_bytes() == text
    assert any(level == "error" and "exists already" in msg for level, msg in messages), messages

    folder = tmp_path / "seed"
    folder.mkdir()
    areas, densities = widget.save_seed_tables(folder)
    assert areas == folder / SEED_AREAS_FILE and densities == folder / SEED_DENSITIES_FILE
    lines = densities.read_text().splitlines()
    assert lines[0].split()[1:] == ["A_dens", "I_dens", "Z_dens", "S_dens", "N_dens"]
    values = [float(v) for v in lines[1].split()[-5:]]
    np.testing.assert_allclose(values, np.nan_to_num(table["pf"].astype(float), nan=-1), atol=6e-5)
    before = densities.read_bytes()
    messages.clear()
    assert widget.save_seed_tables(folder) is None
    assert densities.read_bytes() == before
    assert any(level == "error" and "exists already" in msg for level, msg in messages), messages

    # the particles, for QuPath and Fiji
    geo, rois = widget.save_objects(tmp_path / "cell.geojson")
    assert (geo.name, rois.name) == ("cell.geojson", "cell.roi.zip")
    collection = json.loads(geo.read_text())
    assert len(collection["features"]) == len(widget.measurement.particles) > 0
    messages.clear()
    assert widget.save_objects(tmp_path / "cell") is None  # never replaced
    assert any(level == "error" and "exists already" in msg for level, msg in messages), messages


def test_bad_input_is_reported_and_changes_nothing(scene, qtbot, messages, make_napari_viewer):
    viewer, widget, loc, gra = scene
    widget.auto_update.value = False
    table = measured(qtbot, widget)
    features = loc.features.copy()

    def refused(needle: str) -> None:
        messages.clear()
        assert widget.measure() is None
        assert any(level == "error" and needle in msg for level, msg in messages), messages
        pd.testing.assert_frame_equal(widget.table_frame(), table)
        pd.testing.assert_frame_equal(loc.features, features)

    # two layers of different sizes
    small = viewer.add_labels(np.zeros((256, 256), np.uint8), name="small granules")
    widget.granules_combo.value = small
    refused("differ in size")
    # the same layer twice
    widget.granules_combo.value = loc
    refused("both")
    # codes outside the Locations schema
    bad = viewer.add_labels(np.full((512, 512), 9, np.uint8), name="bad locations")
    widget.locations_combo.value = bad
    widget.granules_combo.value = gra
    refused("not in the locations schema")

    # no layers at all
    empty_viewer = make_napari_viewer()
    lonely = DensityWidget(empty_viewer)
    qtbot.addWidget(lonely)
    messages.clear()
    assert lonely.locations_combo.value is None and lonely.measure() is None
    assert any(level == "error" and "choose a Locations" in msg for level, msg in messages), messages
    assert lonely.table.rowCount() == 0 and lonely.save_csv("x.csv") is None


def test_plain_labels_layers_pair_by_name_and_follow_renames(make_napari_viewer, qtbot, micrograph,
                                                            messages):
    viewer = make_napari_viewer()
    # the sample's truth layers (scale in nm), and an uncalibrated pair
    truth = "synthetic muscle {} (truth)"
    for labels, schema, name in ((micrograph.locations, LOCATIONS_SCHEMA, truth.format("locations")),
                                 (micrograph.granules, GRANULES_SCHEMA, truth.format("granules"))):
        data, kwargs, _ = labels_layer_data(labels, schema, name, PX)
        viewer.add_labels(data, **kwargs)
    raw_loc = viewer.add_labels(micrograph.locations.copy(), name="raw locations")
    raw_gra = viewer.add_labels(micrograph.granules.copy(), name="raw granules")
    widget = DensityWidget(viewer)
    qtbot.addWidget(widget)
    widget.auto_update.value = False
    assert widget.locations_combo.value.name == "synthetic muscle locations (truth)"
    assert widget.granules_combo.value.name == "synthetic muscle granules (truth)"
    assert widget.pixel_size.value == pytest.approx(PX)  # from the layer's scale in nm

    # choosing a Locations layer picks its partner; no pixel size: pixels only, with a warning
    widget.locations_combo.value = raw_loc
    assert widget.granules_combo.value is raw_gra
    assert widget.pixel_size.value == 0

    # Cancel drops the result
    widget.measure()
    assert widget.busy
    widget.cancel()
    assert not widget.busy
    qtbot.wait(200)
    assert widget.measurement is None and widget.table.rowCount() == 0

    messages.clear()
    table = measured(qtbot, widget)
    assert any(level == "warning" and "pixel size" in msg for level, msg in messages), messages
    assert table["area_um2"].isna().all() and table["vf"].isna().all()
    expected = density_table(micrograph.locations, micrograph.granules)
    np.testing.assert_allclose(table["pf"].astype(float), expected["pf"], rtol=1e-12)
    np.testing.assert_array_equal(table["area_px"].astype(int), expected["area_px"])

    # renames and new layers show up in the choices, the chosen layer stays chosen
    raw_loc.name = "renamed locations"
    combo = widget.locations_combo.native
    assert "renamed locations" in [combo.itemText(i) for i in range(combo.count())]
    assert widget.locations_combo.value is raw_loc
    assert "renamed locations" in widget.locations_combo.native.currentText()
    widget.pixel_size.value = 1.5  # typed by the user: adding a layer keeps it
    extra = viewer.add_labels(np.zeros((8, 8), np.uint8), name="extra")
    assert any(choice is extra for choice in widget.granules_combo.choices)
    assert widget.pixel_size.value == pytest.approx(1.5)
    viewer.layers.remove(extra)
    assert not any(choice is extra for choice in widget.granules_combo.choices)


def test_a_pf_calibration_adds_its_column_and_says_so(scene, qtbot, tmp_path, messages):
    from napari_emgranules.core.pointgrid import PfCalibration

    viewer, widget, loc, gra = scene
    widget.auto_update.value = False
    table = measured(qtbot, widget)
    assert table["pf_calibrated"].isna().all()  # not calibrated: the column is empty
    regions = {r: {"slope": 2.0, "intercept": 0.001, "n": 5, "x_mean": 0.05, "sxx": 0.01,
                   "residual_sd": 0.002} for r in ("A", "I", "Z", "S", "N")}
    PfCalibration(regions, "lab").save(tmp_path / "lab.json")
    widget.calibration.value = str(tmp_path / "lab.json")
    table = measured(qtbot, widget)
    pf, cal = table["pf"].astype(float), table["pf_calibrated"].astype(float)
    np.testing.assert_allclose(cal[pf.notna()], 0.001 + 2.0 * pf[pf.notna()], rtol=1e-9)
    assert "pf calibrated with lab" in widget.notes_label.value
    (tmp_path / "bad.json").write_text("{}")
    widget.calibration.value = str(tmp_path / "bad.json")
    messages.clear()
    widget.measure()
    assert any(level == "error" and "not a pf calibration" in text for level, text in messages), messages
