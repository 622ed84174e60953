"""Export training data: tiles of a micrograph and its corrected label layers as training pairs.

Each chosen labels layer goes to ``<folder>/<kind>`` (``locations``, ``granules``: one training set
per model, each with its own ``manifest.csv`` and ``schema.json``) through
:func:`napari_emgranules.core.dataset.export_training_pairs`, which never overwrites a file. The
writing runs in a thread worker; everything the widget can check is checked before anything is
written.
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

from ..core.dataset import MIN_TILE_SIDE_PX, TrainingPair, check_export_folder, export_training_pairs
from ..core.schema import ClassSchema
from ._common import (
    META,
    changed_tiles,
    has_corrections,
    layer_pixel_size,
    layer_schema,
    micrograph_layers,
    model_output,
    notify_error,
    parse_tiles,
    result_layers,
    session_for,
    start_worker,
    tile_origins,
)

if TYPE_CHECKING:
    import napari

MODES = (("changed since the model", "changed"), ("all tiles", "all"), ("these tiles", "these"))
_UNSAFE = re.compile(r"[^\w.-]+")


@dataclass
class ExportJob:
    """One labels layer to write: what the worker needs, copied on the main thread."""

    layer_name: str
    schema: ClassSchema
    labels: np.ndarray
    root: Path
    tiles: str | list[int]
    only_changed_from: np.ndarray | None
    made_by: str


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


def made_by(layer: Labels) -> str:
    """``"corrected"`` when the user painted on a result layer, else what made the labels."""
    if META not in layer.metadata:
        return str(layer.metadata.get("made_by") or "unknown")
    return "corrected" if has_corrections(layer) else model_description(layer)


def write_training_sets(image: np.ndarray, jobs: list[ExportJob], *, tile_size: int,
                        pixel_size_nm: float | None, source: str
                        ) -> Generator[tuple[int, int, str], None, list[ExportResult]]:
    """Write each job's pairs; yields ``(done, total, layer name)``; returns one result per job.

    All jobs are checked (label codes, existing schemas) before the first file is written.
    """
    for job in jobs:
        job.schema.check_labels(job.labels, f"labels layer {job.layer_name!r}")
        check_export_folder(job.root, job.schema)
    origins = tile_origins(image.shape, tile_size)
    results = []
    for done, job in enumerate(jobs):
        yield done, len(jobs), job.layer_name
        pairs = export_training_pairs(
            image, job.labels, job.root, schema=job.schema, tiles=job.tiles, tile_size=tile_size,
            only_changed_from=job.only_changed_from, source=source, made_by=job.made_by,
            pixel_size_nm=pixel_size_nm)
        tiles = [origins.index(pair.origin) for pair in pairs if pair.origin in origins]
        results.append(ExportResult(job.layer_name, job.root, tiles, pairs))
    yield len(jobs), len(jobs), ""
    return results


def summary_text(results: list[ExportResult]) -> str:
    lines = []
    for r in results:
        if r.pairs:
            lines.append(f"{r.layer_name}: {len(r.pairs)} pair{'s' * (len(r.pairs) != 1)} "
                         f"(tiles {', '.join(map(str, r.tiles))}) -> {r.root}")
        else:
            lines.append(f"{r.layer_name}: nothing to write (no changed tile large enough)")
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
        self._label_layers = Select(label="Label layers", choices=self._labels_choices,
                              tooltip="Corrected label layers (each goes to <folder>/<kind>)")
        self._mode = RadioButtons(label="Tiles", choices=MODES, value="changed")
        self._tiles = LineEdit(label="Tile numbers", value="", enabled=False,
                               tooltip="e.g. 3, 5, 7-9 (numbered row by row on the tile grid)")
        self._tile_size = SpinBox(label="Tile size (px)", min=MIN_TILE_SIDE_PX, max=16384, step=128,
                                  value=self._session.tile_size)
        self._folder = FileEdit(label="Output folder", mode="d", nullable=True)
        self._export_button = PushButton(text="Export training pairs")
        self._busy = ProgressBar(min=0, max=0, value=0, visible=False, label="writing")
        self._summary = Label(value="")
        super().__init__(widgets=[self._image, self._label_layers, self._mode, self._tiles, self._tile_size,
                                  self._folder, self._export_button, self._busy, self._summary])

        self._image.changed.connect(self._select_default_labels)
        self._mode.changed.connect(lambda value: setattr(self._tiles, "enabled", value == "these"))
        self._tile_size.changed.connect(self._session.set_tile_size)
        self._session.tile_size_changed.connect(self._on_session_tile_size)
        self._export_button.clicked.connect(self.export)
        for event in ("inserted", "removed", "reordered"):
            getattr(napari_viewer.layers.events, event).connect(self._on_layers_changed)
        self._select_default_labels()

    @property
    def busy(self) -> bool:
        """True while an export is being written."""
        return self._worker is not None

    @property
    def summary(self) -> str:
        return str(self._summary.value)

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
        self._export_button.enabled = False
        self._busy.visible = True
        self._summary.value = f"Writing {len(jobs)} training set(s)..."
        self._worker = start_worker(
            write_training_sets, image, jobs, tile_size=self._session.tile_size,
            pixel_size_nm=pixel_size, source=source,
            on_yield=self._on_progress, on_return=self._on_done, on_error=self._on_error,
            on_finish=self._on_finish)
        return self._worker

    def _plan(self) -> tuple[np.ndarray, list[ExportJob], float | None, str]:
        """What to write, checked; raises ValueError with what to do."""
        image = self._image.value
        if not isinstance(image, Image) or image not in self._viewer.layers:
            raise ValueError("no image layer chosen; open a micrograph first")
        layers = [layer for layer in self._label_layers.value if layer in self._viewer.layers]
        if not layers:
            raise ValueError("no label layers chosen; pick the corrected locations and/or granules layers")
        folder = self._folder.value
        if folder is None or not str(folder).strip():
            raise ValueError("no output folder chosen; pick one under 'Output folder'")
        folder = Path(folder).expanduser()
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"{folder} is a file; choose a folder")
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
        chosen: str | list[int] = "all"
        if mode == "these":
            chosen = parse_tiles(str(self._tiles.value))
            if not chosen:
                raise ValueError("type the tile numbers to export, e.g. 3, 5, 7-9")
            wrong = [k for k in chosen if k >= len(origins)]
            if wrong:
                raise ValueError(f"no tile {_numbers(wrong)}: {image.name!r} cut into {tile} px tiles has "
                                 f"tiles 0..{len(origins) - 1} (numbered row by row)")
            small = [k for k in chosen if not usable(k)]
            if small:
                raise ValueError(f"tile(s) {_numbers(small)} are edge tiles smaller than {MIN_TILE_SIDE_PX} "
                                 "px on a side; leave them out")

        jobs: list[ExportJob] = []
        unchanged = []
        for layer in layers:
            schema = layer_schema(layer)
            if schema is None:
                raise ValueError(f"{layer.name!r} has no class schema; choose a layer made by Segment")
            labels = np.array(layer.data)  # a copy: the user may paint on while the worker writes
            if labels.shape != shape:
                raise ValueError(f"{layer.name!r} is {labels.shape[0]} x {labels.shape[-1]} px but the "
                                 f"image {image.name!r} is {shape[0]} x {shape[1]} px; choose the labels "
                                 "of this image")
            base = None
            if mode == "changed":
                base = model_output(layer)
                if base is None or base.shape != shape:
                    raise ValueError(f"{layer.name!r} has no model output to compare with; choose "
                                     "'all tiles' or 'these tiles' to export it")
                if not [k for k in changed_tiles(labels, base, tile) if usable(k)]:
                    unchanged.append(layer.name)
                    continue
            root = folder / (_UNSAFE.sub("_", schema.kind).strip("._") or "labels")
            jobs.append(ExportJob(layer.name, schema, labels, root, chosen, base, made_by(layer)))
        if not jobs:
            raise ValueError(f"empty export selection: nothing changed since the model in "
                             f"{', '.join(repr(n) for n in unchanged)}; paint corrections first or "
                             "choose 'all tiles'")
        if unchanged:
            show_info(f"Export: nothing changed in {', '.join(repr(n) for n in unchanged)}; not written")
        pixel_size, _ = layer_pixel_size(image)
        if pixel_size is None:
            show_warning(f"Export: {image.name!r} has no pixel size; the pairs record the default 0.8 nm")
        source = str(image.metadata.get("path") or image.name)
        return data, jobs, pixel_size, source

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
    def _image_choices(self, _widget: Any = None) -> list[tuple[str, Image]]:
        return [(layer.name, layer) for layer in micrograph_layers(self._viewer)]

    def _labels_choices(self, _widget: Any = None) -> list[tuple[str, Labels]]:
        return [(layer.name, layer) for layer in self._viewer.layers
                if isinstance(layer, Labels) and layer.metadata.get("schema")]

    def _select_default_labels(self, *_: Any) -> None:
        """Choose the image's result layers (``"<image> locations"``, ``"<image> granules"``)."""
        image = self._image.value
        if image is None:
            self._label_layers.value = []
            return
        self._label_layers.value = [layer for layer in result_layers(self._viewer)
                              if layer.metadata[META].get("image") == image.name]

    def _on_layers_changed(self, *_: Any) -> None:
        before = self._image.value
        self._image.reset_choices()
        self._label_layers.reset_choices()
        if self._image.value is not before or not self._label_layers.value:
            self._select_default_labels()

    def _on_session_tile_size(self, size: int) -> None:
        if int(self._tile_size.value) != size:
            self._tile_size.value = size


def _numbers(values: list[int]) -> str:
    return ", ".join(str(v) for v in values[:20]) + (" ..." if len(values) > 20 else "")
