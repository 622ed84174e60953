"""Is the epoch the trainer keeps the limit of Locations fine-tuning, or the learning itself?

    python benchmarks/fine_tune_epochs.py                     # both held-out families, 1 micrograph
    python benchmarks/fine_tune_epochs.py --families heldout-grainy --train-args="--lr 2e-4"

A simulated user corrects ``--micrographs`` micrographs (2048 x 2048 at 0.8 nm/px) of a held-out
appearance family fully, as in ``benchmarks/adaptation.py`` (same seeds), and fine-tunes the
bundled Locations model with ``emgranules train --pair ... --keep-epochs`` (the command line's
defaults plus ``--train-args``) in its own process. Then *every* epoch's weights segment the
``--n-test`` test micrographs of the family, so the table shows what the run's validation cannot
see: how the Locations mean IoU (A, I, Z, S, N) on the user's other micrographs moves from epoch
to epoch, against the epoch the trainer kept (by its validation) and against the mean of all the
epochs' weights (weight averaging).

Results go to ``--out`` (markdown, default ``docs/fine_tune_epochs.md``) and ``--json``, rewritten
after each family.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from adaptation import SEED_TEST, SEED_TRAIN, _without_work, cli_train

from napari_emgranules.core.io import atomic_output, write_image, write_labels
from napari_emgranules.core.metrics import confusion_matrix, iou_per_class
from napari_emgranules.core.models import default_model, load_model
from napari_emgranules.core.schema import LOCATIONS_SCHEMA
from napari_emgranules.core.segment import segment_micrograph
from napari_emgranules.core.synthetic import HELDOUT_FAMILIES, family_params, synthetic_micrograph
from napari_emgranules.core.train import epoch_weights_path

ROOT = Path(__file__).resolve().parent.parent
REGIONS = LOCATIONS_SCHEMA.measured_codes  # A I Z S N
LETTERS = [LOCATIONS_SCHEMA.letters[c] for c in REGIONS]


def score(model, tests: list[Any]) -> dict[str, Any]:
    """Locations mean IoU over A I Z S N (pooled confusion) and each class's IoU."""
    cm = np.zeros((LOCATIONS_SCHEMA.n_classes,) * 2, np.int64)
    for t in tests:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seg = segment_micrograph(t.image, t.pixel_size_nm, models={"locations": model})
        cm += confusion_matrix(t.locations, seg.locations, LOCATIONS_SCHEMA.n_classes)
    iou = iou_per_class(cm)
    present = [c for c in REGIONS if cm[c].sum() > 0]
    return {"miou": float(np.nanmean(iou[present])),
            "iou": {LOCATIONS_SCHEMA.letters[c]: float(iou[c]) for c in REGIONS}}


def render(truth: Any, start, kept, path: Path, title: str) -> None:
    """Truth, the start's and the kept weights' Locations, and where each misses the
    intermyofibrillar space S (green: S found, red: S missed, blue: S painted where it is not)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    cmap = ListedColormap([LOCATIONS_SCHEMA.colors()[c] for c in range(LOCATIONS_SCHEMA.n_classes)])
    s_code = next(c for c, letter in LOCATIONS_SCHEMA.letters.items() if letter == "S")
    grey = truth.image.astype(np.float32)
    grey = (grey - grey.min()) / max(float(np.ptp(grey)), 1e-6)
    panels = [("micrograph", grey, "gray"), ("truth", truth.locations, cmap)]
    for name, lab in (("start", start), ("kept", kept)):
        panels.append((f"{name}: Locations", lab, cmap))
        t, p = truth.locations == s_code, lab == s_code
        rgb = np.repeat(grey[..., None] * 0.6, 3, axis=2)
        rgb[t & p], rgb[t & ~p], rgb[~t & p] = (0, 1, 0), (1, 0, 0), (0, 0.4, 1)
        panels.append((f"{name}: S found / missed / false", rgb, None))
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.3))
    for ax, (name, img, cm) in zip(axes, panels, strict=True):
        if cm is None:
            ax.imshow(img[::4, ::4], interpolation="nearest")
        else:
            ax.imshow(img[::4, ::4], cmap=cm, interpolation="nearest",
                      **({} if cm == "gray" else {"vmin": 0, "vmax": LOCATIONS_SCHEMA.n_classes - 1}))
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _locations(model, truth: Any) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return segment_micrograph(truth.image, truth.pixel_size_nm, models={"locations": model}).locations


def averaged(paths: list[Path]):
    """A model whose every weight is the mean of that weight over ``paths``."""
    models = [load_model(p) for p in paths]
    weights = [m.keras_model.get_weights() for m in models]
    models[0].keras_model.set_weights([np.mean(ws, axis=0) for ws in zip(*weights, strict=True)])
    return models[0]


def history(run: Path) -> dict[int, dict[str, float]]:
    with open(run / "history.csv", newline="", encoding="utf-8") as fh:
        return {int(r["epoch"]): {k: float(v) for k, v in r.items() if v not in ("", None)}
                for r in csv.DictReader(fh)}


def run_family(family: str, n_train: int, n_test: int, work: Path, extra: list[str],
               picture: Path | None) -> dict[str, Any]:
    params = family_params(family)
    make = lambda seed: synthetic_micrograph((2048, 2048), 0.8, seed=seed, params=params)  # noqa: E731
    pairs = []
    for i in range(n_train):
        t = make(SEED_TRAIN + i)
        d = work / family / f"m{i}"
        d.mkdir(parents=True, exist_ok=True)
        write_image(d / "image.tif", t.image, pixel_size_nm=0.8)
        write_labels(d / "locations.tif", t.locations)
        pairs.append((d / "image.tif", d / "locations.tif"))
    tests = [make(SEED_TEST + i) for i in range(n_test)]
    run_dir = work / family / "run"
    run = cli_train(pairs, "locations", run_dir, ["--keep-epochs", *extra])
    kept = load_model(run["weights"]).card.provenance.get("best_epoch", 0)
    hist = history(run_dir)
    rows = {"start": score(default_model("locations"), tests)}
    print(f"{family}: start {rows['start']['miou']:.3f}", flush=True)
    epochs = []
    for e in range(1, run["epochs"] + 1):
        r = score(load_model(epoch_weights_path(run_dir, e)), tests)
        r["val"] = hist.get(e, {}).get("val_mean_iou", math.nan)
        epochs.append(r)
        print(f"  epoch {e}: test {r['miou']:.3f}, validation {r['val']:.3f}", flush=True)
    all_paths = [epoch_weights_path(run_dir, e) for e in range(1, run["epochs"] + 1)]
    rows["mean of all epochs' weights"] = score(averaged(all_paths), tests)
    if picture is not None:
        render(tests[0], _locations(default_model("locations"), tests[0]),
               _locations(load_model(run["weights"]), tests[0]), picture,
               f"{family}: a test micrograph, the bundled model (start) and the weights kept "
               f"after fine-tuning on {n_train} corrected micrograph(s)")
    return {"rows": rows, "epochs": epochs, "kept_epoch": int(kept or 0),
            "cpu_min": run["cpu_s"] / 60, "n_epochs": run["epochs"]}


def markdown(report: dict[str, Any]) -> str:
    lines = ["# Fine-tuning Locations epoch by epoch on a held-out look", "",
             f"Written by `{report['command']}` ({report['machine']}; {report['date']}). Do not edit "
             "by hand: rerun the command.", "",
             f"{report['n_train']} fully corrected micrograph(s) of 2048 x 2048 px at 0.8 nm/px per "
             "family (the seeds of `benchmarks/adaptation.py`), fine-tuned with `emgranules train "
             f"--pair ... --keep-epochs {' '.join(report['extra'])}`; every epoch's weights then "
             f"segment the family's first {report['n_test']} test micrographs. *test*: Locations "
             "mean IoU over A, I, Z, S, N on them; *validation*: the run's own `val_mean_iou` "
             "(held-out strip and synthetic micrographs in the user's look), which chooses the "
             "epoch kept (marked **kept**; epoch 0 is the start).", ""]
    for family, fam in report["families"].items():
        kept = fam["kept_epoch"]
        best = max(range(len(fam["epochs"])), key=lambda i: fam["epochs"][i]["miou"]) + 1
        pic = Path(report["out_name"]).stem + f"-{family}.png"
        lines += [f"## {family}", "", f"![{family}]({pic})", "",
                  f"{fam['n_epochs']} epochs, {fam['cpu_min']:.1f} CPU min of training. Kept: epoch "
                  f"{kept}; best on the test micrographs: epoch {best}.", "",
                  "| weights | validation | test mIoU | " + " | ".join(LETTERS) + " |",
                  "|---|---|---|" + "---|" * len(LETTERS)]

        def row(name: str, r: dict[str, Any], val: float = math.nan) -> str:
            v = "" if math.isnan(val) else f"{val:.3f}"
            return (f"| {name} | {v} | {r['miou']:.3f} | "
                    + " | ".join(f"{r['iou'][k]:.3f}" for k in LETTERS) + " |")

        lines.append(row("start (bundled)", fam["rows"]["start"]))
        for e, r in enumerate(fam["epochs"], start=1):
            name = f"epoch {e}" + (" **kept**" if e == kept else "") + (" (best test)" if e == best else "")
            lines.append(row(name, r, r["val"]))
        lines.append(row("mean of all epochs' weights", fam["rows"]["mean of all epochs' weights"]))
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", default=",".join(HELDOUT_FAMILIES))
    ap.add_argument("--micrographs", type=int, default=1, help="corrected micrographs (default 1)")
    ap.add_argument("--n-test", type=int, default=4, help="test micrographs per family (default 4)")
    ap.add_argument("--train-args", default="", help='more `emgranules train` options, e.g. '
                                                    '--train-args="--epochs 20 --patience 100"')
    ap.add_argument("--work", type=Path, help="keep the micrographs and runs here (default: a "
                                              "temporary folder)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "fine_tune_epochs.md")
    ap.add_argument("--json", type=Path, default=ROOT / "docs" / "fine_tune_epochs.json")
    ap.add_argument("--no-pictures", dest="pictures", action="store_false",
                    help="do not draw OUT-<family>.png (a test micrograph, its truth, the start's and "
                         "the kept weights' Locations and where they miss the S class)")
    args = ap.parse_args(argv)
    families = [f for f in args.families.split(",") if f]
    unknown = [f for f in families if f not in HELDOUT_FAMILIES]
    if unknown:
        raise SystemExit(f"--families: {', '.join(unknown)} not held out; choose from "
                         f"{', '.join(HELDOUT_FAMILIES)}")
    extra = shlex.split(args.train_args)
    report = {"command": shlex.join(["python", "benchmarks/fine_tune_epochs.py", *_without_work(argv)]),
              "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, "
                         f"Python {platform.python_version()}",
              "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
              "out_name": args.out.name, "n_train": args.micrographs, "n_test": args.n_test,
              "extra": extra, "families": {}}
    with tempfile.TemporaryDirectory(prefix="emgranules-epochs-") as tmp:
        work = args.work or Path(tmp)
        for family in families:
            t0 = time.perf_counter()
            picture = args.out.with_name(f"{args.out.stem}-{family}.png") if args.pictures else None
            report["families"][family] = run_family(family, args.micrographs, args.n_test, work, extra,
                                                    picture)
            print(f"{family}: {time.perf_counter() - t0:.0f} s", flush=True)
            with atomic_output(args.out) as tmp_out:
                Path(tmp_out).write_text(markdown(report), encoding="utf-8")
            with atomic_output(args.json) as tmp_json:
                Path(tmp_json).write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(f"wrote {args.out} and {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
