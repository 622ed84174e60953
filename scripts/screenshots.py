"""Render the README's screenshots: every dock widget in use on the bundled sample.

Runs the whole loop in a real napari window: open the sample, segment it, correct a tile, review,
export the corrected tiles, train a short run on them, and read the density table. Each step saves
the window (with its docks) to ``docs/screenshots/<n>-<widget>.png``.

    xvfb-run -a -s "-screen 0 1800x1000x24" python scripts/screenshots.py [--out docs/screenshots]

About 3 minutes on 2 CPU cores (the segmentation of the 2048 px sample and a 2-epoch training run).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

PLUGIN = "napari-emgranules"


def wait(app, condition, timeout: float = 600.0, what: str = "") -> None:
    t0 = time.monotonic()
    while not condition():
        app.processEvents()
        time.sleep(0.02)
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"timed out waiting for {what}")
    for _ in range(20):  # let the canvas and docks repaint
        app.processEvents()
        time.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/screenshots", type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_emgranules._engine import shutdown_engines

    viewer = napari.Viewer(title="napari-emgranules")
    viewer.window.resize(1800, 1000)
    app = QApplication.instance()
    work = Path(tempfile.mkdtemp(prefix="emgranules-shots-"))

    def shot(name: str) -> None:
        wait(app, lambda: True)
        path = args.out / f"{name}.png"
        viewer.window.screenshot(str(path), canvas_only=False)
        with Image.open(path) as im:  # 256 colours: a quarter of the size, no visible loss
            im.convert("RGB").quantize(256, dither=Image.Dither.NONE).save(path, optimize=True)
        print("wrote", path)

    def dock(display_name: str):
        _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, display_name, tabify=True)
        return widget

    try:
        viewer.open_sample(PLUGIN, "synthetic-muscle")
        for layer in list(viewer.layers)[1:]:  # the truth layers: keep them out of the way
            viewer.layers.remove(layer)

        # 1. Segment
        segment = dock("1. Segment")
        segment.run()
        wait(app, lambda: not segment.job.busy, what="segmentation")
        shot("1-segment")

        # 2. Review and correct: the user paints a stretch of A band over tile 1 as I band
        locations = viewer.layers["synthetic muscle locations"]
        y, x = np.nonzero(locations.data[:512, 1024:1536] == 1)
        locations.data_setitem((y[:4000], x[:4000] + 1024), 2)
        review = dock("2. Review and correct")
        review._layer_box.value = locations
        review.refresh()
        review.next_uncertain()
        shot("2-review")

        # 3. Export the corrected tiles
        export = dock("3. Export training data")
        export._folder.value = work / "pairs"
        export._mode.value = "all"   # every tile: enough pairs for the short training run below
        export.export()
        wait(app, lambda: not export.busy, what="export")
        shot("3-export")

        # 4. Train a short run on them
        train = dock("4. Train")
        train.kind.value = "granules"
        train.data.value = str(work / "pairs" / "granules")
        train.output.value = work / "run"
        train.epochs.value = 3
        train.steps.value = "4"
        train.crop.value = 256
        train.run()
        wait(app, lambda: not train.job.busy, what="training")
        shot("4-train")

        # 5. Density table, with the I band highlighted
        density = dock("5. Density table")
        density.measure()
        wait(app, lambda: not density.busy and density.measurement is not None, what="density")
        viewer.reset_view()
        density.select_region(2)  # I band
        shot("5-density")

        # 6. Point grid: a grid over the micrograph, a few points reviewed with the keys' actions
        density.select_region(None)
        grid = dock("6. Point grid")
        grid._spacing.value = 100.0
        layer = grid.lay_grid()
        for k in range(6):
            grid.step(1)
            if k % 3 == 1:
                grid.toggle_hit()
            else:
                grid.accept()
        viewer.camera.center = tuple(layer.data_to_world(layer.data[grid._current]))
        viewer.camera.zoom = 2.0
        shot("6-grid")
    finally:
        shutdown_engines()
        viewer.close()


if __name__ == "__main__":
    main()
