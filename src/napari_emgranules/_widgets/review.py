"""Review and correct: follow the user's corrections of a result layer, tile by tile.

napari's own paint, fill and erase tools do the painting, and click tools (:mod:`.clicks`) add or
remove granules and refill regions in one click each. This widget shows which tiles differ from
the model's output, ranks the tiles by the model's confidence (least sure first) and moves the view
from one to the next, and offers helpers that go through napari's undo history
(``Labels.data_setitem``), so Ctrl+Z reverts them like a brush stroke.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, Label, PushButton, SpinBox
from napari.layers import Image, Labels
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import QTimer

from .._layers import stroke_colors, stroke_features, strokes_dtype
from ..core.dataset import MIN_TILE_SIDE_PX
from ._common import (
    META,
    REVIEWED,
    STROKES,
    changed_tiles,
    choose,
    get_layer,
    image_layer_of,
    layer_schema,
    model_output,
    result_layers,
    reviewed_layer_for,
    reviewed_name,
    session_for,
    strokes_layers,
    strokes_name,
    tile_origins,
    tile_slices,
)
from .clicks import ClickTools

if TYPE_CHECKING:
    import napari

#: How many of the least sure tiles the list shows.
SHOWN_UNCERTAIN = 8
#: Milliseconds of quiet after the last edit before the changed-tiles list is recomputed.
REFRESH_DELAY_MS = 250
#: Fraction of the canvas the tile fills after a jump.
TILE_FILL = 0.9
#: Colour of the reviewed marks (drawn translucent over the result layer).
REVIEWED_COLOR = "#00e5ff"
_ANY_CLASS = ("any class", -1)


def confidence_layer_for(viewer: Any, layer: Labels) -> Image | None:
    """The confidence map the Segment widget made with ``layer`` (same shape), or None."""
    for candidate in viewer.layers:
        if (isinstance(candidate, Image)
                and candidate.metadata.get(META, {}).get("confidence_of") == layer.name
                and tuple(candidate.data.shape) == tuple(layer.data.shape)):
            return candidate
    return None


def rank_tiles_by_confidence(confidence: np.ndarray, tile: int) -> list[tuple[int, float]]:
    """``(tile number, mean confidence)`` of every tile, least sure first (ties by number)."""
    conf = np.asarray(confidence)
    means = [(k, float(np.mean(conf[y:y + tile, x:x + tile], dtype=np.float64)))
             for k, (y, x) in enumerate(tile_origins(conf.shape, tile))]
    return sorted(means, key=lambda item: (item[1], item[0]))


def _update(widget: Any, attribute: str, value: Any) -> None:
    """Set a widget property only when it changes (refreshes run on every edit of the layer)."""
    if getattr(widget, attribute) != value:
        setattr(widget, attribute, value)


def _numbers(values: list[int], limit: int = 40) -> str:
    text = ", ".join(str(v) for v in values[:limit])
    return text + (f", ... ({len(values)} in all)" if len(values) > limit else "")


class ReviewWidget(Container):
    """Track corrections of a result layer, visit the least sure tiles, reset or fill a tile.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer whose result layers (``"<image> locations"``/``"<image> granules"``) to review.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        self._viewer = napari_viewer
        self._session = session_for(napari_viewer)
        self._watched: Labels | None = None
        self._watched_confidence: Image | None = None
        self._watched_reviewed: Labels | None = None
        self._ranking: list[tuple[int, float]] | None = None
        self._uncertain_pos = -1
        self._changed: list[int] = []

        self._layer_box = ComboBox(label="Result layer", choices=self._layer_choices,
                                   tooltip="A labels layer made by the Segment widget")
        self._tile_size = SpinBox(label="Tile size (px)", min=MIN_TILE_SIDE_PX, max=16384, step=128,
                                  value=self._session.tile_size,
                                  tooltip="The tile grid Review and Export number tiles on (row by row)")
        self._changed_label = Label(value="")
        self._prev_changed = PushButton(text="Previous changed")
        self._next_changed = PushButton(text="Next changed")
        self._uncertain_label = Label(value="")
        self._prev_uncertain = PushButton(text="Previous uncertain")
        self._next_uncertain = PushButton(text="Next uncertain tile")
        self._tile = SpinBox(label="Tile", min=0, max=0, value=0,
                             tooltip="The tile the helpers below act on (numbered row by row)")
        self._go = PushButton(text="Go to tile")
        self._tile_info = Label(value="")
        self._reset_tile_button = PushButton(text="Reset tile to model output")
        self._fill_class = ComboBox(label="Fill with", choices=self._class_choices)
        self._fill_only = ComboBox(label="Only where", choices=self._only_choices,
                                   tooltip="Replace only this class in the tile (class A by class B)")
        self._fill_button = PushButton(text="Fill tile")
        self.clicks = ClickTools(napari_viewer, lambda: self.layer, lambda: self._fill_class.value)
        self._reset_layer_button = PushButton(text="Reset whole layer...")
        self._mark_tile_button = PushButton(text="Mark tile as reviewed")
        self._mark_tile_button.tooltip = ("The tile is right as it is: Export takes all of it as "
                                          "truth (on a separate 'reviewed' layer; Ctrl+Z there undoes)")
        self._mark_view_button = PushButton(text="Mark visible area as reviewed")
        self._reviewed_label = Label(value="")
        self._strokes_button = PushButton(text="New strokes layer")
        self._strokes_button.tooltip = ("An empty layer to scribble the model's classes on (Export: "
                                        "'strokes layers'); unpainted pixels are not labelled")

        def row(*widgets: Any) -> Container:
            return Container(widgets=list(widgets), layout="horizontal", labels=False)

        super().__init__(widgets=[
            self._layer_box, self._tile_size,
            self._changed_label, row(self._prev_changed, self._next_changed),
            self._uncertain_label, row(self._prev_uncertain, self._next_uncertain),
            self._tile, self._go, self._tile_info,
            self._reset_tile_button, self._fill_class, self._fill_only, self._fill_button, self.clicks,
            self._reset_layer_button,
            row(self._mark_tile_button, self._mark_view_button), self._reviewed_label,
            self._strokes_button,
        ])

        self._timer = QTimer(self.native)
        self._timer.setSingleShot(True)
        self._timer.setInterval(REFRESH_DELAY_MS)
        self._timer.timeout.connect(self.refresh)

        self._layer_box.changed.connect(self._on_layer_changed)
        self._tile_size.changed.connect(self._session.set_tile_size)
        self._session.tile_size_changed.connect(self._on_session_tile_size)
        self._prev_changed.clicked.connect(self.previous_changed)
        self._next_changed.clicked.connect(self.next_changed)
        self._prev_uncertain.clicked.connect(self.previous_uncertain)
        self._next_uncertain.clicked.connect(self.next_uncertain)
        self._go.clicked.connect(lambda: self.go_to_tile(int(self._tile.value)))
        self._tile.changed.connect(self._show_tile_info)
        self._reset_tile_button.clicked.connect(lambda: self.reset_tile())
        self._fill_button.clicked.connect(lambda: self.fill_tile())
        self._reset_layer_button.clicked.connect(self._confirm_reset_layer)
        self._mark_tile_button.clicked.connect(lambda: self.mark_reviewed())
        self._mark_view_button.clicked.connect(lambda: self.mark_visible_reviewed())
        self._strokes_button.clicked.connect(lambda: self.new_strokes_layer())
        for event in ("inserted", "removed", "reordered"):
            getattr(napari_viewer.layers.events, event).connect(self._on_layers_changed)
        napari_viewer.layers.selection.events.active.connect(self._on_active_layer)
        if not self._on_active_layer():
            self._on_layer_changed()

    def _on_active_layer(self, _event: Any = None) -> bool:
        """Follow the user: selecting a result layer, its strokes or reviewed layer, or its
        micrograph chooses it here (a micrograph: its result layer of the kind under review)."""
        active = self._viewer.layers.selection.active
        if active is None:
            return False
        results = result_layers(self._viewer)
        of = (active.metadata.get(STROKES, {}).get("of")
              or active.metadata.get(REVIEWED, {}).get("of"))
        if any(active is r for r in results):
            target = active
        elif of:
            target = get_layer(self._viewer, of)
        else:
            image = image_layer_of(self._viewer, active)
            mine = [r for r in results if image is not None and r.metadata[META].get("image") == image.name]
            current = self.layer
            if image is None or not mine or any(current is r for r in mine):
                return False
            kind = current.metadata[META].get("kind") if current is not None else "locations"
            target = next((r for r in mine if r.metadata[META].get("kind") == kind), mine[0])
        return choose(self._layer_box, target)

    # ---------------------------------------------------------------------------------------------
    # what the widget shows
    # ---------------------------------------------------------------------------------------------
    @property
    def layer(self) -> Labels | None:
        """The result layer under review (None when there is none)."""
        return self._layer_box.value

    @property
    def tile_size(self) -> int:
        return int(self._session.tile_size)

    @property
    def current_tile(self) -> int:
        """The tile the helpers act on."""
        return int(self._tile.value)

    @property
    def changed_text(self) -> str:
        return str(self._changed_label.value)

    @property
    def uncertain_text(self) -> str:
        return str(self._uncertain_label.value)

    @property
    def reviewed_text(self) -> str:
        return str(self._reviewed_label.value)

    @property
    def reviewed_layer(self) -> Labels | None:
        """The reviewed marks of the layer under review (None until something is marked)."""
        layer = self.layer
        return None if layer is None else reviewed_layer_for(self._viewer, layer)

    def changed_tiles(self) -> list[int]:
        """Tiles of the layer that differ from the model's output now (empty without one)."""
        layer = self.layer
        base = None if layer is None else model_output(layer)
        if base is None or base.shape != layer.data.shape:
            return []
        return changed_tiles(np.asarray(layer.data), base, self.tile_size)

    def uncertain_tiles(self) -> list[tuple[int, float]] | None:
        """``(tile, mean confidence)``, least sure first; None without a confidence map."""
        confidence = self._watched_confidence
        if confidence is None:
            return None
        if self._ranking is None:
            self._ranking = rank_tiles_by_confidence(np.asarray(confidence.data), self.tile_size)
        return self._ranking

    def refresh(self) -> None:
        """Recompute the changed tiles and the least sure list and show them."""
        self._timer.stop()
        layer = self.layer
        self._changed = []
        if layer is None:
            changed_text = "No result layer: run Segment first"
        elif model_output(layer) is None or model_output(layer).shape != layer.data.shape:
            changed_text = "No model output on this layer: it was not made by Segment"
        else:
            self._changed = self.changed_tiles()
            n = len(self._changed)
            changed_text = (f"{n} tile{'s' * (n != 1)} changed: {_numbers(self._changed)}"
                            if n else "No tiles changed since the model")
        ranking = self.uncertain_tiles()
        if layer is None:
            uncertain_text = ""
        elif ranking is None:
            uncertain_text = ("No confidence map for this layer: run Segment with 'confidence' on "
                              "to rank tiles")
        else:
            lines = [f"  tile {k}: {mean:.3f}" for k, mean in ranking[:SHOWN_UNCERTAIN]]
            if len(ranking) > SHOWN_UNCERTAIN:
                lines.append(f"  ... {len(ranking) - SHOWN_UNCERTAIN} more")
            uncertain_text = "\n".join(["Least sure tiles (mean confidence):", *lines])
        _update(self._changed_label, "value", changed_text)
        _update(self._uncertain_label, "value", uncertain_text)
        _update(self._reviewed_label, "value", self._reviewed_summary())
        for button in (self._prev_changed, self._next_changed):
            _update(button, "enabled", bool(self._changed))
        for button in (self._prev_uncertain, self._next_uncertain):
            _update(button, "enabled", bool(ranking))
        self._show_tile_info()

    def _show_tile_info(self, *_: Any) -> None:
        _update(self._tile_info, "value", self._tile_text())

    def _tile_text(self) -> str:
        layer = self.layer
        k = self.current_tile
        if layer is None or not 0 <= k < len(tile_origins(layer.data.shape, self.tile_size)):
            return ""
        rows, cols = tile_slices(layer.data.shape, self.tile_size, k)
        parts = [f"rows {rows.start}-{rows.stop - 1}, columns {cols.start}-{cols.stop - 1}"]
        if k in self._changed:
            parts.append("changed")
        reviewed = self.reviewed_layer
        if reviewed is not None:
            marks = np.asarray(reviewed.data[rows, cols]) > 0
            parts.append("reviewed" if marks.all() else "partly reviewed" if marks.any() else "")
            parts = [p for p in parts if p]
        ranking = self._ranking if self._watched_confidence is not None else None
        if ranking:
            parts.append(f"mean confidence {dict(ranking)[k]:.3f}")
        return "; ".join(parts)

    # ---------------------------------------------------------------------------------------------
    # moving the view
    # ---------------------------------------------------------------------------------------------
    def go_to_tile(self, tile: int) -> bool:
        """Centre and zoom the view on ``tile``, make it the current tile and the layer active."""
        layer = self._checked_layer(need_model_output=False)
        if layer is None or not self._check_tile(layer, tile):
            return False
        tile = int(tile)
        rows, cols = tile_slices(layer.data.shape, self.tile_size, tile)
        centre = ((rows.start + rows.stop - 1) / 2, (cols.start + cols.stop - 1) / 2)
        world = np.asarray(layer.data_to_world(centre), dtype=float)
        extent = max((rows.stop - rows.start) * abs(float(layer.scale[-2])),
                     (cols.stop - cols.start) * abs(float(layer.scale[-1])))
        camera = self._viewer.camera
        camera.center = tuple(float(v) for v in world[-2:])
        camera.zoom = TILE_FILL * float(min(self._viewer.canvas.size)) / extent
        self._tile.value = tile
        self._viewer.layers.selection.active = layer
        self._show_tile_info()
        return True

    def next_uncertain(self) -> int | None:
        """Go to the next tile in the least sure order (wraps round); returns it."""
        return self._step_uncertain(+1)

    def previous_uncertain(self) -> int | None:
        return self._step_uncertain(-1)

    def _step_uncertain(self, step: int) -> int | None:
        if self._checked_layer(need_model_output=False) is None:
            return None
        ranking = self.uncertain_tiles()
        if not ranking:
            show_warning("Review: no confidence map for this layer; run Segment with 'confidence' on")
            return None
        if self._uncertain_pos < 0 and step < 0:
            self._uncertain_pos = 0
        self._uncertain_pos = (self._uncertain_pos + step) % len(ranking)
        tile = ranking[self._uncertain_pos][0]
        return tile if self.go_to_tile(tile) else None

    def next_changed(self) -> int | None:
        """Go to the first changed tile after the current one (wraps round); returns it."""
        return self._step_changed(+1)

    def previous_changed(self) -> int | None:
        return self._step_changed(-1)

    def _step_changed(self, step: int) -> int | None:
        if self._checked_layer() is None:
            return None
        changed = self.changed_tiles()
        if not changed:
            show_info("Review: no tiles changed since the model")
            return None
        current = self.current_tile
        if step > 0:
            tile = next((k for k in changed if k > current), changed[0])
        else:
            tile = next((k for k in reversed(changed) if k < current), changed[-1])
        return tile if self.go_to_tile(tile) else None

    # ---------------------------------------------------------------------------------------------
    # undo-safe helpers
    # ---------------------------------------------------------------------------------------------
    def reset_tile(self, tile: int | None = None) -> bool:
        """Put the model's output back into ``tile`` (default: the current tile); undoable."""
        layer = self._checked_layer()
        tile = self.current_tile if tile is None else tile
        if layer is None or not self._check_tile(layer, tile):
            return False
        base = model_output(layer)
        rows, cols = tile_slices(layer.data.shape, self.tile_size, int(tile))
        diff = np.asarray(layer.data[rows, cols]) != base[rows, cols]
        if not diff.any():
            show_info(f"Review: tile {tile} already equals the model output")
            return True
        iy, ix = np.nonzero(diff)
        indices = (iy + rows.start, ix + cols.start)
        layer.data_setitem(indices, base[indices].astype(layer.data.dtype, copy=False))
        self.refresh()
        return True

    def fill_tile(self, code: int | None = None, only: int | None = None, tile: int | None = None) -> bool:
        """Set the pixels of ``tile`` to class ``code`` (only those of class ``only`` if given); undoable.

        Without ``code`` the widget's "Fill with" and "Only where" classes are used; without ``tile``
        the current tile.
        """
        layer = self._checked_layer(need_model_output=False)
        if layer is None:
            return False
        if code is None:
            code = self._fill_class.value
            only = None if self._fill_only.value == _ANY_CLASS[1] else self._fill_only.value
        tile = self.current_tile if tile is None else tile
        schema = layer_schema(layer)
        n_classes = schema.n_classes if schema is not None else None
        for what, value in (("fill class", code), ("class to replace", only)):
            if value is None and what == "class to replace":
                continue
            if value is None or isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
                    or value < 0 or (n_classes is not None and value >= n_classes):
                classes = f"0..{n_classes - 1}" if n_classes else "a label code"
                show_warning(f"Review: the {what} must be one of the layer's classes ({classes}), "
                             f"got {value!r}")
                return False
        if not self._check_tile(layer, tile):
            return False
        rows, cols = tile_slices(layer.data.shape, self.tile_size, int(tile))
        current = np.asarray(layer.data[rows, cols])
        mask = current != code
        if only is not None:
            mask &= current == only
        if not mask.any():
            show_info(f"Review: nothing to change in tile {tile}")
            return True
        iy, ix = np.nonzero(mask)
        layer.data_setitem((iy + rows.start, ix + cols.start), int(code))
        self.refresh()
        return True

    def reset_layer(self) -> bool:
        """Put the model's output back into the whole layer (no confirmation); undoable."""
        layer = self._checked_layer()
        if layer is None:
            return False
        base = model_output(layer)
        indices = np.nonzero(np.asarray(layer.data) != base)
        if indices[0].size:
            layer.data_setitem(indices, base[indices].astype(layer.data.dtype, copy=False))
        self.refresh()
        return True

    def _confirm_reset_layer(self) -> None:
        from qtpy.QtWidgets import QMessageBox

        layer = self._checked_layer()
        if layer is None:
            return
        n = len(self.changed_tiles())
        answer = QMessageBox.question(
            self.native, "Reset whole layer",
            f"Put the model's output back into all of {layer.name!r} ({n} changed tiles)? "
            "Ctrl+Z with the layer selected (napari's undo of labels edits) brings your "
            "corrections back.")
        if answer == QMessageBox.StandardButton.Yes:
            self.reset_layer()

    # ---------------------------------------------------------------------------------------------
    # partial labels: reviewed marks and strokes
    # ---------------------------------------------------------------------------------------------
    def mark_reviewed(self, tile: int | None = None) -> bool:
        """Mark ``tile`` (default: the current tile) as reviewed, i.e. right as it is; undoable.

        The marks go to the ``"<layer> reviewed"`` layer (made on first use); the result layer is
        not touched. Ctrl+Z on the reviewed layer takes a mark back.
        """
        layer = self._checked_layer(need_model_output=False)
        tile = self.current_tile if tile is None else tile
        if layer is None or not self._check_tile(layer, tile):
            return False
        rows, cols = tile_slices(layer.data.shape, self.tile_size, int(tile))
        return self._mark(layer, rows, cols, f"tile {int(tile)}")

    def mark_visible_reviewed(self) -> bool:
        """Mark the part of the layer the view shows now as reviewed; undoable."""
        layer = self._checked_layer(need_model_output=False)
        if layer is None:
            return False
        window = self.visible_window(layer)
        if window is None:
            show_warning(f"Review: the view shows no part of {layer.name!r}; go to a tile first")
            return False
        return self._mark(layer, *window, "the visible area")

    def visible_window(self, layer: Labels) -> tuple[slice, slice] | None:
        """The rows and columns of ``layer`` whose pixel centres the view shows (None: none)."""
        camera = self._viewer.camera
        height, width = self._viewer.canvas.size
        centre = np.asarray(camera.center[-2:], dtype=float)
        half = np.array([height, width], dtype=float) / float(camera.zoom) / 2
        point = list(self._viewer.dims.point)
        corners = []
        for dy, dx in ((-1, -1), (-1, 1), (1, -1), (1, 1)):
            point[-2:] = centre + half * (dy, dx)
            corners.append(np.asarray(layer.world_to_data(point), dtype=float)[-2:])
        lo, hi = np.min(corners, axis=0), np.max(corners, axis=0)
        shape = layer.data.shape[-2:]
        start = [max(int(np.ceil(v)), 0) for v in lo]
        stop = [min(int(np.floor(v)) + 1, n) for v, n in zip(hi, shape, strict=True)]
        if stop[0] <= start[0] or stop[1] <= start[1]:
            return None
        return slice(start[0], stop[0]), slice(start[1], stop[1])

    def _mark(self, layer: Labels, rows: slice, cols: slice, what: str) -> bool:
        reviewed = reviewed_layer_for(self._viewer, layer) or self._add_reviewed_layer(layer)
        iy, ix = np.nonzero(np.asarray(reviewed.data[rows, cols]) == 0)
        if iy.size == 0:
            show_info(f"Review: {what} of {layer.name!r} is already marked reviewed")
            return True
        reviewed.data_setitem((iy + rows.start, ix + cols.start), 1)
        show_info(f"Review: {what} of {layer.name!r} marked reviewed ({iy.size:,} px); Ctrl+Z on "
                  f"{reviewed.name!r} takes it back")
        self.refresh()
        return True

    def _add_reviewed_layer(self, layer: Labels) -> Labels:
        colormap = DirectLabelColormap(color_dict={0: "transparent", None: "transparent",
                                                   1: REVIEWED_COLOR})
        record = {"of": layer.name, **_origin(layer)}
        reviewed = self._viewer.add_labels(
            np.zeros(layer.data.shape, np.uint8), name=reviewed_name(layer.name), scale=layer.scale,
            translate=layer.translate, units=layer.units, opacity=0.25, colormap=colormap,
            metadata={REVIEWED: record})
        self._viewer.layers.selection.active = layer  # go on correcting the result layer
        return reviewed

    def new_strokes_layer(self) -> Labels | None:
        """Add ``"<layer> strokes"``: an empty layer to paint the layer's classes on.

        Class ``c`` is painted as label ``c + 1`` in its class colour (0 = not painted), so class 0
        can be painted too; Export converts the strokes back to class codes. An existing strokes
        layer of the same result layer is chosen instead (it is never replaced).
        """
        layer = self._checked_layer(need_model_output=False)
        if layer is None:
            return None
        schema = layer_schema(layer)
        if schema is None:
            show_warning(f"Review: {layer.name!r} has no class schema; choose a layer made by Segment")
            return None
        existing = [s for s in strokes_layers(self._viewer)
                    if s.metadata[STROKES].get("of") == layer.name and s.data.shape == layer.data.shape]
        if existing:
            self._viewer.layers.selection.active = existing[0]
            show_info(f"Review: {existing[0].name!r} already exists; paint on it (it is kept as it is)")
            return existing[0]
        record = {"of": layer.name, "kind": schema.kind, "schema": schema.to_dict(), **_origin(layer)}
        strokes = self._viewer.add_labels(
            np.zeros(layer.data.shape, strokes_dtype(schema)), name=strokes_name(layer.name),
            scale=layer.scale, translate=layer.translate, units=layer.units, opacity=0.8,
            colormap=DirectLabelColormap(color_dict=stroke_colors(schema)),
            features=stroke_features(schema), metadata={STROKES: record})
        code = self._fill_class.value
        strokes.selected_label = (int(code) if code is not None else 0) + 1
        strokes.mode = "paint"
        self._viewer.layers.selection.active = strokes
        show_info(f"Review: paint classes of {layer.name!r} on {strokes.name!r} (label = class code + "
                  f"1; 0 = not painted), then export with 'strokes layers'")
        return strokes

    def _reviewed_summary(self) -> str:
        reviewed = self.reviewed_layer
        if reviewed is None:
            return ""
        marks = np.asarray(reviewed.data) > 0
        n = int(np.count_nonzero(marks))
        full = [k for k, (y, x) in enumerate(tile_origins(marks.shape, self.tile_size))
                if marks[y:y + self.tile_size, x:x + self.tile_size].all()]
        return (f"Reviewed: {n:,} px ({n / max(marks.size, 1):.0%}); whole tiles: "
                f"{_numbers(full) if full else 'none'}")

    # ---------------------------------------------------------------------------------------------
    # checks
    # ---------------------------------------------------------------------------------------------
    def _checked_layer(self, need_model_output: bool = True) -> Labels | None:
        layer = self.layer
        if layer is None:
            show_warning("Review: no result layer; run Segment first (or choose a layer it made)")
            return None
        if need_model_output:
            base = model_output(layer)
            if base is None or base.shape != layer.data.shape:
                show_warning(f"Review: {layer.name!r} has no model output to compare with (it was not "
                             "made by Segment, or its size changed); run Segment on its image again")
                return None
        return layer

    def _check_tile(self, layer: Labels, tile: Any) -> bool:
        n = len(tile_origins(layer.data.shape, self.tile_size))
        if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or not 0 <= tile < n:
            show_warning(f"Review: there is no tile {tile!r}: {layer.name!r} cut into {self.tile_size} px "
                         f"tiles has tiles 0..{n - 1} (numbered row by row)")
            return False
        return True

    # ---------------------------------------------------------------------------------------------
    # keeping up with the viewer
    # ---------------------------------------------------------------------------------------------
    def _layer_choices(self, _widget: Any = None) -> list[tuple[str, Labels]]:
        return [(layer.name, layer) for layer in result_layers(self._viewer)]

    def _class_choices(self, _widget: Any = None) -> list[tuple[str, int]]:
        layer = getattr(self, "_watched", None)
        schema = layer_schema(layer) if layer is not None else None
        if schema is None:
            return []
        return [(f"{c.code} {c.name}", c.code) for c in schema.classes]

    def _only_choices(self, _widget: Any = None) -> list[tuple[str, int]]:
        return [_ANY_CLASS, *self._class_choices()]

    def _on_layers_changed(self, *_: Any) -> None:
        self._layer_box.reset_choices()
        self._on_layer_changed()

    def _watch_reviewed(self) -> None:
        """Refresh when the reviewed marks change (a mark undone on their own layer)."""
        reviewed = self.reviewed_layer
        if reviewed is self._watched_reviewed:
            return
        if self._watched_reviewed is not None:
            self._watch(self._watched_reviewed, connect=False)
        if reviewed is not None:
            self._watch(reviewed, connect=True)
        self._watched_reviewed = reviewed

    def _on_layer_changed(self, *_: Any) -> None:
        layer = self.layer
        confidence = confidence_layer_for(self._viewer, layer) if layer is not None else None
        if layer is not self._watched:
            self._watch(self._watched, connect=False)
            self._watch(layer, connect=True)
            self._watched = layer
            self._uncertain_pos = -1
            self._fill_class.reset_choices()
            self._fill_only.reset_choices()
            self._fill_only.value = _ANY_CLASS[1]
            self.clicks.follow()
        if confidence is not self._watched_confidence:
            if self._watched_confidence is not None:
                self._watched_confidence.events.data.disconnect(self._on_confidence_data)
            if confidence is not None:
                confidence.events.data.connect(self._on_confidence_data)
            self._watched_confidence = confidence
            self._ranking = None
            self._uncertain_pos = -1
        self._watch_reviewed()
        self._update_grid()

    def _watch(self, layer: Labels | None, connect: bool) -> None:
        if layer is None:
            return
        for name in ("paint", "data", "set_data"):
            emitter = getattr(layer.events, name)
            if connect:
                emitter.connect(self._schedule_refresh)
            else:
                emitter.disconnect(self._schedule_refresh)

    def _schedule_refresh(self, *_: Any) -> None:
        self._timer.start()

    def _on_confidence_data(self, *_: Any) -> None:
        self._ranking = None
        self._uncertain_pos = -1
        self._schedule_refresh()

    def _on_session_tile_size(self, size: int) -> None:
        if int(self._tile_size.value) != size:
            self._tile_size.value = size
        self._ranking = None
        self._uncertain_pos = -1
        self._update_grid()

    def _update_grid(self) -> None:
        layer = self.layer
        n = len(tile_origins(layer.data.shape, self.tile_size)) if layer is not None else 1
        if self._tile.value > n - 1:
            self._tile.value = max(n - 1, 0)
        _update(self._tile, "max", max(n - 1, 0))
        for widget in (self._tile, self._go, self._reset_tile_button, self._fill_class, self._fill_only,
                       self._fill_button, self._reset_layer_button, self._mark_tile_button,
                       self._mark_view_button, self._strokes_button):
            _update(widget, "enabled", layer is not None)
        self.refresh()


def _origin(layer: Labels) -> dict[str, Any]:
    """The micrograph and pixel size a result layer was made from (for layers made from it)."""
    info = layer.metadata.get(META, {})
    return {key: info[key] for key in ("image", "pixel_size_nm", "pixel_size_source") if key in info}
