"""Train dock widget: fine-tune (or train afresh) a model on exported training pairs.

The run happens in the training model process (:mod:`napari_emgranules._engine`) through the
``train`` job of :mod:`napari_emgranules._engine_tasks` (:func:`~.core.train.train_iter`, then the
best model's per-class metrics on the validation pairs). The widget shows a live plot of the loss and
validation mean IoU (epoch 0: the starting weights, scored before training), at the end the per-class
IoU before and after training (the core's ``report.csv``) and a per-class table of the kept model,
and hands the new weights to the Segment widget.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator, Sequence
from datetime import datetime
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    PushButton,
    SpinBox,
    Table,
    show_file_dialog,
)
from napari.utils.notifications import show_error, show_info, show_warning

from .._engine import Cancelled, get_engine
from ..core.train import (
    CLASS_WEIGHT_MODES,
    VALIDATION_MIXES,
    TrainConfig,
    TrainingError,
    TrainProgress,
    run_state,
)
from ._common import KINDS, JobControls, notify_error, notify_notes, session_for, start_worker, was_closed
from ._plot import BackgroundFigure

if TYPE_CHECKING:
    import napari

START_CHOICES = ("current model", "weights file", "fresh")
WEIGHTS_FILTER = "Keras weights (*.weights.h5 *.h5 *.hdf5 *.keras *.index);;All files (*)"
PLOT_SERIES = {"loss": "loss", "val_loss": "val loss", "val_mean_iou": "val mean IoU"}
TABLE_COLUMNS = ("class", "IoU", "Dice", "precision", "recall", "val pixels")
REPORT_COLUMNS = ("class", "val pixels", "IoU before", "IoU after", "change")
REPORT_FILE = "report.csv"  # the core's before/after table in the run folder
KEPT_START = "no epoch beat the starting model; it was kept"
_METRICS = (("IoU", "iou"), ("Dice", "dice"), ("precision", "precision"), ("recall", "recall"))
MISSING = "n/a"  # a metric with nothing to measure (a class absent from the validation pairs)


# -------------------------------------------------------------------------------------------------
# Plain helpers (no Qt)
# -------------------------------------------------------------------------------------------------
def split_folders(text: str) -> list[str]:
    """``"a; b;"`` -> ``["a", "b"]`` (folders separated by ``;``, blanks dropped, no repeats)."""
    return list(dict.fromkeys(p.strip() for p in str(text).split(";") if p.strip()))


def default_run_folder(data: Sequence[str], kind: str, now: datetime | None = None) -> Path:
    """A new run folder next to the first data folder: ``<parent>/runs/<kind>-<date>-<time>``."""
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    root = Path(data[0]).expanduser().resolve().parent / "runs" if data else Path.home() / "emgranules-runs"
    out = root / f"{kind}-{stamp}"
    n = 2
    while out.exists():
        out = root / f"{kind}-{stamp}-{n}"
        n += 1
    return out


def bundled_weights(kind: str) -> Path | None:
    """The weights file the package ships for ``kind`` (None when it ships none: untrained)."""
    path = Path(str(files("napari_emgranules") / "models" / f"{kind}.weights.h5"))
    return path if path.is_file() else None


def weights_files(out_dir: str | Path) -> dict[Path, int]:
    """The ``*.weights.h5`` files in ``out_dir`` and their modification times (ns)."""
    out = Path(out_dir)
    return {p: p.stat().st_mtime_ns for p in sorted(out.glob("*.weights.h5"))} if out.is_dir() else {}


def saved_weights(out_dir: str | Path, before: dict[Path, int] | None = None) -> Path | None:
    """The best weights a (possibly cancelled) run left in ``out_dir``, if any epoch saved them.

    ``before``: :func:`weights_files` when the run started; files it lists unchanged do not count.
    """
    before = before or {}
    found = [p for p, t in weights_files(out_dir).items() if before.get(p) != t]
    return found[0] if found else None


def parse_optional(text: str, kind: type, what: str, zero_is_automatic: bool = True) -> Any:
    """Blank (and 0, unless ``zero_is_automatic`` is False) -> None (automatic), else
    ``kind(text)``; ValueError naming ``what`` if not a number."""
    text = str(text).strip()
    if not text:
        return None
    try:
        value = kind(text)
    except ValueError:
        example = "5e-4" if kind is float else "20"
        raise ValueError(f"{what} must be a number like {example} (blank = automatic), "
                         f"got {text!r}") from None
    return value if value or not zero_is_automatic else None


def run_training(data: list[str], out_dir: str, kind: str, model: str | None, fresh: bool,
                 options: dict[str, Any]) -> Generator[Any, None, tuple[Any, list[str]]]:
    """Drive the ``train`` job in the training process; yield its events, return (summary, notes)."""
    engine = get_engine("training")
    summary = yield from engine.run("train", data=data, out_dir=out_dir, kind=kind, model=model,
                                    fresh=fresh, **options)
    return summary, list(engine.notes)


def _metric(value: Any) -> float | str:
    value = float(value)
    return round(value, 4) if math.isfinite(value) else MISSING


def _change(value: Any) -> str:
    value = float(value)
    return f"{value:+.4f}" if math.isfinite(value) else MISSING


def read_report(summary: Any, run_folder: str | Path | None) -> Any:
    """The before/after per-class IoU table of a finished run (a DataFrame), or None.

    ``summary.report`` when the training job hands it over, else the run folder's ``report.csv``.
    """
    report = getattr(summary, "report", None)
    if report is not None:
        return report
    folder = Path(run_folder) if run_folder is not None else Path(summary.weights_path).parent
    path = folder / REPORT_FILE
    if not path.is_file():
        return None
    import pandas as pd

    try:
        return pd.read_csv(path)
    except (OSError, ValueError) as exc:
        show_warning(f"Train: could not read the before/after table {path}: {exc}")
        return None


# -------------------------------------------------------------------------------------------------
# The widget
# -------------------------------------------------------------------------------------------------
class TrainWidget(Container):
    """Train or fine-tune the Locations or Granules model on exported training pairs.

    Run trains in the background with a live plot; Cancel stops it, keeping the best weights so
    far. At the end a per-class table of validation metrics is shown, and "Use in Segment widget"
    makes the Segment widget use the new weights.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.engine = get_engine("training")
        # -- what to train, on what, from what
        self.kind = ComboBox(label="model", choices=list(KINDS), value="granules")
        self.data = LineEdit(label="training data", value="")
        self.data.tooltip = "Folders of exported training pairs, separated by ';'"
        self.add_data_button = PushButton(text="Add folder...")
        data_row = Container(widgets=[self.data, self.add_data_button], layout="horizontal",
                             labels=False, label="training data")
        self.start_from = ComboBox(label="start from", choices=list(START_CHOICES),
                                   value="current model")
        self.start_file = FileEdit(mode="r", filter=WEIGHTS_FILTER, label="weights file", visible=False)
        self.start_info = Label(value="")
        self.output = FileEdit(mode="d", label="run folder")
        self.output.tooltip = ("A new folder for this run's weights, history and checkpoint; "
                               "proposed next to the training data for every run until you choose "
                               "one (a folder holding another run can be resumed, not overwritten)")
        self.resume_button = PushButton(text="Resume the run in this folder", visible=False)
        self.resume_info = Label(value="", visible=False)
        # -- the recipe
        self.epochs = SpinBox(label="epochs", min=1, max=10_000, value=TrainConfig.epochs)
        self.learning_rate = LineEdit(label="learning rate", value="")
        self.learning_rate.tooltip = ("Blank: the recipe's (fine-tuning 5e-5 Locations, 5e-4 "
                                      "others; 2e-3 from scratch)")
        self.flips = CheckBox(text="flips", value=TrainConfig.flips)
        self.rotate90 = CheckBox(text="rotate 90", value=False)
        self.rotate90.tooltip = ("Also augment by quarter turns; ticked when you choose to train "
                                 "from scratch (fresh), where it was measured to help")
        flips_row = Container(widgets=[self.flips, self.rotate90], layout="horizontal", labels=False,
                              label="augment")
        self.contrast = FloatSpinBox(label="contrast (0 = off)", min=0.0, max=0.95, step=0.05,
                                     value=TrainConfig.contrast)
        self.brightness = FloatSpinBox(label="brightness (0 = off)", min=0.0, max=1.0, step=0.05,
                                       value=TrainConfig.brightness)
        self.class_weights = ComboBox(label="class weights", choices=list(CLASS_WEIGHT_MODES),
                                      value="none")
        self.class_weights.tooltip = ("balanced: rare classes weigh more (they are then painted more "
                                      "generously, which biases pixel fractions up); prior: when "
                                      "fine-tuning on strokes, count the labelled pixels with the "
                                      "class mix the starting model finds on the whole images")
        self.val_fraction = FloatSpinBox(label="validation split", min=0.0, max=0.9, step=0.05,
                                         value=TrainConfig.val_fraction)
        self.show_advanced = CheckBox(text="advanced settings", value=False)
        self.crop = SpinBox(label="crop (px)", min=128, max=4096, step=128, value=TrainConfig.crop)
        self.batch_size = SpinBox(label="batch size", min=1, max=256, value=TrainConfig.batch_size)
        self.steps = LineEdit(label="steps per epoch", value="")
        self.steps.tooltip = ("Blank: enough crops to cover the training pixels once (at least 8 when "
                              "fine-tuning, 50 from scratch)")
        self.rehearsal = LineEdit(label="rehearsal share", value="")
        self.rehearsal.tooltip = ("Share of crops from synthetic micrographs in your data's grey levels "
                                  "while fine-tuning, so a few micrographs do not make the model "
                                  "forget; blank: the measured default (0.75 Locations, 0 Granules)")
        self.validation_mix = ComboBox(label="validation mix", choices=list(VALIDATION_MIXES),
                                       value=TrainConfig.validation_mix)
        self.validation_mix.tooltip = ("How validation pixels count. start: in the class mix the "
                                       "starting model finds on the whole images (strokes "
                                       "over-represent granules); labelled: as painted; auto: start "
                                       "for partial labels when fine-tuning")
        self.start_share = LineEdit(label="average with start", value="")
        self.start_share.tooltip = ("Fine-tuning keeps the average of the best epoch's and the "
                                    "starting weights, this share from the start, so a model "
                                    "tuned on a few micrographs keeps what it knew; blank: the "
                                    "measured default (0.5 Locations, 0 Granules); 0 = off")
        self.start_labels = LineEdit(label="start labels", value="")
        self.start_labels.tooltip = ("Fine-tuning on strokes or corrected pixels: where nothing is "
                                     "labelled and the starting model is sure, its prediction "
                                     "trains too, at this weight against a painted pixel; blank: "
                                     "the measured default (0.1 Granules, 0 others); 0 = off")
        self.advanced = Container(widgets=[self.crop, self.batch_size, self.steps, self.rehearsal,
                                           self.validation_mix, self.start_share, self.start_labels],
                                  visible=False)
        self.settings = Container(widgets=[
            self.kind, data_row, self.start_from, self.start_file, self.start_info, self.output,
            self.resume_info, self.resume_button,
            self.epochs, self.learning_rate, flips_row, self.contrast, self.brightness,
            self.class_weights, self.val_fraction, self.show_advanced, self.advanced,
        ])
        # -- running and results
        self.job = JobControls("Train", stages=("batches", "epochs"))
        self.plot_box = Container(labels=False)
        self.result_info = Label(value="")
        self.report_table = Table(value=[], columns=list(REPORT_COLUMNS), visible=False)
        self.report_table.native.verticalHeader().setVisible(False)
        self.report_table.tooltip = ("Per-class IoU on the validation data: the starting model "
                                     "(before) and the kept weights (after)")
        self.class_table = Table(value=[], columns=list(TABLE_COLUMNS), visible=False)
        self.class_table.native.verticalHeader().setVisible(False)
        self.use_button = PushButton(text="Use in Segment widget", enabled=False)
        super().__init__(widgets=[self.settings, self.job, self.plot_box, self.result_info,
                                  self.report_table, self.class_table, self.use_button], labels=False)
        self._make_plot()

        self.history: list[dict[str, float]] = []  # end-of-epoch logs of the current run
        self.summary: Any = None  # TrainSummary of the last finished run
        self.report: Any = None  # its before/after per-class IoU (DataFrame), if it had validation
        self.weights_path: Path | None = None  # what "Use in Segment" hands over
        self.run_folder: Path | None = None
        self._run_kind = self.kind.value
        self._user_output = False  # the user chose the run folder (else it is derived every run)
        self._proposing = False
        self._folder_existed = False
        self._first_event = False
        self._started = 0.0
        self._weights_before: dict[Path, int] = {}
        self._worker: Any = None

        self.add_data_button.changed.connect(self._add_folder)
        self.data.changed.connect(self._propose_output)
        self.output.changed.connect(self._on_output_edited)
        self.resume_button.changed.connect(lambda _=None: self.run(resume=True))
        self.kind.changed.connect(self._on_kind)
        self.start_from.changed.connect(self._update_start_info)
        self.start_from.changed.connect(self._recipe_for_start)
        self.show_advanced.changed.connect(lambda on: setattr(self.advanced, "visible", bool(on)))
        self.job.run_button.changed.connect(self.run)
        self.job.cancel_button.changed.connect(self.cancel)
        self.use_button.changed.connect(self.use_in_segment)
        self.session.weights_changed.connect(self._on_session_weights)
        self._update_start_info()

    # -- the plot ---------------------------------------------------------------------------------
    def _make_plot(self) -> None:
        from matplotlib.ticker import MaxNLocator

        self.plot = BackgroundFigure(height=220)
        self.figure = self.plot.figure
        ax = self.figure.add_subplot()
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("loss")
        ax_iou = ax.twinx()
        ax_iou.set_ylabel("val mean IoU")
        ax_iou.set_ylim(0, 1)
        self.axes = (ax, ax_iou)
        styles = {"loss": (ax, "C0", "-"), "val_loss": (ax, "C1", "--"), "val_mean_iou": (ax_iou, "C2", "-")}
        self.plot_lines = {key: axis.plot([], [], marker="o", ms=3, color=c, ls=ls,
                                          label=PLOT_SERIES[key])[0]
                           for key, (axis, c, ls) in styles.items()}
        ax_iou.legend(handles=list(self.plot_lines.values()), fontsize="x-small", loc="center right")
        self.plot_box.native.layout().addWidget(self.plot)

    def _redraw(self) -> None:
        self.plot_box.visible = bool(self.history)  # no empty frame before the first epoch
        self.plot.redraw(self._update_plot)

    def _update_plot(self, _figure: Any) -> None:
        for key, line in self.plot_lines.items():
            points = [(h["epoch"], h[key]) for h in self.history if math.isfinite(h.get(key, math.nan))]
            line.set_data([p[0] for p in points], [p[1] for p in points])
        ax, _ = self.axes
        ax.relim()
        ax.autoscale_view()
        if self.history:  # epoch 0 (the starting weights) has validation metrics only
            epochs = [h["epoch"] for h in self.history]
            ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)

    # -- fields ------------------------------------------------------------------------------------
    def _add_folder(self, _=None) -> None:
        folder = show_file_dialog(mode="d", caption="Training data folder", parent=self.native)
        if folder:
            self.data.value = "; ".join(split_folders(f"{self.data.value};{folder}"))

    def _propose_output(self, _=None) -> None:
        """Fill in a new run folder next to the data (never the working directory), unless the
        user chose one."""
        data = split_folders(self.data.value)
        if not self._user_output and data:
            self._proposing = True
            try:
                self.output.value = str(default_run_folder(data, self.kind.value))
            finally:
                self._proposing = False
        self._show_resumable()

    def _on_output_edited(self, _=None) -> None:
        if not self._proposing:  # an empty field reads as the working directory: not a choice
            self._user_output = str(self.output.value) not in ("", ".", str(Path.cwd()))
            if not self._user_output:
                self._propose_output()
        self._show_resumable()

    def _resumable(self) -> dict[str, Any] | None:
        """The state of a run in the chosen folder that can go on (None when there is none)."""
        if not self._user_output and self.run_folder is None:
            return None
        folder = Path(self.output.value).expanduser()
        try:
            return run_state(folder)
        except (OSError, TrainingError):
            return None

    def _show_resumable(self) -> None:
        state = None if self.job.busy else self._resumable()
        if state is not None:
            cfg = state.get("config", {})
            self.resume_info.value = (f"This folder holds a {state.get('card', {}).get('kind', '')} "
                                      f"run stopped after epoch {state.get('epoch')} of "
                                      f"{cfg.get('epochs')}: resume it (more epochs: raise 'epochs'), "
                                      "or choose a new folder")
        self.resume_info.visible = self.resume_button.visible = state is not None

    def _on_kind(self, _=None) -> None:
        self._update_start_info()
        self._propose_output()

    def _on_session_weights(self, kind: str) -> None:
        if kind == self.kind.value:
            self._update_start_info()

    def _recipe_for_start(self, choice: str) -> None:
        """Quarter turns are the recipe from scratch, not when fine-tuning (TrainConfig.rotate90)."""
        self.rotate90.value = choice == "fresh"

    def _update_start_info(self, _=None) -> None:
        choice = self.start_from.value
        self.start_file.visible = choice == "weights file"
        kind = self.kind.value
        if choice == "fresh":
            text = "random weights (train from scratch: needs many pairs and epochs)"
        elif choice == "weights file":
            text = "fine-tune the weights file above"
        else:
            current = self.session.weights.get(kind)
            if current:
                text = f"the Segment widget's {kind} model: {current}"
            else:
                bundled = bundled_weights(kind)
                text = (f"bundled default: {bundled}" if bundled
                        else "bundled default (untrained: training starts from random weights)")
        self.start_info.value = text

    # -- run ---------------------------------------------------------------------------------------
    def _options(self) -> dict[str, Any]:
        """TrainConfig fields from the form; ValueError (from TrainConfig) when one is invalid."""
        options = {
            "epochs": int(self.epochs.value),
            "learning_rate": parse_optional(self.learning_rate.value, float, "learning rate"),
            "flips": bool(self.flips.value),
            "rotate90": bool(self.rotate90.value),
            "contrast": float(self.contrast.value),
            "brightness": float(self.brightness.value),
            "class_weights": self.class_weights.value,
            "val_fraction": float(self.val_fraction.value),
            "validation_mix": self.validation_mix.value,
            "crop": int(self.crop.value),
            "batch_size": int(self.batch_size.value),
            "steps_per_epoch": parse_optional(self.steps.value, int, "steps per epoch"),
            "rehearsal": parse_optional(self.rehearsal.value, float, "rehearsal share",
                                        zero_is_automatic=False),  # 0 = off
            "average_with_start": parse_optional(self.start_share.value, float,
                                                 "average with start", zero_is_automatic=False),
            "start_labels": parse_optional(self.start_labels.value, float, "start labels",
                                           zero_is_automatic=False),
        }
        TrainConfig(**options)  # checks every number before anything starts
        return options

    def _start_weights(self, kind: str) -> tuple[str | None, bool]:
        """(starting weights file or None for the bundled default, fresh)."""
        choice = self.start_from.value
        if choice == "fresh":
            return None, True
        if choice == "weights file":
            value = self.start_file.value
            if value is None or str(value) in ("", ".") or not Path(value).exists():
                raise ValueError("choose the weights file to start from (or start from the current "
                                 "model)")
            return str(value), False
        return self.session.weights.get(kind), False

    def run(self, _=None, resume: bool = False) -> Any:
        """Start training with the form's settings (``resume``: go on with the run in the chosen
        folder); returns the worker (None when refused)."""
        if self.job.busy:
            return None
        kind = self.kind.value
        data = split_folders(self.data.value)
        try:
            if not data:
                raise ValueError("no training data: add a folder of exported training pairs "
                                 "(Export widget, or `emgranules export`)")
            options = self._options()
            model, fresh = self._start_weights(kind)
            if not self._user_output and not resume:
                self._propose_output()  # a new folder for every run
            out = Path(self.output.value).expanduser()
            state = run_state(out)
            if resume and state is None:
                raise ValueError(f"{out}: there is no training run to resume here")
            if not resume and (state is not None or weights_files(out)):
                how = "resume it (Resume button) or " if state is not None else ""
                raise ValueError(f"{out}: holds another training run; {how}choose a new run folder")
            if resume:
                kind = state.get("card", {}).get("kind", kind)
                options = {"epochs": options["epochs"], "resume": True}
        except (ValueError, TrainingError) as exc:
            notify_error(exc, "Train")
            return None
        self._reset_results()
        was_closed(self)  # notes whether the panel is docked now (closing it later stops the run)
        self._run_kind, self.run_folder = kind, out
        self._folder_existed = out.exists()
        self._first_event = False
        self._started = time.perf_counter()
        self._weights_before = weights_files(out)  # another run's files are not this run's
        self.settings.enabled = False
        self.job.start("starting the model process..." if not self.engine.running
                       else "loading the training pairs and the model...")
        self._worker = start_worker(
            run_training, data, str(out), kind, model, fresh, options,
            on_yield=self._on_event, on_return=self._on_done, on_error=self._on_error,
            on_finish=self._on_finish,
        )
        return self._worker

    def cancel(self, _=None) -> None:
        """Stop the run at its next batch; the best weights so far stay in the run folder."""
        if self.job.busy:
            self.job.status.value = "cancelling... (the best weights so far are kept)"
            self.engine.cancel()

    def _reset_results(self) -> None:
        self.history = []
        self.summary = None
        self.weights_path = None
        self.use_button.enabled = False
        self.report = None
        self.result_info.value = ""
        self.report_table.value = {"data": [], "columns": list(REPORT_COLUMNS), "index": []}
        self.report_table.visible = False
        self.class_table.value = {"data": [], "columns": list(TABLE_COLUMNS), "index": []}
        self.class_table.visible = False
        self._redraw()

    # -- events ------------------------------------------------------------------------------------
    def _on_event(self, event: Any) -> None:
        self._first_event = True
        if was_closed(self):  # the panel was closed mid-run: stop (the best weights stay)
            self.cancel()
            return
        if isinstance(event, TrainProgress):
            self.job.step("epochs", event.epoch - (0 if event.end_of_epoch else 1), event.epochs)
            self.job.step("batches", event.step, event.steps)
            if event.end_of_epoch:
                self.history.append({"epoch": event.epoch, **event.logs})
                self._redraw()
                self.job.status.value = self._epoch_text(event)
                if event.improved:
                    self.weights_path = saved_weights(self.run_folder, self._weights_before)
            else:
                loss = event.logs.get("loss", math.nan)
                self.job.status.value = (f"epoch {event.epoch}/{event.epochs}, batch {event.step}/"
                                         f"{event.steps}: loss {loss:.4g}")

    def _epoch_text(self, event: TrainProgress) -> str:
        logs = event.logs
        if event.epoch == 0:
            parts = [f"{name} {logs[key]:.4g}" for key, name in PLOT_SERIES.items()
                     if key.startswith("val_") and key in logs]
            return f"starting model (epoch 0): {', '.join(parts) or 'scored'}"
        parts = [f"loss {logs['loss']:.4g}"] if math.isfinite(logs.get("loss", math.nan)) else []
        parts += [f"val loss {logs['val_loss']:.4g}"] if "val_loss" in logs else []
        parts += [f"val mean IoU {logs['val_mean_iou']:.3f}"] if "val_mean_iou" in logs else []
        best = " (best so far: saved)" if event.improved else ""
        return f"epoch {event.epoch}/{event.epochs}: {', '.join(parts)}{best}"

    def _on_done(self, result: tuple[Any, list[str]]) -> None:
        summary, notes = result
        self.summary = summary
        self.weights_path = Path(summary.weights_path)
        self._show_per_class(summary.per_class)
        self.report = read_report(summary, self.run_folder)
        self._show_report(self.report)
        stopped = " (stopped early)" if summary.stopped_early else ""
        kept = summary.best_epoch == 0
        best = (f"{KEPT_START} ({summary.monitor} {summary.best_value:.4g})" if kept
                else f"best epoch {summary.best_epoch}: {summary.monitor} {summary.best_value:.4g}")
        self.result_info.value = f"{best}{stopped}\nweights: {summary.weights_path}"
        self.use_button.enabled = True
        seconds = time.perf_counter() - self._started
        which = "the starting weights, kept," if kept else f"the best weights (epoch {summary.best_epoch})"
        show_info(f"Train: done in {seconds:.0f} s; {which} are in {summary.weights_path}")
        notify_notes(list(dict.fromkeys([*summary.notes, *notes])))

    def _show_per_class(self, table: Any) -> None:
        if table is None or len(table) == 0:
            self.class_table.visible = False
            return
        rows = [[f"{row['class']} ({row['letter']})", *(_metric(row[c]) for _, c in _METRICS),
                 int(row["pixels"])] for _, row in table.iterrows()]
        self.class_table.value = {"data": rows, "columns": list(TABLE_COLUMNS),
                                  "index": [str(c) for c in table["code"]]}
        self.class_table.native.resizeColumnsToContents()
        self.class_table.visible = True

    def _show_report(self, table: Any) -> None:
        """The before/after per-class IoU table (hidden without validation data)."""
        if table is None or len(table) == 0:
            self.report_table.visible = False
            return
        rows = [[f"{row['class']} ({row['letter']})", int(row["pixels"]), _metric(row["iou_before"]),
                 _metric(row["iou_after"]), _change(row["change"])] for _, row in table.iterrows()]
        self.report_table.value = {"data": rows, "columns": list(REPORT_COLUMNS),
                                   "index": [str(i) for i in range(len(rows))]}
        self.report_table.native.resizeColumnsToContents()
        self.report_table.visible = True

    def _on_error(self, exc: BaseException) -> None:
        saved = saved_weights(self.run_folder, self._weights_before) if self.run_folder else None
        if saved is not None:
            self.weights_path = saved
            self.use_button.enabled = True
            self.result_info.value = f"best weights so far: {saved}"
        elif self.run_folder is not None and not self._folder_existed:
            try:  # a run stopped before its first epoch leaves an empty folder: remove it
                self.run_folder.rmdir()
            except OSError:
                pass
        if isinstance(exc, Cancelled):
            epochs = sum(h["epoch"] > 0 for h in self.history)  # epoch 0 scored the start only
            show_info(f"Train: cancelled after {epochs} epoch{'s' * (epochs != 1)}; "
                      + (f"the best weights so far are in {saved}" if saved
                         else "no epoch finished, so nothing was saved"))
            return
        notify_error(exc, "Train")
        if saved is not None:
            show_warning(f"Train: the best weights so far are in {saved}")

    def _on_finish(self) -> None:
        self.settings.enabled = True
        if self.summary is not None:
            text = "done"
        elif self.weights_path is not None:
            text = "stopped; the best weights so far were kept"
        else:
            text = "stopped" if self._first_event else ""
        self.job.finish(text)
        self._worker = None
        self._show_resumable()  # a stopped run can go on; Train starts a new folder

    # -- results -----------------------------------------------------------------------------------
    def use_in_segment(self, _=None) -> None:
        """Make the Segment widget use the new weights."""
        if self.weights_path is None or not self.weights_path.is_file():
            show_error("Train: no trained weights to use yet")
            return
        self.session.set_weights(self._run_kind, str(self.weights_path))
        show_info(f"Segment widget: the {self._run_kind} model is now {self.weights_path}")
