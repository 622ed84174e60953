"""Confidence that means something: temperature scaling and calibration measures.

A segmentation network's softmax is usually over-confident: pixels it gets wrong still score
0.99. Temperature scaling (Guo et al., ICML 2017) divides the logits by one number ``T`` fitted on
labelled micrographs the network did not train on, so that a confidence of 0.8 is right about 80%
of the time; the labels (the argmax) do not change. The model card stores ``T``
(:attr:`~napari_emgranules.core.models.ModelCard.temperature`), and every confidence this package
shows (the ``--confidence`` maps, the Review widget's least-sure tiles) is the calibrated one.

:func:`calibration_measures` reports the expected calibration error (ECE: the gap between
confidence and accuracy, averaged over 15 equal-width confidence bins weighted by their pixels)
and what share of the wrong pixels the least confident 10% of pixels hold (how well a "review
the least sure first" queue finds the errors).

Fitting a model's temperature on labelled micrographs (it runs the model) is
:func:`napari_emgranules.core.evaluation.calibrate`; this module only does the arithmetic.

Typical use::

    >>> samples = [(logits, truth), ...]              # doctest: +SKIP
    >>> t = fit_temperature(samples)                  # doctest: +SKIP
    >>> calibration_measures(softmax_max(logits, t), logits.argmax(-1) == truth)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from .schema import UNLABELLED

__all__ = ["MAX_CALIBRATION_PIXELS", "calibration_measures", "choose_temperature", "fit_temperature",
           "measure_logits", "softmax_max"]

#: Pixels drawn (evenly) from all samples to fit a temperature.
MAX_CALIBRATION_PIXELS = 2_000_000
_T_RANGE = (0.05, 20.0)


def _flat(logits: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits = np.asarray(logits, np.float32)
    if logits.ndim < 2 or logits.shape[:-1] != np.shape(truth):
        raise ValueError(f"logits {logits.shape} and truth {np.shape(truth)} do not match: logits "
                         "need one more axis (the classes) than the truth")
    z = logits.reshape(-1, logits.shape[-1])
    t = np.asarray(truth).reshape(-1)
    keep = t != UNLABELLED
    if (t[keep] >= z.shape[1]).any():
        raise ValueError(f"truth holds codes beyond the {z.shape[1]} classes of the logits")
    return z[keep], t[keep].astype(np.int64)


def _nll(z: np.ndarray, t: np.ndarray, temperature: float) -> float:
    s = z / temperature
    s = s - s.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(s).sum(axis=1))
    return float((log_norm - s[np.arange(len(t)), t]).mean())


def fit_temperature(samples: Iterable[Sequence[np.ndarray]], max_pixels: int = MAX_CALIBRATION_PIXELS,
                    seed: int = 0) -> float:
    """The temperature minimising the cross-entropy of ``(logits, truth)`` samples.

    ``logits`` are ``(..., n_classes)`` and ``truth`` the codes (:data:`UNLABELLED` pixels are
    skipped). At most ``max_pixels`` labelled pixels, drawn evenly from all samples, are used. A
    golden-section search over log T in [0.05, 20] (the cross-entropy is convex in 1/T).

    Raises
    ------
    ValueError
        No labelled pixels, or logits and truth that do not fit.
    """
    zs, ts = [], []
    for logits, truth in samples:
        z, t = _flat(logits, truth)
        zs.append(z)
        ts.append(t)
    n = sum(len(t) for t in ts)
    if n == 0:
        raise ValueError("no labelled pixels to fit a temperature on")
    z, t = np.concatenate(zs), np.concatenate(ts)
    if n > max_pixels:
        pick = np.random.default_rng(seed).choice(n, max_pixels, replace=False)
        z, t = z[pick], t[pick]
    lo, hi = (math.log(v) for v in _T_RANGE)
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = _nll(z, t, math.exp(a)), _nll(z, t, math.exp(b))
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = _nll(z, t, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = _nll(z, t, math.exp(b))
    return float(math.exp((lo + hi) / 2))


def softmax_max(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """The confidence (largest softmax probability) of ``logits / temperature``, float32."""
    s = np.asarray(logits, np.float32)
    if s.shape[-1] == 2:  # the sigmoid of the logit difference's size: one channel, not two
        return _difference_confidence(s[..., 1] - s[..., 0], temperature)
    s = s / np.float32(temperature)
    s = s - s.max(axis=-1, keepdims=True)
    e = np.exp(s)
    return (1.0 / e.sum(axis=-1)).astype(np.float32)


def scores_confidence(scores: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """:func:`softmax_max` of ``(h, w, c)`` logits, or of a two-class model's logit difference
    given as ``(h, w)`` (:meth:`~.models.SegmentationModel.predict_scores`)."""
    s = np.asarray(scores, np.float32)
    return softmax_max(s, temperature) if s.ndim != 2 else _difference_confidence(s, temperature)


def _difference_confidence(difference: np.ndarray, temperature: float) -> np.ndarray:
    """The larger of two softmax probabilities from their logits' difference: a sigmoid."""
    d = np.abs(difference) / np.float32(temperature)
    return (np.float32(1) / (np.float32(1) + np.exp(-d))).astype(np.float32)


def calibration_measures(confidence: np.ndarray, correct: np.ndarray, bins: int = 15,
                         review_fraction: float = 0.10) -> dict[str, float]:
    """How well ``confidence`` predicts ``correct`` (same shapes; pixels outside the truth dropped
    beforehand).

    Returns ``ece`` (expected calibration error over ``bins`` equal-width bins), ``accuracy``,
    ``mean_confidence``, ``n_pixels``, ``n_wrong`` and ``wrong_in_least_confident``: the share of
    the wrong pixels among the ``review_fraction`` least confident pixels (NaN with no wrong
    pixel; 1.0 is a perfect review queue).
    """
    c = np.asarray(confidence, np.float64).reshape(-1)
    ok = np.asarray(correct, bool).reshape(-1)
    if c.shape != ok.shape:
        raise ValueError(f"confidence ({c.size} px) and correct ({ok.size} px) do not match")
    if c.size == 0:
        raise ValueError("no pixels to measure calibration on")
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(c, edges[1:-1]), 0, bins - 1)
    conf_sum = np.bincount(which, weights=c, minlength=bins)
    acc_sum = np.bincount(which, weights=ok.astype(np.float64), minlength=bins)
    ece = float(np.abs(conf_sum - acc_sum).sum() / c.size)
    n_wrong = int((~ok).sum())
    k = max(1, int(round(review_fraction * c.size)))
    least = np.argpartition(c, k - 1)[:k] if k < c.size else np.arange(c.size)
    caught = float((~ok[least]).sum() / n_wrong) if n_wrong else math.nan
    return {"ece": ece, "accuracy": float(ok.mean()), "mean_confidence": float(c.mean()),
            "n_pixels": int(c.size), "n_wrong": n_wrong, "wrong_in_least_confident": caught}


def choose_temperature(pairs, current: float = 1.0) -> tuple[float, dict[str, float], dict[str, float]]:
    """The cross-entropy-optimal temperature of ``(logits, truth)`` pairs, unless it makes the
    expected calibration error worse than ``current`` does (the cross-entropy also rewards
    sharper ranking, and on a few micrographs the two can disagree): then ``current`` is kept.

    Returns ``(temperature, measures at current, measures at the returned temperature)``.
    """
    pairs = list(pairs)
    t = fit_temperature(pairs)
    before, after = measure_logits(pairs, current), measure_logits(pairs, t)
    if after["ece"] > before["ece"]:
        return float(current), before, before
    return t, before, after


def measure_logits(pairs: Iterable[Sequence[np.ndarray]], temperature: float) -> dict[str, float]:
    """:func:`calibration_measures` of ``(logits, truth)`` pairs pooled, at ``temperature``."""
    conf, ok = [], []
    for logits, truth in pairs:
        keep = np.asarray(truth) != UNLABELLED
        conf.append(softmax_max(logits, temperature)[keep])
        ok.append((np.argmax(logits, axis=-1) == truth)[keep])
    return calibration_measures(np.concatenate(conf), np.concatenate(ok))
