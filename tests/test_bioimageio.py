"""BioImage Model Zoo packages: written with bioimageio.spec, checked by bioimageio.core's own test."""

from __future__ import annotations

import warnings
import zipfile

import numpy as np
import pytest

pytest.importorskip("bioimageio.core")
pytest.importorskip("tf2onnx")

from napari_emgranules.cli import main as cli  # noqa: E402
from napari_emgranules.core.bioimageio import _preprocess, export_bioimageio  # noqa: E402
from napari_emgranules.core.models import WeightsError, default_model, load_model  # noqa: E402
from napari_emgranules.core.segment import segment_micrograph  # noqa: E402
from napari_emgranules.core.synthetic import synthetic_micrograph  # noqa: E402


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return export_bioimageio(default_model("granules"), tmp_path_factory.mktemp("bio") / "granules.zip")


def test_bioimageio_core_test_passes_for_both_weight_formats(package):
    from bioimageio.core import test_model

    with zipfile.ZipFile(package) as z:
        names = set(z.namelist())
    assert {"rdf.yaml", "weights.onnx", "weights.keras", "test_input.npy", "test_output.npy",
            "cover.png", "README.md"} <= names
    summary = test_model(package)
    failed = [d.name for d in summary.details if d.status == "failed"]
    assert summary.status == "passed", failed
    formats = {d.name for d in summary.details if d.name.startswith("Reproduce test outputs")}
    assert any("onnx" in n for n in formats) and any("keras_v3" in n for n in formats)
    text = zipfile.ZipFile(package).read("rdf.yaml").decode()
    assert "10.1085/jgp.202413595" in text and "nanometer" in text and "scale_range" in text


def test_a_package_loads_wherever_weights_are_accepted(package):
    model = load_model(package, "granules")
    assert model.card.kind == "granules" and model.card.pixel_size_nm == pytest.approx(0.8)
    assert model.keras_model is not None  # Keras weights: it can be fine-tuned too
    image = synthetic_micrograph((256, 256), 0.8, seed=5).image
    ours = segment_micrograph(image, 0.8, kinds=("granules",), mode="whole")
    theirs = segment_micrograph(image, 0.8, granules_model=model, kinds=("granules",), mode="whole")
    assert (ours.granules == theirs.granules).mean() > 0.999


def test_export_model_cli_and_bad_packages(package, tmp_path):
    assert cli(["export-model", "--model", "granules", "--out", str(tmp_path / "g.onnx"),
                "--format", "bioimageio"]) == 2  # the suffix must say .zip
    out = tmp_path / "g.zip"
    out.write_bytes(b"old")
    assert cli(["export-model", "--model", "granules", "--out", str(out)]) == 2  # never replaced
    assert out.read_bytes() == b"old"
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip")
    with pytest.raises(WeightsError, match="not a BioImage Model Zoo package"):
        load_model(junk, "granules")
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("rdf.yaml", "type: model\n")
    with pytest.raises(WeightsError, match="not one of napari-emgranules"):
        load_model(other, "granules")


def test_zoo_preprocessing_matches_the_package_scalings():
    raw = np.random.default_rng(0).integers(1000, 60000, (1, 64, 64, 1)).astype(np.float32)
    x = _preprocess(raw, "percentile")
    assert x.min() >= 0 and x.max() <= 1
    assert np.percentile(x, 1) == pytest.approx(0.15, abs=0.01)
    assert np.percentile(x, 99) == pytest.approx(0.75, abs=0.01)
    np.testing.assert_allclose(_preprocess(raw, "dtype-range"), raw / 65535, rtol=1e-6)
