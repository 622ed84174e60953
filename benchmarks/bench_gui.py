"""How responsive napari stays while the Segment widget runs.

A 10 ms Qt timer ticks while the Segment widget segments a synthetic micrograph in a real viewer;
the longest gap between ticks is the longest time napari could not repaint or take a click. Reports
it for the run itself (Run until the result arrives), for showing the result the first time (napari
builds new layers) and for a re-run (layers updated in place), with the wall times.

    xvfb-run -a python benchmarks/bench_gui.py [--size 2048] [--mode auto] [--freeze]

It also times one Agg draw of the Train widget's live plot (3 epochs) and of the Density widget's
bar plot: what the event loop would wait per epoch / per re-measure if they were drawn on it (they
are drawn in a thread, ``_widgets/_plot.py``).

Python's full garbage collections of napari's objects pause every thread for 100-250 ms at moments
of the interpreter's choosing; ``--freeze`` moves the objects that exist before the runs out of
them (``gc.freeze()``), which shows the stalls that are the widget's own.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--mode", default="auto")
    parser.add_argument("--freeze", action="store_true", help="gc.freeze() before the runs")
    parser.add_argument("--gc-report", action="store_true", help="list full collections over 20 ms")
    args = parser.parse_args()
    import gc

    slow_gc: list[int] = []
    gc_start: list[float] = [0.0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            gc_start[0] = time.perf_counter()
        elif (ms := 1000 * (time.perf_counter() - gc_start[0])) > 20:
            slow_gc.append(round(ms))

    gc.callbacks.append(on_gc)

    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_emgranules._engine import shutdown_engines
    from napari_emgranules._layers import image_layer_data
    from napari_emgranules._widgets.segment import SegmentWidget
    from napari_emgranules.core.synthetic import synthetic_micrograph

    viewer = napari.Viewer()
    app = QApplication.instance()
    s = synthetic_micrograph((args.size, args.size), 0.8, seed=7)
    data, kwargs, _ = image_layer_data(s.image, "cell", 0.8, {"pixel_size_nm": 0.8})
    viewer.add_image(data, **kwargs)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.mode.value = args.mode
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    marks: dict[str, float] = {}
    show = widget._show

    def timed_show(*a):
        marks["arrived"] = time.perf_counter()
        show(*a)
        marks["shown"] = time.perf_counter()

    widget._show = timed_show

    def run() -> dict[str, float]:
        ticks.clear()
        marks.clear()
        t0 = time.perf_counter()
        widget.run()
        while widget.job.busy:
            app.processEvents()
            time.sleep(0.001)
        for _ in range(20):
            app.processEvents()
            time.sleep(0.005)
        t = np.array(ticks)

        def longest(a: float, b: float) -> float:
            sel = t[(t >= a) & (t <= b)]
            inner = np.diff(sel).max() if len(sel) > 1 else 0.0
            edges = [sel[0] - a, b - sel[-1]] if len(sel) else [b - a]
            return 1000 * max(inner, *edges)

        return {"run_s": marks["arrived"] - t0, "show_s": marks["shown"] - marks["arrived"],
                "stall_run_ms": longest(t0 + 0.02, marks["arrived"]),
                "stall_show_ms": longest(marks["arrived"], marks["shown"] + 0.02)}

    if args.freeze:
        gc.collect()
        gc.freeze()
    timer.start()
    try:
        first = run()
        second = run()
        plots = plot_draw_ms(viewer)
    finally:
        timer.stop()
        shutdown_engines()
        viewer.close()
    print(f"{args.size}x{args.size}, mode {args.mode}{', gc.freeze()' if args.freeze else ''}:")
    for name, r in (("first run (process start, new layers)", first), ("re-run (layers in place)", second)):
        print(f"  {name}: segmentation {r['run_s']:.1f} s, longest stall {r['stall_run_ms']:.0f} ms; "
              f"showing the result {r['show_s'] * 1000:.0f} ms (longest stall {r['stall_show_ms']:.0f} ms)")
    print(f"  garbage collections over 20 ms during both runs: {slow_gc or 'none'}")
    print("  one Agg draw (median of 5): " + ", ".join(f"{k} {v:.0f} ms" for k, v in plots.items()))


def plot_draw_ms(viewer) -> dict[str, float]:
    """Median time of one Agg draw of the Train and Density plots at their shown size."""
    import pandas as pd

    from napari_emgranules._widgets._plot import _render
    from napari_emgranules._widgets.density import DensityWidget
    from napari_emgranules._widgets.train import TrainWidget

    train = TrainWidget(viewer)
    train.history = [{"epoch": e, "loss": 0.01 / e, "val_loss": 0.012 / e, "val_mean_iou": 0.9}
                     for e in (1, 2, 3)]
    train._update_plot(train.figure)
    density = DensityWidget(viewer)
    rows = pd.DataFrame({"letter": list("AIZSN"), "pf": [0.003, 0.04, 0.005, 0.07, 0.05],
                         "vf": [0.001, 0.008, 0.001, 0.014, 0.011]})
    density._measured_rows = lambda: rows
    density._update_plot(density.figure)
    out = {}
    for name, widget in (("train plot", train), ("density plot", density)):
        times = []
        for _ in range(5):
            t = time.perf_counter()
            _render(widget.plot._canvas, (420, 220))
            times.append(1000 * (time.perf_counter() - t))
        out[name] = float(np.median(times))
    return out


if __name__ == "__main__":
    main()
