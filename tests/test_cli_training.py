"""``emgranules export | train | evaluate``: the round trip a lab runs, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_cli import ERROR, error_lines, files_under, run_cli
from test_train import blob_image

from napari_emgranules.core.dataset import load_training_pairs
from napari_emgranules.core.io import write_image, write_labels


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Three 512 x 512 micrographs with blob labels, exported as 256 px pairs by the CLI."""
    root = tmp_path_factory.mktemp("cli-train")
    outputs = []
    for i in range(3):
        image, labels = blob_image(i, (512, 512))
        write_image(root / f"cell{i}.tif", image, pixel_size_nm=0.8)
        write_labels(root / f"cell{i}_labels.tif", labels)
        outputs.append(run_cli("export", root / f"cell{i}.tif", "--labels", root / f"cell{i}_labels.tif",
                               "--model", "new", "--task", "blobs", "--schema", "background,blob",
                               "--tile-size", 256, "--out", root / "pairs"))
    return root, outputs


def test_export_writes_pairs_and_a_manifest(exported):
    root, outputs = exported
    assert all(code == 0 for code, _, _ in outputs), outputs
    assert "4 blobs training pairs" in outputs[0][1]
    pairs = load_training_pairs(root / "pairs")
    assert len(pairs) == 12 and pairs.schema.kind == "blobs"
    assert {p.origin for p in pairs} == {(0, 0), (0, 256), (256, 0), (256, 256)}


def test_export_again_supersedes_and_never_deletes(exported, tmp_path):
    root, _ = exported
    old = (root / "pairs" / "labels" / "cell0_1.png").read_bytes()
    relabelled = np.zeros((512, 512), np.uint16)
    write_labels(tmp_path / "relabelled.tif", relabelled)
    code, out, _ = run_cli("export", root / "cell0.tif", "--labels", tmp_path / "relabelled.tif",
                           "--schema", root / "pairs" / "schema.json", "--tile-size", 256,
                           "--tiles", "1", "--out", root / "pairs")
    assert code == 0 and "cell0_1.png" in out
    assert len(load_training_pairs(root / "pairs")) == 12  # each tile once: the latest labels
    (kept,) = (root / "pairs" / "superseded").iterdir()
    assert (kept / "labels" / "cell0_1.png").read_bytes() == old


def test_export_bad_input_one_message_nothing_written(exported, tmp_path):
    root, _ = exported
    bad = np.full((512, 512), 7, np.uint16)
    write_labels(tmp_path / "bad.tif", bad)
    code, _, err = run_cli("export", root / "cell0.tif", "--labels", tmp_path / "bad.tif",
                           "--model", "granules", "--out", tmp_path / "out")
    assert code == 2 and "[7]" in err and "granules" in err
    assert not files_under(tmp_path / "out")
    code, _, err = run_cli("export", root / "cell0.tif", "--labels", root / "cell0_labels.tif",
                           "--out", tmp_path / "out")
    assert code == 2 and "--schema" in err
    (tmp_path / "junk.tif").write_bytes(b"not a tiff at all")
    code, _, err = run_cli("export", tmp_path / "junk.tif", "--labels", root / "cell0_labels.tif",
                           "--model", "granules", "--out", tmp_path / "out")
    assert code == 2 and len(error_lines(err)) == 1 and "junk.tif" in err
    assert not files_under(tmp_path / "out")


def test_train_then_evaluate(exported, tmp_path):
    root, _ = exported
    run = tmp_path / "run"
    code, out, err = run_cli("train", root / "pairs", "--model", "new", "--schema",
                             root / "pairs" / "schema.json", "--epochs", 2, "--crop", 128,
                             "--batch-size", 2, "--steps-per-epoch", 3, "--out", run, "--quiet")
    assert code == 0, err
    assert out.count("epoch ") >= 2 and "best val_mean_iou" in out
    card = json.loads((run / "blobs.weights.json").read_text())
    assert card["provenance"]["epochs"] >= 1 and card["kind"] == "blobs"
    assert (run / "history.csv").is_file() and (run / "history.png").is_file()
    # the same command again is refused (the run folder is taken); --resume continues it
    code, _, err = run_cli("train", root / "pairs", "--model", "new", "--schema",
                           root / "pairs" / "schema.json", "--out", run)
    assert code == 2 and "--resume" in err
    code, out, _ = run_cli("train", root / "pairs", "--out", run, "--resume", "--epochs", 3, "--quiet")
    assert code == 0 and "epoch 3/3" in out
    # evaluate: a table on stdout, report files, predictions; never overwritten
    report = tmp_path / "report"
    code, out, err = run_cli("evaluate", run / "blobs.weights.h5", root / "pairs", "--out", report,
                             "--predictions", tmp_path / "pred", "--quiet")
    assert code == 0, err
    assert "mean IoU" in out and "pixel accuracy" in out
    lines = (report / "accuracies.txt").read_text().split("\n")
    assert len([ln for ln in lines if ln.strip()]) == 12
    assert len(files_under(tmp_path / "pred")) == 12
    code, _, err = run_cli("evaluate", run / "blobs.weights.h5", root / "pairs", "--out", report)
    assert code == 2 and "exists already" in err
    code, out, _ = run_cli("evaluate", run / "blobs.weights.h5", root / "pairs", "--json", "--quiet")
    summary = json.loads(out)["summary"]
    assert summary["n_images"] == 12 and 0 <= summary["pixel_accuracy"] <= 1
    # --granule-thresholds: one row per threshold (0.5 is the plain evaluation), the best named
    code, out, err = run_cli("evaluate", run / "blobs.weights.h5", root / "pairs", "--json", "--quiet",
                             "--granule-thresholds", "0.05,0.5,0.95", "--out", report)
    assert code == 0, err
    sweep = json.loads(out)
    rows = {r["threshold"]: r for r in sweep["thresholds"]}
    assert list(rows) == [0.05, 0.5, 0.95]
    letter = load_training_pairs(root / "pairs").schema.letters[1]
    assert rows[0.5]["iou"] == pytest.approx(summary[f"iou_{letter}"])
    assert rows[0.05]["objects_true"] == rows[0.95]["objects_true"] > 0  # the truth's blobs
    assert all(0 <= r["object_f1"] <= 1 for r in rows.values())
    assert sweep["best_f1_threshold"] in rows and (report / "thresholds.csv").is_file()
    code, _, err = run_cli("evaluate", run / "blobs.weights.h5", root / "pairs", "--quiet",
                           "--granule-thresholds", "0.5,0.7", "--out", report)
    assert code == 2 and "thresholds.csv exists already" in err
    for bad, message in (("0.5,1.5", "between 0 and 1"), ("0.5,x", "not numbers")):
        code, _, err = run_cli("evaluate", run / "blobs.weights.h5", root / "pairs", "--quiet",
                               "--granule-thresholds", bad)
        assert code == 2 and message in err and len(error_lines(err)) == 1
    code, _, err = run_cli("evaluate", run / "blobs.weights.h5", root / "pairs", "--quiet",
                           "--granule-thresholds", "0.5", "--predictions", tmp_path / "pred2")
    assert code == 2 and "--predictions" in err and not (tmp_path / "pred2").exists()


def test_train_on_whole_micrographs_and_partial_labels(exported, tmp_path):
    root, _ = exported
    image, labels = blob_image(5, (256, 256))
    write_image(tmp_path / "bare.tif", image)  # no pixel size in the file
    strokes = np.full(labels.shape, 65535, np.uint16)
    strokes[::16] = labels[::16]  # every 16th row painted
    write_labels(tmp_path / "strokes.tif", strokes)
    args = ["train", "--pair", tmp_path / "bare.tif", tmp_path / "strokes.tif", "--model", "new",
            "--schema", "background,blob", "--out", tmp_path / "run", "--epochs", 1, "--crop", 128,
            "--steps-per-epoch", 2, "--quiet"]
    code, _, err = run_cli(*args)
    assert code == 2 and "bare.tif: has no pixel size" in err and err.count(ERROR) == 1
    assert not (tmp_path / "run").exists()
    code, out, err = run_cli(*args, "--pixel-size", 1.0)
    assert code == 0, err
    assert "IoU before" in out and "held-out strip" in err
    assert (tmp_path / "run" / "report.csv").is_file()


def test_train_says_what_is_wrong_with_a_binary_mask_or_one_class(tmp_path):
    image, labels = blob_image(6, (256, 256))
    write_image(tmp_path / "cell.tif", image)
    write_image(tmp_path / "mask255.tif", (labels > 0).astype(np.uint8) * np.uint8(255))
    write_image(tmp_path / "empty.tif", np.zeros(labels.shape, np.uint8))
    base = ["--model", "new", "--schema", "background,blob", "--pixel-size", 1.0, "--out",
            tmp_path / "run", "--epochs", 1, "--crop", 128, "--quiet"]
    for mask, message in (("mask255.tif", "binary mask saved as 0/255 must hold 0 (background) and 1 "
                                          "(blob): divide it by 255"),
                          ("empty.tif", "label only class 0 (background): a new model needs pixels "
                                        "of at least two classes")):
        code, _, err = run_cli("train", "--pair", tmp_path / "cell.tif", tmp_path / mask, *base)
        assert code == 2 and message in err and err.count(ERROR) == 1, err
        assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, message", [
    (["train", "{missing}", "--model", "granules", "--out", "{out}"], "does not exist"),
    (["train", "{pairs}", "--out", "{out}", "--resume"], "no training run to resume"),
    (["train", "{pairs}", "--model", "new", "--schema", "membrane", "--out", "{out}"],
     "at least two class names"),
    (["train", "{pairs}", "--model", "new", "--out", "{out}"], "needs --schema"),
    (["train", "{pairs}", "--model", "granules", "--crop", "100", "--out", "{out}"], "multiple of 128"),
    (["train", "{pairs}", "--model", "new", "--schema", "a,b", "--class-weights", "1,x",
      "--out", "{out}"], "class-weights"),
    (["evaluate", "{corrupt}", "{pairs}", "--kind", "granules"], "corrupt.weights.h5"),
])
def test_training_commands_refuse_bad_input_with_one_message(exported, tmp_path, argv, message):
    root, _ = exported
    corrupt = tmp_path / "corrupt.weights.h5"
    corrupt.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    values = {"missing": tmp_path / "nothing", "out": tmp_path / "run", "pairs": root / "pairs",
              "corrupt": corrupt}
    code, _, err = run_cli(*[a.format(**values) for a in argv])
    assert code == 2, err
    assert message in err and err.count(ERROR) == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists() or not files_under(tmp_path / "run")


@pytest.mark.parametrize(("flag", "expected"), [([], True), (["--rehearsal-validation"], True),
                                                (["--no-rehearsal-validation"], False)])
def test_train_rehearsal_validation_is_on_unless_turned_off(flag, expected, tmp_path):
    from napari_emgranules._cli_training import _train_options
    from napari_emgranules.cli import build_parser
    from napari_emgranules.core.train import TrainConfig

    args = build_parser().parse_args(["train", "pairs", "--out", str(tmp_path), *flag])
    assert TrainConfig(**_train_options(args)).rehearsal_validation is expected


@pytest.mark.parametrize("flag, expected", [([], "auto"), (["--validation-mix", "start"], "start"),
                                            (["--validation-mix", "labelled"], "labelled")])
def test_train_validation_mix_reaches_the_config(flag, expected, tmp_path):
    from napari_emgranules._cli_training import _train_options
    from napari_emgranules.cli import build_parser
    from napari_emgranules.core.train import TrainConfig

    args = build_parser().parse_args(["train", "pairs", "--out", str(tmp_path), *flag])
    assert TrainConfig(**_train_options(args)).validation_mix == expected
    with pytest.raises(ValueError, match="validation_mix must be one of auto, labelled, start"):
        TrainConfig(validation_mix="strokes")


@pytest.mark.parametrize("flag, expected", [([], None), (["--average-with-start", "0"], 0.0),
                                            (["--average-with-start", "0.5"], 0.5)])
def test_train_average_with_start_reaches_the_config(flag, expected, tmp_path):
    from napari_emgranules._cli_training import _train_options
    from napari_emgranules.cli import build_parser
    from napari_emgranules.core.train import TrainConfig

    args = build_parser().parse_args(["train", "pairs", "--out", str(tmp_path), *flag])
    assert TrainConfig(**_train_options(args)).average_with_start == expected


@pytest.mark.parametrize("flag, expected", [([], False), (["--keep-epochs"], True)])
def test_train_keeps_every_epoch_only_when_asked(flag, expected, tmp_path):
    from napari_emgranules._cli_training import _train_options
    from napari_emgranules.cli import build_parser
    from napari_emgranules.core.train import TrainConfig

    args = build_parser().parse_args(["train", "pairs", "--out", str(tmp_path), *flag])
    assert TrainConfig(**_train_options(args)).keep_epochs is expected
