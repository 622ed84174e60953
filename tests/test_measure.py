"""Measurement: density table, seed text tables, particles, Z-disk widths, and the CLI."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from napari_emgranules.cli import main
from napari_emgranules.core.io import write_labels
from napari_emgranules.core.measure import (
    REGION_COLUMNS,
    SEED_AREAS_FILE,
    SEED_DENSITIES_FILE,
    ParticleFilter,
    density_table,
    format_seed_areas,
    format_seed_densities,
    granule_particles,
    measure_labels,
    summarise_particles,
    tile_density_tables,
    write_csv,
    write_seed_tables,
    z_disk_widths,
)
from napari_emgranules.core.schema import SchemaError

A, I, Z, S, N, OTHER = 1, 2, 3, 4, 5, 6  # noqa: E741 (the regions' letters)


def _disc(shape, center, diameter_px):
    rr, cc = np.ogrid[:shape[0], :shape[1]]
    return (rr - center[0] + 0.5) ** 2 + (cc - center[1] + 0.5) ** 2 <= (diameter_px / 2) ** 2


def _layout():
    """A 40x50 map: A (rows 0-19), I (20-29), S (30-34), unclassified and other; no Z, no N."""
    loc = np.zeros((40, 50), np.uint8)
    loc[:20] = A
    loc[20:30] = I
    loc[30:35] = S
    loc[35:, :25] = OTHER
    gra = np.zeros_like(loc)
    gra[0:2, 0:10] = 1      # 20 px in A
    gra[20:23, 0:10] = 1    # 30 px in I
    gra[35:, :5] = 1        # 25 px in "other": not in any measured region
    return loc, gra


# ---------------------------------------------------------------------------------------------
# density table
# ---------------------------------------------------------------------------------------------
def test_density_table_counts_exactly_and_leaves_absent_regions_undefined():
    loc, gra = _layout()
    t = density_table(loc, gra, pixel_size_nm=2.0, pixel_size_source="user", image="cell")
    assert list(t.columns) == list(REGION_COLUMNS)
    assert t["region"].tolist() == ["A", "I", "Z", "S", "N"]  # no row for unclassified or other
    got = t.set_index("region")
    assert got.loc["A", "area_px"] == 1000 and got.loc["A", "granule_px"] == 20
    assert got.loc["I", "area_px"] == 500 and got.loc["I", "granule_px"] == 30
    assert got.loc["S", "area_px"] == 250 and got.loc["S", "granule_px"] == 0
    assert got.loc["A", "pf"] == pytest.approx(0.02) and got.loc["I", "pf"] == pytest.approx(0.06)
    assert got.loc["S", "pf"] == 0.0
    for absent in ("Z", "N"):
        assert got.loc[absent, "area_px"] == 0 and got.loc[absent, "granule_px"] == 0
        assert math.isnan(got.loc[absent, "pf"])
    # physical units: 1000 px of 2 nm = 4000 nm^2 = 0.004 um^2; the source is recorded
    assert got.loc["A", "area_um2"] == pytest.approx(0.004)
    assert set(t["pixel_size_source"]) == {"user"} and set(t["pixel_size_nm"]) == {2.0}


def test_pf_standard_error_is_the_ratio_estimators_over_fields():
    # Hand-worked: three fields hold the region (areas 100, 100, 200; granule px 10, 0, 20);
    # a fourth does not. pf = 30 / 400; residuals 2.5, -7.5, 5; k = 3.
    from napari_emgranules.core.measure import pf_standard_error

    area = np.array([[100], [100], [200], [0]])
    gran = np.array([[10], [0], [20], [0]])
    expected = math.sqrt(3 / 2 * (2.5 ** 2 + 7.5 ** 2 + 5 ** 2) / 400 ** 2)
    assert pf_standard_error(area, gran)[0] == pytest.approx(expected)
    # One field cannot say how pf varies; evenly spread granules give no variation.
    assert math.isnan(pf_standard_error(np.array([[50], [0]]), np.array([[5], [0]]))[0])
    even = pf_standard_error(np.array([[100], [100]]), np.array([[7], [7]]))[0]
    assert even == pytest.approx(0.0, abs=1e-12)


def test_pf_se_in_the_table_follows_the_spread_of_pf_between_images():
    # Granules as discs dropped at random into one region: over many images the standard
    # deviation of pf is what one image's pf_se says, within 25% on average, although the
    # pixels of a disc are not independent (a binomial error of the pixels is about 7x too small).
    rng = np.random.default_rng(3)
    shape, pfs, ses = (256, 256), [], []
    rr, cc = np.ogrid[:9, :9]
    disc = (rr - 4) ** 2 + (cc - 4) ** 2 <= 16
    for _ in range(150):
        gra = np.zeros(shape, np.uint8)
        for r, c in rng.integers(0, 256 - 9, (int(rng.poisson(60)), 2)):
            gra[r:r + 9, c:c + 9] |= disc
        loc = np.full(shape, A, np.uint8)
        row = density_table(loc, gra).set_index("region").loc["A"]
        pfs.append(row["pf"])
        ses.append(row["pf_se"])
    spread, mean_se = float(np.std(pfs, ddof=1)), float(np.mean(ses))
    assert 0.75 < mean_se / spread < 1.25, (mean_se, spread)
    binomial = math.sqrt(np.mean(pfs) * (1 - np.mean(pfs)) / (256 * 256))
    assert binomial < 0.5 * spread


def test_pf_se_is_undefined_for_a_region_seen_in_one_field_only():
    loc, gra = _layout()
    loc[:] = A
    loc[:5, :5] = S  # S in the first of the 4 x 4 fields only
    t = density_table(loc, gra).set_index("region")
    assert math.isnan(t.loc["S", "pf_se"]) and t.loc["A", "pf_se"] >= 0
    assert math.isnan(t.loc["Z", "pf_se"])  # absent


def test_density_table_accepts_a_0_255_granule_mask_and_bool():
    loc, gra = _layout()
    ref = density_table(loc, gra)
    for other in (gra.astype(bool), (gra * 255).astype(np.uint8)):
        pd.testing.assert_frame_equal(density_table(loc, other), ref)


@pytest.mark.parametrize("loc, gra, match", [
    (np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8), "differ in size"),
    (np.zeros((4, 4), np.float32), np.zeros((4, 4), np.uint8), "integer"),
    (np.zeros((2, 4, 4), np.uint8), np.zeros((2, 4, 4), np.uint8), "2-D"),
    (np.zeros((0, 4), np.uint8), np.zeros((0, 4), np.uint8), "empty"),
    (np.zeros((4, 4), np.uint8), np.arange(16, dtype=np.uint8).reshape(4, 4) % 3, "two-class"),
    (np.zeros((4, 4), np.uint8), np.full((4, 4), -1, np.int16), "two-class"),
])
def test_bad_label_maps_are_refused_with_the_reason(loc, gra, match):
    with pytest.raises(ValueError, match=match):
        density_table(loc, gra)


def test_codes_outside_the_schema_are_refused():
    loc = np.full((4, 4), 9, np.uint8)
    with pytest.raises(SchemaError, match="not in the locations schema"):
        density_table(loc, np.zeros_like(loc))


@pytest.mark.parametrize("bad", [0, -0.8, float("nan"), "x"])
def test_bad_pixel_sizes_are_refused(bad):
    loc, gra = _layout()
    with pytest.raises(ValueError, match="pixel_size_nm"):
        density_table(loc, gra, pixel_size_nm=bad)


def test_seed_tiles_are_numbered_column_by_column_as_the_original_splitter():
    loc = np.full((8, 8), A, np.uint8)
    gra = np.zeros_like(loc)
    gra[0:4, 4:8] = 1  # the top-right tile: column 1, row 0 -> tile 2 of a 2x2 split
    t = tile_density_tables(loc, gra, tile=4, image="m")
    per_tile = t[t.region == "A"].set_index("tile")["pf"]
    assert per_tile.to_dict() == {"0": 0.0, "1": 0.0, "2": 1.0, "3": 0.0}
    with pytest.raises(ValueError, match="multiples of 3"):
        tile_density_tables(loc, gra, tile=3)


# ---------------------------------------------------------------------------------------------
# the seed's text tables
# ---------------------------------------------------------------------------------------------
def _seed_example() -> pd.DataFrame:
    loc, gra = _layout()
    first = density_table(loc, gra, image="cell_0.png")
    loc2 = np.full((200, 100), A, np.uint8)
    gra2 = np.zeros_like(loc2)
    gra2[0, 0] = 1  # pf = 1/20000 = 0.00005: rounds to 0.0000 in single precision, as the seed's
    second = density_table(loc2, gra2, image="a_rather_long_micrograph_name_that_is_cut_0.png")
    return pd.concat([first, second], ignore_index=True)


def test_seed_areas_table_is_byte_exact():
    text = format_seed_areas(_seed_example())
    expected = (
        "image_name A_area A_grns I_area I_grns Z_area Z_grns S_area S_grns N_area N_grns\n"
        + " " * 25 + "cell_0.png" + "    1000" + "     20" + "    500" + "     30"
        + "      0" * 2 + "    250" + "      0" + "      0" * 2 + "\n"
        + "a_rather_long_micrograph_name_that_"  # first 35 characters of the name
        + "   20000" + "      1" + "      0" * 8 + "\n"
    )
    assert text == expected


def test_seed_densities_table_is_byte_exact_with_minus_one_for_absent_regions():
    text = format_seed_densities(_seed_example())
    expected = (
        "image_name A_dens I_dens Z_dens S_dens N_dens\n"
        + " " * 25 + "cell_0.png" + "  0.0200  0.0600 -1.0000  0.0000 -1.0000\n"
        + "a_rather_long_micrograph_name_that_" + "  0.0000 -1.0000 -1.0000 -1.0000 -1.0000\n"
    )
    assert text == expected


def test_seed_tables_written_once_and_never_overwritten(tmp_path):
    table = _seed_example()
    areas, dens = write_seed_tables(table, tmp_path)
    assert areas.name == SEED_AREAS_FILE and dens.name == SEED_DENSITIES_FILE
    before = areas.read_bytes()
    with pytest.raises(FileExistsError, match="exists already"):
        write_seed_tables(table.iloc[:5], tmp_path)
    assert areas.read_bytes() == before
    write_seed_tables(table.iloc[:5], tmp_path, overwrite=True)
    assert areas.read_bytes().count(b"\n") == 2
    with pytest.raises(FileExistsError):
        write_csv(table, areas)


def test_seed_table_of_tiles_names_them_like_the_tile_files():
    loc = np.full((8, 8), I, np.uint8)
    t = tile_density_tables(loc, np.zeros_like(loc), tile=4, image="cell")
    lines = format_seed_densities(t).splitlines()[1:]
    assert [ln[:35].strip() for ln in lines] == [f"cell_{k}.png" for k in range(4)]


# ---------------------------------------------------------------------------------------------
# particles
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("px", [0.8, 1.6])
def test_particle_sizes_in_nm_match_drawn_discs_at_two_pixel_sizes(px):
    shape = (300, 300)
    loc = np.full(shape, A, np.uint8)
    loc[:, 150:] = S
    gra = np.zeros(shape, np.uint8)
    drawn = {(60, 60): 20.0, (60, 220): 40.0, (220, 60): 30.0, (220, 220): 25.0}  # nm
    for center, d_nm in drawn.items():
        gra |= _disc(shape, center, d_nm / px)
    p = granule_particles(gra, loc, pixel_size_nm=px)
    assert len(p) == 4 and p["kept"].all()
    for center, d_nm in drawn.items():
        row = p.iloc[((p.row - center[0]) ** 2 + (p.col - center[1]) ** 2).argmin()]
        assert row.equivalent_diameter_nm == pytest.approx(d_nm, abs=px)
        assert row.feret_diameter_nm == pytest.approx(d_nm, abs=1.5 * px)
        assert row.area_nm2 == pytest.approx(math.pi * d_nm ** 2 / 4, rel=0.12)
        assert row.circularity > 0.85
        assert row.region == ("A" if center[1] < 150 else "S")


def test_particle_region_is_the_majority_of_its_pixels():
    loc = np.full((40, 40), A, np.uint8)
    loc[:, 24:] = I  # a disc centred at column 20 lies mostly in A
    gra = _disc(loc.shape, (20, 20), 14).astype(np.uint8)
    p = granule_particles(gra, loc, pixel_size_nm=1.0)
    assert p["region"].tolist() == ["A"]


def test_filters_drop_specks_and_touching_pairs_and_splitting_recovers_both():
    shape = (200, 200)
    gra = np.zeros(shape, np.uint8)
    gra |= _disc(shape, (50, 50), 5)             # 4 nm speck at 0.8 nm/px
    gra |= _disc(shape, (120, 100), 30)          # two touching 24 nm granules
    gra |= _disc(shape, (120, 128), 30)
    p = granule_particles(gra, pixel_size_nm=0.8)
    assert len(p) == 2 and not p["kept"].any()  # a speck, and a blob that is neither round nor small
    split = granule_particles(gra, pixel_size_nm=0.8, split_touching=True)
    kept = split[split["kept"]]
    assert len(kept) == 2
    assert kept["equivalent_diameter_nm"].to_numpy() == pytest.approx([24, 24], abs=3)
    loose = granule_particles(gra, pixel_size_nm=0.8, filters=ParticleFilter(2.0, 80.0, 0.0))
    assert loose["kept"].all()


def test_particle_filter_refuses_impossible_ranges():
    with pytest.raises(ValueError, match="min < max"):
        ParticleFilter(40.0, 10.0)
    with pytest.raises(ValueError, match="circularity"):
        ParticleFilter(min_circularity=1.5)


def test_counts_per_region_and_per_square_micrometre():
    shape = (500, 500)
    loc = np.full(shape, A, np.uint8)
    loc[250:] = I
    gra = np.zeros(shape, np.uint8)
    for r in (50, 120, 190):
        for c in (50, 150, 250, 350):
            gra |= _disc(shape, (r, c), 25)  # 12 granules of 20 nm in A
    gra |= _disc(shape, (400, 400), 25)      # 1 in I
    regions = density_table(loc, gra, pixel_size_nm=0.8, image="m")
    out = summarise_particles(regions, granule_particles(gra, loc, pixel_size_nm=0.8, image="m"))
    got = out.set_index("region")
    assert got.loc["A", "granule_count"] == 12 and got.loc["I", "granule_count"] == 1
    assert got.loc["A", "granules_per_um2"] == pytest.approx(12 / (250 * 500 * 0.64e-6))
    assert got.loc["A", "mean_diameter_nm"] == pytest.approx(20, abs=1)
    assert math.isnan(got.loc["N", "granule_count"])  # no area: undefined, not zero


def test_no_granules_gives_an_empty_particle_table_and_zero_counts():
    loc = np.full((64, 64), A, np.uint8)
    m = measure_labels(loc, np.zeros_like(loc), pixel_size_nm=0.8, section_nm=None)
    assert len(m.particles) == 0
    assert m.regions.set_index("region").loc["A", "granule_count"] == 0


# ---------------------------------------------------------------------------------------------
# Z disks
# ---------------------------------------------------------------------------------------------
def test_z_disk_width_is_area_over_length_and_mitochondria_are_not_kept():
    px = 0.8
    loc = np.full((1600, 1600), A, np.uint8)
    for row, width_nm in ((300, 60.0), (900, 90.0)):
        w = int(round(width_nm / px))
        loc[row:row + w, 100:1350] = Z                # 1 um long Z disks
    loc[1200:1550, 1000:1500] = Z                    # a 280 x 400 nm mitochondrion (also Z)
    z = z_disk_widths(loc, pixel_size_nm=px).sort_values("row")
    assert len(z) == 3
    assert z["width_nm"].iloc[0] == pytest.approx(60, rel=0.06)
    assert z["width_nm"].iloc[1] == pytest.approx(90, rel=0.06)
    assert z["length_nm"].iloc[0] == pytest.approx(1000, rel=0.1)
    assert z["kept"].tolist() == [True, True, False]


# ---------------------------------------------------------------------------------------------
# everything at once, with vf
# ---------------------------------------------------------------------------------------------
def test_measure_labels_adds_vf_below_pf_for_a_thick_section():
    from napari_emgranules.core.synthetic import synthetic_micrograph

    m = synthetic_micrograph((1024, 1024), 0.8, seed=3)
    result = measure_labels(m.locations, m.granules, pixel_size_nm=0.8, tile=512, image="s3")
    r = result.regions.set_index("region")
    present = r[r.area_px > 0]
    assert present["pf"].to_dict() == pytest.approx(
        {k: v for k, v in m.true_pixel_fractions.items() if not math.isnan(v)})
    with_granules = present[present.pf > 0]
    assert (with_granules["vf"] < with_granules["pf"]).all()  # projection through 70 nm: pf > vf
    assert (with_granules["vf"] > 0).all()
    assert set(result.regions["section_nm"]) == {70.0}
    assert len(result.tiles) == 4 * 5
    # tile counts add up to the whole image's
    tiles = result.tiles.groupby("region")[["area_px", "granule_px"]].sum()
    assert (tiles["area_px"] == r["area_px"].reindex(tiles.index)).all()
    assert result.notes and "kept particles" in result.notes[0]
    conc = measure_labels(m.locations, m.granules, pixel_size_nm=0.8, concentration_factor=1000.0)
    assert conc.regions["concentration"].to_numpy() == pytest.approx(
        1000.0 * conc.regions["vf"].to_numpy(), nan_ok=True)
    with pytest.raises(ValueError, match="factor"):
        measure_labels(m.locations, m.granules, pixel_size_nm=0.8, concentration_factor=-1.0)


def test_measure_without_pixel_size_gives_pixels_only():
    loc, gra = _layout()
    result = measure_labels(loc, gra, pixel_size_nm=None)
    assert result.regions["area_um2"].isna().all() and result.regions["vf"].isna().all()
    assert "no pixel size" in result.notes[0]


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def _write_pair(folder, name, loc, gra, px=0.8):
    write_labels(folder / "locations" / f"{name}.png", loc, pixel_size_nm=px)
    write_labels(folder / "granules" / f"{name}.png", gra, pixel_size_nm=px)


def test_cli_measure_folders_with_pixel_size_from_metadata_and_seed_tables(tmp_path, capsys):
    loc = np.full((256, 256), A, np.uint8)
    loc[128:] = I
    gra = np.zeros_like(loc)
    gra |= _disc(loc.shape, (60, 60), 30).astype(np.uint8)
    _write_pair(tmp_path, "cell1", loc, gra)
    _write_pair(tmp_path, "cell2", loc, np.zeros_like(gra))
    out = tmp_path / "density.csv"
    rc = main(["measure", str(tmp_path / "locations"), str(tmp_path / "granules"), "--out", str(out),
               "--particles", str(tmp_path / "particles.csv"), "--seed-tables", str(tmp_path / "seed"),
               "--tile-size", "128", "--quiet"])
    assert rc == 0
    table = pd.read_csv(out, dtype={"tile": str}, keep_default_na=False, na_values=[""])
    whole = table[table["tile"].isna()].set_index(["image", "region"])
    assert whole.loc[("cell1", "A"), "granule_px"] == int(gra.sum())
    assert whole.loc[("cell1", "A"), "pixel_size_nm"] == pytest.approx(0.8, rel=1e-3)
    assert whole.loc[("cell1", "A"), "pixel_size_source"] == "metadata:png"
    assert whole.loc[("cell2", "A"), "pf"] == 0
    assert len(table) == 2 * 5 + 2 * 4 * 5
    particles = pd.read_csv(tmp_path / "particles.csv")
    assert len(particles) == 1 and particles["equivalent_diameter_nm"].iloc[0] == pytest.approx(24, abs=1)
    dens = (tmp_path / "seed" / SEED_DENSITIES_FILE).read_text().splitlines()
    assert len(dens) == 1 + 2 * 4 and dens[1].strip().startswith("cell1_0.png")
    assert "cell1: A pf" in capsys.readouterr().out


def test_cli_measure_refuses_to_overwrite_and_writes_nothing(tmp_path, capsys):
    loc = np.full((64, 64), A, np.uint8)
    write_labels(tmp_path / "loc.png", loc)
    write_labels(tmp_path / "gra.png", np.zeros_like(loc))
    out = tmp_path / "t.csv"
    out.write_text("mine\n")
    rc = main(["measure", str(tmp_path / "loc.png"), str(tmp_path / "gra.png"), "--out", str(out),
               "--particles", str(tmp_path / "p.csv")])
    assert rc == 2 and out.read_text() == "mine\n" and not (tmp_path / "p.csv").exists()
    assert "exists already" in capsys.readouterr().err


def test_cli_measure_bad_inputs_give_one_line_and_exit_2(tmp_path, capsys):
    loc = np.full((64, 64), A, np.uint8)
    write_labels(tmp_path / "loc.png", loc)
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    write_labels(tmp_path / "small.png", np.zeros((32, 32), np.uint8))
    out = tmp_path / "t.csv"
    cases = [
        (["missing.png", "loc.png"], "no such file"),
        (["loc.png", "corrupt.png"], "corrupt.png"),
        (["loc.png", "small.png"], "differ in size"),
    ]
    for (a, b), expected in cases:
        rc = main(["measure", str(tmp_path / a), str(tmp_path / b), "--out", str(out)])
        err = capsys.readouterr().err
        assert rc == 2 and expected in err and "Traceback" not in err
        assert not out.exists()
    (tmp_path / "L").mkdir()
    (tmp_path / "G").mkdir()
    write_labels(tmp_path / "L" / "x.png", loc)
    write_labels(tmp_path / "G" / "y.png", loc)
    assert main(["measure", str(tmp_path / "L"), str(tmp_path / "G"), "--out", str(out)]) == 2
    assert "no partner" in capsys.readouterr().err
    assert main(["measure", str(tmp_path / "loc.png"), str(tmp_path / "loc.png"), "--out", str(out),
                 "--min-diameter", "50", "--max-diameter", "10"]) == 2
    assert "min < max" in capsys.readouterr().err


def test_measure_segmentation_takes_maps_pixel_size_and_name_from_the_result():
    from napari_emgranules.core.measure import measure_segmentation
    from napari_emgranules.core.segment import SegmentationResult

    loc, gra = _layout()
    result = SegmentationResult(labels={"locations": loc, "granules": gra}, pixel_size_nm=2.0,
                                pixel_size_source="user", name="cell7")
    m = measure_segmentation(result, section_nm=None)
    assert set(m.regions["image"]) == {"cell7"} and set(m.regions["pixel_size_source"]) == {"user"}
    assert m.regions.set_index("region").loc["I", "pf"] == pytest.approx(0.06)
    only = SegmentationResult(labels={"granules": gra}, name="g")
    with pytest.raises(ValueError, match="both label maps"):
        measure_segmentation(only)


def test_derived_regions_pool_their_parts(tmp_path):
    """A + I as one row (the other muscle-TEM tool's "intra"): the numbers of the union."""
    from napari_emgranules.core.measure import DERIVED_CODE, parse_derived, pooled_regions
    from napari_emgranules.core.synthetic import synthetic_micrograph

    s = synthetic_micrograph((1024, 1024), 0.8, seed=1)
    m = measure_labels(s.locations, s.granules, pixel_size_nm=0.8, tile=512,
                       derived={"myofibrillar": ("A", "I")})
    row = m.regions[m.regions["region"] == "A+I"].iloc[0]
    union = np.isin(s.locations, [1, 2])
    assert row["region_code"] == DERIVED_CODE and row["region_name"] == "myofibrillar"
    assert row["area_px"] == union.sum() and row["granule_px"] == (s.granules[union] == 1).sum()
    assert row["pf"] == pytest.approx((s.granules[union] == 1).mean())
    parts = m.regions[m.regions["region"].isin(["A", "I"])]
    assert row["granule_count"] == parts["granule_count"].sum()
    assert row["vf"] == pytest.approx((parts["vf"] * parts["area_px"]).sum() / parts["area_px"].sum())
    assert (m.tiles["region"] == "A+I").sum() == 4  # one per tile too
    assert pooled_regions(m.regions, {}) is m.regions
    assert parse_derived("intra=A+I, rest=Z+S+N") == {"intra": ("A", "I"), "rest": ("Z", "S", "N")}
    for bad in ("intra", "intra=A", "=A+I"):
        with pytest.raises(ValueError, match="NAME=A"):
            parse_derived(bad)
    with pytest.raises(ValueError, match="no region Q"):
        pooled_regions(m.regions, {"x": ("A", "Q")})
    write_labels(tmp_path / "loc.png", s.locations, pixel_size_nm=0.8)
    write_labels(tmp_path / "gra.png", s.granules, pixel_size_nm=0.8)
    out = tmp_path / "d.csv"
    assert main(["measure", str(tmp_path / "loc.png"), str(tmp_path / "gra.png"), "--out", str(out),
                 "--derived", "myofibrillar=A+I", "--seed-tables", str(tmp_path / "seed")]) == 0
    table = pd.read_csv(out)
    assert table.loc[table["region"] == "A+I", "pf"].iloc[0] == pytest.approx(row["pf"])
    assert "A+I" not in (tmp_path / "seed" / "location and granule areas.txt").read_text()
    assert main(["measure", str(tmp_path / "loc.png"), str(tmp_path / "gra.png"), "--out",
                 str(tmp_path / "e.csv"), "--derived", "myofibrillar"]) == 2
