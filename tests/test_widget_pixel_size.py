"""The pixel size travels truthfully (run under ``xvfb-run``): a micrograph opened without one
stays unknown (in pixels) until the user enters it; then the image layer and every layer made from
it take it (scale in nm, ``pixel_size_source="user"``), and Export and Density use it. Export
refuses an unknown pixel size instead of guessing."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from napari_emgranules import _engine
from napari_emgranules._widgets import _common, export, segment
from napari_emgranules._widgets._common import layer_pixel_size, session_for, show_labels, tile_slices
from napari_emgranules._widgets.density import DensityWidget
from napari_emgranules._widgets.export import ExportWidget
from napari_emgranules._widgets.segment import SegmentWidget
from napari_emgranules.core.schema import GRANULES_SCHEMA, LOCATIONS_SCHEMA

PLUGIN = "napari-emgranules"
TILE = 128
TIMEOUT_MS = 180_000


@pytest.fixture
def messages(monkeypatch):
    """Notifications shown by the widgets, as (level, text)."""
    shown: list[tuple[str, str]] = []
    for module, levels in ((export, ("info", "warning")), (segment, ("info",)),
                           (_common, ("info", "warning", "error"))):
        for level in levels:
            monkeypatch.setattr(module, f"show_{level}", lambda text, lv=level: shown.append((lv, text)))
    return shown


def _manifest(root) -> list[dict[str, str]]:
    with open(root / "manifest.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _paint(layer, tile: int, value: int) -> None:
    rows, cols = tile_slices(layer.data.shape, TILE, tile)
    y, x = np.mgrid[rows.start + 10:rows.start + 18, cols.start + 10:cols.start + 18]
    layer.data_setitem((y.ravel(), x.ravel()), value)


def _refused(widget, messages, out, fragment: str) -> None:
    n = len(messages)
    assert widget.export() is None and not widget.busy
    assert len(messages) == n + 1 and messages[-1][0] == "warning", messages[n:]
    assert fragment in messages[-1][1], messages[-1][1]
    assert not out.exists() or list(out.iterdir()) == []


def test_pixel_size_entered_in_segment_reaches_layers_export_and_density(
        make_napari_viewer, write_micrograph, tmp_path, qtbot, messages):
    path = write_micrograph("uncal.tif", shape=(512, 512), pixel_size_nm=None, seed=2)
    viewer = make_napari_viewer()
    (image,) = viewer.open(path, plugin=PLUGIN)
    # no calibration: the layer stays in pixels and says the pixel size is unknown
    np.testing.assert_allclose(image.scale, (1.0, 1.0))
    assert layer_pixel_size(image) == (None, "unknown")
    # result layers as Segment leaves them after a run at "the models' own" pixel size
    assumed = {"pixel_size_nm": 0.8, "pixel_size_source": "model", "mode": "test", "model": None}
    data = np.asarray(image.data)
    granules = show_labels(viewer, image, "granules", (data > np.median(data)).astype(np.uint8),
                           GRANULES_SCHEMA, assumed)
    locations = show_labels(viewer, image, "locations", np.ones(data.shape, np.uint8),
                            LOCATIONS_SCHEMA, assumed)
    assert layer_pixel_size(granules) == (None, "unknown")
    session_for(viewer).set_tile_size(TILE)

    seg = SegmentWidget(viewer)
    exporter = ExportWidget(viewer)
    viewer.window.add_dock_widget(seg, name="Segment")
    viewer.window.add_dock_widget(exporter, name="Export")
    assert seg.image.value is image and seg.pixel_size.value == 0
    assert "unknown" in seg.pixel_source.value
    assert exporter._pixel_size.value == 0 and "unknown" in exporter._pixel_source.value

    # Export refuses to guess
    _paint(granules, 5, 1 - int(granules.data[tile_slices(data.shape, TILE, 5)][12, 12]))
    out = tmp_path / "pairs"
    exporter._folder.value = out
    _refused(exporter, messages, out, "the pixel size of 'uncal' is unknown")

    # typed in Segment: the image and its result layers take it, with its source
    seg.pixel_size.value = 2.0
    assert image.metadata["pixel_size_nm"] == 2.0 and image.metadata["pixel_size_source"] == "user"
    for layer in (image, granules, locations):
        np.testing.assert_allclose(layer.scale, (2.0, 2.0))
        assert [str(u) for u in layer.units] == ["nanometer", "nanometer"]
        assert layer_pixel_size(layer) == (2.0, "user")
    assert granules.metadata["emgranules"]["pixel_size_source"] == "user"
    assert seg.pixel_source.value == "entered by you"
    # Export shows it, and writes it into the manifest
    assert exporter._pixel_size.value == pytest.approx(2.0)
    assert exporter._pixel_source.value == "entered by you"
    assert exporter.export() is not None
    qtbot.waitUntil(lambda: not exporter.busy, timeout=20000)
    rows = _manifest(out / "granules")
    assert [r["name"] for r in rows] == ["uncal_5.png"]
    assert float(rows[0]["pixel_size_nm"]) == pytest.approx(2.0)
    # Density reads the same value from the layers
    density = DensityWidget(viewer)
    qtbot.addWidget(density)
    density.auto_update.value = False
    assert density.locations_combo.value is locations
    assert density.pixel_size.value == pytest.approx(2.0)
    assert "entered by you" in density.pixel_size_note.value

    # a value entered in Export goes to the image layer too (and Segment shows it)
    exporter._pixel_size.value = 1.5
    np.testing.assert_allclose(granules.scale, (1.5, 1.5))
    assert layer_pixel_size(image) == (1.5, "user")
    assert seg.pixel_size.value == pytest.approx(1.5)
    qtbot.waitUntil(lambda: density.pixel_size.value == pytest.approx(1.5), timeout=2000)


def test_segment_run_without_pixel_size_then_typed_one_reaches_the_manifest(
        make_napari_viewer, write_micrograph, tmp_path, qtbot, messages):
    """The reported bug: a run at the assumed 0.8 nm, then 2.0 nm typed; Export wrote 0.8."""
    path = write_micrograph("uncal.tif", shape=(256, 256), pixel_size_nm=None, seed=4)
    viewer = make_napari_viewer()
    (image,) = viewer.open(path, plugin=PLUGIN)
    session_for(viewer).set_tile_size(TILE)
    seg = SegmentWidget(viewer)
    seg.models["locations"].enabled_box.value = False
    seg.confidence.value = False
    try:
        assert seg.run() is not None
        qtbot.waitUntil(lambda: not seg.job.busy, timeout=TIMEOUT_MS)
    finally:
        _engine.shutdown_engines()
    assert not [m for m in messages if m[0] == "error"], messages
    assert "assumed" in seg.job.status.value
    granules = viewer.layers["uncal granules"]
    assert layer_pixel_size(granules) == (None, "unknown")  # run at an assumed size: still unknown

    exporter = ExportWidget(viewer)
    out = tmp_path / "pairs"
    exporter._folder.value = out
    exporter._mode.value = "all"
    _refused(exporter, messages, out, "pixel size of 'uncal' is unknown")

    seg.pixel_size.value = 2.0
    np.testing.assert_allclose(granules.scale, (2.0, 2.0))
    assert exporter.export() is not None
    qtbot.waitUntil(lambda: not exporter.busy, timeout=20000)
    rows = _manifest(out / "granules")
    assert len(rows) == 4 and {float(r["pixel_size_nm"]) for r in rows} == {2.0}
