"""Shared fixtures, and process isolation of the Qt/napari tests from TensorFlow.

Why the isolation: the TensorFlow wheel exports its own (unversioned) copy of LLVM from
``libtensorflow_framework.so.2``; Mesa's OpenGL driver (``swrast_dri.so``, used under Xvfb and by
llvmpipe/radeonsi) links the system ``libLLVM``. Once both are in one process the two LLVMs bind to
each other's symbols: importing TensorFlow after a napari viewer exists segfaults in an LLVM static
initialiser, and the other order crashes on the first GL draw or aborts at exit
("free(): invalid pointer"). See tensorflow/tensorflow#109933 and #119254.

So when a session collects both Qt tests (those using ``make_napari_viewer``, ``qtbot`` or ``qapp``)
and other tests (which may build the Keras models in-process), the Qt tests are run in ONE child
``pytest`` process that never imports TensorFlow, and each of them is reported here under its own
name with the child's outcome and failure text. A session of Qt tests only runs them in-process.
Set ``EMGRANULES_GUI_INPROCESS=1`` to turn the isolation off.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from napari_emgranules.core.io import write_image
from napari_emgranules.core.synthetic import synthetic_micrograph

# the Segment panel does not load models on its own in tests (the test that checks it turns it on)
os.environ.setdefault("EMGRANULES_PRESTART", "0")

# -------------------------------------------------------------------------------------------------
# fixtures
# -------------------------------------------------------------------------------------------------


@pytest.fixture
def write_micrograph(tmp_path):
    """Factory: ``write_micrograph(name, shape=(256, 320), pixel_size_nm=0.8, seed=0)`` -> Path.

    Writes a small synthetic micrograph (uint16 unless ``dtype`` says otherwise) into ``tmp_path``
    (or ``folder``); ``pixel_size_nm=None`` writes a file without any calibration.
    """

    def make(name: str = "cell.tif", shape=(256, 320), pixel_size_nm: float | None = 0.8,
             seed: int = 0, dtype: str = "uint16", folder: Path | None = None) -> Path:
        s = synthetic_micrograph(shape, 0.8, seed=seed, dtype=dtype)
        return write_image((folder or tmp_path) / name, s.image, pixel_size_nm=pixel_size_nm)

    return make


# -------------------------------------------------------------------------------------------------
# Qt tests in a child process
# -------------------------------------------------------------------------------------------------
QT_FIXTURES = frozenset({"make_napari_viewer", "make_napari_viewer_proxy", "qtbot", "qapp"})
_CHILD_ENV = "EMGRANULES_GUI_CHILD"  # path of the JSON results file, set in the child
_OPT_OUT_ENV = "EMGRANULES_GUI_INPROCESS"


def _uses_qt(item: pytest.Item) -> bool:
    return bool(QT_FIXTURES & set(getattr(item, "fixturenames", ())))


_CHILD_TIMEOUT_S = 900


def _text(out: str | bytes | None) -> str:
    return out.decode(errors="replace") if isinstance(out, bytes) else (out or "")


class _ChildRun:
    """Runs the Qt tests once in a child pytest and hands out their outcomes."""

    def __init__(self, config: pytest.Config, nodeids: list[str]):
        self.config = config
        self.nodeids = nodeids
        self.results: dict[str, dict] | None = None
        self.output = ""
        self.returncode: int | None = None

    def result(self, nodeid: str) -> dict | None:
        if self.results is None:
            self._run()
        return self.results.get(nodeid)

    def _run(self) -> None:
        fd, results_file = tempfile.mkstemp(prefix="emgranules-gui-", suffix=".json")
        os.close(fd)
        try:
            env = {**os.environ, _CHILD_ENV: results_file}
            cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                   "--rootdir", str(self.config.rootpath), *self.nodeids]
            self.results = {}  # set before the run: a child that fails runs once, not per test
            try:
                proc = subprocess.run(cmd, cwd=self.config.rootpath, env=env, capture_output=True,
                                      text=True, timeout=_CHILD_TIMEOUT_S)
            except subprocess.TimeoutExpired as exc:
                self.output = (f"timed out after {_CHILD_TIMEOUT_S} s\n"
                               + _text(exc.stdout) + _text(exc.stderr))
            else:
                self.returncode = proc.returncode
                self.output = proc.stdout + proc.stderr
            text = Path(results_file).read_text()
            self.results = json.loads(text) if text.strip() else {}
        finally:
            Path(results_file).unlink(missing_ok=True)


class QtChildFailure(Exception):
    """A Qt test failed (or errored) in the child process; the message is its report."""


class QtTestInChild(pytest.Item):
    """Stands in for a Qt test here; its outcome comes from the child process."""

    def __init__(self, *, original: pytest.Item, run: _ChildRun, **kwargs):
        super().__init__(**kwargs)
        self.original_nodeid = original.nodeid
        self.original_line = original.reportinfo()[1] or 0
        self.run = run
        self.own_markers = list(original.own_markers)
        self.keywords.update(original.keywords)

    def runtest(self) -> None:
        result = self.run.result(self.original_nodeid)
        if result is None:
            tail = self.run.output[-4000:]
            raise QtChildFailure(
                f"{self.original_nodeid}: no result from the child pytest process (exit code "
                f"{self.run.returncode}); its output ends with:\n{tail}"
            )
        if result["outcome"] == "skipped":
            pytest.skip(result["text"])
        if result["outcome"] == "xfailed":
            pytest.xfail(result["text"])
        if result["outcome"] == "failed":
            raise QtChildFailure(f"[{result['when']} in the child process]\n{result['text']}")

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, QtChildFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        return self.path, self.original_line, f"{self.name} (Qt test, run in a child process)"


@pytest.hookimpl(trylast=True)  # after -k/-m deselection
def pytest_collection_modifyitems(session, config, items):
    if os.environ.get(_CHILD_ENV) or os.environ.get(_OPT_OUT_ENV):
        return
    qt_items = [item for item in items if _uses_qt(item)]
    if not qt_items or len(qt_items) == len(items):
        return
    run = _ChildRun(config, [item.nodeid for item in qt_items])
    for index, item in enumerate(items):
        if item in qt_items:
            items[index] = QtTestInChild.from_parent(item.parent, name=item.name, original=item,
                                                     run=run)


_child_results: dict[str, dict] = {}


def pytest_runtest_logreport(report):
    """In the child: record each Qt test's outcome for the parent."""
    if not os.environ.get(_CHILD_ENV):
        return
    previous = _child_results.get(report.nodeid)
    if previous is not None and previous["outcome"] != "passed":
        return  # keep the first failure or skip
    if hasattr(report, "wasxfail"):
        entry = {"outcome": "xfailed", "when": report.when, "text": str(report.wasxfail)}
    elif report.failed:
        entry = {"outcome": "failed", "when": report.when, "text": report.longreprtext}
    elif report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        entry = {"outcome": "skipped", "when": report.when, "text": reason}
    elif report.when == "call":
        entry = {"outcome": "passed", "when": report.when, "text": ""}
    else:
        return
    _child_results[report.nodeid] = entry


def pytest_sessionfinish(session):
    results_file = os.environ.get(_CHILD_ENV)
    if results_file:
        Path(results_file).write_text(json.dumps(_child_results))
