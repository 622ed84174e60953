"""A NEW task on real EM with the command line's defaults: mitochondria in cardiac muscle.

    python benchmarks/new_task_real.py --work runs/newtask                  # CLI defaults, 3 splits
    python benchmarks/new_task_real.py --work runs/newtask --label old8 \\
        --train-args="--steps-per-epoch 8"                                   # any flags, as a labelled run

What a lab does with a task the package does not ship a model for: ``emgranules train --pair IMAGE
MASK ... --model new --schema background,mitochondrion --pixel-size 12.5`` on three of the five
labelled micrographs of ``../shared/data/emnet-cardiac`` (real cardiac muscle EM, 1024x1024 px,
about 12.5 nm/px, mitochondria masks; MIT licence), then segment the other two with the trained
weights and score them (pixel accuracy and mitochondrion IoU, pooled over the two). Three splits
rotate which micrographs train. Each training run is its own process (``emgranules train``), timed
in CPU and wall minutes. Each test micrograph is segmented with one view and with eight symmetric
views (flips and quarter turns averaged).

Each ``--label`` keeps its rows in ``docs/new_task_real.json``; the page shows every label run so
far. A ``--work`` folder that holds a finished training run reuses it as it is.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import run_header, save_figure, write_report  # noqa: E402
from adaptation import CARDIAC, CARDIAC_SPLITS, cardiac_split, score_masks, segmenter, train_cardiac  # noqa: E402

from napari_emgranules.core.models import load_model  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "docs" / "new_task_real.md"


def run_split(split: int, label: str, flags: list[str], work: Path) -> dict[str, Any]:
    pairs = cardiac_split(split)
    if pairs is None:
        raise SystemExit(f"{CARDIAC}: five micrographs with masks expected")
    train, test = pairs
    run = train_cardiac(train, work / f"{label}-s{split}", flags)
    model = load_model(run["weights"])
    scores, shown = score_masks(test, {f"views_{v}": (segmenter(model, "mitochondria", views=v), 1)
                                       for v in (1, 8)})
    return {"_shown": shown, "split": split, "train": [p.stem for p, _ in train],
            "test": [p.stem for p, _ in test],
            "cpu_min": run["cpu_s"] / 60, "wall_min": run["wall_s"] / 60, "epochs": run["epochs"],
            **scores}


def render(shown: dict, label: str, path: Path) -> None:
    """One test micrograph: the mask, and the trained model's labels with one and eight views."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    image, truth, labels, name = shown
    fig = Figure(figsize=(12, 4.4), dpi=70)
    axes = fig.subplots(1, 3)
    for ax, mask, title in ((axes[0], truth, f"{name}: mitochondria mask (truth)"),
                            (axes[1], labels["views_1"], f"{label}: one view"),
                            (axes[2], labels["views_8"], f"{label}: eight views")):
        ax.imshow(image, cmap="gray")
        ax.contour(mask, levels=[0.5], colors="yellow", linewidths=0.7)
        ax.set_title(title)
    save_figure(fig, path)


def markdown(report: dict[str, Any]) -> str:
    lines = ["# A new task on real EM: mitochondria in cardiac muscle", "",
             "<!-- Written by `python benchmarks/new_task_real.py`; do not edit by hand. -->", "",
             "Three of the five labelled micrographs of `../shared/data/emnet-cardiac` (real cardiac "
             "muscle EM, 1024x1024 px at about 12.5 nm/px, MIT licence) train a new two-class task "
             "with `emgranules train --pair IMAGE MASK ... --model new --schema "
             "background,mitochondrion --pixel-size 12.5` and the flags shown; the other two are "
             "segmented with the best weights and scored (pooled). Three splits rotate which "
             "micrographs train. `all background` would score pixel accuracy 0.63 and IoU 0.",
             "", "| run | flags | split (test) | epochs | CPU min | wall min | pixel accuracy "
             "(1 view) | mito IoU (1 view) | pixel accuracy (8 views) | mito IoU (8 views) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, run in report["runs"].items():
        flags = f"`{run['flags']}`" if run["flags"] else "(defaults)"
        for r in run["splits"]:
            lines.append(
                f"| {label} | {flags} | {r['split']} ({', '.join(r['test'])}) | {r['epochs']} | "
                f"{r['cpu_min']:.1f} | {r['wall_min']:.1f} | {r['views_1']['pixel_accuracy']:.3f} | "
                f"{r['views_1']['mitochondrion_iou']:.3f} | {r['views_8']['pixel_accuracy']:.3f} | "
                f"{r['views_8']['mitochondrion_iou']:.3f} |")
        means = [np.mean([r[v][k] for r in run["splits"]]) for v in ("views_1", "views_8")
                 for k in ("pixel_accuracy", "mitochondrion_iou")]
        cells = " | ".join(f"{m:.3f}" for m in means)
        lines.append(f"| {label} | mean of the splits | | | | | {cells} |")
    lines += ["", "Runs (each label's command, machine and date):", ""]
    for label, run in report["runs"].items():
        note = f"; {run['note']}" if run.get("note") else ""
        lines.append(f"- {label}: `{run['command']}` ({run['generated']}, {run['cpus']} CPUs, "
                     f"Python {run['python']}{note})")
    lines += ["", "Each run's labels on the first test micrograph of its first split (yellow: the "
              "mask's or the model's outline):", ""]
    lines += [f"![{label}]({run['picture']})" for label, run in report["runs"].items() if run.get("picture")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", default="defaults", help="name of this run's rows (default: defaults)")
    ap.add_argument("--train-args", default="", metavar="ARGS", help="more emgranules train options")
    ap.add_argument("--splits", default="0,1,2")
    ap.add_argument("--work", type=Path, help="folder for training runs (default: a temporary one)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--page-only", action="store_true", help="rewrite the page from its JSON, train nothing")
    args = ap.parse_args(argv)
    saved = args.out.with_suffix(".json")
    if args.page_only:
        write_report(args.out, (report := json.loads(saved.read_text())), markdown(report))
        return 0
    try:
        splits = [int(s) for s in args.splits.split(",") if s]
        if not splits or any(s not in CARDIAC_SPLITS for s in splits):
            raise ValueError
    except ValueError:
        ap.error(f"--splits {args.splits!r}: comma-separated, each one of {sorted(CARDIAC_SPLITS)}")
    flags = shlex.split(args.train_args)
    header = run_header("new_task_real.py", argv)
    with tempfile.TemporaryDirectory(prefix="new-task-real-") as tmp:
        work = args.work or Path(tmp)
        rows = []
        for split in splits:
            rows.append(run_split(split, args.label, flags, work))
            shown = rows[-1].pop("_shown")
            if len(rows) == 1:
                picture = args.out.with_name(f"{args.out.stem}-{args.label}.png")
                render(shown, args.label, picture)
            print(json.dumps(rows[-1]), flush=True)
    # read now: another label may have been written meanwhile
    report = json.loads(saved.read_text()) if saved.is_file() else {"runs": {}}
    report["runs"][args.label] = {**header, "flags": shlex.join(flags), "splits": rows,
                                  "picture": picture.name}
    write_report(args.out, report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
