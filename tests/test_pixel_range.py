"""Segmentation says when a micrograph's pixel size lies far outside those a model learnt from."""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest

from napari_emgranules.cli import main as cli_main
from napari_emgranules.core.io import write_image
from napari_emgranules.core.models import ModelCard, SegmentationModel, WeightsError, default_model
from napari_emgranules.core.schema import GRANULES_SCHEMA, LOCATIONS_SCHEMA
from napari_emgranules.core.segment import (
    PIXEL_RANGE_SLACK,
    PixelSizeRangeWarning,
    pixel_range_notes,
    segment_micrograph,
    views_notes,
)


def card(kind="granules", seen=(0.7, 0.9), px=0.8) -> ModelCard:
    prov = {"trained": True} | ({"micrograph_pixel_sizes_nm": list(seen)} if seen else {})
    arch, schema = (("unet_model", GRANULES_SCHEMA) if kind == "granules"
                    else ("unet_model7", LOCATIONS_SCHEMA))
    return ModelCard(kind, arch, schema, pixel_size_nm=px, provenance=prov)


def test_the_card_reads_and_checks_its_training_pixel_range():
    assert card().training_pixel_range == (0.7, 0.9)
    assert card(seen=None).training_pixel_range is None
    again = ModelCard.from_dict(json.loads(json.dumps(card().to_dict())))
    assert again.training_pixel_range == (0.7, 0.9)
    for bad in ([0.9, 0.7], ["a", 1], [0.8], 0.8, [-1, 1], [float("nan"), 1]):
        data = card().to_dict()
        data["provenance"]["micrograph_pixel_sizes_nm"] = bad
        with pytest.raises(WeightsError, match=r"x\.json: provenance micrograph_pixel_sizes_nm"):
            ModelCard.from_dict(data, where="x.json")


@pytest.mark.parametrize("bundled", ["locations", "granules"])
def test_the_bundled_defaults_record_the_pixel_sizes_they_learnt_from(bundled):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seen = default_model(bundled).card.training_pixel_range
    assert seen is not None and 0.5 < seen[0] <= 0.8 <= seen[1]
    # Granules learnt at 0.7-0.9 nm/px only; Locations also from coarse micrographs (to 12.5 nm/px:
    # scripts/train_defaults.py --coarse-share)
    assert seen[1] < 1.2 if bundled == "granules" else 8.0 < seen[1] <= 12.5


def test_notes_name_the_model_and_say_how_far_outside():
    models = {"granules": card(), "mito": card("locations", seen=(0.6, 1.0), px=3.2),
              "unknown": card(seen=None)}
    assert pixel_range_notes(0.8, models) == []
    finer, coarser = PIXEL_RANGE_SLACK
    assert 1 < finer <= coarser
    assert pixel_range_notes(0.9 * coarser * 0.999, {"granules": card()}) == []
    assert pixel_range_notes(0.7 / finer * 1.001, {"granules": card()}) == []
    assert len(pixel_range_notes(0.9 * coarser * 1.01, {"granules": card()})) == 1
    assert len(pixel_range_notes(0.7 / finer / 1.01, {"granules": card()})) == 1
    coarse = pixel_range_notes(12.5, models)
    assert len(coarse) == 2  # the model without a record says nothing
    granules, mito = coarse
    assert granules.startswith("granules model: the micrograph is at 12.5 nm/px")
    assert "0.7-0.9 nm/px" in granules and "magnified 15.6x" in granules
    assert "1.2-3.2 px across" in granules  # glycogen granules, 15-40 nm
    assert mito.startswith("mito model:") and "magnified 3.91x" in mito and "px across" not in mito
    (fine,) = pixel_range_notes(0.2, {"granules": card()})
    assert "shrunk 4x" in fine and "emgranules train" in fine


def test_segmenting_outside_the_range_warns_and_keeps_the_notes():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 60000, (256, 256), dtype=np.uint16)

    def notes(pixel_size):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = segment_micrograph(image, pixel_size, mode="whole")
        said = [str(w.message) for w in caught if w.category is PixelSizeRangeWarning]
        assert said == result.notes
        return {n.split(" model:")[0] for n in said}

    assert notes(0.2) == {"locations", "granules"}  # finer than either model learnt from
    # coarse: Granules learnt at 0.7-0.9 nm/px only, the Locations default also from micrographs
    # at up to 12.5 nm/px (scripts/train_defaults.py --coarse-share)
    assert notes(12.5) == {"granules"}
    with warnings.catch_warnings():
        warnings.simplefilter("error", PixelSizeRangeWarning)
        assert segment_micrograph(image, 0.8, mode="whole").notes == []


def test_the_cli_says_so_in_one_line_per_model(tmp_path, capsys):
    image = tmp_path / "fine.tif"
    write_image(image, np.random.default_rng(1).integers(0, 255, (200, 200), dtype=np.uint8),
                pixel_size_nm=0.2)
    assert cli_main(["segment", str(image), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "learnt from micrographs of" in ln]
    assert len(lines) == 2 and all(ln.startswith("emgranules: warning: ") for ln in lines), err
    assert "Traceback" not in err


def test_views_a_model_was_not_trained_for_are_noted():
    flips_only = card()
    flips_only.provenance["training"] = {"flips": True, "rotate90": False}
    turned = card()
    turned.provenance["training"] = {"flips": True, "rotate90": True}
    assert views_notes({"mito": flips_only, "granules": turned, "old": card()}) == []  # one view each
    flips_only.views = turned.views = 8
    notes = views_notes({"mito": flips_only, "granules": turned, "old": card()})
    assert len(notes) == 1 and notes[0].startswith("mito model: it averages 8 views")
    assert "rotate90" in notes[0] and "views=1" in notes[0]
    # through segmentation: the bundled Granules network under a card that says "flips only"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = default_model("granules")
    prov = {**net.card.provenance, "training": {**net.card.provenance["training"], "rotate90": False}}
    model = SegmentationModel(net.keras_model, dataclasses.replace(net.card, provenance=prov))
    image = np.random.default_rng(0).integers(0, 255, (128, 128), dtype=np.uint8)
    with pytest.warns(UserWarning, match="trained without quarter turns"):
        result = segment_micrograph(image, 0.8, models={"granules": model}, views=4)
    assert any("averages 4 views" in n for n in result.notes)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # one view: nothing to say
        assert not segment_micrograph(image, 0.8, models={"granules": model}).notes
