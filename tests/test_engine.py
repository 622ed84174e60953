"""The model process behind the widgets: results, the job's own errors, cancel, a dead process."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

from napari_emgranules._engine import Cancelled, Engine, EngineError
from napari_emgranules.core.io import MicrographError
from napari_emgranules.core.models import WeightsError
from napari_emgranules.core.segment import SegmentProgress, segment_micrograph
from napari_emgranules.core.synthetic import synthetic_micrograph


@pytest.fixture(scope="module")
def engine():
    e = Engine("test", grace=2.0)
    yield e
    e.stop()


@pytest.fixture(scope="module")
def image():
    return synthetic_micrograph((256, 256), 0.8, seed=5).image


def _drain(gen):
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            return events, stop.value


def test_segment_in_the_process_equals_the_direct_call(engine, image):
    events, result = _drain(engine.run("segment", image=image, pixel_size_nm=0.8,
                                       weights={"locations": None, "granules": None},
                                       mode="whole", confidence=True))
    assert [e.stage for e in events] == ["locations", "granules"]
    assert all(isinstance(e, SegmentProgress) for e in events)
    direct = segment_micrograph(image, 0.8, mode="whole")
    for kind in ("locations", "granules"):
        np.testing.assert_array_equal(result.labels[kind], direct.labels[kind])
    assert result.confidence["granules"].shape == image.shape
    assert engine.running  # kept alive, with its models loaded, for the next job


def test_the_jobs_own_errors_come_back_as_themselves(engine, tmp_path):
    junk = tmp_path / "x.txt"
    junk.write_text("not weights")
    with pytest.raises(WeightsError, match="x.txt"):
        engine.call("describe_model", path=str(junk), kind="granules")
    with pytest.raises(MicrographError):
        engine.call("segment", image=np.zeros((3, 4, 5, 6), np.uint8), pixel_size_nm=0.8,
                    weights={"granules": None})
    card = engine.call("describe_model", path=None, kind="locations")  # still serving
    assert card.kind == "locations" and card.schema.n_classes == 7


def test_cancel_stops_a_running_job_and_the_engine_serves_again(engine):
    big = synthetic_micrograph((1024, 1024), 0.8, seed=1).image
    gen = engine.run("segment", image=big, pixel_size_nm=0.8, weights={"granules": None},
                     mode="tiled", max_window=384, halo=128)
    first = next(gen)
    assert first.steps > 4
    t0 = time.perf_counter()
    engine.cancel()
    with pytest.raises(Cancelled):
        _drain(gen)
    assert time.perf_counter() - t0 < 5
    card = engine.call("describe_model", path=None, kind="granules")
    assert card.kind == "granules"


def test_cancel_ends_a_job_that_does_not_stop_in_time():
    e = Engine("slow", grace=0.5)
    try:
        gen = e.run("describe_model", path=None, kind="locations")  # no events to stop at
        threading.Timer(0.2, e.cancel).start()
        with pytest.raises(Cancelled):
            _drain(gen)
        assert not e.running  # its process was ended
    finally:
        e.stop()


def test_a_dead_process_is_reported_and_replaced(engine, image):
    engine.call("describe_model", path=None, kind="granules")
    pid = engine._proc.pid
    gen = engine.run("segment", image=image, pixel_size_nm=0.8, weights={"granules": None},
                     mode="tiled", max_window=384, halo=128)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(EngineError, match="stopped unexpectedly"):
        _drain(gen)
    assert engine.call("describe_model", path=None, kind="granules").kind == "granules"
    assert engine._proc.pid != pid


def test_a_script_without_a_main_guard_is_not_run_again_in_the_model_process(tmp_path):
    """multiprocessing's spawn would re-run the user's script (and its napari.Viewer()) in the
    child; the engine starts ``python -m napari_emgranules._engine`` instead."""
    import subprocess
    import sys

    script = tmp_path / "my_analysis.py"
    script.write_text(
        "from napari_emgranules._engine import Engine\n"
        "print('SCRIPT BODY RAN', flush=True)\n"
        "engine = Engine('script')\n"
        "print('kind:', engine.call('describe_model', path=None, kind='granules').kind, flush=True)\n"
        "engine.stop()\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "kind: granules" in proc.stdout
    assert (proc.stdout + proc.stderr).count("SCRIPT BODY RAN") == 1
