"""One micrograph to its density table, as whole processes: ``emgranules batch`` against a
pipeline written the original tool's way.

    python benchmarks/bench_pipeline.py                  # one 4096x4096 16-bit micrograph, 2 repeats
    python benchmarks/bench_pipeline.py --repeat 3 --write-docs

The original tool's way (its supplement: split the 4096^2 micrograph into 16 tiles of 1024^2 at
0.8 nm/px, PNG files; predict each folder of tiles with each network at 0.8 nm/px, argmax, uint16
PNG masks; then a per-file loop counting granule pixels with ``where`` per region), re-written
here as three processes: ``split``, ``predict`` (both networks, Keras ``predict`` on the tiles,
the bundled weights) and ``density``. Ours is one process: ``emgranules batch IMAGE --out DIR``
(label maps, density and particle tables with vf, manifest). Every process is started fresh, so
Python, TensorFlow and model loading count in both; runs alternate, the median is reported.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench_pipeline:begin -->", "<!-- bench_pipeline:end -->"
TILE = 1024


# -------------------------------------------------------------------------------------------------
# the original tool's way, one step per process
# -------------------------------------------------------------------------------------------------
def split(image_path: str, out_dir: str) -> None:
    """Cut the micrograph into 1024 px tiles, written as 16-bit PNG files."""
    import numpy as np
    import tifffile
    from PIL import Image

    image = tifffile.imread(image_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for r in range(0, image.shape[0], TILE):
        for c in range(0, image.shape[1], TILE):
            tile = np.ascontiguousarray(image[r:r + TILE, c:c + TILE])
            Image.fromarray(tile).save(out / f"tile_r{r // TILE}_c{c // TILE}.png")


def predict(tiles_dir: str, out_dir: str) -> None:
    """Both networks on every tile at the tiles' own 0.8 nm/px, argmax, uint16 PNG masks."""
    import warnings

    warnings.simplefilter("ignore")
    import numpy as np
    from PIL import Image

    from napari_emgranules.core.models import default_model

    files = sorted(Path(tiles_dir).glob("*.png"))
    images = np.stack([np.asarray(Image.open(f), dtype=np.float32) / 65535.0 for f in files])[..., None]
    for kind in ("locations", "granules"):
        net = default_model(kind).keras_model
        probs = net.predict(images, batch_size=2, verbose=0)
        folder = Path(out_dir) / kind
        folder.mkdir(parents=True, exist_ok=True)
        for f, p in zip(files, probs, strict=True):
            Image.fromarray(np.argmax(p, axis=-1).astype(np.uint16)).save(folder / f.name)


def density(masks_dir: str, out_csv: str) -> None:
    """Per tile and region 1..5: region pixels, granule pixels and their ratio (a loop of ``where``)."""
    import numpy as np
    from PIL import Image

    rows = ["file,region,region_px,granule_px,pf"]
    for f in sorted((Path(masks_dir) / "locations").glob("*.png")):
        loc = np.asarray(Image.open(f))
        gra = np.asarray(Image.open(Path(masks_dir) / "granules" / f.name))
        for j in range(1, 6):
            roi = np.where(loc == j)
            n = roi[0].size
            g = int(np.count_nonzero(gra[roi]))
            rows.append(f"{f.name},{j},{n},{g},{g / n if n else float('nan')}")
    Path(out_csv).write_text("\n".join(rows) + "\n")


# -------------------------------------------------------------------------------------------------
# driver
# -------------------------------------------------------------------------------------------------
def _run(args: list[str]) -> float:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    start = time.perf_counter()
    subprocess.run(args, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def original_way(image: Path, work: Path) -> dict[str, float]:
    shutil.rmtree(work, ignore_errors=True)
    me = [sys.executable, __file__]
    return {"split": _run(me + ["--step", "split", str(image), str(work / "tiles")]),
            "predict": _run(me + ["--step", "predict", str(work / "tiles"), str(work / "masks")]),
            "density": _run(me + ["--step", "density", str(work / "masks"), str(work / "density.csv")])}


def our_way(image: Path, work: Path) -> float:
    shutil.rmtree(work, ignore_errors=True)
    return _run([sys.executable, "-m", "napari_emgranules.cli", "batch", str(image), "--out", str(work)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--step", choices=("split", "predict", "density"), help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        {"split": split, "predict": predict, "density": density}[args.step](*args.paths)
        return
    from napari_emgranules.core.io import write_image
    from napari_emgranules.core.synthetic import synthetic_micrograph

    tmp = Path(tempfile.mkdtemp(prefix="emgranules-bench-pipeline-"))
    image = tmp / "cell.tif"
    write_image(image, synthetic_micrograph((args.size, args.size), 0.8, seed=1, dtype="uint16").image,
                pixel_size_nm=0.8)
    theirs, ours = [], []
    for i in range(args.repeat):
        steps = original_way(image, tmp / "original")
        theirs.append(steps)
        ours.append(our_way(image, tmp / "ours"))
        print(f"run {i + 1}: original way {sum(steps.values()):.1f} s "
              f"({', '.join(f'{k} {v:.1f}' for k, v in steps.items())}), emgranules batch {ours[-1]:.1f} s",
              flush=True)
    med = {k: statistics.median(s[k] for s in theirs) for k in theirs[0]}
    total = statistics.median(sum(s.values()) for s in theirs)
    mine = statistics.median(ours)
    command = "python benchmarks/bench_pipeline.py " + " ".join(a for a in sys.argv[1:])
    text = "\n".join([
        f"Command: `{command.strip()}`; {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
        f"Keras backend {os.environ.get('KERAS_BACKEND', 'tensorflow')}; median of {args.repeat} "
        "alternating runs, each step a fresh process.", "",
        f"One {args.size}x{args.size} 16-bit synthetic micrograph at 0.8 nm/px to its density table:", "",
        "| pipeline | seconds | speed-up |", "|---|---:|---:|",
        f"| the original tool's way: split into PNG tiles ({med['split']:.1f} s), predict both networks "
        f"per tile at 0.8 nm/px ({med['predict']:.1f} s), density loop ({med['density']:.1f} s) | "
        f"{total:.1f} | 1.00 |",
        f"| `emgranules batch IMAGE --out DIR` (label maps, density and particle tables with vf) | "
        f"{mine:.1f} | {total / mine:.2f} |"])
    print(text)
    shutil.rmtree(tmp, ignore_errors=True)
    if args.write_docs:
        doc = DOC.read_text()
        pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
        if not pattern.search(doc):
            raise SystemExit(f"{DOC}: no {BEGIN} ... {END} section to update")
        DOC.write_text(pattern.sub(lambda _: f"{BEGIN}\n{text}\n{END}", doc))


if __name__ == "__main__":
    main()
