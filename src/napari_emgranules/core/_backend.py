"""The one place where Keras is imported.

Every core function that needs Keras calls :func:`get_keras` inside its body, so importing the
package (and napari's start, and every reader) never pays for TensorFlow. The backend is chosen the
Keras way, with the ``KERAS_BACKEND`` environment variable (``tensorflow`` by default; ``jax`` and
``torch`` also work).
"""

from __future__ import annotations

import importlib
import logging
import os
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
    try:
        keras = importlib.import_module("keras")
    except Exception as exc:  # ImportError, or a broken backend install raising anything
        raise BackendError(
            f"cannot import Keras with the {backend!r} backend ({type(exc).__name__}: {exc}). "
            "Install it with 'pip install keras tensorflow' (or set KERAS_BACKEND=jax/torch "
            "with that package installed)."
        ) from exc
    major = int(str(getattr(keras, "__version__", "0")).split(".")[0] or 0)
    if major < 3:
        raise BackendError(
            f"Keras {keras.__version__} is installed; napari-emgranules needs Keras 3 "
            "('pip install -U keras')."
        )
    logger.debug("Keras %s with backend %s", keras.__version__, keras.backend.backend())
    _keras = keras
    return keras


def backend_name() -> str:
    """Name of the Keras backend in use (imports Keras)."""
    return get_keras().backend.backend()
