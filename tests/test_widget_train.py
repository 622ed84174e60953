"""The Train widget in a real viewer: a short fine-tuning run with its plot (epoch 0 = the starting
weights), before/after and per-class tables and hand-over to the Segment widget; the starting model
kept when no epoch beats it; Cancel keeping the best weights; bad input refused up front."""

from __future__ import annotations

import time

import pytest

from napari_emgranules import _engine
from napari_emgranules._engine_tasks import TrainSummary
from napari_emgranules._widgets import _common
from napari_emgranules._widgets import train as train_module
from napari_emgranules._widgets._common import session_for
from napari_emgranules._widgets.train import KEPT_START, MISSING, REPORT_COLUMNS, TrainWidget
from napari_emgranules.core.dataset import export_training_pairs
from napari_emgranules.core.schema import GRANULES_SCHEMA
from napari_emgranules.core.synthetic import synthetic_micrograph
from napari_emgranules.core.train import run_state

TIMEOUT_MS = 180_000


@pytest.fixture(scope="module", autouse=True)
def _no_process_left():
    """One training process for the module's tests, ended at the end."""
    yield
    _engine.shutdown_engines()


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """One 512 x 512 synthetic micrograph exported as four 256 px granules training pairs."""
    root = tmp_path_factory.mktemp("train-widget")
    cell = synthetic_micrograph((512, 512), 0.8, seed=5)
    export_training_pairs(cell.image, cell.granules, root / "pairs", schema=GRANULES_SCHEMA,
                          tile_size=256, pixel_size_nm=0.8, source="cell")
    return root / "pairs"


@pytest.fixture
def notes(monkeypatch):
    """Notifications shown by the widget, as (level, text)."""
    shown: list[tuple[str, str]] = []
    for level in ("error", "warning", "info"):
        def record(text, lv=level):
            shown.append((lv, text))
        monkeypatch.setattr(_common, f"show_{level}", record)
        monkeypatch.setattr(train_module, f"show_{level}", record)
    return shown


@pytest.fixture
def widget(make_napari_viewer):
    viewer = make_napari_viewer()
    w = TrainWidget(viewer)
    viewer.window.add_dock_widget(w)
    return w


def _tiny(widget, pairs, epochs=1, steps=1):
    widget.kind.value = "granules"
    widget.data.value = str(pairs)
    widget.epochs.value = epochs
    widget.steps.value = str(steps)
    widget.crop.value = 128
    widget.batch_size.value = 1


def test_one_epoch_plot_table_and_use_in_segment(qtbot, widget, pairs, notes):
    _tiny(widget, pairs)
    out = widget.output.value
    assert out.parent == pairs.parent / "runs" and out.name.startswith("granules-")
    assert "bundled default" in widget.start_info.value and "granules.weights.h5" in widget.start_info.value
    fresh_process = not widget.engine.running
    worker = widget.run()
    assert worker is not None
    if fresh_process:
        assert widget.job.status.value == "starting the model process..."
    qtbot.waitUntil(lambda: not widget.job.busy, timeout=TIMEOUT_MS)
    assert not [n for n in notes if n[0] == "error"], notes
    # warnings are the core's own notes (how it validated, whether the start was kept)
    told = ("validation", "no training epoch", "confidence calibrated")
    assert all(text.startswith(told) for lv, text in notes if lv == "warning"), notes
    assert any("done in" in text for _, text in notes)

    weights = out / "granules.weights.h5"
    assert weights.is_file() and widget.weights_path == weights
    assert (out / "history.csv").is_file()
    qtbot.waitUntil(lambda: not widget.plot.busy, timeout=10_000)  # rendered off the main thread
    assert not widget.plot.pixmap().isNull()
    # epoch 0 scored the starting weights (validation only: no training loss, NaN, not drawn)
    assert [h["epoch"] for h in widget.history] == [0, 1]
    assert [len(widget.plot_lines[key].get_xdata()) for key in ("loss", "val_loss", "val_mean_iou")] \
        == [1, 2, 2]
    assert widget.axes[0].get_xlim()[0] < 0  # epoch 0 is on the plot
    # the before/after per-class IoU table
    report = widget.report_table.to_dataframe()
    assert widget.report_table.native.isVisibleTo(widget.native)
    assert list(report.columns) == list(REPORT_COLUMNS)
    assert list(report["class"]) == ["background (B)", "granule (G)"]
    for column in ("IoU before", "IoU after"):
        assert all(0.0 <= float(v) <= 1.0 for v in report[column]), report
    assert set(widget.report.columns) >= {"iou_before", "iou_after", "change"}
    table = widget.class_table.to_dataframe()
    assert widget.class_table.native.isVisibleTo(widget.native)
    assert list(table["class"]) == ["background (B)", "granule (G)"]
    for column in ("IoU", "Dice", "precision", "recall"):
        values = [v for v in table[column] if v != MISSING]
        assert values and all(0.0 <= float(v) <= 1.0 for v in values), (column, values)
    if widget.summary.best_epoch == 0:
        assert KEPT_START in widget.result_info.value
    else:
        assert "best epoch 1" in widget.result_info.value

    assert widget.use_button.enabled
    widget.use_button.native.click()
    assert session_for(widget.viewer).weights["granules"] == str(weights)
    assert str(weights) in widget.start_info.value  # "current model" is now the new one
    assert any(str(weights) in text for lv, text in notes if lv == "info")
    # the finished run can go on (more epochs); Train itself would start a new folder
    assert not widget.resume_button.native.isHidden()
    assert "stopped after epoch 1 of 1" in widget.resume_info.value


def test_the_run_folder_is_derived_from_the_data_never_the_working_directory(widget, pairs, tmp_path,
                                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    widget.kind.value = "locations"  # the model chosen before the data
    widget.kind.value = "granules"
    widget.data.value = str(pairs)
    out = widget.output.value
    assert out.parent == pairs.parent / "runs" and out.name.startswith("granules-")
    widget.output.value = ""  # cleared by the user: reads as the working directory, not a choice
    assert widget.output.value.parent == pairs.parent / "runs"
    mine = tmp_path / "my-run"
    widget.output.value = mine  # a folder the user chose stays, whatever else changes
    widget.kind.value = "locations"
    assert widget.output.value == mine and widget.resume_button.native.isHidden()


def test_cancel_keeps_the_best_weights(qtbot, widget, pairs, notes):
    _tiny(widget, pairs, epochs=50, steps=2)
    out = widget.output.value
    assert widget.run() is not None
    qtbot.waitUntil(lambda: any(h["epoch"] >= 1 for h in widget.history), timeout=TIMEOUT_MS)
    t0 = time.perf_counter()
    widget.job.cancel_button.native.click()
    qtbot.waitUntil(lambda: not widget.job.busy, timeout=15_000)
    assert time.perf_counter() - t0 < 10
    cancelled = [text for lv, text in notes if "cancelled" in text]
    assert cancelled and not [n for n in notes if n[0] == "error"], notes
    weights = out / "granules.weights.h5"
    assert weights.is_file() and str(weights) in cancelled[0]
    assert widget.use_button.enabled and widget.weights_path == weights
    assert widget.summary is None and widget.settings.enabled
    assert len(widget.history) < 50
    # the cancelled run resumes in its folder, from its last epoch, when the user asks
    assert not widget.resume_button.native.isHidden()
    last = run_state(out)["epoch"]
    widget.epochs.value = last + 1
    widget.resume_button.native.click()
    assert widget.job.busy
    qtbot.waitUntil(lambda: not widget.job.busy, timeout=TIMEOUT_MS)
    assert widget.summary is not None and widget.run_folder == out
    assert run_state(out)["epoch"] == last + 1 and widget.history[-1]["epoch"] == last + 1
    assert any(f"resumed after epoch {last}" in text for _, text in notes), notes
    # cancelled before any epoch ended (from scratch: no epoch 0 scoring a starting model):
    # nothing saved, said so, and no empty run folder left
    _tiny(widget, pairs, epochs=2, steps=500)
    assert widget.rotate90.value is False  # fine-tuning: no quarter turns ...
    widget.start_from.value = "fresh"
    assert widget.rotate90.value is True  # ... from scratch: the measured recipe (TrainConfig)
    first = out
    assert widget.run() is not None
    out = widget.run_folder
    assert out != first and out.parent == first.parent  # a new folder for the new run
    qtbot.waitUntil(lambda: widget.job.bars["batches"].value >= 1, timeout=TIMEOUT_MS)
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.job.busy, timeout=15_000)
    assert "nothing was saved" in notes[-1][1]
    assert not out.exists() and not widget.use_button.enabled and widget.weights_path is None


def test_bad_input_is_refused_and_nothing_is_written(qtbot, widget, pairs, tmp_path, notes):
    # no data folder: refused at once, nothing started
    widget.data.value = ""
    assert widget.run() is None
    assert notes[-1][0] == "error" and "no training data" in notes[-1][1]
    # invalid numbers: TrainConfig's message, nothing started
    _tiny(widget, pairs)
    for field, value, words in ((widget.learning_rate, "2", "learning_rate"),
                                (widget.learning_rate, "fast", "learning rate"),
                                (widget.crop, 200, "crop")):
        old = field.value
        field.value = value
        assert widget.run() is None
        assert notes[-1][0] == "error" and words in notes[-1][1], notes[-1]
        field.value = old
    assert not widget.output.value.exists()
    # a folder without pairs: the core's message, no run folder
    empty = tmp_path / "nothing here"
    empty.mkdir()
    widget.data.value = str(empty)
    out = widget.output.value
    assert widget.run() is not None
    qtbot.waitUntil(lambda: not widget.job.busy, timeout=TIMEOUT_MS)
    errors = [text for lv, text in notes if lv == "error"]
    assert errors and "nothing here" in errors[-1], notes
    assert not out.exists() and not widget.use_button.enabled
    # a run folder holding another run is refused by the core
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "granules.weights.h5").write_bytes(b"")
    widget.data.value = str(pairs)
    widget.output.value = taken
    assert widget.run() is None
    assert "holds another training run; choose a new run folder" in notes[-1][1]
    assert notes[-1][0] == "error" and widget.resume_button.native.isHidden()
    assert sorted(p.name for p in taken.iterdir()) == ["granules.weights.h5"]


def test_event_loop_never_stalls_while_training(qtbot, widget, pairs, notes, tmp_path):
    """A 10 ms timer keeps ticking through a 3-epoch run with its live plot: gaps under 100 ms
    (Python's full garbage collections of napari's objects are frozen out, as in the Segment test)."""
    import gc

    import numpy as np
    from qtpy.QtCore import QTimer

    _tiny(widget, pairs, epochs=3, steps=2)
    widget.output.value = tmp_path / "stall-run"
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    gc.collect()
    gc.freeze()
    try:
        timer.start()
        qtbot.wait(50)
        assert widget.run() is not None
        qtbot.waitUntil(lambda: not widget.job.busy, timeout=TIMEOUT_MS)
        qtbot.wait(50)
        timer.stop()
    finally:
        gc.unfreeze()
    assert not [n for n in notes if n[0] == "error"], notes
    assert [h["epoch"] for h in widget.history if h["epoch"] > 0] == [1, 2, 3]
    gaps = np.diff(ticks)
    assert gaps.max() < 0.100, f"longest stall {gaps.max() * 1000:.0f} ms over {len(ticks)} ticks"


def test_kept_starting_model_is_said_and_the_table_shown(widget, tmp_path, notes):
    """A run where no epoch beat the start (best epoch 0): the widget says so plainly."""
    import pandas as pd

    run = tmp_path / "run"
    run.mkdir()
    weights = run / "granules.weights.h5"
    weights.write_bytes(b"")
    pd.DataFrame({"class": ["background", "granule"], "letter": ["B", "G"], "pixels": [900, 100],
                  "iou_before": [0.9, 0.5], "iou_after": [0.9, 0.5], "change": [0.0, 0.0]}
                 ).to_csv(run / "report.csv", index=False)
    summary = TrainSummary(weights_path=str(weights), history=None, best_epoch=0,
                           monitor="val_mean_iou", best_value=0.7, stopped_early=False)
    widget.run_folder = run
    widget._on_done((summary, []))
    assert widget.result_info.value.startswith(KEPT_START)
    report = widget.report_table.to_dataframe()
    assert list(report["class"]) == ["background (B)", "granule (G)"]
    assert list(report["val pixels"]) == [900, 100]
    assert [float(v) for v in report["IoU after"]] == [0.9, 0.5]
    assert list(report["change"]) == ["+0.0000", "+0.0000"]
    assert any("starting weights, kept" in text for lv, text in notes if lv == "info")


def test_closing_napari_mid_training_ends_the_training_process_at_once(qtbot, widget, pairs, notes):
    """The last window closing while Train runs: the training process ends within seconds (it does
    not go on training after the window is gone) and the job finishes as cancelled."""
    from qtpy.QtWidgets import QApplication

    _tiny(widget, pairs, epochs=50, steps=50)
    assert widget.run() is not None
    qtbot.waitUntil(lambda: widget.job.bars["batches"].value >= 1, timeout=TIMEOUT_MS)
    proc = widget.engine._proc
    t0 = time.perf_counter()
    QApplication.instance().lastWindowClosed.emit()  # what closing napari's window sends
    qtbot.waitUntil(lambda: proc.poll() is not None, timeout=5_000)
    qtbot.waitUntil(lambda: not widget.job.busy, timeout=10_000)
    assert time.perf_counter() - t0 < 5 and not widget.engine.running
    assert not [n for n in notes if n[0] == "error"], notes


def test_validation_mix_is_an_advanced_setting_that_reaches_the_run(widget):
    assert widget.validation_mix.value == "auto" and widget._options()["validation_mix"] == "auto"
    assert widget.validation_mix in list(widget.advanced)
    widget.validation_mix.value = "labelled"
    assert widget._options()["validation_mix"] == "labelled"


@pytest.mark.parametrize("field, option, bad", [("start_share", "average_with_start", "1.5"),
                                                 ("start_labels", "start_labels", "2")])
def test_fine_tuning_shares_are_blank_for_the_measured_default(widget, field, option, bad):
    assert getattr(widget, field) in list(widget.advanced)
    assert widget._options()[option] is None
    getattr(widget, field).value = "0"
    assert widget._options()[option] == 0.0
    getattr(widget, field).value = bad
    with pytest.raises(ValueError, match=f"{option} must be in"):
        widget._options()
