"""Export training data: tiles of a micrograph and its corrected label layers as training pairs.

Each chosen labels layer goes to ``<folder>/<kind>`` (``locations``, ``granules``: one training set
per model, each with its own ``manifest.csv`` and ``schema.json``) through
:func:`napari_emgranules.core.dataset.export_training_pairs`, which never overwrites a file (a
re-exported tile moves the older pair into ``superseded/``). What counts as truth:

- whole tiles: every pixel of the tiles the user changed or marked reviewed (or the chosen tiles);
- only my changes + reviewed areas: the pixels that differ from the model's output and those under
  the layer's reviewed marks (Review widget); the rest is written as unlabelled;
- strokes: the classes painted on a strokes layer (Review widget); the rest is unlabelled.

The pixel size comes from the micrograph layer (:func:`._common.set_pixel_size`); when it is
unknown the widget asks for it and refuses to export without it. The writing runs in a thread
worker; everything the widget can check is checked before anything is written.
"""

from __future__ import annotations

import re
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    RadioButtons,
    Select,
    SpinBox,
)
from napari.layers import Image, Labels
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import QTimer

from .._layers import strokes_to_codes
from ..core.dataset import MIN_TILE_SIDE_PX, TrainingPair, check_export_folder, export_training_pairs
from ..core.schema import ClassSchema
from ._common import (
    META,
    active_micrograph,
    changed_tiles,
    choose,
    describe_source,
    enter_pixel_size,
    has_corrections,
    layer_pixel_size,
    layer_schema,
    micrograph_layers,
    model_output,
    notify_error,
    parse_tiles,
    result_layers,
    reviewed_layer_for,
    session_for,
    start_worker,
    strokes_layers,
    strokes_schema,
    tile_origins,
)

if TYPE_CHECKING:
    import napari

MODES = (("changed or labelled tiles", "changed"), ("all tiles", "all"), ("these tiles", "these"))
TRUTH = (("whole tiles", "full"), ("only my changes + reviewed areas", "changed"),
         ("strokes layers", "strokes"))
TRUTH_HELP = {
    "full": "every pixel of the tiles you changed or marked reviewed is truth",
    "changed": ("only the pixels you changed and the areas you marked reviewed are truth; the rest "
                "is written as unlabelled"),
    "strokes": "only the classes painted on the strokes layers are truth; the rest is unlabelled",
}
#: Milliseconds of quiet after the last edit of a chosen layer before the plan is recounted.
PLAN_DELAY_MS = 400
_UNSAFE = re.compile(r"[^\w.-]+")


@dataclass
class ExportJob:
    """One labels layer to write: what the worker needs, copied on the main thread.

    ``labelled`` and ``reviewed`` go to :func:`export_training_pairs`; ``planned`` are the tiles
    with labelled pixels and ``pixels`` how many labelled pixels they hold.
    """

    layer_name: str
    schema: ClassSchema
    labels: np.ndarray
    root: Path
    tiles: str | list[int]
    only_changed_from: np.ndarray | None
    made_by: str
    labelled: str = "full"
    reviewed: np.ndarray | None = None
    planned: list[int] = field(default_factory=list)
    pixels: int = 0


@dataclass
class ExportResult:
    layer_name: str
    root: Path
    tiles: list[int] = field(default_factory=list)
    pairs: list[TrainingPair] = field(default_factory=list)


def model_description(layer: Labels) -> str:
    """``"locations model (locations.weights.h5)"``: what made a result layer's labels."""
    info = layer.metadata.get(META, {})
    card = info.get("model") or {}
    kind = info.get("kind") or card.get("kind") or "segmentation"
    provenance = card.get("provenance") or {}
    notes = [Path(str(provenance["source"])).name] if provenance.get("source") else []
    if provenance.get("trained") is False:
        notes.append("untrained")
    return f"{kind} model" + (f" ({', '.join(notes)})" if notes else "")


def made_by(layer: Labels, reviewed: np.ndarray | None = None) -> str:
    """``"corrected"`` when the user painted on (or reviewed) a result layer, else what made it."""
    if META not in layer.metadata:
        return str(layer.metadata.get("made_by") or "unknown")
    checked = reviewed is not None and bool(reviewed.any())
    return "corrected" if checked or has_corrections(layer) else model_description(layer)


def labelled_tiles(mask: np.ndarray, tile: int, numbers: list[int]) -> tuple[list[int], int]:
    """The tiles among ``numbers`` holding a True pixel of ``mask``, and how many they hold."""
    origins = tile_origins(mask.shape, tile)
    found, pixels = [], 0
    for k in numbers:
        y, x = origins[k]
        n = int(np.count_nonzero(mask[y:y + tile, x:x + tile]))
        if n:
            found.append(k)
            pixels += n
    return found, pixels


def write_training_sets(image: np.ndarray, jobs: list[ExportJob], *, tile_size: int,
                        pixel_size_nm: float | None, source: str
                        ) -> Generator[tuple[int, int, str], None, list[ExportResult]]:
    """Write each job's pairs; yields ``(done, total, layer name)``; returns one result per job.

    All jobs are checked (label codes, existing schemas) before the first file is written.
    """
    for job in jobs:
        job.schema.check_labels(job.labels, f"labels layer {job.layer_name!r}",
                                allow_unlabelled=job.labelled == "strokes")
        check_export_folder(job.root, job.schema)
    origins = tile_origins(image.shape, tile_size)
    results = []
    for done, job in enumerate(jobs):
        yield done, len(jobs), job.layer_name
        pairs = export_training_pairs(
            image, job.labels, job.root, schema=job.schema, tiles=job.tiles, tile_size=tile_size,
            only_changed_from=job.only_changed_from, source=source, made_by=job.made_by,
            pixel_size_nm=pixel_size_nm, labelled="changed" if job.labelled == "changed" else "full",
            reviewed=job.reviewed)
        tiles = [origins.index(pair.origin) for pair in pairs if pair.origin in origins]
        results.append(ExportResult(job.layer_name, job.root, tiles, pairs))
    yield len(jobs), len(jobs), ""
    return results


def summary_text(results: list[ExportResult]) -> str:
    lines = []
    for r in results:
        if r.pairs:
            kinds = sorted({pair.labelled for pair in r.pairs})
            lines.append(f"{r.layer_name}: {len(r.pairs)} pair{'s' * (len(r.pairs) != 1)} "
                         f"(tiles {', '.join(map(str, r.tiles))}) -> {r.root} "
                         f"[labelled: {', '.join(kinds)}]")
        else:
            lines.append(f"{r.layer_name}: nothing to write (no changed tile large enough)")
    return "\n".join(lines)


def plan_text(jobs: list[ExportJob]) -> str:
    """One line per job: how many labelled pixels in which tiles will be written."""
    lines = []
    for job in jobs:
        what = {"full": "whole tiles", "changed": "changed + reviewed",
                "strokes": "strokes"}[job.labelled]
        tiles = ", ".join(map(str, job.planned[:20])) + (" ..." if len(job.planned) > 20 else "")
        lines.append(f"{job.layer_name}: {job.pixels:,} labelled px in {len(job.planned)} "
                     f"tile{'s' * (len(job.planned) != 1)} ({tiles}; {what})")
    return "\n".join(lines)


class ExportWidget(Container):
    """Write tiles of an image and its corrected label layers as training pairs.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer holding the micrograph and its label layers.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        self._viewer = napari_viewer
        self._session = session_for(napari_viewer)
        self._worker: Any = None
        self.last_results: list[ExportResult] = []

        self._image = ComboBox(label="Image", choices=self._image_choices,
                               tooltip="The micrograph the labels were painted on")
        self._pixel_size = FloatSpinBox(
            label="Pixel size (nm)", min=0.0, max=100000.0, step=0.05, value=0.0,
            tooltip="The micrograph's pixel size, written into every pair (training resamples by "
                    "it). Needed when the file has none; a value entered here goes to the image layer")
        self._pixel_source = Label(value="")
        self._truth = RadioButtons(label="Truth", choices=TRUTH, value="full",
                                   tooltip="Which pixels of the labels count as truth")
        self._truth_help = Label(value=TRUTH_HELP["full"])
        self._label_layers = Select(label="Label layers", choices=self._labels_choices,
                                    tooltip="Corrected label layers or strokes layers (each goes to "
                                            "<folder>/<kind>)")
        self._mode = RadioButtons(label="Tiles", choices=MODES, value="changed")
        self._tiles = LineEdit(label="Tile numbers", value="", enabled=False,
                               tooltip="e.g. 3, 5, 7-9 (numbered row by row on the tile grid)")
        self._tile_size = SpinBox(label="Tile size (px)", min=MIN_TILE_SIDE_PX, max=16384, step=128,
                                  value=self._session.tile_size)
        self._folder = FileEdit(label="Output folder", mode="d", nullable=True)
        self._plan_label = Label(value="")
        self._export_button = PushButton(text="Export training pairs")
        self._busy = ProgressBar(min=0, max=0, value=0, visible=False, label="writing")
        self._summary = Label(value="")
        super().__init__(widgets=[self._image, self._pixel_size, self._pixel_source, self._truth,
                                  self._truth_help, self._label_layers, self._mode, self._tiles,
                                  self._tile_size, self._folder, self._plan_label,
                                  self._export_button, self._busy, self._summary])

        self._watched: list[Labels] = []  # chosen layers (and their reviewed marks) being edited
        self._plan_timer = QTimer(self.native)
        self._plan_timer.setSingleShot(True)
        self._plan_timer.setInterval(PLAN_DELAY_MS)
        self._plan_timer.timeout.connect(self.update_plan)

        self._image.changed.connect(self._on_image)
        self._pixel_size.changed.connect(self._on_pixel_size_entered)
        self._session.pixel_size_changed.connect(self._on_session_pixel_size)
        self._truth.changed.connect(self._on_truth)
        self._label_layers.changed.connect(self.update_plan)
        self._mode.changed.connect(self._on_mode)
        self._tiles.changed.connect(self.update_plan)
        self._tile_size.changed.connect(self._session.set_tile_size)
        self._session.tile_size_changed.connect(self._on_session_tile_size)
        self._export_button.clicked.connect(self.export)
        for event in ("inserted", "removed", "reordered"):
            getattr(napari_viewer.layers.events, event).connect(self._on_layers_changed)
        napari_viewer.layers.selection.events.active.connect(self._on_active_layer)
        if not choose(self._image, active_micrograph(napari_viewer)):
            self._on_image()

    def _on_active_layer(self, _event: Any = None) -> None:
        """Follow the user: selecting a micrograph (or a layer made from one) chooses it here."""
        if not self.busy:
            choose(self._image, active_micrograph(self._viewer))

    @property
    def busy(self) -> bool:
        """True while an export is being written."""
        return self._worker is not None

    @property
    def summary(self) -> str:
        return str(self._summary.value)

    @property
    def plan(self) -> str:
        """What an export would write now (labelled pixels and tiles per layer), or why not."""
        return str(self._plan_label.value)

    # ---------------------------------------------------------------------------------------------
    def export(self) -> Any:
        """Check the choices and start writing; returns the worker, or None after telling the user why not."""
        if self.busy:
            show_warning("Export: an export is already being written; wait for it to finish")
            return None
        try:
            image, jobs, pixel_size, source = self._plan()
        except ValueError as exc:
            show_warning(f"Export: {exc}")
            return None
        self._plan_label.value = plan_text(jobs)
        self._export_button.enabled = False
        self._busy.visible = True
        self._summary.value = f"Writing {len(jobs)} training set(s)..."
        self._worker = start_worker(
            write_training_sets, image, jobs, tile_size=self._session.tile_size,
            pixel_size_nm=pixel_size, source=source,
            on_yield=self._on_progress, on_return=self._on_done, on_error=self._on_error,
            on_finish=self._on_finish)
        return self._worker

    def update_plan(self, *_: Any) -> None:
        """Show how many labelled pixels and tiles an export would write (or what is missing)."""
        self._plan_timer.stop()
        self._watch_chosen()
        try:
            _, jobs, _, _ = self._plan(need_folder=False)
        except ValueError as exc:
            text = f"Nothing to export yet: {exc}"
        else:
            text = plan_text(jobs)
        self._plan_label.value = text

    def _plan(self, need_folder: bool = True) -> tuple[np.ndarray, list[ExportJob], float, str]:
        """What to write, checked; raises ValueError with what to do."""
        image = self._image.value
        if not isinstance(image, Image) or image not in self._viewer.layers:
            raise ValueError("no image layer chosen; open a micrograph first")
        layers = [layer for layer in self._label_layers.value if layer in self._viewer.layers]
        if not layers:
            what = ("strokes layers (Review widget: New strokes layer)" if self._truth.value == "strokes"
                    else "the corrected locations and/or granules layers")
            raise ValueError(f"no label layers chosen; pick {what}")
        folder = self._folder.value
        if need_folder and (folder is None or not str(folder).strip()):
            raise ValueError("no output folder chosen; pick one under 'Output folder'")
        folder = Path(folder or ".").expanduser()
        if need_folder and folder.exists() and not folder.is_dir():
            raise ValueError(f"{folder} is a file; choose a folder")
        pixel_size, _ = layer_pixel_size(image)
        if pixel_size is None:
            raise ValueError(f"the pixel size of {image.name!r} is unknown (the file has none and "
                             "none was entered): enter it under 'Pixel size (nm)'; it is written into "
                             "every pair and never guessed")
        data = np.asarray(image.data[0] if image.multiscale else image.data)
        shape = tuple(data.shape)
        if data.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"the image {image.name!r} is {data.dtype}; training images must be 8- or "
                             "16-bit gray (open the original micrograph file)")
        tile = int(self._session.tile_size)
        origins = tile_origins(shape, tile)

        def usable(k: int) -> bool:
            y, x = origins[k]
            return min(shape[0] - y, shape[1] - x, tile) >= MIN_TILE_SIDE_PX

        mode = self._mode.value
        numbers = [k for k in range(len(origins)) if usable(k)]
        if mode == "these":
            numbers = parse_tiles(str(self._tiles.value))
            if not numbers:
                raise ValueError("type the tile numbers to export, e.g. 3, 5, 7-9")
            wrong = [k for k in numbers if k >= len(origins)]
            if wrong:
                raise ValueError(f"no tile {_numbers(wrong)}: {image.name!r} cut into {tile} px tiles has "
                                 f"tiles 0..{len(origins) - 1} (numbered row by row)")
            small = [k for k in numbers if not usable(k)]
            if small:
                raise ValueError(f"tile(s) {_numbers(small)} are edge tiles smaller than {MIN_TILE_SIDE_PX} "
                                 "px on a side; leave them out")

        jobs: list[ExportJob] = []
        empty = []
        for layer in layers:
            job = self._job(layer, image.name, shape, tile, mode, numbers, folder)
            if job.planned:
                jobs.append(job)
            else:
                empty.append(layer.name)
        roots: dict[Path, str] = {}
        for job in jobs:
            if job.root in roots:
                raise ValueError(f"{roots[job.root]!r} and {job.layer_name!r} both go to {job.root} "
                                 f"from {image.name!r}: the second would replace the first's tiles; "
                                 "export one of them at a time")
            roots[job.root] = job.layer_name
        names = ", ".join(repr(n) for n in empty)
        if not jobs:
            if self._truth.value == "full":
                raise ValueError(f"empty export selection: nothing changed since the model (or marked "
                                 f"reviewed) in {names}; paint corrections first or choose 'all tiles'")
            raise ValueError(f"every pixel is unlabelled in {names} (in the tiles to export): "
                             + ("paint strokes" if self._truth.value == "strokes" else
                                "correct some pixels or mark tiles reviewed (Review widget)")
                             + " first; nothing was written")
        if empty and need_folder:
            show_info(f"Export: nothing labelled in {names}; not written")
        source = str(image.metadata.get("path") or image.name)
        return data, jobs, pixel_size, source

    def _job(self, layer: Labels, image_name: str, shape: tuple[int, ...], tile: int, mode: str,
             numbers: list[int], folder: Path) -> ExportJob:
        """The export of one layer under the chosen truth; raises ValueError when it cannot be."""
        truth = self._truth.value
        schema = strokes_schema(layer) if truth == "strokes" else layer_schema(layer)
        if schema is None:
            raise ValueError(f"{layer.name!r} has no class schema; choose a layer made by Segment "
                             "or Review")
        if layer.data.shape != shape:
            raise ValueError(f"{layer.name!r} is {layer.data.shape[0]} x {layer.data.shape[-1]} px but "
                             f"the image {image_name!r} is {shape[0]} x {shape[1]} px; choose the "
                             "labels of this image")
        data = np.array(layer.data)  # a copy: the user may paint on while the worker writes
        root = folder / (_UNSAFE.sub("_", schema.kind).strip("._") or "labels")
        tiles: str | list[int] = numbers if mode == "these" else "all"
        if truth == "strokes":
            try:
                codes = strokes_to_codes(data)
            except ValueError as exc:
                raise ValueError(f"{layer.name!r}: {exc}") from None
            planned, pixels = labelled_tiles(data != 0, tile, numbers)
            return ExportJob(layer.name, schema, codes, root, tiles, None, "corrected", "strokes",
                             None, planned, pixels)
        base = model_output(layer)
        if base is not None and base.shape != shape:
            base = None
        reviewed_layer = reviewed_layer_for(self._viewer, layer)
        reviewed = None if reviewed_layer is None else np.asarray(reviewed_layer.data) > 0
        if truth == "changed":
            if base is None:
                raise ValueError(f"{layer.name!r} has no model output to compare with; choose "
                                 "'whole tiles' to export it")
            mask = data != base
            if reviewed is not None:
                mask |= reviewed
            planned, pixels = labelled_tiles(mask, tile, numbers)
            return ExportJob(layer.name, schema, data, root, tiles, base,
                             made_by(layer, reviewed), "changed", reviewed, planned, pixels)
        if mode == "changed":  # whole tiles: those changed since the model or reviewed entirely
            if base is None:
                raise ValueError(f"{layer.name!r} has no model output to compare with; choose "
                                 "'all tiles' or 'these tiles' to export it")
            chosen = set(changed_tiles(data, base, tile))
            if reviewed is not None:
                origins = tile_origins(shape, tile)
                chosen |= {k for k in numbers
                           if reviewed[origins[k][0]:origins[k][0] + tile,
                                       origins[k][1]:origins[k][1] + tile].all()}
            tiles = [k for k in numbers if k in chosen]
            numbers = tiles
        planned, pixels = labelled_tiles(np.ones(shape, bool), tile, numbers)
        return ExportJob(layer.name, schema, data, root, tiles, None, made_by(layer, reviewed),
                         "full", None, planned, pixels)

    def _schedule_plan(self, *_: Any) -> None:
        self._plan_timer.start()

    def _watch_chosen(self) -> None:
        """Recount the plan (debounced) when the user paints on a chosen layer or its marks."""
        chosen = [layer for layer in self._label_layers.value if layer in self._viewer.layers]
        chosen += [marks for layer in chosen
                   if (marks := reviewed_layer_for(self._viewer, layer)) is not None]
        for layer in self._watched:
            if not any(layer is c for c in chosen):
                for name in ("paint", "data", "set_data"):  # set_data: undo
                    getattr(layer.events, name).disconnect(self._schedule_plan)
        for layer in chosen:
            if not any(layer is w for w in self._watched):
                for name in ("paint", "data", "set_data"):  # set_data: undo
                    getattr(layer.events, name).connect(self._schedule_plan)
        self._watched = chosen

    # ---------------------------------------------------------------------------------------------
    def _on_progress(self, progress: tuple[int, int, str]) -> None:
        done, total, name = progress
        if name:
            self._summary.value = f"Writing {name} ({done + 1} of {total})..."

    def _on_done(self, results: list[ExportResult]) -> None:
        self.last_results = list(results)
        text = summary_text(results)
        self._summary.value = text
        show_info(f"Export: {text}")

    def _on_error(self, exc: BaseException) -> None:
        self._summary.value = f"Export failed: {exc}"
        notify_error(exc, "Export training data")

    def _on_finish(self) -> None:
        self._worker = None
        self._export_button.enabled = True
        self._busy.visible = False

    # ---------------------------------------------------------------------------------------------
    # pixel size: the image layer's, shown here; entering one records it on the layer
    # ---------------------------------------------------------------------------------------------
    def _show_pixel_size(self) -> None:
        image = self._image.value
        px, source = layer_pixel_size(image) if image is not None else (None, "unknown")
        if abs(float(self._pixel_size.value) - (px or 0.0)) > 1e-9:  # not while the user types it
            with self._pixel_size.changed.blocked():
                self._pixel_size.value = px or 0.0
        if image is None:
            text = ""
        elif px is None:
            text = "unknown: enter the pixel size (nm); export refuses without it"
        else:
            text = describe_source(source)
        self._pixel_source.value = text

    def _on_pixel_size_entered(self, value: float) -> None:
        enter_pixel_size(self._viewer, self._image.value, value)

    def _on_session_pixel_size(self, image_name: str) -> None:
        image = self._image.value
        if image is not None and image.name == image_name:
            self._show_pixel_size()
            self.update_plan()

    # ---------------------------------------------------------------------------------------------
    def _image_choices(self, _widget: Any = None) -> list[tuple[str, Image]]:
        return [(layer.name, layer) for layer in micrograph_layers(self._viewer)]

    def _labels_choices(self, _widget: Any = None) -> list[tuple[str, Labels]]:
        if getattr(self, "_truth", None) is not None and self._truth.value == "strokes":
            return [(layer.name, layer) for layer in strokes_layers(self._viewer)]
        return [(layer.name, layer) for layer in self._viewer.layers
                if isinstance(layer, Labels) and layer.metadata.get("schema")]

    def _select_default_labels(self, *_: Any) -> None:
        """Choose the image's result layers (``"<image> locations"``, ``"<image> granules"``), or
        its strokes layers."""
        image = self._image.value
        if image is None:
            self._label_layers.value = []
            return
        if self._truth.value == "strokes":
            self._label_layers.value = strokes_layers(self._viewer, image.name)
        else:
            self._label_layers.value = [layer for layer in result_layers(self._viewer)
                                        if layer.metadata[META].get("image") == image.name]

    def _on_image(self, *_: Any) -> None:
        self._select_default_labels()
        self._show_pixel_size()
        self.update_plan()

    def _on_truth(self, value: str) -> None:
        self._truth_help.value = TRUTH_HELP[value]
        with self._label_layers.changed.blocked():
            self._label_layers.reset_choices()
            self._select_default_labels()
        self.update_plan()

    def _on_mode(self, value: str) -> None:
        self._tiles.enabled = value == "these"
        self.update_plan()

    def _on_layers_changed(self, *_: Any) -> None:
        before = self._image.value
        self._image.reset_choices()
        self._label_layers.reset_choices()
        if self._image.value is not before or not self._label_layers.value:
            self._select_default_labels()
        self._show_pixel_size()
        self.update_plan()

    def _on_session_tile_size(self, size: int) -> None:
        if int(self._tile_size.value) != size:
            self._tile_size.value = size
        self.update_plan()


def _numbers(values: list[int]) -> str:
    return ", ".join(str(v) for v in values[:20]) + (" ..." if len(values) > 20 else "")
