"""Shared fixtures for nbflow's test suite.

Every test gets its own ``NBFLOW_HOME`` (so the result cache never touches
``~/.nbflow``) and leaves nbflow's settings and event subscribers as it
found them. One local Ray and one Dask cluster serve the whole session
(``ray_session``, ``dask_cluster``).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from typing import Any, Callable

import pytest

# Before nbflow is imported (its settings read NBFLOW_HOME): the whole session, the notebook
# kernels nbval starts and every subprocess keep their files in a temporary folder, never in
# ~/.nbflow. Each test then gets its own folder (``nbflow_home``).
SESSION_HOME = os.environ["NBFLOW_HOME"] = tempfile.mkdtemp(prefix="nbflow-tests-")

import nbflow.events  # noqa: E402
import nbflow.runs  # noqa: E402
import nbflow.settings  # noqa: E402

# Safety net for every wait on a threading primitive in the tests: a correct
# nbflow never gets near it; a broken one fails the test instead of hanging.
SAFETY = 10.0


@pytest.fixture(autouse=True)
def nbflow_home(tmp_path, monkeypatch):
    """A private, empty NBFLOW home (and result store) for each test; settings restored after."""
    settings = nbflow.settings.current
    saved = dict(vars(settings))
    home = tmp_path / "nbflow-home"
    settings.home = home
    monkeypatch.setenv("NBFLOW_HOME", str(home))  # subprocesses (kernels, workers) too
    yield home
    for key, value in saved.items():
        setattr(settings, key, value)
    from nbflow.store import cache, history

    history.stop()  # each home's history writer and result store have a thread and open
    cache.close_stores()  # files: let them go now
    assert not [t for t in threading.enumerate() if t.name.startswith("nbflow-history")], "a writer outlived its test"
    assert not [c for c in nbflow.events.flow_state if isinstance(getattr(c, "__self__", None), history.HistoryWriter)], \
        "a stopped history writer is still subscribed"


@pytest.fixture(autouse=True)
def _no_leftover_subscribers():
    """A test's event subscribers never outlive it (and those it unsubscribed stay unsubscribed)."""
    before = {kind: getattr(nbflow.events, kind.replace("-", "_")) for kind in nbflow.events.KINDS}
    yield
    for kind, callbacks in before.items():
        name = kind.replace("-", "_")
        kept = tuple(c for c in getattr(nbflow.events, name) if any(c is b for b in callbacks))
        setattr(nbflow.events, name, kept)


class EventLog:
    """Collects run events published on nbflow's event seam."""

    def __init__(self) -> None:
        self.events: list = []
        self._lock = threading.Lock()

    def __call__(self, event) -> None:
        with self._lock:
            self.events.append(event)

    def state_names(self, run) -> list[str]:
        """State names published for one run, in publication order."""
        with self._lock:
            return [e.state.name for e in self.events if e.kind == "state" and e.run is run]

    def for_run(self, run) -> list:
        with self._lock:
            return [e for e in self.events if e.run is run]


@pytest.fixture
def events():
    """Subscribe an :class:`EventLog` to nbflow.runs for the test's duration."""
    log = EventLog()
    handle = nbflow.runs.subscribe(log)
    yield log
    handle.unsubscribe()


class Gate:
    """A threading.Event with a safety timeout: ``gate.wait()`` inside tasks, ``gate.open()`` in the test."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def open(self) -> None:
        self._event.set()

    def wait(self, timeout: float = SAFETY) -> bool:
        if not self._event.wait(timeout):
            raise AssertionError("gate was never opened (safety timeout)")
        return True

    def is_open(self) -> bool:
        return self._event.is_set()


@pytest.fixture
def gate():
    """A gate that is opened on teardown, so no task is left blocked by a failing test."""
    g = Gate()
    yield g
    g.open()


@pytest.fixture
def open_gate_on_wait(gate, monkeypatch):
    """``open_gate_on_wait(task, ...)``: ``gate`` opens when the main thread first blocks on
    a run of one of these tasks (e.g. a flow waiting for its unfinished runs as it exits),
    so those runs are certainly unfinished until then, whatever the machine's speed."""
    from nbflow.runs import TaskRun

    watched: set = set()
    original = TaskRun.wait

    def wait(self, timeout=None):
        if self.task in watched and threading.current_thread() is threading.main_thread():
            gate.open()
        return original(self, timeout)

    monkeypatch.setattr(TaskRun, "wait", wait)
    return lambda *tasks: watched.update(tasks)


class Counter:
    """A thread-safe counter that also tracks the highest value it reached."""

    def __init__(self) -> None:
        self.value = 0
        self.peak = 0
        self.total = 0
        self._cond = threading.Condition()

    def enter(self) -> None:
        with self._cond:
            self.value += 1
            self.total += 1
            self.peak = max(self.peak, self.value)
            self._cond.notify_all()

    def leave(self) -> None:
        with self._cond:
            self.value -= 1
            self._cond.notify_all()

    def wait_total(self, n: int, timeout: float = SAFETY) -> bool:
        """Wait until ``enter`` was called ``n`` times in all; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self.total >= n, timeout)


@pytest.fixture
def counter():
    return Counter()


def wait_until(predicate: Callable[[], bool], timeout: float = SAFETY) -> bool:
    """Poll ``predicate`` (only for conditions with no event to wait on, e.g. a record's state)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.001)
    return predicate()


@pytest.fixture(name="wait_until")
def _wait_until_fixture():
    return wait_until


# -- clusters shared by the whole session ----------------------------------------------------------
# Each starts when a test first needs it, gets a second chance if it cannot start
# (a loaded machine), and stops when the session ends. One that still cannot start
# fails the first test that needs it with the reason and skips the others in one
# line each, instead of every test repeating a long traceback.

# Ray's token authentication (on by default) writes ~/.ray/auth_token; tests write only to temp dirs.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

#: ``ray.init`` options of the session's Ray, and of the tests' runners that start their own:
#: two CPUs (the CI machine's), no dashboard, workers' output not streamed to pytest (nbflow
#: brings a run's output back itself). No setting lengthens Ray 2.60's start-up limits: the
#: raylet waits a fixed 15 s for its dashboard agent (a Python process) to report its ports,
#: ``ray.init`` a fixed 30 s for the node to register. On a 2-core machine the agent needed 8 s
#: at load 6 and over 15 s at load 8, so a start that misses the limit is retried instead.
RAY_OPTIONS: dict[str, Any] = {"num_cpus": 2, "include_dashboard": False, "log_to_driver": False}

#: ``distributed.LocalCluster`` options of the session's Dask cluster: two one-thread worker processes.
DASK_OPTIONS: dict[str, Any] = {
    "n_workers": 2, "threads_per_worker": 1, "dashboard_address": ":0", "silence_logs": logging.CRITICAL
}


class SessionCluster:
    """A cluster shared by the session: started on first use (retried once), stopped at the end."""

    def __init__(self, name: str, start: Callable[[], Any], stop: Callable[[Any], None]) -> None:
        self.name = name
        self._start = start
        self._stop = stop
        self.handle: Any = None
        self.error: str | None = None
        self.attempts: list[str] = []  # how each start went (shown after the run)
        self._reported = False

    def get(self) -> Any:
        """The running cluster. If it cannot start, the first caller fails with the reason, later ones skip."""
        if self.handle is None and self.error is None:
            self._start_with_retry()
        if self.error is not None:
            if not self._reported:
                self._reported = True
                pytest.fail(self.error, pytrace=False)
            pytest.skip(f"{self.name} could not start (the first test that needed it says why)")
        return self.handle

    def _start_with_retry(self) -> None:
        failures = []
        for _ in range(2):
            before = _child_pids()
            began = time.monotonic()
            try:
                self.handle = self._start()
            except Exception as exc:
                reason = " ".join(str(exc).split())[:300]
                failures.append(f"failed after {time.monotonic() - began:.1f} s: {type(exc).__name__}: {reason}")
                self.attempts.append(failures[-1])
                _kill_children_since(before)  # what the failed start left running
            else:
                self.attempts.append(f"started in {time.monotonic() - began:.1f} s")
                return
        self.error = f"{self.name} could not start, twice (an overloaded machine?):\n" + "\n".join(
            f"  attempt {number}: {failure}" for number, failure in enumerate(failures, 1)
        )

    def stop(self) -> None:
        """Stop the cluster if it runs; the next test that needs it starts it again."""
        handle, self.handle = self.handle, None
        if handle is not None:
            self._stop(handle)


def _child_pids() -> set[int]:
    try:
        import psutil  # installed with Dask and Ray
    except ImportError:
        return set()
    return {child.pid for child in psutil.Process().children(recursive=True)}


def _kill_children_since(before: set[int]) -> None:
    """Kill the processes this one started since ``before`` was taken (by pid, nothing else)."""
    try:
        import psutil
    except ImportError:
        return
    for child in psutil.Process().children(recursive=True):
        if child.pid not in before:
            try:
                child.kill()
            except psutil.Error:
                pass


def _start_ray() -> Any:
    """Start Ray with a RayTaskRunner held open for the session (other runners reuse its Ray).

    Closing that runner ends nbflow's thread that drains live messages before
    Ray shuts down: a thread still inside Ray as it shuts down makes Ray end
    the whole process. While it runs, ``RAY_ADDRESS`` names it, so the kernels
    nbval starts later in the session (``notebooks/02-task-runners.ipynb``)
    connect to it instead of starting a Ray of their own.
    """
    ray = pytest.importorskip("ray", reason="ray is not installed")
    from nbflow.task_runners import RayTaskRunner

    runner = RayTaskRunner(init_kwargs=RAY_OPTIONS)
    try:
        runner.__enter__()
    except Exception:
        ray.shutdown()  # forget the half-started session, so the retry starts afresh
        raise
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    return runner


def _stop_ray(runner: Any) -> None:
    os.environ.pop("RAY_ADDRESS", None)
    runner.__exit__(None, None, None)


def _start_dask() -> Any:
    distributed = pytest.importorskip("distributed", reason="dask[distributed] is not installed")
    import dask

    # A worker that dies fails its task at once instead of it being retried elsewhere.
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        return distributed.LocalCluster(**DASK_OPTIONS)


RAY = SessionCluster("Ray", _start_ray, _stop_ray)
DASK = SessionCluster("Dask", _start_dask, lambda cluster: cluster.close())


@pytest.fixture
def ray_session():
    """The session's Ray (the ``ray`` module), initialised here: ``RayTaskRunner()`` uses it, leaves it running."""
    RAY.get()
    import ray

    return ray


@pytest.fixture
def dask_cluster():
    """The session's Dask ``LocalCluster``: runners use it with ``DaskTaskRunner(address=cluster.scheduler_address)``."""
    return DASK.get()


@pytest.fixture
def ray_options():
    """The ``ray.init`` options of the session's Ray, for a runner that starts its own (``init_kwargs``)."""
    return dict(RAY_OPTIONS)


def pytest_sessionfinish(session, exitstatus):
    RAY.stop()
    DASK.stop()
    shutil.rmtree(SESSION_HOME, ignore_errors=True)


def pytest_terminal_summary(terminalreporter):
    """Say how long the session's clusters took to start (the figure to watch on a slow machine)."""
    used = [cluster for cluster in (RAY, DASK) if cluster.attempts]
    if used:
        terminalreporter.write_sep("-", "session clusters")
        for cluster in used:
            terminalreporter.write_line(f"{cluster.name}: " + "; ".join(cluster.attempts))
