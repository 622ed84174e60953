"""Segmentation: shapes, scaling, resampling, modes and their agreement, progress and cancel."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from napari_emgranules.core.io import Micrograph, MicrographError, write_image
from napari_emgranules.core.models import default_model
from napari_emgranules.core.options import GRANULE_PEAK
from napari_emgranules.core.resample import resample
from napari_emgranules.core.segment import (
    _predict_tiled,
    input_levels,
    input_scaler,
    run_to_completion,
    segment_micrograph,
    segment_micrograph_iter,
    stretch,
    to_unit_float,
)
from napari_emgranules.core.synthetic import synthetic_micrograph
from napari_emgranules.core.tiling import TilePlan, pad_to_multiple


@pytest.fixture(scope="module", autouse=True)
def _quiet_untrained():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        default_model("locations")
        default_model("granules")
        yield


@pytest.fixture(scope="module")
def small():
    return synthetic_micrograph((384, 520), seed=5)


def test_labels_have_the_image_shape_and_schema_codes(small):
    result = segment_micrograph(small.image, mode="whole", confidence=True)
    for kind, n in (("locations", 7), ("granules", 2)):
        lab = result.labels[kind]
        assert lab.shape == small.image.shape and lab.dtype == np.uint8
        assert lab.max() < n
        conf = result.confidence[kind]
        assert conf.shape == small.image.shape
        assert (conf >= 1.0 / n - 1e-6).all() and (conf <= 1 + 1e-6).all()
    assert result.mode == "whole"
    assert result.pixel_size_nm == 0.8 and result.pixel_size_source == "model"
    assert result.untrained == []  # both defaults ship trained (on synthetic data)


def test_scaling_by_dtype_range_as_the_seed():
    a8 = np.array([[0, 128, 255]], np.uint8)
    np.testing.assert_allclose(to_unit_float(a8), [[0, 128 / 255, 1]], rtol=1e-6)
    a16 = np.array([[0, 65535]], np.uint16)
    np.testing.assert_allclose(to_unit_float(a16), [[0, 1]])
    f = np.array([[0.25, 0.5]], np.float32)
    assert to_unit_float(f) is f or np.array_equal(to_unit_float(f), f)
    with pytest.warns(UserWarning, match="scaled"):
        np.testing.assert_allclose(to_unit_float(np.array([[2.0, 4.0]])), [[0, 1]])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("scaling", ["dtype-range", "percentile"])
def test_scaling_a_large_image_by_table_gives_the_same_numbers(dtype, scaling):
    rng = np.random.default_rng(3)
    image = rng.integers(0, np.iinfo(dtype).max, (600, 700), endpoint=True).astype(dtype)
    expected = to_unit_float(image)
    if scaling == "percentile":
        expected = stretch(expected, input_levels(image))
    scale = input_scaler(image, scaling)
    got = scale(image)  # large: through the per-grey-level table
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(scale(image[:20, :30]), expected[:20, :30])  # small: directly


def test_8_and_16_bit_versions_of_an_image_segment_alike(small):
    img16 = (small.image // 257 * 257).astype(np.uint16)  # exactly representable in 8 bits
    img8 = (img16 // 257).astype(np.uint8)
    r16 = segment_micrograph(img16, mode="whole", kinds=("granules",))
    r8 = segment_micrograph(img8, mode="whole", kinds=("granules",))
    np.testing.assert_array_equal(r16.granules, r8.granules)


def test_other_pixel_sizes_are_resampled_to_the_model_and_back(small, monkeypatch):
    seen = []
    model = default_model("granules")
    original = type(model).predict_scores

    def spy(self, batch):
        seen.append(np.asarray(batch).shape)
        out = original(self, batch)
        scores.append(out)
        return out

    scores = []
    monkeypatch.setattr(type(model), "predict_scores", spy)
    result = segment_micrograph(small.image, pixel_size_nm=1.6, mode="whole", kinds=("granules",),
                                min_granule_nm=None, granule_peak=None)
    assert result.granules.shape == small.image.shape
    assert result.pixel_size_source == "user"
    # 384x520 at 1.6 nm/px is 768x1040 at the model's 0.8 nm/px, padded to 768x1152
    assert seen == [(1, 768, 1152)]
    # two classes come back as their logit difference: its resampled sign is the resampled arg-max
    logits = model.predict_logits(np.zeros((1, 128, 128), np.float32))
    np.testing.assert_allclose(model.predict_scores(np.zeros((1, 128, 128), np.float32)),
                               logits[..., 1] - logits[..., 0], atol=1e-5)
    d = scores[0][0][pad_to_multiple(np.zeros((768, 1040), np.float32), 128)[1]]
    both = np.stack([np.zeros_like(d), d], -1)
    expected = resample(both, small.image.shape).argmax(-1)
    near_tie = np.abs(resample(d, small.image.shape)) < 1e-4
    assert (result.granules == expected)[~near_tie].all()


def test_tiled_agrees_with_whole(small):
    """Bound: away from the image edge, tiled probabilities match whole within 0.03.

    Windows sit on the whole pass's 128-px grid, so a window sees exactly what the whole pass sees
    except zero padding at its own edges; those effects mostly fall in the halo, which the
    cross-fade discards. The trained Granules network still feels a little of them 128 px in
    (max 0.012-0.018 with the 128 px halo, measured: benchmarks/mode_agreement.py,
    docs/benchmarks.md); a window off the grid or a wrong cross-fade differs by far more (labels
    agreed on 59-67% before the grid was fixed). Labels can only differ at near-ties.
    """
    x = to_unit_float(synthetic_micrograph((640, 768), seed=9).image)
    model = default_model("granules")
    padded, crop = pad_to_multiple(x, 128)
    logits = model.predict_logits(padded[None])[0][crop]
    logits = logits / model.card.temperature  # the calibrated probabilities tiled mode blends
    whole = np.exp(logits - logits.max(-1, keepdims=True))
    whole /= whole.sum(-1, keepdims=True)
    plan = TilePlan.for_image(x.shape, 512, 128)
    assert plan.n_windows > 1
    log_probs, best = run_to_completion(_predict_tiled(model, x, plan, 2, want_scores=True))
    tiled = np.exp(log_probs)
    np.testing.assert_allclose(best, tiled.max(-1), rtol=1e-5)
    inner = (slice(128, -128), slice(128, -128))
    diff = np.abs(tiled - whole)
    assert diff[inner].max() < 3e-2
    assert diff.mean() < 2e-3
    top2 = np.sort(whole, -1)
    margin = top2[..., -1] - top2[..., -2]
    confident = margin[inner] > 1e-2
    assert (tiled.argmax(-1)[inner] == whole.argmax(-1)[inner])[confident].all()
    assert (tiled.argmax(-1) == whole.argmax(-1)).mean() > 0.98


def test_seed_mode_is_the_seeds_non_overlapping_1024_tiles():
    img = synthetic_micrograph((1024, 2048), seed=3).image
    model = default_model("granules")
    result = segment_micrograph(img, mode="seed", kinds=("granules",), min_granule_nm=None,
                                granule_peak=None)
    x = input_scaler(img, model.card.input_scaling)(img)  # one stretch for the whole image
    for x0 in (0, 1024):
        logits = model.predict_logits(x[None, :, x0:x0 + 1024])
        np.testing.assert_array_equal(result.granules[:, x0:x0 + 1024], logits[0].argmax(-1))


def test_seed_mode_mirrors_edge_tiles_and_keeps_the_shape():
    img = synthetic_micrograph((300, 1100), seed=4).image
    result = segment_micrograph(img, mode="seed", kinds=("granules",))
    assert result.granules.shape == (300, 1100)


def test_progress_events_count_up_to_the_total(small):
    gen = segment_micrograph_iter(small.image, mode="tiled", max_window=384, halo=128)
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            result = stop.value
            break
    assert [e.done for e in events] == list(range(1, len(events) + 1))
    assert all(e.total == len(events) for e in events)
    assert {e.stage for e in events} == {"locations", "granules"}
    assert result.mode == "tiled"


def test_closing_the_generator_cancels(small):
    gen = segment_micrograph_iter(small.image, mode="tiled", max_window=384, halo=128)
    first = next(gen)
    assert first.done == 1
    gen.close()  # what the GUI's Cancel does; must not raise
    with pytest.raises(StopIteration):
        next(gen)


def test_auto_mode_tiles_when_the_whole_image_would_not_fit(small):
    assert segment_micrograph(small.image, kinds=("granules",)).mode == "whole"
    r = segment_micrograph(small.image, kinds=("granules",), memory_budget_bytes=30_000_000)
    assert r.mode == "tiled"


def test_auto_mode_judges_memory_on_the_models_grid():
    """A coarse micrograph is upsampled for the Granules model (0.8 nm/px): 256 px at 3.2 nm/px is
    1024 px there, which must not go through one whole pass a budget for 512 px cannot hold."""
    from napari_emgranules.core.segment import estimate_memory_bytes

    coarse = synthetic_micrograph((256, 256), 3.2, seed=4)
    budget = estimate_memory_bytes((512, 512))
    assert estimate_memory_bytes(coarse.image.shape) <= budget  # the image itself would fit
    r = segment_micrograph(coarse.image, 3.2, kinds=("granules",), memory_budget_bytes=budget)
    assert r.mode == "tiled"
    assert r.granules.shape == coarse.image.shape


def test_micrograph_files_and_objects(tmp_path, small):
    path = write_image(tmp_path / "cell.tif", small.image, pixel_size_nm=0.8)
    result = segment_micrograph(path, mode="whole", kinds=("granules",))
    assert result.name == "cell"
    assert result.pixel_size_source.startswith("metadata")
    m = Micrograph(small.image, 0.8, "model")
    segment_micrograph(m, kinds=("granules",))
    assert m.pixel_size_source == "model"  # the caller's object is not changed


@pytest.mark.parametrize(
    "image, match",
    [(np.full((64, 64), np.nan, np.float32), "NaN"), (np.zeros((3, 64, 64), np.uint8), "stack"),
     (np.zeros((8, 8), np.uint8), "32")],
)
def test_bad_arrays_are_refused_clearly(image, match):
    with pytest.raises(MicrographError, match=match):
        segment_micrograph(image)


def test_bad_options_are_refused(small):
    with pytest.raises(ValueError, match="mode"):
        segment_micrograph(small.image, mode="fast")
    with pytest.raises(ValueError, match="kinds"):
        segment_micrograph(small.image, kinds=("mitochondria",))
    with pytest.raises(ValueError, match="batch_size"):
        segment_micrograph(small.image, mode="tiled", batch_size=0)
    with pytest.raises(ValueError, match="max_window"):
        segment_micrograph(small.image, mode="tiled", max_window=1000)


def test_segment_options_name_every_impossible_value_in_one_message():
    from napari_emgranules import SegmentOptions

    with pytest.raises(ValueError) as info:
        SegmentOptions(mode="fast", batch_size=0, precision="int8", granule_threshold=1.5,
                       min_granule_nm=-1, granule_peak=1.0)
    text = str(info.value)
    for word in ("mode", "batch_size", "precision", "granule threshold", "min_granule_nm", "granule peak"):
        assert word in text
    with pytest.raises(ValueError, match="too small for a halo of 256 px"):
        SegmentOptions(max_window=512, halo=200)  # a window that is all halo (rounded up)
    with pytest.raises(TypeError, match="unknown segmentation option.*tile_size"):
        SegmentOptions.merged(tile_size=512)
    base = SegmentOptions(mode="tiled", halo=64)
    assert SegmentOptions.merged(base, batch_size=4) == SegmentOptions(mode="tiled", halo=64,
                                                                      batch_size=4)
    assert SegmentOptions.merged(base) is base
    assert SegmentOptions(min_granule_nm=0).speck_nm is None


def test_options_object_and_keywords_give_the_same_labels(small):
    from napari_emgranules import SegmentOptions

    opts = SegmentOptions(mode="tiled", max_window=384, halo=64, batch_size=2)
    a = segment_micrograph(small.image, options=opts, kinds=("granules",))
    b = segment_micrograph(small.image, mode="tiled", max_window=384, halo=64, batch_size=2,
                           kinds=("granules",))
    assert a.mode == b.mode == "tiled"
    np.testing.assert_array_equal(a.granules, b.granules)


@pytest.mark.parametrize("pixel_size_nm", [0.8, 1.6])
def test_small_granule_specks_are_removed_in_physical_units(pixel_size_nm):
    from napari_emgranules.core.segment import remove_small_objects

    lab = np.zeros((200, 200), np.uint8)
    yy, xx = np.mgrid[:200, :200]
    d_px = 10 / pixel_size_nm  # a 10 nm granule: kept
    lab[(yy - 50) ** 2 + (xx - 50) ** 2 <= (d_px / 2) ** 2] = 1
    lab[150:152, 150:152] = 1  # a 4-px speck: at most 2.3 nm across at 1 nm/px
    lab[100, 10] = 1
    out = remove_small_objects(lab.copy(), 8.0, pixel_size_nm)
    assert out[50, 50] == 1 and out[150:152, 150:152].sum() == 0 and out[100, 10] == 0
    assert out.sum() == (lab[:120].sum() - 1)
    strided = np.asfortranarray(lab)  # not C-contiguous: changed in place all the same
    assert remove_small_objects(strided, 8.0, pixel_size_nm) is strided
    np.testing.assert_array_equal(strided, out)


def test_segment_drops_granule_specks_unless_asked_not_to(small):
    raw = segment_micrograph(small.image, kinds=("granules",), min_granule_nm=None)
    clean = segment_micrograph(small.image, kinds=("granules",))
    assert (clean.granules <= raw.granules).all()  # only removes
    from scipy import ndimage as ndi

    comp, n = ndi.label(clean.granules, structure=np.ones((3, 3)))
    if n:
        from napari_emgranules.core.options import MIN_GRANULE_NM

        assert np.bincount(comp.ravel())[1:].min() >= np.pi / 4 * (MIN_GRANULE_NM / 0.8) ** 2


def test_mixed_precision_segmentation_agrees_with_float32(small):
    ref = segment_micrograph(small.image, mode="whole", confidence=True)
    low = segment_micrograph(small.image, mode="whole", precision="bfloat16", jit=True)
    for kind in ("locations", "granules"):
        differ = low.labels[kind] != ref.labels[kind]
        # bfloat16 keeps ~3 digits: near-ties (float32 confidence <= 0.7) may flip, nothing else
        assert differ[ref.confidence[kind] > 0.7].mean() < 0.01
        assert differ.mean() < 0.15
    with pytest.raises(ValueError, match="precision"):
        segment_micrograph(small.image, precision="half")


@pytest.mark.parametrize("mode", ["whole", "tiled", "seed"])
def test_granule_threshold_labels_where_the_calibrated_probability_reaches_it(small, mode):
    model = default_model("granules")
    opts = dict(kinds=("granules",), mode=mode, max_window=384, halo=128, min_granule_nm=None)
    counts = [int(segment_micrograph(small.image, 0.8, granule_threshold=t, **opts).granules.sum())
              for t in (0.3, 0.5, 0.85)]
    assert counts[0] > counts[1] > counts[2] > 0  # a higher threshold, fewer granule pixels
    default = segment_micrograph(small.image, 0.8, **opts).granules
    assert int(default.sum()) == counts[1]  # 0.5 is the arg-max
    if mode == "whole":  # exactly the calibrated probability against the threshold
        x = input_scaler(small.image, model.card.input_scaling)(small.image)
        padded, crop = pad_to_multiple(x, 128)
        logits = model.predict_logits(padded[None])[0][crop]
        p = 1 / (1 + np.exp(-(logits[..., 1] - logits[..., 0]) / model.card.temperature))
        got = segment_micrograph(small.image, 0.8, granule_threshold=0.85, **opts).granules
        assert np.mean((got == 1) == (p >= 0.85)) > 0.9999
    with pytest.raises(ValueError, match="between 0 and 1"):
        segment_micrograph(small.image, 0.8, granule_threshold=1.5, **opts)


@pytest.mark.parametrize("mode,pixel_size_nm", [("whole", 0.8), ("tiled", 0.8), ("seed", 0.8),
                                                ("whole", 1.6)])
def test_granule_peak_keeps_only_granules_whose_surest_pixel_reaches_it(small, mode, pixel_size_nm):
    from scipy import ndimage as ndi

    from napari_emgranules.core.segment import keep_peaked_objects

    opts = dict(kinds=("granules",), mode=mode, max_window=384, halo=128, min_granule_nm=None)
    raw = segment_micrograph(small.image, pixel_size_nm, granule_peak=None, confidence=True, **opts)
    p = np.where(raw.granules == 1, raw.confidence["granules"], 1 - raw.confidence["granules"])
    peaked = segment_micrograph(small.image, pixel_size_nm, granule_peak=0.99, **opts).granules
    # whole objects of the arg-max map, kept where their most probable pixel reaches the peak
    np.testing.assert_array_equal(peaked, keep_peaked_objects(raw.granules.copy(), p >= 0.99))
    n_raw = ndi.label(raw.granules, structure=np.ones((3, 3)))[1]
    n_peaked = ndi.label(peaked, structure=np.ones((3, 3)))[1]
    assert 0 < n_peaked <= n_raw
    if mode == "whole":  # (tiled windows of this small image happen to be surer of all 7)
        assert n_peaked < n_raw
    # the default peak applies; a peak at or below the threshold keeps what the threshold draws
    default = segment_micrograph(small.image, pixel_size_nm, **opts).granules
    np.testing.assert_array_equal(default, keep_peaked_objects(raw.granules.copy(), p >= GRANULE_PEAK))
    high = segment_micrograph(small.image, pixel_size_nm, granule_threshold=0.85, **opts).granules
    np.testing.assert_array_equal(high, segment_micrograph(small.image, pixel_size_nm, granule_threshold=0.85,
                                                           granule_peak=None, **opts).granules)


def test_keep_peaked_objects_works_on_any_layout_and_keeps_objects_cut_by_a_band_edge():
    from napari_emgranules.core.segment import keep_peaked_objects

    lab = np.zeros((20, 20), np.uint8)
    lab[2:5, 2:5] = 1  # strong pixel inside: kept
    lab[10:13, 10:13] = 1  # no strong pixel: dropped
    lab[17:20, 2:4] = 1  # touches the last row, no strong pixel
    strong = np.zeros_like(lab, bool)
    strong[3, 3] = True
    out = keep_peaked_objects(np.asfortranarray(lab.copy()), strong)
    assert out[3, 3] == 1 and out[11, 11] == 0 and out[18, 3] == 0
    cut = keep_peaked_objects(lab.copy(), strong, keep_touching=(False, True))
    assert cut[18, 3] == 1 and cut[11, 11] == 0
