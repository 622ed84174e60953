"""Per-micrograph input scaling ("percentile") and the domain-randomised generator."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import tifffile

from napari_emgranules.core import montage
from napari_emgranules.core.dataset import export_training_pairs, load_training_pairs
from napari_emgranules.core.models import ModelCard, SegmentationModel, WeightsError, default_model
from napari_emgranules.core.schema import GRANULES_SCHEMA
from napari_emgranules.core.segment import (
    STRETCH_GREYS,
    input_levels,
    input_scaler,
    segment_micrograph,
    to_unit_float,
)
from napari_emgranules.core.synthetic import (
    HELDOUT_FAMILIES,
    SyntheticParams,
    randomised_params,
    synthetic_micrograph,
)
from napari_emgranules.core.train import TrainConfig, _assemble


def _percentile(model: SegmentationModel) -> SegmentationModel:
    return SegmentationModel(model.keras_model, replace(model.card, input_scaling="percentile"))


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return synthetic_micrograph((256, 384), 0.8, seed=11, dtype="uint16").image


def test_a_washed_out_copy_reaches_the_network_like_the_original(image):
    x = to_unit_float(image).astype(np.float64)
    faint = (0.3 + 0.35 * x) * 65535  # a third of the contrast, lighter: another lab's staining
    a = input_scaler(image, "percentile")(image)
    b = input_scaler(faint.astype(np.uint16), "percentile")(faint.astype(np.uint16))
    assert np.abs(a - b).mean() < 0.01
    lo, hi = np.percentile(a, [1, 99])
    assert STRETCH_GREYS[0] - 0.05 < lo < hi < STRETCH_GREYS[1] + 0.05
    # the original networks' scaling is untouched
    np.testing.assert_array_equal(input_scaler(image, "dtype-range")(image), to_unit_float(image))
    with pytest.raises(ValueError, match="unknown input scaling 'zscore'"):
        input_scaler(image, "zscore")


def test_levels_read_by_rows_are_the_same_for_a_memory_map(tmp_path, image):
    path = tmp_path / "m.npy"
    np.save(path, image)
    assert input_levels(np.load(path, mmap_mode="r")) == input_levels(image)
    flat = np.full((64, 64), 1000, np.uint16)  # a flat image is shifted, not blown up
    out = input_scaler(flat, "percentile")(flat)
    assert np.ptp(out) == 0 and np.isfinite(out).all()


def test_cards_name_their_scaling_and_unknown_ones_are_refused():
    card = default_model("granules").card
    d = replace(card, input_scaling="percentile").to_dict()
    assert ModelCard.from_dict(d).input_scaling == "percentile"
    d["input_scaling"] = "zscore"
    with pytest.raises(WeightsError, match="unsupported input_scaling 'zscore'"):
        ModelCard.from_dict(d)
    with pytest.raises(ValueError, match="input_scaling must be one of"):
        TrainConfig(input_scaling="zscore")


def test_one_stretch_per_micrograph_so_tiles_and_montages_agree(tmp_path, image):
    model = _percentile(default_model("granules"))
    whole = segment_micrograph(image, 0.8, models={"granules": model}, mode="whole")
    tiled = segment_micrograph(image, 0.8, models={"granules": model}, mode="tiled", max_window=384,
                               halo=128)
    agree = (whole.granules == tiled.granules).mean()
    assert agree > 0.999
    raw = tmp_path / "raw.tif"
    tifffile.imwrite(raw, image, resolution=(1e7 / 0.8, 1e7 / 0.8), resolutionunit="CENTIMETER")
    large = montage.segment_large(raw, tmp_path / "out", granules_model=model, max_window=384,
                                  halo=128)
    np.testing.assert_array_equal(large.labels["granules"], tiled.granules)
    # and the scaling matters: the same weights under dtype-range give other labels
    base = default_model("granules")
    dtype_range = SegmentationModel(base.keras_model, replace(base.card, input_scaling="dtype-range"))
    plain = segment_micrograph(image, 0.8, models={"granules": dtype_range}, mode="whole",
                               confidence=True)
    with_conf = segment_micrograph(image, 0.8, models={"granules": model}, mode="whole",
                                   confidence=True)
    assert not np.array_equal(plain.confidence["granules"], with_conf.confidence["granules"])


def test_training_takes_the_levels_of_all_tiles_of_a_micrograph(tmp_path, image):
    m = synthetic_micrograph((512, 512), 0.8, seed=12, dtype="uint16")
    export_training_pairs(m.image, m.granules, tmp_path, schema=GRANULES_SCHEMA, tile_size=256,
                          source="m", made_by="synthetic", pixel_size_nm=0.8)
    pairs = list(load_training_pairs(tmp_path))
    assert len(pairs) == 4
    x, labels = _assemble(pairs, GRANULES_SCHEMA, "percentile")
    np.testing.assert_allclose(x, input_scaler(m.image, "percentile")(m.image), atol=1e-6)
    np.testing.assert_array_equal(labels, m.granules)


def test_randomised_params_are_valid_varied_and_reproducible():
    draws = [randomised_params(s) for s in range(300)]
    assert all(isinstance(p, SyntheticParams) for p in draws)
    assert randomised_params(7) == randomised_params(7)
    s_minus_i = [p.grey_levels["S"][0] - p.grey_levels["I"][0] for p in draws]
    assert min(s_minus_i) < -0.1 and max(s_minus_i) > 0.1  # the space lighter or darker than I
    for p in draws:  # the anatomy holds: A denser than I, granules darker than the A band
        assert p.grey_levels["A"][1] < p.grey_levels["I"][0]
        assert p.granule_darkness[1] < p.grey_levels["A"][0]
    assert {p.noise_model for p in draws} == {"gaussian", "poisson"}
    assert 0.2 < np.mean([p.jpeg_quality is not None for p in draws]) < 0.5
    assert "randomised" not in HELDOUT_FAMILIES
    m = synthetic_micrograph((256, 256), 0.8, seed=3, params=draws[3])
    assert m.image.shape == (256, 256) and m.locations.max() <= 6
