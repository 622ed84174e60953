"""Segment dock widget: run the Locations and Granules models on a micrograph layer."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label, PushButton

from .._engine import IDLE_S, get_engine
from ..core.models import ModelCard, read_model_card
from ..core.options import GRANULE_PEAK, MODES, SegmentOptions
from ._common import (
    KINDS,
    JobControls,
    active_micrograph,
    add_grey_copy,
    choose,
    describe_source,
    enter_pixel_size,
    get_layer,
    has_corrections,
    labels_name,
    layer_pixel_size,
    micrograph_layers,
    notify_error,
    notify_notes,
    session_for,
    show_confidence,
    show_info,
    show_labels,
    start_worker,
    unusable_images,
    was_closed,
)

if TYPE_CHECKING:
    import napari

WEIGHTS_FILTER = "Model weights (*.weights.h5 *.h5 *.hdf5 *.keras *.index *.onnx);;All files (*)"
MODE_HELP = {
    "auto": "auto: the whole image at once when it fits in memory, else tiles",
    "whole": "whole: one pass over the whole image (seam-free; most memory)",
    "tiled": "tiled: overlapping windows, blended (any size)",
    "seed": "seed: the original tool's 1024 px tiles, exactly",
}


def describe_card(card: ModelCard) -> str:
    """One line about a model: classes, pixel size, how it was trained."""
    letters = " ".join(c.letter for c in card.schema.classes)
    origin = ("UNTRAINED (random weights)" if not card.trained
              else "trained on synthetic micrographs" if card.synthetic else "trained")
    source = card.provenance.get("source")
    where = f" · {Path(source).name}" if source else ""
    return (f"{card.schema.n_classes} classes ({letters}) · {card.pixel_size_nm:g} nm/px · "
            f"{origin}{where}")


class _ModelChooser(Container):
    """One model: run it or not, its weights file (empty = bundled default) and what it is."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.enabled_box = CheckBox(value=True, text=f"run {kind}")
        self.file = FileEdit(mode="r", filter=WEIGHTS_FILTER, label="weights", nullable=True)
        self.file.value = None
        self.bundled_button = PushButton(text="Bundled default")
        self.info = Label(value="")
        row = Container(widgets=[self.enabled_box, self.bundled_button], layout="horizontal",
                        labels=False)
        super().__init__(widgets=[row, self.file, self.info], label=kind.capitalize())

    @property
    def path(self) -> str | None:
        value = self.file.value
        return None if value in (None, "", Path(), Path(".")) else str(value)


_SETTINGS = ("napari-emgranules", "napari-emgranules")


def prestart_enabled() -> bool:
    """Whether the Segment panel loads the models when it opens (a setting kept between sessions;
    ``EMGRANULES_PRESTART=0`` turns it off too)."""
    if os.environ.get("EMGRANULES_PRESTART", "").strip() == "0":
        return False
    from qtpy.QtCore import QSettings

    value = QSettings(*_SETTINGS).value("segment/prestart", True)
    return str(value).lower() not in ("false", "0")


def set_prestart(on: bool) -> None:
    from qtpy.QtCore import QSettings

    QSettings(*_SETTINGS).setValue("segment/prestart", bool(on))


class SegmentWidget(Container):
    """Pick a micrograph layer, its pixel size and the models; Run shows two label layers.

    Results are Labels layers ``"<image> locations"`` and ``"<image> granules"`` (updated in place
    on re-run; corrections are only replaced after the user confirms) and, optionally, confidence
    layers. The models run in a separate process (:mod:`napari_emgranules._engine`).
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.engine = get_engine("segmentation")
        self.image = ComboBox(label="micrograph", choices=self._image_choices, nullable=True)
        self.pixel_size = FloatSpinBox(label="pixel size (nm)", min=0.0, max=100.0, step=0.05,
                                       value=0.0)
        self.pixel_size.tooltip = ("The micrograph's pixel size; a value you enter goes to the image "
                                   "layer and every layer made from it (scale in nm), and Export "
                                   "writes it into the training pairs")
        self.pixel_source = Label(value="")
        self.unusable = Label(value="")  # image layers that are not listed, and why
        self.grey_button = PushButton(text="Convert colour image to grey")
        self.grey_button.visible = False
        self.models = {kind: _ModelChooser(kind) for kind in KINDS}
        self.mode = ComboBox(label="mode", choices=list(MODES), value="auto")
        self.mode_help = Label(value=MODE_HELP["auto"])
        self.threshold = FloatSpinBox(label="granule threshold", min=0.05, max=0.95, step=0.05,
                                      value=0.5)
        self.threshold.tooltip = ("A granule where the model's calibrated probability is at least "
                                  "this (0.5 = the model's own choice; higher: fewer, surer granules)")
        self.peak = FloatSpinBox(label="granule peak", min=0.5, max=0.99, step=0.05, value=GRANULE_PEAK)
        self.peak.tooltip = ("Keep a granule only where its most confident pixel reaches this "
                             "probability (0.5 = keep every granule the threshold draws; higher: "
                             "fewer doubtful particles, each kept whole)")
        self.confidence = CheckBox(value=True, text="confidence layers (for Review)")
        self.prestart = CheckBox(value=prestart_enabled(), text="load the models when this panel opens")
        self.prestart.tooltip = ("Starts the model process and loads the models in the background, so "
                                 "the first Run does not wait for them (kept for the next sessions)")
        self.job = JobControls("Run", stages=KINDS)
        super().__init__(widgets=[self.image, self.unusable, self.grey_button, self.pixel_size,
                                  self.pixel_source,
                                  *self.models.values(), self.mode, self.mode_help, self.threshold,
                                  self.peak, self.confidence, self.prestart, self.job])
        self._worker: Any = None
        self._started = 0.0
        self._paths: dict[str, str | None] = dict.fromkeys(KINDS)

        self.image.changed.connect(self._on_image)
        self.grey_button.changed.connect(self.convert_to_grey)
        napari_viewer.layers.selection.events.active.connect(self._on_active_layer)
        self.pixel_size.changed.connect(self._on_pixel_size_entered)
        self.session.pixel_size_changed.connect(self._on_session_pixel_size)
        self.mode.changed.connect(lambda v: setattr(self.mode_help, "value", MODE_HELP[v]))
        self.job.run_button.changed.connect(self.run)
        self.prestart.changed.connect(set_prestart)
        self.job.cancel_button.changed.connect(self.cancel)
        for kind, chooser in self.models.items():
            chooser.file.changed.connect(lambda _=None, k=kind: self._on_file(k))
            chooser.bundled_button.changed.connect(lambda _=None, k=kind: self.use_weights(k, None))
            self._show_card(kind, None)
        self.session.weights_changed.connect(self._on_session_weights)
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(self._refresh_images)
        self._refresh_images()
        if self.prestart.value and not self.engine.running:
            self.engine.prestart("load_models", weights=dict(self._paths))

    # -- choices and fields ------------------------------------------------------------------------
    def _image_choices(self, _widget=None) -> list[tuple[str, Any]]:
        return [(layer.name, layer) for layer in micrograph_layers(self.viewer)]

    def _refresh_images(self, _event=None) -> None:
        self.image.reset_choices()
        layers = [c for c in self.image.choices if c is not None]
        if self.image.value is None and layers:
            active = active_micrograph(self.viewer)
            self.image.value = active if any(active is m for m in layers) else layers[0]
        bad = unusable_images(self.viewer)
        self.unusable.value = "\n".join(f"not listed: {layer.name} ({why})" for layer, why in bad)
        self.unusable.visible = bool(bad)
        self.grey_button.visible = any(layer.rgb for layer, _ in bad)

    def _on_active_layer(self, _event=None) -> None:
        """Follow the user: selecting a micrograph (or a layer made from one) chooses it here."""
        if not self.job.busy:
            choose(self.image, active_micrograph(self.viewer))

    def convert_to_grey(self, _=None) -> Any:
        """Add a grey copy of the selected (or first) colour image layer and choose it."""
        colour = [layer for layer, _ in unusable_images(self.viewer) if layer.rgb]
        active = self.viewer.layers.selection.active
        layer = active if any(active is c for c in colour) else (colour[0] if colour else None)
        if layer is None:
            return None
        grey = add_grey_copy(self.viewer, layer)
        self.image.value = grey
        show_info(f"{grey.name}: a grey copy of the colour image {layer.name} (luminance); "
                  "the models take grey micrographs")
        return grey

    def _on_image(self, layer: Any) -> None:
        if layer is None:
            self.pixel_source.value = ""
            return
        px, source = layer_pixel_size(layer)
        if abs(float(self.pixel_size.value) - (px or 0.0)) > 1e-9:  # not while the user types it
            with self.pixel_size.changed.blocked():
                self.pixel_size.value = px or 0.0
        self.pixel_source.value = (describe_source(source) if px else
                                   "unknown: enter it (or 0 to assume the models' own pixel size; "
                                   "Export then asks for it)")

    def _on_pixel_size_entered(self, value: float) -> None:
        """A pixel size typed by the user goes to the micrograph layer and its result layers."""
        enter_pixel_size(self.viewer, self.image.value, value)

    def _on_session_pixel_size(self, image_name: str) -> None:
        layer = self.image.value
        if layer is not None and layer.name == image_name:
            self._on_image(layer)

    def _show_card(self, kind: str, path: str | None) -> None:
        try:
            card = read_model_card(path, kind)
        except Exception as exc:  # noqa: BLE001 - shown, then the weights are refused
            self.models[kind].info.value = f"unreadable: {exc}"
            return
        self.models[kind].info.value = ("bundled default: " if path is None else "") + describe_card(card)

    def use_weights(self, kind: str, path: str | None) -> None:
        """Use ``path`` (None: the bundled default) for ``kind``; checked before it is accepted."""
        chooser = self.models[kind]
        with chooser.file.changed.blocked():
            chooser.file.value = path
        self._on_file(kind)

    def _on_file(self, kind: str) -> None:
        path = self.models[kind].path
        if path == self._paths[kind]:
            return
        if path is None:
            self._accept(kind, None, None)
            return
        self.models[kind].info.value = "checking the weights..."
        start_worker(self.engine.call, "describe_model", path=path, kind=kind,
                     on_return=lambda card: self._accept(kind, path, card),
                     on_error=lambda exc: self._refuse(kind, path, exc))

    def _accept(self, kind: str, path: str | None, card: ModelCard | None) -> None:
        self._paths[kind] = path
        if card is None:
            self._show_card(kind, path)
        else:
            self.models[kind].info.value = describe_card(card)
        self.session.set_weights(kind, path)

    def _refuse(self, kind: str, path: str, exc: BaseException) -> None:
        notify_error(exc, f"{kind.capitalize()} weights {Path(path).name}")
        previous = self._paths[kind]
        with self.models[kind].file.changed.blocked():
            self.models[kind].file.value = previous
        self._show_card(kind, previous)

    def _on_session_weights(self, kind: str) -> None:
        if kind in self.models and self.session.weights[kind] != self._paths[kind]:
            self.use_weights(kind, self.session.weights[kind])

    # -- run -------------------------------------------------------------------------------------
    def _confirm(self, text: str) -> bool:
        from qtpy.QtWidgets import QMessageBox

        answer = QMessageBox.question(self.native, "Replace corrected labels?", text)
        return answer == QMessageBox.StandardButton.Yes

    def run(self, _=None) -> Any:
        """Segment the chosen micrograph (in the background); returns the worker, or None."""
        if self.job.busy:
            return None
        layer = self.image.value
        if layer is None or layer not in self.viewer.layers:
            bad = unusable_images(self.viewer)
            why = ("; ".join(f"{lay.name} is {reason}" for lay, reason in bad) if bad else
                   "open one (File > Open) or the sample (File > Open Sample > EM Granules)")
            notify_error(ValueError(f"no micrograph layer: {why}"), "Segment")
            return None
        if layer.multiscale or layer.ndim != 2 or layer.rgb:
            notify_error(ValueError(f"{layer.name!r} is not a single 2-D gray micrograph"), "Segment")
            return None
        kinds = [k for k, chooser in self.models.items() if chooser.enabled_box.value]
        if not kinds:
            notify_error(ValueError("no model chosen: tick Locations and/or Granules"), "Segment")
            return None
        corrected = [name for k in kinds if (name := labels_name(layer.name, k)) in self.viewer.layers
                     and has_corrections(self.viewer.layers[name])]
        if corrected and not self._confirm(
                f"{', '.join(corrected)} {'has' if len(corrected) == 1 else 'have'} corrections that "
                "the new result will replace. Export them first (Export widget) to keep them.\n\n"
                "Replace them?"):
            show_info("Segment: nothing changed (corrected labels kept)")
            return None
        image = np.asarray(layer.data)
        px = float(self.pixel_size.value) or None
        if px is not None:
            self._on_pixel_size_entered(px)  # the layer holds what the run uses
        source = layer_pixel_size(layer)[1] if px is not None else None
        weights = {k: self._paths[k] for k in kinds}
        threshold = float(self.threshold.value)
        peak = float(self.peak.value)
        options = SegmentOptions(mode=self.mode.value, granule_threshold=threshold
                                 if abs(threshold - 0.5) > 1e-9 and "granules" in kinds else None,
                                 granule_peak=peak if peak > 0.5 + 1e-9 else None)
        self.job.start("starting the model process..." if not self.engine.running else "segmenting...")
        for kind, bar in self.job.bars.items():
            bar.visible = kind in kinds
        self._started = time.perf_counter()
        was_closed(self)  # notes whether the panel is docked now (closing it later stops the run)
        self._worker = start_worker(
            self.engine.run, "segment", image=image, pixel_size_nm=px, weights=weights, options=options,
            confidence=bool(self.confidence.value),
            on_yield=self._on_progress,
            on_return=lambda result: self._show(layer, result, source),
            on_error=self._on_error,
        )
        return self._worker

    def cancel(self, _=None) -> None:
        if self.job.busy:
            self.job.status.value = "cancelling..."
            self.engine.cancel()

    def _on_progress(self, event: Any) -> None:
        if was_closed(self):  # the panel was closed mid-run: nobody waits for the result
            self.cancel()
            return
        self.job.step(event.stage, event.step, event.steps, event.message)

    def _on_error(self, exc: BaseException) -> None:
        self.job.finish("")
        notify_error(exc, "Segment")

    def _show(self, image_layer: Any, result: Any, source: str | None = None) -> None:
        if was_closed(self):
            self.job.finish("the panel was closed; result dropped")
            return
        if image_layer not in self.viewer.layers:
            self.job.finish("the micrograph layer was closed; result dropped")
            return
        source = source or result.pixel_size_source  # "model": assumed, the layers say unknown
        info = {"pixel_size_nm": result.pixel_size_nm, "pixel_size_source": source, "mode": result.mode}
        for kind, labels in result.labels.items():
            card = result.models[kind]
            show_labels(self.viewer, image_layer, kind, labels, card.schema,
                        {**info, "model": card.to_dict()})
        for kind, conf in result.confidence.items():
            show_confidence(self.viewer, image_layer, kind, conf)
        self.viewer.layers.selection.active = get_layer(self.viewer, labels_name(image_layer.name,
                                                                                 next(iter(result.labels))))
        seconds = time.perf_counter() - self._started
        where = ("assumed: the models' own; enter the real one before exporting"
                 if source == "model" else describe_source(source))
        memory = self.engine.memory_mb()
        held = (f"; the model process holds {memory / 1024:.1f} GB until {IDLE_S['segmentation'] / 60:g} "
                "min without a run" if memory else "")
        self.job.finish(f"done in {seconds:.1f} s ({result.mode} mode, "
                        f"{result.pixel_size_nm:g} nm/px, {where}){held}")
        notify_notes([*result.notes, *self.engine.notes])
