"""scripts/train_defaults.py: the resolution randomisation of its fresh micrographs."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_defaults.py"


@pytest.fixture(scope="module")
def td():
    spec = importlib.util.spec_from_file_location("train_defaults_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_coarse_pixel_sizes_share_range_and_determinism(td):
    draws = [td.coarse_pixel_size_of(s, 0.3, 12.5) for s in range(20_000, 22_000)]
    coarse = [d for d in draws if d is not None]
    assert 0.25 < len(coarse) / len(draws) < 0.35
    assert 1.0 <= min(coarse) and max(coarse) <= 12.5
    # log-uniform: about half of them below sqrt(12.5) = 3.5 nm
    assert 0.4 < np.mean(np.array(coarse) < 12.5 ** 0.5) < 0.6
    assert draws == [td.coarse_pixel_size_of(s, 0.3, 12.5) for s in range(20_000, 22_000)]
    assert all(td.coarse_pixel_size_of(s, 0.0, 12.5) is None for s in range(100))
    assert all(td.coarse_pixel_size_of(s, 1.0, 12.5) is not None for s in range(100))


def test_fresh_coarse_micrographs_keep_the_field_of_view(td):
    seeds = [s for s in range(20_000, 20_200) if td.coarse_pixel_size_of(s, 0.5, 8.0)]
    first = seeds[0]
    make = td.fresh_maker("locations", 2, 256, "randomised", seed0=first, coarse=(0.5, 8.0))
    items = make(1)
    image, labels, ps = items[0]
    assert ps == td.coarse_pixel_size_of(first, 0.5, 8.0) and ps > 1.0
    assert image.shape == labels.shape == (max(64, round(256 * 0.8 / ps)),) * 2
    again = make(1)[0]
    assert again[2] == ps and np.array_equal(again[0], image)
    # without the option every micrograph is at 0.7-0.9 nm/px and full size
    plain = td.fresh_maker("locations", 2, 256, "randomised", seed0=first)(1)
    assert all(0.7 <= p <= 0.9 and im.shape == (256, 256) for im, _, p in plain)


@pytest.mark.parametrize("args", [["--coarse-share", "1.5"], ["--coarse-max", "0.5"],
                                  ["--coarse-share", "-0.1"]])
def test_coarse_options_out_of_range_are_refused(td, args, capsys):
    with pytest.raises(SystemExit) as exc:
        td.main(["--steps", "data", "--micrographs", "0", "--validation", "0", *args])
    assert exc.value.code == 2
    assert "--coarse-share must be 0-1" in capsys.readouterr().err


def test_coarse_share_without_fresh_micrographs_is_refused(td, capsys):
    with pytest.raises(SystemExit) as exc:
        td.main(["--steps", "train", "--coarse-share", "0.3"])
    assert exc.value.code == 2
    assert "give --fresh-every K too" in capsys.readouterr().err


def test_generator_overrides_reach_every_look(td):
    from napari_emgranules.core.synthetic import SyntheticParams

    # seed 4 is a named training family, seed 5 a randomised draw, None the standard look
    for seed, look in ((4, "randomised"), (5, "randomised"), (5, "standard")):
        plain = td.appearance_of(seed, look) or SyntheticParams()
        changed = td.appearance_of(seed, look, {"nucleus_probability": 0.9,
                                                "granule_diameter_nm": (20.0, 30.0)})
        assert changed.nucleus_probability == 0.9 and changed.granule_diameter_nm == (20.0, 30.0)
        assert changed.sarcomere_um == plain.sarcomere_um  # the rest of the draw is kept


@pytest.mark.parametrize("item, message", [
    ("nucleus_probability=1.5", "nucleus_probability must satisfy"),
    ("no_such_setting=1", "no_such_setting"),
    ("nucleus_probability", "expected KEY=VALUE"),
])
def test_bad_generator_settings_are_refused_before_any_work(td, tmp_path, item, message, capsys):
    with pytest.raises(SystemExit) as exc:
        td.main(["--work", str(tmp_path), "--steps", "data", "--micrographs", "1",
                 "--validation", "0", "--generator", item])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing generated


def test_data_made_with_other_generator_settings_is_not_reused(td, tmp_path, capsys):
    run = ["--work", str(tmp_path), "--kind", "granules", "--steps", "data", "--micrographs", "1",
           "--validation", "0", "--size", "128"]
    assert td.main([*run, "--generator", "nucleus_probability=0.9"]) == 0
    assert td.main([*run, "--generator", "nucleus_probability=0.9"]) == 0  # the same: resumed
    marker = tmp_path / "data" / "train" / "done" / "granules-synthetic-0"
    made = marker.read_text()
    with pytest.raises(SystemExit) as exc:
        td.main(run)  # no --generator now: the micrograph on disk is not what that would make
    assert "other --generator settings" in str(exc.value) and marker.read_text() == made
    plain = tmp_path / "plain"
    assert td.main([*run[:1], str(plain), *run[2:]]) == 0
    with pytest.raises(SystemExit):
        td.main([*run[:1], str(plain), *run[2:], "--generator", "nucleus_probability=0.9"])
