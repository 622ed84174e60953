"""EM file formats: MRC, Gatan Digital Micrograph (DM4), FEI/Thermo and Zeiss SEM TIFF tags.

No library writes Digital Micrograph files, and rosettasciio's own test files are downloaded on
demand rather than installed, so :func:`write_dm4` below builds minimal DM4 files from the published
format (Gatan's tag tree: header, tag groups, ``%%%%``-delimited data tags; as documented by
C. Boothroyd and implemented by the rosettasciio and ncempy readers): an ``ImageList`` with a
thumbnail and the image, its ``ImageData`` (``Data``, ``DataType``, ``Dimensions``,
``Calibrations``) and a ``Thumbnails`` group, as Digital Micrograph writes them.
"""

from __future__ import annotations

import struct
import sys

import numpy as np
import pytest
import tifffile

from napari_emgranules.core.io import (
    MICROGRAPH_SUFFIXES,
    MicrographError,
    metadata_pixel_size_nm,
    read_micrograph,
)

mrcfile = pytest.importorskip("mrcfile")
pytest.importorskip("rsciio")


# ------------------------------------------------------------------------------------------
# A minimal DM4 writer (the published tag-tree format)
# ------------------------------------------------------------------------------------------
# numpy dtype -> (DM tag element type, DM image DataType)
_DM_TYPES = {np.dtype("int16"): (2, 1), np.dtype("float32"): (6, 2), np.dtype("uint8"): (10, 6),
             np.dtype("uint16"): (4, 10), np.dtype("int32"): (3, 7)}


def _tag(name: str, body: bytes, group: bool) -> bytes:
    """A DM4 tag entry: type (20 group, 21 data), name length and name, byte length of the body."""
    raw = name.encode("latin-1")
    return struct.pack(">bH", 20 if group else 21, len(raw)) + raw + struct.pack(">Q", len(body)) + body


def _group_body(tags: list[bytes]) -> bytes:
    return struct.pack(">BBQ", 0, 0, len(tags)) + b"".join(tags)  # sorted, open, number of tags


def _data_body(info: list[int], payload: bytes) -> bytes:
    return b"%%%%" + struct.pack(">Q", len(info)) + struct.pack(f">{len(info)}Q", *info) + payload


def _g(name: str, *tags: bytes) -> bytes:
    return _tag(name, _group_body(list(tags)), True)


def _f32(name: str, v: float) -> bytes:
    return _tag(name, _data_body([6], struct.pack("<f", v)), False)


def _i32(name: str, v: int) -> bytes:
    return _tag(name, _data_body([3], struct.pack("<i", v)), False)


def _u32(name: str, v: int) -> bytes:
    return _tag(name, _data_body([5], struct.pack("<I", v)), False)


def _text(name: str, s: str) -> bytes:  # DM strings: arrays of 16-bit characters
    raw = s.encode("utf-16-le")
    return _tag(name, _data_body([20, 4, len(raw) // 2], raw), False)


def _array(name: str, a: np.ndarray) -> bytes:
    element = _DM_TYPES[a.dtype][0]
    return _tag(name, _data_body([20, element, a.size], a.astype(a.dtype.newbyteorder("<")).tobytes()),
                False)


def _image(a: np.ndarray, scale: float, units: str) -> bytes:
    dims = a.shape[::-1]  # DM lists X first
    calibration = [_g("", _f32("Origin", 0.0), _f32("Scale", scale), _text("Units", units))
                   for _ in dims]
    return _g("", _g("ImageData",
                     _g("Calibrations",
                        _g("Brightness", _f32("Origin", 0.0), _f32("Scale", 1.0), _text("Units", "")),
                        _g("Dimension", *calibration)),
                     _array("Data", a), _i32("DataType", _DM_TYPES[a.dtype][1]),
                     _g("Dimensions", *[_u32("", d) for d in dims])),
              _g("ImageTags", _g("Microscope Info", _f32("Indicated Magnification", 20000.0))),
              _text("Name", "micrograph"))


def write_dm4(path, data, scale: float = 0.8, units: str = "nm", thumbnail: bool = True) -> None:
    """A DM4 file holding ``data`` with ``scale`` ``units`` per pixel (and a thumbnail)."""
    a = np.asarray(data)
    images = [_image(np.zeros((8, 8), np.uint8), 1.0, "")] if thumbnail else []
    images.append(_image(a, scale, units))
    root = [_g("ImageList", *images)]
    if thumbnail:
        root.append(_g("Thumbnails", _g("", _i32("ImageIndex", 0))))
    body = _group_body(root)
    with open(path, "wb") as fh:  # version 4, root length, little-endian data
        fh.write(struct.pack(">IQI", 4, len(body) + 8, 1) + body + b"\0" * 8)


def _image_u16(shape=(64, 96), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 65535, shape, dtype=np.uint16)


def _write_mrc(path, data, voxel_angstrom: float | None = 8.0):
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        if voxel_angstrom is not None:
            mrc.voxel_size = voxel_angstrom
    return path


# ------------------------------------------------------------------------------------------
# MRC
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["uint16", "int16", "float32"])
def test_mrc_read_with_pixel_size(tmp_path, dtype):
    a = _image_u16()
    if dtype == "int16":
        a = (a.astype(np.int32) - 32768).astype(np.int16)
    elif dtype == "float32":
        a = a.astype(np.float32) / 65535
    path = _write_mrc(tmp_path / "cell.mrc", a, 8.0)
    m = read_micrograph(path)
    assert m.data.dtype == np.dtype(dtype) and np.array_equal(m.data, a)
    assert m.pixel_size_nm == pytest.approx(0.8) and m.pixel_size_source == "metadata:mrc"
    assert m.metadata["format"] == "mrc"
    assert metadata_pixel_size_nm(path) == (pytest.approx(0.8), "metadata:mrc")


def test_mrc_single_section_st_and_uncalibrated(tmp_path):
    a = _image_u16()
    st = _write_mrc(tmp_path / "tilt.st", a[None], None)  # one section, no calibration
    m = read_micrograph(st, 1.1)
    assert m.shape == a.shape and m.pixel_size_source == "user" and m.pixel_size_nm == 1.1
    # 1 Å is what writers put when they know nothing: not taken as a calibration
    ones = _write_mrc(tmp_path / "ones.mrc", a, 1.0)
    assert read_micrograph(ones).pixel_size_source == "model"
    assert metadata_pixel_size_nm(ones) is None


def test_mrc_imod_unsigned_bytes(tmp_path):
    """IMOD stores 8-bit images as mode 0 with unsigned values unless it flags them signed."""
    u8 = np.arange(64 * 64, dtype=np.uint32).reshape(64, 64).astype(np.uint8)
    path = tmp_path / "imod.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(u8.view(np.int8))
        mrc.voxel_size = 8.0
        extra2 = bytearray(mrc.header.extra2.tobytes())
        extra2[40:48] = np.array([1146047817, 0], dtype="<i4").tobytes()  # imodStamp, imodFlags
        mrc.header.extra2 = np.frombuffer(bytes(extra2), dtype=mrc.header.extra2.dtype)[0]
    m = read_micrograph(path)
    assert m.data.dtype == np.uint8 and np.array_equal(m.data, u8)


def test_mrc_stack_refused_with_section_count(tmp_path):
    path = _write_mrc(tmp_path / "series.st", np.zeros((5, 64, 96), np.int16))
    with pytest.raises(MicrographError, match=r"series\.st: contains a stack of 5 sections of 64x96"):
        read_micrograph(path)


def test_mrc_broken_files(tmp_path):
    good = _write_mrc(tmp_path / "good.mrc", _image_u16())
    raw = good.read_bytes()
    (tmp_path / "cut.mrc").write_bytes(raw[:-1000])
    with pytest.raises(MicrographError, match=r"cut\.mrc: is truncated or corrupt"):
        read_micrograph(tmp_path / "cut.mrc")
    (tmp_path / "junk.mrc").write_bytes(b"not an image " * 100)
    with pytest.raises(MicrographError, match=r"junk\.mrc: is not a readable MRC file"):
        read_micrograph(tmp_path / "junk.mrc")
    (tmp_path / "empty.mrc").write_bytes(b"")
    with pytest.raises(MicrographError, match=r"empty\.mrc: is empty"):
        read_micrograph(tmp_path / "empty.mrc")
    (tmp_path / "short.mrc").write_bytes(raw[:500])  # not even a whole header
    with pytest.raises(MicrographError, match=r"short\.mrc: is not a readable MRC file"):
        read_micrograph(tmp_path / "short.mrc")


def test_missing_em_package_says_what_to_install(tmp_path, monkeypatch):
    path = _write_mrc(tmp_path / "cell.mrc", _image_u16())
    dm = tmp_path / "cell.dm4"
    write_dm4(dm, _image_u16())
    monkeypatch.setitem(sys.modules, "mrcfile", None)
    monkeypatch.setitem(sys.modules, "rsciio.digitalmicrograph", None)
    with pytest.raises(MicrographError,
                       match=r"needs the 'mrcfile' package.*pip install \"napari-emgranules\[em\]\""):
        read_micrograph(path)
    with pytest.raises(MicrographError, match=r"needs the 'rosettasciio' package.*\[em\]"):
        read_micrograph(dm)


# ------------------------------------------------------------------------------------------
# Digital Micrograph
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("dtype", "scale", "units", "nm"), [
    ("uint16", 0.00075, "µm", 0.75),
    ("uint8", 1.2, "nm", 1.2),
    ("int16", 9.0, "Å", 0.9),
    ("float32", 0.8, "nm", 0.8),
])
def test_dm4_read_with_calibration(tmp_path, dtype, scale, units, nm):
    a = _image_u16((80, 112))
    a = (a // 257).astype(np.uint8) if dtype == "uint8" else a.astype(dtype) if dtype != "float32" \
        else (a / 65535).astype(np.float32)
    path = tmp_path / "cell.dm4"
    write_dm4(path, a, scale, units)
    m = read_micrograph(path)
    assert m.data.dtype == np.dtype(dtype) and np.array_equal(m.data, a)
    assert m.pixel_size_nm == pytest.approx(nm, rel=1e-6) and m.pixel_size_source == "metadata:dm"
    assert m.metadata["format"] == "dm" and m.metadata["dm_version"] == 4
    assert metadata_pixel_size_nm(path)[1] == "metadata:dm"


def test_dm4_uncalibrated_and_without_thumbnail(tmp_path):
    a = _image_u16()
    path = tmp_path / "raw.dm4"
    write_dm4(path, a, 1.0, "", thumbnail=False)
    m = read_micrograph(path, 0.9)
    assert np.array_equal(m.data, a) and (m.pixel_size_nm, m.pixel_size_source) == (0.9, "user")
    assert metadata_pixel_size_nm(path) is None


def test_dm4_stack_and_broken_files(tmp_path):
    write_dm4(tmp_path / "stack.dm4", np.zeros((3, 40, 50), np.uint16))
    with pytest.raises(MicrographError, match=r"stack\.dm4: contains a stack of 3 images of 40x50"):
        read_micrograph(tmp_path / "stack.dm4")
    write_dm4(tmp_path / "good.dm4", _image_u16())
    raw = (tmp_path / "good.dm4").read_bytes()
    (tmp_path / "cut.dm4").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(MicrographError, match=r"cut\.dm4: is truncated or corrupt .*DM4"):
        read_micrograph(tmp_path / "cut.dm4")
    (tmp_path / "junk.dm3").write_bytes(b"\x00\x00\x00\x07" + b"x" * 200)
    with pytest.raises(MicrographError, match=r"junk\.dm3: is not a Gatan Digital Micrograph file"):
        read_micrograph(tmp_path / "junk.dm3")
    (tmp_path / "empty.dm4").write_bytes(b"")
    with pytest.raises(MicrographError, match=r"empty\.dm4: is empty"):
        read_micrograph(tmp_path / "empty.dm4")


# ------------------------------------------------------------------------------------------
# FEI / Thermo Fisher and Zeiss SEM TIFF tags
# ------------------------------------------------------------------------------------------
def _tiff_with_tag(path, tag: int, text: str, **kwargs):
    raw = text.encode("latin-1")  # instruments write 8-bit text (µ as 0xB5)
    tifffile.imwrite(path, _image_u16(), extratags=[(tag, "s", 0, raw, True)], **kwargs)
    return path


def test_fei_tiff_pixel_size(tmp_path):
    text = "[User]\r\nDate=01/02/2024\r\n[Scan]\r\nPixelWidth=1.2e-09\r\nPixelHeight=1.2e-09\r\n"
    path = _tiff_with_tag(tmp_path / "helios.tif", 34682, text, resolution=(72, 72))  # FEI_HELIOS
    m = read_micrograph(path)
    assert (m.pixel_size_nm, m.pixel_size_source) == (pytest.approx(1.2), "metadata:fei")
    # only [EScan] (older instruments)
    path = _tiff_with_tag(tmp_path / "escan.tif", 34682, "[EScan]\nPixelWidth=7.5e-10\n")
    assert metadata_pixel_size_nm(path) == (pytest.approx(0.75), "metadata:fei")
    # an ImageJ calibration the user set wins over the instrument's
    path = tmp_path / "both.tif"
    tifffile.imwrite(path, _image_u16(), imagej=True, resolution=(1 / 0.9, 1 / 0.9),
                     metadata={"unit": "nm"}, extratags=[(34682, "s", 0, text, True)])
    assert metadata_pixel_size_nm(path) == (pytest.approx(0.9), "metadata:imagej")


def test_zeiss_sem_tiff_pixel_size(tmp_path):
    text = "0\r\n0\r\nAP_IMAGE_PIXEL_SIZE\r\nImage Pixel Size = 1.5 nm\r\nAP_WD\r\nWD = 5.0 mm\r\n"
    path = _tiff_with_tag(tmp_path / "sem.tif", 34118, text)  # CZ_SEM
    m = read_micrograph(path)
    assert (m.pixel_size_nm, m.pixel_size_source) == (pytest.approx(1.5), "metadata:zeiss-sem")
    path = _tiff_with_tag(tmp_path / "sem_um.tif", 34118, "AP_PIXEL_SIZE\nPixel Size = 0.0021 µm\n")
    assert metadata_pixel_size_nm(path) == (pytest.approx(2.1), "metadata:zeiss-sem")
    # an implausible value (a low-magnification overview) is not used, with a warning
    path = _tiff_with_tag(tmp_path / "overview.tif", 34118, "AP_PIXEL_SIZE\nPixel Size = 2.5 µm\n")
    with pytest.warns(UserWarning, match="outside the plausible range"):
        assert read_micrograph(path).pixel_size_source == "model"


# ------------------------------------------------------------------------------------------
# napari reader and CLI
# ------------------------------------------------------------------------------------------
def test_napari_reader_opens_em_files(tmp_path):
    from napari_emgranules._reader import napari_get_reader

    mrc = _write_mrc(tmp_path / "a.mrc", _image_u16(), 12.0)
    dm = tmp_path / "b.dm4"
    write_dm4(dm, _image_u16(), 0.9, "nm")
    reader = napari_get_reader([str(mrc), str(dm)])
    assert reader is not None
    layers = reader([str(mrc), str(dm)])
    assert [layer[1]["scale"][0] for layer in layers] == [pytest.approx(1.2), pytest.approx(0.9)]
    assert layers[0][1]["metadata"]["pixel_size_source"] == "metadata:mrc"


def test_manifest_reader_patterns_cover_every_suffix():
    from pathlib import Path

    import yaml

    import napari_emgranules

    manifest = yaml.safe_load((Path(napari_emgranules.__file__).parent / "napari.yaml").read_text())
    patterns = manifest["contributions"]["readers"][0]["filename_patterns"]
    assert {f"*{s}" for s in MICROGRAPH_SUFFIXES} == set(patterns)


def test_cli_split_reads_mrc_and_dm(tmp_path, capsys):
    from napari_emgranules.cli import main

    a = _image_u16((128, 128))
    (tmp_path / "in").mkdir()
    _write_mrc(tmp_path / "in" / "m.mrc", a)
    write_dm4(tmp_path / "in" / "d.dm4", a)
    assert main(["split", str(tmp_path / "in"), "--out", str(tmp_path / "tiles"), "--tiles", "2"]) == 0
    names = sorted(p.name for p in (tmp_path / "tiles").iterdir())
    assert names == [f"{s}_{i}.png" for s in ("d", "m") for i in range(4)]
    tile = read_micrograph(tmp_path / "tiles" / "m_0.png")
    assert np.array_equal(tile.data, a[:64, :64]) and tile.pixel_size_nm == pytest.approx(0.8, rel=1e-3)
    capsys.readouterr()
    (tmp_path / "bad.st").write_bytes(b"garbage" * 50)
    assert main(["split", str(tmp_path / "bad.st"), "--out", str(tmp_path / "t2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.st: is not a readable MRC file" in err[0]
