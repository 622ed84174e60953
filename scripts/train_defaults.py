#!/usr/bin/env python
"""Train the bundled default models on synthetic micrographs, reproducibly.

Three steps, each resumable (re-running skips what is done):

1. ``data``: generate synthetic 4096 x 4096 micrographs (core/synthetic; seeds 0..N-1, pixel
   sizes spread over 0.7-0.9 nm) and export them as 1024-px training pairs (core/dataset) for
   both models, plus a small validation set (seeds 5000+).
2. ``train``: train each model from scratch with core/train (the same functions as
   ``emgranules train``), at the models' 0.8 nm/px. Killed runs resume from their last epoch.
3. ``install``: store the best weights as float16 in ``src/napari_emgranules/models/`` with a
   sidecar saying how they were made, the symmetric views the model averages at inference
   (:data:`VIEWS`) and the softmax temperature fitted on the validation micrographs.

``calibrate`` (not in the default steps) refits only the bundled model's views and temperature
on the validation micrographs: the weights file stays byte for byte, its sidecar changes.

Usage::

    python scripts/train_defaults.py --work runs/defaults            # all three steps
    python scripts/train_defaults.py --work runs/defaults --kind granules --epochs 30
    python scripts/train_defaults.py --work runs/defaults --steps install
    python scripts/train_defaults.py --work runs/defaults --steps data,calibrate --micrographs 0

On a machine without TensorFlow (e.g. a GPU box with JAX), set ``KERAS_BACKEND=jax``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "src" / "napari_emgranules" / "models"
KINDS = ("locations", "granules")
# Symmetric views each bundled model averages at inference (core.models.ModelCard.views), chosen
# by `python benchmarks/accuracy.py` (docs/accuracy.md): the 8 views of the dihedral group lift
# Locations mean IoU in 15 of 16 conditions for 8 cheap passes (a Locations pass runs at
# 3.2 nm/px, 1/16 of the pixels); Granules passes are the costly ones and views did not pay there.
VIEWS = {"locations": 8, "granules": 1}
# Settings per model: crop side, steps per epoch (about a minute an epoch on a 2-core CPU),
# learning rate. The generator already varies contrast and brightness widely; with the original
# recipe's strong intensity augmentation on top (contrast 0.4, brightness 0.25) the Locations
# network stayed at the class prior for over a thousand steps.
# The Locations model works at 3.2 nm/px: its classes are micrometre-scale (a sarcomere is
# 2.2-2.6 um), and at 4x the original 0.8 nm a crop sees 16x the area for the same compute, in
# training and in every segmentation after. Its tiles are exported at 2048 px (512 px at 3.2 nm).
PIXEL_SIZES = {"locations": 3.2, "granules": 0.8}
TILES = {"locations": 2048, "granules": 1024}
RECIPES = {
    "locations": {"crop": 384, "batch_size": 4, "steps_per_epoch": 100, "learning_rate": 5e-4,
                  "clip_norm": 1.0, "early_stopping_patience": None, "reduce_lr_patience": 8,
                  "contrast": 0.1, "brightness": 0.05, "input_scaling": "percentile"},
    "granules": {"crop": 512, "steps_per_epoch": 100, "clip_norm": 1.0, "contrast": 0.3,
                 "brightness": 0.1, "input_scaling": "percentile"},
}


def pixel_size_of(seed: int) -> float:
    """Training pixel size of micrograph ``seed``: spread evenly over 0.7-0.9 nm."""
    return round(0.7 + 0.2 * ((seed * 0.6180339887) % 1.0), 4)


def coarse_pixel_size_of(seed: int, share: float, largest: float) -> float | None:
    """Resolution randomisation (as SynthSeg's): for a ``share`` of the seeds a pixel size drawn
    log-uniformly from 1.0-``largest`` nm (a micrograph taken at low magnification, which a
    Locations model at 3.2 nm/px then sees upsampled and soft); ``None`` for the others.
    Deterministic in ``seed``, independent of :func:`pixel_size_of`'s spread."""
    if share <= 0 or largest <= 1.0:
        return None
    u, v = np.random.default_rng([seed, 0xC0A5]).random(2)
    if u >= share:
        return None
    return round(float(largest ** v), 4)  # log-uniform over 1-largest


def appearance_of(seed: int, appearance: str, generator: dict | None = None):
    """Generator parameters of micrograph ``seed``: ``standard`` (the original look) or
    ``randomised`` (three in four domain-randomised draws, every fourth one of the named
    training families in turn; never a held-out family); ``generator`` (``--generator``)
    replaces some of them in every draw, e.g. ``{"nucleus_probability": 0.8}``."""
    from napari_emgranules.core.synthetic import (
        HELDOUT_FAMILIES,
        TRAINING_FAMILIES,
        SyntheticParams,
        family_params,
        randomised_params,
    )

    if appearance == "standard":
        params = None
    elif seed % 4:
        params = randomised_params(seed)
    else:
        family = TRAINING_FAMILIES[(seed // 4) % len(TRAINING_FAMILIES)]
        assert family not in HELDOUT_FAMILIES
        params = family_params(family)
    if generator:
        params = dataclasses.replace(params or SyntheticParams(), **generator)
    return params


def make_data(work: Path, n: int, n_val: int, size: int, kinds: tuple[str, ...] = KINDS,
              appearance: str = "standard", generator: dict | None = None) -> None:
    """Generate and export the training and validation pairs (skips micrographs already there);
    ``generator`` applies to the training micrographs only (validation keeps the plain looks)."""
    from napari_emgranules.core.dataset import export_training_pairs
    from napari_emgranules.core.schema import default_schema
    from napari_emgranules.core.synthetic import synthetic_micrograph

    jobs = [("train", s, size) for s in range(n)] + [("val", 5000 + s, size) for s in range(n_val)]
    for split, seed, side in jobs:
        source = f"synthetic-{seed}"
        done = {k: work / "data" / split / "done" / f"{k}-{source}" for k in kinds}
        # a micrograph made with other --generator settings is never reused as if it were this one
        setting = json.dumps(generator, sort_keys=True) if generator and split == "train" else ""
        for k, marker in done.items():
            if marker.exists() and (marker.read_text().splitlines()[1:] or [""])[0] != setting:
                raise SystemExit(f"{marker.parent.parent}: {k} micrograph {source} was made with other "
                                 f"--generator settings than {setting or 'none'}; use another --work")
        todo = [k for k in kinds if not done[k].exists()]
        if not todo:
            continue
        t = time.perf_counter()
        ps = pixel_size_of(seed) if split == "train" else 0.8
        params = appearance_of(seed, appearance, generator if split == "train" else None)
        m = synthetic_micrograph((side, side), ps, seed=seed, params=params)
        for kind in todo:
            labels = m.locations if kind == "locations" else m.granules
            export_training_pairs(m.image, labels, work / "data" / split / kind,
                                  schema=default_schema(kind), tile_size=TILES[kind],
                                  source=source, made_by="synthetic", pixel_size_nm=ps,
                                  image_format="tif")
            done[kind].parent.mkdir(parents=True, exist_ok=True)
            done[kind].write_text(f"{ps}\n" + (f"{setting}\n" if setting else ""))
        print(f"data: {split} seed {seed} at {ps} nm/px ({', '.join(todo)}) in "
              f"{time.perf_counter() - t:.1f} s", flush=True)


FRESH_SEED0 = 20_000  # fresh training micrographs: seeds 20000-99999 (benchmarks use 100000+)


def fresh_maker(kind: str, n: int, size: int, appearance: str, seed0: int = FRESH_SEED0,
                coarse: tuple[float, float] = (0.0, 0.0), generator: dict | None = None):
    """``fresh_data`` for core.train: round ``r`` (1, 2, ...) gives ``n`` new ``size`` px
    micrographs (seeds ``seed0 + (r - 1) n ...``, looks as :func:`appearance_of`, pixel
    sizes as :func:`pixel_size_of`), the same ones for the same round.

    ``coarse = (share, largest_nm)``: that share of them is taken at a coarser pixel size
    (:func:`coarse_pixel_size_of`) over the same field of view (``size`` x 0.8 nm), so fewer px;
    ``generator`` as in :func:`appearance_of`."""
    from napari_emgranules.core.synthetic import synthetic_micrograph

    def make(round_: int) -> list[tuple[np.ndarray, np.ndarray, float]]:
        first = seed0 + (round_ - 1) * n
        if first + n > 100_000:
            raise SystemExit(f"round {round_}: fresh seeds would reach the benchmarks' (100000+); "
                             "use fewer rounds or micrographs")
        out = []
        for seed in range(first, first + n):
            ps, side = pixel_size_of(seed), size
            low = coarse_pixel_size_of(seed, *coarse)
            if low is not None:
                ps, side = low, max(64, round(size * 0.8 / low))
            m = synthetic_micrograph((side, side), ps, seed=seed,
                                     params=appearance_of(seed, appearance, generator))
            out.append((m.image, m.locations if kind == "locations" else m.granules, ps))
        return out

    return make


def train_kind(work: Path, kind: str, epochs: int, seed: int, start: Path | None = None,
               overrides: dict | None = None, run: str | None = None, fresh=None) -> Path:
    """Train ``kind`` from scratch or from ``start`` weights (resuming a killed run).

    ``overrides`` replace recipe settings (``--set``); ``run`` names the run folder (default
    ``kind``)."""
    from napari_emgranules.core.models import ModelCard, SegmentationModel, build_unet
    from napari_emgranules.core.schema import default_schema
    from napari_emgranules.core.train import TrainConfig, train_iter

    out = work / "runs" / (run or kind)
    # Adam rather than the original Nadam 2e-3, which made these normalisation-free networks
    # collapse to a constant output from scratch; core.train also starts a fresh network with
    # data-scaled convolutions and its output bias at the class priors.
    # Rehearsal and the class guard are for a user's few micrographs: here every micrograph is
    # synthetic already, and continuing the defaults from their own weights (--start) must not
    # turn them on (75% of the crops would come from six rehearsal images).
    recipe = {"batch_size": 2, "learning_rate": 5e-4, "rehearsal": 0.0, "max_class_loss": None,
              **RECIPES[kind], **(overrides or {})}
    config = TrainConfig(epochs=epochs, rotate90=True, seed=seed, optimizer="adam", **recipe)
    resume = (out / "checkpoint" / "state.json").exists()
    if resume:
        gen = train_iter(work / "data" / "train" / kind, out, resume=True, epochs=epochs,
                         fresh_data=fresh)
    elif start is not None:  # continue an earlier run's weights (fine-tuning: Adam, no re-init)
        gen = train_iter(work / "data" / "train" / kind, out, model=start, kind=kind,
                         validation=work / "data" / "val" / kind, config=config, fresh_data=fresh)
    else:
        schema = default_schema(kind)
        arch = "unet_model7" if kind == "locations" else "unet_model"
        start = SegmentationModel(build_unet(arch, schema.n_classes, seed=seed),
                                  ModelCard(kind, arch, schema, pixel_size_nm=PIXEL_SIZES[kind],
                                            provenance={"trained": False}))
        gen = train_iter(work / "data" / "train" / kind, out, model=start, kind=kind,
                         validation=work / "data" / "val" / kind, config=config, fresh_data=fresh)
    t = time.perf_counter()
    try:
        while True:
            ev = next(gen)
            if ev.end_of_epoch:
                print(f"{kind} [{time.perf_counter() - t:7.0f} s] {ev.message}"
                      + ("  *" if ev.improved else ""), flush=True)
    except StopIteration as stop:
        result = stop.value
    print(f"{kind}: best epoch {result.best_epoch}, {result.monitor} {result.best_value:.4f}; "
          f"{result.weights_path}", flush=True)
    return result.weights_path


def install(work: Path, kind: str, command: str, run: str | None = None,
            overrides: dict | None = None) -> Path:
    """Store the run's best weights as the bundled default (float16) with provenance."""
    from napari_emgranules.core.models import clear_model_cache, load_model, save_model

    weights = work / "runs" / (run or kind) / f"{kind}.weights.h5"
    if not weights.is_file():
        raise SystemExit(f"{weights}: no trained weights yet; run the train step first")
    model = load_model(weights, kind)
    model.card.views = VIEWS[kind]  # calibrated as it will run
    # calibrated confidence: the softmax temperature fitted on the validation micrographs (seeds
    # 5000+, never trained on), so that the Review queue and --confidence maps mean something
    from napari_emgranules.core.evaluation import calibrate

    t0 = time.perf_counter()
    temperature, before, after = calibrate(model, work / "data" / "val" / kind)
    model.card.temperature = temperature
    print(f"{kind}: temperature {temperature:.3f}; ECE {before['ece']:.4f} -> {after['ece']:.4f}, "
          f"least-confident 10% hold {after['wrong_in_least_confident']:.2f} of the wrong pixels "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    prov = dict(model.card.provenance)
    prov["calibration"] = {"temperature": temperature, "data": "the validation micrographs",
                           "before": before, "after": after}
    prov.update({
        "trained": True,
        "training_data": "synthetic skeletal-muscle micrographs (napari_emgranules.core.synthetic), "
                         "not real EM: correct and retrain on your own micrographs, or load your "
                         "lab's weights",
        "synthetic": True,
        "made_with": f"python scripts/train_defaults.py --kind {kind} (data, train and install "
                     f"steps; recipe {({**RECIPES[kind], **(overrides or {})})})",
        "installed_with": command,
    })
    prov.pop("source", None)
    prov.pop("source_format", None)
    model.card.provenance = prov
    BUNDLED.mkdir(parents=True, exist_ok=True)
    path = save_model(model, BUNDLED / f"{kind}.weights.h5", provenance=prov, overwrite=True,
                      weights_dtype="float16")
    clear_model_cache()
    print(f"installed {path} ({path.stat().st_size / 1e6:.1f} MB)", flush=True)
    return path


def recalibrate(work: Path, kind: str, command: str) -> Path:
    """Set the bundled model's views (:data:`VIEWS`) and refit its temperature on the validation
    micrographs; only the sidecar is rewritten (atomically), never the weights."""
    from napari_emgranules.core.evaluation import calibrate
    from napari_emgranules.core.io import atomic_output
    from napari_emgranules.core.models import clear_model_cache, load_model, sidecar_path

    weights = BUNDLED / f"{kind}.weights.h5"
    val = work / "data" / "val" / kind
    if not val.is_dir():
        raise SystemExit(f"{val}: no validation micrographs; run the data step first")
    model = load_model(weights, kind)
    model.card.views = VIEWS[kind]
    model.card.temperature = 1.0  # fitted afresh for these views
    t0 = time.perf_counter()
    temperature, before, after = calibrate(model, val)
    print(f"{kind}: {VIEWS[kind]} view(s), temperature {temperature:.3f}; ECE {before['ece']:.4f} -> "
          f"{after['ece']:.4f}, least-confident 10% hold {after['wrong_in_least_confident']:.2f} of the "
          f"wrong pixels ({time.perf_counter() - t0:.0f} s)", flush=True)
    prov = {k: v for k, v in model.card.provenance.items() if k not in ("source", "source_format")}
    prov["calibration"] = {"temperature": temperature, "views": VIEWS[kind],
                           "data": "the validation micrographs", "before": before, "after": after,
                           "made_with": command}
    model.card.temperature, model.card.provenance = temperature, prov
    side = sidecar_path(weights)
    with atomic_output(side) as tmp:
        Path(tmp).write_text(json.dumps(model.card.to_dict(), indent=2), encoding="utf-8")
    clear_model_cache()
    return side


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "defaults",
                        help="folder for the generated data and the training runs")
    parser.add_argument("--kind", choices=(*KINDS, "both"), default="both")
    parser.add_argument("--steps", default="data,train,install",
                        help="comma-separated subset of data,train,install,calibrate")
    parser.add_argument("--micrographs", type=int, default=24, help="training micrographs")
    parser.add_argument("--validation", type=int, default=2, help="validation micrographs")
    parser.add_argument("--size", type=int, default=4096, help="side of a training micrograph")
    parser.add_argument("--appearance", choices=("standard", "randomised"), default="randomised",
                        help="generator look: the original one, or domain-randomised (default)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=Path, metavar="WEIGHTS",
                        help="continue from these weights instead of a fresh network "
                             "(e.g. an earlier run's WORK/runs/locations/locations.weights.h5)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe setting, e.g. --set contrast=0.6 (repeatable)")
    parser.add_argument("--run", metavar="NAME", help="run folder under WORK/runs (default: the kind)")
    parser.add_argument("--fresh-every", type=int, metavar="K",
                        help="every K epochs, train on --fresh-micrographs new micrographs instead "
                             "(seeds from 20000): the network cannot learn a fixed set by heart")
    parser.add_argument("--fresh-micrographs", type=int, default=16, metavar="N")
    parser.add_argument("--fresh-seed", type=int, default=FRESH_SEED0, metavar="SEED",
                        help="seed of the first fresh micrograph (default 20000; a run that "
                             "continues an earlier one starts past the seeds it used)")
    parser.add_argument("--fresh-size", type=int, default=2048, metavar="PX",
                        help="side of a fresh micrograph (default 2048)")
    parser.add_argument("--coarse-share", type=float, default=0.0, metavar="F",
                        help="share of the fresh micrographs taken at a coarse pixel size "
                             "(resolution randomisation, for Locations; default 0)")
    parser.add_argument("--coarse-max", type=float, default=12.5, metavar="NM",
                        help="coarsest pixel size of those, drawn log-uniformly from 1 nm "
                             "(default 12.5)")
    parser.add_argument("--generator", action="append", default=[], metavar="KEY=VALUE",
                        help="override a generator setting of the training and fresh micrographs "
                             "(not validation), e.g. --generator nucleus_probability=0.8 "
                             "(repeatable; a value is JSON, a pair as [lo, hi])")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for TensorFlow (0 = its default)")
    args = parser.parse_args(argv)
    if not 0.0 <= args.coarse_share <= 1.0 or not 1.0 < args.coarse_max <= 50.0:
        parser.error(f"--coarse-share must be 0-1 and --coarse-max 1-50 nm, got "
                     f"{args.coarse_share:g} and {args.coarse_max:g}")
    if args.coarse_share and not args.fresh_every:
        parser.error("--coarse-share draws the fresh micrographs: give --fresh-every K too")
    if args.threads:
        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(args.threads))
        os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
        os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    steps = {s.strip() for s in args.steps.split(",") if s.strip()}
    unknown = steps - {"data", "train", "install", "calibrate"}
    if unknown:
        parser.error(f"unknown steps: {', '.join(sorted(unknown))}")
    kinds = KINDS if args.kind == "both" else (args.kind,)
    overrides = _key_values(parser, "--set", args.set)
    generator = {k: tuple(v) if isinstance(v, list) else v  # a range, as the generator holds it
                 for k, v in _key_values(parser, "--generator", args.generator).items()}
    if generator:
        from napari_emgranules.core.synthetic import SyntheticParams

        try:  # the generator's own checks: a name or range it rejects stops here, not mid-run
            dataclasses.replace(SyntheticParams(), **generator)
        except (TypeError, ValueError) as exc:
            parser.error(f"--generator: {exc}")
    command = "python scripts/train_defaults.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    if "data" in steps:
        make_data(args.work, args.micrographs, args.validation, args.size, kinds, args.appearance,
                  generator)
    if args.fresh_every:
        overrides["fresh_data_every"] = args.fresh_every
    for kind in kinds:
        if "train" in steps:
            fresh = (fresh_maker(kind, args.fresh_micrographs, args.fresh_size, args.appearance,
                                 args.fresh_seed, (args.coarse_share, args.coarse_max), generator)
                     if args.fresh_every else None)
            train_kind(args.work, kind, args.epochs, args.seed, args.start, overrides, args.run, fresh)
        if "install" in steps:
            install(args.work, kind, command, args.run, overrides)
        elif "calibrate" in steps:
            recalibrate(args.work, kind, command)
    return 0


def _key_values(parser: argparse.ArgumentParser, flag: str, items: list[str]) -> dict:
    """``KEY=VALUE`` items as a dict; a value is JSON, else a bare word."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"{flag} {item!r}: expected KEY=VALUE")
        value = {"None": "null", "True": "true", "False": "false"}.get(value.strip(), value)
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:  # a bare word: a string setting, e.g. input_scaling=percentile
            parsed = value
        out[key.strip()] = parsed
    return out


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
