"""BioImage Model Zoo packages (bioimage.io, model format 0.5) of this package's models.

:func:`export_bioimageio` writes one zip per model that Fiji (deepImageJ), ilastik, BiaPy and
``bioimageio.core`` run: ``rdf.yaml`` (built with ``bioimageio.spec``), ONNX and Keras 3 weights,
a test input with its expected output, a cover, documentation, licence and citation.

How the package's own pipeline is expressed in the format:

* **Input** ``raw``: one 2-D micrograph ``(batch, y, x, channel)``, float32 of the raw grey values,
  at the model's pixel size (the ``y``/``x`` axes carry it in nanometres), sides multiples of 128.
* **Preprocessing**: a model whose card says ``percentile`` scaling gets ``scale_range`` (1st and
  99th percentiles over y and x to 0 and 1), ``scale_linear`` (to 0.15 and 0.75, the package's
  stretch) and ``clip`` to [0, 1]; the package takes the percentiles of 4 x 4 block means of the
  whole micrograph instead of single pixels, so very noisy images come out slightly less contrasted
  in the zoo's runners. A ``dtype-range`` model (the original lab's) gets ``scale_linear`` by 1/65535:
  16-bit micrographs.
* **Output** ``probabilities``: ``scale_linear`` by 1 / the card's temperature and ``softmax`` over
  the class channel, whose names are the schema's classes; the arg-max is the label map.

:func:`load_bioimageio` reads such a package (or its ``rdf.yaml``) back as a model, wherever weights
are accepted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .interop import DEFAULT_OPSET, ExportError, export_onnx, load_onnx_model
from .models import (
    MULTIPLE,
    ModelCard,
    SegmentationModel,
    WeightsError,
    load_model,
    register_format,
    sidecar_path,
)
from .synthetic import synthetic_micrograph

__all__ = ["export_bioimageio", "load_bioimageio", "is_bioimageio_package", "PAPER_DOI"]

PAPER_DOI = "10.1085/jgp.202413595"
"""Ríos et al., J Gen Physiol 2024: the Locations and Granules networks and the pf -> vf route."""

TEST_SIDE = 512
"""Side of the test input (model pixels)."""

CARD_FILE = "napari-emgranules.model-card.json"


def _need_spec():
    try:
        import bioimageio.spec  # noqa: F401
    except ImportError as exc:
        raise ExportError("BioImage Model Zoo export needs bioimageio.spec (pip install "
                          "'napari-emgranules[bioimageio]')") from exc


def _identifier(text: str) -> str:
    out = re.sub(r"[^0-9a-zA-Z_]+", "_", text).strip("_")
    return out if out and not out[0].isdigit() else f"c_{out}"


def _preprocess(x: np.ndarray, scaling: str) -> np.ndarray:
    """The zoo's preprocessing of ``raw``, in numpy (what the runners compute)."""
    x = x.astype(np.float32)
    if scaling == "percentile":
        lo, hi = np.percentile(x, [1.0, 99.0], axis=(1, 2), keepdims=True)
        x = (x - lo) / (hi - lo + np.float32(1e-6))
        return np.clip(x * np.float32(0.6) + np.float32(0.15), 0, 1).astype(np.float32)
    return (x / np.float32(65535)).astype(np.float32)


def _softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = logits.astype(np.float32) / np.float32(temperature)
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def _test_image(card: ModelCard) -> np.ndarray:
    """A synthetic micrograph crop at the model's pixel size, raw 16-bit grey values."""
    side_nm = TEST_SIDE * card.pixel_size_nm
    px = 0.8 if card.pixel_size_nm <= 1.6 else card.pixel_size_nm / 4
    n = int(round(side_nm / px))
    s = synthetic_micrograph((n, n), px, seed=11)
    from .resample import resample

    image = resample(s.image.astype(np.float32), (TEST_SIDE, TEST_SIDE))
    return np.round(image).astype(np.float32)[None, ..., None]


def _cover(image: np.ndarray, labels: np.ndarray, card: ModelCard, path: Path) -> None:
    from PIL import Image

    grey = image[0, ..., 0]
    lo, hi = np.percentile(grey, [1, 99])
    grey8 = (np.clip((grey - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)
    palette = np.zeros((256, 3), np.uint8)
    for cls in card.schema.classes:
        h = cls.color.lstrip("#")
        palette[cls.code] = [int(h[i:i + 2], 16) for i in (0, 2, 4)]
    coloured = palette[labels]
    blend = np.where((labels > 0)[..., None], 0.5 * coloured + 0.5 * grey8[..., None],
                     grey8[..., None]).astype(np.uint8)  # class 0 (background) left grey
    canvas = np.concatenate([np.repeat(grey8[..., None], 3, axis=-1), blend], axis=1)
    Image.fromarray(canvas).save(path)


def _documentation(card: ModelCard, path: Path) -> None:
    classes = "\n".join(f"| {c.code} | {c.letter} | {c.name} | {c.color} | {'yes' if c.measured else 'no'} |"
                        for c in card.schema.classes)
    scaling = ("each micrograph stretched by its own 1st and 99th percentiles to 0.15 and 0.75 of "
               "[0, 1], then clipped" if card.input_scaling == "percentile" else
               "16-bit grey values divided by 65535")
    path.write_text(f"""# napari-emgranules {card.kind} model

The **{card.kind.capitalize()}** network of napari-emgranules (architecture `{card.architecture}`,
the U-Net of Ríos et al., J Gen Physiol 2024, doi:{PAPER_DOI}), for electron micrographs of skeletal
muscle. Input: one grey micrograph resampled to **{card.pixel_size_nm:g} nm per pixel**, sides
multiples of {MULTIPLE}; scaling: {scaling}. Output: the probability of each class (softmax of the
logits divided by the calibrated temperature {card.temperature:.3g}); the arg-max is the label map.

| code | letter | class | colour | measured |
|---|---|---|---|---|
{classes}

Trained: {'yes' if card.trained else 'no'}{' (on synthetic micrographs only: check the labels on your own '
 'micrographs and fine-tune with napari-emgranules)' if card.synthetic else ''}.

Made with napari-emgranules (napari plugin, Python library and command line tool: segmentation,
correction, retraining and per-region glycogen density). Please cite Ríos et al. 2024 and
napari-emgranules.
""", encoding="utf-8")


def export_bioimageio(model: SegmentationModel, path: str | os.PathLike, *,
                      overwrite: bool = False, keras_weights: bool = True) -> Path:
    """Write ``model`` as a BioImage Model Zoo package (zip); see the module docstring.

    Raises
    ------
    ExportError
        Missing ``bioimageio.spec`` / ONNX tools, or a description the format refuses.
    FileExistsError
        ``path`` exists and ``overwrite`` is False.
    """
    _need_spec()
    import bioimageio.spec.model.v0_5 as v
    from bioimageio.spec import ValidationContext, save_bioimageio_package

    target = Path(path)
    if target.suffix.lower() != ".zip":
        raise ExportError(f"{target}: a BioImage Model Zoo package is a .zip file")
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target}: exists already; choose another file or overwrite")
    card = model.card
    with tempfile.TemporaryDirectory(prefix="emgranules-bioimageio-") as tmp:
        work = Path(tmp)
        onnx_path = export_onnx(model, work / "weights.onnx")
        (work / "weights.onnx.json").unlink(missing_ok=True)
        files: dict[str, Any] = {}
        if keras_weights:
            import keras

            model.keras_model.save(work / "weights.keras")
            backend = keras.config.backend()
            backend_version = __import__(backend).__version__
            files["keras_v3"] = v.KerasV3WeightsDescr(
                source=work / "weights.keras", keras_version=keras.__version__, parent="onnx",
                backend=(backend, backend_version))
        raw = _test_image(card)
        engine = load_onnx_model(onnx_path, card.kind)
        logits = engine.predict_logits(_preprocess(raw, card.input_scaling)[..., 0])
        probabilities = _softmax(logits, card.temperature)
        np.save(work / "test_input.npy", raw)
        np.save(work / "test_output.npy", probabilities)
        _cover(raw, probabilities[0].argmax(-1).astype(np.uint8), card, work / "cover.png")
        _documentation(card, work / "README.md")
        (work / CARD_FILE).write_text(json.dumps(card.to_dict(), indent=1), encoding="utf-8")
        y, x = v.AxisId("y"), v.AxisId("x")
        size = v.ParameterizedSize(min=2 * MULTIPLE, step=MULTIPLE)
        pre: list[Any]
        if card.input_scaling == "percentile":
            pre = [v.EnsureDtypeDescr(kwargs=v.EnsureDtypeKwargs(dtype="float32")),
                   v.ScaleRangeDescr(kwargs=v.ScaleRangeKwargs(axes=[y, x], min_percentile=1.0,
                                                               max_percentile=99.0, eps=1e-6)),
                   v.ScaleLinearDescr(kwargs=v.ScaleLinearKwargs(gain=0.6, offset=0.15)),
                   v.ClipDescr(kwargs=v.ClipKwargs(min=0.0, max=1.0))]
        else:
            pre = [v.EnsureDtypeDescr(kwargs=v.EnsureDtypeKwargs(dtype="float32")),
                   v.ScaleLinearDescr(kwargs=v.ScaleLinearKwargs(gain=1 / 65535, offset=0.0))]
        channel_names = [v.Identifier(_identifier(c.name)) for c in card.schema.classes]
        inputs = [v.InputTensorDescr(
            id=v.TensorId("raw"), description="a grey electron micrograph at the model's pixel size",
            axes=[v.BatchAxis(), v.SpaceInputAxis(id=y, size=size, unit="nanometer",
                                                  scale=card.pixel_size_nm),
                  v.SpaceInputAxis(id=x, size=size, unit="nanometer", scale=card.pixel_size_nm),
                  v.ChannelAxis(channel_names=[v.Identifier("grey")])],
            test_tensor=v.FileDescr(source=work / "test_input.npy"), preprocessing=pre)]
        outputs = [v.OutputTensorDescr(
            id=v.TensorId("probabilities"), description="class probabilities (calibrated softmax)",
            axes=[v.BatchAxis(),
                  v.SpaceOutputAxis(id=y, size=v.SizeReference(tensor_id=v.TensorId("raw"), axis_id=y),
                                    unit="nanometer", scale=card.pixel_size_nm),
                  v.SpaceOutputAxis(id=x, size=v.SizeReference(tensor_id=v.TensorId("raw"), axis_id=x),
                                    unit="nanometer", scale=card.pixel_size_nm),
                  v.ChannelAxis(channel_names=channel_names)],
            test_tensor=v.FileDescr(source=work / "test_output.npy"),
            postprocessing=[v.ScaleLinearDescr(kwargs=v.ScaleLinearKwargs(
                gain=1.0 / float(card.temperature), offset=0.0)),
                v.SoftmaxDescr(kwargs=v.SoftmaxKwargs(axis=v.AxisId("channel")))])]
        try:
            with ValidationContext(perform_io_checks=False):
                descr = v.ModelDescr(
                    name=f"napari-emgranules {card.kind}",
                    description=f"{card.kind.capitalize()} of skeletal-muscle electron micrographs "
                                f"({card.schema.n_classes} classes) at {card.pixel_size_nm:g} nm/px",
                    authors=[v.Author(name="napari-emgranules developers")],
                    cite=[v.CiteEntry(text="Ríos E et al. Artificial intelligence approaches to the "
                                           "volumetric quantification of glycogen granules in EM images "
                                           "of human tissue. J Gen Physiol 2024; 156(9): e202413595",
                                      doi=v.Doi(PAPER_DOI))],
                    license=v.LicenseId("BSD-3-Clause"),
                    documentation=v.FileDescr(source=work / "README.md"),
                    covers=[v.FileDescr(source=work / "cover.png")],
                    attachments=[v.FileDescr(source=work / CARD_FILE)],
                    tags=["electron-microscopy", "skeletal-muscle", "glycogen", "semantic-segmentation",
                          "unet", "2d", "napari-emgranules"],
                    inputs=inputs, outputs=outputs,
                    weights=v.WeightsDescr(onnx=v.OnnxWeightsDescr(source=onnx_path,
                                                                  opset_version=DEFAULT_OPSET),
                                           **files),
                    config={"napari-emgranules": {"kind": card.kind, "classes": [
                        {"code": c.code, "letter": c.letter, "name": c.name, "color": c.color,
                         "measured": c.measured} for c in card.schema.classes]}},
                )
        except Exception as exc:  # pydantic's ValidationError: the format refuses a field
            raise ExportError(f"{target}: the BioImage Model Zoo description was refused: {exc}") from exc
        written = Path(save_bioimageio_package(descr, output_path=work / "package.zip"))
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(written, staged)
        os.replace(staged, target)
    return target


def is_bioimageio_package(path: str | os.PathLike) -> bool:
    """True for a zip holding ``rdf.yaml`` or ``bioimageio.yaml`` (or such a file itself)."""
    p = Path(path)
    if p.name in ("rdf.yaml", "bioimageio.yaml") or p.name.endswith(".bioimageio.yaml"):
        return p.is_file()
    if p.suffix.lower() != ".zip" or not p.is_file():
        return False
    try:
        with zipfile.ZipFile(p) as z:
            return any(n in ("rdf.yaml", "bioimageio.yaml") for n in z.namelist())
    except zipfile.BadZipFile:
        return False


def load_bioimageio(path: str | os.PathLike, kind: str | None = None) -> SegmentationModel:
    """A package written by :func:`export_bioimageio` as a model (its ONNX weights, run by ONNX
    Runtime; its model card from the attachment).

    Raises
    ------
    WeightsError
        Not such a package (another architecture's, no ONNX weights, no model card).
    """
    from .io import file_sha256

    p = Path(path)
    if not is_bioimageio_package(p):
        raise WeightsError(f"{p}: is not a BioImage Model Zoo package (a .zip with rdf.yaml)")
    if p.suffix.lower() == ".zip":  # unpacked once per package content, beside other caches
        root = Path(tempfile.gettempdir()) / "emgranules-bioimageio" / file_sha256(p)[:16]
        if not (root / "rdf.yaml").is_file() and not (root / "bioimageio.yaml").is_file():
            staging = Path(tempfile.mkdtemp(prefix="unpack-", dir=root.parent.mkdir(
                parents=True, exist_ok=True) or root.parent))
            with zipfile.ZipFile(p) as z:
                z.extractall(staging)
            shutil.rmtree(root, ignore_errors=True)
            os.replace(staging, root)
    else:
        root = p.parent
    if not (root / CARD_FILE).is_file() or not (root / "weights.onnx").is_file():
        raise WeightsError(f"{p}: a BioImage Model Zoo package, but not one of napari-emgranules "
                           f"(no {CARD_FILE} and weights.onnx): use its own runner")
    keras_file = root / "weights.keras"
    for weights in (keras_file, root / "weights.onnx"):
        if weights.is_file() and not sidecar_path(weights).is_file():
            shutil.copyfile(root / CARD_FILE, sidecar_path(weights))
    if keras_file.is_file():  # Keras weights: segments, and can be fine-tuned
        from ._backend import BackendError

        try:
            return load_model(keras_file, kind)
        except (ImportError, BackendError):  # no Keras backend here: ONNX Runtime runs the network
            pass
    return load_onnx_model(root / "weights.onnx", kind)


def _load_package(path: Path, kind: str | None = None, **_: Any) -> SegmentationModel:
    return load_bioimageio(path, kind)  # the package's card says its schema and pixel size


register_format(lambda p: p.suffix.lower() == ".zip" or p.name.endswith(("rdf.yaml", "bioimageio.yaml")),
                _load_package)  # models.load_model opens them
