"""The napari plugin through its manifest, in a real viewer (run under ``xvfb-run``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_emgranules._reader import napari_get_reader
from napari_emgranules.core.io import read_micrograph

PLUGIN = "napari-emgranules"


def _chain_text(exc: BaseException) -> str:
    """All messages in an exception's cause/context chain (napari wraps reader errors)."""
    texts, seen = [], set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        texts.append(f"{type(e).__name__}: {e}")
        todo.extend([e.__cause__, e.__context__])
    return "\n".join(texts)


# -------------------------------------------------------------------------------------------------
# manifest
# -------------------------------------------------------------------------------------------------
def test_manifest_loads_from_the_installed_distribution():
    import npe2

    manifest = npe2.PluginManifest.from_distribution(PLUGIN)
    assert manifest.name == PLUGIN
    contributions = manifest.contributions
    (reader,) = contributions.readers
    assert "*.tif" in reader.filename_patterns and "*.png" in reader.filename_patterns
    assert [s.key for s in contributions.sample_data] == ["synthetic-muscle", "synthetic-muscle-4096"]
    # every command's python_name resolves to a callable
    for command in contributions.commands:
        module, _, attr = command.python_name.partition(":")
        assert callable(getattr(__import__(module, fromlist=[attr]), attr)), command.id


def test_npe2_validate_passes():
    npe2_exe = Path(sys.executable).parent / "npe2"
    assert npe2_exe.is_file(), "npe2 is not installed next to python"
    proc = subprocess.run([str(npe2_exe), "validate", PLUGIN], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "valid" in proc.stdout.lower()


# -------------------------------------------------------------------------------------------------
# reader
# -------------------------------------------------------------------------------------------------
def test_reader_declines_unsupported_files():
    assert napari_get_reader("x.czi") is None
    assert napari_get_reader(["a.tif", "b.czi"]) is None
    assert napari_get_reader([]) is None
    assert callable(napari_get_reader("x.TIF"))
    assert callable(napari_get_reader(["a.tif", "b.png"]))


def test_viewer_opens_micrograph_with_its_pixel_size(make_napari_viewer, write_micrograph):
    path = write_micrograph("calibrated.tif", shape=(256, 320), pixel_size_nm=1.2, seed=1)
    viewer = make_napari_viewer()
    layers = viewer.open(path, plugin=PLUGIN)
    assert len(layers) == 1 and len(viewer.layers) == 1
    (layer,) = layers
    assert layer._type_string == "image"
    assert layer.name == "calibrated"
    np.testing.assert_allclose(layer.scale, (1.2, 1.2), rtol=1e-6)
    assert [str(u) for u in layer.units] == ["nanometer", "nanometer"]
    assert layer.metadata["pixel_size_source"] == "metadata:tiff-resolution"
    assert layer.metadata["pixel_size_nm"] == pytest.approx(1.2, rel=1e-6)
    expected = read_micrograph(path).data
    assert layer.data.dtype == expected.dtype == np.uint16
    np.testing.assert_array_equal(np.asarray(layer.data), expected)


def test_viewer_reports_corrupt_file_by_name(make_napari_viewer, tmp_path):
    corrupt = tmp_path / "x.tif"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    viewer = make_napari_viewer()
    with pytest.raises(Exception) as info:  # noqa: B017 - napari may wrap the reader's error
        viewer.open(corrupt, plugin=PLUGIN)
    text = _chain_text(info.value)
    assert "x.tif" in text, text
    assert "MicrographError" in text, text
    assert len(viewer.layers) == 0


# -------------------------------------------------------------------------------------------------
# sample data
# -------------------------------------------------------------------------------------------------
def test_sample_adds_image_and_two_labels_layers(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "synthetic-muscle")
    assert [layer._type_string for layer in viewer.layers] == ["image", "labels", "labels"]
    image, locations, granules = viewer.layers
    assert image.data.shape == locations.data.shape == granules.data.shape
    for layer in viewer.layers:
        np.testing.assert_allclose(layer.scale, (0.8, 0.8))
        assert [str(u) for u in layer.units] == ["nanometer", "nanometer"]
    for labels in (locations, granules):
        assert np.issubdtype(labels.data.dtype, np.integer)
    assert int(locations.data.max()) < 7 and set(np.unique(granules.data)) <= {0, 1}

    # codes are coloured by class: A band (1) and I band (2) differ, unclassified is transparent
    c1, c2 = (np.asarray(locations.get_color(code)) for code in (1, 2))
    assert c1.shape == c2.shape == (4,)
    assert not np.allclose(c1, c2)
    mapped = np.asarray(locations.colormap.map(np.array([1, 2])))
    assert not np.allclose(mapped[0], mapped[1])
    assert np.asarray(locations.colormap.map(np.array([0])))[0][3] == 0  # transparent

    # the features table names every code
    features = locations.features
    names = dict(zip(features["index"], features["class"], strict=True))
    assert names[1] == "A band"
    assert set(names) == set(range(7))
    granule_names = dict(zip(granules.features["index"], granules.features["class"], strict=True))
    assert granule_names[1] == "granule"


def test_qt_binding_does_not_leak_references_to_none(qapp):
    """PySide6 6.12.0 loses a reference to None per void Qt call; Python < 3.12 then aborts
    ("none_dealloc") after enough of them, i.e. during any long napari session (pyproject pins it)."""
    from qtpy.QtWidgets import QPushButton

    button = QPushButton()
    before = sys.getrefcount(None)
    for _ in range(1000):
        button.setEnabled(True)
    assert sys.getrefcount(None) - before > -100


def test_every_manifest_widget_opens_in_workflow_order(make_napari_viewer):
    import npe2

    from napari_emgranules._widgets.density import DensityWidget
    from napari_emgranules._widgets.export import ExportWidget
    from napari_emgranules._widgets.grid import PointGridWidget
    from napari_emgranules._widgets.review import ReviewWidget
    from napari_emgranules._widgets.segment import SegmentWidget
    from napari_emgranules._widgets.train import TrainWidget

    manifest = npe2.PluginManifest.from_distribution(PLUGIN)
    names = [w.display_name for w in manifest.contributions.widgets]
    assert names == ["1. Segment", "2. Review and correct", "3. Export training data", "4. Train",
                     "5. Density table", "6. Point grid"]
    menus = {menu: [item.command for item in items] for menu, items in manifest.contributions.menus.items()}
    assert "napari-emgranules.segment_widget" in menus["napari/layers/segment"]
    assert "napari-emgranules.density_widget" in menus["napari/layers/measure"]
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "synthetic-muscle")
    classes = [SegmentWidget, ReviewWidget, ExportWidget, TrainWidget, DensityWidget, PointGridWidget]
    for name, cls in zip(names, classes, strict=True):
        dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        assert isinstance(widget, cls), name
        assert dock is not None


def test_prefer_reader_sets_napari_s_extension_mapping_only_for_the_shared_patterns():
    from types import SimpleNamespace

    from napari_emgranules._reader import SHARED_PATTERNS, prefer_this_reader

    settings = SimpleNamespace(plugins=SimpleNamespace(extension2reader={"*.czi": "other",
                                                                         "*.dm4": "napari-rosettasciio"}))
    mapping = prefer_this_reader(settings)
    assert mapping["*.czi"] == "other"  # the user's other choices stay
    assert all(mapping[p] == "napari-emgranules" for p in SHARED_PATTERNS)
    assert settings.plugins.extension2reader == mapping
