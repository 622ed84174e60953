"""Batches (core.batch, core.montage, ``emgranules batch``): outputs, resuming, failures, Dask.

Tiny synthetic micrographs (256 x 256) and the bundled models (Locations: fixed-seed random
weights) keep every test short; the two that start other processes (kill -9 and resume, a
2-process Dask cluster) take most of the time.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_emgranules.cli import main as cli
from napari_emgranules.core import montage
from napari_emgranules.core.batch import (
    BatchError,
    _exclusive,
    batch,
    batch_iter,
    expand_inputs,
    parse_scheduler,
    read_table,
)
from napari_emgranules.core.io import MicrographError, file_sha256, read_labels, write_image
from napari_emgranules.core.measure import measure_segmentation
from napari_emgranules.core.segment import (
    keep_peaked_objects,
    remove_small_objects,
    run_to_completion,
    segment_micrograph,
)
from napari_emgranules.core.synthetic import synthetic_micrograph

KINDS = ("locations", "granules")


@pytest.fixture(autouse=True)
def _quiet_untrained():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the untrained bundled Locations model says so each time
        yield


def _micrographs(folder: Path, seeds, shape=(256, 256)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [write_image(folder / f"cell{s}.tif",
                        synthetic_micrograph(shape, 0.8, seed=s, dtype="uint16").image, pixel_size_nm=0.8)
            for s in seeds]


@pytest.fixture(scope="module")
def serial_run(tmp_path_factory):
    """Four micrographs through one serial, uninterrupted batch: ``(input folder, result)``."""
    root = tmp_path_factory.mktemp("batch")
    _micrographs(root / "in", range(4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return root / "in", batch(root / "in", root / "out")


def _outputs(out: Path) -> dict[str, object]:
    """Every label map (as an array) and table (as a DataFrame) of an output folder."""
    found: dict[str, object] = {}
    for kind in KINDS:
        for p in sorted((out / kind).glob("*.tif")):
            found[f"{kind}/{p.name}"] = read_labels(p)
    for p in [*sorted((out / "tables").glob("*.csv")), out / "regions.csv", out / "particles.csv"]:
        found[str(p.relative_to(out))] = read_table(p)
    return found


def _assert_same_outputs(a: Path, b: Path) -> None:
    left, right = _outputs(a), _outputs(b)
    assert sorted(left) == sorted(right)
    for key, value in left.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(value, right[key], err_msg=key)
        else:
            pd.testing.assert_frame_equal(value, right[key], obj=key)


def _temporaries(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.name.startswith(".") and ".tmp" in p.name]


# -------------------------------------------------------------------------------------------------
# outputs
# -------------------------------------------------------------------------------------------------
def test_outputs_match_a_direct_segment_and_measure(serial_run):
    folder, result = serial_run
    out = result.out_dir
    assert result.done == [f"cell{i}" for i in range(4)] and not result.failures
    manifest = json.loads((out / "manifest.json").read_text())
    per_image = []
    for i in range(2):  # two of the four, directly
        path = (folder / f"cell{i}.tif").resolve()
        direct = segment_micrograph(path)
        for kind in KINDS:
            np.testing.assert_array_equal(read_labels(out / kind / f"cell{i}.tif"), direct.labels[kind])
        expected = measure_segmentation(direct, path=str(path)).regions
        got = read_table(out / "tables" / f"cell{i}.regions.csv")
        pd.testing.assert_frame_equal(got, expected, check_dtype=False, rtol=1e-12)
        assert set(got["path"]) == {str(path)}  # what `emgranules study --from-folders` reads
        entry = manifest["images"][f"cell{i}"]
        assert entry["status"] == "done" and entry["input_sha256"] == file_sha256(path)
        per_image.append(got)
    combined = result.regions
    assert combined["image"].unique().tolist() == [f"cell{i}" for i in range(4)]
    pd.testing.assert_frame_equal(combined[combined["image"].isin(["cell0", "cell1"])]
                                  .reset_index(drop=True), pd.concat(per_image, ignore_index=True))
    assert len(result.particles) == sum(len(read_table(p)) for p in (out / "tables").glob("*.particles.csv"))
    assert read_table(out / "failures.csv").empty
    assert not _temporaries(out)


def test_rerun_skips_unchanged_rewrites_nothing_and_redoes_a_changed_input(tmp_path):
    paths = _micrographs(tmp_path / "in", range(3))
    out = tmp_path / "out"
    batch(tmp_path / "in", out, seed_tables=True)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    stale = [out / "locations" / ".cell0.0123456789ab.tmp.tif", out / ".regions.ba9876543210.tmp.csv"]
    for p in stale:
        p.write_bytes(b"half-written")
    time.sleep(0.02)

    t = time.perf_counter()
    again = batch(tmp_path / "in", out, seed_tables=True)
    assert time.perf_counter() - t < 5  # no model is even loaded
    assert again.skipped == ["cell0", "cell1", "cell2"] and not again.done
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing rewritten
    assert not any(p.exists() for p in stale)  # left by a "killed" run: removed

    write_image(paths[1], synthetic_micrograph((256, 256), 0.8, seed=9, dtype="uint16").image,
                pixel_size_nm=0.8)
    events = []
    changed = run_to_completion(batch_iter(tmp_path / "in", out, seed_tables=True), events.append)
    assert changed.done == ["cell1"] and changed.skipped == ["cell0", "cell2"]
    assert {e.status for e in events if e.image == str(paths[1].resolve())} == {"done"}
    for name in ("cell0", "cell2"):
        label_map = out / "locations" / f"{name}.tif"
        assert label_map.stat().st_mtime_ns == stamps[label_map]
    assert (out / "locations" / "cell1.tif").stat().st_mtime_ns != stamps[out / "locations" / "cell1.tif"]
    np.testing.assert_array_equal(read_labels(out / "granules" / "cell1.tif"),
                                  segment_micrograph(paths[1]).granules)

    redone = batch(tmp_path / "in", out, seed_tables=True, min_granule_nm=0)  # a setting changed
    assert redone.done == ["cell0", "cell1", "cell2"]


def test_a_threshold_sweep_measures_each_threshold_from_one_forward_pass(serial_run, tmp_path):
    folder, plain = serial_run
    out = tmp_path / "sweep"
    swept = batch(folder, out, granule_thresholds=[0.85, 0.3, 0.5, 0.85])
    assert swept.done == plain.done and not swept.failures
    for kind in KINDS:  # the label maps stay the arg-max ones
        for name in plain.done:
            np.testing.assert_array_equal(read_labels(out / kind / f"{name}.tif"),
                                          read_labels(plain.out_dir / kind / f"{name}.tif"))
    pd.testing.assert_frame_equal(swept.regions, plain.regions, check_dtype=False, rtol=1e-12)
    tables = {t: read_table(out / f"regions.t{t}.csv") for t in (0.3, 0.5, 0.85)}
    assert set(tables) == {0.3, 0.5, 0.85} and not (out / "regions.t0.85.0.csv").exists()
    for t, table in tables.items():
        assert set(table["granule_threshold"]) == {t}
        assert len(read_table(out / f"particles.t{t}.csv")) == \
            sum(len(read_table(p)) for p in (out / "tables").glob(f"*.particles.t{t}.csv"))
    # 0.5 is the arg-max: the same numbers as the main table (but for exact ties)
    np.testing.assert_allclose(tables[0.5]["granule_px"], plain.regions["granule_px"], atol=2)
    # a higher threshold labels a subset: granule pixels never grow with the threshold
    assert (tables[0.3]["granule_px"].to_numpy() >= tables[0.5]["granule_px"].to_numpy()).all()
    assert (tables[0.5]["granule_px"].to_numpy() >= tables[0.85]["granule_px"].to_numpy()).all()
    # ... and 0.85 measures what a run at --granule-threshold 0.85 labels (in the graph)
    single = batch(folder, tmp_path / "single", granule_threshold=0.85)
    np.testing.assert_allclose(tables[0.85]["granule_px"], single.regions["granule_px"], atol=2)
    # a sweep beside the run's own 0.85: the label maps are 0.85's, the sweep is of the raw model
    both = batch(folder, tmp_path / "both", granule_threshold=0.85, granule_thresholds=[0.3, 0.85])
    pd.testing.assert_frame_equal(both.regions, single.regions, check_dtype=False, rtol=1e-12)
    np.testing.assert_allclose(read_table(tmp_path / "both" / "regions.t0.3.csv")["granule_px"],
                               tables[0.3]["granule_px"], atol=2)
    assert batch(folder, out, granule_thresholds=[0.3, 0.5, 0.85]).skipped == plain.done  # unchanged
    assert batch(folder, out, granule_thresholds=[0.3]).done == plain.done  # another sweep: redone


@pytest.mark.parametrize("kwargs, match", [
    ({"kinds": ("granules",)}, "measuring needs both models"),
    ({"kinds": ("mitochondria",), "tables": False}, "kinds must name"),
    ({"tables": False, "granule_thresholds": [0.5]}, "sweep writes tables"),
    ({"tables": False, "label_format": "jpg"}, "label_format"),
])
def test_impossible_output_choices_are_refused_before_anything_is_written(tmp_path, kwargs, match):
    _micrographs(tmp_path / "in", [0])
    with pytest.raises(BatchError, match=match):
        batch(tmp_path / "in", tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_particle_objects_for_qupath(serial_run, tmp_path):
    folder, plain = serial_run
    result = batch(folder, tmp_path / "out", objects=True)
    for name in result.done:
        collection = json.loads((tmp_path / "out" / "objects" / f"{name}.geojson").read_text())
        rows = read_table(tmp_path / "out" / "tables" / f"{name}.particles.csv")
        assert len(collection["features"]) == len(rows)
        assert collection["napari-emgranules"]["pixel_size_nm"] == pytest.approx(0.8)
        assert (tmp_path / "out" / "objects" / f"{name}.roi.zip").is_file()
        regions = json.loads((tmp_path / "out" / "objects" / f"{name}.regions.geojson").read_text())
        assert {f["properties"]["objectType"] for f in regions["features"]} <= {"annotation"}
    pd.testing.assert_frame_equal(result.regions, plain.regions, check_dtype=False, rtol=1e-12)


def test_label_maps_only_one_model_png_and_confidence(tmp_path):
    _micrographs(tmp_path / "in", [0, 1])
    result = batch(tmp_path / "in", tmp_path / "out", kinds=["granules"], tables=False,
                   label_format="png", confidence=True)
    out = result.out_dir
    assert result.done == ["cell0", "cell1"] and "regions" not in result.paths
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.*") if p.parent != out) == [
        "granules/cell0.png", "granules/cell1.png", "granules_confidence/cell0.tif",
        "granules_confidence/cell1.tif"]
    direct = segment_micrograph(tmp_path / "in" / "cell0.tif", kinds=("granules",), confidence=True)
    np.testing.assert_array_equal(read_labels(out / "granules" / "cell0.png"), direct.granules)
    conf = tifffile.imread(out / "granules_confidence" / "cell0.tif")
    np.testing.assert_array_equal(conf, np.round(direct.confidence["granules"] * 65535).astype(np.uint16))


@pytest.mark.parametrize("values, match", [([0.5, 1.0], "between 0 and 1"), (["x"], "numbers"),
                                           ([0], "between 0 and 1")])
def test_bad_threshold_sweeps_are_refused_before_anything_is_written(tmp_path, values, match):
    _micrographs(tmp_path / "in", [0])
    with pytest.raises(BatchError, match=match):
        batch(tmp_path / "in", tmp_path / "out", granule_thresholds=values)
    assert not (tmp_path / "out").exists()
    assert cli(["batch", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                "--granule-thresholds", "0.3,high"]) == 2
    assert not (tmp_path / "out").exists()


# -------------------------------------------------------------------------------------------------
# failures
# -------------------------------------------------------------------------------------------------
def test_corrupt_and_empty_files_are_reported_and_the_rest_done(tmp_path, capsys):
    _micrographs(tmp_path / "in", range(2))
    (tmp_path / "in" / "broken.tif").write_bytes(b"II*\x00" + bytes(range(256)) * 4)
    (tmp_path / "in" / "empty.tif").write_bytes(b"")
    out = tmp_path / "out"
    code = cli(["batch", str(tmp_path / "in"), "--out", str(out), "--quiet",
                "--seed-tables", str(tmp_path / "seed"), "--tile-size", "128"])
    captured = capsys.readouterr()
    assert code == 2
    assert "2 done, 0 skipped, 2 failed" in captured.out
    assert len([p for p in (tmp_path / "seed").iterdir() if p.suffix == ".txt"]) == 2  # into DIR
    failures = pd.read_csv(out / "failures.csv")
    assert sorted(Path(p).name for p in failures["path"]) == ["broken.tif", "empty.tif"]
    assert failures["error"].str.contains("corrupt|empty").all()
    for name in ("broken.tif", "empty.tif"):
        assert f"{name}: " in captured.err
    assert read_table(out / "regions.csv")["image"].unique().tolist() == ["cell0", "cell1"]
    assert not (out / "locations" / "broken.tif").exists() and not _temporaries(out)


def test_same_name_in_two_folders_fails_the_second(tmp_path):
    first = _micrographs(tmp_path / "day1", [0])[0]
    second = tmp_path / "day2" / "cell0.tif"
    second.parent.mkdir()
    shutil.copy(first, second)
    result = batch([tmp_path / "day1", tmp_path / "day2"], tmp_path / "out")
    assert result.done == ["cell0"]
    [(path, error)] = result.failures
    assert path == str(second.resolve())
    assert "same file name 'cell0'" in error and str(first.resolve()) in error
    assert set(result.regions["path"]) == {str(first.resolve())}


def test_outputs_not_written_by_a_batch_are_not_replaced(tmp_path):
    _micrographs(tmp_path / "in", [0])
    mine = tmp_path / "out" / "locations" / "cell0.tif"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"hand-corrected labels")
    result = batch(tmp_path / "in", tmp_path / "out")
    assert "was not written by a batch run" in result.failures[0][1]
    assert mine.read_bytes() == b"hand-corrected labels"


def test_a_second_run_into_the_same_folder_is_refused(tmp_path):
    _micrographs(tmp_path / "in", [0])
    (tmp_path / "out").mkdir()
    with _exclusive(tmp_path / "out"), pytest.raises(BatchError, match="another batch run"):
        batch(tmp_path / "in", tmp_path / "out")


# -------------------------------------------------------------------------------------------------
# inputs and options
# -------------------------------------------------------------------------------------------------
def test_inputs_from_folders_patterns_and_csv_lists(tmp_path):
    a, b = _micrographs(tmp_path / "imgs", [0, 1], shape=(64, 64))
    (tmp_path / "list.csv").write_text("path,pixel_size_nm\nimgs/cell1.tif,1.2\nimgs/cell0.tif,\n")
    (tmp_path / "nothing").mkdir()
    assert [i.path for i in expand_inputs([tmp_path / "imgs"])] == [a, b]
    assert [i.path.name for i in expand_inputs([str(tmp_path / "imgs" / "*1.tif")])] == ["cell1.tif"]
    listed = expand_inputs([tmp_path / "list.csv"])
    assert [(i.path.resolve(), i.pixel_size_nm) for i in listed] == [(b, 1.2), (a, None)]
    for bad, message in ((tmp_path / "nothing", "holds no micrographs"),
                         (str(tmp_path / "*.png"), "matches no micrographs")):
        with pytest.raises(BatchError, match=message):
            expand_inputs([bad])
    (tmp_path / "bad.csv").write_text("file\nx.tif\n")
    with pytest.raises(BatchError, match="needs a 'path' column"):
        expand_inputs([tmp_path / "bad.csv"])


@pytest.mark.parametrize("spec", ["foo", "processes:0", "processes:two", "tcp://host", "threads:2"])
def test_bad_scheduler_strings_are_refused(spec, tmp_path, capsys):
    with pytest.raises(BatchError, match=r"processes:N.*tcp://host:port"):
        parse_scheduler(spec)
    code = cli(["batch", str(tmp_path), "--out", str(tmp_path / "out"), "--scheduler", spec])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and spec in err[0] and "processes:N" in err[0]
    assert not (tmp_path / "out").exists()


def test_scheduler_strings_that_are_accepted():
    assert parse_scheduler(None) is None
    assert parse_scheduler("processes:2") == ("processes", 2)
    assert parse_scheduler("tcp://10.0.0.5:8786") == ("address", "tcp://10.0.0.5:8786")


# -------------------------------------------------------------------------------------------------
# montages larger than memory
# -------------------------------------------------------------------------------------------------
def test_pad_index_is_numpy_reflect_padding():
    for n in (2, 3, 7, 40):
        for before, total in ((0, 9), (5, 30), (90, 250)):
            expected = np.pad(np.arange(n), (before, total), mode="reflect")[:total]
            np.testing.assert_array_equal(montage._pad_index(n, before, total, "reflect"), expected)


def test_speck_removal_by_bands_equals_whole_image(monkeypatch):
    rng = np.random.default_rng(0)
    from scipy import ndimage as ndi

    labels = (ndi.gaussian_filter(rng.random((300, 200)), 2) > 0.53).astype(np.uint8)
    expected = remove_small_objects(labels.copy(), 8.0, 0.8)
    assert (expected != labels).any()  # specks were removed
    monkeypatch.setattr(montage, "_CLEAN_BAND", 16)
    by_bands = labels.copy()
    montage._clean_granules_in_bands(by_bands, 8.0, 0.8, peaked=False)
    np.testing.assert_array_equal(by_bands, expected)


def test_granule_peak_by_bands_equals_whole_image(monkeypatch):
    rng = np.random.default_rng(1)
    from scipy import ndimage as ndi

    p = ndi.gaussian_filter(rng.random((300, 200)), 2)
    labels = (p > 0.55).astype(np.uint8)
    strong = p > 0.6
    objects = ndi.find_objects(ndi.label(labels, structure=np.ones((3, 3), bool))[0])
    assert max(sl[0].stop - sl[0].start for sl in objects) < 24
    expected = remove_small_objects(keep_peaked_objects(labels.copy(), strong), 8.0, 0.8)
    assert (expected != remove_small_objects(labels.copy(), 8.0, 0.8)).any()  # the peak dropped some
    coded = labels.copy()
    coded[strong & (labels == 1)] = 2
    monkeypatch.setattr(montage, "_CLEAN_BAND", 16)
    monkeypatch.setattr(montage, "_PEAK_MARGIN", 24)  # taller than any object of this map
    montage._clean_granules_in_bands(coded, 8.0, 0.8, peaked=True)
    np.testing.assert_array_equal(coded, expected)


def test_large_montage_by_tiles_equals_in_memory_tiled(tmp_path, monkeypatch):
    image = synthetic_micrograph((200, 300), 0.8, seed=3, dtype="uint16").image
    raw = tmp_path / "raw.tif"
    tifffile.imwrite(raw, image, resolution=(1e7 / 0.8, 1e7 / 0.8), resolutionunit="CENTIMETER")
    packed = write_image(tmp_path / "packed.tif", image, pixel_size_nm=0.8)  # deflate: decoded by strips
    monkeypatch.setattr(montage, "_CLEAN_BAND", 64)  # speck removal in 4 bands
    monkeypatch.setattr(montage, "_REDUCE_ROWS", 32)
    # Granules (0.8 nm/px): 2 x 3 windows; a model at another pixel size (Locations) is resampled
    expected = segment_micrograph(raw, mode="tiled", max_window=384, halo=128)
    for path in (raw, packed):
        result = montage.segment_large(path, tmp_path / "out", max_window=384, halo=128)
        for kind in KINDS:
            np.testing.assert_array_equal(result.labels[kind], expected.labels[kind],
                                          err_msg=f"{path.name} {kind}")
    # batch takes this path for a TIFF beyond its memory budget
    done = batch(raw, tmp_path / "batch", memory_budget_bytes=1, max_window=384, halo=128)
    manifest = json.loads((tmp_path / "batch" / "manifest.json").read_text())
    assert done.done == ["raw"] and manifest["images"]["raw"]["large"] is True
    np.testing.assert_array_equal(read_labels(tmp_path / "batch" / "locations" / "raw.tif"),
                                  expected.locations)
    assert not _temporaries(tmp_path / "out") and not _temporaries(tmp_path / "batch")


def _ome_zarr_store(path: Path, image: np.ndarray, chunk: int = 64) -> Path:
    import zarr
    from ome_zarr.writer import write_image as write_ome_image

    root = zarr.open_group(str(path), mode="w")
    write_ome_image(image, root, axes="yx", scale={"y": 0.8, "x": 0.8},
                    axes_units={"y": "nanometer", "x": "nanometer"}, scale_factors=(2,),
                    storage_options={"chunks": (chunk, chunk)})
    return path


def test_ome_zarr_montage_by_tiles_equals_in_memory_tiled(tmp_path, monkeypatch):
    image = synthetic_micrograph((200, 300), 0.8, seed=3, dtype="uint16").image
    store = _ome_zarr_store(tmp_path / "cell.ome.zarr", image)  # 64 px chunks: 4 x 5 of them
    monkeypatch.setattr(montage, "_REDUCE_ROWS", 32)
    expected = segment_micrograph(image, 0.8, mode="tiled", max_window=384, halo=128)
    result = montage.segment_large(store, tmp_path / "out", max_window=384, halo=128)
    assert result.name == "cell" and result.pixel_size_source == "metadata:ome-zarr"
    for kind in KINDS:
        np.testing.assert_array_equal(result.labels[kind], expected.labels[kind], err_msg=kind)
    # batch sizes the store from its metadata and takes the montage path beyond its budget
    done = batch(store, tmp_path / "batch", memory_budget_bytes=1, max_window=384, halo=128)
    entry = json.loads((tmp_path / "batch" / "manifest.json").read_text())["images"]["cell"]
    assert done.done == ["cell"] and entry["large"] is True
    assert entry["pixel_size_source"] == "metadata:ome-zarr"
    np.testing.assert_array_equal(read_labels(tmp_path / "batch" / "granules" / "cell.tif"),
                                  expected.granules)
    assert not _temporaries(tmp_path / "out") and not _temporaries(tmp_path / "batch")


def test_ome_zarr_montage_refuses_float_pixels_and_damaged_chunks(tmp_path):
    image = synthetic_micrograph((200, 300), 0.8, seed=3, dtype="uint16").image
    floats = _ome_zarr_store(tmp_path / "floats.ome.zarr", image.astype(np.float32))
    with pytest.raises(MicrographError, match=r"floats\.ome\.zarr.*integer pixels.*float32"):
        montage.segment_large(floats, tmp_path / "out")
    damaged = _ome_zarr_store(tmp_path / "damaged.ome.zarr", image)
    level0 = min((q for q in damaged.iterdir() if q.is_dir()), key=lambda q: q.name)  # "s0" or "0"
    chunk = next(q for q in sorted(level0.rglob("*")) if q.is_file() and not q.name.startswith((".", "zarr")))
    chunk.write_bytes(b"not a chunk")
    with pytest.raises(MicrographError, match=r"damaged\.ome\.zarr.*chunks cannot be read"):
        montage.segment_large(damaged, tmp_path / "out")
    out = tmp_path / "out"
    assert not _temporaries(out) and not list(out.rglob("*.tif"))


# -------------------------------------------------------------------------------------------------
# crash safety and Dask (other processes)
# -------------------------------------------------------------------------------------------------
def _done_count(out: Path) -> int:
    try:
        images = json.loads((out / "manifest.json").read_text())["images"]
    except (OSError, ValueError, KeyError):
        return 0
    return sum(entry.get("status") == "done" for entry in images.values())


def _kill(cmd, out: Path, env, delay: float, *, after: int = 0) -> None:
    """Start the CLI and kill -9 it ``delay`` s after ``after`` more micrographs finished."""
    target = _done_count(out) + after
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while proc.poll() is None and _done_count(out) < target and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(delay)
    proc.kill()
    proc.wait()


def test_killed_runs_resume_to_the_same_outputs(serial_run, tmp_path):
    folder, reference = serial_run
    out = tmp_path / "out"
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    cmd = [sys.executable, "-m", "napari_emgranules.cli", "batch", str(folder), "--out", str(out), "--quiet"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    _kill(cmd, out, env, rng.uniform(0.2, 3.0))  # while starting
    _kill(cmd, out, env, rng.uniform(0.0, 0.05), after=rng.choice([1, 2]))  # mid-run
    assert 0 < _done_count(out) < 4, f"random seed {seed}"
    finished = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert " 0 failed" in finished.stdout
    _assert_same_outputs(out, reference.out_dir)
    assert not _temporaries(out), f"random seed {seed}"


@pytest.mark.slow  # ~30 s: two worker processes each import TensorFlow and build both models
def test_two_process_cluster_gives_the_same_outputs_as_serial(serial_run, tmp_path):
    folder, reference = serial_run
    result = batch(folder, tmp_path / "out", scheduler="processes:2")
    assert sorted(result.done) == sorted(reference.done) and not result.failures
    _assert_same_outputs(tmp_path / "out", reference.out_dir)
    for name in ("regions.csv", "particles.csv"):
        assert (tmp_path / "out" / name).read_bytes() == (reference.out_dir / name).read_bytes()
