"""The two U-Nets of the original tool, their metadata, and loading/saving their weights.

Architectures (from the paper's Supplement 2, layer for layer):

* **Locations** = ``unet_model7``: encoder blocks of 8, 8, 16, 32, 64, 128, 256, 512 filters
  (two 3x3 ReLU he_normal convolutions each; dropout 0.3 in the two deepest; 2x2 max-pooling between),
  decoder of 3x3 stride-2 transposed convolutions + skip concatenation + two convolutions with
  256, 128, 64, 32, 16, 8, 8 filters, then a 3x3 convolution with 4 filters and a 1x1 convolution to
  7 class logits. 8,656,655 parameters.
* **Granules** = ``unet_model``: the same with 4 filters in the first encoder block and the last
  decoder block, and 2 classes.

Both take ``(None, None, 1)`` inputs: any image whose sides are multiples of 128 (7 poolings) runs.

Weights are stored as Keras 3 ``.weights.h5`` with a JSON sidecar (:class:`ModelCard`). The loader
also accepts full ``.keras`` models (opened in safe mode), legacy Keras-2 ``.h5`` weight or model
files, and TensorFlow checkpoints (``<prefix>.index`` + ``<prefix>.data-*``) as written by the
original notebook's ``ModelCheckpoint(save_weights_only=True)``. Weights are always copied into a
model built here, so nothing in a file decides the architecture and no code from a file runs.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._backend import BackendError, get_keras
from .schema import ClassSchema, SchemaError, default_schema

logger = logging.getLogger(__name__)

__all__ = [
    "ARCHITECTURES",
    "INPUT_SCALINGS",
    "PRECISIONS",
    "MODEL_PIXEL_SIZE_NM",
    "ModelCard",
    "SegmentationModel",
    "WeightsError",
    "UntrainedModelWarning",
    "build_locations_unet",
    "build_granules_unet",
    "build_unet",
    "load_model",
    "read_model_card",
    "default_model",
    "save_model",
    "WEIGHTS_DTYPES",
    "sidecar_path",
    "weights_format",
    "clear_model_cache",
    "reduce_scores",
]

MODEL_PIXEL_SIZE_NM = 0.8
"""Pixel size the original models were trained at (nm per pixel)."""

INPUT_SCALINGS = ("dtype-range", "percentile")
"""How a model card says its input is scaled (see :class:`ModelCard`)."""

MULTIPLE = 128
"""Input sides must be multiples of this (2**7: seven 2x2 poolings)."""

# Filters per encoder block (8 blocks) and decoder block (7 blocks), and the head width.
PRECISIONS: tuple[str, ...] = ("float32", "bfloat16", "float16")
"""Compute precisions :meth:`SegmentationModel.for_inference` offers."""

VIEWS = (1, 2, 4, 8)
"""Numbers of symmetric views a model can average at inference (:attr:`ModelCard.views`)."""

_VIEW_GROUPS = {  # (transpose?, then mirror these axes of (n, h, w, c)): symmetry groups of the square
    1: [(False, ())],
    2: [(False, ()), (True, ())],  # the input and its transpose
    4: [(False, ()), (True, (1,)), (False, (1, 2)), (True, (2,))],  # quarter turns 0, 90, 180, 270
    8: [(t, axes) for t in (False, True) for axes in ((), (1,), (2,), (1, 2))],
}


def _view(ops, x, transposed: bool, axes: tuple[int, ...]):
    """One symmetric view of a batch ``(n, h, w, c)``: transpose (if asked), then mirror ``axes``."""
    y = ops.transpose(x, (0, 2, 1, 3)) if transposed else x
    return ops.flip(y, axes) if axes else y


def _unview(ops, y, transposed: bool, axes: tuple[int, ...]):
    """:func:`_view` undone."""
    y = ops.flip(y, axes) if axes else y
    return ops.transpose(y, (0, 2, 1, 3)) if transposed else y


_VIEW_MEAN_LAYER = None


def _view_mean_layer(keras):
    """The Keras layer class that averages a network's float32 logits over a view group in a
    loop (:meth:`SegmentationModel._view_logits`); made on first use, as Keras is imported late."""
    global _VIEW_MEAN_LAYER
    if _VIEW_MEAN_LAYER is None:
        ops = keras.ops

        class ViewMean(keras.layers.Layer):
            def __init__(self, net, group, n_classes: int, **kwargs):
                super().__init__(**kwargs)
                self.net, self.group, self.n_classes = net, list(group), int(n_classes)

            def call(self, x):
                views = [lambda z, v=v: _view(ops, z, *v) for v in self.group]
                backs = [lambda z, v=v: _unview(ops, z, *v) for v in self.group]

                def body(i, total):
                    y = ops.cast(self.net(ops.switch(i, views, x)), "float32")
                    return total + ops.switch(i, backs, y)

                shape = ops.shape(x)
                zero = ops.zeros((shape[0], shape[1], shape[2], self.n_classes), "float32")
                return ops.fori_loop(0, len(self.group), body, zero) / float(len(self.group))

            def compute_output_shape(self, input_shape):
                return (*input_shape[:3], self.n_classes)

        _VIEW_MEAN_LAYER = ViewMean
    return _VIEW_MEAN_LAYER


ARCHITECTURES: dict[str, dict[str, Any]] = {
    "unet_model7": {
        "kind": "locations",
        "encoder": (8, 8, 16, 32, 64, 128, 256, 512),
        "decoder": (256, 128, 64, 32, 16, 8, 8),
        "head": 4,
        "n_classes": 7,
    },
    "unet_model": {
        "kind": "granules",
        "encoder": (4, 8, 16, 32, 64, 128, 256, 512),
        "decoder": (256, 128, 64, 32, 16, 8, 4),
        "head": 4,
        "n_classes": 2,
    },
}
_DEFAULT_ARCHITECTURE = {"locations": "unet_model7", "granules": "unet_model"}
_DROPOUT_BLOCKS = (6, 7)
_DROPOUT_RATE = 0.3


class WeightsError(ValueError):
    """A weights file cannot be read, or does not fit the architecture or schema."""


class UntrainedModelWarning(UserWarning):
    """Results come from a model with random (untrained) weights."""


# -------------------------------------------------------------------------------------------------
# Architecture
# -------------------------------------------------------------------------------------------------
def build_unet(
    architecture: str = "unet_model7",
    n_classes: int | None = None,
    input_shape: tuple[int | None, int | None, int] = (None, None, 1),
    seed: int | None = None,
):
    """Build one of the original U-Nets, returning a ``keras.Model`` with logits output.

    Parameters
    ----------
    architecture : {"unet_model7", "unet_model"}
        ``unet_model7`` is the Locations network, ``unet_model`` the Granules network.
    n_classes : int, optional
        Output channels; defaults to the architecture's (7 or 2). A lab's model trained for a
        different number of classes is built by passing its count.
    input_shape : tuple
        ``(height, width, 1)``; ``None`` sides accept any multiple of 128.
    seed : int, optional
        Seed for the weight initialisers (reproducible untrained models).
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture {architecture!r}; choose one of {sorted(ARCHITECTURES)}"
        )
    spec = ARCHITECTURES[architecture]
    n_classes = spec["n_classes"] if n_classes is None else int(n_classes)
    if n_classes < 2:
        raise ValueError(f"a segmentation model needs at least 2 classes, got {n_classes}")
    keras = get_keras()
    layers = keras.layers
    counter = iter(range(1_000_000))

    def he():  # one seeded initialiser per layer, so the whole model is reproducible
        return keras.initializers.HeNormal(seed=None if seed is None else seed + next(counter))

    def glorot():
        return keras.initializers.GlorotUniform(
            seed=None if seed is None else seed + next(counter)
        )

    def double_conv(x, filters: int, prefix: str):
        for j in (1, 2):
            x = layers.Conv2D(filters, 3, activation="relu", padding="same",
                              kernel_initializer=he(), name=f"{prefix}_conv{j}")(x)
        return x

    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    skips = []
    n_enc = len(spec["encoder"])
    for i, filters in enumerate(spec["encoder"]):
        x = double_conv(x, filters, f"enc{i}")
        if i in _DROPOUT_BLOCKS:
            x = layers.Dropout(_DROPOUT_RATE, name=f"enc{i}_dropout")(x)
        if i < n_enc - 1:
            skips.append(x)
            x = layers.MaxPooling2D(2, strides=2, name=f"enc{i}_pool")(x)
    for i, filters in enumerate(spec["decoder"]):
        b = n_enc + i
        x = layers.Conv2DTranspose(filters, 3, strides=2, padding="same",
                                   kernel_initializer=glorot(), name=f"dec{b}_up")(x)
        x = layers.Concatenate(axis=3, name=f"dec{b}_concat")([x, skips.pop()])
        x = double_conv(x, filters, f"dec{b}")
    x = layers.Conv2D(spec["head"], 3, activation="relu", padding="same",
                      kernel_initializer=he(), name="head_conv")(x)
    logits = layers.Conv2D(n_classes, 1, padding="same", kernel_initializer=glorot(),
                           name="logits")(x)
    return keras.Model(inputs=inputs, outputs=logits, name=architecture)


def build_locations_unet(n_classes: int = 7, input_shape=(None, None, 1), seed: int | None = None):
    """The original Locations network (``unet_model7``, 8,656,655 parameters for 7 classes)."""
    return build_unet("unet_model7", n_classes, input_shape, seed)


def build_granules_unet(n_classes: int = 2, input_shape=(None, None, 1), seed: int | None = None):
    """The original Granules network (``unet_model``: 4 filters in the first and last blocks)."""
    return build_unet("unet_model", n_classes, input_shape, seed)


# -------------------------------------------------------------------------------------------------
# Metadata
# -------------------------------------------------------------------------------------------------
@dataclass
class ModelCard:
    """What a set of weights is: stored as the JSON sidecar next to the weights.

    Parameters
    ----------
    kind : str
        ``"locations"``, ``"granules"`` or a user's task name.
    architecture : str
        Key of :data:`ARCHITECTURES`.
    schema : ClassSchema
        Meaning of each output channel.
    pixel_size_nm : float
        Pixel size the model expects (images at other sizes are resampled).
    input_scaling : str
        ``"dtype-range"``: the image is converted to float32 in [0, 1] by its dtype's range (the
        original networks). ``"percentile"``: then stretched so that the 1st and 99th percentiles
        of the whole micrograph's 4 x 4 px block means land on fixed greys (0.15 and 0.75), so
        that a lab's staining, exposure and detector range reach the network alike
        (:func:`~napari_emgranules.core.segment.input_scaler`; one stretch per micrograph, never
        per tile, so tiling stays seam-free).
    temperature : float
        Softmax temperature of the confidence (1 = the network's own softmax): fitted on
        micrographs the network did not train on (:mod:`~napari_emgranules.core.calibration`),
        so that a confidence of 0.8 is right about 80% of the time. Labels do not depend on it.
    views : int
        How many symmetric views of the input the network sees at inference, their logits
        averaged in the graph before the labels are taken (:data:`VIEWS`): 1 = the input as it
        is; 2 = and its transpose; 4 = its four quarter turns; 8 = the quarter turns of the input
        and of its transpose. Each view is one more forward pass; the weights are the same.
    provenance : dict
        Free-form record: ``trained`` (bool), ``data``, ``epochs``, ``date``, ``package_version``,
        ``source`` (file it was loaded from), ``source_format``, ``micrograph_pixel_sizes_nm``
        (lowest and highest pixel size of the training micrographs: :attr:`training_pixel_range`).
    """

    kind: str
    architecture: str
    schema: ClassSchema
    pixel_size_nm: float = MODEL_PIXEL_SIZE_NM
    input_scaling: str = "dtype-range"
    provenance: dict[str, Any] = field(default_factory=dict)
    temperature: float = 1.0
    views: int = 1

    FORMAT = "napari-emgranules.model-card/1"

    @property
    def trained(self) -> bool:
        """False for random weights (e.g. a fresh network before training)."""
        return bool(self.provenance.get("trained", True))

    @property
    def training_pixel_range(self) -> tuple[float, float] | None:
        """Lowest and highest pixel size (nm) of the micrographs the weights learnt from, as the
        trainer recorded them (``provenance["micrograph_pixel_sizes_nm"]``); None when unknown.

        The network runs at :attr:`pixel_size_nm` whatever the micrograph's pixel size, but what
        a structure looks like after resampling depends on the micrograph's own: segmentation
        notes a micrograph far outside this range (:func:`~.segment.pixel_range_notes`)."""
        return _pixel_range(self.provenance.get("micrograph_pixel_sizes_nm"), "")

    @property
    def synthetic(self) -> bool:
        """True for weights trained on synthetic micrographs only (the bundled defaults)."""
        return bool(self.provenance.get("synthetic", False))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.FORMAT,
            "kind": self.kind,
            "architecture": self.architecture,
            "schema": self.schema.to_dict(),
            "pixel_size_nm": float(self.pixel_size_nm),
            "input_scaling": self.input_scaling,
            "temperature": float(self.temperature),
            "views": int(self.views),
            "provenance": self.provenance,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "sidecar") -> ModelCard:
        try:
            arch = str(data["architecture"])
            if arch not in ARCHITECTURES:
                raise WeightsError(f"{where}: unknown architecture {arch!r}")
            card = cls(
                kind=str(data.get("kind") or ARCHITECTURES[arch]["kind"]),
                architecture=arch,
                schema=ClassSchema.from_dict(data["schema"]),
                pixel_size_nm=float(data.get("pixel_size_nm", MODEL_PIXEL_SIZE_NM)),
                input_scaling=str(data.get("input_scaling", "dtype-range")),
                provenance=dict(data.get("provenance") or {}),
                temperature=float(data.get("temperature", 1.0)),
                views=int(data.get("views", 1)),
            )
        except WeightsError:
            raise
        except (KeyError, TypeError, ValueError, SchemaError) as exc:
            raise WeightsError(f"{where}: malformed model card ({exc})") from None
        if not 0.01 <= card.pixel_size_nm <= 100:
            raise WeightsError(f"{where}: implausible pixel_size_nm {card.pixel_size_nm}")
        if not 0.05 <= card.temperature <= 20:  # also NaN
            raise WeightsError(f"{where}: implausible temperature {card.temperature} "
                               "(a calibrated softmax temperature lies in 0.05-20)")
        if card.views not in VIEWS:
            raise WeightsError(f"{where}: views must be one of {', '.join(map(str, VIEWS))}, got "
                               f"{card.views}")
        _pixel_range(card.provenance.get("micrograph_pixel_sizes_nm"), where)
        if card.input_scaling not in INPUT_SCALINGS:
            raise WeightsError(f"{where}: unsupported input_scaling {card.input_scaling!r} "
                               f"(known: {', '.join(INPUT_SCALINGS)})")
        return card

    @classmethod
    def default(cls, kind: str, n_classes: int | None = None) -> ModelCard:
        arch = _DEFAULT_ARCHITECTURE.get(kind)
        if arch is None:
            raise WeightsError(
                f"unknown model kind {kind!r}: use 'locations' or 'granules', or give a sidecar"
            )
        return cls(kind, arch, default_schema(kind))


def _pixel_range(value: Any, where: str) -> tuple[float, float] | None:
    """A recorded ``[lowest, highest]`` training pixel size as a tuple; None when absent. A
    malformed record raises :class:`WeightsError` when ``where`` names the file, else reads as
    unknown."""
    if value is None:
        return None
    try:
        lo, hi = (float(v) for v in value)
        if not (0.01 <= lo <= hi <= 1000):  # also NaN
            raise ValueError
    except (TypeError, ValueError):
        if where:
            raise WeightsError(f"{where}: provenance micrograph_pixel_sizes_nm must be "
                               f"[lowest, highest] positive pixel sizes in nm, got {value!r}") from None
        return None
    return lo, hi


def sidecar_path(weights: str | os.PathLike) -> Path:
    """The JSON sidecar of a weights file: ``x.weights.h5 -> x.weights.json``, ``ckpt -> ckpt.json``."""
    p = Path(weights)
    if p.suffix in (".h5", ".hdf5", ".keras", ".index"):
        return p.with_suffix(".json")
    return p.with_name(p.name + ".json")


def _read_sidecar(weights: Path) -> ModelCard | None:
    side = sidecar_path(weights)
    if not side.is_file():
        return None
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{side}: the sidecar is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise WeightsError(f"{side}: the sidecar must hold a JSON object")
    return ModelCard.from_dict(data, where=str(side))


# -------------------------------------------------------------------------------------------------
# A loaded model
# -------------------------------------------------------------------------------------------------
class SegmentationModel:
    """A built Keras network with its :class:`ModelCard` and cached inference functions.

    Parameters
    ----------
    keras_model : keras.Model
        Network returning per-pixel class logits.
    card : ModelCard
        Its metadata.
    """

    def __init__(self, keras_model, card: ModelCard, *, jit: bool = False,
                 logit_offset: Sequence[float] | None = None, views: int | None = None):
        self.keras_model = keras_model
        self.card = card
        self.jit = jit
        self.logit_offset = None if logit_offset is None else tuple(float(v) for v in logit_offset)
        if views is not None and views not in VIEWS:
            raise ValueError(f"views must be one of {', '.join(map(str, VIEWS))}, got {views!r}")
        self._views = views
        self._fns: dict[tuple, Callable] = {}
        self._variants: dict[tuple, SegmentationModel] = {}
        self._lock = threading.Lock()

    def with_threshold(self, threshold: float | None) -> SegmentationModel:
        """This two-class model, labelling class 1 (a granule) where its calibrated probability
        is at least ``threshold`` instead of where it wins the arg-max (None or 0.5: unchanged).

        Thresholding a two-class softmax at ``p`` equals shifting the class-1 logit by
        ``-T * log(p / (1 - p))`` (``T`` the card's temperature) before the arg-max, so every mode
        (whole, tiled, seed, another pixel size) applies it in the same graph. Confidence is then
        that of the thresholded decision.
        """
        if threshold is None or threshold == 0.5:
            return self
        t = float(threshold)
        if not 0 < t < 1:
            raise ValueError(f"the granule threshold must lie between 0 and 1, got {threshold!r}")
        if self.n_classes != 2:
            raise ValueError(f"a probability threshold needs a two-class model; {self.card.kind} has "
                             f"{self.n_classes} classes")
        key = ("threshold", round(t, 6))
        with self._lock:
            if key not in self._variants:
                shift = -float(self.card.temperature) * math.log(t / (1 - t))
                self._variants[key] = SegmentationModel(self.keras_model, self.card, jit=self.jit,
                                                        logit_offset=(0.0, shift), views=self._views)
            return self._variants[key]

    @property
    def views(self) -> int:
        """Symmetric views averaged at inference: this copy's, else the card's (:attr:`ModelCard.views`)."""
        return self._views if self._views is not None else int(self.card.views)

    def with_views(self, views: int | None) -> SegmentationModel:
        """This model averaging ``views`` symmetric views of the input (None: the card's number)."""
        if views is None or views == self.views:
            return self
        if views not in VIEWS:
            raise ValueError(f"views must be one of {', '.join(map(str, VIEWS))}, got {views!r}")
        key = ("views", int(views))
        with self._lock:
            if key not in self._variants:
                self._variants[key] = SegmentationModel(self.keras_model, self.card, jit=self.jit,
                                                        logit_offset=self.logit_offset,
                                                        views=int(views))
            return self._variants[key]

    def for_inference(self, precision: str = "float32", jit: bool = False) -> SegmentationModel:
        """This model, or a cached copy that computes in ``precision`` and/or is compiled (XLA).

        Parameters
        ----------
        precision : {"float32", "bfloat16", "float16"}
            Compute dtype: ``bfloat16``/``float16`` rebuild the network under Keras's mixed
            policy (weights stay float32, activations in the lower precision): faster on GPUs
            with tensor cores, usually slower on CPUs. Labels agree with float32 on all but a few
            near-tie pixels (``tests/test_models.py`` checks it).
        jit : bool
            Compile the inference graph (XLA on TensorFlow, ``jax.jit`` on JAX, which compiles
            anyway); the first call per input shape pays for the compilation.
        """
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if precision == "float32" and jit == self.jit:
            return self
        key = (precision, bool(jit))
        with self._lock:
            if key not in self._variants:
                net = self.keras_model if precision == "float32" else self._rebuilt(precision)
                self._variants[key] = SegmentationModel(net, self.card, jit=bool(jit),
                                                        logit_offset=self.logit_offset,
                                                        views=self._views)
            return self._variants[key]

    def _rebuilt(self, precision: str):
        """The network rebuilt under the ``mixed_<precision>`` policy, with these weights."""
        if self.card.architecture not in ARCHITECTURES:
            raise ValueError(f"mixed precision needs one of the package's architectures "
                             f"({', '.join(sorted(ARCHITECTURES))}); this model is "
                             f"{self.card.architecture!r}: run it in float32")
        keras = get_keras()
        before = keras.config.dtype_policy()
        keras.config.set_dtype_policy(f"mixed_{precision}")
        try:
            net = build_unet(self.card.architecture, self.n_classes)
        finally:
            keras.config.set_dtype_policy(before)
        net.set_weights(self.keras_model.get_weights())
        return net

    def __repr__(self) -> str:
        state = "trained" if self.card.trained else "UNTRAINED"
        return (f"SegmentationModel({self.card.kind!r}, {self.card.architecture}, "
                f"{self.n_classes} classes, {self.card.pixel_size_nm} nm/px, {state})")

    @property
    def n_classes(self) -> int:
        return self.card.schema.n_classes

    @property
    def kind(self) -> str:
        return self.card.kind

    def count_params(self) -> int:
        return int(self.keras_model.count_params())

    def _inference_model(self, what: str):
        """A Keras model mapping images to ``labels``, ``labels+confidence``, ``probabilities``,
        ``logits`` or (two classes) the logit ``difference``.

        The reductions run inside the graph, so only uint8 labels (and one float per pixel for
        confidence) come back from the device instead of every class's logits.
        """
        key = (what, float(self.card.temperature), self.views)  # a re-calibrated card: a new graph
        with self._lock:
            if key not in self._fns:
                keras = get_keras()
                ops = keras.ops
                logits = self._view_logits(keras)
                if self.logit_offset is not None:  # a probability threshold (with_threshold)
                    logits = logits + np.asarray(self.logit_offset, np.float32)
                t = float(self.card.temperature)
                named = {"logits": logits}  # (the graph keeps only what the output needs)
                if self.n_classes == 2:
                    # two classes: one logit difference gives the label (ties go to class 0, as
                    # in an arg-max) and the confidence, the sigmoid of its size, several times
                    # faster than an arg-max and a softmax over the class axis on a CPU
                    diff = named["difference"] = logits[..., 1] - logits[..., 0]
                    labels = ops.cast(diff > 0, "uint8")
                    scaled = diff if t == 1.0 else diff / t  # calibrated confidence
                    conf = ops.sigmoid(ops.abs(scaled))
                    probs = ops.stack([ops.sigmoid(-scaled), ops.sigmoid(scaled)], axis=-1)
                else:
                    labels = ops.cast(ops.argmax(logits, axis=-1), "uint8")
                    scaled = logits if t == 1.0 else logits / t  # calibrated confidence
                    probs = keras.layers.Softmax(axis=-1, name="probabilities")(scaled)
                    conf = ops.max(probs, axis=-1)
                named.update({"labels": labels, "labels+confidence": [labels, conf],
                              "probabilities": probs})
                model = keras.Model(self.keras_model.inputs, named[what])
                if self.jit:
                    model.compile(jit_compile=True)
                self._fns[key] = model
            return self._fns[key]

    def _view_logits(self, keras):
        """The network's float32 logits averaged over :attr:`views` symmetric views of the input
        (each view's logits turned back before the average), as a symbolic tensor of the inputs.

        The views form a symmetry group of the square, so the average treats no orientation
        specially: 2 = the input and its transpose (mirrored on the diagonal); 4 = the four
        quarter turns; 8 = the four quarter turns of the input and of its transpose. On
        TensorFlow the views run as a loop around one copy of the network: the same sums, but
        the graph is traced with one network instead of ``views`` (a fresh process's first
        pass: about 1.3 s less for 8 Locations views, ``benchmarks/bench_segment.py --startup``).
        JAX compiles a switch only between branches of one shape, and XLA (``jit``) compiles the
        whole graph anyway, so there (and on torch, which runs eagerly) the views stay unrolled.
        """
        ops = keras.ops
        if self.views == 1:
            return ops.cast(self.keras_model.outputs[0], "float32")  # also under mixed precision
        x = self.keras_model.inputs[0]
        group = _VIEW_GROUPS[self.views]
        if keras.backend.backend() == "tensorflow" and not self.jit:
            return _view_mean_layer(keras)(self.keras_model, group, self.n_classes)(x)
        total = None
        for transposed, axes in group:
            y = ops.cast(self.keras_model(_view(ops, x, transposed, axes)), "float32")
            y = _unview(ops, y, transposed, axes)
            total = y if total is None else total + y
        return total / float(self.views)

    def predict_labels(
        self, batch: np.ndarray, confidence: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Labels (uint8) and, if asked, confidence (max softmax probability, float32).

        ``batch`` is float32 of shape ``(n, h, w)`` or ``(n, h, w, 1)`` in [0, 1], sides multiples
        of 128. Without ``confidence`` the second item is None and the softmax is skipped.
        """
        x = _as_batch(batch)
        if not confidence:
            labels = self._inference_model("labels").predict_on_batch(x)
            return np.asarray(labels, dtype=np.uint8), None
        labels, conf = self._inference_model("labels+confidence").predict_on_batch(x)
        return np.asarray(labels, dtype=np.uint8), np.asarray(conf, dtype=np.float32)

    def predict_probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Softmax probabilities, float32 ``(n, h, w, n_classes)``."""
        x = _as_batch(batch)
        return np.asarray(self._inference_model("probabilities").predict_on_batch(x),
                          dtype=np.float32)

    def predict_scores(self, batch: np.ndarray) -> np.ndarray:
        """What resampling to another grid needs: the logits, or for a two-class model the
        difference of its two logits, ``(n, h, w)`` (half the data; its sign is the label, and
        resampling is linear, so the sign of the resampled difference is the resampled arg-max)."""
        if self.n_classes != 2:
            return self.predict_logits(batch)
        return np.asarray(self._inference_model("difference").predict_on_batch(_as_batch(batch)),
                          dtype=np.float32)

    def predict_logits(self, batch: np.ndarray) -> np.ndarray:
        """Raw logits, float32 ``(n, h, w, n_classes)``: the bare network output."""
        return np.asarray(self._inference_model("logits").predict_on_batch(_as_batch(batch)),
                          dtype=np.float32)


def reduce_scores(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel argmax (uint8) and max of ``(h, w, n_classes)`` scores, multi-threaded.

    numpy reduces a short last axis slowly (seconds for a 4096^2 x 7 array); the Keras backend
    does it in a fraction of that. Without Keras (e.g. an ONNX Runtime-only install) numpy does it.
    """
    try:
        ops = get_keras().ops
    except BackendError:
        a = np.asarray(scores, np.float32)
        return np.argmax(a, axis=-1).astype(np.uint8), np.max(a, axis=-1)
    t = ops.convert_to_tensor(np.asarray(scores, np.float32))
    labels = ops.convert_to_numpy(ops.cast(ops.argmax(t, axis=-1), "uint8"))
    return labels, ops.convert_to_numpy(ops.max(t, axis=-1))


def apply_card_overrides(card: ModelCard, path: Path, fmt: str, schema: ClassSchema | None,
                         pixel_size_nm: float | None) -> None:
    """Give a just-loaded model's card the caller's schema and pixel size, and its source."""
    if schema is not None:
        card.schema = schema
    if pixel_size_nm is not None:
        card.pixel_size_nm = float(pixel_size_nm)
    card.provenance = {**card.provenance, "source": str(path), "source_format": fmt}


def _as_batch(batch: np.ndarray) -> np.ndarray:
    x = np.asarray(batch, dtype=np.float32)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] != 1:
        raise ValueError(f"expected a batch (n, h, w[, 1]) of gray images, got shape {x.shape}")
    if x.shape[1] % MULTIPLE or x.shape[2] % MULTIPLE:
        raise ValueError(f"image sides must be multiples of {MULTIPLE}, got {x.shape[1:3]}")
    return x


# -------------------------------------------------------------------------------------------------
# Reading weights from the supported formats, as an ordered list of arrays
# -------------------------------------------------------------------------------------------------
def weights_format(path: str | os.PathLike) -> str:
    """Detect a weights file's format: ``keras3-h5``, ``legacy-h5``, ``keras``, ``tf-checkpoint``.

    Raises :class:`WeightsError` if the path is missing or in no known format.
    """
    p = Path(path)
    if p.suffix == ".index" and p.is_file():
        return "tf-checkpoint"
    if not p.exists():
        if Path(str(p) + ".index").is_file():
            return "tf-checkpoint"
        raise WeightsError(f"{p}: no such weights file")
    if p.is_dir():
        state = p / "checkpoint"
        if state.is_file():
            return "tf-checkpoint"
        raise WeightsError(f"{p}: is a folder, not a weights file or TensorFlow checkpoint")
    if p.stat().st_size == 0:
        raise WeightsError(f"{p}: the weights file is empty")
    with open(p, "rb") as fh:
        head = fh.read(8)
    if head.startswith(b"PK"):
        return "keras"
    if head == b"\x89HDF\r\n\x1a\n":
        import h5py

        try:
            with h5py.File(p, "r") as f:
                if "layer_names" in f.attrs or "model_weights" in f:
                    return "legacy-h5"
                if "layers" in f:
                    return "keras3-h5"
        except OSError as exc:
            raise WeightsError(f"{p}: the HDF5 file is corrupt or truncated ({exc})") from None
        raise WeightsError(f"{p}: an HDF5 file, but not one holding Keras weights")
    raise WeightsError(
        f"{p}: not a Keras weights file (.weights.h5, .h5, .keras) or TensorFlow checkpoint"
    )


def _snake(name: str) -> str:
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _keras3_h5_arrays(path: Path, model) -> list[np.ndarray]:
    """Arrays from a Keras 3 ``.weights.h5`` in the order of ``model.weights``.

    Keras 3 keys each layer by its class name in model order (``conv2d``, ``conv2d_1``, ...),
    whatever the layers are called, so the keys follow from the architecture.
    """
    import h5py

    seen: dict[str, int] = {}
    arrays: list[np.ndarray] = []
    try:
        with h5py.File(path, "r") as f:
            group = f["layers"]
            for layer in model.layers:
                base = _snake(type(layer).__name__)
                n = seen.get(base, 0)
                seen[base] = n + 1
                if not layer.weights:
                    continue
                key = base if n == 0 else f"{base}_{n}"
                if key not in group or "vars" not in group[key]:
                    present = sorted(k for k in group if "vars" in group[k] and len(group[k]["vars"]))
                    raise WeightsError(
                        f"{path}: no weights for layer {key!r} ({layer.name}); the file holds "
                        f"{len(present)} layers with weights, the architecture needs "
                        f"{sum(1 for la in model.layers if la.weights)}"
                    )
                vars_ = group[key]["vars"]
                arrays.extend(np.asarray(vars_[str(i)]) for i in range(len(vars_)))
    except (OSError, KeyError) as exc:
        raise WeightsError(f"{path}: cannot read Keras weights ({exc})") from None
    return arrays


def _legacy_h5_arrays(path: Path) -> list[np.ndarray]:
    """Arrays from a Keras-2 ``save_weights``/``save`` HDF5 file, in layer order."""
    import h5py

    def text(v) -> str:
        return v.decode("utf8") if isinstance(v, bytes) else str(v)

    try:
        with h5py.File(path, "r") as f:
            g = f["model_weights"] if "model_weights" in f else f
            arrays = []
            for lname in (text(n) for n in g.attrs["layer_names"]):
                lg = g[lname]
                for wname in (text(n) for n in lg.attrs.get("weight_names", [])):
                    arrays.append(np.asarray(lg[wname]))
            return arrays
    except (OSError, KeyError) as exc:
        raise WeightsError(f"{path}: cannot read legacy Keras weights ({exc})") from None


_CKPT_KEY = re.compile(r"^layer_with_weights-(\d+)/(kernel|bias)/\.ATTRIBUTES/VARIABLE_VALUE$")


def _checkpoint_prefix(path: Path) -> str:
    if path.is_dir():
        import tensorflow as tf  # noqa: F401  (only here: checkpoints are a TensorFlow format)

        prefix = tf.train.latest_checkpoint(str(path))
        if not prefix:
            raise WeightsError(f"{path}: the checkpoint folder names no checkpoint")
        return prefix
    return str(path)[: -len(".index")] if path.suffix == ".index" else str(path)


def _checkpoint_arrays(path: Path) -> list[np.ndarray]:
    """Arrays from a TensorFlow checkpoint written by Keras 2 ``save_weights``/``ModelCheckpoint``.

    The checkpoint's object graph names each layer that owns weights ``layer_with_weights-N`` in
    model order; optimizer slots and counters are ignored.
    """
    try:
        import tensorflow as tf
    except ImportError:
        raise WeightsError(
            f"{path}: reading TensorFlow checkpoints needs TensorFlow ('pip install tensorflow'); "
            "or convert the checkpoint to .weights.h5 on a machine that has it"
        ) from None
    prefix = _checkpoint_prefix(path)
    try:
        reader = tf.train.load_checkpoint(prefix)
    except Exception as exc:  # TF raises a zoo of internal error types for bad checkpoints
        raise WeightsError(
            f"{prefix}: cannot read the TensorFlow checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    found: dict[int, dict[str, str]] = {}
    for key in reader.get_variable_to_shape_map():
        m = _CKPT_KEY.match(key)
        if m:
            found.setdefault(int(m.group(1)), {})[m.group(2)] = key
    if not found:
        raise WeightsError(f"{prefix}: the checkpoint holds no Keras layer weights")
    if sorted(found) != list(range(len(found))):
        raise WeightsError(f"{prefix}: the checkpoint's layers are not numbered 0..N-1")
    arrays = []
    for i in range(len(found)):
        for part in ("kernel", "bias"):
            if part in found[i]:
                arrays.append(np.asarray(reader.get_tensor(found[i][part])))
    return arrays


def _keras_file_arrays(path: Path) -> list[np.ndarray]:
    keras = get_keras()
    try:
        other = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises ValueError/TypeError/zip errors for bad archives
        raise WeightsError(
            f"{path}: cannot open the .keras model safely ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    return [np.asarray(w) for w in other.get_weights()]


def _read_arrays(path: Path, fmt: str, model) -> list[np.ndarray]:
    if fmt == "keras3-h5":
        return _keras3_h5_arrays(path, model)
    if fmt == "legacy-h5":
        return _legacy_h5_arrays(path)
    if fmt == "tf-checkpoint":
        return _checkpoint_arrays(path)
    if fmt == "keras":
        return _keras_file_arrays(path)
    raise WeightsError(f"{path}: unsupported weights format {fmt!r}")


def _as_float32(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Floating-point arrays as float32 (the models' variables), e.g. from float16 files."""
    return [
        a.astype(np.float32) if np.issubdtype(a.dtype, np.floating) and a.dtype != np.float32
        else a
        for a in arrays
    ]


def _shape_signature(arch: str) -> list[tuple[int, ...]]:
    """Weight shapes of an architecture (for its default classes), without building it."""
    spec = ARCHITECTURES[arch]
    shapes: list[tuple[int, ...]] = []
    cin = 1
    for f in spec["encoder"]:
        shapes += [(3, 3, cin, f), (f,), (3, 3, f, f), (f,)]
        cin = f
    for f, skip in zip(spec["decoder"], reversed(spec["encoder"][:-1]), strict=True):
        shapes += [(3, 3, f, cin), (f,), (3, 3, f + skip, f), (f,), (3, 3, f, f), (f,)]
        cin = f
    shapes += [(3, 3, cin, spec["head"]), (spec["head"],), (1, 1, spec["head"], spec["n_classes"]),
               (spec["n_classes"],)]
    return shapes


def _check_arrays(path: Path, arrays: Sequence[np.ndarray], model, card: ModelCard) -> None:
    """Refuse arrays that do not fit the model, saying what differs."""
    expected = [tuple(w.shape) for w in model.weights]
    got = [tuple(a.shape) for a in arrays]
    if got == expected:
        return
    # The usual mistakes, named: the other architecture, or another number of classes.
    for arch in ARCHITECTURES:
        sig = _shape_signature(arch)
        if len(got) == len(sig) and got[:-2] == sig[:-2] and arch != card.architecture:
            raise WeightsError(
                f"{path}: these are {ARCHITECTURES[arch]['kind']} weights ({arch}), but a "
                f"{card.kind} model ({card.architecture}) was asked for"
            )
    if len(got) == len(expected) and got[:-2] == expected[:-2]:
        n_file = got[-1][0] if got[-1] else "?"
        raise WeightsError(
            f"{path}: the weights output {n_file} classes, but the {card.schema.kind} schema has "
            f"{card.schema.n_classes} ({', '.join(card.schema.names.values())}); give a schema "
            f"with {n_file} classes (in the sidecar {sidecar_path(path).name})"
        )
    if len(got) != len(expected):
        raise WeightsError(
            f"{path}: the file has {len(got)} weight arrays, the {card.architecture} architecture "
            f"needs {len(expected)}: not the same network"
        )
    diffs = [
        f"{w.path if hasattr(w, 'path') else w.name}: file {g}, model {e}"
        for w, g, e in zip(model.weights, got, expected, strict=True)
        if g != e
    ]
    raise WeightsError(
        f"{path}: {len(diffs)} weight arrays differ in shape from {card.architecture} "
        f"(first: {'; '.join(diffs[:3])})"
    )


# -------------------------------------------------------------------------------------------------
# Public loading / saving, with a cache
# -------------------------------------------------------------------------------------------------
_CACHE: dict[tuple, SegmentationModel] = {}
_CACHE_LOCK = threading.Lock()

_OTHER_FORMATS: list[tuple[Callable[[Path], bool], Callable[..., Any]]] = []


def register_format(matches: Callable[[Path], bool], load: Callable[..., Any]) -> None:
    """Let :func:`load_model` open another kind of model file: ``load(path, kind, schema=...,
    pixel_size_nm=...)`` is called for every path where ``matches(path)`` is true.

    The modules that read other formats register themselves (:mod:`~.interop`: ONNX files run by
    ONNX Runtime; :mod:`~.bioimageio`: BioImage Model Zoo packages), so this module, which they
    build on, needs none of them; the package imports both (``core/__init__.py``)."""
    _OTHER_FORMATS.append((matches, load))


def clear_model_cache() -> None:
    """Forget all loaded models (they are rebuilt on next use)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def load_model(
    path: str | os.PathLike | None = None,
    kind: str | None = None,
    *,
    schema: ClassSchema | None = None,
    pixel_size_nm: float | None = None,
) -> SegmentationModel:
    """Load weights into a freshly built network; cached per file, kind and schema.

    Parameters
    ----------
    path : path-like, optional
        ``.weights.h5`` (with its sidecar), ``.keras``, legacy ``.h5``, or a TensorFlow
        checkpoint prefix / ``.index`` file / folder. ``None`` gives the bundled default of ``kind``.
        An ``.onnx`` file (with its model card) gives an
        :class:`~.interop.OnnxSegmentationModel` run by ONNX Runtime, without TensorFlow.
    kind : {"locations", "granules"}, optional
        Needed when the file has no sidecar (a lab's own weights): picks the architecture and the
        default schema. Checked against the sidecar when both are given.
    schema : ClassSchema, optional
        Overrides the schema (e.g. a lab's 6-class Locations model).
    pixel_size_nm : float, optional
        Overrides the model's pixel size.

    Raises
    ------
    WeightsError
        Unreadable file, or weights that do not fit the architecture/schema (the message says
        what differs).
    """
    if path is None:
        if kind is None:
            raise WeightsError("load_model needs a weights path or a kind ('locations'/'granules')")
        return default_model(kind)
    p = Path(path).expanduser()
    for matches, load in _OTHER_FORMATS:  # ONNX, BioImage Model Zoo packages (register_format)
        if matches(p):
            return load(p, kind, schema=schema, pixel_size_nm=pixel_size_nm)
    fmt = weights_format(p)
    stat_target = Path(str(p) + ".index") if fmt == "tf-checkpoint" and not p.exists() else p
    st = stat_target.stat()
    side = sidecar_path(p)
    side_st = side.stat() if side.is_file() else None  # a changed card is a new model too
    key = (str(p.resolve()), st.st_mtime_ns, st.st_size, kind,
           json.dumps(schema.to_dict()) if schema else None, pixel_size_nm,
           side_st and (side_st.st_mtime_ns, side_st.st_size))
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
    card = _read_sidecar(p)
    if card is None:
        if kind is None:
            raise WeightsError(
                f"{p}: no sidecar ({sidecar_path(p).name}) says what these weights are; "
                "say the kind ('locations' or 'granules')"
            )
        card = ModelCard.default(kind)
        card.provenance = {"trained": True, "note": "no sidecar; assumed the original tool's"}
    elif kind is not None and card.kind != kind:
        raise WeightsError(f"{p}: these are {card.kind} weights, but {kind} weights were asked for")
    apply_card_overrides(card, p, fmt, schema, pixel_size_nm)
    model = build_unet(card.architecture, card.schema.n_classes)
    arrays = _read_arrays(p, fmt, model)
    _check_arrays(p, arrays, model, card)
    model.set_weights(_as_float32(arrays))
    loaded = SegmentationModel(model, card)
    logger.info("loaded %s from %s (%s)", loaded, p, fmt)
    with _CACHE_LOCK:
        _CACHE[key] = loaded
    return loaded


def read_model_card(path: str | os.PathLike | None, kind: str) -> ModelCard:
    """What a weights file says it is, without building the network or importing Keras.

    The sidecar's card, or for a file without one the default card of ``kind`` (``path`` None:
    the bundled default's). :func:`load_model` still checks that the weights fit.
    """
    if path is None:
        bundled = _bundled_dir() / f"{kind}.weights.h5"
        if not bundled.is_file():
            card = ModelCard.default(kind)
            card.provenance = {"trained": False}
            return card
        path = bundled
    card = _read_sidecar(Path(path).expanduser())
    if card is None:
        return ModelCard.default(kind)
    if card.kind != kind:
        raise WeightsError(f"{path}: these are {card.kind} weights, but {kind} weights were asked for")
    return card


def _bundled_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "models"


def default_model(kind: str) -> SegmentationModel:
    """The bundled default model of ``kind`` ("locations" or "granules"), cached.

    If the package ships trained weights (``napari_emgranules/models/<kind>.weights.h5``) they are
    loaded. Otherwise the network is built with fixed-seed random weights, its card says
    ``trained: False``, and an :class:`UntrainedModelWarning` is issued: its labels are meaningless.
    """
    card = ModelCard.default(kind)
    bundled = _bundled_dir() / f"{kind}.weights.h5"
    if bundled.is_file():
        return load_model(bundled, kind)
    key = ("<untrained default>", kind)
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
    warnings.warn(
        f"The bundled {kind} model is UNTRAINED (random weights): its labels are meaningless. "
        "Load trained weights (e.g. your lab's) to get real results.",
        UntrainedModelWarning,
        stacklevel=2,
    )
    card.provenance = {"trained": False, "note": "random fixed-seed weights; no trained default "
                       "ships with this version", "seed": 2024}
    model = SegmentationModel(build_unet(card.architecture, seed=2024), card)
    with _CACHE_LOCK:
        _CACHE[key] = model
    return model


WEIGHTS_DTYPES = ("float32", "float16")
"""Storage dtypes :func:`save_model` accepts for the weights file."""


def _h5_as_float16(src: Path, dst: Path) -> None:
    """Copy the HDF5 file ``src`` to a new file ``dst`` with every float dataset as float16.

    Groups, names, attributes and all other datasets are copied unchanged, so a Keras 3
    ``.weights.h5`` stays one (Keras and :func:`load_model` cast back to the variables' float32).
    A new file is written because HDF5 does not give back the space of deleted datasets.

    Raises
    ------
    ValueError
        If a finite value is beyond float16's range (|x| > 65504).
    """
    import h5py

    def copy_attrs(source, target) -> None:
        for name in source.attrs:
            target.attrs.create(name, source.attrs[name], dtype=source.attrs.get_id(name).dtype)

    with h5py.File(src, "r") as fin, h5py.File(dst, "w") as fout:
        copy_attrs(fin, fout)

        def visit(name: str, obj) -> None:
            if isinstance(obj, h5py.Group):
                copy_attrs(obj, fout.require_group(name))
                return
            if not (isinstance(obj, h5py.Dataset) and obj.dtype.kind == "f"
                    and obj.dtype.itemsize > 2):
                fin.copy(obj, fout, name=name)
                return
            data = obj[()]
            with np.errstate(over="ignore"):
                half = np.asarray(data, dtype=np.float16)
            if np.any(np.isinf(half) & np.isfinite(data)):
                raise ValueError(
                    f"weights {name!r} hold values beyond float16's range (max |x| "
                    f"{float(np.nanmax(np.abs(data))):.3g} > 65504); save them as float32"
                )
            copy_attrs(obj, fout.create_dataset(name, data=half))

        fin.visititems(visit)


def save_model(
    model: SegmentationModel,
    path: str | os.PathLike,
    *,
    provenance: dict[str, Any] | None = None,
    overwrite: bool = False,
    weights_dtype: str = "float32",
) -> Path:
    """Save weights as ``.weights.h5`` with a JSON sidecar, atomically.

    Parameters
    ----------
    model : SegmentationModel
        What to save.
    path : path-like
        Target; ``.weights.h5`` is appended if missing.
    provenance : dict, optional
        Merged into the card's provenance (data, epochs, ...); date, package version and
        ``weights_dtype`` are added.
    overwrite : bool
        Refuse to replace existing files unless True.
    weights_dtype : {"float32", "float16"}
        How the weights are stored. ``"float16"`` halves the file (the Locations U-Net: 17.3 MB
        instead of 34.6 MB); it is still a Keras 3 ``.weights.h5`` in the same layout, loaded back
        into float32 variables. Predictions then differ from the float32 model's by float16
        rounding (about 1e-3 relative).

    Raises
    ------
    ValueError
        An unknown ``weights_dtype``, or weights beyond float16's range with ``"float16"``.
    FileExistsError
        The weights or the sidecar exist and ``overwrite`` is False.
    """
    from .. import __version__

    if not isinstance(weights_dtype, str) or weights_dtype not in WEIGHTS_DTYPES:
        raise ValueError(
            f"weights_dtype must be one of {', '.join(map(repr, WEIGHTS_DTYPES))}, "
            f"got {weights_dtype!r}"
        )
    p = Path(path)
    if not p.name.endswith(".weights.h5"):
        p = p.with_name(p.name + ".weights.h5")
    side = sidecar_path(p)
    if not overwrite and (p.exists() or side.exists()):
        raise FileExistsError(f"{p}: exists already; choose another name or pass overwrite=True")
    p.parent.mkdir(parents=True, exist_ok=True)
    card = model.card
    prov = {k: v for k, v in card.provenance.items() if k not in ("source", "source_format")}
    prov.update(provenance or {})
    prov.setdefault("date", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    prov["package_version"] = __version__
    prov["weights_dtype"] = weights_dtype
    data = {**card.to_dict(), "provenance": prov}
    tmpdir = Path(tempfile.mkdtemp(prefix=".saving-", dir=p.parent))
    try:
        tmp_w = tmpdir / p.name
        if weights_dtype == "float16":
            tmp_full = tmpdir / f"float32-{p.name}"
            model.keras_model.save_weights(tmp_full)
            _h5_as_float16(tmp_full, tmp_w)
        else:
            model.keras_model.save_weights(tmp_w)
        tmp_s = tmpdir / side.name
        tmp_s.write_text(json.dumps(data, indent=2), encoding="utf-8")
        os.replace(tmp_w, p)
        os.replace(tmp_s, side)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return p
