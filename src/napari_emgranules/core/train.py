"""Train or fine-tune a segmentation model from training pairs, on any Keras 3 backend.

:func:`train_iter` is the one implementation: a generator that yields a :class:`TrainProgress` after
every batch (``end_of_epoch`` True once per epoch, with that epoch's logs) and returns a
:class:`TrainResult`. The CLI draws its progress bars from the events, the GUI runs it in a thread
worker (closing the generator cancels at the next batch), and scripts call :func:`train`.

The data pipeline is plain NumPy (random crops, identical flips/rotations of image and labels,
scale jitter, the original recipe's random contrast 0.4 and brightness 0.25), fed to
``train_on_batch``, so the same code runs under TensorFlow, JAX and PyTorch.

Everything a run writes goes into one folder::

    <out>/<name>.weights.h5 (+ .weights.json)   best weights so far, by the monitored metric
    <out>/history.csv, <out>/history.png        per-epoch logs and their plot
    <out>/checkpoint/                           last epoch's weights, optimiser and state (resume)

The checkpoint is written at the end of every epoch, atomically, so a run killed at any point
resumes (``resume=True``) from the last finished epoch.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from ._backend import backend_name, get_keras
from .calibration import choose_temperature, measure_logits, softmax_max
from .dataset import TrainingPair, TrainingSet, load_training_pairs, pairs_from_files
from .metrics import confusion_matrix, iou_per_class, mean_iou, pixel_accuracy
from .models import (
    ARCHITECTURES,
    INPUT_SCALINGS,
    MULTIPLE,
    ModelCard,
    SegmentationModel,
    WeightsError,
    build_unet,
    default_model,
    load_model,
    save_model,
)
from .progress import run_to_completion
from .rehearsal import REHEARSAL_LOOKS, class_quantiles, rehearsal_images, rehearsal_kind
from .resample import RESAMPLE_TOLERANCE, model_grid_shape, resample
from .schema import UNLABELLED, ClassSchema, default_schema, name_key
from .segment import (
    _nearest,
    block_means,
    input_scaler,
    levels_of,
    stretch,
    to_unit_float,
)

logger = logging.getLogger(__name__)

__all__ = [
    "TrainConfig",
    "TrainProgress",
    "TrainResult",
    "TrainingError",
    "train_iter",
    "train",
    "class_frequencies",
    "balanced_class_weights",
    "augment_pair",
    "epoch_weights_path",
]

_MAX_ANCHORS = 200_000  # labelled pixels kept per image to place crops around
#: With data from fewer micrographs than this, validation holds out a block of each micrograph.
BLOCK_VALIDATION_BELOW = 5
MIN_STEPS_PER_EPOCH = {"fine-tuning": 8, "fresh": 50}
"""Fewest optimisation steps in a default epoch. From scratch, a network first sits at the class
prior for one to two hundred steps on real EM; with epochs of 8 steps over three micrographs, early
stopping (10 epochs) ended one such run there, at the all-background solution (real cardiac EM,
mitochondria, three splits: mean pixel accuracy 0.77 with 8 steps, 0.93 with 50;
docs/new_task_real.md)."""
_STATE_FORMAT = "napari-emgranules.train-state/1"
_HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "val_mean_iou",
                    "val_mean_iou_held_out", "val_mean_iou_synthetic", "val_worst_class_change",
                    "learning_rate", "seconds")


class TrainingError(ValueError):
    """A training run cannot start or resume as asked (the message says why and what to do)."""


# -------------------------------------------------------------------------------------------------
# Configuration and events
# -------------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """Everything that shapes a training run (stored in the checkpoint and the weights' sidecar).

    Parameters
    ----------
    epochs : int
        Epochs to run (in total, counting epochs done before a resume).
    batch_size : int
        Crops per optimisation step.
    crop : int
        Side of the random square crops, a multiple of 128. Smaller tiles are mirrored out to it.
    steps_per_epoch : int, optional
        Optimisation steps per epoch; default enough crops to cover the training pixels once, and
        at least :data:`MIN_STEPS_PER_EPOCH` (8 when fine-tuning, 50 from scratch).
    optimizer : {"nadam", "adam"}, optional
        Default: Nadam when training from scratch, Adam when fine-tuning (the original recipe).
    learning_rate : float, optional
        Default: 2e-3 from scratch; when fine-tuning, 5e-5 for Locations models and 5e-4 (the
        original recipe) for the others (:data:`FINE_TUNING_LR`).
    clip_norm : float, optional
        Clip the gradient's global norm to this (None = no clipping). The original networks have
        no normalisation layers; from scratch, clipping (with Adam 5e-4) keeps them from
        diverging in the first epochs.
    class_weights : "none", "balanced", "prior" or sequence of float
        Per-class loss weights. ``"balanced"`` weighs each class by the inverse square root of its
        pixel frequency in the training labels (normalised to a mean pixel weight of 1), which
        helps rare classes but makes the model paint them more generously: pixel fractions measured
        with such a model are biased up. ``"prior"`` (fine-tuning on partial labels) weighs each
        class so that the labelled pixels count with the class mix the starting model finds on the
        whole training images (:func:`prior_class_weights`): strokes over-represent small classes
        such as granules, and a model trained on them as they are paints those classes too
        generously. ``"none"`` (default) is the original recipe.
    dice_weight : float
        Weight of a soft-Dice term added to the cross-entropy (0 = none).
    val_fraction : float
        Fraction held out for validation (ignored when ``validation`` data are given): of each
        image's labelled pixels (``blocks``) or of the pairs (``pairs``).
    validation_split : {"auto", "blocks", "pairs"}
        How validation data are held out of the training data. ``blocks``: a strip along one
        edge of every micrograph (its labels never train, its prediction sees the whole image);
        ``pairs``: whole pairs. ``auto`` (default): blocks when the data come from fewer than
        :data:`BLOCK_VALIDATION_BELOW` micrographs, where a held-out pair would be a large,
        unrepresentative share of them.
    validation_mix : {"auto", "labelled", "start"}
        How the validation data's labelled pixels count in its scores. ``"labelled"``: as they
        are. ``"start"`` (fine-tuning only): each true class's pixels are weighed so that the
        classes come in the mix the starting model finds on the whole training images, so that
        strokes, which over-represent small classes such as granules, give scores that estimate
        the whole image's instead of rewarding a model that paints those classes generously; the
        pixels along an edge between two painted classes (the ring painted around a granule)
        count as edges, not as the whole of their class (:func:`validation_pixel_weights`).
        ``"auto"``: ``"start"`` when fine-tuning on partial labels or with ``class_weights``
        ``"prior"``, else ``"labelled"``.
    monitor : str
        Metric deciding the best checkpoint, learning-rate reduction and early stopping:
        ``val_mean_iou`` (default), ``val_accuracy``, ``val_loss`` or ``loss``. Without validation
        data ``loss`` is used.
    early_stopping_patience, reduce_lr_patience : int or None
        Epochs without improvement before stopping / multiplying the learning rate by
        ``reduce_lr_factor`` (None turns either off).
    flips : bool
        Random identical flips (up-down, left-right) of image and labels.
    rotate90 : bool, optional
        Random identical quarter turns of image and labels. Default (None): on from scratch, off
        when fine-tuning (the fine-tuning recipe was measured without them). From scratch, a model
        trained with flips only scores worse when segmentation averages eight views (flips and
        quarter turns) and worse on micrographs whose fibres run the other way; with quarter
        turns a new task on three real cardiac micrographs went from mean pixel accuracy 0.926 to
        0.944 with one view and 0.890 to 0.952 with eight, at the same cost
        (``python benchmarks/new_task_real.py``: docs/new_task_real.md).
    scale_jitter : float
        Random zoom by a factor in ``[1 - s, 1 + s]`` (0 = off).
    elastic : float
        Random smooth (elastic) deformation of image and labels, as in the original U-Net's
        recipe (Ronneberger et al., MICCAI 2015): displacements drawn on a 3 x 3 grid with this
        standard deviation in crop pixels, interpolated bicubically over the crop (0 = off).
    contrast, brightness : float
        Random contrast factor in ``[1 - c, 1 + c]`` about the crop's mean and random brightness
        shift in ``[-b, b]`` (0.4 and 0.25 in the original recipe); results are clipped to [0, 1].
    freeze_encoder : bool
        Train only the decoder (the contracting path keeps its weights).
    rehearsal : float, optional
        When fine-tuning a Locations or Granules model: the share of crops taken from synthetic
        micrographs of the package's generator at the model's pixel size (with exact truth), so
        that a model fine-tuned on a few micrographs keeps what it knew about the regions' layout
        (:mod:`~napari_emgranules.core.rehearsal`). 0 = the user's data only. Default (None):
        :data:`REHEARSAL_DEFAULT` of the model's kind when fine-tuning, else 0.
    rehearsal_look : {"matched", "random"}
        ``"matched"``: each rehearsal micrograph's class grey levels are mapped onto those of the
        same class in the training data; ``"random"``: the generator's randomised looks as drawn.
    rehearsal_validation : bool
        With rehearsal: also validate on two more generator micrographs in the same look, and
        choose the best epoch by the mean of their mean IoU and the held-out data's (a model that
        only memorises the user's micrograph is then not "best"). On by default (measured:
        docs/correction_loop.md).
    average_with_start : float, optional
        When fine-tuning: the kept weights become the average of the best epoch's and the
        starting weights', this share from the start (weight-space averaging, as in WiSE-FT:
        Wortsman et al., CVPR 2022), unless that average scores below the start on the
        validation data (the best epoch is then kept as it is). Fine-tuned on one or a few
        micrographs, a model then keeps more of what it knew about micrographs it did not see
        (measured: docs/adaptation.md). 0 = the best epoch as it is. Default (None):
        :data:`AVERAGE_WITH_START_DEFAULT` of the model's kind when fine-tuning.
    start_labels : float, optional
        When fine-tuning on partial labels (strokes, corrected pixels): where the labels leave a
        pixel unlabelled and the starting model is sure of it (softmax confidence at least
        :data:`START_LABEL_CONFIDENCE`), its prediction trains too, each such pixel weighing this
        much against a labelled one (a self-training anchor). What the user did not paint is then
        not free to change: a model fine-tuned on strokes alone may find more of what was painted
        and start drawing objects where nobody looked (measured: docs/correction_loop.md). 0 =
        off; the held-out strip never gets start labels. Default (None):
        :data:`START_LABELS_DEFAULT` of the model's kind.
    max_class_loss : float or None
        When fine-tuning: an epoch can replace the kept weights only if no class that the starting
        weights already got right (validation IoU >= :data:`CLASS_GUARD_MIN_START_IOU`, at least
        :data:`CLASS_GUARD_MIN_PIXELS` pixels) has lost more than this IoU (default 0.05; None
        turns the guard off). A mean IoU that rises because one class gains a lot while a good one
        collapses is not an improvement a user wants.
    held_out_floor : bool
        When fine-tuning with ``rehearsal_validation``: an epoch can replace the kept weights only
        if its mean IoU on the user's own held-out data is at least the starting weights' (default
        True). Without it, gains on the synthetic validation micrographs can outweigh a loss on
        the user's data: measured on a held-out look with strokes on two micrographs, the run
        kept an epoch at held-out mean IoU 0.704 against the start's 0.722 (synthetic 0.715
        against 0.681), and it segmented the user's other micrographs worse (docs/adaptation.md).
    seed : int
        Seeds the data order, augmentation, validation split and Keras' random state.
    max_minutes : float, optional
        Time budget: no new epoch starts after this many minutes of this run (the best weights
        so far are kept, and a resume may go on).
    input_scaling : {None, "dtype-range", "percentile"}
        How the trained model scales its input (its card says so to every later use). ``None``
        (default) keeps the starting model's; ``"percentile"`` stretches each micrograph by its own
        grey levels (:func:`~napari_emgranules.core.segment.input_scaler`).
    fresh_data_every : int, optional
        With :func:`train_iter`'s ``fresh_data``: every this many epochs the training images are
        replaced by new ones that it makes (e.g. new synthetic micrographs), so that a model
        trained on generated data does not learn a fixed set of them by heart. Validation data
        stay the same.
    keep_epochs : bool
        Also keep every epoch's weights, as ``epochs/epoch-NNN.weights.h5`` in the run folder (to
        compare or go back to any epoch afterwards; the best weights are kept either way).
    """

    epochs: int = 50
    batch_size: int = 2
    crop: int = 512
    steps_per_epoch: int | None = None
    optimizer: str | None = None
    learning_rate: float | None = None
    clip_norm: float | None = None
    class_weights: str | tuple[float, ...] = "none"
    dice_weight: float = 0.0
    val_fraction: float = 0.2
    validation_split: str = "auto"
    validation_mix: str = "auto"
    monitor: str = "val_mean_iou"
    early_stopping_patience: int | None = 10
    reduce_lr_patience: int | None = 4
    reduce_lr_factor: float = 0.5
    min_learning_rate: float = 1e-6
    flips: bool = True
    rotate90: bool | None = None
    scale_jitter: float = 0.0
    elastic: float = 0.0
    contrast: float = 0.4
    brightness: float = 0.25
    freeze_encoder: bool = False
    rehearsal: float | None = None
    rehearsal_look: str = "matched"
    rehearsal_validation: bool = True
    average_with_start: float | None = None
    start_labels: float | None = None
    max_class_loss: float | None = 0.05
    held_out_floor: bool = True
    seed: int = 0
    max_minutes: float | None = None
    input_scaling: str | None = None
    fresh_data_every: int | None = None
    keep_epochs: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.class_weights, str):
            self.class_weights = tuple(float(w) for w in self.class_weights)
        problems = []
        if int(self.epochs) < 1:
            problems.append(f"epochs must be >= 1, got {self.epochs}")
        if int(self.batch_size) < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.crop < MULTIPLE or self.crop % MULTIPLE:
            problems.append(f"crop must be a multiple of {MULTIPLE}, got {self.crop}")
        if self.fresh_data_every is not None and (isinstance(self.fresh_data_every, bool)
                                                  or int(self.fresh_data_every) != self.fresh_data_every
                                                  or self.fresh_data_every < 1):
            problems.append(f"fresh_data_every must be a whole number of epochs >= 1, got "
                            f"{self.fresh_data_every!r}")
        if self.steps_per_epoch is not None and int(self.steps_per_epoch) < 1:
            problems.append(f"steps_per_epoch must be >= 1, got {self.steps_per_epoch}")
        if self.optimizer not in (None, "nadam", "adam"):
            problems.append(f"optimizer must be 'nadam' or 'adam', got {self.optimizer!r}")
        if self.clip_norm is not None and not self.clip_norm > 0:
            problems.append(f"clip_norm must be > 0, got {self.clip_norm}")
        if self.learning_rate is not None and not 0 < self.learning_rate < 1:
            problems.append(f"learning_rate must be in (0, 1), got {self.learning_rate}")
        if isinstance(self.class_weights, str) and self.class_weights not in CLASS_WEIGHT_MODES:
            problems.append(f"class_weights must be 'none', 'balanced', 'prior' or one number per class, "
                            f"got {self.class_weights!r}")
        if not isinstance(self.class_weights, str) and (
                any(not math.isfinite(w) or w < 0 for w in self.class_weights)
                or not any(self.class_weights)):
            problems.append(f"class weights must be finite, >= 0 and not all 0, "
                            f"got {self.class_weights}")
        if self.dice_weight < 0:
            problems.append(f"dice_weight must be >= 0, got {self.dice_weight}")
        if not 0 <= self.val_fraction < 1:
            problems.append(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.validation_split not in ("auto", "blocks", "pairs"):
            problems.append(f"validation_split must be 'auto', 'blocks' or 'pairs', got "
                            f"{self.validation_split!r}")
        if self.validation_mix not in VALIDATION_MIXES:
            problems.append(f"validation_mix must be one of {', '.join(VALIDATION_MIXES)}, got "
                            f"{self.validation_mix!r}")
        if self.monitor not in ("val_mean_iou", "val_accuracy", "val_loss", "loss"):
            problems.append(f"monitor must be val_mean_iou, val_accuracy, val_loss or loss, "
                            f"got {self.monitor!r}")
        if not 0 <= self.scale_jitter < 1:
            problems.append(f"scale_jitter must be in [0, 1), got {self.scale_jitter}")
        if not 0 <= self.elastic <= ELASTIC_MAX_PX:
            problems.append(f"elastic must be in [0, {ELASTIC_MAX_PX}] crop pixels, got {self.elastic}")
        if not 0 <= self.contrast < 1 or not 0 <= self.brightness <= 1:
            problems.append(f"contrast must be in [0, 1) and brightness in [0, 1], got "
                            f"{self.contrast} and {self.brightness}")
        if self.rehearsal is not None and not 0 <= self.rehearsal < 1:
            problems.append(f"rehearsal must be in [0, 1), got {self.rehearsal}")
        share = self.average_with_start
        if share is not None and (isinstance(share, bool) or not isinstance(share, (int, float))
                                  or not 0 <= share < 1):
            problems.append(f"average_with_start must be in [0, 1) (or None), got "
                            f"{self.average_with_start!r}")
        weak = self.start_labels
        if weak is not None and (isinstance(weak, bool) or not isinstance(weak, (int, float))
                                 or not 0 <= weak <= 1):
            problems.append(f"start_labels must be in [0, 1] (or None), got {weak!r}")
        if self.rehearsal_look not in REHEARSAL_LOOKS:
            problems.append(f"rehearsal_look must be one of {', '.join(REHEARSAL_LOOKS)}, got "
                            f"{self.rehearsal_look!r}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            problems.append(f"max_minutes must be > 0, got {self.max_minutes}")
        if self.input_scaling not in (None, *INPUT_SCALINGS):
            problems.append(f"input_scaling must be one of {', '.join(INPUT_SCALINGS)}, got "
                            f"{self.input_scaling!r}")
        if self.max_class_loss is not None and not 0 <= self.max_class_loss <= 1:
            problems.append(f"max_class_loss must be in [0, 1] (or None), got {self.max_class_loss}")
        if self.rotate90 not in (None, True, False):
            problems.append(f"rotate90 must be True, False or None (by the start), got {self.rotate90!r}")
        if not isinstance(self.held_out_floor, bool):
            problems.append(f"held_out_floor must be True or False, got {self.held_out_floor!r}")
        if not 0 < self.reduce_lr_factor < 1:
            problems.append(f"reduce_lr_factor must be in (0, 1), got {self.reduce_lr_factor}")
        for name in ("early_stopping_patience", "reduce_lr_patience"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                problems.append(f"{name} must be a whole number of epochs >= 1 (or None for "
                                f"never), got {value!r}")
        if problems:
            raise ValueError("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not isinstance(self.class_weights, str):
            d["class_weights"] = list(self.class_weights)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class TrainProgress:
    """One event of :func:`train_iter`: a finished batch, or (``end_of_epoch``) a finished epoch.

    ``logs`` holds the running means of the epoch so far (``loss``, ``accuracy``); at the end of an
    epoch also the validation metrics and the learning rate. ``improved`` says the epoch's
    monitored metric was the best so far (its weights were saved).
    """

    epoch: int
    epochs: int
    step: int
    steps: int
    logs: dict[str, float]
    end_of_epoch: bool = False
    improved: bool = False
    message: str = ""


@dataclass
class TrainResult:
    """What a finished (or early-stopped) run leaves.

    Attributes
    ----------
    model : SegmentationModel
        The best weights (by ``monitor``), ready for :func:`segment_micrograph` or :func:`evaluate`.
    weights_path : Path
        Where they are saved (with the JSON sidecar).
    history : pandas.DataFrame
        One row per epoch (also ``history.csv``).
    best_epoch : int
    monitor : str
    best_value : float
    stopped_early : bool
    out_dir : Path
    report : pandas.DataFrame or None
        Per class, on the validation data: IoU of the starting model (``iou_before``, epoch 0;
        NaN when training from scratch) and of the kept weights (``iou_after``), and the
        validation pixels (``pixels``); also ``report.csv`` in the run folder. None without
        validation data.
    confusion : numpy.ndarray or None
        Confusion matrix (rows = truth) of the kept weights on the validation data.
    averaged_with_start : float
        Share of the starting weights in the kept weights (0: the best epoch's as they are;
        :attr:`TrainConfig.average_with_start`); ``model`` and ``report`` are of the average.
    """

    model: SegmentationModel
    weights_path: Path
    history: Any
    best_epoch: int
    monitor: str
    best_value: float
    stopped_early: bool
    out_dir: Path
    notes: list[str] = field(default_factory=list)
    report: Any = None
    confusion: np.ndarray | None = None
    averaged_with_start: float = 0.0

    @property
    def kept_start(self) -> bool:
        """True when no training epoch beat the starting model on the validation data."""
        return self.best_epoch == 0


# -------------------------------------------------------------------------------------------------
# Data: loading, class weights, augmentation
# -------------------------------------------------------------------------------------------------
@dataclass
class _Sample:
    """One training image at the model's pixel size: a whole micrograph (its exported tiles put
    back together) or a lone pair, with :data:`UNLABELLED` wherever there is no truth."""

    name: str
    image: np.ndarray  # float32, the model's input scaling, at the model's pixel size
    labels: np.ndarray  # uint16 codes; UNLABELLED = no truth (partial labels, held-out block)
    n_labelled: int = -1
    _where: np.ndarray | None = None  # flat indices of (a subsample of) the labelled pixels
    withheld: tuple[int, int, int] | None = None  # (axis, first, stop): the held-out strip + margin

    def __post_init__(self) -> None:
        labelled = np.flatnonzero(self.labels != UNLABELLED)
        self.n_labelled = int(labelled.size)
        if labelled.size > _MAX_ANCHORS:
            labelled = labelled[:: -(-labelled.size // _MAX_ANCHORS)]
        self._where = labelled

    def anchor(self, rng: np.random.Generator) -> tuple[int, int]:
        """A random labelled pixel (row, col): crops are placed around one."""
        k = int(self._where[int(rng.integers(0, self._where.size))])
        return divmod(k, self.labels.shape[1])


def _resample_pair(image: np.ndarray, labels: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Image (as inference resamples it: :func:`~.resample.resample`) and labels (nearest)
    brought to ``factor`` times their pixel density."""
    shape = model_grid_shape(image.shape, factor)
    return resample(image, shape), _nearest(labels, shape)


def _group_pairs(data: TrainingSet) -> list[list[TrainingPair]]:
    """Pairs cut from one micrograph (same source, known origins) together, each alone otherwise."""
    groups: dict[str, list[TrainingPair]] = {}
    alone: list[list[TrainingPair]] = []
    for pair in data:
        if pair.source and pair.origin is not None:
            groups.setdefault(pair.source, []).append(pair)
        else:
            alone.append([pair])
    for source, pairs in groups.items():
        sizes = sorted({p.pixel_size_nm for p in pairs})
        if len(sizes) > 1:
            listed = ", ".join(f"{s:g}" for s in sizes)
            raise TrainingError(
                f"{source}: its training pairs give different pixel sizes ({listed} nm: "
                f"{', '.join(p.name for p in pairs[:6])}); export the micrograph again with one "
                "pixel size, or move the wrong pairs out")
    return list(groups.values()) + alone


def _assemble(pairs: list[TrainingPair], schema: ClassSchema,
              scaling: str = "dtype-range") -> tuple[np.ndarray, np.ndarray]:
    """One pair's, or a micrograph's exported tiles', image (the model's input scaling) and labels.

    Tiles go back where they were cut from; where no tile was exported the labels are
    UNLABELLED and the image repeats its nearest exported pixel (context for the crops only).
    With ``"percentile"`` scaling the levels come from all the exported tiles together, as
    inference takes them from the whole micrograph.
    """
    loaded, means = [], []
    for pair in pairs:
        image, labels = pair.load()
        schema.check_labels(labels, str(pair.labels_path), allow_unlabelled=True)
        if scaling == "percentile":
            means.append(block_means(image))
        loaded.append((pair.origin or (0, 0), to_unit_float(image), labels))
    if scaling == "percentile":
        levels = levels_of(np.concatenate(means))
        loaded = [(o, stretch(im, levels), lab) for o, im, lab in loaded]
    elif scaling != "dtype-range":
        raise TrainingError(f"unknown input scaling {scaling!r}")
    if len(loaded) == 1 and loaded[0][0] == (0, 0):
        return loaded[0][1], loaded[0][2].astype(np.uint16, copy=False)
    y0 = min(o[0] for o, _, _ in loaded)
    x0 = min(o[1] for o, _, _ in loaded)
    h = max(o[0] + im.shape[0] for o, im, _ in loaded) - y0
    w = max(o[1] + im.shape[1] for o, im, _ in loaded) - x0
    image = np.zeros((h, w), np.float32)
    labels = np.full((h, w), UNLABELLED, np.uint16)
    known = np.zeros((h, w), bool)
    for (y, x), im, lab in loaded:
        window = slice(y - y0, y - y0 + im.shape[0]), slice(x - x0, x - x0 + im.shape[1])
        image[window], labels[window], known[window] = im, lab, True
    if not known.all():
        from scipy.ndimage import distance_transform_edt

        idx = distance_transform_edt(~known, return_distances=False, return_indices=True)
        image = image[idx[0], idx[1]]
    return image, labels


def _check_two_classes(samples: list[_Sample], schema: ClassSchema) -> None:
    """A new model needs at least two labelled classes: from label maps that all hold one class
    (an empty mask, or strokes of one class) it learns to call every pixel that class."""
    present = np.flatnonzero(class_frequencies([s.labels for s in samples], schema.n_classes))
    if len(present) < 2:
        only = (f"only class {int(present[0])} ({schema.classes[int(present[0])].name})"
                if len(present) else "no class")
        raise TrainingError(f"the training data label {only}: a new model needs pixels of at "
                            f"least two classes to learn to tell them apart")


def _load_samples(data: TrainingSet, schema: ClassSchema, pixel_size_nm: float,
                  scaling: str = "dtype-range") -> list[_Sample]:
    samples = []
    for pairs in _group_pairs(data):
        x, labels = _assemble(pairs, schema, scaling)
        factor = float(pairs[0].pixel_size_nm) / pixel_size_nm
        if abs(factor - 1.0) > RESAMPLE_TOLERANCE:
            x, labels = _resample_pair(x, labels, factor)
        name = pairs[0].source if len(pairs) > 1 else pairs[0].name
        samples.append(_Sample(name, x, labels))
    return samples


def _fresh_samples(items, card: ModelCard, round_: int, run: _Run | None = None) -> list[_Sample]:
    """Training images from ``(image, labels, pixel_size_nm)`` arrays (``fresh_data``), scaled and
    resampled to the model's pixel size as exported pairs are (their pixel sizes widen ``run``'s
    recorded range)."""
    out = []
    for i, item in enumerate(items):
        try:
            image, labels, px = item
        except (TypeError, ValueError):
            raise TrainingError(f"fresh_data({round_}) item {i}: give (image, labels, "
                                f"pixel_size_nm), got {type(item).__name__}") from None
        image, labels = np.asarray(image), np.asarray(labels)
        if image.ndim != 2 or image.shape != labels.shape:
            raise TrainingError(f"fresh_data({round_}) item {i}: a 2-D image and labels of its "
                                f"shape are needed, got {image.shape} and {labels.shape}")
        card.schema.check_labels(labels, f"fresh_data({round_}) item {i}", allow_unlabelled=True)
        x = np.asarray(input_scaler(image, card.input_scaling)(image), np.float32)
        lab = labels.astype(np.uint16, copy=False)
        factor = float(px) / card.pixel_size_nm
        if abs(factor - 1.0) > RESAMPLE_TOLERANCE:
            x, lab = _resample_pair(x, lab, factor)
        out.append(_Sample(f"fresh-{round_}-{i}", x, lab))
        if run is not None:
            run.seen_pixel_sizes([px])
    if not out:
        raise TrainingError(f"fresh_data({round_}) gave no images")
    return out


def _hold_out_blocks(samples: list[_Sample], fraction: float, seed: int,
                     margin: int = 8) -> tuple[list[_Sample], list[_Sample]]:
    """Split each image into a training part and a held-out block (a strip along one edge).

    The strip holds about ``fraction`` of the image's labelled pixels; its labels are UNLABELLED
    for training (with a ``margin`` so that no training crop learns the pixels right beside it)
    and it is the only labelled part of the validation image. A whole-image prediction is scored
    on the strip, so validation sees the same context as inference. Of the four edges, the strip
    whose classes come closest to ``fraction`` of each class is taken (ties by ``seed``), so that
    a class seen only near one edge is not taken out of training altogether.
    """
    rng = np.random.default_rng(seed)
    train, val = [], []
    for s in samples:
        lab = s.labels
        best = None
        for axis, far in rng.permutation([(0, False), (0, True), (1, False), (1, True)]).tolist():
            strip = _edge_strip(lab, axis, bool(far), fraction)
            if strip is None:
                continue
            cost = _strip_cost(lab, axis, strip, fraction)
            if best is None or cost < best[0]:
                best = (cost, axis, strip)
        if best is None:
            train.append(s)
            continue
        _, axis, strip = best
        n = lab.shape[axis]
        guard = slice(max(0, strip.start - margin), min(n, strip.stop + margin))
        at = [slice(None), slice(None)]
        at[axis] = guard
        train_lab = lab.copy()
        train_lab[tuple(at)] = UNLABELLED
        at[axis] = strip
        val_lab = np.full_like(lab, UNLABELLED)
        val_lab[tuple(at)] = lab[tuple(at)]
        if (train_lab != UNLABELLED).any():
            train.append(_Sample(s.name, s.image, train_lab, withheld=(axis, guard.start, guard.stop)))
        val.append(_Sample(f"{s.name} (held-out block)", s.image, val_lab))
    return train, val


def _edge_strip(lab: np.ndarray, axis: int, far: bool, fraction: float) -> slice | None:
    """Rows (axis 0) or columns (axis 1) from one edge holding ``fraction`` of the labelled pixels."""
    n = lab.shape[axis]
    counts = (lab != UNLABELLED).sum(axis=1 - axis)
    cum = np.cumsum(counts[::-1] if far else counts)
    if n < 2 or cum[-1] < 64:
        return None
    cut = min(max(int(np.searchsorted(cum, fraction * cum[-1])) + 1, 1), n - 1)
    return slice(n - cut, n) if far else slice(0, cut)


def _strip_cost(lab: np.ndarray, axis: int, strip: slice, fraction: float) -> float:
    """How far the strip's share of each class is from ``fraction`` (worst class; lower is better)."""
    at = [slice(None), slice(None)]
    at[axis] = strip
    codes, total = np.unique(lab[lab != UNLABELLED], return_counts=True)
    inside = dict(zip(*np.unique(lab[tuple(at)], return_counts=True), strict=True))
    shares = [inside.get(c, 0) / t for c, t in zip(codes.tolist(), total.tolist(), strict=True)]
    return max(abs(share - fraction) for share in shares) if shares else 0.0


#: The named class-weight modes of :attr:`TrainConfig.class_weights` (or one number per class).
CLASS_WEIGHT_MODES = ("none", "balanced", "prior")

VALIDATION_MIXES = ("auto", "labelled", "start")
"""How the validation data's labelled pixels are counted (:attr:`TrainConfig.validation_mix`)."""


def class_frequencies(labels: Sequence[np.ndarray], n_classes: int) -> np.ndarray:
    """Pixel frequency of each class over label maps (sums to 1)."""
    counts = np.zeros(n_classes, np.int64)
    for lab in labels:
        counts += np.bincount(np.asarray(lab).ravel(), minlength=n_classes)[:n_classes]
    total = counts.sum()
    return counts / total if total else np.full(n_classes, 1.0 / n_classes)


def prior_class_weights(labelled: np.ndarray, expected: np.ndarray,
                        max_weight: float = 20.0) -> np.ndarray:
    """Class weights that give labelled pixels of class frequencies ``labelled`` the class mix
    ``expected`` (both sum to 1), with a mean weight of 1 over the labelled pixels.

    Classes with no labelled pixels get weight 1 (they contribute no pixels anyway); weights lie
    within ``[1 / max_weight, max_weight]``.
    """
    f = np.asarray(labelled, np.float64)
    e = np.asarray(expected, np.float64)
    w = np.ones_like(f)
    present = f > 0
    w[present] = e[present] / f[present]
    total = float((f[present] * w[present]).sum())
    if total > 0:
        w[present] /= total
    return np.clip(w, 1.0 / max_weight, max_weight).astype(np.float32)


def balanced_class_weights(frequencies: np.ndarray, max_weight: float = 20.0) -> np.ndarray:
    """Inverse-square-root-frequency class weights with a mean pixel weight of 1.

    Classes absent from the data get weight 1 (they contribute no pixels anyway); weights are capped
    at ``max_weight``.
    """
    f = np.asarray(frequencies, np.float64)
    w = np.ones_like(f)
    present = f > 0
    w[present] = 1.0 / np.sqrt(f[present])
    w[present] /= float((f[present] * w[present]).sum())
    return np.minimum(w, max_weight).astype(np.float32)


#: The largest elastic displacement spread allowed (crop pixels): beyond it, folds tear structures.
ELASTIC_MAX_PX = 50.0


@functools.lru_cache(maxsize=8)
def _cubic_weights(n: int) -> np.ndarray:
    """(n, 3): how each of 3 control points weighs on each of n pixels (bicubic, as
    ``scipy.ndimage.zoom`` interpolates), so that a field is ``Wy @ grid @ Wx.T``."""
    from scipy.ndimage import zoom

    return zoom(np.eye(3), (n / 3, 1), order=3, mode="nearest", grid_mode=True)[:n]


def _deform(img: np.ndarray, lab: np.ndarray, sigma: float,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Image and labels through the same smooth random displacement field (3 x 3 control points,
    standard deviation ``sigma`` pixels, bicubic in between); labels stay labels (nearest)."""
    from scipy.ndimage import map_coordinates

    h, w = img.shape
    wy, wx = _cubic_weights(h), _cubic_weights(w)
    grid = rng.normal(0.0, sigma, size=(2, 3, 3))
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    coords = np.stack([yy + wy @ grid[0] @ wx.T, xx + wy @ grid[1] @ wx.T])
    return (map_coordinates(np.asarray(img, np.float32), coords, order=1, mode="mirror"),
            map_coordinates(np.asarray(lab), coords, order=0, mode="mirror"))


def augment_pair(
    image: np.ndarray, labels: np.ndarray, crop: int, rng: np.random.Generator,
    config: TrainConfig | None = None, anchor: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A random ``crop`` x ``crop`` training example from one pair, augmented as ``config`` says.

    The image (float32 in [0, 1]) and the labels get the same crop, zoom, deformation, flips and
    rotation; contrast and brightness change the image only. Only an image smaller than the crop is
    mirrored out. ``anchor`` (row, col) is a pixel the crop must contain (a labelled one).
    """
    config = config or TrainConfig()
    scale = 1.0
    if config.scale_jitter:
        scale = float(rng.uniform(1 - config.scale_jitter, 1 + config.scale_jitter))
    side = max(8, round(crop / scale))  # source region that becomes the crop after zooming
    h, w = image.shape
    shift = (0, 0)
    if h < side or w < side:
        ph, pw = max(0, side - h), max(0, side - w)
        pads = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2))
        image = np.pad(image, pads, mode="symmetric")
        labels = np.pad(labels, pads, mode="symmetric")
        h, w = image.shape
        shift = (ph // 2, pw // 2)
    if anchor is None:
        y = int(rng.integers(0, h - side + 1))
        x = int(rng.integers(0, w - side + 1))
    else:  # a window holding the anchor (shifted by the padding above)
        ay, ax = anchor[0] + shift[0], anchor[1] + shift[1]
        y = min(max(0, ay - int(rng.integers(0, side))), h - side)
        x = min(max(0, ax - int(rng.integers(0, side))), w - side)
    img = image[y:y + side, x:x + side]
    lab = labels[y:y + side, x:x + side]
    if side != crop:
        from scipy.ndimage import zoom

        f = crop / side
        img = zoom(img, f, order=1, mode="mirror", grid_mode=True)[:crop, :crop]
        lab = zoom(lab, f, order=0, mode="mirror", grid_mode=True)[:crop, :crop]
    if config.elastic:
        img, lab = _deform(img, lab, config.elastic, rng)
    if config.flips:
        if rng.random() < 0.5:
            img, lab = img[::-1], lab[::-1]
        if rng.random() < 0.5:
            img, lab = img[:, ::-1], lab[:, ::-1]
    if config.rotate90:
        k = int(rng.integers(0, 4))
        img, lab = np.rot90(img, k), np.rot90(lab, k)
    img = np.array(img, np.float32)
    if config.contrast:
        c = float(rng.uniform(1 - config.contrast, 1 + config.contrast))
        mean = float(img.mean())
        img = (img - mean) * c + mean
    if config.brightness:
        img += float(rng.uniform(-config.brightness, config.brightness))
    np.clip(img, 0.0, 1.0, out=img)
    return img, np.ascontiguousarray(lab)


# -------------------------------------------------------------------------------------------------
# Loss
# -------------------------------------------------------------------------------------------------
def _make_loss(n_classes: int, class_weights: np.ndarray, dice_weight: float,
               start_labels: float = 0.0):
    """Per-image class-weighted cross-entropy from logits (+ soft Dice), in backend-neutral ops.

    With ``start_labels`` > 0, codes ``n_classes + c`` are the starting model's sure class ``c``
    (:func:`_with_start_labels`): they weigh ``start_labels`` times a labelled pixel in the
    cross-entropy and are left out of the Dice term.
    """
    keras = get_keras()
    ops = keras.ops
    weights = np.asarray(class_weights, np.float32)
    weak_codes = n_classes if start_labels > 0 else None

    def loss(y_true, y_pred):
        y, valid, weak = _split_unlabelled(ops, y_true, y_pred, weak_codes)
        ce = keras.losses.sparse_categorical_crossentropy(y, y_pred, from_logits=True)
        w = ops.take(ops.convert_to_tensor(weights), y) * (valid - (1.0 - start_labels) * weak)
        per_image = ops.sum(w * ce, axis=(1, 2)) / (ops.sum(w, axis=(1, 2)) + 1e-7)
        if dice_weight:
            labelled = valid - weak
            probs = ops.softmax(y_pred, axis=-1) * labelled[..., None]
            onehot = ops.one_hot(y, n_classes) * labelled[..., None]
            inter = ops.sum(probs * onehot, axis=(1, 2))
            denom = ops.sum(probs, axis=(1, 2)) + ops.sum(onehot, axis=(1, 2))
            dice = (2.0 * inter + 1.0) / (denom + 1.0)
            per_image = per_image + dice_weight * (1.0 - ops.mean(dice, axis=-1))
        return per_image

    return loss


def _split_unlabelled(ops, y_true, y_pred, weak_codes: int | None = None):
    """Class codes with UNLABELLED pixels set to 0, a float mask of the labelled pixels and one of
    the start labels among them (codes from ``weak_codes`` on, given as their class; None: none)."""
    y = ops.cast(ops.reshape(y_true, ops.shape(y_pred)[:-1]), "int32")
    valid = ops.not_equal(y, UNLABELLED)
    if weak_codes is None:
        weak = ops.zeros_like(y, dtype="float32")
    else:
        is_weak = ops.logical_and(valid, ops.greater_equal(y, weak_codes))
        y = ops.where(is_weak, y - weak_codes, y)
        weak = ops.cast(is_weak, "float32")
    return ops.where(valid, y, 0), ops.cast(valid, "float32"), weak


def _make_accuracy(weak_codes: int | None = None):
    """Pixel accuracy over the labelled pixels (Keras' own would count UNLABELLED as wrong), not
    counting start labels (codes from ``weak_codes`` on)."""
    ops = get_keras().ops

    def accuracy(y_true, y_pred):
        y, valid, weak = _split_unlabelled(ops, y_true, y_pred, weak_codes)
        hit = ops.cast(ops.equal(ops.cast(ops.argmax(y_pred, axis=-1), "int32"), y), "float32")
        return ops.sum(hit * (valid - weak)) / ops.maximum(ops.sum(valid - weak), 1.0)

    return accuracy


def _numpy_loss(logits: np.ndarray, labels: np.ndarray, class_weights: np.ndarray,
                dice_weight: float) -> float:
    """The training loss of one validation image, computed in NumPy from its logits."""
    valid = labels != UNLABELLED
    z = logits[valid].astype(np.float64)  # (pixels, classes): the labelled pixels only
    z -= z.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    lab = labels[valid].astype(np.intp)
    ce = -np.take_along_axis(logp, lab[..., None], axis=-1)[..., 0]
    w = class_weights[lab]
    value = float((w * ce).sum() / (w.sum() + 1e-7))
    if dice_weight:
        p = np.exp(logp)
        onehot = np.eye(logits.shape[-1])[lab]
        inter = (p * onehot).sum(axis=0)
        denom = p.sum(axis=0) + onehot.sum(axis=0)
        value += dice_weight * float(1.0 - ((2 * inter + 1) / (denom + 1)).mean())
    return value


# -------------------------------------------------------------------------------------------------
# Starting point
# -------------------------------------------------------------------------------------------------
def _as_training_set(data, schema: ClassSchema | None, pixel_size_nm: float | None = None) -> TrainingSet:
    """Pair folders and/or (micrograph, labels) file pairs as one TrainingSet."""
    if isinstance(data, TrainingSet):
        return data
    if isinstance(data, (str, os.PathLike)):
        data = [data]
    data = list(data)
    files = [d for d in data if isinstance(d, (tuple, list))]
    folders = [Path(d) for d in data if not isinstance(d, (tuple, list))]
    sets = []
    if folders:
        sets.append(load_training_pairs(*folders, schema=schema))
    if files:
        sets.append(pairs_from_files(files, schema=schema, pixel_size_nm=pixel_size_nm))
    if not sets:
        raise TrainingError("no training data given: pass pair folders or (micrograph, labels) files")
    if len(sets) == 1:
        return sets[0]
    return TrainingSet(sets[0].pairs + sets[1].pairs, sets[0].schema or sets[1].schema,
                       sets[0].roots + sets[1].roots)


def _clone(model: SegmentationModel, card: ModelCard) -> SegmentationModel:
    """A trainable copy (the source may be a cached model used for inference elsewhere)."""
    net = build_unet(card.architecture, card.schema.n_classes)
    net.set_weights(model.keras_model.get_weights())
    return SegmentationModel(net, card)


def _extends(schema: ClassSchema, base: ClassSchema) -> bool:
    """``schema`` is ``base`` with classes added after its codes and letters (e.g. mitochondria
    apart from the Z disk)."""
    def head(classes):
        return [(c.code, c.letter) for c in classes]

    return (schema.kind == base.kind and schema.n_classes > base.n_classes
            and head(schema.classes[:base.n_classes]) == head(base.classes))


def _widened(model: SegmentationModel, card: ModelCard) -> SegmentationModel:
    """A trainable copy of ``model`` with a head for ``card.schema``'s added classes.

    Each added class starts as a copy of the class it was part of (the one whose name holds its
    name: mitochondria from "Z disk + mitochondria"; else the background) with its bias lowered by
    2, so the widened model labels every pixel as the original does until training separates them.
    """
    old, new = model.card.schema, card.schema
    weights = model.keras_model.get_weights()
    kernel, bias = weights[-2], weights[-1]
    kernel = np.concatenate([kernel, np.zeros(kernel.shape[:-1] + (new.n_classes - old.n_classes,),
                                              kernel.dtype)], axis=-1)
    bias = np.concatenate([bias, np.zeros(new.n_classes - old.n_classes, bias.dtype)])
    for i, cls in enumerate(new.classes[old.n_classes:], old.n_classes):
        parent = next((j for j, c in enumerate(old.classes) if name_key(cls.name)
                       and name_key(cls.name) in name_key(c.name)), 0)
        kernel[..., i] = kernel[..., parent]
        bias[i] = bias[parent] - 2.0
    net = build_unet(card.architecture, new.n_classes)
    net.set_weights([*weights[:-2], kernel, bias])
    return SegmentationModel(net, card)


def _load_start(path, kind: str | None, schema: ClassSchema | None) -> SegmentationModel:
    """Starting weights from a file: in ``schema`` (a lab's own names and colours), or as stored
    when ``schema`` adds classes to them (the model is widened after)."""
    try:
        return load_model(path, kind, schema=schema)
    except WeightsError:
        if schema is None:
            raise
        base = load_model(path, kind)
        if not _extends(schema, base.card.schema):
            raise
        return base


def _starting_model(
    model, kind: str | None, schema: ClassSchema | None, architecture: str | None, fresh: bool,
    data_pixel_size: float, seed: int,
) -> tuple[SegmentationModel, str]:
    """Resolve what to train: (trainable model, description of the starting weights)."""
    if model is not None and fresh:
        raise TrainingError("give starting weights or fresh=True, not both")
    if model is None and not fresh and schema is not None and schema.kind in ("locations", "granules") \
            and _extends(schema, default_schema(schema.kind)) and default_model(schema.kind).card.trained:
        model = default_model(schema.kind)  # the bundled model, widened to the added classes
    if model is not None:
        base = model if isinstance(model, SegmentationModel) else _load_start(model, kind, schema)
        if kind is not None and base.kind != kind:
            raise TrainingError(f"the starting model is a {base.kind} model, not {kind}")
        if schema is not None and schema.n_classes != base.n_classes \
                and not _extends(schema, base.card.schema):
            raise TrainingError(f"the starting model has {base.n_classes} classes, the schema "
                                f"{schema.n_classes}: train a new model (fresh) for a new schema")
        card = replace(base.card, schema=schema or base.card.schema,
                       provenance=dict(base.card.provenance))
        source = str(base.card.provenance.get("source") or repr(base))
        if schema is not None and schema.n_classes > base.n_classes:
            added = ", ".join(c.name for c in schema.classes[base.n_classes:])
            return _widened(base, card), f"{source} widened by {added}"
        return _clone(base, card), source if base.card.trained else "untrained " + source
    if schema is None:
        if kind is None:
            raise TrainingError("say what to train: kind 'locations' or 'granules', starting "
                                "weights, or a schema for a new task")
        schema = default_schema(kind)
    kind = kind or schema.kind
    if kind != schema.kind:
        schema = ClassSchema(kind, schema.classes)
    if architecture is None:
        architecture = "unet_model7" if kind == "locations" else "unet_model"
    if architecture not in ARCHITECTURES:
        raise TrainingError(f"unknown architecture {architecture!r}; choose {sorted(ARCHITECTURES)}")
    if not fresh and kind in ("locations", "granules") and schema == default_schema(kind):
        base = default_model(kind)
        if base.card.trained:
            return _clone(base, replace(base.card, provenance=dict(base.card.provenance))), \
                "bundled " + kind
    card = ModelCard(kind, architecture, schema, pixel_size_nm=data_pixel_size)
    return SegmentationModel(build_unet(architecture, schema.n_classes, seed=seed), card), "fresh"


# -------------------------------------------------------------------------------------------------
# Checkpoints
# -------------------------------------------------------------------------------------------------
def _save_checkpoint(ckpt: Path, net, optimizer, state: dict[str, Any]) -> None:
    """Weights, optimiser variables and loop state of the last finished epoch, replaced atomically."""
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".checkpoint-", dir=ckpt.parent))
    try:
        net.save_weights(tmp / "last.weights.h5")
        arrays = {f"v{i:04d}": np.asarray(v) for i, v in enumerate(optimizer.variables)}
        np.savez(tmp / "optimizer.npz", **arrays)
        (tmp / "state.json").write_text(json.dumps(state, indent=2), encoding="utf-8")
        old = ckpt.with_name(".checkpoint-old")
        if ckpt.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(ckpt, old)
        os.replace(tmp, ckpt)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_state(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The checkpointed state of the training run in ``out_dir`` (epoch, settings, history), or
    None when the folder holds no run that can resume. Raises :class:`TrainingError` for a damaged
    checkpoint."""
    return _read_state(Path(out_dir) / "checkpoint")


def _read_state(ckpt: Path) -> dict[str, Any] | None:
    state_file = ckpt / "state.json"
    if not state_file.is_file():
        old = ckpt.with_name(".checkpoint-old")  # killed between the two renames
        if (old / "state.json").is_file():
            os.replace(old, ckpt)
        else:
            return None
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise TrainingError(f"{state_file}: the checkpoint is unreadable ({exc}); start a new run "
                            "in another folder") from None
    if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
        raise TrainingError(f"{state_file}: not a napari-emgranules training checkpoint")
    return state


def _restore_optimizer(ckpt: Path, optimizer) -> None:
    with np.load(ckpt / "optimizer.npz") as saved:
        arrays = [saved[k] for k in sorted(saved.files)]
    if len(arrays) != len(optimizer.variables) or any(
            tuple(a.shape) != tuple(v.shape) for a, v in zip(arrays, optimizer.variables, strict=False)):
        raise TrainingError(f"{ckpt}: the saved optimiser state does not fit this model")
    for v, a in zip(optimizer.variables, arrays, strict=True):
        v.assign(a)


def _write_history(out: Path, history: list[dict[str, float]]) -> None:
    tmp = out / ".history.csv.tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=_HISTORY_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in history:
            writer.writerow({k: row.get(k, "") for k in _HISTORY_COLUMNS})
    os.replace(tmp, out / "history.csv")


def plot_history(history: list[dict[str, float]], path: Path, title: str = "") -> Path:
    """Loss and metrics per epoch as a PNG (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(10, 4), dpi=100)
    ax1, ax2 = fig.subplots(1, 2)
    for key, style in (("loss", "-"), ("val_loss", "--")):
        vals = [r.get(key) for r in history]
        if any(v is not None and np.isfinite(v) for v in vals):
            ax1.plot(epochs, vals, style, marker="o", ms=3, label=key.replace("_", " "))
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.set_title("Loss")
    ax1.legend()
    for key, style in (("accuracy", "-"), ("val_accuracy", "--"), ("val_mean_iou", ":")):
        vals = [r.get(key) for r in history]
        if any(v is not None and np.isfinite(v) for v in vals):
            ax2.plot(epochs, vals, style, marker="o", ms=3, label=key.replace("_", " "))
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("fraction")
    ax2.set_ylim(0, 1.02)
    ax2.set_title("Accuracy and mean IoU")
    ax2.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, path)
    return path


# -------------------------------------------------------------------------------------------------
# Validation
# -------------------------------------------------------------------------------------------------
def _whole_image_logits(predict, image: np.ndarray) -> np.ndarray:
    """Logits ``(h, w, classes)`` of one whole image, padded (mirrored) to the network's multiple."""
    h, w = image.shape
    ph, pw = (-h) % MULTIPLE, (-w) % MULTIPLE
    x = np.pad(image, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)), mode="symmetric")
    logits = np.asarray(predict(x[None, ..., None]), np.float32)[0]
    return logits[ph // 2:ph // 2 + h, pw // 2:pw // 2 + w]


def _counted(cm, row_weights=None) -> np.ndarray:
    """A validation confusion matrix as its scores count it.

    ``cm`` is either what :func:`_validate` returns, raw counts and weighted counts stacked
    (``(2, n, n)``: the weighted ones are returned), or raw counts alone (``(n, n)``; a run
    checkpointed before pixel weights existed), whose rows are then counted ``row_weights`` times
    (None: as they are): partial labels scored as if their classes came in the starting mix.
    """
    cm = np.asarray(cm, np.float64)
    if cm.ndim == 3:
        return cm[1]
    return cm if row_weights is None else cm * np.asarray(row_weights, np.float64)[:, None]


def _raw_counts(cm) -> np.ndarray:
    """The pixel counts of a validation confusion matrix (see :func:`_counted`)."""
    cm = np.asarray(cm, np.float64)
    return np.rint(cm[0] if cm.ndim == 3 else cm).astype(np.int64)


def thinned_to_mix(labels: np.ndarray, row_weights, rng: np.random.Generator) -> np.ndarray:
    """``labels`` with labelled pixels dropped (made :data:`UNLABELLED`) at random so that each
    true class keeps a share proportional to its ``row_weights`` (None: ``labels`` unchanged).

    What :func:`_counted` does to confusion matrices, for whatever needs pixels: strokes hold far
    more pixels of small classes (granules) than micrographs do, and a temperature fitted on them
    as painted makes the confidence of a whole micrograph far too low (a stroke-trained Granules
    run fitted T = 2.9 instead of about 1: then hardly a granule reaches the granule peak).
    """
    if row_weights is None:
        return labels
    w = np.asarray(row_weights, np.float64)
    if not (w.size and np.isfinite(w).all() and w.max() > 0):
        return labels
    keep_share = w / w.max()
    labelled = labels != UNLABELLED
    share = np.zeros(labels.shape, np.float64)
    codes = labels[labelled].astype(np.int64)
    inside = codes < keep_share.size  # (codes beyond the weights: kept)
    share[labelled] = np.where(inside, keep_share[np.minimum(codes, keep_share.size - 1)], 1.0)
    out = labels.copy()
    out[labelled & (rng.random(labels.shape) >= share)] = UNLABELLED
    return out


EDGE_BAND_PX = 6
"""Labelled pixels within this distance (model pixels) of a labelled pixel of another class are
edge pixels for :func:`validation_pixel_weights`: the ring of background a user paints around a
granule, or the two sides of a corrected boundary."""


def validation_pixel_weights(labels: Sequence[np.ndarray], class_weights,
                             band_px: float = EDGE_BAND_PX,
                             max_weight: float = 20.0) -> list[np.ndarray] | None:
    """What each validation pixel counts for, so that partial labels score as the whole image
    would (None when ``class_weights`` is None: every labelled pixel counts once).

    ``class_weights`` (:func:`prior_class_weights`) give each true class its share of the starting
    model's class mix. Counted per class alone, the ring of background a user paints around a
    granule stands for all the background of the micrograph, and an epoch that draws granules
    small scores best (docs/correction_loop.md). Here an *edge* pixel, labelled and within
    ``band_px`` of a labelled pixel of another class, counts as much as the class on either side
    that counts least (a painted granule and its ring: the granule's weight, so the rings stand
    for the edges of all granules as the painted granules stand for all granules); the class's
    other labelled pixels share what is left of its weight (at most ``max_weight`` each).
    Unlabelled pixels weigh 0.
    """
    from scipy import ndimage as ndi

    if class_weights is None:
        return None
    w = np.asarray(class_weights, np.float64)
    n = w.size
    maps, target, edge_mass, far_count = [], np.zeros(n), np.zeros(n), np.zeros(n)
    for lab in labels:
        lab = np.asarray(lab)
        labelled = lab != UNLABELLED
        codes = np.where(labelled, np.minimum(lab, n - 1), 0).astype(np.intp)
        weight = np.where(labelled, w[codes], 0.0)
        other = np.full(lab.shape, np.inf)  # the least weight of another class within the band
        present = [int(c) for c in np.unique(codes[labelled])]
        if len(present) > 1:
            for c in present:
                near = ndi.distance_transform_edt(~(labelled & (codes == c))) <= band_px
                hit = near & labelled & (codes != c)
                other[hit] = np.minimum(other[hit], w[c])
        edge = np.isfinite(other)
        weight[edge] = np.minimum(weight[edge], other[edge])
        for c in present:
            cls = labelled & (codes == c)
            target[c] += w[c] * np.count_nonzero(cls)
            edge_mass[c] += float(weight[cls & edge].sum())
            far_count[c] += np.count_nonzero(cls & ~edge)
        maps.append((weight, labelled & ~edge, codes))
    far = np.where(far_count > 0, (target - edge_mass) / np.maximum(far_count, 1), w)
    far = np.clip(far, np.minimum(w, max_weight), max_weight)
    out = []
    for weight, far_px, codes in maps:
        weight[far_px] = far[codes[far_px]]
        out.append(weight.astype(np.float32))
    return out


def _validate(net, samples: list[_Sample], n_classes: int, class_weights: np.ndarray,
              dice_weight: float, pixel_weights: list[np.ndarray] | None = None,
              ) -> tuple[dict[str, float], np.ndarray]:
    """Validation logs and confusion matrix of whole-image predictions, on the labelled pixels.

    The matrix stacks raw counts and counts weighted by ``pixel_weights`` (one map per sample,
    :func:`validation_pixel_weights`; None: the raw counts again), ``(2, n, n)``; the logs score
    the weighted ones.
    """
    cm = np.zeros((2, n_classes, n_classes), np.float64)
    losses = []
    for k, s in enumerate(samples):
        logits = _whole_image_logits(net.predict_on_batch, s.image)
        if not np.isfinite(logits).all():  # diverged weights: never "best", whatever argmax says
            nan = float("nan")
            return {"val_loss": nan, "val_accuracy": nan, "val_mean_iou": nan}, cm
        losses.append(_numpy_loss(logits, s.labels, class_weights, dice_weight))
        guess = logits.argmax(axis=-1)
        raw = confusion_matrix(s.labels, guess, n_classes)
        cm[0] += raw
        cm[1] += raw if pixel_weights is None else confusion_matrix(s.labels, guess, n_classes,
                                                                    pixel_weights[k])
    counted = _counted(cm)
    logs = {"val_loss": float(np.mean(losses)), "val_accuracy": float(pixel_accuracy(counted)),
            "val_mean_iou": float(mean_iou(counted))}
    return logs, cm


# -------------------------------------------------------------------------------------------------
# The loop
# -------------------------------------------------------------------------------------------------
@dataclass
class _Watch:
    """Best value of the monitored metric, and the patience counters built on it."""

    monitor: str
    best_value: float = math.nan
    best_epoch: int = 0
    wait_stop: int = 0
    wait_lr: int = 0

    @property
    def maximise(self) -> bool:
        return not self.monitor.endswith("loss")

    def update(self, value: float, epoch: int) -> bool:
        """Record an epoch's value; True if it is the best so far."""
        better = math.isfinite(value) and (
            not math.isfinite(self.best_value)
            or (value > self.best_value if self.maximise else value < self.best_value))
        if better:
            self.best_value, self.best_epoch, self.wait_stop, self.wait_lr = value, epoch, 0, 0
        else:
            self.wait_stop += 1
            self.wait_lr += 1
        return better


@dataclass
class _Run:
    """Everything one training run holds between epochs (and saves in its checkpoint)."""

    out: Path
    config: TrainConfig
    card: ModelCard
    name: str
    start: str
    model: SegmentationModel
    samples: list[_Sample]
    val_samples: list[_Sample]
    class_weights: np.ndarray
    optimizer_name: str
    steps: int
    data_hash: str
    roots: list[str]
    watch: _Watch
    rng: np.random.Generator
    optimizer: Any = None
    history: list[dict[str, float]] = field(default_factory=list)
    epoch: int = 0
    stopped: bool = False
    notes: list[str] = field(default_factory=list)
    diverged: bool = False  # the loss became NaN or infinite (the epoch is dropped)
    cm_start: list | None = None  # validation confusion matrix of the starting weights
    fine_tuning: bool = False  # from a trained model (the class guard watches the start)
    cm_best: list | None = None  # ... and of the kept (best) weights
    rehearsal: list[_Sample] = field(default_factory=list)  # synthetic micrographs (not saved)
    rehearsal_share: float = 0.0  # of the crops, from ``rehearsal``
    rehearsal_val: list[_Sample] = field(default_factory=list)  # validation in the same look
    val_class_weights: list[float] | None = None  # count validation pixels with this class mix
    val_pixel_weights: list[np.ndarray] | None = None  # ... per pixel (validation_pixel_weights)
    average_with_start: float = 0.0  # share of the starting weights in the kept ones (fine-tuning)
    start_labels: float = 0.0  # weight of the start's sure pixels where labels leave none
    partial: bool = False  # the training labels leave much of their images unlabelled
    pixel_sizes: list[float] = field(default_factory=list)  # lowest, highest of the micrographs learnt

    @property
    def ckpt(self) -> Path:
        return self.out / "checkpoint"

    @property
    def weights_path(self) -> Path:
        return self.out / f"{self.name}.weights.h5"

    def seen_pixel_sizes(self, sizes) -> None:
        """Widen the recorded range of micrograph pixel sizes by ``sizes`` (nm)."""
        sizes = [float(v) for v in [*self.pixel_sizes, *sizes] if v and math.isfinite(float(v))]
        self.pixel_sizes = [min(sizes), max(sizes)] if sizes else []

    def provenance(self, final: dict[str, float]) -> dict[str, Any]:
        seen = {"micrograph_pixel_sizes_nm": self.pixel_sizes} if self.pixel_sizes else {}
        return {
            **seen, "trained": True, "data": self.roots, "data_manifest_hash": self.data_hash,
            "n_training_pairs": len(self.samples), "n_validation_pairs": len(self.val_samples),
            "start": self.start, "epochs": self.epoch, "best_epoch": self.watch.best_epoch,
            "monitor": self.watch.monitor, "final_metrics": final, "training": self.config.to_dict(),
            "optimizer": self.optimizer_name, "class_weights": [float(w) for w in self.class_weights],
            "backend": backend_name(),
            **({"start_labels": self.start_labels} if self.start_labels > 0 else {}),
        }

    def state(self) -> dict[str, Any]:
        w = self.watch
        return {
            "format": _STATE_FORMAT, "epoch": self.epoch, "config": self.config.to_dict(),
            "card": self.card.to_dict(), "name": self.name, "start": self.start,
            "data_hash": self.data_hash, "rng": self.rng.bit_generator.state, "history": self.history,
            "best_value": w.best_value, "best_epoch": w.best_epoch, "wait_stop": w.wait_stop,
            "wait_lr": w.wait_lr, "learning_rate": float(np.asarray(self.optimizer.learning_rate)),
            "stopped_early": self.stopped, "notes": self.notes, "cm_start": self.cm_start,
            "cm_best": self.cm_best, "class_weights": [float(w) for w in self.class_weights],
            "val_class_weights": self.val_class_weights, "pixel_sizes": self.pixel_sizes,
        }


def _scale_to_unit_activity(net, batch: np.ndarray, target: float = 0.5, rounds: int = 2) -> None:
    """Data-dependent start for a network trained from scratch (LSUV-like, Mishkin & Matas 2016).

    The original U-Nets have no normalisation layers: with He initialisation their activations'
    spread falls ten-fold through the depth, the output hardly depends on the image, and training
    sits for hundreds of steps at the class prior. Scaling each convolution (kernel and bias;
    ReLU is positively homogeneous) so that its output on a real batch has standard deviation
    ``target`` gives every layer a signal to learn from. The architecture and weight shapes are
    unchanged.
    """
    keras = get_keras()
    convs = [layer for layer in net.layers
             if isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose))
             and layer.name != "logits"]
    probe = keras.Model(net.inputs[0], [layer.output for layer in convs])
    for _ in range(rounds):
        for i, layer in enumerate(convs):
            out = keras.ops.convert_to_numpy(probe(batch, training=False)[i])
            sd = float(out.std())
            if sd > 1e-8:
                kernel, bias = layer.get_weights()
                layer.set_weights([kernel * (target / sd), bias * (target / sd)])


def _bias_to_priors(net, frequencies: np.ndarray) -> None:
    """Start a network from scratch predicting the class frequencies (output bias = log prior).

    Without this, the normalisation-free originals spend hundreds of steps learning the prior
    through the last layer's bias before any feature matters (cross-entropy stays near log(n)).
    """
    layer = net.get_layer("logits")
    kernel, bias = layer.get_weights()
    prior = np.log(np.maximum(np.asarray(frequencies, np.float64), 1e-4))
    layer.set_weights([kernel, (prior - prior.mean()).astype(bias.dtype)])


def predicted_class_mix(net, samples: list[_Sample], n_classes: int) -> np.ndarray:
    """Class mix (sums to 1) that the Keras network ``net`` predicts on the whole images."""
    seen = np.zeros(n_classes, np.int64)
    for s in samples:
        guess = _whole_image_logits(net.predict_on_batch, s.image).argmax(axis=-1)
        seen += np.bincount(guess.ravel(), minlength=n_classes)[:n_classes]
    return seen / max(1, seen.sum())


PARTIAL_BELOW = 0.95
"""Training data whose labelled pixels cover less than this share of their images count as
partial labels (strokes, corrected pixels only) for :attr:`TrainConfig.validation_mix`."""


def _validation_in_start_mix(config: TrainConfig, fine_tuning: bool, partial: bool) -> bool:
    """Whether validation counts its pixels in the starting model's class mix (``validation_mix``)."""
    if config.validation_mix == "start":
        if not fine_tuning:
            raise TrainingError("validation_mix 'start' takes the class mix from the starting "
                                "model: it needs a trained model to fine-tune, not a fresh one")
        return True
    if config.validation_mix == "labelled":
        return False
    return fine_tuning and (partial or config.class_weights == "prior")


def _resolve_class_weights(config: TrainConfig, samples: list[_Sample], schema: ClassSchema,
                           mix: np.ndarray | None = None) -> np.ndarray:
    """The loss's class weights; ``mix`` (:func:`predicted_class_mix` of the trained starting
    network) for ``"prior"``."""
    n = schema.n_classes
    if isinstance(config.class_weights, str):
        if config.class_weights == "balanced":
            return balanced_class_weights(class_frequencies([s.labels for s in samples], n))
        if config.class_weights == "prior":
            if mix is None:
                raise TrainingError("class_weights 'prior' takes the class mix from the starting "
                                    "model: it needs a trained model to fine-tune, not a fresh one")
            return prior_class_weights(class_frequencies([s.labels for s in samples], n), mix)
        return np.ones(n, np.float32)
    if len(config.class_weights) != n:
        raise TrainingError(f"{len(config.class_weights)} class weights given for {n} classes "
                            f"({', '.join(schema.names.values())})")
    return np.asarray(config.class_weights, np.float32)


def _prepare(data, out: Path, *, model, kind, schema, architecture, fresh, validation, config,
             resume: bool, name: str | None, pixel_size_nm: float | None,
             options: dict[str, Any]) -> tuple[_Run, dict | None]:
    """Check everything and build the run (nothing is trained or written yet)."""
    keras = get_keras()
    ckpt = out / "checkpoint"
    state = _read_state(ckpt) if resume and ckpt.exists() else None
    if resume and state is None:
        raise TrainingError(f"{out}: there is no training run to resume here")
    if state is not None:
        extra = set(options) - {"epochs"}
        if extra:
            logger.warning("resuming keeps the run's settings; ignored: %s", ", ".join(sorted(extra)))
        config = replace(TrainConfig.from_dict(state["config"]),
                         **{k: v for k, v in options.items() if k == "epochs"})
        card = ModelCard.from_dict(state["card"], where=str(ckpt / "state.json"))
        schema, name = card.schema, state["name"]
    else:
        config = replace(config or TrainConfig(), **options)
        if out.exists() and (ckpt.exists() or any(out.glob("*.weights.h5"))):
            raise TrainingError(f"{out}: holds another training run; resume it (--resume) or "
                                "choose an empty folder")
    train_set = _as_training_set(data, schema, pixel_size_nm)
    data_hash = train_set.manifest_hash()  # of all pairs given, before any validation split
    if state is not None and data_hash != state["data_hash"]:
        raise TrainingError(f"{out}: the training data changed since this run started; start a "
                            "new run in another folder to train on the new data")
    val_set, blocks = None, False
    if validation is not None:
        val_set = _as_training_set(validation, schema, pixel_size_nm)
    elif config.val_fraction > 0:
        split = config.validation_split
        if split == "auto":
            few = len(_group_pairs(train_set)) < BLOCK_VALIDATION_BELOW
            split = "blocks" if few else "pairs"
        blocks = split == "blocks"
        if not blocks and len(train_set) >= 2:
            train_set, val_set = train_set.split(config.val_fraction, config.seed)
    keras.utils.set_random_seed(config.seed)  # before building: dropout layers draw their seeds
    if state is None:
        data_px = float(np.median(train_set.pixel_sizes())) if len(train_set) else 0.8
        trainable, start = _starting_model(model, kind, schema, architecture, fresh, data_px,
                                           config.seed)
        if config.input_scaling and config.input_scaling != trainable.card.input_scaling:
            trainable = SegmentationModel(trainable.keras_model,
                                          replace(trainable.card, input_scaling=config.input_scaling))
        card = trainable.card
    else:
        trainable = SegmentationModel(build_unet(card.architecture, card.schema.n_classes), card)
        trainable.keras_model.load_weights(ckpt / "last.weights.h5")
        start = state["start"]
    samples = _load_samples(train_set, card.schema, card.pixel_size_nm, card.input_scaling)
    val_samples = (_load_samples(val_set, card.schema, card.pixel_size_nm, card.input_scaling)
                   if val_set else [])
    notes = []
    partial = sum(s.n_labelled for s in samples) < PARTIAL_BELOW * sum(s.labels.size for s in samples)
    if blocks:
        samples, val_samples = _hold_out_blocks(samples, config.val_fraction, config.seed)
        if val_samples:
            notes.append(f"validation: a held-out strip of each micrograph ({config.val_fraction:.0%} "
                         f"of its labelled pixels; {len(val_samples)} micrograph(s))")
    if not any(s.n_labelled for s in samples):
        raise TrainingError("the training data have no labelled pixels (every pixel is "
                            "unlabelled); export corrections or strokes first")
    monitor = config.monitor
    if not val_samples and monitor != "loss":
        notes.append("no validation pairs: the best checkpoint is chosen by the training loss")
        monitor = "loss"
    fine_tuning = start != "fresh" and not start.startswith("untrained")
    if config.rotate90 is None:  # the run (and its card) records what it did
        config = replace(config, rotate90=not fine_tuning)
    if state is None and not fine_tuning:
        _check_two_classes(samples + val_samples, card.schema)
        probe_rng = np.random.default_rng(config.seed)
        crops = [augment_pair(samples[int(k)].image, samples[int(k)].labels, min(config.crop, 256),
                              probe_rng)[0] for k in probe_rng.integers(0, len(samples), 4)]
        _scale_to_unit_activity(trainable.keras_model, np.stack(crops)[..., None])
        _bias_to_priors(trainable.keras_model, class_frequencies([s.labels for s in samples],
                                                                 card.schema.n_classes))
    total_px = sum(s.image.size for s in samples)
    n = card.schema.n_classes
    val_weights = None
    if state is not None and "class_weights" in state:  # as the run began (not the last weights' mix)
        class_weights = np.asarray(state["class_weights"], np.float32)
        val_weights = state.get("val_class_weights")
    else:
        prior = config.class_weights == "prior" and fine_tuning
        weigh_val = bool(val_samples) and _validation_in_start_mix(config, fine_tuning, partial)
        mix = predicted_class_mix(trainable.keras_model, samples, n) if prior or weigh_val else None
        class_weights = _resolve_class_weights(config, samples, card.schema, mix if prior else None)
        if weigh_val:
            val_weights = prior_class_weights(class_frequencies([s.labels for s in val_samples], n),
                                              mix).tolist()
            notes.append("validation scores count the labelled pixels in the class mix the "
                         "starting model finds on the whole images (partial labels over-represent "
                         "some classes), the edges between painted classes as edges")
    run = _Run(
        out=out, config=config, card=card, name=name or card.kind, start=start, model=trainable,
        samples=samples, val_samples=val_samples,
        class_weights=class_weights, val_class_weights=val_weights,
        val_pixel_weights=validation_pixel_weights(  # a run checkpointed before edges: none
            [s.labels for s in val_samples], val_weights,
            band_px=0 if state is not None and np.ndim(state.get("cm_start") or []) == 2 else EDGE_BAND_PX),
        optimizer_name=config.optimizer or ("adam" if fine_tuning else "nadam"),
        steps=config.steps_per_epoch or max(MIN_STEPS_PER_EPOCH["fine-tuning" if fine_tuning else "fresh"],
                                            math.ceil(total_px / config.crop**2 / config.batch_size)),
        data_hash=data_hash, roots=[str(r) for r in train_set.roots], watch=_Watch(monitor),
        rng=np.random.default_rng(config.seed), notes=notes, fine_tuning=fine_tuning,
    )
    # the micrographs' pixel sizes (segmentation notes micrographs far outside them); a fine-tuned
    # model has also learnt those of its start
    start_range = card.training_pixel_range if fine_tuning else None
    run.seen_pixel_sizes([*(start_range or ()), *train_set.pixel_sizes(),
                          *(val_set.pixel_sizes() if val_set else ())])
    share = config.rehearsal
    if share is None:  # the measured default (docs/correction_loop.md) when fine-tuning
        share = REHEARSAL_DEFAULT.get(rehearsal_kind(card.schema) or "", 0.0) if fine_tuning else 0.0
    if share > 0:
        run.rehearsal, run.rehearsal_val = _rehearsal_samples(run, fine_tuning, share)
        run.rehearsal_share = share if run.rehearsal else 0.0
    if fine_tuning:  # (from scratch there is no start to average with)
        average = config.average_with_start
        if average is None:
            average = AVERAGE_WITH_START_DEFAULT.get(rehearsal_kind(card.schema) or "", 0.0)
        run.average_with_start = float(average)
    run.partial = partial
    _apply_start_labels(run, state, partial)
    lr = config.learning_rate or fine_tuning_rate(card.schema, fine_tuning)
    _compile(run, lr)
    return run, state


#: Adam's learning rate when fine-tuning a trained model, by kind (the original recipe's 5e-4 for
#: every other kind). Locations learns a new look without first losing what it knew at 5e-5
#: (``python benchmarks/adaptation.py``: docs/correction_loop.md).
FINE_TUNING_LR = {"locations": 5e-5, "locations-mito": 5e-5}


def fine_tuning_rate(schema: ClassSchema, fine_tuning: bool = True) -> float:
    """The default learning rate: 2e-3 from scratch; when fine-tuning, by the model's kind."""
    if not fine_tuning:
        return 2e-3
    return FINE_TUNING_LR.get(rehearsal_kind(schema) or "", 5e-4)


#: Rehearsal micrographs made per run, and their side at the model's pixel size (px).
REHEARSAL_IMAGES, REHEARSAL_SIDE = 6, 1024
#: Share of rehearsal crops when fine-tuning and :attr:`TrainConfig.rehearsal` is not given, by
#: kind (``python benchmarks/recipe_sweep.py``: docs/correction_loop.md).
REHEARSAL_DEFAULT = {"locations": 0.75, "locations-mito": 0.75, "granules": 0.0}

#: Share of the starting weights in the kept weights when fine-tuning, by kind
#: (:attr:`TrainConfig.average_with_start`). Measured on the held-out looks' test micrographs
#: (docs/adaptation.md): averaging half and half lifted every fine-tuned Locations model of
#: ``benchmarks/adaptation.py`` (grainy look, 2 and 4 corrected micrographs: 0.819 -> 0.832,
#: start 0.835), while Granules lost about 0.01 granule F1 (0.966 -> 0.952-0.957).
AVERAGE_WITH_START_DEFAULT = {"locations": 0.5, "locations-mito": 0.5}

#: Softmax confidence (at the starting model's temperature) from which its prediction of a pixel
#: that partial labels leave unlabelled trains as a start label (:attr:`TrainConfig.start_labels`).
START_LABEL_CONFIDENCE = 0.9
#: :attr:`TrainConfig.start_labels` when not given, by kind (others: 0, off).
START_LABELS_DEFAULT = {"granules": 0.1}


def _with_start_labels(samples: list[_Sample], predict, n_classes: int, temperature: float = 1.0,
                       confidence: float = START_LABEL_CONFIDENCE) -> tuple[list[_Sample], float]:
    """``samples`` with each unlabelled pixel that the starting model is sure of (``predict``: a
    batch of images to logits) coded ``n_classes + c``, c being its class; the held-out strip
    (:attr:`_Sample.withheld`) gets none. Crops are still placed around, and images still drawn
    by, the user's own labels. Returns the new samples and the share of the unlabelled pixels
    that got a start label."""
    out, got, free_total = [], 0, 0
    for s in samples:
        logits = _whole_image_logits(predict, s.image)
        free = s.labels == UNLABELLED
        if s.withheld is not None:
            axis, first, stop = s.withheld
            at = [slice(None), slice(None)]
            at[axis] = slice(first, stop)
            free[tuple(at)] = False
        sure = free & (softmax_max(logits, temperature) >= confidence)
        labels = s.labels.copy()
        labels[sure] = n_classes + logits.argmax(axis=-1)[sure]
        new = _Sample(s.name, s.image, labels, withheld=s.withheld)
        new.n_labelled, new._where = s.n_labelled, s._where
        out.append(new)
        got, free_total = got + int(sure.sum()), free_total + int(free.sum())
    return out, got / max(free_total, 1)


def _start_predictor(run: _Run, state: dict | None):
    """The starting weights' batch -> logits function: the run's network before training, or on a
    resume the weights kept in the run folder (None if they are missing)."""
    if state is None:
        return run.model.keras_model.predict_on_batch
    path = run.out / START_WEIGHTS
    if not path.is_file():
        return None
    net = build_unet(run.card.architecture, run.card.schema.n_classes)
    net.load_weights(path)
    return net.predict_on_batch


def _apply_start_labels(run: _Run, state: dict | None, partial: bool) -> None:
    """Give the training samples start labels (:attr:`TrainConfig.start_labels`) when fine-tuning
    on partial labels."""
    weight = run.config.start_labels
    if weight is None:
        weight = START_LABELS_DEFAULT.get(rehearsal_kind(run.card.schema) or "", 0.0)
    if not (run.fine_tuning and partial and weight > 0):
        return
    predict = _start_predictor(run, state)
    if predict is None:
        run.notes.append(f"start labels are off: {run.out / START_WEIGHTS} (the starting weights) "
                         "is missing")
        return
    run.samples, share = _with_start_labels(run.samples, predict, run.card.schema.n_classes,
                                            run.card.temperature)
    run.start_labels = float(weight)
    run.notes.append(f"start labels: the starting model's prediction trains (weight {weight:g}) on "
                     f"the {share:.0%} of the unlabelled pixels it is sure of "
                     f"(confidence >= {START_LABEL_CONFIDENCE:g})")


START_WEIGHTS = Path("start") / "start.weights.h5"
"""Where a fine-tuning run keeps its starting weights (for :attr:`TrainConfig.average_with_start`),
inside the run folder."""


def _rehearsal_samples(run: _Run, fine_tuning: bool,
                       share: float) -> tuple[list[_Sample], list[_Sample]]:
    """The synthetic micrographs a fine-tuning run rehearses on, and (with
    ``rehearsal_validation``) two others in the same look to validate on; none where it cannot."""
    kind = rehearsal_kind(run.card.schema)
    if not fine_tuning or kind is None:
        why = "a new model" if not fine_tuning else "classes the generator does not make"
        run.notes.append(f"rehearsal is off: it is for fine-tuning the Locations or Granules "
                         f"model, not for {why}")
        return [], []
    cfg = run.config
    look = None
    if cfg.rehearsal_look == "matched":
        look = class_quantiles([s.image for s in run.samples], [s.labels for s in run.samples],
                               run.card.schema.n_classes)
    side = max(REHEARSAL_SIDE, cfg.crop)

    def made(n: int, seed: int, name: str) -> list[_Sample]:
        return [_Sample(f"{name}-{i}", x, y) for i, (x, y) in enumerate(rehearsal_images(
            kind, run.card.pixel_size_nm, n, side, seed, run.card.input_scaling, look))]

    train = made(REHEARSAL_IMAGES, cfg.seed, "rehearsal")
    run.notes.append(f"rehearsal: {share:.0%} of the crops from {len(train)} synthetic "
                     f"micrographs ({side} px at {run.card.pixel_size_nm:g} nm/px, "
                     f"{'grey levels matched to the training data' if look else 'random looks'})")
    val = []
    if cfg.rehearsal_validation and run.val_samples:
        val = made(2, cfg.seed + 500, "rehearsal-validation")
        run.notes.append("validation: also on 2 synthetic micrographs in the training data's look "
                         "(the best epoch by the mean of both mean IoUs)")
    return train, val


def _compile(run: _Run, lr: float) -> None:
    keras = get_keras()
    net = run.model.keras_model
    if run.config.freeze_encoder:
        for layer in net.layers:
            if layer.name.startswith("enc"):
                layer.trainable = False
    opt_cls = keras.optimizers.Nadam if run.optimizer_name == "nadam" else keras.optimizers.Adam
    run.optimizer = opt_cls(learning_rate=lr, global_clipnorm=run.config.clip_norm)
    net.compile(optimizer=run.optimizer,
                loss=_make_loss(run.card.schema.n_classes, run.class_weights, run.config.dice_weight,
                                run.start_labels),
                metrics=[keras.metrics.MeanMetricWrapper(
                    _make_accuracy(run.card.schema.n_classes if run.start_labels > 0 else None),
                    name="accuracy")])
    run.optimizer.build(net.trainable_variables)  # now, so the first step is traced only once


def _restore(run: _Run, state: dict[str, Any]) -> None:
    """Continue a checkpointed run: optimiser, data order, history and patience counters."""
    _restore_optimizer(run.ckpt, run.optimizer)
    run.rng.bit_generator.state = state["rng"]
    get_keras().utils.set_random_seed(run.config.seed + state["epoch"])
    run.history = state["history"]
    run.epoch = state["epoch"]
    run.cm_start, run.cm_best = state.get("cm_start"), state.get("cm_best")
    run.notes = list(state.get("notes", [])) + run.notes
    run.seen_pixel_sizes(state.get("pixel_sizes") or [])
    w = run.watch
    w.best_value, w.best_epoch = state["best_value"], state["best_epoch"]
    w.wait_stop, w.wait_lr = state["wait_stop"], state["wait_lr"]
    was_stopped = bool(state.get("stopped_early", False))
    run.stopped = was_stopped and run.config.epochs <= run.epoch
    if was_stopped and not run.stopped:  # more epochs asked after an early stop: patience anew
        w.wait_stop = 0
    run.optimizer.learning_rate = state["learning_rate"]
    run.notes.append(f"resumed after epoch {run.epoch}")


def _train_epoch(run: _Run) -> Generator[TrainProgress, None, dict[str, float]]:
    """One epoch of optimisation steps on random augmented crops; returns the epoch's logs."""
    cfg, net = run.config, run.model.keras_model
    p = np.array([s.n_labelled for s in run.samples], np.float64)
    p /= p.sum()  # images with more labelled pixels give proportionally more crops
    net.reset_metrics()
    logs: dict[str, float] = {}
    for step in range(1, run.steps + 1):
        chosen = [run.samples[i] for i in run.rng.choice(len(run.samples), size=cfg.batch_size, p=p)]
        if run.rehearsal:  # replace each crop by a synthetic one with probability cfg.rehearsal
            chosen = [run.rehearsal[int(run.rng.integers(len(run.rehearsal)))]
                      if run.rng.random() < run.rehearsal_share else s for s in chosen]
        crops = [augment_pair(s.image, s.labels, cfg.crop, run.rng, cfg, anchor=s.anchor(run.rng))
                 for s in chosen]
        x = np.stack([c[0] for c in crops])[..., None]
        y = np.stack([c[1] for c in crops]).astype(np.int32)
        logs = {k: float(v) for k, v in net.train_on_batch(x, y, return_dict=True).items()}
        if not math.isfinite(logs.get("loss", 0.0)):
            problem = f"the loss became {logs['loss']} at epoch {run.epoch}, step {step}"
            if not run.weights_path.exists():
                raise TrainingError(f"{problem}: lower the learning rate")
            run.diverged = True  # the best weights so far stay; the epoch is not kept
            run.notes.append(f"{problem}; training stopped and the best weights so far are kept "
                             "(lower the learning rate to train further)")
            return logs
        yield TrainProgress(run.epoch, cfg.epochs, step, run.steps, dict(logs),
                            message=f"epoch {run.epoch}/{cfg.epochs}: step {step}/{run.steps}")
    return logs


def _validation_logs(run: _Run) -> tuple[dict[str, float], np.ndarray]:
    """Validation on the held-out data (its confusion matrix for the report); with rehearsal
    validation, ``val_mean_iou`` is the mean of the held-out data's and the synthetic images'."""
    n, cw, dice = run.card.schema.n_classes, run.class_weights, run.config.dice_weight
    logs, cm = _validate(run.model.keras_model, run.val_samples, n, cw, dice, run.val_pixel_weights)
    if run.rehearsal_val:
        synthetic, _ = _validate(run.model.keras_model, run.rehearsal_val, n, cw, dice)
        logs["val_mean_iou_held_out"] = logs["val_mean_iou"]
        logs["val_mean_iou_synthetic"] = synthetic["val_mean_iou"]
        logs["val_mean_iou"] = 0.5 * (logs["val_mean_iou"] + synthetic["val_mean_iou"])
    return logs, cm


CLASS_GUARD_MIN_PIXELS = 100
"""Validation pixels a class needs before :attr:`TrainConfig.max_class_loss` watches it."""

CLASS_GUARD_MIN_START_IOU = 0.5
"""Validation IoU of the starting model from which a class is protected by the guard: a class
the start already gets right must not be given up; one it gets wrong is what the user corrects
(measured: watching every class kept the start on fully corrected micrographs, docs/correction_loop.md)."""


def _class_guard(run: _Run, cm: np.ndarray | None, logs: dict[str, float]) -> bool:
    """False when fine-tuning has cost a class that the starting weights already got right (IoU of
    at least :data:`CLASS_GUARD_MIN_START_IOU`, :data:`CLASS_GUARD_MIN_PIXELS` validation pixels)
    more than ``max_class_loss`` IoU on the validation data (the epoch may then not be kept). The
    worst change of those classes goes into ``logs`` (``val_worst_class_change``)."""
    limit = run.config.max_class_loss
    if not run.fine_tuning or limit is None or cm is None or run.cm_start is None:
        return True
    before = iou_per_class(_counted(run.cm_start, run.val_class_weights))
    watched = ((_raw_counts(run.cm_start).sum(axis=1) >= CLASS_GUARD_MIN_PIXELS)
               & np.isfinite(before) & (np.nan_to_num(before) >= CLASS_GUARD_MIN_START_IOU))
    if not watched.any():
        return True
    change = (iou_per_class(_counted(cm, run.val_class_weights)) - before)[watched]
    worst = float(np.nanmin(change)) if np.isfinite(change).any() else 0.0
    logs["val_worst_class_change"] = worst
    return worst >= -limit


def _start_held_out(run: _Run) -> float:
    """The starting weights' mean IoU on the user's held-out data (NaN when not scored)."""
    first = run.history[0] if run.history else {}
    return float(first.get("val_mean_iou_held_out", math.nan)) if first.get("epoch") == 0 else math.nan


def _held_out_floor(run: _Run, logs: dict[str, float]) -> bool:
    """False when an epoch scores below the starting weights on the user's own held-out data
    (:attr:`TrainConfig.held_out_floor`; only where the synthetic validation is mixed in)."""
    if not (run.config.held_out_floor and run.fine_tuning):
        return True
    start, now = _start_held_out(run), logs.get("val_mean_iou_held_out", math.nan)
    return not (math.isfinite(start) and math.isfinite(now) and now < start)


def _end_epoch(run: _Run, logs: dict[str, float]) -> bool:
    """Validate, keep the best weights, adjust the learning rate, stop early, checkpoint."""
    cfg, w = run.config, run.watch
    cm = None
    if run.val_samples:
        val_logs, cm = _validation_logs(run)
        logs.update(val_logs)
    lr = float(np.asarray(run.optimizer.learning_rate))
    logs["learning_rate"] = lr
    logs["epoch"] = run.epoch
    run.history.append(logs)
    eligible = _class_guard(run, cm, logs) and _held_out_floor(run, logs)
    improved = w.update(logs[w.monitor] if eligible else math.nan, run.epoch)
    if improved:
        run.cm_best = None if cm is None else cm.tolist()
        _save_best(run, logs)
    if cfg.keep_epochs:
        save_model(run.model, epoch_weights_path(run.out, run.epoch), overwrite=True)
    if cfg.reduce_lr_patience is not None and w.wait_lr >= cfg.reduce_lr_patience:
        new_lr = max(cfg.min_learning_rate, lr * cfg.reduce_lr_factor)
        if new_lr < lr:
            run.optimizer.learning_rate = new_lr
            run.notes.append(f"epoch {run.epoch}: learning rate reduced to {new_lr:.2g}")
        w.wait_lr = 0
    if cfg.early_stopping_patience is not None and w.wait_stop >= cfg.early_stopping_patience:
        run.stopped = True
        run.notes.append(f"stopped early after epoch {run.epoch}: no {w.monitor} improvement in "
                         f"{w.wait_stop} epochs")
    _write_history(run.out, run.history)
    _save_checkpoint(run.ckpt, run.model.keras_model, run.optimizer, run.state())
    try:
        plot_history(run.history, run.out / "history.png",
                     f"{run.name}: {len(run.samples)} training pairs")
    except Exception as exc:  # a plot must never lose a training run
        logger.warning("could not draw history.png: %s", exc)
    return improved


def epoch_weights_path(out_dir: str | os.PathLike, epoch: int) -> Path:
    """Where a run with :attr:`TrainConfig.keep_epochs` keeps the weights of ``epoch``."""
    return Path(out_dir) / "epochs" / f"epoch-{int(epoch):03d}.weights.h5"


def _save_best(run: _Run, logs: dict[str, float]) -> None:
    final = {k: v for k, v in logs.items() if k not in ("epoch", "seconds")}
    run.model.card = replace(run.card, provenance=run.provenance(final))
    save_model(run.model, run.weights_path, overwrite=True)


def _score_start(run: _Run) -> TrainProgress:
    """Epoch 0: the starting weights on the validation data, kept unless an epoch beats them."""
    logs, cm = _validation_logs(run)
    logs.update(epoch=0, loss=math.nan, accuracy=math.nan,
                learning_rate=float(np.asarray(run.optimizer.learning_rate)))
    run.history.append(logs)
    run.cm_start = run.cm_best = cm.tolist()
    if run.watch.update(logs[run.watch.monitor], 0):
        _save_best(run, logs)
    run.watch.wait_stop = run.watch.wait_lr = 0
    shown = {k: v for k, v in logs.items() if k.startswith("val_")}
    return TrainProgress(0, run.config.epochs, 0, run.steps, shown, end_of_epoch=True,
                         improved=True, message="epoch 0 (starting weights): "
                         + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()))


def _report(run: _Run):
    """Per-class IoU before (epoch 0) and after training on the validation data."""
    import pandas as pd

    if run.cm_best is None:
        return None
    schema = run.card.schema
    after = run.cm_best
    w = run.val_class_weights
    before = iou_per_class(_counted(run.cm_start, w)) if run.cm_start is not None \
        else np.full(schema.n_classes, np.nan)
    table = pd.DataFrame({
        "class": [schema.names[c] for c in range(schema.n_classes)],
        "letter": [schema.letters[c] for c in range(schema.n_classes)],
        "pixels": _raw_counts(after).sum(axis=1), "iou_before": before,
        "iou_after": iou_per_class(_counted(after, w)),
    })
    table["change"] = table["iou_after"] - table["iou_before"]
    return table


def format_report(table) -> str:
    """The before/after table of a :class:`TrainResult` as aligned text (the CLI prints it)."""
    if table is None or not len(table):
        return "no validation data: no before/after comparison"
    lines = [f"{'class':<28} {'pixels':>9} {'IoU before':>10} {'IoU after':>9} {'change':>7}"]
    for _, row in table.iterrows():
        cells = [(f"{v:+.3f}" if sign else f"{v:.3f}") if np.isfinite(v) else "-"
                 for v, sign in ((row.iou_before, False), (row.iou_after, False), (row.change, True))]
        cells = [f"{c:>{w}}" for c, w in zip(cells, (10, 9, 7), strict=True)]
        lines.append(f"{row['class']:<28.28} {int(row.pixels):>9d} " + " ".join(cells))
    return "\n".join(lines)


def train_iter(
    data: TrainingSet | str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    model: SegmentationModel | str | os.PathLike | None = None,
    kind: str | None = None,
    schema: ClassSchema | None = None,
    architecture: str | None = None,
    fresh: bool = False,
    validation: TrainingSet | str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    config: TrainConfig | None = None,
    resume: bool = False,
    name: str | None = None,
    pixel_size_nm: float | None = None,
    fresh_data: Callable[[int], Iterable[tuple[np.ndarray, np.ndarray, float]]] | None = None,
    **options: Any,
) -> Generator[TrainProgress, None, TrainResult]:
    """Train or fine-tune a model, yielding progress after every batch; returns a TrainResult.

    Parameters
    ----------
    data : TrainingSet, folder, or a list of folders and (micrograph, labels) file pairs
        Training pairs (see :func:`load_training_pairs`) and/or whole micrographs with their
        label maps (see :func:`pairs_from_files`). Tiles exported from one micrograph are put
        back together, and every image is resampled to the model's pixel size; crops are cut
        from the whole micrograph (mirrored only when it is smaller than the crop).
    out_dir : path-like
        Folder for the weights, history and checkpoint (created; a folder holding another run is
        refused unless ``resume``).
    model : SegmentationModel or weights path, optional
        Starting weights to fine-tune. Default: the bundled model of ``kind`` when it is trained,
        else a fresh network.
    kind : str, optional
        ``"locations"``, ``"granules"``, or the name of a new task (then ``schema`` is needed).
    schema : ClassSchema, optional
        Classes of a new task (e.g. ``ClassSchema.from_names("membranes", ["background",
        "membrane"])``); labels are checked against it. A schema that adds classes to the
        starting model's (:data:`~.schema.LOCATIONS_MITO_SCHEMA`: mitochondria apart from the Z
        disk) widens its head: each added class starts from the class it was part of.
    architecture : {"unet_model7", "unet_model"}, optional
        Network for a fresh model: Locations' by default for ``locations``, else Granules' (its
        first block has 4 filters, which is cheaper at full resolution).
    fresh : bool
        Start from random weights even when starting weights exist.
    validation : TrainingSet or folders, optional
        Validation pairs; default a ``config.val_fraction`` split of ``data``.
    config : TrainConfig, optional
        Run settings; keyword ``options`` override single fields (``epochs=5``).
    resume : bool
        Continue the run in ``out_dir`` from its last finished epoch (``epochs`` may be raised;
        other settings are the run's own).
    name : str, optional
        Stem of the weights file; default the model kind.
    pixel_size_nm : float, optional
        Pixel size of micrograph files that carry none (pair folders record their own).
    fresh_data : callable, optional
        With ``config.fresh_data_every = K``: ``fresh_data(r)`` gives the training images of round
        ``r`` (epochs ``r*K+1`` to ``(r+1)*K``; round 0 is ``data``) as ``(image, labels,
        pixel_size_nm)`` arrays, e.g. new synthetic micrographs (``scripts/train_defaults.py
        --fresh-every``). It must give the same images for the same ``r`` (a resumed run asks
        again).

    Raises
    ------
    TrainingError, DatasetError, SchemaError, WeightsError, ValueError
        Before any training, with a message saying what to change.
    """
    out = Path(out_dir)
    run, state = _prepare(data, out, model=model, kind=kind, schema=schema,
                          architecture=architecture, fresh=fresh, validation=validation,
                          config=config, resume=resume, name=name, pixel_size_nm=pixel_size_nm,
                          options=options)
    every = run.config.fresh_data_every
    if every and fresh_data is None:
        raise TrainingError("fresh_data_every needs fresh_data: a function giving the new "
                            "training images of each round")
    if not every:
        fresh_data = None
    if state is not None:
        _restore(run, state)
        if fresh_data is not None and run.epoch >= every:
            run.samples = _fresh_samples(fresh_data(run.epoch // every), run.card, run.epoch // every,
                                         run)
    if fresh_data is not None:
        run.notes.append(f"training images: new ones from fresh_data every {every} epoch(s)")
    out.mkdir(parents=True, exist_ok=True)
    if state is None and (run.average_with_start > 0 or run.start_labels > 0):
        _save_start_weights(run)
    if state is None and run.val_samples and run.start != "fresh" \
            and not run.start.startswith("untrained"):
        yield _score_start(run)
    started = time.monotonic()
    while run.epoch < run.config.epochs and not run.stopped:
        if run.config.max_minutes is not None and time.monotonic() - started > 60 * run.config.max_minutes:
            run.notes.append(f"time budget of {run.config.max_minutes:g} min reached after epoch "
                             f"{run.epoch}; the best weights are kept (--resume goes on)")
            break
        run.epoch += 1
        t0 = time.perf_counter()
        logs = yield from _train_epoch(run)
        if run.diverged:
            run.epoch -= 1
            run.stopped = True
            break
        logs["seconds"] = time.perf_counter() - t0  # optimisation steps only (throughput)
        improved = _end_epoch(run, logs)
        if fresh_data is not None and run.epoch % every == 0 and run.epoch < run.config.epochs \
                and not run.stopped:
            r = run.epoch // every
            run.samples = _fresh_samples(fresh_data(r), run.card, r, run)
        shown = {k: v for k, v in logs.items() if k not in ("epoch", "seconds")}
        yield TrainProgress(
            run.epoch, run.config.epochs, run.steps, run.steps, shown, end_of_epoch=True,
            improved=improved, message=f"epoch {run.epoch}/{run.config.epochs}: "
            + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()),
        )
    return _result(run)


def _save_start_weights(run: _Run) -> None:
    """Keep the starting weights in the run folder (replaced atomically) for the final average."""
    path = run.out / START_WEIGHTS
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".start.tmp.weights.h5")
    run.model.keras_model.save_weights(tmp)
    os.replace(tmp, path)


def _average_with_start(run: _Run) -> None:
    """Replace the kept weights by their average with the starting weights
    (:attr:`TrainConfig.average_with_start`), unless it scores below the start on validation."""
    share = run.average_with_start
    if share <= 0 or run.watch.best_epoch == 0 or not run.weights_path.exists():
        return
    start_file = run.out / START_WEIGHTS
    if not start_file.is_file():
        run.notes.append(f"{start_file} is missing: the best epoch's weights are kept as they are")
        return
    net = run.model.keras_model  # training is over: this network may hold the average
    net.load_weights(start_file)
    start = net.get_weights()
    net.load_weights(run.weights_path)
    best = net.get_weights()
    net.set_weights([share * a + (1 - share) * b for a, b in zip(start, best, strict=True)])
    logs, cm = _validation_logs(run) if run.val_samples else ({}, None)
    w = run.watch
    value = logs.get(w.monitor, math.nan)
    scored_start = bool(run.history) and run.history[0].get("epoch") == 0
    start_value = run.history[0].get(w.monitor, math.nan) if scored_start else math.nan
    if math.isfinite(value) and math.isfinite(start_value) and (
            value < start_value if w.maximise else value > start_value):
        net.set_weights(best)
        run.notes.append(f"the average with the starting weights scored {w.monitor} {value:.4g}, "
                         f"below the start's {start_value:.4g}: epoch {w.best_epoch} is kept as it is")
        return
    if not _held_out_floor(run, logs):
        net.set_weights(best)
        run.notes.append(f"the average with the starting weights scored a held-out mean IoU of "
                         f"{logs['val_mean_iou_held_out']:.4g}, below the start's "
                         f"{_start_held_out(run):.4g}: epoch {w.best_epoch} is kept as it is")
        return
    final = {k: v for k, v in logs.items() if k not in ("epoch", "seconds")}
    run.model.card = replace(run.card, provenance={**run.provenance(final),
                                                   "averaged_with_start": share})
    save_model(run.model, run.weights_path, overwrite=True)
    if cm is not None:
        run.cm_best = cm.tolist()
    shown = f" ({w.monitor} {value:.4g}; epoch {w.best_epoch} alone {w.best_value:.4g})" \
        if math.isfinite(value) else ""
    run.notes.append(f"kept: epoch {w.best_epoch}'s weights averaged with the starting weights "
                     f"({share:.0%} start){shown}")


def _calibrate_best(run: _Run) -> None:
    """Fit the kept weights' softmax temperature on the validation data (never trained on), so
    that the trained model's confidence stays meaningful (core.calibration); saved in its card."""
    if not run.val_samples or not any(s.n_labelled for s in run.val_samples):
        return
    model = load_model(run.weights_path)
    pairs = []
    rng = np.random.default_rng(run.config.seed)
    for s in run.val_samples:
        logits = _whole_image_logits(model.predict_logits, s.image)
        if not np.isfinite(logits).all():
            run.notes.append("confidence not calibrated: the kept weights give non-finite logits")
            return
        # thinned per class, as measured before the edge weights (thinned per pixel, the faint
        # look's runs fitted nearly the same temperatures: docs/correction_loop.md)
        pairs.append((logits, thinned_to_mix(s.labels, run.val_class_weights, rng)))
    mix = "" if run.val_class_weights is None else " (its pixels in the starting model's class mix)"
    try:
        t, before, after = choose_temperature(pairs, model.card.temperature)
    except ValueError as exc:
        run.notes.append(f"confidence not calibrated: {exc}")
        return
    floor, fitted = "", {}
    if run.fine_tuning and run.partial and t < run.card.temperature:
        # partial labels are the pixels a user could paint, the easy ones: a temperature fitted
        # on them sharpens the whole micrograph's confidence, and the granule peak then keeps
        # faint false granules (docs/correction_loop.md)
        floor = f"; {t:.2f} fitted, the start's kept as the least: partial labels are the easy pixels"
        fitted = {"fitted": t, "least": "the starting model's (partial labels)"}
        t = float(run.card.temperature)
        after = measure_logits(pairs, t)
    model.card = replace(model.card, temperature=t, provenance={
        **model.card.provenance,
        "calibration": {"temperature": t, "data": "this run's validation data" + mix,
                        "ece_before": before["ece"], "ece_after": after["ece"],
                        "wrong_in_least_confident_10pct": after["wrong_in_least_confident"],
                        **fitted}})
    save_model(model, run.weights_path, overwrite=True)
    run.notes.append(f"confidence calibrated on the validation data{mix}: temperature {t:.2f} "
                     f"(expected calibration error {before['ece']:.3f} -> {after['ece']:.3f}{floor})")


def _result(run: _Run) -> TrainResult:
    import pandas as pd

    if not run.weights_path.exists():  # no epoch gave a finite monitored value
        run.model.card = replace(run.card, provenance=run.provenance({}))
        save_model(run.model, run.weights_path, overwrite=True)
        run.notes.append(f"{run.watch.monitor} was never finite; the last epoch's weights were saved")
    if run.watch.best_epoch == 0 and run.cm_start is not None:
        run.notes.append("no training epoch beat the starting weights on the validation data: "
                         "the starting weights are kept (more or other labels may help)")
    _average_with_start(run)
    _calibrate_best(run)
    report = _report(run)
    if report is not None:
        tmp = run.out / ".report.csv.tmp"
        report.to_csv(tmp, index=False)
        os.replace(tmp, run.out / "report.csv")
    return TrainResult(model=load_model(run.weights_path), weights_path=run.weights_path,
                       history=pd.DataFrame(run.history), best_epoch=run.watch.best_epoch,
                       monitor=run.watch.monitor, best_value=float(run.watch.best_value),
                       stopped_early=run.stopped, out_dir=run.out, notes=run.notes, report=report,
                       confusion=None if run.cm_best is None else _raw_counts(run.cm_best),
                       averaged_with_start=float(run.model.card.provenance.get("averaged_with_start", 0.0)))


def train(data, out_dir, **kwargs: Any) -> TrainResult:
    """Train to the end and return the :class:`TrainResult`; see :func:`train_iter`.

    Examples
    --------
    >>> from napari_emgranules.core.train import train
    >>> result = train("my_pairs", "runs/granules-v2", kind="granules", epochs=20)  # doctest: +SKIP
    >>> result.weights_path, result.history["val_mean_iou"].max()                   # doctest: +SKIP
    """
    return run_to_completion(train_iter(data, out_dir, **kwargs))

