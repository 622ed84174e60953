"""What the dock widgets share: the per-viewer session, layer names and lookups, result layers,
tile bookkeeping, background jobs and messages.

Layer contract (what the Segment widget leaves and the others read):

- ``"<image> locations"`` and ``"<image> granules"``: Labels layers with the image's scale and
  translate, coloured and named by the model's schema (``metadata["schema"]``, ``features``), and
  ``metadata["emgranules"]`` = ``{"kind", "image", "pixel_size_nm", "pixel_size_source", "mode",
  "model": <card dict>, "model_output": <the model's labels, a copy>}``. The copy is what
  "changed since the model" and "reset to the model output" compare with.
- ``"<image> locations confidence"`` (optional): an Image layer of the max softmax probability.
- ``"<result layer> reviewed"`` (made by Review): a Labels layer, 1 where the user accepted the
  result as it is; ``metadata["emgranules_reviewed"]`` = ``{"of": <result layer>, "image"}``.
- ``"<result layer> strokes"`` (made by Review): a Labels layer of scribbles, class ``c`` stored as
  ``c + 1`` (0 = not painted); ``metadata["emgranules_strokes"]`` = ``{"of", "image", "kind",
  "schema"}`` (see :func:`napari_emgranules._layers.strokes_to_codes`).

Pixel size: the micrograph (image) layer is the one source of truth. Its ``metadata`` holds
``pixel_size_nm`` and ``pixel_size_source`` (the reader's, or ``"user"``) and its ``scale`` is the
pixel size in nm; :func:`set_pixel_size` changes both, and the scale and ``metadata["emgranules"]``
of every layer made from it, and tells the widgets (``Session.pixel_size_changed``).
"""

from __future__ import annotations

import inspect
import logging
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from magicgui.widgets import Container, Label, ProgressBar, PushButton
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info, show_warning
from psygnal import Signal

from .._engine import Cancelled, EngineError, shutdown_engines
from .._layers import known_pixel_size, labels_layer_data
from ..core import USER_ERRORS
from ..core.schema import ClassSchema
from ..core.tiling import seed_tile_origins

logger = logging.getLogger(__name__)

KINDS = ("locations", "granules")
META = "emgranules"
REVIEWED = "emgranules_reviewed"
STROKES = "emgranules_strokes"
USER = "user"  # pixel_size_source of a pixel size the user entered


# -------------------------------------------------------------------------------------------------
# The per-viewer session: what one widget tells the others
# -------------------------------------------------------------------------------------------------
class Session:
    """State shared by the widgets of one viewer.

    ``weights[kind]`` is the weights file the Segment widget uses for ``kind`` (None = bundled
    default); ``tile_size`` is the grid (px) that Review and Export number tiles on.
    """

    weights_changed = Signal(str)  # kind
    tile_size_changed = Signal(int)
    pixel_size_changed = Signal(str)  # name of the micrograph layer

    def __init__(self) -> None:
        self.weights: dict[str, str | None] = dict.fromkeys(KINDS)
        self.tile_size = 1024

    def set_weights(self, kind: str, path: str | None) -> None:
        if self.weights.get(kind) != path:
            self.weights[kind] = path
            self.weights_changed.emit(kind)

    def set_tile_size(self, size: int) -> None:
        if int(size) != self.tile_size:
            self.tile_size = int(size)
            self.tile_size_changed.emit(self.tile_size)


_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def session_for(viewer: Any) -> Session:
    """The :class:`Session` of ``viewer`` (made on first use)."""
    if viewer not in _SESSIONS:
        _SESSIONS[viewer] = Session()
    return _SESSIONS[viewer]


# -------------------------------------------------------------------------------------------------
# Layers
# -------------------------------------------------------------------------------------------------
def labels_name(image_name: str, kind: str) -> str:
    return f"{image_name} {kind}"


def confidence_name(image_name: str, kind: str) -> str:
    return f"{image_name} {kind} confidence"


def micrograph_layers(viewer: Any) -> list[Image]:
    """2-D gray image layers (micrographs), excluding our confidence maps."""
    return [layer for layer in viewer.layers
            if isinstance(layer, Image) and layer.ndim == 2 and not layer.rgb
            and not layer.metadata.get(META, {}).get("confidence_of")]


def result_layers(viewer: Any, kind: str | None = None) -> list[Labels]:
    """Labels layers made by the Segment widget (optionally of one kind)."""
    return [layer for layer in viewer.layers if isinstance(layer, Labels) and META in layer.metadata
            and (kind is None or layer.metadata[META].get("kind") == kind)]


def unusable_images(viewer: Any) -> list[tuple[Image, str]]:
    """Image layers that are no micrographs the models can take, with the reason (for the user)."""
    out = []
    for layer in viewer.layers:
        if not isinstance(layer, Image) or layer.metadata.get(META, {}).get("confidence_of"):
            continue
        if layer.rgb:
            out.append((layer, "colour (RGB): convert it to grey first"))
        elif layer.ndim != 2:
            out.append((layer, f"{layer.ndim}-D stack: the models take one 2-D micrograph"))
    return out


def add_grey_copy(viewer: Any, layer: Image) -> Image:
    """A grey copy of a colour image layer (luminance, same dtype, scale and metadata) added to the
    viewer; the colour layer stays as it is."""
    from ..core.io import to_gray

    grey, _ = to_gray(np.asarray(layer.data))
    name = f"{layer.name} grey"
    meta = {**layer.metadata, "converted_from": "rgb"}
    return viewer.add_image(grey, name=name, scale=tuple(layer.scale)[-2:],
                            translate=tuple(layer.translate)[-2:], units=tuple(layer.units)[-2:],
                            metadata=meta, colormap="gray")


def active_micrograph(viewer: Any) -> Image | None:
    """The micrograph the user works on: the selected layer, or the one it was made from."""
    layer = viewer.layers.selection.active
    image = image_layer_of(viewer, layer) if layer is not None else None
    return image if image is not None and any(image is m for m in micrograph_layers(viewer)) else None


def choose(combo: Any, value: Any) -> bool:
    """Set ``combo`` to ``value`` when it is one of its choices and not chosen yet."""
    if value is None or combo.value is value or not any(c is value for c in combo.choices):
        return False
    combo.value = value
    return True


def get_layer(viewer: Any, name: str) -> Any | None:
    return viewer.layers[name] if name in viewer.layers else None


def layer_pixel_size(layer: Any) -> tuple[float | None, str]:
    """The layer's pixel size in nm and where it came from (None when unknown or only assumed)."""
    meta = layer.metadata
    for record in (meta, meta.get(META, {}), meta.get(STROKES, {}), meta.get(REVIEWED, {})):
        if "pixel_size_nm" in record:
            return known_pixel_size(record)
    units = [str(u) for u in getattr(layer, "units", ())]
    scale = float(layer.scale[-1])
    if units and units[-1] == "nanometer" and scale != 1.0:
        return scale, "layer scale"
    return None, "unknown"


def describe_source(source: str) -> str:
    """``"user"`` -> ``"entered by you"``; other sources as they are (``"from metadata:imagej"``)."""
    return "entered by you" if source == USER else f"from {source}"


def image_layer_of(viewer: Any, layer: Any) -> Image | None:
    """The micrograph layer a result, strokes, reviewed or confidence layer was made from."""
    if isinstance(layer, Image) and not layer.metadata.get(META, {}).get("confidence_of"):
        return layer
    meta = layer.metadata
    name = (meta.get(META, {}).get("image") or meta.get(STROKES, {}).get("image")
            or meta.get(REVIEWED, {}).get("image"))
    image = get_layer(viewer, name) if name else None
    return image if isinstance(image, Image) else None


def derived_layers(viewer: Any, image: Image) -> list[Any]:
    """Every layer made from ``image``: results, confidence maps, strokes and reviewed marks."""
    names = {labels_name(image.name, kind) for kind in KINDS}
    out = []
    for layer in viewer.layers:
        meta = layer.metadata
        if layer is image:
            continue
        if (meta.get(META, {}).get("image") == image.name
                or meta.get(META, {}).get("confidence_of") in names
                or meta.get(STROKES, {}).get("image") == image.name
                or meta.get(REVIEWED, {}).get("image") == image.name):
            out.append(layer)
    return out


def set_pixel_size(viewer: Any, image: Image, pixel_size_nm: float, source: str = USER) -> None:
    """Record ``pixel_size_nm`` (from ``source``) on the micrograph layer and every layer made from it.

    The image's metadata gets the value and its source, its scale becomes the pixel size (in nm),
    and so do the scale and ``metadata["emgranules"]`` of its result, confidence, strokes and
    reviewed layers. Raises ValueError for a value that is not a positive number.
    """
    px = float(pixel_size_nm)
    if not (np.isfinite(px) and px > 0):
        raise ValueError(f"the pixel size must be a positive number of nm, got {pixel_size_nm!r}")
    image.metadata = {**image.metadata, "pixel_size_nm": px, "pixel_size_source": source}
    for layer in [image, *derived_layers(viewer, image)]:
        for key in (META, STROKES, REVIEWED):
            if key in layer.metadata and layer is not image:
                record = {**layer.metadata[key], "pixel_size_nm": px, "pixel_size_source": source}
                layer.metadata = {**layer.metadata, key: record}
        scale = tuple(float(v) for v in layer.scale)
        layer.units = ("nm",) * layer.ndim
        layer.scale = (*scale[:-2], px, px)
    session_for(viewer).pixel_size_changed.emit(image.name)


def enter_pixel_size(viewer: Any, image: Image | None, value: Any) -> None:
    """A pixel size the user typed in a widget: recorded (source "user") unless it is already the
    layer's, or there is no value or no micrograph layer."""
    if image is None or image not in viewer.layers or not value:
        return
    known, _ = layer_pixel_size(image)
    if known is None or abs(known - float(value)) > 1e-9:
        set_pixel_size(viewer, image, float(value), USER)


def reviewed_name(layer_name: str) -> str:
    return f"{layer_name} reviewed"


def strokes_name(layer_name: str) -> str:
    return f"{layer_name} strokes"


def reviewed_layer_for(viewer: Any, layer: Labels) -> Labels | None:
    """The reviewed marks of result layer ``layer`` (same shape), or None."""
    for candidate in viewer.layers:
        if (isinstance(candidate, Labels) and candidate.metadata.get(REVIEWED, {}).get("of") == layer.name
                and tuple(candidate.data.shape) == tuple(layer.data.shape)):
            return candidate
    return None


def strokes_layers(viewer: Any, image_name: str | None = None) -> list[Labels]:
    """Strokes layers made by Review (optionally those painted on one micrograph)."""
    return [layer for layer in viewer.layers if isinstance(layer, Labels) and STROKES in layer.metadata
            and (image_name is None or layer.metadata[STROKES].get("image") == image_name)]


def strokes_schema(layer: Labels) -> ClassSchema | None:
    """The class schema of a strokes layer (its values are class code + 1), or None."""
    data = layer.metadata.get(STROKES, {}).get("schema")
    return ClassSchema.from_dict(data) if data else None


def layer_schema(layer: Labels) -> ClassSchema | None:
    data = layer.metadata.get("schema")
    return ClassSchema.from_dict(data) if data else None


def model_output(layer: Labels) -> np.ndarray | None:
    return layer.metadata.get(META, {}).get("model_output")


def has_corrections(layer: Labels) -> bool:
    """True when the user painted on the layer since the model made it."""
    base = model_output(layer)
    return base is not None and (base.shape != layer.data.shape
                                 or not np.array_equal(np.asarray(layer.data), base))


def show_labels(viewer: Any, image: Image, kind: str, labels: np.ndarray, schema: ClassSchema,
                info: dict[str, Any]) -> Labels:
    """Add ``"<image> <kind>"`` or update it in place (keeping its place, colours and settings)."""
    name = labels_name(image.name, kind)
    data, kwargs, _ = labels_layer_data(labels, schema, name, 1.0)
    meta = {**kwargs["metadata"], META: {**info, "kind": kind, "image": image.name,
                                          "model_output": labels.copy()}}
    layer = get_layer(viewer, name)
    if isinstance(layer, Labels) and layer.data.shape == labels.shape:
        layer.metadata = meta
        layer.features = kwargs["features"]
        layer.data = data
        layer.units, layer.scale, layer.translate = image.units, image.scale, image.translate
        return layer
    if layer is not None:
        viewer.layers.remove(layer)
    kwargs.update(scale=image.scale, translate=image.translate, units=image.units, metadata=meta)
    return viewer.add_labels(data, **kwargs)


def show_confidence(viewer: Any, image: Image, kind: str, confidence: np.ndarray) -> Image:
    name = confidence_name(image.name, kind)
    layer = get_layer(viewer, name)
    if isinstance(layer, Image) and layer.data.shape == confidence.shape:
        layer.data = confidence
        return layer
    if layer is not None:
        viewer.layers.remove(layer)
    return viewer.add_image(confidence, name=name, scale=image.scale, translate=image.translate,
                            units=image.units, colormap="magma", contrast_limits=(0.0, 1.0),
                            opacity=0.6, visible=False,
                            metadata={META: {"confidence_of": labels_name(image.name, kind)}})


# -------------------------------------------------------------------------------------------------
# Tiles
# -------------------------------------------------------------------------------------------------
def tile_origins(shape: tuple[int, ...], tile: int) -> list[tuple[int, int]]:
    """Origins of the row-major tile grid that export numbers tiles on."""
    return seed_tile_origins((int(shape[0]), int(shape[1])), tile)


def tile_slices(shape: tuple[int, ...], tile: int, k: int) -> tuple[slice, slice]:
    y, x = tile_origins(shape, tile)[k]
    return slice(y, min(y + tile, shape[0])), slice(x, min(x + tile, shape[1]))


def changed_tiles(current: np.ndarray, base: np.ndarray, tile: int) -> list[int]:
    """Numbers of the tiles where ``current`` differs from ``base`` (same shapes)."""
    diff = np.asarray(current) != base
    return [k for k, (y, x) in enumerate(tile_origins(diff.shape, tile))
            if diff[y:y + tile, x:x + tile].any()]


def parse_tiles(text: str) -> list[int]:
    """``"3, 5, 7-9"`` -> ``[3, 5, 7, 8, 9]``; raises ValueError naming what is wrong."""
    out: set[int] = set()
    for part in filter(None, (p.strip() for p in text.replace(";", ",").split(","))):
        lo, sep, hi = part.partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise ValueError(f"tile numbers must be whole numbers or ranges like 7-9, got {part!r}") from None
        if a < 0 or b < a:
            raise ValueError(f"{part!r} is not a valid tile range")
        out.update(range(a, b + 1))
    return sorted(out)


# -------------------------------------------------------------------------------------------------
# Messages and background jobs
# -------------------------------------------------------------------------------------------------
def notify_error(exc: BaseException, doing: str) -> None:
    """Tell the user that ``doing`` failed: the message for known errors, the type for others."""
    if isinstance(exc, Cancelled):
        show_info(f"{doing}: cancelled")
    elif isinstance(exc, (*USER_ERRORS, EngineError, OSError)):
        show_error(f"{doing}: {exc}")
    else:
        logger.error("%s failed", doing, exc_info=(type(exc), exc, exc.__traceback__))
        show_error(f"{doing} failed ({type(exc).__name__}: {exc}); details are in the log")


def notify_notes(notes: Sequence[str]) -> None:
    """Show each note once (a result's notes and the warnings caught with it often repeat)."""
    for note in dict.fromkeys(notes):
        show_warning(note)


class _Failed:
    """What a guarded job returns instead of raising (see :func:`start_worker`)."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _guard_generator(func: Callable, *args: Any, **kwargs: Any):
    try:
        return (yield from func(*args, **kwargs))
    except Exception as exc:  # noqa: BLE001 - handed to on_error on the main thread
        return _Failed(exc)


def _guard_function(func: Callable, *args: Any, **kwargs: Any) -> Any:
    try:
        return func(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - handed to on_error on the main thread
        return _Failed(exc)


_QUIT_HOOKED = False


def stop_engines_on_quit() -> None:
    """End the model processes as soon as napari's last window closes (once per application).

    napari waits at quit for every thread worker to reach its next yield; a job in the middle of a
    long forward pass or a training epoch would hold the exit for that long, and a job abandoned
    while suspended used to hold it for ever. Ending the processes first makes every running job
    raise :class:`Cancelled` at once, so napari exits within seconds and nothing keeps running.
    """
    global _QUIT_HOOKED
    if _QUIT_HOOKED:
        return
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    if app is None:
        return
    app.lastWindowClosed.connect(shutdown_engines)
    app.aboutToQuit.connect(shutdown_engines)
    _QUIT_HOOKED = True


def start_worker(func: Callable, *args: Any, on_yield: Callable | None = None,
                 on_return: Callable | None = None, on_error: Callable | None = None,
                 on_finish: Callable | None = None, **kwargs: Any) -> Any:
    """Run ``func`` (a function or generator function) in a napari thread worker.

    Callbacks run on the main thread, so they may touch layers. The job's exceptions come back as
    a return value and go to ``on_error`` (the default: :func:`notify_error`): napari 0.9's own
    handler of a worker's ``errored`` signal fails when a viewer is open.
    """
    from napari.qt.threading import create_worker

    stop_engines_on_quit()
    guard = _guard_generator if inspect.isgeneratorfunction(func) else _guard_function
    worker = create_worker(guard, func, *args, _start_thread=False, **kwargs)
    on_error = on_error or (lambda exc: notify_error(exc, getattr(func, "__name__", "job")))

    def returned(value: Any) -> None:
        if isinstance(value, _Failed):
            on_error(value.exc)
        elif on_return is not None:
            on_return(value)

    worker.returned.connect(returned)
    if on_yield is not None and hasattr(worker, "yielded"):
        worker.yielded.connect(on_yield)
    if on_finish is not None:
        worker.finished.connect(on_finish)
    worker.start()
    return worker


def was_closed(widget: Any) -> bool:
    """True when a dock widget's panel was closed (removed from napari's window): its top-level
    window is then neither napari's main window nor a floating dock."""
    from qtpy.QtWidgets import QDockWidget, QMainWindow

    try:
        top = widget.native.window()
    except RuntimeError:  # the Qt object is gone
        return True
    ever_docked = getattr(widget, "_was_docked", False)
    docked = isinstance(top, (QMainWindow, QDockWidget))
    if docked:
        widget._was_docked = True
    return ever_docked and not docked


class JobControls(Container):
    """Run and Cancel buttons, one progress bar per stage and a status line.

    ``start(stages)`` shows the bars; ``step(stage, value, total, text)`` moves one;
    ``finish(text)`` hides them and re-enables Run.
    """

    def __init__(self, run_text: str = "Run", stages: Sequence[str] = ("progress",)) -> None:
        self.run_button = PushButton(text=run_text)
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(value="")
        self.bars = {s: ProgressBar(value=0, min=0, max=1, label=s, visible=False) for s in stages}
        for stage, bar in self.bars.items():  # the container shows no labels: the bar says it
            bar.native.setFormat(f"{stage}: %v / %m")
            bar.native.setTextVisible(True)
        buttons = Container(widgets=[self.run_button, self.cancel_button], layout="horizontal",
                            labels=False)
        super().__init__(widgets=[buttons, *self.bars.values(), self.status], labels=False)

    @property
    def busy(self) -> bool:
        return self.cancel_button.enabled

    def start(self, text: str = "") -> None:
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        for bar in self.bars.values():
            bar.value, bar.max, bar.visible = 0, 1, True
        self.status.value = text

    def step(self, stage: str, value: int, total: int, text: str = "") -> None:
        bar = self.bars[stage]
        bar.max = max(int(total), 1)
        bar.value = min(int(value), bar.max)
        if text:
            self.status.value = text

    def finish(self, text: str = "") -> None:
        self.run_button.enabled = True
        self.cancel_button.enabled = False
        for bar in self.bars.values():
            bar.visible = False
        self.status.value = text
