"""Progress generators: every long core job is a generator that yields progress events and
returns its result (``segment_micrograph_iter``, ``batch_iter``, ``train_iter``, ...); the plain
function of the same name drives it with :func:`run_to_completion`, and the CLI, the widgets and
the model process drive it with their own progress bars through the same call."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any


def run_to_completion(gen: Generator[Any, None, Any],
                      on_event: Callable[[Any], None] | None = None) -> Any:
    """Drive a progress generator to its end and return its result.

    ``on_event`` is called with every yielded event (e.g. to move a progress bar).
    """
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_event is not None:
            on_event(event)
