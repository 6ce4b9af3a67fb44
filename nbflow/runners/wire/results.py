"""Values left on a cluster: states whose value is fetched when read, in batches.

Cluster runners leave a completed run's value on the cluster (a
:class:`RemoteState`) until someone reads it; see :class:`Fetcher` for which
values come back, and when.
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Callable
from typing import Any

from nbflow.exceptions import CrashedRun, MissingResult, SerializationError
from nbflow.records import TaskRun
from nbflow.states import State

_DATA = State.__dict__["data"]  # the slot behind State.data


class RemoteState(State):
    """A Completed state whose value is still on the cluster: reading ``data`` fetches it."""

    __slots__ = ("_fetcher",)

    def __init__(self, state: State) -> None:
        self._fetcher: Fetcher | _Unloadable | None = None
        State.__init__(self, state.type, state.name, state.message, None, state.timestamp_seconds)

    @property  # type: ignore[override]
    def data(self) -> Any:
        fetcher = self._fetcher
        if fetcher is not None:
            fetcher.fetch(self)
        return _DATA.__get__(self, State)

    @data.setter
    def data(self, value: Any) -> None:
        _DATA.__set__(self, value)

    @property
    def on_cluster(self) -> bool:
        """True while the value has not been brought to the driver (reading ``data`` would)."""
        return self._fetcher is not None

    def __repr__(self) -> str:
        if self.on_cluster:  # a repr never fetches
            return f"{self.name}(message={self.message!r}, type={self.type.value}, result=<on the cluster>)"
        return super().__repr__()

    def __reduce__(self) -> tuple:
        return (State, (self.type,), self.__getstate__())  # crosses as a plain state, value in


class _Unloadable:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def fetch(self, state: RemoteState) -> None:
        raise self.error


class Fetcher:
    """Brings values left on the cluster to the driver, in batches.

    Reading a value fetches it together with every waiting value no other
    run on the cluster consumed (the results a flow reads, e.g. a whole
    ``.map``), in one ``gather(handles)`` call that returns pickled values.
    Values other runs consumed stay on the cluster until read: when the
    runner shuts down, :meth:`release` brings the unconsumed ones back and
    lets the others go. ``consumed`` is the runner's set of such runs;
    ``where`` names the cluster in messages.
    """

    def __init__(self, gather: Callable[[list], list[bytes]], where: str, consumed: set[TaskRun]) -> None:
        self._gather = gather
        self._where = where
        self._consumed = consumed
        self._waiting: dict[RemoteState, tuple[Any, TaskRun]] = {}
        self._lock = threading.Lock()

    def add(self, state: RemoteState, handle: Any, run: TaskRun) -> RemoteState:
        with self._lock:
            state._fetcher = self
            self._waiting[state] = (handle, run)
        return state

    def fetch(self, state: RemoteState | None = None) -> None:
        """Fetch ``state``'s value (unless it arrived meanwhile) and every waiting unconsumed one."""
        with self._lock:
            if state is not None and state._fetcher is not self:
                return
            batch = {
                waiting: entry for waiting, entry in self._waiting.items()
                if waiting is state or entry[1] not in self._consumed
            }
            if not batch:
                return
            for waiting in batch:
                del self._waiting[waiting]
            try:
                blobs = self._gather([handle for handle, _ in batch.values()])
            except Exception as exc:
                self._waiting.update(batch)
                raise CrashedRun(
                    f"{len(batch)} task run result(s) could not be fetched from {self._where} "
                    f"({type(exc).__name__}: {exc})."
                ) from exc
            for (remote_state, (_, run)), blob in zip(batch.items(), blobs):
                try:
                    _DATA.__set__(remote_state, loads_value(run.name, blob))
                    remote_state._fetcher = None
                except SerializationError as exc:
                    remote_state._fetcher = _Unloadable(exc)

    def release(self) -> None:
        """The cluster is going away: fetch the unconsumed values; the others become unreadable."""
        try:
            self.fetch()
        finally:
            with self._lock:
                left, self._waiting = self._waiting, {}
            for remote_state, (_, run) in left.items():
                remote_state._fetcher = _Unloadable(MissingResult(
                    f"The result of task run {run.name!r} stayed on {self._where}, which was "
                    "released when its flow run ended (results that other task runs consumed are "
                    "not brought back). Read it with .result() inside the flow to keep it."
                ))


def loads_value(run_name: str, blob: bytes) -> Any:
    """Unpickle a run's value on the driver, with an error naming the run if that fails."""
    try:
        return pickle.loads(blob)
    except Exception as exc:
        raise SerializationError(
            f"The result of task run {run_name!r} could not be unpickled on the driver "
            f"({type(exc).__name__}: {exc}). Its type must be importable here as on the worker."
        ) from exc


__all__ = ["Fetcher", "RemoteState", "loads_value"]
