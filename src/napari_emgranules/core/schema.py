"""Class schemas: what each label code of a model means.

A schema belongs to a model and travels with its weights (in the JSON sidecar). It says, for every
output channel of the network, the code written into the label map, a one-letter abbreviation (the
seed's density tables use A, I, Z, S, N), a readable name, a display colour, and whether the code is
a region that enters the density table.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

__all__ = [
    "ClassInfo",
    "ClassSchema",
    "SchemaError",
    "LOCATIONS_SCHEMA",
    "LOCATIONS_MITO_SCHEMA",
    "GRANULES_SCHEMA",
    "NAMED_SCHEMAS",
    "default_schema",
    "UNLABELLED",
]

#: Label value meaning "not labelled" (a partial label map: pixels nobody has checked). It is not a
#: class: training losses, metrics and class weights skip these pixels. The largest uint16, so it
#: survives the uint16 PNG/TIFF label files and can never be a class code.
UNLABELLED = 65535

_HEX_COLOUR = re.compile(r"^#[0-9a-fA-F]{6}([0-9a-fA-F]{2})?$")
# Distinct colours for the classes of a user's own schema (code 0 is black).
_PALETTE = ("#ffe119", "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4",
            "#f032e6", "#bfef45", "#469990", "#9a6324", "#800000")


class SchemaError(ValueError):
    """A class schema is malformed, or labels/weights do not fit it."""


@dataclass(frozen=True)
class ClassInfo:
    """One class of a segmentation model.

    Parameters
    ----------
    code : int
        Value written into the label map (equals the network's output channel index).
    letter : str
        Short abbreviation used in table columns (``"A"``, ``"I"``, ...).
    name : str
        Human-readable name shown in the viewer and in tables.
    color : str
        Display colour as ``#rrggbb`` or ``#rrggbbaa``.
    measured : bool
        Whether this class is a region that enters the density table.
    """

    code: int
    letter: str
    name: str
    color: str
    measured: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.code, (int, np.integer)) or isinstance(self.code, bool):
            raise SchemaError(f"class code must be an integer, got {self.code!r}")
        if not str(self.letter).strip():
            raise SchemaError(f"class {self.code} needs a non-empty letter")
        if not str(self.name).strip():
            raise SchemaError(f"class {self.code} needs a non-empty name")
        if not _HEX_COLOUR.match(str(self.color)):
            raise SchemaError(
                f"class {self.code} ({self.name}): colour {self.color!r} is not '#rrggbb'"
            )


@dataclass(frozen=True)
class ClassSchema:
    """The classes of one model, codes ``0 .. n_classes - 1`` in order.

    Parameters
    ----------
    kind : str
        What the model segments (``"locations"``, ``"granules"`` or a user's own task name).
    classes : tuple of ClassInfo
        One entry per network output channel; ``classes[i].code == i``.
    """

    kind: str
    classes: tuple[ClassInfo, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        if len(self.classes) < 2:
            raise SchemaError(f"schema {self.kind!r} needs at least 2 classes")
        codes = [c.code for c in self.classes]
        if codes != list(range(len(codes))):
            raise SchemaError(
                f"schema {self.kind!r}: codes must be 0..{len(codes) - 1} in order, got {codes}"
            )
        letters = [c.letter for c in self.classes]
        if len(set(letters)) != len(letters):
            raise SchemaError(f"schema {self.kind!r}: letters must be unique, got {letters}")

    # -- queries -------------------------------------------------------------------------------
    @property
    def n_classes(self) -> int:
        """Number of classes (= the network's output channels)."""
        return len(self.classes)

    @property
    def measured_codes(self) -> tuple[int, ...]:
        """Codes of the regions that enter the density table, in order."""
        return tuple(c.code for c in self.classes if c.measured)

    @property
    def names(self) -> dict[int, str]:
        """Map from code to name."""
        return {c.code: c.name for c in self.classes}

    @property
    def letters(self) -> dict[int, str]:
        """Map from code to letter."""
        return {c.code: c.letter for c in self.classes}

    def colors(self) -> dict[int, str]:
        """Map from code to ``#rrggbb`` colour (for a viewer's label colormap)."""
        return {c.code: c.color for c in self.classes}

    def __getitem__(self, code: int) -> ClassInfo:
        return self.classes[code]

    def check_labels(self, labels: np.ndarray, what: str = "labels", *,
                     allow_unlabelled: bool = False) -> None:
        """Raise :class:`SchemaError` if ``labels`` holds a code outside the schema.

        ``allow_unlabelled`` accepts :data:`UNLABELLED` too (partial training labels).
        """
        arr = np.asarray(labels)
        if arr.dtype.kind not in "iub":
            raise SchemaError(f"{what}: label maps must be integers, got dtype {arr.dtype}")
        if arr.size == 0:
            return
        lo, hi = int(arr.min()), int(arr.max())
        if allow_unlabelled and hi == UNLABELLED:
            hi = int(arr.max(where=arr != UNLABELLED, initial=0))
        if lo < 0 or hi >= self.n_classes:
            bad = (arr < 0) | (arr >= self.n_classes)
            if allow_unlabelled:
                bad &= arr != UNLABELLED
            bad = np.unique(arr[bad])[:10].tolist()
            # a mask saved as a binary image (0/255, as ImageJ and most tools save them)
            binary = bad == [255] and self.n_classes == 2
            raise SchemaError(
                f"{what}: codes {bad} are not in the {self.kind} schema "
                f"(valid codes 0..{self.n_classes - 1})"
                + (f"; a binary mask saved as 0/255 must hold 0 ({self.classes[0].name}) and 1 "
                   f"({self.classes[1].name}): divide it by 255" if binary else "")
            )

    # -- changes ---------------------------------------------------------------------------------
    def renamed(self, code: int, *, letter: str | None = None, name: str | None = None,
                color: str | None = None, measured: bool | None = None) -> ClassSchema:
        """Return a copy with one class renamed, recoloured or (un)measured."""
        if not 0 <= code < self.n_classes:
            raise SchemaError(f"schema {self.kind!r} has no code {code}")
        old = self.classes[code]
        new = replace(
            old,
            letter=old.letter if letter is None else letter,
            name=old.name if name is None else name,
            color=old.color if color is None else color,
            measured=old.measured if measured is None else measured,
        )
        classes = list(self.classes)
        classes[code] = new
        return ClassSchema(self.kind, tuple(classes))

    # -- serialisation -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (stored in the weights' sidecar)."""
        return {
            "kind": self.kind,
            "classes": [
                {"code": c.code, "letter": c.letter, "name": c.name, "color": c.color,
                 "measured": c.measured}
                for c in self.classes
            ],
        }

    @classmethod
    def from_names(cls, kind: str, names: Iterable[str], *, measured: Iterable[int] = ()) -> ClassSchema:
        """A schema for a new task from its class names, codes ``0..n-1`` in the order given.

        Letters are the first unused upper-case letter of each name (else of the alphabet), colours
        come from a fixed palette, and ``measured`` lists the codes that enter density tables.

        Examples
        --------
        >>> ClassSchema.from_names("membranes", ["background", "membrane"]).letters
        {0: 'B', 1: 'M'}
        """
        names = [str(n).strip() for n in names]
        if any(not n for n in names):
            raise SchemaError(f"schema {kind!r}: class names must not be empty, got {names}")
        measured = set(measured)
        used: set[str] = set()
        classes = []
        for code, name in enumerate(names):
            pool = [c.upper() for c in name if c.isalnum()] + list("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
            letter = next((c for c in pool if c not in used), str(code))
            used.add(letter)
            colour = "#000000" if code == 0 else _PALETTE[(code - 1) % len(_PALETTE)]
            classes.append(ClassInfo(code, letter, name, colour, measured=code in measured))
        return cls(str(kind), tuple(classes))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClassSchema:
        """Inverse of :meth:`to_dict`; raises :class:`SchemaError` on malformed input."""
        if not isinstance(data, Mapping):
            raise SchemaError(f"a schema must be a JSON object, got {type(data).__name__}")
        try:
            kind = str(data["kind"])
            raw: Iterable[Mapping[str, Any]] = data["classes"]
            classes = tuple(
                ClassInfo(int(c["code"]), str(c["letter"]), str(c["name"]), str(c["color"]),
                          bool(c.get("measured", False)))
                for c in raw
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, SchemaError):
                raise
            raise SchemaError(f"malformed schema ({type(exc).__name__}: {exc})") from None
        return cls(kind, classes)


LOCATIONS_SCHEMA = ClassSchema(
    "locations",
    (
        ClassInfo(0, "U", "unclassified", "#000000"),
        ClassInfo(1, "A", "A band", "#e6194b", measured=True),
        ClassInfo(2, "I", "I band", "#3cb44b", measured=True),
        ClassInfo(3, "Z", "Z disk + mitochondria", "#4363d8", measured=True),
        ClassInfo(4, "S", "intermyofibrillar space", "#f58231", measured=True),
        ClassInfo(5, "N", "peripheral region", "#911eb4", measured=True),
        ClassInfo(6, "O", "other", "#a9a9a9"),
    ),
)
"""Default Locations schema (DESIGN.md): only codes 1..5 enter the density table."""

LOCATIONS_MITO_SCHEMA = ClassSchema(
    "locations",
    (
        *LOCATIONS_SCHEMA.classes[:3],
        ClassInfo(3, "Z", "Z disk", "#4363d8", measured=True),
        *LOCATIONS_SCHEMA.classes[4:],
        ClassInfo(7, "M", "mitochondria", "#42d4f4", measured=True),
    ),
)
"""Locations with mitochondria apart from the Z disk (code 7, letter M): the default schema's
codes 0-6 unchanged, so a Locations model of the default schema is widened to it by one class
(:func:`~.train.train` starts M from the joined class's weights), and tables get an M row beside Z."""

GRANULES_SCHEMA = ClassSchema(
    "granules",
    (
        ClassInfo(0, "B", "background", "#000000"),
        ClassInfo(1, "G", "granule", "#ffe119", measured=True),
    ),
)
"""Default Granules schema: 0 background, 1 granule."""


def name_key(name: str) -> str:
    """A class or segment name compared without case, spaces or punctuation (``"Z-disc"`` ->
    ``"zdisc"``)."""
    return "".join(ch for ch in str(name).lower() if ch.isascii() and ch.isalnum())


NAMED_SCHEMAS: dict[str, ClassSchema] = {
    "locations": LOCATIONS_SCHEMA, "locations-mito": LOCATIONS_MITO_SCHEMA, "granules": GRANULES_SCHEMA,
}
"""The schemas ``--schema`` knows by name."""


def default_schema(kind: str) -> ClassSchema:
    """Return the default schema for ``"locations"`` or ``"granules"``."""
    try:
        return {"locations": LOCATIONS_SCHEMA, "granules": GRANULES_SCHEMA}[kind]
    except KeyError:
        raise SchemaError(
            f"no default schema for model kind {kind!r}; use 'locations' or 'granules'"
        ) from None
