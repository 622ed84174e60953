"""The one place where Keras is imported.

Every core function that needs Keras calls :func:`get_keras` inside its body, so importing the
package (and napari's start, and every reader) never pays for TensorFlow. The backend is chosen the
Keras way, with the ``KERAS_BACKEND`` environment variable (``tensorflow`` by default; ``jax`` and
``torch`` also work).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import tempfile
from types import ModuleType

logger = logging.getLogger(__name__)

__all__ = ["get_keras", "backend_name", "BackendError"]

_keras: ModuleType | None = None


class BackendError(RuntimeError):
    """Keras or its backend cannot be imported."""


def get_keras() -> ModuleType:
    """Import Keras 3 on first use and return the module.

    Raises
    ------
    BackendError
        If Keras is missing, is older than 3.0, or its backend fails to import.
    """
    global _keras
    if _keras is not None:
        return _keras
    # TensorFlow's C++ start-up chatter is noise for our users; keep real errors.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    with _quiet_native_stderr() as heard:
        try:
            keras = importlib.import_module("keras")
            if backend == "tensorflow":  # the CUDA probe ("failed call to cuInit") happens here
                keras.src.backend.tensorflow.core.tf.config.list_physical_devices()
        except Exception as exc:  # ImportError, or a broken backend install raising anything
            error = exc
        else:
            error = None
    if error is not None:
        said = heard().strip()
        raise BackendError(
            f"cannot import Keras with the {backend!r} backend ({type(error).__name__}: {error}). "
            "Install it with 'pip install keras tensorflow' (or set KERAS_BACKEND=jax/torch "
            "with that package installed)." + (f"\nThe backend said:\n{said}" if said else "")
        ) from error
    major = int(str(getattr(keras, "__version__", "0")).split(".")[0] or 0)
    if major < 3:
        raise BackendError(
            f"Keras {keras.__version__} is installed; napari-emgranules needs Keras 3 "
            "('pip install -U keras')."
        )
    if backend == "tensorflow" and not os.environ.get("EMGRANULES_DEBUG"):
        # TensorFlow's Python-side warnings ("... triggered tf.function retracing", when micrographs
        # of several sizes pass through one model) are for TensorFlow developers, not our users.
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logger.debug("Keras %s with backend %s", keras.__version__, keras.backend.backend())
    _keras = keras
    return keras


@contextlib.contextmanager
def _quiet_native_stderr():
    """Send what native code writes to stderr (file descriptor 2) while the backend starts to a
    temporary file: TensorFlow's absl banner, oneDNN notes and "failed call to cuInit" on machines
    without a GPU read as errors to a biologist. Yields a function returning what was said (for an
    import that fails). ``EMGRANULES_DEBUG=1`` (``--debug``) leaves stderr alone."""
    if os.environ.get("EMGRANULES_DEBUG"):
        yield lambda: ""
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real stderr (e.g. a GUI without a console)
        yield lambda: ""
        return
    said: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lambda: "".join(said)  # read after the block, once stderr is back
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            said.append(sink.read().decode("utf-8", "replace"))
    if said[0].strip():
        logger.debug("the backend said while starting:\n%s", said[0].strip())


def backend_name() -> str:
    """Name of the Keras backend in use (imports Keras)."""
    return get_keras().backend.backend()
