"""Shared fixtures for nbflow's test suite.

Every test gets its own ``NBFLOW_HOME`` (so the result cache never touches
``~/.nbflow``) and leaves nbflow's settings and event subscribers as it
found them.
"""

from __future__ import annotations

from pathlib import Path
import threading
import time
from typing import Callable

import pytest

import nbflow.runs
import nbflow.settings

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
    yield home
    for key, value in saved.items():
        setattr(settings, key, value)


@pytest.fixture(autouse=True)
def _no_leftover_subscribers():
    """A test's event subscribers never outlive it."""
    before = nbflow.runs._subscribers, nbflow.runs._flow_subscribers
    yield
    nbflow.runs._subscribers, nbflow.runs._flow_subscribers = before


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


def pytest_collection_modifyitems(config, items):
    """Mark the Prefect-parity tests listed in tests/parity_gaps.txt as known gaps (xfail)."""
    listed = Path(__file__).with_name("parity_gaps.txt").read_text().splitlines()
    gaps = {line.strip() for line in listed if line.strip() and not line.startswith("#")}
    for item in items:
        if item.nodeid in gaps:
            item.add_marker(pytest.mark.xfail(reason="known Prefect-parity gap", strict=False))
