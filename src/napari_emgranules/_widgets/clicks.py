"""Click tools of the Review widget: one click adds a missed granule or removes a false one, a
dragged box removes many, one click refills a mislabelled region with the "Fill with" class.

The work is :mod:`napari_emgranules.core.corrections`; this module only turns mouse clicks on
the viewer into its calls and writes the result with ``Labels.data_setitem`` (napari's undo
history: Ctrl+Z reverts a click like a brush stroke). What changes is compared with the model's
output like any other correction, so Export's "pixels I changed" takes it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from magicgui.widgets import ComboBox, Container, Label
from napari.layers import Labels
from napari.utils.notifications import show_info, show_warning

from ..core.corrections import granule_at, granules_at, granules_in_box, region_at
from ._common import META, get_layer, image_layer_of, labels_name, layer_pixel_size

OFF, ADD, REMOVE, BOX, REGION = ("off", "add granule", "remove granule",
                                 "remove granules in a box (drag)", "refill region with 'Fill with'")
TOOLS = (OFF, ADD, REMOVE, BOX, REGION)
HELP = {
    OFF: "Click tools off: napari's brush, fill and eraser paint as usual",
    ADD: "Click a missed granule: a disc fitted to the dark particle is added",
    REMOVE: "Click a false granule: it is removed",
    BOX: "Drag a box: every granule with its centre in it is removed",
    REGION: "Click a mislabelled area: the part of it that looks like the click gets the "
            "'Fill with' class",
}


class ClickTools(Container):
    """A tool chooser; while a tool is on, clicks on the viewer act on the result layers.

    ``result_layer()`` is the result layer under review, ``fill_class()`` the class a region
    click gives. :meth:`apply` does what a click does (for scripts and tests).
    """

    def __init__(self, viewer: Any, result_layer: Callable[[], Labels | None],
                 fill_class: Callable[[], int | None]) -> None:
        self._viewer = viewer
        self._result_layer = result_layer
        self._fill_class = fill_class
        self.tool = ComboBox(label="Click tool", choices=list(TOOLS), value=OFF,
                             tooltip="What a click on the image does (Ctrl+Z undoes it)")
        self.help = Label(value=HELP[OFF])
        super().__init__(widgets=[self.tool, self.help])
        self._hooked: list[Labels] = []
        self.actions = 0  # clicks and drags that changed something (for the action count)
        self.tool.changed.connect(self._on_tool)

    # -- what a click does ---------------------------------------------------------------------
    def apply(self, tool: str, point, end=None) -> bool:
        """Do what ``tool`` does for a click at ``point`` (data row, col; ``end``: the other
        corner of a dragged box). Returns True when pixels changed; tells the user why not."""
        layer = self._result_layer()
        if layer is None:
            show_warning("Review: no result layer; run Segment first")
            return False
        try:
            changed = self._apply(tool, layer, point, end)
        except ValueError as exc:
            show_warning(f"Review: {exc}")
            return False
        self.actions += bool(changed)
        return changed

    def _apply(self, tool: str, layer: Labels, point, end) -> bool:
        image = image_layer_of(self._viewer, layer)
        if tool == REGION:
            code = self._fill_class()
            if code is None:
                raise ValueError("choose the class to fill with ('Fill with')")
            same_size = image is not None and image.data.shape == layer.data.shape
            grey = np.asarray(image.data) if same_size else None
            area = region_at(np.asarray(layer.data), point, grey) & (np.asarray(layer.data) != code)
            return _write(layer, area, int(code), f"{layer.name}: already that class there")
        granules = self._granules_layer(layer)
        data = np.asarray(granules.data)
        if tool == ADD:
            if image is None or image.data.shape != data.shape:
                raise ValueError(f"{granules.name}: its micrograph layer is missing or of another size")
            px, _ = layer_pixel_size(image)
            if px is None:
                px, _ = layer_pixel_size(granules)
            if px is None:
                raise ValueError("the pixel size is unknown: enter it in the Segment widget first "
                                 "(granules are fitted by their size in nm)")
            mask, _, _ = granule_at(np.asarray(image.data), point, px)
            return _write(granules, mask & (data != 1), 1, "a granule is already there")
        if tool == REMOVE:
            return _write(granules, granules_at(data, point), 0, "no granule there")
        if tool == BOX:
            return _write(granules, granules_in_box(data, point, end if end is not None else point), 0,
                          "no granule has its centre in the box")
        raise ValueError(f"unknown click tool {tool!r}")

    def _granules_layer(self, layer: Labels) -> Labels:
        if layer.metadata.get(META, {}).get("kind") == "granules":
            return layer
        image = layer.metadata.get(META, {}).get("image", "")
        other = get_layer(self._viewer, labels_name(image, "granules"))
        if not isinstance(other, Labels):
            raise ValueError(f"{image}: there is no granules layer to correct (run Segment with "
                             "Granules)")
        return other

    # -- mouse -----------------------------------------------------------------------------------
    def _on_tool(self, tool: str) -> None:
        self.help.value = HELP[tool]
        self.follow()

    def follow(self) -> None:
        """Hook the clicks onto the layers the tool acts on (call when the result layer changes)."""
        for layer in self._hooked:
            if self._on_mouse in layer.mouse_drag_callbacks:
                layer.mouse_drag_callbacks.remove(self._on_mouse)
            if hasattr(layer, "mouse_pan"):
                layer.mouse_pan = True
        self._hooked = []
        layer = self._result_layer()
        if self.tool.value == OFF or layer is None:
            return
        targets = [layer]
        try:
            targets.append(self._granules_layer(layer))
        except ValueError:
            pass
        for target in dict.fromkeys(targets):
            target.mode = "pan_zoom"  # napari paints nothing while a click tool is on
            if self.tool.value == BOX and hasattr(target, "mouse_pan"):
                target.mouse_pan = False
            target.mouse_drag_callbacks.append(self._on_mouse)
            self._hooked.append(target)
        self._viewer.layers.selection.active = layer

    def _on_mouse(self, layer: Labels, event: Any):
        if self.tool.value == OFF or getattr(event, "button", 1) != 1 or layer.mode != "pan_zoom":
            return
        start = layer.world_to_data(event.position)[-2:]
        if self.tool.value == BOX:
            yield
            while event.type == "mouse_move":
                yield
            self.apply(BOX, start, layer.world_to_data(event.position)[-2:])
            return
        self.apply(self.tool.value, start)


def _write(layer: Labels, mask: np.ndarray, value: int, nothing: str) -> bool:
    if not mask.any():
        show_info(f"Review: {nothing}")
        return False
    layer.data_setitem(np.nonzero(mask), value)
    return True
