"""Model work for the napari widgets, in a separate Python process.

The widgets never run Keras in napari's own process. Three reasons:

- **It crashes there on Linux with Mesa OpenGL** (llvmpipe under a virtual display, and the
  radeonsi/iris drivers of most Intel and AMD desktops): the TensorFlow wheel exports its own copy
  of LLVM, Mesa links the system one, and once both are loaded the two bind to each other's
  symbols (tensorflow/tensorflow#109933, #119254; see ``tests/conftest.py``).
- **Cancel really stops.** A forward pass of a 4096 px micrograph cannot be interrupted inside
  Keras; a process can be ended. The cancelled job's memory goes back to the system.
- **The viewer stays responsive**: the GIL-holding parts of inference run elsewhere.

An :class:`Engine` owns one child process (``python -m napari_emgranules._engine``, started on first
use, so it imports nothing of Qt or napari, and never re-runs the caller's script the way
``multiprocessing``'s spawn method re-imports ``__main__``) and runs one job at a time in it.
:meth:`Engine.run` is a generator: it sends the job, yields the job's progress events (e.g.
:class:`~.core.segment.SegmentProgress`), and returns its result, or raises the job's own exception
(:class:`~.core.io.MicrographError`, :class:`~.core.models.WeightsError`, ...) so that widgets treat
it exactly as a direct call. :meth:`Engine.cancel` (any thread) asks the job to stop at its next
event; if it does not within ``grace`` seconds the process is ended, and :meth:`run` raises
:class:`Cancelled` either way.

The jobs themselves are the plain functions of :mod:`._engine_tasks`, which only call the core.
This module imports neither Qt, napari nor Keras.
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Generator
from typing import Any

__all__ = ["Engine", "EngineError", "Cancelled", "get_engine", "shutdown_engines"]

_POLL_S = 0.05
_KEY_ENV = "EMGRANULES_ENGINE_KEY"


class Cancelled(Exception):
    """The job was cancelled by the user (:meth:`Engine.cancel`)."""


class EngineError(RuntimeError):
    """The model process failed in a way that is not the job's own error (it died, or a bug)."""


# -------------------------------------------------------------------------------------------------
# The child process
# -------------------------------------------------------------------------------------------------
def _serve(conn) -> None:
    """Child main loop: run jobs sent by the parent until told to stop (or the pipe closes)."""
    import logging
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.WARNING)
    from . import _engine_tasks

    _exit_with_parent()
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message[0] == "stop":
            return
        if message[0] != "run":  # a late "cancel" for a job that already ended
            continue
        _, task, kwargs = message
        try:
            _run_job(conn, getattr(_engine_tasks, task), kwargs)
        except (EOFError, OSError, BrokenPipeError):
            return


def _exit_with_parent(poll_s: float = 0.5) -> None:
    """End this process as soon as its parent is gone (napari killed, or closed mid-job), instead of
    finishing a job nobody waits for: a watchdog thread checks the parent's pid."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _run_job(conn, func, kwargs: dict[str, Any]) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out = func(**kwargs)
            if isinstance(out, Generator):
                while True:
                    try:
                        event = next(out)
                    except StopIteration as stop:
                        out = stop.value
                        break
                    conn.send(("event", event))
                    if conn.poll() and conn.recv()[0] == "cancel":
                        out.close()
                        conn.send(("cancelled", None))
                        return
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the parent
            conn.send(("error", _portable(exc)))
            return
    # our own warnings are for the user (an untrained model, a resampled image); libraries'
    # deprecation chatter is not
    notes = list(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UserWarning)))
    conn.send(("done", (out, notes)))


def _portable(exc: Exception) -> Exception:
    """The exception itself when it pickles (the parent re-raises it), else an EngineError."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - anything unpicklable
        text = "".join(traceback.format_exception(exc))
        return EngineError(f"{type(exc).__name__}: {exc}\n{text}")


# -------------------------------------------------------------------------------------------------
# The parent side
# -------------------------------------------------------------------------------------------------
class Engine:
    """One model process; jobs run one at a time (a second caller waits for the first).

    Parameters
    ----------
    name : str
        For messages ("segmentation", "training").
    grace : float
        Seconds a cancelled job has to stop at its next event before its process is ended.
    idle_s : float, optional
        Release the process (and the memory of its loaded models) after this many seconds without
        a job; 0 ends it right after each job; None keeps it until :meth:`stop`.
    """

    def __init__(self, name: str = "models", grace: float = 3.0, idle_s: float | None = None) -> None:
        self.name = name
        self.grace = grace
        self.idle_s = idle_s
        self._idle_timer: threading.Timer | None = None
        self._last_job = time.monotonic()
        self._proc: Any = None
        self._conn: Any = None
        self._lock = threading.Lock()  # one job at a time (held while a job runs)
        self._state = threading.Lock()  # the process and connection, swapped atomically
        self._send_lock = threading.Lock()  # a connection is not safe for two senders at once
        self._cancel = threading.Event()
        self.notes: list[str] = []  # warnings of the last job (e.g. an untrained model)

    @property
    def running(self) -> bool:
        """True while the child process is alive (it keeps its loaded models between jobs)."""
        return self._proc is not None and self._proc.poll() is None

    def _start(self) -> None:
        from multiprocessing.connection import Client

        key = secrets.token_bytes(32)
        proc = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, env={**os.environ, _KEY_ENV: key.hex()})
        line = proc.stdout.readline()  # the child's address, once it listens
        proc.stdout.close()
        try:
            address = json.loads(line)
            conn = Client(tuple(address) if isinstance(address, list) else address, authkey=key)
        except (ValueError, OSError, EOFError) as exc:
            proc.kill()
            proc.wait()
            raise EngineError(f"the {self.name} process did not start (exit code {proc.returncode}; "
                              f"{type(exc).__name__}); see the terminal for its error") from None
        with self._state:
            self._proc, self._conn = proc, conn

    def _send(self, conn, message: tuple) -> None:
        with self._send_lock:
            conn.send(message)

    def _end(self) -> None:
        with self._state:
            proc, conn = self._proc, self._conn
            self._proc = self._conn = None
        if conn is not None:
            conn.close()
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def memory_mb(self) -> float | None:
        """Resident memory of the model process in MB (None when it does not run or the system
        does not say)."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return None
        try:
            with open(f"/proc/{proc.pid}/status", encoding="ascii") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except (OSError, ValueError, IndexError):
            pass
        try:
            import psutil

            return psutil.Process(proc.pid).memory_info().rss / 2**20
        except Exception:  # noqa: BLE001 - psutil missing or the process just ended
            return None

    def prestart(self, task: str | None = None, **kwargs: Any) -> threading.Thread:
        """Start the process in the background (and run ``task`` there, e.g. loading the models),
        so that the first real job does not wait for it. Errors are left for that job to report."""

        def warm() -> None:
            try:
                if task is None:
                    with self._lock:
                        if not self.running:
                            self._end()
                            self._start()
                        self._job_done()
                else:
                    self.call(task, **kwargs)
            except Exception:  # noqa: BLE001 - the next job starts it again and says why
                pass

        thread = threading.Thread(target=warm, name=f"{self.name}-prestart", daemon=True)
        thread.start()
        return thread

    def _job_done(self) -> None:
        """A job ended: release the process now or after :attr:`idle_s` without another job."""
        self._last_job = time.monotonic()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self.idle_s is None:
            return
        if self.idle_s <= 0:
            self._end()
            return
        self._idle_timer = threading.Timer(self.idle_s, self._release_if_idle)
        self._idle_timer.daemon = True
        self._idle_timer.start()

    def _release_if_idle(self) -> None:
        if not self._lock.acquire(blocking=False):
            return  # a job runs: it arms the timer again when it ends
        try:
            if time.monotonic() - self._last_job >= self.idle_s * 0.99:
                self._end()
        finally:
            self._lock.release()

    def cancel(self) -> None:
        """Ask the running job to stop (thread-safe; nothing happens when none runs)."""
        self._cancel.set()

    def call(self, task: str, **kwargs: Any) -> Any:
        """Run a job to its end and return its result (no progress)."""
        gen = self.run(task, **kwargs)
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                return stop.value

    def run(self, task: str, **kwargs: Any) -> Generator[Any, None, Any]:
        """Run ``task`` (a function of :mod:`._engine_tasks`) in the child; yield its events.

        Returns the job's result. Raises the job's exception, :class:`Cancelled`, or
        :class:`EngineError` when the process dies.
        """
        with self._lock:
            self._cancel.clear()
            self.notes = []
            if not self.running:
                self._end()
                self._start()
            conn, proc = self._conn, self._proc
            try:
                self._send(conn, ("run", task, kwargs))
            except (OSError, ValueError) as exc:
                self._end()
                raise EngineError(f"could not send the {self.name} job to its process ({exc})") from None
            try:
                return (yield from self._receive(conn, proc))
            except GeneratorExit:  # the caller walked away mid-job: do not leave it running
                self._end()
                raise
            finally:
                self._job_done()

    def _receive(self, conn, proc) -> Generator[Any, None, Any]:
        deadline = None
        while True:
            if self._cancel.is_set() and deadline is None:
                deadline = time.monotonic() + self.grace
                try:
                    self._send(conn, ("cancel",))
                except (OSError, ValueError):
                    pass
            if deadline is not None and time.monotonic() > deadline:
                self._end()  # it did not stop at an event in time: end the process
                raise Cancelled(f"{self.name} cancelled")
            try:
                ready = conn.poll(_POLL_S)
                message = conn.recv() if ready else None
            except (EOFError, OSError):
                message = None
                try:
                    proc.wait(1)
                except subprocess.TimeoutExpired:
                    pass
            if message is None:
                if proc.poll() is not None:
                    code = proc.returncode
                    self._end()
                    if deadline is not None or self._cancel.is_set():  # ended by cancel or stop()
                        raise Cancelled(f"{self.name} cancelled")
                    raise EngineError(
                        f"the {self.name} process stopped unexpectedly (exit code {code}); "
                        "it may have run out of memory. Try a smaller image, 'tiled' mode, or "
                        "close other programs, then run again."
                    )
                continue
            kind, payload = message
            if kind == "event":
                if deadline is None:
                    yield payload
            elif kind == "cancelled":
                raise Cancelled(f"{self.name} cancelled")
            elif kind == "error":
                raise payload
            else:  # done
                result, self.notes = payload
                if deadline is not None:
                    raise Cancelled(f"{self.name} cancelled")
                return result

    def stop(self) -> None:
        """End the child process (its models are forgotten; the next job starts a new one).

        Never waits for a running job: its process is ended (the job's :meth:`run` raises
        :class:`Cancelled` in its own thread). Safe from any thread, at exit too, even when the
        thread that ran the job was abandoned mid-job (napari closed while segmenting).
        """
        self._cancel.set()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        conn = self._conn
        if conn is not None:
            try:
                self._send(conn, ("stop",))
            except (OSError, ValueError):
                pass
        self._end()


_ENGINES: dict[str, Engine] = {}
_ENGINES_LOCK = threading.Lock()
#: Seconds without a job before an engine's process (and its models' memory) is released:
#: segmentation keeps its models loaded for 10 minutes, a training process ends with its run.
#: ``EMGRANULES_ENGINE_IDLE_S`` overrides the segmentation value.
IDLE_S = {"segmentation": 600.0, "training": 0.0}


def _idle_s(name: str) -> float | None:
    default = IDLE_S.get(name)
    text = os.environ.get("EMGRANULES_ENGINE_IDLE_S", "")
    if name != "training" and text.strip():
        try:
            return max(0.0, float(text))
        except ValueError:
            warnings.warn(f"EMGRANULES_ENGINE_IDLE_S={text!r} is not a number of seconds; "
                          f"keeping {default}", stacklevel=2)
    return default


def get_engine(name: str) -> Engine:
    """The shared engine called ``name`` ("segmentation", "training", ...): one process each, so
    training and segmenting can run at the same time (a training process ends with its run; the
    segmentation one after :data:`IDLE_S` idle seconds)."""
    with _ENGINES_LOCK:
        if not _ENGINES:
            atexit.register(shutdown_engines)
        if name not in _ENGINES:
            _ENGINES[name] = Engine(name, idle_s=_idle_s(name))
        return _ENGINES[name]


def shutdown_engines() -> None:
    """End every engine's process (at exit, and in tests)."""
    with _ENGINES_LOCK:
        engines = list(_ENGINES.values())
    for engine in engines:
        engine.stop()


def _main() -> None:
    """The child: listen on a private address, tell the parent where, serve its one connection."""
    from multiprocessing.connection import Listener

    key = bytes.fromhex(os.environ.pop(_KEY_ENV))
    with Listener(authkey=key) as listener:
        print(json.dumps(listener.address), flush=True)
        os.dup2(2, 1)  # from now on stdout is stderr: nobody reads the pipe any more
        conn = listener.accept()
    # serve through the package's module, not this __main__ copy, so that the exceptions it
    # sends back (EngineError) unpickle in the parent
    from napari_emgranules import _engine

    _engine._serve(conn)


if __name__ == "__main__":
    _main()
