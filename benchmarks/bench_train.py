"""Training throughput (tiles/s) of both networks at 512 x 512 and 1024 x 1024 crops.

    python benchmarks/bench_train.py                  # about 4 minutes on 2 CPU cores
    python benchmarks/bench_train.py --write-docs     # also update docs/benchmarks.md
    KERAS_BACKEND=jax python benchmarks/bench_train.py --steps 20   # e.g. on a GPU machine

Two figures per network and crop size, measured in one run so they compare as a ratio:

*bare step*: ``keras_model.train_on_batch`` on a fixed batch already in memory (the optimiser
step alone);
*training loop*: :func:`napari_emgranules.core.train.train_iter` on training pairs written to disk
(synthetic 1024 x 1024 tiles with their Locations truth): random crops, flips, contrast and
brightness in NumPy, the step, and the per-epoch checkpoint; validation off. The first epoch
(graph tracing) is discarded; the figure is the second epoch's crops per second.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench_train:throughput:begin -->", "<!-- bench_train:throughput:end -->"


def bare_rate(arch: str, n_classes: int, crop: int, batch: int, steps: int) -> float:
    from napari_emgranules.core._backend import get_keras
    from napari_emgranules.core.models import build_unet

    keras = get_keras()
    net = build_unet(arch, n_classes, seed=1)
    opt = keras.optimizers.Adam(5e-4)
    net.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    opt.build(net.trainable_variables)
    rng = np.random.default_rng(0)
    x = rng.random((batch, crop, crop, 1), dtype=np.float32)
    y = rng.integers(0, n_classes, (batch, crop, crop)).astype(np.int32)
    net.train_on_batch(x, y)  # trace
    t = time.perf_counter()
    for _ in range(steps):
        net.train_on_batch(x, y)
    return steps * batch / (time.perf_counter() - t)


def loop_rate(pairs: Path, kind: str, crop: int, batch: int, steps: int) -> float:
    from napari_emgranules.core.progress import run_to_completion
    from napari_emgranules.core.train import train_iter

    out = Path(tempfile.mkdtemp(prefix="bench-train-run-"))
    result = run_to_completion(train_iter(
        pairs, out, kind=kind, fresh=True, epochs=2, steps_per_epoch=steps, crop=crop,
        batch_size=batch, val_fraction=0.0, early_stopping_patience=None, reduce_lr_patience=None))
    return steps * batch / float(result.history["seconds"].iloc[-1])


def make_pairs(root: Path) -> dict[str, Path]:
    from napari_emgranules.core.dataset import export_training_pairs
    from napari_emgranules.core.schema import GRANULES_SCHEMA, LOCATIONS_SCHEMA
    from napari_emgranules.core.synthetic import synthetic_micrograph

    out = {}
    for kind, schema in (("locations", LOCATIONS_SCHEMA), ("granules", GRANULES_SCHEMA)):
        for seed in range(2):
            s = synthetic_micrograph((2048, 2048), 0.8, seed=seed)
            labels = s.locations if kind == "locations" else s.granules
            export_training_pairs(s.image, labels, root / kind, schema=schema, tile_size=1024,
                                  source=f"synthetic{seed}.tif", made_by="synthetic truth")
        out[kind] = root / kind
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6, help="timed steps per measurement")
    ap.add_argument("--batch", type=int, default=2, help="crops per step")
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    from napari_emgranules.core._backend import backend_name

    root = Path(tempfile.mkdtemp(prefix="bench-train-"))
    pairs = make_pairs(root)
    rows = []
    for kind, arch, n in (("locations", "unet_model7", 7), ("granules", "unet_model", 2)):
        for crop in (512, 1024):
            bare = bare_rate(arch, n, crop, args.batch, args.steps)
            loop = loop_rate(pairs[kind], kind, crop, args.batch, args.steps)
            rows.append((kind, crop, bare, loop))
            print(f"{kind:9s} {crop:4d}x{crop:<4d} batch {args.batch}: bare step {bare:6.2f} tiles/s, "
                  f"training loop {loop:6.2f} tiles/s (loop/bare {loop / bare:.2f})", flush=True)
    if args.write_docs:
        lines = [
            BEGIN,
            f"Command: `python benchmarks/bench_train.py --steps {args.steps} --batch {args.batch}`; "
            f"{os.cpu_count()} CPU cores, {platform.platform()}, Python {platform.python_version()}, "
            f"Keras backend {backend_name()}.",
            "",
            "| model | crop | batch | bare step (tiles/s) | training loop (tiles/s) | loop / bare |",
            "|---|---|---|---|---|---|",
        ]
        lines += [f"| {k} | {c}x{c} | {args.batch} | {b:.2f} | {lo:.2f} | {lo / b:.2f} |"
                  for k, c, b, lo in rows]
        lines.append(END)
        text = DOC.read_text(encoding="utf-8")
        block = "\n".join(lines)
        if BEGIN in text:
            text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
        else:
            text += ("\n## Training throughput\n\nCrops per second through one optimisation step "
                     "(see `benchmarks/bench_train.py` for what each column includes).\n\n"
                     + block + "\n")
        DOC.write_text(text, encoding="utf-8")
        print(f"updated {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
