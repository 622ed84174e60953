"""napari reader: micrographs with their pixel size as the layer scale (napari's own loses it)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .core.io import MICROGRAPH_SUFFIXES

PathOrPaths = str | Sequence[str]


def napari_get_reader(path: PathOrPaths) -> Callable[[PathOrPaths], list] | None:
    """Return :func:`read_micrographs` if every path is a micrograph file we read, else None."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if not paths or any(Path(p).suffix.lower() not in MICROGRAPH_SUFFIXES for p in paths):
        return None  # (a folder is ours only when it is an OME-Zarr store, *.zarr)
    if any(Path(p).is_dir() and Path(p).suffix.lower() != ".zarr" for p in paths):
        return None
    return read_micrographs


def read_micrographs(path: PathOrPaths) -> list[tuple[Any, dict, str]]:
    """Read one or several micrographs into image layers scaled in nm.

    Errors (corrupt, stacks, ...) propagate as :class:`MicrographError` with a message naming the
    file; napari shows it to the user.
    """
    from ._layers import image_layer_data
    from .core.io import read_micrograph

    paths = [path] if isinstance(path, (str, Path)) else list(path)
    layers = []
    for p in paths:
        m = read_micrograph(p)
        meta = {**m.metadata, "path": str(m.path), "pixel_size_nm": m.pixel_size_nm,
                "pixel_size_source": m.pixel_size_source}
        layers.append(image_layer_data(m.data, m.name, m.pixel_size_nm, meta))
    return layers
