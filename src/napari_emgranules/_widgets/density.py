"""The Density dock widget: the per-region granule density table of a pair of labels layers.

The table is a view on the Locations layer's ``features`` (one row per class code): "Measure"
runs :func:`~napari_emgranules.core.measure.measure_labels` in a thread worker and writes the
region columns (:data:`FEATURE_COLUMNS`) into ``features``; the table and the pf/vf bar plot are
redrawn from there. Clicking a row shows only that region in the viewer. With "Update
automatically" on, painting on either layer re-measures after a short pause. The tidy table and
the original tool's text tables can be saved; existing files are never replaced.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label
from napari.layers import Labels
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core.measure import Measurement, ParticleFilter, measure_labels, write_csv, write_seed_tables
from ..core.schema import GRANULES_SCHEMA, LOCATIONS_SCHEMA, ClassSchema
from ._common import (
    KINDS,
    META,
    REVIEWED,
    STROKES,
    USER,
    JobControls,
    describe_source,
    enter_pixel_size,
    get_layer,
    image_layer_of,
    labels_name,
    layer_pixel_size,
    layer_schema,
    notify_error,
    session_for,
    start_worker,
)
from ._plot import BackgroundFigure

if TYPE_CHECKING:
    import napari

logger = logging.getLogger(__name__)

SEED_TILE = 1024
"""Side of the original tool's tiles; seed tables are per tile when the image divides into them."""

DEBOUNCE_MS = 500
"""Pause after the last edit before "Update automatically" re-measures."""

VF_METHODS = ("baskets", "analytical", "none")

FEATURE_COLUMNS: tuple[str, ...] = (
    "area_px", "area_um2", "granule_px", "pf", "pf_se", "vf", "granule_count", "granules_per_um2",
    "mean_diameter_nm", "sd_diameter_nm", "pf_calibrated",
)
"""Region columns written into the Locations layer's ``features`` (NaN for unmeasured codes)."""

# (features column, header, format): "int", "text" or a format spec for floats
TABLE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("letter", "region", "text"),
    ("area_um2", "area (µm²)", ".4g"),
    ("area_px", "area (px)", "int"),
    ("granule_px", "granule area (px)", "int"),
    ("pf", "pf (area fraction)", ".4f"),
    ("pf_se", "pf SE", ".4f"),
    ("pf_calibrated", "pf calibrated", ".4f"),
    ("vf", "vf (volume fraction)", ".4f"),
    ("granule_count", "granules", "int"),
    ("granules_per_um2", "granules per µm²", ".4g"),
    ("mean_diameter_nm", "mean diameter (nm)", ".1f"),
    ("sd_diameter_nm", "SD diameter (nm)", ".1f"),
)
VALUE_ROLE = int(Qt.ItemDataRole.UserRole)  # the unformatted number behind each cell
CODE_ROLE = VALUE_ROLE + 1  # the class code of a row (first column)
MISSING = "–"


class DensityError(ValueError):
    """The chosen layers or settings cannot be measured; the message says what to do."""


@dataclass
class _Job:
    """One measurement: copies of the maps and the arguments of ``measure_labels``."""

    locations_layer: Labels
    granules_layer: Labels
    locations: np.ndarray
    granules: np.ndarray
    kwargs: dict[str, Any]
    key: tuple


@dataclass
class _Result:
    locations_layer: Labels
    granules_layer: Labels
    measurement: Measurement
    letters: tuple[str, ...]
    key: tuple


# -------------------------------------------------------------------------------------------------
# pure helpers (no widgets)
# -------------------------------------------------------------------------------------------------
def _is_2d_labels(layer: Any) -> bool:
    return isinstance(layer, Labels) and layer.ndim == 2 and not getattr(layer, "multiscale", False)


def _kind_of(layer: Labels) -> str:
    """``"locations"``, ``"granules"`` or ``""`` from the layer's metadata, schema or name."""
    kind = layer.metadata.get(META, {}).get("kind")
    if kind in ("locations", "granules"):
        return kind
    schema = layer.metadata.get("schema") or {}
    if schema.get("kind") in ("locations", "granules"):
        return schema["kind"]
    name = layer.name.lower()
    return "locations" if "location" in name else "granules" if "granule" in name else ""


def partner_layer(locations: Labels, layers: list[Labels]) -> Labels | None:
    """The Granules layer that belongs with ``locations``: made for the same image by the
    Segment widget, else the layer whose name has "granules" where this one has "locations"."""
    image = locations.metadata.get(META, {}).get("image")
    if image is not None:
        for layer in layers:
            meta = layer.metadata.get(META, {})
            if meta.get("kind") == "granules" and meta.get("image") == image:
                return layer
    name = locations.name
    at = name.lower().rfind("locations")
    if at >= 0:
        wanted = name[:at] + "granules" + name[at + len("locations"):]
        for layer in layers:
            if layer.name == wanted:
                return layer
    return None


def default_pair(layers: list[Labels]) -> tuple[Labels | None, Labels | None]:
    """The first sensible (Locations, Granules) pair among ``layers``."""
    locations = [layer for layer in layers if _kind_of(layer) == "locations"]
    for loc in locations:
        partner = partner_layer(loc, layers)
        if partner is not None:
            return loc, partner
    loc = locations[0] if locations else None
    granules = [layer for layer in layers if _kind_of(layer) == "granules" and layer is not loc]
    return loc, granules[0] if granules else None


def _image_name(layer: Labels) -> str:
    image = layer.metadata.get(META, {}).get("image")
    if image:
        return str(image)
    name = layer.name
    at = name.lower().rfind(" locations")
    return (name[:at] + name[at + len(" locations"):]).strip() if at >= 0 else name


def _fingerprint(arr: np.ndarray) -> tuple:
    data = np.ascontiguousarray(arr)
    return data.shape, str(data.dtype), hashlib.blake2b(memoryview(data).cast("B"),
                                                         digest_size=16).hexdigest()


def features_with_regions(features: pd.DataFrame, regions: pd.DataFrame,
                          schema: ClassSchema) -> pd.DataFrame:
    """The layer's features (one row per class code) with :data:`FEATURE_COLUMNS` from
    ``regions`` (a density table); codes without a row in ``regions`` get NaN."""
    table = pd.DataFrame(features).copy() if features is not None else pd.DataFrame()
    if "index" not in table.columns or len(table) == 0:
        table = pd.DataFrame({"index": [c.code for c in schema.classes],
                              "class": [c.name for c in schema.classes],
                              "letter": [c.letter for c in schema.classes]})
    table = table.drop(columns=[c for c in FEATURE_COLUMNS if c in table.columns])
    known = set(table["index"].astype(int))
    extra = [c for c in schema.classes if c.code not in known]
    if extra:
        table = pd.concat([table, pd.DataFrame({"index": [c.code for c in extra],
                                                "class": [c.name for c in extra],
                                                "letter": [c.letter for c in extra]})],
                          ignore_index=True)
    by_code = regions.set_index("region_code")
    codes = table["index"].astype(int)
    for column in FEATURE_COLUMNS:
        values = by_code[column].astype(float) if column in by_code else pd.Series(dtype=float)
        table[column] = codes.map(values).astype(float).to_numpy()
    return table.reset_index(drop=True)


def format_value(value: Any, fmt: str) -> str:
    """A table cell's text: integers without decimals, floats by ``fmt``, NaN as a dash."""
    if fmt == "text":
        return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(number):
        return MISSING
    return f"{int(round(number)):d}" if fmt == "int" else format(number, fmt)


# -------------------------------------------------------------------------------------------------
# the widget
# -------------------------------------------------------------------------------------------------
class DensityWidget(QWidget):
    """Per-region granule density of a Locations and a Granules labels layer.

    Public methods (also what the tests drive): :meth:`measure`, :meth:`cancel`,
    :meth:`select_region`, :meth:`show_all`, :meth:`save_csv`, :meth:`save_seed_tables`,
    :meth:`table_frame`; attributes :attr:`measurement`, :attr:`busy`, ``table`` (the
    QTableWidget), ``figure`` (the bar plot), ``locations_combo``, ``granules_combo``,
    ``auto_update``, ``pixel_size``, ``vf_method``.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self._result: _Result | None = None
        self._shown: Labels | None = None  # the layer whose features the table shows
        self._watched: list[Labels] = []
        self._job_id = 0
        self._pending = False
        self._setting = False  # True while the widget sets its own controls
        self._pixel_size_from = "unknown"
        self._pair: tuple[int, int] | None = None  # ids of the chosen layers
        self._warned_pair: tuple[int, int] | None = None  # last pair warned about its pixel size
        self._started = 0.0

        # -- controls (magicgui) --
        self.locations_combo = ComboBox(label="Locations", choices=self._labels_choices, nullable=True,
                                        tooltip="Labels layer of cell regions (A, I, Z, S, N)")
        self.granules_combo = ComboBox(label="Granules", choices=self._labels_choices, nullable=True,
                                       tooltip="Labels layer of granules (0 background, 1 granule)")
        self.pixel_size = FloatSpinBox(label="pixel size (nm)", value=0.0, min=0.0, max=100000.0,
                                       step=0.001, tooltip="0 = unknown: areas in pixels only, "
                                       "no µm², particle sizes or vf")
        self.pixel_size_note = Label(value="")
        self.vf_method = ComboBox(label="vf method", choices=VF_METHODS, value="baskets",
                                  tooltip="pf -> vf by stereology: simulated baskets of granules, "
                                  "the analytical formula, or no vf")
        self.section_nm = FloatSpinBox(label="section (nm)", value=70.0, min=1.0, max=10000.0, step=1.0)
        defaults = ParticleFilter()
        self.min_diameter = FloatSpinBox(label="min diameter (nm)", value=defaults.min_diameter_nm,
                                         min=0.0, max=10000.0, step=1.0)
        self.max_diameter = FloatSpinBox(label="max diameter (nm)", value=defaults.max_diameter_nm,
                                         min=0.0, max=10000.0, step=1.0)
        self.min_circularity = FloatSpinBox(label="min circularity", value=defaults.min_circularity,
                                            min=0.0, max=1.0, step=0.05)
        self.calibration = FileEdit(label="pf calibration", mode="r", filter="*.json", value="",
                                    tooltip="optional: a fit of your manual point counts (emgranules "
                                            "grid --fit-calibration); adds 'pf calibrated'")
        self.auto_update = CheckBox(value=True, text="Update automatically",
                                    tooltip="re-measure after painting on either layer")
        self.job = JobControls("Measure", stages=("measuring",))
        self.form = Container(widgets=[
            self.locations_combo, self.granules_combo, self.pixel_size, self.pixel_size_note,
            self.vf_method, self.section_nm, self.min_diameter, self.max_diameter,
            self.min_circularity, self.calibration, self.auto_update])

        # -- table, plot, buttons (Qt) --
        self.shown_label = Label(value="Nothing measured yet.")
        self.notes_label = Label(value="")
        self.notes_label.native.setWordWrap(True)
        self.table = QTableWidget(0, len(TABLE_COLUMNS))
        self.table.setHorizontalHeaderLabels([header for _, header, _ in TABLE_COLUMNS])
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.verticalHeader().setVisible(False)
        self.table.setMinimumHeight(170)
        self.show_all_button = QPushButton("Show all regions")
        self.save_csv_button = QPushButton("Save CSV...")
        self.save_seed_button = QPushButton("Save seed tables...")
        self.save_objects_button = QPushButton("Save particles...")
        for button in (self.save_csv_button, self.save_seed_button, self.save_objects_button):
            button.setEnabled(False)
        self.save_objects_button.setToolTip("the granule particles as QuPath objects (.geojson) and a "
                                            "Fiji ROI set (.roi.zip) (never replaces files)")
        self.save_csv_button.setToolTip("the tidy per-region table (never replaces a file)")
        self.save_seed_button.setToolTip("the original tool's two text tables, per 1024 px tile when "
                                         "the image divides into them (never replaces files)")
        self.plot = BackgroundFigure(height=220)
        self.figure = self.plot.figure
        self.figure.add_subplot(111)

        buttons = QHBoxLayout()
        for button in (self.show_all_button, self.save_csv_button, self.save_seed_button,
                       self.save_objects_button):
            buttons.addWidget(button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.form.native)
        layout.addWidget(self.job.native)
        layout.addWidget(self.shown_label.native)
        layout.addWidget(self.table)
        layout.addLayout(buttons)
        layout.addWidget(self.plot)
        layout.addWidget(self.notes_label.native)

        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(DEBOUNCE_MS)
        self._timer.timeout.connect(self._auto_measure)

        # -- callbacks --
        self.job.run_button.changed.connect(self.measure)
        self.job.cancel_button.changed.connect(self.cancel)
        self.locations_combo.changed.connect(self._on_locations_chosen)
        self.granules_combo.changed.connect(self._on_granules_chosen)
        self.pixel_size.changed.connect(self._on_pixel_size_edited)
        for widget in (self.vf_method, self.section_nm, self.min_diameter, self.max_diameter,
                       self.min_circularity):
            widget.changed.connect(self._schedule)
        self.auto_update.changed.connect(self._on_auto_toggled)
        self.table.cellClicked.connect(self._on_cell_clicked)
        self.show_all_button.clicked.connect(self.show_all)
        self.save_csv_button.clicked.connect(lambda: self.save_csv())
        self.save_seed_button.clicked.connect(lambda: self.save_seed_tables())
        self.save_objects_button.clicked.connect(lambda: self.save_objects())
        self.viewer.layers.events.inserted.connect(self._on_layers_changed)
        self.viewer.layers.events.removed.connect(self._on_layers_changed)
        self.viewer.layers.selection.events.active.connect(self._on_active_layer)
        session_for(self.viewer).pixel_size_changed.connect(self._on_session_pixel_size)
        for layer in self.viewer.layers:
            layer.events.name.connect(self._on_layer_renamed)
        self._refresh_choices()

    # ---------------------------------------------------------------------------------------------
    # public
    # ---------------------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """True while a measurement runs."""
        return self.job.busy

    @property
    def measurement(self) -> Measurement | None:
        """The latest measurement shown in the table (None before the first)."""
        return self._result.measurement if self._result is not None else None

    def measure(self) -> Any:
        """Measure the chosen pair in a thread worker; returns the worker (None on bad input)."""
        return self._start(auto=False)

    def cancel(self) -> None:
        """Drop the running measurement's result (the table stays as it is)."""
        if not self.busy:
            return
        self._job_id += 1
        self._pending = False
        self.job.finish("Cancelled; the table was not changed.")

    def select_region(self, code: int | None) -> None:
        """Show only region ``code`` of the measured Locations layer (again: show all)."""
        layer = self._shown
        if layer is None or layer not in self.viewer.layers:
            return
        if code is None or (layer.show_selected_label and layer.selected_label == code):
            self.show_all()
            return
        layer.selected_label = int(code)
        layer.show_selected_label = True
        row = self._row_of(int(code))
        if row is not None and self.table.currentRow() != row:
            self.table.selectRow(row)

    def show_all(self) -> None:
        """Show every region again."""
        if self._shown is not None and self._shown in self.viewer.layers:
            self._shown.show_selected_label = False
        self.table.clearSelection()

    def table_frame(self) -> pd.DataFrame:
        """What the table shows, as numbers (column names as in ``features``)."""
        rows = []
        for r in range(self.table.rowCount()):
            rows.append({column: self.table.item(r, c).data(VALUE_ROLE)
                         for c, (column, _, _) in enumerate(TABLE_COLUMNS)})
        frame = pd.DataFrame(rows, columns=[column for column, _, _ in TABLE_COLUMNS])
        frame.insert(0, "index", [self.table.item(r, 0).data(CODE_ROLE)
                                  for r in range(self.table.rowCount())])
        return frame

    def save_csv(self, path: str | Path | None = None) -> Path | None:
        """Write the tidy per-region table (whole image, then seed tiles) to ``path`` (a dialog
        asks when None). Refuses to replace an existing file. Returns the path written."""
        if self._result is None:
            show_warning("Density: measure first; there is no table to save")
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(
                self, "Save density table", f"{self._result.measurement.regions['image'].iat[0]}"
                " density.csv", "CSV files (*.csv)",
                options=QFileDialog.Option.DontConfirmOverwrite)
            if not path:
                return None
        path = Path(path)
        if path.exists():
            show_error(f"Density: {path} exists already; nothing was written. Pick another name.")
            return None
        try:
            written = write_csv(self._result.measurement.tables(), path)
        except (OSError, ValueError) as exc:
            notify_error(exc, "Save density table")
            return None
        show_info(f"Density table saved to {written}")
        return written

    def save_objects(self, path: str | Path | None = None) -> tuple[Path, Path] | None:
        """Write the granule particles as ``<path>.geojson`` (QuPath) and ``<path>.roi.zip``
        (Fiji's ROI Manager), outlines in pixels; a dialog asks when ``path`` is None. Refuses to
        replace existing files. Returns the two paths."""
        from ..core.objects import particles_geojson, particles_imagej_rois, write_geojson, write_imagej_rois

        m = self._result.measurement if self._result is not None else None
        if m is None or m.particle_map is None:
            show_warning("Density: measure first, with a pixel size; there are no particles to save")
            return None
        image = str(m.regions["image"].iat[0])
        if path is None:
            path, _ = QFileDialog.getSaveFileName(
                self, "Save granule particles", f"{image}.geojson", "GeoJSON (*.geojson)",
                options=QFileDialog.Option.DontConfirmOverwrite)
            if not path:
                return None
        base = str(path)
        for suffix in (".geojson", ".roi.zip"):
            base = base[:-len(suffix)] if base.lower().endswith(suffix) else base
        targets = (Path(base + ".geojson"), Path(base + ".roi.zip"))
        taken = [t for t in targets if t.exists()]
        if taken:
            show_error(f"Density: {taken[0]} exists already; nothing was written. Pick another name.")
            return None
        px = float(m.regions["pixel_size_nm"].iat[0])
        try:
            written = (write_geojson(particles_geojson(m.particle_map, m.particles, pixel_size_nm=px,
                                                       image=image), targets[0]),
                       write_imagej_rois(particles_imagej_rois(m.particle_map, m.particles), targets[1]))
        except (OSError, ValueError) as exc:
            notify_error(exc, "Save granule particles")
            return None
        show_info(f"{len(m.particles)} granule particles saved to {written[0]} and {written[1]}")
        return written

    def save_seed_tables(self, folder: str | Path | None = None) -> tuple[Path, Path] | None:
        """Write the original tool's two text tables into ``folder`` (a dialog asks when None):
        per 1024 px tile when the image divides into such tiles, else for the whole image.
        Refuses to replace existing tables. Returns the two paths."""
        if self._result is None:
            show_warning("Density: measure first; there are no tables to save")
            return None
        if folder is None:
            folder = QFileDialog.getExistingDirectory(self, "Folder for the seed text tables")
            if not folder:
                return None
        m = self._result.measurement
        rows = m.tiles if m.tiles is not None else m.regions
        try:
            paths = write_seed_tables(rows, folder, letters=self._result.letters)
        except FileExistsError as exc:
            show_error(f"Density: {exc.args[0].split(':')[0]} exists already; nothing was written. "
                       "Pick another folder.")
            return None
        except (OSError, ValueError) as exc:
            notify_error(exc, "Save seed tables")
            return None
        per = f"per {SEED_TILE} px tile" if m.tiles is not None else "for the whole image"
        show_info(f"Seed tables ({per}) saved to {Path(folder)}")
        return paths

    # ---------------------------------------------------------------------------------------------
    # layer choices
    # ---------------------------------------------------------------------------------------------
    def _labels_choices(self, _widget: Any = None) -> list[tuple[str, Labels]]:
        # not Review's reviewed marks or strokes: they are no class maps
        return [(layer.name, layer) for layer in self.viewer.layers if _is_2d_labels(layer)
                and REVIEWED not in layer.metadata and STROKES not in layer.metadata]

    def _refresh_choices(self) -> None:
        layers = [layer for _, layer in self._labels_choices()]
        old_loc, old_gra = self._current(self.locations_combo), self._current(self.granules_combo)
        self._setting = True
        try:
            for combo in (self.locations_combo, self.granules_combo):
                combo.reset_choices()
            loc = old_loc if any(old_loc is layer for layer in layers) else None
            gra = old_gra if any(old_gra is layer for layer in layers) else None
            if loc is None:
                loc, partner = self._active_pair()
                if loc is None:
                    loc, partner = default_pair(layers)
                gra = gra if gra is not None and partner is None else partner
            if gra is None and loc is not None:
                gra = partner_layer(loc, layers) or default_pair(layers)[1]
            self.locations_combo.value = loc
            self.granules_combo.value = gra if gra is not loc else None
        finally:
            self._setting = False
        self._on_pair_changed()

    def _micrograph_path(self, loc: Labels) -> str:
        """The file of the micrograph ``loc`` was made from (or of ``loc`` itself), "" if none."""
        for layer in (image_layer_of(self.viewer, loc), loc):
            if layer is not None:
                path = layer.metadata.get("path") or getattr(layer.source, "path", None)
                if path:
                    return str(path)
        return ""

    def _active_pair(self) -> tuple[Labels | None, Labels | None]:
        """The result layers of the micrograph the user works on (selected, or made from it)."""
        active = self.viewer.layers.selection.active
        image = image_layer_of(self.viewer, active) if active is not None else None
        if image is None:
            return None, None
        choices = [layer for _, layer in self._labels_choices()]
        pair = [get_layer(self.viewer, labels_name(image.name, kind)) for kind in KINDS]
        loc, gra = (layer if any(layer is c for c in choices) else None for layer in pair)
        return loc, gra

    def _on_active_layer(self, _event: Any = None) -> None:
        """Follow the user: selecting a micrograph or one of its layers measures its results."""
        if self.job.busy:
            return
        loc, gra = self._active_pair()
        if loc is None or loc is self._current(self.locations_combo):
            return
        self._setting = True
        try:
            self.locations_combo.value = loc
            self.granules_combo.value = gra
        finally:
            self._setting = False
        self._on_pair_changed()

    def _current(self, combo: ComboBox) -> Labels | None:
        value = combo.value
        return value if isinstance(value, Labels) and value in self.viewer.layers else None

    def _on_layers_changed(self, event: Any = None) -> None:
        layer = getattr(event, "value", None)
        if layer is not None and event.type == "inserted":
            layer.events.name.connect(self._on_layer_renamed)
        elif layer is not None and event.type == "removed":
            layer.events.name.disconnect(self._on_layer_renamed)
            if layer is self._shown:
                self._show_features(None)
                self.shown_label.value = f"{layer.name} was removed."
            if self._result is not None and layer in (self._result.locations_layer,
                                                      self._result.granules_layer):
                self._result = None
                self._update_buttons()
        self._refresh_choices()

    def _on_layer_renamed(self, event: Any = None) -> None:
        self._refresh_choices()
        if self._shown is not None:
            self._describe_shown()

    def _on_locations_chosen(self, value: Any = None) -> None:
        if self._setting:
            return
        loc = self._current(self.locations_combo)
        if loc is not None:
            partner = partner_layer(loc, [layer for _, layer in self._labels_choices()])
            if partner is not None and partner is not self.granules_combo.value:
                self._setting = True
                try:
                    self.granules_combo.value = partner
                finally:
                    self._setting = False
        self._on_pair_changed()

    def _on_granules_chosen(self, value: Any = None) -> None:
        if not self._setting:
            self._on_pair_changed()

    def _on_pair_changed(self) -> None:
        """Watch the chosen layers for edits, take their pixel size, and re-measure if automatic."""
        loc, gra = self._current(self.locations_combo), self._current(self.granules_combo)
        pair = (id(loc), id(gra))
        if pair == self._pair:
            return  # e.g. another layer was added: keep the settings (a typed pixel size)
        self._pair = pair
        self._watch([layer for layer in (loc, gra) if layer is not None])
        self._take_pixel_size(loc, gra)
        self._schedule()

    def _watch(self, layers: list[Labels]) -> None:
        for layer in self._watched:
            if not any(layer is other for other in layers):
                for name in ("paint", "data", "set_data"):
                    emitter = getattr(layer.events, name, None)
                    if emitter is not None:
                        emitter.disconnect(self._on_layer_edited)
        for layer in layers:
            if not any(layer is other for other in self._watched):
                # set_data also fires on redraws; the fingerprint check skips those
                for name in ("paint", "data", "set_data"):
                    emitter = getattr(layer.events, name, None)
                    if emitter is not None:
                        emitter.connect(self._on_layer_edited)
        self._watched = list(layers)

    def _take_pixel_size(self, loc: Labels | None, gra: Labels | None) -> None:
        px, source = None, "unknown"
        sizes = [layer_pixel_size(layer) for layer in (loc, gra) if layer is not None]
        for size, where in sizes:
            if size:
                px, source = size, where
                break
        known = {round(s, 6) for s, _ in sizes if s}
        self._setting = True
        try:
            self.pixel_size.value = px or 0.0
        finally:
            self._setting = False
        self._pixel_size_from = source
        if len(known) > 1:
            self.pixel_size_note.value = (f"the layers disagree ({' vs '.join(map(str, sorted(known)))} "
                                          "nm); using the Locations layer's")
        elif px:
            self.pixel_size_note.value = ("entered by you" if source == USER
                                          else f"from the layers ({describe_source(source)})")
        elif loc is not None:
            self.pixel_size_note.value = "unknown: enter it, or areas are in pixels only"
        else:
            self.pixel_size_note.value = ""

    def _on_pixel_size_edited(self, value: Any = None) -> None:
        if self._setting:
            return
        self._pixel_size_from = USER
        self.pixel_size_note.value = "entered by you" if self.pixel_size.value else \
            "unknown: areas in pixels only"
        loc = self._current(self.locations_combo)
        image = image_layer_of(self.viewer, loc) if loc is not None else None
        enter_pixel_size(self.viewer, image, self.pixel_size.value)  # the micrograph keeps it for all
        self._schedule()

    def _on_session_pixel_size(self, image_name: str) -> None:
        """Another widget recorded a pixel size for a micrograph: take it if it is the chosen pair's."""
        loc, gra = self._current(self.locations_combo), self._current(self.granules_combo)
        image = image_layer_of(self.viewer, loc) if loc is not None else None
        if image is None or image.name != image_name:
            return
        px, _ = layer_pixel_size(loc)
        if px is not None and abs(px - float(self.pixel_size.value)) > 1e-9:
            self._take_pixel_size(loc, gra)
            self._schedule()

    # ---------------------------------------------------------------------------------------------
    # measuring
    # ---------------------------------------------------------------------------------------------
    def _on_layer_edited(self, event: Any = None) -> None:
        self._schedule()

    def _on_auto_toggled(self, value: bool) -> None:
        if value:
            self._schedule()
        else:
            self._timer.stop()

    def _schedule(self, *_: Any) -> None:
        if self._setting or not self.auto_update.value:
            return
        self._timer.start()  # restarts: measures DEBOUNCE_MS after the last edit

    def _auto_measure(self) -> None:
        if not self.auto_update.value:
            return
        if self.busy:
            self._pending = True
            return
        loc, gra = self._current(self.locations_combo), self._current(self.granules_combo)
        if loc is None or gra is None:
            return
        key = self._key(loc, gra)
        if self._result is not None and self._result.key == key:
            return  # nothing changed since the table was made (e.g. a redraw)
        self._start(auto=True, key=key)

    def _key(self, loc: Labels, gra: Labels) -> tuple:
        return (id(loc), id(gra), _fingerprint(np.asarray(loc.data)), _fingerprint(np.asarray(gra.data)),
                self._settings())

    def _settings(self) -> tuple:
        return (round(float(self.pixel_size.value), 9), self.vf_method.value,
                float(self.section_nm.value), float(self.min_diameter.value),
                float(self.max_diameter.value), float(self.min_circularity.value))

    def _prepare(self, key: tuple | None = None) -> _Job:
        """Check the chosen layers and settings; raises :class:`DensityError` saying what is wrong."""
        loc, gra = self._current(self.locations_combo), self._current(self.granules_combo)
        if loc is None or gra is None:
            raise DensityError("choose a Locations and a Granules labels layer (segment a micrograph "
                               "first, or open the sample)")
        if loc is gra:
            raise DensityError(f"{loc.name!r} is chosen as both Locations and Granules; choose the "
                               "granules layer")
        loc_data, gra_data = np.asarray(loc.data), np.asarray(gra.data)
        if loc_data.shape != gra_data.shape:
            raise DensityError(f"{loc.name!r} ({loc_data.shape[0]} x {loc_data.shape[1]} px) and "
                               f"{gra.name!r} ({gra_data.shape[0]} x {gra_data.shape[1]} px) differ in "
                               "size; choose the two layers of one micrograph")
        schema = layer_schema(loc) or LOCATIONS_SCHEMA
        if not schema.measured_codes:
            raise DensityError(f"{loc.name!r}: its schema measures no region")
        schema.check_labels(loc_data, loc.name)
        GRANULES_SCHEMA.check_labels(gra_data, f"{gra.name} (granules: 0 = background, 1 = granule)")
        filters = ParticleFilter(float(self.min_diameter.value), float(self.max_diameter.value),
                                 float(self.min_circularity.value))
        px = float(self.pixel_size.value) or None
        vf = self.vf_method.value
        h, w = loc_data.shape
        kwargs = dict(
            pixel_size_nm=px, pixel_size_source=self._pixel_size_from if px else "unknown",
            schema=schema, image=_image_name(loc), path=self._micrograph_path(loc),
            tile=SEED_TILE if h % SEED_TILE == 0 and w % SEED_TILE == 0 else None, filters=filters,
            section_nm=None if vf == "none" else float(self.section_nm.value),
            vf_method="baskets" if vf == "none" else vf,
        )
        calibration = str(self.calibration.value or "").strip()
        if calibration and calibration != "." and not Path(calibration).is_dir():
            from ..core.pointgrid import PfCalibration

            kwargs["pf_calibration"] = PfCalibration.load(calibration)  # a bad file: a message
        key = key or self._key(loc, gra)
        letters = tuple(schema.letters[c] for c in schema.measured_codes)
        return _Job(loc, gra, loc_data.copy(), gra_data.copy(), {**kwargs, "letters": letters}, key)

    def _start(self, auto: bool, key: tuple | None = None) -> Any:
        if self.busy:
            self._pending = True
            return None
        self._timer.stop()
        try:
            job = self._prepare(key)
        except ValueError as exc:
            notify_error(exc, "Density")
            return None
        pair = (id(job.locations_layer), id(job.granules_layer))
        if job.kwargs["pixel_size_nm"] is None and (not auto or pair != self._warned_pair):
            self._warned_pair = pair
            show_warning(f"Density: the pixel size of {job.locations_layer.name!r} is unknown, so areas "
                         "are in pixels only (no µm², particle counts, sizes or vf). Enter the pixel "
                         "size (nm) to get them.")
        self._job_id += 1
        self._pending = False
        self._started = time.perf_counter()
        self.job.start(f"Measuring {job.locations_layer.name} ...")
        bar = self.job.bars["measuring"]
        bar.max = 0  # a busy indicator: measuring takes seconds and has no steps
        kwargs = dict(job.kwargs)
        letters = kwargs.pop("letters")
        return start_worker(
            measure_labels, job.locations, job.granules, **kwargs,
            on_return=functools.partial(self._on_measured, self._job_id, job, letters),
            on_error=functools.partial(self._on_failed, self._job_id),
            on_finish=functools.partial(self._on_finished, self._job_id),
        )

    def _on_measured(self, job_id: int, job: _Job, letters: tuple[str, ...],
                     measurement: Measurement) -> None:
        if job_id != self._job_id:
            return  # cancelled or superseded
        layers = self.viewer.layers
        if job.locations_layer not in layers or job.granules_layer not in layers:
            self.job.finish("The layers were removed while measuring.")
            return
        schema = layer_schema(job.locations_layer) or LOCATIONS_SCHEMA
        self._result = _Result(job.locations_layer, job.granules_layer, measurement, letters, job.key)
        job.locations_layer.features = features_with_regions(job.locations_layer.features,
                                                             measurement.regions, schema)
        self._show_features(job.locations_layer)
        seconds = time.perf_counter() - self._started
        self.job.finish(f"Measured in {seconds:.1f} s.")
        calibrated = measurement.regions.get("pf_calibration")
        state = [f"pf calibrated with {', '.join(sorted(set(calibrated.astype(str))))}"] \
            if calibrated is not None else []
        self.notes_label.value = "\n".join([*state, *measurement.notes])
        self._update_buttons()

    def _on_failed(self, job_id: int, exc: BaseException) -> None:
        if job_id == self._job_id:
            notify_error(exc, "Density")

    def _on_finished(self, job_id: int) -> None:
        if job_id != self._job_id:
            return
        if self.busy:
            self.job.finish(self.job.status.value if self._result else "")
        if self._pending:
            self._pending = False
            self._schedule()

    # ---------------------------------------------------------------------------------------------
    # the table and the plot: views on the layer's features
    # ---------------------------------------------------------------------------------------------
    def _show_features(self, layer: Labels | None) -> None:
        if self._shown is not None and self._shown is not layer:
            self._shown.events.features.disconnect(self._on_features_changed)
            if self._shown in self.viewer.layers:
                self._shown.show_selected_label = False
        if layer is not None and layer is not self._shown:
            layer.events.features.connect(self._on_features_changed)
        self._shown = layer
        self._fill_table()
        self._draw_plot()
        self._describe_shown()

    def _describe_shown(self) -> None:
        if self._shown is None:
            self.shown_label.value = "Nothing measured yet."
        elif self._result is not None:
            px = self._result.measurement.regions["pixel_size_nm"].iat[0]
            unit = f"{px:g} nm/px" if math.isfinite(px) else "pixel size unknown"
            self.shown_label.value = (f"{self._result.locations_layer.name} + "
                                      f"{self._result.granules_layer.name} ({unit})")

    def _on_features_changed(self, event: Any = None) -> None:
        self._fill_table()
        self._draw_plot()

    def _measured_rows(self) -> pd.DataFrame:
        if self._shown is None:
            return pd.DataFrame(columns=["index", *FEATURE_COLUMNS])
        features = self._shown.features
        if "area_px" not in features.columns or "index" not in features.columns:
            return features.iloc[0:0]
        return features[features["area_px"].notna()]

    def _fill_table(self) -> None:
        rows = self._measured_rows()
        self.table.setRowCount(len(rows))
        for r, (_, row) in enumerate(rows.iterrows()):
            for c, (column, _, fmt) in enumerate(TABLE_COLUMNS):
                value = row.get(column, np.nan)
                if column == "letter":
                    text = f"{row.get('letter', '')}  {row.get('class', '')}".strip()
                    item = QTableWidgetItem(text)
                    item.setData(VALUE_ROLE, str(row.get("letter", "")))
                    item.setData(CODE_ROLE, int(row["index"]))
                else:
                    item = QTableWidgetItem(format_value(value, fmt))
                    item.setData(VALUE_ROLE, float(value) if value is not None else math.nan)
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.table.setItem(r, c, item)

    def _row_of(self, code: int) -> int | None:
        for r in range(self.table.rowCount()):
            if self.table.item(r, 0).data(CODE_ROLE) == code:
                return r
        return None

    def _on_cell_clicked(self, row: int, column: int) -> None:
        self.select_region(self.table.item(row, 0).data(CODE_ROLE))

    def _update_buttons(self) -> None:
        for button in (self.save_csv_button, self.save_seed_button, self.save_objects_button):
            button.setEnabled(self._result is not None)

    def _draw_plot(self) -> None:
        self.plot.redraw(self._update_plot)

    def _update_plot(self, _figure: Any) -> None:
        rows = self._measured_rows()
        ax = self.figure.axes[0]
        ax.clear()
        if len(rows):
            x = np.arange(len(rows))
            pf = rows["pf"].to_numpy(dtype=float)
            vf = rows["vf"].to_numpy(dtype=float)
            ax.bar(x - 0.2, np.nan_to_num(pf), width=0.4, label="pf (area fraction)", color="#4363d8")
            if np.isfinite(vf).any():
                ax.bar(x + 0.2, np.nan_to_num(vf), width=0.4, label="vf (volume fraction)",
                       color="#f58231")
            ax.set_xticks(x, [str(v) for v in rows["letter"]])
            ax.legend(fontsize="small", loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=2,
                      frameon=False)
        ax.set_xlabel("region")
        ax.set_ylabel("granule fraction")
