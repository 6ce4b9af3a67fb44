"""Fixtures for the notebook layer: widgets on a recording comm, an IPython shell, a quiet session."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from nbflow.notebook import session as sessions


class CommLog:
    """Every message widgets send, by kind (``comm_open``, ``comm_msg``, ...)."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, Any, Any]] = []
        self._lock = threading.Lock()

    def record(self, msg_type: str, data: Any, buffers: Any) -> None:
        with self._lock:
            self.messages.append((msg_type, data, buffers))

    def count(self, msg_type: str = "comm_msg") -> int:
        with self._lock:
            return sum(1 for m in self.messages if m[0] == msg_type)

    def clear(self) -> None:
        with self._lock:
            self.messages.clear()


@pytest.fixture
def comms(monkeypatch):
    """Widgets get a comm that records what it would send to the front end."""
    import comm
    from comm.base_comm import BaseComm

    log = CommLog()

    class RecordingComm(BaseComm):
        def publish_msg(self, msg_type, data=None, metadata=None, buffers=None, **keys):
            log.record(msg_type, data, buffers)

    monkeypatch.setattr(comm, "create_comm", lambda *a, **k: RecordingComm(*a, **k))
    return log


class Displays:
    """Stands in for IPython's display(): records what would be shown."""

    def __init__(self) -> None:
        self.shown: list[Any] = []
        self._lock = threading.Lock()

    def __call__(self, obj: Any, raw: bool = False) -> None:
        with self._lock:
            self.shown.append(obj.copy() if raw else obj)

    def bundles(self) -> list[dict]:
        """Every display as a mime bundle (objects through their _repr_mimebundle_)."""
        with self._lock:
            return [o if isinstance(o, dict) else o._repr_mimebundle_() for o in self.shown]


@pytest.fixture
def displays():
    return Displays()


@pytest.fixture
def view_settings():
    """Notebook settings restored after the test."""
    saved = dict(vars(sessions.settings))
    yield sessions.settings
    for key, value in saved.items():
        setattr(sessions.settings, key, value)


@pytest.fixture(autouse=True)
def _no_leftover_session():
    yield
    sessions.uninstall()


@pytest.fixture(scope="session")
def ipython():
    """An IPython shell (no kernel) shared by the magics tests."""
    from IPython.core.interactiveshell import InteractiveShell

    return InteractiveShell.instance()
