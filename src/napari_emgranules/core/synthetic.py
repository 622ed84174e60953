"""Synthetic TEM micrographs of longitudinally sectioned skeletal muscle, with exact ground truth.

Every structure has a physical size (micrometres or nanometres) taken from muscle ultrastructure
and is scaled by the pixel size, so the same seed at 0.6 or 1.2 nm/px shows the same cell at
another magnification. The truth is exact by construction: each pixel's Locations code is the
structure drawn there, and the granule mask is the projection of the granules drawn.

What is drawn (see :class:`SyntheticParams` for the ranges and where they come from):

* myofibrils at a random angle, gently wavy, each sarcomere with a dense A band (fine
  longitudinal thick-filament striation), a lighter H zone with a dark M line, a light I band and
  a dark Z disk; neighbouring myofibrils are out of register by a random shift;
* intermyofibrillar spaces (S) with longitudinal sarcoplasmic-reticulum tubules, triads (a
  T tubule between two terminal cisternae) at the A-I junctions, and mitochondria (double
  membrane, cristae) in pairs on either side of the Z line, labelled Z as in the original tool;
  optionally columns of longitudinal mitochondria along the spaces (``mitochondria_columns``);
* a peripheral region (N) between the outermost myofibril and the sarcolemma, with vesicles,
  subsarcolemmal mitochondria (Z) and sometimes a nucleus (envelope, heterochromatin), and
  outside the cell (unclassified, U) resin and a basal lamina; section holes and folds (U);
  lipid droplets (other, O);
* glycogen granules: dark round particles, singly and in clusters, with a density drawn per
  region, some of them caps cut by the section faces (smaller and paler); optionally some of
  them gathered into alpha-particle rosettes (``rosette_fraction``);
* optionally an oblique cut (``oblique_deg``): sarcomeres longer by 1 / cos(tilt), band
  boundaries smeared through the section's thickness, fainter filament stripes;
* stain precipitate (very dark specks and needles that are not granules), section-thickness
  blur, uneven illumination, shot and read noise, varying contrast and brightness.

The result is deterministic for a seed and a parameter set. ``synthetic_micrograph`` of a
4096 x 4096 micrograph takes a few seconds.

Appearance families
-------------------
Besides the anatomy, :class:`SyntheticParams` has appearance fields (grey levels, striation
contrast, filament texture, granule darkness, edge profile and halo, Gaussian or Poisson noise,
correlated grain, scan lines, JPEG compression, burned-in annotations, ribosomes) whose defaults
reproduce the original look exactly: ``SyntheticParams()`` gives the same bytes for every seed,
shape, pixel size and data type as before these fields existed (new random draws come from new
generator streams). :data:`FAMILIES` names parameter sets that look like other preparations and
microscopes; :func:`family_params` returns one. ``"standard"`` is ``SyntheticParams()``, the look
the bundled models were trained on; :data:`TRAINING_FAMILIES` may be used to train or adapt
models. The :data:`HELDOUT_FAMILIES` are reserved for benchmarks of how well models adapt to an
unseen look: they must never be used to train the bundled default models (nor to tune their
training), or the benchmark no longer measures adaptation. The appearance fields never change the
truth: labels and granule masks come from the anatomy fields alone (a family may narrow an
anatomy range, such as the granule diameter, and the truth follows it exactly).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .metrics import region_pixel_fractions
from .schema import LOCATIONS_SCHEMA

__all__ = ["FAMILIES", "HELDOUT_FAMILIES", "TRAINING_FAMILIES", "SyntheticMicrograph",
           "SyntheticParams", "family_params", "randomised_params", "sample_micrograph",
           "synthetic_micrograph"]

UNCLASSIFIED, A_BAND, I_BAND, Z_DISK, S_SPACE, N_REGION, OTHER = range(7)
_MEASURED = "AIZSN"

# Grey levels (0 = dense/dark, 1 = empty/light) before blur, illumination and noise.
_G_A, _G_H, _G_M, _G_I, _G_Z = 0.40, 0.48, 0.30, 0.66, 0.15
_G_S, _G_N, _G_OUT, _G_LIPID = 0.72, 0.76, 0.93, 0.58
_G_MEMBRANE = 0.28
_G_MITO = 0.45  # mitochondrial matrix; cristae 0.15 darker, the inner rim 0.10 lighter
#: Names of the grey levels ``SyntheticParams.grey_levels`` may override, and their defaults.
_DEFAULT_GREYS = {"A": _G_A, "H": _G_H, "M": _G_M, "I": _G_I, "Z": _G_Z, "S": _G_S, "N": _G_N,
                  "outside": _G_OUT, "lipid": _G_LIPID, "membrane": _G_MEMBRANE, "mito": _G_MITO}
_NOISE_MODELS = ("gaussian", "poisson")


def _pair(value: Any, name: str, lo: float = 0.0, hi: float = math.inf) -> tuple[float, float]:
    try:
        a, b = (float(value[0]), float(value[1])) if np.ndim(value) else (float(value),) * 2
    except (TypeError, ValueError, IndexError):
        raise ValueError(f"{name} must be a number or a (low, high) pair, got {value!r}") from None
    if not (math.isfinite(a) and math.isfinite(b) and lo <= a <= b <= hi):
        raise ValueError(f"{name} must satisfy {lo} <= low <= high <= {hi}, got {value!r}")
    return a, b


def _number(value: Any, name: str, lo: float, hi: float, open_low: bool = False) -> float:
    try:
        x = float(value) if isinstance(value, numbers.Real) else math.nan
    except (TypeError, ValueError):
        x = math.nan
    if not (math.isfinite(x) and (lo < x if open_low else lo <= x) and x <= hi):
        low = f"{lo} < value" if open_low else f"{lo} <= value"
        raise ValueError(f"{name} must be a number with {low} <= {hi}, got {value!r}")
    return x


@dataclass(frozen=True)
class SyntheticParams:
    """Ranges the generator draws each micrograph's cell and imaging from.

    A pair ``(low, high)`` is drawn uniformly per micrograph (a single number fixes it);
    probabilities are per micrograph unless said. Lengths are physical, so they scale with the
    pixel size. The defaults follow mammalian skeletal muscle in longitudinal ultrathin sections
    (Peachey 1965; Franzini-Armstrong 1973 for the triad and SR; Marchand et al. 2002 and
    Nielsen et al. 2010 for glycogen sizes and their distribution between subcellular pools).
    """

    #: Angle of the fibre axis to the image rows in degrees; ``None`` draws it from 0-180.
    angle_deg: float | None = None
    #: Myofibril diameter, 0.5-1.5 um (light microscopy and EM of human and rat muscle).
    myofibril_width_um: tuple[float, float] = (0.5, 1.5)
    #: Intermyofibrillar space between myofibrils, 50-300 nm.
    gap_width_um: tuple[float, float] = (0.05, 0.30)
    #: Sarcomere length at rest, 2.2-2.6 um.
    sarcomere_um: tuple[float, float] = (2.2, 2.6)
    #: A band (thick-filament length), ~1.6 um and constant.
    a_band_um: tuple[float, float] = (1.55, 1.65)
    #: H zone (thick filaments without overlap) at these sarcomere lengths, 0.15-0.3 um.
    h_zone_um: tuple[float, float] = (0.15, 0.30)
    #: Z-disk width: 50-100 nm (narrow in fast, wide in slow fibres).
    z_width_nm: tuple[float, float] = (50.0, 100.0)
    #: Apparent spacing of thick filaments in a longitudinal section, ~40 nm.
    filament_spacing_nm: tuple[float, float] = (38.0, 42.0)
    #: Standard deviation of the shift between neighbouring myofibrils' sarcomeres (um).
    misregistration_um: float = 0.08
    #: Amplitude of the slow waviness of the myofibrils (um).
    waviness_um: tuple[float, float] = (0.02, 0.06)
    #: Probability of a mitochondrion on each side of each Z line along a space.
    mitochondria_probability: float = 0.55
    #: Length of a mitochondrion across the fibre, 0.2-1 um (I-band pairs wrapping fibrils).
    mitochondrion_length_um: tuple[float, float] = (0.2, 1.0)
    #: Probability, per sarcomere along each intermyofibrillar space, of a longitudinal
    #: mitochondrion lying in the space (the columns of oxidative, red fibres), 0-1; it is
    #: ``column_mitochondrion_um`` long and widens the space into the fibrils beside it.
    mitochondria_columns: float = 0.0
    #: Length along the fibre and width across it (um) of those longitudinal mitochondria.
    column_mitochondrion_um: tuple[float, float] = (0.8, 2.4)
    column_mitochondrion_width_um: tuple[float, float] = (0.25, 0.7)
    #: Probability of a triad at each A-I junction along a space.
    triad_probability: float = 0.7
    #: Probability that the micrograph shows the cell periphery (region N).
    periphery_probability: float = 0.9
    #: Width of the subsarcolemmal region between the outermost myofibril and sarcolemma (um).
    periphery_width_um: tuple[float, float] = (0.2, 0.8)
    #: Probability of a myonucleus in the periphery (when the periphery shows).
    nucleus_probability: float = 0.35
    #: Probability that the outside of the cell (resin, basal lamina) shows beyond the sarcolemma.
    outside_probability: float = 0.6
    #: Probabilities of a section hole and of a section fold (both unclassified).
    hole_probability: float = 0.15
    fold_probability: float = 0.1
    #: Lipid droplets per um^2 of intermyofibrillar and peripheral space.
    lipid_per_um2: float = 0.3
    #: Glycogen area fraction drawn per region, in the order A, I, Z, S, N: low in the A band,
    #: highest in the intermyofibrillar space, the I band and the periphery.
    granule_fractions: tuple[tuple[float, float], ...] = (
        (0.001, 0.012), (0.02, 0.08), (0.003, 0.02), (0.04, 0.14), (0.02, 0.10))
    #: Diameter of glycogen beta-particles, 15-40 nm (mean ~25 nm).
    granule_diameter_nm: tuple[float, float] = (15.0, 40.0)
    #: Fraction of granules that sit in clusters.
    cluster_fraction: float = 0.3
    #: Section thickness (nm): granules straddling a face show as smaller, paler caps.
    section_thickness_nm: float = 70.0
    #: Probability of stain precipitate (very dark specks and needles, not granules).
    precipitate_probability: float = 0.3
    #: Gaussian blur (sigma, nm) from the section's thickness and the microscope.
    blur_nm: tuple[float, float] = (1.0, 2.5)
    #: Multiplies the shot and read noise.
    noise_scale: float = 1.0
    #: Fraction of the data type's range between the densest and the emptiest grey.
    contrast: tuple[float, float] = (0.55, 0.9)
    #: Strength of uneven illumination (gradient and vignetting) as a fraction of intensity.
    illumination: tuple[float, float] = (0.02, 0.10)

    # -- appearance: none of these changes the truth; the defaults give the original look -------
    #: Grey levels (0 dense/dark, 1 empty/light) overriding the defaults, by name: ``"A"`` band
    #: 0.40, ``"H"`` zone 0.48, ``"M"`` line 0.30, ``"I"`` band 0.66, ``"Z"`` disk 0.15,
    #: intermyofibrillar space ``"S"`` 0.72, periphery ``"N"`` 0.76, ``"outside"`` resin 0.93,
    #: ``"lipid"`` 0.58, ``"membrane"`` 0.28 and the mitochondrial matrix ``"mito"`` 0.45 (cristae
    #: 0.15 darker); each a number or a (low, high) pair drawn per
    #: micrograph. ``None`` (or a name left out) keeps the default.
    grey_levels: Mapping[str, float | tuple[float, float]] | None = None
    #: How strongly the sarcomere's A, H, M, I and Z greys differ: they are spread about the mean
    #: of the A and I greys by this factor (1 = as drawn, < 1 washed out, > 1 stronger), 0-3.
    striation_contrast: tuple[float, float] = (1.0, 1.0)
    #: Multiplies the amplitude of the longitudinal thick-filament striation (1 = default), 0-5.
    filament_texture: tuple[float, float] = (1.0, 1.0)
    #: Grey at a granule's centre, drawn per granule (0 black); 0.06-0.20 by default.
    granule_darkness: tuple[float, float] = (0.06, 0.20)
    #: Chord through the section (nm) at which a granule reaches its full darkness: thinner parts
    #: (the rim, caps cut by a section face) are paler. Larger = softer, paler edges (0-100 nm).
    granule_edge_nm: float = 12.0
    #: Exponent of the edge profile, opacity = clip(chord / granule_edge_nm, 0, 1) ** exponent:
    #: 0.5 by default, smaller = harder edges, larger = softer (0-4).
    granule_edge_exponent: float = 0.5
    #: Strength of a light halo around the granules (as a defocus fringe), as a grey step; 0-1.
    granule_halo: tuple[float, float] = (0.0, 0.0)
    #: Width (Gaussian sigma, nm) of the halo.
    granule_halo_nm: float = 4.0
    #: ``"gaussian"`` (shot and read noise as one normal) or ``"poisson"`` (electron counts at a
    #: dose set by the shot noise, plus Gaussian read noise).
    noise_model: str = "gaussian"
    #: Correlated noise (grain of film or a detector), standard deviation as a fraction of the
    #: grey range, 0-1.
    grain: tuple[float, float] = (0.0, 0.0)
    #: Correlation length of the grain (Gaussian sigma, nm).
    grain_nm: float = 3.0
    #: Line-to-line offsets of a scanned image: standard deviation of each row's grey offset as a
    #: fraction of the grey range, 0-1.
    scan_lines: tuple[float, float] = (0.0, 0.0)
    #: JPEG quality (1-100) of an 8 x 8 block DCT quantisation of the final image; ``None`` for
    #: none.
    jpeg_quality: int | None = None
    #: Probability of burned-in annotations: a scale bar with its label, arrows and letters,
    #: all black or all white. Not granules: the truth under them is unchanged.
    letters_probability: float = 0.0
    #: Ribosomes (small dark dots, not granules) per um^2 of space, periphery and I band.
    ribosome_per_um2: float = 0.0
    #: Ribosome diameter (nm), smaller than the glycogen granules.
    ribosome_diameter_nm: tuple[float, float] = (10.0, 15.0)
    #: Grey at a ribosome's centre, drawn per ribosome (paler than most granules).
    ribosome_darkness: tuple[float, float] = (0.20, 0.35)
    #: Tilt of the fibre axis out of the section plane (degrees, 0-75; 0 = a true longitudinal
    #: section), drawn per micrograph. An oblique cut shows the sarcomere 1 / cos(tilt) times
    #: longer, every band boundary smeared over section thickness x tan(tilt) and the thick
    #: filaments' stripes fainter; the truth is the section's middle plane.
    oblique_deg: tuple[float, float] = (0.0, 0.0)
    #: Share (0-1) of the glycogen particles gathered into alpha-particle rosettes: lobed
    #: clusters of touching beta particles, ``rosette_diameter_nm`` across (all glycogen).
    rosette_fraction: float = 0.0
    #: Diameter of an alpha-particle rosette (nm).
    rosette_diameter_nm: tuple[float, float] = (60.0, 150.0)

    def __post_init__(self) -> None:
        if self.angle_deg is not None and not math.isfinite(float(self.angle_deg)):
            raise ValueError(f"angle_deg must be finite or None, got {self.angle_deg!r}")
        for name in ("myofibril_width_um", "gap_width_um", "sarcomere_um", "a_band_um", "h_zone_um",
                     "z_width_nm", "filament_spacing_nm", "waviness_um", "mitochondrion_length_um",
                     "periphery_width_um", "granule_diameter_nm", "blur_nm", "illumination"):
            _pair(getattr(self, name), name)
        _pair(self.contrast, "contrast", 0.01, 1.0)
        for name in ("mitochondria_probability", "triad_probability", "periphery_probability",
                     "nucleus_probability", "outside_probability", "hole_probability",
                     "fold_probability", "cluster_fraction", "precipitate_probability"):
            _pair(getattr(self, name), name, 0.0, 1.0)
        for name in ("misregistration_um", "lipid_per_um2", "noise_scale", "section_thickness_nm"):
            _pair(getattr(self, name), name)
        if len(self.granule_fractions) != 5:
            raise ValueError("granule_fractions needs five (low, high) pairs, for A, I, Z, S, N")
        for letter, pair in zip(_MEASURED, self.granule_fractions, strict=True):
            _pair(pair, f"granule_fractions[{letter}]", 0.0, 0.5)
        if self.a_band_um[1] >= self.sarcomere_um[0]:
            raise ValueError("a_band_um must be shorter than sarcomere_um")
        _pair(self.oblique_deg, "oblique_deg", 0.0, 75.0)
        _number(self.rosette_fraction, "rosette_fraction", 0.0, 1.0)
        _number(self.mitochondria_columns, "mitochondria_columns", 0.0, 1.0)
        _pair(self.column_mitochondrion_um, "column_mitochondrion_um", 0.1, 10.0)
        _pair(self.column_mitochondrion_width_um, "column_mitochondrion_width_um", 0.05, 2.0)
        _pair(self.rosette_diameter_nm, "rosette_diameter_nm", 20.0, 500.0)
        self._check_appearance()

    def _check_appearance(self) -> None:
        if self.grey_levels is not None:
            if not isinstance(self.grey_levels, Mapping):
                raise ValueError("grey_levels must be None or a mapping of names to greys, got "
                                 f"{self.grey_levels!r}")
            unknown = sorted(set(map(str, self.grey_levels)) - set(_DEFAULT_GREYS))
            if unknown:
                raise ValueError(f"grey_levels has unknown names {unknown}; "
                                 f"the names are {', '.join(_DEFAULT_GREYS)}")
            for k, v in self.grey_levels.items():
                _pair(v, f"grey_levels[{k!r}]", 0.0, 1.0)
            # A private copy: the caller's dict may change later.
            object.__setattr__(self, "grey_levels", dict(self.grey_levels))
        for name, hi in (("striation_contrast", 3.0), ("filament_texture", 5.0),
                         ("granule_darkness", 1.0), ("granule_halo", 1.0), ("grain", 1.0),
                         ("scan_lines", 1.0), ("ribosome_darkness", 1.0)):
            _pair(getattr(self, name), name, 0.0, hi)
        for name, hi in (("granule_edge_nm", 100.0), ("granule_edge_exponent", 4.0),
                         ("granule_halo_nm", 50.0), ("grain_nm", 50.0)):
            _number(getattr(self, name), name, 0.0, hi, open_low=True)
        if self.noise_model not in _NOISE_MODELS:
            raise ValueError(f"noise_model must be one of {_NOISE_MODELS}, got {self.noise_model!r}")
        q = self.jpeg_quality
        if q is not None and (isinstance(q, bool) or not isinstance(q, numbers.Integral)
                              or not 1 <= q <= 100):
            raise ValueError(f"jpeg_quality must be None or an integer 1-100, got {q!r}")
        _number(self.letters_probability, "letters_probability", 0.0, 1.0)
        _number(self.ribosome_per_um2, "ribosome_per_um2", 0.0, 5000.0)
        _pair(self.ribosome_diameter_nm, "ribosome_diameter_nm", 1.0, 100.0)

    def __hash__(self) -> int:  # grey_levels is a dict: hash its items
        return hash(tuple(tuple(sorted(v.items())) if isinstance(v, dict) else v
                          for v in (getattr(self, f.name) for f in fields(self))))

    def greys(self) -> dict[str, float | tuple[float, float]]:
        """The grey level of each structure: the defaults updated by ``grey_levels``."""
        return {**_DEFAULT_GREYS, **(self.grey_levels or {})}


@dataclass
class SyntheticMicrograph:
    """A synthetic micrograph and its exact ground truth (arrays share one 2-D shape).

    ``image`` is EM-like (dark = dense), uint8 or uint16; ``locations`` holds uint8 codes of the
    Locations schema (0 U, 1 A, 2 I, 3 Z, 4 S, 5 N, 6 O); ``granules`` is uint8 with 1 = granule;
    ``true_pixel_fractions`` maps each measured region letter to granule px / region px (NaN if
    the region is absent); ``drawn`` records the values drawn for this cell (angle, sarcomere
    length, target granule fractions, noise, ...); ``mitochondria`` marks the mitochondria among
    the Z pixels (see :meth:`locations_with_mitochondria`).
    """

    image: np.ndarray
    locations: np.ndarray
    granules: np.ndarray
    pixel_size_nm: float
    true_pixel_fractions: dict[str, float]
    seed: int
    drawn: dict[str, Any] = field(default_factory=dict)
    mitochondria: np.ndarray | None = None

    def locations_with_mitochondria(self) -> np.ndarray:
        """``locations`` in :data:`~.schema.LOCATIONS_MITO_SCHEMA`: the mitochondria (code 3
        here, with the Z disk) as code 7."""
        out = self.locations.copy()
        if self.mitochondria is not None:
            out[self.mitochondria] = 7
        return out


def synthetic_micrograph(shape: tuple[int, int] = (4096, 4096), pixel_size_nm: float = 0.8,
                         seed: int = 0, dtype: str | np.dtype = "uint16",
                         params: SyntheticParams | None = None) -> SyntheticMicrograph:
    """Generate a synthetic longitudinal-section micrograph of skeletal muscle.

    Parameters
    ----------
    shape : (rows, cols)
        Image size in pixels.
    pixel_size_nm : float
        Pixel size; all structures have fixed physical sizes (a sarcomere is 2.2-2.6 um).
    seed : int
        Seed of the random generator; the same arguments give identical arrays.
    dtype : ``"uint16"`` or ``"uint8"``
        Data type of the image.
    params : SyntheticParams, optional
        Ranges of the cell and imaging parameters (defaults: :class:`SyntheticParams`).
    """
    if len(shape) != 2 or min(int(shape[0]), int(shape[1])) < 1:
        raise ValueError(f"shape must be two positive integers, got {shape!r}")
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.uint8), np.dtype(np.uint16)):
        raise ValueError(f"dtype must be uint8 or uint16, got {dt}")
    ps = float(pixel_size_nm)
    if not (math.isfinite(ps) and ps > 0):
        raise ValueError(f"pixel_size_nm must be a positive number, got {pixel_size_nm!r}")
    p = SyntheticParams() if params is None else params
    if not isinstance(p, SyntheticParams):
        raise TypeError(f"params must be a SyntheticParams, got {type(params).__name__}")
    cell = _Cell(int(seed), (int(shape[0]), int(shape[1])), 1000.0 / ps, p)
    cell.myofibrils()
    cell.periphery()
    cell.intermyofibrillar()
    cell.artefacts()
    granules = cell.granules()
    cell.ribosomes(granules)
    cell.precipitate()
    image = cell.imaging(dt)
    fractions = region_pixel_fractions(cell.loc, granules, LOCATIONS_SCHEMA)
    return SyntheticMicrograph(image, cell.loc, granules, ps, fractions, int(seed), cell.drawn,
                               cell.mito & (cell.loc == Z_DISK))


def sample_micrograph(size: int = 2048) -> SyntheticMicrograph:
    """The bundled sample: ``size`` x ``size`` px (2048 or the full 4096) at 0.8 nm/px, uint16.

    Seed 2024 shows every measured region at both sizes.
    """
    if size not in (2048, 4096):
        raise ValueError(f"the sample is 2048 or 4096 px on a side, not {size!r}")
    return synthetic_micrograph((size, size), 0.8, seed=2024, dtype="uint16")


def _draw(rng: np.random.Generator, value: Any) -> float:
    lo, hi = _pair(value, "range")
    return lo if lo == hi else float(rng.uniform(lo, hi))


# Block letters and digits from line segments on a 4 x 6 grid (y down), as polylines.
_FONT: dict[str, tuple[tuple[tuple[int, int], ...], ...]] = {
    "A": (((0, 6), (0, 2), (2, 0), (4, 2), (4, 6)), ((0, 3), (4, 3))),
    "E": (((4, 0), (0, 0), (0, 6), (4, 6)), ((0, 3), (3, 3))),
    "G": (((4, 1), (3, 0), (1, 0), (0, 1), (0, 5), (1, 6), (3, 6), (4, 5), (4, 3), (2, 3)),),
    "H": (((0, 0), (0, 6)), ((4, 0), (4, 6)), ((0, 3), (4, 3))),
    "I": (((1, 0), (3, 0)), ((2, 0), (2, 6)), ((1, 6), (3, 6))),
    "K": (((0, 0), (0, 6)), ((4, 0), (0, 4)), ((1, 3), (4, 6))),
    "L": (((0, 0), (0, 6), (4, 6)),),
    "M": (((0, 6), (0, 0), (2, 3), (4, 0), (4, 6)),),
    "N": (((0, 6), (0, 0), (4, 6), (4, 0)),),
    "S": (((4, 1), (3, 0), (1, 0), (0, 1), (0, 2), (1, 3), (3, 3), (4, 4), (4, 5), (3, 6),
           (1, 6), (0, 5)),),
    "T": (((0, 0), (4, 0)), ((2, 0), (2, 6))),
    "V": (((0, 0), (2, 6), (4, 0)),),
    "X": (((0, 0), (4, 6)), ((4, 0), (0, 6))),
    "Z": (((0, 0), (4, 0), (0, 6), (4, 6)),),
    "0": (((1, 0), (3, 0), (4, 1), (4, 5), (3, 6), (1, 6), (0, 5), (0, 1), (1, 0)),),
    "1": (((1, 1), (2, 0), (2, 6)), ((1, 6), (3, 6))),
    "2": (((0, 1), (1, 0), (3, 0), (4, 1), (4, 2), (0, 6), (4, 6)),),
    "3": (((0, 0), (4, 0), (2, 2), (3, 2), (4, 3), (4, 5), (3, 6), (1, 6), (0, 5)),),
    "4": (((3, 6), (3, 0), (0, 4), (4, 4)),),
    "5": (((4, 0), (0, 0), (0, 3), (3, 3), (4, 4), (4, 5), (3, 6), (0, 6)),),
    "6": (((3, 0), (1, 0), (0, 1), (0, 5), (1, 6), (3, 6), (4, 5), (4, 4), (3, 3), (0, 3)),),
    "7": (((0, 0), (4, 0), (1, 6)),),
    "8": (((1, 3), (0, 2), (0, 1), (1, 0), (3, 0), (4, 1), (4, 2), (3, 3), (1, 3), (0, 4),
           (0, 5), (1, 6), (3, 6), (4, 5), (4, 4), (3, 3)),),
    "9": (((4, 3), (1, 3), (0, 2), (0, 1), (1, 0), (3, 0), (4, 1), (4, 5), (3, 6), (1, 6)),),
    "n": (((0, 2), (0, 6)), ((0, 3), (1, 2), (3, 2), (4, 3), (4, 6))),
    "m": (((0, 2), (0, 6)), ((0, 3), (1, 2), (2, 3), (2, 6)), ((2, 3), (3, 2), (4, 3), (4, 6))),
    "u": (((0, 2), (0, 8)), ((0, 5), (1, 6), (3, 6), (4, 5)), ((4, 2), (4, 6))),
    " ": (),
}


def _segment(ink: np.ndarray, p0: tuple[float, float], p1: tuple[float, float],
             width: float) -> None:
    """Set the pixels of ``ink`` within width/2 of the segment p0-p1 ((x, y) in pixels)."""
    h, w = ink.shape
    r = width / 2
    (xa, ya), (xb, yb) = p0, p1
    x0, x1 = max(0, int(min(xa, xb) - r) - 1), min(w, int(max(xa, xb) + r) + 2)
    y0, y1 = max(0, int(min(ya, yb) - r) - 1), min(h, int(max(ya, yb) + r) + 2)
    if x0 >= x1 or y0 >= y1:
        return
    px = np.arange(x0, x1) + 0.5 - xa
    py = np.arange(y0, y1) + 0.5 - ya
    dx, dy = xb - xa, yb - ya
    t = np.clip((px[None, :] * dx + py[:, None] * dy) / max(dx * dx + dy * dy, 1e-12), 0, 1)
    d2 = (px[None, :] - t * dx) ** 2 + (py[:, None] - t * dy) ** 2
    ink[y0:y1, x0:x1] |= d2 <= r * r


def _text_width(text: str, height: float) -> float:
    return len(text) * 6 * height / 6 - 2 * height / 6


def _text(ink: np.ndarray, text: str, x: float, y: float, height: float, width: float) -> None:
    """Draw ``text`` in the block font with its top-left corner at (x, y)."""
    s = height / 6
    for i, ch in enumerate(text):
        for line in _FONT[ch]:
            pts = [(x + (6 * i + gx) * s, y + gy * s) for gx, gy in line]
            for a, b in zip(pts[:-1], pts[1:], strict=True):
                _segment(ink, a, b, width)


# Luminance quantisation table of the JPEG standard (ITU T.81, Annex K), quality 50.
_JPEG_LUMA = np.array([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56], [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], np.float32)


def _jpeg(img: np.ndarray, quality: int, top: float) -> np.ndarray:
    """JPEG artefacts: 8 x 8 block DCT, quantised with the standard table at ``quality``.

    The image (0-``top``) is coded on JPEG's 8-bit scale; returns float32 on the same scale.
    """
    from scipy import fft

    h, w = img.shape
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality  # the IJG convention
    q = np.clip(np.floor((_JPEG_LUMA * scale + 50) / 100), 1, 255).astype(np.float32)
    ph, pw = -h % 8, -w % 8
    x = np.pad(img * np.float32(255 / top), ((0, ph), (0, pw)), mode="edge") - np.float32(128)
    blocks = x.reshape((h + ph) // 8, 8, (w + pw) // 8, 8).transpose(0, 2, 1, 3)
    coef = fft.dctn(blocks, axes=(2, 3), norm="ortho")
    coef /= q
    np.rint(coef, out=coef)
    coef *= q
    out = fft.idctn(coef, axes=(2, 3), norm="ortho").transpose(0, 2, 1, 3)
    out = out.reshape(h + ph, w + pw)[:h, :w] + np.float32(128)
    return np.multiply(out, np.float32(top / 255), dtype=np.float32)


class _Cell:
    """The drawing state: fibre coordinates, label map, grey map and the drawn values."""

    # New stages go at the end: SeedSequence.spawn gives the first children the same seeds
    # whatever their number, so the original stages keep their streams.
    STAGES = ("geometry", "myofibrils", "filaments", "periphery", "chromatin", "spaces",
              "lipids", "artefacts", "granules", "precipitate", "imaging",
              "appearance", "ribosomes", "annotations", "grain", "scan_lines", "shot",
              "oblique", "rosettes", "columns")

    def __init__(self, seed: int, shape: tuple[int, int], um: float, p: SyntheticParams) -> None:
        # One generator per stage, so that a stage drawing a pixel-count-dependent number of
        # values (noise, tables) does not shift the others: the same seed at another pixel size
        # draws the same cell.
        streams = np.random.SeedSequence(seed).spawn(len(self.STAGES))
        self.rngs = {k: np.random.default_rng(s) for k, s in zip(self.STAGES, streams, strict=True)}
        rng = self.rngs["geometry"]
        self.shape, self.um, self.p = shape, um, p
        h, w = shape
        angle = rng.uniform(0.0, 180.0) if p.angle_deg is None else float(p.angle_deg) % 180.0
        theta = math.radians(angle)
        self.cos, self.sin = math.cos(theta), math.sin(theta)
        self.drawn: dict[str, Any] = {"angle_deg": round(angle, 3), "params": asdict(p)}
        y = np.arange(h, dtype=np.float32)[:, None] - np.float32((h - 1) / 2)
        x = np.arange(w, dtype=np.float32)[None, :] - np.float32((w - 1) / 2)
        self.u = x * np.float32(self.cos) + y * np.float32(self.sin)  # along the fibres
        self.v = y * np.float32(self.cos) - x * np.float32(self.sin)  # across the fibres
        # Slow waviness: v is shifted by a sine of u (through a 1-px table, faster than sin).
        self.amp = _draw(rng, p.waviness_um) * um
        self.lam, self.ph = rng.uniform(4, 8) * um, rng.uniform(0, 2 * np.pi)
        self.half_u = 0.5 * ((w - 1) * abs(self.cos) + (h - 1) * abs(self.sin)) + 2
        self.half_v = 0.5 * ((h - 1) * abs(self.cos) + (w - 1) * abs(self.sin)) + self.amp + 2
        wave = self.amp * np.sin((np.arange(int(2 * self.half_u) + 2) - self.half_u)
                                 * (2 * np.pi / self.lam) + self.ph)
        self.iu = np.add(self.u, np.float32(self.half_u)).astype(np.int32)  # u table index
        self.v += np.take(wave.astype(np.float32), self.iu, mode="clip")
        self.loc = np.empty(shape, np.uint8)
        self.grey = np.empty(shape, np.float32)
        self.blocked = np.zeros(shape, bool)  # no glycogen here (nucleus, mitochondria, ...)
        self.mito = np.zeros(shape, bool)  # mitochondria (labelled Z like the Z disk)
        self._appearance()

    def _appearance(self) -> None:
        """Draw this micrograph's grey levels and appearance strengths (own stream).

        With the default parameters nothing is drawn and the greys are the module constants.
        """
        rng, p = self.rngs["appearance"], self.p
        c = _draw(rng, p.striation_contrast)
        self.texture = _draw(rng, p.filament_texture)
        g = {k: (_draw(rng, v) if np.ndim(v) else float(v)) for k, v in p.greys().items()}
        if c != 1.0:  # spread the sarcomere's greys about the mean of A and I
            mid = 0.5 * (g["A"] + g["I"])
            for k in "AHMIZ":
                g[k] = min(1.0, max(0.0, mid + c * (g[k] - mid)))
        self.G = g
        self.halo = _draw(rng, p.granule_halo)
        self.grain = _draw(rng, p.grain)
        self.scan = _draw(rng, p.scan_lines)
        self.drawn["appearance"] = {"striation_contrast": c, "filament_texture": self.texture,
                                    "grey_levels": dict(g), "granule_halo": self.halo,
                                    "grain": self.grain, "scan_lines": self.scan}

    # -- geometry helpers ---------------------------------------------------------------------
    def _to_xy(self, uc: float, vc: float) -> tuple[float, float]:
        """Image (x, y) of fibre coordinates (u, v), undoing the waviness."""
        h, w = self.shape
        vr = vc - self.amp * math.sin(uc * 2 * math.pi / self.lam + self.ph)
        return (uc * self.cos - vr * self.sin + (w - 1) / 2,
                uc * self.sin + vr * self.cos + (h - 1) / 2)

    def _window(self, uc: float, vc: float, reach: float):
        """Slices around fibre point (uc, vc) and its du, dv arrays; None if off the image."""
        h, w = self.shape
        xc, yc = self._to_xy(uc, vc)
        r = reach + self.amp + 2
        ys = slice(max(0, int(yc - r)), min(h, int(yc + r) + 1))
        xs = slice(max(0, int(xc - r)), min(w, int(xc + r) + 1))
        if ys.start >= ys.stop or xs.start >= xs.stop:
            return None
        return ys, xs, self.u[ys, xs] - np.float32(uc), self.v[ys, xs] - np.float32(vc)

    def _ellipse(self, uc, vc, au, av, *, lumen, membrane_nm, codes, label=None, block=False,
                 inner=None, mark=None):
        """A membrane-bound ellipse (axes au along, av across the fibre); returns its mask.

        Drawn only over pixels whose code is in ``codes``; ``label`` relabels them; ``inner``
        (a function of du, dv, rho) overrides the lumen grey (cristae, chromatin); ``mark`` (a
        boolean image) records its pixels.
        """
        win = self._window(uc, vc, max(au, av))
        if win is None:
            return None
        ys, xs, du, dv = win
        rho = np.sqrt((du / np.float32(au)) ** 2 + (dv / np.float32(av)) ** 2)
        lsl, gsl = self.loc[ys, xs], self.grey[ys, xs]
        inside = (rho <= 1) & np.isin(lsl, codes)
        if not inside.any():
            return None
        m = membrane_nm * self.um / 1000 / max(min(au, av), 1.0)
        value = np.full(rho.shape, np.float32(lumen)) if inner is None else inner(du, dv, rho)
        value = np.where(rho > 1 - m, np.float32(self.G["membrane"]), value)
        gsl[inside] = value[inside]
        if label is not None:
            lsl[inside] = label
        if block:
            self.blocked[ys, xs] |= inside
        if mark is not None:
            mark[ys, xs] |= inside
        return inside

    # -- structures -----------------------------------------------------------------------------
    def myofibrils(self) -> None:
        """Myofibrils (A, I, Z) and the spaces between them (S), as 1-px lookup tables."""
        rng, p, um = self.rngs["myofibrils"], self.p, self.um
        # Layout across the fibres: a space near the centre, then fibril, space, fibril, ...
        reach = self.half_v + 3 * um
        gap0, c0 = _draw(rng, p.gap_width_um) * um, rng.uniform(-0.1, 0.1) * um
        segs = [(c0 - gap0 / 2, c0 + gap0 / 2, True)]
        for sign in (1, -1):
            pos, is_gap = c0 + sign * gap0 / 2, False
            while abs(pos) < reach:
                size = _draw(rng, p.gap_width_um if is_gap else p.myofibril_width_um) * um
                segs.append((min(pos, pos + sign * size), max(pos, pos + sign * size), is_gap))
                pos, is_gap = pos + sign * size, not is_gap
        segs.sort()
        self.segs = segs
        starts = np.array([s[0] for s in segs])
        gaps = np.array([s[2] for s in segs])
        # Sarcomere: Z at (u + phase) mod L == 0, M line at L/2. The centre pixel lies in the
        # I band halfway between Z and A so that every code shows in small images too.
        L, A = _draw(rng, p.sarcomere_um) * um, _draw(rng, p.a_band_um) * um
        zw = _draw(rng, p.z_width_nm) * um / 1000
        hz, mw = min(_draw(rng, p.h_zone_um) * um, 0.8 * A), 0.03 * um
        self.drawn.update(sarcomere_um=L / um, a_band_um=A / um, z_width_nm=zw / um * 1000)
        # An oblique cut (own stream): every length along the fibre shows 1 / cos(tilt) longer
        tilt = math.radians(_draw(self.rngs["oblique"], p.oblique_deg))
        stretch = 1.0 / math.cos(tilt)
        L, A, zw, hz, mw = (x * stretch for x in (L, A, zw, hz, mw))
        smear = float(p.section_thickness_nm) * math.tan(tilt) * um / 1000  # px along the fibre
        if tilt:
            self.drawn.update(oblique_deg=round(math.degrees(tilt), 3),
                              apparent_sarcomere_um=L / um)
        quarter = (L - A) / 4 + rng.uniform(-0.05, 0.05) * um * stretch
        phase0 = quarter if rng.random() < 0.5 else L - quarter
        phases = phase0 + np.clip(rng.normal(0, p.misregistration_um, len(segs)), -0.25, 0.25) * um
        self.L, self.A, self.phases = L, A, phases
        # Tables across the fibres (per v pixel) and along the sarcomere (per px from M line).
        v_lo, nb = -reach, int(2 * reach) + 2
        self.v_lo = v_lo
        centres = v_lo + np.arange(nb) + 0.5
        seg_of = np.clip(np.searchsorted(starts, centres, side="right") - 1, 0, len(segs) - 1)
        gap_tab, phase_tab = gaps[seg_of], phases[seg_of].astype(np.float32)
        spacing = _draw(rng, p.filament_spacing_nm) * um / 1000
        jitter = np.cumsum(self.rngs["filaments"].normal(0, 0.08, nb))  # slowly drifting filament phase
        filaments = np.cos(centres * (2 * np.pi / spacing) + jitter + seg_of * 1.7)
        fil_tab = np.where(gap_tab, 0.0, filaments).astype(np.float32)
        dist = np.arange(int(L / 2) + 2) + 0.5
        loc_tab = np.where(dist < A / 2, A_BAND, np.where(dist > L / 2 - zw / 2, Z_DISK, I_BAND))
        G = self.G

        def sarcomere_grey(d: np.ndarray) -> np.ndarray:  # grey at distance d from the M line
            return np.select([d < mw / 2, d < hz / 2, d < A / 2, d > L / 2 - zw / 2],
                             [G["M"], G["H"], G["A"], G["Z"]], G["I"]).astype(np.float32)

        grey_tab = sarcomere_grey(dist)
        if smear > 0:  # the section's depth seen through: bands averaged over the smear
            offsets = np.linspace(-smear / 2, smear / 2, max(2, int(smear) + 1))
            grey_tab = np.mean([sarcomere_grey(np.abs(np.mod(dist + o + L / 2, L) - L / 2))
                                for o in offsets], axis=0, dtype=np.float32)
        amp_tab = np.select([dist < A / 2, dist > L / 2 - zw / 2], [0.07, 0.0], 0.02)
        if self.texture != 1.0 or tilt:  # filament stripes fade as the cut tilts
            amp_tab = amp_tab * (self.texture * math.cos(tilt))
        iv = np.subtract(self.v, np.float32(v_lo)).astype(np.int32)
        np.clip(iv, 0, nb - 1, out=iv)
        phase_tab += np.float32(L * math.ceil(self.half_u / L + 1))  # u + phase > 0 for fmod
        d = np.take(phase_tab, iv)
        d += self.u
        np.fmod(d, np.float32(L), out=d)
        d -= np.float32(L / 2)
        idist = np.abs(d, out=d).astype(np.int32)  # whole px from the M line
        del d
        np.take(loc_tab.astype(np.uint8), idist, out=self.loc)
        np.take(grey_tab, idist, out=self.grey)
        g = np.take(fil_tab, iv)
        g *= np.take(amp_tab.astype(np.float32), idist)
        self.grey += g
        del g, idist
        gap = np.take(gap_tab, iv)
        self.loc[gap] = S_SPACE
        self.grey[gap] = G["S"]
        self.iv = iv

    def periphery(self) -> None:
        """Peripheral region (N) along the fibre beyond the outermost myofibril, and outside."""
        rng, p, um = self.rngs["periphery"], self.p, self.um
        self.drawn.update(periphery=False, nucleus=False, outside=False)
        if rng.random() >= p.periphery_probability:
            return
        side = 1 if rng.random() < 0.5 else -1
        h, w = self.shape
        # Half-extent of the image across the fibres through its centre.
        ext = min((h / 2) / max(abs(self.cos), 1e-6), (w / 2) / max(abs(self.sin), 1e-6))
        nucleus = rng.random() < p.nucleus_probability
        outside = rng.random() < p.outside_probability
        width = _draw(rng, p.periphery_width_um) * um
        nu_u = nu_v = 0.0
        if nucleus:
            nu_u, nu_v = rng.uniform(1.5, 4.0) * um, rng.uniform(0.4, 1.0) * um
            width = max(width, 2 * nu_v + rng.uniform(0.15, 0.4) * um)
        if outside:  # the sarcolemma crosses the image; the periphery lies inside it
            sarcolemma = ext * (1 - 2 * rng.uniform(0.03, 0.15))
            target = sarcolemma - width
        else:  # the periphery reaches the image edge; the sarcolemma lies at or beyond it
            target = ext * (1 - 2 * rng.uniform(0.08, 0.3))
            sarcolemma = max(target + width, ext)
        # The myofibril edge nearest to the target: a fibril's outer boundary.
        edges = [(s[1] if side > 0 else -s[0]) for s in self.segs if not s[2]]
        inner = min(edges, key=lambda e: abs(e - target)) if edges else target
        inner = min(inner, sarcolemma - 0.1 * um)
        lam, ph = rng.uniform(1.0, 3.0) * um, rng.uniform(0, 2 * np.pi)
        wob = (0.03 * um * np.sin((np.arange(int(2 * self.half_u) + 2) - self.half_u)
                                  * (2 * np.pi / lam) + ph)).astype(np.float32)
        vs = self.v * np.float32(side)
        shift = np.take(wob, self.iu, mode="clip")
        vs -= shift
        region = vs > np.float32(inner)
        # The periphery begins at the outermost myofibril: where its wavy edge stands off the
        # fibril, the space it leaves is periphery too, never an intermyofibrillar space (S
        # lies between two myofibrils). The tables are per whole pixel across the fibres: a pixel
        # off the edge is space or fibril by the side its centre lies on.
        shift += vs
        region |= (shift > np.float32(inner - 1.0)) & (self.loc == S_SPACE)
        del shift
        self.loc[region], self.grey[region] = N_REGION, self.G["N"]
        self.drawn.update(periphery=True, periphery_width_um=(sarcolemma - inner) / um)
        self.n_band = (side, inner, sarcolemma)
        if outside:
            out = vs > np.float32(sarcolemma)
            self.loc[out], self.grey[out] = UNCLASSIFIED, self.G["outside"]
            self.blocked |= out
            m = max(0.6, 0.004 * um)
            self.grey[np.abs(vs - np.float32(sarcolemma)) < m] = self.G["membrane"]  # sarcolemma
            lamina = np.abs(vs - np.float32(sarcolemma + 0.04 * um)) < 0.012 * um
            self.grey[lamina & out] = 0.62  # basal lamina
            self.drawn["outside"] = True
        del vs
        # Vesicles and subsarcolemmal mitochondria in the peripheral cytoplasm.
        span = self.half_u
        for _ in range(rng.poisson(8 * 2 * span / um * (sarcolemma - inner) / um / 4)):
            uc, vc = rng.uniform(-span, span), side * rng.uniform(inner, sarcolemma)
            r = rng.uniform(0.015, 0.04) * um
            self._ellipse(uc, vc, r, r * rng.uniform(0.8, 1.2), lumen=0.8, membrane_nm=6,
                          codes=[N_REGION], block=True)
        for _ in range(rng.poisson(0.5 * 2 * span / um)):
            uc, vc = rng.uniform(-span, span), side * rng.uniform(inner, sarcolemma)
            self._mitochondrion(rng, uc, vc, rng.uniform(0.2, 0.5) * um,
                                rng.uniform(0.1, 0.25) * um, [N_REGION])
        if nucleus:
            uc = rng.uniform(-0.5, 0.5) * span
            self._nucleus(uc, side * (sarcolemma - 0.08 * um - nu_v), nu_u, nu_v)
            self.drawn["nucleus"] = True

    def _nucleus(self, uc: float, vc: float, au: float, av: float) -> None:
        """A myonucleus: double envelope, heterochromatin rim and clumps, euchromatin."""
        rng, um = self.rngs["chromatin"], self.um
        win = self._window(uc, vc, max(au, av))
        if win is None:
            return
        ys, xs, du, dv = win
        rho = np.sqrt((du / np.float32(au)) ** 2 + (dv / np.float32(av)) ** 2)
        lsl, gsl = self.loc[ys, xs], self.grey[ys, xs]
        inside = rho <= 1
        if not inside.any():
            return
        # Chromatin clumps: smooth noise from a coarse grid (~60 nm cells), thresholded.
        cell = max(2, int(0.06 * um))
        coarse = rng.standard_normal((du.shape[0] // cell + 2, du.shape[1] // cell + 2))
        noise = ndi.zoom(coarse.astype(np.float32), cell, order=1)[: du.shape[0], : du.shape[1]]
        e = 10.0 / 1000 * um / min(au, av)  # ~10 nm in rho units
        value = np.where(noise > 0.9, np.float32(0.36), np.float32(0.58))
        value = np.where(rho > 1 - 10 * e, np.float32(0.36), value)  # peripheral heterochromatin
        value = np.where(rho > 1 - 3 * e, np.float32(0.8), value)  # perinuclear space
        membrane = np.float32(self.G["membrane"])
        value = np.where((rho > 1 - 4 * e) & (rho <= 1 - 3 * e), membrane, value)
        value = np.where(rho > 1 - e, membrane, value)
        gsl[inside] = value[inside]
        lsl[inside] = N_REGION
        self.blocked[ys, xs] |= inside

    def _mitochondrion(self, rng, uc: float, vc: float, av: float, au: float, codes,
                       lengthwise: bool = False) -> None:
        """A mitochondrion (label Z): double membrane, cristae across its long axis (``av``, across
        the fibre, or ``au`` when ``lengthwise``)."""
        um = self.um
        period = rng.uniform(0.025, 0.04) * um
        phase = rng.uniform(0, 2 * np.pi)
        e = 7.0 / 1000 * um / max(min(au, av), 1.0)
        matrix = self.G["mito"]
        crista, rim = np.float32(max(0.0, matrix - 0.15)), np.float32(min(1.0, matrix + 0.10))

        def inner(du, dv, rho):
            # cristae across the long axis: across the fibre (v) for the paired mitochondria at
            # the Z line, along it (u) for the longitudinal ones of the columns
            axis = du if lengthwise else dv
            cristae = np.cos(axis * np.float32(2 * np.pi / period) + np.float32(phase)) > 0.55
            val = np.where(cristae & (rho < 1 - 3 * e), crista, np.float32(matrix))
            return np.where((rho > 1 - 2.2 * e) & (rho <= 1 - e), rim, val)

        self._ellipse(uc, vc, au, av, lumen=matrix, membrane_nm=7, codes=codes, label=Z_DISK,
                      block=True, inner=inner, mark=self.mito)

    def intermyofibrillar(self) -> None:
        """Mitochondria at the Z lines, triads at the A-I junctions and SR tubules in spaces."""
        rng, p, um = self.rngs["spaces"], self.p, self.um
        L, A, phases = self.L, self.A, self.phases
        span = self.half_u + um
        space = [S_SPACE]
        for j, vc, gw, fibril in self._inner_spaces():
            phi = phases[j + (1 if rng.random() < 0.5 else -1)]
            for n in range(math.floor((-span + phi) / L), math.ceil((span + phi) / L) + 1):
                z = n * L - phi  # a Z line at u = z
                for side in (-1, 1):
                    if rng.random() < p.mitochondria_probability:
                        av = _draw(rng, p.mitochondrion_length_um) * um / 2
                        av = min(av, gw / 2 + 0.4 * fibril)  # reach at most 40% into a fibril
                        au = rng.uniform(0.07, 0.15) * um
                        uc = z + side * (au + rng.uniform(0.0, 0.03) * um)
                        self._mitochondrion(rng, uc, vc, av, au,
                                            [A_BAND, I_BAND, Z_DISK, S_SPACE])
                    if rng.random() < p.triad_probability:
                        self._triad(rng, z + side * (L - A) / 2, vc, gw)
                # Longitudinal SR tubules over the A band, between the triads.
                for _ in range(rng.poisson(1.5)):
                    uc = z + L / 2 + rng.uniform(-0.35, 0.35) * A
                    r = rng.uniform(0.012, 0.025) * um
                    off = rng.uniform(-0.5, 0.5) * max(gw - 2 * r, 0)
                    self._ellipse(uc, vc + off, rng.uniform(0.08, 0.3) * um, r, lumen=0.66,
                                  membrane_nm=5, codes=space)
        if p.mitochondria_columns > 0:
            self._mitochondria_columns()

    def _inner_spaces(self):
        """Each space between two myofibrils in view: (index, centre v, width, narrower fibril)."""
        segs, reach = self.segs, self.half_v + self.um
        for j, (v0, v1, is_gap) in enumerate(segs):
            if not is_gap or j == 0 or j == len(segs) - 1 or abs((v0 + v1) / 2) > reach:
                continue
            fibril = min(segs[j - 1][1] - segs[j - 1][0], segs[j + 1][1] - segs[j + 1][0])
            yield j, (v0 + v1) / 2, v1 - v0, fibril

    def _mitochondria_columns(self) -> None:
        """Longitudinal mitochondria lying in the spaces (``mitochondria_columns``; own stream).

        Oxidative fibres hold columns of mitochondria along the fibre between the myofibrils,
        which they push apart: each is drawn over the space and up to 40% into the fibrils beside
        it, labelled Z (Z disk + mitochondria) as the paired ones at the Z lines.
        """
        rng, p, um, L = self.rngs["columns"], self.p, self.um, self.L
        span = self.half_u + um
        n = 0
        for _, vc, gw, fibril in self._inner_spaces():
            u = -span + rng.uniform(0.0, L)
            while u < span:
                if rng.random() >= p.mitochondria_columns:
                    u += L
                    continue
                length = _draw(rng, p.column_mitochondrion_um) * um
                av = min(_draw(rng, p.column_mitochondrion_width_um) * um / 2, gw / 2 + 0.4 * fibril)
                self._mitochondrion(rng, u + length / 2, vc, av, length / 2,
                                    [A_BAND, I_BAND, Z_DISK, S_SPACE], lengthwise=True)
                u += length + rng.uniform(0.02, 0.3) * um
                n += 1
        self.drawn["column_mitochondria"] = n

    def _triad(self, rng, uc: float, vc: float, gw: float) -> None:
        """A T tubule between two terminal cisternae, across the space at an A-I junction."""
        um = self.um
        t = rng.uniform(0.010, 0.016) * um
        c = rng.uniform(0.015, 0.025) * um
        av = gw / 2 * rng.uniform(0.7, 0.95)
        self._ellipse(uc, vc, t, av, lumen=0.40, membrane_nm=5, codes=[S_SPACE])
        for s in (-1, 1):
            self._ellipse(uc + s * (t + 0.006 * um + c), vc, c, av, lumen=0.55, membrane_nm=5,
                          codes=[S_SPACE])

    def artefacts(self) -> None:
        """Lipid droplets (O) in the spaces and periphery; section holes and folds (U)."""
        rng, p, um = self.rngs["lipids"], self.p, self.um
        h, w = self.shape
        for _ in range(rng.poisson(p.lipid_per_um2 * h * w / um**2)):
            for _ in range(30):
                yc, xc = int(rng.uniform(0, h)), int(rng.uniform(0, w))
                if self.loc[yc, xc] in (S_SPACE, N_REGION) and not self.blocked[yc, xc]:
                    break
            else:
                continue
            r = rng.uniform(0.075, 0.2) * um
            ys = slice(max(0, int(yc - r)), min(h, int(yc + r) + 1))
            xs = slice(max(0, int(xc - r)), min(w, int(xc + r) + 1))
            yy, xx = np.ogrid[ys, xs]
            disc = (yy - yc) ** 2 + (xx - xc) ** 2 <= r * r
            disc &= self.loc[ys, xs] != UNCLASSIFIED
            self.loc[ys, xs][disc], self.grey[ys, xs][disc] = OTHER, self.G["lipid"]
            self.blocked[ys, xs] |= disc
        self.drawn.update(hole=False, fold=False)
        rng = self.rngs["artefacts"]
        if rng.random() < p.hole_probability:  # a tear in the section: irregular, empty
            yc, xc = rng.uniform(0, h), rng.uniform(0, w)
            r = rng.uniform(0.08, 0.4) * um
            k, ph, a = int(rng.integers(2, 6)), rng.uniform(0, 2 * np.pi), rng.uniform(0.1, 0.3)
            ys = slice(max(0, int(yc - 1.4 * r)), min(h, int(yc + 1.4 * r) + 1))
            xs = slice(max(0, int(xc - 1.4 * r)), min(w, int(xc + 1.4 * r) + 1))
            if ys.start < ys.stop and xs.start < xs.stop:
                yy, xx = np.ogrid[ys, xs]
                ang = np.arctan2(yy - yc, xx - xc)
                hole = np.hypot(yy - yc, xx - xc) <= r * (1 + a * np.sin(k * ang + ph))
                self.loc[ys, xs][hole], self.grey[ys, xs][hole] = UNCLASSIFIED, 0.97
                self.blocked[ys, xs] |= hole
                self.drawn["hole"] = True
        if rng.random() < p.fold_probability:  # a fold: a dark band of double thickness
            t = rng.uniform(0, np.pi)
            off = rng.uniform(-0.4, 0.4) * min(h, w)
            half = rng.uniform(0.03, 0.08) * um
            yy = np.arange(h, dtype=np.float32)[:, None] - np.float32(h / 2)
            xx = np.arange(w, dtype=np.float32)[None, :] - np.float32(w / 2)
            fold = np.abs(xx * np.float32(math.cos(t)) + yy * np.float32(math.sin(t)) - off) < half
            self.loc[fold] = UNCLASSIFIED
            self.grey[fold] *= np.float32(0.5)
            self.blocked |= fold
            self.drawn["fold"] = True

    def granules(self) -> np.ndarray:
        """Glycogen granules placed by region density, singly and in clusters; returns the mask."""
        rng, p, um = self.rngs["granules"], self.p, self.um
        h, w = self.shape
        nm = um / 1000  # px per nm
        target = np.zeros(7)
        for letter, pair in zip(_MEASURED, p.granule_fractions, strict=True):
            target["UAIZSNO".index(letter)] = _draw(rng, pair)
        self.drawn["target_fractions"] = {k: float(target["UAIZSNO".index(k)]) for k in _MEASURED}
        lam = -np.log1p(-target)
        if lam.max() <= 0:
            return np.zeros((h, w), np.uint8)
        d_lo, d_hi = p.granule_diameter_nm
        a, b = 2.5, 4.5  # diameter = lo + (hi - lo) Beta(a, b): mean ~25 nm for 15-40 nm
        mb, mb2 = a / (a + b), a * (a + 1) / ((a + b) * (a + b + 1))
        mean_area = math.pi / 4 * (d_lo**2 + 2 * d_lo * (d_hi - d_lo) * mb
                                   + (d_hi - d_lo) ** 2 * mb2) * nm**2
        t = float(p.section_thickness_nm)
        visible = t / (t + 0.5 * (d_lo + d_hi) * 0.5)  # share of spheres not cut to tiny caps
        n = rng.poisson(lam.max() * h * w / (mean_area * visible))
        n_cluster = rng.binomial(n, p.cluster_fraction)
        yc = rng.uniform(0, h, n - n_cluster)
        xc = rng.uniform(0, w, n - n_cluster)
        if n_cluster:
            per = 5.0
            parents = max(1, int(round(n_cluster / per)))
            py, px = rng.uniform(0, h, parents), rng.uniform(0, w, parents)
            k = rng.integers(0, parents, n_cluster)
            spread = rng.uniform(20, 35, parents)[k] * nm
            yc = np.concatenate([yc, py[k] + rng.normal(0, 1, n_cluster) * spread])
            xc = np.concatenate([xc, px[k] + rng.normal(0, 1, n_cluster) * spread])
        m = len(yc)  # every value is drawn before the filtering, which depends on the pixels
        accept = rng.random(m)
        radius = (d_lo + (d_hi - d_lo) * rng.beta(a, b, m)) / 2  # nm
        depth = rng.uniform(-radius, t + radius)  # centre relative to the upper section face
        dark_lo, dark_hi = _pair(p.granule_darkness, "granule_darkness")
        dark = rng.uniform(dark_lo, dark_hi, m)
        iy = np.clip(yc.astype(int), 0, h - 1)
        ix = np.clip(xc.astype(int), 0, w - 1)
        keep = (accept < (lam / lam.max())[self.loc[iy, ix]]) & ~self.blocked[iy, ix]
        yc, xc, radius, depth, dark = yc[keep], xc[keep], radius[keep], depth[keep], dark[keep]
        mask = np.zeros((h, w), np.uint8)
        grey, blocked = self.grey, self.blocked
        if p.rosette_fraction > 0:  # some particles gather into rosettes (own stream)
            yc, xc, radius, depth, dark = self._rosettes(yc, xc, radius, depth, dark)
        edge, power = float(p.granule_edge_nm), float(p.granule_edge_exponent)
        default_edge = edge == 12.0 and power == 0.5
        for y, x, r, z, g in zip(yc.tolist(), xc.tolist(), radius.tolist(), depth.tolist(),
                                 dark.tolist(), strict=True):
            out = max(-z, z - t, 0.0)  # distance of the centre outside the section
            rp = math.sqrt(max(r * r - out * out, 0.0))  # projected radius (nm)
            if rp < 5.0 or r - out < 4.0:
                continue  # a cap too small or too thin to see
            k = int(rp * nm) + 1
            y0, y1 = max(0, int(y) - k), min(h, int(y) + k + 2)
            x0, x1 = max(0, int(x) - k), min(w, int(x) + k + 2)
            if y0 >= y1 or x0 >= x1:
                continue
            rho2 = (((np.arange(y0, y1) + 0.5 - y) ** 2)[:, None]
                    + ((np.arange(x0, x1) + 0.5 - x) ** 2)[None, :]) / (nm * nm)
            half = np.sqrt(np.maximum(r * r - rho2, 0.0))
            chord = np.clip(z + half, 0, t) - np.clip(z - half, 0, t)
            disc = (chord >= 2.0) & ~blocked[y0:y1, x0:x1]
            mask[y0:y1, x0:x1] |= disc
            if default_edge:
                alpha = np.sqrt(np.clip(chord / 12.0, 0, 1))
            else:
                alpha = np.clip(chord / edge, 0, 1) ** power
            gsl = grey[y0:y1, x0:x1]
            val = gsl * (1 - alpha) + np.float32(g) * alpha
            np.minimum(gsl, np.where(disc, val, gsl), out=gsl, casting="unsafe")
        if self.halo > 0 and mask.any():
            # A light fringe outside the granules: the blurred mask, added where no granule is.
            ring = ndi.gaussian_filter(mask.astype(np.float32), p.granule_halo_nm * nm,
                                       mode="constant", truncate=3.0)
            ring *= np.float32(2 * self.halo)  # ~halo at a large granule's edge
            ring[mask.astype(bool) | blocked] = 0
            grey += ring
            np.minimum(grey, np.float32(1.0), out=grey)
        return mask

    def _rosettes(self, yc, xc, radius, depth, dark):
        """Gather ``rosette_fraction`` of the particles (centres ``yc, xc`` px; ``radius`` and
        ``depth`` nm; ``dark`` grey) into alpha-particle rosettes: each rosette replaces the
        particles it takes with touching beta particles packed on a sunflower spiral out to the
        rosette's radius, at the place of the first one it takes (so the regions keep their
        share of glycogen) and about its depth. Returns the new particle arrays."""
        rng, p, nm = self.rngs["rosettes"], self.p, self.um / 1000
        h, w = self.shape
        taken = np.flatnonzero(rng.random(len(yc)) < p.rosette_fraction)
        rng.shuffle(taken)
        d_lo, d_hi = p.granule_diameter_nm
        parts = [np.delete(a, taken) for a in (yc, xc, radius, depth, dark)]
        r_single = float(radius[taken].mean()) if len(taken) else 1.0
        used, n_rosettes = 0, 0
        while used < len(taken):
            first = taken[used]
            size = _draw(rng, p.rosette_diameter_nm) / 2  # rosette radius (nm)
            r_member = rng.uniform(d_lo, 0.5 * (d_lo + d_hi)) / 2
            # particles to fill the rosette's disc (a packing density of about 0.8)
            n = max(3, int(round(0.8 * (size / r_member) ** 2)))
            i = np.arange(n)
            rho = np.sqrt((i + 0.5) / n) * max(size - r_member, 0.0)
            phi = i * 2.39996323 + rng.uniform(0, 2 * np.pi)  # the golden angle
            jitter = rng.normal(0, 0.1 * r_member, (2, n))
            y = yc[first] + (rho * np.sin(phi) + jitter[0]) * nm
            x = xc[first] + (rho * np.cos(phi) + jitter[1]) * nm
            inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
            ok = inside.copy()
            ok[inside] = ~self.blocked[y[inside].astype(int), x[inside].astype(int)]
            r = r_member * rng.uniform(0.8, 1.2, n)
            z = depth[first] + rng.normal(0, 0.5 * r_member, n)
            g = np.clip(dark[first] + rng.normal(0, 0.02, n), 0.0, 1.0)
            for k, a in enumerate((y, x, r, z, g)):
                parts[k] = np.concatenate([parts[k], a[ok]])
            # a rosette stands for as many particles as its glycogen would make singly
            used += max(1, int(round(n * (r_member / r_single) ** 2)))
            n_rosettes += 1
        self.drawn["rosettes"] = n_rosettes
        return tuple(parts)

    def ribosomes(self, mask: np.ndarray) -> None:
        """Ribosomes: small dark dots in the spaces, periphery and I band (not granules)."""
        rng, p, um = self.rngs["ribosomes"], self.p, self.um
        if p.ribosome_per_um2 <= 0:
            return
        h, w = self.shape
        nm = um / 1000
        n = rng.poisson(p.ribosome_per_um2 * h * w / um**2 / 0.4)  # ~40% of the field qualifies
        yc, xc = rng.uniform(0, h, n), rng.uniform(0, w, n)
        d_lo, d_hi = p.ribosome_diameter_nm
        radius = rng.uniform(d_lo, d_hi, n) / 2 * nm  # px
        dark = rng.uniform(*_pair(p.ribosome_darkness, "ribosome_darkness"), n)
        accept = rng.random(n)
        share = np.zeros(7)  # acceptance per Locations code
        share[[S_SPACE, N_REGION, I_BAND, A_BAND]] = 1.0, 1.0, 0.3, 0.05
        iy, ix = yc.astype(int), xc.astype(int)
        keep = (accept < share[self.loc[iy, ix]]) & ~self.blocked[iy, ix] & (mask[iy, ix] == 0)
        self.drawn["ribosomes"] = int(keep.sum())
        grey, blocked = self.grey, self.blocked
        for y, x, r, g in zip(yc[keep].tolist(), xc[keep].tolist(), radius[keep].tolist(),
                              dark[keep].tolist(), strict=True):
            k = int(r) + 2
            y0, y1, x0, x1 = max(0, int(y) - k), min(h, int(y) + k + 1), max(0, int(x) - k), \
                min(w, int(x) + k + 1)
            rho = np.sqrt(((np.arange(y0, y1) + 0.5 - y) ** 2)[:, None]
                          + ((np.arange(x0, x1) + 0.5 - x) ** 2)[None, :])
            alpha = np.clip(r + 0.5 - rho, 0, 1)  # an anti-aliased disc
            alpha[(mask[y0:y1, x0:x1] == 1) | blocked[y0:y1, x0:x1]] = 0
            gsl = grey[y0:y1, x0:x1]
            np.minimum(gsl, gsl * (1 - alpha) + np.float32(g) * alpha, out=gsl, casting="unsafe")

    def precipitate(self) -> None:
        """Stain precipitate: patches of very dark specks and a few needles (not granules)."""
        rng, p, um = self.rngs["precipitate"], self.p, self.um
        h, w = self.shape
        self.drawn["precipitate"] = False
        if rng.random() >= p.precipitate_probability:
            return
        self.drawn["precipitate"] = True
        for _ in range(rng.integers(1, 4)):
            cy, cx, spread = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.05, 0.3) * um
            for _ in range(rng.integers(20, 120)):
                y, x = cy + rng.normal(0, spread), cx + rng.normal(0, spread)
                r = rng.uniform(1.0, 4.0) / 1000 * um + 0.5
                self._dab(y, x, r, r * rng.uniform(1, 2.5), rng.uniform(0, np.pi))
        for _ in range(rng.integers(0, 6)):
            r = rng.uniform(2, 5) / 1000 * um + 0.5
            self._dab(rng.uniform(0, h), rng.uniform(0, w), r, r * rng.uniform(4, 10),
                      rng.uniform(0, np.pi))

    def _dab(self, y: float, x: float, ra: float, rb: float, t: float) -> None:
        """A very dark ellipse (a speck or needle of precipitate) of semi-axes ra, rb."""
        h, w = self.shape
        k = int(max(ra, rb)) + 1
        y0, y1 = max(0, int(y) - k), min(h, int(y) + k + 2)
        x0, x1 = max(0, int(x) - k), min(w, int(x) + k + 2)
        if y0 >= y1 or x0 >= x1:
            return
        yy = (np.arange(y0, y1) + 0.5 - y)[:, None]
        xx = (np.arange(x0, x1) + 0.5 - x)[None, :]
        a = (xx * math.cos(t) + yy * math.sin(t)) / rb
        b = (yy * math.cos(t) - xx * math.sin(t)) / ra
        self.grey[y0:y1, x0:x1][a * a + b * b <= 1] = 0.02

    def imaging(self, dt: np.dtype) -> np.ndarray:
        """Grain, section blur, uneven illumination, shot and read noise, contrast; to ``dt``.

        Only when their parameters are set: correlated grain (after the illumination), Poisson
        counts, scan lines (after the noise), burned-in annotations (after the contrast) and JPEG
        (last).
        """
        rng, p, um = self.rngs["imaging"], self.p, self.um
        del self.u, self.v, self.iu, self.iv
        h, w = self.shape
        grey = self.grey
        sigma = _draw(rng, p.blur_nm) * um / 1000
        buf = rng.standard_normal((h, w), dtype=np.float32)
        grey += np.multiply(buf, np.float32(0.04 * 2 * math.sqrt(math.pi) * max(sigma, 0.5)), out=buf)
        img = ndi.gaussian_filter(grey, sigma, output=buf, mode="nearest", truncate=3.0)
        g, t = _draw(rng, p.illumination), rng.uniform(0, 2 * np.pi)
        vig = rng.uniform(0, 1) * g
        ry = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
        rx = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
        img *= 1 + np.float32(g * math.sin(t)) * ry - np.float32(vig / 2) * ry * ry
        img *= 1 + np.float32(g * math.cos(t)) * rx - np.float32(vig / 2) * rx * rx
        if self.grain > 0:  # correlated noise: smoothed white noise of the drawn deviation
            gs = max(float(p.grain_nm) * um / 1000, 0.3)
            grain = ndi.gaussian_filter(
                self.rngs["grain"].standard_normal((h, w), dtype=np.float32), gs, truncate=3.0)
            grain *= np.float32(self.grain / max(float(grain.std()), 1e-12))
            img += grain
            del grain
        # Signal-dependent (shot) and constant (read) noise, drawn as one normal.
        shot = rng.uniform(0.035, 0.065) * p.noise_scale
        read = rng.uniform(0.015, 0.03) * p.noise_scale
        if p.noise_model == "poisson" and shot > 0:
            # Electron counts at a dose of 1 / shot^2 per unit intensity, then read noise (the
            # normal comes from the imaging stream as in the Gaussian model, keeping it in step).
            dose = 1.0 / shot**2
            counts = self.rngs["shot"].poisson(np.maximum(img, 0, out=grey) * dose)
            img[...] = counts * (1.0 / dose)
            del counts
            sd = rng.standard_normal((h, w), dtype=np.float32)
            sd *= np.float32(read)
        else:
            sd = np.maximum(img, 0, out=grey)
            sd *= np.float32(shot**2)
            sd += np.float32(read**2)
            np.sqrt(sd, out=sd)
            sd *= rng.standard_normal((h, w), dtype=np.float32)
        img += sd
        del sd
        if self.scan > 0:  # line-to-line offsets of a scanned image
            img += self.scan * self.rngs["scan_lines"].standard_normal((h, 1), dtype=np.float32)
        contrast = _draw(rng, p.contrast)
        lo = rng.uniform(0.03, max(0.03, 0.97 - contrast))
        self.drawn.update(blur_nm=sigma / um * 1000, shot_noise=shot, read_noise=read,
                          contrast=contrast, offset=lo, illumination=g)
        top = float(np.iinfo(dt).max)
        img *= np.float32(contrast * top)
        img += np.float32(lo * top)
        if p.letters_probability > 0:
            self.annotations(img, top)
        np.clip(img, 0, top, out=img)
        if p.jpeg_quality is not None:
            img = _jpeg(img, int(p.jpeg_quality), top)
            np.clip(img, 0, top, out=img)
        return np.rint(img, out=img).astype(dt)

    def annotations(self, img: np.ndarray, top: float) -> None:
        """Burned-in annotations: a scale bar and its label, arrows, letters (black or white)."""
        rng, um = self.rngs["annotations"], self.um
        self.drawn["annotations"] = False
        if rng.random() >= self.p.letters_probability:
            return
        self.drawn["annotations"] = True
        h, w = self.shape
        side = min(h, w)
        ink = np.zeros((h, w), bool)
        text_h = max(7.0, side * rng.uniform(0.025, 0.045))
        stroke = max(1.0, text_h / rng.uniform(6, 9))
        margin = 0.04 * side
        # Scale bar: the longest round length that fits in a quarter of the width.
        fits = [n for n in (50, 100, 200, 250, 500, 1000, 2000) if n / 1000 * um <= 0.25 * w]
        if fits and fits[-1] / 1000 * um >= 20:
            n = fits[-1]
            length = n / 1000 * um
            bar_h = max(2, int(round(0.35 * text_h)))
            x0 = margin if rng.random() < 0.5 else w - margin - length
            y0 = h - margin - bar_h
            ink[int(y0):int(y0) + bar_h, int(x0):int(x0 + length)] = True
            label = f"{n} nm" if n < 1000 else f"{n // 1000} um"
            tw = _text_width(label, text_h)
            _text(ink, label, x0 + (length - tw) / 2, y0 - 0.5 * text_h - text_h, text_h, stroke)
        # Arrows pointing at something, each with a letter at its tail.
        for _ in range(int(rng.integers(1, 4))):
            ln = side * rng.uniform(0.06, 0.12)
            ang = rng.uniform(0, 2 * np.pi)
            hx, hy = rng.uniform(margin + ln, w - margin - ln), rng.uniform(margin + ln,
                                                                            h - margin - ln)
            tx, ty = hx - ln * math.cos(ang), hy - ln * math.sin(ang)
            _segment(ink, (tx, ty), (hx, hy), stroke)
            for da in (2.6, -2.6):  # the head's two barbs
                _segment(ink, (hx, hy), (hx + 0.35 * ln * math.cos(ang + da),
                                         hy + 0.35 * ln * math.sin(ang + da)), stroke)
            letter = "AIZMNGSHTLEKVX"[int(rng.integers(0, 14))]
            _text(ink, letter, tx - 0.5 * _text_width(letter, text_h) - text_h * math.cos(ang),
                  ty - 0.5 * text_h - text_h * math.sin(ang), text_h, stroke)
        # A film or frame number in a top corner.
        number = str(int(rng.integers(100, 100000)))
        x0 = margin if rng.random() < 0.5 else w - margin - _text_width(number, text_h)
        _text(ink, number, x0, margin, text_h, stroke)
        img[ink] = top if rng.random() < 0.5 else 0.0


# -- named appearance families -------------------------------------------------------------------
# Each family changes only the look (and, for "heldout-grainy", narrows the granule diameter), so
# the truth stays exact. "standard" is what the bundled models were trained on.
_FAMILIES: dict[str, SyntheticParams] = {
    "standard": SyntheticParams(),
    # Lightly contrasted sections: washed-out striation, faint filaments, paler soft granules.
    "weak-stain": SyntheticParams(
        striation_contrast=(0.45, 0.7), filament_texture=(0.4, 0.7),
        granule_darkness=(0.16, 0.30), granule_edge_nm=20.0, granule_edge_exponent=0.8,
        contrast=(0.45, 0.75)),
    # Heavy uranyl/lead staining: strong striation and filaments, near-black crisp granules,
    # lighter spaces and periphery.
    "strong-stain": SyntheticParams(
        grey_levels={"S": (0.76, 0.84), "N": (0.78, 0.86), "membrane": 0.18},
        striation_contrast=(1.2, 1.5), filament_texture=(1.3, 1.8),
        granule_darkness=(0.02, 0.10), granule_edge_nm=8.0, granule_edge_exponent=0.4,
        contrast=(0.75, 0.95), precipitate_probability=0.6),
    # Low dose: Poisson counts at high noise, film grain.
    "noisy": SyntheticParams(
        noise_model="poisson", noise_scale=2.2, grain=(0.02, 0.04), grain_nm=2.5),
    # Defocused, compressed: more blur, a light halo (underfocus fringe) around the granules,
    # JPEG at quality 55.
    "soft-focus": SyntheticParams(
        blur_nm=(3.0, 4.5), granule_halo=(0.10, 0.18), granule_halo_nm=4.0, jpeg_quality=55),
    # Annotated prints with ribosomes: burned-in scale bar, arrows and letters; small dark dots.
    "annotated": SyntheticParams(
        letters_probability=0.8, ribosome_per_um2=60.0, precipitate_probability=0.5),
    # Held out (benchmarks only, never training): weak striation, pale soft granules, heavy
    # noise, more blur, many ribosomes.
    "heldout-lowcontrast": SyntheticParams(
        striation_contrast=(0.3, 0.45), filament_texture=(0.3, 0.5),
        granule_darkness=(0.20, 0.30), granule_edge_nm=20.0, granule_edge_exponent=1.0,
        noise_scale=2.4, blur_nm=(2.5, 4.0), contrast=(0.4, 0.6), ribosome_per_um2=180.0,
        ribosome_darkness=(0.34, 0.48)),
    # Held out (benchmarks only, never training): strong striation with the spaces darker than
    # the I band, dark small sharp granules, grainy correlated noise, scan lines, JPEG, burned-in
    # scale bar, arrows and letters.
    "heldout-grainy": SyntheticParams(
        grey_levels={"I": (0.70, 0.76), "S": (0.50, 0.56), "N": (0.56, 0.62), "H": 0.52},
        striation_contrast=(1.2, 1.4), filament_texture=(0.6, 0.9),
        granule_darkness=(0.02, 0.08), granule_edge_nm=5.0, granule_edge_exponent=0.3,
        granule_diameter_nm=(14.0, 32.0), blur_nm=(0.8, 1.5), grain=(0.05, 0.08), grain_nm=3.0,
        scan_lines=(0.015, 0.03), jpeg_quality=45, letters_probability=1.0,
        contrast=(0.6, 0.85)),
}
#: The named parameter sets (read-only), by name: see :func:`family_params`.
FAMILIES: Mapping[str, SyntheticParams] = MappingProxyType(_FAMILIES)
#: Families reserved for benchmarks of adaptation to an unseen look: never train on them.
HELDOUT_FAMILIES: tuple[str, ...] = ("heldout-lowcontrast", "heldout-grainy")
#: Families that may be used for training (``"standard"`` first).
TRAINING_FAMILIES: tuple[str, ...] = tuple(k for k in _FAMILIES if k not in HELDOUT_FAMILIES)


def family_params(name: str) -> SyntheticParams:
    """The :class:`SyntheticParams` of a named appearance family (a fresh copy).

    ``"standard"`` is ``SyntheticParams()``; the :data:`HELDOUT_FAMILIES` are for benchmarks only.
    """
    if name not in _FAMILIES:
        raise ValueError(f"unknown synthetic family {name!r}; the families are "
                         f"{', '.join(_FAMILIES)}")
    p = _FAMILIES[name]
    return replace(p) if p.grey_levels is not None else p


def randomised_params(seed: int) -> SyntheticParams:
    """Parameters of one domain-randomised micrograph (in the manner of SynthSeg).

    The anatomy stays that of skeletal muscle (A band denser than the I band, Z line in the middle
    of the I band, H zone and M line in the A band, triads, mitochondria at the Z line); what a
    lab's preparation and microscope change is drawn afresh for every ``seed``, over wide ranges:
    the grey of each structure (the intermyofibrillar space may be lighter or darker than the I
    band), striation and filament contrast, granule darkness, edge softness and halo, noise model
    and level, film grain, scan lines, blur, JPEG compression, overall contrast and illumination,
    contraction state (sarcomere 1.9-3.0 um, H zone with it), oblique cuts (three in ten, tilted
    5-50 degrees), waviness and misregistration, alpha-particle rosettes (three in ten), the
    mitochondria's matrix grey (from a little lighter than the A band to much darker) and columns
    of longitudinal mitochondria between the myofibrils (three in ten), and the distractors
    (stain precipitate, ribosomes, lipid droplets, burned-in letters, arrows and scale bars).
    Training on many such draws teaches a model what stays the same. The ranges are chosen
    from preparations, not from the :data:`HELDOUT_FAMILIES`, which stay out of training.
    """
    rng = np.random.default_rng([int(seed), 0x5EED])
    u = rng.uniform

    def around(v: float, w: float = 0.03, top: float = 1.0) -> tuple[float, float]:
        return (round(max(0.0, v - w), 4), round(min(top, v + w), 4))

    a = u(0.25, 0.55)
    i_band = min(0.9, a + u(0.12, 0.35))
    s_space = u(0.40, 0.86)
    greys = {
        "A": around(a, 0.02), "H": around(min(i_band, a + u(0.03, 0.12)), 0.02),
        "M": around(max(0.02, a - u(0.0, 0.12)), 0.02), "I": around(i_band, 0.02),
        "Z": around(u(0.04, min(0.30, a - 0.05)), 0.02), "S": around(s_space, 0.03),
        "N": around(min(0.95, max(0.3, s_space + u(-0.08, 0.08))), 0.03),
        "outside": around(u(0.75, 0.97), 0.02), "lipid": around(u(0.40, 0.75), 0.03),
        "membrane": around(u(0.10, 0.40), 0.03),
    }
    dark_hi = min(0.32, a - 0.05)
    dark_lo = u(0.0, max(0.01, dark_hi - 0.06))
    sarcomere = u(1.9, 3.0)
    h_zone = float(np.clip(0.22 + (sarcomere - 2.4) * 0.8, 0.05, 0.6))
    blur = u(0.6, 4.5)
    contrast = u(0.30, 0.95)
    halo = u(0.03, 0.15) if rng.random() < 0.3 else 0.0
    grain = u(0.01, 0.07) if rng.random() < 0.4 else 0.0
    scan = u(0.005, 0.03) if rng.random() < 0.25 else 0.0
    kw = dict(
        sarcomere_um=(round(sarcomere, 3), round(sarcomere + 0.1, 3)),
        h_zone_um=(round(h_zone * 0.8, 3), round(h_zone, 3)),
        gap_width_um=(0.03, round(u(0.15, 0.40), 3)),
        waviness_um=(0.01, round(u(0.03, 0.15), 3)),
        misregistration_um=round(u(0.03, 0.2), 3),
        mitochondria_probability=round(u(0.3, 0.8), 3),
        lipid_per_um2=round(u(0.05, 1.0), 3),
        granule_diameter_nm=(round(u(13.0, 18.0), 1), round(u(30.0, 42.0), 1)),
        precipitate_probability=round(u(0.1, 0.7), 3),
        blur_nm=(round(blur, 3), round(blur * 1.2, 3)),
        noise_scale=round(u(0.6, 2.6), 3),
        contrast=(round(contrast, 3), round(min(1.0, contrast + 0.05), 3)),
        illumination=(0.0, round(u(0.02, 0.15), 3)),
        grey_levels=greys,
        striation_contrast=around(u(0.3, 1.5), 0.05, 3.0),
        filament_texture=around(u(0.3, 1.8), 0.1, 5.0),
        granule_darkness=(round(dark_lo, 3), round(min(dark_hi, dark_lo + u(0.05, 0.12)), 3)),
        granule_edge_nm=round(u(5.0, 22.0), 2),
        granule_edge_exponent=round(u(0.3, 1.0), 3),
        granule_halo=(round(halo, 3), round(halo * 1.3, 3)),
        granule_halo_nm=round(u(2.0, 5.0), 2),
        noise_model="poisson" if rng.random() < 0.35 else "gaussian",
        grain=(round(grain, 4), round(grain * 1.2, 4)),
        grain_nm=round(u(1.5, 4.0), 2),
        scan_lines=(round(scan, 4), round(scan * 1.3, 4)),
        jpeg_quality=int(rng.integers(40, 91)) if rng.random() < 0.35 else None,
        letters_probability=1.0 if rng.random() < 0.35 else 0.0,
        ribosome_per_um2=round(u(20.0, 200.0), 1) if rng.random() < 0.5 else 0.0,
        ribosome_darkness=around(u(0.22, 0.45), 0.05),
        # drawn last, so that the draws above stay those of the earlier recipe
        oblique_deg=around(u(5.0, 50.0), 2.5, 75.0) if rng.random() < 0.3 else (0.0, 0.0),
        rosette_fraction=round(u(0.05, 0.3), 3) if rng.random() < 0.3 else 0.0,
    )
    # drawn after the earlier recipe's: the mitochondrial matrix from a little lighter than the A
    # band to much darker (heavy osmium, block-face SEM), and columns of mitochondria in three
    # micrographs in ten
    greys["mito"] = around(min(0.8, max(0.05, a + u(-0.25, 0.12))), 0.03)
    columns = round(u(0.15, 0.7), 3) if rng.random() < 0.3 else 0.0
    return SyntheticParams(**kw, mitochondria_columns=columns)
