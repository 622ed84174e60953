"""Tests for napari_emgranules.core.io: reading/writing micrographs and label maps."""

from __future__ import annotations

import contextlib
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from PIL import Image, ImageFile

from napari_emgranules.core import _iobase as iobase
from napari_emgranules.core import io as mio
from napari_emgranules.core.io import (
    MICROGRAPH_SUFFIXES,
    PIXEL_SIZE_SOURCES,
    Micrograph,
    MicrographError,
    MicrographWarning,
    as_micrograph,
    atomic_output,
    check_image_array,
    metadata_pixel_size_nm,
    read_labels,
    read_micrograph,
    write_image,
    write_labels,
)

RNG = np.random.default_rng(1234)


def _image(dtype: type = np.uint16, shape: tuple[int, int] = (96, 80)) -> np.ndarray:
    hi = np.iinfo(dtype).max
    return RNG.integers(0, hi, size=shape, endpoint=True).astype(dtype)


def _gradient(shape: tuple[int, int] = (64, 64)) -> np.ndarray:
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    return ((rows + cols) * 255 // (shape[0] + shape[1] - 2)).astype(np.uint8)


@contextlib.contextmanager
def _raises(path: Path | str, *words: str) -> Iterator[None]:
    """Expect a one-line MicrographError starting with ``path`` and containing ``words``."""
    with pytest.raises(MicrographError) as info:
        yield
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path)), message
    for word in words:
        assert word.lower() in message.lower(), f"{word!r} not in {message!r}"


@pytest.fixture
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error", MicrographWarning)
        yield


# ------------------------------------------------------------------------------------------
# Formats and round trips
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"compression": "zlib"},
        {"compression": "lzw"},
        {"compression": "zstd"},
        {"bigtiff": True},
        {"bigtiff": True, "compression": "zlib"},
    ],
    ids=["plain", "deflate", "lzw", "zstd", "bigtiff", "bigtiff-deflate"],
)
def test_tiff_round_trip(tmp_path, no_warnings, dtype, kwargs):
    data = _image(dtype)
    path = tmp_path / "cell.tif"
    tifffile.imwrite(path, data, **kwargs)
    mg = read_micrograph(path)
    assert mg.data.dtype == dtype
    np.testing.assert_array_equal(mg.data, data)
    assert mg.shape == (96, 80)
    assert mg.name == "cell"
    assert mg.path == path
    assert mg.metadata["format"] == "tiff"
    assert mg.metadata["bigtiff"] is bool(kwargs.get("bigtiff"))
    assert (mg.pixel_size_nm, mg.pixel_size_source) == (0.8, "model")


def test_read_accepts_str_and_upper_case_suffix(tmp_path):
    data = _image(np.uint8)
    path = tmp_path / "UPPER.TIF"
    tifffile.imwrite(path, data)
    mg = read_micrograph(str(path))
    np.testing.assert_array_equal(mg.data, data)
    assert isinstance(mg.path, Path)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_round_trip(tmp_path, no_warnings, dtype):
    data = _image(dtype)
    path = tmp_path / "cell.png"
    iio.imwrite(path, data)
    mg = read_micrograph(path)
    assert mg.data.dtype == dtype
    np.testing.assert_array_equal(mg.data, data)
    assert mg.metadata["format"] == "png"


def test_jpeg_round_trip_is_approximate(tmp_path, no_warnings):
    data = _gradient((64, 96))
    path = tmp_path / "cell.jpg"
    iio.imwrite(path, data, quality=95)
    mg = read_micrograph(path)
    assert mg.data.dtype == np.uint8
    assert mg.shape == (64, 96)
    assert np.abs(mg.data.astype(int) - data).mean() < 3
    assert mg.pixel_size_source == "model"


def test_png_content_with_tif_suffix_is_read(tmp_path):
    data = _image(np.uint8)
    path = tmp_path / "renamed.tif"
    iio.imwrite(path, data, extension=".png")
    np.testing.assert_array_equal(read_micrograph(path).data, data)


# ------------------------------------------------------------------------------------------
# Pixel size
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unit", "per_unit", "expected_nm"),
    [("um", 1 / 0.0012, 1.2), ("micron", 1 / 0.0015, 1.5), ("nm", 1 / 0.9, 0.9)],
)
def test_pixel_size_from_imagej(tmp_path, no_warnings, unit, per_unit, expected_nm):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(
        path, _image(), imagej=True, resolution=(per_unit, per_unit), metadata={"unit": unit}
    )
    mg = read_micrograph(path)
    assert mg.pixel_size_source == "metadata:imagej"
    assert mg.pixel_size_nm == pytest.approx(expected_nm, rel=1e-4)
    assert metadata_pixel_size_nm(path)[1] == "metadata:imagej"


@pytest.mark.parametrize(("size", "unit", "expected_nm"), [(0.0012, "µm", 1.2), (1.1, "nm", 1.1)])
def test_pixel_size_from_ome(tmp_path, no_warnings, size, unit, expected_nm):
    path = tmp_path / "cell.ome.tif"
    meta = {"PhysicalSizeX": size, "PhysicalSizeXUnit": unit}
    meta.update(PhysicalSizeY=size, PhysicalSizeYUnit=unit)
    tifffile.imwrite(path, _image(), ome=True, metadata=meta)
    mg = read_micrograph(path)
    assert mg.pixel_size_source == "metadata:ome"
    assert mg.pixel_size_nm == pytest.approx(expected_nm, rel=1e-6)
    assert mg.name == "cell.ome"


def test_pixel_size_from_resolution_tags_in_cm(tmp_path, no_warnings):
    path = tmp_path / "cm.tif"
    tifffile.imwrite(path, _image(), resolution=(1e7 / 1.5, 1e7 / 1.5), resolutionunit="CENTIMETER")
    mg = read_micrograph(path)
    assert mg.pixel_size_source == "metadata:tiff-resolution"
    assert mg.pixel_size_nm == pytest.approx(1.5, rel=1e-6)
    assert metadata_pixel_size_nm(path) == (pytest.approx(1.5, rel=1e-6), mg.pixel_size_source)


@pytest.mark.parametrize(("dpi", "unit"), [(72, "INCH"), (300, "INCH"), (72 / 2.54, "CENTIMETER")])
def test_editor_default_resolution_is_ignored(tmp_path, no_warnings, dpi, unit):
    path = tmp_path / "dpi.tif"
    tifffile.imwrite(path, _image(), resolution=(dpi, dpi), resolutionunit=unit)
    assert metadata_pixel_size_nm(path) is None
    mg = read_micrograph(path, pixel_size_nm=1.1)
    assert (mg.pixel_size_nm, mg.pixel_size_source) == (1.1, "user")


def test_user_and_model_fallback(tmp_path, no_warnings):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, _image())
    assert metadata_pixel_size_nm(path) is None
    user = read_micrograph(path, 1.3)
    assert (user.pixel_size_nm, user.pixel_size_source) == (1.3, "user")
    model = read_micrograph(path, default_pixel_size_nm=0.9)
    assert (model.pixel_size_nm, model.pixel_size_source) == (0.9, "model")


def _imagej_file(path: Path, nm: float) -> Path:
    res = 1 / (nm / 1000)
    tifffile.imwrite(path, _image(), imagej=True, resolution=(res, res), metadata={"unit": "um"})
    return path


def test_metadata_beats_user_value_with_warning(tmp_path):
    path = _imagej_file(tmp_path / "ij.tif", 1.2)
    with pytest.warns(MicrographWarning, match="force_pixel_size") as rec:
        mg = read_micrograph(path, pixel_size_nm=2.0)
    message = str(rec[0].message)
    assert "1.2" in message and "2" in message and "ij.tif" in message
    assert mg.pixel_size_nm == pytest.approx(1.2, rel=1e-4)
    assert mg.pixel_size_source == "metadata:imagej"


def test_same_user_and_metadata_value_does_not_warn(tmp_path, no_warnings):
    path = _imagej_file(tmp_path / "ij.tif", 1.2)
    mg = read_micrograph(path, pixel_size_nm=1.2)
    assert mg.pixel_size_source == "metadata:imagej"


def test_force_pixel_size_overrides_metadata(tmp_path, no_warnings):
    path = _imagej_file(tmp_path / "ij.tif", 1.2)
    mg = read_micrograph(path, pixel_size_nm=2.0, force_pixel_size=True)
    assert (mg.pixel_size_nm, mg.pixel_size_source) == (2.0, "user")
    assert mg.metadata["metadata_pixel_size_nm"] == pytest.approx(1.2, rel=1e-4)


def test_non_square_pixels_use_x_and_warn(tmp_path):
    path = tmp_path / "aniso.tif"
    tifffile.imwrite(path, _image(), resolution=(1e7 / 1.0, 1e7 / 1.5), resolutionunit="CENTIMETER")
    with pytest.warns(MicrographWarning, match="not square"):
        mg = read_micrograph(path)
    assert mg.pixel_size_nm == pytest.approx(1.0)


def test_implausible_calibration_is_ignored_with_warning(tmp_path):
    path = tmp_path / "lm.ome.tif"
    meta = {"PhysicalSizeX": 0.5, "PhysicalSizeXUnit": "µm"}  # 500 nm/px: light microscopy
    tifffile.imwrite(path, _image(), ome=True, metadata=meta)
    with pytest.warns(MicrographWarning, match="plausible"):
        mg = read_micrograph(path, pixel_size_nm=1.0)
    assert (mg.pixel_size_nm, mg.pixel_size_source) == (1.0, "user")


def test_invalid_user_pixel_size_refused(tmp_path):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, _image())
    with _raises(path, "pixel_size_nm", "positive"):
        read_micrograph(path, pixel_size_nm=-1.0)


@pytest.mark.parametrize(
    ("unit", "nm"),
    [
        ("nm", 1.0),
        ("µm", 1e3),
        ("\u03bcm", 1e3),
        ("\\u00B5m", 1e3),
        ("um", 1e3),
        ("micron", 1e3),
        ("microns", 1e3),
        ("mm", 1e6),
        ("cm", 1e7),
        ("m", 1e9),
        ("Å", 0.1),
        ("\u212b", 0.1),
        ("pixel", None),
    ],
)
def test_unit_conversion(unit, nm):
    assert mio._unit_to_nm(unit) == nm


def test_pixel_size_sources_constant():
    assert set(PIXEL_SIZE_SOURCES) == {
        "metadata:tiff-resolution",
        "metadata:imagej",
        "metadata:ome",
        "metadata:png",
        "metadata:fei",
        "metadata:zeiss-sem",
        "metadata:mrc",
        "metadata:dm",
        "metadata:ome-zarr",
        "user",
        "model",
    }
    assert MICROGRAPH_SUFFIXES == (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".dm3", ".dm4", ".mrc",
                                   ".st", ".zarr")


# ------------------------------------------------------------------------------------------
# Image content
# ------------------------------------------------------------------------------------------


def test_rgb_tiff_converted_to_gray_with_warning(tmp_path):
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[...] = (100, 50, 200)
    path = tmp_path / "colour.tif"
    tifffile.imwrite(path, rgb)
    with pytest.warns(MicrographWarning, match="converted RGB to gray"):
        mg = read_micrograph(path)
    assert mg.data.dtype == np.uint8 and mg.shape == (64, 64)
    assert np.all(mg.data == 71)  # 0.2125*100 + 0.7154*50 + 0.0721*200 = 71.44
    assert mg.metadata["converted_from"] == "rgb"


def test_planar_rgb_tiff_is_not_a_stack(tmp_path):
    planar = np.zeros((3, 64, 80), np.uint16)
    planar[0], planar[1], planar[2] = 1000, 2000, 3000
    path = tmp_path / "planar.tif"
    tifffile.imwrite(path, planar, photometric="rgb", planarconfig="separate")
    with pytest.warns(MicrographWarning, match="gray"):
        mg = read_micrograph(path)
    assert mg.shape == (64, 80) and mg.data.dtype == np.uint16
    assert int(mg.data[0, 0]) == round(0.2125 * 1000 + 0.7154 * 2000 + 0.0721 * 3000)


def test_rgba_png_converted_with_warning(tmp_path):
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 255
    path = tmp_path / "rgba.png"
    iio.imwrite(path, rgba)
    with pytest.warns(MicrographWarning, match="alpha"):
        mg = read_micrograph(path)
    assert np.all(mg.data == 54)  # 0.2125 * 255 = 54.2
    assert mg.metadata["converted_from"] == "rgba"


def test_gray_saved_as_rgb_converts_silently(tmp_path, no_warnings):
    gray = _image(np.uint8)
    path = tmp_path / "grayrgb.png"
    iio.imwrite(path, np.stack([gray] * 3, axis=-1))
    mg = read_micrograph(path)
    np.testing.assert_array_equal(mg.data, gray)
    assert mg.metadata["converted_from"] == "rgb"


def test_palette_and_min_is_white_tiffs(tmp_path, no_warnings):
    index = (np.arange(64 * 64).reshape(64, 64) % 4).astype(np.uint8)
    gray_palette = np.tile(np.arange(256, dtype=np.uint16) * 257, (3, 1))
    pal = tmp_path / "palette.tif"
    tifffile.imwrite(pal, index, photometric="palette", colormap=gray_palette)
    mg = read_micrograph(pal)
    np.testing.assert_array_equal(mg.data, index)
    assert mg.metadata["converted_from"] == "palette"
    np.testing.assert_array_equal(read_labels(pal), index)  # labels keep the indices
    white = tmp_path / "miniswhite.tif"
    tifffile.imwrite(white, index, photometric="miniswhite")
    np.testing.assert_array_equal(read_micrograph(white).data, 255 - index)


def test_array_stack_refused():
    with _raises("<array>", "stack of 5", "64x64", "one 2-D"):
        check_image_array(np.zeros((5, 64, 64), np.uint8))
    with _raises("<array>", "stack of 6"):
        as_micrograph(np.zeros((2, 3, 64, 64), np.uint8))


def test_singleton_dimensions_squeezed():
    out = check_image_array(np.ones((1, 64, 48, 1), np.uint16))
    assert out.shape == (64, 48) and out.dtype == np.uint16


def test_multipage_tiff_refused(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.zeros((4, 64, 64), np.uint8), photometric="minisblack")
    with _raises(path, "stack of 4", "64x64", "save one plane"):
        read_micrograph(path)


def test_appended_pages_refused(tmp_path):
    path = tmp_path / "pages.tif"
    for _ in range(3):
        tifffile.imwrite(path, _image(np.uint8), append=True, metadata=None)
    with _raises(path, "stack of 3"):
        read_micrograph(path)


def test_float_with_nan_refused(tmp_path):
    data = np.ones((64, 64), np.float32)
    data[3, 4] = np.nan
    data[5, 6] = np.inf
    with _raises("<array>", "2 NaN/infinite"):
        check_image_array(data)
    path = tmp_path / "nan.tif"
    tifffile.imwrite(path, data)
    with _raises(path, "NaN"):
        read_micrograph(path)


def test_float_accepted_as_float32(tmp_path, no_warnings):
    data = RNG.random((64, 70)).astype(np.float64)
    out = check_image_array(data)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, data, rtol=1e-6)
    path = tmp_path / "float.tif"
    tifffile.imwrite(path, data.astype(np.float32))
    mg = read_micrograph(path)
    assert mg.data.dtype == np.float32 and mg.metadata["dtype"] == "float32"


def test_bool_becomes_uint8():
    mask = np.zeros((64, 64), bool)
    mask[10:20, 10:20] = True
    out = check_image_array(mask)
    assert out.dtype == np.uint8
    assert set(np.unique(out)) == {0, 255}


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.uint32])
def test_other_integer_dtypes_kept(dtype):
    out = check_image_array(np.arange(64 * 64).reshape(64, 64).astype(dtype))
    assert out.dtype == dtype


def test_complex_and_text_arrays_refused():
    with _raises("<array>", "complex"):
        check_image_array(np.zeros((64, 64), np.complex64))
    with _raises("<array>", "unsupported pixel type"):
        check_image_array(np.full((64, 64), "a"))


def test_float64_overflowing_float32_refused():
    data = np.ones((64, 64))
    data[0, 0] = 1e300
    with _raises("<array>", "1 NaN/infinite"):
        check_image_array(data)


def test_empty_inputs_refused(tmp_path):
    path = tmp_path / "empty.tif"
    path.write_bytes(b"")
    with _raises(path, "empty"):
        read_micrograph(path)
    with _raises("<array>", "empty"):
        check_image_array(np.zeros((0, 64), np.uint8))


@pytest.mark.parametrize("name", ["plain.tif", "deflate.tif", "big.tif", "cut.png"])
def test_truncated_files_refused(tmp_path, name):
    path = tmp_path / name
    data = _image(np.uint16, (128, 128))
    if name.endswith(".png"):
        iio.imwrite(path, data)
    else:
        kwargs = {"deflate.tif": {"compression": "zlib"}, "big.tif": {"bigtiff": True}}
        tifffile.imwrite(path, data, **kwargs.get(name, {}))
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    with _raises(path, "truncated"):
        read_micrograph(path)


def test_truncated_png_refused_even_if_pillow_allows_truncation(tmp_path, monkeypatch):
    path = tmp_path / "cut.png"
    iio.imwrite(path, _image(np.uint16, (128, 128)))
    path.write_bytes(path.read_bytes()[:-200])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with _raises(path, "truncated"):
        read_micrograph(path)


def test_tiff_with_directory_at_end_truncated(tmp_path):
    path = tmp_path / "libtiff.tif"
    Image.fromarray(_image(np.uint8, (128, 128))).save(path)  # Pillow puts the IFD last
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with _raises(path, "truncated"):
        read_micrograph(path)
    bad = tmp_path / "bad_ifd.tif"
    bad.write_bytes(b"II*\x00" + struct.pack("<I", 10**6) + bytes(64))
    with _raises(bad, "truncated or corrupt"):
        read_micrograph(bad)


def test_thumbnail_page_is_not_a_stack(tmp_path):
    path = tmp_path / "thumb.tif"
    data = _image(np.uint8)
    tifffile.imwrite(path, data, metadata=None)
    tifffile.imwrite(path, data[::4, ::4], append=True, metadata=None)
    np.testing.assert_array_equal(read_micrograph(path).data, data)


def test_text_file_named_tif_refused(tmp_path):
    path = tmp_path / "notes.tif"
    path.write_text("these are my notes, not an image\n")
    with _raises(path, "not a TIFF image", "cannot be read as TIFF"):
        read_micrograph(path)
    other = tmp_path / "notes.png"
    other.write_text("still not an image\n")
    with _raises(other, "cannot be read as PNG"):
        read_micrograph(other)


def test_missing_file_and_directory_refused(tmp_path):
    missing = tmp_path / "nope.tif"
    with _raises(missing, "does not exist"):
        read_micrograph(missing)
    folder = tmp_path / "folder.tif"
    folder.mkdir()
    with _raises(folder, "folder"):
        read_micrograph(folder)


def test_tiny_image_refused(tmp_path):
    path = tmp_path / "tiny.tif"
    tifffile.imwrite(path, np.zeros((10, 12), np.uint8))
    with _raises(path, "10x12", "32x32"):
        read_micrograph(path)
    with _raises("<array>", "at least 32x32"):
        check_image_array(np.zeros((64,), np.uint8))


def test_unsupported_suffix_refused(tmp_path):
    path = tmp_path / "cell.bmp"
    Image.fromarray(_image(np.uint8)).save(path)
    with _raises(path, "unsupported", ".tif", ".png"):
        read_micrograph(path)


def test_huge_image_refused_before_decoding(tmp_path, monkeypatch):
    tif = tmp_path / "big.tif"
    tifffile.imwrite(tif, _image())
    png = tmp_path / "big.png"
    iio.imwrite(png, _image())
    monkeypatch.setattr(iobase, "available_memory_bytes", lambda: 10_000)  # read by the size guard
    for path in (tif, png):
        with _raises(path, "GB", "tiled"):
            read_micrograph(path)


def test_oversized_side_refused(tmp_path, monkeypatch):
    path = tmp_path / "wide.tif"
    tifffile.imwrite(path, _image())
    monkeypatch.setattr(iobase, "MAX_SIDE_PX", 64)  # read by the size guard
    with _raises(path, "96x80", "tiles"):
        read_micrograph(path)


def test_available_memory_is_reported():
    available = mio.available_memory_bytes()
    assert available is None or available > 0


# ------------------------------------------------------------------------------------------
# as_micrograph / Micrograph
# ------------------------------------------------------------------------------------------


def test_as_micrograph_from_array():
    mg = as_micrograph(_image(np.uint8), name="field1")
    assert (mg.pixel_size_nm, mg.pixel_size_source) == (0.8, "model")
    assert mg.name == "field1" and mg.path is None
    user = as_micrograph(_image(np.uint8), 1.4)
    assert (user.pixel_size_nm, user.pixel_size_source) == (1.4, "user")
    assert as_micrograph(_image(np.uint8)).name == "image"


def test_as_micrograph_passes_micrograph_through(tmp_path):
    path = _imagej_file(tmp_path / "ij.tif", 1.2)
    mg = read_micrograph(path)
    assert as_micrograph(mg) is mg
    changed = as_micrograph(mg, 2.5)
    assert (changed.pixel_size_nm, changed.pixel_size_source) == (2.5, "user")
    assert changed.metadata["previous_pixel_size_source"] == "metadata:imagej"
    assert as_micrograph(path).pixel_size_source == "metadata:imagej"


def test_micrograph_validates_fields():
    with pytest.raises(MicrographError, match="2-D"):
        Micrograph(np.zeros((2, 64, 64)), 1.0, "user")
    with pytest.raises(MicrographError, match="pixel_size_source"):
        Micrograph(np.zeros((64, 64)), 1.0, "guess")


# ------------------------------------------------------------------------------------------
# Labels and writing
# ------------------------------------------------------------------------------------------


def _labels(shape: tuple[int, int] = (64, 72), top: int = 5) -> np.ndarray:
    return RNG.integers(0, top, size=shape, endpoint=True).astype(np.uint8)


def test_write_labels_png_is_uint16_on_disk(tmp_path):
    labels = _labels()
    out = write_labels(tmp_path / "sub" / "labels.png", labels)
    assert out == tmp_path / "sub" / "labels.png" and out.is_file()
    on_disk = iio.imread(out)
    assert on_disk.dtype == np.uint16
    np.testing.assert_array_equal(on_disk, labels)
    with Image.open(out) as im:
        assert im.mode.startswith("I;16")
    back = read_labels(out)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, labels)


def test_write_labels_tiff_recovers_pixel_size(tmp_path, no_warnings):
    labels = _labels()
    out = write_labels(tmp_path / "labels.tif", labels, pixel_size_nm=1.23)
    with tifffile.TiffFile(out) as tif:
        page = tif.pages.first
        assert page.dtype == np.uint8
        assert page.compression in (
            tifffile.COMPRESSION.ADOBE_DEFLATE,
            tifffile.COMPRESSION.DEFLATE,
        )
    np.testing.assert_array_equal(read_labels(out), labels)
    mg = read_micrograph(out)
    assert mg.pixel_size_source == "metadata:tiff-resolution"
    assert mg.pixel_size_nm == pytest.approx(1.23, rel=1e-6)


@pytest.mark.parametrize(
    ("dtype", "top", "stored"),
    [(np.int64, 5, np.uint8), (np.int32, 300, np.uint16), (np.uint16, 3, np.uint16)],
)
def test_write_labels_tiff_dtype(tmp_path, dtype, top, stored):
    labels = _labels(top=3).astype(dtype)
    labels[0, 0] = top
    out = write_labels(tmp_path / "l.tiff", labels)
    back = read_labels(out)
    assert back.dtype == stored
    np.testing.assert_array_equal(back, labels)


@pytest.mark.parametrize(
    ("labels", "words"),
    [
        (np.full((64, 64), -1, np.int16), ("negative",)),
        (np.zeros((64, 64), np.float32), ("integer", "float32")),
        (np.full((64, 64), 70000, np.int32), ("65536",)),
        (np.zeros((2, 64, 64), np.uint8), ("2-D",)),
    ],
    ids=["negative", "float", "too-large", "3d"],
)
def test_write_labels_refuses_bad_labels(tmp_path, labels, words):
    path = tmp_path / "bad.png"
    with _raises(path, *words):
        write_labels(path, labels)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_write_labels_refuses_jpeg(tmp_path):
    path = tmp_path / "labels.jpg"
    with _raises(path, "lossy"):
        write_labels(path, _labels())


def test_read_labels_refuses_rgb_and_accepts_palette(tmp_path):
    rgb = tmp_path / "rgb.png"
    iio.imwrite(rgb, np.zeros((64, 64, 3), np.uint8))
    with _raises(rgb, "single-channel"):
        read_labels(rgb)
    labels = _labels()
    pal = tmp_path / "pal.png"
    im = Image.fromarray(labels, mode="L").convert("P")
    im.putpalette([v for i in range(256) for v in (i * 40 % 256, i * 90 % 256, i * 10 % 256)])
    im.save(pal)
    np.testing.assert_array_equal(read_labels(pal), labels)


def test_read_labels_float_file(tmp_path):
    labels = _labels()
    ok = tmp_path / "float.tif"
    tifffile.imwrite(ok, labels.astype(np.float32))
    back = read_labels(ok)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, labels)
    bad = tmp_path / "fractional.tif"
    tifffile.imwrite(bad, labels.astype(np.float32) + 0.5)
    with _raises(bad, "whole numbers"):
        read_labels(bad)
    jpg = tmp_path / "labels.jpg"
    iio.imwrite(jpg, labels)
    with _raises(jpg, "unsupported", ".png"):
        read_labels(jpg)


def test_read_labels_errors(tmp_path):
    missing = tmp_path / "none.png"
    with _raises(missing, "does not exist"):
        read_labels(missing)
    path = write_labels(tmp_path / "l.tif", _labels())
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    with _raises(path, "truncated"):
        read_labels(path)
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.zeros((3, 64, 64), np.uint8), photometric="minisblack")
    with _raises(stack, "stack of 3"):
        read_labels(stack)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_write_image_png_round_trip(tmp_path, dtype):
    data = _image(dtype)
    out = write_image(tmp_path / "img.png", data, pixel_size_nm=0.8)
    assert iio.imread(out).dtype == dtype
    mg = read_micrograph(out)
    np.testing.assert_array_equal(mg.data, data)
    assert mg.pixel_size_source == "metadata:png"
    assert mg.pixel_size_nm == pytest.approx(0.8, rel=1e-6)


def test_write_image_tiff_float_and_refusals(tmp_path):
    data = RNG.random((64, 64)).astype(np.float32)
    out = write_image(tmp_path / "prob.tif", data, pixel_size_nm=2.0)
    mg = read_micrograph(out)
    np.testing.assert_array_equal(mg.data, data)
    assert mg.pixel_size_nm == pytest.approx(2.0)
    png = tmp_path / "prob.png"
    with _raises(png, "float32", ".tif"):
        write_image(png, data)
    assert not png.exists()


def test_atomic_output_cleans_up_on_error(tmp_path):
    target = tmp_path / "out.tif"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_output(target) as tmp:
            assert tmp.parent == tmp_path and tmp != target
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_keeps_existing_target_on_error(tmp_path):
    target = tmp_path / "labels.png"
    write_labels(target, _labels())
    before = target.read_bytes()
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["labels.png"]


def test_atomic_output_replaces_target(tmp_path):
    target = tmp_path / "new" / "deeper" / "file.txt"
    with atomic_output(target) as tmp:
        tmp.write_text("done")
    assert target.read_text() == "done"
    assert [p.name for p in target.parent.iterdir()] == ["file.txt"]
