"""Tests for napari_emgranules.core.dataset: training pairs on disk."""

from __future__ import annotations

import csv
import json
import logging
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from napari_emgranules.core import dataset as ds
from napari_emgranules.core.dataset import (
    MANIFEST_COLUMNS,
    OPTIONAL_COLUMNS,
    DatasetError,
    TrainingSet,
    export_training_pairs,
    load_training_pairs,
)
from napari_emgranules.core.io import (
    as_micrograph,
    read_labels,
    read_micrograph,
    write_image,
    write_labels,
)
from napari_emgranules.core.schema import GRANULES_SCHEMA, LOCATIONS_SCHEMA
from napari_emgranules.core.synthetic import synthetic_micrograph

TILE = 128


@pytest.fixture(scope="module")
def cell() -> tuple[np.ndarray, np.ndarray]:
    """A 256x256 uint16 micrograph and its Locations codes (4 tiles of 128 px)."""
    s = synthetic_micrograph((256, 256), 0.8, seed=3)
    return s.image, s.locations


def _manifest(root: Path) -> list[dict[str, str]]:
    with open(root / "manifest.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _export(cell, root: Path, **kwargs) -> list[ds.TrainingPair]:
    image, labels = cell
    kwargs.setdefault("schema", LOCATIONS_SCHEMA)
    kwargs.setdefault("tile_size", TILE)
    mg = as_micrograph(image, kwargs.pop("pixel_size_nm", 1.2), name="cell")
    return export_training_pairs(mg, labels, root, **kwargs)


def _raises_listing(*words: str):
    """pytest.raises(DatasetError) whose message must contain every one of ``words``."""

    class _Check:
        def __enter__(self):
            self.ctx = pytest.raises(DatasetError)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            suppressed = self.ctx.__exit__(*exc)
            message = str(self.info.value)
            for word in words:
                assert word in message, f"{word!r} not in:\n{message}"
            return suppressed

    return _Check()


# ------------------------------------------------------------------------------------------
# Export
# ------------------------------------------------------------------------------------------


def test_export_writes_tiles_manifest_and_schema(cell, tmp_path):
    root = tmp_path / "train"
    pairs = _export(cell, root, made_by="locations model (untrained)")

    names = [f"cell_{k}.png" for k in range(4)]
    assert [p.name for p in pairs] == names
    assert sorted(p.name for p in (root / "images").iterdir()) == names
    assert sorted(p.name for p in (root / "labels").iterdir()) == names
    assert [p.origin for p in pairs] == [(0, 0), (0, 128), (128, 0), (128, 128)]
    assert {p.made_by for p in pairs} == {"locations model (untrained)"}
    assert {p.source for p in pairs} == {"cell"}
    assert pairs[0].image_path == root / "images" / "cell_0.png"

    rows = _manifest(root)
    assert list(rows[0]) == list(MANIFEST_COLUMNS) + list(OPTIONAL_COLUMNS)
    assert [r["name"] for r in rows] == names
    assert [(int(r["y"]), int(r["x"])) for r in rows] == [p.origin for p in pairs]
    assert {(r["height"], r["width"]) for r in rows} == {("128", "128")}
    assert {r["pixel_size_nm"] for r in rows} == {"1.2"}
    assert {r["schema_kind"] for r in rows} == {"locations"}
    assert {r["made_by"] for r in rows} == {"locations model (untrained)"}
    created = datetime.fromisoformat(rows[0]["created"])
    assert created.utcoffset() == timezone.utc.utcoffset(None)
    assert json.loads((root / "schema.json").read_text()) == LOCATIONS_SCHEMA.to_dict()

    # pixel size is also in the files' metadata; labels are stored as uint16
    mg = read_micrograph(root / "images" / "cell_3.png")
    assert mg.pixel_size_nm == pytest.approx(1.2, rel=1e-6)
    assert mg.pixel_size_source == "metadata:png"
    image, labels = cell
    np.testing.assert_array_equal(mg.data, image[128:, 128:])
    stored = read_labels(root / "labels" / "cell_3.png")
    assert stored.dtype == np.uint16
    np.testing.assert_array_equal(stored, labels[128:, 128:])


def test_export_then_load_round_trip(cell, tmp_path):
    root = tmp_path / "train"
    written = _export(cell, root)
    loaded = load_training_pairs(root)
    assert isinstance(loaded, TrainingSet)
    assert len(loaded) == 4
    assert list(loaded) == written
    assert loaded.schema == LOCATIONS_SCHEMA
    assert loaded.roots == [root]
    assert loaded.pixel_sizes() == [1.2] * 4
    image, labels = cell
    for pair in loaded:
        y, x = pair.origin
        got_image, got_labels = pair.load()
        assert got_image.dtype == np.uint16
        assert got_image.flags.writeable and got_labels.flags.writeable
        np.testing.assert_array_equal(got_image, image[y:y + TILE, x:x + TILE])
        np.testing.assert_array_equal(got_labels, labels[y:y + TILE, x:x + TILE])
    assert loaded[1].name == "cell_1.png"
    assert len(loaded[1:3]) == 2


def test_export_tif_and_array_source(cell, tmp_path):
    image, labels = cell
    root = tmp_path / "train"
    # an array has no pixel size of its own: it is asked for, never guessed
    with pytest.raises(DatasetError, match="fibre:7.tif: the micrograph has no pixel size"):
        export_training_pairs(image, labels, root, schema=LOCATIONS_SCHEMA, tile_size=TILE,
                              tiles=[3], source="/data/run 1/fibre:7.tif")
    assert not root.exists()
    pairs = export_training_pairs(image, labels, root, schema=LOCATIONS_SCHEMA, tile_size=TILE,
                                  tiles=[3], source="/data/run 1/fibre:7.tif", image_format="tif",
                                  pixel_size_nm=1.6)
    assert [p.name for p in pairs] == ["fibre_7_3.tif"]
    assert (root / "labels" / "fibre_7_3.tif").is_file()
    assert pairs[0].source == "/data/run 1/fibre:7.tif"
    assert pairs[0].pixel_size_nm == 1.6
    np.testing.assert_array_equal(load_training_pairs(root)[0].load()[1], labels[128:, 128:])

    # an array without a source is named "tile"
    pairs = export_training_pairs(image, labels, root, schema=LOCATIONS_SCHEMA, tile_size=TILE, tiles=[0],
                                  pixel_size_nm=1.6)
    assert pairs[0].name == "tile_0.png" and pairs[0].source == ""


def test_edge_tiles_numbering_and_unknown_tiles(tmp_path):
    s = synthetic_micrograph((256, 150), 0.8, seed=1)  # 2 x 2 grid; right column only 22 px wide
    mg = as_micrograph(s.image, 0.8, name="edge")
    pairs = export_training_pairs(mg, s.locations, tmp_path, schema=LOCATIONS_SCHEMA, tile_size=TILE)
    assert [p.name for p in pairs] == ["edge_0.png", "edge_2.png"]
    assert [p.origin for p in pairs] == [(0, 0), (128, 0)]

    with pytest.raises(ValueError, match=r"\[7, -1\].*0\.\.3"):
        export_training_pairs(mg, s.locations, tmp_path, schema=LOCATIONS_SCHEMA, tile_size=TILE,
                              tiles=[0, 7, -1])
    with pytest.raises(ValueError, match=r"\[1\] are edge tiles smaller than 32"):
        export_training_pairs(mg, s.locations, tmp_path, schema=LOCATIONS_SCHEMA, tile_size=TILE,
                              tiles=[1])

    s = synthetic_micrograph((256, 300), 0.8, seed=1)  # right column 44 px wide: kept
    pairs = export_training_pairs(s.image, s.locations, tmp_path / "b", schema=LOCATIONS_SCHEMA,
                                  tile_size=TILE, source="wide", pixel_size_nm=0.8)
    assert [p.name for p in pairs] == [f"wide_{k}.png" for k in range(6)]
    assert pairs[2].load()[0].shape == (128, 44)


def test_second_export_supersedes_the_same_tile_and_never_deletes(cell, tmp_path):
    image, labels = cell
    root = tmp_path / "train"
    _export(cell, root, tiles=[0, 1])
    first_tile1 = (root / "labels" / "cell_1.png").read_bytes()

    relabelled = labels.copy()
    relabelled[:, 128:] = 2  # the user corrected tile 1 again
    again = _export((image, relabelled), root, tiles=[1, 2])
    assert [p.name for p in again] == ["cell_1.png", "cell_2.png"]
    # one pair per tile trains: the manifest lists each tile once, with its latest labels
    assert [r["name"] for r in _manifest(root)] == ["cell_0.png", "cell_1.png", "cell_2.png"]
    assert len(load_training_pairs(root)) == 3
    assert (read_labels(root / "labels" / "cell_1.png") == 2).all()
    # the older pair is kept, with its manifest row, under superseded/<time>/
    (kept,) = (root / "superseded").iterdir()
    assert (kept / "labels" / "cell_1.png").read_bytes() == first_tile1
    assert (kept / "images" / "cell_1.png").is_file()
    assert [r["name"] for r in _manifest(kept)] == ["cell_1.png"]

    # another micrograph's tile of the same number is not superseded: its name gets -2
    other = as_micrograph(image, 1.2, name="cell")
    pairs = export_training_pairs(other, labels, root, schema=LOCATIONS_SCHEMA, tile_size=TILE,
                                  tiles=[0], source="elsewhere/cell.tif")
    assert [p.name for p in pairs] == ["cell_0-2.png"]
    # a name taken by a file of another suffix is also avoided
    (root / "labels" / "cell_3.tif").write_bytes(b"x")
    assert [p.name for p in _export(cell, root, tiles=[3])] == ["cell_3-2.png"]


def test_only_changed_from_writes_changed_tiles(cell, tmp_path, caplog):
    _, prediction = cell
    corrected = prediction.copy()
    corrected[5, 200] = (corrected[5, 200] + 1) % 7  # tile 1
    corrected[130:140, 10:20] = 4  # tile 2
    assert not np.array_equal(corrected[130:140, 10:20], prediction[130:140, 10:20])
    root = tmp_path / "train"
    pairs = _export((cell[0], corrected), root, only_changed_from=prediction)
    assert [p.name for p in pairs] == ["cell_1.png", "cell_2.png"]
    assert len(_manifest(root)) == 2

    untouched = tmp_path / "untouched"
    with caplog.at_level(logging.INFO, logger="napari_emgranules.core.dataset"):
        assert _export(cell, untouched, only_changed_from=prediction) == []
    assert not untouched.exists()
    assert "no labels changed" in caplog.text


def test_invalid_input_is_refused_before_writing(cell, tmp_path):
    image, labels = cell
    root = tmp_path / "train"
    bad = labels.astype(np.int32)
    bad[3, 3], bad[200, 7] = 9, -1
    with _raises_listing("[-1, 9]", "locations", "0..6", "nothing was written"):
        export_training_pairs(image, bad, root, schema=LOCATIONS_SCHEMA, tile_size=TILE)
    with _raises_listing("float32", "8- or 16-bit"):
        export_training_pairs(image.astype(np.float32), labels, root, schema=LOCATIONS_SCHEMA)
    with _raises_listing("256x128", "256x256"):
        export_training_pairs(image, labels[:, :128], root, schema=LOCATIONS_SCHEMA)
    with _raises_listing("only_changed_from is 10x10"):
        export_training_pairs(image, labels, root, schema=LOCATIONS_SCHEMA,
                              only_changed_from=np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="image_format"):
        export_training_pairs(image, labels, root, schema=LOCATIONS_SCHEMA, image_format="jpg")
    with pytest.raises(ValueError, match="tiles must be 'all'"):
        export_training_pairs(image, labels, root, schema=LOCATIONS_SCHEMA, tiles="some")
    assert not root.exists()

    # a folder holding another schema's labels is refused, nothing added
    _export(cell, root, tiles=[0])
    before = _files(root)
    with _raises_listing("schema.json", "'locations'", "'granules'", "another folder"):
        export_training_pairs(image, (labels > 2).astype(np.uint8), root, schema=GRANULES_SCHEMA,
                              tile_size=TILE, pixel_size_nm=0.8)
    assert _files(root) == before


def test_failed_write_removes_the_files_of_the_call(cell, tmp_path, monkeypatch):
    root = tmp_path / "train"
    _export(cell, root, tiles=[0])
    before = _files(root)
    calls = []

    def failing_write_labels(path, labels, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device", str(path))
        return write_labels(path, labels, **kwargs)

    monkeypatch.setattr(ds, "write_labels", failing_write_labels)
    with pytest.raises(OSError, match="No space left"):
        _export(cell, root)
    assert _files(root) == before

    fresh = tmp_path / "fresh"
    calls.clear()
    with pytest.raises(OSError):
        _export(cell, fresh)
    assert not fresh.exists()


# ------------------------------------------------------------------------------------------
# Loading and validation
# ------------------------------------------------------------------------------------------


def _bare_root(root: Path, n: int = 2, **pixel_sizes: float) -> Path:
    """The original tool's layout: images/ and labels/ only, no manifest, no schema."""
    for k in range(n):
        s = synthetic_micrograph((64, 96), 0.8, seed=k, dtype="uint8")
        name = f"cell_{k}"
        write_image(root / "images" / f"{name}.tif", s.image, pixel_size_nm=pixel_sizes.get(name))
        write_labels(root / "labels" / f"{name}.png", s.locations)
    return root


def test_bare_seed_layout_loads(tmp_path):
    root = _bare_root(tmp_path / "seed", cell_1=1.5)
    loaded = load_training_pairs(str(root))
    assert [p.name for p in loaded] == ["cell_0.tif", "cell_1.tif"]
    assert loaded.schema is None
    assert [(p.source, p.origin, p.made_by) for p in loaded] == [("", None, "unknown")] * 2
    assert loaded.pixel_sizes() == [0.8, pytest.approx(1.5)]
    assert loaded[0].labels_path == root / "labels" / "cell_0.png"
    image, labels = loaded[0].load()
    assert image.dtype == np.uint8 and labels.shape == (64, 96)

    # a schema argument checks the codes
    assert load_training_pairs(root, schema=LOCATIONS_SCHEMA).schema == LOCATIONS_SCHEMA
    with _raises_listing("cell_1.png", "not in the granules schema"):  # it holds codes above 1
        load_training_pairs(root, schema=GRANULES_SCHEMA)


def test_load_reports_every_problem_with_file_names(cell, tmp_path):
    root = tmp_path / "train"
    _export(cell, root)
    labels = root / "labels"
    (labels / "cell_1.png").unlink()  # image without labels
    write_labels(labels / "extra_9.png", np.zeros((128, 128), np.uint8))  # labels without image
    write_labels(labels / "cell_2.png", np.zeros((64, 64), np.uint8))  # size mismatch
    codes = read_labels(labels / "cell_0.png").copy()
    codes[0, 0] = 9
    write_labels(labels / "cell_0.png", codes)  # code outside the schema
    (root / "images" / "cell_3.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)  # corrupt

    with pytest.raises(DatasetError) as info:
        load_training_pairs(root)
    message = str(info.value)
    problems = info.value.problems
    assert len(problems) == 5, problems
    assert str(root / "images" / "cell_1.png") in message and "has no labels file" in message
    assert str(labels / "extra_9.png") in message and "has no image" in message
    assert str(labels / "cell_2.png") in message and "64x64" in message and "128x128" in message
    assert str(labels / "cell_0.png") in message and "[9]" in message
    assert str(root / "images" / "cell_3.png") in message and "corrupt" in message


def test_load_folder_errors(cell, tmp_path):
    with _raises_listing(str(tmp_path / "nowhere"), "does not exist"):
        load_training_pairs(tmp_path / "nowhere")
    with _raises_listing("no training-data folders"):
        load_training_pairs()

    no_labels = tmp_path / "no_labels"
    (no_labels / "images").mkdir(parents=True)
    with _raises_listing(str(no_labels / "labels"), "folder is missing"):
        load_training_pairs(no_labels)
    with _raises_listing("did you mean the parent folder"):
        load_training_pairs(no_labels / "images")

    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "labels").mkdir()
    with _raises_listing(str(empty), "no training pairs"):
        load_training_pairs(empty)

    # problems of several roots come together
    with pytest.raises(DatasetError) as info:
        load_training_pairs(empty, no_labels)
    assert len(info.value.problems) == 2


def test_manifest_problems(cell, tmp_path):
    root = tmp_path / "train"
    _export(cell, root)
    for side in ("images", "labels"):
        (root / side / "cell_0.png").unlink()
    with _raises_listing("manifest.csv: line 2", "'cell_0.png'", "not in"):
        load_training_pairs(root)

    (root / "manifest.csv").write_text("name,source\ncell_1.png,x\n")
    with _raises_listing("lacks the column(s) y, x, height"):
        load_training_pairs(root)

    header = ",".join(MANIFEST_COLUMNS)
    (root / "manifest.csv").write_text(f"{header}\ncell_1.png,s,0,abc,128,128,0.8,locations,c,t\n"
                                       "cell_2.png,s,0\n")
    with _raises_listing("line 2 (cell_1.png): malformed values", "line 3 has fewer values"):
        load_training_pairs(root)

    (root / "manifest.csv").unlink()  # without a manifest the remaining pairs load
    assert [p.name for p in load_training_pairs(root)] == ["cell_1.png", "cell_2.png", "cell_3.png"]


def test_ambiguous_and_lossy_files(tmp_path):
    root = _bare_root(tmp_path / "seed", n=2)
    write_image(root / "images" / "cell_0.png", np.zeros((64, 96), np.uint8))  # same stem as cell_0.tif
    iio.imwrite(root / "labels" / "cell_1.jpg", np.zeros((64, 96), np.uint8))  # lossy labels
    (root / "images" / "notes.txt").write_text("ignored")
    with _raises_listing(f"{root / 'images' / 'cell_0.tif'}: has the same name as cell_0.png",
                         f"{root / 'labels' / 'cell_1.jpg'}: label maps must be lossless"):
        load_training_pairs(root)


def test_export_refuses_a_malformed_manifest(cell, tmp_path):
    root = tmp_path / "train"
    _export(cell, root, tiles=[0])
    with open(root / "manifest.csv", "a", encoding="utf-8") as fh:
        fh.write("cell_9.png,too,many,values,1,2,3,4,5,6,7,8,9,10\n")
    before = _files(root)
    with _raises_listing("manifest.csv: line 3 has 14 values for 12 columns"):
        _export(cell, root, tiles=[1])
    assert _files(root) == before


def test_dataset_error_lists_problems_and_pickles():
    import pickle

    error = DatasetError("2 problems", ["a.png: broken", "b.png: missing"])
    assert str(error) == "2 problems\n  a.png: broken\n  b.png: missing"
    assert error.problems == ["a.png: broken", "b.png: missing"]
    assert isinstance(error, ValueError)
    assert str(pickle.loads(pickle.dumps(error))) == str(error)


def test_problem_list_is_capped(tmp_path):
    root = tmp_path / "many"
    (root / "labels").mkdir(parents=True)
    for k in range(25):
        write_image(root / "images" / f"img_{k:02d}.png", np.zeros((40, 40), np.uint8))
    with pytest.raises(DatasetError) as info:
        load_training_pairs(root)
    lines = str(info.value).splitlines()
    assert len(info.value.problems) == 26  # 25 unmatched images + "no training pairs"
    assert len(lines) == 1 + ds.MAX_LISTED_PROBLEMS + 1
    assert lines[-1].strip() == "... and 6 more"


def test_roots_with_different_schemas(cell, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _export(cell, a, tiles=[0])
    image, labels = cell
    export_training_pairs(image, (labels == 1).astype(np.uint8), b, schema=GRANULES_SCHEMA,
                          tile_size=TILE, tiles=[0], pixel_size_nm=1.2)
    with _raises_listing("class schemas differ", str(a / "schema.json"), str(b / "schema.json")):
        load_training_pairs(a, b)
    # the schema argument takes precedence over schema.json (codes are still checked)
    both = load_training_pairs(a, b, schema=LOCATIONS_SCHEMA)
    assert len(both) == 2 and both.roots == [a, b]


# ------------------------------------------------------------------------------------------
# Hash and split
# ------------------------------------------------------------------------------------------


def test_manifest_hash_is_stable_and_tracks_pixels(cell, tmp_path):
    root = tmp_path / "train"
    _export(cell, root)
    first = load_training_pairs(root).manifest_hash()
    assert len(first) == 64 and int(first, 16) >= 0
    assert load_training_pairs(root).manifest_hash() == first

    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(root, moved)
    copy = load_training_pairs(moved)
    assert copy.manifest_hash() == first
    assert TrainingSet(list(reversed(copy.pairs)), copy.schema, copy.roots).manifest_hash() == first

    path = moved / "labels" / "cell_2.png"
    codes = read_labels(path).copy()
    codes[10, 10] = (codes[10, 10] + 1) % 7
    write_labels(path, codes)
    assert load_training_pairs(moved).manifest_hash() != first


def test_split_is_deterministic_and_disjoint(tmp_path):
    root = _bare_root(tmp_path / "seed", n=10)
    data = load_training_pairs(root)
    train, val = data.split(0.3, seed=7)
    assert (len(train), len(val)) == (7, 3)
    names = lambda s: [p.name for p in s]  # noqa: E731
    assert not set(names(train)) & set(names(val))
    assert sorted(names(train) + names(val)) == names(data)
    again = load_training_pairs(root).split(0.3, seed=7)
    assert (names(again[0]), names(again[1])) == (names(train), names(val))
    # the split does not depend on the order of the pairs
    shuffled = TrainingSet(list(reversed(data.pairs)), data.schema, data.roots).split(0.3, seed=7)
    assert set(names(shuffled[1])) == set(names(val))
    assert any(set(names(data.split(0.3, seed=s)[1])) != set(names(val)) for s in range(8))

    same, empty = data.split(0.0, seed=1)
    assert same is data and len(empty) == 0
    two = data[:2]
    assert [len(part) for part in two.split(0.01, seed=0)] == [1, 1]
    assert [len(part) for part in two.split(0.99, seed=0)] == [1, 1]
    with pytest.raises(ValueError, match="val_fraction"):
        data.split(1.0)


def test_dataset_module_imports_no_heavy_framework():
    probe = (
        "import sys, napari_emgranules.core.dataset\n"
        "heavy = ('napari', 'qtpy', 'PyQt5', 'PySide6', 'keras', 'tensorflow', 'torch', 'jax')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
