"""Rehearsal for fine-tuning: synthetic micrographs mixed into a user's few corrected ones.

Fine-tuning a model on one corrected micrograph teaches it that micrograph: at the Locations
model's 3.2 nm/px a 2048 px micrograph at 0.8 nm/px is a 512 px image, less than one sarcomere,
and the model forgets what it knew about the regions' layout elsewhere. Rehearsal (replay) keeps a
share of every batch on micrographs of the package's generator, with exact truth, at the model's
pixel size, so that the anatomy stays learnt while the user's look is learnt.

The rehearsal micrographs can take the user's look (``look="matched"``): each class's grey levels
are mapped, by quantiles, onto those of the same class in the user's labelled pixels, so the
model sees many layouts in the user's grey levels, not only the one micrograph. Classes the user
did not label keep the generator's own levels, mapped by the image's overall quantiles.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .schema import GRANULES_SCHEMA, LOCATIONS_MITO_SCHEMA, LOCATIONS_SCHEMA, UNLABELLED, ClassSchema

#: ``look`` values of :func:`rehearsal_images`.
REHEARSAL_LOOKS = ("random", "matched")
_QUANTILES = np.linspace(0.0, 1.0, 101)
_MIN_CLASS_PIXELS = 200  # fewer labelled pixels of a class than this: its levels are not matched


def rehearsal_kind(schema: ClassSchema) -> str | None:
    """``"locations"``, ``"locations-mito"`` or ``"granules"`` when the generator makes truth for
    ``schema``, else None."""
    for kind, known in (("locations", LOCATIONS_SCHEMA), ("locations-mito", LOCATIONS_MITO_SCHEMA),
                        ("granules", GRANULES_SCHEMA)):
        if schema.to_dict() == known.to_dict():
            return kind
    return None


def _truth(m, kind: str) -> np.ndarray:
    if kind == "granules":
        return m.granules
    return m.locations_with_mitochondria() if kind == "locations-mito" else m.locations


def class_quantiles(images: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                    n_classes: int) -> dict[int, np.ndarray]:
    """Grey-level quantiles (0, 1, ..., 100 %) of each class's labelled pixels over all images;
    key -1 holds the quantiles of every labelled pixel. Classes with too few pixels are left out."""
    values: dict[int, list[np.ndarray]] = {}
    for img, lab in zip(images, labels, strict=True):
        for c in range(n_classes):
            v = img[lab == c]
            if v.size:
                values.setdefault(c, []).append(v)
    out = {}
    for c, parts in values.items():
        v = np.concatenate(parts)
        if v.size >= _MIN_CLASS_PIXELS:
            out[c] = np.quantile(v, _QUANTILES).astype(np.float32)
    everything = [img[lab != UNLABELLED] for img, lab in zip(images, labels, strict=True)]
    flat = np.concatenate(everything) if everything else np.zeros(0, np.float32)
    if flat.size >= _MIN_CLASS_PIXELS:
        out[-1] = np.quantile(flat, _QUANTILES).astype(np.float32)
    return out


def match_look(image: np.ndarray, labels: np.ndarray, target: dict[int, np.ndarray]) -> np.ndarray:
    """``image`` (unit float) with each class's grey levels mapped onto ``target``'s quantiles.

    Within a class the order of grey levels (the generator's texture) is kept; a class without
    target quantiles is mapped by the whole image's quantiles onto ``target[-1]`` (when given).
    The seams the per-class maps leave at class borders are softened by a one-pixel blur.
    """
    from scipy.ndimage import gaussian_filter

    out = np.array(image, np.float32)
    done = np.zeros(image.shape, bool)
    for c in np.unique(labels):
        q = target.get(int(c))
        if q is None:
            continue
        inside = labels == c
        v = image[inside]
        src = np.quantile(v, _QUANTILES)
        out[inside] = np.interp(v, src, q)
        done |= inside
    if (~done).any() and -1 in target:
        v = image[~done]
        out[~done] = np.interp(v, np.quantile(image, _QUANTILES), target[-1])
    out = gaussian_filter(out, 0.7)
    return np.clip(out, 0.0, 1.0, out=out)


def rehearsal_images(kind: str, pixel_size_nm: float, n: int, side: int, seed: int,
                     scaling: str = "dtype-range", look: dict[int, np.ndarray] | None = None,
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` synthetic micrographs (``side`` px square at ``pixel_size_nm``) with random looks of
    the generator (:func:`~.synthetic.randomised_params`), as (model input, labels) pairs.

    ``scaling`` is the model's input scaling; ``look`` (from :func:`class_quantiles` on the
    user's data, in that scaling) maps each one's grey levels onto the user's.
    """
    from .segment import input_scaler
    from .synthetic import randomised_params, synthetic_micrograph

    out = []
    for i in range(n):
        s = 900_000 + 1000 * int(seed) + i  # apart from the seeds the defaults were trained on
        m = synthetic_micrograph((side, side), pixel_size_nm, seed=s, params=randomised_params(s))
        labels = _truth(m, kind).astype(np.uint16)
        x = input_scaler(m.image, scaling)(m.image)
        if look:
            x = match_look(x, labels, look)
        out.append((np.asarray(x, np.float32), labels))
    return out
