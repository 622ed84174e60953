"""The correction loop: partial labels, training on whole micrographs at the model's pixel size,
held-out blocks, and a fine-tuned model that is never worse than where it started."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from napari_emgranules.core._backend import get_keras
from napari_emgranules.core.dataset import (
    DatasetError,
    export_training_pairs,
    load_training_pairs,
    pairs_from_files,
)
from napari_emgranules.core.io import read_labels, write_image, write_labels
from napari_emgranules.core.metrics import confusion_matrix, image_metrics
from napari_emgranules.core.models import ModelCard, SegmentationModel, build_granules_unet, save_model
from napari_emgranules.core.schema import GRANULES_SCHEMA, LOCATIONS_SCHEMA, UNLABELLED, ClassSchema
from napari_emgranules.core.train import (
    TrainingError,
    _hold_out_blocks,
    _load_samples,
    _make_accuracy,
    _make_loss,
    _Sample,
    _with_start_labels,
    train,
)

BLOBS = ClassSchema.from_names("blobs", ["background", "blob"])


def _cell(shape=(256, 256), seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 7, (shape[0] // 32, shape[1] // 32)).repeat(32, 0).repeat(32, 1)
    image = (labels * 30 + rng.integers(0, 20, shape)).astype(np.uint8)
    return image, labels.astype(np.uint8)


def _rows(root):
    with open(root / "manifest.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_changed_export_keeps_only_corrected_and_reviewed_pixels(tmp_path):
    image, predicted = _cell()
    corrected = predicted.copy()
    corrected[10:20, 10:20] = (corrected[10:20, 10:20] + 1) % 7  # tile 0
    reviewed = np.zeros(image.shape, bool)
    reviewed[200:230, 140:170] = True  # tile 3: accepted as it is
    pairs = export_training_pairs(image, corrected, tmp_path, schema=LOCATIONS_SCHEMA, tile_size=128,
                                  source="cell.tif", pixel_size_nm=0.8, only_changed_from=predicted,
                                  labelled="changed", reviewed=reviewed)
    assert [p.name for p in pairs] == ["cell_0.png", "cell_3.png"]
    assert {p.labelled for p in pairs} == {"changed"}
    tile0 = read_labels(tmp_path / "labels" / "cell_0.png")
    assert (tile0 != UNLABELLED).sum() == 100
    np.testing.assert_array_equal(tile0[10:20, 10:20], corrected[10:20, 10:20])
    tile3 = read_labels(tmp_path / "labels" / "cell_3.png")
    np.testing.assert_array_equal(tile3[72:102, 12:42], predicted[200:230, 140:170])
    rows = _rows(tmp_path)
    assert [r["labelled"] for r in rows] == ["changed", "changed"]
    assert float(rows[0]["labelled_fraction"]) == pytest.approx(100 / 128**2, abs=1e-4)
    # the partial pairs load back (UNLABELLED is not a code outside the schema)
    assert [p.labelled for p in load_training_pairs(tmp_path)] == ["changed", "changed"]


def test_strokes_export_and_refusals(tmp_path):
    image, labels = _cell()
    strokes = np.full(image.shape, UNLABELLED, np.uint16)
    strokes[5:8, :] = labels[5:8, :]  # one stroke across tiles 0 and 1
    pairs = export_training_pairs(image, strokes, tmp_path / "s", schema=LOCATIONS_SCHEMA,
                                  tile_size=128, pixel_size_nm=0.8, source="cell")
    assert [(p.name, p.labelled) for p in pairs] == [("cell_0.png", "strokes"), ("cell_1.png", "strokes")]
    empty = np.full(image.shape, UNLABELLED, np.uint16)
    with pytest.raises(DatasetError, match="every pixel is unlabelled.*nothing was written"):
        export_training_pairs(image, empty, tmp_path / "e", schema=LOCATIONS_SCHEMA, pixel_size_nm=0.8)
    with pytest.raises(DatasetError, match="needs the label map the corrections started from"):
        export_training_pairs(image, labels, tmp_path / "e", schema=LOCATIONS_SCHEMA, pixel_size_nm=0.8,
                              labelled="changed")
    with pytest.raises(DatasetError, match="reviewed mask is 3x3"):
        export_training_pairs(image, labels, tmp_path / "e", schema=LOCATIONS_SCHEMA, pixel_size_nm=0.8,
                              only_changed_from=labels, labelled="changed", reviewed=np.ones((3, 3)))
    assert not (tmp_path / "e").exists()


def test_metrics_and_loss_skip_unlabelled_pixels():
    truth = np.array([[0, 1, UNLABELLED], [1, UNLABELLED, 0]], np.uint16)
    pred = np.array([[0, 1, 1], [0, 1, 0]], np.uint8)
    np.testing.assert_array_equal(confusion_matrix(truth, pred, 2), [[2, 0], [1, 1]])
    row = image_metrics(truth, pred, GRANULES_SCHEMA)
    assert row["pixel_accuracy"] == pytest.approx(0.75)
    assert row["objects_pred_G"] == 1  # the granule predicted where nothing is labelled is skipped

    ops = get_keras().ops
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(1, 4, 4, 2)).astype(np.float32)
    y = rng.integers(0, 2, (1, 4, 4)).astype(np.int32)
    loss = _make_loss(2, np.ones(2, np.float32), 0.0)
    partial = y.copy()
    partial[0, :2] = UNLABELLED
    other = logits.copy()
    other[0, :2] = 50.0 * rng.normal(size=(2, 4, 2))  # whatever is predicted there does not count
    sub = float(ops.convert_to_numpy(loss(y[:, 2:], logits[:, 2:]))[0])
    assert float(ops.convert_to_numpy(loss(partial, other))[0]) == pytest.approx(sub, rel=1e-5)


def test_start_labels_train_at_their_weight_and_only_where_nothing_is_labelled():
    ops = get_keras().ops
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(1, 4, 4, 2)).astype(np.float32)
    y = rng.integers(0, 2, (1, 4, 4)).astype(np.int32)
    ce = -np.take_along_axis(logits - np.log(np.exp(logits).sum(-1, keepdims=True)),
                             y[..., None], -1)[..., 0]
    mixed = y.copy()
    mixed[0, :2] += 2  # the top half: the start's sure classes, coded n_classes + c
    for weight in (0.1, 0.5):
        loss = _make_loss(2, np.ones(2, np.float32), 0.0, start_labels=weight)
        want = (weight * ce[0, :2].sum() + ce[0, 2:].sum()) / (weight * 8 + 8)
        assert float(ops.convert_to_numpy(loss(mixed, logits))[0]) == pytest.approx(want, rel=1e-5)
    # with a Dice term, start labels stay out of it: only the cross-entropy sees them
    with_dice = _make_loss(2, np.ones(2, np.float32), 1.0, start_labels=0.5)
    only_user = mixed.copy()
    only_user[0, :2] = UNLABELLED
    plain, dice = (float(ops.convert_to_numpy(f(t, logits))[0]) for f, t in (
        (_make_loss(2, np.ones(2, np.float32), 0.0, start_labels=0.5), mixed),
        (_make_loss(2, np.ones(2, np.float32), 1.0), only_user)))
    dice -= float(ops.convert_to_numpy(_make_loss(2, np.ones(2, np.float32), 0.0)(only_user, logits))[0])
    assert float(ops.convert_to_numpy(with_dice(mixed, logits))[0]) == pytest.approx(plain + dice, rel=1e-5)
    # training accuracy is the user's labels' alone
    right = np.where(logits.argmax(-1) == y, 1.0, 0.0)
    acc = _make_accuracy(2)(mixed, logits)
    assert float(ops.convert_to_numpy(acc)) == pytest.approx(right[0, 2:].mean())

    # which pixels get one: unlabelled, sure (at the start's temperature), outside the strip
    labels = np.full((6, 8), UNLABELLED, np.uint16)
    labels[0, :4] = 1  # the user's labels stay as they are
    sample = _Sample("m", np.zeros((6, 8), np.float32), labels, withheld=(0, 4, 6))
    start_logits = np.zeros((6, 8, 2), np.float32)
    start_logits[:, :4, 1] = 4.0  # sure of class 1 on the left (p = 0.98) ...
    start_logits[:, 4:, 0] = 1.0  # ... and unsure on the right (p = 0.73)

    def predict(batch):
        assert batch.shape[0] == 1 and batch.shape[-1] == 1
        h, w = batch.shape[1:3]
        top, left = (h - 6) // 2, (w - 8) // 2  # padded to the network's multiple, centred
        out = np.zeros((1, h, w, 2), np.float32)
        out[0, top:top + 6, left:left + 8] = start_logits
        return out

    (new,), share = _with_start_labels([sample], predict, 2)
    assert (new.labels[0, :4] == 1).all()  # labelled: unchanged
    assert (new.labels[1:4, :4] == 3).all()  # sure: class 1 as code 2 + 1
    assert (new.labels[1:4, 4:] == UNLABELLED).all()  # unsure: free
    assert (new.labels[4:] == UNLABELLED).all()  # the held-out strip and its margin: never
    assert share == pytest.approx(12 / 28)
    assert new.n_labelled == sample.n_labelled == 4  # crops still go where the user painted
    np.testing.assert_array_equal(new._where, sample._where)
    (hot,), _ = _with_start_labels([sample], predict, 2, temperature=0.25)
    assert (hot.labels[1:4, 4:] == 2).all()  # sharper: the right is sure of class 0 too


def test_tiles_of_one_micrograph_train_as_the_whole_micrograph(tmp_path):
    image, labels = _cell((256, 384))
    export_training_pairs(image, labels, tmp_path, schema=LOCATIONS_SCHEMA, tile_size=128,
                          tiles=[0, 1, 2, 4], source="cell.tif", pixel_size_nm=0.8)
    # at the model's 1.6 nm/px the 256x384 micrograph is 128x192, tile 3 and 5 unlabelled
    (sample,) = _load_samples(load_training_pairs(tmp_path), LOCATIONS_SCHEMA, 1.6)
    assert sample.image.shape == sample.labels.shape == (128, 192)
    assert (sample.labels[:64] != UNLABELLED).all() and (sample.labels[64:, 64:128] != UNLABELLED).all()
    assert (sample.labels[64:, :64] == UNLABELLED).all() and (sample.labels[64:, 128:] == UNLABELLED).all()
    assert sample.n_labelled == 128 * 192 - 2 * 64 * 64


def test_held_out_block_is_an_edge_strip_with_every_class_never_trained_on():
    labels = np.zeros((100, 200), np.uint16)
    labels[:, 100:] = 1  # class 1 only on the right: a strip at the left would take none of it
    sample = _Sample("m", np.zeros((100, 200), np.float32), labels)
    (tr,), (va,) = _hold_out_blocks([sample], 0.2, seed=0)
    held = va.labels != UNLABELLED
    assert held.sum() == pytest.approx(0.2 * labels.size, rel=0.05)
    rows = np.flatnonzero(held.any(axis=1))
    assert held[rows].all() and len(rows) == rows[-1] - rows[0] + 1  # whole rows, one block
    assert rows[0] == 0 or rows[-1] == 99  # along an edge
    for code in (0, 1):  # about a fifth of each class is held out
        assert (held & (labels == code)).sum() == pytest.approx(0.2 * (labels == code).sum(), rel=0.1)
    assert not ((tr.labels != UNLABELLED) & held).any()


def test_training_on_micrograph_files_needs_their_pixel_size(tmp_path):
    image, labels = _cell()
    write_image(tmp_path / "cell.tif", image)  # no pixel size in the file
    write_labels(tmp_path / "cell_labels.tif", labels)
    with pytest.raises(DatasetError, match="cell.tif: has no pixel size"):
        pairs_from_files([(tmp_path / "cell.tif", tmp_path / "cell_labels.tif")], schema=LOCATIONS_SCHEMA)
    bad = labels.copy()
    bad[0, 0] = 9
    write_labels(tmp_path / "bad.tif", bad)
    with pytest.raises(DatasetError, match=r"codes \[9\]"):
        pairs_from_files([(tmp_path / "cell.tif", tmp_path / "bad.tif")], schema=LOCATIONS_SCHEMA,
                         pixel_size_nm=0.8)
    (pair,) = pairs_from_files([(tmp_path / "cell.tif", tmp_path / "cell_labels.tif")],
                               schema=LOCATIONS_SCHEMA, pixel_size_nm=1.2)
    assert pair.pixel_size_nm == 1.2 and pair.origin == (0, 0)


def test_fine_tuning_is_never_worse_than_the_start(tmp_path):
    """A ruinous learning rate cannot make the kept model worse: the start (epoch 0) is kept."""
    rng = np.random.default_rng(3)
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.normal(size=(256, 256)), 6)
    field = (field - field.min()) / (field.max() - field.min())
    labels = (field > 0.6).astype(np.uint8)
    image = np.clip(field * 200 + rng.normal(0, 4, field.shape), 0, 255).astype(np.uint8)
    write_image(tmp_path / "m.tif", image, pixel_size_nm=0.8)
    write_labels(tmp_path / "m_labels.tif", labels)
    card = ModelCard("granules", "unet_model", GRANULES_SCHEMA, provenance={"trained": True})
    start = SegmentationModel(build_granules_unet(seed=1), card)
    start_path = save_model(start, tmp_path / "start")
    result = train([(tmp_path / "m.tif", tmp_path / "m_labels.tif")], tmp_path / "run", model=start_path,
                   epochs=2, crop=128, batch_size=2, steps_per_epoch=3, learning_rate=0.9,
                   early_stopping_patience=None, reduce_lr_patience=None)
    assert list(result.history["epoch"])[0] == 0  # the start, scored (the run may stop on NaN)
    # weights that give NaN logits are never "best", whatever their arg-max happens to score
    assert all(np.isfinite(w).all() for w in result.model.keras_model.get_weights())
    if result.kept_start:  # the usual outcome at this learning rate
        assert any("weights" in n and "kept" in n for n in result.notes)
        for a, b in zip(start.keras_model.get_weights(), result.model.keras_model.get_weights(),
                        strict=True):
            np.testing.assert_array_equal(a, b)
    best = result.history["val_mean_iou"].max()
    assert result.best_value == pytest.approx(best)
    assert result.best_value >= result.history["val_mean_iou"].iloc[0]
    assert list(result.report["class"]) == ["background", "granule"]
    # the kept weights' confidence is calibrated on the held-out strip, and the card says so
    calibration = result.model.card.provenance["calibration"]
    assert result.model.card.temperature == pytest.approx(calibration["temperature"])
    assert 0.05 <= result.model.card.temperature <= 20
    assert calibration["ece_after"] <= calibration["ece_before"] + 1e-6
    assert any("calibrated" in n for n in result.notes)
    with pytest.raises(TrainingError, match="no labelled pixels"):
        empty = np.full(labels.shape, UNLABELLED, np.uint16)
        write_labels(tmp_path / "none.tif", empty)
        train([(tmp_path / "m.tif", tmp_path / "none.tif")], tmp_path / "run2", model=start_path, epochs=1)


def test_an_epoch_that_costs_one_class_too_much_is_not_kept():
    """The class guard: a mean IoU bought by collapsing one class is not an improvement."""
    from types import SimpleNamespace

    from napari_emgranules.core.train import TrainConfig, _class_guard

    start = np.array([[900, 100, 0], [100, 900, 0], [0, 0, 50]])  # class 2: too few pixels to watch
    lopsided = np.array([[1000, 0, 0], [400, 600, 0], [0, 0, 50]])  # 0 gains, 1 loses 0.22
    better = np.array([[950, 50, 0], [50, 950, 0], [0, 50, 0]])  # only the unwatched class falls
    run = SimpleNamespace(config=TrainConfig(), fine_tuning=True, cm_start=start.tolist(),
                          val_class_weights=None)
    logs: dict = {}
    assert not _class_guard(run, lopsided, logs)
    assert logs["val_worst_class_change"] == pytest.approx(600 / 1000 - 900 / 1100)
    assert _class_guard(run, better, {})
    assert _class_guard(SimpleNamespace(config=TrainConfig(max_class_loss=None), fine_tuning=True,
                                        cm_start=start.tolist(), val_class_weights=None), lopsided, {})
    assert _class_guard(SimpleNamespace(config=TrainConfig(), fine_tuning=False,  # from scratch
                                        cm_start=start.tolist(), val_class_weights=None), lopsided, {})
    assert _class_guard(SimpleNamespace(config=TrainConfig(max_class_loss=0.3), fine_tuning=True,
                                        cm_start=start.tolist(), val_class_weights=None), lopsided, {})
    with pytest.raises(ValueError, match="max_class_loss"):
        TrainConfig(max_class_loss=2)
    # a class the start got wrong (IoU < 0.5) is what the user corrects: trading it is allowed
    poor = np.array([[900, 100, 0], [500, 500, 0], [0, 0, 0]])  # class 1: IoU 0.45 at the start
    trade = np.array([[1000, 0, 0], [700, 300, 0], [0, 0, 0]])  # 0 gains, 1 loses 0.15
    assert _class_guard(SimpleNamespace(config=TrainConfig(), fine_tuning=True,
                                        cm_start=poor.tolist(), val_class_weights=None), trade, {})


def test_an_epoch_below_the_start_on_the_users_data_is_not_kept():
    """The held-out floor: synthetic gains do not buy a loss on the user's own held-out data."""
    from types import SimpleNamespace

    from napari_emgranules.core.train import TrainConfig, _held_out_floor

    start = {"epoch": 0, "val_mean_iou_held_out": 0.722, "val_mean_iou_synthetic": 0.681}
    worse = {"val_mean_iou_held_out": 0.704, "val_mean_iou_synthetic": 0.715}  # the mean is higher
    better = {"val_mean_iou_held_out": 0.730, "val_mean_iou_synthetic": 0.690}

    def run(**config):
        return SimpleNamespace(config=TrainConfig(**config), fine_tuning=True, history=[start])

    assert not _held_out_floor(run(), worse)
    assert _held_out_floor(run(), better)
    assert _held_out_floor(run(), {"val_mean_iou_held_out": 0.722})  # equal is not below
    assert _held_out_floor(run(held_out_floor=False), worse)
    assert _held_out_floor(run(), {"val_mean_iou": 0.5})  # no synthetic validation: nothing to weigh
    scratch = SimpleNamespace(config=TrainConfig(), fine_tuning=False, history=[start])
    assert _held_out_floor(scratch, worse)
    unscored = SimpleNamespace(config=TrainConfig(), fine_tuning=True, history=[])
    assert _held_out_floor(unscored, worse)
    with pytest.raises(ValueError, match="held_out_floor"):
        TrainConfig(held_out_floor="no")


def test_pairs_of_one_micrograph_at_two_pixel_sizes_are_refused(tmp_path):
    image, labels = _cell()
    for tile, px in ((0, 0.8), (1, 1.2)):
        export_training_pairs(image, labels, tmp_path, schema=LOCATIONS_SCHEMA, tile_size=128,
                              tiles=[tile], source="cell.tif", pixel_size_nm=px)
    with pytest.raises(TrainingError, match=r"cell.tif: .*different pixel sizes \(0.8, 1.2 nm"):
        _load_samples(load_training_pairs(tmp_path), LOCATIONS_SCHEMA, 3.2)
