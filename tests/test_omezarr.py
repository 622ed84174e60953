"""OME-Zarr: micrographs in (any writer's store), results out (read back with ome-zarr-py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
from ome_zarr.writer import write_image

from napari_emgranules._reader import napari_get_reader
from napari_emgranules.cli import main as cli
from napari_emgranules.core.io import MicrographError, file_sha256, read_labels, read_micrograph
from napari_emgranules.core.omezarr import is_ome_zarr, write_ome_zarr
from napari_emgranules.core.schema import GRANULES_SCHEMA, LOCATIONS_SCHEMA
from napari_emgranules.core.synthetic import synthetic_micrograph


@pytest.fixture(scope="module")
def cell():
    return synthetic_micrograph((256, 320), 0.8, seed=2, dtype="uint16")


def level0(group) -> np.ndarray:
    """The full-resolution array of an OME-Zarr (label) image group."""
    attrs = group.attrs.asdict()
    multiscales = attrs.get("ome", attrs)["multiscales"]
    return np.asarray(group[multiscales[0]["datasets"][0]["path"]])


def _store(path, data, axes, scale, units):
    root = zarr.open_group(str(path), mode="w")
    write_image(data, root, axes=axes, scale=scale, axes_units=units, scale_factors=(2,))
    return path


def test_results_store_reads_back_with_ome_zarr_py(tmp_path, cell):
    path = write_ome_zarr(tmp_path / "cell.ome.zarr",
                          {"locations": (cell.locations, LOCATIONS_SCHEMA),
                           "granules": (cell.granules, GRANULES_SCHEMA)},
                          pixel_size_nm=0.8, image=cell.image)
    assert is_ome_zarr(path) and not list(tmp_path.glob(".*tmp"))
    (image,) = [n for n in Reader(parse_url(str(path)))() if n.metadata.get("name") == "image"]
    np.testing.assert_array_equal(np.asarray(image.data[0]), cell.image)
    assert image.metadata["coordinateTransformations"][0][0]["scale"] == pytest.approx([0.8, 0.8])
    assert [a["unit"] for a in image.metadata["axes"]] == ["nanometer", "nanometer"]
    for kind, truth, schema in (("locations", cell.locations, LOCATIONS_SCHEMA),
                                ("granules", cell.granules, GRANULES_SCHEMA)):
        group = zarr.open_group(str(path / "labels" / kind), mode="r")
        np.testing.assert_array_equal(level0(group), truth)
        label = group.attrs.asdict().get("ome", group.attrs.asdict())["image-label"]
        assert [p["name"] for p in label["properties"]] == [c.name for c in schema.classes]
        first = schema.classes[1]
        rgba = next(c["rgba"] for c in label["colors"] if c["label-value"] == first.code)
        assert "#" + "".join(f"{v:02x}" for v in rgba[:3]) == first.color.lower()[:7]
    with pytest.raises(FileExistsError):
        write_ome_zarr(path, {"granules": (cell.granules, GRANULES_SCHEMA)}, pixel_size_nm=0.8)
    with pytest.raises(ValueError, match="differ in shape"):
        write_ome_zarr(tmp_path / "bad.ome.zarr", {"granules": (cell.granules[:10], GRANULES_SCHEMA)},
                       pixel_size_nm=0.8, image=cell.image)
    assert not (tmp_path / "bad.ome.zarr").exists()


def test_any_writers_2d_plane_is_a_micrograph_with_its_pixel_size(tmp_path, cell):
    tczyx = cell.image[None, None, None]  # singleton t, c, z: one plane
    path = _store(tmp_path / "em.ome.zarr", tczyx, "tczyx", {"t": 1, "c": 1, "z": 0.07, "y": 0.0012,
                                                              "x": 0.0012},
                  {"t": "second", "z": "micrometer", "y": "micrometer", "x": "micrometer"})
    m = read_micrograph(path)
    assert m.name == "em" and m.data.shape == cell.image.shape and m.data.dtype == np.uint16
    np.testing.assert_array_equal(m.data, cell.image)
    assert m.pixel_size_nm == pytest.approx(1.2) and m.pixel_size_source == "metadata:ome-zarr"
    no_unit = _store(tmp_path / "plain.zarr", cell.image, "yx", {"y": 2.0, "x": 2.0}, None)
    assert read_micrograph(no_unit, 0.9).pixel_size_source == "user"  # no unit: no calibration
    # a folder that is a store goes through the napari reader; another folder does not
    assert napari_get_reader(str(path)) is not None
    assert napari_get_reader(str(tmp_path)) is None
    assert file_sha256(path) == file_sha256(path)  # a store's digest is stable (batch reruns)


def test_bad_stores_are_named_problems(tmp_path, cell):
    stack = _store(tmp_path / "stack.ome.zarr", np.stack([cell.image] * 3), "zyx",
                   {"z": 1, "y": 1, "x": 1}, None)
    with pytest.raises(MicrographError, match="3 planes along 'z'"):
        read_micrograph(stack)
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(MicrographError, match="without Zarr metadata"):
        read_micrograph(tmp_path / "empty.zarr")
    broken = _store(tmp_path / "broken.ome.zarr", cell.image, "yx", {"y": 1, "x": 1}, None)
    (broken / "zarr.json").write_text("{not json")
    with pytest.raises(MicrographError, match="broken.ome.zarr"):
        read_micrograph(broken)
    no_image = tmp_path / "group.zarr"
    zarr.open_group(str(no_image), mode="w").attrs["note"] = json.dumps({"x": 1})
    with pytest.raises(MicrographError, match="no OME-Zarr image"):
        read_micrograph(no_image)


def test_segment_and_batch_write_and_read_stores(tmp_path, cell):
    src = tmp_path / "in"
    src.mkdir()
    write_ome_zarr(src / "cell.ome.zarr", {}, pixel_size_nm=0.8, image=cell.image)
    out = tmp_path / "out"
    assert cli(["segment", str(src), "--out", str(out), "--format", "ome-zarr", "--quiet"]) == 0
    store = out / "ome-zarr" / "cell.ome.zarr"
    assert is_ome_zarr(store) and read_micrograph(store).pixel_size_nm == pytest.approx(0.8)
    assert cli(["segment", str(src), "--out", str(out), "--format", "ome-zarr", "--quiet"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["images"]["cell"]["status"] == "done"  # the rerun skipped it, unchanged
    assert cli(["batch", str(src / "cell.ome.zarr"), "--out", str(tmp_path / "b"), "--quiet"]) == 0
    granules = read_labels(tmp_path / "b" / "granules" / "cell.tif")
    np.testing.assert_array_equal(granules, level0(zarr.open_group(str(store / "labels" / "granules"),
                                                                  mode="r")))


def test_napari_saves_a_micrograph_and_its_label_layers_as_one_store(make_napari_viewer, tmp_path, cell):
    from napari_emgranules._widgets import _common

    viewer = make_napari_viewer()
    image = viewer.add_image(cell.image, name="cell", scale=(0.8, 0.8), units=("nm", "nm"))
    info = {"pixel_size_nm": 0.8, "pixel_size_source": "synthetic"}
    _common.show_labels(viewer, image, "locations", cell.locations, LOCATIONS_SCHEMA, info)
    _common.show_labels(viewer, image, "granules", cell.granules, GRANULES_SCHEMA, info)
    from napari_emgranules._writer import write_ome_zarr_layers

    # napari's own File > Save All Layers path, through the plugin's writer contribution
    (written,) = viewer.layers.save(str(tmp_path / "cell.zarr"), selected=False,
                                    plugin="napari-emgranules")
    m = read_micrograph(written)
    assert m.pixel_size_nm == pytest.approx(0.8)
    np.testing.assert_array_equal(m.data, cell.image)
    for kind, truth in (("locations", cell.locations), ("granules", cell.granules)):
        np.testing.assert_array_equal(level0(zarr.open_group(str(tmp_path / "cell.zarr" / "labels" / kind),
                                                             mode="r")), truth)
    # opened again in napari: the micrograph and its label layers, named, coloured, linked
    layers = napari_get_reader(written)(written)
    assert [t for _, _, t in layers] == ["image", "labels", "labels"]
    (_, image_meta, _), *labelled = layers
    assert image_meta["scale"] == pytest.approx((0.8, 0.8))
    for data, meta, _ in labelled:
        kind = meta["metadata"]["emgranules"]["kind"]
        assert meta["name"] == f"cell {kind}" and meta["scale"] == pytest.approx((0.8, 0.8))
        schema = LOCATIONS_SCHEMA if kind == "locations" else GRANULES_SCHEMA
        assert meta["colormap"][1].lower() == schema.classes[1].color.lower()
        assert meta["metadata"]["schema"]["classes"][1]["name"] == schema.classes[1].name
        np.testing.assert_array_equal(data, cell.locations if kind == "locations" else cell.granules)
    with pytest.raises(ValueError, match="at least one labels layer"):
        write_ome_zarr_layers(str(tmp_path / "x.zarr"), [image.as_layer_data_tuple()])
