"""Which smallest granule size (``--min-granule``) to keep, and at which granule probability
(``--granule-threshold``): F1 and false granules per setting.

    python benchmarks/granule_min_size.py                 # writes docs/granule_min_size.md
    python benchmarks/granule_min_size.py --sizes 0,8,12 --conditions in-range --per-condition 1
    python benchmarks/granule_min_size.py --sizes 12 --thresholds 0.5,0.6,0.7,0.8,0.9 \
        --out docs/granule_threshold.md
    python benchmarks/granule_min_size.py --sizes 12 --peaks 0.5,0.7,0.75,0.8,0.85,0.9 \
        --conditions ... --out docs/granule_peak.md

Each condition's micrographs are those of ``benchmarks/accuracy.py`` (same seeds, 4096 x 4096 px),
segmented once with the bundled defaults and no speck removal; every size is then applied to the
same Granules output (objects 8-connected, smaller than a disc of that diameter removed) and
scored: granule object F1 (IoU >= 0.5 matches) and false granules per um^2 (predicted particles
touching no true granule, as in ``accuracy.py``). Also the 1st and 5th percentiles of the true
granules' diameters, and of the false ones'.

With ``--thresholds`` each probability threshold is applied to the same pass's calibrated granule
probability at the micrograph's grid (the confidence where a pixel is labelled granule, one minus
it elsewhere) before the sizes; ``--granule-threshold`` in ``segment`` thresholds on the model's
own grid, which is the same grid for micrographs at the Granules model's 0.8 nm/px.

With ``--peaks`` each granule (8-connected) is then kept only where its most confident pixel
reaches the peak (``--granule-peak`` in ``segment``; 0.5 keeps them all), before the sizes.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from napari_emgranules.core.io import atomic_output
from napari_emgranules.core.metrics import match_objects
from napari_emgranules.core.options import GRANULE_PEAK, MIN_GRANULE_NM
from napari_emgranules.core.segment import keep_peaked_objects, remove_small_objects, segment_micrograph

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy as acc  # noqa: E402  (a sibling benchmark: the same conditions and seeds)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONDITIONS = ("in-range,family-heldout-lowcontrast,family-heldout-grainy,family-soft-focus,"
                      "family-annotated,family-strong-stain")
EIGHT = np.ones((3, 3), bool)


def diameters_nm(mask: np.ndarray, pixel_size_nm: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Equivalent diameters (nm) of the 8-connected objects of ``mask``, their labels and count."""
    lab, n = ndi.label(mask, structure=EIGHT)
    area = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    return 2 * np.sqrt(area / np.pi) * pixel_size_nm, lab, n


def run(conditions: list[str], sizes: list[float], size_px: int, per_condition: int,
        thresholds: list[float] = (0.5,), peaks: list[float] = (0.5,)) -> list[dict]:
    models = {k: acc.get_model(None, k) for k in ("locations", "granules")}
    index = {c.key: (k, c) for k, c in enumerate(acc.CONDITIONS)}
    rows = []
    for key in conditions:
        if key not in index:
            raise SystemExit(f"unknown condition {key!r}; known: {', '.join(index)}")
        k, cond = index[key]
        params = acc.make_params(cond)
        settings = [(th, pk, s) for th in thresholds for pk in peaks for s in sizes]
        tally = {st: np.zeros(4, np.int64) for st in settings}  # tp, n_true, n_pred, n_false
        area_um2, true_d, false_d = 0.0, [], []
        for i in range(per_condition):
            truth = acc.generate(cond, params, size_px, acc.SEED_BASE + k * acc.SEED_STRIDE + i)
            px = truth.pixel_size_nm
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                seg = segment_micrograph(truth.image, px, mode="auto", min_granule_nm=None, granule_peak=None,
                                         locations_model=models["locations"],
                                         granules_model=models["granules"],
                                         confidence=("granules",))
            area_um2 += truth.image.size * (px / 1000.0) ** 2
            true_mask = truth.granules == 1
            true_d.append(diameters_nm(true_mask, px)[0])
            conf = seg.confidence["granules"]
            p_granule = np.where(seg.granules == 1, conf, 1.0 - conf)
            for th in thresholds:
                thresholded = seg.granules == 1 if th == 0.5 else p_granule >= th
                for pk in peaks:
                    raw = thresholded
                    if pk > th:
                        raw = keep_peaked_objects(thresholded.astype(np.uint8), p_granule >= pk) == 1
                    d, lab, n = diameters_nm(raw, px)
                    touches = np.asarray(ndi.maximum(true_mask, lab, np.arange(1, n + 1)), bool) if n \
                        else np.zeros(0, bool)
                    if th == thresholds[0] and pk == peaks[0]:
                        false_d.append(d[~touches])
                    for s in sizes:
                        pred = raw
                        if s > 0:
                            pred = remove_small_objects(pred.astype(np.uint8), s, px) == 1
                        m = match_objects(true_mask, pred, iou_threshold=0.5)
                        tally[th, pk, s] += (m.tp, m.n_true, m.n_pred, int(((d >= s) & ~touches).sum()))
            print(f"{cond.name:>22s} seed {acc.SEED_BASE + k * acc.SEED_STRIDE + i} done", flush=True)
        td, fd = np.concatenate(true_d), np.concatenate(false_d)
        rows.append({
            "condition": cond.name,
            "true_d_p1_p5": np.percentile(td, [1, 5]).round(1).tolist() if td.size else None,
            "false_d_p50_p90": np.percentile(fd, [50, 90]).round(1).tolist() if fd.size else None,
            "by_setting": {st: {"f1": 2 * t[0] / (t[1] + t[2]) if t[1] + t[2] else float("nan"),
                                "false_per_um2": t[3] / area_um2, "n_pred": int(t[2])}
                           for st, t in tally.items()}})
    return rows


def _label(threshold: float, peak: float, size: float, thresholds: list[float], peaks: list[float]) -> str:
    parts = []
    if thresholds != [0.5]:
        parts.append(f"p >= {threshold:g}{' (arg-max)' if threshold == 0.5 else ''}")
    if peaks != [0.5]:
        parts.append((f"peak {peak:g}" + (" (default)" if peak == GRANULE_PEAK else ""))
                     if peak > threshold else "no peak")
    parts.append(f"{size:g} nm{' (default)' if size == MIN_GRANULE_NM else ''}")
    return ", ".join(parts)


def markdown(rows: list[dict], sizes: list[float], command: str, elapsed: float,
             thresholds: list[float] = (0.5,), peaks: list[float] = (0.5,)) -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    thresholds, peaks = list(thresholds), list(peaks)
    settings = [(th, pk, s) for th in thresholds for pk in peaks for s in sizes]
    head = " | ".join(_label(*st, thresholds, peaks) for st in settings)
    what = ["each setting keeps the pixels whose calibrated granule probability reaches the threshold"
            if thresholds != [0.5] else "",
            "keeps a granule (8-connected) only where its most confident pixel reaches the peak "
            "(0.5: all)" if peaks != [0.5] else "",
            "removes 8-connected granules smaller than the size"]
    what = ", then ".join(w for w in what if w)
    title = "# Smallest granule kept"
    if thresholds != [0.5]:
        title += ", and granule probability threshold"
    if peaks != [0.5]:
        title += ", and granule peak"
    out = [title + ": F1 and false granules", "",
           f"Generated by `{command}` on {when} ({elapsed:.0f} s). Do not edit by hand: rerun the "
           "command.", "",
           "The micrographs of `benchmarks/accuracy.py` (same seeds), segmented once by the bundled "
           f"defaults without speck removal or peak; {what}. Cells: granule object F1 / false "
           "granules per um^2 (particles touching no true granule). Glycogen beta particles are "
           "15-40 nm across.", "",
           f"| condition | true diameter p1, p5 (nm) | false diameter p50, p90 (nm) | {head} |",
           "|---|---|---|" + "---|" * len(settings)]
    for r in rows:
        cells = " | ".join(f"{r['by_setting'][st]['f1']:.3f} / {r['by_setting'][st]['false_per_um2']:.2f}"
                           for st in settings)
        fmt = lambda v: ", ".join(f"{x:g}" for x in v) if v else "-"  # noqa: E731
        out.append(f"| {r['condition']} | {fmt(r['true_d_p1_p5'])} | {fmt(r['false_d_p50_p90'])} | "
                   f"{cells} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conditions", default=DEFAULT_CONDITIONS)
    ap.add_argument("--sizes", default="0,8,10,12,14,16,18", help="diameters in nm, comma-separated")
    ap.add_argument("--size", type=int, default=4096, help="micrograph side (px)")
    ap.add_argument("--thresholds", default="0.5",
                    help="granule probability thresholds, comma-separated (0.5 = the arg-max)")
    ap.add_argument("--peaks", default="0.5",
                    help="granule peaks, comma-separated (0.5 = keep every granule)")
    ap.add_argument("--per-condition", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "granule_min_size.md")
    args = ap.parse_args(argv)
    sizes = [float(s) for s in args.sizes.split(",")]
    thresholds = [float(s) for s in args.thresholds.split(",")]
    peaks = [float(s) for s in args.peaks.split(",")]
    if not all(0 < th < 1 for th in thresholds + peaks):
        ap.error(f"--thresholds and --peaks must lie between 0 and 1, got {args.thresholds}, {args.peaks}")
    command = acc.command_line(argv).replace("benchmarks/accuracy.py", "benchmarks/granule_min_size.py")
    t0 = time.perf_counter()
    rows = run(args.conditions.split(","), sizes, args.size, args.per_condition, thresholds, peaks)
    with atomic_output(args.out) as tmp:
        text = markdown(rows, sizes, command, time.perf_counter() - t0, thresholds, peaks)
        Path(tmp).write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
