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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (ended, not yet reaped) counts as gone
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def test_stop_does_not_wait_for_a_job_whose_thread_was_abandoned():
    """napari closing mid-job: the worker thread is left suspended inside the job, and stop() (at
    exit) used to wait forever for the job's lock. Now it ends the process at once."""
    e = Engine("abandoned", grace=1.0)
    big = synthetic_micrograph((1024, 1024), 0.8, seed=1).image
    gen = e.run("segment", image=big, pixel_size_nm=0.8, weights={"granules": None},
                mode="tiled", max_window=384, halo=128)
    next(gen)  # the job runs; this thread now walks away without closing the generator
    pid = e._proc.pid
    t0 = time.perf_counter()
    stopper = threading.Thread(target=e.stop, daemon=True)
    stopper.start()
    stopper.join(10)
    assert not stopper.is_alive(), "stop() hung on the abandoned job"
    assert time.perf_counter() - t0 < 6
    assert not _alive(pid)
    with pytest.raises(Cancelled):  # the abandoned job, if anyone looks again, was cancelled
        _drain(gen)


def test_a_script_that_exits_mid_job_ends_the_model_process(tmp_path):
    """Python exits (napari's window closed) while a job runs in a worker thread: the process
    exits within seconds and leaves no model process behind."""
    import subprocess
    import sys

    script = tmp_path / "closes_mid_job.py"
    script.write_text(
        "import threading, time\n"
        "from napari_emgranules._engine import get_engine\n"
        "from napari_emgranules.core.synthetic import synthetic_micrograph\n"
        "engine = get_engine('segmentation')\n"
        "image = synthetic_micrograph((2048, 2048), 0.8, seed=1).image\n"
        "started = threading.Event()\n"
        "def work():\n"
        "    for _ in engine.run('segment', image=image, pixel_size_nm=0.8, weights={'granules': None},\n"
        "                        mode='tiled', max_window=384, halo=128):\n"
        "        started.set()\n"
        "threading.Thread(target=work, daemon=True).start()\n"
        "assert started.wait(60), 'the job did not start'\n"
        "print('CHILD', engine._proc.pid, flush=True)\n"
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()  # the job is running (for half a minute more)
        t0 = time.perf_counter()
        assert proc.wait(60) == 0
    finally:
        proc.kill()
    assert time.perf_counter() - t0 < 10, "the script waited for the job instead of ending it"
    child = int(line.split("CHILD")[1].split()[0])
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child)


def test_the_model_process_ends_when_its_parent_dies(tmp_path):
    """napari killed (no atexit) during one long forward pass (no event to notice the closed pipe
    at): the model process ends within a second or two instead of finishing the job."""
    import subprocess
    import sys

    script = tmp_path / "killed.py"
    script.write_text(
        "import os, signal, time\n"
        "import numpy as np\n"
        "from napari_emgranules._engine import get_engine\n"
        "engine = get_engine('segmentation')\n"
        "engine.call('describe_model', path=None, kind='granules')\n"
        "print('CHILD', engine._proc.pid, flush=True)\n"
        "image = np.random.default_rng(0).integers(0, 255, (4096, 4096), dtype=np.uint8)\n"
        "gen = engine.run('segment', image=image, pixel_size_nm=0.8, weights={'granules': None},\n"
        "                 mode='whole')\n"
        "import threading\n"
        "threading.Thread(target=lambda: list(gen), daemon=True).start()\n"
        "time.sleep(1.5)  # the pass is under way (one event at its end only)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180)
    child = int(proc.stdout.split("CHILD")[1].split()[0])
    deadline = time.monotonic() + 2
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child)


def test_a_prestarted_process_serves_at_once_and_is_released_when_idle():
    e = Engine("idle", idle_s=2.0)
    try:
        e.prestart("load_models", weights={"granules": None}).join(120)  # what the Segment panel does
        assert e.running and e.memory_mb() > 50  # its models loaded and reported
        t0 = time.perf_counter()
        assert e.call("describe_model", path=None, kind="granules").kind == "granules"
        assert time.perf_counter() - t0 < 5  # no process start, no model load
        deadline = time.monotonic() + 15
        while e.running and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not e.running and e.memory_mb() is None  # released after 2 s without a job
    finally:
        e.stop()
    once = Engine("once", idle_s=0)  # as training: the process ends with its job
    try:
        assert once.call("load_models", weights={}) == [] and not once.running
    finally:
        once.stop()
