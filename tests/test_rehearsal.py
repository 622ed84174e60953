"""Rehearsal: synthetic micrographs in the user's grey levels, mixed into fine-tuning batches."""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import numpy as np
import pytest
from test_train import FAST, blob_image

from napari_emgranules.core.dataset import export_training_pairs
from napari_emgranules.core.models import ModelCard, SegmentationModel, build_granules_unet, save_model
from napari_emgranules.core.rehearsal import (
    class_quantiles,
    match_look,
    rehearsal_images,
    rehearsal_kind,
)
from napari_emgranules.core.schema import GRANULES_SCHEMA, LOCATIONS_SCHEMA, UNLABELLED, ClassSchema
from napari_emgranules.core.train import TrainConfig, train

train_module = importlib.import_module("napari_emgranules.core.train")


def test_rehearsal_is_offered_only_for_the_generators_classes():
    assert rehearsal_kind(LOCATIONS_SCHEMA) == "locations"
    assert rehearsal_kind(GRANULES_SCHEMA) == "granules"
    assert rehearsal_kind(ClassSchema.from_names("membranes", ["background", "membrane"])) is None


def test_matched_look_takes_each_classs_grey_levels_from_the_users_pixels():
    rng = np.random.default_rng(0)
    labels = np.zeros((128, 128), np.uint16)
    labels[:, 64:] = 1
    user = np.where(labels == 1, rng.normal(0.8, 0.02, labels.shape),
                    rng.normal(0.3, 0.02, labels.shape)).astype(np.float32)
    user_labels = labels.copy()
    user_labels[:10] = UNLABELLED  # not labelled: not part of any class's levels
    user[:10] = 0.0
    target = class_quantiles([user], [user_labels], 2)
    assert set(target) == {-1, 0, 1}
    assert target[0][50] == pytest.approx(0.3, abs=0.01) and target[1][50] == pytest.approx(0.8, abs=0.01)
    # a synthetic image with the classes' brightness the other way round takes the user's levels
    synthetic = np.where(labels == 1, 0.2, 0.9).astype(np.float32) + rng.normal(0, 0.05, labels.shape)
    matched = match_look(np.clip(synthetic, 0, 1).astype(np.float32), labels, target)
    inner = (slice(None), slice(8, 56)), (slice(None), slice(72, 120))  # away from the seam's blur
    assert np.median(matched[inner[0]]) == pytest.approx(0.3, abs=0.02)
    assert np.median(matched[inner[1]]) == pytest.approx(0.8, abs=0.02)
    assert matched.dtype == np.float32 and 0.0 <= matched.min() and matched.max() <= 1.0
    # texture kept: within a class, brighter stays brighter (up to the seam blur)
    a, b = synthetic[inner[1]].ravel(), matched[inner[1]].ravel()
    assert np.corrcoef(a, b)[0, 1] > 0.5


def test_rehearsal_micrographs_come_with_truth_at_the_models_pixel_size():
    made = rehearsal_images("locations", 3.2, 2, 256, seed=3)
    assert len(made) == 2
    for x, y in made:
        assert x.shape == y.shape == (256, 256) and x.dtype == np.float32 and y.dtype == np.uint16
        assert set(np.unique(y)) <= set(range(LOCATIONS_SCHEMA.n_classes))
    again = rehearsal_images("locations", 3.2, 1, 256, seed=3)
    assert np.array_equal(again[0][0], made[0][0])  # seeded


def test_bad_rehearsal_settings_are_refused():
    with pytest.raises(ValueError, match="rehearsal must be in"):
        TrainConfig(rehearsal=1.0)
    with pytest.raises(ValueError, match="rehearsal_look"):
        TrainConfig(rehearsal_look="pretty")


def test_fine_tuning_granules_rehearses_on_synthetic_crops(tmp_path, monkeypatch):
    image, labels = blob_image(7, (256, 256))
    export_training_pairs(image, labels, tmp_path / "pairs", schema=GRANULES_SCHEMA, tile_size=256,
                          pixel_size_nm=0.8)
    card = ModelCard("granules", "unet_model", GRANULES_SCHEMA, provenance={"trained": True})
    start = save_model(SegmentationModel(build_granules_unet(seed=1), card), tmp_path / "g")
    sides = []
    real = train_module.augment_pair

    def spy(image, *args, **kwargs):
        sides.append(image.shape[0])
        return real(image, *args, **kwargs)

    monkeypatch.setattr(train_module, "augment_pair", spy)
    monkeypatch.setattr(train_module, "REHEARSAL_IMAGES", 2)  # small and few: a quick test
    monkeypatch.setattr(train_module, "REHEARSAL_SIDE", 384)
    r = train(tmp_path / "pairs", tmp_path / "run", model=start, rehearsal=0.5,
              rehearsal_validation=True, **{**FAST, "epochs": 1})
    notes = " ".join(r.notes)
    # the best epoch by the mean of the held-out strip's and the synthetic images' mean IoU
    h = r.history
    assert "also on 2 synthetic micrographs" in notes
    assert np.allclose(h["val_mean_iou"], (h["val_mean_iou_held_out"] + h["val_mean_iou_synthetic"]) / 2)
    assert "rehearsal: 50% of the crops" in notes and "matched" in notes
    assert 384 in sides and 256 in sides  # both kinds of crop trained
    # a new task (classes the generator does not make) or a new model trains without it, and says so
    blobs = ClassSchema.from_names("blobs", ["background", "blob"])
    for schema, fine_tuning, why in ((blobs, True, "classes the generator does not make"),
                                     (GRANULES_SCHEMA, False, "a new model")):
        run = SimpleNamespace(card=SimpleNamespace(schema=schema), notes=[])
        assert train_module._rehearsal_samples(run, fine_tuning, 0.5) == ([], [])
        assert "rehearsal is off" in run.notes[0] and why in run.notes[0]
