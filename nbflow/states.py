"""States of flow runs and task runs, and their constructors.

A state is a small immutable record: its type, a display name (``Completed``,
``Cached``, ``NotReady``, ``TimedOut``, ...), an optional message, the time it
was entered, and its data (the result, or the exception of a failed run).
"""

from __future__ import annotations

import datetime
import enum
import time
from typing import Any, Generic, TypeVar

from nbflow.exceptions import CancelledRun, CrashedRun, FailedRun, UnfinishedRun

R = TypeVar("R")


class StateType(str, enum.Enum):
    """The kind of a state; its name is what Prefect calls it."""

    SCHEDULED = "SCHEDULED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    CRASHED = "CRASHED"
    PAUSED = "PAUSED"
    CANCELLING = "CANCELLING"

    def __str__(self) -> str:
        return self.value


TERMINAL_STATES = frozenset(
    {StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED, StateType.CRASHED}
)

_DEFAULT_NAMES = {t: t.value.title() for t in StateType}


class State(Generic[R]):
    """The state of a run at one moment.

    ``result()`` gives the run's value, raises its exception, or raises
    :class:`~nbflow.exceptions.UnfinishedRun` when the run has no result yet.
    """

    # _run_id: the id of the task run that ended in this state (None for a
    # state made by hand), so a flow can tell a returned run state from a
    # state it should take as its own.
    __slots__ = ("type", "name", "message", "data", "_ts", "_run_id")

    def __init__(
        self,
        type: StateType,
        name: str | None = None,
        message: str | None = None,
        data: Any = None,
        timestamp: float | None = None,
    ) -> None:
        self.type = type
        self.name = name or _DEFAULT_NAMES[type]
        self.message = message
        self.data = data
        self._ts = time.time() if timestamp is None else timestamp
        self._run_id: int | None = None

    # -- pickling (slots, and states cross process boundaries) --------------
    def __getstate__(self) -> tuple:
        return (self.type, self.name, self.message, self.data, self._ts, self._run_id)

    def __setstate__(self, s: tuple) -> None:
        self.type, self.name, self.message, self.data, self._ts, self._run_id = s

    @property
    def timestamp(self) -> datetime.datetime:
        """When the run entered this state (timezone-aware, UTC)."""
        return datetime.datetime.fromtimestamp(self._ts, datetime.timezone.utc)

    def is_scheduled(self) -> bool:
        return self.type is StateType.SCHEDULED

    def is_pending(self) -> bool:
        return self.type is StateType.PENDING

    def is_running(self) -> bool:
        return self.type is StateType.RUNNING

    def is_completed(self) -> bool:
        return self.type is StateType.COMPLETED

    def is_failed(self) -> bool:
        return self.type is StateType.FAILED

    def is_crashed(self) -> bool:
        return self.type is StateType.CRASHED

    def is_cancelled(self) -> bool:
        return self.type is StateType.CANCELLED

    def is_cancelling(self) -> bool:
        return self.type is StateType.CANCELLING

    def is_paused(self) -> bool:
        return self.type is StateType.PAUSED

    def is_final(self) -> bool:
        """True for Completed, Failed, Cancelled and Crashed."""
        return self.type in TERMINAL_STATES

    def result(self, raise_on_failure: bool = True) -> R:
        """The run's value; for a failed run its exception (raised or returned)."""
        t = self.type
        if t is StateType.COMPLETED:
            return self.data
        if t in (StateType.FAILED, StateType.CRASHED, StateType.CANCELLED):
            exc = self.data if isinstance(self.data, BaseException) else self._exception()
            if raise_on_failure:
                raise exc
            return exc  # type: ignore[return-value]
        detail = f" {self.message}" if self.message else ""
        raise UnfinishedRun(f"Run is in {t.value} state, its result is not available.{detail}")

    def _exception(self) -> BaseException:
        kind = {StateType.CANCELLED: CancelledRun, StateType.CRASHED: CrashedRun}.get(
            self.type, FailedRun
        )
        return kind(self.message or f"Run is in {self.type.value} state ({self.name}).")

    def copy(self, **changes: Any) -> "State[R]":
        """A copy with some fields changed (``name``, ``message``, ``data``)."""
        fields = dict(type=self.type, name=self.name, message=self.message, data=self.data)
        fields.update(changes)
        return State(**fields)

    def __repr__(self) -> str:
        parts = [f"message={self.message!r}", f"type={self.type.value}"]
        if self.type is StateType.COMPLETED:
            parts.append(f"result={_short_repr(self.data)}")
        elif isinstance(self.data, BaseException):
            parts.append(f"exception={self.data!r}")
        return f"{self.name}({', '.join(parts)})"

    def _repr_html_(self) -> str:
        from nbflow.notebook import reprs

        return reprs.state_html(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, State):
            return NotImplemented
        return (self.type, self.name, self.message, self._ts) == (
            other.type,
            other.name,
            other.message,
            other._ts,
        )

    __hash__ = object.__hash__


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _constructor(state_type: StateType, default_name: str | None = None):
    name_default = default_name or _DEFAULT_NAMES[state_type]

    def make(
        message: str | None = None,
        data: Any = None,
        name: str | None = None,
        **_: Any,
    ) -> State:
        return State(state_type, name or name_default, message, data)

    make.__name__ = name_default
    make.__qualname__ = name_default
    make.__doc__ = f"A new ``{state_type.value}`` state named ``{name_default}``."
    return make


Scheduled = _constructor(StateType.SCHEDULED)
Pending = _constructor(StateType.PENDING)
Running = _constructor(StateType.RUNNING)
Completed = _constructor(StateType.COMPLETED)
Failed = _constructor(StateType.FAILED)
Cancelled = _constructor(StateType.CANCELLED)
Cancelling = _constructor(StateType.CANCELLING)
Crashed = _constructor(StateType.CRASHED)
Paused = _constructor(StateType.PAUSED)
AwaitingRetry = _constructor(StateType.SCHEDULED, "AwaitingRetry")
Retrying = _constructor(StateType.RUNNING, "Retrying")
Late = _constructor(StateType.SCHEDULED, "Late")
TimedOut = _constructor(StateType.FAILED, "TimedOut")
Cached = _constructor(StateType.COMPLETED, "Cached")
NotReady = _constructor(StateType.PENDING, "NotReady")

__all__ = [
    "State",
    "StateType",
    "TERMINAL_STATES",
    "Scheduled",
    "Pending",
    "Running",
    "Completed",
    "Failed",
    "Cancelled",
    "Cancelling",
    "Crashed",
    "Paused",
    "AwaitingRetry",
    "Retrying",
    "Late",
    "TimedOut",
    "Cached",
    "NotReady",
]
