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
        if Path(p).suffix.lower() == ".zarr":  # a results store: its label images too
            layers += _store_labels(Path(p), m.name, m.pixel_size_nm, m.shape)
    return layers


def _store_labels(path: Path, image: str, pixel_size_nm: float, shape: tuple[int, int]) -> list:
    """Labels layers of an OME-Zarr store's label images (of the micrograph's size), named and
    linked to the micrograph as the Segment widget's results are."""
    import numpy as np

    from ._layers import labels_layer_data
    from .core.omezarr import read_ome_zarr_labels
    from .core.schema import default_schema

    layers = []
    for kind, (array, schema) in read_ome_zarr_labels(path).items():
        if tuple(array.shape) != tuple(shape):
            continue
        data = np.asarray(array)
        if schema is None:
            schema = default_schema("granules" if int(data.max(initial=0)) <= 1 else "locations")
        layers.append(labels_layer_data(data, schema, f"{image} {kind}", pixel_size_nm,
                                        {"emgranules": {"kind": kind, "image": image,
                                                        "model_output": data.copy()}}))
    return layers


#: The patterns other napari plugins register too (napari-rosettasciio: .dm3/.dm4/.mrc;
#: napari-ome-zarr: .zarr), for which napari asks which reader to use unless one is preferred.
SHARED_PATTERNS = ("*.dm3", "*.dm4", "*.mrc", "*.st", "*.zarr")
PLUGIN = "napari-emgranules"


def prefer_this_reader(settings: Any = None, patterns: Sequence[str] = SHARED_PATTERNS) -> dict[str, str]:
    """Make napari open ``patterns`` with this plugin's reader without asking (its persistent
    setting *Preferences > Plugins > File extension readers*); returns the new mapping.

    Only on request (``emgranules prefer-reader``): another plugin the user chose stays unless
    they run this.
    """
    if settings is None:
        from napari.settings import get_settings

        settings = get_settings()
    mapping = {**dict(settings.plugins.extension2reader), **{p: PLUGIN for p in patterns}}
    settings.plugins.extension2reader = mapping
    return mapping
