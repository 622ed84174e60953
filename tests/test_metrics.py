"""Pixel and object accuracy measures, and the evaluation report."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from napari_emgranules.core.metrics import (
    REPORT_FILES,
    EvaluationReport,
    ObjectMatch,
    confusion_matrix,
    dice_per_class,
    evaluate_predictions,
    image_metrics,
    iou_per_class,
    match_objects,
    mean_iou,
    normalise_confusion,
    pixel_accuracy,
)
from napari_emgranules.core.schema import GRANULES_SCHEMA, LOCATIONS_SCHEMA, UNLABELLED, SchemaError

# truth/pred pairs: (0,0) (0,1) (1,1) (1,1) (2,2) (2,0)
TRUTH = np.array([[0, 0, 1], [1, 2, 2]], dtype=np.uint8)
PRED = np.array([[0, 1, 1], [1, 2, 0]], dtype=np.uint8)
CM = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 1]])


def disc_mask(shape: tuple[int, int], centres: list[tuple[float, float]], radius: float) -> np.ndarray:
    yy, xx = np.indices(shape)
    mask = np.zeros(shape, dtype=bool)
    for cy, cx in centres:
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    return mask


# --------------------------------------------------------------------------------------------
# confusion matrix and pixel measures
# --------------------------------------------------------------------------------------------


def test_confusion_matrix_by_hand():
    cm = confusion_matrix(TRUTH, PRED, 3)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, CM)
    assert cm.sum() == TRUTH.size


def test_pixel_measures_by_hand():
    assert pixel_accuracy(CM) == pytest.approx(4 / 6)
    np.testing.assert_allclose(iou_per_class(CM), [1 / 3, 2 / 3, 1 / 2])
    np.testing.assert_allclose(dice_per_class(CM), [1 / 2, 4 / 5, 2 / 3])
    assert mean_iou(CM) == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)


def test_absent_class_is_nan_and_left_out_of_mean():
    cm = confusion_matrix(TRUTH, PRED, 4)
    assert cm.shape == (4, 4)
    assert cm[3].sum() == 0 and cm[:, 3].sum() == 0
    iou = iou_per_class(cm)
    dice = dice_per_class(cm)
    assert math.isnan(iou[3]) and math.isnan(dice[3])
    np.testing.assert_allclose(iou[:3], [1 / 3, 2 / 3, 1 / 2])
    assert mean_iou(cm) == pytest.approx(0.5)


def test_class_only_predicted_has_iou_zero_not_nan():
    truth = np.zeros((2, 2), dtype=int)
    pred = np.array([[0, 1], [0, 0]])
    iou = iou_per_class(confusion_matrix(truth, pred, 2))
    assert iou[1] == 0.0 and iou[0] == pytest.approx(3 / 4)


def test_empty_confusion_matrix_gives_nan():
    cm = np.zeros((3, 3), dtype=np.int64)
    assert math.isnan(pixel_accuracy(cm))
    assert math.isnan(mean_iou(cm))
    assert np.isnan(iou_per_class(cm)).all()


def test_normalisation_rows_and_columns_sum_to_one():
    cm = confusion_matrix(TRUTH, PRED, 4)  # class 3: zero row and column
    recall = normalise_confusion(cm, "recall")
    precision = normalise_confusion(cm, "precision")
    np.testing.assert_allclose(recall[:3].sum(axis=1), 1.0)
    np.testing.assert_allclose(precision[:, :3].sum(axis=0), 1.0)
    assert np.isnan(recall[3]).all() and np.isnan(precision[:, 3]).all()
    np.testing.assert_allclose(recall[0], [0.5, 0.5, 0, 0])
    np.testing.assert_allclose(precision[:, 0], [0.5, 0, 0.5, 0])


def test_normalisation_rejects_unknown_mode():
    with pytest.raises(ValueError, match="recall.*precision"):
        normalise_confusion(CM, "f1")


def test_confusion_matrix_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"2 x 3.*3 x 2"):
        confusion_matrix(TRUTH, PRED.T, 3)


@pytest.mark.parametrize("which", ["truth", "prediction"])
def test_confusion_matrix_out_of_range_codes_are_named(which):
    bad = TRUTH.astype(np.int16)
    bad[0, 0] = 7
    bad[1, 1] = -1
    args = (bad, PRED) if which == "truth" else (TRUTH, bad)
    with pytest.raises(ValueError, match=rf"{which} holds codes \[-1, 7\] outside 0\.\.2"):
        confusion_matrix(*args, 3)


def test_confusion_matrix_sums_pixel_weights_of_labelled_pixels():
    truth = np.array([[0, 1], [1, UNLABELLED]], dtype=np.uint16)
    pred = np.array([[0, 0], [1, 1]])
    weights = np.array([[2.0, 0.5], [3.0, 7.0]])
    cm = confusion_matrix(truth, pred, 2, weights)
    assert cm.dtype == np.float64
    np.testing.assert_allclose(cm, [[2.0, 0.0], [0.5, 3.0]])  # the unlabelled pixel's 7 is not counted
    assert np.array_equal(confusion_matrix(truth, pred, 2, np.ones((2, 2))), confusion_matrix(truth, pred, 2))
    with pytest.raises(ValueError, match=r"weights of shape \(3,\)"):
        confusion_matrix(truth, pred, 2, np.ones(3))


def test_confusion_matrix_accepts_any_integer_dtype():
    for dtype in (bool, np.int8, np.uint16, np.int32, np.uint64):
        a = np.array([[0, 1], [1, 1]]).astype(dtype)
        np.testing.assert_array_equal(confusion_matrix(a, a, 2), [[1, 0], [0, 3]])


def test_confusion_matrix_rejects_float_maps_and_bad_n_classes():
    with pytest.raises(ValueError, match="integer"):
        confusion_matrix(TRUTH.astype(float), PRED, 3)
    with pytest.raises(ValueError, match="n_classes"):
        confusion_matrix(TRUTH, PRED, 0)


# --------------------------------------------------------------------------------------------
# objects
# --------------------------------------------------------------------------------------------


def test_object_match_properties():
    m = ObjectMatch(n_true=4, n_pred=5, tp=3, fp=2, fn=1)
    assert m.precision == pytest.approx(3 / 5)
    assert m.recall == pytest.approx(3 / 4)
    assert m.f1 == pytest.approx(6 / 9)
    nothing_predicted = ObjectMatch(2, 0, 0, 0, 2)
    assert math.isnan(nothing_predicted.precision)
    assert nothing_predicted.recall == 0.0 and nothing_predicted.f1 == 0.0
    nothing = ObjectMatch.empty()
    assert all(math.isnan(v) for v in (nothing.precision, nothing.recall, nothing.f1))
    assert m + nothing_predicted == ObjectMatch(6, 5, 3, 2, 3)
    with pytest.raises(ValueError, match="inconsistent"):
        ObjectMatch(2, 2, 1, 0, 1)


def test_match_shifted_disc_false_positive_and_false_negative():
    shape = (100, 100)
    truth = disc_mask(shape, [(20, 20), (20, 70)], 8)
    pred = disc_mask(shape, [(22, 21), (75, 75)], 8)  # first shifted: matched; second: far away
    m = match_objects(truth, pred)
    assert (m.n_true, m.n_pred, m.tp, m.fp, m.fn) == (2, 2, 1, 1, 1)
    assert m.precision == m.recall == m.f1 == pytest.approx(0.5)


def test_match_threshold_decides():
    shape = (60, 60)
    truth = disc_mask(shape, [(30, 30)], 8)
    pred = disc_mask(shape, [(30, 36)], 8)  # large shift: IoU well below 0.5
    assert match_objects(truth, pred).tp == 0
    assert match_objects(truth, pred, iou_threshold=0.1).tp == 1


def test_match_low_threshold_is_one_to_one():
    truth = np.zeros((10, 20), dtype=bool)
    truth[2:8, 2:18] = True  # one long object
    pred = np.zeros_like(truth)
    pred[2:8, 2:9] = True  # two halves
    pred[2:8, 11:18] = True
    m = match_objects(truth, pred, iou_threshold=0.3)
    assert (m.n_true, m.n_pred, m.tp, m.fp, m.fn) == (1, 2, 1, 1, 0)


def test_diagonal_squares_connectivity():
    mask = np.zeros((10, 10), dtype=bool)
    mask[1:4, 1:4] = True
    mask[4:7, 4:7] = True  # touches the first one at a corner only
    assert match_objects(mask, mask, connectivity=2).n_true == 1
    m = match_objects(mask, mask, connectivity=1)
    assert (m.n_true, m.n_pred, m.tp) == (2, 2, 2)


def test_perfect_and_empty_objects():
    mask = disc_mask((50, 50), [(10, 10), (30, 35)], 5)
    assert match_objects(mask, mask).f1 == 1.0
    none = np.zeros_like(mask)
    assert match_objects(mask, none) == ObjectMatch(2, 0, 0, 0, 2)
    assert match_objects(none, mask) == ObjectMatch(0, 2, 0, 2, 0)
    assert math.isnan(match_objects(none, none).f1)


def test_match_objects_validates():
    a = np.zeros((5, 5), dtype=bool)
    with pytest.raises(ValueError, match=r"5 x 5.*5 x 4"):
        match_objects(a, a[:, :4])
    for bad in (0, 1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            match_objects(a, a, iou_threshold=bad)
    with pytest.raises(ValueError, match="connectivity"):
        match_objects(a, a, connectivity=3)


def test_large_maps_run_fast_and_count_right():
    """2048 x 2048 maps with 2025 discs (one per 45-pixel cell, jittered, never touching)."""
    rng = np.random.default_rng(0)
    size, cell, n = 2048, 45, 45
    centre = np.arange(n) * cell + cell // 2
    cy = centre[:, None] + rng.integers(-4, 5, (n, n))
    cx = centre[None, :] + rng.integers(-4, 5, (n, n))
    radius = rng.integers(6, 12, (n, n))
    keep = rng.random((n, n)) >= 0.1  # the prediction misses ~10 % of the discs
    yy, xx = np.indices((n * cell, n * cell))
    iy, ix = yy // cell, xx // cell

    def discs(shift: int, present: np.ndarray) -> np.ndarray:
        inside = (yy - cy[iy, ix] - shift) ** 2 + (xx - cx[iy, ix]) ** 2 <= radius[iy, ix] ** 2
        mask = np.zeros((size, size), dtype=bool)
        mask[: n * cell, : n * cell] = inside & present[iy, ix]
        return mask

    truth = discs(0, np.ones((n, n), dtype=bool))
    pred = discs(1, keep)
    cm = confusion_matrix(truth.astype(np.uint8), pred.astype(np.uint8), 2)
    assert cm.sum() == size * size
    assert cm[1].sum() == truth.sum() and cm[:, 1].sum() == pred.sum()
    m = match_objects(truth, pred)
    n_kept = int(keep.sum())
    assert (m.n_true, m.n_pred, m.tp, m.fp, m.fn) == (n * n, n_kept, n_kept, 0, n * n - n_kept)


# --------------------------------------------------------------------------------------------
# per image and report
# --------------------------------------------------------------------------------------------


def granule_pair() -> tuple[np.ndarray, np.ndarray]:
    shape = (100, 100)
    truth = disc_mask(shape, [(20, 20), (20, 70)], 8).astype(np.uint8)
    pred = disc_mask(shape, [(22, 21), (75, 75)], 8).astype(np.uint8)
    return truth, pred


def test_image_metrics_columns_for_granules():
    truth, pred = granule_pair()
    row = image_metrics(truth, pred, GRANULES_SCHEMA)
    assert list(row) == [
        "pixel_accuracy", "mean_iou", "iou_B", "dice_B", "iou_G", "dice_G",
        "objects_true_G", "objects_pred_G", "object_tp_G", "object_precision_G",
        "object_recall_G", "object_f1_G",
    ]
    cm = confusion_matrix(truth, pred, 2)
    assert row["pixel_accuracy"] == pytest.approx(pixel_accuracy(cm))
    assert row["iou_G"] == pytest.approx(iou_per_class(cm)[1])
    assert (row["objects_true_G"], row["objects_pred_G"], row["object_tp_G"]) == (2, 2, 1)
    assert row["object_f1_G"] == pytest.approx(0.5)


def test_image_metrics_locations_has_no_objects_unless_asked():
    truth = np.array([[0, 1, 2], [3, 4, 5]], dtype=np.uint8)
    row = image_metrics(truth, truth, LOCATIONS_SCHEMA)
    assert not any(k.startswith("object") for k in row)
    assert row["pixel_accuracy"] == 1.0 and row["mean_iou"] == 1.0
    assert math.isnan(row["iou_O"])
    row = image_metrics(truth, truth, LOCATIONS_SCHEMA, object_codes=[1])
    assert row["object_f1_A"] == 1.0
    with pytest.raises(SchemaError, match="object code 9"):
        image_metrics(truth, truth, LOCATIONS_SCHEMA, object_codes=[9])


def test_image_metrics_bad_codes_and_shapes():
    truth, pred = granule_pair()
    bad = pred.copy()
    bad[0, 0] = 5
    with pytest.raises(SchemaError, match=r"prediction: codes \[5\]"):
        image_metrics(truth, bad, GRANULES_SCHEMA)
    with pytest.raises(SchemaError, match="truth"):
        image_metrics(bad, pred, GRANULES_SCHEMA)
    with pytest.raises(ValueError, match="shape"):
        image_metrics(truth, pred[:50], GRANULES_SCHEMA)


def test_perfect_prediction_report():
    truth, _ = granule_pair()
    report = evaluate_predictions([("a", truth, truth), ("b", truth, truth)], GRANULES_SCHEMA)
    s = report.summary
    assert s["n_images"] == 2
    assert s["pixel_accuracy"] == 1.0 and s["mean_iou"] == 1.0 and s["mean_image_accuracy"] == 1.0
    assert s["object_f1_G"] == 1.0 and s["objects_true_G"] == 4
    assert report.objects[1] == ObjectMatch(4, 4, 4, 0, 0)


def make_report() -> EvaluationReport:
    truth, pred = granule_pair()
    items = [("cell one.tif", truth, pred), ("cell two.tif", truth, truth),
             ("cell three.tif", pred, truth)]
    return evaluate_predictions(iter(items), GRANULES_SCHEMA)


def test_report_pools_counts():
    report = make_report()
    truth, pred = granule_pair()
    assert list(report.table.columns[:3]) == ["image", "pixel_accuracy", "mean_iou"]
    assert list(report.table["image"]) == ["cell one.tif", "cell two.tif", "cell three.tif"]
    expected = (confusion_matrix(truth, pred, 2) + confusion_matrix(truth, truth, 2)
                + confusion_matrix(pred, truth, 2))
    np.testing.assert_array_equal(report.confusion, expected)
    assert report.objects[1] == ObjectMatch(6, 6, 4, 2, 2)
    s = report.summary
    assert s["pixel_accuracy"] == pytest.approx(pixel_accuracy(expected))
    assert s["iou_G"] == pytest.approx(iou_per_class(expected)[1])
    assert s["mean_image_accuracy"] == pytest.approx(report.table["pixel_accuracy"].mean())
    assert s["object_precision_G"] == pytest.approx(4 / 6)

    frame = report.confusion_frame("recall")
    assert list(frame.index) == ["true: background", "true: granule"]
    assert list(frame.columns) == ["predicted: background", "predicted: granule"]
    np.testing.assert_allclose(frame.sum(axis=1), 1.0)
    text = str(report)
    assert "granule" in text and "mean IoU" in text and "pixel accuracy" in text and "F1" in text


def test_report_write_files_and_accuracies(tmp_path):
    report = make_report()
    written = report.write(tmp_path / "eval")
    assert [p.name for p in written] == list(REPORT_FILES)
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == sorted(REPORT_FILES)

    lines = (tmp_path / "eval" / "accuracies.txt").read_text().splitlines()
    assert len(lines) == 3
    assert lines[1] == "1      1.000000"
    parsed = [line.split() for line in lines]
    assert [int(i) for i, _ in parsed] == [0, 1, 2]
    np.testing.assert_allclose([float(a) for _, a in parsed], report.table["pixel_accuracy"],
                               atol=1e-6)

    per_image = pd.read_csv(tmp_path / "eval" / "per_image.csv")
    assert list(per_image["image"]) == list(report.table["image"])
    summary = pd.read_csv(tmp_path / "eval" / "summary.csv")
    assert len(summary) == 1 and summary.loc[0, "n_images"] == 3
    counts = pd.read_csv(tmp_path / "eval" / "confusion_counts.csv", index_col=0)
    np.testing.assert_array_equal(counts.to_numpy(), report.confusion)


def test_report_write_refuses_to_overwrite(tmp_path):
    report = make_report()
    (tmp_path / "confusion_recall.csv").write_text("mine\n")
    with pytest.raises(FileExistsError, match="confusion_recall.csv"):
        report.write(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion_recall.csv"]
    assert (tmp_path / "confusion_recall.csv").read_text() == "mine\n"
    with pytest.raises(FileExistsError, match="not a folder"):
        report.write(tmp_path / "confusion_recall.csv")
    report.write(tmp_path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(REPORT_FILES)
    assert (tmp_path / "confusion_recall.csv").read_text() != "mine\n"


def test_evaluate_predictions_errors_name_the_image():
    truth, pred = granule_pair()
    with pytest.raises(ValueError, match="no images"):
        evaluate_predictions([], GRANULES_SCHEMA)
    with pytest.raises(ValueError, match="cell two.*shape"):
        evaluate_predictions([("cell one", truth, pred), ("cell two", truth, pred[:10])],
                             GRANULES_SCHEMA)
    with pytest.raises(SchemaError, match="cell one: prediction"):
        evaluate_predictions([("cell one", truth, pred + 2)], GRANULES_SCHEMA)
    with pytest.raises(ValueError, match="triple"):
        evaluate_predictions([("cell one", truth)], GRANULES_SCHEMA)


def test_report_notes_absent_classes():
    truth = np.ones((4, 4), dtype=np.uint8)
    report = evaluate_predictions([("x", truth, truth)], LOCATIONS_SCHEMA)
    assert report.notes and "U (unclassified)" in report.notes[0]
    assert "note:" in report.format()


def test_region_pixel_fractions_count_granules_per_measured_region():
    from napari_emgranules.core.metrics import region_pixel_fractions

    loc = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [0, 0, 6, 6]], np.uint8)
    gran = np.array([[1, 0, 0, 0], [0, 0, 1, 1], [1, 1, 1, 1]], np.uint8)
    pf = region_pixel_fractions(loc, gran)
    assert list(pf) == ["A", "I", "Z", "S", "N"]  # measured codes only: no U, no O
    assert pf["A"] == 0.25 and pf["I"] == 0.5
    assert all(np.isnan(pf[k]) for k in "ZSN")  # absent regions
    with pytest.raises(ValueError):
        region_pixel_fractions(loc, gran[:2])


def test_threshold_sweep_refuses_what_it_cannot_sweep(tmp_path):
    from napari_emgranules.core.evaluation import threshold_sweep
    from napari_emgranules.core.models import default_model

    with pytest.raises(ValueError, match="two-class model; locations has 7 classes"):
        threshold_sweep(default_model("locations"), tmp_path, [0.5])
    for bad, message in (([], "at least one threshold"), ([0.5, 1.0], "between 0 and 1, got 1")):
        with pytest.raises(ValueError, match=message):
            threshold_sweep(default_model("granules"), tmp_path, bad)
