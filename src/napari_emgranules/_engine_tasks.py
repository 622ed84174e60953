"""The jobs the widgets run in the model process (:mod:`._engine`): thin calls into the core.

Each job is a plain function of picklable arguments. A generator job yields the core's own progress
events and returns its result; what it returns must pickle (no Keras objects).
"""

from __future__ import annotations

import os
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def segment(image: np.ndarray, pixel_size_nm: float | None, *, weights: dict[str, str | None],
            options: Any = None, confidence: bool = False,
            **option_fields: Any) -> Generator[Any, None, Any]:
    """:func:`~.core.segment.segment_micrograph_iter` with the models given as weight files.

    ``weights`` maps each kind to run ("locations", "granules") to a weights file, or None for
    the bundled default; ``options`` is a :class:`~.core.options.SegmentOptions` (None: defaults)
    and ``option_fields`` replace its fields, as in the core function.
    """
    from .core.models import load_model
    from .core.segment import segment_micrograph_iter

    models = {kind: load_model(path, kind) for kind, path in weights.items()}
    return (yield from segment_micrograph_iter(image, pixel_size_nm, models=models, options=options,
                                               confidence=confidence, **option_fields))


def load_models(weights: dict[str, str | None]) -> list[str]:
    """Load the models (cached in this process) so that the first Segment run does not wait for
    them; returns the kinds loaded."""
    from .core.models import load_model

    for kind, path in weights.items():
        load_model(path, kind)
    return list(weights)


def describe_model(path: str | None, kind: str) -> Any:
    """Load ``path`` as ``kind`` weights (checking it fits) and return its :class:`ModelCard`."""
    from .core.models import load_model

    return load_model(path, kind).card


@dataclass
class TrainSummary:
    """What a training job returns to the widget (picklable; the model stays in the file)."""

    weights_path: str
    history: Any  # pandas.DataFrame, one row per epoch
    best_epoch: int
    monitor: str
    best_value: float
    stopped_early: bool
    per_class: Any = None  # pandas.DataFrame: class, letter, iou, dice, precision, recall
    notes: list[str] = field(default_factory=list)
    report: Any = None  # pandas.DataFrame: per-class validation IoU before and after training


def per_class_table(confusion: Any, schema: Any) -> Any:
    """Per-class IoU, Dice, precision and recall from a confusion matrix (rows = truth)."""
    import pandas as pd

    conf = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(conf)
    true, pred = conf.sum(axis=1), conf.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rows = {
            "code": [c.code for c in schema.classes],
            "letter": [c.letter for c in schema.classes],
            "class": [c.name for c in schema.classes],
            "pixels": true.astype(np.int64),
            "iou": tp / (true + pred - tp),
            "dice": 2 * tp / (true + pred),
            "precision": tp / pred,
            "recall": tp / true,
        }
    return pd.DataFrame(rows)


def train(data: Sequence[str], out_dir: str, *, kind: str, model: str | None = None,
          fresh: bool = False, **options: Any) -> Generator[Any, None, TrainSummary]:
    """:func:`~.core.train.train_iter`, with the kept model's per-class metrics on its validation data.

    ``options`` are :class:`~.core.train.TrainConfig` fields (epochs, learning_rate, ...).
    """
    from .core.train import train_iter

    result = yield from train_iter(list(data), out_dir, model=model, kind=kind, fresh=fresh,
                                   **options)
    per_class = None
    if result.confusion is not None:  # the validation the run itself used (strips or pairs)
        per_class = per_class_table(result.confusion, result.model.card.schema)
    return TrainSummary(
        weights_path=os.fspath(result.weights_path), history=result.history,
        best_epoch=result.best_epoch, monitor=result.monitor, best_value=result.best_value,
        stopped_early=result.stopped_early, per_class=per_class, notes=list(result.notes),
        report=result.report,
    )
