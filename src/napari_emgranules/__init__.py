"""napari-emgranules: glycogen granules in EM micrographs of skeletal muscle.

Importing this package is cheap: it pulls in neither napari, Qt, Keras nor TensorFlow. The public
functions below load their heavy dependencies on first use.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .core import *  # noqa: F401,F403  (the headless API)
from .core import __all__ as _core_all

__all__ = ["__version__", *_core_all]
