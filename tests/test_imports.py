"""Importing the package is cheap: no napari, Qt or deep-learning framework comes with it; and the
core's modules build on each other without import cycles."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import napari_emgranules.core

HEAVY = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "keras", "tensorflow", "jax",
         "torch")

_PROBE = f"""
import json, sys
import napari_emgranules, napari_emgranules.core, napari_emgranules.cli
import napari_emgranules._reader, napari_emgranules._sample, napari_emgranules._engine
import napari_emgranules._engine_tasks
heavy = {HEAVY!r}
print(json.dumps({{
    "loaded": sorted(m for m in sys.modules if m.split(".")[0] in heavy),
    "version": napari_emgranules.__version__,
}}))
"""


def _probe() -> dict:
    proc = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_pulls_in_no_gui_or_deep_learning_framework():
    loaded = _probe()["loaded"]
    offending = sorted({m.split(".")[0] for m in loaded})
    assert not offending, (
        f"importing napari_emgranules (core, cli, _reader, _sample, _engine) imported {offending} "
        f"(modules: {', '.join(loaded[:20])})"
    )


def test_version_matches_installed_distribution():
    import napari_emgranules

    installed = importlib.metadata.version("napari-emgranules")
    assert napari_emgranules.__version__ == installed
    assert _probe()["version"] == installed


def test_the_backend_starts_without_printing_its_own_log_lines():
    """TensorFlow's absl banner, oneDNN note and 'failed call to cuInit' read as errors to a
    biologist: a normal start prints nothing to stderr (EMGRANULES_DEBUG=1 / --debug shows them)."""
    import os

    code = ("from napari_emgranules.core.models import default_model\n"
            "import numpy as np\n"
            "m = default_model('granules')\n"
            "for side in (256, 384, 512, 640, 768, 896):  # new shapes: TensorFlow retraces\n"
            "    m.predict_labels(np.zeros((1, 128, side), np.float32), False)\n"
            "print(m.predict_labels(np.zeros((1, 128, 128), np.float32))[0].shape)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("EMGRANULES_DEBUG", "TF_CPP_MIN_LOG_LEVEL")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("(1, 128, 128)")
    for noise in ("absl", "cuInit", "oneDNN", "cuda", "I0000", "E0000", "retracing"):
        assert noise not in proc.stderr, proc.stderr


def _core_imports() -> dict[str, set[str]]:
    """Which core module imports which (relative imports anywhere in a file, inside functions too)."""
    core = Path(napari_emgranules.core.__file__).parent
    names = {p.stem for p in core.glob("*.py")} - {"__init__"}
    graph: dict[str, set[str]] = {n: set() for n in names}
    for name in names:
        for node in ast.walk(ast.parse((core / f"{name}.py").read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                targets = [node.module] if node.module else [a.name for a in node.names]
                graph[name].update(t.split(".")[0] for t in targets if t.split(".")[0] in names)
    return graph


def test_core_modules_import_each_other_without_cycles():
    """An import inside a function still ties two modules: a cycle hidden that way is a cycle."""
    graph = _core_imports()
    assert graph["segment"] >= {"models", "options"} and "calibration" in graph["interop"]  # it reads
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return (path + [node])[(path + [node]).index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt, path + [node])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [])
            assert cycle is None, "core import cycle: " + " -> ".join(cycle)
