"""3D Slicer .seg.nrrd segmentations as label maps: names to classes, layers, overlaps, unlabelled
pixels, the CLI's export, and bad files."""

from __future__ import annotations

import csv

import nrrd
import numpy as np
import pytest
from test_cli import run_cli

from napari_emgranules.core.dataset import pairs_from_files
from napari_emgranules.core.io import MicrographError, read_labels, write_image
from napari_emgranules.core.schema import GRANULES_SCHEMA, LOCATIONS_SCHEMA, UNLABELLED
from napari_emgranules.core.slicer import SegmentationFileError, parse_segment_map, read_seg_nrrd

SHAPE = (64, 80)


def slicer_file(path, segments, layers):
    """Write ``layers`` (list of 2-D arrays) as 3D Slicer does: (layers, z, y, x) when there are
    several, (z, y, x) for one, with Segment<i>_Name/_Layer/_LabelValue in the header."""
    data = np.stack([layer[None] for layer in layers]) if len(layers) > 1 else layers[0][None]
    header = {"type": "unsigned char", "encoding": "gzip"}
    if len(layers) > 1:
        header["kinds"] = ["list", "domain", "domain", "domain"]
    for i, (name, layer, value) in enumerate(segments):
        header[f"Segment{i}_Name"] = name
        header[f"Segment{i}_Layer"] = str(layer)
        header[f"Segment{i}_LabelValue"] = str(value)
    nrrd.write(str(path), data.astype(np.uint8), header, index_order="C")
    return path


@pytest.fixture
def muscle(tmp_path):
    regions = np.zeros(SHAPE, np.uint8)
    regions[:, :20], regions[:, 20:40], regions[:, 40:44], regions[:, 44:60] = 1, 2, 3, 4
    glycogen = np.zeros(SHAPE, np.uint8)
    glycogen[10:14, 10:14] = 1  # a granule in the A band (another layer: they overlap)
    segments = [("A-band", 0, 1), ("I band", 0, 2), ("Z-disc", 0, 3), ("Sarcolemma", 0, 4),
                ("glycogen", 1, 1)]
    return slicer_file(tmp_path / "cell.seg.nrrd", segments, [regions, glycogen])


def test_segment_names_become_the_schemas_classes(muscle):
    labels, info = read_seg_nrrd(muscle, LOCATIONS_SCHEMA)
    assert labels.dtype == np.uint16 and labels.shape == SHAPE
    assert (labels[:, :20] == 1).all() and (labels[:, 20:40] == 2).all() and (labels[:, 40:44] == 3).all()
    # an unknown name and pixels in no segment: not labelled; glycogen is the other model's
    assert (labels[:, 44:] == UNLABELLED).all()
    assert info["segments"] == {"A-band": 1, "I band": 2, "Z-disc": 3}
    assert info["left_out"] == ["Sarcolemma", "glycogen (the other model's)"]
    # the user's map over the defaults
    mapped, info = read_seg_nrrd(muscle, LOCATIONS_SCHEMA, segment_map=parse_segment_map("Sarcolemma=5"))
    assert (mapped[:, 44:60] == 5).all() and (mapped[:, 60:] == UNLABELLED).all()
    # the granule layer for the Granules model, the rest background when asked
    granules, info = read_seg_nrrd(muscle, GRANULES_SCHEMA, unsegmented=0)
    assert granules.sum() == 16 and set(np.unique(granules)) == {0, 1}


def test_the_model_is_guessed_from_the_names_or_asked_for(muscle, tmp_path):
    with pytest.raises(SegmentationFileError, match="not all for one model"):
        read_seg_nrrd(muscle)
    only = np.zeros(SHAPE, np.uint8)
    only[5:9, 5:9] = 1
    gly = slicer_file(tmp_path / "g.seg.nrrd", [("Glycogen granules", 0, 1)], [only])
    labels = read_labels(gly)
    assert labels[6, 6] == 1 and labels[0, 0] == UNLABELLED
    # whole micrographs with .seg.nrrd labels train directly
    write_image(tmp_path / "g.tif", np.full(SHAPE, 100, np.uint8), pixel_size_nm=0.8)
    pairs = pairs_from_files([(tmp_path / "g.tif", gly)], schema=GRANULES_SCHEMA)
    assert len(pairs) == 1


def test_overlaps_go_to_the_measured_class(tmp_path):
    a = np.zeros(SHAPE, np.uint8)
    a[:, :30] = 1
    other = np.zeros(SHAPE, np.uint8)
    other[:, 20:50] = 1  # "other" (not measured) listed later, overlapping the A band
    path = slicer_file(tmp_path / "o.seg.nrrd", [("A band", 0, 1), ("Other", 1, 1)], [a, other])
    labels, _ = read_seg_nrrd(path, LOCATIONS_SCHEMA)
    assert (labels[:, :30] == 1).all() and (labels[:, 30:50] == 6).all()


def test_export_takes_a_slicer_segmentation(muscle, tmp_path):
    write_image(tmp_path / "cell.tif", np.full(SHAPE, 120, np.uint8), pixel_size_nm=2.0)
    code, stdout, stderr = run_cli("export", tmp_path / "cell.tif", "--labels", muscle, "--model",
                                   "locations", "--tile-size", "128", "--segment-map", "Sarcolemma=5",
                                   "--out", tmp_path / "pairs")
    assert code == 0, stderr
    assert "A-band -> 1" in stdout and "Sarcolemma -> 5" in stdout
    with open(tmp_path / "pairs" / "manifest.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and float(rows[0]["labelled_fraction"]) == pytest.approx(60 / 80)


def test_bad_segmentation_files_are_named(tmp_path):
    broken = tmp_path / "broken.seg.nrrd"
    broken.write_bytes(b"NRRD0004\ntype: what\n\n\x00\x01")
    with pytest.raises(MicrographError, match="broken.seg.nrrd: not a readable NRRD file"):
        read_labels(broken, LOCATIONS_SCHEMA)
    plain = tmp_path / "plain.nrrd"
    nrrd.write(str(plain), np.zeros((1, 8, 8), np.uint8), index_order="C")
    with pytest.raises(MicrographError, match="names no segments"):
        read_labels(plain, LOCATIONS_SCHEMA)
    stack = tmp_path / "stack.seg.nrrd"
    nrrd.write(str(stack), np.zeros((3, 8, 8), np.uint8), {"Segment0_Name": "A band",
                                                           "Segment0_LabelValue": "1"}, index_order="C")
    with pytest.raises(SegmentationFileError, match="3 slices"):
        read_seg_nrrd(stack, LOCATIONS_SCHEMA)
    strangers = slicer_file(tmp_path / "s.seg.nrrd", [("Tumour", 0, 1)], [np.ones(SHAPE, np.uint8)])
    with pytest.raises(SegmentationFileError, match="none of its segments .Tumour. is a class"):
        read_seg_nrrd(strangers, LOCATIONS_SCHEMA)
    with pytest.raises(ValueError, match="NAME=CODE"):
        parse_segment_map("myofibril")
