"""Does context mirrored beyond a micrograph's edges help the Locations model?

    python benchmarks/edge_context.py --write-docs            # docs/edge_context.md
    python benchmarks/edge_context.py --margins 0,64,128 --conditions angle-0,family-annotated
    python benchmarks/edge_context.py --page-only             # rewrite the page from its JSON

A whole-image pass pads the micrograph only to the network's multiple of 128 px; a tiled pass's
windows at the edge see their halo mirrored. Mirroring a margin beyond the edges shows what an
edge cuts (a strip of intermyofibrillar space, half a band) with context on both sides. This
measures whether that helps, before any such option is offered.

Micrographs: every condition of ``benchmarks/accuracy.py`` (same seeds and generator settings,
``--per-condition`` each, ``--size`` px), and the test micrographs of ``benchmarks/adaptation.py``
(2048 px, seeds 310000 upward, 4 per held-out family). For each margin (px on the Locations
model's 3.2 nm grid) the micrograph is mirrored by that margin beyond each edge (``np.pad``,
reflect), the bundled Locations model segments it (``mode="auto"``) and the labels are cropped
back; the Granules labels are the bundled model's, once per micrograph. Reported per set and
margin: mean IoU over A I Z S N (the classes present in the truth), S's IoU, the mean IoU within
128 px (micrograph grid) of the edges, and the max |pf error| over the regions.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy  # noqa: E402 - sibling modules of benchmarks/
import adaptation  # noqa: E402

from napari_emgranules.core.io import atomic_output  # noqa: E402
from napari_emgranules.core.metrics import confusion_matrix, iou_per_class, region_pixel_fractions  # noqa: E402
from napari_emgranules.core.models import default_model  # noqa: E402
from napari_emgranules.core.schema import LOCATIONS_SCHEMA  # noqa: E402
from napari_emgranules.core.segment import segment_micrograph  # noqa: E402
from napari_emgranules.core.synthetic import HELDOUT_FAMILIES, family_params, synthetic_micrograph  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
REGIONS = list(LOCATIONS_SCHEMA.measured_codes)
LETTERS = LOCATIONS_SCHEMA.letters
EDGE_PX = 128
N_ADAPTATION_TEST = 4


def sets(size: int, per_condition: int, keys: list[str] | None):
    """``(key, name, pixel size, [seeds], make(seed))`` of every micrograph set measured."""
    for k, cond in enumerate(accuracy.CONDITIONS):
        if keys is None or cond.key in keys:
            params = accuracy.make_params(cond)
            seeds = [accuracy.SEED_BASE + k * accuracy.SEED_STRIDE + i for i in range(per_condition)]
            yield (cond.key, cond.name, cond.pixel_size_nm, seeds,
                   lambda seed, c=cond, p=params: accuracy.generate(c, p, size, seed))
    for family in HELDOUT_FAMILIES:
        key = f"adaptation-test-{family}"
        if keys is None or key in keys:
            seeds = [adaptation.SEED_TEST + i for i in range(N_ADAPTATION_TEST)]
            yield (key, f"adaptation test, {family}", 0.8, seeds,
                   lambda seed, f=family: synthetic_micrograph((2048, 2048), 0.8, seed=seed,
                                                               params=family_params(f)))


def summarise(cm: np.ndarray, cm_edge: np.ndarray, pf_errors: list[float]) -> dict:
    def miou(c):
        present = [r for r in REGIONS if c[r].sum() > 0]
        return float(np.nanmean(iou_per_class(c)[present])) if present else math.nan
    return {"miou": miou(cm), "iou": {LETTERS[c]: float(iou_per_class(cm)[c]) for c in REGIONS},
            "edge_miou": miou(cm_edge), "max_pf_error": max(pf_errors) if pf_errors else math.nan}


def measure(truth, pixel_size_nm: float, margins: list[int], locations, granules) -> dict[int, list]:
    """Confusions (whole, near the edges) and |pf errors| of one micrograph per margin."""
    h, w = truth.locations.shape
    yy, xx = np.ogrid[:h, :w]
    edge = np.minimum(np.minimum(yy, h - 1 - yy), np.minimum(xx, w - 1 - xx)) < EDGE_PX
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gran = segment_micrograph(truth.image, pixel_size_nm, granules_model=granules,
                                  kinds=("granules",)).granules
        for m in margins:
            p = round(m * locations.card.pixel_size_nm / pixel_size_nm)
            image = np.pad(truth.image, p, mode="reflect") if p else truth.image
            loc = segment_micrograph(image, pixel_size_nm, locations_model=locations,
                                     kinds=("locations",)).locations[p:p + h, p:p + w]
            pred = region_pixel_fractions(loc, gran)
            errors = [abs(pred[LETTERS[c]] - truth.true_pixel_fractions.get(LETTERS[c], math.nan))
                      for c in REGIONS]
            out[m] = [confusion_matrix(truth.locations, loc, 7),
                      confusion_matrix(truth.locations[edge], loc[edge], 7),
                      [e for e in errors if not math.isnan(e)]]
    return out


def markdown(report: dict) -> str:
    margins = report["margins"]
    rows = report["sets"]
    head = ["set"] + [f"{what} m={m}" for what in ("mIoU", "S", "edge mIoU", "max pf err") for m in margins]
    lines = ["# Context mirrored beyond the edges: does it help the Locations model?", "",
             f"Command: `{report['command']}`  ",
             f"Machine: {report['machine']}; {report['date']}.", "",
             f"Bundled Locations model (8 views), `mode=\"auto\"`; micrographs {report['size']} px for the "
             f"conditions of `benchmarks/accuracy.py` ({report['per_condition']} each, its seeds), "
             "2048 px for "
             "the adaptation benchmark's test micrographs. m = margin mirrored beyond each edge, px on the "
             "model's 3.2 nm grid (m=0: today's whole-image pass). mIoU over A I Z S N; edge mIoU within "
             f"{EDGE_PX} px of the edges (micrograph grid).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows.values():
        cells = [r["name"]]
        for what in ("miou", "S", "edge_miou", "max_pf_error"):
            for m in margins:
                v = r[str(m)]["iou"]["S"] if what == "S" else r[str(m)][what]
                cells.append("-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Means over the accuracy conditions (the adaptation test sets apart):", "",
              "| margin | mean mIoU | mean edge mIoU | mean max pf error | sets better than m=0 (mIoU) |",
              "|---|---|---|---|---|"]
    acc_keys = [k for k in rows if not k.startswith("adaptation-test-")]
    for m in margins:
        vals = [rows[k][str(m)] for k in acc_keys]
        better = sum(rows[k][str(m)]["miou"] > rows[k][str(margins[0])]["miou"] + 1e-4 for k in acc_keys)
        lines.append(f"| {m} | {np.nanmean([v['miou'] for v in vals]):.4f} | "
                     f"{np.nanmean([v['edge_miou'] for v in vals]):.4f} | "
                     f"{np.nanmean([v['max_pf_error'] for v in vals]):.4f} | {better} of {len(vals)} |")
    if report.get("reading"):
        lines += ["", report["reading"]]
    return "\n".join(lines) + "\n"


def write(report: dict, out: Path, json_path: Path) -> None:
    for path, text in ((json_path, json.dumps(report, indent=1)), (out, markdown(report))):
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as tmp:
            tmp.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=2048, help="side of the accuracy conditions' micrographs")
    ap.add_argument("--per-condition", type=int, default=2)
    ap.add_argument("--margins", default="0,128", help="comma-separated, the first is the reference")
    ap.add_argument("--conditions", help="comma-separated keys (accuracy conditions, adaptation-test-FAMILY)")
    ap.add_argument("--write-docs", action="store_true", help="write docs/edge_context.md and .json")
    ap.add_argument("--page-only", action="store_true", help="rewrite the page from docs/edge_context.json")
    args = ap.parse_args(argv)
    docs_md, docs_json = ROOT / "docs" / "edge_context.md", ROOT / "docs" / "edge_context.json"
    if args.page_only:
        write(json.loads(docs_json.read_text(encoding="utf-8")), docs_md, docs_json)
        return 0
    out_md, out_json = ((docs_md, docs_json) if args.write_docs
                        else (ROOT / "runs" / "edge_context.md", ROOT / "runs" / "edge_context.json"))
    margins = [int(m) for m in args.margins.split(",")]
    locations, granules = default_model("locations"), default_model("granules")
    given = argv if argv is not None else sys.argv[1:]
    report = {"command": "python benchmarks/edge_context.py " + " ".join(given),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
                         f"Python {platform.python_version()}",
              "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
              "size": args.size, "per_condition": args.per_condition, "margins": margins, "sets": {}}
    t0 = time.perf_counter()
    keys = args.conditions.split(",") if args.conditions else None
    for key, name, pixel_size_nm, seeds, make in sets(args.size, args.per_condition, keys):
        acc = {m: [np.zeros((7, 7), np.int64), np.zeros((7, 7), np.int64), []] for m in margins}
        for seed in seeds:
            for m, (cm, cm_edge, errors) in measure(make(seed), pixel_size_nm, margins,
                                                    locations, granules).items():
                acc[m][0] += cm
                acc[m][1] += cm_edge
                acc[m][2] += errors
        report["sets"][key] = {"name": name, "seeds": seeds, **{str(m): summarise(*acc[m]) for m in margins}}
        print(f"{key:34s} " + " | ".join(
            f"m{m}: {r['miou']:.3f} S {r['iou']['S']:.2f} edge {r['edge_miou']:.3f} "
            f"pf {r['max_pf_error']:.3f}"
            for m, r in ((m, report["sets"][key][str(m)]) for m in margins))
            + f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
        write(report, out_md, out_json)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
