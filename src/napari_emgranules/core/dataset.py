"""Training pairs on disk: user-corrected label maps for retraining the segmentation models.

Layout of a training-data folder (a *root*), the original tool's layout plus two small files::

    <root>/images/<name>.<ext>     8/16-bit gray PNG or TIFF (the micrograph tile)
    <root>/labels/<name>.<ext>     uint16 PNG or TIFF of class codes, same stem, same shape
    <root>/schema.json             ClassSchema.to_dict() of the labels' classes (optional)
    <root>/manifest.csv            one row per pair (optional), columns MANIFEST_COLUMNS

``manifest.csv`` columns: ``name`` (the image file name, e.g. ``cell_5.png``), ``source``
(the source micrograph's name or path, empty if unknown), ``y``, ``x`` (tile origin in source
pixels, empty if unknown), ``height``, ``width``, ``pixel_size_nm``, ``schema_kind``, ``made_by``
(``"corrected"`` or the model that produced the labels) and ``created`` (ISO 8601 UTC timestamp).

Folders without ``manifest.csv`` / ``schema.json`` (the original tool's bare folders) load too.

:func:`export_training_pairs` cuts a micrograph and its label map into tiles and adds them to a
root without ever overwriting a file; :func:`load_training_pairs` checks one or more roots and
returns a :class:`TrainingSet`, reporting every problem found in one :class:`DatasetError`.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, overload

import numpy as np

from .io import (
    LABEL_SUFFIXES,
    MICROGRAPH_SUFFIXES,
    MIN_SIDE_PX,
    Micrograph,
    MicrographError,
    _fmt_shape,
    atomic_output,
    file_sha256,
    read_labels,
    read_micrograph,
    write_image,
    write_labels,
)
from .schema import UNLABELLED, ClassSchema, SchemaError
from .tiling import seed_tile_origins

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_PIXEL_SIZE_NM",
    "IMAGES_DIR",
    "LABELS_DIR",
    "MANIFEST_COLUMNS",
    "MANIFEST_NAME",
    "MIN_TILE_SIDE_PX",
    "SCHEMA_NAME",
    "DatasetError",
    "TrainingPair",
    "TrainingSet",
    "export_training_pairs",
    "load_training_pairs",
    "pairs_from_files",
]

PathLike = str | os.PathLike[str]

#: Sub-folder of a root holding the images.
IMAGES_DIR = "images"
#: Sub-folder of a root holding the label maps.
LABELS_DIR = "labels"
#: File name of the per-root manifest.
MANIFEST_NAME = "manifest.csv"
#: File name of the per-root class schema.
SCHEMA_NAME = "schema.json"
#: Columns of ``manifest.csv``, in this order.
MANIFEST_COLUMNS: tuple[str, ...] = (
    "name", "source", "y", "x", "height", "width", "pixel_size_nm", "schema_kind", "made_by",
    "created",
)
#: Columns new exports add after :data:`MANIFEST_COLUMNS` (optional when reading): ``labelled``
#: says which pixels of the labels are truth (``full``: every pixel; ``changed``: the pixels the
#: user changed or marked as reviewed; ``strokes``: painted strokes), ``labelled_fraction`` the
#: share of the tile's pixels that are labelled (the rest are :data:`UNLABELLED`).
OPTIONAL_COLUMNS: tuple[str, ...] = ("labelled", "labelled_fraction")
#: Folder of a root where re-exported tiles put the pairs they replace (never deleted).
SUPERSEDED_DIR = "superseded"
#: Values of the manifest's ``labelled`` column.
LABELLED_KINDS: tuple[str, ...] = ("full", "changed", "strokes")
#: Pixel size assumed when neither the manifest nor the image file gives one (the models' native size).
DEFAULT_PIXEL_SIZE_NM = 0.8
#: Edge tiles smaller than this on a side are not exported (the models need at least this much).
MIN_TILE_SIDE_PX = MIN_SIDE_PX
#: A DatasetError message lists at most this many problems.
MAX_LISTED_PROBLEMS = 20

_IMAGE_FORMATS = {"png": ".png", "tif": ".tif", "tiff": ".tif"}
_EXTRA = "\0extra"  # DictReader key for values beyond the header
# Characters that cannot (or should not) appear in file names on Windows, macOS or Linux.
_UNSAFE_NAME_CHARS = re.compile(r'[<>:"/\\|?*\x00-\x1f\s]+')


class DatasetError(ValueError):
    """Training data on disk (or to be written) is unusable.

    The first line says what is wrong and what to do; the following lines list the offending files,
    one problem a line (at most :data:`MAX_LISTED_PROBLEMS`, then ``... and N more``).

    Parameters
    ----------
    summary : str
        What is wrong, in one line.
    problems : sequence of str, optional
        One line per offending file; kept in full in :attr:`problems`.
    """

    def __init__(self, summary: str, problems: Sequence[str] = ()) -> None:
        self.summary = summary
        self.problems: list[str] = list(problems)
        lines = [summary]
        shown = self.problems[:MAX_LISTED_PROBLEMS]
        lines.extend(f"  {p}" for p in shown)
        if len(self.problems) > len(shown):
            lines.append(f"  ... and {len(self.problems) - len(shown)} more")
        super().__init__("\n".join(lines))


# --------------------------------------------------------------------------------------------
# Pairs and sets
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingPair:
    """One image and its label map on disk.

    Parameters
    ----------
    name : str
        The image's file name (e.g. ``"cell_5.png"``), as in ``manifest.csv``.
    image_path, labels_path : pathlib.Path
        The two files.
    source : str
        Name or path of the micrograph the tile was cut from; ``""`` if unknown.
    origin : tuple of int or None
        ``(y, x)`` of the tile's top-left corner in the source micrograph, None if unknown.
    pixel_size_nm : float
        Pixel size in nanometres.
    made_by : str
        ``"corrected"`` (painted/checked by a person), the model that produced the labels, or
        ``"unknown"``.
    labelled : str
        Which pixels are truth: ``"full"`` (all), ``"changed"`` or ``"strokes"`` (the others
        hold :data:`UNLABELLED`); see :data:`OPTIONAL_COLUMNS`.
    """

    name: str
    image_path: Path
    labels_path: Path
    source: str
    origin: tuple[int, int] | None
    pixel_size_nm: float
    made_by: str
    labelled: str = "full"

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """Read the image (in its stored dtype) and the label map.

        Returns
        -------
        tuple of numpy.ndarray
            ``(image, labels)``, writable, 2-D of the same shape; labels are uint8 or uint16 codes.

        Raises
        ------
        DatasetError
            If a file cannot be read or the two shapes differ.
        """
        try:
            image = read_micrograph(self.image_path).data
            labels = read_labels(self.labels_path)
        except MicrographError as exc:
            raise DatasetError(
                f"training pair {self.name}: a file cannot be read; export the pair again or "
                "remove it from the folder", [str(exc)]
            ) from exc
        if image.shape != labels.shape:
            raise DatasetError(
                f"training pair {self.name}: image and labels differ in size; export the pair again",
                [_shape_problem(self.image_path, image.shape, self.labels_path, labels.shape)],
            )
        # decoders may hand out read-only buffers; training code augments in place
        return _writable(image), _writable(labels)


@dataclass(repr=False)
class TrainingSet:
    """Training pairs from one or more folders, with the class schema their labels follow.

    Parameters
    ----------
    pairs : list of TrainingPair
        The pairs, in folder order, then by file name.
    schema : ClassSchema or None
        The labels' schema (given to :func:`load_training_pairs` or read from ``schema.json``);
        None when unknown (codes were then not checked).
    roots : list of pathlib.Path
        The folders the pairs came from.
    """

    pairs: list[TrainingPair] = field(default_factory=list)
    schema: ClassSchema | None = None
    roots: list[Path] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[TrainingPair]:
        return iter(self.pairs)

    @overload
    def __getitem__(self, index: int) -> TrainingPair: ...

    @overload
    def __getitem__(self, index: slice) -> TrainingSet: ...

    def __getitem__(self, index: int | slice) -> TrainingPair | TrainingSet:
        if isinstance(index, slice):
            return TrainingSet(self.pairs[index], self.schema, list(self.roots))
        return self.pairs[index]

    def __repr__(self) -> str:
        kind = self.schema.kind if self.schema is not None else None
        roots = ", ".join(str(r) for r in self.roots)
        return f"TrainingSet({len(self.pairs)} pairs, schema={kind!r}, roots=[{roots}])"

    def pixel_sizes(self) -> list[float]:
        """Pixel size (nm) of each pair, in order."""
        return [p.pixel_size_nm for p in self.pairs]

    def manifest_hash(self) -> str:
        """Fingerprint of the set's content, for recording which data a model was trained on.

        SHA-256 (hex) over the sorted pair names with the SHA-256 of each image and labels file's
        bytes: independent of folder locations, pair order and file times; changes when any pixel
        (or any other byte of a file) changes, or a pair is added, removed or renamed.

        Returns
        -------
        str
            64 hexadecimal digits.

        Raises
        ------
        DatasetError
            If a file can no longer be read.
        """
        entries: list[tuple[str, str, str]] = []
        problems: list[str] = []
        for pair in self.pairs:
            try:
                entries.append((pair.name, file_sha256(pair.image_path), file_sha256(pair.labels_path)))
            except OSError as exc:
                problems.append(f"{exc.filename or pair.name}: cannot be read ({exc.strerror or exc})")
        if problems:
            raise DatasetError(
                "cannot fingerprint the training set: files went missing or cannot be read; "
                "load the folders again", problems
            )
        digest = hashlib.sha256(b"napari-emgranules training set v1\n")
        for name, image_hash, labels_hash in sorted(entries):
            digest.update(f"{name}\0{image_hash}\0{labels_hash}\n".encode())
        return digest.hexdigest()

    def split(self, val_fraction: float, seed: int = 0) -> tuple[TrainingSet, TrainingSet]:
        """Split into training and validation sets, the same way for the same seed and pairs.

        The order is a pseudo-random shuffle keyed by ``seed`` and the pair names (SHA-256, so it
        is the same on every machine and NumPy version, and does not depend on the order of the
        pairs or folders). Each part keeps the set's order.

        Parameters
        ----------
        val_fraction : float
            Fraction of pairs for validation, ``0 <= val_fraction < 1``. With at least 2 pairs
            and ``val_fraction > 0`` each part gets at least one pair. ``0`` returns
            ``(self, empty set)``.
        seed : int
            Seed of the shuffle.

        Returns
        -------
        tuple of TrainingSet
            ``(training, validation)``, disjoint, together all pairs.

        Raises
        ------
        ValueError
            If ``val_fraction`` is outside ``[0, 1)`` or ``seed`` is not an integer.
        """
        if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float, np.number)):
            raise ValueError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
        fraction = float(val_fraction)
        if not (math.isfinite(fraction) and 0.0 <= fraction < 1.0):
            raise ValueError(
                f"val_fraction must be at least 0 and below 1 (e.g. 0.2 for 20 % validation), "
                f"got {val_fraction!r}"
            )
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        empty = TrainingSet([], self.schema, list(self.roots))
        n = len(self.pairs)
        if fraction == 0.0 or n == 0:
            return self, empty
        if n == 1:
            logger.warning("only 1 training pair: nothing left for validation (val_fraction=%g)", fraction)
            return self, empty
        n_val = min(max(1, round(n * fraction)), n - 1)
        occurrence: dict[str, int] = {}
        keys: list[tuple[str, int]] = []
        for index, pair in enumerate(self.pairs):
            k = occurrence.get(pair.name, 0)
            occurrence[pair.name] = k + 1
            key = hashlib.sha256(f"{int(seed)}\0{pair.name}\0{k}".encode()).hexdigest()
            keys.append((key, index))
        val_indices = {index for _, index in sorted(keys)[:n_val]}
        train = [p for i, p in enumerate(self.pairs) if i not in val_indices]
        val = [p for i, p in enumerate(self.pairs) if i in val_indices]
        return (TrainingSet(train, self.schema, list(self.roots)),
                TrainingSet(val, self.schema, list(self.roots)))


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _writable(array: np.ndarray) -> np.ndarray:
    return array if array.flags.writeable else array.copy()


def _shape_problem(image_path: Path, image_shape: tuple[int, ...], labels_path: Path,
                   labels_shape: tuple[int, ...]) -> str:
    return (
        f"{labels_path}: labels are {_fmt_shape(labels_shape)} px but the image {image_path.name} "
        f"is {_fmt_shape(image_shape)} px; labels must cover the image pixel for pixel"
    )


def _same_schema(a: ClassSchema, b: ClassSchema) -> bool:
    """Schemas agree for training when kind and class letters (hence codes) agree.

    Names, colours and the ``measured`` flags are display and measurement choices; they may differ.
    """
    return a.kind == b.kind and [c.letter for c in a.classes] == [c.letter for c in b.classes]


def _describe_schema(schema: ClassSchema) -> str:
    letters = "".join(c.letter for c in schema.classes)
    return f"{schema.kind!r} with {schema.n_classes} classes ({letters})"


def _read_schema_file(path: Path) -> ClassSchema:
    """Read ``schema.json``; raise DatasetError naming the file when it is unusable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return ClassSchema.from_dict(data)
    except OSError as exc:
        problem = f"{path}: cannot be read ({exc.strerror or exc})"
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        problem = f"{path}: is not valid JSON ({exc})"
    except SchemaError as exc:
        problem = f"{path}: is not a valid class schema ({exc})"
    raise DatasetError(
        f"{path}: the class schema file is unusable; fix it, or delete it and pass schema=", [problem]
    )


def _read_manifest(path: Path) -> tuple[list[tuple[int, dict[str, str]]], list[str], list[str]]:
    """Parse ``manifest.csv``.

    Returns
    -------
    tuple
        ``(line number, row)`` pairs of the well-formed rows, the column names, and one problem
        per row of the wrong length.

    Raises
    ------
    DatasetError
        If the file cannot be read, is not UTF-8 CSV, or lacks a header or columns.
    """
    what = f"{path}: the manifest is malformed; fix it, or delete it (the pairs then load without it)"
    rows: list[tuple[int, dict[str, str]]] = []
    problems: list[str] = []
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh, restkey=_EXTRA)
            fieldnames = [str(f).strip() for f in (reader.fieldnames or [])]
            if not fieldnames:
                raise DatasetError(what, [f"{path}: is empty; expected a header line with the columns "
                                          f"{', '.join(MANIFEST_COLUMNS)}"])
            reader.fieldnames = fieldnames
            missing = [c for c in MANIFEST_COLUMNS if c not in fieldnames]
            if missing:
                raise DatasetError(what, [f"{path}: lacks the column(s) {', '.join(missing)}"])
            for row in reader:
                line = reader.line_num
                if _EXTRA in row:
                    n_values = len(fieldnames) + len(row[_EXTRA])
                    problems.append(
                        f"{path}: line {line} has {n_values} values for {len(fieldnames)} columns"
                    )
                    continue
                if any(v is None for v in row.values()):
                    problems.append(
                        f"{path}: line {line} has fewer values than the {len(fieldnames)} columns"
                    )
                    continue
                rows.append((line, {k: (v or "").strip() for k, v in row.items()}))
    except OSError as exc:
        raise DatasetError(what, [f"{path}: cannot be read ({exc.strerror or exc})"]) from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(what, [f"{path}: is not a UTF-8 CSV file ({exc})"]) from exc
    return rows, fieldnames, problems


def _visible_files(folder: Path) -> list[Path]:
    """Plain files of a folder, skipping hidden ones (and atomic_output's temporary files)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _parse_int(text: str) -> int | None:
    if text == "":
        return None
    value = int(text)  # ValueError for non-integers
    if value < 0:
        raise ValueError(f"{text} is negative")
    return value


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_training_pairs(*folders: PathLike, schema: ClassSchema | None = None) -> TrainingSet:
    """Check and list the training pairs of one or more training-data folders.

    Each folder is a root holding ``images/`` and ``labels/`` with files of the same stem (the
    suffixes may differ, e.g. ``images/cell_0.tif`` and ``labels/cell_0.png``), optionally with
    ``manifest.csv`` and ``schema.json``. Without a manifest a pair's source is ``""``, its origin
    None, its maker ``"unknown"`` and its pixel size the image file's calibration, else
    :data:`DEFAULT_PIXEL_SIZE_NM`.

    Every file is read once to check it (one pair at a time; the arrays are not kept). All
    problems of all folders are collected and reported together.

    Parameters
    ----------
    *folders : str or os.PathLike
        Training-data roots.
    schema : ClassSchema, optional
        Schema the label codes must fit. Default: the roots' ``schema.json`` (all must agree);
        without either, codes are not checked.

    Returns
    -------
    TrainingSet
        The pairs, folder by folder, sorted by file name within each.

    Raises
    ------
    DatasetError
        Listing every problem: a missing folder or ``images/``/``labels/`` sub-folder; files with
        no partner on the other side; unreadable, corrupt or empty files; image and labels of
        different sizes; label codes outside the schema; roots whose ``schema.json`` disagree; a
        malformed ``manifest.csv`` or a manifest row for a missing file; a root without pairs.
    TypeError
        If ``schema`` is not a :class:`ClassSchema`.
    """
    if schema is not None and not isinstance(schema, ClassSchema):
        raise TypeError(f"schema must be a ClassSchema or None, got {type(schema).__name__}")
    if not folders:
        raise DatasetError(
            "no training-data folders given; pass one or more folders that hold images/ and labels/"
        )
    roots: list[Path] = []
    seen: set[Path] = set()
    for folder in folders:
        root = Path(folder).expanduser()
        key = root.resolve()
        if key in seen:
            logger.warning("%s: given twice; loading it once", root)
            continue
        seen.add(key)
        roots.append(root)

    problems: list[str] = []
    effective = _effective_schema(roots, schema, problems)
    pairs: list[TrainingPair] = []
    for root in roots:
        pairs.extend(_scan_root(root, effective, problems, check_kind=schema is None))
    if problems:
        where = ", ".join(str(r) for r in roots)
        raise DatasetError(
            f"{len(problems)} problem(s) with the training data in {where}; fix or remove the files "
            "listed below and load again", problems
        )
    logger.info("loaded %d training pairs from %d folder(s)", len(pairs), len(roots))
    return TrainingSet(pairs, effective, roots)


def pairs_from_files(items: Iterable[tuple[PathLike, PathLike]], *, schema: ClassSchema | None = None,
                     pixel_size_nm: float | None = None) -> TrainingSet:
    """Whole micrographs and their (corrected or partial) label maps as a :class:`TrainingSet`.

    Training needs no export step: each ``(micrograph, labels)`` file pair is one training image,
    at its own pixel size. Labels may hold :data:`UNLABELLED` (partial labels).

    Parameters
    ----------
    items : iterable of (path, path)
        Micrograph file and label-map file (same shape).
    schema : ClassSchema, optional
        Checks the label codes.
    pixel_size_nm : float, optional
        For micrographs whose file gives no pixel size (it is never guessed).

    Raises
    ------
    DatasetError
        Listing every unreadable file, size mismatch, code outside the schema and micrograph
        without a pixel size, before anything is trained.
    """
    pairs: list[TrainingPair] = []
    problems: list[str] = []
    for image_path, labels_path in items:
        image_path, labels_path = Path(image_path).expanduser(), Path(labels_path).expanduser()
        n_before = len(problems)
        try:
            micrograph = read_micrograph(image_path, pixel_size_nm)
            labels = read_labels(labels_path, schema)
        except MicrographError as exc:
            problems.append(str(exc))
            continue
        if micrograph.data.shape != labels.shape:
            problems.append(_shape_problem(image_path, micrograph.data.shape, labels_path, labels.shape))
        if schema is not None:
            try:
                schema.check_labels(labels, str(labels_path), allow_unlabelled=True)
            except SchemaError as exc:
                problems.append(f"{exc}; repaint those pixels or use the matching schema")
        if micrograph.pixel_size_source == "model":
            problems.append(f"{image_path}: has no pixel size in its metadata; give it "
                            "(--pixel-size NM, pixel_size_nm=...)")
        if len(problems) == n_before:
            kind = "strokes" if int(labels.max(initial=0)) == UNLABELLED else "full"
            pairs.append(TrainingPair(image_path.name, image_path, labels_path, str(image_path), (0, 0),
                                      float(micrograph.pixel_size_nm), "corrected", kind))
    if problems:
        raise DatasetError(f"{len(problems)} problem(s) with the micrographs and label maps to train "
                           "on; fix the files listed below", problems)
    if not pairs:
        raise DatasetError("no micrographs given to train on")
    return TrainingSet(pairs, schema, sorted({p.image_path.parent for p in pairs}))


def _effective_schema(roots: list[Path], schema: ClassSchema | None,
                      problems: list[str]) -> ClassSchema | None:
    """The schema to check codes against: the argument, else the roots' (agreeing) schema.json."""
    found: list[tuple[Path, ClassSchema]] = []
    for root in roots:
        path = root / SCHEMA_NAME
        if not path.is_file():
            continue
        try:
            found.append((path, _read_schema_file(path)))
        except DatasetError as exc:
            problems.extend(exc.problems)
    if schema is not None:
        for path, file_schema in found:
            if not _same_schema(file_schema, schema):
                logger.warning(
                    "%s: describes %s, but schema=%s was given; checking the labels against the "
                    "given schema", path, _describe_schema(file_schema), _describe_schema(schema),
                )
        return schema
    if not found:
        return None
    first_path, first = found[0]
    differing = [(p, s) for p, s in found[1:] if not _same_schema(s, first)]
    if differing:
        problems.append(
            "the folders' class schemas differ (labels of different schemas cannot be trained "
            "together; load them separately or pass schema=):"
        )
        problems.extend(f"{p}: {_describe_schema(s)}" for p, s in [(first_path, first), *differing])
        return None
    return first


def _scan_root(root: Path, schema: ClassSchema | None, problems: list[str], *,
               check_kind: bool) -> list[TrainingPair]:
    """Check one root; append its problems and return its pairs."""
    if not root.exists():
        problems.append(f"{root}: does not exist; check the folder name")
        return []
    if not root.is_dir():
        problems.append(f"{root}: is a file; pass the training-data folder that holds images/ and labels/")
        return []
    images_dir, labels_dir = root / IMAGES_DIR, root / LABELS_DIR
    missing = [d for d in (images_dir, labels_dir) if not d.is_dir()]
    if missing:
        hint = ""
        if root.name in (IMAGES_DIR, LABELS_DIR):
            hint = f" (did you mean the parent folder {root.parent}?)"
        for d in missing:
            problems.append(
                f"{d}: folder is missing; a training-data folder holds {IMAGES_DIR}/ and "
                f"{LABELS_DIR}/ with identically named files{hint}"
            )
        return []

    images = _side_files(images_dir, MICROGRAPH_SUFFIXES, "image", problems)
    labels = _side_files(labels_dir, LABEL_SUFFIXES, "label map", problems)
    for stem in sorted(set(images) - set(labels)):
        problems.append(
            f"{images[stem]}: has no labels file (no {stem}.png/.tif in {labels_dir}); add it or "
            "remove the image"
        )
    for stem in sorted(set(labels) - set(images)):
        problems.append(
            f"{labels[stem]}: has no image (no {stem}.png/.tif in {images_dir}); add it or remove "
            "the labels"
        )
    stems = sorted(set(images) & set(labels), key=lambda s: images[s].name)
    if not stems:
        problems.append(
            f"{root}: no training pairs ({len(images)} image(s) in {IMAGES_DIR}/, {len(labels)} "
            f"label file(s) in {LABELS_DIR}/ with matching names); export corrected labels into it "
            "or pass another folder"
        )

    rows: dict[str, tuple[int, dict[str, str]]] = {}
    manifest = root / MANIFEST_NAME
    if manifest.is_file():
        try:
            parsed, _, row_problems = _read_manifest(manifest)
            problems.extend(row_problems)
        except DatasetError as exc:
            problems.extend(exc.problems)
            parsed = []
        image_names = {images[s].name for s in images}
        for line, row in parsed:
            name = row["name"]
            if name in rows:
                problems.append(f"{manifest}: line {line} repeats {name!r} (first at line {rows[name][0]})")
            elif name not in image_names:
                problems.append(
                    f"{manifest}: line {line} names {name!r}, which is not in {images_dir}; restore "
                    "the file or delete the row"
                )
            rows.setdefault(name, (line, row))
    else:
        logger.info("%s: no %s; using defaults for source, origin and pixel size", root, MANIFEST_NAME)

    pairs: list[TrainingPair] = []
    for stem in stems:
        pair = _check_pair(images[stem], labels[stem], rows.get(images[stem].name), manifest,
                           schema, problems, check_kind=check_kind)
        if pair is not None:
            pairs.append(pair)
    return pairs


def _side_files(folder: Path, suffixes: tuple[str, ...], kind: str, problems: list[str]) -> dict[str, Path]:
    """Files of one side keyed by stem; report duplicate stems and unusable suffixes."""
    by_stem: dict[str, Path] = {}
    for path in _visible_files(folder):
        suffix = path.suffix.lower()
        if suffix not in suffixes:
            if suffix in MICROGRAPH_SUFFIXES:  # a JPEG label map: lossy, codes are damaged
                problems.append(
                    f"{path}: label maps must be lossless ({', '.join(LABEL_SUFFIXES)}); JPEG changes "
                    "the class codes — export the labels again as PNG or TIFF"
                )
            else:
                logger.info("%s: not a %s file (%s); ignoring it", path, kind, ", ".join(suffixes))
            continue
        if path.stem in by_stem:
            problems.append(
                f"{path}: has the same name as {by_stem[path.stem].name} apart from the suffix; keep "
                "only one of them"
            )
            continue
        by_stem[path.stem] = path
    return by_stem


def _check_pair(image_path: Path, labels_path: Path, entry: tuple[int, dict[str, str]] | None,
                manifest: Path, schema: ClassSchema | None, problems: list[str], *,
                check_kind: bool) -> TrainingPair | None:
    """Read both files once, check them and the manifest row; None if anything is wrong."""
    n_before = len(problems)
    image_shape: tuple[int, ...] | None = None
    image_pixel_size = DEFAULT_PIXEL_SIZE_NM
    try:
        micrograph = read_micrograph(image_path, default_pixel_size_nm=DEFAULT_PIXEL_SIZE_NM)
        image_shape, image_pixel_size = micrograph.data.shape, micrograph.pixel_size_nm
        del micrograph
    except MicrographError as exc:
        problems.append(str(exc))
    try:
        labels = read_labels(labels_path)
    except MicrographError as exc:
        problems.append(str(exc))
        labels = None
    if labels is not None:
        if image_shape is not None and labels.shape != image_shape:
            problems.append(_shape_problem(image_path, image_shape, labels_path, labels.shape))
        if schema is not None:
            try:
                schema.check_labels(labels, str(labels_path), allow_unlabelled=True)
            except SchemaError as exc:
                problems.append(f"{exc}; repaint those pixels or use the matching schema")
        del labels

    source, origin, pixel_size, made_by, labelled = "", None, image_pixel_size, "unknown", "full"
    if entry is not None:
        line, row = entry
        where = f"{manifest}: line {line} ({row['name']})"
        try:
            y, x = _parse_int(row["y"]), _parse_int(row["x"])
            height, width = _parse_int(row["height"]), _parse_int(row["width"])
            if row["pixel_size_nm"]:
                pixel_size = float(row["pixel_size_nm"])
                if not (math.isfinite(pixel_size) and pixel_size > 0):
                    raise ValueError(f"pixel_size_nm {row['pixel_size_nm']} is not a positive number")
        except ValueError as exc:
            problems.append(f"{where}: malformed values ({exc}); y, x, height, width must be whole "
                            "numbers and pixel_size_nm a positive number, or empty")
        else:
            if (y is None) != (x is None):
                problems.append(f"{where}: gives only one of y and x; give both or neither")
            origin = (y, x) if y is not None and x is not None else None
            if height is not None and width is not None and image_shape is not None \
                    and (height, width) != tuple(image_shape):
                problems.append(
                    f"{where}: says {height}x{width} px but {image_path.name} is "
                    f"{_fmt_shape(image_shape)} px; the file was replaced — fix the row or export again"
                )
        source = row["source"]
        made_by = row["made_by"] or "unknown"
        labelled = row.get("labelled") or "full"
        if labelled not in LABELLED_KINDS:
            problems.append(f"{where}: labelled is {labelled!r}; it must be one of "
                            f"{', '.join(LABELLED_KINDS)} or empty")
        kind = row["schema_kind"]
        if check_kind and schema is not None and kind and kind != schema.kind:
            problems.append(
                f"{where}: labels are of schema {kind!r} but the folder's schema is {schema.kind!r}; "
                "keep different schemas in different folders"
            )
    if len(problems) > n_before:
        return None
    return TrainingPair(image_path.name, image_path, labels_path, source, origin, float(pixel_size),
                        made_by, labelled)


# --------------------------------------------------------------------------------------------
# Exporting
# --------------------------------------------------------------------------------------------


def check_export_folder(out_dir: PathLike, schema: ClassSchema) -> None:
    """Raise :class:`DatasetError` when ``out_dir`` cannot take training pairs of ``schema``.

    It must be a folder (or not exist yet), and a ``schema.json`` in it must be readable and of the
    same kind and classes. :func:`export_training_pairs` checks this itself; call it to check
    several exports before writing any.
    """
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out}: is a file; pass a folder to export training pairs into")
    schema_path = out / SCHEMA_NAME
    if schema_path.exists():
        existing = _read_schema_file(schema_path)
        if not _same_schema(existing, schema):
            raise DatasetError(
                f"{schema_path}: the folder holds labels of schema {_describe_schema(existing)}, but "
                f"these labels are {_describe_schema(schema)}; export into another folder"
            )


def export_training_pairs(
    image: np.ndarray | Micrograph,
    labels: np.ndarray,
    out_dir: PathLike,
    *,
    schema: ClassSchema,
    tiles: str | Iterable[int] = "all",
    tile_size: int = 1024,
    only_changed_from: np.ndarray | None = None,
    source: str | None = None,
    made_by: str = "corrected",
    pixel_size_nm: float | None = None,
    image_format: str = "png",
    labelled: str | np.ndarray = "full",
    reviewed: np.ndarray | None = None,
) -> list[TrainingPair]:
    """Cut a micrograph and its (corrected) label map into tiles and add them to a training folder.

    The image is cut into a non-overlapping grid of ``tile_size`` tiles (edge tiles may be
    smaller; those under :data:`MIN_TILE_SIDE_PX` px on a side are skipped). Tiles are numbered
    row-major from 0: tile ``k`` has its top-left corner at
    ``seed_tile_origins(image.shape, tile_size)[k]`` (see :mod:`napari_emgranules.core.tiling`).
    Each tile becomes ``images/<stem>_<k>.<ext>`` and ``labels/<stem>_<k>.<ext>`` under ``out_dir``,
    a row of ``manifest.csv``, and ``schema.json`` is written if missing.

    **Partial labels.** Pixels nobody checked can be left out of the truth: they are written as
    :data:`UNLABELLED`, and training, validation and metrics skip them. ``labelled="changed"``
    keeps only the pixels where ``labels`` differ from ``only_changed_from`` (the user's
    corrections) plus the ``reviewed`` mask (areas the user checked and accepted); a boolean mask
    keeps the pixels where it is True; labels that already hold :data:`UNLABELLED` (strokes
    painted on an empty layer) are partial as they are. Only tiles with labelled pixels are
    written, and the manifest records which kind (``labelled`` column).

    **Re-exports supersede.** A tile of the same source micrograph, origin and size exported
    before is moved, with its manifest row, into ``superseded/<time>/`` (never deleted), so each
    tile trains once, from its latest labels. Other names that are taken get ``-2``, ``-3``, ...
    Everything is checked before the first file is written, and if writing fails the files of
    this call are removed and superseded pairs put back.

    Parameters
    ----------
    image : numpy.ndarray or Micrograph
        2-D uint8/uint16 image. A Micrograph also gives the pixel size and the name.
    labels : numpy.ndarray
        2-D integer class codes of ``schema``, same shape as the image.
    out_dir : str or os.PathLike
        Training-data root; created if missing.
    schema : ClassSchema
        Schema of ``labels``; codes are checked against it. Must match an existing
        ``out_dir/schema.json`` (same kind and class letters).
    tiles : ``"all"`` or iterable of int
        Tile numbers to export (see above).
    tile_size : int
        Side of the tiles in pixels (>= :data:`MIN_TILE_SIDE_PX`; the original tool used 1024).
    only_changed_from : numpy.ndarray, optional
        A label map of the same shape, e.g. the model's prediction before the corrections; only
        tiles where ``labels`` differs from it in at least one pixel are written.
    source : str, optional
        Source micrograph name or path for the manifest. Default: the Micrograph's path (or name);
        ``""`` for an array.
    made_by : str
        Who made the labels: ``"corrected"`` or the model, e.g. ``"locations model (untrained)"``.
    pixel_size_nm : float, optional
        Pixel size in nm; default the Micrograph's when it comes from the file or the user. An
        array, or a Micrograph whose pixel size was only assumed, needs it (the training
        resamples by it, so it is never guessed).
    image_format : ``"png"`` or ``"tif"``
        File format of images and labels (labels are written as uint16).
    labelled : ``"full"``, ``"changed"`` or numpy.ndarray of bool
        Which pixels of ``labels`` are truth (see above).
    reviewed : numpy.ndarray of bool, optional
        With ``labelled="changed"``: pixels the user checked and accepted as they are.

    Returns
    -------
    list of TrainingPair
        The written pairs, in tile order; empty when no tile was selected or changed.

    Raises
    ------
    DatasetError
        For images that are not 2-D uint8/uint16, labels of another shape or with codes outside the
        schema, an ``only_changed_from`` of another shape, an existing ``schema.json`` that differs
        from ``schema``, or an unreadable ``schema.json``/``manifest.csv`` in ``out_dir``.
    ValueError
        For unknown or too small tile numbers, a bad ``tile_size``, ``image_format`` or pixel size.
    TypeError
        If ``schema`` is not a :class:`ClassSchema`.
    OSError, MicrographError
        If writing fails (the files written by this call are removed first).
    """
    # -- check everything before touching the disk ---------------------------------------------
    if not isinstance(schema, ClassSchema):
        raise TypeError(f"schema must be a ClassSchema (e.g. LOCATIONS_SCHEMA), got {type(schema).__name__}")
    suffix = _IMAGE_FORMATS.get(str(image_format).lower())
    if suffix is None:
        raise ValueError(f"image_format must be 'png' or 'tif', got {image_format!r}")
    if isinstance(tile_size, bool) or not isinstance(tile_size, (int, np.integer)) \
            or tile_size < MIN_TILE_SIDE_PX:
        raise ValueError(
            f"tile_size must be a whole number of pixels >= {MIN_TILE_SIDE_PX}, got {tile_size!r}"
        )
    tile_size = int(tile_size)
    if not isinstance(made_by, str) or not made_by.strip():
        raise ValueError(f"made_by must be a non-empty text such as 'corrected', got {made_by!r}")

    data, stem, source_text, pixel_size = _export_image(image, source, pixel_size_nm)
    shape = (int(data.shape[0]), int(data.shape[1]))
    codes = _export_labels(labels, shape, schema)
    previous = None
    if only_changed_from is not None:
        previous = np.asarray(only_changed_from)
        if previous.shape != shape:
            raise DatasetError(
                f"only_changed_from is {_fmt_shape(previous.shape)} but the labels are "
                f"{_fmt_shape(shape)}; pass the label map the corrections started from"
            )
    codes, kind = _partial_labels(codes, labelled, previous, reviewed)

    origins = seed_tile_origins(shape, tile_size)
    numbers = _select_tiles(tiles, origins, shape, tile_size)
    if previous is not None and kind == "full":
        changed = []
        for k in numbers:
            window = _tile_window(origins[k], shape, tile_size)
            if np.any(codes[window] != previous[window]):
                changed.append(k)
        if not changed:
            logger.info("no labels changed in tiles %s; nothing exported", _fmt_numbers(numbers))
            return []
        numbers = changed
    if kind != "full":
        numbers = [k for k in numbers
                   if np.any(codes[_tile_window(origins[k], shape, tile_size)] != UNLABELLED)]
        if not numbers:
            raise DatasetError(
                "no labelled pixels in the tiles to export: every pixel is unlabelled; correct or "
                "paint some pixels (or mark them reviewed) first; nothing was written")
    if not numbers:
        logger.info("no tiles selected; nothing exported")
        return []
    if pixel_size is None:
        what = f"{source_text}: " if source_text else ""
        raise DatasetError(
            f"{what}the micrograph has no pixel size (none in the file, none given); training "
            "resamples by it, so it is not guessed: give it (--pixel-size NM, pixel_size_nm=...); "
            "nothing was written")

    out = Path(out_dir).expanduser()
    check_export_folder(out, schema)
    images_dir, labels_dir = out / IMAGES_DIR, out / LABELS_DIR
    schema_path, manifest_path = out / SCHEMA_NAME, out / MANIFEST_NAME
    write_schema = not schema_path.exists()
    rows: list[dict[str, str]] = []
    fieldnames = list(MANIFEST_COLUMNS)
    if manifest_path.exists():
        parsed, columns, row_problems = _read_manifest(manifest_path)
        if row_problems:
            raise DatasetError(
                f"{manifest_path}: the manifest is malformed; fix or delete those rows before "
                "exporting into this folder", row_problems
            )
        rows = [row for _, row in parsed]
        fieldnames += [c for c in columns if c not in MANIFEST_COLUMNS]

    fieldnames += [c for c in OPTIONAL_COLUMNS if c not in fieldnames]
    windows = {k: _tile_window(origins[k], shape, tile_size) for k in numbers}
    old_rows = _superseded_rows(rows, source_text, windows.values())
    rows = [row for row in rows if row not in old_rows]

    taken = {Path(row["name"]).stem.lower() for row in rows}
    for folder in (images_dir, labels_dir):
        if folder.is_dir():
            taken.update(p.stem.lower() for p in folder.iterdir()
                         if not any(p.name == row["name"] or p.stem == Path(row["name"]).stem
                                    for row in old_rows))

    # -- write -------------------------------------------------------------------------------------
    now = datetime.now(timezone.utc)
    created = now.isoformat(timespec="seconds")
    pixel_text = repr(float(pixel_size))
    new_dirs = [d for d in (out, images_dir, labels_dir) if not d.exists()]
    written: list[Path] = []
    moved: list[tuple[Path, Path]] = []
    pairs: list[TrainingPair] = []
    new_rows: list[dict[str, str]] = []
    try:
        if old_rows:
            kept = out / SUPERSEDED_DIR / now.strftime("%Y%m%dT%H%M%S%fZ")
            new_dirs += [d for d in (out / SUPERSEDED_DIR, kept, kept / IMAGES_DIR, kept / LABELS_DIR)
                         if not d.exists()]
            moved = _move_superseded(kept, out, old_rows, fieldnames)
            written.append(kept / MANIFEST_NAME)
        images_dir.mkdir(parents=True, exist_ok=True)
        labels_dir.mkdir(parents=True, exist_ok=True)
        for k in numbers:
            name = _free_name(f"{stem}_{k}", taken, images_dir, labels_dir)
            taken.add(name.lower())
            window = windows[k]
            image_path = images_dir / f"{name}{suffix}"
            labels_path = labels_dir / f"{name}{suffix}"
            tile = np.ascontiguousarray(data[window])
            tile_codes = np.ascontiguousarray(codes[window])
            write_image(image_path, tile, pixel_size_nm=pixel_size)
            written.append(image_path)
            write_labels(labels_path, tile_codes, pixel_size_nm=pixel_size)
            written.append(labels_path)
            y, x = origins[k]
            fraction = 1.0 if kind == "full" else float(np.mean(tile_codes != UNLABELLED))
            new_rows.append({
                "name": image_path.name, "source": source_text, "y": str(y), "x": str(x),
                "height": str(tile.shape[0]), "width": str(tile.shape[1]), "pixel_size_nm": pixel_text,
                "schema_kind": schema.kind, "made_by": made_by, "created": created,
                "labelled": kind, "labelled_fraction": f"{fraction:.4f}",
            })
            pairs.append(TrainingPair(image_path.name, image_path, labels_path, source_text, (y, x),
                                      float(pixel_text), made_by, kind))
        if write_schema:
            with atomic_output(schema_path) as tmp:
                tmp.write_text(json.dumps(schema.to_dict(), indent=2) + "\n", encoding="utf-8")
            written.append(schema_path)
        with atomic_output(manifest_path) as tmp:
            with open(tmp, "w", encoding="utf-8", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=fieldnames, restval="", extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows + new_rows)
    except BaseException:
        logger.error("exporting training pairs to %s failed; removing the %d file(s) written",
                     out, len(written))
        for path in reversed(written):
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                logger.error("%s: could not remove it (%s); delete it by hand", path, exc)
        for original, kept in reversed(moved):
            try:
                os.replace(kept, original)
            except OSError as exc:
                logger.error("%s: could not move it back to %s (%s); do it by hand", kept, original, exc)
        for folder in reversed(new_dirs):
            try:
                folder.rmdir()
            except OSError:
                pass  # not empty (someone else wrote there) or already gone
        raise
    if old_rows:
        logger.info("%d earlier pair(s) of the same tiles moved to %s", len(old_rows),
                    out / SUPERSEDED_DIR)
    logger.info("exported %d training pair(s) (tiles %s) to %s", len(pairs), _fmt_numbers(numbers), out)
    return pairs


def _partial_labels(codes: np.ndarray, labelled: Any, previous: np.ndarray | None,
                    reviewed: np.ndarray | None) -> tuple[np.ndarray, str]:
    """The label map to write (unlabelled pixels set to UNLABELLED) and its manifest kind."""
    shape = codes.shape
    if reviewed is not None:
        reviewed = np.asarray(reviewed)
        if reviewed.shape != shape:
            raise DatasetError(f"the reviewed mask is {_fmt_shape(reviewed.shape)} but the labels "
                               f"are {_fmt_shape(shape)}; pass a mask painted on this image")
        reviewed = reviewed.astype(bool)
    if isinstance(labelled, str):
        if labelled not in ("full", "changed"):
            raise ValueError(f"labelled must be 'full', 'changed' or a boolean mask, got {labelled!r}")
        if labelled == "changed":
            if previous is None:
                raise DatasetError("labelled='changed' needs the label map the corrections started "
                                   "from (only_changed_from / --only-changed-from)")
            mask = codes != previous
            if reviewed is not None:
                mask |= reviewed
            return np.where(mask, codes, np.uint16(UNLABELLED)).astype(np.uint16), "changed"
        if reviewed is not None:
            raise ValueError("a reviewed mask only applies with labelled='changed'")
        partial = bool(codes.size) and bool(np.any(codes == UNLABELLED))
        return codes, "strokes" if partial else "full"
    mask = np.asarray(labelled)
    if mask.shape != shape:
        raise DatasetError(f"the labelled mask is {_fmt_shape(mask.shape)} but the labels are "
                           f"{_fmt_shape(shape)}; pass a mask painted on this image")
    if reviewed is not None:
        raise ValueError("a reviewed mask only applies with labelled='changed'")
    return np.where(mask.astype(bool), codes, np.uint16(UNLABELLED)).astype(np.uint16), "strokes"


def _superseded_rows(rows: list[dict[str, str]], source: str,
                     windows: Iterable[tuple[slice, slice]]) -> list[dict[str, str]]:
    """Manifest rows of earlier exports of the same tiles (same source, origin and size)."""
    if not source:
        return []  # an array of unknown origin: nothing to match against
    keys = {(str(ys.start), str(xs.start), str(ys.stop - ys.start), str(xs.stop - xs.start))
            for ys, xs in windows}
    return [row for row in rows if row["source"] == source
            and (row["y"], row["x"], row["height"], row["width"]) in keys]


def _move_superseded(folder: Path, out: Path, old_rows: list[dict[str, str]],
                     fieldnames: list[str]) -> list[tuple[Path, Path]]:
    """Move earlier pairs of re-exported tiles (and their rows) into ``folder``; returns the moves."""
    moved: list[tuple[Path, Path]] = []
    for row in old_rows:
        stem = Path(row["name"]).stem
        for side in (IMAGES_DIR, LABELS_DIR):
            for path in (out / side).glob(f"{glob.escape(stem)}.*"):
                if path.stem != stem:
                    continue
                target = folder / side / path.name
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
                moved.append((path, target))
    with atomic_output(folder / MANIFEST_NAME) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fieldnames, restval="", extrasaction="ignore")
            writer.writeheader()
            writer.writerows(old_rows)
    return moved


def _export_image(image: Any, source: str | None,
                  pixel_size_nm: float | None) -> tuple[np.ndarray, str, str, float | None]:
    """Image data, file-name stem, manifest source and pixel size for an export."""
    if source is not None and not isinstance(source, str):
        raise ValueError(f"source must be a text (a micrograph name or path), got {source!r}")
    if isinstance(image, Micrograph):
        data = image.data
        stem_from = image.name
        source_text = source if source is not None else (
            str(image.path) if image.path is not None else image.name
        )
        pixel_size = pixel_size_nm
        if pixel_size is None and image.pixel_size_source != "model":  # not merely assumed
            pixel_size = image.pixel_size_nm
    else:
        data = np.asarray(image)
        source_text = source if source is not None else ""
        stem_from = re.split(r"[\\/]", source)[-1] if source else ""
        if Path(stem_from).suffix.lower() in MICROGRAPH_SUFFIXES:
            stem_from = Path(stem_from).stem
        pixel_size = pixel_size_nm
    if data.ndim != 2:
        raise DatasetError(
            f"the image must be one 2-D gray plane, got shape {tuple(data.shape)}; convert it to gray "
            "and export one plane at a time"
        )
    if data.dtype not in (np.uint8, np.uint16):
        raise DatasetError(
            f"the image is {data.dtype}; training images must be 8- or 16-bit gray — save or convert "
            "it as uint8/uint16 (e.g. the original micrograph file) and export that"
        )
    if pixel_size is None:
        return data, _safe_stem(stem_from), source_text, None
    if isinstance(pixel_size, bool) or not isinstance(pixel_size, (int, float, np.number)) \
            or not (math.isfinite(float(pixel_size)) and float(pixel_size) > 0):
        raise ValueError(f"pixel_size_nm must be a positive number of nanometres, got {pixel_size!r}")
    return data, _safe_stem(stem_from), source_text, float(pixel_size)


def _safe_stem(name: str) -> str:
    return _UNSAFE_NAME_CHARS.sub("_", str(name)).strip("._-") or "tile"


def _export_labels(labels: Any, shape: tuple[int, int], schema: ClassSchema) -> np.ndarray:
    codes = np.asarray(labels)
    if codes.shape != shape:
        raise DatasetError(
            f"the labels are {_fmt_shape(codes.shape)} but the image is {_fmt_shape(shape)}; pass the "
            "label map painted on this image"
        )
    try:
        schema.check_labels(codes, "labels", allow_unlabelled=True)
    except SchemaError as exc:
        raise DatasetError(
            f"{exc}; nothing was written — repaint those pixels or pass the right schema"
        ) from exc
    return codes.astype(np.uint16, copy=False)


def _tile_window(origin: tuple[int, int], shape: tuple[int, int], tile_size: int) -> tuple[slice, slice]:
    y, x = origin
    return slice(y, min(y + tile_size, shape[0])), slice(x, min(x + tile_size, shape[1]))


def _fmt_numbers(numbers: Sequence[int]) -> str:
    text = ", ".join(str(n) for n in numbers[:30])
    return text + (f", ... ({len(numbers)} in all)" if len(numbers) > 30 else "")


def _select_tiles(tiles: str | Iterable[int], origins: list[tuple[int, int]], shape: tuple[int, int],
                  tile_size: int) -> list[int]:
    """Tile numbers to export, sorted; edge tiles under MIN_TILE_SIDE_PX are dropped or refused."""

    def too_small(k: int) -> bool:
        y, x = origins[k]
        side = min(tile_size, shape[0] - y), min(tile_size, shape[1] - x)
        return min(side) < MIN_TILE_SIDE_PX

    n = len(origins)
    if isinstance(tiles, str):
        if tiles != "all":
            raise ValueError(f"tiles must be 'all' or a list of tile numbers, got {tiles!r}")
        small = [k for k in range(n) if too_small(k)]
        if small:
            logger.info("skipping edge tile(s) %s: smaller than %d px on a side", _fmt_numbers(small),
                        MIN_TILE_SIDE_PX)
        return [k for k in range(n) if not too_small(k)]
    items = [tiles] if isinstance(tiles, (int, np.integer)) else list(tiles)
    numbers: set[int] = set()
    wrong: list[Any] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, np.integer)) or not 0 <= int(item) < n:
            wrong.append(item)
        else:
            numbers.add(int(item))
    rows, cols = -(-shape[0] // tile_size), -(-shape[1] // tile_size)
    if wrong:
        raise ValueError(
            f"unknown tile number(s) {wrong}: a {_fmt_shape(shape)} image cut into {tile_size} px tiles "
            f"has tiles 0..{n - 1} ({rows} rows x {cols} columns, numbered row by row)"
        )
    small = sorted(k for k in numbers if too_small(k))
    if small:
        raise ValueError(
            f"tile(s) {small} are edge tiles smaller than {MIN_TILE_SIDE_PX} px on a side and cannot "
            "be used for training; leave them out"
        )
    return sorted(numbers)


def _free_name(base: str, taken: set[str], images_dir: Path, labels_dir: Path) -> str:
    """``base``, or ``base-2``, ``base-3``, ... — the first not taken and with no file of that stem."""

    def exists(name: str) -> bool:
        return any((d / f"{name}{s}").exists() for d in (images_dir, labels_dir) for s in LABEL_SUFFIXES)

    name, n = base, 1
    while name.lower() in taken or exists(name):
        n += 1
        name = f"{base}-{n}"
    return name
