"""Training: a learnable task is learned, runs resume, class weights matter, outputs are complete."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from napari_emgranules.core._backend import get_keras
from napari_emgranules.core.dataset import export_training_pairs, load_training_pairs, pairs_from_files
from napari_emgranules.core.io import write_image, write_labels
from napari_emgranules.core.models import WeightsError, load_model, save_model
from napari_emgranules.core.progress import run_to_completion
from napari_emgranules.core.schema import (
    GRANULES_SCHEMA,
    LOCATIONS_MITO_SCHEMA,
    LOCATIONS_SCHEMA,
    ClassSchema,
)
from napari_emgranules.core.train import (
    MIN_STEPS_PER_EPOCH,
    TrainConfig,
    TrainingError,
    augment_pair,
    balanced_class_weights,
    class_frequencies,
    epoch_weights_path,
    fine_tuning_rate,
    prior_class_weights,
    run_state,
    train,
    train_iter,
)

BLOBS = ClassSchema.from_names("blobs", ["background", "blob"])
FAST = dict(epochs=3, crop=128, batch_size=4, steps_per_epoch=6, contrast=0.0, brightness=0.0,
            early_stopping_patience=None, reduce_lr_patience=None)


def blob_image(seed: int, shape=(256, 256)) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random blobs: class 1 wherever the (noise-free) image is bright. Trivially learnable."""
    rng = np.random.default_rng(seed)
    field = gaussian_filter(rng.normal(size=shape), 6)
    field = (field - field.min()) / (field.max() - field.min())
    labels = (field > 0.6).astype(np.uint8)
    image = np.clip(field * 200 + rng.normal(0, 4, shape), 0, 255).astype(np.uint8)
    return image, labels


@pytest.fixture(scope="module")
def blob_pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("blobs")
    for seed in range(6):
        image, labels = blob_image(seed)
        export_training_pairs(image, labels, root, schema=BLOBS, tile_size=256, source=f"b{seed}",
                              pixel_size_nm=0.8)
    return root


def run_events(gen):
    events = []
    return events, run_to_completion(gen, events.append)


def test_an_epoch_from_scratch_is_long_enough_to_leave_the_class_prior(blob_pairs, tmp_path):
    # six 256 px tiles would fill one step of 128 px crops; from scratch an epoch still has
    # MIN_STEPS_PER_EPOCH["fresh"] steps, so that early stopping does not end a run still at the prior
    options = {**FAST, "epochs": 1, "steps_per_epoch": None}
    events, result = run_events(train_iter(blob_pairs, tmp_path / "run", kind="blobs", schema=BLOBS,
                                           seed=0, **options))
    assert sum(not e.end_of_epoch for e in events) == MIN_STEPS_PER_EPOCH["fresh"] == 50
    assert MIN_STEPS_PER_EPOCH["fine-tuning"] == 8  # the correction loop's epochs stay short


def test_a_learnable_task_is_learned_and_every_output_is_written(blob_pairs, tmp_path):
    out = tmp_path / "run"
    # a deep U-Net from scratch needs ~100 steps before it leaves "all background"
    events, result = run_events(train_iter(blob_pairs, out, kind="blobs", schema=BLOBS,
                                           architecture="unet_model7", seed=1,
                                           **{**FAST, "epochs": 6, "steps_per_epoch": 20}))
    epochs = [e for e in events if e.end_of_epoch]
    assert [e.epoch for e in epochs] == [1, 2, 3, 4, 5, 6]
    assert sum(not e.end_of_epoch for e in events) == 6 * 20  # one event per batch
    hist = result.history
    assert hist["loss"].iloc[-3:].min() < hist["loss"].iloc[0]  # a running mean: noisy
    assert hist["val_accuracy"].max() > 0.9, hist
    # outputs: best weights + sidecar with provenance, history CSV and plot, checkpoint
    card = json.loads(result.weights_path.with_suffix(".json").read_text())
    prov = card["provenance"]
    assert card["kind"] == "blobs" and card["schema"]["classes"][1]["name"] == "blob"
    assert prov["trained"] is True and prov["start"] == "fresh"
    assert prov["data_manifest_hash"] == load_training_pairs(blob_pairs).manifest_hash()
    assert prov["best_epoch"] == result.best_epoch
    assert prov["micrograph_pixel_sizes_nm"] == [0.8, 0.8]  # what segmentation checks against
    assert prov["final_metrics"]["val_accuracy"] == pytest.approx(
        hist["val_accuracy"].iloc[result.best_epoch - 1])
    with open(out / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5, 6] and float(rows[0]["loss"]) > 0
    assert (out / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "checkpoint" / "state.json").is_file()
    # the saved model segments new data of the task
    image, labels = blob_image(99)
    model = load_model(result.weights_path)
    pred, _ = model.predict_labels((image / 255.0).astype(np.float32)[None], confidence=False)
    assert (pred[0] == labels).mean() > 0.9


def test_an_interrupted_run_resumes_from_its_last_epoch(blob_pairs, tmp_path):
    out = tmp_path / "run"
    gen = train_iter(blob_pairs, out, kind="blobs", schema=BLOBS, seed=2, **FAST)
    finished = 0
    for event in gen:
        finished += event.end_of_epoch
        if finished == 2:
            break
    gen.close()  # as the GUI's Cancel does
    with pytest.raises(TrainingError, match="resume"):
        run_events(train_iter(blob_pairs, out, kind="blobs", schema=BLOBS, **FAST))
    events, result = run_events(train_iter(blob_pairs, out, resume=True))
    assert [e.epoch for e in events if e.end_of_epoch] == [3]
    assert list(result.history["epoch"]) == [1, 2, 3]
    assert any("resumed after epoch 2" in n for n in result.notes)
    # more epochs can be asked of a finished run
    _, more = run_events(train_iter(blob_pairs, out, resume=True, epochs=4))
    assert list(more.history["epoch"]) == [1, 2, 3, 4]


def test_every_epoch_can_be_kept(blob_pairs, tmp_path):
    out = tmp_path / "run"
    result = train(blob_pairs, out, kind="blobs", schema=BLOBS, seed=3, keep_epochs=True,
                   **{**FAST, "epochs": 2})
    kept = sorted(p.name for p in (out / "epochs").glob("*.weights.h5"))
    assert kept == ["epoch-001.weights.h5", "epoch-002.weights.h5"]
    assert epoch_weights_path(out, 2) == out / "epochs" / "epoch-002.weights.h5"
    best = load_model(epoch_weights_path(out, result.best_epoch)).keras_model.get_weights()
    for a, b in zip(best, load_model(result.weights_path).keras_model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    train(blob_pairs, tmp_path / "plain", kind="blobs", schema=BLOBS, **{**FAST, "epochs": 1})
    assert not (tmp_path / "plain" / "epochs").exists()  # off by default


def test_resume_needs_a_run_and_the_same_data(blob_pairs, tmp_path):
    with pytest.raises(TrainingError, match="no training run to resume"):
        train(blob_pairs, tmp_path / "empty", resume=True)
    out = tmp_path / "run"
    train(blob_pairs, out, kind="blobs", schema=BLOBS, **{**FAST, "epochs": 1})
    image, labels = blob_image(50)
    export_training_pairs(image, labels, blob_pairs.parent / "more", schema=BLOBS, tile_size=256,
                          pixel_size_nm=0.8)
    with pytest.raises(TrainingError, match="training data changed"):
        train([blob_pairs, blob_pairs.parent / "more"], out, resume=True, epochs=2)


def test_same_seed_same_run(blob_pairs, tmp_path):
    a = train(blob_pairs, tmp_path / "a", kind="blobs", schema=BLOBS, seed=5, **{**FAST, "epochs": 2})
    b = train(blob_pairs, tmp_path / "b", kind="blobs", schema=BLOBS, seed=5, **{**FAST, "epochs": 2})
    np.testing.assert_allclose(a.history["loss"], b.history["loss"], rtol=1e-5)
    np.testing.assert_allclose(a.history["val_accuracy"], b.history["val_accuracy"], atol=1e-6)


def test_class_weights_change_what_is_learned(blob_pairs, tmp_path):
    def blob_fraction(weights):
        r = train(blob_pairs, tmp_path / str(weights), kind="blobs", schema=BLOBS, seed=3,
                  class_weights=weights, **{**FAST, "epochs": 2})
        image, _ = blob_image(77)
        pred, _ = r.model.predict_labels((image / 255.0).astype(np.float32)[None], confidence=False)
        return pred.mean()

    assert blob_fraction((1.0, 25.0)) > blob_fraction((1.0, 1.0)) + 0.05


def test_fine_tuning_starts_from_given_weights_and_can_freeze_the_encoder(blob_pairs, tmp_path):
    first = train(blob_pairs, tmp_path / "first", kind="blobs", schema=BLOBS, seed=4,
                  **{**FAST, "epochs": 1})
    before = {w.path: np.array(w) for w in first.model.keras_model.weights}
    # no validation: the one epoch is kept whether or not it beats the start
    tuned = train(blob_pairs, tmp_path / "tuned", model=first.weights_path, freeze_encoder=True,
                  **{**FAST, "epochs": 1, "val_fraction": 0.0})
    prov = json.loads(tuned.weights_path.with_suffix(".json").read_text())["provenance"]
    assert prov["optimizer"] == "adam" and prov["start"] == str(first.weights_path)
    assert prov["micrograph_pixel_sizes_nm"] == [0.8, 0.8]
    # quarter turns by default from scratch only; each card records what its run did
    first_prov = json.loads(first.weights_path.with_suffix(".json").read_text())["provenance"]
    assert first_prov["training"]["rotate90"] is True and prov["training"]["rotate90"] is False
    after = {w.path: np.array(w) for w in tuned.model.keras_model.weights}
    enc = [k for k in before if k.startswith("enc")]
    dec = [k for k in before if k.startswith("dec")]
    assert enc and all(np.array_equal(before[k], after[k]) for k in enc)
    assert any(not np.array_equal(before[k], after[k]) for k in dec)


def test_bad_settings_are_refused_before_training(blob_pairs, tmp_path):
    with pytest.raises(ValueError, match="multiple of 128"):
        TrainConfig(crop=200)
    with pytest.raises(ValueError, match="class_weights"):
        TrainConfig(class_weights="sometimes")
    with pytest.raises(ValueError, match="clip_norm"):
        TrainConfig(clip_norm=0)
    # a patience is a whole number of epochs or None (never): refused at once, not after an epoch
    for name, bad in (("early_stopping_patience", "None"), ("reduce_lr_patience", 0),
                      ("early_stopping_patience", 2.5), ("reduce_lr_patience", True)):
        with pytest.raises(ValueError, match=f"{name} must be a whole number"):
            TrainConfig(**{name: bad})
    assert TrainConfig(early_stopping_patience=None, reduce_lr_patience=3).reduce_lr_patience == 3
    with pytest.raises(TrainingError, match="3 class weights given for 2 classes"):
        train(blob_pairs, tmp_path / "x", kind="blobs", schema=BLOBS, class_weights=(1, 2, 3), **FAST)
    with pytest.raises(TrainingError, match="say what to train"):
        train(blob_pairs, tmp_path / "y", **FAST)
    # the blob labels use codes 0/1, which a 2-class granules model accepts; a 1-code-too-many
    # schema mismatch is caught when the data are loaded
    three = ClassSchema.from_names("three", ["a", "b", "c"])
    with pytest.raises(WeightsError, match="3 .a, b, c."):
        first = train(blob_pairs, tmp_path / "z", kind="blobs", schema=BLOBS, **{**FAST, "epochs": 1})
        train(blob_pairs, tmp_path / "w", model=first.weights_path, schema=three, **FAST)


def test_augmentation_moves_image_and_labels_together():
    rng = np.random.default_rng(0)
    labels = np.kron(rng.integers(0, 2, (16, 16)), np.ones((16, 16), np.uint8)).astype(np.uint8)
    image = labels.astype(np.float32) * 0.8 + 0.1
    cfg = TrainConfig(flips=True, rotate90=True, scale_jitter=0.2, contrast=0.0, brightness=0.0)
    for _ in range(10):
        img, lab = augment_pair(image, labels, 128, rng, cfg)
        assert img.shape == lab.shape == (128, 128)
        assert ((img > 0.5) == (lab == 1)).mean() > 0.97
    small_img, small_lab = augment_pair(image[:50, :70], labels[:50, :70], 128, rng, cfg)
    assert small_img.shape == small_lab.shape == (128, 128)
    bright = TrainConfig(contrast=0.4, brightness=0.25)
    img, _ = augment_pair(image, labels, 128, rng, bright)
    assert img.min() >= 0 and img.max() <= 1
    # elastic deformation: the same field for both, labels stay labels (255 = unlabelled too)
    labels[:16, :16] = 255
    bent = TrainConfig(elastic=8.0, flips=False, contrast=0.0, brightness=0.0)
    plain = TrainConfig(flips=False, contrast=0.0, brightness=0.0)
    moved = 0
    for seed in range(5):
        img, lab = augment_pair(image, labels, 128, np.random.default_rng(seed), bent)
        flat, _ = augment_pair(image, labels, 128, np.random.default_rng(seed), plain)
        assert set(np.unique(lab)) <= {0, 1, 255} and lab.dtype == np.uint8
        assert ((img > 0.5) == (lab == 1))[lab != 255].mean() > 0.97
        moved += (np.abs(img - flat) > 0.3).mean()
    assert moved / 5 > 0.02  # the deformation does move structures
    with pytest.raises(ValueError, match="elastic"):
        TrainConfig(elastic=-1.0)


def test_balanced_class_weights_favour_rare_classes():
    labels = [np.r_[np.zeros(970, np.uint8), np.ones(30, np.uint8)]]
    f = class_frequencies(labels, 3)
    np.testing.assert_allclose(f, [0.97, 0.03, 0.0])
    w = balanced_class_weights(f)
    assert w[1] > 4 * w[0] and w[2] == 1.0
    assert (f * w).sum() == pytest.approx(1.0)


def test_prior_class_weights_give_the_labelled_pixels_the_expected_class_mix():
    labelled = np.array([0.8, 0.2, 0.0])  # strokes: granules over-represented, class 2 absent
    expected = np.array([0.97, 0.03, 0.0])
    w = prior_class_weights(labelled, expected)
    weighted = labelled * w
    np.testing.assert_allclose(weighted[:2] / weighted[:2].sum(), expected[:2], rtol=1e-6)
    assert (labelled * w).sum() == pytest.approx(1.0) and w[2] == 1.0
    # a class the starting model never finds is not silenced entirely
    assert prior_class_weights(np.array([0.5, 0.5]), np.array([1.0, 0.0]))[1] == pytest.approx(1 / 20)


@pytest.fixture(scope="module")
def blob_start(blob_pairs, tmp_path_factory):
    """A blobs model trained for one epoch: a start to fine-tune."""
    return train(blob_pairs, tmp_path_factory.mktemp("blob-start") / "run", kind="blobs",
                 schema=BLOBS, seed=5, **{**FAST, "epochs": 1})


def test_prior_class_weights_need_a_trained_start(blob_pairs, blob_start, tmp_path):
    assert TrainConfig(class_weights="prior").class_weights == "prior"
    with pytest.raises(TrainingError, match="needs a trained model to fine-tune"):
        train(blob_pairs, tmp_path / "fresh", kind="blobs", schema=BLOBS, class_weights="prior",
              **FAST)
    assert not any((tmp_path / "fresh").glob("*.weights.h5"))
    with pytest.raises(TrainingError, match="validation_mix 'start' .* needs a trained model"):
        train(blob_pairs, tmp_path / "fresh2", kind="blobs", schema=BLOBS, validation_mix="start",
              **FAST)
    # fine-tuning on partial labels that over-represent the blobs: the blobs weigh less
    first = blob_start
    image, labels = blob_image(11, (256, 256))
    strokes = np.full(labels.shape, 65535, np.uint16)
    strokes[labels == 1] = 1  # every blob pixel, but only a few rows of background
    strokes[::32][labels[::32] == 0] = 0
    write_image(tmp_path / "strokes.tif", image, pixel_size_nm=0.8)
    write_labels(tmp_path / "strokes_labels.tif", strokes)
    data = pairs_from_files([(tmp_path / "strokes.tif", tmp_path / "strokes_labels.tif")], schema=BLOBS)
    tuned = train(data, tmp_path / "tuned", model=first.weights_path, class_weights="prior",
                  **{**FAST, "epochs": 1})
    provenance = json.loads(tuned.weights_path.with_suffix(".json").read_text())["provenance"]
    weights = provenance["class_weights"]
    assert weights[1] < weights[0]
    # its confidence is fitted on the strip's pixels in that class mix too, not as painted
    assert "class mix" in provenance["calibration"]["data"]
    # a task without a measured share keeps its best epoch as it is (nothing to average with)
    assert tuned.averaged_with_start == 0.0 and not (tmp_path / "tuned" / "start").exists()
    # the held-out strip is scored with the same class mix, and a resume keeps both weightings
    state = run_state(tmp_path / "tuned")
    assert state["class_weights"] == pytest.approx(weights)
    val = state["val_class_weights"]
    assert val is not None and val[1] < val[0]
    assert any("the edges between painted classes as edges" in n for n in tuned.notes)
    resumed = train(data, tmp_path / "tuned", resume=True, epochs=2)
    assert run_state(tmp_path / "tuned")["val_class_weights"] == pytest.approx(val)
    assert json.loads(resumed.weights_path.with_suffix(".json").read_text())["provenance"][
        "class_weights"] == pytest.approx(weights)


def test_start_labels_anchor_partial_labels_and_survive_a_resume(blob_start, tmp_path):
    image, labels = blob_image(12, (256, 256))
    strokes = np.full(labels.shape, 65535, np.uint16)
    strokes[::16][labels[::16] == 0] = 0
    strokes[labels == 1] = 1
    strokes[:, 128:] = 65535  # half the micrograph left alone
    write_image(tmp_path / "m.tif", image, pixel_size_nm=0.8)
    write_labels(tmp_path / "m_labels.tif", strokes)
    data = pairs_from_files([(tmp_path / "m.tif", tmp_path / "m_labels.tif")], schema=BLOBS)
    with pytest.raises(ValueError, match="start_labels must be in"):
        TrainConfig(start_labels=1.5)
    # off by default for a kind nobody measured; asked for, the run says where it trained them
    plain = train(data, tmp_path / "plain", model=blob_start.weights_path, **{**FAST, "epochs": 1})
    assert not any("start labels" in n for n in plain.notes)
    out = tmp_path / "anchored"
    first = train(data, out, model=blob_start.weights_path, start_labels=0.5, **{**FAST, "epochs": 1})
    said = [n for n in first.notes if n.startswith("start labels:")]
    assert len(said) == 1 and "weight 0.5" in said[0]
    assert (out / "start" / "start.weights.h5").is_file()  # for a resume to make them again
    assert first.model.card.provenance["start_labels"] == 0.5
    assert "start_labels" not in plain.model.card.provenance
    resumed = train(data, out, resume=True, epochs=2)
    assert sum(n.startswith("start labels:") for n in resumed.notes) == 2  # first run's + again
    (out / "start" / "start.weights.h5").unlink()
    again = train(data, out, resume=True, epochs=3)
    assert any("start labels are off" in n and "missing" in n for n in again.notes)
    assert again.history["epoch"].iloc[-1] == 3


def test_partial_labels_never_sharpen_the_starts_confidence(blob_start, tmp_path):
    from dataclasses import replace

    # a start whose confidence is far too soft: any fit to data sharpens it
    soft = load_model(blob_start.weights_path)
    soft.card = replace(soft.card, temperature=5.0)
    start_path = save_model(soft, tmp_path / "soft")
    image, labels = blob_image(13, (256, 256))
    strokes = np.full(labels.shape, 65535, np.uint16)
    strokes[::8][labels[::8] == 0] = 0
    strokes[labels == 1] = 1
    write_image(tmp_path / "m.tif", image, pixel_size_nm=0.8)
    write_labels(tmp_path / "strokes.tif", strokes)
    write_labels(tmp_path / "full.tif", labels)
    runs = {}
    for name in ("strokes", "full"):
        data = pairs_from_files([(tmp_path / "m.tif", tmp_path / f"{name}.tif")], schema=BLOBS)
        runs[name] = train(data, tmp_path / name, model=start_path, **{**FAST, "epochs": 1})
    # strokes are the pixels a user could paint: a temperature fitted on them is not trusted
    # below the start's, and the card and the note say what was fitted
    calibration = runs["strokes"].model.card.provenance["calibration"]
    assert runs["strokes"].model.card.temperature == pytest.approx(5.0)
    assert calibration["fitted"] < 5.0 and calibration["temperature"] == pytest.approx(5.0)
    assert any("the start's kept as the least" in n for n in runs["strokes"].notes)
    # full labels are the whole micrograph: their fit is kept as it is
    assert runs["full"].model.card.temperature < 5.0
    assert "fitted" not in runs["full"].model.card.provenance["calibration"]


def test_counted_confusion_matrix_scores_partial_labels_in_the_restored_mix():
    from napari_emgranules.core.metrics import mean_iou
    from napari_emgranules.core.train import _counted

    # strokes: 80 background and 20 granule pixels labelled; on a whole image 97% / 3%
    strokes = np.array([[76, 4], [2, 18]])
    whole = np.array([[97 * 76 / 80, 97 * 4 / 80], [3 * 2 / 20, 3 * 18 / 20]])
    w = prior_class_weights(np.array([0.8, 0.2]), np.array([0.97, 0.03]))
    assert mean_iou(_counted(strokes, w)) == pytest.approx(mean_iou(whole))
    assert mean_iou(_counted(strokes, w)) < mean_iou(strokes)  # the false granules count for more
    assert np.array_equal(_counted(strokes), strokes)


def _painted_granules(shift: int = 0):
    """Eight granules of radius 10 on a 240 x 240 image, four painted with a 4-px ring of
    background, plus a background stroke; and a prediction of every granule grown by ``shift`` px."""
    from napari_emgranules.core.schema import UNLABELLED

    yy, xx = np.mgrid[:240, :240]
    centres = [(30 + 60 * (k // 4), 30 + 60 * (k % 4)) for k in range(8)]
    dist = np.min([np.hypot(yy - y, xx - x) for y, x in centres], axis=0)
    truth = (dist <= 10).astype(np.uint16)
    strokes = np.full(truth.shape, UNLABELLED, np.uint16)
    for y, x in centres[:4]:
        d = np.hypot(yy - y, xx - x)
        strokes[d <= 14] = 0
        strokes[d <= 10] = 1
    strokes[200:210, 10:230] = 0
    return truth, strokes, (dist <= 10 + shift).astype(np.uint16)


def test_validation_pixel_weights_count_painted_rings_as_granule_edges():
    from napari_emgranules.core.metrics import confusion_matrix, mean_iou
    from napari_emgranules.core.train import _counted, validation_pixel_weights

    truth, strokes, _ = _painted_granules()
    mix = np.bincount(truth.ravel(), minlength=2) / truth.size  # the whole image's mix
    labelled = np.bincount(strokes[strokes < 2], minlength=2) / (strokes < 2).sum()
    w = prior_class_weights(labelled, mix)
    assert validation_pixel_weights([strokes], None) is None
    (m,) = validation_pixel_weights([strokes], w)
    ring = (strokes == 0) & (truth == 0) & (np.arange(240)[:, None] < 120)
    assert np.allclose(m[strokes == 1], w[1]) and np.allclose(m[ring], w[1])  # rings = edges
    far = m[200:210, 10:230]
    assert far.min() == far.max() > w[0]  # the rest of the background's share
    for c in (0, 1):  # each class keeps the mass of the class mix
        assert m[strokes == c].sum() == pytest.approx(w[c] * (strokes == c).sum(), rel=1e-5)
    assert (m[strokes > 1] == 0).all()
    # full labels with equal weights: every pixel counts once
    (ones,) = validation_pixel_weights([truth], [1.0, 1.0])
    assert np.allclose(ones, 1.0)
    # granules drawn 2 px small or 1 px large: whole-image scores prefer the large ones (fewer
    # wrong pixels); class weights alone prefer the small ones, pixel weights agree with the image
    scores = {}
    for shift in (-2, 1):
        _, _, pred = _painted_granules(shift)
        whole = mean_iou(confusion_matrix(truth, pred, 2))
        by_class = mean_iou(_counted(confusion_matrix(strokes, pred, 2), w))
        by_pixel = mean_iou(confusion_matrix(strokes, pred, 2, m))
        scores[shift] = whole, by_class, by_pixel
    assert scores[1][0] > scores[-2][0]
    assert scores[1][1] < scores[-2][1]
    assert scores[1][2] > scores[-2][2]


def test_granules_fine_tuning_from_a_saved_model(tmp_path):
    """Fine-tuning a granules model keeps its kind, schema and pixel size."""
    from napari_emgranules.core.models import ModelCard, SegmentationModel, build_granules_unet

    image, labels = blob_image(7, (256, 256))
    export_training_pairs(image, labels, tmp_path / "pairs", schema=GRANULES_SCHEMA, tile_size=256,
                          pixel_size_nm=0.8)
    card = ModelCard("granules", "unet_model", GRANULES_SCHEMA, provenance={"trained": True})
    start = save_model(SegmentationModel(build_granules_unet(seed=1), card), tmp_path / "g")
    r = train(tmp_path / "pairs", tmp_path / "run", model=start, **{**FAST, "epochs": 1})
    assert r.model.kind == "granules" and r.model.card.schema == GRANULES_SCHEMA
    assert r.weights_path.name == "granules.weights.h5"
    # one micrograph: validation on a held-out strip of it; the start is scored as epoch 0
    assert "held-out strip" in " ".join(r.notes) and r.monitor == "val_mean_iou"
    assert list(r.history["epoch"]) == [0, 1] and r.best_epoch in (0, 1)
    assert list(r.report["class"]) == ["background", "granule"]
    assert r.report["pixels"].sum() == pytest.approx(0.2 * 256 * 256, rel=0.05)
    assert np.isfinite(r.report[["iou_before", "iou_after"]].to_numpy()).all()
    assert (tmp_path / "run" / "report.csv").is_file()


JAX_SCRIPT = """
import sys, numpy as np
from napari_emgranules.core._backend import backend_name
from napari_emgranules.core.schema import ClassSchema
from napari_emgranules.core.train import train
assert backend_name() == "jax", backend_name()
schema = ClassSchema.from_names("blobs", ["background", "blob"])
r = train(sys.argv[1], sys.argv[2], kind="blobs", schema=schema, epochs=1, crop=128, batch_size=2,
          steps_per_epoch=2, seed=0)
x = np.load(sys.argv[3])
np.save(sys.argv[4], r.model.predict_logits(x))
"""


def test_training_runs_under_jax_and_its_weights_load_under_tensorflow(blob_pairs, tmp_path):
    """The loop is backend-neutral: a JAX-trained model gives the same logits in TensorFlow."""
    import os
    import subprocess
    import sys

    pytest.importorskip("jax")
    x = (blob_image(3)[0][None, ..., None] / 255.0).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", JAX_SCRIPT, str(blob_pairs), str(tmp_path / "run"),
                           str(tmp_path / "x.npy"), str(tmp_path / "jax.npy")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = load_model(tmp_path / "run" / "blobs.weights.h5")
    np.testing.assert_allclose(model.predict_logits(x), np.load(tmp_path / "jax.npy"), atol=1e-3)


@pytest.mark.parametrize("pixel_size_nm", [0.8, 1.0])
def test_evaluate_scores_a_model_against_its_own_predictions_perfectly(tmp_path, pixel_size_nm):
    """Truth = the model's own output (at any pixel size): every measure must be perfect."""
    from napari_emgranules.core.evaluation import evaluate
    from napari_emgranules.core.models import ModelCard, SegmentationModel, build_granules_unet
    from napari_emgranules.core.segment import segment_micrograph

    card = ModelCard("granules", "unet_model", GRANULES_SCHEMA, provenance={"trained": True})
    model = SegmentationModel(build_granules_unet(seed=3), card)
    for seed in range(4):
        image, _ = blob_image(seed, (256, 256))  # one tile per image: the same pipeline as the truth
        pred = segment_micrograph(image, pixel_size_nm, models={"g": model}).labels["g"]
        export_training_pairs(image, pred, tmp_path / "pairs", schema=GRANULES_SCHEMA, tile_size=256,
                              source=f"c{seed}.tif", pixel_size_nm=pixel_size_nm)
    report = evaluate(model, tmp_path / "pairs", predictions_dir=tmp_path / "pred")
    assert report.n_images == 4
    assert report.summary["pixel_accuracy"] == 1.0
    assert (report.table["pixel_accuracy"] == 1.0).all()
    assert len(list((tmp_path / "pred").glob("*.png"))) == 4
    with pytest.raises(FileExistsError):
        evaluate(model, tmp_path / "pairs", predictions_dir=tmp_path / "pred")


def test_a_fresh_network_starts_with_live_layers_and_the_class_prior():
    from napari_emgranules.core.models import build_unet
    from napari_emgranules.core.train import _bias_to_priors, _scale_to_unit_activity

    keras = get_keras()
    rng = np.random.default_rng(0)
    batch = rng.uniform(0.3, 0.7, (2, 128, 128, 1)).astype(np.float32)
    net = build_unet("unet_model", 3, seed=0)
    _scale_to_unit_activity(net, batch, target=0.5)
    convs = [layer for layer in net.layers if layer.name.endswith("conv2") or layer.name == "head_conv"]
    probe = keras.Model(net.inputs[0], [layer.output for layer in convs])
    sds = [float(np.std(keras.ops.convert_to_numpy(o))) for o in probe(batch)]
    assert all(0.3 < sd < 0.8 for sd in sds), sds  # no layer fades out with depth
    freqs = np.array([0.7, 0.2, 0.1])
    _bias_to_priors(net, freqs)
    bias = net.get_layer("logits").get_weights()[1]
    np.testing.assert_allclose(np.exp(bias) / np.exp(bias).sum(), freqs, rtol=1e-5)


def test_fine_tuning_rate_is_lower_for_region_models():
    """Measured (docs/correction_loop.md): Locations fine-tunes at 5e-5, other kinds at 5e-4."""
    assert fine_tuning_rate(LOCATIONS_SCHEMA) == fine_tuning_rate(LOCATIONS_MITO_SCHEMA) == 5e-5
    assert fine_tuning_rate(GRANULES_SCHEMA) == fine_tuning_rate(BLOBS) == 5e-4
    assert fine_tuning_rate(LOCATIONS_SCHEMA, fine_tuning=False) == 2e-3


def test_training_images_can_be_renewed_every_few_epochs(blob_pairs, tmp_path):
    asked = []

    def fresh(r):
        asked.append(r)
        image, labels = blob_image(100 + r)
        return [(image, labels, 0.8 + 0.1 * r)]

    out = tmp_path / "run"
    gen = train_iter(blob_pairs, out, kind="blobs", schema=BLOBS, seed=4, fresh_data=fresh,
                     fresh_data_every=1, **FAST)
    finished = 0
    for event in gen:
        finished += event.end_of_epoch
        if finished == 2:
            break
    gen.close()
    assert asked == [1, 2]  # new images after epochs 1 and 2
    asked.clear()
    _, result = run_events(train_iter(blob_pairs, out, resume=True, fresh_data=fresh))
    assert asked == [2]  # the resumed run trains epoch 3 on round 2's images again; none after it
    assert list(result.history["epoch"]) == [1, 2, 3]
    assert any("fresh_data every 1 epoch" in n for n in result.notes)
    # the pairs (0.8 nm) and every round's images (0.9, 1.0 nm), across the resume
    assert result.model.card.training_pixel_range == pytest.approx((0.8, 1.0))


def test_renewed_training_images_are_checked(blob_pairs, tmp_path):
    with pytest.raises(TrainingError, match="fresh_data_every needs fresh_data"):
        run_events(train_iter(blob_pairs, tmp_path / "a", kind="blobs", schema=BLOBS,
                              fresh_data_every=2, **FAST))
    with pytest.raises(ValueError, match="fresh_data_every"):
        TrainConfig(fresh_data_every=0)
    image, labels = blob_image(7)
    with pytest.raises(TrainingError, match=r"fresh_data\(1\) item 0: a 2-D image"):
        run_events(train_iter(blob_pairs, tmp_path / "b", kind="blobs", schema=BLOBS,
                              fresh_data=lambda r: [(image, labels[:10], 0.8)], fresh_data_every=1,
                              **FAST))
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())


def test_fine_tuning_keeps_the_average_with_the_starting_weights_when_asked(blob_pairs, blob_start,
                                                                             tmp_path):
    from napari_emgranules.core.models import load_model

    with pytest.raises(ValueError, match="average_with_start must be in"):
        TrainConfig(average_with_start=1.0)
    first = blob_start
    assert not (first.out_dir / "start").exists()  # from scratch: nothing to average with
    tuned = train(blob_pairs, tmp_path / "tuned", model=first.weights_path, average_with_start=0.25,
                  keep_epochs=True, **{**FAST, "epochs": 2, "val_fraction": 0.0})
    assert tuned.best_epoch > 0
    start = load_model(first.weights_path).keras_model.get_weights()
    best = load_model(epoch_weights_path(tmp_path / "tuned", tuned.best_epoch)).keras_model.get_weights()
    for s, b, k in zip(start, best, tuned.model.keras_model.get_weights(), strict=True):
        np.testing.assert_allclose(k, 0.25 * s + 0.75 * b, rtol=1e-5, atol=1e-6)
    card = json.loads(tuned.weights_path.with_suffix(".json").read_text())
    assert card["provenance"]["averaged_with_start"] == 0.25
    assert any("averaged with the starting weights (25% start)" in n for n in tuned.notes)
    assert tuned.averaged_with_start == 0.25


def test_thinned_to_mix_keeps_each_class_in_proportion_to_its_weight():
    from napari_emgranules.core.schema import UNLABELLED
    from napari_emgranules.core.train import thinned_to_mix

    rng = np.random.default_rng(0)
    labels = np.full((200, 300), UNLABELLED, np.uint16)
    labels[:100, :100] = 0  # 10000 px of background strokes
    labels[100:, :100] = 1  # 10000 px of granule strokes, far more than a micrograph holds
    labels[:50, 200:] = 1
    assert thinned_to_mix(labels, None, rng) is labels
    out = thinned_to_mix(labels, [1.0, 0.1], rng)  # granules counted a tenth as much
    assert (out[labels == UNLABELLED] == UNLABELLED).all()
    assert set(np.unique(out[out != UNLABELLED])) <= {0, 1}
    kept = [int((out == c).sum()) for c in (0, 1)]
    assert kept[0] == 10000 and abs(kept[1] - 1500) < 150  # all background, a tenth of 15000
    assert (out[out != UNLABELLED] == labels[out != UNLABELLED]).all()  # codes never change
