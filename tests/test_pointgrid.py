"""Point counting against the pixels: grids, scores, exact intervals, manual score sheets and
their agreement with the automated counts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_emgranules.cli import main
from napari_emgranules.core.io import write_labels
from napari_emgranules.core.pointgrid import (
    PointGridError,
    agreement,
    binomial_interval,
    grid_table,
    lins_ccc,
    make_grid,
    read_manual_scores,
    score_points,
)
from napari_emgranules.core.synthetic import synthetic_micrograph

PX = 0.8


@pytest.fixture(scope="module")
def cell():
    return synthetic_micrograph((1024, 1024), PX, seed=310_002)


def test_a_grid_has_its_spacing_and_a_recorded_random_offset():
    g = make_grid((1000, 800), PX, spacing_nm=80.0, seed=3)
    pts = g.points()
    assert g.spacing_px == pytest.approx(100.0) and 0 <= g.offset_px[0] < 100
    assert len(pts) == 10 * 8 and np.allclose(np.diff(np.unique(pts[:, 0])), 100.0)
    again = make_grid((1000, 800), PX, spacing_nm=80.0, seed=3)
    assert again.offset_px == g.offset_px  # the seed is the grid
    for spacing, words in ((0.5, "below one pixel"), (900.0, "larger than the image")):
        with pytest.raises(PointGridError, match=words):
            make_grid((1000, 800), PX, spacing_nm=spacing)


def test_point_counts_agree_with_the_pixels_within_their_interval(cell):
    """Over 200 random grids, the pixel pf lies in the grid's 95% interval in >= 95% of regions."""
    inside = total = 0
    for seed in range(200):
        g = make_grid(cell.locations.shape, PX, spacing_nm=24.0, seed=seed)
        table = grid_table(score_points(g, cell.locations, cell.granules), cell.locations,
                           cell.granules, grid=g)
        ok = table[table["points"] > 0]
        inside += int(((ok["pf_low"] <= ok["pf_pixels"]) & (ok["pf_pixels"] <= ok["pf_high"])).sum())
        total += len(ok)
    assert total >= 200 and inside / total >= 0.95, inside / total


def test_exact_interval():
    low, high = binomial_interval(np.array([0, 5, 10]), np.array([10, 10, 10]))
    assert low[0] == 0 and high[2] == 1
    assert low[1] == pytest.approx(0.187, abs=1e-3) and high[1] == pytest.approx(0.813, abs=1e-3)
    assert np.isnan(binomial_interval(np.array([0]), np.array([0]))[0][0])


def test_manual_scores_equal_to_the_truth_agree_perfectly(cell, tmp_path):
    tables = []
    sheets = []
    for i, seed in enumerate((1, 2, 3)):
        g = make_grid(cell.locations.shape, PX, spacing_nm=40.0, seed=seed)
        pts = score_points(g, cell.locations, cell.granules, image=f"img{i}")
        tables.append(grid_table(pts, grid=g))
        sheets.append(pd.DataFrame({"image": pts["image"], "row": pts["row"], "col": pts["col"],
                                    "region": pts["region"], "hit": np.where(pts["hit"], "yes", "no")}))
    automated = pd.concat(tables, ignore_index=True)
    pd.concat(sheets).to_csv(tmp_path / "manual.csv", index=False)
    manual_points = read_manual_scores(tmp_path / "manual.csv",
                                       shapes={f"img{i}": cell.locations.shape for i in range(3)})
    manual = grid_table(manual_points)
    per_image, summary = agreement(automated, manual)
    assert (per_image["difference"].fillna(0) == 0).all()
    # a region the micrograph does not show (here S) has no bias; every other one agrees exactly
    shown = summary["bias"].notna()
    assert shown.sum() >= 4
    assert (summary["bias"][shown] == 0).all() and np.allclose(summary["ccc"][shown], 1.0)
    assert lins_ccc([0.1, 0.2, 0.3], [0.2, 0.3, 0.4]) < 1  # a bias lowers concordance


def test_bad_manual_sheets_are_named(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("image,row,col,region,hit\nimg,5,5,Q,1\n")
    with pytest.raises(PointGridError, match="unknown region.*'Q'"):
        read_manual_scores(bad)
    bad.write_text("image,row,col,region,hit\nimg,5,5000,A,1\n")
    with pytest.raises(PointGridError, match="line 2: point .5, 5000. lies outside img"):
        read_manual_scores(bad, shapes={"img": (100, 100)})
    bad.write_text("image,row,col,region\nimg,5,5,A\n")
    with pytest.raises(PointGridError, match="lacks the column.s. hit"):
        read_manual_scores(bad)
    bad.write_text("image,row,col,region,hit\nimg,5,5,A,maybe\n")
    with pytest.raises(PointGridError, match="not 1/0"):
        read_manual_scores(bad)


def test_grid_command_writes_points_table_and_agreement(cell, tmp_path, capsys):
    write_labels(tmp_path / "loc.png", cell.locations, pixel_size_nm=PX)
    write_labels(tmp_path / "gra.png", cell.granules, pixel_size_nm=PX)
    rc = main(["grid", str(tmp_path / "loc.png"), str(tmp_path / "gra.png"), "--spacing", "40",
               "--random-seed", "5", "--out", str(tmp_path / "grid.csv"), "--points",
               str(tmp_path / "points.csv")])
    assert rc == 0, capsys.readouterr().err
    table = pd.read_csv(tmp_path / "grid.csv")
    points = pd.read_csv(tmp_path / "points.csv")
    assert set(table.columns) >= {"pf_points", "pf_low", "pf_high", "pf_pixels"}
    assert table["points"].sum() == ((points["region_code"] >= 1) & (points["region_code"] <= 5)).sum()
    assert (table["seed"] == 5).all()
    # the points as a lab's sheet: full agreement, and existing outputs are kept
    sheet = points[["image", "row", "col", "region", "hit"]].copy()
    sheet["hit"] = sheet["hit"].astype(int)
    sheet.to_csv(tmp_path / "manual.csv", index=False)
    rc = main(["grid", str(tmp_path / "loc.png"), str(tmp_path / "gra.png"), "--spacing", "40",
               "--random-seed", "5", "--out", str(tmp_path / "grid2.csv"), "--manual",
               str(tmp_path / "manual.csv"), "--agreement", str(tmp_path / "agree.csv")])
    assert rc == 0
    agree = pd.read_csv(tmp_path / "agree.csv")
    assert len(agree) and (agree["difference"].fillna(0) == 0).all()
    assert "bias +0.0000" in capsys.readouterr().out
    assert main(["grid", str(tmp_path / "loc.png"), str(tmp_path / "gra.png"), "--spacing", "40",
                 "--out", str(tmp_path / "grid.csv")]) == 2


def test_a_calibration_fits_manual_against_automated_pf_and_says_so_in_every_row(tmp_path):
    from napari_emgranules.core.pointgrid import PfCalibration

    rng = np.random.default_rng(0)
    auto = rng.uniform(0.01, 0.08, 8)
    manual = 0.004 + 1.3 * auto + rng.normal(0, 0.001, 8)  # the lab counts 30% more, plus an offset
    images = [f"m{i}" for i in range(8)]
    automated = pd.DataFrame({"image": images, "region": "I", "pf_pixels": auto})
    scored = pd.DataFrame({"image": images, "region": "I", "pf_points": manual})
    cal = PfCalibration.fit(automated, scored, name="lab-2026")
    r = cal.regions["I"]
    assert r["slope"] == pytest.approx(1.3, abs=0.05) and r["intercept"] == pytest.approx(0.004, abs=0.003)
    table = pd.DataFrame({"region": ["A", "I"], "pf": [0.01, 0.05]})
    out = cal.apply(table)
    assert np.isnan(out["pf_calibrated"].iloc[0])
    assert out["pf_calibration"].iloc[0] == "none for this region"
    assert out["pf_calibrated"].iloc[1] == pytest.approx(r["intercept"] + r["slope"] * 0.05)
    assert out["pf_calibrated_low"].iloc[1] < out["pf_calibrated"].iloc[1] < out["pf_calibrated_high"].iloc[1]
    assert out["pf_calibration"].iloc[1] == "lab-2026"
    path = cal.save(tmp_path / "cal.json")
    assert PfCalibration.load(path).regions["I"]["slope"] == pytest.approx(r["slope"])
    with pytest.raises(FileExistsError):
        cal.save(path)
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    for bad, words in ((tmp_path / "bad.json", "not a pf calibration"),
                       (tmp_path / "none.json", "no such file")):
        with pytest.raises(PointGridError, match=words):
            PfCalibration.load(bad)
    with pytest.raises(PointGridError, match="at least 3 images"):
        PfCalibration.fit(automated.head(2), scored.head(2))


def test_grid_fits_and_measure_applies_a_calibration(cell, tmp_path, capsys):
    from napari_emgranules.core.measure import measure_labels

    for k, seed in enumerate((1, 2, 3)):
        s = synthetic_micrograph((512, 512), PX, seed=310_000 + seed)
        write_labels(tmp_path / "loc" / f"m{k}.png", s.locations, pixel_size_nm=PX)
        write_labels(tmp_path / "gra" / f"m{k}.png", s.granules, pixel_size_nm=PX)
    assert main(["grid", str(tmp_path / "loc"), str(tmp_path / "gra"), "--spacing", "20", "--out",
                 str(tmp_path / "g.csv"), "--points", str(tmp_path / "p.csv")]) == 0
    points = pd.read_csv(tmp_path / "p.csv")
    sheet = points[["image", "row", "col", "region", "hit"]].assign(hit=points["hit"].astype(int))
    sheet.to_csv(tmp_path / "manual.csv", index=False)
    rc = main(["grid", str(tmp_path / "loc"), str(tmp_path / "gra"), "--spacing", "20", "--out",
               str(tmp_path / "g2.csv"), "--manual", str(tmp_path / "manual.csv"), "--fit-calibration",
               str(tmp_path / "lab.json")])
    assert rc == 0, capsys.readouterr().err
    assert "manual pf = " in capsys.readouterr().out
    assert main(["measure", str(tmp_path / "loc"), str(tmp_path / "gra"), "--out", str(tmp_path / "d.csv"),
                 "--pf-calibration", str(tmp_path / "lab.json")]) == 0
    table = pd.read_csv(tmp_path / "d.csv")
    calibrated = table[table["pf_calibration"] == "lab"]
    assert len(calibrated) and calibrated["pf_calibrated"].notna().all()
    plain = measure_labels(cell.locations, cell.granules, pixel_size_nm=PX).regions
    assert "pf_calibrated" not in plain.columns  # never silently
    assert main(["measure", str(tmp_path / "loc"), str(tmp_path / "gra"), "--out", str(tmp_path / "e.csv"),
                 "--pf-calibration", str(tmp_path / "manual.csv")]) == 2
