"""Accuracy of the Locations and Granules models on held-out synthetic micrographs with exact truth.

    python benchmarks/accuracy.py                                  # bundled default models
    python benchmarks/accuracy.py --locations runs/loc/locations.weights.h5 \
        --granules runs/gran/granules.weights.h5 --size 4096 --per-condition 2
    python benchmarks/accuracy.py --quick                          # 1024 x 1024, 1 image each
    python benchmarks/accuracy.py --quick --conditions in-range,pixel-1.0
    python benchmarks/accuracy.py --views 1,1 --json bench-out/views-1-1.json   # one view each

For every condition (default generator settings, fixed fibre angles, other pixel sizes, more noise,
low contrast, the appearance families, contracted and stretched sarcomeres, oblique cuts, glycogen
rosettes, columns of mitochondria) ``--per-condition`` micrographs are generated with seeds from
100000 upward (training uses seeds 0..9999), segmented with :func:`segment_micrograph`
(``mode="auto"``; images at other pixel sizes are resampled to the model's internally) and
compared with their truth:

*Locations*: confusion over codes 0..6 pooled per condition, per-class IoU (classes present in the
truth or the prediction) and mean IoU over the classes present in the truth;
*Granules*: pixel IoU of class 1 and object precision / recall / F1 (connected components matched
one-to-one at IoU >= 0.5);
*pixel fractions*: per region r in A I Z S N, predicted ``pf_r`` = granule px inside predicted r /
predicted r px, against the generator's exact ``true_pixel_fractions[r]`` (NaN on either side is
skipped); mean and max absolute error per condition.

Targets: Locations mean IoU >= 0.85, granule object F1 >= 0.90, every |pf error| <= 0.01. The report
is a markdown file (``--out``) and a JSON file with the same numbers (``--json``), both written to
a temporary file and renamed into place.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import platform
import shlex
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from napari_emgranules.core.io import atomic_output, file_sha256
from napari_emgranules.core.metrics import (
    ObjectMatch,
    confusion_matrix,
    iou_per_class,
    match_objects,
    region_pixel_fractions,
)
from napari_emgranules.core.models import VIEWS, SegmentationModel, default_model, load_model
from napari_emgranules.core.schema import LOCATIONS_SCHEMA
from napari_emgranules.core.segment import MIN_GRANULE_NM, segment_micrograph
from napari_emgranules.core.synthetic import (
    HELDOUT_FAMILIES,
    TRAINING_FAMILIES,
    SyntheticParams,
    family_params,
    synthetic_micrograph,
)

ROOT = Path(__file__).resolve().parent.parent
SEED_BASE = 100_000  # training uses seeds 0..9999
SEED_STRIDE = 1_000  # condition k uses seeds SEED_BASE + k * SEED_STRIDE + i
N_LOC = LOCATIONS_SCHEMA.n_classes
LETTERS = [LOCATIONS_SCHEMA.letters[c] for c in range(N_LOC)]
REGIONS = [LOCATIONS_SCHEMA.letters[c] for c in LOCATIONS_SCHEMA.measured_codes]  # A I Z S N
TARGETS = {"locations_mean_iou": 0.85, "granule_object_f1": 0.90, "pf_abs_error": 0.01,
           "false_granules_per_um2": 0.5}
A_CODE = next(c for c, letter in LOCATIONS_SCHEMA.letters.items() if letter == "A")


@dataclass(frozen=True)
class Condition:
    """One test condition: a name for the report, a key for ``--conditions``, and how to generate."""

    key: str
    name: str
    pixel_size_nm: float = 0.8
    overrides: dict[str, Any] = field(default_factory=dict)
    family: str | None = None  # a named look of core.synthetic.FAMILIES (default: standard)

    def describe(self) -> str:
        """The generator settings in words (for the conditions table)."""
        parts = [f"{self.pixel_size_nm:g} nm/px"]
        if self.family:
            held = " (held out of training)" if self.family in HELDOUT_FAMILIES else ""
            parts.append(f"family {self.family}{held}")
        parts += [f"{k}={v!r}" for k, v in self.overrides.items()]
        return ", ".join(parts) if self.overrides or self.family else parts[0] + ", default params"


CONDITIONS: tuple[Condition, ...] = (
    Condition("in-range", "in range"),
    Condition("angle-0", "angle 0°", overrides={"angle_deg": 0.0}),
    Condition("angle-45", "angle 45°", overrides={"angle_deg": 45.0}),
    Condition("angle-90", "angle 90°", overrides={"angle_deg": 90.0}),
    Condition("pixel-0.6", "pixel 0.6 nm", pixel_size_nm=0.6),
    Condition("pixel-1.0", "pixel 1.0 nm", pixel_size_nm=1.0),
    Condition("pixel-1.2", "pixel 1.2 nm", pixel_size_nm=1.2),
    Condition("noise-x2", "noise x2", overrides={"noise_scale": 2.0}),
    Condition("low-contrast", "low contrast", overrides={"contrast": (0.25, 0.35)}),
    # appended (a condition's seeds follow its position): the looks of other preparations
    *(Condition(f"family-{f}", f.replace("heldout-", "held-out "), family=f)
      for f in (*HELDOUT_FAMILIES, *[f for f in TRAINING_FAMILIES if f != "standard"])),
    # coarser micrographs than the defaults learnt from (0.7-0.9 nm/px): where the pixel-size
    # note of core.segment (PIXEL_RANGE_SLACK) starts
    Condition("pixel-1.6", "pixel 1.6 nm", pixel_size_nm=1.6),
    Condition("pixel-2.0", "pixel 2.0 nm", pixel_size_nm=2.0),
    Condition("pixel-0.4", "pixel 0.4 nm", pixel_size_nm=0.4),
    Condition("pixel-3.0", "pixel 3.0 nm", pixel_size_nm=3.0),
    # anatomy the defaults learnt little or nothing of: contraction states, oblique cuts, rosettes,
    # mitochondria columns
    Condition("contracted", "contracted", overrides={"sarcomere_um": (1.8, 1.95),
                                                     "h_zone_um": (0.0, 0.0)}),
    Condition("stretched", "stretched", overrides={"sarcomere_um": (3.0, 3.3),
                                                   "h_zone_um": (0.8, 1.1)}),
    Condition("oblique-30", "oblique 30°", overrides={"oblique_deg": (25.0, 35.0)}),
    Condition("oblique-50", "oblique 50°", overrides={"oblique_deg": (45.0, 55.0)}),
    Condition("rosettes", "rosettes", overrides={"rosette_fraction": 0.3}),
    # oxidative fibres: columns of longitudinal mitochondria with a dark matrix (2026-12-07)
    Condition("mito-columns", "mitochondria columns",
              overrides={"mitochondria_columns": 0.5, "grey_levels": {"mito": (0.15, 0.25)}}),
)


# -------------------------------------------------------------------------------------------------
# Generator
# -------------------------------------------------------------------------------------------------
def make_params(cond: Condition) -> SyntheticParams | None:
    """``SyntheticParams`` for a condition (None for default settings)."""
    if cond.family:
        return dataclasses.replace(family_params(cond.family), **cond.overrides)
    return dataclasses.replace(SyntheticParams(), **cond.overrides) if cond.overrides else None


def generate(cond: Condition, params: SyntheticParams | None, size: int, seed: int) -> Any:
    """One synthetic micrograph of ``size`` x ``size`` px for a condition."""
    return synthetic_micrograph((size, size), cond.pixel_size_nm, seed=seed, dtype="uint16",
                                params=params)


# -------------------------------------------------------------------------------------------------
# Models
# -------------------------------------------------------------------------------------------------
def get_model(path: str | None, kind: str) -> SegmentationModel:
    """The model of ``kind`` from ``path``, or the bundled default (untrained warning silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(path, kind) if path else default_model(kind)


def weights_hash(model: SegmentationModel) -> str:
    """Short SHA-256 of the weights file, or of the weight arrays when there is no file."""
    source = model.card.provenance.get("source")
    if source and Path(source).is_file():
        return file_sha256(source)[:12]
    h = hashlib.sha256()
    for arr in model.keras_model.get_weights():
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:12]


def _relative(path: str | None) -> str | None:
    """A weights path relative to the repository when it lies inside it (no machine's paths in docs)."""
    if not path:
        return path
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return path


def model_info(model: SegmentationModel) -> dict[str, Any]:
    """What the report says about one model (weights, hash, trained, card fields)."""
    card = model.card
    prov = card.provenance
    return {
        "kind": card.kind,
        "weights": _relative(prov.get("source")) or "bundled default (no weights file)",
        "sha256_12": weights_hash(model),
        "trained": card.trained,
        "architecture": card.architecture,
        "pixel_size_nm": float(card.pixel_size_nm),
        "views": model.views,
        "provenance": {k: v for k, v in prov.items() if k != "source"},
    }


# -------------------------------------------------------------------------------------------------
# Measures
# -------------------------------------------------------------------------------------------------
def mean_iou_truth(cm: np.ndarray) -> float:
    """Mean IoU over the classes present in the truth (rows of ``cm`` with pixels)."""
    present = cm.sum(axis=1) > 0
    return float(iou_per_class(cm)[present].mean()) if present.any() else math.nan


def false_granules(truth: Any, pred_gran: np.ndarray) -> dict[str, float]:
    """Predicted granules touching no true granule: counts and areas (um^2), all and in the A band.

    The A band holds few granules, and the generator's distractors (ribosomes, precipitate,
    burned-in letters, lipid edges) are where a model fires falsely; both are reported per um^2.
    """
    from scipy import ndimage as ndi

    # one particle is one 8-connected object, as in the measurement, speck removal and matching
    lab, n = ndi.label(pred_gran == 1, structure=np.ones((3, 3), bool))
    px_um2 = (truth.pixel_size_nm / 1000.0) ** 2
    a_band = truth.locations == A_CODE
    out = {"n_false": 0, "n_false_a": 0, "area_um2": lab.size * px_um2,
           "area_a_um2": float(a_band.sum()) * px_um2}
    if n:
        index = np.arange(1, n + 1)
        false = ~np.asarray(ndi.maximum(truth.granules == 1, lab, index), bool)
        in_a = np.asarray(ndi.maximum(a_band, lab, index), bool)
        out["n_false"], out["n_false_a"] = int(false.sum()), int((false & in_a).sum())
    return out


def measure(truth: Any, pred_loc: np.ndarray, pred_gran: np.ndarray) -> dict[str, Any]:
    """All measures of one image: confusion matrices, object match and pixel fractions."""
    cm_loc = confusion_matrix(truth.locations, pred_loc, N_LOC)
    cm_gran = confusion_matrix(truth.granules, pred_gran, 2)
    match = match_objects(truth.granules == 1, pred_gran == 1, iou_threshold=0.5)
    pf_pred = region_pixel_fractions(pred_loc, pred_gran)
    pf_true = {r: float(truth.true_pixel_fractions.get(r, math.nan)) for r in REGIONS}
    return {"cm_loc": cm_loc, "cm_gran": cm_gran, "match": match, "pf_pred": pf_pred,
            "pf_true": pf_true, "false": false_granules(truth, pred_gran)}


def pf_errors(pf_true: dict[str, float], pf_pred: dict[str, float]) -> dict[str, float]:
    """Predicted minus true pf per region (NaN where either side is NaN)."""
    return {r: pf_pred[r] - pf_true[r] for r in REGIONS}


# -------------------------------------------------------------------------------------------------
# One condition
# -------------------------------------------------------------------------------------------------
@dataclass
class ConditionResult:
    """Pooled measures of one condition and its per-image rows."""

    cond: Condition
    seeds: list[int] = field(default_factory=list)
    cm_loc: np.ndarray = field(default_factory=lambda: np.zeros((N_LOC, N_LOC), np.int64))
    cm_gran: np.ndarray = field(default_factory=lambda: np.zeros((2, 2), np.int64))
    match: ObjectMatch = field(default_factory=ObjectMatch.empty)
    errors: dict[str, list[float]] = field(default_factory=lambda: {r: [] for r in REGIONS})
    images: list[dict[str, Any]] = field(default_factory=list)
    false: dict[str, float] = field(default_factory=lambda: {"n_false": 0, "n_false_a": 0,
                                                              "area_um2": 0.0, "area_a_um2": 0.0})

    def add(self, seed: int, m: dict[str, Any], gen_s: float, seg_s: float, mode: str) -> dict:
        """Pool one image's measures and keep its row."""
        self.seeds.append(seed)
        self.cm_loc += m["cm_loc"]
        self.cm_gran += m["cm_gran"]
        self.match = self.match + m["match"]
        for k, v in m["false"].items():
            self.false[k] += v
        err = pf_errors(m["pf_true"], m["pf_pred"])
        for r, e in err.items():
            if not math.isnan(e):
                self.errors[r].append(e)
        row = {"seed": seed, "generate_s": gen_s, "segment_s": seg_s, "mode": mode,
               "locations_mean_iou": mean_iou_truth(m["cm_loc"]),
               "granule_pixel_iou": float(iou_per_class(m["cm_gran"])[1]),
               "granule_objects": dataclasses.asdict(m["match"]),
               "granule_object_f1": m["match"].f1,
               "pf_true": m["pf_true"], "pf_pred": m["pf_pred"], "pf_error": err,
               "false_granules": m["false"]}
        self.images.append(row)
        return row

    def summary(self) -> dict[str, Any]:
        """Pooled numbers of the condition (what the tables and the JSON show)."""
        ious = iou_per_class(self.cm_loc)
        miou = mean_iou_truth(self.cm_loc)
        f1 = self.match.f1
        pf = {}
        for r in REGIONS:
            e = np.abs(np.array(self.errors[r], float))
            mean_e, max_e = (float(e.mean()), float(e.max())) if e.size else (math.nan, math.nan)
            pf[r] = {"mean_abs": mean_e, "max_abs": max_e, "n": int(e.size),
                     "pass": _passes(max_e, TARGETS["pf_abs_error"], below=True)}
        times = {k: [row[k] for row in self.images] for k in ("generate_s", "segment_s")}
        fp = self.false["n_false"] / self.false["area_um2"] if self.false["area_um2"] else math.nan
        fp_a = (self.false["n_false_a"] / self.false["area_a_um2"] if self.false["area_a_um2"]
                else math.nan)
        return {
            "key": self.cond.key, "name": self.cond.name, "pixel_size_nm": self.cond.pixel_size_nm,
            "params": {k: list(v) if isinstance(v, tuple) else v for k, v in self.cond.overrides.items()},
            "seeds": self.seeds,
            "locations": {
                "mean_iou": miou, "pass": _passes(miou, TARGETS["locations_mean_iou"]),
                "pixel_accuracy": float(np.trace(self.cm_loc) / max(1, self.cm_loc.sum())),
                "iou_per_class": {LETTERS[c]: float(ious[c]) for c in range(N_LOC)},
                "confusion": self.cm_loc.tolist()},
            "granules": {
                "pixel_iou": float(iou_per_class(self.cm_gran)[1]),
                "objects": dataclasses.asdict(self.match),
                "precision": self.match.precision, "recall": self.match.recall, "f1": f1,
                "pass": _passes(f1, TARGETS["granule_object_f1"]),
                "false_per_um2": fp, "false_per_um2_a_band": fp_a,
                "false_pass": _all_pass([_passes(fp, TARGETS["false_granules_per_um2"], below=True),
                                         _passes(fp_a, TARGETS["false_granules_per_um2"], below=True)])},
            "pf_error": pf,
            "pf_pass": _all_pass(v["pass"] for v in pf.values()),
            "timing_s": {k: {"mean": float(np.mean(v)), "max": float(np.max(v))} for k, v in times.items()},
            "images": self.images,
        }


def _passes(value: float, target: float, below: bool = False) -> bool | None:
    """Whether ``value`` meets ``target`` (>=, or <= when ``below``); None when undefined."""
    if value is None or math.isnan(value):
        return None
    return value <= target if below else value >= target


def _all_pass(marks: Any) -> bool | None:
    """False if any mark fails, None if none is defined, else True."""
    marks = [m for m in marks if m is not None]
    return all(marks) if marks else None


def run_condition(k: int, cond: Condition, models: dict[str, SegmentationModel], size: int,
                  n: int) -> ConditionResult:
    """Generate, segment and measure ``n`` images of one condition, printing a line per image."""
    params = make_params(cond)
    res = ConditionResult(cond)
    for i in range(n):
        seed = SEED_BASE + k * SEED_STRIDE + i
        t0 = time.perf_counter()
        truth = generate(cond, params, size, seed)
        t1 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seg = segment_micrograph(truth.image, truth.pixel_size_nm, mode="auto",
                                     locations_model=models["locations"],
                                     granules_model=models["granules"])
        t2 = time.perf_counter()
        row = res.add(seed, measure(truth, seg.locations, seg.granules), t1 - t0, t2 - t1, seg.mode)
        print(f"{cond.name:>13s} seed {seed}: generate {t1 - t0:6.2f} s, segment {t2 - t1:6.2f} s "
              f"({seg.mode}); loc mIoU {_num(row['locations_mean_iou'])}, granule F1 "
              f"{_num(row['granule_object_f1'])}", flush=True)
        del truth, seg
    return res


# -------------------------------------------------------------------------------------------------
# Report
# -------------------------------------------------------------------------------------------------
def _num(value: float | None, digits: int = 3) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _mark(ok: bool | None) -> str:
    return "n/a" if ok is None else ("pass" if ok else "**FAIL**")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _models_section(models: list[dict[str, Any]]) -> list[str]:
    rows = [[m["kind"], f"`{m['weights']}`", f"`{m['sha256_12']}`",
             "trained" if m["trained"] else "**UNTRAINED** (random weights)", m["architecture"],
             f"{m['pixel_size_nm']:g}", str(m.get("views", 1))] for m in models]
    lines = ["## Models", ""] + _table(
        ["model", "weights", "sha256 (12)", "state", "architecture", "nm/px", "views"], rows)
    if not all(m["trained"] for m in models):
        lines += ["", "> **Warning:** at least one model has untrained random weights: these numbers "
                  "measure noise, not the method."]
    return lines + [""]


def _conditions_section(results: list[dict[str, Any]], size: int) -> list[str]:
    rows = [[r["name"], f"`{r['key']}`", CONDITION_BY_KEY[r["key"]].describe(),
             ", ".join(str(s) for s in r["seeds"])] for r in results]
    return ["## Conditions", "", f"Each image is {size} x {size} px, uint16, segmented with "
            "`mode=\"auto\"` (resampled to the model's pixel size and back).", ""] + _table(
        ["condition", "key", "generator", "seeds"], rows) + [""]


def _metric_sections(results: list[dict[str, Any]]) -> list[str]:
    t = TARGETS
    loc = [[r["name"], _num(r["locations"]["mean_iou"]), _num(r["locations"]["pixel_accuracy"]),
            _mark(r["locations"]["pass"])] for r in results]
    gran = [[r["name"], _num(r["granules"]["pixel_iou"]), str(r["granules"]["objects"]["n_true"]),
             str(r["granules"]["objects"]["n_pred"]), _num(r["granules"]["precision"]),
             _num(r["granules"]["recall"]), _num(r["granules"]["f1"]), _mark(r["granules"]["pass"]),
             _num(r["granules"].get("false_per_um2"), 2), _num(r["granules"].get("false_per_um2_a_band"), 2),
             _mark(r["granules"].get("false_pass"))]
            for r in results]
    pf = [[r["name"]] + [f"{_num(r['pf_error'][g]['mean_abs'], 4)} / {_num(r['pf_error'][g]['max_abs'], 4)}"
                         for g in REGIONS] + [_mark(r["pf_pass"])] for r in results]
    iou = [[r["name"]] + [_num(r["locations"]["iou_per_class"][c]) for c in LETTERS] for r in results]
    tim = [[r["name"]] + [_num(r["timing_s"][k][s], 2) for k in ("generate_s", "segment_s")
                          for s in ("mean", "max")] for r in results]
    return (
        [f"## Locations: mean IoU (target >= {t['locations_mean_iou']})", "",
         "Pooled confusion over all images of the condition; mean over the classes present in the truth.",
         ""] + _table(["condition", "mean IoU", "pixel accuracy", "target"], loc) + [""]
        + [f"## Granules: object F1 (target >= {t['granule_object_f1']})", "",
           "Connected (8-connected) granules matched one-to-one at IoU >= 0.5, counts pooled over the "
           "condition. "
           "False: predicted granules touching no true granule, per um^2 of the image and of the "
           f"true A band (target <= {t['false_granules_per_um2']}; the distractors and the "
           "granule-poor A band are where they appear).", ""]
        + _table(["condition", "pixel IoU", "true", "predicted", "precision", "recall", "F1", "target",
                  "false /um^2", "false /um^2 A band", "target"], gran) + [""]
        + [f"## Pixel fractions: |predicted - true| (target <= {t['pf_abs_error']})", "",
           "Mean / max absolute error over the images; an image is skipped for a region absent from "
           "its truth or its prediction (— : no image left). Pass when the max of every region "
           "is within target.", ""]
        + _table(["condition"] + REGIONS + ["target"], pf) + [""]
        + ["## Locations: IoU per class", "", "— : class absent from truth and prediction.", ""]
        + _table(["condition"] + [f"{c} ({LOCATIONS_SCHEMA.names[i]})" for i, c in enumerate(LETTERS)], iou)
        + [""]
        + ["## Time per image (s)", "", "Segmentation times include building the inference graph for "
           "each new image shape (the first image, and each pixel-size condition).", ""]
        + _table(["condition", "generate mean", "generate max", "segment mean", "segment max"], tim)
        + [""]
    )


def _summary_lines(results: list[dict[str, Any]]) -> list[str]:
    checks = (("Locations mean IoU", lambda r: r["locations"]["pass"]),
              ("granule object F1", lambda r: r["granules"]["pass"]),
              ("false granules", lambda r: r["granules"].get("false_pass")),
              ("pixel-fraction error", lambda r: r["pf_pass"]))
    lines = ["## Summary", ""]
    for label, get in checks:
        passed = [r["name"] for r in results if get(r)]
        lines.append(f"- {label}: {len(passed)} of {len(results)} conditions pass"
                     + (f" ({', '.join(passed)})" if 0 < len(passed) < len(results) else ""))
    return lines + [""]


def markdown(report: dict[str, Any]) -> str:
    """The markdown report."""
    s = report["settings"]
    lines = ["# Segmentation accuracy on synthetic micrographs", "",
             f"Generated by `{report['command']}` on {report['generated']} "
             f"({s['cpus']} CPUs, {s['platform']}, Python {s['python']}, Keras backend {s['backend']}; "
             f"{report['elapsed_s']:.0f} s). Do not edit by hand: rerun the command.", "",
             f"Targets: Locations mean IoU >= {TARGETS['locations_mean_iou']}, granule object F1 >= "
             f"{TARGETS['granule_object_f1']}, per-region |pf error| <= {TARGETS['pf_abs_error']}. "
             f"Segmented with `mode={s['mode']}`; granule particles smaller than "
             f"{s.get('min_granule_nm', '?')} nm removed (the package default).", ""]
    lines += _summary_lines(report["conditions"])
    lines += _models_section(report["models"])
    lines += _conditions_section(report["conditions"], s["size"])
    lines += _metric_sections(report["conditions"])
    return "\n".join(lines)


def _json_safe(obj: Any) -> Any:
    """Replace NaN/inf by None and numpy scalars by Python ones, recursively."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file next to ``path`` and rename it into place."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


# -------------------------------------------------------------------------------------------------
# Command line
# -------------------------------------------------------------------------------------------------
CONDITION_BY_KEY = {c.key: c for c in CONDITIONS}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse and resolve the command line (``--quick`` fills size / per-condition not given)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="conditions: " + ", ".join(c.key for c in CONDITIONS))
    ap.add_argument("--locations", help="Locations weights (default: the bundled default model)")
    ap.add_argument("--granules", help="Granules weights (default: the bundled default model)")
    ap.add_argument("--size", type=int, help="image side in px (default 4096; --quick 1024)")
    ap.add_argument("--per-condition", type=int, help="images per condition (default 2; --quick 1)")
    ap.add_argument("--conditions", help="comma-separated condition keys (default: all)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "accuracy.md", help="markdown report")
    ap.add_argument("--json", type=Path, default=ROOT / "docs" / "accuracy.json", help="JSON report")
    ap.add_argument("--quick", action="store_true", help="1024 x 1024 px, 1 image per condition")
    ap.add_argument("--views", metavar="L,G",
                    help="symmetric views the Locations and Granules models average (1, 2, 4 or 8 "
                         "each; default: each model card's)")
    args = ap.parse_args(argv)
    if args.size is None:
        args.size = 1024 if args.quick else 4096
    if args.per_condition is None:
        args.per_condition = 1 if args.quick else 2
    if args.size < 128 or not 1 <= args.per_condition < SEED_STRIDE:
        ap.error(f"--size must be >= 128 and --per-condition in 1..{SEED_STRIDE - 1}")
    keys = [k.strip() for k in args.conditions.split(",")] if args.conditions else list(CONDITION_BY_KEY)
    unknown = [k for k in keys if k not in CONDITION_BY_KEY]
    if unknown:
        ap.error(f"unknown condition(s) {unknown}; choose from {', '.join(CONDITION_BY_KEY)}")
    args.selected = [(i, c) for i, c in enumerate(CONDITIONS) if c.key in keys]
    args.view_counts = (None, None)
    if args.views:
        try:
            args.view_counts = tuple(int(v) for v in args.views.split(","))
        except ValueError:
            args.view_counts = ()
        if len(args.view_counts) != 2 or any(v not in VIEWS for v in args.view_counts):
            ap.error(f"--views {args.views!r}: give two of {', '.join(map(str, VIEWS))}, e.g. 8,1")
    return args


def command_line(argv: list[str] | None) -> str:
    """The command as typed (``python <script> <args>``), for the report header."""
    if argv is None:
        return shlex.join(["python", os.path.relpath(sys.argv[0]), *sys.argv[1:]])
    return shlex.join(["python", "benchmarks/accuracy.py", *argv])


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the markdown and JSON reports."""
    args = parse_args(argv)
    command = command_line(argv)
    print(command, flush=True)
    start = time.perf_counter()
    models = {"locations": get_model(args.locations, "locations").with_views(args.view_counts[0]),
              "granules": get_model(args.granules, "granules").with_views(args.view_counts[1])}
    results = [run_condition(k, cond, models, args.size, args.per_condition).summary()
               for k, cond in args.selected]
    from napari_emgranules.core._backend import backend_name

    report = {
        "command": command,
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "elapsed_s": time.perf_counter() - start,
        "settings": {"size": args.size, "per_condition": args.per_condition, "seed_base": SEED_BASE,
                     "seed_stride": SEED_STRIDE, "mode": "auto", "object_iou_threshold": 0.5,
                     "min_granule_nm": MIN_GRANULE_NM,
                     "cpus": os.cpu_count(), "platform": platform.platform(),
                     "python": platform.python_version(), "backend": backend_name()},
        "targets": TARGETS,
        "models": [model_info(m) for m in models.values()],
        "conditions": results,
    }
    write_text(args.out, markdown(report) + "\n")
    write_text(args.json, json.dumps(_json_safe(report), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {args.out} and {args.json} ({report['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
