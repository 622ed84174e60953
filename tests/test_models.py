"""The two U-Nets match the paper's layer summary; weights load from every supported format."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from napari_emgranules.core import models as models_module
from napari_emgranules.core.models import (
    ModelCard,
    SegmentationModel,
    UntrainedModelWarning,
    WeightsError,
    build_granules_unet,
    build_locations_unet,
    clear_model_cache,
    default_model,
    load_model,
    save_model,
    sidecar_path,
    weights_format,
)
from napari_emgranules.core.schema import LOCATIONS_SCHEMA, ClassInfo, ClassSchema

# The layer summary printed in the paper's Supplement 2 for unet_model7 at 1024x1024:
# layer type, output side, output channels, parameters (one row per layer, in order).
# The supplement prints "Conv2D" for conv2d_transpose_5; its parameters are a transposed conv's.
SEED_SUMMARY = """
InputLayer 1024 1 0
Conv2D 1024 8 80
Conv2D 1024 8 584
MaxPooling2D 512 8 0
Conv2D 512 8 584
Conv2D 512 8 584
MaxPooling2D 256 8 0
Conv2D 256 16 1168
Conv2D 256 16 2320
MaxPooling2D 128 16 0
Conv2D 128 32 4640
Conv2D 128 32 9248
MaxPooling2D 64 32 0
Conv2D 64 64 18496
Conv2D 64 64 36928
MaxPooling2D 32 64 0
Conv2D 32 128 73856
Conv2D 32 128 147584
MaxPooling2D 16 128 0
Conv2D 16 256 295168
Conv2D 16 256 590080
Dropout 16 256 0
MaxPooling2D 8 256 0
Conv2D 8 512 1180160
Conv2D 8 512 2359808
Dropout 8 512 0
Conv2DTranspose 16 256 1179904
Concatenate 16 512 0
Conv2D 16 256 1179904
Conv2D 16 256 590080
Conv2DTranspose 32 128 295040
Concatenate 32 256 0
Conv2D 32 128 295040
Conv2D 32 128 147584
Conv2DTranspose 64 64 73792
Concatenate 64 128 0
Conv2D 64 64 73792
Conv2D 64 64 36928
Conv2DTranspose 128 32 18464
Concatenate 128 64 0
Conv2D 128 32 18464
Conv2D 128 32 9248
Conv2DTranspose 256 16 4624
Concatenate 256 32 0
Conv2D 256 16 4624
Conv2D 256 16 2320
Conv2DTranspose 512 8 1160
Concatenate 512 16 0
Conv2D 512 8 1160
Conv2D 512 8 584
Conv2DTranspose 1024 8 584
Concatenate 1024 16 0
Conv2D 1024 8 1160
Conv2D 1024 8 584
Conv2D 1024 4 292
Conv2D 1024 7 35
"""


def _summary(model) -> list[tuple[str, int, int, int]]:
    rows = []
    for layer in model.layers:
        shape = layer.output.shape
        rows.append((type(layer).__name__, shape[1], shape[-1], layer.count_params()))
    return rows


def test_locations_matches_the_paper_summary_layer_for_layer():
    model = build_locations_unet(input_shape=(1024, 1024, 1))
    expected = [
        (t, int(s), int(c), int(p)) for t, s, c, p in (r.split() for r in SEED_SUMMARY.split("\n") if r)
    ]
    assert _summary(model) == expected
    assert model.count_params() == 8_656_655


def test_locations_dropout_rate_and_activations_follow_the_seed():
    model = build_locations_unet()
    dropouts = [la for la in model.layers if type(la).__name__ == "Dropout"]
    assert [d.rate for d in dropouts] == [0.3, 0.3]
    convs = [la for la in model.layers if type(la).__name__ == "Conv2D"]
    assert all(c.get_config()["padding"] == "same" for c in convs)
    assert [c.get_config()["activation"] for c in convs[-2:]] == ["relu", "linear"]
    assert all(c.get_config()["kernel_initializer"]["class_name"] == "HeNormal" for c in convs[:-1])
    ups = [la for la in model.layers if type(la).__name__ == "Conv2DTranspose"]
    assert all(u.get_config()["strides"] == (2, 2) and u.get_config()["kernel_size"] == (3, 3)
               for u in ups)


def test_granules_follows_the_seed_code():
    model = build_granules_unet(input_shape=(1024, 1024, 1))
    rows = _summary(model)
    convs = [r for r in rows if r[0] == "Conv2D"]
    # first block 4 filters, last up-block 4 filters, head 4, 2 classes
    assert [c[2] for c in convs[:2]] == [4, 4]
    assert [c[2] for c in convs[-4:]] == [4, 4, 4, 2]
    assert rows[-1][1:3] == (1024, 2)
    # identical to the Locations network elsewhere: the same layer types in the same order
    loc_types = [r[0] for r in _summary(build_locations_unet(input_shape=(1024, 1024, 1)))]
    assert [r[0] for r in rows] == loc_types
    # exact count from the seed's filter plan (first block 1->4->4, last up-block 8->4, ...)
    assert model.count_params() == 8_654_126


@pytest.mark.parametrize("shape", [(128, 128), (256, 384), (640, 128)])
def test_any_multiple_of_128_runs(shape):
    model = build_granules_unet(seed=1)
    out = model.predict_on_batch(np.zeros((1, *shape, 1), np.float32))
    assert out.shape == (1, *shape, 2)


# -------------------------------------------------------------------------------------------------
# weights
# -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def granules_model():
    return SegmentationModel(build_granules_unet(seed=7), ModelCard.default("granules"))


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    return rng.random((1, 128, 128, 1), dtype=np.float32)


def test_weights_h5_round_trip_with_sidecar(tmp_path, granules_model, batch):
    path = save_model(granules_model, tmp_path / "granules", provenance={"data": "unit test",
                                                                          "epochs": 3})
    assert path.name == "granules.weights.h5"
    side = json.loads(sidecar_path(path).read_text())
    assert side["kind"] == "granules" and side["architecture"] == "unet_model"
    assert side["schema"]["classes"][1]["name"] == "granule"
    assert side["pixel_size_nm"] == 0.8 and side["input_scaling"] == "dtype-range"
    assert side["provenance"]["epochs"] == 3 and "date" in side["provenance"]
    assert side["provenance"]["package_version"]
    loaded = load_model(path)
    assert loaded.kind == "granules"
    np.testing.assert_array_equal(loaded.predict_logits(batch), granules_model.predict_logits(batch))
    with pytest.raises(FileExistsError):
        save_model(granules_model, path)


def test_loaded_models_are_cached_until_the_file_changes(tmp_path, granules_model):
    path = save_model(granules_model, tmp_path / "g")
    a = load_model(path)
    assert load_model(path) is a
    save_model(granules_model, path, overwrite=True)
    assert load_model(path) is not a


def test_float16_weights_are_half_the_size_and_predict_alike(tmp_path, granules_model,
                                                              monkeypatch):
    import h5py

    from napari_emgranules.core._backend import get_keras

    full = save_model(granules_model, tmp_path / "full")
    half = save_model(granules_model, tmp_path / "half", provenance={"data": "unit test"},
                      weights_dtype="float16")
    assert half.name == "half.weights.h5" and weights_format(half) == "keras3-h5"
    assert 0.45 < half.stat().st_size / full.stat().st_size < 0.55
    assert sorted(q.name for q in tmp_path.iterdir()) == [  # no temporary files left behind
        "full.weights.h5", "full.weights.json", "half.weights.h5", "half.weights.json"]
    prov = json.loads(sidecar_path(half).read_text())["provenance"]
    assert prov["weights_dtype"] == "float16" and prov["data"] == "unit test"
    assert json.loads(sidecar_path(full).read_text())["provenance"]["weights_dtype"] == "float32"
    with h5py.File(half, "r") as f:  # same Keras 3 layout, every array stored as float16
        found: list = []
        f.visititems(lambda name, obj: found.append((name, obj.dtype))
                     if isinstance(obj, h5py.Dataset) else None)
        assert len(found) == len(granules_model.keras_model.weights)
        assert {dtype for _, dtype in found} == {np.dtype(np.float16)}
        assert f["layers/conv2d/vars"].attrs["name"] == "enc0_conv1"
    x = np.random.default_rng(1).random((1, 128, 128, 1), dtype=np.float32)
    reference = granules_model.predict_logits(x)
    loaded = load_model(half)
    assert all(w.dtype == "float32" for w in loaded.keras_model.weights)
    assert loaded.card.provenance["weights_dtype"] == "float16"
    logits = loaded.predict_logits(x)
    assert np.abs(logits - reference).max() <= 1e-2 * np.abs(reference).max()
    assert (logits.argmax(-1) == reference.argmax(-1)).mean() >= 0.99
    # Keras itself reads the file (it is a plain .weights.h5), into float32 variables
    plain = build_granules_unet()
    plain.load_weights(half)
    np.testing.assert_allclose(get_keras().ops.convert_to_numpy(plain(x)), logits,
                               rtol=1e-5, atol=1e-5)
    # a float16 bundled default loads like any other
    bundled = tmp_path / "bundled"
    save_model(granules_model, bundled / "granules", weights_dtype="float16")
    monkeypatch.setattr(models_module, "_bundled_dir", lambda: bundled)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UntrainedModelWarning)
        np.testing.assert_array_equal(default_model("granules").predict_logits(x), logits)
    # existing files are still refused, and replaced only when asked
    before = full.read_bytes()
    with pytest.raises(FileExistsError):
        save_model(granules_model, full, weights_dtype="float16")
    assert full.read_bytes() == before
    save_model(granules_model, full, weights_dtype="float16", overwrite=True)
    assert full.stat().st_size == half.stat().st_size


@pytest.mark.parametrize("dtype", ["float64", "bfloat16", "half", np.float16, None])
def test_unknown_weights_dtype_is_refused(tmp_path, granules_model, dtype):
    with pytest.raises(ValueError, match=r"weights_dtype must be one of 'float32', 'float16'"):
        save_model(granules_model, tmp_path / "bad", weights_dtype=dtype)
    assert not any(tmp_path.iterdir())


def test_weights_beyond_float16_range_are_refused(tmp_path):
    from napari_emgranules.core._backend import get_keras

    keras = get_keras()
    inp = keras.Input((None, None, 1))
    small = keras.Model(inp, keras.layers.Conv2D(2, 1)(inp))
    kernel, bias = small.get_weights()
    small.set_weights([np.full_like(kernel, 1e6), bias])
    model = SegmentationModel(small, ModelCard.default("granules"))
    with pytest.raises(ValueError, match="beyond float16's range"):
        save_model(model, tmp_path / "big", weights_dtype="float16")
    assert not any(tmp_path.iterdir())  # nothing written, no temporary folder left
    assert save_model(model, tmp_path / "big").is_file()  # float32 keeps them


def test_keras_file_loads_in_safe_mode(tmp_path, granules_model, batch):
    path = tmp_path / "colleague.keras"
    granules_model.keras_model.save(path)
    loaded = load_model(path, "granules")
    assert weights_format(path) == "keras"
    np.testing.assert_allclose(loaded.predict_logits(batch), granules_model.predict_logits(batch),
                               rtol=1e-6, atol=1e-6)


def test_keras_file_with_code_is_refused(tmp_path):
    from napari_emgranules.core._backend import get_keras

    keras = get_keras()
    inp = keras.Input((None, None, 1))
    out = keras.layers.Lambda(lambda t: t * 2)(inp)
    path = tmp_path / "evil.keras"
    keras.Model(inp, out).save(path)
    with pytest.raises(WeightsError, match="safely"):
        load_model(path, "granules")


# Genuine Keras-2 files, written by tf_keras (Keras 2) from the seed's own architecture.
def _tf_keras_seed_unet(n_first: int, n_last: int, n_classes: int):
    tfk = pytest.importorskip("tf_keras")
    L = tfk.layers

    def down(x, f, drop=0.0, pool=True):
        x = L.Conv2D(f, 3, activation="relu", padding="same", kernel_initializer="he_normal")(x)
        x = L.Conv2D(f, 3, activation="relu", padding="same", kernel_initializer="he_normal")(x)
        if drop:
            x = L.Dropout(drop)(x)
        return (L.MaxPooling2D(2, strides=2)(x) if pool else x), x

    def up(x, skip, f):
        x = L.Conv2DTranspose(f, 3, strides=2, padding="same")(x)
        x = L.concatenate([x, skip], axis=3)
        x = L.Conv2D(f, 3, activation="relu", padding="same", kernel_initializer="he_normal")(x)
        return L.Conv2D(f, 3, activation="relu", padding="same", kernel_initializer="he_normal")(x)

    inp = L.Input((128, 128, 1))
    x, skips = inp, []
    for f in (n_first, 8, 16, 32, 64, 128):
        x, s = down(x, f)
        skips.append(s)
    x, s = down(x, 256, 0.3)
    skips.append(s)
    x, _ = down(x, 512, 0.3, pool=False)
    for f in (256, 128, 64, 32, 16, 8, n_last):
        x = up(x, skips.pop(), f)
    x = L.Conv2D(4, 3, activation="relu", padding="same", kernel_initializer="he_normal")(x)
    out = L.Conv2D(n_classes, 1, padding="same")(x)
    return tfk, tfk.Model(inp, out)


@pytest.fixture(scope="module")
def keras2_granules():
    return _tf_keras_seed_unet(4, 4, 2)


def test_legacy_keras2_h5_weights_load(tmp_path, keras2_granules, batch):
    _, k2 = keras2_granules
    path = tmp_path / "lab_granules.h5"
    k2.save_weights(str(path))
    assert weights_format(path) == "legacy-h5"
    ours = load_model(path, "granules")
    np.testing.assert_allclose(ours.predict_logits(batch), k2.predict(batch, verbose=0),
                               rtol=1e-4, atol=1e-5)


def test_seed_notebook_checkpoint_loads(tmp_path, keras2_granules, batch):
    """The notebook's ModelCheckpoint(save_weights_only=True) writes a TF checkpoint."""
    tfk, k2 = keras2_granules
    k2.compile(optimizer=tfk.optimizers.Adam(5e-4),
               loss=tfk.losses.SparseCategoricalCrossentropy(from_logits=True),
               metrics=[tfk.metrics.SparseCategoricalAccuracy(name="Sparse Categorical Accuracy")])
    prefix = tmp_path / "checkpoint_unet_granules"
    cb = tfk.callbacks.ModelCheckpoint(filepath=str(prefix), save_weights_only=True,
                                       monitor="Sparse Categorical Accuracy", mode="max",
                                       save_best_only=True)
    y = (batch > 0.5).astype(np.uint16)
    k2.fit(batch, y, epochs=1, verbose=0, callbacks=[cb])
    assert (tmp_path / "checkpoint_unet_granules.index").is_file()
    assert weights_format(prefix) == "tf-checkpoint"
    expected = k2.predict(batch, verbose=0)
    for given in (prefix, tmp_path / "checkpoint_unet_granules.index", tmp_path):
        clear_model_cache()
        ours = load_model(given, "granules")
        np.testing.assert_allclose(ours.predict_logits(batch), expected, rtol=1e-4, atol=1e-5)


def test_locations_checkpoint_of_six_classes_needs_a_six_class_schema(tmp_path):
    """The notebook mentions a 6-label Locations model: it loads once the schema says 6 classes."""
    _, k2 = _tf_keras_seed_unet(8, 8, 6)
    path = tmp_path / "paul2b.h5"
    k2.save_weights(str(path))
    with pytest.raises(WeightsError, match=r"output 6 classes.*schema has 7"):
        load_model(path, "locations")
    six = ClassSchema("locations", LOCATIONS_SCHEMA.classes[:6])
    model = load_model(path, "locations", schema=six)
    assert model.n_classes == 6


def test_granules_weights_refused_as_locations(tmp_path, granules_model):
    path = save_model(granules_model, tmp_path / "g")
    with pytest.raises(WeightsError, match="granules weights"):
        load_model(path, "locations")
    sidecar_path(path).unlink()
    with pytest.raises(WeightsError, match=r"granules weights \(unet_model\).*locations"):
        load_model(path, "locations")


def test_unknown_shapes_are_refused_with_what_differs(tmp_path):
    from napari_emgranules.core._backend import get_keras

    keras = get_keras()
    inp = keras.Input((None, None, 1))
    out = keras.layers.Conv2D(2, 1)(keras.layers.Conv2D(3, 3, padding="same")(inp))
    small = keras.Model(inp, out)
    path = tmp_path / "small.weights.h5"
    small.save_weights(path)
    with pytest.raises(WeightsError, match="small.weights.h5"):
        load_model(path, "granules")


@pytest.mark.parametrize(
    "content, match",
    [(b"", "empty"), (b"not a model at all" * 10, "not a Keras weights file"),
     (b"\x89HDF\r\n\x1a\n" + b"\0" * 100, "corrupt")],
)
def test_bad_weight_files_are_refused(tmp_path, content, match):
    path = tmp_path / "bad.weights.h5"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=match) as info:
        load_model(path, "granules")
    assert "bad.weights.h5" in str(info.value)


def test_truncated_weights_are_refused(tmp_path, granules_model):
    path = save_model(granules_model, tmp_path / "t")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="t.weights.h5"):
        load_model(path)


def test_missing_file_and_bad_sidecar(tmp_path, granules_model):
    with pytest.raises(WeightsError, match="no such weights file"):
        load_model(tmp_path / "nothing.weights.h5", "granules")
    path = save_model(granules_model, tmp_path / "s")
    sidecar_path(path).write_text("{not json")
    with pytest.raises(WeightsError, match="not valid JSON"):
        load_model(path)
    sidecar_path(path).write_text(json.dumps({"architecture": "resnet"}))
    with pytest.raises(WeightsError, match="unknown architecture"):
        load_model(path)


def test_no_sidecar_needs_a_kind(tmp_path, granules_model):
    path = save_model(granules_model, tmp_path / "n")
    sidecar_path(path).unlink()
    with pytest.raises(WeightsError, match="say the kind"):
        load_model(path)
    assert load_model(path, "granules").kind == "granules"


def test_renamed_schema_travels_with_the_weights(tmp_path, granules_model):
    renamed = granules_model.card.schema.renamed(1, name="beta particle", letter="b")
    model = SegmentationModel(granules_model.keras_model,
                              ModelCard("granules", "unet_model", renamed))
    path = save_model(model, tmp_path / "renamed")
    assert load_model(path).card.schema[1].name == "beta particle"


def test_untrained_default_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(models_module, "_bundled_dir", lambda: tmp_path)  # no bundled weights
    clear_model_cache()
    with pytest.warns(UntrainedModelWarning, match="UNTRAINED"):
        model = default_model("granules")
    assert model.card.trained is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert default_model("granules") is model  # cached, warned once
    clear_model_cache()


SHIPPED = {"locations": 3.2, "granules": 0.8}  # trained defaults and their pixel sizes (nm)


@pytest.mark.parametrize("kind", SHIPPED)
def test_bundled_defaults_are_trained_small_float16_and_say_synthetic(kind):
    import h5py

    path = models_module._bundled_dir() / f"{kind}.weights.h5"
    assert path.is_file() and path.stat().st_size < 20e6
    with h5py.File(path) as f:
        dtypes = set()
        f.visititems(lambda _, o: dtypes.add(o.dtype) if isinstance(o, h5py.Dataset) else None)
    assert dtypes == {np.dtype(np.float16)}
    clear_model_cache()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UntrainedModelWarning)
        model = default_model(kind)
    card = model.card
    assert card.trained and card.synthetic and card.kind == kind
    assert card.pixel_size_nm == SHIPPED[kind]
    assert "scripts/train_defaults.py" in card.provenance["made_with"]
    assert "synthetic" in card.provenance["training_data"]
    assert card.provenance["weights_dtype"] == "float16"


def test_schema_round_trip_and_validation():
    data = LOCATIONS_SCHEMA.to_dict()
    assert ClassSchema.from_dict(data) == LOCATIONS_SCHEMA
    assert LOCATIONS_SCHEMA.measured_codes == (1, 2, 3, 4, 5)
    assert [LOCATIONS_SCHEMA.letters[c] for c in (1, 2, 3, 4, 5)] == list("AIZSN")
    from napari_emgranules.core.schema import SchemaError

    with pytest.raises(SchemaError, match="codes must be 0"):
        ClassSchema("x", (ClassInfo(0, "a", "a", "#000000"), ClassInfo(2, "b", "b", "#000000")))
    with pytest.raises(SchemaError, match="colour"):
        ClassInfo(0, "a", "a", "red")
    with pytest.raises(SchemaError, match=r"codes \[9\]"):
        LOCATIONS_SCHEMA.check_labels(np.array([[0, 9]], np.uint8))
    with pytest.raises(SchemaError, match="malformed"):
        ClassSchema.from_dict({"kind": "x", "classes": [{"code": 0}]})


@pytest.mark.parametrize("precision, jit", [("float32", True), ("bfloat16", False)])
def test_mixed_precision_and_compiled_inference_match_float32(precision, jit):
    from napari_emgranules.core.synthetic import synthetic_micrograph

    model = default_model("granules")
    image = synthetic_micrograph((256, 256), 0.8, seed=11).image
    x = (image.astype(np.float32) / np.iinfo(image.dtype).max)[None]
    ref_labels, ref_conf = model.predict_labels(x)
    variant = model.for_inference(precision, jit)
    assert variant is model.for_inference(precision, jit)  # built once, cached
    assert variant.card is model.card and variant.jit is jit
    labels, conf = variant.predict_labels(x)
    assert conf.dtype == np.float32
    if precision == "float32":
        np.testing.assert_array_equal(labels, ref_labels)
        np.testing.assert_allclose(conf, ref_conf, atol=1e-4)
    else:  # bfloat16 keeps 8 bits of mantissa: only near-tie pixels may flip
        assert (labels != ref_labels).mean() < 0.005
        assert np.abs(conf - ref_conf).max() < 0.05
    assert model.for_inference() is model
    with pytest.raises(ValueError, match="precision must be one of"):
        model.for_inference("int8")


# -------------------------------------------------------------------------------------------------
# symmetric views at inference
# -------------------------------------------------------------------------------------------------
def _turned(x: np.ndarray, k: int, transposed: bool) -> np.ndarray:
    y = np.swapaxes(x, 1, 2) if transposed else x
    return np.rot90(y, k, axes=(1, 2))


def _turned_back(y: np.ndarray, k: int, transposed: bool) -> np.ndarray:
    y = np.rot90(y, -k, axes=(1, 2))
    return np.swapaxes(y, 1, 2) if transposed else y


@pytest.mark.parametrize("views, group", [
    (2, [(0, False), (0, True)]),
    (4, [(k, False) for k in range(4)]),
    (8, [(k, t) for t in (False, True) for k in range(4)]),
])
def test_views_average_the_logits_of_each_turned_input_turned_back(granules_model, views, group):
    rng = np.random.default_rng(3)
    x = rng.random((1, 128, 256, 1), dtype=np.float32)  # not square: turns change the shape
    single = granules_model.predict_logits
    expected = np.mean([_turned_back(single(np.ascontiguousarray(_turned(x, k, t))), k, t)
                        for k, t in group], axis=0)
    variant = granules_model.with_views(views)
    assert variant is granules_model.with_views(views) and variant.views == views
    assert granules_model.views == 1  # the model itself is unchanged
    np.testing.assert_allclose(variant.predict_logits(x), expected, atol=1e-5)
    labels, _ = variant.predict_labels(x)
    np.testing.assert_array_equal(labels, (expected[..., 1] > expected[..., 0]).astype(np.uint8))
    # an averaged prediction of a symmetric view group does not change when the input is turned
    if views == 8:
        turned = variant.predict_logits(np.ascontiguousarray(_turned(x, 1, True)))
        np.testing.assert_allclose(_turned_back(turned, 1, True), expected, atol=1e-5)


def test_views_travel_in_the_card_and_options(tmp_path, granules_model, batch):
    from napari_emgranules.core.options import SegmentOptions

    model = SegmentationModel(granules_model.keras_model, ModelCard("granules", "unet_model",
                                                                    granules_model.card.schema, views=4))
    path = save_model(model, tmp_path / "v")
    assert json.loads(sidecar_path(path).read_text())["views"] == 4
    loaded = load_model(path)
    assert loaded.views == 4
    np.testing.assert_allclose(loaded.predict_logits(batch), model.predict_logits(batch), atol=1e-6)
    assert SegmentOptions().prepare(loaded).views == 4  # the card's number by default
    assert SegmentOptions(views=1).prepare(loaded).views == 1
    assert loaded.with_threshold(0.7).views == 4 and loaded.for_inference("float32", True).views == 4
    with pytest.raises(ValueError, match="views must be one of 1, 2, 4, 8"):
        SegmentOptions(views=3)
    with pytest.raises(ValueError, match="views must be one of"):
        loaded.with_views(0)
    side = json.loads(sidecar_path(path).read_text())
    for bad in (3, -1):
        sidecar_path(path).write_text(json.dumps({**side, "views": bad}))
        with pytest.raises(WeightsError, match="views must be one of"):
            load_model(path)
    sidecar_path(path).write_text(json.dumps({**side, "views": "many"}))
    with pytest.raises(WeightsError, match="malformed model card"):
        load_model(path)
