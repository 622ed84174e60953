"""Mitochondria apart from the Z disk: the schema with both, tables, Slicer names, widened models."""

from __future__ import annotations

import numpy as np
import pytest
from test_slicer import slicer_file

from napari_emgranules._cli_training import _schema_argument
from napari_emgranules.core.measure import measure_labels
from napari_emgranules.core.models import default_model
from napari_emgranules.core.schema import LOCATIONS_MITO_SCHEMA, LOCATIONS_SCHEMA, ClassSchema
from napari_emgranules.core.segment import input_scaler
from napari_emgranules.core.slicer import read_seg_nrrd
from napari_emgranules.core.synthetic import synthetic_micrograph
from napari_emgranules.core.train import TrainingError, _starting_model


@pytest.fixture(scope="module")
def cell():
    return synthetic_micrograph((768, 768), 3.2, seed=4)


def test_the_schema_keeps_the_default_codes_and_adds_mitochondria():
    assert _schema_argument("locations-mito", None) is LOCATIONS_MITO_SCHEMA
    codes = [(c.code, c.letter) for c in LOCATIONS_MITO_SCHEMA.classes]
    assert codes == [(c.code, c.letter) for c in LOCATIONS_SCHEMA.classes] + [(7, "M")]
    assert LOCATIONS_MITO_SCHEMA.measured_codes == (1, 2, 3, 4, 5, 7)


def test_tables_give_mitochondria_a_row_and_pooling_them_gives_the_joined_class(cell):
    assert cell.mitochondria is not None and cell.mitochondria.any()
    assert (cell.locations[cell.mitochondria] == 3).all()
    apart = cell.locations_with_mitochondria()
    assert (apart == 7).sum() == cell.mitochondria.sum() and ((apart == 3) & cell.mitochondria).sum() == 0
    joined = measure_labels(cell.locations, cell.granules, pixel_size_nm=3.2, section_nm=None).regions
    split = measure_labels(apart, cell.granules, pixel_size_nm=3.2, section_nm=None,
                           schema=LOCATIONS_MITO_SCHEMA, derived={"Z+M": ("Z", "M")}).regions
    rows = split.set_index("region")
    assert {"Z", "M", "Z+M"} <= set(rows.index)
    z = joined.set_index("region").loc["Z"]
    assert rows.loc["Z", "area_px"] + rows.loc["M", "area_px"] == z["area_px"]
    assert rows.loc["Z+M", "granule_px"] == z["granule_px"]
    assert rows.loc["Z+M", "pf"] == pytest.approx(z["pf"])


def test_slicer_mitochondria_get_their_own_code_when_the_schema_has_one(tmp_path):
    regions = np.zeros((32, 40), np.uint8)
    regions[:, :10], regions[:, 10:20], regions[:, 20:30] = 1, 2, 3
    path = slicer_file(tmp_path / "m.seg.nrrd", [("A-band", 0, 1), ("Z-disc", 0, 2),
                                                 ("Mitochondrion", 0, 3)], [regions])
    joined, _ = read_seg_nrrd(path, LOCATIONS_SCHEMA)
    apart, info = read_seg_nrrd(path, LOCATIONS_MITO_SCHEMA)
    assert (joined[:, 10:30] == 3).all()
    assert (apart[:, 10:20] == 3).all() and (apart[:, 20:30] == 7).all()
    assert info["segments"]["Mitochondrion"] == 7


def test_the_bundled_model_widened_to_mitochondria_labels_as_before(cell):
    base = default_model("locations")
    widened, source = _starting_model(None, "locations", LOCATIONS_MITO_SCHEMA, None, False, 3.2, 0)
    assert widened.n_classes == 8 and widened.card.schema == LOCATIONS_MITO_SCHEMA
    assert "widened by mitochondria" in source
    x = input_scaler(cell.image, base.card.input_scaling)(cell.image)[None, :512, :512]
    before, _ = base.predict_labels(x, confidence=False)
    after, _ = widened.predict_labels(x, confidence=False)
    np.testing.assert_array_equal(after, before)  # M starts just below the class it came from
    logits = widened.predict_logits(x)
    np.testing.assert_allclose(logits[..., 7], logits[..., 3] - 2.0, atol=1e-4)
    # a schema that is not the default's plus classes still needs a new model
    other = ClassSchema.from_names("locations", [f"c{i}" for i in range(8)])
    with pytest.raises(TrainingError, match="train a new model"):
        _starting_model(base, "locations", other, None, False, 3.2, 0)


def test_rehearsal_makes_mitochondria_truth_for_the_schema_with_them():
    from napari_emgranules.core.rehearsal import rehearsal_images, rehearsal_kind

    assert rehearsal_kind(LOCATIONS_MITO_SCHEMA) == "locations-mito"
    ((_, joined),) = rehearsal_images("locations", 3.2, 1, 512, seed=1)
    ((_, apart),) = rehearsal_images("locations-mito", 3.2, 1, 512, seed=1)
    assert 7 not in joined and (apart == 7).any()
    np.testing.assert_array_equal(np.where(apart == 7, 3, apart), joined)
