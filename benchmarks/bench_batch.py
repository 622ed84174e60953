"""Batch throughput and peak memory against the number of micrographs, serial and on Dask.

    python benchmarks/bench_batch.py                         # N = 1, 4, 16 of 1024x1024; serial, processes:2
    python benchmarks/bench_batch.py --size 4096 --counts 1,4
    python benchmarks/bench_batch.py --montage 8192          # one montage segmented by tiles (bounded memory)
    python benchmarks/bench_batch.py --counts 1 --schedulers "" --montage 16384 --montage-format ome-zarr
    python benchmarks/bench_batch.py --write-docs            # also update docs/benchmarks.md
    python benchmarks/bench_batch.py --sweep 0.3,0.5,0.85 --size 4096 --counts 4 --write-docs
                                                             # a threshold sweep vs one threshold

Each configuration runs ``batch_iter`` (the code behind ``emgranules batch``) in a fresh child
process on synthetic 16-bit micrographs listed in a CSV, into an empty output folder, with the
bundled models. Reported per run:

* *wall*: the child process from start to exit (Python and TensorFlow imports, model loading,
  cluster start-up, every micrograph, combined tables);
* *batch*: ``batch_iter`` from its call to its result (model loading and cluster start included);
* *steady*: micrographs per second between the first and the last finished micrograph, i.e.
  without the start-up costs (N >= 4);
* *peak RSS*: the largest summed resident memory of the child and all its descendants (Dask
  nanny and worker processes), sampled every 50 ms with psutil.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench_batch:throughput:begin -->", "<!-- bench_batch:throughput:end -->"


# -------------------------------------------------------------------------------------------------
# child: one batch run, timings as JSON on the last line of stdout
# -------------------------------------------------------------------------------------------------
def child(args: argparse.Namespace) -> None:
    import warnings

    warnings.simplefilter("ignore")
    from napari_emgranules.core.batch import batch_iter

    t0 = time.perf_counter()
    times = []
    thresholds = [float(t) for t in args.thresholds.split(",")] if args.thresholds else None
    gen = batch_iter(args.inputs, args.out, scheduler=args.scheduler or None,
                     memory_budget_bytes=args.budget or None, granule_thresholds=thresholds,
                     measure_kwargs={"section_nm": None} if args.vf == "none" else None,
                     tables=not args.no_tables)
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            result = stop.value
            break
        times.append(time.perf_counter() - t0)
        if event.status == "failed":
            raise SystemExit(event.message)
    print(json.dumps({"batch_s": time.perf_counter() - t0, "events_s": times, "done": len(result.done)}))


# -------------------------------------------------------------------------------------------------
# parent
# -------------------------------------------------------------------------------------------------
def _tree_rss(proc) -> int:
    import psutil

    total = 0
    try:
        family = [proc, *proc.children(recursive=True)]
    except psutil.Error:  # the child has just exited
        return 0
    for p in family:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_child(inputs: Path, out: Path, scheduler: str, budget: int = 0, vf: str = "baskets",
              thresholds: str = "", tables: bool = True) -> dict:
    """Run one batch in a child process; its timings and the peak RSS of its process tree."""
    import psutil

    cmd = [sys.executable, __file__, "--child", "--inputs", str(inputs), "--out", str(out),
           "--scheduler", scheduler, "--budget", str(budget), "--vf", vf, "--thresholds", thresholds]
    cmd += [] if tables else ["--no-tables"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    handle, peak, stop = psutil.Process(proc.pid), [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _tree_rss(handle))
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    stop.set()
    sampler.join()
    if proc.returncode:
        raise RuntimeError(f"child failed ({proc.returncode}):\n{stderr[-3000:]}")
    report = json.loads(stdout.strip().splitlines()[-1])
    report.update(wall_s=time.perf_counter() - t, peak_rss=peak[0])
    return report


def make_inputs(folder: Path, size: int, n: int) -> list[Path]:
    from napari_emgranules.core.io import write_image
    from napari_emgranules.core.synthetic import synthetic_micrograph

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"m{i:03d}.tif"
        if not p.exists():
            write_image(p, synthetic_micrograph((size, size), 0.8, seed=i, dtype="uint16").image,
                        pixel_size_nm=0.8)
        paths.append(p)
    return paths


def _listing(paths: list[Path], target: Path) -> Path:
    target.write_text("path\n" + "".join(f"{p}\n" for p in paths))
    return target


def throughput(size: int, counts: list[int], schedulers: list[str], tmp: Path, vf: str) -> list[dict]:
    paths = make_inputs(tmp / "in", size, max(counts))
    rows = []
    for scheduler in schedulers:
        for n in counts:
            listing = _listing(paths[:n], tmp / f"list{n}.csv")
            out = tmp / f"out-{scheduler.replace(':', '')}-{n}"
            r = run_child(listing, out, scheduler, vf=vf)
            ev = r["events_s"]
            steady = (n - 1) / (ev[-1] - ev[0]) if n >= 4 and ev[-1] > ev[0] else None
            rows.append({"scheduler": scheduler or "serial", "n": n, "wall_s": r["wall_s"],
                         "batch_s": r["batch_s"], "per_s": n / r["batch_s"], "steady_per_s": steady,
                         "peak_rss_mb": r["peak_rss"] / 2**20})
            print(_row(rows[-1]), flush=True)
    return rows


def _as_ome_zarr(tif: Path, target: Path) -> Path:
    """The montage TIFF as an OME-Zarr store (1024 px chunks, a pyramid), written through dask by
    ome-zarr-py without holding the montage in memory."""
    import dask.array as da
    import tifffile
    import zarr
    from ome_zarr.writer import write_image

    image = da.from_array(tifffile.memmap(tif, mode="r"), chunks=(1024, 1024))
    write_image(image, zarr.open_group(str(target), mode="w"), axes="yx", scale={"y": 0.8, "x": 0.8},
                axes_units={"y": "nanometer", "x": "nanometer"}, scale_factors=(2, 4),
                storage_options={"chunks": (1024, 1024)})
    return target


def montage(size: int, tmp: Path, fmt: str = "tif", tables: bool = True) -> dict:
    """One montage through batch with a small memory budget (segmented by tiles): an uncompressed
    TIFF, or the same pixels as an OME-Zarr store (``fmt="ome-zarr"``)."""
    import numpy as np
    import tifffile

    from napari_emgranules.core.synthetic import synthetic_micrograph

    path = tmp / f"montage{size}.tif"
    tile = synthetic_micrograph((2048, 2048), 0.8, seed=1, dtype="uint16").image
    image = tifffile.memmap(path, shape=(size, size), dtype=np.uint16, photometric="minisblack",
                            resolution=(1e7 / 0.8, 1e7 / 0.8), resolutionunit="CENTIMETER")
    for y in range(0, size, 2048):
        for x in range(0, size, 2048):
            image[y:y + 2048, x:x + 2048] = tile[:size - y, :size - x]
    image.flush()
    del image
    if fmt == "ome-zarr":
        path = _as_ome_zarr(path, tmp / f"montage{size}.ome.zarr")
    budget = 2 * 2**30  # 2 GiB: far below what an in-memory pass of the montage needs
    r = run_child(_listing([path], tmp / "montage.csv"), tmp / "out-montage", "", budget, tables=tables)
    return {"size": size, "format": fmt, "tables": tables, "wall_s": r["wall_s"], "batch_s": r["batch_s"],
            "peak_rss_mb": r["peak_rss"] / 2**20, "budget_mb": budget / 2**20,
            "whole_estimate_mb": size * size * 200 / 2**20}


SWEEP_BEGIN, SWEEP_END = "<!-- bench_batch:sweep:begin -->", "<!-- bench_batch:sweep:end -->"


def sweep(size: int, n: int, thresholds: str, repeat: int, tmp: Path, command: str) -> str:
    """A serial batch with one threshold (the arg-max) against one sweeping ``thresholds``,
    interleaved ``repeat`` times; the median batch seconds of each and their ratio."""
    import statistics

    listing = _listing(make_inputs(tmp / "in", size, n), tmp / f"list{n}.csv")
    times: dict[str, list[float]] = {"single": [], "sweep": []}
    for i in range(repeat):
        for name, values in (("single", ""), ("sweep", thresholds)):
            r = run_child(listing, tmp / f"out-{name}-{i}", "", thresholds=values)
            times[name].append(r["batch_s"])
            print(f"{name} run {i + 1}: batch {r['batch_s']:.1f} s", flush=True)
    single, swept = (statistics.median(times[k]) for k in ("single", "sweep"))
    k = len(thresholds.split(","))
    return "\n".join([
        f"Command: `{command}`; {os.cpu_count()} CPU cores, Python {platform.python_version()}, Keras "
        f"backend {os.environ.get('KERAS_BACKEND', 'tensorflow')}; median of {repeat} interleaved runs.",
        "", f"{n} micrographs of {size}x{size} (16-bit synthetic), serial batch, bundled models: the "
        f"label maps and tables of the arg-max alone, against the same plus a density and particle "
        f"table for each of {k} granule thresholds ({thresholds}) from the same forward pass "
        "(`--granule-thresholds`).", "",
        "| run | batch (s) | per micrograph (s) | ratio |", "|---|---:|---:|---:|",
        f"| one threshold (arg-max) | {single:.1f} | {single / n:.2f} | 1.00 |",
        f"| sweep of {k} thresholds | {swept:.1f} | {swept / n:.2f} | {swept / single:.2f} |"])


def _row(r: dict) -> str:
    steady = f"{r['steady_per_s']:.2f}" if r["steady_per_s"] else ""
    return (f"| {r['scheduler']} | {r['n']} | {r['wall_s']:.1f} | {r['batch_s']:.1f} | {r['per_s']:.2f} | "
            f"{steady} | {r['peak_rss_mb']:,.0f} |")


def report(rows: list[dict], size: int, command: str, big: dict | None, vf: str) -> str:
    lines = [f"Command: `{command}`; {os.cpu_count()} CPU cores, {platform.platform()}, Python "
             f"{platform.python_version()}, Keras backend {os.environ.get('KERAS_BACKEND', 'tensorflow')}.",
             "", f"{size}x{size} 16-bit synthetic micrographs, bundled models, `mode=auto` (whole), "
             f"vf {'by baskets' if vf == 'baskets' else 'not measured'}:", "",
             "| scheduler | N | wall (s) | batch (s) | micrographs/s (batch) | micrographs/s (steady) "
             "| peak RSS, all processes (MB) |", "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [_row(r) for r in rows]
    if big:
        what = "OME-Zarr montage (1024 px chunks)" if big["format"] == "ome-zarr" else \
            "uncompressed montage"
        what += "" if big["tables"] else ", label maps only (no tables)"
        lines += ["", f"One {big['size']}x{big['size']} {what}, memory budget "
                  f"{big['budget_mb']:,.0f} MB (segmented by tiles from a memory map): "
                  f"{big['batch_s']:.0f} s, peak RSS {big['peak_rss_mb']:,.0f} MB (a whole-image "
                  f"pass would need about {big['whole_estimate_mb']:,.0f} MB)."]
    return "\n".join(lines)


def write_docs(text: str, begin: str = BEGIN, end: str = END) -> None:
    doc = DOC.read_text()
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if not pattern.search(doc):
        raise SystemExit(f"{DOC}: no {begin} ... {end} section to update")
    DOC.write_text(pattern.sub(lambda _: f"{begin}\n{text}\n{end}", doc))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--counts", default="1,4,16")
    parser.add_argument("--schedulers", default=",processes:2", help="comma list; empty = serial")
    parser.add_argument("--montage", type=int, default=0, metavar="SIZE", help="also one montage by tiles")
    parser.add_argument("--montage-format", default="tif", choices=("tif", "ome-zarr"),
                        help="the montage as an uncompressed TIFF (default) or an OME-Zarr store")
    parser.add_argument("--montage-labels-only", action="store_true",
                        help="the montage's label maps only (segmentation's own peak memory)")
    parser.add_argument("--no-tables", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--vf", default="baskets", choices=("baskets", "none"),
                        help="measure vf by baskets (default, as emgranules batch) or not at all")
    parser.add_argument("--sweep", metavar="P,P,...",
                        help="instead: a serial batch sweeping these granule thresholds against one "
                             "with the arg-max only (N = the first of --counts)")
    parser.add_argument("--repeat", type=int, default=2, help="interleaved repeats (--sweep)")
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--thresholds", default="", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--scheduler", default="", help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    counts = [int(c) for c in args.counts.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="emgranules-bench-batch-"))
    command = "python benchmarks/bench_batch.py " + " ".join(sys.argv[1:])
    if args.sweep:
        text = sweep(args.size, counts[0], args.sweep, args.repeat, tmp, command.strip())
        print(text)
        if args.write_docs:
            write_docs(text, SWEEP_BEGIN, SWEEP_END)
        return
    print("| scheduler | N | wall (s) | batch (s) | micrographs/s | steady | peak RSS (MB) |")
    rows = throughput(args.size, counts, args.schedulers.split(","), tmp, args.vf)
    big = montage(args.montage, tmp, args.montage_format, not args.montage_labels_only) \
        if args.montage else None
    text = report(rows, args.size, command.strip(), big, args.vf)
    print(text)
    if args.write_docs:
        write_docs(text)


if __name__ == "__main__":
    main()
