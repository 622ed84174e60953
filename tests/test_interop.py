"""ONNX export, ONNX Runtime as the engine, ZEISS .czann/.czmodel export, and ``export-model``.

One real export (the bundled Granules model, via the CLI) is shared by the module; the refusal
tests use tiny hand-built ONNX networks.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import textwrap
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from napari_emgranules.cli import main  # noqa: E402
from napari_emgranules.core.interop import (  # noqa: E402
    ONNX_CARD_KEY,
    ExportError,
    OnnxSegmentationModel,
    export_czann,
    export_onnx,
)
from napari_emgranules.core.models import (  # noqa: E402
    ModelCard,
    WeightsError,
    default_model,
    load_model,
    save_model,
    sidecar_path,
)
from napari_emgranules.core.schema import ClassSchema  # noqa: E402
from napari_emgranules.core.segment import segment_micrograph  # noqa: E402
from napari_emgranules.core.synthetic import synthetic_micrograph  # noqa: E402


# -------------------------------------------------------------------------------------------------
# fixtures and helpers
# -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keras_granules():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return default_model("granules")


@pytest.fixture(scope="module")
def granules_onnx(tmp_path_factory, keras_granules):
    """The bundled Granules model exported by ``emgranules export-model`` (the one TF export)."""
    out = tmp_path_factory.mktemp("onnx") / "granules.onnx"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["export-model", "--model", "granules", "--out", str(out)]) == 0
    assert "warning" not in err.getvalue(), err.getvalue()  # no converter chatter (np.object)
    return out


@pytest.fixture(scope="module")
def micrograph():
    return synthetic_micrograph((256, 256), 0.8, seed=1)


def tiny_onnx(path: Path, *, n_in: int = 1, n_out: int = 2, card: dict | None = None,
              sidecar: dict | None = None) -> Path:
    """A per-pixel linear 'network' (n, h, w, n_in) -> (n, h, w, n_out), optionally with a card."""
    w = numpy_helper.from_array(np.linspace(-4, 4, n_in * n_out, dtype=np.float32)
                                .reshape(n_in, n_out), "w")
    b = numpy_helper.from_array(np.linspace(2, -2, n_out, dtype=np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["image", "w"], ["mm"]),
         helper.make_node("Add", ["mm", "b"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", "h", "w", n_in])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", "h", "w", n_out])],
        [w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if card is not None:
        entry = model.metadata_props.add()
        entry.key, entry.value = ONNX_CARD_KEY, json.dumps(card)
    onnx.save(model, str(path))
    if sidecar is not None:
        sidecar_path(path).write_text(json.dumps(sidecar))
    return path


def card_dict(kind: str, schema: ClassSchema | None = None) -> dict:
    card = ModelCard.default(kind)
    if schema is not None:
        card.schema = schema
    return card.to_dict()


def near_ties(logits: np.ndarray, margin: float = 1e-3) -> np.ndarray:
    top2 = np.sort(logits, axis=-1)[..., -2:]
    return (top2[..., 1] - top2[..., 0]) < margin


# -------------------------------------------------------------------------------------------------
# ONNX export
# -------------------------------------------------------------------------------------------------
def test_onnx_file_layout_and_model_card(granules_onnx, keras_granules):
    proto = onnx.load(str(granules_onnx))
    (inp,) = [i for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    assert inp.name == "image" and proto.graph.output[0].name == "logits"
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", "height", "width", 1]
    assert [d.dim_param or d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim] \
        == ["batch", "height", "width", 2]
    props = {p.key: p.value for p in proto.metadata_props}
    card = json.loads(props[ONNX_CARD_KEY])
    side = json.loads(sidecar_path(granules_onnx).read_text())
    assert card == side and granules_onnx.name + ".json" == sidecar_path(granules_onnx).name
    assert card["kind"] == "granules" and card["architecture"] == "unet_model"
    assert card["schema"] == keras_granules.card.schema.to_dict()
    assert card["pixel_size_nm"] == keras_granules.card.pixel_size_nm
    assert card["input_scaling"] == keras_granules.card.input_scaling == "percentile"
    assert card["temperature"] == pytest.approx(keras_granules.card.temperature)
    assert card["provenance"]["export"]["format"] == "onnx"
    assert card["provenance"]["export"]["opset"] == 17
    assert card["provenance"]["exported_from"].endswith("granules.weights.h5")


def test_onnxruntime_logits_match_keras(granules_onnx, keras_granules):
    x = np.random.default_rng(0).random((1, 256, 256, 1), dtype=np.float32)
    session = ort.InferenceSession(str(granules_onnx), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"image": x})
    expected = keras_granules.predict_logits(x)
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)
    # a non-square input of other multiples of 128: the sides are dynamic
    x2 = np.random.default_rng(1).random((2, 128, 384, 1), dtype=np.float32)
    np.testing.assert_allclose(session.run(None, {"image": x2})[0], keras_granules.predict_logits(x2),
                               atol=1e-4, rtol=0)


def test_export_refuses_bad_targets(tmp_path, granules_onnx):
    model = load_model(granules_onnx)
    with pytest.raises(ExportError, match=r"must end with \.onnx"):
        export_onnx(model, tmp_path / "model.h5")
    with pytest.raises(FileExistsError, match="exists already"):
        export_onnx(model, granules_onnx)
    # an ONNX model is written as it is (no TensorFlow needed), with its card
    again = export_onnx(model, tmp_path / "copy.onnx")
    assert load_model(again).count_params() == model.count_params()


# -------------------------------------------------------------------------------------------------
# ONNX Runtime as the engine
# -------------------------------------------------------------------------------------------------
def test_load_model_dispatches_onnx(granules_onnx, keras_granules):
    model = load_model(granules_onnx, "granules")
    assert isinstance(model, OnnxSegmentationModel) and model.engine == "onnxruntime"
    assert model.card.kind == "granules" and model.n_classes == 2
    assert model.card.provenance["source_format"] == "onnx"
    assert model.count_params() == keras_granules.count_params()
    assert load_model(granules_onnx, "granules") is model  # cached
    with pytest.raises(WeightsError, match="this is a granules model, but a locations model"):
        load_model(granules_onnx, "locations")
    with pytest.raises(WeightsError, match="inference only; it cannot be trained"):
        save_model(model, granules_onnx.parent / "again")


def test_pipeline_labels_match_keras(granules_onnx, keras_granules, micrograph):
    onnx_model = load_model(granules_onnx)
    image = micrograph.image
    for pixel_size in (0.8, 0.96):  # as is, and resampled to the model's 0.8 nm (probabilities)
        kw = dict(kinds=("granules",), confidence=True, mode="whole", min_granule_nm=None)
        ref = segment_micrograph(image, pixel_size, granules_model=keras_granules, **kw)
        got = segment_micrograph(image, pixel_size, granules_model=onnx_model, **kw)
        assert got.granules.shape == image.shape and got.granules.dtype == np.uint8
        differ = got.granules != ref.granules
        assert differ.sum() <= 2, f"{differ.sum()} labels differ at {pixel_size} nm/px"
        np.testing.assert_allclose(got.confidence["granules"], ref.confidence["granules"], atol=1e-4)
    # whole-pass labels are identical except at near-ties of the logits
    x = micrograph.image.astype(np.float32)[None] / 65535
    logits = keras_granules.predict_logits(x)[0]
    labels, _ = onnx_model.predict_labels(x, confidence=False)
    mismatch = labels[0] != np.argmax(logits, -1)
    assert not np.any(mismatch & ~near_ties(logits))
    # the default post-processing (small objects removed) gives identical maps too
    a = segment_micrograph(image, 0.8, granules_model=keras_granules, kinds=("granules",))
    b = segment_micrograph(image, 0.8, granules_model=granules_onnx, kinds=("granules",))
    assert (a.granules != b.granules).sum() <= 2


def test_segments_without_tensorflow_or_keras(granules_onnx, keras_granules, tmp_path):
    """A user with onnxruntime but no TensorFlow/Keras segments (whole and tiled)."""
    m = synthetic_micrograph((512, 512), 0.8, seed=2)
    np.save(tmp_path / "image.npy", m.image)
    script = textwrap.dedent(f"""
        import sys
        for name in ("tensorflow", "keras", "jax", "torch", "tf_keras", "tf2onnx"):
            sys.modules[name] = None  # importing them now fails, as if not installed
        import numpy as np
        import napari_emgranules as emg
        image = np.load({str(tmp_path / "image.npy")!r})
        for mode in ("whole", "tiled"):
            r = emg.segment_micrograph(image, 0.8, granules_model={str(granules_onnx)!r},
                                       kinds=("granules",), mode=mode, max_window=384,
                                       min_granule_nm=None)
            np.save({str(tmp_path)!r} + f"/{{mode}}.npy", r.granules)
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")
                       and sys.modules[m] is not None)
        print("HEAVY", heavy)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "HEAVY []" in proc.stdout
    for mode in ("whole", "tiled"):
        ref = segment_micrograph(m.image, 0.8, granules_model=keras_granules, kinds=("granules",),
                                 mode=mode, max_window=384, min_granule_nm=None)
        got = np.load(tmp_path / f"{mode}.npy")
        assert (got != ref.granules).sum() <= 3, mode


def test_refuses_onnx_that_does_not_fit(tmp_path):
    granules = card_dict("granules")
    # wrong number of classes for the schema in its metadata
    tiny_onnx(tmp_path / "three.onnx", n_out=3, card=granules)
    with pytest.raises(WeightsError, match=r"three\.onnx: the network outputs 3 classes, but the "
                                           r"granules schema in its metadata has 2 \(background, granule\)"):
        load_model(tmp_path / "three.onnx")
    # wrong input channels
    tiny_onnx(tmp_path / "rgb.onnx", n_in=3, card=granules)
    with pytest.raises(WeightsError, match=r"rgb\.onnx: the network takes 3 input channels; the "
                                           r"models here take 1"):
        load_model(tmp_path / "rgb.onnx")
    # not an ONNX file at all, an empty one, a cut one
    (tmp_path / "text.onnx").write_text("this is a text file, not a network\n" * 20)
    with pytest.raises(WeightsError, match=r"text\.onnx: is not .*ONNX model"):
        load_model(tmp_path / "text.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(WeightsError, match=r"empty\.onnx: the ONNX file is empty"):
        load_model(tmp_path / "empty.onnx")
    whole = tiny_onnx(tmp_path / "whole.onnx", card=granules).read_bytes()
    (tmp_path / "cut.onnx").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(WeightsError, match=r"cut\.onnx: is not .*ONNX model"):
        load_model(tmp_path / "cut.onnx")
    with pytest.raises(WeightsError, match=r"missing\.onnx: no such ONNX file"):
        load_model(tmp_path / "missing.onnx")
    # no model card in the metadata and no sidecar
    tiny_onnx(tmp_path / "bare.onnx")
    with pytest.raises(WeightsError, match=r"bare\.onnx: neither the ONNX metadata .* nor a sidecar "
                                           r"\(bare\.onnx\.json\) says what this network is"):
        load_model(tmp_path / "bare.onnx", "granules")
    # a schema override must fit the network too
    with pytest.raises(WeightsError, match="outputs 2 classes, but the locations schema"):
        load_model(tmp_path / "whole.onnx", schema=ModelCard.default("locations").schema)


def test_onnx_with_sidecar_only_runs_in_the_cli(tmp_path, write_micrograph, capsys):
    """``segment --locations-weights x.onnx`` goes through load_model (a tiny 7-class network)."""
    path = tiny_onnx(tmp_path / "loc.onnx", n_out=7, sidecar=card_dict("locations"))
    model = load_model(path, "locations")
    assert model.n_classes == 7 and model.card.schema.kind == "locations"
    image = write_micrograph("cell.tif", shape=(256, 256))
    out = tmp_path / "out"
    assert main(["segment", str(image), "--out", str(out), "--only", "locations",
                 "--locations-weights", str(path), "--quiet"]) == 0
    from napari_emgranules.core.io import read_labels, read_micrograph

    labels = read_labels(out / "locations" / "cell.tif")
    x = read_micrograph(image).data.astype(np.float32) / 65535
    expected = np.argmax(x[..., None] * np.linspace(-4, 4, 7) + np.linspace(2, -2, 7), -1)
    assert labels.shape == (256, 256) and np.array_equal(labels, expected)
    capsys.readouterr()
    # a broken ONNX file: exit 2, one line, nothing written
    (tmp_path / "bad.onnx").write_text("nope")
    assert main(["segment", str(image), "--out", str(tmp_path / "o2"), "--only", "locations",
                 "--locations-weights", str(tmp_path / "bad.onnx"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.onnx: is not" in err[0] and not (tmp_path / "o2").exists()


def test_cli_segment_with_exported_granules(granules_onnx, keras_granules, write_micrograph, tmp_path):
    image = write_micrograph("cell.tif", shape=(256, 256))
    assert main(["segment", str(image), "--out", str(tmp_path / "k"), "--only", "granules",
                 "--quiet"]) == 0
    assert main(["segment", str(image), "--out", str(tmp_path / "o"), "--only", "granules",
                 "--granules-weights", str(granules_onnx), "--quiet"]) == 0
    from napari_emgranules.core.io import read_labels

    a = read_labels(tmp_path / "k" / "granules" / "cell.tif")
    b = read_labels(tmp_path / "o" / "granules" / "cell.tif")
    assert (a != b).sum() <= 2


# -------------------------------------------------------------------------------------------------
# ZEISS .czann / .czmodel
# -------------------------------------------------------------------------------------------------
def test_czann_export_read_back_with_czmodel(granules_onnx, tmp_path):
    pytest.importorskip("czmodel")
    from czmodel.core.util._extract_model import extract_czann_model

    model = load_model(granules_onnx)
    with pytest.warns(UserWarning, match="contrast-stretched"):  # ZEN cannot stretch per micrograph
        out = export_czann(model, tmp_path / "granules.czann",
                           model_id="3f1d3c1e-1b6a-4d0e-9a57-0c7b1f6f2a11")
    assert zipfile.ZipFile(out).namelist() == ["model.json", "model.model"]
    meta, onnx_file = extract_czann_model(str(out), tmp_path / "unpacked")
    assert meta.classes == ["background", "granule"]
    assert meta.model_type.value == "SingleClassSemanticSegmentation"
    assert meta.input_shape == [1024, 1024, 1] and meta.output_shape == [1024, 1024, 2]
    assert meta.min_overlap == [256, 256] and meta.model_id == "3f1d3c1e-1b6a-4d0e-9a57-0c7b1f6f2a11"
    assert meta.scaling == pytest.approx((0.8e-9, 0.8e-9))
    # the embedded network: softmax probabilities on 1024 tiles, our card inside
    inner = load_model(Path(onnx_file).rename(tmp_path / "inner.onnx"))
    assert inner.output_kind == "probabilities" and inner.fixed_size == (1024, 1024)
    assert inner.card.provenance["export"]["border_px"] == 128
    x = np.random.default_rng(3).random((1, 1024, 1024), np.float32)
    probs = inner.predict_probabilities(x)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs, model.predict_probabilities(x), atol=1e-5)
    with pytest.raises(ValueError, match="takes only 1024x1024 px inputs"):
        inner.predict_labels(np.zeros((1, 256, 256), np.float32))
    # re-exporting a probabilities network keeps it one (no second softmax)
    copy = load_model(export_onnx(inner, tmp_path / "copy.onnx"))
    assert copy.output_kind == "probabilities"
    _, again = extract_czann_model(str(export_czann(copy, tmp_path / "again.czann")),
                                   tmp_path / "again")
    again_model = load_model(Path(again).rename(tmp_path / "again.onnx"))
    np.testing.assert_allclose(again_model.predict_probabilities(x), probs, atol=1e-6)


def test_czmodel_legacy_has_colours_pixel_type_and_border(granules_onnx, tmp_path):
    pytest.importorskip("czmodel")
    import xml.etree.ElementTree as ET

    from czmodel.core.util._extract_model import extract_czseg_model

    model = load_model(granules_onnx)
    out = export_czann(model, tmp_path / "granules.czmodel", pixel_type="Gray8", border_px=64)
    meta, _ = extract_czseg_model(str(out), tmp_path / "unpacked")
    assert [c.name for c in meta.classes] == ["background", "granule"]
    assert meta.pixel_types == ["Gray8"] and int(meta.border_size) == 64
    root = ET.parse(next((tmp_path / "unpacked").glob("*.xml"))).getroot()
    colours = {item.get("Name"): (item.get("colR"), item.get("colG"), item.get("colB"))
               for item in root.iter("Item") if item.get("Name")}
    assert colours == {"background": ("0", "0", "0"), "granule": ("255", "225", "25")}  # #ffe119
    assert root.findtext("ColorHandling") == "ConvertToMonochrome"


def test_czann_bad_arguments(granules_onnx, tmp_path):
    model = load_model(granules_onnx)
    with pytest.raises(ExportError, match="multiple of 128"):
        export_czann(model, tmp_path / "a.czann", tile=1000)
    with pytest.raises(ExportError, match="even number"):
        export_czann(model, tmp_path / "a.czann", border_px=65)
    with pytest.raises(ExportError, match="pixel_type"):
        export_czann(model, tmp_path / "a.czann", pixel_type="Bgr24")
    with pytest.raises(ExportError, match=r"must end with \.czann or \.czmodel"):
        export_czann(model, tmp_path / "a.zip")
    assert not any(tmp_path.iterdir())


# -------------------------------------------------------------------------------------------------
# CLI
# -------------------------------------------------------------------------------------------------
def test_cli_export_model_czann_from_onnx(granules_onnx, tmp_path, capsys):
    out = tmp_path / "g.czann"
    assert main(["export-model", str(granules_onnx), "--out", str(out)]) == 0
    assert "granules model" in capsys.readouterr().out and zipfile.is_zipfile(out)
    assert main(["export-model", str(granules_onnx), "--format", "czmodel",
                 "--out", str(tmp_path / "g.czmodel"), "--pixel-type", "Gray8"]) == 0


@pytest.mark.parametrize(("args", "message"), [
    (["missing.weights.h5", "--model", "granules", "--out", "{t}/x.onnx"], "no such weights file"),
    (["--out", "{t}/x.onnx"], "give WEIGHTS, or --model"),
    (["{onnx}", "--format", "czann", "--out", "{t}/x.onnx"], "--format czann writes a .czann file"),
    (["{onnx}", "--out", "{t}/x.bin"], "give --format"),
    (["{onnx}", "--out", "{onnx}"], "exists already; use --overwrite"),
    (["{bad}", "--out", "{t}/x.czann"], "is not"),
    (["{onnx}", "--out", "{t}/x.czann", "--tile", "1000"], "multiple of 128"),
])
def test_cli_export_model_bad_input(granules_onnx, tmp_path, capsys, args, message):
    (tmp_path / "bad.onnx").write_text("junk")
    before = sorted(tmp_path.iterdir())
    argv = [a.format(t=tmp_path, onnx=granules_onnx, bad=tmp_path / "bad.onnx") for a in args]
    assert main(["export-model", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert sorted(tmp_path.iterdir()) == before


def test_exports_hold_one_view_and_say_how_many_the_package_averaged(granules_onnx, keras_granules):
    from napari_emgranules.core.interop import _export_card

    card = _export_card(keras_granules.with_views(4), "onnx", 17)
    assert card["views"] == 1 and card["provenance"]["export"]["views_in_napari_emgranules"] == 4
    plain = _export_card(keras_granules, "onnx", 17)
    assert "views_in_napari_emgranules" not in plain["provenance"]["export"]
    onnx_model = load_model(granules_onnx)
    assert onnx_model.views == 1 and onnx_model.with_views(None) is onnx_model
    with pytest.raises(ValueError, match="applies to Keras weights only"):
        onnx_model.with_views(4)
