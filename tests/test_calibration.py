"""Temperature scaling and calibration measures (core.calibration) and the card's temperature."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from napari_emgranules.core.calibration import (
    calibration_measures,
    fit_temperature,
    softmax_max,
)
from napari_emgranules.core.dataset import export_training_pairs
from napari_emgranules.core.evaluation import calibrate
from napari_emgranules.core.models import ModelCard, SegmentationModel, WeightsError, default_model
from napari_emgranules.core.schema import GRANULES_SCHEMA, UNLABELLED
from napari_emgranules.core.synthetic import synthetic_micrograph


def _sampled(t_true: float, n: int = 200_000, k: int = 4, seed: int = 0):
    """Logits and labels drawn from softmax(logits / t_true): t_true is the right temperature."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 4, (n, k)).astype(np.float32)
    p = np.exp(z / t_true - (z / t_true).max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    truth = (rng.random((n, 1)) > np.cumsum(p, 1)).sum(1)
    return z, truth


def test_the_fitted_temperature_is_the_one_the_labels_were_drawn_with():
    for t_true in (0.7, 1.0, 2.5):
        z, truth = _sampled(t_true)
        assert fit_temperature([(z, truth)]) == pytest.approx(t_true, rel=0.05)
    # unlabelled pixels are skipped; nothing labelled is an error
    z, truth = _sampled(2.0)
    truth[: len(truth) // 2] = UNLABELLED
    assert fit_temperature([(z, truth)]) == pytest.approx(2.0, rel=0.08)
    with pytest.raises(ValueError, match="no labelled pixels"):
        fit_temperature([(z, np.full(len(z), UNLABELLED))])
    with pytest.raises(ValueError, match="do not match"):
        fit_temperature([(z, truth[:10])])


def test_calibration_measures_tell_calibrated_from_overconfident():
    z, truth = _sampled(2.5)
    correct = z.argmax(1) == truth
    over = calibration_measures(softmax_max(z, 1.0), correct)
    right = calibration_measures(softmax_max(z, 2.5), correct)
    assert right["ece"] < 0.01 < 0.05 < over["ece"]
    assert right["accuracy"] == over["accuracy"]
    # a queue of the least sure 10% holding the wrong pixels: 1.0 when they are all there
    conf = np.linspace(0, 1, 1000)
    ok = conf > 0.05
    assert calibration_measures(conf, ok)["wrong_in_least_confident"] == 1.0
    with pytest.raises(ValueError, match="do not match"):
        calibration_measures(conf, ok[:5])


def test_the_card_keeps_its_temperature_and_only_the_confidence_changes():
    card = default_model("granules").card
    d = replace(card, temperature=2.0).to_dict()
    assert ModelCard.from_dict(d).temperature == 2.0
    for bad in (0.0, float("nan"), 1e9):
        with pytest.raises(WeightsError, match="implausible temperature"):
            ModelCard.from_dict({**d, "temperature": bad})
    base = default_model("granules")
    hot = SegmentationModel(base.keras_model, replace(base.card, temperature=3.0))
    x = synthetic_micrograph((128, 128), 0.8, seed=2).image[None].astype(np.float32) / 65535
    la, ca = base.predict_labels(x)
    lb, cb = hot.predict_labels(x)
    np.testing.assert_array_equal(la, lb)
    assert (cb <= ca + 1e-6).all() and cb.mean() < ca.mean()


def test_calibrate_a_model_on_pairs_it_did_not_train_on(tmp_path):
    m = synthetic_micrograph((256, 256), 0.8, seed=21, dtype="uint16")
    export_training_pairs(m.image, m.granules, tmp_path, schema=GRANULES_SCHEMA, tile_size=256,
                          source="m", made_by="synthetic", pixel_size_nm=0.8)
    model = default_model("granules")
    t, before, after = calibrate(model, tmp_path)
    assert 0.05 <= t <= 20
    assert after["ece"] <= before["ece"] + 1e-6
    assert before["n_pixels"] == after["n_pixels"] == 256 * 256
