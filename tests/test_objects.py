"""Granule particles as GeoJSON objects for QuPath: valid GeoJSON, one feature per particle of
the table, outlines where the particles are, sizes in nm, and the CLI writing one file per map."""

from __future__ import annotations

import json

import geojson
import numpy as np
import pandas as pd
import pytest

from napari_emgranules.cli import main
from napari_emgranules.core.io import write_labels
from napari_emgranules.core.measure import granule_objects
from napari_emgranules.core.objects import particles_geojson, write_geojson
from napari_emgranules.core.synthetic import synthetic_micrograph


def test_each_particle_becomes_a_valid_feature_with_its_outline_and_sizes(tmp_path):
    m = synthetic_micrograph((1024, 1024), 0.8, seed=310_000)
    particle_map, table = granule_objects(m.granules, m.locations, pixel_size_nm=0.8, image="m")
    collection = particles_geojson(particle_map, table, pixel_size_nm=0.8, image="m")
    parsed = geojson.loads(json.dumps(collection))
    assert parsed.is_valid, parsed.errors()
    features = collection["features"]
    assert len(features) == len(table) > 10  # one object per particle of the table
    for feature, (_, row) in zip(features, table.iterrows(), strict=True):
        ring = np.asarray(feature["geometry"]["coordinates"][0])
        assert (ring[0] == ring[-1]).all()
        x, y = ring[:, 0].mean(), ring[:, 1].mean()  # the outline surrounds the particle's centroid
        assert abs(x - (row["col"] + 0.5)) < 3 and abs(y - (row["row"] + 0.5)) < 3
        props = feature["properties"]
        assert props["objectType"] == "detection" and props["classification"]["name"] == "Glycogen granule"
        assert props["measurements"]["Equivalent diameter nm"] == pytest.approx(row["equivalent_diameter_nm"])
        assert props["region"] == row["region"]
    assert collection["napari-emgranules"]["pixel_size_nm"] == 0.8
    # kept only, and no silent overwrite
    kept = particles_geojson(particle_map, table, pixel_size_nm=0.8, kept_only=True)
    assert len(kept["features"]) == int(table["kept"].sum())
    path = write_geojson(collection, tmp_path / "m.geojson")
    with pytest.raises(FileExistsError, match="exists already"):
        write_geojson(collection, path)


def test_measure_writes_one_geojson_per_label_map(tmp_path):
    m = synthetic_micrograph((256, 256), 0.8, seed=6)
    for name in ("a", "b"):
        write_labels(tmp_path / "locations" / f"{name}.png", m.locations, pixel_size_nm=0.8)
        write_labels(tmp_path / "granules" / f"{name}.png", m.granules, pixel_size_nm=0.8)
    rc = main(["measure", str(tmp_path / "locations"), str(tmp_path / "granules"), "--out",
               str(tmp_path / "d.csv"), "--particles", str(tmp_path / "p.csv"), "--objects",
               str(tmp_path / "objects"), "--quiet"])
    assert rc == 0
    particles = pd.read_csv(tmp_path / "p.csv")
    for name in ("a", "b"):
        collection = json.loads((tmp_path / "objects" / f"{name}.geojson").read_text())
        assert len(collection["features"]) == int((particles["image"] == name).sum())
    rc = main(["measure", str(tmp_path / "locations"), str(tmp_path / "granules"), "--out",
               str(tmp_path / "d2.csv"), "--objects", str(tmp_path / "objects"), "--quiet"])
    assert rc == 2  # an existing object file is not replaced without --overwrite


def test_particles_as_an_imagej_roi_set_that_roifile_reads_back(tmp_path):
    roifile = pytest.importorskip("roifile")
    from napari_emgranules.core.objects import particles_imagej_rois, write_imagej_rois

    m = synthetic_micrograph((512, 512), 0.8, seed=310_000)
    particle_map, table = granule_objects(m.granules, m.locations, pixel_size_nm=0.8, image="m")
    path = write_imagej_rois(particles_imagej_rois(particle_map, table), tmp_path / "m.roi.zip")
    rois = roifile.roiread(path)
    rois = rois if isinstance(rois, list) else [rois]
    assert len(rois) == len(table) > 0
    features = particles_geojson(particle_map, table, pixel_size_nm=0.8)["features"]
    for roi, feature, (_, row) in zip(rois, features, table.iterrows(), strict=True):
        ring = np.asarray(feature["geometry"]["coordinates"][0])[:-1]  # the same outline as QuPath's
        np.testing.assert_allclose(roi.coordinates(), ring, atol=1e-3)
        assert roi.name == f"granule {int(row['particle'])} ({row['region']})"
    with pytest.raises(FileExistsError):
        write_imagej_rois([], path)
    empty = write_imagej_rois([], tmp_path / "none.roi.zip")
    assert empty.stat().st_size > 0


def test_regions_as_outlined_annotations(tmp_path):
    from napari_emgranules.core.objects import regions_geojson
    from napari_emgranules.core.schema import LOCATIONS_SCHEMA

    m = synthetic_micrograph((512, 512), 0.8, seed=1)
    loc = np.zeros((200, 300), np.uint8)
    loc[20:120, 30:200] = 1  # an A band with a hole of I band inside
    loc[50:80, 60:100] = 2
    loc[150:152, 10:12] = 3  # a speck: below min_area_px
    collection = regions_geojson(loc, pixel_size_nm=0.8, image="t")
    parsed = geojson.loads(json.dumps(collection))
    assert parsed.is_valid, parsed.errors()
    by_region = {f["properties"]["region"]: f for f in collection["features"]}
    assert set(by_region) == {"A", "I"}
    outer, *holes = by_region["A"]["geometry"]["coordinates"]
    xs, ys = np.asarray(outer)[:, 0], np.asarray(outer)[:, 1]
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == pytest.approx((30, 200, 20, 120), abs=1)
    assert len(holes) == 1  # the I band inside
    assert by_region["A"]["properties"]["measurements"]["Area px"] == (loc == 1).sum()
    assert by_region["A"]["properties"]["classification"]["name"] == LOCATIONS_SCHEMA.names[1]
    real = regions_geojson(m.locations, pixel_size_nm=0.8)
    assert len(real["features"]) > 0
