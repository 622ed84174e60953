"""Start labels and the temperature floor, measured: Granules fine-tuned on partial labels.

    python benchmarks/start_labels.py --work DIR     # 3 looks, strokes2 and fixes2, W 0 and 0.1, seeds 0-2
    python benchmarks/start_labels.py --work DIR --looks heldout-lowcontrast --labels fixes2 --seeds 0

Looks: the two held-out families and a nucleus-rich standard look (``nucleus_probability`` 0.9).
Each look has two training micrographs and four test micrographs, 2048 px at 0.8 nm/px, with the
seeds, strokes and corrections of ``benchmarks/adaptation.py`` (``strokes2``: strokes on both;
``fixes2``: the same strokes plus the bundled Granules model's false granules dabbed out and
missed granules painted whole). Each run is ``emgranules train --model granules --random-seed S
--start-labels W --max-minutes 4`` on both micrographs' labels, as a user runs it. The Locations
model stays the bundled default.

Each run is scored on the test micrographs by ``score()`` of ``benchmarks/adaptation.py``:
granule object F1, false granules per um^2, max |pf error| and granule pixels over true ones.
It is scored twice, with the temperature the trainer kept and with the one it fitted on the
held-out strip. On partial labels the trainer keeps the start's temperature where the fit came
out below it; the fitted one shows the trainer before that floor.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from adaptation import SEED_TEST, SEED_TRAIN, _without_work, cli_train, score, write_training_labels

from napari_emgranules.core.models import default_model, load_model
from napari_emgranules.core.synthetic import family_params, synthetic_micrograph

ROOT = Path(__file__).resolve().parent.parent
LOOKS = {"heldout-lowcontrast": ("heldout-lowcontrast", {}),
         "heldout-grainy": ("heldout-grainy", {}),
         "nucleus-rich": ("standard", {"nucleus_probability": 0.9})}
MEASURES = ("granule_f1", "false_per_um2", "max_pf_error", "granule_px_ratio")


def run_look(look: str, labels: list[str], weights: list[float], seeds: list[int], work: Path,
             size: int = 2048, n_test: int = 4) -> dict[str, Any]:
    family, anatomy = LOOKS[look]
    params = dataclasses.replace(family_params(family), **anatomy)

    def make(seed: int):
        return synthetic_micrograph((size, size), 0.8, seed=seed, params=params)

    test = [make(SEED_TEST + i) for i in range(n_test)]
    loc, start = default_model("locations"), default_model("granules")
    rows: dict[str, Any] = {"start": {k: score(test, loc, start)[k] for k in MEASURES}}
    files = write_training_labels([make(SEED_TRAIN + i) for i in range(2)], work / look,
                                  fixes="fixes2" in labels)
    for how in labels:
        name = how.rstrip("0123456789")
        pairs = [(d / "image.tif", d / f"granules_{name}.tif") for d in files]
        for w in weights:
            for seed in seeds:
                run = cli_train(pairs, "granules", work / look / f"{how}-w{w:g}-s{seed}",
                                ["--random-seed", str(seed), "--start-labels", f"{w:g}",
                                 "--max-minutes", "4"])
                model = load_model(run["weights"])
                kept = model.card.temperature
                fitted = model.card.provenance.get("calibration", {}).get("fitted", kept)
                result = {"epochs": run["epochs"], "cpu_min": run["cpu_s"] / 60}
                for which, t in (("kept", kept), ("fitted", fitted)):
                    model.card = replace(model.card, temperature=t)
                    r = score(test, loc, model) if which == "kept" or t != kept else result["kept"]
                    result[which] = {"temperature": t, **{k: r[k] for k in MEASURES}}
                rows[f"{how} W={w:g} seed {seed}"] = result
                print(f"{look} {how} W={w:g} seed {seed}: F1 {result['kept']['granule_f1']:.3f} "
                      f"(fitted T: {result['fitted']['granule_f1']:.3f})", flush=True)
    return rows


def markdown(report: dict[str, Any]) -> str:
    lines = ["# Start labels and the temperature floor (Granules on partial labels)", "",
             f"Command: `{report['command']}`  ", f"Machine: {report['machine']}; {report['date']}.",
             "", "Each cell: seeds in order. T kept: the temperature the trainer keeps (the start's "
             "where the fit on the strip came out below it); T fitted: the one fitted on the strip "
             "(the trainer before the floor).", "",
             "| look | labels | start labels W | T | granule F1 | false granules /um^2 "
             "| max abs pf error | granule px / true |", "|---|---|---|---|---|---|---|---|"]
    for look, rows in report["looks"].items():
        s = rows["start"]
        lines.append(f"| {look} | - | start | - | {s['granule_f1']:.3f} | {s['false_per_um2']:.2f} "
                     f"| {s['max_pf_error']:.3f} | {s['granule_px_ratio']:.2f} |")
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for key, r in rows.items():
            if key != "start":
                how, w, _ = key.split(" ", 2)
                groups.setdefault((how, w[2:]), []).append(r)
        for (how, w), runs in groups.items():
            for which in ("fitted", "kept"):
                cell = [" / ".join(f"{r[which][k]:{f}}" for r in runs)
                        for k, f in zip(MEASURES, (".3f", ".1f", ".3f", ".2f"), strict=True)]
                lines.append(f"| {look} | {how} | {w} | {which} | " + " | ".join(cell) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--looks", default=",".join(LOOKS))
    ap.add_argument("--labels", default="strokes2,fixes2")
    ap.add_argument("--weights", default="0,0.1", help="start-label weights W")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--work", type=Path, required=True, help="folder for micrographs and runs")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "start_labels.md")
    ap.add_argument("--json", type=Path, default=ROOT / "docs" / "start_labels.json")
    args = ap.parse_args(argv)
    looks = [s for s in args.looks.split(",") if s]
    unknown = [s for s in looks if s not in LOOKS]
    labels = [s for s in args.labels.split(",") if s]
    if unknown or any(s not in ("strokes2", "fixes2") for s in labels):
        ap.error(f"--looks from {', '.join(LOOKS)}; --labels from strokes2, fixes2")
    report = {"command": "python benchmarks/start_labels.py " + " ".join(_without_work(
                  sys.argv[1:] if argv is None else argv)),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
              "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "looks": {}}
    for look in looks:
        report["looks"][look] = run_look(look, labels, [float(w) for w in args.weights.split(",")],
                                         [int(s) for s in args.seeds.split(",")], args.work)
        args.out.write_text(markdown(report), encoding="utf-8")
        args.json.write_text(json.dumps(report, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
