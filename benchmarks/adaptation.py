"""The correction loop, measured: how well the models learn a lab's own micrographs from a few corrections.

    python benchmarks/adaptation.py                         # every held-out family, every step
    python benchmarks/adaptation.py --families heldout-lowcontrast --steps full1,strokes2
    python benchmarks/adaptation.py --quick                 # 1024 px, one family, full1 only
    python benchmarks/adaptation.py --real-only             # the real cardiac EM case only

A simulated user on micrographs of an appearance family of the generator that the bundled defaults
were never trained on (:data:`~napari_emgranules.core.synthetic.HELDOUT_FAMILIES`):

* ``fullN``: corrects N micrographs (2048x2048 at 0.8 nm/px) completely: the truth label maps;
* ``strokesN``: paints strokes on N micrographs instead, covering at most 5% of the pixels with
  every class touched (the rest is :data:`UNLABELLED`), without looking at what the models drew;
* ``fixesN``: the same strokes, plus what a user who looks at the bundled Granules model's output
  paints: a background dab over each of its false granules, and granules it missed painted whole
  until 5% of the pixels are labelled (Locations: the strokes as they are);

then fine-tunes both bundled models with the command line's defaults (``emgranules train --pair
MICROGRAPH LABELS ... --max-minutes M``, one process per model, as a user would run it) and the
models segment four other micrographs of the same family. Reported per family and step: Locations
mean IoU over A, I, Z, S, N; granule object F1 (IoU >= 0.5 matches); the largest |pf error| over
the regions; and the CPU minutes of the two training processes. ``start`` is the bundled defaults.

The real-EM case (``../shared/data/emnet-cardiac``, real cardiac muscle EM with mitochondria
masks): a new two-class task (background, mitochondrion) trained from scratch with the package
defaults on three slices and scored on the other two (pixel accuracy, mitochondrion IoU), next to
what the Locations default does there (class 3, Z disk + mitochondria, as mitochondria).

Results go to ``--out`` (markdown) and ``--json``; both are rewritten after every step, so a run
that is stopped keeps what it measured.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import platform
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from _report import save_figure  # sibling modules of benchmarks/
from accuracy import false_granules
from scipy import ndimage as ndi

from napari_emgranules.core.io import atomic_output, read_labels, read_micrograph, write_image, write_labels
from napari_emgranules.core.metrics import (
    confusion_matrix,
    iou_per_class,
    match_objects,
    region_pixel_fractions,
)
from napari_emgranules.core.models import default_model, load_model
from napari_emgranules.core.schema import LOCATIONS_SCHEMA, UNLABELLED
from napari_emgranules.core.segment import segment_micrograph
from napari_emgranules.core.synthetic import HELDOUT_FAMILIES, family_params, synthetic_micrograph

ROOT = Path(__file__).resolve().parent.parent
CARDIAC = ROOT.parent / "shared" / "data" / "emnet-cardiac"
SEED_TRAIN, SEED_TEST = 300_000, 310_000  # the defaults train on seeds 0..9999 of other families
REGIONS = LOCATIONS_SCHEMA.measured_codes  # A I Z S N
LETTERS = [LOCATIONS_SCHEMA.letters[c] for c in REGIONS]
TARGETS = {"full1": {"locations_miou": 0.85, "granule_f1": 0.90, "max_pf_error": 0.01},
           "strokes2": {"locations_miou": 0.80}}


# -------------------------------------------------------------------------------------------------
# A simulated user
# -------------------------------------------------------------------------------------------------
def strokes(truth: np.ndarray, rng: np.random.Generator, budget: float = 0.04, radius: int = 6,
            length: int = 400) -> np.ndarray:
    """Brush strokes a user might paint: each class present gets random-walk strokes inside it.

    Every class with pixels is touched; about ``budget`` of all pixels are painted in all (at most
    half of any class). Returns labels with :data:`UNLABELLED` where nothing is painted.
    """
    out = np.full(truth.shape, UNLABELLED, np.uint16)
    classes = [c for c in np.unique(truth) if c != UNLABELLED]
    per_class = budget * truth.size / max(1, len(classes))
    disc = np.hypot(*np.mgrid[-radius:radius + 1, -radius:radius + 1]) <= radius
    for c in classes:
        inside = ndi.binary_erosion(truth == c, disc) if (truth == c).sum() > 4 * disc.sum() else truth == c
        ys, xs = np.nonzero(inside)
        if not ys.size:
            continue
        want = min(per_class, 0.5 * (truth == c).sum())
        path = np.zeros(truth.shape, bool)
        painted, tries = 0, 0
        while painted < want and tries < 200:
            tries += 1
            k = int(rng.integers(0, ys.size))
            y, x, angle = float(ys[k]), float(xs[k]), rng.uniform(0, 2 * np.pi)
            for _ in range(length // 3):
                iy, ix = int(y), int(x)
                if not (0 <= iy < truth.shape[0] and 0 <= ix < truth.shape[1]) or not inside[iy, ix]:
                    break
                path[iy, ix] = True
                angle += rng.normal(0, 0.15)
                y, x = y + 3 * math.sin(angle), x + 3 * math.cos(angle)
            painted = int((ndi.binary_dilation(path, disc) & (truth == c)).sum())
        mask = ndi.binary_dilation(path, disc) & (truth == c)
        out[mask] = c
    return out


def granule_strokes(granules: np.ndarray, rng: np.random.Generator, budget: float = 0.04) -> np.ndarray:
    """Partial granule labels: a third of the granules painted whole, plus background strokes."""
    out = strokes((granules > 0).astype(np.uint16) * 0, rng, budget=budget * 0.8)  # background only
    objects, n = ndi.label(granules > 0)
    chosen = rng.choice(np.arange(1, n + 1), size=max(1, n // 3), replace=False) if n else []
    picked = np.isin(objects, chosen)
    ring = ndi.binary_dilation(picked, iterations=4) & ~(granules > 0)
    out[ring] = 0  # the background right around a painted granule, as a brush leaves it
    out[picked] = 1
    out[(out == 0) & (granules > 0)] = UNLABELLED  # a background stroke never crosses a granule
    return out


def granule_fixes(strokes_: np.ndarray, granules: np.ndarray, predicted: np.ndarray,
                  rng: np.random.Generator, budget: float = 0.05, dab: int = 3) -> np.ndarray:
    """``strokes_`` (:func:`granule_strokes`) plus the corrections of a user looking at a model's
    granules ``predicted``: each predicted granule that touches no true granule is painted over
    as background (``dab`` px beyond its edge, never onto a true granule), then true granules
    that no predicted one touches, in random order, painted whole with a 4 px ring of background
    while the labels cover less than ``budget`` of the pixels."""
    out = strokes_.copy()
    truth, pred = granules > 0, predicted > 0
    eight = np.ones((3, 3), bool)
    objects, n = ndi.label(pred, structure=eight)
    if n:
        false = ~np.asarray(ndi.maximum(truth, objects, np.arange(1, n + 1)), bool)
        over = ndi.binary_dilation(np.isin(objects, np.flatnonzero(false) + 1), iterations=dab)
        out[over & ~truth] = 0
    objects, n = ndi.label(truth, structure=eight)
    if n:
        missed = np.flatnonzero(~np.asarray(ndi.maximum(pred, objects, np.arange(1, n + 1)), bool)) + 1
        boxes = ndi.find_objects(objects)
        room = int(budget * out.size) - int(np.count_nonzero(out != UNLABELLED))
        for k in rng.permutation(missed):
            if room <= 0:
                break
            box = tuple(slice(max(0, b.start - 5), b.stop + 5) for b in boxes[k - 1])
            whole = objects[box] == k
            ring = ndi.binary_dilation(whole, iterations=4) & ~truth[box]
            before = int(np.count_nonzero(out[box] != UNLABELLED))
            out[box][ring] = 0
            out[box][whole] = 1
            room -= int(np.count_nonzero(out[box] != UNLABELLED)) - before
    return out


STEP_KINDS = ("full", "strokes", "fixes")


def parse_step(step: str) -> tuple[str, int]:
    """``fullN`` -> ("full", N); ``strokesN`` -> ("strokes", N); ``fixesN`` -> ("fixes", N)."""
    m = re.fullmatch(r"(full|strokes|fixes)([1-9][0-9]*)", step)
    if m is None:
        raise SystemExit(f"--steps: {step!r} is not fullN, strokesN or fixesN (e.g. full1, strokes2)")
    return m.group(1), int(m.group(2))


# -------------------------------------------------------------------------------------------------
# Scoring
# -------------------------------------------------------------------------------------------------
def score(truths: list[Any], loc_model, gran_model) -> dict[str, Any]:
    """Locations mean IoU (A I Z S N), granule object F1 and max |pf error| over test micrographs."""
    cm = np.zeros((LOCATIONS_SCHEMA.n_classes,) * 2, np.int64)
    tp = n_true = n_pred = 0
    glycogen = np.zeros(3, np.int64)  # granule pixels: both, truth, prediction
    errors: list[float] = []
    n_false, area_um2 = 0, 0.0
    first = None
    for truth in truths:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seg = segment_micrograph(truth.image, truth.pixel_size_nm, locations_model=loc_model,
                                     granules_model=gran_model)
        if first is None:
            first = (seg.locations, seg.granules)
        cm += confusion_matrix(truth.locations, seg.locations, LOCATIONS_SCHEMA.n_classes)
        m = match_objects(truth.granules == 1, seg.granules == 1, iou_threshold=0.5)
        glycogen += [np.count_nonzero((truth.granules == 1) & (seg.granules == 1)),
                     np.count_nonzero(truth.granules == 1), np.count_nonzero(seg.granules == 1)]
        tp, n_true, n_pred = tp + m.tp, n_true + m.n_true, n_pred + m.n_pred
        false = false_granules(truth, seg.granules)
        n_false, area_um2 = n_false + false["n_false"], area_um2 + false["area_um2"]
        pred = region_pixel_fractions(seg.locations, seg.granules)
        for letter in LETTERS:
            t, p = truth.true_pixel_fractions.get(letter, math.nan), pred[letter]
            if not (math.isnan(t) or math.isnan(p)):
                errors.append(abs(p - t))
    ious = iou_per_class(cm)
    present = [c for c in REGIONS if cm[c].sum() > 0]
    f1 = 2 * tp / (n_true + n_pred) if n_true + n_pred else math.nan
    return {"locations_miou": float(np.nanmean(ious[present])) if present else math.nan,
            "iou": {LOCATIONS_SCHEMA.letters[c]: float(ious[c]) for c in REGIONS},
            "granule_f1": f1, "granule_iou": float(glycogen[0] / max(glycogen[1] + glycogen[2]
                                                                      - glycogen[0], 1)),
            "granule_px_ratio": float(glycogen[2] / max(glycogen[1], 1)),  # predicted / true pixels
            "max_pf_error": max(errors) if errors else math.nan,
            "false_per_um2": n_false / area_um2 if area_um2 else math.nan, "_first": first}


# -------------------------------------------------------------------------------------------------
# Training as a user runs it
# -------------------------------------------------------------------------------------------------
def cli_train(pairs: list[tuple[Path, Path]], kind: str, out: Path, extra: list[str]) -> dict[str, Any]:
    """``emgranules train --pair ... --model KIND`` in its own process; wall and CPU seconds.

    A run folder that already holds a finished run (``run.json``, from an interrupted benchmark
    with ``--work``) is reused as it is.
    """
    done = out / "run.json"
    if done.is_file():
        saved = json.loads(done.read_text(encoding="utf-8"))
        return {**saved, "weights": next(out.glob("*.weights.h5"))}
    cmd = [sys.executable, "-m", "napari_emgranules.cli", "train", "--model", kind, "--out", str(out),
           "--quiet", *extra]
    for image, labels in pairs:
        cmd += ["--pair", str(image), str(labels)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise RuntimeError(f"{shlex.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    with open(out / "history.csv", newline="", encoding="utf-8") as fh:
        epochs = sum(int(row["epoch"]) > 0 for row in csv.DictReader(fh))  # epoch 0 = the start
    run = {"wall_s": wall, "cpu_s": cpu, "stdout": proc.stdout.strip().splitlines()[-12:],
           "epochs": epochs}
    done.write_text(json.dumps(run), encoding="utf-8")
    return {**run, "weights": next(out.glob("*.weights.h5"))}  # named after the kind or task


def write_training_labels(train: list[Any], folder: Path, fixes: bool = False) -> list[Path]:
    """Each training micrograph as a simulated user leaves it, in ``folder/m<i>/``: ``image.tif``,
    the full label maps (``locations.tif``, ``granules.tif``), strokes (``*_strokes.tif``) and,
    with ``fixes``, the strokes plus corrections of the bundled Granules model's output
    (``*_fixes.tif``; Locations: the strokes). The same micrographs always get the same strokes."""
    rng = np.random.default_rng(7)
    files = []
    for i, t in enumerate(train):
        d = folder / f"m{i}"
        d.mkdir(parents=True, exist_ok=True)
        write_image(d / "image.tif", t.image, pixel_size_nm=0.8)
        write_labels(d / "locations.tif", t.locations)
        write_labels(d / "granules.tif", t.granules)
        loc_s = strokes(t.locations.astype(np.uint16), rng)
        write_labels(d / "locations_strokes.tif", loc_s)
        gran_s = granule_strokes(t.granules, rng)
        write_labels(d / "granules_strokes.tif", gran_s)
        write_labels(d / "locations_fixes.tif", loc_s)
        files.append(d)
        print(f"  m{i}: strokes cover {np.mean(loc_s != UNLABELLED):.1%} (locations), "
              f"{np.mean(gran_s != UNLABELLED):.1%} (granules) of the pixels", flush=True)
        if fixes:  # (its own random numbers: the strokes stay those of a run without fixes)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                seen = segment_micrograph(t.image, t.pixel_size_nm,
                                          models={"granules": default_model("granules")})
            gran_f = granule_fixes(gran_s, t.granules, seen.labels["granules"],
                                   np.random.default_rng(7 + i))
            write_labels(d / "granules_fixes.tif", gran_f)
            print(f"  m{i}: fixes cover {np.mean(gran_f != UNLABELLED):.1%} (granules)", flush=True)
    return files


def run_family(family: str, steps: list[str], size: int, n_test: int, work: Path, extra: list[str],
               report: dict[str, Any], save, anatomy: dict[str, Any] | None = None,
               kinds: tuple[str, ...] = ("locations", "granules")) -> None:
    params = dataclasses.replace(family_params(family), **(anatomy or {}))
    n_train = max(parse_step(s)[1] for s in steps) if steps else 0
    t0 = time.perf_counter()

    def make(seed: int):
        return synthetic_micrograph((size, size), 0.8, seed=seed, params=params)

    train = [make(SEED_TRAIN + i) for i in range(n_train)]
    test = [make(SEED_TEST + i) for i in range(n_test)]
    print(f"{family}: generated {n_train} + {n_test} micrographs in {time.perf_counter() - t0:.0f} s",
          flush=True)
    rows = report["families"].setdefault(family, {})
    rows["start"] = score(test, default_model("locations"), default_model("granules"))
    pictures = {"start": rows["start"].pop("_first")}
    print(f"{family} start: {fmt(rows['start'])}", flush=True)
    save()
    files = write_training_labels(train, work / family,
                                  fixes=any(parse_step(s)[0] == "fixes" for s in steps))
    for step in steps:
        how, n = parse_step(step)
        runs = {}
        for kind in kinds:
            labels = f"{kind}.tif" if how == "full" else f"{kind}_{how}.tif"
            pairs = [(d / "image.tif", d / labels) for d in files[:n]]
            runs[kind] = cli_train(pairs, kind, work / family / f"{step}-{kind}", extra)
            print(f"  {step} {kind}: {runs[kind]['epochs']} epochs, {runs[kind]['cpu_s'] / 60:.1f} CPU min "
                  f"({runs[kind]['wall_s'] / 60:.1f} min wall)", flush=True)
        tuned = {k: load_model(runs[k]["weights"]) if k in runs else default_model(k)
                 for k in ("locations", "granules")}
        result = score(test, tuned["locations"], tuned["granules"])
        result.update(cpu_min=sum(r["cpu_s"] for r in runs.values()) / 60,
                      wall_min=sum(r["wall_s"] for r in runs.values()) / 60,
                      epochs={k: r["epochs"] for k, r in runs.items()},
                      train_output={k: r["stdout"] for k, r in runs.items()})
        rows[step] = result
        pictures[step] = result.pop("_first")
        print(f"{family} {step}: {fmt(result)}", flush=True)
        save()
        render(test[0], pictures, report["pictures_dir"] / f"{report['pictures_stem']}-{family}.png",
               family)


CARDIAC_PIXEL_NM = 12.5  # from the sarcomere period (the data's README)
CARDIAC_SPLITS = {0: [0, 1, 2, 3, 4], 1: [2, 3, 4, 0, 1], 2: [4, 0, 1, 2, 3]}  # first three train


def cardiac_split(split: int = 0):
    """The (micrograph, mask) pairs that train and those that score in a split of the real cardiac
    EM, or None when the five labelled micrographs are not there."""
    images = sorted((CARDIAC / "images").glob("*.tif"))
    masks = {p.stem: p for p in (CARDIAC / "labels").glob("*.tif")}
    if len(images) < 5 or any(p.stem not in masks for p in images):
        return None
    order = [(p, masks[p.stem]) for p in (images[i] for i in CARDIAC_SPLITS[split])]
    return order[:3], order[3:]


def train_cardiac(train: list[tuple[Path, Path]], out: Path, flags: list[str]) -> dict[str, Any]:
    """A new two-class task (background, mitochondrion) on cardiac pairs with ``emgranules train``."""
    return cli_train(train, "new", out, ["--schema", "background,mitochondrion", "--task", "mitochondria",
                                         "--pixel-size", f"{CARDIAC_PIXEL_NM:g}", *flags])


def score_masks(test: list[tuple[Path, Path]], predictors: dict[str, tuple[Any, int]]):
    """Each predictor (a function from micrograph to label map, and the code that means
    "mitochondrion" in it) scored against the masks, pooled: ``{name: {"pixel_accuracy",
    "mitochondrion_iou"}}``, and the first micrograph shown as ``(image, truth, {name: labels},
    stem)``. Each micrograph is read once."""
    cms = {name: np.zeros((2, 2), np.int64) for name in predictors}
    shown = None
    for image_path, mask_path in test:
        image = read_micrograph(image_path, CARDIAC_PIXEL_NM)
        truth = (read_labels(mask_path) > 0).astype(np.uint8)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            labels = {name: predict(image) for name, (predict, _) in predictors.items()}
        for name, (_, code) in predictors.items():
            cms[name] += confusion_matrix(truth, (labels[name] == code).astype(np.uint8), 2)
        if shown is None:
            shown = (image.data, truth, labels, image_path.stem)
    scores = {name: {"pixel_accuracy": float(np.trace(cm) / cm.sum()),
                     "mitochondrion_iou": float(iou_per_class(cm)[1])} for name, cm in cms.items()}
    return scores, shown


def segmenter(model, kind: str, **options):
    """A micrograph -> label map function for :func:`score_masks`."""
    return lambda image: segment_micrograph(image, CARDIAC_PIXEL_NM, models={kind: model},
                                            **options).labels[kind]


def real_case(work: Path, extra: list[str], report: dict[str, Any], save) -> None:
    """Mitochondria on real cardiac EM: a new task on 3 slices, scored on 2; and the defaults."""
    pairs = cardiac_split(0)
    if pairs is None:
        print(f"{CARDIAC}: not found; the real-EM case is skipped", flush=True)
        return
    train, test = pairs
    run = train_cardiac(train, work / "cardiac", extra)
    scores, shown = score_masks(test, {
        "new": (segmenter(load_model(run["weights"]), "mitochondria"), 1),
        "locations": (segmenter(default_model("locations"), "locations"), 3)})
    report["real"] = {
        "data": "emnet-cardiac (real cardiac muscle EM, mitochondria masks), 3 slices train, 2 test",
        "pixel_size_nm": CARDIAC_PIXEL_NM,
        "new_task": {**scores["new"], "cpu_min": run["cpu_s"] / 60, "epochs": run["epochs"]},
        "locations_default": {"pixel_accuracy": scores["locations"]["pixel_accuracy"],
                              "mitochondrion_iou_as_class_3": scores["locations"]["mitochondrion_iou"]},
    }
    print(f"real cardiac: {report['real']}", flush=True)
    image, truth, labels, _ = shown
    render_cardiac(image, truth, labels["new"], labels["locations"],
                   report["pictures_dir"] / "adaptation-cardiac.png")
    save()


def render(truth: Any, pictures: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str) -> None:
    """A test micrograph, its truth and each step's Locations and Granules, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    cmap = ListedColormap([LOCATIONS_SCHEMA.colors()[c] for c in range(LOCATIONS_SCHEMA.n_classes)])
    panels = [("truth", truth.locations, truth.granules)] + [
        (name, loc, gran) for name, (loc, gran) in pictures.items()]
    fig = Figure(figsize=(3 * (1 + len(panels)), 6.2), dpi=80)
    axes = fig.subplots(2, 1 + len(panels))
    step = max(1, truth.image.shape[0] // 512)  # a 512 px preview
    crop = slice(0, truth.image.shape[0] // 4)  # granules: a quarter, at full resolution
    axes[0, 0].imshow(truth.image[::step, ::step], cmap="gray")
    axes[0, 0].set_title("micrograph", fontsize=9)
    axes[1, 0].imshow(truth.image[crop, crop], cmap="gray")
    axes[1, 0].set_title("a quarter of it", fontsize=9)
    for k, (name, loc, gran) in enumerate(panels, start=1):
        axes[0, k].imshow(loc[::step, ::step], cmap=cmap, vmin=0,
                          vmax=LOCATIONS_SCHEMA.n_classes - 1, interpolation="nearest")
        axes[0, k].set_title(f"{name}: Locations", fontsize=9)
        axes[1, k].imshow(truth.image[crop, crop], cmap="gray")
        axes[1, k].contour(gran[crop, crop], levels=[0.5], colors="red", linewidths=0.6)
        axes[1, k].set_title(f"{name}: granules", fontsize=9)
    fig.suptitle(f"{title}: Locations (top, schema colours) and Granules (red outlines), a test micrograph")
    save_figure(fig, path)


def render_cardiac(image, truth, new, loc, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    cmap = ListedColormap([LOCATIONS_SCHEMA.colors()[c] for c in range(LOCATIONS_SCHEMA.n_classes)])
    fig = Figure(figsize=(16, 4.4), dpi=70)
    axes = fig.subplots(1, 4)
    axes[0].imshow(image, cmap="gray")
    axes[0].set_title("real cardiac EM (test slice)")
    for ax, mask, title in ((axes[1], truth, "mitochondria mask (truth)"),
                            (axes[2], new, "new task, trained on 3 slices")):
        ax.imshow(image, cmap="gray")
        ax.contour(mask, levels=[0.5], colors="yellow", linewidths=0.7)
        ax.set_title(title)
    axes[3].imshow(loc, cmap=cmap, vmin=0, vmax=LOCATIONS_SCHEMA.n_classes - 1, interpolation="nearest")
    axes[3].set_title("Locations default (3 = Z disk + mito)")
    save_figure(fig, path)


# -------------------------------------------------------------------------------------------------
# Report
# -------------------------------------------------------------------------------------------------
def fmt(r: dict[str, Any]) -> str:
    text = (f"locations mIoU {r['locations_miou']:.3f}, granule F1 {r['granule_f1']:.3f}, "
            f"granule px IoU {r['granule_iou']:.3f}, "
            f"false granules {r.get('false_per_um2', math.nan):.2f}/um^2, "
            f"max |pf error| {r['max_pf_error']:.4f}")
    return text + (f", {r['cpu_min']:.1f} CPU min" if "cpu_min" in r else "")


def markdown(report: dict[str, Any]) -> str:
    lines = ["# The correction loop on micrographs the defaults never saw", "",
             f"Command: `{report['command']}`  ", f"Machine: {report['machine']}; {report['date']}.", "",
             ("Held-out appearance families of the generator (never used to train the bundled "
              "defaults)" if not report.get("anatomy") else
              "Appearance families of the generator drawn with `" + json.dumps(report["anatomy"])
              + "` (anatomy the bundled defaults learnt little or nothing of)")
             + f". Training micrographs {report['size']}x{report['size']} px at 0.8 nm/px; scores on "
             f"{report['n_test']} other micrographs of the family. `start` = bundled defaults; `fullN` = N "
             "micrographs fully corrected; `strokesN` = strokes on N micrographs (<= 5% of pixels, every "
             "class); `fixesN` = the same strokes plus the bundled Granules model's false granules "
             "painted over as background and granules it missed painted whole (<= 5% in all). Fine-tuning: "
             "`emgranules train --pair ...` with the command line's defaults"
             + (f" and `{' '.join(report['extra'])}`" if report["extra"] else "") + ", per model"
             + ("" if report.get("models", "locations,granules") == "locations,granules" else
                f" (only {report['models']}; the other model stays the bundled default)") + ".", "",
             "| family | step | Locations mIoU (A I Z S N) | IoU A / I / Z / S / N | granule F1 "
             "| granule px IoU | granule px / true | false granules /um^2 | max abs pf error "
             "| CPU min (models trained) | wall min | epochs (loc, gran) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for family, rows in report["families"].items():
        for step, r in rows.items():
            ious = " / ".join(f"{r['iou'][k]:.2f}" for k in LETTERS)
            cpu = f"{r['cpu_min']:.1f}" if "cpu_min" in r else "-"
            wall = f"{r['wall_min']:.1f}" if "wall_min" in r else "-"
            ep = ", ".join(str(r["epochs"].get(k, "-")) for k in ("locations", "granules")) \
                if "epochs" in r else "-"
            false = f"{r['false_per_um2']:.2f}" if "false_per_um2" in r else "-"
            ratio = f"{r['granule_px_ratio']:.2f}" if "granule_px_ratio" in r else "-"
            lines.append(f"| {family} | {step} | {r['locations_miou']:.3f} | {ious} | {r['granule_f1']:.3f} "
                         f"| {r['granule_iou']:.3f} | {ratio} | {false} | {r['max_pf_error']:.4f} | {cpu} "
                         f"| {wall} | {ep} |")
    for family in report["families"]:
        lines += ["", f"![{family}: a test micrograph, its truth and each step's label maps]"
                      f"({report['pictures_stem']}-{family}.png)"]
    lines += ["", "Targets: full1 (one fully corrected micrograph, <= 10 min of a 2-core machine): "
              "Locations mIoU >= 0.85, "
              "granule F1 >= 0.90, max |pf error| <= 0.01; strokes2: Locations mIoU >= 0.80; never worse "
              "than the start on the held-out block (the trainer keeps the starting weights unless an "
              "epoch beats them)."]
    if "real" in report:
        r = report["real"]
        lines += ["", "## Real EM: mitochondria in cardiac muscle", "",
                  f"{r['data']}, {r['pixel_size_nm']:g} nm/px.", "",
                  "| model | pixel accuracy | mitochondrion IoU |", "|---|---|---|",
                  f"| new task (background, mitochondrion), package defaults, {r['new_task']['epochs']} "
                  f"epochs, {r['new_task']['cpu_min']:.1f} CPU min | {r['new_task']['pixel_accuracy']:.3f} | "
                  f"{r['new_task']['mitochondrion_iou']:.3f} |",
                  f"| Locations default, class 3 (Z disk + mitochondria) | "
                  f"{r['locations_default']['pixel_accuracy']:.3f} | "
                  f"{r['locations_default']['mitochondrion_iou_as_class_3']:.3f} |",
                  "", "![real cardiac EM: truth, the new task and the Locations default]"
                      "(adaptation-cardiac.png)"]
    return "\n".join(lines) + "\n"


def _without_work(argv: list[str]) -> list[str]:
    """The command line for the report, without the folders it names (``--work``, ``--out``,
    ``--json``: paths of this machine only; the results are the same wherever they go)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in _PATH_OPTIONS:
            skip = True
        elif not a.startswith(tuple(f"{o}=" for o in _PATH_OPTIONS)):
            out.append(a)
    return out


_PATH_OPTIONS = ("--work", "--out", "--json")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", default=",".join(HELDOUT_FAMILIES))
    ap.add_argument("--steps", default="full1,full2,full4,strokes2",
                    help="comma-separated fullN / strokesN")
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--test", type=int, default=4, help="test micrographs per family")
    ap.add_argument("--max-minutes", type=float, default=4.0,
                    help="time budget of each training process (emgranules train --max-minutes)")
    ap.add_argument("--train-args", default="", metavar="ARGS",
                    help="more options for every emgranules train run, e.g. '--max-class-loss 1'")
    ap.add_argument("--anatomy", metavar="JSON",
                    help="generator settings on top of each family's, e.g. '{\"rosette_fraction\": 0.3}' "
                         "(with --families standard: anatomy the defaults learnt little or nothing of)")
    ap.add_argument("--models", default="locations,granules",
                    help="which models each step fine-tunes (the others stay the bundled defaults)")
    ap.add_argument("--quick", action="store_true", help="1024 px, the first family, full1, 2 test images")
    ap.add_argument("--real-only", action="store_true", help="only the real cardiac EM case")
    ap.add_argument("--no-real", action="store_true", help="skip the real cardiac EM case")
    ap.add_argument("--work", type=Path, help="folder for micrographs and runs (default: a temporary one)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "adaptation.md")
    ap.add_argument("--json", type=Path, default=ROOT / "docs" / "adaptation.json")
    args = ap.parse_args(argv)
    families = [f for f in args.families.split(",") if f]
    anatomy: dict[str, Any] = {}
    if args.anatomy:
        try:
            anatomy = json.loads(args.anatomy)
            dataclasses.replace(family_params(families[0] if families else "standard"), **anatomy)
        except (json.JSONDecodeError, TypeError, ValueError, AttributeError) as exc:
            ap.error(f"--anatomy {args.anatomy!r}: {exc}")
    steps = [s for s in args.steps.split(",") if s]
    kinds = tuple(k for k in ("locations", "granules") if k in args.models.split(","))
    if not kinds or set(args.models.split(",")) - set(kinds):
        ap.error(f"--models {args.models!r}: give locations, granules or both (comma-separated)")
    if args.quick:
        families, steps, args.size, args.test = families[:1], ["full1"], 1024, 2
    extra = ["--max-minutes", f"{args.max_minutes:g}", *shlex.split(args.train_args)]
    report: dict[str, Any] = {
        "command": "python benchmarks/adaptation.py " + shlex.join(_without_work(
            argv if argv is not None else sys.argv[1:])),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "size": args.size, "n_test": args.test,
        "extra": extra, "anatomy": anatomy, "models": ",".join(kinds), "families": {},
        "pictures_dir": args.out.parent,
        "pictures_stem": args.out.stem}

    def save() -> None:
        saved = {k: v for k, v in report.items() if k != "pictures_dir"}  # a path of this machine
        texts = {args.json: json.dumps(saved, indent=1, default=str), args.out: markdown(report)}
        for path, text in texts.items():
            with atomic_output(path) as tmp:
                tmp.write_text(text, encoding="utf-8")

    with tempfile.TemporaryDirectory(prefix="adaptation-") as tmp:
        work = args.work or Path(tmp)
        if not args.real_only:
            for family in families:
                run_family(family, steps, args.size, args.test, work, extra, report, save, anatomy,
                           kinds)
        if not args.no_real:
            real_case(work, extra, report, save)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
