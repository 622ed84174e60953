"""The ``emgranules`` command line: segment, split, info, exit codes and messages.

Most tests call :func:`napari_emgranules.cli.main` in-process (the models are cached per process);
two tests run the installed entry points in a subprocess to prove them and their exit codes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_emgranules import __version__
from napari_emgranules.cli import main
from napari_emgranules.core.io import read_labels, read_micrograph, write_image
from napari_emgranules.core.synthetic import synthetic_micrograph

ERROR = "emgranules: error:"
WARNING = "emgranules: warning:"


# -------------------------------------------------------------------------------------------------
# helpers
# -------------------------------------------------------------------------------------------------
def run_cli(*argv) -> tuple[int, str, str]:
    """Run ``emgranules ARGV`` in-process; return (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(ERROR)]


def warning_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(WARNING)]


def summary_lines(stdout: str) -> list[str]:
    """The per-image summary lines of ``segment`` ("<name>: <mode>, <px> nm/px ... -> ...")."""
    return [line for line in stdout.splitlines() if " nm/px " in line and " -> " in line]


# what `segment` (through the core batch) writes besides the label maps: its run record
BOOKKEEPING = {"manifest.json", "failures.csv", ".batch.lock"}


def files_under(folder: Path) -> list[Path]:
    """The files under ``folder`` but the batch's own bookkeeping at its top."""
    if not folder.exists():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file()
                  and not (p.parent == folder and p.name in BOOKKEEPING))


def leftovers(folder: Path) -> list[Path]:
    """Temporary or hidden files (half-written outputs) anywhere under ``folder``."""
    return [p for p in folder.rglob("*") if p.name != ".batch.lock"
            and (p.name.startswith(".") or "tmp" in p.name.lower())]


def synthetic_file(path: Path, shape=(256, 320), pixel_size_nm: float | None = 0.8, seed=0,
                   dtype="uint16") -> Path:
    s = synthetic_micrograph(shape, 0.8, seed=seed, dtype=dtype)
    return write_image(path, s.image, pixel_size_nm=pixel_size_nm)


# -------------------------------------------------------------------------------------------------
# segment: one shared run over two micrographs
# -------------------------------------------------------------------------------------------------
SHAPES = {"cell_a": (256, 320), "cell_b": (288, 256)}


@pytest.fixture(scope="module")
def segmented(tmp_path_factory):
    """``emgranules segment cell_a.tif cell_b.tif --out OUT`` (uint16 and uint8, 0.8 nm/px)."""
    root = tmp_path_factory.mktemp("segment")
    images = [
        synthetic_file(root / "in" / "cell_a.tif", SHAPES["cell_a"], seed=1, dtype="uint16"),
        synthetic_file(root / "in" / "cell_b.tif", SHAPES["cell_b"], seed=2, dtype="uint8"),
    ]
    out = root / "out"
    code, stdout, stderr = run_cli("segment", *images, "--out", out)
    return {"images": images, "out": out, "code": code, "stdout": stdout, "stderr": stderr}


def test_segment_exits_0_and_writes_both_label_maps(segmented):
    assert segmented["code"] == 0, segmented["stderr"]
    assert error_lines(segmented["stderr"]) == []
    out = segmented["out"]
    expected = {out / kind / f"{stem}.tif" for kind in ("locations", "granules") for stem in SHAPES}
    assert set(files_under(out)) == expected
    manifest = json.loads((out / "manifest.json").read_text())  # the batch's record: reruns skip
    assert sorted(manifest["images"]) == sorted(SHAPES)
    assert not (out / "regions.csv").exists() and not (out / "tables").exists()  # no measuring
    assert leftovers(out) == []
    notes = [line for line in segmented["stderr"].splitlines() if line.startswith("note:")]
    assert len(notes) == 1, segmented["stderr"]
    assert "granules and locations model(s) used are the bundled defaults, trained on synthetic" \
        in notes[0]
    assert "UNTRAINED" not in segmented["stderr"]


@pytest.mark.parametrize("kind, n_classes", [("locations", 7), ("granules", 2)])
@pytest.mark.parametrize("stem", sorted(SHAPES))
def test_segment_label_maps_have_image_shape_codes_and_pixel_size(segmented, kind, n_classes,
                                                                   stem):
    path = segmented["out"] / kind / f"{stem}.tif"
    labels = read_labels(path)
    assert labels.shape == SHAPES[stem]
    assert labels.dtype.kind == "u"
    assert int(labels.max()) < n_classes
    m = read_micrograph(path)
    assert m.pixel_size_nm == pytest.approx(0.8, rel=1e-6)
    assert m.pixel_size_source.startswith("metadata:")


def test_segment_prints_one_summary_line_per_image(segmented):
    lines = summary_lines(segmented["stdout"])
    assert len(lines) == 2, segmented["stdout"]
    for stem, line in zip(sorted(SHAPES), lines, strict=True):
        assert line.startswith(f"{stem}: ")
        assert "0.8 nm/px (metadata:" in line
        assert str(segmented["out"] / "locations" / f"{stem}.tif") in line
        assert str(segmented["out"] / "granules" / f"{stem}.tif") in line
        assert "UNTRAINED" not in line


def test_segment_with_untrained_models_says_so(tmp_path, monkeypatch):
    from napari_emgranules.core import models

    monkeypatch.setattr(models, "_bundled_dir", lambda: tmp_path / "no-models")
    models.clear_model_cache()
    try:
        image = synthetic_file(tmp_path / "cell.tif", (256, 256), seed=4)
        code, stdout, stderr = run_cli("segment", image, "--out", tmp_path / "out")
    finally:
        models.clear_model_cache()
    assert code == 0, stderr
    assert len(summary_lines(stdout)) == 1
    (note,) = [line for line in stderr.splitlines() if line.startswith("note:") and "UNTRAINED" in line]
    assert "granules and locations" in note


def test_segment_folder_expands_to_its_micrographs(tmp_path, write_micrograph):
    folder = tmp_path / "in"
    write_micrograph("one.tif", folder=folder, shape=(256, 256), seed=3)
    write_micrograph("two.png", folder=folder, shape=(256, 256), seed=4)
    (folder / "notes.txt").write_text("not a micrograph")
    out = tmp_path / "out"
    code, stdout, stderr = run_cli("segment", folder, "--out", out, "--only", "granules",
                                   "--quiet")
    assert code == 0, stderr
    assert {p.relative_to(out).as_posix() for p in files_under(out)} == {
        "granules/one.tif", "granules/two.tif"}
    assert [line.split(":")[0] for line in summary_lines(stdout)] == ["one", "two"]


def test_segment_png_format_writes_16_bit_pngs(segmented, tmp_path):
    image = segmented["images"][0]
    out = tmp_path / "out"
    code, _, stderr = run_cli("segment", image, "--out", out, "--format", "png", "--quiet")
    assert code == 0, stderr
    for kind in ("locations", "granules"):
        path = out / kind / "cell_a.png"
        assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        with Image.open(path) as im:
            assert im.mode.startswith("I;16"), im.mode  # 16-bit gray, as the seed wrote
        on_disk = iio.imread(path)
        assert on_disk.dtype == np.uint16
        assert on_disk.shape == SHAPES["cell_a"]
        # the same labels as the TIFF run (same model, same image)
        np.testing.assert_array_equal(on_disk, read_labels(segmented["out"] / kind / "cell_a.tif"))
        assert read_micrograph(path).pixel_size_nm == pytest.approx(0.8, rel=1e-3)
    assert leftovers(out) == []


def test_segment_confidence_writes_16_bit_confidence_maps(segmented, tmp_path):
    image = segmented["images"][0]
    out = tmp_path / "out"
    code, _, stderr = run_cli("segment", image, "--out", out, "--confidence", "--quiet")
    assert code == 0, stderr
    for kind, n_classes in (("locations", 7), ("granules", 2)):
        conf = tifffile.imread(out / f"{kind}_confidence" / "cell_a.tif")
        assert conf.shape == SHAPES["cell_a"]
        assert conf.dtype == np.uint16
        # the winning class's softmax probability is at least 1/n_classes
        assert conf.min() >= np.floor(65535 / n_classes) - 1
        assert (out / kind / "cell_a.tif").is_file()


def test_segment_only_granules(segmented, tmp_path):
    image = segmented["images"][0]
    out = tmp_path / "out"
    code, stdout, stderr = run_cli("segment", image, "--out", out, "--only", "granules",
                                   "--quiet")
    assert code == 0, stderr
    assert files_under(out) == [out / "granules" / "cell_a.tif"]
    assert not (out / "locations").exists()
    (line,) = summary_lines(stdout)
    assert "locations" not in line.split("->")[1].split(";")[0]


def test_segment_bad_inputs_one_error_line_each_good_files_still_written(tmp_path,
                                                                       write_micrograph):
    folder = tmp_path / "in"
    good = write_micrograph("good.tif", folder=folder, shape=(256, 256), seed=5)
    corrupt = folder / "x.tif"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    empty = folder / "empty.tif"
    empty.write_bytes(b"")
    stack = folder / "stack.tif"
    tifffile.imwrite(stack, np.zeros((3, 64, 64), np.uint16), photometric="minisblack")
    missing = folder / "missing.tif"
    s = synthetic_micrograph((256, 256), 0.8, seed=6, dtype="uint8")
    tinted = np.stack([s.image, s.image // 2, s.image // 3], axis=-1)
    rgb = write_image(folder / "rgb.tif", tinted, pixel_size_nm=0.8)

    out = tmp_path / "out"
    code, stdout, stderr = run_cli("segment", good, corrupt, empty, stack, missing, rgb,
                                   "--out", out, "--quiet")
    assert code == 2
    errors = error_lines(stderr)
    assert len(errors) == 4, stderr
    problems = {corrupt: ("tiff", "corrupt"), empty: ("empty",), stack: ("stack",),
                missing: ("does not exist",)}
    for path, words in problems.items():
        (line,) = [e for e in errors if path.name in e]
        assert str(path) in line
        assert any(w in line.lower() for w in words), line
    # RGB is converted with a warning naming the file, not refused
    assert any("rgb.tif" in w and "gray" in w for w in warning_lines(stderr)), stderr
    assert [line.split(":")[0] for line in summary_lines(stdout)] == ["good", "rgb"]
    written = {p.relative_to(out).as_posix() for p in files_under(out)}
    assert written == {f"{k}/{n}.tif" for k in ("locations", "granules") for n in ("good", "rgb")}
    assert leftovers(out) == []
    assert "Traceback" not in stderr


def test_segment_refuses_to_overwrite_existing_outputs(tmp_path, write_micrograph):
    image = write_micrograph("cell.tif", shape=(256, 256), seed=7)
    out = tmp_path / "out"
    existing = out / "granules" / "cell.tif"
    existing.parent.mkdir(parents=True)
    existing.write_bytes(b"previous result")

    code, stdout, stderr = run_cli("segment", image, "--out", out, "--quiet")
    assert code == 2
    (line,) = error_lines(stderr)
    assert str(image) in line and str(existing) in line and "--overwrite" in line
    assert existing.read_bytes() == b"previous result"
    assert not (out / "locations" / "cell.tif").exists()  # nothing of this image written
    assert summary_lines(stdout) == []

    code, stdout, stderr = run_cli("segment", image, "--out", out, "--quiet", "--overwrite")
    assert code == 0, stderr
    assert read_labels(existing).shape == (256, 256)
    assert read_labels(out / "locations" / "cell.tif").shape == (256, 256)
    assert leftovers(out) == []


def test_segment_again_skips_unchanged_micrographs_and_redoes_changed_ones(tmp_path,
                                                                          write_micrograph):
    image = write_micrograph("cell.tif", shape=(256, 256), seed=7)
    out = tmp_path / "out"
    assert run_cli("segment", image, "--out", out, "--only", "granules", "--quiet")[0] == 0
    written = (out / "granules" / "cell.tif").stat().st_mtime_ns
    code, stdout, stderr = run_cli("segment", image, "--out", out, "--only", "granules", "--quiet")
    assert code == 0, stderr
    assert "unchanged" in stdout and summary_lines(stdout) == []
    assert (out / "granules" / "cell.tif").stat().st_mtime_ns == written
    code, stdout, _ = run_cli("segment", image, "--out", out, "--only", "granules", "--quiet",
                              "--min-granule", "0")  # another option: redone
    assert code == 0 and len(summary_lines(stdout)) == 1
    assert (out / "granules" / "cell.tif").stat().st_mtime_ns != written


def test_segment_same_name_in_two_folders_does_not_replace_the_first(tmp_path,
                                                                     write_micrograph):
    first = write_micrograph("cell.tif", folder=tmp_path / "day1", shape=(256, 256), seed=12)
    second = write_micrograph("cell.tif", folder=tmp_path / "day2", shape=(288, 256), seed=13)
    out = tmp_path / "out"
    for extra in ([], ["--overwrite"]):  # --overwrite is about earlier runs, not this one
        code, stdout, stderr = run_cli("segment", first, second, "--out", out, "--only",
                                       "granules", "--quiet", *extra)
        assert code == 2
        (line,) = error_lines(stderr)
        assert str(second) in line and str(first) in line
        assert len(summary_lines(stdout)) == 1
        assert read_labels(out / "granules" / "cell.tif").shape == (256, 256)  # the first's


def test_segment_pixel_size_used_when_the_file_has_none(tmp_path, write_micrograph):
    image = write_micrograph("plain.tif", shape=(256, 256), pixel_size_nm=None, seed=8)
    out = tmp_path / "out"
    code, stdout, stderr = run_cli("segment", image, "--out", out, "--pixel-size", "1.6",
                                   "--only", "granules", "--quiet")
    assert code == 0, stderr
    (line,) = summary_lines(stdout)
    assert "1.6 nm/px (user)" in line
    labels_file = out / "granules" / "plain.tif"
    assert read_labels(labels_file).shape == (256, 256)
    assert read_micrograph(labels_file).pixel_size_nm == pytest.approx(1.6, rel=1e-6)


def test_segment_metadata_pixel_size_wins_with_a_warning_unless_forced(tmp_path,
                                                                      write_micrograph):
    image = write_micrograph("calibrated.tif", shape=(256, 256), pixel_size_nm=0.8, seed=9)
    code, stdout, stderr = run_cli("segment", image, "--out", tmp_path / "o1", "--pixel-size",
                                   "1.6", "--only", "granules", "--quiet")
    assert code == 0, stderr
    (line,) = summary_lines(stdout)
    assert "0.8 nm/px (metadata:" in line
    (warning,) = [w for w in warning_lines(stderr) if "1.6" in w]
    assert str(image) in warning and "0.8" in warning

    code, stdout, stderr = run_cli("segment", image, "--out", tmp_path / "o2", "--pixel-size",
                                   "1.6", "--force-pixel-size", "--only", "granules", "--quiet")
    assert code == 0, stderr
    (line,) = summary_lines(stdout)
    assert "1.6 nm/px (user)" in line
    assert not [w for w in warning_lines(stderr) if "1.6" in w and str(image) in w], stderr
    out_file = tmp_path / "o2" / "granules" / "calibrated.tif"
    assert read_micrograph(out_file).pixel_size_nm == pytest.approx(1.6, rel=1e-6)


@pytest.mark.parametrize("options, mode", [
    (["--mode", "seed"], "seed"),
    (["--mode", "tiled", "--max-window", "384", "--halo", "128"], "tiled"),
])
def test_segment_modes(segmented, tmp_path, options, mode):
    image = segmented["images"][0]
    out = tmp_path / "out"
    code, stdout, stderr = run_cli("segment", image, "--out", out, "--quiet", *options)
    assert code == 0, stderr
    (line,) = summary_lines(stdout)
    assert line.startswith(f"cell_a: {mode}, ")
    assert read_labels(out / "locations" / "cell_a.tif").shape == SHAPES["cell_a"]
    assert read_labels(out / "granules" / "cell_a.tif").shape == SHAPES["cell_a"]


@pytest.mark.parametrize("command", ["segment", "batch"])
def test_impossible_segmentation_options_are_one_message_and_nothing_is_written(tmp_path,
                                                                               write_micrograph,
                                                                               command):
    image = write_micrograph("cell.tif")
    out = tmp_path / "out"
    code, _, err = run_cli(command, image, "--out", out, "--max-window", "512", "--halo", "256",
                           "--granule-threshold", "2", "--granule-peak", "1.5")
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1, err
    assert "max_window 512" in lines[0] and "granule threshold" in lines[0]
    assert "granule peak" in lines[0]
    assert not out.exists() or not any(out.rglob("*.tif"))


@pytest.mark.parametrize("name", ["weights.txt", "weights.weights.h5"])
def test_segment_bad_weights_file(tmp_path, write_micrograph, name):
    image = write_micrograph("cell.tif", shape=(256, 256), seed=10)
    image2 = write_micrograph("cell2.tif", shape=(256, 256), seed=12)
    weights = tmp_path / name
    weights.write_text("these are not weights\n")
    out = tmp_path / "out"
    code, stdout, stderr = run_cli("segment", image, image2, "--out", out, "--granules-weights",
                                   weights, "--quiet")
    assert code == 2
    (line,) = error_lines(stderr)  # one message for the bad weights, not one per image
    assert str(weights) in line
    assert "Traceback" not in stderr
    assert files_under(out) == []
    assert summary_lines(stdout) == []
    assert "note:" not in stderr  # nothing was segmented, so no note about the results


def test_segment_out_must_not_be_a_file(tmp_path, write_micrograph):
    image = write_micrograph("cell.tif", shape=(256, 256), seed=11)
    not_a_folder = tmp_path / "results.tif"
    not_a_folder.write_bytes(b"x")
    for argv in (["segment", image, "--out", not_a_folder, "--quiet"],
                 ["split", image, "--out", not_a_folder]):
        code, _, stderr = run_cli(*argv)
        assert code == 2, stderr
        (line,) = error_lines(stderr)
        assert str(not_a_folder) in line and "folder" in line
        assert not_a_folder.read_bytes() == b"x"


def test_segment_without_images_is_a_usage_error(tmp_path):
    code, _, stderr = run_cli("segment", "--out", tmp_path / "out")
    assert code == 2
    (line,) = error_lines(stderr)
    assert "--sample" in line


# -------------------------------------------------------------------------------------------------
# split
# -------------------------------------------------------------------------------------------------
def _encoded_image(side=512, n=4, dtype=np.uint16) -> np.ndarray:
    """Each tile holds one value encoding (row, col); its pixel (0, 5) is 0 to show orientation."""
    t = side // n
    image = np.zeros((side, side), dtype)
    for row in range(n):
        for col in range(n):
            base = 4096 + 256 * row + col if dtype == np.uint16 else 100 + 10 * row + col
            image[row * t:(row + 1) * t, col * t:(col + 1) * t] = base
            image[row * t, col * t + 5] = 0
    return image


def test_split_uint16_column_major_numbering(tmp_path):
    image = write_image(tmp_path / "big.tif", _encoded_image(), pixel_size_nm=0.8)
    out = tmp_path / "tiles"
    code, stdout, stderr = run_cli("split", image, "--out", out, "--tiles", "4")
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(f"big_{i}.png" for i in range(16))
    for index in range(16):
        tile = iio.imread(out / f"big_{index}.png")
        assert tile.shape == (128, 128)
        assert tile.dtype == np.uint16
        col, row = index // 4, index % 4  # the original tool's numbering
        expected = np.full((128, 128), 4096 + 256 * row + col, np.uint16)
        expected[0, 5] = 0
        np.testing.assert_array_equal(tile, expected, err_msg=f"tile {index}")
    with Image.open(out / "big_0.png") as im:
        assert im.mode.startswith("I;16")
    assert "16 tiles of 128x128 px" in stdout
    (warning,) = warning_lines(stderr)
    assert "128x128" in warning and "1024" in warning
    assert leftovers(out) == []


def test_split_uint8_gives_8_bit_pngs(tmp_path):
    image = write_image(tmp_path / "small.png", _encoded_image(256, 2, np.uint8))
    out = tmp_path / "tiles"
    code, _, stderr = run_cli("split", image, "--out", out, "--per-side", "2")
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == [f"small_{i}.png" for i in range(4)]
    for index in range(4):
        with Image.open(out / f"small_{index}.png") as im:
            assert im.mode == "L"
        tile = iio.imread(out / f"small_{index}.png")
        assert tile.dtype == np.uint8 and tile.shape == (128, 128)
        assert tile[1, 1] == 100 + 10 * (index % 2) + index // 2


def test_split_refuses_sides_not_divisible(tmp_path):
    image = write_image(tmp_path / "odd.tif", np.zeros((500, 500), np.uint16))
    out = tmp_path / "tiles"
    code, stdout, stderr = run_cli("split", image, "--out", out, "--tiles", "3")
    assert code == 2
    (line,) = error_lines(stderr)
    assert str(image) in line and "divisible" in line
    assert files_under(out) == []


def test_split_refuses_existing_tiles_without_overwrite(tmp_path):
    image = write_image(tmp_path / "big.tif", _encoded_image(256, 2), pixel_size_nm=0.8)
    out = tmp_path / "tiles"
    out.mkdir()
    (out / "big_3.png").write_bytes(b"training data")
    code, _, stderr = run_cli("split", image, "--out", out, "--tiles", "2")
    assert code == 2
    (line,) = error_lines(stderr)
    assert "big_3.png" in line and "--overwrite" in line
    assert sorted(p.name for p in out.iterdir()) == ["big_3.png"]  # nothing else written
    assert (out / "big_3.png").read_bytes() == b"training data"

    code, _, stderr = run_cli("split", image, "--out", out, "--tiles", "2", "--overwrite")
    assert code == 0, stderr
    assert len(list(out.iterdir())) == 4
    assert iio.imread(out / "big_3.png").shape == (128, 128)


# -------------------------------------------------------------------------------------------------
# info, usage, version
# -------------------------------------------------------------------------------------------------
def test_info_json():
    code, stdout, _ = run_cli("info", "--json")
    assert code == 0
    info = json.loads(stdout)
    assert {"keras_backend", "devices", "bundled_models"} <= set(info)
    assert info["napari-emgranules"] == __version__
    assert isinstance(info["devices"], list)
    locations = info["bundled_models"]["locations"]
    assert locations["parameters"] == 8656655
    assert locations["trained"] is True and locations["synthetic"] is True
    assert locations["pixel_size_nm"] == 3.2
    granules = info["bundled_models"]["granules"]
    assert granules["trained"] is True and granules["synthetic"] is True
    assert "synthetic" in granules["training_data"]
    assert len(locations["classes"]) == 7
    assert len(info["bundled_models"]["granules"]["classes"]) == 2


def test_info_plain_says_how_each_default_was_trained():
    code, stdout, _ = run_cli("info")
    assert code == 0
    assert "Keras backend:" in stdout
    lines = [line for line in stdout.splitlines() if line.startswith("bundled ")]
    assert len(lines) == 2
    assert all("trained on SYNTHETIC micrographs only" in line for line in lines)
    assert "8,656,655 parameters" in stdout


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert "usage: emgranules" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"emgranules {__version__}"


# -------------------------------------------------------------------------------------------------
# the installed entry points, in a subprocess
# -------------------------------------------------------------------------------------------------
def _env() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def test_console_script_corrupt_file_exit_2_one_line_no_traceback(tmp_path):
    script = Path(sys.executable).parent / "emgranules"
    assert script.is_file(), "the emgranules console script is not installed next to python"
    corrupt = tmp_path / "x.tif"
    corrupt.write_bytes(np.random.default_rng(1).bytes(2048))
    out = tmp_path / "out"
    # no TF_CPP_MIN_LOG_LEVEL here: a failed run must not even start the deep-learning stack
    proc = subprocess.run([str(script), "segment", str(corrupt), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.splitlines()  # exactly one line on stderr
    assert line.startswith(ERROR) and str(corrupt) in line
    assert proc.stdout == ""
    assert files_under(out) == []


def test_module_entry_point_version():
    proc = subprocess.run([sys.executable, "-m", "napari_emgranules.cli", "--version"],
                          capture_output=True, text=True, env=_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"emgranules {__version__}"
