"""Batches: many micrographs -> label maps and tables, serially or on a Dask cluster, resumable.

:func:`batch_iter` is the one implementation (a generator of :class:`BatchProgress` events that
returns a :class:`BatchResult`); :func:`batch` runs it to the end; ``emgranules batch`` draws a
progress bar from it.

Output folder
-------------
``locations/<name>.tif``, ``granules/<name>.tif``
    Label maps (``<name>`` is the micrograph's file stem).
``tables/<name>.regions.csv``, ``tables/<name>.particles.csv``
    Each micrograph's density table (its ``path`` column holds the micrograph's path, so
    ``emgranules study --from-folders`` works) and particles.
``regions.csv``, ``particles.csv`` (and the original tool's two text tables with ``seed_tables``)
    Rebuilt from the per-image tables of this run's inputs at the end of every run, never appended.
``failures.csv``
    ``path, error`` of every micrograph that could not be processed in this run.
``manifest.json``
    Per micrograph: the input's SHA-256, the hash of the settings that change results (mode, pixel
    size, measurement settings, the weights' SHA-256, the package version) and its outputs. A
    re-run skips a micrograph whose input, settings and outputs are unchanged and redoes the rest.

Every file is written atomically (a temporary file renamed into place), the manifest after each
micrograph (at most every 2 s once it lists more than 500), so a run killed at any point resumes
with the same results; temporary files left by a killed run (``.<name>.<random>.tmp<suffix>``) are
removed when the next run starts. An unchanged combined table or manifest is not rewritten.

Schedulers
----------
``None``: in this process, reading the next micrograph and writing the last one's outputs in
background threads while the models run. ``"processes:N"``: a local Dask cluster of N worker
processes (one thread each). ``"tcp://host:port"``: an existing Dask cluster (its workers must see
the same files at the same paths). One task per micrograph; each worker loads the models once.
"""

from __future__ import annotations

import contextlib
import csv
import filecmp
import glob
import hashlib
import inspect
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._batch_image import (
    IMAGE_ERRORS,
    KINDS,
    LABEL_FORMATS,
    ImageJob,
    ImageSettings,
    failed,
    finish_image,
    load_image,
    model_info,
    output_paths,
    output_size,
    process_image,
    segment_image,
    threshold_key,
)
from .io import MICROGRAPH_SUFFIXES, available_memory_bytes, file_sha256, micrograph_stem
from .measure import (
    PARTICLE_COLUMNS,
    REGION_COLUMNS,
    SEED_AREAS_FILE,
    SEED_DENSITIES_FILE,
    Z_COLUMNS,
    format_seed_areas,
    format_seed_densities,
    measure_labels,
)
from .models import SegmentationModel, WeightsError
from .omezarr import is_ome_zarr
from .options import SegmentOptions
from .progress import run_to_completion
from .segment import _resolve_model

logger = logging.getLogger(__name__)

__all__ = [
    "BatchError",
    "BatchInput",
    "BatchProgress",
    "BatchResult",
    "batch",
    "batch_iter",
    "expand_inputs",
    "folder_micrographs",
    "parse_scheduler",
]

PathLike = str | os.PathLike
MANIFEST, FAILURES = "manifest.json", "failures.csv"
COMBINED = {"regions": "regions.csv", "particles": "particles.csv", "z_disks": "z_disks.csv"}
_SET_BY_BATCH = frozenset({"locations", "granules", "image", "path", "pixel_size_nm",
                           "pixel_size_source", "schema"})
_MANIFEST_FORMAT = "napari-emgranules.batch-manifest/1"
_SAVE_INTERVAL_S = 2.0  # with many entries, the manifest is saved at most this often (and at the end)
_SAVE_EVERY_TIME_UP_TO = 500


class BatchError(ValueError):
    """A batch cannot start: bad inputs, options or output folder (the message says what to do)."""


@dataclass(frozen=True)
class BatchInput:
    """A micrograph to process and, from a manifest CSV, its own pixel size."""

    path: Path
    pixel_size_nm: float | None = None


@dataclass(frozen=True)
class BatchProgress:
    """One micrograph finished.

    Attributes
    ----------
    done, total : int
        Micrographs finished so far (done, skipped or failed) and in all.
    image : str
        The micrograph's path.
    status : {"done", "skipped", "failed"}
    message : str
        What happened (for failures: the error, naming the file).
    """

    done: int
    total: int
    image: str
    status: str
    message: str = ""


@dataclass
class BatchResult:
    """What a batch run did and where its tables are.

    Attributes
    ----------
    out_dir : pathlib.Path
    done, skipped : list of str
        Names of the micrographs processed, and of those unchanged since an earlier run.
    failures : list of (str, str)
        ``(path, error)`` of each micrograph that failed (also in ``failures.csv``).
    paths : dict of str to pathlib.Path
        ``regions``, ``particles``, ``failures``, ``manifest`` and, when written, ``z_disks`` and
        the seed tables ``seed_areas``, ``seed_densities``.
    models : dict
        Per model kind: ``weights_sha256`` and, when loaded in this run, ``trained``/``synthetic``.
    """

    out_dir: Path
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    paths: dict[str, Path] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def regions(self) -> pd.DataFrame:
        """The combined density table (read from ``regions.csv``)."""
        return read_table(self.paths["regions"])

    @property
    def particles(self) -> pd.DataFrame:
        """The combined particle table (read from ``particles.csv``)."""
        return read_table(self.paths["particles"])


def read_table(path: PathLike) -> pd.DataFrame:
    """Read a batch CSV table, keeping names and tile numbers as text (``""`` for whole images)."""
    table = pd.read_csv(path, dtype={"image": str, "tile": str, "region": str})
    if "tile" in table:
        table["tile"] = table["tile"].fillna("")
    return table


# -------------------------------------------------------------------------------------------------
# Inputs
# -------------------------------------------------------------------------------------------------
def folder_micrographs(folder: PathLike) -> list[Path]:
    """The micrograph files directly inside ``folder``, sorted; BatchError when there are none."""
    p = Path(folder)
    found = sorted(q for q in p.iterdir() if (q.is_file() and q.suffix.lower() in MICROGRAPH_SUFFIXES)
                   or is_ome_zarr(q))
    if not found:
        raise BatchError(f"{p}: the folder holds no micrographs ({', '.join(MICROGRAPH_SUFFIXES)})")
    return found


def _manifest_csv(path: Path) -> list[BatchInput]:
    """Rows of a CSV with a ``path`` column (relative to the CSV's folder) and ``pixel_size_nm``."""
    try:
        table = pd.read_csv(path, dtype={"path": str})
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise BatchError(f"{path}: cannot be read as a CSV list of micrographs ({exc})") from exc
    if "path" not in table:
        raise BatchError(f"{path}: a list of micrographs needs a 'path' column "
                         f"(found: {', '.join(map(str, table.columns)) or 'none'})")
    sizes = table["pixel_size_nm"] if "pixel_size_nm" in table else pd.Series(np.nan, table.index)
    sizes = pd.to_numeric(sizes, errors="coerce")
    out = []
    for item, size in zip(table["path"].fillna(""), sizes, strict=True):
        if not item.strip():
            raise BatchError(f"{path}: a row has an empty 'path'")
        p = Path(item).expanduser()
        out.append(BatchInput(p if p.is_absolute() else path.parent / p,
                              None if np.isnan(size) else float(size)))
    return out


def expand_inputs(items: Iterable[PathLike], *, patterns: bool = True,
                  manifests: bool = True) -> list[BatchInput]:
    """Micrographs named by files, folders, glob patterns and CSV lists, in the order given.

    Parameters
    ----------
    items : iterable of path-like
        Files (taken as given, even if missing: reading them reports the problem), folders (the
        micrographs directly inside, sorted), glob patterns (``*``, ``?``, ``[...]``, ``**``;
        sorted) and ``.csv`` lists with a ``path`` column and optionally ``pixel_size_nm``.
    patterns, manifests : bool
        Expand glob patterns / CSV lists (else they are taken as file names).

    Raises
    ------
    BatchError
        For a folder without micrographs, a pattern matching none, or a CSV without ``path``.
    """
    out: list[BatchInput] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir() and not is_ome_zarr(p):
            out += [BatchInput(q) for q in folder_micrographs(p)]
        elif manifests and p.suffix.lower() == ".csv" and p.is_file():
            out += _manifest_csv(p)
        elif patterns and not p.exists() and glob.has_magic(str(item)):
            out += _pattern(str(item))
        else:
            out.append(BatchInput(p))
    return out


def _pattern(pattern: str) -> list[BatchInput]:
    found = sorted(Path(m) for m in glob.glob(os.path.expanduser(pattern), recursive=True))
    files = [BatchInput(p) for p in found
             if (p.is_file() and p.suffix.lower() in MICROGRAPH_SUFFIXES) or is_ome_zarr(p)]
    for folder in (p for p in found if p.is_dir() and not is_ome_zarr(p)):
        files += [BatchInput(q) for q in folder_micrographs(folder)]
    if not files:
        raise BatchError(f"{pattern}: matches no micrographs ({', '.join(MICROGRAPH_SUFFIXES)})")
    return files


def _jobs(inputs: list[BatchInput]) -> list[ImageJob]:
    """Image jobs with absolute paths; the same file named twice is kept once."""
    seen: set[str] = set()
    jobs = []
    for item in inputs:
        path = str(item.path.resolve())
        if path not in seen:
            seen.add(path)
            jobs.append(ImageJob(path, micrograph_stem(item.path), item.pixel_size_nm))
    return jobs


# -------------------------------------------------------------------------------------------------
# Options
# -------------------------------------------------------------------------------------------------
_PROCESSES = re.compile(r"^processes:(\d+)$")
_ADDRESS = re.compile(r"^(tcp|tls|ucx)://[^\s:/]+:\d{1,5}$")


def parse_scheduler(spec: Any) -> tuple[str, Any] | None:
    """``None`` (serial), ``("processes", N)`` or ``("address", "tcp://host:port")``.

    A :class:`distributed.Client` is accepted as ``("client", client)``.

    Raises
    ------
    BatchError
        For anything else, saying what is accepted.
    """
    if spec is None or spec == "":
        return None
    if hasattr(spec, "submit") and hasattr(spec, "scheduler_info"):
        return ("client", spec)
    text = str(spec).strip()
    match = _PROCESSES.match(text)
    if match and int(match.group(1)) >= 1:
        return ("processes", int(match.group(1)))
    if _ADDRESS.match(text):
        return ("address", text)
    raise BatchError(f"scheduler {text!r} is not understood: use 'processes:N' (N >= 1 local worker "
                     "processes) or 'tcp://host:port' (the address of a running Dask scheduler)")


def _check_measure(measure_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    measure = dict(measure_kwargs or {})
    allowed = set(inspect.signature(measure_labels).parameters) - _SET_BY_BATCH
    unknown = sorted(set(measure) - allowed)
    if unknown:
        raise BatchError(f"measure_kwargs: unknown or batch-set option(s) {', '.join(unknown)}; "
                         f"allowed: {', '.join(sorted(allowed))}")
    return measure


def _check_thresholds(values: Iterable[float] | None) -> tuple[float, ...]:
    """The swept granule thresholds, sorted and without repeats; each strictly between 0 and 1."""
    if values is None:
        return ()
    try:
        out = sorted({float(v) for v in values})
    except (TypeError, ValueError):
        raise BatchError(f"granule thresholds must be numbers between 0 and 1, got {values!r}") from None
    bad = [v for v in out if not 0 < v < 1]
    if bad:
        raise BatchError(f"granule thresholds must lie between 0 and 1, got {', '.join(map(str, bad))}")
    return tuple(out)


def _check_outputs(kinds: Iterable[str], tables: bool, label_format: str,
                   thresholds: tuple[float, ...]) -> tuple[str, ...]:
    """The kinds to run, in the package's order; the output choices checked together."""
    wanted = [kinds] if isinstance(kinds, str) else list(kinds)
    unknown = [k for k in wanted if k not in KINDS]
    if unknown or not wanted:
        raise BatchError(f"kinds must name 'locations' and/or 'granules', got {wanted!r}")
    chosen = tuple(k for k in KINDS if k in wanted)
    if tables and chosen != KINDS:
        raise BatchError("measuring needs both models: run both, or only the label maps (tables=False)")
    if thresholds and not tables:
        raise BatchError("a granule threshold sweep writes tables: it needs tables=True")
    if label_format not in LABEL_FORMATS:
        raise BatchError(f"label_format must be one of {', '.join(LABEL_FORMATS)}, got {label_format!r}")
    return chosen


def _check_models_for_workers(settings: ImageSettings) -> ImageSettings:
    """Workers load their own models: pass weight paths (or None), never loaded models."""
    refs = {}
    for kind in KINDS:
        ref = getattr(settings, f"{kind}_model")
        if isinstance(ref, SegmentationModel):
            raise BatchError(f"with a Dask scheduler give the {kind} weights as a file path (or None "
                             "for the bundled model), not a loaded model: each worker loads its own")
        refs[f"{kind}_model"] = None if ref is None else str(Path(ref).expanduser().resolve())
    return replace(settings, **refs)


def _jsonable(value: Any) -> Any:
    """Settings as plain JSON values (dataclasses as dicts), for hashing and the manifest."""
    if is_dataclass(value) and not isinstance(value, type):
        return {"type": type(value).__name__, **_jsonable(asdict(value))}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value) if isinstance(value, os.PathLike) else repr(value)


def _sha256_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


# -------------------------------------------------------------------------------------------------
# Weights: hashed once, and remembered in the manifest by file identity
# -------------------------------------------------------------------------------------------------
def _weights_identity(ref: Any, kind: str) -> str | None:
    """A key that changes when the weights file does (None for a loaded model: hash it)."""
    from .. import __version__
    from .models import _bundled_dir

    if isinstance(ref, SegmentationModel):
        return None
    if ref is None:
        bundled = _bundled_dir() / f"{kind}.weights.h5"
        if not bundled.is_file():
            return f"built-in untrained {kind} model, napari-emgranules {__version__}"
        ref = bundled
    p = Path(ref).expanduser()
    stat_target = p if p.exists() else Path(str(p) + ".index")  # a TF checkpoint prefix
    if not stat_target.exists():
        raise WeightsError(f"{p}: no such {kind} weights file")
    st = stat_target.stat()
    return f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"


# -------------------------------------------------------------------------------------------------
# The output folder: lock, stale temporaries, manifest, combined tables
# -------------------------------------------------------------------------------------------------
def _output_folder(out_dir: PathLike) -> Path:
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise BatchError(f"{out}: the output folder is an existing file; give a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


@contextlib.contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """Hold an advisory lock on the output folder (released by the OS even after kill -9)."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        yield
        return
    with open(out / ".batch.lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BatchError(f"{out}: another batch run is writing into this folder; wait for it "
                             "to finish or choose another output folder") from None
        yield


def remove_stale_temporaries(out: Path) -> int:
    """Delete temporary files (``.<name>.<hex>.tmp<suffix>``) a killed run left; returns how many."""
    removed = 0
    for folder in (out, out / "locations", out / "granules", out / "tables"):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if p.name.startswith(".") and ".tmp" in p.name and p.is_file():
                p.unlink(missing_ok=True)
                removed += 1
    if removed:
        logger.info("%s: removed %d temporary file(s) left by an interrupted run", out, removed)
    return removed


def _publish(target: Path, write: Callable[[Path], Any]) -> Path:
    """Write ``target`` atomically through ``write(tmp)``; an identical existing file is left as it
    is (a re-run with nothing to do rewrites nothing)."""
    tmp = target.with_name(f".{target.stem[:100]}.{secrets.token_hex(6)}.tmp{target.suffix}")
    try:
        write(tmp)
        if target.is_file() and filecmp.cmp(tmp, target, shallow=False):
            tmp.unlink()
        else:
            os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


class _Manifest:
    """``manifest.json``: per micrograph, its input and settings hashes, status and outputs."""

    def __init__(self, path: Path):
        self.path = path
        self.images: dict[str, dict[str, Any]] = {}
        self.weights: dict[str, str] = {}
        self.settings: dict[str, Any] = {}
        self._saved = 0.0
        if path.is_file():
            try:
                data = json.loads(path.read_text())
                self.images, self.weights = dict(data["images"]), dict(data.get("weights", {}))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                logger.warning("%s: unreadable (%s); every micrograph will be redone", path, exc)

    def is_current(self, job: ImageJob, digest: str, key: str, out: Path) -> bool:
        entry = self.images.get(job.name)
        if not entry or entry.get("status") != "done" or entry.get("input") != job.path:
            return False
        if (entry.get("input_sha256"), entry.get("settings_sha256")) != (digest, key):
            return False
        sizes = entry.get("output_bytes", {})
        return all((out / rel).exists() and output_size(out / rel) == sizes.get(k)
                   for k, rel in entry.get("outputs", {}).items())

    def save(self, force: bool = True) -> None:
        now = time.monotonic()
        if not force and len(self.images) > _SAVE_EVERY_TIME_UP_TO and now - self._saved < _SAVE_INTERVAL_S:
            return
        data = {"format": _MANIFEST_FORMAT, "settings": self.settings, "weights": self.weights,
                "images": self.images}
        _publish(self.path, lambda tmp: tmp.write_text(json.dumps(data, indent=1, sort_keys=True)))
        self._saved = now


def _concat_csv(sources: list[Path], target: Path, columns: Iterable[str]) -> Path:
    """Concatenate CSV files with one header into ``target``, a file at a time (bounded memory).

    Files whose header differs from the first are aligned to its columns.
    """
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as dst:
            header = None
            for src in sources:
                with open(src, newline="") as fh:
                    first = fh.readline()
                    if header is None:
                        header = first
                        dst.write(first)
                    if first == header:
                        shutil.copyfileobj(fh, dst)
                        continue
                names = next(csv.reader([header]))
                table = pd.read_csv(src, dtype=str, keep_default_na=False)
                table.reindex(columns=names, fill_value="").to_csv(dst, header=False, index=False)
            if header is None:
                dst.write(",".join(columns) + "\n")

    return _publish(target, write)


def _seed_rows(sources: list[Path]) -> pd.DataFrame:
    """The rows the original tool's text tables list: per seed tile if measured, else per image."""
    cols = ["image", "tile", "region", "area_px", "granule_px"]
    frames = [pd.read_csv(s, usecols=cols, dtype={"image": str, "tile": str, "region": str},
                          keep_default_na=False) for s in sources]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)
    tiles = table[table["tile"] != ""]
    if len(tiles):
        return tiles
    return table.assign(seed_name=table["image"] + ".tif")  # named as the label file


# -------------------------------------------------------------------------------------------------
# Runners: serial (with background reading and writing) and Dask
# -------------------------------------------------------------------------------------------------
def _written(job: ImageJob, future) -> dict[str, Any]:
    try:
        return future.result()
    except IMAGE_ERRORS as exc:
        return failed(job, exc)


def _serial_outcomes(todo: list[ImageJob], settings: ImageSettings) -> Iterator[dict[str, Any]]:
    """Process micrographs in order: the next one is read and the last one's outputs written in
    background threads while the models run on the current one."""
    jobs = iter(todo)
    with ThreadPoolExecutor(2, thread_name_prefix="emgranules-batch-io") as pool:
        def read_next():
            job = next(jobs, None)
            return None if job is None else (job, pool.submit(load_image, job, settings))

        reading, writing = read_next(), None
        while reading is not None:
            job, future = reading
            reading = read_next()
            try:
                loaded = future.result()
                result, written = segment_image(loaded, settings)
            except IMAGE_ERRORS as exc:
                yield failed(job, exc)
                continue
            if writing is not None:
                yield _written(*writing)
            writing = (job, pool.submit(finish_image, result, written, loaded, settings))
            del result, loaded
        if writing is not None:
            yield _written(*writing)


def _worker_env(n_workers: int) -> dict[str, str]:
    threads = str(max(1, (os.cpu_count() or 1) // n_workers))
    env = {"TF_NUM_INTRAOP_THREADS": threads, "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": threads}
    for name in ("KERAS_BACKEND", "TF_CPP_MIN_LOG_LEVEL", "CUDA_VISIBLE_DEVICES", "TF_ENABLE_ONEDNN_OPTS"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


@contextlib.contextmanager
def _dask_client(spec: tuple[str, Any]) -> Iterator[Any]:
    """A client for the scheduler spec; a local cluster is started and stopped here."""
    kind, value = spec
    if kind == "client":
        yield value
        return
    from distributed import Client, LocalCluster

    if kind == "address":
        try:
            client = Client(value, timeout="20s")
        except OSError as exc:
            raise BatchError(f"cannot connect to the Dask scheduler at {value}: {exc}") from exc
        with client:
            yield client
        return
    cluster = LocalCluster(n_workers=value, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=logging.ERROR, env=_worker_env(value))
    with cluster, Client(cluster) as client:
        yield client


def _dask_outcomes(client: Any, todo: list[ImageJob], settings: ImageSettings) -> Iterator[dict[str, Any]]:
    """One task per micrograph; outcomes as they complete."""
    from distributed import KilledWorker, as_completed

    futures = {client.submit(process_image, job, settings, pure=False): job for job in todo}
    for future in as_completed(list(futures)):
        job = futures.pop(future)
        try:
            yield future.result()
        except (*IMAGE_ERRORS, KilledWorker) as exc:
            yield failed(job, exc)
        future.release()


# -------------------------------------------------------------------------------------------------
# One run
# -------------------------------------------------------------------------------------------------
class _Run:
    """The state of one batch run: plan, manifest updates, events, final tables."""

    def __init__(self, out: Path, jobs: list[ImageJob], settings: ImageSettings, overwrite: bool):
        self.out, self.jobs, self.settings, self.overwrite = out, jobs, settings, overwrite
        self.manifest = _Manifest(out / MANIFEST)
        self.result = BatchResult(out)
        self.digests: dict[str, str] = {}
        self.owner: dict[str, str] = {}  # output name -> the input path that writes it
        self.count = 0
        self.common: dict[str, Any] = {}

    # -- settings and their hash ---------------------------------------------------------------
    def set_weights(self, hashes: dict[str, str]) -> None:
        from .. import __version__

        s, o = self.settings, self.settings.options
        self.common = {"version": __version__, "mode": o.mode, "pixel_size_nm": s.pixel_size_nm,
                       "force_pixel_size": s.force_pixel_size, "max_window": o.max_window,
                       "halo": o.halo, "min_granule_nm": o.min_granule_nm,
                       "granule_peak": o.granule_peak,  # (new: runs from before it start afresh)
                       "precision": o.precision, "jit": o.jit,
                       "measure": _jsonable(s.measure), "weights_sha256": hashes}
        if o.granule_threshold is not None:  # (absent otherwise: earlier runs' hashes stay valid)
            self.common["granule_threshold"] = o.granule_threshold
        if s.granule_thresholds:
            self.common["granule_thresholds"] = list(s.granule_thresholds)
        outputs = {"kinds": list(s.kinds), "tables": s.tables, "label_format": s.label_format,
                   "confidence": s.confidence, "objects": s.objects}
        defaults = {"kinds": list(KINDS), "tables": True, "label_format": "tif", "confidence": False,
                    "objects": False}
        if outputs != defaults:  # (absent otherwise: earlier runs' hashes stay valid)
            self.common["outputs"] = outputs
        self.manifest.settings = self.common
        for kind, digest in hashes.items():
            self.result.models.setdefault(kind, {})["weights_sha256"] = digest

    def key(self, job: ImageJob) -> str:
        return _sha256_json({**self.common, "image_pixel_size_nm": job.pixel_size_nm})

    # -- planning ------------------------------------------------------------------------------
    def _existing_outputs(self, name: str) -> list[str]:
        return [str(self.out / rel) for rel in output_paths(name, self.settings).values()
                if (self.out / rel).exists()]

    def _classify(self, job: ImageJob) -> tuple[str, str]:
        if job.name in self.owner:
            return "failed", (f"{job.path}: has the same file name '{job.name}' as "
                              f"{self.owner[job.name]}, whose outputs it would replace; rename it "
                              "or batch it into another output folder")
        self.owner[job.name] = job.path
        try:
            self.digests[job.name] = file_sha256(job.path)
        except FileNotFoundError:
            return "failed", f"{job.path}: does not exist; check the folder and file name"
        except OSError as exc:
            return "failed", f"{job.path}: cannot be read ({exc.strerror or exc})"
        if self.overwrite:
            return "todo", ""
        existing = self._existing_outputs(job.name)
        if existing and job.name not in self.manifest.images:
            return "failed", (f"{job.path}: output exists already ({existing[0]}) and was not written "
                              "by a batch run into this folder; use overwrite (--overwrite) to replace it")
        if self.manifest.is_current(job, self.digests[job.name], self.key(job), self.out):
            return "skipped", f"{job.name}: unchanged since the last run; skipped"
        return "todo", ""

    def plan(self) -> tuple[list[BatchProgress], list[ImageJob]]:
        """Skip and refuse what needs no work; record the rest as pending in the manifest."""
        events, todo = [], []
        for job in self.jobs:
            status, message = self._classify(job)
            if status == "todo":
                todo.append(job)
                self.manifest.images[job.name] = {
                    "status": "pending", "input": job.path, "input_sha256": self.digests[job.name],
                    "settings_sha256": self.key(job)}
            else:
                events.append(self._event(job.name, job.path, status, message))
        self.manifest.save()
        return events, todo

    # -- outcomes ------------------------------------------------------------------------------
    def _event(self, name: str, path: str, status: str, message: str) -> BatchProgress:
        self.count += 1
        if status == "failed":
            self.result.failures.append((path, message))
        else:
            (self.result.done if status == "done" else self.result.skipped).append(name)
        return BatchProgress(self.count, len(self.jobs), path, status, message)

    def record(self, outcome: dict[str, Any]) -> BatchProgress:
        """Put one micrograph's outcome into the manifest (saved) and make its event."""
        name, path = outcome["name"], outcome["path"]
        entry = {**outcome, "input": path, "input_sha256": self.digests[name],
                 "settings_sha256": self.manifest.images[name]["settings_sha256"]}
        entry.pop("path"), entry.pop("name")
        self.manifest.images[name] = entry
        self.manifest.save(force=False)
        if outcome["status"] == "failed":
            return self._event(name, path, "failed", outcome["error"])
        maps = ", ".join(dict.fromkeys(str(self.out / outcome["outputs"][k]) for k in self.settings.kinds))
        shares = " ".join(f"{letter}={100 * share:.0f}%" for letter, share in
                          outcome.get("regions", {}).items())
        message = (f"{name}: {outcome['mode']}{' (by tiles, large)' if outcome['large'] else ''}, "
                   f"{outcome['pixel_size_nm']:g} nm/px ({outcome['pixel_size_source']}) -> "
                   f"{maps}{'; ' + shares if shares else ''}")
        return self._event(name, path, "done", message)

    # -- end of run ----------------------------------------------------------------------------
    def finish(self, seed_tables: bool | str | os.PathLike) -> BatchResult:
        """Save the manifest, rebuild the combined tables and ``failures.csv``."""
        self.manifest.save()
        ok = set(self.result.done) | set(self.result.skipped)
        names = [j.name for j in self.jobs if j.name in ok and self.owner.get(j.name) == j.path]
        tables, paths = self.out / "tables", self.result.paths
        if not self.settings.tables:
            return self._finish_failures()
        for kind, columns in (("regions", REGION_COLUMNS), ("particles", PARTICLE_COLUMNS)):
            paths[kind] = _concat_csv([tables / f"{n}.{kind}.csv" for n in names],
                                      self.out / COMBINED[kind], columns)
        for t in self.settings.granule_thresholds:
            key = threshold_key(t)
            for kind, columns in (("regions", REGION_COLUMNS), ("particles", PARTICLE_COLUMNS)):
                paths[f"{kind}.{key}"] = _concat_csv(
                    [tables / f"{n}.{kind}.{key}.csv" for n in names], self.out / f"{kind}.{key}.csv",
                    [*columns, "granule_threshold"])
        if self.settings.measure.get("z_disks"):
            paths["z_disks"] = _concat_csv([tables / f"{n}.zdisks.csv" for n in names],
                                           self.out / COMBINED["z_disks"], Z_COLUMNS)
        if seed_tables is not False and seed_tables is not None:
            folder = self.out if seed_tables is True else Path(seed_tables)
            folder.mkdir(parents=True, exist_ok=True)
            rows = _seed_rows([tables / f"{n}.regions.csv" for n in names])
            for key, name, fmt in (("seed_areas", SEED_AREAS_FILE, format_seed_areas),
                                   ("seed_densities", SEED_DENSITIES_FILE, format_seed_densities)):
                text = fmt(rows).encode("ascii", errors="replace")
                paths[key] = _publish(folder / name, lambda tmp, text=text: tmp.write_bytes(text))
        return self._finish_failures()

    def _finish_failures(self) -> BatchResult:
        failures = pd.DataFrame(self.result.failures, columns=["path", "error"])
        paths = self.result.paths
        paths["failures"] = _publish(self.out / FAILURES, lambda tmp: failures.to_csv(tmp, index=False))
        paths["manifest"] = self.manifest.path
        return self.result


def _lazy_client(spec: tuple[str, Any] | None, stack: contextlib.ExitStack):
    """A function returning the Dask client, connecting (or starting the cluster) on first call."""
    clients: list[Any] = []

    def connect() -> Any:
        if not clients:
            clients.append(stack.enter_context(_dask_client(spec)))
        return clients[0]

    return connect


def _weights_hashes(run: _Run, settings: ImageSettings, spec, connect) -> dict[str, str]:
    """Weights' SHA-256 per kind: remembered by file identity, else computed by loading the models
    (here, or on a worker)."""
    idents = {k: _weights_identity(getattr(settings, f"{k}_model"), k) for k in settings.kinds}
    hashes = {k: run.manifest.weights[i] for k, i in idents.items() if i in run.manifest.weights}
    if len(hashes) < len(settings.kinds):
        info = model_info(settings) if spec is None else \
            connect().submit(model_info, settings, pure=False).result()
        hashes = {k: v["weights_sha256"] for k, v in info.items()}
        run.result.models = info
    run.manifest.weights.update({i: hashes[k] for k, i in idents.items() if i is not None})
    return hashes


def batch_iter(
    inputs: PathLike | Iterable[PathLike],
    out_dir: PathLike,
    *,
    options: SegmentOptions | None = None,
    locations_model: SegmentationModel | PathLike | None = None,
    granules_model: SegmentationModel | PathLike | None = None,
    pixel_size_nm: float | None = None,
    force_pixel_size: bool = False,
    measure_kwargs: Mapping[str, Any] | None = None,
    seed_tables: bool | str | os.PathLike = False,
    scheduler: str | Any | None = None,
    overwrite: bool = False,
    granule_thresholds: Iterable[float] | None = None,
    kinds: Iterable[str] = KINDS,
    tables: bool = True,
    label_format: str = "tif",
    confidence: bool = False,
    objects: bool = False,
    **option_fields: Any,
) -> Generator[BatchProgress, None, BatchResult]:
    """Segment and measure many micrographs into ``out_dir``, yielding one event per micrograph.

    Parameters
    ----------
    inputs : path-like or iterable of them
        Micrograph files, folders (the micrographs directly inside), glob patterns, or ``.csv``
        lists with a ``path`` column (relative to the CSV) and optionally ``pixel_size_nm``.
    out_dir : path-like
        Output folder (see the module docstring for its layout).
    options, **option_fields : SegmentOptions and its fields
        How to segment, as :func:`~.segment.segment_micrograph_iter` (mode, windows, speck
        removal, memory budget, precision, compilation, granule threshold). A TIFF whose in-memory
        segmentation would not fit the memory budget is segmented by tiles from a memory map
        (:func:`~.montage.segment_large_iter`). The memory budget defaults to half the available
        memory, divided among local worker processes. Everything but ``batch_size`` and the
        memory budget is recorded in the settings hash.
    pixel_size_nm, force_pixel_size
        As :func:`~.io.read_micrograph`.
    locations_model, granules_model : SegmentationModel or path, optional
        Models or weight files (bundled defaults when None). With a Dask scheduler: paths only.
    measure_kwargs : mapping, optional
        Options of :func:`~.measure.measure_labels` (``tile``, ``filters``, ``section_nm``,
        ``vf_method``, ``z_disks``, ...).
    seed_tables : bool or path
        Also write the original tool's two text tables (per seed tile with ``tile``), into
        ``out_dir`` (True) or the folder given.
    scheduler : None, "processes:N", "tcp://host:port" or distributed.Client
        Where to run (see the module docstring).
    overwrite : bool
        Redo every micrograph, and replace outputs that no batch run recorded.
    granule_thresholds : iterable of float, optional
        Also measure with each of these granule probability thresholds, from the same forward pass:
        ``tables/<name>.regions.t<P>.csv`` (and particles) per micrograph and ``regions.t<P>.csv``
        combined, with a ``granule_threshold`` column. The label maps and the main tables stay
        those of ``granule_threshold`` (default the arg-max). Micrographs in memory only.
    kinds : iterable of str
        The models to run (default both); measuring needs both, so one model alone needs
        ``tables=False``.
    tables : bool
        Measure and write the density and particle tables (default); without, the label maps only
        (what ``emgranules segment`` writes).
    label_format : {"tif", "png", "ome-zarr"}
        Label map files: TIFF (default), 16-bit PNG as the original tool wrote them, or one
        OME-Zarr store per micrograph, ``ome-zarr/<name>.ome.zarr``, holding the micrograph and
        ``labels/<kind>`` with the classes' names and colours (napari, MIB, BIOMERO read it).
    confidence : bool
        Also write each model's per-pixel confidence, ``<kind>_confidence/<name>.tif`` (16-bit,
        65535 = certain).
    objects : bool
        Also write each micrograph's granule particles as QuPath objects,
        ``objects/<name>.geojson`` (outlines in pixels, sizes in nm; needs the tables).

    Yields
    ------
    BatchProgress
        Once per micrograph: done, skipped (unchanged) or failed.

    Returns
    -------
    BatchResult

    Raises
    ------
    BatchError
        Bad inputs, options, scheduler or output folder (before any work).
    """
    spec = parse_scheduler(scheduler)
    try:
        opts = SegmentOptions.merged(options, **option_fields)
    except ValueError as exc:
        raise BatchError(str(exc)) from None
    thresholds = _check_thresholds(granule_thresholds)
    kinds = _check_outputs(kinds, tables, label_format, thresholds)
    if objects and not tables:
        raise BatchError("particle objects come from measuring: objects=True needs tables=True")
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    jobs = _jobs(expand_inputs(items))
    if not jobs:
        raise BatchError("no micrographs given")
    if spec is None and not Path(out_dir).exists():
        # a bad weights file: one message, and no output folder (one that exists may remember the
        # weights' hashes in its manifest, so that a rerun loads no model at all)
        for kind in kinds:
            _resolve_model(locations_model if kind == "locations" else granules_model, kind)
    out = _output_folder(out_dir)
    settings = ImageSettings(str(out.resolve()), opts, locations_model, granules_model, pixel_size_nm,
                             force_pixel_size, _check_measure(measure_kwargs), thresholds, kinds,
                             bool(tables), label_format, bool(confidence), bool(objects))
    if spec is not None:
        settings = _check_models_for_workers(settings)
        if spec[0] == "processes" and opts.memory_budget_bytes is None and available_memory_bytes():
            budget = available_memory_bytes() // (2 * spec[1])
            settings = replace(settings, options=replace(opts, memory_budget_bytes=budget))
    with _exclusive(out), contextlib.ExitStack() as stack:
        remove_stale_temporaries(out)
        run = _Run(out, jobs, settings, overwrite)
        connect = _lazy_client(spec, stack)  # a cluster is started only when there is work for it
        run.set_weights(_weights_hashes(run, settings, spec, connect))
        events, todo = run.plan()
        yield from events
        if todo:
            outcomes = _serial_outcomes(todo, settings) if spec is None else \
                _dask_outcomes(connect(), todo, settings)
            for outcome in outcomes:
                yield run.record(outcome)
            if spec is None and any("trained" not in run.result.models.get(k, {}) for k in kinds):
                run.result.models = model_info(settings)  # remembered hashes: describe the models too
        return run.finish(seed_tables)


def batch(inputs: PathLike | Iterable[PathLike], out_dir: PathLike, **kwargs: Any) -> BatchResult:
    """Run :func:`batch_iter` to the end and return its :class:`BatchResult`.

    Examples
    --------
    >>> import napari_emgranules as emg
    >>> result = emg.batch("micrographs/", "results/")                        # doctest: +SKIP
    >>> result.regions[["image", "region", "pf", "vf"]]                       # doctest: +SKIP
    >>> emg.batch("micrographs/*.tif", "results/", scheduler="processes:4")   # doctest: +SKIP
    """
    return run_to_completion(batch_iter(inputs, out_dir, **kwargs))
