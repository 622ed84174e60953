"""Two runs of ``benchmarks/accuracy.py`` side by side (e.g. the previous defaults and new ones).

    python benchmarks/compare_accuracy.py --before bench-out/accuracy-old.json \
        --after docs/accuracy.json --out docs/generalisation.md
    python benchmarks/compare_accuracy.py --before A.json --after B.json --out page.md \
        --append --title "A second comparison"     # one more section at the end of page.md

For every condition in both reports: Locations mean IoU (and, with ``--classes Z,S``, those
classes' IoU), granule object F1, false granules per um^2 (image / A band) and the largest
per-region pf error, before -> after, with the targets.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path

from napari_emgranules.core.io import atomic_output


def _num(v, digits=3) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _max_pf(cond: dict) -> float | None:
    vals = [v["max_abs"] for v in cond["pf_error"].values() if v["max_abs"] is not None]
    return max(vals) if vals else None


def table(before: dict, after: dict, classes: tuple[str, ...] = ()) -> list[str]:
    b = {c["key"]: c for c in before["conditions"]}
    rows = ["| condition | Locations mean IoU | " + "".join(f"IoU {k} | " for k in classes)
            + "granule F1 | false granules /um^2 (image) | false /um^2 (A band) | max pf error |",
            "|---|---|" + "---|" * len(classes) + "---|---|---|---|"]
    for a in after["conditions"]:
        o = b.get(a["key"])
        if o is None:
            continue

        def pair(get, digits=3, o=o, a=a):
            return f"{_num(get(o), digits)} → **{_num(get(a), digits)}**"

        rows.append("| " + " | ".join([
            a["name"],
            pair(lambda c: c["locations"]["mean_iou"]),
            *(pair(lambda c, k=k: c["locations"]["iou_per_class"].get(k), 2) for k in classes),
            pair(lambda c: c["granules"]["f1"]),
            pair(lambda c: c["granules"].get("false_per_um2"), 2),
            pair(lambda c: c["granules"].get("false_per_um2_a_band"), 2),
            pair(_max_pf, 4)]) + " |")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, required=True)
    ap.add_argument("--after", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--title", default="Default models before and after domain-randomised training")
    ap.add_argument("--note", default="", help="a paragraph put under the title")
    ap.add_argument("--classes", default="", metavar="Z,S",
                    help="also the Locations IoU of these classes (letters, comma-separated)")
    ap.add_argument("--append", action="store_true",
                    help="add the comparison as a section at the end of --out (which must exist)")
    args = ap.parse_args(argv)
    if args.append and not args.out.is_file():
        ap.error(f"--append: {args.out} does not exist yet; make it without --append first")
    before, after = (json.loads(p.read_text()) for p in (args.before, args.after))
    command = "python benchmarks/compare_accuracy.py " + " ".join(map(shlex.quote, argv or sys.argv[1:]))
    lines = [f"{'##' if args.append else '#'} {args.title}", "",
             f"Made by `{command}` from two runs of `benchmarks/accuracy.py`:",
             f"- before: `{before['command']}` ({before['generated']})",
             f"- after: `{after['command']}` ({after['generated']})", ""]
    if args.note:
        lines += [args.note, ""]
    lines += ["Targets: Locations mean IoU >= 0.85, granule F1 >= 0.90, false granules <= 0.5 per "
              "um^2, max pf error <= 0.01.", ""]
    classes = tuple(k.strip() for k in args.classes.split(",") if k.strip())
    lines += table(before, after, classes) + [""]
    text = "\n".join(lines)
    if args.append:
        text = args.out.read_text(encoding="utf-8").rstrip("\n") + "\n\n" + text
    with atomic_output(args.out) as tmp:
        tmp.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
