"""End-to-end segmentation of one 4096x4096 16-bit micrograph, per mode, beside bare model compute.

    python benchmarks/bench_segment.py                    # timings (about 5 minutes on 2 cores)
    python benchmarks/bench_segment.py --memory           # peak memory per input pixel
    python benchmarks/bench_segment.py --inprocess        # segment_micrograph vs bare passes, per size
    python benchmarks/bench_segment.py --startup          # what a fresh process pays before its first pass
    python benchmarks/bench_segment.py --resample         # labels back: host arg-max vs in the graph
    python benchmarks/bench_segment.py --runtimes         # the same networks: Keras backend vs ONNX Runtime
    python benchmarks/bench_segment.py --write-docs       # also update docs/benchmarks.md

*Bare compute* is the two networks' forward passes on the image already in memory as float32
(``model.predict_logits``: each network over the symmetric views its card asks for, the bundled
Locations model's 8 averaged in the graph; logits out, nothing else). *End to end* is what a user runs:
``emgranules segment FILE --out DIR --mode M`` in-process: read the TIFF, scale, pad or tile, both
networks, labels (argmax) and confidence reduction, stitching, and writing both label TIFFs.
Every measurement is repeated (``--repeat``, after a warm-up that builds the graphs) and runs are
interleaved, so the ratios compare like with like on a noisy machine; the median is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def _markers(key: str) -> tuple[str, str]:
    return f"<!-- bench_segment:{key}:begin -->", f"<!-- bench_segment:{key}:end -->"


def _machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run_timings(size: int, repeat: int, modes: list[str]) -> dict:
    from napari_emgranules.cli import main as cli
    from napari_emgranules.core._backend import backend_name
    from napari_emgranules.core.io import write_image
    from napari_emgranules.core.models import default_model
    from napari_emgranules.core.resample import model_grid_shape, resample
    from napari_emgranules.core.segment import to_unit_float
    from napari_emgranules.core.synthetic import synthetic_micrograph
    from napari_emgranules.core.tiling import pad_to_multiple

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models = [default_model("locations"), default_model("granules")]
    tmp = Path(tempfile.mkdtemp(prefix="emgranules-bench-"))
    image = synthetic_micrograph((size, size), seed=11, dtype="uint16").image
    path = write_image(tmp / "micrograph.tif", image, pixel_size_nm=0.8)
    # each network on the image at its own pixel size (Locations 3.2 nm/px: a quarter of the side)
    inputs = []
    for m in models:
        shape = model_grid_shape(image.shape, 0.8 / m.card.pixel_size_nm)
        grid = resample(to_unit_float(image), shape) if shape != image.shape else to_unit_float(image)
        inputs.append(pad_to_multiple(grid, 128)[0][None, ..., None])

    def bare():
        for m, x in zip(models, inputs, strict=True):
            m.predict_logits(x)

    def e2e(mode):
        return lambda: cli(["segment", str(path), "--out", str(tmp / "out"), "--mode", mode,
                            "--overwrite", "--quiet"])

    jobs = {"bare": bare, **{m: e2e(m) for m in modes}}
    for fn in jobs.values():  # warm-up: graph building and first-call allocation
        fn()
    times: dict[str, list[float]] = {k: [] for k in jobs}
    for _ in range(repeat):
        for name, fn in jobs.items():
            times[name].append(_timed(fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "size": size,
        "repeat": repeat,
        "seconds": med,
        "all_seconds": times,
        "ratio_to_bare": {k: med[k] / med["bare"] for k in med},
        "views": {m.kind: m.views for m in models},
        "machine": _machine(),
        "backend": backend_name(),
    }


def run_inprocess(sizes: list[int], pixel_sizes: list[float], repeat: int, max_model_pixels: int) -> dict:
    """``segment_micrograph`` (whole mode, both models) against the bare forward passes of the two
    networks on inputs already at their own pixel sizes, per micrograph size and pixel size."""
    import numpy as np

    from napari_emgranules.core._backend import backend_name
    from napari_emgranules.core.models import MULTIPLE, default_model
    from napari_emgranules.core.resample import model_grid_shape
    from napari_emgranules.core.segment import segment_micrograph
    from napari_emgranules.core.synthetic import synthetic_micrograph
    from napari_emgranules.core.tiling import round_up

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models = [default_model("locations"), default_model("granules")]
    rows = []
    tile = synthetic_micrograph((2048, 2048), seed=11, dtype="uint16").image
    for size in sizes:
        reps = -(-size // 2048)
        image = np.tile(tile, (reps, reps))[:size, :size]  # a large micrograph without generating one
        for px in pixel_sizes:
            grids = [model_grid_shape((size, size), px / m.card.pixel_size_nm) for m in models]
            if max(g[0] * g[1] for g in grids) > max_model_pixels:
                print(f"{size} px at {px} nm/px: skipped (a model grid over {max_model_pixels} px)")
                continue
            inputs = [np.zeros((1, round_up(g[0], MULTIPLE), round_up(g[1], MULTIPLE), 1), np.float32)
                      for g in grids]

            def bare(inputs=inputs):
                for m, x in zip(models, inputs, strict=True):
                    m.predict_logits(x)

            def e2e(image=image, px=px):
                segment_micrograph(image, px, mode="whole")

            jobs = {"bare": bare, "end_to_end": e2e}
            for fn in jobs.values():
                fn()  # warm-up: graph building for this shape
            times = {k: [] for k in jobs}
            for _ in range(repeat):
                for name, fn in jobs.items():
                    times[name].append(_timed(fn))
            med = {k: statistics.median(v) for k, v in times.items()}
            row = {"size": size, "pixel_size_nm": px, "grids": grids, "seconds": med,
                   "ratio": med["end_to_end"] / med["bare"]}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return {"rows": rows, "repeat": repeat, "backend": backend_name(),
            "views": {m.kind: m.views for m in models}, "machine": _machine()}


_MEMORY_PROBE = r"""
import resource, sys, warnings, numpy as np
warnings.simplefilter("ignore")
from napari_emgranules.core.models import default_model
m = default_model(sys.argv[1])
x = np.zeros((1, int(sys.argv[2]), int(sys.argv[2]), 1), np.float32)
m.predict_labels(x[:, :128, :128])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
m.predict_labels(x)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(before * 1024, after * 1024)
"""


def run_memory(sizes: list[int]) -> dict:
    """Peak RSS growth of one whole-image pass, per input pixel (slope between two sizes)."""
    out = {}
    for kind in ("locations", "granules"):
        peaks = []
        for s in sizes:
            r = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, kind, str(s)],
                               capture_output=True, text=True, check=True)
            before, after = map(int, r.stdout.split()[-2:])
            peaks.append(after)
        slope = (peaks[-1] - peaks[0]) / (sizes[-1] ** 2 - sizes[0] ** 2)
        out[kind] = {"sizes": sizes, "peak_rss_bytes": peaks, "bytes_per_pixel": slope}
        print(json.dumps({kind: out[kind]}))
    return out


def _views_note(views: dict[str, int]) -> str:
    """``Locations 8 views, Granules 1`` as the report says it."""
    return ", ".join(f"{k.capitalize()} {v} view{'s' if v != 1 else ''}" for k, v in views.items())


def _markdown(t: dict | None, mem: dict | None, argv: list[str],
              inproc: dict | None = None) -> tuple[str, str]:
    cmd = "python benchmarks/bench_segment.py " + " ".join(argv)
    key = "inprocess" if inproc else "timings" if t else "memory"
    begin, end = _markers(key)
    lines = [begin, "", f"Command: `{cmd.strip()}`", ""]
    if inproc:
        lines += [
            f"`segment_micrograph(image, pixel_size, mode=\"whole\")` in one process (both models, labels "
            "back at the micrograph's size) against the bare forward passes of the two networks on "
            "inputs already at their own pixel sizes (`predict_logits`: the views each card asks for, "
            f"{_views_note(inproc['views'])}; logits out). "
            f"{inproc['machine']}, Keras backend {inproc['backend']}; median of {inproc['repeat']} "
            "interleaved runs after a warm-up.", "",
            "| micrograph | nm/px | model grids (Locations, Granules) | bare s | end to end s | ratio |",
            "|---|---:|---|---:|---:|---:|"]
        for r in inproc["rows"]:
            g = ", ".join(f"{a}x{b}" for a, b in r["grids"])
            sec = r["seconds"]
            lines.append(f"| {r['size']}x{r['size']} | {r['pixel_size_nm']:g} | {g} | "
                         f"{sec['bare']:.2f} | {sec['end_to_end']:.2f} | {r['ratio']:.2f} |")
        lines.append("")
    if t:
        s, r = t["seconds"], t["ratio_to_bare"]
        lines += [
            f"One {t['size']}x{t['size']} 16-bit micrograph, both models, {t['machine']}, "
            f"Keras backend {t['backend']}; median of {t['repeat']} interleaved runs after a "
            "warm-up.", "",
            "| what | seconds | ratio to bare compute |", "|---|---:|---:|",
            "| bare compute (both networks at their own pixel sizes, image in memory; "
            f"{_views_note(t['views'])}) | "
            f"{s['bare']:.2f} | 1.00 |",
        ]
        for mode in (k for k in s if k != "bare"):
            lines.append(f"| end to end, `--mode {mode}` | {s[mode]:.2f} | {r[mode]:.2f} |")
        lines.append("")
    if mem:
        lines += ["Peak memory growth of one whole-image forward pass (slope of peak RSS between "
                  f"{mem['locations']['sizes'][0]}^2 and {mem['locations']['sizes'][-1]}^2 "
                  "inputs):", "", "| model | bytes per input pixel |", "|---|---:|"]
        lines += [f"| {k} | {v['bytes_per_pixel']:.0f} |" for k, v in mem.items()]
        lines.append("")
    lines.append(end)
    return key, "\n".join(lines)


_STARTUP_CHILD = """
import json, time
t0 = time.perf_counter()
import napari_emgranules
t1 = time.perf_counter()
from napari_emgranules.core._backend import get_keras
get_keras()
t2 = time.perf_counter()
from napari_emgranules.core.models import default_model
models = [default_model(k) for k in ("locations", "granules")]
t3 = time.perf_counter()
import numpy as np
from napari_emgranules.core.segment import segment_micrograph
image = np.random.default_rng(0).integers(20000, 40000, (SIZE, SIZE), dtype=np.uint16)
segment_micrograph(image, 0.8, mode="whole")
t4 = time.perf_counter()
segment_micrograph(image, 0.8, mode="whole")
t5 = time.perf_counter()
print(json.dumps({"package import": t1 - t0, "Keras + backend import": t2 - t1,
                  "both models built and loaded": t3 - t2, "first segmentation": t4 - t3,
                  "second segmentation": t5 - t4}))
"""


def run_startup(size: int, repeat: int) -> dict:
    """Fresh processes: the import, model-loading and first-pass costs before steady work."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    runs = []
    for _ in range(repeat):
        out = subprocess.run([sys.executable, "-c", _STARTUP_CHILD.replace("SIZE", str(size))],
                             capture_output=True, text=True, env=env, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(runs[-1], flush=True)
    return {"size": size, "repeat": repeat, "machine": _machine(),
            "backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
            "seconds": {k: statistics.median(r[k] for r in runs) for k in runs[0]}}


def run_resample(size: int, repeat: int) -> dict:
    """Bringing the Locations scores back to the micrograph's grid: the host's exact arg-max of
    the bilinear upsampling (core.resample) against the same in the Keras graph
    (``keras.ops.image.resize`` + ``argmax``), on the logits of a synthetic micrograph and on
    random logits (every pixel near a class boundary: the host's worst case)."""
    import numpy as np
    from keras import ops

    from napari_emgranules.core.models import default_model
    from napari_emgranules.core.resample import resample, upsample_argmax
    from napari_emgranules.core.segment import input_scaler
    from napari_emgranules.core.synthetic import synthetic_micrograph

    model = default_model("locations")
    image = synthetic_micrograph((size, size), 0.8, seed=3).image
    small = size * 0.8 / model.card.pixel_size_nm
    grid = (int(round(small)),) * 2
    logits = model.predict_logits(resample(input_scaler(image, model.card.input_scaling)(image),
                                           grid)[None])[0]
    noise = np.random.default_rng(0).normal(size=logits.shape).astype(np.float32)

    def graph(s):
        up = ops.image.resize(ops.convert_to_tensor(s[None]), (size, size), interpolation="bilinear")
        return np.asarray(ops.cast(ops.argmax(up, axis=-1), "uint8"))[0]

    rows = {}
    for name, scores in (("synthetic micrograph", logits), ("random logits", noise)):
        graph(scores)  # trace / warm up
        host = [_timed(lambda s=scores: upsample_argmax(s, (size, size))) for _ in range(repeat)]
        ingraph = [_timed(lambda s=scores: graph(s)) for _ in range(repeat)]
        same = float((upsample_argmax(scores, (size, size)) == graph(scores)).mean())
        rows[name] = {"host": statistics.median(host), "graph": statistics.median(ingraph),
                      "agree": same}
        print(name, rows[name], flush=True)
    return {"size": size, "grid": grid, "repeat": repeat, "rows": rows, "machine": _machine(),
            "backend": os.environ.get("KERAS_BACKEND", "tensorflow")}


_IMPORT_CHILD = """
import os, time
t = time.perf_counter()
MODULE
print(time.perf_counter() - t)
"""


def _import_seconds(statement: str, repeat: int) -> float:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    times = [float(subprocess.run([sys.executable, "-c", _IMPORT_CHILD.replace("MODULE", statement)],
                                  capture_output=True, text=True, env=env, check=True
                                  ).stdout.strip().splitlines()[-1]) for _ in range(repeat)]
    return statistics.median(times)


def run_runtimes(size: int, repeat: int) -> dict:
    """The two bundled networks, one view each, on the current Keras backend and exported to ONNX
    (``core.interop.export_onnx``) run by ONNX Runtime on the CPU: import time in fresh processes,
    session / model load, and one forward pass (Granules on a ``size``^2 input at 0.8 nm/px,
    Locations on the same field at 3.2 nm/px), with the labels' agreement."""
    import numpy as np

    from napari_emgranules.core.interop import export_onnx, load_onnx_model
    from napari_emgranules.core.models import default_model

    rng = np.random.default_rng(0)
    sides = {"granules": size, "locations": size // 4}
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind, side in sides.items():
            keras_model = default_model(kind).with_views(1)
            path = export_onnx(keras_model, Path(tmp) / f"{kind}.onnx")
            t = time.perf_counter()
            ort_model = load_onnx_model(path)
            load = time.perf_counter() - t
            x = rng.random((1, side, side, 1), dtype=np.float32)
            keras_model.predict_logits(x), ort_model.predict_logits(x)  # warm-up (tracing, arenas)
            k_t, o_t = [], []
            for _ in range(repeat):  # interleaved
                k_t.append(_timed(lambda m=keras_model, x=x: m.predict_logits(x)))
                o_t.append(_timed(lambda m=ort_model, x=x: m.predict_logits(x)))
            agree = float((keras_model.predict_logits(x).argmax(-1)
                           == ort_model.predict_logits(x).argmax(-1)).mean())
            rows[kind] = {"side": side, "keras": statistics.median(k_t),
                          "onnxruntime": statistics.median(o_t), "session_s": load, "agree": agree}
            print(kind, rows[kind], flush=True)
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    imports = {"keras + " + backend: _import_seconds("import keras", repeat),
               "onnxruntime": _import_seconds("import onnxruntime", repeat)}
    print(imports, flush=True)
    return {"size": size, "repeat": repeat, "rows": rows, "imports": imports, "machine": _machine(),
            "backend": backend}


def _runtimes_markdown(r: dict, argv: list[str]) -> str:
    begin, end = _markers("runtimes")
    lines = [begin, "", f"Command: `python benchmarks/bench_segment.py {' '.join(argv)}`", "",
             f"The bundled networks (one view) on Keras ({r['backend']}) and exported to ONNX run by "
             f"ONNX Runtime on the CPU; {r['machine']}; median of {r['repeat']} interleaved passes "
             "after a warm-up (imports: fresh processes).", "",
             "| network | input | Keras pass (s) | ONNX Runtime pass (s) | ONNX Runtime / Keras "
             "| ONNX session load (s) | labels agreeing |", "|---|---|---:|---:|---:|---:|---:|"]
    for kind, row in r["rows"].items():
        lines.append(f"| {kind} | {row['side']}x{row['side']} | {row['keras']:.2f} | "
                     f"{row['onnxruntime']:.2f} | {row['onnxruntime'] / row['keras']:.1f}x | "
                     f"{row['session_s']:.2f} | {row['agree']:.4f} |")
    lines += ["", "| import in a fresh process | seconds |", "|---|---:|"]
    lines += [f"| `{k}` | {v:.2f} |" for k, v in r["imports"].items()]
    lines += ["", end]
    return "\n".join(lines)


def _resample_markdown(r: dict, argv: list[str]) -> str:
    begin, end = _markers("resample")
    lines = [begin, "", f"Command: `python benchmarks/bench_segment.py {' '.join(argv)}`", "",
             f"Locations scores ({r['grid'][0]}x{r['grid'][1]} x 7 logits at 3.2 nm/px) back to a "
             f"{r['size']}x{r['size']} label map at 0.8 nm/px; {r['machine']}, Keras backend "
             f"{r['backend']}; median of {r['repeat']}.", "",
             "| scores | host, exact arg-max where it can differ (s) | in the graph, resize + arg-max (s) "
             "| labels agreeing |", "|---|---:|---:|---:|"]
    for name, row in r["rows"].items():
        lines.append(f"| {name} | {row['host']:.3f} | {row['graph']:.3f} | {row['agree']:.6f} |")
    lines += ["", end]
    return "\n".join(lines)


def _startup_markdown(st: dict, argv: list[str]) -> str:
    begin, end = _markers("startup")
    sec = st["seconds"]
    steady = sec["second segmentation"]
    before = sum(v for k, v in sec.items() if k != "second segmentation") - steady
    lines = [begin, "", f"Command: `python benchmarks/bench_segment.py {' '.join(argv)}`", "",
             f"A fresh Python process segments one {st['size']}x{st['size']} micrograph twice "
             f"(`mode=\"whole\"`, both bundled models); {st['machine']}, Keras backend "
             f"{st['backend']}; median of {st['repeat']} processes.", "",
             "| step | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in sec.items()]
    lines += ["", f"Before its first micrograph a process pays {before:.1f} s (imports, models, the "
              f"first pass's graph tracing) on top of the {steady:.1f} s a micrograph then costs; "
              "`batch` and the napari model process pay it once per run.", "", end]
    return "\n".join(lines)


def _write_docs(key: str, block: str) -> None:
    begin, end = _markers(key)
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if begin in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        title = {"inprocess": "Segmentation in one process vs the bare forward passes",
                 "timings": "Segmentation: end to end vs bare compute",
                 "memory": "Segmentation: memory per pixel",
                 "startup": "Segmentation: what a fresh process pays first",
                 "resample": "Segmentation: labels back to the micrograph's grid, host or graph",
                 "runtimes": "Segmentation: Keras or ONNX Runtime for the same networks"}[key]
        text = text.rstrip() + f"\n\n## {title}\n\n" + block + "\n"
    DOC.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--modes", default="whole,tiled,seed")
    ap.add_argument("--memory", action="store_true", help="measure memory per pixel instead")
    ap.add_argument("--memory-sizes", default="1024,2048")
    ap.add_argument("--inprocess", action="store_true",
                    help="in-process segment_micrograph vs bare passes over --sizes x --pixel-sizes")
    ap.add_argument("--sizes", default="2048,4096,8192")
    ap.add_argument("--pixel-sizes", default="0.8,1.6")
    ap.add_argument("--max-model-pixels", type=int, default=8192 * 8192,
                    help="skip a case whose model grid is larger (memory of one whole pass)")
    ap.add_argument("--resample", action="store_true",
                    help="the upsampling arg-max on the host vs in the Keras graph (--size)")
    ap.add_argument("--startup", action="store_true",
                    help="fresh processes: imports, model loading and the first pass (--size)")
    ap.add_argument("--runtimes", action="store_true",
                    help="the bundled networks on the Keras backend vs exported to ONNX Runtime (--size)")
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()
    argv = [a for a in sys.argv[1:] if a != "--write-docs"]
    timings = mem = None
    for key, run, markdown in (("resample", run_resample, _resample_markdown),
                               ("startup", run_startup, _startup_markdown),
                               ("runtimes", run_runtimes, _runtimes_markdown)):
        if getattr(args, key):
            block = markdown(run(args.size, args.repeat), argv)
            print(block)
            if args.write_docs:
                _write_docs(key, block)
            return
    if args.inprocess:
        inproc = run_inprocess([int(s) for s in args.sizes.split(",")],
                               [float(p) for p in args.pixel_sizes.split(",")], args.repeat,
                               args.max_model_pixels)
        if args.write_docs:
            _write_docs(*_markdown(None, None, argv, inproc))
        return
    if args.memory:
        mem = run_memory([int(s) for s in args.memory_sizes.split(",")])
    else:
        timings = run_timings(args.size, args.repeat, args.modes.split(","))
        print(json.dumps(timings, indent=1))
    if args.write_docs:
        _write_docs(*_markdown(timings, mem, argv))


if __name__ == "__main__":
    main()
