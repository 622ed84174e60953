"""napari sample data: a synthetic micrograph with its exact ground truth."""

from __future__ import annotations

from ._layers import image_layer_data, labels_layer_data


def sample_micrograph_layers(size: int = 2048) -> list[tuple]:
    """The bundled synthetic sample as an image and its true Locations and Granules layers."""
    from .core.schema import GRANULES_SCHEMA, LOCATIONS_SCHEMA
    from .core.synthetic import sample_micrograph

    s = sample_micrograph(size)
    meta = {"synthetic": True, "seed": s.seed, "pixel_size_nm": s.pixel_size_nm,
            "pixel_size_source": "synthetic"}
    return [
        image_layer_data(s.image, "synthetic muscle", s.pixel_size_nm, meta),
        labels_layer_data(s.locations, LOCATIONS_SCHEMA, "synthetic muscle locations (truth)",
                          s.pixel_size_nm),
        labels_layer_data(s.granules, GRANULES_SCHEMA, "synthetic muscle granules (truth)",
                          s.pixel_size_nm),
    ]


def full_size_sample_layers() -> list[tuple]:
    """The synthetic sample at the usual full size, 4096 x 4096 (a few seconds to make)."""
    return sample_micrograph_layers(4096)
