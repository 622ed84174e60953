"""A matplotlib figure drawn off the main thread, shown as a picture.

Drawing even a small figure with Agg takes 80-110 ms on a slow CPU (mostly text), longer than the
100 ms the event loop may stall while models train. So the artists are changed on the main thread
(cheap), the pixels are rendered in a thread, and the picture is shown when it is ready. While a
render runs, the figure is not touched: a later update waits, and only the newest one is applied.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QLabel, QSizePolicy

Update = Callable[[Any], None]  # gets the matplotlib Figure


def _render(canvas: Any, size_px: tuple[int, int]) -> np.ndarray:
    figure = canvas.figure
    figure.set_size_inches(size_px[0] / figure.dpi, size_px[1] / figure.dpi)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba()).copy()


class BackgroundFigure(QLabel):
    """A QLabel showing ``figure``; :meth:`redraw` updates it without blocking the event loop.

    Parameters
    ----------
    height : int
        Height of the picture in pixels (its width follows the widget's).
    """

    def __init__(self, height: int = 220, dpi: float = 100.0) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        super().__init__()
        self.figure = Figure(dpi=dpi, layout="constrained")
        self._canvas = FigureCanvasAgg(self.figure)
        self._height = int(height)
        self._pending: Update | None = None
        self._worker: Any = None
        self.setMinimumHeight(self._height)
        self.setMinimumWidth(200)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)

    @property
    def busy(self) -> bool:
        """True while a picture is being rendered (or an update waits for it)."""
        return self._worker is not None or self._pending is not None

    def redraw(self, update: Update | None = None) -> None:
        """Apply ``update(figure)`` on this thread and render in the background.

        While a render runs, ``update`` waits and replaces any update waiting before it.
        """
        noop: Update = lambda figure: None  # noqa: E731
        if self._worker is not None:
            self._pending = update or noop
            return
        (update or noop)(self.figure)
        self._start()

    def _start(self) -> None:
        from superqt.utils import create_worker

        size = (max(self.width(), 300), self._height)
        self._worker = create_worker(_render, self._canvas, size, _start_thread=False,
                                     _ignore_errors=True)  # errors: _failed
        self._worker.returned.connect(self._show)
        self._worker.errored.connect(self._failed)
        self._worker.start()

    def _show(self, rgba: np.ndarray) -> None:
        h, w = rgba.shape[:2]
        image = QImage(rgba.data, w, h, 4 * w, QImage.Format.Format_RGBA8888).copy()
        self.setPixmap(QPixmap.fromImage(image))
        self._next()

    def _failed(self, exc: BaseException) -> None:
        self.setText(f"(plot failed: {type(exc).__name__}: {exc})")
        self._next()

    def _next(self) -> None:
        self._worker = None
        if self._pending is not None:
            update, self._pending = self._pending, None
            self.redraw(update)
