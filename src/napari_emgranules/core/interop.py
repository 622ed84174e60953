"""Models in other tools' formats: ONNX export, ZEISS ``.czann``, and ONNX Runtime as an engine.

Export
    :func:`export_onnx` writes a model as ONNX (via Keras' exporter and ``tf2onnx``, TensorFlow
    backend) with dynamic batch, height and width: input ``image`` float32 ``(n, h, w, 1)`` in
    [0, 1] (the image scaled by its dtype's range, as everywhere in this package), output
    ``logits`` float32 ``(n, h, w, n_classes)``; sides must be multiples of 128. The model card
    (kind, architecture, schema with names and colours, pixel size, input scaling, provenance) is
    stored as JSON in the ONNX ``metadata_props`` (key :data:`ONNX_CARD_KEY`) and in a sidecar
    ``<file>.onnx.json``.

    :func:`export_czann` wraps the network, with a softmax appended, into a ZEISS ZEN / arivis
    model file through the ``czmodel`` package: ``.czann`` (CZANN 2.1.0: class names, tile shape,
    minimum tile overlap, pixel scaling in metres) or, for a ``.czmodel`` path, the legacy
    Intellesis format (class names and colours, pixel type, border size).

Engine
    :func:`load_onnx_model` (also reached through :func:`~.models.load_model` for ``.onnx``
    files) returns an :class:`OnnxSegmentationModel`: a :class:`~.models.SegmentationModel` whose
    predictions come from ONNX Runtime, so :mod:`.segment` runs it unchanged and no TensorFlow
    is needed. Files without a model card, or whose input channels or class count do not fit the
    card, are refused with a message that says what differs.

``onnx``, ``onnxruntime``, ``tf2onnx`` (export only) and ``czmodel`` (``.czann`` only) are
optional: ``pip install "napari-emgranules[onnx]"``; they are imported only when used.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
import tempfile
import threading
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .calibration import softmax_max
from .models import (
    _CACHE,
    _CACHE_LOCK,
    MULTIPLE,
    ModelCard,
    SegmentationModel,
    WeightsError,
    _as_batch,
    _read_sidecar,
    apply_card_overrides,
    register_format,
    sidecar_path,
)
from .schema import ClassSchema

logger = logging.getLogger(__name__)

__all__ = [
    "CZANN_BORDER_PX",
    "CZANN_TILE_PX",
    "ExportError",
    "ONNX_CARD_KEY",
    "OnnxSegmentationModel",
    "export_czann",
    "export_onnx",
    "load_onnx_model",
]

ONNX_CARD_KEY = "napari-emgranules.model-card"
"""``metadata_props`` key holding the model card as JSON."""
ONNX_OUTPUT_KEY = "napari-emgranules.output"
"""``metadata_props`` key saying what the graph's output is: ``logits`` or ``probabilities``."""
ONNX_INSTALL_HINT = 'pip install "napari-emgranules[onnx]"'

DEFAULT_OPSET = 17
"""ONNX opset of :func:`export_onnx` (ONNX Runtime >= 1.13 runs it)."""
CZANN_OPSET = 18
"""Opset of the network inside a ``.czann`` (czmodel's default for CZANN 2.1.0, ZEN >= 3.13)."""
CZANN_TILE_PX = 1024
"""Tile side written into a ``.czann`` (the original tool's tile; a multiple of 128)."""
CZANN_BORDER_PX = 128
"""Border (context) in pixels ZEN adds around each tile; the CZANN ``MinOverlap`` is twice it.

The U-Nets' receptive field is far larger than any practical border, so this is the margin past
which tile edges no longer change the result noticeably: with a 128 px halo on the 128 px grid
this package's ``tiled`` mode agrees with the whole-image pass to 2e-3 in probability more than
256 px from the image edge (docs/benchmarks.md). ZEN's tiles are not aligned to that grid, so
expect slightly larger differences at tile seams there.
"""
PIXEL_TYPES = ("Gray8", "Gray16")

_SPATIAL_DIMS = ("batch", "height", "width")


class ExportError(ValueError):
    """A model cannot be exported (missing package, unsupported backend, bad arguments)."""


def _need(module: str, package: str, what: str, error: type[Exception] = ExportError):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise error(
            f"{what} needs the '{package}' package, which is not installed; install it with: "
            f"{ONNX_INSTALL_HINT}"
        ) from None


# -------------------------------------------------------------------------------------------------
# ONNX graph helpers
# -------------------------------------------------------------------------------------------------
def _dims(value_info) -> list[int | str | None]:
    """A graph input/output's shape: ints for fixed sides, names (or None) for dynamic ones."""
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]


def _default_opset(proto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def _graph_inputs(proto) -> list:
    initializers = {i.name for i in proto.graph.initializer}
    return [i for i in proto.graph.input if i.name not in initializers]


def _rename_tensor(graph, old: str, new: str) -> None:
    for node in graph.node:
        node.output[:] = [new if o == old else o for o in node.output]
        node.input[:] = [new if i == old else i for i in node.input]
    for out in graph.output:
        if out.name == old:
            out.name = new


def _set_dims(value_info, dims: list[int | str]) -> None:
    shape = value_info.type.tensor_type.shape
    for d, want in zip(shape.dim, dims, strict=True):
        if isinstance(want, int):
            d.dim_value = want
        else:
            d.dim_param = want


def _set_metadata(proto, card: dict[str, Any], output: str) -> None:
    props = {p.key: p.value for p in proto.metadata_props}
    props[ONNX_CARD_KEY] = json.dumps(card)
    props[ONNX_OUTPUT_KEY] = output
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def _with_softmax(proto, name: str = "probabilities", temperature: float = 1.0):
    """A copy of a logits model whose only output is the softmax over the class axis (of the
    logits divided by the card's calibrated ``temperature``, as this package computes it)."""
    import onnx
    from onnx import helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    logits = out.graph.output[0].name
    if temperature != 1.0:
        out.graph.initializer.append(numpy_helper.from_array(
            np.asarray(temperature, np.float32), name="nemg__temperature"))
        out.graph.node.append(helper.make_node("Div", [logits, "nemg__temperature"],
                                               ["nemg__calibrated"], name="calibrate"))
        logits = "nemg__calibrated"
    out.graph.node.append(helper.make_node("Softmax", [logits], [name], axis=3, name="softmax"))
    out.graph.output[0].name = name
    return out


_OUT = {"labels": "nemg__labels", "confidence": "nemg__confidence",
        "probabilities": "nemg__probabilities"}


def _inference_proto(proto, output_kind: str) -> tuple[Any, dict[str, str]]:
    """A copy of ``proto`` with labels (uint8), confidence and probabilities outputs.

    The reductions run inside ONNX Runtime (multi-threaded), as the Keras path runs them in the
    graph, so a whole-micrograph pass returns uint8 labels without a slow numpy argmax. Returns
    the model and the output names for ``labels``, ``confidence``, ``probabilities`` and
    ``scores`` (the network's own output).
    """
    import onnx
    from onnx import TensorProto, helper

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    g = out.graph
    scores = g.output[0].name
    dims = _dims(g.output[0])
    spatial = [d if isinstance(d, int) and d else n for d, n in zip(dims[:3], _SPATIAL_DIMS,
                                                                    strict=False)]
    names = {**_OUT, "scores": scores}
    nodes = [
        helper.make_node("ArgMax", [scores], ["nemg__argmax"], axis=3, keepdims=0,
                         name="nemg__argmax"),
        helper.make_node("Cast", ["nemg__argmax"], [names["labels"]], to=TensorProto.UINT8,
                         name="nemg__cast"),
    ]
    new_outputs = [helper.make_tensor_value_info(names["labels"], TensorProto.UINT8, spatial),
                   helper.make_tensor_value_info(names["confidence"], TensorProto.FLOAT, spatial)]
    if output_kind == "logits":
        nodes.append(helper.make_node("Softmax", [scores], [names["probabilities"]], axis=3,
                                      name="nemg__softmax"))
        new_outputs.append(helper.make_tensor_value_info(
            names["probabilities"], TensorProto.FLOAT,
            [*spatial, dims[3] if len(dims) == 4 and dims[3] else "classes"]))
    else:
        names["probabilities"] = scores
    if _default_opset(out) >= 18:
        g.initializer.append(helper.make_tensor("nemg__class_axis", TensorProto.INT64, [1], [3]))
        nodes.append(helper.make_node("ReduceMax", [names["probabilities"], "nemg__class_axis"],
                                      [names["confidence"]], keepdims=0, name="nemg__max"))
    else:
        nodes.append(helper.make_node("ReduceMax", [names["probabilities"]], [names["confidence"]],
                                      axes=[3], keepdims=0, name="nemg__max"))
    g.node.extend(nodes)
    g.output.extend(new_outputs)
    return out, names


# -------------------------------------------------------------------------------------------------
# Export
# -------------------------------------------------------------------------------------------------
def _export_card(model: SegmentationModel, fmt: str, opset: int | None,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    from .. import __version__

    card = model.card
    prov = {k: v for k, v in card.provenance.items() if k not in ("source", "source_format")}
    if "source" in card.provenance:
        prov["exported_from"] = card.provenance["source"]
    prov["export"] = {
        "format": fmt,
        "opset": opset,
        "package_version": __version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    if model.views != 1:  # the file holds the network, which other runtimes run on one view
        prov["export"]["views_in_napari_emgranules"] = model.views
    return {**card.to_dict(), "views": 1, "provenance": prov}


def _output_kind(model: SegmentationModel) -> str:
    return model.output_kind if isinstance(model, OnnxSegmentationModel) else "logits"


def _keras_to_onnx(model: SegmentationModel, opset: int):
    """The network as an ONNX ``ModelProto`` with input ``image`` and output ``logits``."""
    if isinstance(model, OnnxSegmentationModel):
        return model.onnx_proto()
    onnx = _need("onnx", "onnx", "ONNX export")
    _need("tf2onnx", "tf2onnx", "ONNX export")
    from ._backend import backend_name

    backend = backend_name()
    if backend != "tensorflow":
        raise ExportError(
            f"ONNX export runs on Keras' TensorFlow backend, but this process uses {backend!r}; "
            "run it with KERAS_BACKEND=tensorflow (the weights are backend-neutral)"
        )
    import tensorflow as tf

    logging.getLogger("tf2onnx").setLevel(logging.WARNING)
    spec = tf.TensorSpec((None, None, None, 1), tf.float32, name="image")
    with tempfile.TemporaryDirectory(prefix="emgranules-onnx-") as tmp:
        target = Path(tmp) / "model.onnx"
        try:
            with warnings.catch_warnings():  # tf2onnx's own NumPy deprecation chatter is not ours
                warnings.filterwarnings("ignore", message=r".*np\.object", category=FutureWarning)
                model.keras_model.export(str(target), format="onnx", input_signature=[spec],
                                         opset_version=int(opset), verbose=False)
        except (ValueError, TypeError, NotImplementedError, RuntimeError) as exc:
            raise ExportError(f"the ONNX conversion failed ({type(exc).__name__}: {exc})") from exc
        proto = onnx.load(str(target))
    g = proto.graph
    if len(_graph_inputs(proto)) != 1 or len(g.output) != 1:
        raise ExportError("the converted network does not have exactly one input and one output")
    _rename_tensor(g, g.output[0].name, "logits")
    _set_dims(_graph_inputs(proto)[0], [*_SPATIAL_DIMS, 1])
    _set_dims(g.output[0], [*_SPATIAL_DIMS, model.n_classes])
    proto.doc_string = (
        f"napari-emgranules {model.kind} model ({model.card.architecture}): input 'image' float32 "
        f"(n, h, w, 1) in [0, 1] (image / dtype max), h and w multiples of {MULTIPLE}; output "
        f"'logits' float32 (n, h, w, {model.n_classes}). Model card in metadata_props "
        f"'{ONNX_CARD_KEY}'."
    )
    return proto


def _check_target(path: str | os.PathLike, suffixes: tuple[str, ...], overwrite: bool,
                  sidecar: bool) -> tuple[Path, Path | None]:
    p = Path(path).expanduser()
    if p.suffix.lower() not in suffixes:
        raise ExportError(f"{p}: the file name must end with {' or '.join(suffixes)}")
    if p.is_dir():
        raise ExportError(f"{p}: is a folder; give a file name to write to")
    side = sidecar_path(p) if sidecar else None
    existing = [q for q in (p, side) if q is not None and q.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]}: exists already; choose another name or pass "
                              "overwrite=True (CLI: --overwrite)")
    return p, side


def _write_files(files: dict[Path, Any]) -> None:
    """Write ``{target: writer(tmp_path)}`` into a temporary folder beside them, then move them in."""
    first = next(iter(files))
    first.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=".exporting-", dir=first.parent))
    try:
        staged = []
        for target, writer in files.items():
            tmp = tmpdir / target.name
            writer(tmp)
            staged.append((tmp, target))
        for tmp, target in staged:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def export_onnx(model: SegmentationModel, path: str | os.PathLike, *, opset: int = DEFAULT_OPSET,
                overwrite: bool = False) -> Path:
    """Write ``model`` as an ONNX file with its model card, plus a JSON sidecar.

    Parameters
    ----------
    model : SegmentationModel
        A loaded model (Keras on the TensorFlow backend; an :class:`OnnxSegmentationModel` is
        written as it is, with its opset).
    path : path-like
        Target ``.onnx`` file; the sidecar is ``<path>.json`` (e.g. ``granules.onnx.json``).
    opset : int
        ONNX opset (default 17; ``tf2onnx`` supports up to 18).
    overwrite : bool
        Replace existing files.

    Returns
    -------
    pathlib.Path
        The ONNX file. Its input ``image`` is float32 ``(n, h, w, 1)`` in [0, 1] with dynamic
        batch, height and width (multiples of 128); its output ``logits`` is
        ``(n, h, w, n_classes)``; ``metadata_props`` holds the model card under
        ``"napari-emgranules.model-card"``.

    Raises
    ------
    ExportError
        Missing ``onnx``/``tf2onnx``, a non-TensorFlow Keras backend, a bad file name, or a failed
        conversion.
    FileExistsError
        The file or its sidecar exists and ``overwrite`` is False.
    """
    p, side = _check_target(path, (".onnx",), overwrite, sidecar=True)
    proto = _keras_to_onnx(model, opset)
    used_opset = _default_opset(proto)
    card = _export_card(model, "onnx", used_opset)
    _set_metadata(proto, card, _output_kind(model))
    import onnx

    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the exported ONNX model is invalid ({exc})") from exc
    text = json.dumps(card, indent=2)
    _write_files({
        p: lambda tmp: onnx.save(proto, str(tmp)),
        side: lambda tmp: tmp.write_text(text, encoding="utf-8"),
    })
    logger.info("exported %s to %s (opset %d)", model, p, used_opset)
    return p


def _hex_rgb(colour: str) -> tuple[int, int, int]:
    c = colour.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def export_czann(model: SegmentationModel, path: str | os.PathLike, *, tile: int = CZANN_TILE_PX,
                 border_px: int = CZANN_BORDER_PX, pixel_type: str = "Gray16",
                 opset: int = CZANN_OPSET, model_id: str | None = None,
                 overwrite: bool = False) -> Path:
    """Write ``model`` as a ZEISS ZEN / arivis model file (``.czann``, or legacy ``.czmodel``).

    The network gets a softmax over the classes (ZEN expects probabilities in [0, 1]) and a
    fixed tile shape ``(tile, tile, 1)``; its input is float32 in [0, 1], which ZEN makes from
    Gray8/Gray16 images by their range, exactly this package's input scaling. The ONNX inside
    also carries this package's model card, so :func:`load_onnx_model` can read it back.

    Parameters
    ----------
    model : SegmentationModel
        Keras (TensorFlow backend) or ONNX model.
    path : path-like
        ``.czann`` for CZANN 2.1.0 (ZEN >= 3.13; metadata: type
        ``SingleClassSemanticSegmentation``, class names, input/output shape, ``MinOverlap`` =
        2 x ``border_px``, ``Scaling`` = the model's pixel size in metres, model name and id), or
        ``.czmodel`` for the legacy Intellesis format (class names and colours from the schema,
        ``PixelType``, ``BorderSize``, ``ConvertToMonochrome``). CZANN 2.1.0 has no fields for
        colours or pixel type; both stay in the embedded model card.
    tile : int
        Tile side ZEN feeds the network, a multiple of 128 (default 1024).
    border_px : int
        Context ZEN adds around each tile, even (default 128; see :data:`CZANN_BORDER_PX`).
    pixel_type : {"Gray16", "Gray8"}
        Pixel type of the micrographs the model is for (``.czmodel`` metadata; recorded in the
        card for ``.czann``). Both are scaled to [0, 1] by their range.
    opset : int
        ONNX opset of the embedded network (default 18, czmodel's).
    model_id : str, optional
        UUID of the model (default: a new random one).
    overwrite : bool
        Replace an existing file.

    Raises
    ------
    ExportError
        ``czmodel``/``onnx`` missing, bad arguments, or czmodel rejecting the metadata.
    FileExistsError
        The file exists and ``overwrite`` is False.
    """
    p, _ = _check_target(path, (".czann", ".czmodel"), overwrite, sidecar=False)
    legacy = p.suffix.lower() == ".czmodel"
    if not isinstance(tile, int) or tile < MULTIPLE or tile % MULTIPLE:
        raise ExportError(f"tile must be a multiple of {MULTIPLE} px, got {tile!r}")
    if not isinstance(border_px, int) or border_px < 0 or border_px % 2 or 2 * border_px >= tile:
        raise ExportError(f"border_px must be an even number of pixels below tile/2, got {border_px!r}")
    if pixel_type not in PIXEL_TYPES:
        raise ExportError(f"pixel_type must be one of {', '.join(PIXEL_TYPES)}, got {pixel_type!r}")
    if model_id is not None:
        try:
            model_id = str(uuid.UUID(str(model_id)))
        except ValueError:
            raise ExportError(f"model_id must be a UUID, got {model_id!r}") from None
    model_id = model_id or str(uuid.uuid4())
    if model.card.input_scaling != "dtype-range":
        warnings.warn(
            f"{model!r} expects each micrograph stretched by its own grey levels (input scaling "
            f"{model.card.input_scaling!r}); ZEN scales each tile by its pixel type's range "
            "instead, so ZEN's results will differ from this package's unless the micrographs are "
            "contrast-stretched before (1st and 99th percentiles to 15% and 75% of the range)",
            UserWarning, stacklevel=2)
    _need("czmodel", "czmodel", "ZEISS model export (Python >= 3.11)")
    import onnx
    from czmodel.core.legacy_model_metadata import ModelMetadata as LegacyMetadata
    from czmodel.core.legacy_model_metadata import SegmentationClass
    from czmodel.core.model_metadata import ModelMetadata, ModelType
    from czmodel.core.util.onnx_export import DefaultOnnxConverter, LegacyOnnxConverter

    schema: ClassSchema = model.card.schema
    n = schema.n_classes
    names = [c.name for c in schema.classes]
    proto = _keras_to_onnx(model, opset)
    if _output_kind(model) == "logits":
        proto = _with_softmax(proto, temperature=float(model.card.temperature))
    _set_dims(_graph_inputs(proto)[0], ["batch", tile, tile, 1])
    _set_dims(proto.graph.output[0], ["batch", tile, tile, n])
    card = _export_card(model, p.suffix.lower().lstrip("."), _default_opset(proto), {
        "tile": tile, "border_px": border_px, "pixel_type": pixel_type, "model_id": model_id})
    _set_metadata(proto, card, "probabilities")
    name = f"napari-emgranules {model.kind} ({model.card.architecture})"
    if legacy:
        meta = LegacyMetadata(classes=names, pixel_types=pixel_type, name=name,
                              color_handling="ConvertToMonochrome", border_size=border_px,
                              model_id=model_id)
        meta = meta._replace(classes=[SegmentationClass(c.name, _hex_rgb(c.color))
                                      for c in schema.classes])
        converter: Any = LegacyOnnxConverter()
    else:
        px_m = float(model.card.pixel_size_nm) * 1e-9
        meta = ModelMetadata(model_type=ModelType.SINGLE_CLASS_SEMANTIC_SEGMENTATION,
                             input_shape=[tile, tile, 1], output_shape=[tile, tile, n],
                             model_id=model_id, model_name=name, classes=names,
                             min_overlap=[2 * border_px, 2 * border_px], scaling=(px_m, px_m))
        converter = DefaultOnnxConverter()

    def write(tmp: Path) -> None:
        onnx_tmp = tmp.with_name(tmp.name + ".onnx")
        onnx.save(proto, str(onnx_tmp))
        try:
            converter.convert(str(onnx_tmp), meta, str(tmp))
        except ValueError as exc:
            raise ExportError(f"czmodel refused the model: {exc}") from exc
        finally:
            onnx_tmp.unlink(missing_ok=True)

    _write_files({p: write})
    logger.info("exported %s to %s (%s)", model, p, "legacy czmodel" if legacy else "CZANN 2.1.0")
    return p


# -------------------------------------------------------------------------------------------------
# ONNX Runtime engine
# -------------------------------------------------------------------------------------------------
class OnnxSegmentationModel(SegmentationModel):
    """A segmentation network run by ONNX Runtime, with its :class:`ModelCard`.

    Used by :func:`~.segment.segment_micrograph` like a Keras model (it overrides the
    ``predict_*`` methods); it cannot be trained or saved as Keras weights.

    Parameters
    ----------
    path : pathlib.Path
        The ``.onnx`` file.
    proto : onnx.ModelProto
        The network (input ``(n, h, w, 1)``, first output ``(n, h, w, n_classes)``).
    card : ModelCard
        Its metadata.
    output_kind : {"logits", "probabilities"}
        What the network's first output is.
    """

    engine = "onnxruntime"

    def __init__(self, path: Path, proto, card: ModelCard, output_kind: str = "logits"):
        self.path = Path(path)
        self.card = card
        self.output_kind = output_kind
        self._views = 1  # ONNX Runtime runs the network as stored: one view
        self._fns = {}
        self._lock = threading.Lock()
        self._n_params = int(sum(int(np.prod(t.dims)) for t in proto.graph.initializer
                                 if t.data_type in (1, 10, 11)))  # float, float16, double
        in_dims = _dims(_graph_inputs(proto)[0])
        self.fixed_size = tuple(in_dims[1:3]) if all(isinstance(d, int) and d
                                                     for d in in_dims[1:3]) else None
        augmented, self._names = _inference_proto(proto, output_kind)
        self._session = _session(augmented, self.path)
        self._input = self._session.get_inputs()[0].name

    @property
    def keras_model(self):  # noqa: D401 - property standing in for the Keras attribute
        """Not available: raises :class:`WeightsError` saying what to use instead."""
        raise WeightsError(
            f"{self.path}: is an ONNX model, run by ONNX Runtime for inference only; it cannot be "
            "trained, fine-tuned or saved as Keras weights — use the Keras weights it was exported "
            "from"
        )

    def __repr__(self) -> str:
        return "Onnx" + super().__repr__()

    def for_inference(self, precision: str = "float32", jit: bool = False) -> OnnxSegmentationModel:
        """Itself: ONNX Runtime optimises the graph on loading and runs it in the file's precision."""
        if precision != "float32":
            raise ValueError(f"{self.path}: an ONNX model runs in the precision it was exported in; "
                             f"precision {precision!r} applies to Keras weights only")
        return self

    def with_threshold(self, threshold: float | None) -> OnnxSegmentationModel:
        """Itself for the arg-max; a probability threshold needs the Keras weights."""
        if threshold is None or threshold == 0.5:
            return self
        raise ValueError(f"{self.path}: a granule probability threshold applies to Keras weights "
                         "only (the ONNX graph ends in its own arg-max)")

    def with_views(self, views: int | None) -> OnnxSegmentationModel:
        """Itself for one view; averaging symmetric views needs the Keras weights."""
        if views is None or views == 1:
            return self
        raise ValueError(f"{self.path}: averaging {views} symmetric views applies to Keras weights "
                         "only (ONNX Runtime runs the stored network on one view)")

    def count_params(self) -> int:
        return self._n_params

    def onnx_proto(self):
        """The network as stored in the file (without the added reductions)."""
        import onnx

        return onnx.load(str(self.path))

    def _run(self, outputs: list[str], batch: np.ndarray) -> list[np.ndarray]:
        x = _as_batch(batch)
        if self.fixed_size is not None and tuple(x.shape[1:3]) != self.fixed_size:
            h, w = self.fixed_size
            raise ValueError(
                f"{self.path}: the ONNX network takes only {h}x{w} px inputs, got "
                f"{x.shape[1]}x{x.shape[2]}; segment with mode='tiled' and max_window={h} "
                "(or export the model again with dynamic sides)"
            )
        return self._session.run([self._names[o] for o in outputs], {self._input: x})

    def _calibrated(self) -> bool:
        """The card's temperature applies (a network with logits; the softmax is done here)."""
        return self.card.temperature != 1.0 and self.output_kind == "logits"

    def predict_labels(self, batch: np.ndarray, confidence: bool = True
                       ) -> tuple[np.ndarray, np.ndarray | None]:
        if not confidence:
            (labels,) = self._run(["labels"], batch)
            return np.asarray(labels, np.uint8), None
        if self._calibrated():
            z = self.predict_logits(batch)
            return np.argmax(z, axis=-1).astype(np.uint8), softmax_max(z, self.card.temperature)
        labels, conf = self._run(["labels", "confidence"], batch)
        return np.asarray(labels, np.uint8), np.asarray(conf, np.float32)

    def predict_probabilities(self, batch: np.ndarray) -> np.ndarray:
        if self._calibrated():
            z = self.predict_logits(batch) / np.float32(self.card.temperature)
            e = np.exp(z - z.max(axis=-1, keepdims=True))
            return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
        return np.asarray(self._run(["probabilities"], batch)[0], np.float32)

    def predict_scores(self, batch: np.ndarray) -> np.ndarray:
        z = self.predict_logits(batch)
        return z[..., 1] - z[..., 0] if z.shape[-1] == 2 else z

    def predict_logits(self, batch: np.ndarray) -> np.ndarray:
        if self.output_kind != "logits":
            raise ValueError(f"{self.path}: the network outputs probabilities, not logits")
        return np.asarray(self._run(["scores"], batch)[0], np.float32)


def _session(proto, path: Path):
    ort = _need("onnxruntime", "onnxruntime", f"{path}: running ONNX models", WeightsError)
    available = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(proto.SerializeToString(), sess_options=options,
                                    providers=providers or None)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own zoo of error types
        raise WeightsError(
            f"{path}: ONNX Runtime cannot run this network ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None


def _onnx_card(proto, path: Path) -> tuple[ModelCard | None, str]:
    props = {p.key: p.value for p in proto.metadata_props}
    output_kind = props.get(ONNX_OUTPUT_KEY, "logits")
    if output_kind not in ("logits", "probabilities"):
        raise WeightsError(f"{path}: unknown '{ONNX_OUTPUT_KEY}' {output_kind!r} in the metadata")
    raw = props.get(ONNX_CARD_KEY)
    if raw is None:
        return None, output_kind
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{path}: the model card in the ONNX metadata is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: the model card in the ONNX metadata is not a JSON object")
    return ModelCard.from_dict(data, where=f"{path} (ONNX metadata)"), output_kind


def _load_proto(p: Path):
    onnx = _need("onnx", "onnx", f"{p}: reading ONNX models", WeightsError)
    from google.protobuf.message import DecodeError

    if not p.exists():
        raise WeightsError(f"{p}: no such ONNX file")
    if p.is_dir():
        raise WeightsError(f"{p}: is a folder, not an ONNX file")
    if p.stat().st_size == 0:
        raise WeightsError(f"{p}: the ONNX file is empty")
    try:
        proto = onnx.load(str(p))
    except (DecodeError, ValueError, OSError, RuntimeError) as exc:
        raise WeightsError(f"{p}: is not an ONNX model (it cannot be parsed: "
                           f"{type(exc).__name__}: {exc})") from None
    if proto.ir_version <= 0 or not proto.graph.node or not proto.graph.output:
        raise WeightsError(f"{p}: is not an ONNX model (no network graph in the file)")
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise WeightsError(f"{p}: is not a valid ONNX model ({first})") from None
    return proto


def _check_io(proto, p: Path, card: ModelCard) -> None:
    """Refuse networks whose input or output does not fit the card, saying what differs."""
    from onnx import TensorProto

    inputs = _graph_inputs(proto)
    if len(inputs) != 1:
        raise WeightsError(f"{p}: the network has {len(inputs)} inputs "
                           f"({', '.join(i.name for i in inputs)}); a segmentation model has one image")
    dims = _dims(inputs[0])
    if len(dims) != 4:
        raise WeightsError(f"{p}: the network's input has {len(dims)} dimensions {dims}; expected "
                           "4, (n, h, w, 1) channels-last")
    elem = inputs[0].type.tensor_type.elem_type
    if elem != TensorProto.FLOAT:
        raise WeightsError(f"{p}: the network's input is {TensorProto.DataType.Name(elem).lower()}; "
                           "expected float32 images in [0, 1]")
    if isinstance(dims[3], int) and dims[3] != 1:
        hint = " (channels-first? export it channels-last)" if dims[1] == 1 else ""
        raise WeightsError(f"{p}: the network takes {dims[3]} input channels{hint}; the models here "
                           "take 1 (gray micrographs, input (n, h, w, 1))")
    out = _dims(proto.graph.output[0])
    if len(out) != 4:
        raise WeightsError(f"{p}: the network's output has {len(out)} dimensions {out}; expected 4, "
                           "(n, h, w, classes)")
    n = card.schema.n_classes
    if isinstance(out[3], int) and out[3] and out[3] != n:
        raise WeightsError(
            f"{p}: the network outputs {out[3]} classes, but the {card.schema.kind} schema in its "
            f"metadata has {n} ({', '.join(card.schema.names.values())}); give a schema with "
            f"{out[3]} classes"
        )


def load_onnx_model(path: str | os.PathLike, kind: str | None = None, *,
                    schema: ClassSchema | None = None,
                    pixel_size_nm: float | None = None) -> OnnxSegmentationModel:
    """Load an ONNX segmentation network to run with ONNX Runtime; cached per file and options.

    Parameters
    ----------
    path : path-like
        ``.onnx`` file written by :func:`export_onnx` (model card in its metadata), or any ONNX
        network with input ``(n, h, w, 1)`` float32 and output ``(n, h, w, classes)`` that has a
        sidecar ``<file>.onnx.json`` holding a model card.
    kind : str, optional
        Checked against the card's kind.
    schema : ClassSchema, optional
        Overrides the card's schema (its class count must match the network's).
    pixel_size_nm : float, optional
        Overrides the card's pixel size.

    Raises
    ------
    WeightsError
        Missing ``onnx``/``onnxruntime``; not an ONNX file; no model card; input channels, input
        type or class count that do not fit; a network ONNX Runtime cannot run.
    """
    p = Path(path).expanduser()
    key = None
    if p.is_file():
        st = p.stat()
        key = ("onnx", str(p.resolve()), st.st_mtime_ns, st.st_size, kind,
               json.dumps(schema.to_dict()) if schema else None, pixel_size_nm)
        with _CACHE_LOCK:
            if key in _CACHE:
                return _CACHE[key]
    proto = _load_proto(p)
    card, output_kind = _onnx_card(proto, p)
    if card is None:
        card = _read_sidecar(p)
    if card is None:
        raise WeightsError(
            f"{p}: neither the ONNX metadata ('{ONNX_CARD_KEY}') nor a sidecar "
            f"({sidecar_path(p).name}) says what this network is (kind, classes, pixel size); "
            "export it with export_onnx / 'emgranules export-model', or write a sidecar"
        )
    if kind is not None and card.kind != kind:
        raise WeightsError(f"{p}: this is a {card.kind} model, but a {kind} model was asked for")
    apply_card_overrides(card, p, "onnx", schema, pixel_size_nm)
    _check_io(proto, p, card)
    model = OnnxSegmentationModel(p, proto, card, output_kind)
    # A network with a dynamic class axis: count the classes on one small blank tile.
    if not isinstance(_dims(proto.graph.output[0])[3], int) or not _dims(proto.graph.output[0])[3]:
        side = model.fixed_size or (MULTIPLE, MULTIPLE)
        got = model.predict_probabilities(np.zeros((1, *side), np.float32)).shape[-1]
        if got != card.schema.n_classes:
            raise WeightsError(
                f"{p}: the network outputs {got} classes, but the {card.schema.kind} schema in its "
                f"metadata has {card.schema.n_classes} ({', '.join(card.schema.names.values())})"
            )
    logger.info("loaded %s from %s", model, p)
    if key is not None:
        with _CACHE_LOCK:
            _CACHE[key] = model
    return model


register_format(lambda p: p.suffix.lower() == ".onnx", load_onnx_model)  # models.load_model opens them
